#!/bin/sh
# The searcher in a closed loop on this machine: for four small models, a
# search for 2 ranks with this machine's newest cost model, then the found
# plan and the best baseline each run for real 5 times, alternately (A B A B
# ..., so that a noisy moment of a shared machine falls on both), with
# `strata run --plan`, 6 steps: the median of the 5 after the first. Prints
# the median of the 5 runs per plan, their spread, and the ratio.
# Usage: bench-search-loop.sh STRATA DB CLUSTER_JSON. Figures, not pass/fail.
set -eu
strata=$1
db=$2
cluster=$3
out=$(dirname "$db")
cm=$("$strata" costmodel list --db "$db" | awk 'NR == 2 { print $1 }')
echo "search in a closed loop: 2 ranks of this machine, cost model $cm, 300 evaluations;"
echo "measured: median of 5 steps after the first; median of 5 runs per plan, alternating; (min-max of the 5 runs)"
printf '  %-16s %26s %26s %8s  %s\n' model found baseline ratio "found plan"

# "median (min-max)" of the numbers on stdin
summary() { sort -g | awk '{ v[NR] = $1 } END { printf "%.2f (%.1f-%.1f)", v[int((NR + 1) / 2)], v[1], v[NR] }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# the measured step (ms) of one run of plan $1
measure() {
    "$strata" run --plan "$1" --steps 6 --db "$db" 2>/dev/null |
        sed -n 's/.*measured \([0-9.]*\) ms.*/\1/p'
}

plan_of() { sed -n "s/.*\"$1\":[[:space:]]*\"\([0-9a-f]\{16\}\)\".*/\1/p" | head -1; }

for spec in "gpt-2x128:gpt --layers 2 --hidden 128 --heads 4 --seq 64 --vocab 512 --batch 8" \
            "mlp-4x512:mlp --layers 4 --hidden 512 --input 256 --batch 64" \
            "cnn-vgg-small:vgg16 --width 8 --fc 64 --image 32 --classes 10 --batch 8" \
            "dlrm-8x50k:dlrm --tables 8 --rows 50000 --dim 64 --batch 256"; do
    name=${spec%%:*}
    # shellcheck disable=SC2086
    "$strata" model build ${spec#*:} -o "$out/$name.json" >/dev/null 2>&1
    "$strata" search --model "$out/$name.json" --cluster "$cluster" --devices 2 \
        --costmodel "$cm" --budget 300evals --db "$db" --json >"$out/$name-search.json" 2>/dev/null
    best=$(plan_of plan_id <"$out/$name-search.json")
    base=$(plan_of best_baseline_plan_id <"$out/$name-search.json")
    desc=$(sed -n 's/.*"name":[[:space:]]*"\(pp[^"]*\)".*/\1/p' "$out/$name-search.json" | head -1)
    if [ "$best" = "$base" ]; then
        m=$(for r in 1 2 3 4 5; do measure "$best"; done | summary)
        printf '  %-16s %23s ms %23s ms %8s  %s (the best baseline itself)\n' "$name" "$m" "$m" 1.00 "$desc"
        continue
    fi
    : >"$out/$name-found.ms"
    : >"$out/$name-base.ms"
    for r in 1 2 3 4 5; do
        measure "$best" >>"$out/$name-found.ms"
        measure "$base" >>"$out/$name-base.ms"
    done
    ratio=$(awk -v a="$(median <"$out/$name-base.ms")" -v b="$(median <"$out/$name-found.ms")" \
        'BEGIN { printf "%.2f", a / b }')
    printf '  %-16s %23s ms %23s ms %7sx  %s\n' "$name" "$(summary <"$out/$name-found.ms")" \
        "$(summary <"$out/$name-base.ms")" "$ratio" "$desc"
done
