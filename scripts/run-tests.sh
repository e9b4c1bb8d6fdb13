#!/bin/sh
# Runs each test program, then prints one closing line: "N passed, N failed".
# A program counts as failed when it exits non-zero (cmocka does on any failure).
passed=0; failed=0; failed_names=""
for t in "$@"; do
    echo "== $t"
    if "$t"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1)); failed_names="$failed_names $t"
    fi
done
[ -n "$failed_names" ] && echo "failed:$failed_names"
echo "tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
