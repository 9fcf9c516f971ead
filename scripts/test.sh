#!/usr/bin/env bash
# The project's whole test suite: formatting, lints, every Rust test (unit, in-process HTTP,
# end-to-end with the real binaries), and the independent relying-party test in Python.
#
#   scripts/test.sh
#
# Needs: Rust (stable), python3 with venv, Node.js >= 20 with npm (a real OpenID Provider and a
# headless-browser driver for the sign-in tests), Debian's chromium, and root for apt (Ceph RGW
# for the isolation test).
# Everything else it fetches from crates.io, PyPI and Debian.
# Exits non-zero on the first failure.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (unit, HTTP, end-to-end)"
cargo test --workspace --locked

step "relying-party test (PyJWT against a running broker)"
AGENTKEYS_BROKER_BIN="$CARGO_TARGET_DIR/debug/agentkeys-broker" \
AGENTKEYS_BIN="$CARGO_TARGET_DIR/debug/agentkeys" \
  tests/relying_party/run.sh

step "policy lint (parliament on the documents of policy aws)"
AGENTKEYS_BROKER_BIN="$CARGO_TARGET_DIR/debug/agentkeys-broker" tests/policy_lint/run.sh

step "isolation end to end: real broker, real CLI, Ceph RGW as S3 + STS"
AGENTKEYS_BROKER_BIN="$CARGO_TARGET_DIR/debug/agentkeys-broker" \
AGENTKEYS_BIN="$CARGO_TARGET_DIR/debug/agentkeys" \
  scripts/e2e/run.sh

step "README walkthrough (runs the documented commands against a fresh broker)"
scripts/check-readme.sh

step "operator runbook (its checked block against a fresh broker)"
scripts/check-runbook.sh

step "deploy docs and systemd units"
scripts/check-deploy.sh

step "all tests passed"
