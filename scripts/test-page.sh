#!/bin/sh
# The API's page in a real browser: headless Chromium (Debian's `chromium`;
# `sh scripts/setup.sh test` installs it) loads it from a live server whose
# store holds a finished search, and the DOM it dumps after the page's script
# ran must hold that search in the search table, the best-so-far curve drawn
# from the search's event stream, and the plan's table against the
# baselines. Compared by content, not pixels.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
: "${STRATA_BIN:=$root/build/strata}"
browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
    echo "test-page: chromium is missing; run: sh scripts/setup.sh test" >&2
    exit 1
fi
. "$root/scripts/serve-lib.sh"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
db="$dir/page.db"
"$STRATA_BIN" search --model "$root/models/tiny-mlp.json" \
    --cluster "$root/clusters/dgx-a100-80gb.json" --devices 4 --budget 300evals \
    --db "$db" --json >"$dir/search.json"
sid=$(sed -n 's/.*"search_id":[[:space:]]*"\([0-9a-f]*\)".*/\1/p' "$dir/search.json")
pid=$(sed -n 's/.*"plan_id":[[:space:]]*"\([0-9a-f]*\)".*/\1/p' "$dir/search.json")
# the DOM of URL $1 after the page's script ran, in $2 (a profile of its own
# each time: nothing kept from an earlier load)
dump() {
    status=0
    # --no-sandbox: Chromium's sandbox refuses to run as root
    timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
        --user-data-dir="$(mktemp -d -p "$dir")" --virtual-time-budget=20000 \
        --dump-dom "$1" >"$2" 2>"$dir/chromium.err" || status=$?
    if [ "$status" != 0 ]; then
        echo "test-page: chromium failed ($status):" >&2
        tail -20 "$dir/chromium.err" >&2
        serve_stop
        exit 1
    fi
}
serve_start "$db" --quiet
dump "http://127.0.0.1:$PORT/?plan=$pid" "$dir/dom.html"
serve_stop
fail() { echo "test-page: $1" >&2; sed -n '1,400p' "$dir/dom.html" | grep -E "<td|<path|err" | head -40 >&2; exit 1; }
grep -q "<td>$sid</td>" "$dir/dom.html" || fail "the search table does not list search $sid"
points=$(sed -n 's/.*id="bestcurve" data-points="\([0-9]*\)".*/\1/p' "$dir/dom.html")
[ -n "$points" ] || fail "no best-so-far curve was drawn"
[ "$points" -ge 2 ] || fail "the curve has $points point(s), expected 2 or more"
grep -q '<path d="M' "$dir/dom.html" || fail "the curve has no path data"
rows=$(grep -o '<table id="base">.*</table>' "$dir/dom.html" | grep -o '<tr>' | wc -l)
[ "$rows" -ge 3 ] || fail "the baseline table has $rows row(s) (with its header), expected 3 or more"
grep -q 'id="tl" alt="timeline"[^>]*src="blob:' "$dir/dom.html" || fail "the timeline image was not loaded"
# a server with a token (every API call without it is a 401): a link
# carrying it in its fragment fills the page. (Without it the page would
# ask, and a headless browser waits at the prompt.)
printf 'page-test-token-0123456789\n' >"$dir/token"
serve_start "$db" --quiet --token-file "$dir/token"
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/v1/searches")
[ "$code" = 401 ] || { serve_stop; fail "the server with a token answered $code without it"; }
dump "http://127.0.0.1:$PORT/?plan=$pid#token=page-test-token-0123456789" "$dir/dom-token.html"
serve_stop
grep -q "<td>$sid</td>" "$dir/dom-token.html" || fail "with the token in the link, the search is not listed"
grep -q 'src="blob:' "$dir/dom-token.html" || fail "with the token in the link, the timeline was not loaded"
echo "test-page: search $sid listed, curve of $points points, $((rows - 1)) baselines, timeline shown; with a token, taken from the link"
