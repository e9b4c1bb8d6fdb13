#!/bin/sh
# Packs what a GPU machine without strata's dependencies needs to run the GPU
# checks (scripts/gpu-check.sh): the strata binary with its CUDA backend
# (libstrata-cuda.so, which it loads from its own directory) and the GPU test programs,
# built here, with the shared libraries they load that are not part of the
# C runtime or the CUDA toolkit, and Open MPI (its plugins and orted, laid
# out under usr/ so that OPAL_PREFIX relocates it). Everything goes into one
# compressed file, .gpu/pack.tar.xz (ignored by git), which gpu-check.sh
# unpacks when the machine lacks the libraries.
set -eu
cd "$(dirname "$0")/.."
make --no-print-directory all build/tests/test_comm_nccl \
    $(ls tests/test_cuk_*.c 2>/dev/null | sed 's#tests/\(.*\)\.c#build/tests/\1#') >/dev/null
rm -rf .gpu/stage && mkdir -p .gpu/stage/bin .gpu/stage/lib .gpu/stage/usr/bin
cp build/strata build/libstrata-cuda.so build/tests/test_comm_nccl .gpu/stage/bin/
for t in build/tests/test_cuk_*; do
    case "$t" in *.o|*.d) ;; *) cp "$t" .gpu/stage/bin/ ;; esac
done
# libraries: everything ldd resolves except glibc's own and the CUDA toolkit's
for b in .gpu/stage/bin/*; do ldd "$b"; done | awk '$3 ~ /^\// {print $3}' | sort -u |
while read -r lib; do
    case "$(basename "$lib")" in
    libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*) continue ;;
    libcuda.so*|libcublas*|libcudnn*|libnccl*) continue ;;
    esac
    cp -L "$lib" .gpu/stage/lib/
done
# Open MPI as Debian lays it out, relocatable with OPAL_PREFIX=<dir>/usr
mkdir -p .gpu/stage/usr/lib/x86_64-linux-gnu .gpu/stage/usr/share
cp -a /usr/lib/x86_64-linux-gnu/openmpi .gpu/stage/usr/lib/x86_64-linux-gnu/
cp -a /usr/share/openmpi .gpu/stage/usr/share/
cp /usr/bin/orted /usr/bin/orterun .gpu/stage/usr/bin/
ln -sf orterun .gpu/stage/usr/bin/mpirun
tar -C .gpu/stage -cJf .gpu/pack.tar.xz .
rm -rf .gpu/stage
ls -la .gpu/pack.tar.xz
