#!/bin/sh
# Runs each libFuzzer harness (build/fuzz/fuzz_NAME) for SECONDS from its
# corpus (build/fuzz/corpus/NAME, seeded from fuzz/seeds/NAME and every
# fuzz/regress/NAME input), with fuzz/NAME.dict when there is one. Prints
# executions and crashes per harness; a crash input is left as
# build/fuzz/crash-NAME-* (copy it to fuzz/regress/NAME/ to keep it as a
# regression test) and fails the run.
#   sh scripts/fuzz.sh SECONDS NAME...
set -u
secs=$1; shift
failed=""
for name in "$@"; do
    corpus=build/fuzz/corpus/$name
    mkdir -p "$corpus"
    for d in fuzz/seeds/$name fuzz/regress/$name; do
        [ -d "$d" ] && cp -n "$d"/* "$corpus"/ 2>/dev/null
    done
    dict=""
    [ -f fuzz/$name.dict ] && dict="-dict=fuzz/$name.dict"
    # The router's server has worker threads whose allocations outlive the
    # input that queued them, so libFuzzer's per-input leak check would
    # rerun most inputs looking for leaks that are not there (the harness
    # ran at a tenth of its speed); leaks are still checked at exit (LSan)
    # and by the sanitizer test suite, which replays every kept input.
    extra=""
    [ "$name" = router ] && extra="-detect_leaks=0"
    log=build/fuzz/$name.log
    # shellcheck disable=SC2086
    STRATA_ROOT=$(pwd) ASAN_OPTIONS=detect_leaks=1 build/fuzz/fuzz_$name -max_total_time="$secs" \
        -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 $dict \
        -artifact_prefix=build/fuzz/crash-$name- $extra "$corpus" >"$log" 2>&1
    rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    # libFuzzer also keeps inputs that ran long (slow-unit-*): not crashes,
    # and on a shared machine mostly the machine's doing
    crashes=$(ls build/fuzz/crash-$name-* 2>/dev/null | grep -vc slow-unit-)
    slow=$(ls build/fuzz/crash-$name-slow-unit-* 2>/dev/null | wc -l)
    echo "fuzz $name: ${runs:-0} executions in ${secs} s, corpus $(ls "$corpus" | wc -l), exit $rc, crash inputs kept: $crashes, slow inputs kept: $slow"
    if [ "$rc" != 0 ]; then
        failed="$failed $name"
        grep -E "ERROR|SUMMARY|runtime error" "$log" | head -5
    fi
done
[ -z "$failed" ] || { echo "fuzz: failed:$failed (logs in build/fuzz/*.log)"; exit 1; }
