#!/usr/bin/env bash
# Runs the OIDC relying-party test: builds the broker and the CLI, prepares a virtualenv with
# the pinned requirements, and runs pytest with AGENTKEYS_BROKER_BIN / AGENTKEYS_BIN set.
#
#   tests/relying_party/run.sh [pytest args...]
#
# Environment: CARGO_TARGET_DIR (default <repo>/target), RP_VENV (default
# $CARGO_TARGET_DIR/relying-party-venv), PYTHON (default python3). Set AGENTKEYS_BROKER_BIN and
# AGENTKEYS_BIN yourself to skip the cargo build.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
venv="${RP_VENV:-$target/relying-party-venv}"

if [[ -z "${AGENTKEYS_BROKER_BIN:-}" || -z "${AGENTKEYS_BIN:-}" ]]; then
  (cd "$repo" && cargo build -p agentkeys-broker -p agentkeys)
  export AGENTKEYS_BROKER_BIN="${AGENTKEYS_BROKER_BIN:-$target/debug/agentkeys-broker}"
  export AGENTKEYS_BIN="${AGENTKEYS_BIN:-$target/debug/agentkeys}"
fi

source "$repo/scripts/lib/venv.sh"
ensure_venv "$venv" "$here/requirements.txt"

cd "$here"
exec "$venv/bin/python" -m pytest -p no:cacheprovider "$here/test_relying_party.py" "$@"
