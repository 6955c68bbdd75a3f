#!/usr/bin/env bash
# Installs what the Ceph tier (tests/tests/ceph.rs) and tests/ceph/bench-nbd.sh
# need: a one-node Ceph cluster from Debian's packages and a qemu-nbd that has
# the rbd block driver.
#
# The rbd driver lives in qemu-block-extra, which must match qemu-utils exactly.
# When the installed qemu-utils is another version (a backport), installing
# qemu-block-extra would downgrade it, so instead this downloads the
# distribution's qemu-utils and qemu-block-extra of one same version and
# unpacks both (dpkg -x) into a cache directory, leaving the installed qemu
# alone. ceph-cluster.sh runs that qemu-nbd with QEMU_MODULE_DIR set.
#
# Usage: tests/ceph/install-deps.sh      (root; apt reachable)
# Cache: $NOTAFS_QEMU_RBD_DIR, default ${XDG_CACHE_HOME:-$HOME/.cache}/notafs/qemu-rbd
# Exit status 0 when everything is there, 1 with a reason on stderr otherwise.
set -euo pipefail

die() { echo "install-deps.sh: $*" >&2; exit 1; }

cache="${NOTAFS_QEMU_RBD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/notafs/qemu-rbd}"
export DEBIAN_FRONTEND=noninteractive

[ "$(id -u)" = 0 ] || die "must run as root (apt-get install)"
command -v apt-get >/dev/null || die "apt-get not found: not a Debian-like system"

pkgs=(ceph-mon ceph-mgr ceph-osd ceph-common libnbd-bin fuse3)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
updated=0
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq || die "apt-get update failed"
  updated=1
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
fi

if [ -x "$cache/usr/bin/qemu-nbd" ] && [ -e "$cache/usr/lib/x86_64-linux-gnu/qemu/block-rbd.so" ] \
   && [ -e "$cache/VERSION" ]; then
  echo "install-deps.sh: ceph $(ceph --version | awk '{print $3}'), qemu-nbd with rbd $(cat "$cache/VERSION") in $cache"
  exit 0
fi

# The newest version that both qemu-utils and qemu-block-extra have in the
# repositories (qemu-block-extra's candidate, if qemu-utils lists it too).
ver_of() { apt-cache madison "$1" | awk -F'|' '{gsub(/ /,"",$2); print $2}'; }
if [ -z "$(ver_of qemu-block-extra)" ] && [ $updated = 0 ]; then
  apt-get update -qq || die "apt-get update failed"
fi
ver=""
for v in $(ver_of qemu-block-extra); do
  if ver_of qemu-utils | grep -qxF "$v"; then ver="$v"; break; fi
done
[ -n "$ver" ] || die "no version of qemu-block-extra with a matching qemu-utils in the apt sources"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"   # apt-get download runs as _apt
( cd "$tmp" && apt-get download -qq "qemu-utils=$ver" "qemu-block-extra=$ver" >/dev/null ) \
  || die "apt-get download qemu-utils=$ver qemu-block-extra=$ver failed"
rm -rf "$cache.new"
mkdir -p "$cache.new"
for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$cache.new"; done
[ -e "$cache.new/usr/lib/x86_64-linux-gnu/qemu/block-rbd.so" ] || die "block-rbd.so not in qemu-block-extra $ver"
echo "$ver" > "$cache.new/VERSION"
# The unpacked qemu-nbd needs the libraries the rbd driver links (librbd from
# ceph-common); check that it starts and knows the driver.
QEMU_MODULE_DIR="$cache.new/usr/lib/x86_64-linux-gnu/qemu" "$cache.new/usr/bin/qemu-nbd" --version >/dev/null \
  || die "the unpacked qemu-nbd $ver does not run here (missing libraries?)"
rm -rf "$cache"
mv "$cache.new" "$cache"
echo "install-deps.sh: ceph $(ceph --version | awk '{print $3}'), qemu-nbd with rbd $ver in $cache"
