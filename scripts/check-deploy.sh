#!/usr/bin/env bash
# Keeps docs/deploy.md, docs/quickstart-aws.md and deploy/systemd/ true:
#  * `systemd-analyze verify` on the units (a copy, with the binary path pointed at the built
#    broker), failing on any warning or error about them;
#  * every BROKER_* setting named in the units, broker.env.example and docs/deploy.md exists in
#    docs/configuration.md (generated from the code), and so is each in docs/quickstart-aws.md;
#  * every `agentkeys-broker SUBCOMMAND … --flag` in the two documents' code is accepted by the
#    built binary's --help.
#
#   scripts/check-deploy.sh            # AGENTKEYS_BROKER_BIN defaults to the debug build
#
# Installs Debian's systemd package (as root) if systemd-analyze is missing. Changes nothing
# else on the machine; safe to run again.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
bin="${AGENTKEYS_BROKER_BIN:-$CARGO_TARGET_DIR/debug/agentkeys-broker}"
units=(deploy/systemd/agentkeys-broker.service deploy/systemd/agentkeys-broker@.service)
env_example=deploy/systemd/broker.env.example
docs=(docs/deploy.md docs/quickstart-aws.md)

fail() { echo "check-deploy: $*" >&2; exit 1; }

[[ -x "$bin" ]] || fail "no broker binary at $bin: build it (cargo build -p agentkeys-broker) or set AGENTKEYS_BROKER_BIN"
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
for f in "${units[@]}" "$env_example" "${docs[@]}" docs/configuration.md; do
  [[ -f "$f" ]] || fail "missing $f"
done

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# 1. Settings: each BROKER_* named here is a row of docs/configuration.md. A name ending in `_`
#    (written as `BROKER_SMTP_*`) must be the prefix of at least one.
# shellcheck disable=SC2016 # literal backticks
grep -o '`BROKER_[A-Z0-9_]*`' docs/configuration.md | tr -d '`' | sort -u >"$scratch/known"
[[ -s "$scratch/known" ]] || fail "no BROKER_* settings found in docs/configuration.md"
missing=0
while read -r name; do
  if [[ $name == *_ ]]; then
    grep -q "^$name" "$scratch/known" && continue
  else
    grep -qx "$name" "$scratch/known" && continue
  fi
  where=$(grep -l -- "$name" "${units[@]}" "$env_example" "${docs[@]}" | paste -sd, -)
  echo "check-deploy: $name (in $where) is not a setting in docs/configuration.md" >&2
  missing=1
done < <(grep -ho 'BROKER_[A-Z0-9_]*' "${units[@]}" "$env_example" "${docs[@]}" | sort -u)
((missing == 0)) || exit 1

# 2. Commands: the subcommands and flags the documents and the units' Exec lines show exist in
#    the binary.
python3 - "${#docs[@]}" "${docs[@]}" "${units[@]}" >"$scratch/commands" <<'EOF'
import re, sys
ndocs = int(sys.argv[1])
code = []
for doc in sys.argv[2:2 + ndocs]:
    text = open(doc).read()
    code += re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    prose = re.sub(r"```[a-z]*\n.*?```", "", text, flags=re.S)
    code += [c.replace("\n", " ") for c in re.findall(r"`([^`]+)`", prose)]
for unit in sys.argv[2 + ndocs:]:
    code += re.findall(r"^Exec\w*=(.*)$", open(unit).read(), re.M)
# `akb` is the page's wrapper for /usr/local/bin/agentkeys-broker.
pattern = re.compile(r"(?:\bakb|agentkeys-broker)((?: [a-z][a-z-]*)+)([^|;&)`]*)")
seen = set()
for snippet in code:
    for m in pattern.finditer(snippet.replace("\\\n", " ")):
        words = m.group(1).split()
        if words and words[0] in ("keys", "audit", "policy"):
            words = words[:2]
        else:
            words = words[:1]
        flags = re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", m.group(2))
        line = " ".join(words) + "\t" + " ".join(flags)
        if words and line not in seen:
            seen.add(line)
            print(line)
EOF
[[ -s "$scratch/commands" ]] || fail "found no agentkeys-broker commands in ${docs[*]}"
while IFS=$'\t' read -r words flags; do
  read -ra argv <<<"$words"
  help=$("$bin" "${argv[@]}" --help 2>&1) || fail "${docs[*]} show \`agentkeys-broker $words\`, which the binary does not know"
  for flag in $flags; do
    grep -qE -- "$flag([^a-z-]|$)" <<<"$help" || fail "${docs[*]} show \`agentkeys-broker $words $flag\`, which the binary does not accept"
  done
done <"$scratch/commands"

# 3. The units: systemd-analyze verify on copies that run the built binary.
if ! command -v systemd-analyze >/dev/null; then
  ((EUID == 0)) || fail "systemd-analyze is missing: apt-get install systemd"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
  command -v systemd-analyze >/dev/null || fail "installed systemd, but systemd-analyze is still not on PATH"
fi
user_sub=()
# The units run as `agentkeys`; where that user does not exist, verify the copies as root.
id agentkeys >/dev/null 2>&1 || user_sub=(-e 's/^User=agentkeys$/User=root/' -e 's/^Group=agentkeys$/Group=root/')
mkdir "$scratch/units"
for unit in "${units[@]}"; do
  sed -e "s|/usr/local/bin/agentkeys-broker|$bin|g" "${user_sub[@]}" "$unit" >"$scratch/units/$(basename "$unit")"
done
# A template is verified through an instance of it, so that %i expands.
targets=("$scratch/units/agentkeys-broker.service" "$scratch/units/agentkeys-broker@8091.service")
status=0
out=$(systemd-analyze verify "${targets[@]}" 2>&1) || status=$?
# Other units on the machine may draw remarks of their own; only ours count.
ours=$(grep -E "agentkeys-broker|$scratch" <<<"$out" || true)
if ((status != 0)) || [[ -n $ours ]]; then
  printf '%s\n' "$out" >&2
  fail "systemd-analyze verify: the units in deploy/systemd/ draw the remarks above (exit $status)"
fi

echo "deploy docs and systemd units: ok ($(wc -l <"$scratch/known") settings known, $(wc -l <"$scratch/commands") commands checked, ${#targets[@]} units verified)"
