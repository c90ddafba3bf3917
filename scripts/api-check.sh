#!/usr/bin/env bash
# Checks a running courier-api against its own OpenAPI document:
#   1. the document validates as OpenAPI 3.1 (openapi-spec-validator);
#   2. schemathesis generates requests for every operation and fails on any
#      5xx, any status code the document does not list, any response whose
#      body or content type breaks the document.
#
# usage: scripts/api-check.sh BASE_URL ADMIN_KEY [extra schemathesis args]
# e.g.   scripts/api-check.sh http://127.0.0.1:8080 demo-admin-key-0123456789abcdef
#
# One worker: with several, hypothesis calls ast.parse from threads, which
# CPython 3.11.7 (this machine's) can fail with "AST constructor recursion
# depth mismatch" — a bug of the interpreter, not a finding.
#
# The tools are installed once into a venv under
# ${COURIER_TOOLS_CACHE:-$HOME/.cache/courier-tools} (needs python3 with venv).
set -euo pipefail

SCHEMATHESIS_VERSION=4.32.5
VALIDATOR_VERSION=0.9.0
base=${1:?usage: scripts/api-check.sh BASE_URL ADMIN_KEY}
key=${2:?usage: scripts/api-check.sh BASE_URL ADMIN_KEY}
shift 2

cache="${COURIER_TOOLS_CACHE:-${HOME:-/tmp}/.cache/courier-tools}"
venv="$cache/venv-st-$SCHEMATHESIS_VERSION-osv-$VALIDATOR_VERSION"
if [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv" || { echo "api-check: python3 -m venv failed (install python3-venv)" >&2; exit 1; }
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "schemathesis==$SCHEMATHESIS_VERSION" "openapi-spec-validator==$VALIDATOR_VERSION" ||
    { echo "api-check: pip install schemathesis openapi-spec-validator failed" >&2; exit 1; }
  touch "$venv/.complete"
fi

# schemathesis keeps a cache (.schemathesis/) in its working directory: give
# it a scratch one, so runs neither litter the tree nor replay old crashes.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
doc="$work/openapi.json"
curl -sSf "$base/openapi.json" -o "$doc"
"$venv/bin/python" - "$doc" "$base" "$key" <<'PY'
import json, os, sys, urllib.request
import jsonschema
from openapi_spec_validator import validate
from openapi_spec_validator.validation.validators import OpenAPIV31SpecValidator
doc = json.load(open(sys.argv[1]))
base, key = sys.argv[2], sys.argv[3]
assert doc["openapi"].startswith("3.1"), doc["openapi"]
validate(doc, cls=OpenAPIV31SpecValidator)
ops = sum(1 for p in doc["paths"].values() for m in p if m in ("get", "put", "post", "patch", "delete"))
print(f"ok   openapi.json validates as OpenAPI {doc['openapi']}: {len(doc['paths'])} paths, {ops} operations")
# Real answers for real data, which generated requests rarely reach:
# API_CHECK_SAMPLES="TEMPLATE|PATH ..." (GET, 200) are checked against the document.
for sample in os.environ.get("API_CHECK_SAMPLES", "").split():
    template, path = sample.split("|", 1)
    schema = doc["paths"][template]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    req = urllib.request.Request(base + path, headers={"Authorization": "Bearer " + key})
    body = json.load(urllib.request.urlopen(req))
    jsonschema.Draft202012Validator({**schema, "components": doc["components"]}).validate(body)
    print(f"ok   GET {path} answers as {template} documents")
PY

cd "$work"
"$venv/bin/st" run "$base/openapi.json" \
  -H "Authorization: Bearer $key" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
  --max-examples "${API_CHECK_EXAMPLES:-25}" \
  --workers 1 \
  --request-timeout 30 \
  --seed "${API_CHECK_SEED:-1}" \
  --no-color \
  "$@"
