#!/usr/bin/env bash
# The two TLS deployments of docs/deploy.md, run for real with a throwaway CA (openssl):
#  1. Debian's nginx terminating TLS in front of a plain-HTTP broker, with the server block from
#     docs/deploy.md (marker `tls-check`): the README walkthrough through https://, /metrics
#     hidden, and client IPs taken from X-Forwarded-For only when the proxy sent it.
#  2. The broker serving TLS itself (--tls-cert/--tls-key): the walkthrough again, then a
#     renewed certificate served on the next handshake without a restart.
# The CLI trusts the CA through AGENTKEYS_CA_FILE, curl through CURL_CA_BUNDLE.
#
#   scripts/check-tls.sh     # AGENTKEYS_TLS_PORTS="BROKER PROXY" picks the two ports
#
# Needs nginx and openssl (.ci/run installs nginx). Starts nothing as a service; everything it
# starts is stopped on exit.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
# shellcheck source=scripts/lib/walkthrough.sh
. "$repo/scripts/lib/walkthrough.sh"

fail() { echo "check-tls: $*" >&2; exit 1; }
command -v nginx >/dev/null || fail "needs nginx (apt-get install nginx)"
command -v openssl >/dev/null || fail "needs openssl (apt-get install openssl)"
cargo build -q -p agentkeys-broker -p agentkeys
bin="$CARGO_TARGET_DIR/debug"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
if [[ -n ${AGENTKEYS_TLS_PORTS:-} ]]; then
  read -r broker_port proxy_port <<<"$AGENTKEYS_TLS_PORTS"
else
  broker_port=$(free_port)
  proxy_port=$(free_port)
fi

scratch=$(mktemp -d)
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
  rm -rf "$scratch"
}
trap cleanup EXIT

# --- A throwaway CA and a server certificate for localhost --------------------------------------
pki="$scratch/pki"
mkdir -m 700 "$pki"
issue() { # issue NAME: a key and a certificate for localhost and 127.0.0.1, signed by the CA
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
  openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 2 -out "$pki/$1.pem" 2>/dev/null \
    -extfile <(printf '%s\n' 'subjectAltName=DNS:localhost,IP:127.0.0.1' 'basicConstraints=CA:FALSE' \
      'keyUsage=digitalSignature' 'extendedKeyUsage=serverAuth')
}
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj '/CN=AgentKeys check-tls throwaway CA' -keyout "$pki/ca.key" -out "$pki/ca.pem" 2>/dev/null
issue server
export AGENTKEYS_CA_FILE="$pki/ca.pem" CURL_CA_BUNDLE="$pki/ca.pem"

wait_ready() { # wait_ready URL LOG
  for _ in $(seq 100); do
    curl -sf -o /dev/null "$1/readyz" && return 0
    sleep 0.1
  done
  cat "$2"
  fail "$1/readyz never answered"
}

walkthrough() { # walkthrough BASE NAME: the README walkthrough against BASE, over https
  readme_walkthrough "$1" "$bin" >"$scratch/$2.sh"
  grep -q "$1" "$scratch/$2.sh" || fail "the walkthrough names no broker URL to rewrite"
  AGENTKEYS_CONFIG_DIR="$scratch/client-$2" AGENTKEYS_BROKER_URL="$1" \
    bash -euo pipefail "$scratch/$2.sh" >"$scratch/$2.out" 2>&1 || { cat "$scratch/$2.out"; fail "walkthrough $2 failed"; }
  check_walkthrough_output "$scratch/$2.out"
  grep -qF "\"issuer\":\"$1\"" "$scratch/$2.out" || { cat "$scratch/$2.out"; fail "discovery does not name $1"; }
}

# --- 1. nginx in front ---------------------------------------------------------------------------
proxy="https://localhost:$proxy_port"
data="$scratch/data"
# Outside --dev, as in production: an https issuer (the proxy's URL) and a key made beforehand.
"$bin/agentkeys-broker" keys generate --data-dir "$data" >/dev/null
"$bin/agentkeys-broker" serve --data-dir "$data" --listen "127.0.0.1:$broker_port" \
  --issuer "$proxy" --trusted-proxies 127.0.0.1 --metrics-token "check-tls-$RANDOM$RANDOM" \
  --anon-audit-window-seconds 1 >"$scratch/broker.log" 2>&1 &
pids+=($!)
wait_ready "http://127.0.0.1:$broker_port" "$scratch/broker.log"

# The server block from docs/deploy.md, pointed at this broker and this CA's certificate.
awk '/<!-- tls-check/ {found=1; next} found && /^```nginx$/ {inblock=1; next} inblock && /^```$/ {exit} inblock {print}' \
  docs/deploy.md >"$scratch/server.conf"
grep -q 'proxy_pass http://127.0.0.1:8091;' "$scratch/server.conf" || fail "no tls-check nginx block in docs/deploy.md"
sed -i -e "s#listen 443 ssl;#listen 127.0.0.1:$proxy_port ssl;#" \
  -e "s#127.0.0.1:8091#127.0.0.1:$broker_port#" \
  -e "s#/etc/ssl/broker.example.com/fullchain.pem#$pki/server.pem#" \
  -e "s#/etc/ssl/broker.example.com/privkey.pem#$pki/server.key#" "$scratch/server.conf"
mkdir "$scratch/nginx"
cat >"$scratch/nginx/nginx.conf" <<EOF
$([[ $EUID == 0 ]] && echo 'user root;')
worker_processes 1;
pid $scratch/nginx/nginx.pid;
error_log $scratch/nginx/error.log;
events { worker_connections 64; }
http {
    access_log $scratch/nginx/access.log;
    client_body_temp_path $scratch/nginx/body;
    proxy_temp_path $scratch/nginx/proxy;
    fastcgi_temp_path $scratch/nginx/fastcgi;
    uwsgi_temp_path $scratch/nginx/uwsgi;
    scgi_temp_path $scratch/nginx/scgi;
    include $scratch/server.conf;
}
EOF
nginx -t -q -e "$scratch/nginx/error.log" -p "$scratch/nginx" -c "$scratch/nginx/nginx.conf" \
  || { cat "$scratch/nginx/error.log"; fail "nginx refused the configuration"; }
nginx -e "$scratch/nginx/error.log" -p "$scratch/nginx" -c "$scratch/nginx/nginx.conf" -g 'daemon off;' &
pids+=($!)
wait_ready "$proxy" "$scratch/nginx/error.log"

walkthrough "$proxy" proxied
# Only the scraper reaches /metrics: not through the proxy.
[[ $(curl -s -o /dev/null -w '%{http_code}' "$proxy/metrics") == 404 ]] || fail "/metrics is served through the proxy"

# Client IPs: a refused request from 127.0.0.3 through nginx, with a forged X-Forwarded-For,
# is the client's (nginx appends the address it saw); the same forgery sent straight to the
# broker from 127.0.0.4, which is not a trusted proxy, is that peer's.
forged='X-Forwarded-For: 203.0.113.66'
token="Authorization: Bearer aks_$(printf 'A%.0s' $(seq 43))"
[[ $(curl -s -o /dev/null -w '%{http_code}' --interface 127.0.0.3 -H "$forged" -H "$token" \
  -X POST "$proxy/v1/mint-oidc-jwt") == 401 ]] || fail "a made-up token was not refused through the proxy"
[[ $(curl -s -o /dev/null -w '%{http_code}' --interface 127.0.0.4 -H "$forged" -H "$token" \
  -X POST "http://127.0.0.1:$broker_port/v1/mint-oidc-jwt") == 401 ]] || fail "a made-up token was not refused"
# The refusals are flushed to the audit log within the 1-second window (and at shutdown).
kill "${pids[0]}"
wait "${pids[0]}" 2>/dev/null || true
"$bin/agentkeys-broker" audit export --data-dir "$data" | grep '"anonymous.denied"' >"$scratch/denied.ndjson" || true
grep -q '"ip":"127.0.0.3"' "$scratch/denied.ndjson" || { cat "$scratch/denied.ndjson"; fail "the proxied client was not 127.0.0.3"; }
grep -q '"ip":"127.0.0.4"' "$scratch/denied.ndjson" || { cat "$scratch/denied.ndjson"; fail "the untrusted peer was not 127.0.0.4"; }
! grep -q '203.0.113.66' "$scratch/denied.ndjson" || { cat "$scratch/denied.ndjson"; fail "a forged X-Forwarded-For was believed"; }
echo "check-tls: behind nginx ok"

# --- 2. The broker's own TLS, and a renewal without a restart -----------------------------------
direct="https://localhost:$broker_port"
cp "$pki/server.pem" "$scratch/cert.pem"
cp "$pki/server.key" "$scratch/key.pem"
"$bin/agentkeys-broker" serve --data-dir "$data" --listen "127.0.0.1:$broker_port" \
  --issuer "$direct" --tls-cert "$scratch/cert.pem" --tls-key "$scratch/key.pem" \
  --metrics-token "check-tls-$RANDOM$RANDOM" >"$scratch/broker-tls.log" 2>&1 &
broker_pid=$!
pids+=("$broker_pid")
wait_ready "$direct" "$scratch/broker-tls.log"
walkthrough "$direct" direct

serial() { openssl s_client -connect "127.0.0.1:$broker_port" -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -serial; }
before=$(serial)
issue renewed
# As renewal tools do: new files renamed over the old ones.
cp "$pki/renewed.pem" "$scratch/cert.pem.new" && mv "$scratch/cert.pem.new" "$scratch/cert.pem"
cp "$pki/renewed.key" "$scratch/key.pem.new" && mv "$scratch/key.pem.new" "$scratch/key.pem"
after=$(serial)
expected=$(openssl x509 -noout -serial -in "$pki/renewed.pem")
[[ $after == "$expected" && $after != "$before" ]] || fail "after renewal the broker served $after, not $expected"
kill -0 "$broker_pid" || fail "the broker stopped"
curl -sf -o /dev/null "$direct/readyz" || fail "not ready after renewal"
echo "check-tls: broker TLS and renewal ok"
