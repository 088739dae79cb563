#!/usr/bin/env bash
# Sync over a real, bad network: a hub in one network namespace, two sites holding one
# school in another, joined by a veth pair whose site end runs `tc netem` (delay with
# jitter, loss, reordering, duplication) where the kernel has it, and otherwise a thin link
# (`tc tbf`, 2 Mbit/s) losing packets at random (nftables, `numgen random`, installed from
# Debian's packages when missing). Each round campus A adds pupils and pushes while
# the link is cut (the veth taken down) at a random moment for a random time, then campus B
# pulls; after healing, at most 3 rounds of push and pull must bring B exactly A's records:
# no acknowledged pupil lost, none twice. Needs root (ip netns, tc); the test suite runs the
# same faults through a fault-injecting relay on loopback.
# Usage: sudo benches/sync_netem.sh [ROUNDS] (default 100; NETEM="delay 40ms 20ms loss 5%
# reorder 25% 50% duplicate 2%" to change the link; SEED to replay).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-100}"
NETEM="${NETEM:-delay 40ms 20ms loss 5% reorder 25% 50% duplicate 2%}"
SEED="${SEED:-$RANDOM}"
RANDOM=$SEED
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ceredis/target}"
cargo build --quiet
WORK=$(mktemp -d)
# A copy of its own: a rebuild meanwhile does not pull the binary from under the run.
cp "$CARGO_TARGET_DIR/debug/ceredis" "$WORK/ceredis"
BIN="$WORK/ceredis"
HUB_NS=ceredis-hub-$$ SITE_NS=ceredis-site-$$
cleanup() {
  [ -n "${HUB_PID:-}" ] && kill "$HUB_PID" 2>/dev/null || true
  ip netns del "$HUB_NS" 2>/dev/null || true
  ip netns del "$SITE_NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$HUB_NS"
ip netns add "$SITE_NS"
ip link add veth-h$$ type veth peer name veth-s$$
ip link set veth-h$$ netns "$HUB_NS"
ip link set veth-s$$ netns "$SITE_NS"
ip -n "$HUB_NS" addr add 10.201.0.1/24 dev veth-h$$
ip -n "$SITE_NS" addr add 10.201.0.2/24 dev veth-s$$
for ns in "$HUB_NS" "$SITE_NS"; do ip -n "$ns" link set lo up; done
ip -n "$HUB_NS" link set veth-h$$ up
ip -n "$SITE_NS" link set veth-s$$ up
# shellcheck disable=SC2086
if ! tc -n "$SITE_NS" qdisc add dev veth-s$$ root netem $NETEM 2> /dev/null; then
  LOSS="${LOSS:-5}"
  command -v nft > /dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables > /dev/null
  tc -n "$SITE_NS" qdisc add dev veth-s$$ root tbf rate 2mbit burst 32kbit latency 200ms
  ip netns exec "$SITE_NS" nft add table inet lossy
  for hook in input output; do
    ip netns exec "$SITE_NS" nft "add chain inet lossy $hook { type filter hook $hook priority 0; }"
    ip netns exec "$SITE_NS" nft add rule inet lossy "$hook" meta l4proto tcp \
      numgen random mod 100 '<' "$LOSS" drop
  done
  NETEM="(no netem in this kernel) tbf 2 Mbit/s, $LOSS% of TCP packets dropped each way"
fi
echo "link: $NETEM; seed $SEED; $ROUNDS rounds"

printf '[tls]\nserver_names = ["10.201.0.1"]\n' > "$WORK/hub.toml"
ip netns exec "$HUB_NS" "$BIN" --config "$WORK/hub.toml" hub serve --data-dir "$WORK/hub" \
  --listen 10.201.0.1:8443 > "$WORK/hub.out" 2> "$WORK/hub.log" &
HUB_PID=$!
for _ in $(seq 100); do grep -q "listening on" "$WORK/hub.out" 2>/dev/null && break; sleep 0.1; done
HUB=https://10.201.0.1:8443
site() { ip netns exec "$SITE_NS" "$BIN" "$@"; }
quiet() { "$@" > /dev/null 2>&1; }

"$BIN" init --data-dir "$WORK/a" > /dev/null 2>&1
"$BIN" tenant create ecole --name "École" --data-dir "$WORK/a" > /dev/null
site federation join "$HUB" "$("$BIN" --config "$WORK/hub.toml" hub token --label A --data-dir "$WORK/hub" 2> /dev/null)" \
  --data-dir "$WORK/a" > /dev/null
KEY=$(site federation enable --tenant ecole --data-dir "$WORK/a" 2> /dev/null | head -1)
until quiet site federation push --data-dir "$WORK/a"; do sleep 0.5; done
"$BIN" init --data-dir "$WORK/b" > /dev/null 2>&1
site federation join "$HUB" "$("$BIN" --config "$WORK/hub.toml" hub token --label B --data-dir "$WORK/hub" 2> /dev/null)" \
  --data-dir "$WORK/b" > /dev/null
until quiet site federation restore --tenant ecole --recovery-key "$KEY" --alongside --data-dir "$WORK/b"; do
  sleep 0.5
done

users() {
  python3 - "$1" <<'PY'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
for row in sorted(db.execute("SELECT agent_name, username, password_hash FROM users")):
    print("|".join(str(c) for c in row))
PY
}

added=0 lost_rounds=0 slowest=0
for round in $(seq "$ROUNDS"); do
  for _ in $(seq $((1 + RANDOM % 4))); do
    added=$((added + 1))
    "$BIN" user add --tenant ecole --username "r$round-$added" --given-name "R$added" \
      --family-name Élève --role student --data-dir "$WORK/a" > /dev/null
  done
  # The push meets a partition: the link goes down at a random moment, for a random time.
  site federation push --data-dir "$WORK/a" > /dev/null 2>&1 &
  PUSH=$!
  sleep "0.$((RANDOM % 10))"
  ip -n "$SITE_NS" link set veth-s$$ down
  sleep "0.$((RANDOM % 10))"
  ip -n "$SITE_NS" link set veth-s$$ up
  wait "$PUSH" || true
  # Healed: at most 3 rounds of A pushing and B pulling.
  converged=0
  for try in 1 2 3; do
    quiet site federation push --data-dir "$WORK/a" || true
    quiet site federation pull --data-dir "$WORK/b" || true
    if [ "$(users "$WORK/a/tenants/ecole/tenant.db")" = "$(users "$WORK/b/tenants/ecole/tenant.db")" ]; then
      converged=$try
      break
    fi
  done
  if [ "$converged" = 0 ]; then
    lost_rounds=$((lost_rounds + 1))
    echo "round $round: no convergence in 3 rounds"
  fi
  [ "$converged" -gt "$slowest" ] && slowest=$converged
done
pupils=$(users "$WORK/b/tenants/ecole/tenant.db" | cut -d'|' -f2 | grep -c '^r[0-9]' || true)
twice=$(users "$WORK/b/tenants/ecole/tenant.db" | cut -d'|' -f1 | sort | uniq -d | wc -l)
echo "$ROUNDS rounds over that link with partitions: $added pupils acknowledged at A, $pupils at B" \
  "($((added - pupils)) lost, $twice twice), rounds that did not converge in 3: $lost_rounds," \
  "slowest convergence: $slowest rounds"
[ "$pupils" = "$added" ] && [ "$twice" = 0 ] && [ "$lost_rounds" = 0 ]
