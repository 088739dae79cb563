#!/usr/bin/env bash
# The LRS benchmark with its peers, side by side on this machine: installs (once, under
# ~/.cache/ceredis) and starts Ralph LRS (filesystem backend) and Learning Locker's
# xapi-statements (in-memory repository), then runs `cargo bench --bench lrs`, which
# measures ceredis and both peers with the same client code and prints the ratios.
# Usage: benches/lrs.sh          (QUERY_STATEMENTS=N to change the 1 M query tenant)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ceredis/target}"
CACHE="$HOME/.cache/ceredis"
RALPH_VENV="$CACHE/ralph-venv"
XS_HOME="$CACHE/xapi-statements"

if [[ ! -x "$RALPH_VENV/bin/ralph" ]]; then
  python3 -m venv "$RALPH_VENV"
  "$RALPH_VENV/bin/pip" install --quiet 'ralph-malph[cli,lrs]==5.1.0' requests
fi
if [[ ! -f "$XS_HOME/node_modules/xapi-statements/dist/index.js" ]]; then
  mkdir -p "$XS_HOME"
  (cd "$XS_HOME" && npm init -y > /dev/null && npm install --no-audit --no-fund --loglevel=error xapi-statements@5.0.1)
fi

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.2; done; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# Ralph, filesystem backend, one Basic-auth user allowed to read and write statements.
mkdir -p "$WORK/ralph/app" "$WORK/ralph/data"
export RALPH_RUNSERVER_BACKEND=fs RALPH_APP_DIR="$WORK/ralph/app" RALPH_AUTH_FILE="$WORK/ralph/auth.json" \
  RALPH_BACKENDS__LRS__FS__DEFAULT_DIRECTORY_PATH="$WORK/ralph/data"
"$RALPH_VENV/bin/ralph" auth -u bench -p benchpass -s statements/write -s statements/read \
  -M mailto:bench@example.org -w > /dev/null
"$RALPH_VENV/bin/uvicorn" ralph_fs_append:app --app-dir "$ROOT/benches/peers" \
  --host 127.0.0.1 --port 8100 --log-level warning > "$WORK/ralph.log" 2>&1 &
PIDS+=($!)

# xapi-statements, memory repository, local file storage, no external services.
mkdir -p "$WORK/xs"
(cd "$WORK/xs" && EXPRESS_PORT=8200 MODELS_REPO=memory STORAGE_REPO=local \
  FS_LOCAL_STORAGE_DIR="$WORK/xs/storage" AUTH_REPO=test EVENTS_REPO=test \
  EXPRESS_MORGAN_DIRECTORY="$WORK/xs/logs" WINSTON_CONSOLE_LEVEL=warning \
  exec node -r "$ROOT/benches/peers/bind-loopback.js" "$XS_HOME/node_modules/xapi-statements/dist/index.js" \
  > "$WORK/xs.log" 2>&1) &
PIDS+=($!)

for url in http://127.0.0.1:8100/__heartbeat__ http://127.0.0.1:8200/xAPI/about; do
  for _ in $(seq 300); do
    curl -sf -o /dev/null -H 'X-Experience-API-Version: 1.0.3' "$url" && break
    sleep 0.1
  done
done

PEER_RALPH=http://127.0.0.1:8100/xAPI PEER_RALPH_AUTH=bench:benchpass \
PEER_XAPI_STATEMENTS=http://127.0.0.1:8200/xAPI PEER_XAPI_STATEMENTS_AUTH=bench:benchpass \
  cargo bench --bench lrs
