#!/usr/bin/env bash
# A throwaway Ceph RADOS Gateway (S3 + STS + IAM) on loopback, for the isolation harness.
#
#   scripts/e2e/rgw.sh install   Debian's radosgw ceph-mon ceph-osd ceph-common (skipped when present)
#   scripts/e2e/rgw.sh up        fresh one-node cluster: mon + memstore OSD + radosgw, admin user
#   scripts/e2e/rgw.sh status    which lab processes are alive, whether RGW answers
#   scripts/e2e/rgw.sh down      stop the lab's processes (by PID file) and delete the lab dir
#
# Layout: 1 mon (msgr2 only, auth none), 1 OSD on memstore (RAM, no block device), no mgr,
# radosgw (beast) on 127.0.0.1 with s3, sts and iam enabled. No systemd, no Docker.
# Every wait is bounded; `up` refuses to start when a port is taken; `down` kills only PIDs it
# recorded. `up` writes $E2E_LAB/env (RGW endpoint + admin keys) for the test to source.
#
# Environment (defaults in brackets):
#   E2E_LAB [/var/tmp/agentkeys-e2e/rgw]  scratch dir, wiped by `up` and `down`
#   E2E_MON_PORT [17300]  E2E_RGW_PORT [17480]
#   E2E_RGW_DEBUG [1]     radosgw debug level (20 logs JWT validation and policy evaluation)
#   E2E_KEEP_LAB [0]      1: `down` keeps the lab dir (logs) after stopping the processes
#
# Reference for every quirk handled here: the Ceph RGW notes in shared/ (FINDINGS.md).
set -euo pipefail

LAB=${E2E_LAB:-/var/tmp/agentkeys-e2e/rgw}
MON_PORT=${E2E_MON_PORT:-17300}
RGW_PORT=${E2E_RGW_PORT:-17480}
RGW_DEBUG=${E2E_RGW_DEBUG:-1}
# Local, throwaway lab credentials for the RGW admin user (loopback only, wiped by `down`).
ADMIN_AK=AKE2EADMIN0000000001
ADMIN_SK=e2eadminsecret00000000000000000000000001
PACKAGES=(radosgw ceph-mon ceph-osd ceph-common)
DAEMONS=(rgw osd.0 mon.a)          # stop order

CONF="$LAB/ceph.conf"
C=(-c "$CONF")

log() { printf '[rgw %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# wait_for DESC SECONDS CMD...  -- poll CMD about twice a second until it succeeds, at most SECONDS
wait_for() {
  local desc=$1 max=$2; shift 2
  local start=$SECONDS
  while ((SECONDS - start < max)); do
    if "$@" >/dev/null 2>&1; then log "$desc: ready after $((SECONDS - start))s"; return 0; fi
    sleep 0.5
  done
  die "$desc: not ready after ${max}s (logs in $LAB/log)"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# running PID: exists and is not a zombie (the daemons are reparented to PID 1, which may be
# slow to reap them)
running() { [[ -r "/proc/$1/stat" ]] && [[ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]]; }

pid_alive() { [[ -f "$LAB/run/$1.pid" ]] && running "$(cat "$LAB/run/$1.pid")"; }

# start NAME CMD...  -- run a daemon in the foreground of its own session, record its PID
start() {
  local name=$1; shift
  setsid "$@" >"$LAB/log/$name.out" 2>&1 </dev/null &
  echo $! >"$LAB/run/$name.pid"
}

do_install() {
  local t0=$SECONDS
  if dpkg-query -W -f='${Status}\n' "${PACKAGES[@]}" 2>/dev/null | grep -vq '^install ok installed$' \
     || [[ $(dpkg-query -W -f='${Status}\n' "${PACKAGES[@]}" 2>/dev/null | wc -l) -ne ${#PACKAGES[@]} ]]; then
    log "installing ${PACKAGES[*]} from Debian"
    timeout 300 apt-get update -qq
    # Seen on these machines: dpkg's unpack dir under /tmp vanished mid-install; use /var/tmp.
    mkdir -p /var/tmp/apt-tmp
    TMPDIR=/var/tmp/apt-tmp DEBIAN_FRONTEND=noninteractive timeout 900 \
      apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
  fi
  command -v radosgw >/dev/null || die "radosgw not on PATH after install"
  log "install: $((SECONDS - t0))s (radosgw $(radosgw --version | awk '{print $3}'))"
}

do_down() {
  local t0=$SECONDS name pid i alive
  local -a pids=()
  if [[ -d "$LAB/run" ]]; then
    for name in "${DAEMONS[@]}"; do
      [[ -f "$LAB/run/$name.pid" ]] || continue
      pid=$(cat "$LAB/run/$name.pid")
      # Only signal a PID that still runs the program we started (guards against PID reuse).
      if running "$pid" && grep -qaE 'ceph-mon|ceph-osd|radosgw' "/proc/$pid/cmdline" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        pids+=("$pid")
      fi
    done
    # The lab is thrown away, so one second of grace is enough: on TERM the memstore OSD
    # writes its whole store to disk and says goodbye to the mon (seconds); a KILL skips that.
    for ((i = 0; i < 4; i++)); do
      alive=0
      for pid in "${pids[@]}"; do running "$pid" && alive=1; done
      ((alive)) || break
      sleep 0.25
    done
    for pid in "${pids[@]}"; do
      running "$pid" && { kill -KILL "$pid" 2>/dev/null || true; }
    done
    for pid in "${pids[@]}"; do
      for ((i = 0; i < 20; i++)); do running "$pid" || break; sleep 0.25; done
    done
    rm -f "$LAB"/run/*.pid
  fi
  if [[ "${E2E_KEEP_LAB:-0}" == 1 ]]; then
    log "down: $((SECONDS - t0))s (lab dir $LAB kept)"
  else
    rm -rf "$LAB"
    log "down: $((SECONDS - t0))s"
  fi
}

do_status() {
  local name rc=0
  for name in mon.a osd.0 rgw; do
    if pid_alive "$name"; then echo "$name: running (pid $(cat "$LAB/run/$name.pid"))"; else echo "$name: stopped"; rc=1; fi
  done
  if curl -sf -m 2 -o /dev/null "http://127.0.0.1:$RGW_PORT/"; then
    echo "rgw: answering on http://127.0.0.1:$RGW_PORT"
  else
    echo "rgw: not answering on http://127.0.0.1:$RGW_PORT"; rc=1
  fi
  return $rc
}

do_up() {
  local t0=$SECONDS
  command -v radosgw >/dev/null || die "radosgw is not installed: run '$0 install' first"
  do_down 2>/dev/null || true                       # idempotent: clear a previous lab
  for p in "$MON_PORT" "$RGW_PORT"; do
    port_busy "$p" && die "127.0.0.1:$p is already in use (set E2E_MON_PORT / E2E_RGW_PORT)"
  done
  mkdir -p "$LAB"/{run,log,mon,osd,rgw}
  local fsid; fsid=$(cat /proc/sys/kernel/random/uuid)

  cat >"$CONF" <<CONF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$MON_PORT
mon initial members = a
auth cluster required = none
auth service required = none
auth client required = none
# radosgw defaults ms_mon_client_mode to "secure", which cannot work with auth none
# (it retries forever with "get_initial_auth_request returned -13"): allow crc.
ms mon client mode = crc secure
ms client mode = crc secure
ms bind msgr1 = false
ms bind ipv6 = false
public addr = 127.0.0.1
run dir = $LAB/run
admin socket = $LAB/run/\$name.asok
log file = $LAB/log/\$name.log
keyring = $LAB/keyring
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
mon data avail warn = 1
mon data avail crit = 0

[mon]
mon data = $LAB/mon/\$cluster-\$id
# Each map change (pool create, pool application enable, osd boot) waits for the next Paxos
# proposal, 1 s by default; radosgw creates its pools one after another. A lab can be eager.
paxos propose interval = 0.05
paxos min wait = 0.01

[osd]
osd data = $LAB/osd/\$cluster-\$id
osd objectstore = memstore
memstore device bytes = 1073741824
osd op num shards = 1
osd op num threads per shard = 2

[client]
rgw data = $LAB/rgw

[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT
rgw enable apis = s3, s3website, admin, sts, iam
# STS session tokens are encrypted with this key (exactly 16 characters; lab only)
rgw sts key = e2eLabStsKey0016
rgw s3 auth use sts = true
rgw thread pool size = 32
debug rgw = $RGW_DEBUG
CONF

  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$MON_PORT]" "$LAB/monmap" >/dev/null
  ceph-authtool --create-keyring "$LAB/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  timeout 60 ceph-mon "${C[@]}" --mkfs -i a --monmap "$LAB/monmap" --keyring "$LAB/keyring"
  start mon.a ceph-mon "${C[@]}" -i a -f
  wait_for "ceph-mon :$MON_PORT" 60 timeout 10 ceph "${C[@]}" --connect-timeout 5 mon stat

  local uuid id; uuid=$(cat /proc/sys/kernel/random/uuid)
  id=$(timeout 30 ceph "${C[@]}" --connect-timeout 10 osd new "$uuid")
  [[ "$id" == 0 ]] || die "expected osd id 0, got '$id'"
  mkdir -p "$LAB/osd/ceph-$id"
  timeout 120 ceph-osd "${C[@]}" -i "$id" --mkfs --osd-uuid "$uuid" >"$LAB/log/osd-mkfs.out" 2>&1
  start "osd.$id" ceph-osd "${C[@]}" -i "$id" -f
  osd_up() { timeout 10 ceph "${C[@]}" --connect-timeout 5 osd stat | grep -q '1 up'; }
  wait_for "ceph-osd.$id" 90 osd_up

  start rgw radosgw "${C[@]}" -n client.rgw.a -f    # creates its pools on first start
  rgw_up() { pid_alive rgw && curl -sf -m 2 -o /dev/null "http://127.0.0.1:$RGW_PORT/"; }
  wait_for "radosgw :$RGW_PORT" 120 rgw_up

  # Admin user allowed to manage OIDC providers, roles, users, buckets and policies.
  timeout 60 radosgw-admin "${C[@]}" user create --uid=e2e-admin --display-name=e2e-admin \
    --access-key="$ADMIN_AK" --secret="$ADMIN_SK" >/dev/null
  timeout 60 radosgw-admin "${C[@]}" caps add --uid=e2e-admin \
    --caps="roles=*;oidc-provider=*;users=*;buckets=*;user-policy=*" >/dev/null

  cat >"$LAB/env" <<ENV
E2E_RGW_ENDPOINT=http://127.0.0.1:$RGW_PORT
E2E_RGW_ADMIN_ACCESS_KEY=$ADMIN_AK
E2E_RGW_ADMIN_SECRET_KEY=$ADMIN_SK
E2E_RGW_LOG=$LAB/log/client.rgw.a.log
ENV
  log "up: $((SECONDS - t0))s (RGW http://127.0.0.1:$RGW_PORT, lab $LAB)"
}

case "${1:-}" in
  install) do_install ;;
  up) do_up ;;
  down) do_down ;;
  status) do_status ;;
  *) echo "usage: $0 install|up|down|status" >&2; exit 2 ;;
esac
