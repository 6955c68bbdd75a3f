#!/usr/bin/env bash
# A one-node Ceph cluster in a scratch directory, for tests and benchmarks:
# no systemd, no root-owned paths, every file (config, mon/mgr/osd data, logs,
# sockets, PID files) under DIR. Debian 12's ceph-mon/ceph-mgr/ceph-osd/ceph-common
# and the qemu-nbd with the rbd driver that tests/ceph/install-deps.sh unpacks.
#
#   ceph-cluster.sh up DIR                    start mon, mgr, osd.0 (BlueStore on a sparse
#                                             file), create pool "rbd" (size 1); prints the
#                                             path of DIR/ceph.conf. Idempotent.
#   ceph-cluster.sh rbd-image DIR NAME SIZE   create rbd/NAME (SIZE as rbd takes it: 4G, 512M);
#                                             an existing image is kept
#   ceph-cluster.sh serve DIR IMAGE SOCKET    serve rbd/IMAGE with qemu-nbd on a Unix socket
#                                             (export name ""); prints qemu-nbd's PID. Idempotent.
#   ceph-cluster.sh kill-nbd DIR IMAGE        SIGKILL that qemu-nbd and wait for its exit
#   ceph-cluster.sh kill-osd DIR              SIGKILL osd.0 and wait for its exit
#   ceph-cluster.sh start-osd DIR             start osd.0 again and wait until the cluster has it up
#   ceph-cluster.sh down DIR                  stop everything started in DIR (by recorded PID,
#                                             SIGTERM then SIGKILL) and wait for the exits
#   ceph-cluster.sh status DIR                one line per recorded process: name, PID, alive
#
# Environment: NOTAFS_QEMU_RBD_DIR (where install-deps.sh unpacked qemu-nbd),
# CEPH_CLUSTER_TIMEOUT (seconds for each wait, default 60).
# Processes are found only through the PID files in DIR/run, and a PID is signalled
# only while /proc/PID/cmdline still names DIR (so a recycled PID is never hit).
set -euo pipefail

TIMEOUT="${CEPH_CLUSTER_TIMEOUT:-60}"
QEMU_RBD_DIR="${NOTAFS_QEMU_RBD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/notafs/qemu-rbd}"

die() { echo "ceph-cluster.sh: $*" >&2; exit 1; }
usage() { sed -n '7,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

need_dir() {
  [ -n "${1:-}" ] || usage
  mkdir -p "$1"
  DIR="$(cd "$1" && pwd)"
  CONF="$DIR/ceph.conf"
  RUN="$DIR/run"
  LOG="$DIR/log"
}

need_conf() {
  [ -f "$CONF" ] || die "$CONF does not exist: run 'ceph-cluster.sh up $DIR' first"
}

# The ceph CLI, bounded: a cluster without a mon would make it wait forever.
cephc() { timeout "$TIMEOUT" ceph -c "$CONF" --connect-timeout 10 "$@"; }

# alive NAME: the PID recorded for NAME runs and is one of ours (cmdline names DIR).
alive() {
  local f="$RUN/$1.pid" pid
  [ -f "$f" ] || return 1
  pid="$(cat "$f")"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF "$DIR/" || return 1
  # A zombie has exited already.
  [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}

# start NAME CMD...: run CMD in its own session in the background, output to
# DIR/log/NAME.out, PID to DIR/run/NAME.pid.
start() {
  local name="$1"; shift
  setsid "$@" </dev/null >>"$LOG/$name.out" 2>&1 &
  echo $! > "$RUN/$name.pid"
}

# stop NAME SIGNAL: signal the recorded process and wait for it to exit
# (SIGKILL after TIMEOUT seconds of SIGTERM).
stop() {
  local name="$1" sig="$2" pid i
  alive "$name" || { rm -f "$RUN/$name.pid"; return 0; }
  pid="$(cat "$RUN/$name.pid")"
  kill "-$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < TIMEOUT * 10; i++)); do
    alive "$name" || { rm -f "$RUN/$name.pid"; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    alive "$name" || { rm -f "$RUN/$name.pid"; return 0; }
    sleep 0.1
  done
  die "$name (PID $pid) did not exit after SIGKILL"
}

# wait_for WHAT CMD...: retry CMD every 0.2 s until it succeeds or TIMEOUT passes.
wait_for() {
  local what="$1"; shift
  local end=$((SECONDS + TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || die "timed out after ${TIMEOUT}s waiting for $what (logs in $LOG)"
    sleep 0.2
  done
}

free_port() {
  # Two consecutive free ports (msgr v2 and v1) in 20000-39999.
  local p used
  used="$(ss -Htan 2>/dev/null | awk '{print $4}' | sed 's/.*://' | sort -u)"
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 20000))
    if ! grep -qxF "$p" <<<"$used" && ! grep -qxF "$((p + 1))" <<<"$used"; then
      echo "$p"; return
    fi
  done
  die "no free port pair found for the monitor"
}

write_conf() {
  local fsid port
  fsid="$(cat /proc/sys/kernel/random/uuid)"
  port="$(free_port)"
  cat > "$CONF.tmp" <<EOF
# Written by tests/ceph/ceph-cluster.sh: a one-node cluster, everything under $DIR.
[global]
fsid = $fsid
mon initial members = a
mon host = [v2:127.0.0.1:$port,v1:127.0.0.1:$((port + 1))]
public network = 127.0.0.0/8
auth cluster required = none
auth service required = none
auth client required = none
auth supported = none
run dir = $RUN
log file = $LOG/\$name.log
log to stderr = false
err to stderr = true
mon cluster log file = $LOG/cluster.log
crash dir = $DIR/crash
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
mon data avail warn = 1

[client]
# No admin socket for CLI tools and qemu-nbd (several run at once).
admin socket =

[mon]
admin socket = $RUN/\$name.asok
mon data = $DIR/mon/\$cluster-\$id

[mgr]
admin socket = $RUN/\$name.asok
mgr data = $DIR/mgr/\$cluster-\$id

[osd]
admin socket = $RUN/\$name.asok
osd data = $DIR/osd/\$cluster-\$id
osd objectstore = bluestore
bluestore block path = $DIR/osd/block
bluestore block create = true
bluestore block size = 16G
bluestore cache autotune = false
bluestore cache size = 256M
osd memory target = 1G
EOF
  mv "$CONF.tmp" "$CONF"
}

# osd_up: this incarnation of osd.0 has booted (its admin socket says
# "active"; the osdmap alone still says "up" right after a SIGKILL, since a
# lone OSD has no peer to report it) and the monitor has it up.
osd_up() {
  alive osd || return 1
  timeout 5 ceph --admin-daemon "$RUN/osd.0.asok" status 2>/dev/null | grep -q '"state": "active"' || return 1
  cephc osd dump 2>/dev/null | grep -q '^osd\.0 up '
}

start_osd() {
  alive osd || start osd ceph-osd -c "$CONF" -i 0 -f
  local end=$((SECONDS + TIMEOUT))
  until osd_up; do
    alive osd || die "ceph-osd exited: $(tail -3 "$LOG/osd.out")"
    [ $SECONDS -lt $end ] || die "timed out after ${TIMEOUT}s waiting for osd.0 to be up (logs in $LOG)"
    sleep 0.2
  done
}

cmd_up() {
  need_dir "$1"
  for b in ceph-mon ceph-mgr ceph-osd ceph rbd monmaptool; do
    command -v "$b" >/dev/null || die "$b not found: run tests/ceph/install-deps.sh (Debian packages ceph-mon ceph-mgr ceph-osd ceph-common)"
  done
  mkdir -p "$RUN" "$LOG" "$DIR/mon" "$DIR/mgr" "$DIR/osd/ceph-0" "$DIR/crash"
  [ -f "$CONF" ] || write_conf

  # Monitor.
  if [ ! -e "$DIR/mon/ceph-a/done" ]; then
    rm -rf "$DIR/mon/ceph-a"
    local fsid addr
    fsid="$(ceph-conf -c "$CONF" --lookup fsid)"
    addr="$(ceph-conf -c "$CONF" --lookup mon_host)"
    monmaptool --create --clobber --fsid "$fsid" --addv a "$addr" "$DIR/monmap" >/dev/null
    ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" >>"$LOG/mon.a.out" 2>&1 \
      || die "ceph-mon --mkfs failed: $(tail -3 "$LOG/mon.a.out")"
    touch "$DIR/mon/ceph-a/done"
  fi
  alive mon || start mon ceph-mon -c "$CONF" -i a -f
  wait_for "the monitor to answer" cephc mon stat

  # Manager (pool statistics, health); the data path works without it.
  mkdir -p "$DIR/mgr/ceph-x"
  alive mgr || start mgr ceph-mgr -c "$CONF" -i x -f

  # OSD 0, BlueStore on a sparse file.
  if [ ! -e "$DIR/osd/ceph-0/ready" ]; then
    local uuid
    if [ -s "$DIR/osd/uuid" ]; then uuid="$(cat "$DIR/osd/uuid")"
    else uuid="$(cat /proc/sys/kernel/random/uuid)"; echo "$uuid" > "$DIR/osd/uuid"; fi
    local id
    id="$(cephc osd new "$uuid")" || die "ceph osd new failed"
    [ "$id" = 0 ] || die "ceph osd new gave id $id, expected 0 (is $DIR a fresh cluster?)"
    rm -rf "$DIR/osd/ceph-0" "$DIR/osd/block"
    mkdir -p "$DIR/osd/ceph-0"
    ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$uuid" >>"$LOG/osd.0.out" 2>&1 \
      || die "ceph-osd --mkfs failed: $(tail -3 "$LOG/osd.0.out")"
  fi
  start_osd

  # Pool rbd, one replica.
  if ! cephc osd pool ls | grep -qx rbd; then
    cephc osd pool create rbd 8 8 >/dev/null 2>&1 || die "ceph osd pool create rbd failed"
    cephc osd pool set rbd size 1 --yes-i-really-mean-it >/dev/null 2>&1 || die "ceph osd pool set rbd size 1 failed"
    timeout "$TIMEOUT" rbd -c "$CONF" pool init rbd || die "rbd pool init rbd failed"
  fi
  echo "$CONF"
}

cmd_rbd_image() {
  need_dir "$1"; need_conf
  local name="${2:-}" size="${3:-}"
  [ -n "$name" ] && [ -n "$size" ] || usage
  if timeout "$TIMEOUT" rbd -c "$CONF" info "rbd/$name" >/dev/null 2>&1; then
    return 0
  fi
  timeout "$TIMEOUT" rbd -c "$CONF" create "rbd/$name" --size "$size" --image-feature layering \
    || die "rbd create rbd/$name --size $size failed"
}

qemu_nbd() {
  local q="$QEMU_RBD_DIR/usr/bin/qemu-nbd"
  [ -x "$q" ] && [ -e "$QEMU_RBD_DIR/usr/lib/x86_64-linux-gnu/qemu/block-rbd.so" ] \
    || die "no qemu-nbd with the rbd driver in $QEMU_RBD_DIR: run tests/ceph/install-deps.sh"
  echo "$q"
}

# nbd_ready SOCKET: the server answers the NBD handshake.
nbd_ready() {
  if command -v nbdinfo >/dev/null; then
    nbdinfo --size "nbd+unix:///?socket=$1"
  else
    [ -S "$1" ]
  fi
}

cmd_serve() {
  need_dir "$1"; need_conf
  local image="${2:-}" sock="${3:-}"
  [ -n "$image" ] && [ -n "$sock" ] || usage
  local name="nbd-$image" q
  q="$(qemu_nbd)"
  case "$sock" in /*) ;; *) sock="$(pwd)/$sock" ;; esac
  if ! alive "$name"; then
    rm -f "$sock"
    QEMU_MODULE_DIR="$QEMU_RBD_DIR/usr/lib/x86_64-linux-gnu/qemu" \
      start "$name" "$q" -t -k "$sock" -f raw --cache=none --discard=unmap "rbd:rbd/$image:conf=$CONF"
  fi
  local end=$((SECONDS + TIMEOUT))
  until nbd_ready "$sock" >/dev/null 2>&1; do
    alive "$name" || die "qemu-nbd for rbd/$image exited: $(tail -3 "$LOG/$name.out")"
    [ $SECONDS -lt $end ] || die "timed out after ${TIMEOUT}s waiting for qemu-nbd on $sock (log $LOG/$name.out)"
    sleep 0.1
  done
  cat "$RUN/$name.pid"
}

cmd_kill_nbd() {
  need_dir "$1"
  [ -n "${2:-}" ] || usage
  stop "nbd-$2" KILL
}

cmd_down() {
  need_dir "$1"
  local f
  for f in "$RUN"/nbd-*.pid; do
    [ -e "$f" ] || continue
    f="${f##*/}"; stop "${f%.pid}" TERM
  done
  stop osd TERM
  stop mgr TERM
  stop mon TERM
}

cmd_status() {
  need_dir "$1"
  local f n
  for f in "$RUN"/*.pid; do
    [ -e "$f" ] || continue
    n="${f##*/}"; n="${n%.pid}"
    if alive "$n"; then echo "$n $(cat "$f") running"; else echo "$n $(cat "$f") dead"; fi
  done
}

case "${1:-}" in
  up) cmd_up "${2:-}" ;;
  rbd-image) cmd_rbd_image "${2:-}" "${3:-}" "${4:-}" ;;
  serve) cmd_serve "${2:-}" "${3:-}" "${4:-}" ;;
  kill-nbd) cmd_kill_nbd "${2:-}" "${3:-}" ;;
  kill-osd) need_dir "${2:-}"; stop osd KILL ;;
  start-osd) need_dir "${2:-}"; need_conf; start_osd ;;
  down) cmd_down "${2:-}" ;;
  status) cmd_status "${2:-}" ;;
  *) usage ;;
esac
