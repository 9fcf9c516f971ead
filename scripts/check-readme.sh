#!/usr/bin/env bash
# Keeps the README's walkthrough true: builds the two programs with the README's one command,
# starts a fresh dev broker on a free loopback port (AGENTKEYS_README_PORT picks one), runs the
# bash block under the `walkthrough` marker against it (the block's 127.0.0.1:8091 rewritten to
# that port, so a broker a newcomer left running on 8091 does not collide), and checks what it
# printed.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
# shellcheck source=scripts/lib/walkthrough.sh
. "$repo/scripts/lib/walkthrough.sh"
# The README's build command, before the broker starts waiting for it.
cargo build -q -p agentkeys-broker -p agentkeys

port=${AGENTKEYS_README_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
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

readme_walkthrough "$base" "$CARGO_TARGET_DIR/debug" >"$scratch/walkthrough.sh"
[[ -s "$scratch/walkthrough.sh" ]] || { echo "check-readme: no walkthrough block in README.md" >&2; exit 1; }
# The walkthrough must use the binaries built above, not compile anything of its own.
if grep -q 'cargo ' "$scratch/walkthrough.sh"; then
  echo "check-readme: the walkthrough runs cargo; it should run the built binaries" >&2
  exit 1
fi

export AGENTKEYS_CONFIG_DIR="$scratch/client"
export AGENTKEYS_BROKER_URL="$base"
bash -euo pipefail "$scratch/walkthrough.sh" >"$scratch/out.txt" 2>&1 || { cat "$scratch/out.txt"; exit 1; }
check_walkthrough_output "$scratch/out.txt"
retired=$(curl -s -X POST "$base/v1/mint-aws-creds")
[[ $retired == *route_retired* ]] || { echo "check-readme: retired route answered $retired" >&2; exit 1; }
# The console the README points at is served, with its strict policy.
console_headers=$(curl -s -D - -o /dev/null "$base/console")
[[ $console_headers == *"200"*"frame-ancestors 'none'"* ]] \
  || { echo "check-readme: $base/console answered: $console_headers" >&2; exit 1; }
echo "README walkthrough: ok"
