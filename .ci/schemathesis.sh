#!/usr/bin/env bash
# Schemathesis against /api/schema/ of the running app: Daphne on a free port over a fresh, migrated
# SQLite database in a temporary directory, one token per role. Fails on any 5xx and on any response
# that breaks the schema. Bounded: a few examples per operation, the whole run killed after
# SCHEMATHESIS_TIMEOUT seconds (default 170). Runs the same locally: bash .ci/schemathesis.sh
# A failure prints its seed: SCHEMATHESIS_SEED=N replays the run; SCHEMATHESIS_ARGS adds options
# (e.g. "--include-operation-id stats --report ndjson").
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-20}
WORK=$(mktemp -d)
DAPHNE_PID=

cleanup() {
    if [ -n "$DAPHNE_PID" ] && kill -0 "$DAPHNE_PID" 2>/dev/null; then
        kill -TERM "$DAPHNE_PID"  # Daphne drains the bus and stops
        for _ in $(seq 1 50); do kill -0 "$DAPHNE_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$DAPHNE_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# The embedded default, isolated from var/ and from any DATABASE_URL or REDIS_URL of the caller.
unset REDIS_URL
export VAR_DIR="$WORK" DATABASE_URL="sqlite:///$WORK/db.sqlite3" DEBUG=false
export ALLOWED_HOSTS=127.0.0.1 METRICS_PUBLIC=true EVENTS_LOG_LEVEL=WARNING
# Approval requests expire within seconds, so a generated `GET /api/hitl/requests/{id}/?wait=60` on a
# pending one returns at its expiry instead of holding the run for a minute.
export HITL_DEFAULT_TIMEOUT_S=2 HITL_MAX_TIMEOUT_S=5
export HYPOTHESIS_STORAGE_DIRECTORY="$WORK/hypothesis"  # not .hypothesis/ in the checkout
PORT=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

$PY manage.py migrate --noinput >/dev/null
token() { $PY manage.py create_api_token "$1" --group "$2" | tail -n 1; }
AUDITOR_TOKEN=$(token schemathesis-auditor auditors)
AGENT_TOKEN=$(token schemathesis-agent agents)
OPERATOR_TOKEN=$(token schemathesis-operator operators)
export AUDITOR_TOKEN AGENT_TOKEN OPERATOR_TOKEN

.venv/bin/daphne -b 127.0.0.1 -p "$PORT" eventbus_project.asgi:application >"$WORK/daphne.log" 2>&1 &
DAPHNE_PID=$!
up() { $PY -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/healthz', timeout=1)" 2>/dev/null; }
for _ in $(seq 1 100); do
    up && break
    kill -0 "$DAPHNE_PID" 2>/dev/null || break
    sleep 0.2
done
if ! up; then
    cat "$WORK/daphne.log"
    echo "schemathesis: Daphne did not answer /healthz on port $PORT" >&2
    exit 1
fi

status=0
timeout --kill-after=10 "${SCHEMATHESIS_TIMEOUT:-170}" \
    .venv/bin/schemathesis --config-file .ci/schemathesis.toml run "http://127.0.0.1:$PORT/api/schema/" \
    --checks not_a_server_error,response_schema_conformance \
    --max-examples "$MAX_EXAMPLES" \
    --request-timeout 20 \
    --generation-database none \
    --seed "${SCHEMATHESIS_SEED:-$RANDOM}" \
    --no-color ${SCHEMATHESIS_ARGS:-} `# unquoted on purpose: split into options` \
    || status=$?
if [ "$status" -ne 0 ]; then
    [ "$status" -eq 124 ] && echo "schemathesis: no result within ${SCHEMATHESIS_TIMEOUT:-170} s" >&2
    echo "== Daphne's log (last 80 lines)"
    tail -n 80 "$WORK/daphne.log"
fi
exit "$status"
