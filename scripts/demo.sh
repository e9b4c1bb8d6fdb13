#!/bin/sh
# The demo: GPT-3 175B on 128 DGX A100 nodes (1024 GPUs) under Megatron-LM's 1024-GPU
# configuration (t=8, p=16, d=8; Narayanan et al., 2021), lowered to per-rank
# programs and stored. Files land in build/demo/.
set -eu
strata=${1:-build/strata}
out=build/demo
mkdir -p "$out"
db="$out/strata.db"
run() { echo; echo "\$ $*"; "$@"; }

run "$strata" model build gpt --preset gpt3-175b -o "$out/gpt3-175b.json"
run "$strata" model show "$out/gpt3-175b.json"
run "$strata" cluster show clusters/dgx-a100-80gb.json --nodes 128
run "$strata" strategy build megatron --model "$out/gpt3-175b.json" \
    --cluster clusters/dgx-a100-80gb.json --nodes 128 --tp 8 --pp 16 --microbatches 192 --recompute \
    -o "$out/megatron.json"
run "$strata" strategy show "$out/megatron.json" --model "$out/gpt3-175b.json"
run "$strata" lower --model "$out/gpt3-175b.json" --cluster clusters/dgx-a100-80gb.json \
    --nodes 128 --strategy "$out/megatron.json" --db "$db"
run "$strata" plans list --db "$db"

# What that plan costs, before anything runs: the lowered programs simulated
# with the analytical cost model; the timeline opens in a browser.
run "$strata" estimate --model "$out/gpt3-175b.json" --cluster clusters/dgx-a100-80gb.json \
    --nodes 128 --strategy "$out/megatron.json" --db "$db" --svg "$out/gpt3-175b-timeline.svg"

# strata's own answer for the same model and cluster: a search of the whole
# strategy space (meshes, cuts, micro-batches, schedules, splits, recompute,
# sync and ZeRO), started from the classic layouts, every candidate predicted
# from its lowered programs; the winner is stored and printed against
# Megatron-LM's grid and the other baselines.
run "$strata" search --model "$out/gpt3-175b.json" --cluster clusters/dgx-a100-80gb.json \
    --nodes 128 --budget 20s --db "$db" --log "$out/search-gpt3-175b.jsonl"

# The winner as Megatron-LM's arguments, ready for a launch script (or the
# closest plan Megatron-LM can express, if it cannot express this one).
best=$("$strata" searches list --db "$db" | awk 'NR == 2 { print $7 }')
echo; echo "\$ $strata plans export $best --to megatron --db $db"
said=$("$strata" plans export "$best" --to megatron --db "$db" 2>&1) || true
echo "$said"
closest=$(echo "$said" | sed -n 's/.*is stored as \([0-9a-f]*\):.*/\1/p')
[ -z "$closest" ] || run "$strata" plans export "$closest" --to megatron --db "$db"

# A model from ONNX: the onnx package's ResNet-50 (its weights stripped),
# imported, then searched on one DGX A100 node.
light=$(build/venv/bin/python -c 'import onnx, os; print(os.path.dirname(onnx.__file__))')/backend/test/data/light
run "$strata" model import "$light/light_resnet50.onnx" --batch 256 -o "$out/resnet50.json"
run "$strata" search --model "$out/resnet50.json" --cluster clusters/dgx-a100-80gb.json \
    --budget 10s --db "$db"
# and a GPT-2-style decoder as exporters write it (heads by Reshape and
# Transpose, the layer norm and GELU spelled out, a causal mask): the zoo's
# gpt, op for op
build/venv/bin/python tests/support/onnx_models.py gpt "$out/gpt.onnx"
run "$strata" model import "$out/gpt.onnx" --batch 4 -o "$out/gpt-onnx.json"
run "$strata" model show "$out/gpt-onnx.json"

# The same as a service: `strata serve` on a free loopback port, GPT-3 175B
# and the 1024-GPU cluster submitted with curl, a 10-second search followed
# through its event stream to the end, its plan fetched, the server stopped.
STRATA_BIN=$strata
. scripts/serve-lib.sh
rm -f "$out/service.db"*
serve_start "$out/service.db" --quiet
api=http://127.0.0.1:$PORT
echo; echo "strata serve is listening on $api (the page: $api/)"
id_of() { sed -n 's/^{"id":"\([0-9a-f]*\)".*/\1/p'; }
# POST PATH BODY-ARGS...: shows the call and its answer; the answer into $answer
post() {
    path=$1; shift
    echo; echo "\$ curl -sS -X POST '$api$path' $*"
    answer=$(curl -sS -X POST "$api$path" "$@")
    echo "$answer"
}
post /v1/models -d '{"zoo": "gpt", "options": {"preset": "gpt3-175b", "batch": 1536}}'
model=$(echo "$answer" | id_of)
post "/v1/clusters?nodes=128" --data-binary @clusters/dgx-a100-80gb.json
cluster=$(echo "$answer" | id_of)
post /v1/searches -d "{\"model\": \"$model\", \"cluster\": \"$cluster\", \"budget\": \"10s\"}"
search=$(echo "$answer" | id_of)
echo; echo "\$ curl -sS -N '$api/v1/searches/$search/events?follow=1'   (its progress, live; the last lines:)"
curl -sS -N "$api/v1/searches/$search/events?follow=1" | tail -n 3 | cut -c 1-220
plan=$(curl -sS "$api/v1/searches/$search" | sed -n 's/.*"best_plan_id":"\([0-9a-f]*\)".*/\1/p')
echo; echo "\$ curl -sS $api/v1/plans/$plan   (its strategy, prediction and baselines; the first bytes:)"
curl -sS "$api/v1/plans/$plan" | cut -c 1-300; echo
serve_stop

# Then a small plan for real: a GPT on 2 CPU ranks with Megatron tensor
# parallelism, checked step by step against one rank, and the stored run.
run "$strata" model build gpt --layers 2 --hidden 64 --heads 4 --seq 32 --vocab 256 --batch 8 \
    -o "$out/gpt-small.json"
run "$strata" strategy build megatron --model "$out/gpt-small.json" --world 2 --tp 2 \
    -o "$out/tp2.json"
run "$strata" run --model "$out/gpt-small.json" --strategy "$out/tp2.json" --steps 5 --verify \
    --db "$db"
run "$strata" runs list --db "$db"
id=$("$strata" runs list --db "$db" | awk 'NR == 2 { print $1 }')
run "$strata" runs show "$id" --db "$db"

# The cost model in a closed loop on this machine: measure it (a quick
# profile, about a minute), train the operator model on what was measured,
# then predict and run two plans and compare.
run "$strata" profile --quick --db "$db" --quiet -o "$out/this-machine.json"
run "$strata" costmodel train --profile "$("$strata" profile list --db "$db" | awk 'NR == 2 { print $1 }')" \
    --db "$db"
run "$strata" validate --suite suites/demo.json --db "$db"

# The closed loop: the cost model learns from the plans validate measured.
run "$strata" costmodel train --profile "$("$strata" profile list --db "$db" | awk 'NR == 2 { print $1 }')" \
    --runs --db "$db"

# Last, search for this machine with that cost model: the suite's GPT on
# its 2 cores, the winner run for real, checked against one rank, and its
# prediction beside what it measured.
cm=$("$strata" costmodel list --db "$db" | awk 'NR == 2 { print $1 }')
run "$strata" model build gpt --layers 2 --hidden 256 --heads 4 --seq 128 --vocab 4096 --batch 8 \
    -o "$out/gpt-256.json"
run "$strata" search --model "$out/gpt-256.json" --cluster "$out/this-machine.json" --devices 2 \
    --costmodel "$cm" --budget 400evals --db "$db"
plan=$("$strata" searches list --db "$db" | awk 'NR == 2 { print $7 }')
run "$strata" run --plan "$plan" --steps 6 --verify --db "$db"
