#!/usr/bin/env bash
# Keeps the operator documents true: runs the bash blocks under their `runbook-check` markers
# against a fresh dev broker and checks what they did.
#
#   docs/operator-runbook.md   key rotation, audit verify/export/checkpoint
#   docs/quickstart-aws.md     the AWS documents from `policy aws`, a wallet sign-in
#
# Each document's marked blocks run in order as one script, in a scratch directory of its own,
# with BROKER_DATA_DIR, ISSUER (the broker's URL) and WORK set, the built binaries first on
# PATH, and every NAME=VALUE word of a marker exported (the names an earlier, unchecked step of
# the document sets).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
cargo build -q -p agentkeys-broker -p agentkeys
bin="$CARGO_TARGET_DIR/debug"

scratch=$(mktemp -d)
broker_pid=""
cleanup() {
  [[ -n $broker_pid ]] && kill "$broker_pid" 2>/dev/null && wait "$broker_pid" 2>/dev/null
  rm -rf "$scratch"
}
trap cleanup EXIT

port=${AGENTKEYS_RUNBOOK_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
export BROKER_DATA_DIR="$scratch/data" ISSUER="http://127.0.0.1:$port"
"$bin/agentkeys-broker" serve --dev --listen "127.0.0.1:$port" >"$scratch/broker.log" 2>&1 &
broker_pid=$!
for _ in $(seq 100); do
  curl -sf -o /dev/null "$ISSUER/readyz" && break
  sleep 0.1
done
curl -sf -o /dev/null "$ISSUER/readyz" || { cat "$scratch/broker.log"; exit 1; }

# run_checked DOC NAME: runs DOC's marked blocks with WORK=$scratch/NAME; output in NAME.out.
run_checked() {
  local doc=$1 name=$2 work="$scratch/$2"
  mkdir -p "$work"
  python3 - "$doc" >"$scratch/$name.sh" <<'PY'
import re, shlex, sys
text = open(sys.argv[1]).read()
blocks = re.findall(r"<!-- runbook-check(.*?)-->\s*\n```bash\n(.*?)```", text, re.S)
for marker, body in blocks:
    for name, value in re.findall(r"\b([A-Z][A-Z0-9_]*)=(\S+)", marker):
        print(f"export {name}={shlex.quote(value)}")
    print(body)
PY
  grep -qv '^export ' "$scratch/$name.sh" || { echo "check-runbook: no runbook-check block in $doc" >&2; exit 1; }
  (cd "$work" && WORK="$work" AGENTKEYS_CONFIG_DIR="$work/client" PATH="$bin:$PATH" \
    bash -euo pipefail "$scratch/$name.sh") >"$scratch/$name.out" 2>&1 \
    || { cat "$scratch/$name.out"; echo "check-runbook: $doc failed" >&2; exit 1; }
}
expect() { # expect NAME TEXT: NAME's output contains TEXT
  grep -qF -- "$2" "$scratch/$1.out" || { cat "$scratch/$1.out"; echo "check-runbook: $1 printed no \"$2\"" >&2; exit 1; }
}

run_checked docs/operator-runbook.md runbook
expect runbook "audit chain ok"
expect runbook "pending"
[[ -s "$scratch/runbook/audit.ndjson" && -s "$scratch/runbook/checkpoint.jws" ]] || { echo "check-runbook: no export/checkpoint" >&2; exit 1; }
echo "operator runbook: ok"

run_checked docs/quickstart-aws.md quickstart
for f in provider trust-policy bucket-policy; do
  python3 -m json.tool "$scratch/quickstart/aws/$f.json" >/dev/null || { echo "check-runbook: quickstart's $f.json is not JSON" >&2; exit 1; }
done
grep -qF 'arn:aws:iam::123456789012:role/agentkeys-data-role' "$scratch/quickstart/aws/bucket-policy.json" \
  || { echo "check-runbook: the bucket policy does not name the quickstart's role" >&2; exit 1; }
grep -qF "\"url\":\"$ISSUER\"" "$scratch/quickstart/aws/provider.json" \
  || { echo "check-runbook: provider.json does not name the issuer" >&2; exit 1; }
expect quickstart "kind:         master"
expect quickstart "broker:       $ISSUER"
echo "AWS quickstart (locally checkable steps): ok"
