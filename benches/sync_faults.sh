#!/usr/bin/env bash
# Randomized faults on the continuity copy, many rounds (the test suite runs 3): the pushing
# process killed at a random moment, the hub killed and restarted mid-push, the link cut after
# a random number of bytes, the same push delivered twice; after each, at most 3 pushes to
# converge, and the hub's copy must decrypt to exactly the school, on a SQLite hub and on a
# PostgreSQL hub. Usage: benches/sync_faults.sh [ROUNDS] (default 100; SYNC_FAULT_SEED to
# replay a run).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ceredis/target}"
SYNC_FAULT_ROUNDS="${1:-100}" cargo test --quiet --test it \
  the_continuity_copy_survives_random_crashes_cuts_and_duplicates -- --nocapture 2>&1 \
  | grep -E "SYNC_FAULT_SEED|rounds, faults|panicked|test result"
