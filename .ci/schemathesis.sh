#!/usr/bin/env bash
# Runs schemathesis against a running api: no 5xx, every response matches the OpenAPI document.
# Uses its own database (dropped afterwards) and a free port; needs target/debug/{api,migration}.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v schemathesis >/dev/null 2>&1; then
  python3 -m pip install -q --disable-pip-version-check schemathesis
fi

db="cs_schemathesis_$$"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
api_pid=""
cleanup() {
  [ -n "$api_pid" ] && kill "$api_pid" 2>/dev/null && wait "$api_pid" 2>/dev/null || true
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE \"$db\""
DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" target/debug/migration up >/dev/null
psql -h 127.0.0.1 -U postgres -q "$db" -c "INSERT INTO users (id, clerk_user_id, email, first_name, clerk_updated_at)
  VALUES ('00000000-0000-0000-0000-000000000001', 'user_schemathesis', 'st@example.com', 'St', 1)"

DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" API_ADDR="127.0.0.1:$port" \
  API_SERVICE_KEYS=schemathesis-key-0123456789abcdef0123 \
  TOKEN_ENCRYPTION_KEY=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY= \
  CLERK_SECRET_KEY=sk_test_schemathesis CLERK_API_URL=http://127.0.0.1:9 RUST_LOG=warn \
  target/debug/api &
api_pid=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done

schemathesis run "http://127.0.0.1:$port/openapi.json" \
  -H "Authorization: Bearer schemathesis-key-0123456789abcdef0123" \
  --checks not_a_server_error,response_schema_conformance \
  --max-examples 50 --seed 20261123
