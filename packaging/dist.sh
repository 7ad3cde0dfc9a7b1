#!/bin/sh
# The release tarballs (`make dist`), reproducible: sorted entries, owner 0, one fixed mtime
# (SOURCE_DATE_EPOCH, else the last commit's date (for the vendor tarball: the last commit that
# changed Cargo.lock), else debian/changelog's), modes without group or other write, gzip -n / xz -T1.
#
#   packaging/dist.sh source OUT.tar.gz    the source tree (packaging/source-tree.sh) but debian/,
#                                          entries under haproxy-systemd-wrapper-VERSION/
#   packaging/dist.sh vendor OUT.tar.xz    `cargo vendor --locked` of Cargo.lock: exactly the crates
#                                          the lock names, laid out as cargo vendor does, under vendor/
#                                          (the only step that downloads; CARGO picks the cargo)
#   packaging/dist.sh sums DIR FILE...     DIR/SHA256SUMS for the FILEs (names relative to DIR)
set -eu
cd "$(dirname "$0")/.."
BIN=haproxy-systemd-wrapper
VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)

# epoch [PATH]: the fixed mtime; with PATH, the date of the last commit that changed PATH (the
# vendor tarball depends on Cargo.lock alone, so it does not change with every commit).
epoch() {
    if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then echo "$SOURCE_DATE_EPOCH"
    elif t=$(git log -1 --format=%ct -- ${1:+"$1"} 2>/dev/null) && [ -n "$t" ]; then echo "$t"
    else date -d "$(sed -n 's/^ -- .*>  //p' debian/changelog | head -n1)" +%s
    fi
}
# reprotar DIR PREFIX [PATH]: a tar archive on stdout of the paths read (NUL-separated) on stdin,
# relative to DIR, in the given order, each entry under PREFIX, mtime epoch [PATH].
reprotar() {
    tar -c -C "$1" --null --no-recursion -T - --format=gnu --mtime="@$(epoch ${3:-})" \
        --owner=0 --group=0 --numeric-owner --mode='go-w,a+rX' --transform "s|^\./||;s|^|$2|"
}

case ${1:-} in
source)
    out=${2:?output file}
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    # Without debian/: Debian's packaging goes into the .debian.tar.xz of `make dsc`, so the
    # upstream tarball (the .orig.tar.gz) stays the same when only the packaging changes.
    packaging/source-tree.sh | tar -x -C "$tmp" --exclude='debian' --exclude='debian/*'
    (cd "$tmp" && find . ! -type d -print0 | LC_ALL=C sort -z) |
        reprotar "$tmp" "$BIN-$VERSION/" | gzip -9 -n > "$out.tmp"
    mv "$out.tmp" "$out"
    ;;
vendor)
    out=${2:?output file}
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    # --locked: Cargo.lock is the only source of versions (cargo fails rather than change it).
    ${CARGO:-cargo} vendor -q --locked --manifest-path "$PWD/Cargo.toml" "$tmp/vendor" >/dev/null
    (cd "$tmp" && find vendor -print0 | LC_ALL=C sort -z) |
        reprotar "$tmp" "" Cargo.lock | xz -9 -T1 -c > "$out.tmp"
    mv "$out.tmp" "$out"
    ;;
sums)
    dir=${2:?directory}; shift 2
    (cd "$dir" && sha256sum -- "$@") > "$dir/SHA256SUMS.tmp"
    mv "$dir/SHA256SUMS.tmp" "$dir/SHA256SUMS"
    ;;
*)
    echo "usage: $0 source OUT | vendor OUT | sums DIR FILE..." >&2; exit 64 ;;
esac
