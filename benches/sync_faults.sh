#!/usr/bin/env bash
# Randomized faults on sync, many rounds (the test suite runs 3 of each), on a SQLite hub and
# on a PostgreSQL hub:
# - generations: the pushing process killed at a random moment, the hub killed and restarted
#   mid-push, the link cut after a random number of bytes, the same push delivered twice;
#   after each, at most 3 pushes to converge, and the hub's copy must decrypt to exactly the
#   school;
# - batches between two sites holding one school: the same faults on the first site's push,
#   then the second site's pull killed, its link cut, or two pulls at once; after each, at
#   most 3 rounds (push, pull) to converge, with every acknowledged pupil there once.
# Usage: benches/sync_faults.sh [ROUNDS] (default 100; SYNC_FAULT_SEED to replay a run).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ceredis/target}"
export SYNC_FAULT_ROUNDS="${1:-100}"
for test in the_continuity_copy_survives_random_crashes_cuts_and_duplicates \
  batches_between_two_holders_survive_random_crashes_cuts_and_duplicates; do
  cargo test --quiet --test it "$test" -- --nocapture 2>&1 \
    | grep -E "SYNC_FAULT_SEED|rounds, faults|rounds of batches|panicked|test result"
done
