#!/bin/sh
# Install every notafs tool under its conventional name, with manual pages
# and bash/zsh/fish completions generated from the tools' own clap
# definitions (the same text as --help).
#
#   ./install.sh                      build (cargo, release) and install into /usr/local
#   ./install.sh --prefix ~/.local    another prefix (or PREFIX=... ./install.sh)
#   DESTDIR=/tmp/pkg ./install.sh     staged install (packaging)
#   ./install.sh --no-build           install what target/release already holds
#   ./install.sh --strip              strip the binaries (about 30 MB -> 3.5 MB each:
#                                     the release profile keeps line-table debug info)
#   ./install.sh --uninstall          remove what an install put there
#
# Installs:
#   PREFIX/sbin/mkfs.notafs   (built as mkfs-notafs)  so `mkfs -t notafs` finds it
#   PREFIX/sbin/fsck.notafs   (built as fsck-notafs)  so fsck(8) finds it,
#   PREFIX/sbin/fsck.fuse.notafs -> fsck.notafs     for fstab type fuse.notafs
#   PREFIX/bin/notafs, PREFIX/bin/notafs-fuse
#   PREFIX/sbin/mount.fuse.notafs (the mount helper, when it is built)
#   PREFIX/share/man/man{1,8}/..., PREFIX/share/bash-completion/completions/...,
#   PREFIX/share/zsh/site-functions/..., PREFIX/share/fish/vendor_completions.d/...
set -eu

prefix=${PREFIX:-/usr/local}
destdir=${DESTDIR:-}
build=1
uninstall=0
strip=
while [ $# -gt 0 ]; do
    case $1 in
        --prefix) [ $# -ge 2 ] || { echo "install.sh: --prefix needs a directory" >&2; exit 16; }
                  prefix=$2; shift 2 ;;
        --prefix=*) prefix=${1#--prefix=}; shift ;;
        --no-build) build=0; shift ;;
        --strip) strip=-s; shift ;;
        --uninstall) uninstall=1; build=0; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 16 ;;
    esac
done
case $prefix in
    /*) ;;
    *) prefix=$(pwd)/$prefix ;;
esac

here=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
target=${CARGO_TARGET_DIR:-$here/target}/release
root=$destdir$prefix

# built name : installed path (relative to PREFIX) : required?
tools="mkfs-notafs:sbin/mkfs.notafs:1
fsck-notafs:sbin/fsck.notafs:1
notafs:bin/notafs:1
notafs-fuse:bin/notafs-fuse:1
mount-fuse-notafs:sbin/mount.fuse.notafs:0
mount.fuse.notafs:sbin/mount.fuse.notafs:0"

if [ "$uninstall" = 1 ]; then
    echo "$tools" | while IFS=: read -r built dest required; do
        name=$(basename "$dest")
        rm -f "$root/$dest" \
              "$root/share/bash-completion/completions/$name" \
              "$root/share/zsh/site-functions/_$name" \
              "$root/share/fish/vendor_completions.d/$name.fish"
        for s in 1 8; do
            rm -f "$root/share/man/man$s/$name.$s" "$root/share/man/man$s/$name"-*."$s"
        done
    done
    rm -f "$root/sbin/fsck.fuse.notafs"
    echo "removed the notafs tools from $root"
    exit 0
fi

if [ "$build" = 1 ]; then
    (cd "$here" && cargo build --release -p mkfs -p fsck -p notafs-cli -p notafs-fuse)
fi

gen=$(mktemp -d "${TMPDIR:-/tmp}/notafs-install.XXXXXX")
trap 'rm -rf "$gen"' EXIT INT TERM

installed=""
echo "$tools" | {
    while IFS=: read -r built dest required; do
        src=$target/$built
        if [ ! -x "$src" ]; then
            if [ "$required" = 1 ]; then
                echo "install.sh: $src is missing (build with cargo build --release, or drop --no-build)" >&2
                exit 8
            fi
            continue
        fi
        install -d "$root/$(dirname "$dest")"
        install -m 755 $strip "$src" "$root/$dest"
        echo "installed $root/$dest"
        name=$(basename "$dest")
        # Manual pages and completions, from the tool itself.
        out=$gen/$name
        if NOTAFS_GENERATE_DOCS=$out "$root/$dest" >/dev/null 2>"$gen/$name.err" </dev/null \
            && [ -d "$out/man" ]; then
            for d in "$out"/man/man*; do
                install -d "$root/share/man/$(basename "$d")"
                install -m 644 "$d"/* "$root/share/man/$(basename "$d")/"
            done
            install -d "$root/share/bash-completion/completions" \
                       "$root/share/zsh/site-functions" \
                       "$root/share/fish/vendor_completions.d"
            install -m 644 "$out/completions/bash/"* "$root/share/bash-completion/completions/"
            install -m 644 "$out/completions/zsh/"* "$root/share/zsh/site-functions/"
            install -m 644 "$out/completions/fish/"* "$root/share/fish/vendor_completions.d/"
        else
            echo "install.sh: $name did not generate its manual page and completions (skipped)" >&2
        fi
    done
}
# fsck(8) runs fsck.TYPE with the type of the fstab entry: fuse.notafs for
# a filesystem mounted through the FUSE helper.
ln -sf fsck.notafs "$root/sbin/fsck.fuse.notafs"
echo "installed $root/sbin/fsck.fuse.notafs -> fsck.notafs"
echo "manual pages in $root/share/man, completions in $root/share/{bash-completion,zsh,fish}"
case ":$PATH:" in
    *":$prefix/sbin:"*) ;;
    *) [ -z "$destdir" ] && echo "note: $prefix/sbin is not on PATH (mkfs.notafs, fsck.notafs are there)" ;;
esac
exit 0
