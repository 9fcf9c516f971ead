#!/usr/bin/env bash
# Mint throughput benchmark: builds the broker in release, starts it on a fresh data dir on
# 127.0.0.1 with rate limits out of the way, runs the mint_load bench against it R times,
# prints each run and the median, stops the broker and verifies the audit chain it wrote.
#
#   scripts/bench-mint.sh [--concurrency C] [--seconds S] [--masters N] [--runs R]
#                         [--warmup S] [--threads T] [--wrk] [--keep]
#                         [--database sqlite|postgres] [--instances N] [--compare]
#
#   --concurrency  concurrent workers / connections (default 32)
#   --seconds      measured seconds per run (default 20)
#   --masters      wallets signed in, minted for round-robin (default 200)
#   --runs         runs against the same broker (default 2)
#   --warmup       seconds per run left out of the statistics (default 2)
#   --threads      load-generator runtime threads (default 1)
#   --wrk          also one cross-check run with wrk (Debian package `wrk`), same concurrency
#   --keep         keep the data dir (broker.db, broker.log, run outputs) instead of deleting it
#   --database     sqlite (default: the embedded file) or postgres (a throwaway cluster from
#                  scripts/postgres.sh on loopback, keys sealed under a key-encryption key)
#   --instances    broker processes sharing the database (default 1); the load is spread over
#                  them round-robin, and server CPU is the sum of every broker's and, on
#                  postgres, every PostgreSQL process's
#   --compare      also measure the ceiling, the perf lab's minimal Rust mint with a durable
#                  group-committed SQLite audit (refmint AUDIT=group, 2 workers; from
#                  $PERFLAB_DIR, default ../shared/perf-lab beside the repository): ceiling and
#                  broker are both driven by wrk (1 thread, same connections, same seconds, 200
#                  bearers round-robin), alternating, once per run; prints the broker's ratios
#                  to the ceiling (mints/s, p99, server CPU per mint). Needs wrk.
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
database=sqlite
instances=1
compare=0
perflab="${PERFLAB_DIR:-$repo/../shared/perf-lab}"

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
    --database) [[ "${2-}" == sqlite || "${2-}" == postgres ]] || die "--database is sqlite or postgres"; database="$2"; shift 2 ;;
    --instances) need_int "$1" "${2-}"; instances="$2"; shift 2 ;;
    --compare) compare=1; shift ;;
    -h | --help) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
((seconds <= 3600)) || die "--seconds must be at most 3600"
((runs <= 20)) || die "--runs must be at most 20"
((instances <= 8)) || die "--instances must be at most 8"
if ((instances > 1)) && [[ "$database" == sqlite ]]; then
  echo "bench-mint: note: $instances instances on one SQLite file (writers take turns on its lock)" >&2
fi
((use_wrk == 0 || instances == 1)) || die "--wrk drives one instance; use it without --instances"
((compare == 0 || instances == 1)) || die "--compare drives one instance; use it without --instances"

command -v curl >/dev/null || die "curl is required"
if ((use_wrk || compare)); then
  command -v wrk >/dev/null || die "--wrk and --compare need wrk (apt-get install -y wrk)"
fi
# shellcheck source=scripts/lib/bench.sh
source "$repo/scripts/lib/bench.sh"
((compare == 0)) || need_ceiling "$perflab"

step() { printf '\n==> %s\n' "$*"; }

build_broker
work="$(mktemp -d "${TMPDIR:-/tmp}/agentkeys-bench.XXXXXX")"
((compare == 0)) || build_ceiling "$perflab" "$work"
data="$work/data"
pg_state="$work/pg.env"
broker_pids=()
urls=()

stop_brokers() {
  local pid
  for pid in "${broker_pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${broker_pids[@]}"; do
    for _ in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "bench-mint: broker $pid did not stop in 10 s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  broker_pids=()
}

cleanup() {
  local rc=$?
  stop_brokers
  if [[ -f "$pg_state" ]]; then
    AGENTKEYS_PG_STATE="$pg_state" "$repo/scripts/postgres.sh" stop >/dev/null 2>&1 || true
  fi
  if ((keep)); then
    echo "kept: $work"
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

unset_broker_env

# The store every instance shares, and what the `keys` and `audit` commands need to reach it.
store_env=()
if [[ "$database" == postgres ]]; then
  step "starting a throwaway PostgreSQL cluster"
  pg_url="$(AGENTKEYS_PG_STATE="$pg_state" "$repo/scripts/postgres.sh" start)"
  head -c 32 /dev/urandom | base64 >"$work/kek"
  chmod 600 "$work/kek"
  store_env=(BROKER_DATABASE_URL="$pg_url" BROKER_KEY_ENCRYPTION_KEY_FILE="$work/kek")
elif ((instances > 1)); then
  # Instances on one SQLite file need the keys in the store too (each has its own data dir).
  head -c 32 /dev/urandom | base64 >"$work/kek"
  chmod 600 "$work/kek"
  store_env=(BROKER_DATABASE_URL="sqlite://$work/shared.db" BROKER_KEY_ENCRYPTION_KEY_FILE="$work/kek")
fi
env "${store_env[@]}" "$broker_bin" keys generate --data-dir "$data" >/dev/null

# Every instance answers as the first one's issuer, as behind a load balancer.
issuer=""
start_broker() {
  local n="$1" port pid url
  for _ in $(seq 20); do
    port="$(free_port)"
    [[ -n "$issuer" ]] || issuer="http://127.0.0.1:$port"
    env "${store_env[@]}" "${BENCH_BROKER_ENV[@]}" \
      "$broker_bin" serve --dev --data-dir "$data-$n" --listen "127.0.0.1:$port" --issuer "$issuer" \
      >>"$work/broker.log" 2>&1 &
    pid=$!
    url="http://127.0.0.1:$port"
    # Ready within 30 s, or try another port (someone may have taken this one meanwhile).
    for _ in $(seq 300); do
      kill -0 "$pid" 2>/dev/null || break
      if curl -fsS --max-time 2 "$url/readyz" >/dev/null 2>&1; then
        broker_pids+=("$pid")
        urls+=("$url")
        return 0
      fi
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    [[ "${#urls[@]}" -gt 0 ]] || issuer=""
  done
  cat "$work/broker.log" >&2
  die "the broker did not become ready"
}

# With one SQLite instance the data dir is the store (and its key file), as `serve --dev` uses it.
if [[ "$database" == sqlite ]] && ((instances == 1)); then
  rm -rf "$data-1"
  mv "$data" "$data-1"
fi
step "starting $instances broker instance(s) on $database"
for n in $(seq "$instances"); do
  start_broker "$n"
done
echo "brokers: ${broker_pids[*]} at ${urls[*]}"
url="${urls[0]}"

# The server processes whose CPU counts: every broker and, on postgres, every process of the
# cluster (each connection is a process; the pools are open once the masters have signed in).
server_pids() {
  local pid
  for pid in "${broker_pids[@]}"; do echo "$pid"; done
  if [[ "$database" == postgres ]]; then
    # shellcheck disable=SC1090
    source "$pg_state"
    local postmaster
    postmaster="$(head -n 1 "$PG_DIR/data/postmaster.pid")"
    echo "$postmaster"
    pgrep -P "$postmaster" || true
  fi
}
server_pid_args() {
  local pid
  for pid in $(server_pids); do printf -- '--server-pid %s ' "$pid"; done
}
url_args() {
  local u
  for u in "${urls[@]}"; do printf -- '--url %s ' "$u"; done
}

bench_timeout=$((warmup + seconds + 300 + masters * 3 / 1000))
for r in $(seq "$runs"); do
  step "run $r/$runs: concurrency $concurrency, $seconds s (+${warmup} s warm-up), $masters masters"
  # shellcheck disable=SC2046  # the helpers print flag/value pairs to split
  if ! timeout "$bench_timeout" cargo bench -q -p agentkeys-broker --bench mint_load -- \
    $(url_args) --masters "$masters" --concurrency "$concurrency" --seconds "$seconds" \
    --warmup "$warmup" --threads "$threads" $(server_pid_args) \
    | tee "$work/run-$r.txt"; then
    die "run $r failed (output above; broker log: $work/broker.log, kept with --keep)"
  fi
done

write_mint_lua "$work/mint.lua"

# CPU seconds (user + system) used so far by the processes given.
cpu_seconds() {
  local hz pid sum=0 t
  hz=$(getconf CLK_TCK)
  for pid in "$@"; do
    t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    sum=$((sum + t))
  done
  awk -v t="$sum" -v hz="$hz" 'BEGIN {printf "%.3f", t / hz}'
}

# wrk_run NAME URL PATH TOKENS PID...: a warm-up, then the measured run; writes $work/NAME.txt
# with wrk's output and `mints/s:`, `p99_ms:`, `cpu_us_per_mint:`, `non_2xx:` lines.
wrk_run() {
  local name="$1" target="$2" path="$3" tokens="$4"
  shift 4
  local before after
  TOKENS_FILE="$tokens" MINT_PATH="$path" timeout 120 wrk -t1 -c"$concurrency" -d"${warmup}s" \
    -s "$work/mint.lua" "$target" >/dev/null 2>&1 || true
  before=$(cpu_seconds "$@")
  TOKENS_FILE="$tokens" MINT_PATH="$path" timeout $((seconds + 120)) wrk -t1 -c"$concurrency" \
    -d"${seconds}s" --latency -s "$work/mint.lua" "$target" >"$work/$name.txt"
  after=$(cpu_seconds "$@")
  awk -v b="$before" -v a="$after" -v s="$seconds" '
    $1 == "wrk_requests:" {n = $2} $1 == "wrk_non_2xx_or_3xx:" {bad = $2} $1 == "wrk_p99_ms:" {p99 = $2}
    END {printf "mints/s: %.0f\np99_ms: %.3f\ncpu_us_per_mint: %.1f\nnon_2xx: %d\n",
      n / s, p99, (n > 0 ? (a - b) * 1e6 / n : 0), bad}' "$work/$name.txt" >>"$work/$name.txt"
}
field() { awk -v k="$2:" '$1 == k {print $2}' "$work/$1.txt"; }

wrk_line=""
if ((use_wrk || compare)); then
  timeout 300 cargo bench -q -p agentkeys-broker --bench mint_load -- \
    --url "$url" --masters "$masters" --tokens-out "$work/tokens" >/dev/null
fi
if ((use_wrk)); then
  step "cross-check with wrk: $concurrency connections, $seconds s"
  # shellcheck disable=SC2046  # one pid a word
  wrk_run wrk "$url" /v1/mint-oidc-jwt "$work/tokens" $(server_pids)
  cat "$work/wrk.txt"
  wrk_bad=$(field wrk non_2xx)
  wrk_line="wrk (1 thread, $concurrency connections): mints/s $(field wrk mints/s), p99 $(field wrk p99_ms) ms, server CPU $(field wrk cpu_us_per_mint) µs/mint, non-2xx $wrk_bad"
fi

compare_lines=()
if ((compare)); then
  # The ceiling's bearers are its own (sess-0 … sess-199); its database is a fresh file per run.
  for i in $(seq 0 199); do echo "sess-$i"; done >"$work/ceiling-tokens"
  for r in $(seq "$runs"); do
    step "compare $r/$runs: the ceiling, then the broker, wrk $concurrency connections, $seconds s each"
    mkdir -p "$work/ceiling-$r"
    ceiling_port="$(free_port)"
    PORT="$ceiling_port" WORKERS="$(nproc)" AUDIT=group AUDIT_SYNC=FULL AUDIT_DB="$work/ceiling-$r/refmint.db" \
      "$refmint_bin" >"$work/ceiling-$r/log" 2>&1 &
    ceiling_pid=$!
    for _ in $(seq 100); do port_in_use "$ceiling_port" && break; sleep 0.1; done
    port_in_use "$ceiling_port" || { cat "$work/ceiling-$r/log" >&2; die "the ceiling did not start"; }
    wrk_run "ceiling-$r" "http://127.0.0.1:$ceiling_port" /mint "$work/ceiling-tokens" "$ceiling_pid"
    kill -TERM "$ceiling_pid" 2>/dev/null || true
    wait "$ceiling_pid" 2>/dev/null || true
    # shellcheck disable=SC2046  # one pid a word
    wrk_run "broker-$r" "$url" /v1/mint-oidc-jwt "$work/tokens" $(server_pids)
    for who in ceiling broker; do
      [[ "$(field "$who-$r" non_2xx)" == 0 ]] || die "wrk saw non-2xx answers from the $who"
      echo "$who: mints/s $(field "$who-$r" mints/s)  p99_ms $(field "$who-$r" p99_ms)  server_cpu_us_per_mint $(field "$who-$r" cpu_us_per_mint)"
    done
  done
  cmedian() { # cmedian WHO FIELD
    for r in $(seq "$runs"); do field "$1-$r" "$2"; done | sort -g | awk '{v[NR] = $1} END {
      if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
  }
  c_rps=$(cmedian ceiling mints/s) b_rps=$(cmedian broker mints/s)
  c_p99=$(cmedian ceiling p99_ms) b_p99=$(cmedian broker p99_ms)
  c_cpu=$(cmedian ceiling cpu_us_per_mint) b_cpu=$(cmedian broker cpu_us_per_mint)
  compare_lines=(
    "ceiling (refmint group, wrk c=$concurrency): mints/s $c_rps  p99_ms $c_p99  server_cpu_us_per_mint $c_cpu"
    "broker (wrk c=$concurrency):                 mints/s $b_rps  p99_ms $b_p99  server_cpu_us_per_mint $b_cpu"
    "$(awk -v br="$b_rps" -v cr="$c_rps" -v bp="$b_p99" -v cp="$c_p99" -v bc="$b_cpu" -v cc="$c_cpu" 'BEGIN {
      printf "ratio to the ceiling: mints/s %.2f  p99 %.2f  server CPU per mint %.2f", br / cr, bp / cp, bc / cc }')"
  )
fi

metrics="$(curl -fsS --max-time 10 "$url/metrics" || true)"

step "stopping the broker(s)"
stop_brokers

step "verifying the audit chain"
verify_dir="$data"
[[ -d "$data" ]] || verify_dir="$data-1"
verify_out="$(env "${store_env[@]}" timeout 600 "$broker_bin" audit verify --data-dir "$verify_dir" 2>&1)" || {
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
echo "database: $database  instances: $instances"
echo "concurrency: $concurrency  seconds: $seconds  warmup: $warmup  masters: $masters  runs: $runs  loadgen_threads: $threads"
echo "mints/s per run: $(per_run 'mints/s')"
echo "p50_ms per run: $(per_run p50_ms)"
echo "p99_ms per run: $(per_run p99_ms)"
echo "median mints/s: $(median 'mints/s')"
echo "median p50_ms: $(median p50_ms)"
echo "median p90_ms: $(median p90_ms)"
echo "median p99_ms: $(median p99_ms)"
echo "median max_ms: $(median max_ms)"
echo "median server_cpu_cores (brokers + database): $(median broker_cpu_cores)"
echo "median server_cpu_us_per_mint: $(median broker_cpu_us_per_mint)"
echo "median loadgen_cpu_cores: $(median loadgen_cpu_cores)"
echo "non_200 over all runs: $(for r in $(seq "$runs"); do awk '$1 == "non_200_total:" {print $2}' "$work/run-$r.txt"; done | awk '{s += $1} END {print s + 0}')"
[[ -n "$wrk_line" ]] && echo "$wrk_line"
for line in "${compare_lines[@]}"; do echo "$line"; done
echo "$metrics" | grep -E '^agentkeys_(audit_writes|mints)_total' | sed 's/^/metric: /' || true
echo "broker log ERROR lines: $errors"
echo "audit: $verify_out"

((errors == 0)) || die "the broker logged $errors error(s); see $work/broker.log (--keep keeps it)"
if [[ -n "$wrk_line" && "${wrk_bad:-0}" != "0" ]]; then
  die "wrk saw non-2xx answers"
fi
