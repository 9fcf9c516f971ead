#!/usr/bin/env bash
# Lints the policies of `agentkeys-broker policy aws` with parliament (PyPI).
#   tests/policy_lint/run.sh        (AGENTKEYS_BROKER_BIN names the binary; else it is built)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
source "$repo/scripts/lib/venv.sh"
if [[ -z "${AGENTKEYS_BROKER_BIN:-}" ]]; then
  (cd "$repo" && cargo build -q -p agentkeys-broker)
  AGENTKEYS_BROKER_BIN="$target/debug/agentkeys-broker"
fi
venv="${POLICY_LINT_VENV:-$target/policy-lint-venv}"
ensure_venv "$venv" "$here/requirements.txt"
exec "$venv/bin/python" "$here/lint_policies.py" "$AGENTKEYS_BROKER_BIN"
