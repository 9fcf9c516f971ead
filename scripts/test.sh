#!/usr/bin/env bash
# The project's whole test suite: formatting, lints, every Rust test (unit, in-process HTTP,
# end-to-end with the real binaries), the store conformance and in-process HTTP suites again on
# PostgreSQL, the independent relying-party test in Python, the reliability harnesses (kill -9,
# full disk, rotation, soak, API fuzzing, cargo deny; docs/reliability.md), and the isolation
# harness with the broker on SQLite and then on PostgreSQL.
#
#   scripts/test.sh
#
# Needs: Rust (stable), python3 with venv, Node.js >= 20 with npm (a real OpenID Provider and a
# headless-browser driver for the sign-in tests), Debian's chromium, Debian's postgresql (server
# binaries for a throwaway cluster on 127.0.0.1, and psql; scripts/postgres.sh), Debian's nginx
# and openssl (scripts/check-tls.sh), and root for apt (Ceph RGW for the isolation test).
# Everything else it fetches from crates.io, PyPI and Debian.
# Exits non-zero on the first failure.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

# Everything the suite needs, checked before anything long runs: one message lists what is
# missing and how to get it (`.ci/run` installs the Debian packages itself).
missing=()
command -v cargo >/dev/null || missing+=("Rust (rustup: https://rustup.rs)")
cargo fmt --version >/dev/null 2>&1 || missing+=("rustfmt (rustup component add rustfmt)")
cargo clippy --version >/dev/null 2>&1 || missing+=("clippy (rustup component add clippy)")
command -v cc >/dev/null || missing+=("a C compiler (apt-get install build-essential)")
python3 -c 'import venv, ensurepip' 2>/dev/null \
  || missing+=("python3 with venv (apt-get install python3-venv)")
node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' 2>/dev/null \
  || missing+=("Node.js >= 20 with npm (Debian 12's nodejs is 18: use nodejs.org or nvm)")
command -v chromium >/dev/null || missing+=("Debian's chromium (apt-get install chromium)")
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && command -v psql >/dev/null \
  || missing+=("PostgreSQL server and psql (apt-get install postgresql)")
command -v nginx >/dev/null || missing+=("Debian's nginx (apt-get install nginx)")
command -v openssl >/dev/null || missing+=("openssl (apt-get install openssl)")
if ((${#missing[@]})); then
  echo "scripts/test.sh needs, and this machine lacks:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  echo "(registries used: crates.io, PyPI, npm, Debian; .ci/run installs the Debian packages)" >&2
  exit 2
fi

# The throwaway PostgreSQL cluster (started below) has its own state file, so a cluster someone
# started by hand with scripts/postgres.sh is neither reused nor stopped; it stops on any exit.
pg_state_dir="$(mktemp -d /tmp/agentkeys-test-pg.XXXXXX)"
export AGENTKEYS_PG_STATE="$pg_state_dir/pg.env"
stop_postgres() {
  local rc=$?
  trap - EXIT
  "$repo/scripts/postgres.sh" stop || true
  rm -rf "$pg_state_dir"
  exit "$rc"
}
trap stop_postgres EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (unit, HTTP, end-to-end)"
cargo test --workspace --locked

step "PostgreSQL: start a throwaway cluster"
pg_url="$(scripts/postgres.sh start)"
echo "$pg_url"

step "cargo test on PostgreSQL (store conformance, in-process HTTP suite)"
# --workspace with the two test targets keeps the workspace's feature set: nothing is rebuilt.
AGENTKEYS_TEST_DATABASE="$pg_url" cargo test --workspace --locked \
  --test conformance --test broker

step "relying-party test (PyJWT against a running broker)"
AGENTKEYS_BROKER_BIN="$CARGO_TARGET_DIR/debug/agentkeys-broker" \
AGENTKEYS_BIN="$CARGO_TARGET_DIR/debug/agentkeys" \
  tests/relying_party/run.sh

step "console in a real browser (Playwright driving Debian's chromium, headless)"
AGENTKEYS_BROKER_BIN="$CARGO_TARGET_DIR/debug/agentkeys-broker" \
AGENTKEYS_BIN="$CARGO_TARGET_DIR/debug/agentkeys" \
  tests/console/run.sh

step "policy lint (parliament on the documents of policy aws)"
AGENTKEYS_BROKER_BIN="$CARGO_TARGET_DIR/debug/agentkeys-broker" tests/policy_lint/run.sh

# Reliability harnesses (docs/reliability.md): each bounded, each followed by its control (a
# deliberate fault the harness must catch). Binaries from the cargo test build above.
export AGENTKEYS_BROKER_BIN="$CARGO_TARGET_DIR/debug/agentkeys-broker"
export RELIABILITY_LOAD_BIN="$CARGO_TARGET_DIR/debug/examples/reliability_load"

step "reliability: kill -9 under load, 5 times (SQLite, then PostgreSQL), and its control"
tests/reliability/run.sh kill9
tests/reliability/run.sh kill9 --database-url "$pg_url"
tests/reliability/run.sh kill9 --cycles 1 --control

step "reliability: full disk (tmpfs data dir) fails closed and recovers, and its control"
tests/reliability/run.sh full-disk
tests/reliability/run.sh full-disk --control

step "reliability: key rotation under load, checked by an independent relying party"
tests/reliability/run.sh rotation --seconds 40
tests/reliability/run.sh rotation --seconds 15 --rotations 1 --control

step "reliability: 2-minute mixed-workload soak (RSS, fds, p99, errors), and its control"
tests/reliability/run.sh soak --seconds 120
tests/reliability/run.sh soak --seconds 30 --window 5 --control

step "reliability: Schemathesis on every operation (anonymous, master, agent), and its control"
tests/reliability/run.sh fuzz --max-examples 25 --max-time 35
tests/reliability/run.sh fuzz --max-examples 10 --max-time 25 --control

step "supply chain: cargo deny (licenses, bans, sources), and its control"
scripts/check-deny.sh
scripts/check-deny.sh --control

step "isolation end to end: real broker, real CLI, Ceph RGW as S3 + STS"
AGENTKEYS_BROKER_BIN="$CARGO_TARGET_DIR/debug/agentkeys-broker" \
AGENTKEYS_BIN="$CARGO_TARGET_DIR/debug/agentkeys" \
  scripts/e2e/run.sh

step "isolation end to end with the broker on PostgreSQL"
E2E_DATABASE_URL="$pg_url" \
AGENTKEYS_BROKER_BIN="$CARGO_TARGET_DIR/debug/agentkeys-broker" \
AGENTKEYS_BIN="$CARGO_TARGET_DIR/debug/agentkeys" \
  scripts/e2e/run.sh

step "README walkthrough (runs the documented commands against a fresh broker)"
scripts/check-readme.sh

step "operator runbook and AWS quickstart (their checked blocks against a fresh broker)"
scripts/check-runbook.sh

step "deploy docs and systemd units"
scripts/check-deploy.sh

step "TLS: the walkthrough through nginx and through the broker's own TLS, a renewal"
timeout 300 scripts/check-tls.sh

step "all tests passed"
