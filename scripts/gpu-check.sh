#!/bin/bash
# strata's checks on a machine with a GPU, in one go: what the machine has,
# the CUDA kernel tests, the NCCL backend test, `strata run --backend cuda
# --verify` on the test models against the CPU, and a GPT-2-small training
# step timed against PyTorch eager on the same GPU. Everything printed also
# goes to $OUT/gpu-check.log (OUT defaults to ./gpu-out).
#
# Uses build/ when its programs load here; otherwise unpacks
# .gpu/pack.tar.xz (made by scripts/gpu-pack.sh on a machine with the
# dependencies) and takes the libraries and Open MPI from there
# (STRATA_USE_PACK=1: always).
#   scripts/gpu-check.sh [--quick]     --quick: skip the GPT-2-small timing
set -u
quick=0
case "${1:-}" in
"") ;;
--quick) quick=1 ;;
*) echo "usage: scripts/gpu-check.sh [--quick]  (unknown argument: $1)" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.log") 2>&1
say() { printf '\n=== %s\n' "$*"; }

say "machine"
nvidia-smi -L 2>&1 || echo "nvidia-smi: not found"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
ldd --version 2>&1 | head -1
ls /usr/local/cuda/lib64 2>/dev/null | grep -E '^lib(cudart|cublas|cudnn|nccl)\.so\.[0-9]+$' | tr '\n' ' '; echo
py_libs=$(python3 - <<'PY' 2>/dev/null
import glob, os
try:
    import torch
    print(os.path.join(os.path.dirname(torch.__file__), "lib"))
    import nvidia
    for d in nvidia.__path__:
        for lib in glob.glob(os.path.join(d, "*", "lib")):
            print(lib)
except Exception:
    pass
PY
)
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "nccl", torch.cuda.nccl.version())' 2>&1
libpath=$(echo "$py_libs" | tr '\n' ':')/usr/local/cuda/lib64
export LD_LIBRARY_PATH="$libpath:${LD_LIBRARY_PATH:-}"

say "programs"
bin=build; tests=build/tests
if [ "${STRATA_USE_PACK:-0}" = 1 ] || [ ! -x build/strata ] || [ ! -f build/libstrata-cuda.so ] ||
   ldd build/strata build/libstrata-cuda.so 2>&1 | grep -q 'not found'; then
    if [ -f .gpu/pack.tar.xz ]; then
        rm -rf .gpu/x && mkdir -p .gpu/x && tar -C .gpu/x -xJf .gpu/pack.tar.xz
        bin=.gpu/x/bin; tests=.gpu/x/bin
        export LD_LIBRARY_PATH="$PWD/.gpu/x/lib:$PWD/.gpu/x/usr/lib/x86_64-linux-gnu/openmpi/lib:$LD_LIBRARY_PATH"
        export OPAL_PREFIX="$PWD/.gpu/x/usr" PATH="$PWD/.gpu/x/usr/bin:$PATH"
        echo "using the packed programs (.gpu/pack.tar.xz)"
    else
        echo "build/strata does not load here and there is no .gpu/pack.tar.xz"
    fi
fi
# strata loads its CUDA backend (libstrata-cuda.so, beside it) when a GPU is asked for
ldd "$bin/strata" "$bin/libstrata-cuda.so" | grep -E 'not found|cublas|cudnn|nccl|cudart|mpi|:$'
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export STRATA_BIN="$PWD/$bin/strata" STRATA_ROOT="$PWD"
S="$bin/strata"

say "kernel and NCCL tests"
for t in "$tests"/test_cuk_* "$tests"/test_comm_nccl; do
    [ -x "$t" ] || continue
    echo "--- $t"; "$t"; echo "exit $?"
done

say "strata run --backend cuda --verify (one GPU against the CPU)"
w="$OUT/work"; mkdir -p "$w"
run_case() {   # name, model build args...
    name=$1; shift
    "$S" model build "$@" -o "$w/$name.json" >/dev/null &&
    "$S" strategy build dp --world 1 --model "$w/$name.json" -o "$w/$name-dp1.json" >/dev/null &&
    "$S" run --model "$w/$name.json" --strategy "$w/$name-dp1.json" --steps 3 --backend cuda \
        --verify --db "$w/runs.db"
    echo "exit $? ($name)"
}
run_case mlp mlp --layers 2 --hidden 32 --input 16 --classes 8 --batch 8
run_case gpt gpt --layers 2 --hidden 32 --heads 4 --seq 16 --vocab 64 --batch 8
run_case vgg vgg16 --width 4 --fc 32 --image 32 --batch 8 --classes 10
run_case moe moe --layers 2 --hidden 32 --heads 4 --seq 16 --vocab 64 --batch 4 --experts 2 --every 1
run_case gpt-mid gpt --layers 4 --hidden 256 --heads 8 --seq 128 --vocab 1024 --batch 8

if [ $quick = 0 ]; then
    say "GPT-2-small training step: strata against PyTorch eager (fp32, no TF32, batch 8 x 1024)"
    "$S" model build gpt --preset gpt2-small -o "$w/gpt2.json" >/dev/null &&
    "$S" strategy build dp --world 1 --model "$w/gpt2.json" -o "$w/gpt2-dp1.json" >/dev/null &&
    "$S" run --model "$w/gpt2.json" --strategy "$w/gpt2-dp1.json" --steps 8 --backend cuda \
        --no-store | tee "$w/strata-gpt2.txt"
    python3 bench/torch_gpt.py --steps 6 | tee "$w/torch-gpt2.txt"
    s=$(awk '/^step/ && $2 >= 2 {print $6}' "$w/strata-gpt2.txt" | sort -n |
        awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]}')
    t=$(sed -n 's/^torch: median step \([0-9.]*\) ms.*/\1/p' "$w/torch-gpt2.txt")
    if [ -n "$s" ] && [ -n "$t" ]; then
        echo "GPT-2-small step: strata $s ms, torch $t ms, strata/torch $(echo "$s $t" | awk '{printf "%.2f", $1/$2}')"
    fi
fi
say "done"
