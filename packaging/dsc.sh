#!/bin/sh
# The Debian source package (`make dsc`), format 3.0 (quilt), from the tarballs of `make dist`:
#   haproxy-systemd-wrapper_UPSTREAM.orig.tar.gz          = dist/haproxy-systemd-wrapper-UPSTREAM.tar.gz
#   haproxy-systemd-wrapper_UPSTREAM.orig-vendor.tar.xz   = dist/haproxy-systemd-wrapper-UPSTREAM-vendor.tar.xz
#                                                           (dpkg-source unpacks it into vendor/)
#   haproxy-systemd-wrapper_DEBVERSION.debian.tar.xz      debian/ as in the tree
#   haproxy-systemd-wrapper_DEBVERSION.dsc
# written to dist/. Works in target/packaging/dsc. See docs/packaging.md.
set -eu
cd "$(dirname "$0")/.."
BIN=haproxy-systemd-wrapper
UPSTREAM=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)
DEBVERSION=$(dpkg-parsechangelog -S Version)
case $DEBVERSION in
"$UPSTREAM"-*) ;;
*) echo "dsc: debian/changelog's version $DEBVERSION is not $UPSTREAM-REVISION (Cargo.toml)" >&2; exit 1 ;;
esac
src=dist/$BIN-$UPSTREAM.tar.gz
vendor=dist/$BIN-$UPSTREAM-vendor.tar.xz
for f in "$src" "$vendor"; do
    [ -f "$f" ] || { echo "dsc: $f missing: run make dist" >&2; exit 1; }
done
(cd dist && sha256sum --quiet -c SHA256SUMS) || { echo "dsc: dist/SHA256SUMS does not match" >&2; exit 1; }

work=target/packaging/dsc
rm -rf "$work"
mkdir -p "$work/$BIN-$UPSTREAM/vendor"
cp "$src" "$work/${BIN}_$UPSTREAM.orig.tar.gz"
cp "$vendor" "$work/${BIN}_$UPSTREAM.orig-vendor.tar.xz"
tar -xzf "$src" -C "$work/$BIN-$UPSTREAM" --strip-components=1
tar -xJf "$vendor" -C "$work/$BIN-$UPSTREAM/vendor" --strip-components=1
# debian/ from the tree (the upstream tarball has none).
packaging/source-tree.sh | tar -x -C "$work/$BIN-$UPSTREAM" --wildcards 'debian/*'
(cd "$work" && dpkg-source --build "$BIN-$UPSTREAM" >dpkg-source.log) ||
    { cat "$work/dpkg-source.log" >&2; exit 1; }
rm -f dist/"$BIN"_*.dsc dist/"$BIN"_*.debian.tar.* dist/"$BIN"_*.orig*.tar.*
for f in "$work/${BIN}_$DEBVERSION.dsc" "$work/${BIN}_$DEBVERSION.debian.tar.xz" \
         "$work/${BIN}_$UPSTREAM.orig.tar.gz" "$work/${BIN}_$UPSTREAM.orig-vendor.tar.xz"; do
    cp "$f" dist/
done
echo "dist/${BIN}_$DEBVERSION.dsc"
