#!/bin/sh
# Installs the Debian packages strata needs that are missing, and nothing else.
# Runs as root on a fresh Debian 12 machine (the README's first commands);
# without root it names what is missing and stops.
#
#   sh scripts/setup.sh          what strata builds and runs with
#   sh scripts/setup.sh test     also what the tests use: Python's venv (a
#                                virtual environment in build/venv holding
#                                schemathesis from PyPI, which holds the REST
#                                API to docs/openapi.yaml) and Chromium (which
#                                loads the API's page headless)
#   sh scripts/setup.sh demo     also Python's venv, with the onnx package from
#                                PyPI in build/venv (the demo imports its
#                                ResNet-50)
#   sh scripts/setup.sh bench    also wrk, the HTTP load generator
#   sh scripts/setup.sh fuzz     also clang, for the libFuzzer harnesses
set -eu

# build-essential brings make and the C compiler; the rest are the libraries
# strata uses (SQLite, cJSON, libmicrohttpd, OpenBLAS in its OpenMP build,
# Open MPI, cmocka); curl talks to `strata serve` in the demo; protobuf-c
# reads ONNX models, with the onnx.proto schema python3-onnx ships.
need="build-essential pkg-config libsqlite3-dev sqlite3 libcjson-dev libmicrohttpd-dev
libopenblas-dev libopenblas-openmp-dev libopenblas0-openmp openmpi-bin libopenmpi-dev libcmocka-dev
curl libprotobuf-c-dev protobuf-c-compiler python3-onnx"
for what in "$@"; do
    case "$what" in
    test) need="$need python3 python3-venv chromium" ;;
    demo) need="$need python3 python3-venv" ;;
    bench) need="$need wrk python3" ;;
    fuzz) need="$need clang" ;;
    *) echo "setup: unknown part '$what' (test, demo, bench or fuzz)" >&2; exit 2 ;;
    esac
done

missing=""
for p in $need; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

if [ -n "$missing" ]; then
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
fi

# The tools from PyPI, pinned, in their own environment (never the system's
# Python): the tests' schemathesis, tomli and onnx; the demo's onnx.
want=""
case " $* " in *" test "*) want="schemathesis==4.32.5 tomli==2.2.1 onnx==1.17.0" ;; esac
case " $* " in *" demo "*) want="$want onnx==1.17.0" ;; esac
if [ -n "$want" ]; then
    venv=build/venv
    imports=$(echo "$want" | tr ' ' '\n' | sed -n 's/==.*//p' | sort -u | paste -sd, -)
    if ! "$venv/bin/python" -c "import $imports" 2>/dev/null; then
        echo "setup: $want into $venv"
        /usr/bin/python3 -m venv "$venv"
        # shellcheck disable=SC2086
        "$venv/bin/pip" install -q --disable-pip-version-check $want
    fi
fi
exit 0
