#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests: initdb into a fresh directory under /tmp, serve
# on 127.0.0.1 only (trust auth on loopback, nothing else listens), one database `agentkeys`.
#
#   scripts/postgres.sh start   # starts it (if not running); prints the URL
#   scripts/postgres.sh url     # prints the URL of the running cluster
#   scripts/postgres.sh stop    # stops it and deletes its directory
#
#   export AGENTKEYS_TEST_DATABASE="$(scripts/postgres.sh start)"
#
# PostgreSQL refuses to run as root: as root the cluster runs as the `postgres` user of
# Debian's package (`apt-get install postgresql`), else as the calling user. Debian's own
# default cluster plays no part. The state (directory, port, URL) is kept in
# $AGENTKEYS_PG_STATE (default /tmp/agentkeys-pg.env).
set -euo pipefail

state="${AGENTKEYS_PG_STATE:-/tmp/agentkeys-pg.env}"
bin="${AGENTKEYS_PG_BIN:-}"
if [[ -z "$bin" ]]; then
  bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
fi
[[ -x "$bin/initdb" ]] || { echo "postgres.sh: no PostgreSQL binaries (apt-get install postgresql)" >&2; exit 1; }

if ((EUID == 0)); then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
  as_pg() { runuser -u postgres -- "$@"; }
  owner=postgres
else
  as_pg() { "$@"; }
  owner="$(id -un)"
fi

load() {
  [[ -f "$state" ]] || return 1
  # shellcheck disable=SC1090
  source "$state"
}

running() {
  load && [[ -d "${PG_DIR:-}" ]] && as_pg "$bin/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1
}

port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
  if running; then
    echo "$PG_URL"
    return
  fi
  [[ -f "$state" ]] && stop >/dev/null
  local dir port
  dir="$(mktemp -d /tmp/agentkeys-pg.XXXXXX)"
  chown "$owner" "$dir"
  as_pg "$bin/initdb" -D "$dir/data" -U agentkeys --auth=trust --encoding=UTF8 --locale=C.UTF-8 \
    >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
  for port in $(seq 55432 55531); do
    port_free "$port" || continue
    # The socket goes into the throwaway directory, so nothing else on the machine is touched.
    if as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200" start >/dev/null; then
      local url="postgres://agentkeys@127.0.0.1:$port/agentkeys"
      as_pg "$bin/createdb" -h 127.0.0.1 -p "$port" -U agentkeys agentkeys
      printf 'PG_DIR=%q\nPG_PORT=%q\nPG_URL=%q\n' "$dir" "$port" "$url" >"$state"
      echo "$url"
      return
    fi
    tail -n 5 "$dir/server.log" >&2 || true
  done
  echo "postgres.sh: no free port in 55432-55531" >&2
  rm -rf "$dir"
  exit 1
}

stop() {
  if load; then
    if [[ -d "${PG_DIR:-}/data" ]]; then
      as_pg "$bin/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    [[ "${PG_DIR:-}" == /tmp/agentkeys-pg.* ]] && rm -rf "$PG_DIR"
    rm -f "$state"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  url) running || { echo "postgres.sh: not running (scripts/postgres.sh start)" >&2; exit 1; }; echo "$PG_URL" ;;
  *) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac
