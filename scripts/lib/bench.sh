# shellcheck shell=bash
# Sourced by bench-mint.sh and bench-curves.sh: what their brokers have in common. The sourcing
# script defines `die`.

# Rate limits out of the way (their rows are still read and written on every mint), and the
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
