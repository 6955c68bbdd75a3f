#!/usr/bin/env bash
# Benchmark (not a test): sequential write and read of SIZE (1 GiB) through notafs
# (`notafs put` / `notafs get` over an NBD URI) against nbdcopy (default requests in
# flight, and --requests=1 for reference), in the same run, over
#   rbd:   qemu-nbd (rbd driver, --cache=none) + a one-node Ceph cluster (ceph-cluster.sh)
#   local: the same qemu-nbd serving a local sparse file (--cache=none, so O_DIRECT)
# Best of ROUNDS rounds (the measures interleave within a round, who goes first alternating
# between rounds, so drift hits all alike), and each round's ratio with their median.
# Then the requests in flight: an nbdkit proxy with the log filter (nbdkit -t 256
# --filter=log nbd socket=...) in front of each qemu-nbd, its log parsed for the most
# requests outstanding at once, for notafs and for nbdcopy (which shows the method works).
#
# Usage: tests/ceph/bench-nbd.sh [WORKDIR]     (default /var/tmp/notafs-bench-nbd; ~2.5 GiB
#        of files there plus a 16 GiB sparse BlueStore file)
# Environment: ROUNDS (3), SIZE_MIB (1024), INFLIGHT_MIB (256), NOTAFS_BIN_DIR
# (target/release), WHERE ("rbd local"; WHERE=local measures only the local file export
# and starts no Ceph cluster), plus ceph-cluster.sh's. Needs install-deps.sh's packages, nbdkit,
# libnbd-bin (nbdcopy, nbdinfo) and the release binaries (cargo build --release --bins).
# Everything it starts is stopped by PID on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CL="$ROOT/tests/ceph/ceph-cluster.sh"
BIN="${NOTAFS_BIN_DIR:-$ROOT/target/release}"
WORK="${1:-/var/tmp/notafs-bench-nbd}"
ROUNDS="${ROUNDS:-3}"
SIZE_MIB="${SIZE_MIB:-1024}"
INFLIGHT_MIB="${INFLIGHT_MIB:-256}"
WHERE="${WHERE:-rbd local}"
QEMU_RBD_DIR="${NOTAFS_QEMU_RBD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/notafs/qemu-rbd}"

die() { echo "bench-nbd.sh: $*" >&2; exit 1; }
RBD=0
for w in $WHERE; do
  case "$w" in rbd) RBD=1 ;; local) ;; *) die "WHERE: rbd and/or local, not $w" ;; esac
done
for b in notafs mkfs-notafs; do [ -x "$BIN/$b" ] || die "$BIN/$b missing: cargo build --release --bins"; done
for b in nbdcopy nbdinfo nbdkit b2sum; do command -v "$b" >/dev/null || die "$b not found (Debian libnbd-bin, nbdkit, coreutils)"; done
[ -x "$QEMU_RBD_DIR/usr/bin/qemu-nbd" ] || die "no qemu-nbd with rbd in $QEMU_RBD_DIR: run tests/ceph/install-deps.sh"
export QEMU_MODULE_DIR="$QEMU_RBD_DIR/usr/lib/x86_64-linux-gnu/qemu"
QNBD="$QEMU_RBD_DIR/usr/bin/qemu-nbd"

mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
CLD="$WORK/cluster"
PIDS=()

cleanup() {
  local p
  for p in "${PIDS[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]}"; do
    while kill -0 "$p" 2>/dev/null; do sleep 0.1; done
  done
  [ "$RBD" = 1 ] && [ -e "$CLD/ceph.conf" ] && "$CL" down "$CLD" || true
}
trap cleanup EXIT

# bg CMD...: start CMD in the background, remember its PID.
bg() { "$@" </dev/null >>"$WORK/bg.log" 2>&1 & PIDS+=($!); }

wait_nbd() {
  local i
  for ((i = 0; i < 300; i++)); do
    nbdinfo --size "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "no NBD server answering at $1 (see $WORK/bg.log)"
}

now() { date +%s.%N; }
# mibs SECONDS -> MiB/s of SIZE_MIB
mibs() { awk -v s="$1" -v m="$SIZE_MIB" 'BEGIN { printf "%.0f", m / s }'; }

SRC="$WORK/src"
if [ ! -f "$SRC" ] || [ "$(stat -c %s "$SRC")" != $((SIZE_MIB << 20)) ]; then
  echo "bench: writing $SIZE_MIB MiB of random data to $SRC"
  head -c $((SIZE_MIB << 20)) /dev/urandom > "$SRC"
fi
SRC_HASH="$(b2sum -l 256 "$SRC" | cut -d' ' -f1)"

FS_GIB=$(( (SIZE_MIB * 2 + 1023) / 1024 + 1 ))
if [ $RBD = 1 ]; then
  echo "bench: Ceph cluster in $CLD"
  "$CL" up "$CLD" >/dev/null
  "$CL" rbd-image "$CLD" benchfs "${FS_GIB}G"
  "$CL" rbd-image "$CLD" benchraw "${SIZE_MIB}M"
  "$CL" serve "$CLD" benchfs "$WORK/rbd-fs.sock" >/dev/null
  "$CL" serve "$CLD" benchraw "$WORK/rbd-raw.sock" >/dev/null
fi

rm -f "$WORK/local-fs.img" "$WORK/local-raw.img" "$WORK"/local-*.sock
truncate -s "${FS_GIB}G" "$WORK/local-fs.img"
truncate -s "${SIZE_MIB}M" "$WORK/local-raw.img"
for t in fs raw; do
  bg setsid "$QNBD" -t -k "$WORK/local-$t.sock" -f raw --cache=none --discard=unmap "$WORK/local-$t.img"
done

uri() { echo "nbd+unix:///?socket=$WORK/$1.sock"; }
SOCKS=()
for where in $WHERE; do SOCKS+=("$where-fs" "$where-raw"); done
for s in "${SOCKS[@]}"; do wait_nbd "$(uri $s)"; done

declare -A BEST
record() { # record KEY SECONDS
  local k="$1" s="$2"
  if [ -z "${BEST[$k]:-}" ] || awk -v a="$s" -v b="${BEST[$k]}" 'BEGIN { exit !(a < b) }'; then
    BEST[$k]="$s"
  fi
  LAST[$k]="$s"
  printf '  %-28s %6.2f s  %5s MiB/s\n' "$k" "$s" "$(mibs "$s")"
}
timed() { # timed KEY CMD...
  local k="$1"; shift
  local t0 t1
  t0=$(now); "$@"; t1=$(now)
  record "$k" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"
}

# LAST[KEY]: this round's seconds; RATIOS["WHERE OP"]: per-round notafs / nbdcopy
# (default) ratios, each from two measures taken minutes apart at most.
declare -A LAST RATIOS
run_notafs() { # run_notafs WHERE FS-URI
  # A fresh filesystem each round (mkfs discards the whole export first).
  "$BIN/mkfs-notafs" -F "$2" >/dev/null
  timed "$1 notafs write" "$BIN/notafs" put "$2" "$SRC" /f
  timed "$1 notafs read" sh -c "'$BIN/notafs' get '$2' /f - >/dev/null"
  got="$("$BIN/notafs" hash "$2" /f | cut -d' ' -f1)"
  [ "$got" = "$SRC_HASH" ] || die "notafs read back other bytes over $1"
}
run_nbdcopy() { # run_nbdcopy WHERE RAW-URI
  local req opt
  for req in default 1; do
    opt=(); [ $req = 1 ] && opt=(--requests=1)
    # Discard the raw export first too (mkfs.notafs -F discards the whole export),
    # so both write into unallocated space.
    "$BIN/mkfs-notafs" -F "$2" >/dev/null
    timed "$1 nbdcopy-$req write" nbdcopy "${opt[@]}" --flush "$SRC" "$2"
    timed "$1 nbdcopy-$req read" nbdcopy "${opt[@]}" "$2" null:
  done
}

for ((r = 1; r <= ROUNDS; r++)); do
  for where in $WHERE; do
    fs="$(uri $where-fs)"; raw="$(uri $where-raw)"
    echo "round $r, $where (load average $(cut -d' ' -f1-3 /proc/loadavg)):"
    # Alternate who goes first: load that comes and goes hits both alike.
    if ((r % 2)); then
      run_notafs "$where" "$fs"; run_nbdcopy "$where" "$raw"
    else
      run_nbdcopy "$where" "$raw"; run_notafs "$where" "$fs"
    fi
    for op in write read; do
      RATIOS["$where $op"]+=" $(awk -v a="${LAST[$where nbdcopy-default $op]}" -v b="${LAST[$where notafs $op]}" \
        'BEGIN { printf "%.2f", a / b }')"
    done
  done
done

echo
echo "Best of $ROUNDS, $SIZE_MIB MiB, MiB/s (ratio = notafs / nbdcopy default):"
printf '| %-6s | %-5s | %6s | %15s | %11s | %5s |\n' path op notafs "nbdcopy default" "nbdcopy -R1" ratio
printf '|--------|-------|--------|-----------------|-------------|-------|\n'
for where in $WHERE; do
  for op in write read; do
    n=$(mibs "${BEST[$where notafs $op]}")
    d=$(mibs "${BEST[$where nbdcopy-default $op]}")
    o=$(mibs "${BEST[$where nbdcopy-1 $op]}")
    printf '| %-6s | %-5s | %6s | %15s | %11s | %5s |\n' "$where" "$op" "$n" "$d" "$o" \
      "$(awk -v a="$n" -v b="$d" 'BEGIN { printf "%.2fx", a / b }')"
  done
done
echo
echo "Per-round ratios (notafs / nbdcopy default, the same round), median:"
for where in $WHERE; do
  for op in write read; do
    # shellcheck disable=SC2086
    printf '  %-6s %-5s %s   median %s\n' "$where" "$op" "${RATIOS[$where $op]}" \
      "$(printf '%s\n' ${RATIOS[$where $op]} | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')"
  done
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"

# Requests in flight: an nbdkit proxy (nbd plugin, 256 threads, so it never caps
# the count) with the log filter in front of each qemu-nbd socket. The log filter
# writes a line when a server thread takes a request ("Write id=N ...") and when it
# is answered ("...Write id=N"): the most outstanding at once is the most the client
# had in flight at the server's latency (the proxy adds a little).
echo
echo "Requests in flight ($INFLIGHT_MIB MiB through nbdkit -t 256 --filter=log nbd socket=QEMU-NBD-SOCKET):"
IF_SRC="$WORK/inflight.src"
head -c $((INFLIGHT_MIB << 20)) "$SRC" > "$IF_SRC"
for s in "${SOCKS[@]}"; do
  rm -f "$WORK/proxy-$s.sock" "$WORK/proxy-$s.log"
  bg nbdkit -f -t 256 -U "$WORK/proxy-$s.sock" --filter=log nbd socket="$WORK/$s.sock" \
    logfile="$WORK/proxy-$s.log"
  wait_nbd "$(uri proxy-$s)"
done

# inflight LOG OP: max and mean outstanding OP requests (mean over request starts),
# their number and median size, in the log lines after the mark.
inflight() {
  tail -n +"$((MARK + 1))" "$1" | perl -ne '
    BEGIN { $op = shift @ARGV }
    if (/ \Q$op\E id=\d+ .*count=0x([0-9a-f]+)/) { $cur++; $max = $cur if $cur > $max; $sum += $cur; push @sz, hex $1 }
    elsif (/ \.\.\.\Q$op\E id=/) { $cur-- }
    END { if (!@sz) { print "none"; exit }
          @sz = sort { $a <=> $b } @sz;
          printf "max %d, mean %.1f over %d requests, median %d KiB", $max, $sum / @sz, scalar @sz, $sz[$#sz / 2] / 1024 }
  ' "$2"
}
mark() { MARK=$(wc -l < "$WORK/proxy-$1.log"); }

for where in $WHERE; do
  fs="$(uri proxy-$where-fs)"; raw="$(uri proxy-$where-raw)"
  mark $where-fs; "$BIN/notafs" put "$fs" "$IF_SRC" /g
  echo "  $where notafs put:      $(inflight "$WORK/proxy-$where-fs.log" Write)"
  mark $where-fs; "$BIN/notafs" get "$fs" /g - >/dev/null
  echo "  $where notafs get:      $(inflight "$WORK/proxy-$where-fs.log" Read)"
  mark $where-raw; nbdcopy --flush "$IF_SRC" "$raw"
  echo "  $where nbdcopy write:   $(inflight "$WORK/proxy-$where-raw.log" Write)"
  mark $where-raw; nbdcopy "$raw" null:
  echo "  $where nbdcopy read:    $(inflight "$WORK/proxy-$where-raw.log" Read)"
done
