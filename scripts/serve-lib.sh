# serve-lib.sh — sourced by the tests that need a live `strata serve`:
#   serve_start DB [ARGS...]   starts it on a free loopback port; sets PORT and SERVE_PID
#   serve_stop                 SIGTERM, and its exit status checked (0)
# STRATA_BIN names the binary (the Makefile exports it).

# (variables of their own start with serve_, so a caller's are left alone)
serve_start() {
    serve_db=$1; shift
    SERVE_ERR=$(mktemp)
    "$STRATA_BIN" serve --listen 127.0.0.1:0 --db "$serve_db" "$@" 2>"$SERVE_ERR" &
    SERVE_PID=$!
    PORT=""
    serve_i=0
    while [ -z "$PORT" ] && [ $serve_i -lt 100 ]; do
        PORT=$(sed -n 's/.*"serving":"http:\/\/[^:]*:\([0-9]*\)\/".*/\1/p' "$SERVE_ERR")
        [ -z "$PORT" ] && sleep 0.1
        serve_i=$((serve_i + 1))
    done
    if [ -z "$PORT" ]; then
        echo "strata serve did not start:" >&2
        cat "$SERVE_ERR" >&2
        return 1
    fi
}

serve_stop() {
    kill -TERM "$SERVE_PID"
    serve_rc=0
    wait "$SERVE_PID" || serve_rc=$?
    if [ "$serve_rc" != 0 ]; then
        echo "strata serve exited with $serve_rc after SIGTERM:" >&2
        tail -20 "$SERVE_ERR" >&2
    fi
    rm -f "$SERVE_ERR"
    return "$serve_rc"
}
