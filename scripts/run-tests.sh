#!/bin/sh
# Runs each test program, then prints one closing line: "N passed, N failed".
# A program counts as failed when it exits non-zero (cmocka does on any failure).
#
# A test named mpi_* runs under mpirun on STRATA_TEST_NP ranks (4 by default,
# oversubscribed where there are fewer cores), bounded by STRATA_TEST_TIMEOUT
# seconds (600) so a deadlocked collective fails instead of hanging. Without
# mpirun, or when it was not built (no mpicc), it is skipped with a message.
# LeakSanitizer is off for those: Open MPI leaves its own allocations at exit.
passed=0; failed=0; failed_names=""; skipped_names=""
np=${STRATA_TEST_NP:-4}
limit=${STRATA_TEST_TIMEOUT:-600}
timeout_cmd=""
command -v timeout >/dev/null 2>&1 && timeout_cmd="timeout $limit"
for t in "$@"; do
    case "$(basename "$t")" in
    mpi_*)
        if ! command -v mpirun >/dev/null 2>&1; then
            echo "== $t: skipped: mpirun not found (install openmpi-bin)"
            skipped_names="$skipped_names $t"; continue
        fi
        if [ ! -x "$t" ]; then
            echo "== $t: skipped: not built (no mpicc at build time; install libopenmpi-dev)"
            skipped_names="$skipped_names $t"; continue
        fi
        echo "== mpirun -np $np $t"
        # shellcheck disable=SC2086
        if ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
           $timeout_cmd mpirun --allow-run-as-root --oversubscribe -np "$np" "$t"; then
            passed=$((passed + 1))
        else
            failed=$((failed + 1)); failed_names="$failed_names $t"
        fi
        continue ;;
    esac
    echo "== $t"
    if "$t"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1)); failed_names="$failed_names $t"
    fi
done
[ -n "$skipped_names" ] && echo "skipped:$skipped_names"
[ -n "$failed_names" ] && echo "failed:$failed_names"
echo "tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
