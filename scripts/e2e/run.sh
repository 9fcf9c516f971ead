#!/usr/bin/env bash
# shellcheck disable=SC2317  # finish and on_signal are called from traps
# The end-to-end isolation harness: Ceph RGW (S3 + STS) on loopback, the real broker and the real
# `agentkeys` CLI. install -> up -> test -> down; the lab is torn down on every exit.
#
#   scripts/e2e/run.sh
#
# Environment (defaults in brackets):
#   CARGO_TARGET_DIR [<repo>/target]      where the binaries are built
#   AGENTKEYS_BROKER_BIN, AGENTKEYS_BIN   set both to test given binaries and skip `cargo build`
#   E2E_VENV [$CARGO_TARGET_DIR/e2e-venv] Python venv from requirements.txt, reused while unchanged
#   E2E_TEST_TIMEOUT [600]                upper bound for isolation.py (with agents.py), in seconds
#   E2E_STRICT [1]                        0: a check whose CLI command is missing is skipped, not failed
#   E2E_DATABASE_URL [unset]              postgres://USER@HOST:PORT/DB: the broker runs on PostgreSQL, in a
#                                         fresh schema of that database, keys sealed under a KEK the
#                                         harness writes (needs psql); unset: SQLite in its data dir
#   E2E_BROKER_PORT [17600], E2E_MON_PORT [17300], E2E_RGW_PORT [17480], E2E_LAB, E2E_RGW_DEBUG:
#                                         see isolation.py and rgw.sh
# Exits non-zero if any step or any check fails.
set -euo pipefail
# shellcheck disable=SC2317  # finish and on_signal run from traps

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
venv="${E2E_VENV:-$CARGO_TARGET_DIR/e2e-venv}"
python="${PYTHON:-python3}"
T0=$SECONDS

log() { printf '[e2e %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

finish() {
  local rc=$?
  trap - EXIT INT TERM
  # Keep the lab's logs when something failed; its processes are stopped either way.
  if ((rc != 0)); then export E2E_KEEP_LAB=1; fi
  "$here/rgw.sh" down || rc=1
  log "total wall time $((SECONDS - T0))s, exit $rc, store backend ${backend:-?}"
  exit "$rc"
}
# A signal stops the running child first (bash runs traps only between foreground commands,
# hence the children run in the background and are waited for).
child=""
on_signal() {
  if [[ -n "$child" ]]; then kill -TERM "$child" 2>/dev/null || true; wait "$child" 2>/dev/null || true; fi
  exit "$1"
}
trap finish EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

# run CMD...: run CMD in the background, wait for it, return its exit status
run() { "$@" & child=$!; local rc=0; wait "$child" || rc=$?; child=""; return "$rc"; }

# The broker's store: SQLite in its data dir, or PostgreSQL when E2E_DATABASE_URL is set.
if [[ -n "${E2E_DATABASE_URL:-}" ]]; then
  backend="PostgreSQL ($(sed -E 's#^([a-z]+://[^:/@]+):[^@]*@#\1:***@#' <<<"$E2E_DATABASE_URL"))"
  command -v psql >/dev/null || { log "E2E_DATABASE_URL is set but psql is missing (apt-get install postgresql-client)"; exit 1; }
else
  backend="SQLite (the broker's data dir)"
fi
log "store backend: $backend"

# 1. the binaries under test
if [[ -z "${AGENTKEYS_BROKER_BIN:-}" || -z "${AGENTKEYS_BIN:-}" ]]; then
  t=$SECONDS
  run env -C "$repo" cargo build --quiet -p agentkeys-broker -p agentkeys
  export AGENTKEYS_BROKER_BIN="$CARGO_TARGET_DIR/debug/agentkeys-broker"
  export AGENTKEYS_BIN="$CARGO_TARGET_DIR/debug/agentkeys"
  log "cargo build: $((SECONDS - t))s"
fi
export AGENTKEYS_BROKER_BIN AGENTKEYS_BIN

# 2. Ceph packages
run "$here/rgw.sh" install

# 3. the Python venv, rebuilt only when requirements.txt or the interpreter changed
t=$SECONDS
source "$repo/scripts/lib/venv.sh"
PYTHON="$python" run ensure_venv "$venv" "$here/requirements.txt"
log "venv: $((SECONDS - t))s"

# 4. a fresh RGW lab
run "$here/rgw.sh" up
lab="${E2E_LAB:-/var/tmp/agentkeys-e2e/rgw}"
set -a
# shellcheck disable=SC1091
source "$lab/env"
set +a

# 5. the test
t=$SECONDS
rc=0
run timeout --kill-after=10 "${E2E_TEST_TIMEOUT:-600}" "$venv/bin/python" "$here/isolation.py" || rc=$?
log "isolation.py: $((SECONDS - t))s (exit $rc)"
if ((rc != 0)); then
  log "RGW log kept in $lab/log (set E2E_RGW_DEBUG=20 to log STS token validation and policy evaluation)"
fi
exit "$rc"
