#!/usr/bin/env bash
# Supply-chain policy (deny.toml): licenses, bans and sources of every crate in Cargo.lock,
# checked offline with cargo-deny. Installs cargo-deny into ~/.cargo/bin if it is missing.
#
#   scripts/check-deny.sh            # the policy must pass
#   scripts/check-deny.sh --control  # a policy without MIT must FAIL (the check can catch)
#
# The advisories check needs the RustSec database from GitHub and is not run here; see
# docs/reliability.md ("Supply chain") for running it where the network allows.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
control=0
[[ "${1:-}" == "--control" ]] && control=1

if ! command -v cargo-deny >/dev/null 2>&1 && [[ ! -x "$HOME/.cargo/bin/cargo-deny" ]]; then
  echo "check-deny: installing cargo-deny 0.20.2 into ~/.cargo/bin"
  timeout 3000 cargo install --locked cargo-deny --version 0.20.2
fi
export PATH="$HOME/.cargo/bin:$PATH"

if ((control)); then
  policy="$(mktemp /tmp/deny-control.XXXXXX.toml)"
  trap 'rm -f "$policy"' EXIT
  grep -v '^    "MIT",$' deny.toml >"$policy"
  if timeout 600 cargo deny --offline --locked check --config "$policy" licenses >/dev/null 2>&1; then
    echo "check-deny: control MISSED: a policy without MIT passed" >&2
    exit 1
  fi
  echo "check-deny: control caught: a policy without MIT fails, as it must"
  exit 0
fi
# Duplicate versions are warnings (deny.toml); only errors fail.
timeout 600 cargo deny --offline --locked --log-level error check licenses bans sources
echo "check-deny: licenses, bans, sources ok"
