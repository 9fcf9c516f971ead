#!/usr/bin/env bash
# Runs one reliability harness (docs/reliability.md) against the real broker binary.
#
#   tests/reliability/run.sh kill9     [--database-url URL] [--cycles N] [--control]
#   tests/reliability/run.sh full-disk [--control]            (root: mounts a tmpfs)
#   tests/reliability/run.sh soak      [--seconds S] [--concurrency C]
#   tests/reliability/run.sh rotation  [--seconds S] [--control]
#   tests/reliability/run.sh fuzz      [--max-examples N] [--control]
#
# Builds the broker and the load client (the `reliability_load` example) unless
# AGENTKEYS_BROKER_BIN and RELIABILITY_LOAD_BIN are set. rotation and fuzz run in a virtualenv
# with the pinned requirements.txt ($CARGO_TARGET_DIR/reliability-venv, or RELIABILITY_VENV).
# RELIABILITY_PORT pins the broker's port; RELIABILITY_KEEP=1 keeps a failed run's files.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
part="${1:?usage: tests/reliability/run.sh kill9|full-disk|soak|rotation|fuzz [args]}"
shift

if [[ -z "${AGENTKEYS_BROKER_BIN:-}" || -z "${RELIABILITY_LOAD_BIN:-}" ]]; then
  (cd "$repo" && CARGO_TARGET_DIR="$target" cargo build --locked -p agentkeys-broker \
    --bin agentkeys-broker --example reliability_load)
  export AGENTKEYS_BROKER_BIN="${AGENTKEYS_BROKER_BIN:-$target/debug/agentkeys-broker}"
  export RELIABILITY_LOAD_BIN="${RELIABILITY_LOAD_BIN:-$target/debug/examples/reliability_load}"
fi

python="${PYTHON:-python3}"
case "$part" in
  rotation | fuzz)
    source "$repo/scripts/lib/venv.sh"
    venv="${RELIABILITY_VENV:-$target/reliability-venv}"
    ensure_venv "$venv" "$here/requirements.txt"
    python="$venv/bin/python"
    ;;
esac

case "$part" in
  kill9 | full-disk | soak) exec "$python" "$here/harness.py" "$part" "$@" ;;
  rotation) exec "$python" "$here/rotation.py" "$@" ;;
  fuzz) exec "$python" "$here/fuzz.py" "$@" ;;
  *) echo "run.sh: unknown part $part" >&2; exit 2 ;;
esac
