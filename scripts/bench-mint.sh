#!/usr/bin/env bash
# Mint throughput benchmark: builds the broker in release, starts it on a fresh data dir on
# 127.0.0.1 with rate limits out of the way, runs the mint_load bench against it R times,
# prints each run and the median, stops the broker and verifies the audit chain it wrote.
#
#   scripts/bench-mint.sh [--concurrency C] [--seconds S] [--masters N] [--runs R]
#                         [--warmup S] [--threads T] [--wrk] [--keep]
#
#   --concurrency  concurrent workers / connections (default 32)
#   --seconds      measured seconds per run (default 20)
#   --masters      wallets signed in, minted for round-robin (default 200)
#   --runs         runs against the same broker (default 2)
#   --warmup       seconds per run left out of the statistics (default 2)
#   --threads      load-generator runtime threads (default 1)
#   --wrk          also one cross-check run with wrk (Debian package `wrk`), same concurrency
#   --keep         keep the data dir (broker.db, broker.log, run outputs) instead of deleting it
#
# The broker and the load generator share the machine's cores: see docs/performance.md for how
# to read the numbers. Exits non-zero if a run fails (anything but 200, or no mint at all), the
# broker logged an error, or the audit chain does not verify.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

concurrency=32
seconds=20
masters=200
runs=2
warmup=2
threads=1
use_wrk=0
keep=0

die() {
  echo "bench-mint: $*" >&2
  exit 2
}
need_int() { [[ "$2" =~ ^[0-9]+$ ]] && (("$2" > 0)) || die "$1 needs a positive integer, got '$2'"; }

while (($#)); do
  case "$1" in
    --concurrency) need_int "$1" "${2-}"; concurrency="$2"; shift 2 ;;
    --seconds) need_int "$1" "${2-}"; seconds="$2"; shift 2 ;;
    --masters) need_int "$1" "${2-}"; masters="$2"; shift 2 ;;
    --runs) need_int "$1" "${2-}"; runs="$2"; shift 2 ;;
    --warmup) [[ "${2-}" =~ ^[0-9]+$ ]] || die "--warmup needs an integer"; warmup="$2"; shift 2 ;;
    --threads) need_int "$1" "${2-}"; threads="$2"; shift 2 ;;
    --wrk) use_wrk=1; shift ;;
    --keep) keep=1; shift ;;
    -h | --help) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
((seconds <= 3600)) || die "--seconds must be at most 3600"
((runs <= 20)) || die "--runs must be at most 20"

command -v curl >/dev/null || die "curl is required"
if ((use_wrk)); then
  command -v wrk >/dev/null || die "--wrk needs wrk (apt-get install -y wrk)"
fi

step() { printf '\n==> %s\n' "$*"; }

step "cargo build --release -p agentkeys-broker (and the mint_load bench)"
timeout 1800 cargo build --release -p agentkeys-broker
timeout 1800 cargo bench -p agentkeys-broker --bench mint_load --no-run
broker_bin="$CARGO_TARGET_DIR/release/agentkeys-broker"
[[ -x "$broker_bin" ]] || die "no broker binary at $broker_bin"

work="$(mktemp -d "${TMPDIR:-/tmp}/agentkeys-bench.XXXXXX")"
data="$work/data"
broker_pid=""

stop_broker() {
  [[ -n "$broker_pid" ]] || return 0
  if kill -0 "$broker_pid" 2>/dev/null; then
    kill -TERM "$broker_pid" 2>/dev/null || true
    for _ in $(seq 100); do
      kill -0 "$broker_pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$broker_pid" 2>/dev/null; then
      echo "bench-mint: broker did not stop in 10 s; killing it" >&2
      kill -KILL "$broker_pid" 2>/dev/null || true
    fi
  fi
  wait "$broker_pid" 2>/dev/null || true
  broker_pid=""
}

cleanup() {
  local rc=$?
  stop_broker
  if ((keep)); then
    echo "kept: $work"
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Nothing from the caller's environment may redirect the broker (another database, issuer...).
for v in $(compgen -e | grep '^BROKER_' || true); do unset "$v"; done

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_broker() {
  local port
  for _ in $(seq 20); do
    port=$((20000 + RANDOM % 40000))
    port_in_use "$port" && continue
    # The load signs in its masters from one address: the anonymous limiter is opened too.
    BROKER_MINT_RATE_PER_MINUTE=100000000 BROKER_MINT_RATE_PER_HOUR=100000000 BROKER_LOG=warn \
      BROKER_ANON_RATE_PER_IP_PER_MINUTE=1000000 BROKER_ANON_RATE_GLOBAL_PER_SECOND=1000000 \
      "$broker_bin" serve --dev --data-dir "$data" --listen "127.0.0.1:$port" \
      >>"$work/broker.log" 2>&1 &
    broker_pid=$!
    url="http://127.0.0.1:$port"
    # Ready within 30 s, or try another port (someone may have taken this one meanwhile).
    for _ in $(seq 300); do
      kill -0 "$broker_pid" 2>/dev/null || break
      if curl -fsS --max-time 2 "$url/readyz" >/dev/null 2>&1; then
        return 0
      fi
      sleep 0.1
    done
    stop_broker
  done
  cat "$work/broker.log" >&2
  die "the broker did not become ready"
}

step "starting the broker (data dir $data)"
start_broker
echo "broker pid $broker_pid at $url"

bench_timeout=$((warmup + seconds + 300))
for r in $(seq "$runs"); do
  step "run $r/$runs: concurrency $concurrency, $seconds s (+${warmup} s warm-up), $masters masters"
  if ! timeout "$bench_timeout" cargo bench -q -p agentkeys-broker --bench mint_load -- \
    --url "$url" --masters "$masters" --concurrency "$concurrency" --seconds "$seconds" \
    --warmup "$warmup" --threads "$threads" --server-pid "$broker_pid" \
    | tee "$work/run-$r.txt"; then
    die "run $r failed (output above; broker log: $work/broker.log, kept with --keep)"
  fi
done

wrk_line=""
if ((use_wrk)); then
  step "cross-check with wrk: $concurrency connections, $seconds s"
  timeout 300 cargo bench -q -p agentkeys-broker --bench mint_load -- \
    --url "$url" --masters "$masters" --tokens-out "$work/tokens" >/dev/null
  cat >"$work/mint.lua" <<'LUA'
-- POST /v1/mint-oidc-jwt round-robin over the session tokens in $TOKENS_FILE.
local tokens = {}
for line in io.lines(os.getenv("TOKENS_FILE")) do tokens[#tokens + 1] = line end
local i = 0
function request()
  i = i % #tokens + 1
  return wrk.format("POST", "/v1/mint-oidc-jwt", { ["Authorization"] = "Bearer " .. tokens[i] })
end
function done(summary, latency, requests)
  io.write(string.format("wrk_non_2xx_or_3xx: %d\nwrk_socket_errors: %d\n", summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA
  # Warm-up, then the measured run.
  TOKENS_FILE="$work/tokens" timeout 120 wrk -t1 -c"$concurrency" -d"${warmup}s" \
    -s "$work/mint.lua" "$url" >/dev/null 2>&1 || true
  TOKENS_FILE="$work/tokens" timeout $((seconds + 120)) wrk -t1 -c"$concurrency" -d"${seconds}s" \
    --latency -s "$work/mint.lua" "$url" | tee "$work/wrk.txt"
  wrk_rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$work/wrk.txt")
  wrk_p50=$(awk '$1 == "50%" {print $2}' "$work/wrk.txt")
  wrk_p99=$(awk '$1 == "99%" {print $2}' "$work/wrk.txt")
  wrk_bad=$(awk '/^wrk_non_2xx_or_3xx:/ {print $2}' "$work/wrk.txt")
  wrk_line="wrk (1 thread, $concurrency connections): mints/s $wrk_rps, p50 $wrk_p50, p99 $wrk_p99, non-2xx $wrk_bad"
fi

metrics="$(curl -fsS --max-time 10 "$url/metrics" || true)"

step "stopping the broker"
stop_broker

step "verifying the audit chain"
verify_out="$(timeout 600 "$broker_bin" audit verify --data-dir "$data" 2>&1)" || {
  echo "$verify_out"
  die "audit verify FAILED after the load"
}
echo "$verify_out"

errors=$(grep -c -E '(^| )ERROR ' "$work/broker.log" || true)

# Median of one `key: value` field over the runs (mean of the middle two for an even count).
median() {
  local key="$1"
  for r in $(seq "$runs"); do
    awk -v k="$key:" '$1 == k {print $2}' "$work/run-$r.txt"
  done | sort -g | awk '{v[NR] = $1} END {
    if (NR == 0) { print "n/a"; exit }
    if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
per_run() {
  local key="$1"
  for r in $(seq "$runs"); do awk -v k="$key:" '$1 == k {printf "%s ", $2}' "$work/run-$r.txt"; done
}

step "summary"
echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine: $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), shared by broker and load generator"
echo "concurrency: $concurrency  seconds: $seconds  warmup: $warmup  masters: $masters  runs: $runs  loadgen_threads: $threads"
echo "mints/s per run: $(per_run 'mints/s')"
echo "p50_ms per run: $(per_run p50_ms)"
echo "p99_ms per run: $(per_run p99_ms)"
echo "median mints/s: $(median 'mints/s')"
echo "median p50_ms: $(median p50_ms)"
echo "median p90_ms: $(median p90_ms)"
echo "median p99_ms: $(median p99_ms)"
echo "median max_ms: $(median max_ms)"
echo "median broker_cpu_cores: $(median broker_cpu_cores)"
echo "median broker_cpu_us_per_mint: $(median broker_cpu_us_per_mint)"
echo "median loadgen_cpu_cores: $(median loadgen_cpu_cores)"
echo "non_200 over all runs: $(for r in $(seq "$runs"); do awk '$1 == "non_200_total:" {print $2}' "$work/run-$r.txt"; done | awk '{s += $1} END {print s + 0}')"
[[ -n "$wrk_line" ]] && echo "$wrk_line"
echo "$metrics" | grep -E '^agentkeys_(audit_writes|mints)_total' | sed 's/^/metric: /' || true
echo "broker log ERROR lines: $errors"
echo "audit: $verify_out"

((errors == 0)) || die "the broker logged $errors error(s); see $work/broker.log (--keep keeps it)"
if [[ -n "$wrk_line" && "${wrk_bad:-0}" != "0" ]]; then
  die "wrk saw non-2xx answers"
fi
