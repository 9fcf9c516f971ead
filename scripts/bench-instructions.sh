#!/usr/bin/env bash
# Instructions per mint: the broker (and with --compare the ceiling) run under valgrind's
# callgrind, which counts the instructions each executes. Counts do not depend on what else the
# machine is doing, so two trees can be compared to within a percent on a busy machine where
# mints/s moves by ten (docs/performance.md, "Instructions per mint"). They leave out the kernel
# (syscalls, the fsync's wait) and cache misses: mints/s and CPU per mint still come from
# scripts/bench-mint.sh.
#
#   scripts/bench-instructions.sh [--seconds S] [--masters N] [--compare] [--keep]
#
#   --seconds   seconds of load counted (default 20; under callgrind a mint is ≈ 50× slower)
#   --masters   wallets signed in, minted for round-robin (default 200)
#   --compare   also count the ceiling (the perf lab's refmint, as scripts/bench-mint.sh
#               --compare runs it) and print the broker's ratio to it
#   --keep      keep the work dir with the counts (`callgrind_annotate WORKDIR/broker.counted`)
#
# The load is wrk, 1 thread, 32 connections, bearers round-robin; counting starts after sign-in
# and a 3 s warm-up (callgrind_control --zero) and stops with a dump when wrk ends. Needs
# valgrind and wrk (Debian packages).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

die() {
  echo "bench-instructions: $*" >&2
  exit 1
}

seconds=20
masters=200
compare=0
keep=0
perflab="${PERFLAB_DIR:-$repo/../shared/perf-lab}"
while (($#)); do
  case "$1" in
    --seconds) [[ "${2-}" =~ ^[1-9][0-9]*$ ]] || die "--seconds needs a positive integer"; seconds="$2"; shift 2 ;;
    --masters) [[ "${2-}" =~ ^[1-9][0-9]*$ ]] || die "--masters needs a positive integer"; masters="$2"; shift 2 ;;
    --compare) compare=1; shift ;;
    --keep) keep=1; shift ;;
    -h | --help) sed -n '2,21p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
for tool in valgrind callgrind_control wrk curl; do
  command -v "$tool" >/dev/null || die "$tool is required (apt-get install -y valgrind wrk curl)"
done
# shellcheck source=scripts/lib/bench.sh
source "$repo/scripts/lib/bench.sh"
((compare == 0)) || need_ceiling "$perflab"

step() { printf '\n==> %s\n' "$*"; }

build_broker
work="$(mktemp -d "${TMPDIR:-/tmp}/agentkeys-instructions.XXXXXX")"
server_pid=""
# Stops the server under valgrind (it writes its last counts as it exits), if one runs.
stop_server() {
  if [[ -n "$server_pid" ]]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
cleanup() {
  local rc=$?
  stop_server
  if ((keep)); then echo "kept: $work"; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

unset_broker_env
((compare == 0)) || build_ceiling "$perflab" "$work"

write_mint_lua "$work/mint.lua"

# count NAME URL PATH TOKENS: zero the counters of $server_pid, load it, dump; prints
# instructions per mint and leaves the counts in $work/NAME.counted.
count() {
  local name="$1" url="$2" path="$3" tokens="$4" n bad total
  TOKENS_FILE="$tokens" MINT_PATH="$path" timeout 300 wrk -t1 -c32 -d3s -s "$work/mint.lua" "$url" >/dev/null
  callgrind_control --zero "$server_pid" >/dev/null 2>&1
  TOKENS_FILE="$tokens" MINT_PATH="$path" timeout $((seconds + 300)) wrk -t1 -c32 -d"${seconds}s" \
    -s "$work/mint.lua" "$url" >"$work/$name.wrk"
  callgrind_control --dump "$server_pid" >/dev/null 2>&1
  n=$(awk '$1 == "wrk_requests:" {print $2}' "$work/$name.wrk")
  bad=$(awk '$1 == "wrk_non_2xx_or_3xx:" {print $2}' "$work/$name.wrk")
  ((n > 0)) || die "$name: no mint in $seconds s"
  ((bad == 0)) || die "$name: $bad answers were not 2xx"
  # The dump is the first part file: everything counted since the zeroing.
  mv "$work/$name.callgrind.1" "$work/$name.counted"
  total=$(awk '$1 == "summary:" || $1 == "totals:" {print $2; exit}' "$work/$name.counted")
  [[ -n "$total" ]] || die "$name: no totals in the callgrind dump"
  echo "$name: $n mints, $((total / n)) instructions per mint"
  echo "$((total / n))" >"$work/$name.per-mint"
}

# ready URL: waits up to 5 min (valgrind starts slowly) for any HTTP answer from URL.
ready() {
  for _ in $(seq 1500); do
    kill -0 "$server_pid" 2>/dev/null || die "the server under valgrind exited"
    curl -s --max-time 2 -o /dev/null "$1" && return 0
    sleep 0.2
  done
  die "no answer from $1"
}

step "the broker under callgrind, $seconds s of wrk (32 connections), $masters masters"
data="$work/data"
"$broker_bin" keys generate --data-dir "$data" >/dev/null
port="$(free_port)"
env "${BENCH_BROKER_ENV[@]}" valgrind --tool=callgrind --dump-instr=no \
  --callgrind-out-file="$work/broker.callgrind" \
  "$broker_bin" serve --dev --data-dir "$data" --listen "127.0.0.1:$port" \
  --issuer "http://127.0.0.1:$port" >"$work/broker.log" 2>&1 &
server_pid=$!
ready "http://127.0.0.1:$port/readyz"
timeout 600 cargo bench -q -p agentkeys-broker --bench mint_load -- \
  --url "http://127.0.0.1:$port" --masters "$masters" --tokens-out "$work/tokens" >/dev/null
count broker "http://127.0.0.1:$port" /v1/mint-oidc-jwt "$work/tokens"
stop_server

if ((compare)); then
  step "the ceiling under callgrind, $seconds s of wrk (32 connections)"
  for i in $(seq 0 199); do echo "sess-$i"; done >"$work/ceiling-tokens"
  port="$(free_port)"
  PORT="$port" WORKERS="$(nproc)" AUDIT=group AUDIT_SYNC=FULL AUDIT_DB="$work/refmint.db" \
    valgrind --tool=callgrind --dump-instr=no --callgrind-out-file="$work/ceiling.callgrind" \
    "$refmint_bin" >"$work/ceiling.log" 2>&1 &
  server_pid=$!
  ready "http://127.0.0.1:$port/mint"
  count ceiling "http://127.0.0.1:$port" /mint "$work/ceiling-tokens"
  stop_server
  awk -v b="$(cat "$work/broker.per-mint")" -v c="$(cat "$work/ceiling.per-mint")" \
    'BEGIN {printf "\ninstructions per mint: broker %d, ceiling %d, ratio %.2f\n", b, c, b / c}'
fi
