#!/bin/sh
# Installs the Debian packages strata needs that are missing, and nothing else.
# Runs as root on a fresh Debian 12 machine (the README's first commands);
# without root it names what is missing and stops.
set -eu

# build-essential brings make and the C compiler; the rest are the libraries
# strata uses (SQLite, cJSON, libmicrohttpd, OpenBLAS in its OpenMP build,
# Open MPI, cmocka).
need="build-essential pkg-config libsqlite3-dev sqlite3 libcjson-dev libmicrohttpd-dev
libopenblas-dev libopenblas-openmp-dev libopenblas0-openmp openmpi-bin libopenmpi-dev libcmocka-dev"

missing=""
for p in $need; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ]; then
    echo "setup: missing Debian packages:$missing" >&2
    echo "setup: install them as root: apt-get install -y$missing" >&2
    exit 1
fi
echo "setup: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
