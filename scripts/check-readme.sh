#!/usr/bin/env bash
# Keeps the README's walkthrough true: starts a fresh dev broker on a free loopback port, runs
# the bash block under the `walkthrough` marker against it (the block's 127.0.0.1:8091 rewritten
# to that port, so a broker a newcomer left running on 8091 does not collide), and checks what
# it printed.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
# Built the way the walkthrough runs it (`cargo run -p agentkeys` resolves features for that one
# package, so this is a build of its own), before the broker starts waiting for it.
cargo build -q -p agentkeys-broker
cargo build -q -p agentkeys

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"

scratch=$(mktemp -d)
broker_pid=""
cleanup() {
  [[ -n $broker_pid ]] && kill "$broker_pid" 2>/dev/null && wait "$broker_pid" 2>/dev/null
  rm -rf "$scratch"
}
trap cleanup EXIT

"$CARGO_TARGET_DIR/debug/agentkeys-broker" serve --dev --listen "127.0.0.1:$port" --data-dir "$scratch/data" \
  >"$scratch/broker.log" 2>&1 &
broker_pid=$!
for _ in $(seq 100); do
  curl -sf -o /dev/null "$base/readyz" && break
  sleep 0.1
done
curl -sf -o /dev/null "$base/readyz" || { cat "$scratch/broker.log"; exit 1; }

# The first ```bash block after the marker line.
awk '/<!-- walkthrough/ {found=1; next} found && /^```bash$/ {inblock=1; next} inblock && /^```$/ {exit} inblock {print}' \
  README.md | sed "s#http://127.0.0.1:8091#$base#g" >"$scratch/walkthrough.sh"
[[ -s "$scratch/walkthrough.sh" ]] || { echo "check-readme: no walkthrough block in README.md" >&2; exit 1; }

export AGENTKEYS_CONFIG_DIR="$scratch/client"
export AGENTKEYS_BROKER_URL="$base"
bash -euo pipefail "$scratch/walkthrough.sh" >"$scratch/out.txt" 2>&1 || { cat "$scratch/out.txt"; exit 1; }

for expected in '"sub": "agentkeys:user:0x' '"aud": "sts.amazonaws.com"' '"https://aws.amazon.com/tags"' \
  '"https://aws.amazon.com/roles": "arn:aws:iam::123456789012:role/agentkeys-data"' '"jwks_uri"' '"x5c"'; do
  grep -qF "$expected" "$scratch/out.txt" || { cat "$scratch/out.txt"; echo "check-readme: missing $expected" >&2; exit 1; }
done
retired=$(curl -s -X POST "$base/v1/mint-aws-creds")
[[ $retired == *route_retired* ]] || { echo "check-readme: retired route answered $retired" >&2; exit 1; }
# The console the README points at is served, with its strict policy.
console_headers=$(curl -s -D - -o /dev/null "$base/console")
[[ $console_headers == *"200"*"frame-ancestors 'none'"* ]] \
  || { echo "check-readme: $base/console answered: $console_headers" >&2; exit 1; }
echo "README walkthrough: ok"
