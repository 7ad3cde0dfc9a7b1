#!/usr/bin/env bash
# Builds a Debian source package the way a buildd does: in a fresh minimal Debian 12 chroot that holds
# build-essential and exactly the Build-Depends of the .dsc (installed by `apt-get build-dep` on the
# .dsc), as an unprivileged user, without network (a network namespace of its own with only lo).
#
#   tests/packaging/buildd.sh DSC OUTDIR
#
# The chroot tarball is cached under $BUILDD_CACHE (default /var/cache/haproxy-systemd-wrapper-buildd),
# keyed by the suite, the mirrors, the Build-Depends fields and this file: building it is the only
# step that downloads. Each build unpacks it afresh into a temporary directory. The build's .deb
# files and .buildinfo land in OUTDIR; its log is OUTDIR/build.log. Exit status: dpkg-buildpackage's
# (2 on a setup error). Needs root, mmdebstrap, unshare, ip.
set -euo pipefail
dsc=$(realpath "${1:?usage: buildd.sh DSC OUTDIR}")
out=$(mkdir -p "${2:?usage: buildd.sh DSC OUTDIR}" && realpath "$2")
suite=bookworm
mirror=${BUILDD_MIRROR:-http://deb.debian.org/debian}
security=${BUILDD_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
cache=${BUILDD_CACHE:-/var/cache/haproxy-systemd-wrapper-buildd}
die() { echo "buildd: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "must run as root"
for t in mmdebstrap unshare ip dpkg-source; do command -v $t >/dev/null || die "$t not found"; done

# The same suites as a Debian 12 host with its updates (the host's make deb builds with those).
sources=("deb $mirror $suite main" "deb $mirror $suite-updates main" "deb $security $suite-security main")
bd=$(grep -E '^Build-(Depends|Depends-Arch|Depends-Indep|Conflicts):' "$dsc" || true)
key=$( { cat "$0"; printf '%s\n' "$suite" "${sources[@]}" "$bd"; } | sha256sum | cut -c1-16)
tarball=$cache/$suite-$key.tar
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock -w 900 9 || die "timed out waiting for $cache/.lock"
if [ ! -f "$tarball" ]; then
    for old in "$cache/$suite"-*.tar; do [ -e "$old" ] && rm -f "$old"; done
    echo "buildd: building the $suite chroot with the Build-Depends of $(basename "$dsc") ($tarball)" >&2
    t0=$(date +%s)
    mmdebstrap --variant=buildd --mode=root --format=tar \
        --customize-hook="copy-in $dsc /tmp" \
        --chrooted-customize-hook="DEBIAN_FRONTEND=noninteractive apt-get build-dep -y -q --no-install-recommends /tmp/$(basename "$dsc") >/dev/null" \
        --customize-hook="rm -f \"\$1/tmp/$(basename "$dsc")\"" \
        "$suite" "$tarball.tmp" "${sources[@]}" >&2 || { rm -f "$tarball.tmp"; die "mmdebstrap failed"; }
    mv "$tarball.tmp" "$tarball"
    echo "buildd: chroot built in $(( $(date +%s) - t0 )) s" >&2
fi
flock -u 9

work=$(mktemp -d /tmp/hsw-buildd.XXXXXX)
trap 'rm -rf --one-file-system "$work"' EXIT
root=$work/root
mkdir "$root"
tar -x -C "$root" -f "$tarball"
mkdir "$root/build"
# dcmd's list: the .dsc and the files its Files: field names.
cp "$dsc" "$root/build/"
for f in $(sed -n '/^Files:/,/^[^ ]/s/^ [0-9a-f]\{32\} [0-9]* //p' "$dsc"); do cp "$(dirname "$dsc")/$f" "$root/build/"; done
chown -R 65534:65534 "$root/build"
name=$(sed -n 's/^Source: //p' "$dsc"); upstream=$(sed -n 's/^Version: \(.*\)-[^-]*$/\1/p' "$dsc")

# PID 1 of new PID, mount and network namespaces: only lo (brought up: the tests use 127.0.0.1),
# /proc of the namespace, /dev from the host; everything is gone when it exits.
set +e
unshare --net --mount --pid --fork --kill-child -- /bin/sh -ec '
    root=$1 src=$2 dsc=$3
    ip link set lo up
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    # Nothing can be downloaded: lo is the only interface, so there is no route out.
    links=$(ip -o link show | cut -d" " -f2 | tr -d "\n")
    [ "$links" = "lo:" ] || { echo "buildd: the build namespace has interfaces: $links" >&2; exit 2; }
    echo "buildd: network namespace with interfaces: $links"
    exec chroot --userspec=65534:65534 "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/nonexistent LANG=C.UTF-8 /bin/sh -ec "cd /build && dpkg-source -x $dsc $src && cd $src && dpkg-buildpackage -us -uc -b"
' buildd "$root" "$name-$upstream" "$(basename "$dsc")" >"$out/build.log" 2>&1
rc=$?
set -e
cp "$root"/build/*.deb "$root"/build/*.buildinfo "$out/" 2>/dev/null || true
exit $rc
