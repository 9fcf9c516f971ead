#!/usr/bin/env bash
# Cost per mint as the deployment grows: in the number of signed-in masters, and in the size of
# the audit log. Each point is a fresh broker (release build, embedded SQLite, rate limits out
# of the way, as scripts/bench-mint.sh runs it) measured by the mint_load bench; the audit
# points first append that many events to the log with scripts/seed-audit.py (a valid chain:
# `audit verify` passes after every point).
#
#   scripts/bench-curves.sh [--masters "10 1000 10000 100000"] [--audit "0 1000000 10000000"]
#                           [--concurrency C] [--seconds S]
#
#   --masters      masters signed in, one point each (audit log otherwise empty); minted for
#                  round-robin, so every session and rate-limit row is in play
#   --audit        events in the log before the broker starts, one point each (200 masters)
#   --concurrency  mint_load workers (default 32)
#   --seconds      measured seconds per point (default 8), after a warm-up in which every
#                  session mints at least once (2 s, or 1 s per 4,000 masters)
#
# Prints one line per point: mints/s, p99, server CPU per mint. The 10 M point needs ≈ 5 GB of
# disk and ≈ 6 min to seed on 2 cores.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

masters_points="10 1000 10000 100000"
audit_points="0 1000000 10000000"
concurrency=32
seconds=8

die() {
  echo "bench-curves: $*" >&2
  exit 2
}
while (($#)); do
  case "$1" in
    --masters) masters_points="${2-}"; shift 2 ;;
    --audit) audit_points="${2-}"; shift 2 ;;
    --concurrency) concurrency="${2-}"; shift 2 ;;
    --seconds) seconds="${2-}"; shift 2 ;;
    -h | --help) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
in_range() { [[ "$1" =~ ^[0-9]+$ ]] && (("$1" >= $2 && "$1" <= $3)); }
for n in $masters_points; do in_range "$n" 1 100000 || die "--masters points are 1..100000"; done
for n in $audit_points; do in_range "$n" 0 50000000 || die "--audit points are 0..50000000"; done
in_range "$concurrency" 1 10000 || die "--concurrency is 1..10000"
in_range "$seconds" 1 600 || die "--seconds is 1..600"
command -v python3 >/dev/null || die "python3 is required (to seed the audit log)"
command -v curl >/dev/null || die "curl is required"

# shellcheck source=scripts/lib/bench.sh
source "$repo/scripts/lib/bench.sh"
build_broker

work="$(mktemp -d "${TMPDIR:-/tmp}/agentkeys-curves.XXXXXX")"
pid=""
cleanup() {
  [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
unset_broker_env

# point LABEL MASTERS EVENTS: one fresh broker, measured; prints the point's line.
point() {
  local label="$1" masters="$2" events="$3" data="$work/data" port url out
  rm -rf "$data"
  "$broker_bin" keys generate --data-dir "$data" >/dev/null
  if ((events > 0)); then
    timeout 3600 python3 "$repo/scripts/seed-audit.py" "$data/broker.db" "$events" >/dev/null
  fi
  port="$(free_port)"
  url="http://127.0.0.1:$port"
  env "${BENCH_BROKER_ENV[@]}" "$broker_bin" serve --dev --data-dir "$data" --listen "127.0.0.1:$port" --issuer "$url" \
    >"$work/broker.log" 2>&1 &
  pid=$!
  for _ in $(seq 300); do curl -fsS --max-time 2 "$url/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  out="$work/$label.txt"
  # Warm-up long enough for every session to mint once (≈ 4,000 mints/s at the least): the
  # measured window then sees each one's steady state, not its first mint.
  local warmup=$(((masters + 3999) / 4000))
  ((warmup >= 2)) || warmup=2
  timeout $((seconds + warmup + 900)) cargo bench -q -p agentkeys-broker --bench mint_load -- \
    --url "$url" --masters "$masters" --concurrency "$concurrency" --seconds "$seconds" \
    --warmup "$warmup" --server-pid "$pid" >"$out" || { cat "$out" "$work/broker.log" >&2; die "$label failed"; }
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  pid=""
  "$broker_bin" audit verify --data-dir "$data" >/dev/null || die "$label: the audit chain does not verify"
  awk -v l="$label" '
    $1 == "mints/s:" {r = $2} $1 == "p99_ms:" {p = $2} $1 == "broker_cpu_us_per_mint:" {c = $2}
    $1 == "non_200_total:" {bad = $2} $1 == "sign_in_seconds:" {s = $2}
    END {printf "%-26s mints/s %7.0f  p99_ms %7.2f  server_cpu_us_per_mint %6.1f  non_200 %s  (sign-in %s s)\n", l, r, p, c, bad, s}' "$out"
}

echo "==> $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, concurrency $concurrency, $seconds s per point"
for m in $masters_points; do point "masters=$m" "$m" 0; done
for e in $audit_points; do point "audit_events=$e" 200 "$e"; done
