#!/usr/bin/env bash
# Builds (or reuses) the cached Debian root a guest boots from, and prints its path.
#
#   tests/e2e/build-root.sh SUITE        SUITE: bookworm | trixie | sid
#
# The cache key is a hash of this file plus the suite, so editing the recipe below rebuilds the root;
# roots of an older recipe for the same suite are removed. Needs root, mmdebstrap and the network
# (deb.debian.org) only when the root is (re)built; booting it later needs neither.
set -euo pipefail

if [ "${1:-}" = --customize ]; then suite=$2; root=$3; fi
suite=${suite:-${1:?usage: build-root.sh SUITE}}
cache=${E2E_CACHE:-/var/cache/haproxy-systemd-wrapper-e2e}
mirror=${E2E_MIRROR:-http://deb.debian.org/debian}

# ---- the recipe (everything below that changes the root must stay inside this file) ----
# What the flows need inside the guest, so nothing is downloaded at test time:
#   systemd (PID 1, journald, systemctl), haproxy (the distribution's unit the .deb drops into),
#   python3 (load generator), curl (probes), procps (pgrep/ps), apt/dpkg (install, upgrade, purge),
#   mount (systemd's .mount units run /usr/bin/mount; sid no longer pulls it in: dev-hugepages.mount
#   failed at boot without it).
#   autopkgtest and dpkg-dev (dpkg-source): the source package's tests with the null runner.
#   ansible-core: the fleet-automation flow runs a playbook against the guest itself (connection: local).
packages=systemd,systemd-sysv,dbus,haproxy,curl,python3,procps,iproute2,mount,autopkgtest,dpkg-dev,ansible-core
# sid's Release file carries a Valid-Until a week after its Date; a mirror snapshot older than that
# reads as expired here. Accept that date only (signatures are still checked: never unauthenticated).
apt_opts=()
[ "$suite" = sid ] && apt_opts=(--aptopt='Acquire::Check-Valid-Until "false"')
customize() {
    local root=$1
    # A clean start for flow 1: the distribution's haproxy is installed but neither enabled nor running.
    chroot "$root" systemctl disable haproxy.service
    # No timers that take the dpkg lock or try the network while the flows run.
    chroot "$root" systemctl mask apt-daily.timer apt-daily-upgrade.timer \
        dpkg-db-backup.timer e2scrub_all.timer fstrim.timer 2>/dev/null || true
    echo e2e-"$suite" > "$root/etc/hostname"
    # The flows run apt-get without a network: never wait for a lock or a mirror.
    printf 'Acquire::Retries "0";\nDPkg::Lock::Timeout "60";\n' > "$root/etc/apt/apt.conf.d/90e2e"
    [ "$suite" != sid ] || printf 'Acquire::Check-Valid-Until "false";\n' >> "$root/etc/apt/apt.conf.d/90e2e"
}
# ---- end of recipe ----
if [ -n "${root:-}" ]; then customize "$root"; exit; fi   # mmdebstrap's customize hook calls us back

case $suite in
    bookworm|trixie|sid) ;;
    *) echo "build-root: unknown suite '$suite' (bookworm, trixie, sid)" >&2; exit 64 ;;
esac
[ "$(id -u)" = 0 ] || { echo "build-root: must run as root" >&2; exit 1; }

key=$( { cat "$0"; echo "$suite $mirror"; } | sha256sum | cut -c1-16)
dir=$cache/$suite-$key
mkdir -p "$cache"
exec 9>"$cache/.lock-$suite"
flock -w 900 9 || { echo "build-root: timed out waiting for $cache/.lock-$suite" >&2; exit 1; }

if [ ! -e "$dir/ok" ]; then
    for old in "$cache/$suite"-*; do
        [ -e "$old" ] && [ "$old" != "$dir" ] && { echo "build-root: removing stale $old" >&2; rm -rf --one-file-system "$old"; }
    done
    rm -rf --one-file-system "$dir"
    mkdir -p "$dir"
    echo "build-root: building $suite root in $dir/root (recipe $key)" >&2
    start=$(date +%s)
    mmdebstrap --mode=root --variant=apt --include="$packages" "${apt_opts[@]}" \
        --skip=cleanup/apt/lists \
        --customize-hook="$(realpath "$0") --customize $suite \"\$1\"" \
        "$suite" "$dir/root" "$mirror" >&2
    echo "build-root: $suite root built in $(( $(date +%s) - start )) s" >&2
    touch "$dir/ok"
fi
echo "$dir/root"
