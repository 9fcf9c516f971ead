#!/usr/bin/env bash
# Keeps docs/operator-runbook.md true: runs the bash block under its `runbook-check` marker
# against a fresh dev broker and checks that each command succeeded.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
cargo build -q -p agentkeys-broker
bin="$CARGO_TARGET_DIR/debug"

scratch=$(mktemp -d)
broker_pid=""
cleanup() {
  [[ -n $broker_pid ]] && kill "$broker_pid" 2>/dev/null && wait "$broker_pid" 2>/dev/null
  rm -rf "$scratch"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export BROKER_DATA_DIR="$scratch/data" ISSUER="http://127.0.0.1:$port" WORK="$scratch"
"$bin/agentkeys-broker" serve --dev --listen "127.0.0.1:$port" >"$scratch/broker.log" 2>&1 &
broker_pid=$!
for _ in $(seq 100); do
  curl -sf -o /dev/null "$ISSUER/readyz" && break
  sleep 0.1
done
curl -sf -o /dev/null "$ISSUER/readyz" || { cat "$scratch/broker.log"; exit 1; }

awk '/<!-- runbook-check/ {found=1; next} found && /^```bash$/ {inblock=1; next} inblock && /^```$/ {exit} inblock {print}' \
  docs/operator-runbook.md >"$scratch/runbook.sh"
[[ -s "$scratch/runbook.sh" ]] || { echo "check-runbook: no runbook-check block" >&2; exit 1; }

PATH="$bin:$PATH" bash -euo pipefail "$scratch/runbook.sh" >"$scratch/out.txt" 2>&1 || { cat "$scratch/out.txt"; exit 1; }
for expected in "audit chain ok" "pending"; do
  grep -q "$expected" "$scratch/out.txt" || { cat "$scratch/out.txt"; echo "check-runbook: missing $expected" >&2; exit 1; }
done
[[ -s "$scratch/audit.ndjson" && -s "$scratch/checkpoint.jws" ]] || { echo "check-runbook: no export/checkpoint" >&2; exit 1; }
echo "operator runbook: ok"
