#!/bin/sh
# The REST API held to docs/openapi.yaml by schemathesis (from PyPI, in
# build/venv; `sh scripts/setup.sh test` installs it), against a live server
# whose store holds a finished search and its plans, so that the
# generated requests meet real rows as well as bad ones.
#
# Checked: no 5xx, every status and content type documented, every body
# matching its schema, documented headers present, and requests that break
# the schema refused. Not checked: that every schema-valid request is
# accepted: a model or strategy can be well-formed JSON and still wrong (a
# letter no op has, a split that does not divide), which a schema cannot say.
# POST /v1/profiles is left out: each accepted call measures this machine for
# a minute (tests/test_api.c runs one small profile through it).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
: "${STRATA_BIN:=$root/build/strata}"
st="$root/build/venv/bin/schemathesis"
if [ ! -x "$st" ]; then
    echo "test-openapi: $st is missing; run: sh scripts/setup.sh test" >&2
    exit 1
fi
. "$root/scripts/serve-lib.sh"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
db="$dir/api.db"
"$STRATA_BIN" search --model "$root/models/tiny-mlp.json" \
    --cluster "$root/clusters/dgx-a100-80gb.json" --devices 4 --budget 300evals \
    --db "$db" --json >/dev/null
serve_start "$db" --quiet --workers 1 --queue 2
status=0
# from the temporary directory: schemathesis keeps a cache where it runs
cd "$dir"
"$st" run "$root/docs/openapi.yaml" --url "http://127.0.0.1:$PORT" --seed 1 \
    --max-examples "${STRATA_SCHEMATHESIS_EXAMPLES:-40}" --exclude-name 'POST /v1/profiles' \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,negative_data_rejection \
    --no-color >"$dir/st.out" 2>&1 || status=$?
tail -25 "$dir/st.out"
serve_stop || status=1
exit $status
