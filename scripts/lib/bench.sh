# shellcheck shell=bash
# Sourced by the bench-*.sh scripts: what their brokers have in common. The sourcing script
# defines `die` and exports CARGO_TARGET_DIR.

# Rate limits out of the way (they are still counted on every mint), and the
# anonymous limiter opened: the load signs in its masters from one address.
# shellcheck disable=SC2034  # read by the sourcing scripts
BENCH_BROKER_ENV=(
  BROKER_MINT_RATE_PER_MINUTE=100000000 BROKER_MINT_RATE_PER_HOUR=100000000 BROKER_LOG=warn
  BROKER_ANON_RATE_PER_IP_PER_MINUTE=1000000 BROKER_ANON_RATE_GLOBAL_PER_SECOND=1000000
)

# Nothing from the caller's environment may redirect a broker (another database, issuer...).
unset_broker_env() {
  local v
  for v in $(compgen -e | grep '^BROKER_' || true); do unset "$v"; done
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Prints a loopback port nothing listens on now (it may be taken before it is used).
free_port() {
  local port
  for _ in $(seq 20); do
    port=$((20000 + RANDOM % 40000))
    port_in_use "$port" || { echo "$port"; return 0; }
  done
  die "found no free port"
}

# Builds the broker and the mint_load bench in release; sets broker_bin.
build_broker() {
  printf '\n==> %s\n' "cargo build --release -p agentkeys-broker (and the mint_load bench)"
  timeout 1800 cargo build --release -p agentkeys-broker
  timeout 1800 cargo bench -p agentkeys-broker --bench mint_load --no-run
  broker_bin="$CARGO_TARGET_DIR/release/agentkeys-broker"
  [[ -x "$broker_bin" ]] || die "no broker binary at $broker_bin"
}

# The ceiling: the perf lab's refmint (PERFLAB is its directory, ../shared/perf-lab beside the
# repository unless PERFLAB_DIR says otherwise).
need_ceiling() {
  [[ -f "$1/refmint/Cargo.toml" ]] ||
    die "the ceiling needs the perf lab's refmint at $1/refmint (set PERFLAB_DIR to the perf-lab directory)"
}

# build_ceiling PERFLAB WORK: builds refmint in release from a copy in WORK, so nothing (its
# Cargo.lock) is written into the perf lab's directory; sets refmint_bin.
build_ceiling() {
  printf '\n==> %s\n' "cargo build --release the ceiling (refmint) from $1/refmint"
  cp -r "$1/refmint" "$2/refmint"
  rm -rf "$2/refmint/target"
  CARGO_TARGET_DIR="$CARGO_TARGET_DIR/refmint" timeout 1800 \
    cargo build --release --manifest-path "$2/refmint/Cargo.toml"
  refmint_bin="$CARGO_TARGET_DIR/refmint/release/refmint"
  [[ -x "$refmint_bin" ]] || die "no refmint binary at $refmint_bin"
}

# write_mint_lua FILE: a wrk script that POSTs $MINT_PATH round-robin over the bearer tokens in
# $TOKENS_FILE (one a line) and ends its output with `wrk_requests:`, `wrk_non_2xx_or_3xx:`,
# `wrk_socket_errors:` and `wrk_p99_ms:` lines.
write_mint_lua() {
  cat >"$1" <<'LUA'
local tokens = {}
for line in io.lines(os.getenv("TOKENS_FILE")) do tokens[#tokens + 1] = line end
local path = os.getenv("MINT_PATH")
local i = 0
function request()
  i = i % #tokens + 1
  return wrk.format("POST", path, { ["Authorization"] = "Bearer " .. tokens[i], ["Content-Length"] = "0" })
end
function done(summary, latency, requests)
  io.write(string.format("wrk_requests: %d\nwrk_non_2xx_or_3xx: %d\nwrk_socket_errors: %d\nwrk_p99_ms: %.3f\n",
    summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(99) / 1000))
end
LUA
}
