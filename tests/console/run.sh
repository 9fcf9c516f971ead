#!/usr/bin/env bash
# Runs the console's browser test: builds the broker and the CLI, prepares a virtualenv with the
# pinned requirements, and runs pytest (Playwright driving Debian's chromium, headless).
#
#   tests/console/run.sh [pytest args...]
#
# Environment: CARGO_TARGET_DIR (default <repo>/target), CONSOLE_VENV (default
# $CARGO_TARGET_DIR/console-venv), PYTHON (default python3), CHROMIUM (default /usr/bin/chromium),
# CONSOLE_PORT (default: a free port), CONSOLE_SCREENSHOTS (a directory for the page shots in
# docs/console.md). Set AGENTKEYS_BROKER_BIN and AGENTKEYS_BIN yourself to skip the cargo build.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
venv="${CONSOLE_VENV:-$target/console-venv}"

if [[ -z "${AGENTKEYS_BROKER_BIN:-}" || -z "${AGENTKEYS_BIN:-}" ]]; then
  (cd "$repo" && cargo build -p agentkeys-broker -p agentkeys)
  export AGENTKEYS_BROKER_BIN="${AGENTKEYS_BROKER_BIN:-$target/debug/agentkeys-broker}"
  export AGENTKEYS_BIN="${AGENTKEYS_BIN:-$target/debug/agentkeys}"
fi

source "$repo/scripts/lib/venv.sh"
ensure_venv "$venv" "$here/requirements.txt"

cd "$here"
exec timeout 300 "$venv/bin/python" -m pytest -p no:cacheprovider "$here/test_console.py" "$@"
