#!/bin/sh
# The cost model's figures on this machine, in one run: profile it (the full
# profile, ~13 minutes on 2 cores; STRATA_BENCH_QUICK=1 for the quick one,
# ~1 minute), train the operator model on that profile and print its held-out
# error per op kind beside the analytical and roofline baselines, then run
# the default validation suite, three rounds (predicted against measured step time and
# peak memory, MAPE and Kendall tau), then close the loop (train again with
# --runs on what validate measured) and validate once more with the
# calibrated model on fresh runs. Last, the searcher in the same closed loop
# (scripts/bench-search-loop.sh). Figures, not pass/fail.
set -eu
strata=${1:-build/strata}
out=build/bench
mkdir -p "$out"
db="$out/costmodel.db"
rm -f "$db" "$db-wal" "$db-shm"
quick=""
[ "${STRATA_BENCH_QUICK:-0}" = 1 ] && quick="--quick"
echo "cost model on this machine (profile ${quick:-full}):"
"$strata" profile $quick --quiet --db "$db" -o "$out/this-machine.json" >"$out/profile.log" 2>&1 || { cat "$out/profile.log"; exit 1; }
profile=$("$strata" profile list --db "$db" | awk 'NR == 2 { print $1 }')
"$strata" costmodel train --profile "$profile" --db "$db" --quiet
echo
"$strata" validate --repeats 3 --db "$db" 2>&1
echo
"$strata" costmodel train --profile "$profile" --runs --db "$db" --quiet | grep -E "closed loop|costmodel show"
echo
"$strata" validate --repeats 3 --db "$db" 2>/dev/null
echo
sh scripts/bench-search-loop.sh "$strata" "$db" "$out/this-machine.json"
