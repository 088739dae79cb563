#!/usr/bin/env bash
# The SIGKILL durability test with many more rounds than CI runs (default 200):
# concurrent durable writes, SIGKILL right after acknowledgements, restart, check that
# every acknowledged write is present and none is duplicated.
# Usage: benches/kill_loop.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ceredis/target}"
KILL_ROUNDS="${1:-200}" cargo test --release --test it durability -- --nocapture
