#!/usr/bin/env bash
# Checks what the packages ship: `make test-packaging` (which first runs `make deb` and `make rpm`).
# Needs root (installs missing tools with tests/install-deps.sh). Prints one ok/FAIL line per check,
# ends with "N passed, M failed", exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BIN=haproxy-systemd-wrapper
VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)
DEB_VERSION=$(dpkg-parsechangelog -S Version)
RPM_ARCH=$(rpm --eval '%{_arch}')
DROPIN_SRC=systemd/$BIN.conf
UNIT_SRC=systemd/haproxy.service

tests/install-deps.sh

TMP=$(mktemp -d /tmp/hsw-packaging.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
passed=0 failed=0

# check NAME COMMAND...: runs COMMAND, output in $TMP/out; ok when it exits 0.
check() {
    local name=$1; shift
    if "$@" >"$TMP/out" 2>&1; then
        echo "ok   $name"; passed=$((passed + 1))
    else
        echo "FAIL $name"; sed 's/^/     | /' "$TMP/out" | tail -n 40; failed=$((failed + 1))
    fi
}
# same EXPECTED_FILE ACTUAL_FILE: diff, shown on failure.
same() { diff -u "$1" "$2"; }
has_line() { grep -qxF -- "$2" "$1" || { echo "missing line in $1: $2"; return 1; }; }
lacks() { ! grep -n -- "$2" "$1"; }
# lintian_clean FILE...: lintian runs (exit status kept) and reports no error or warning.
lintian_clean() {
    command -v lintian >/dev/null || { echo "lintian not installed"; return 1; }
    lintian --fail-on error,warning --tag-display-limit 0 "$@"
}
# man_clean PAGE: renders it as lintian does (man --warnings, groff's -ww) and fails on any warning
# or a non-zero exit status of man or groff.
man_clean() {
    local err=$TMP/man.err rc
    LC_ALL=C.UTF-8 MANROFFSEQ='' MANWIDTH=80 man --warnings -E UTF-8 -l -Tutf8 -Z "$1" >/dev/null 2>"$err"; rc=$?
    [ $rc = 0 ] && [ ! -s "$err" ] || { echo "man -l: exit $rc"; cat "$err"; return 1; }
    groff -ww -man -z "$1" 2>"$err"; rc=$?
    [ $rc = 0 ] && [ ! -s "$err" ] || { echo "groff -ww: exit $rc"; cat "$err"; return 1; }
}

DEBS=(dist/${BIN}_"$DEB_VERSION"_*.deb)
RPMS=(dist/$BIN-"$VERSION"-*."$RPM_ARCH".rpm)
SRPMS=(dist/$BIN-"$VERSION"-*.src.rpm)
DEB=${DEBS[0]} RPM=${RPMS[0]} SRPM=${SRPMS[0]}
DSC=dist/${BIN}_$DEB_VERSION.dsc
DIST_SRC=dist/$BIN-$VERSION.tar.gz
DIST_VENDOR=dist/$BIN-$VERSION-vendor.tar.xz

## ---- versions ----
check "version: debian/changelog is $VERSION (Cargo.toml) plus a Debian revision ($DEB_VERSION)" \
    bash -c "[[ '$DEB_VERSION' =~ ^${VERSION//./\\.}-[0-9]+\$ ]]"
check "version: the spec's Version is $VERSION" grep -qx "Version: *$VERSION" rpm/$BIN.spec

## ---- make dist: release tarballs ----
check "dist: SHA256SUMS lists both tarballs and matches" bash -c \
    "cd dist && [ \"\$(awk '{print \$2}' SHA256SUMS | sort | tr '\n' ' ')\" = '$(basename "$DIST_VENDOR") $(basename "$DIST_SRC") ' ] && sha256sum --quiet -c SHA256SUMS"
# Made again into another directory (seconds later): the same bytes.
mkdir -p "$TMP/dist2"
packaging/dist.sh source "$TMP/dist2/src.tar.gz" >/dev/null 2>&1
check "dist: source tarball is reproducible (made again: same bytes)" cmp "$DIST_SRC" "$TMP/dist2/src.tar.gz"
tar -tvzf "$DIST_SRC" >"$TMP/src.tv"
check "dist: source tarball entries sorted, under $BIN-$VERSION/, owner 0/0, one mtime" bash -c "
    awk '{print \$6}' '$TMP/src.tv' >'$TMP/src.names'; LC_ALL=C sort -c '$TMP/src.names' || exit 1
    grep -v '^$BIN-$VERSION/' '$TMP/src.names' && exit 1
    awk '{print \$2}' '$TMP/src.tv' | sort -u | grep -vx 0/0 && exit 1
    [ \$(awk '{print \$4, \$5}' '$TMP/src.tv' | sort -u | wc -l) = 1 ]"
check "dist: source tarball holds exactly the files git knows (packaging/source-tree.sh) but debian/" bash -c \
    "diff -u <(packaging/source-tree.sh | tar -t | grep -v '^debian/' | LC_ALL=C sort) <(sed 's|^$BIN-$VERSION/||' '$TMP/src.names')"
# The example Ansible role (docs/automation.md) ships in the source tarball, not in the packages.
EXAMPLE_FILES="site.yml inventory.ini roles/haproxy/tasks/main.yml roles/haproxy/handlers/main.yml roles/haproxy/defaults/main.yml roles/haproxy/templates/haproxy.cfg.j2"
check "dist: source tarball ships the example Ansible role examples/ansible/" bash -c \
    "for f in $EXAMPLE_FILES; do grep -qx '$BIN-$VERSION/examples/ansible/'\$f '$TMP/src.names' || { echo \"missing: examples/ansible/\$f\"; exit 1; }; done"
# The crates of Cargo.lock (registry packages: every [[package]] with a source), no more, no less.
awk '/^\[\[package\]\]/{n=""} /^name = /{n=$3} /^source = "registry/{gsub(/"/,"",n); print n}' Cargo.lock | sort >"$TMP/lock.crates"
tar -tJf "$DIST_VENDOR" | sed -n 's|^vendor/\([^/]*\)/Cargo.toml$|\1|p' | sort >"$TMP/vendor.crates"
check "dist: vendor tarball has exactly the $(wc -l <"$TMP/lock.crates") crates Cargo.lock names" same "$TMP/lock.crates" "$TMP/vendor.crates"
check "dist: vendor tarball holds the versions Cargo.lock names" bash -c "
    for c in \$(cat '$TMP/lock.crates'); do
        want=\$(awk -v c=\"\$c\" '/^name = /{n=\$3; gsub(/\"/,\"\",n)} /^version = /{if (n==c) {v=\$3; gsub(/\"/,\"\",v); print v}}' Cargo.lock)
        got=\$(tar -xJOf '$DIST_VENDOR' vendor/\$c/Cargo.toml | sed -n 's/^version = \"\(.*\)\"/\1/p' | head -n1)
        [ \"\$want\" = \"\$got\" ] || { echo \"\$c: lock \$want, vendored \$got\"; exit 1; }
    done"

## ---- make dsc: the Debian source package ----
check "dsc: Format 3.0 (quilt), version $DEB_VERSION" bash -c \
    "grep -qx 'Format: 3.0 (quilt)' '$DSC' && grep -qx 'Version: $DEB_VERSION' '$DSC'"
check "dsc: files are the orig tarball, the orig-vendor component and debian.tar.xz" bash -c \
    "diff -u <(printf '%s\n' ${BIN}_$DEB_VERSION.debian.tar.xz ${BIN}_$VERSION.orig-vendor.tar.xz ${BIN}_$VERSION.orig.tar.gz) \
             <(sed -n '/^Files:/,/^[^ ]/s/^ [0-9a-f]\{32\} [0-9]* //p' '$DSC' | sort)"
check "dsc: the orig tarballs are make dist's, byte for byte" bash -c \
    "cmp '$DIST_SRC' dist/${BIN}_$VERSION.orig.tar.gz && cmp '$DIST_VENDOR' dist/${BIN}_$VERSION.orig-vendor.tar.xz"
rm -rf "$TMP/dsc-x"
check "dsc: dpkg-source -x unpacks the crates into vendor/" bash -c \
    "dpkg-source -x '$DSC' '$TMP/dsc-x' >/dev/null 2>&1 && diff -u '$TMP/vendor.crates' <(ls '$TMP/dsc-x/vendor')"
check "dsc: lintian (source) has no errors or warnings" lintian_clean "$DSC"

## ---- the units ----
# [Service] directives of the drop-in: every one is in the full unit too (same order).
directives() { sed -n '/^\[Service\]/,/^\[/p' "$1" | grep -v -e '^#' -e '^$' -e '^\['; }
directives "$DROPIN_SRC" >"$TMP/dropin.lines"
directives "$UNIT_SRC" >"$TMP/unit.lines"
check "unit: the drop-in's [Service] lines are the full unit's, in order" \
    bash -c "grep -vxFf '$TMP/unit.lines' '$TMP/dropin.lines' && exit 1; \
             grep -xFf '$TMP/dropin.lines' '$TMP/unit.lines' | diff -u '$TMP/dropin.lines' -"
for line in 'Type=notify' 'KillMode=mixed' 'Restart=always' 'SuccessExitStatus=143' 'LimitCORE=infinity' \
    'Environment=WRAPPER_MODE=-Ws' 'Environment=OPTIONS=' 'EnvironmentFile=-/etc/default/haproxy' 'EnvironmentFile=-/etc/sysconfig/haproxy' \
    'ExecStartPre=' 'ExecStart=' 'ExecReload=' \
    'ExecStart=/usr/sbin/haproxy-systemd-wrapper $WRAPPER_MODE -f $CONFIG -p $PIDFILE $EXTRAOPTS $OPTIONS' \
    'ExecStartPre=/usr/sbin/haproxy -Ws -c -f $CONFIG $EXTRAOPTS $OPTIONS' \
    'ExecReload=/bin/kill -USR2 $MAINPID' \
    'ExecReload=/usr/sbin/haproxy-systemd-wrapper --wait-reload $MAINPID' \
    'RuntimeDirectory=haproxy-systemd-wrapper' 'RuntimeDirectoryMode=0700'; do
    check "drop-in: $line" has_line "$DROPIN_SRC" "$line"
done
for line in 'After=network-online.target rsyslog.service' 'Wants=network-online.target' \
    'Environment="CONFIG=/etc/haproxy/haproxy.cfg" "PIDFILE=/run/haproxy.pid" "EXTRAOPTS=-S /run/haproxy-master.sock" "CFGDIR=/etc/haproxy/conf.d"' \
    'BindReadOnlyPaths=/dev/log:/var/lib/haproxy/dev/log' 'WantedBy=multi-user.target'; do
    check "unit: $line" has_line "$UNIT_SRC" "$line"
done
check "unit: a reload is the signal, then --wait-reload (no second parse of the configuration)" \
    bash -c "diff <(grep '^ExecReload=.' '$UNIT_SRC') <(printf '%s\\n' 'ExecReload=/bin/kill -USR2 \$MAINPID' 'ExecReload=/usr/sbin/haproxy-systemd-wrapper --wait-reload \$MAINPID')"
# The checks see the files and options haproxy is started with.
check "unit: config checks use ExecStart's haproxy arguments" bash -c "
    start=\$(sed -n 's/^ExecStart=[^ ]*wrapper \\\$WRAPPER_MODE \(.*\)/\1/p' '$UNIT_SRC' | sed 's/ -p \\\$PIDFILE//')
    for l in \$(grep -n -e '^ExecStartPre=.' -e '^ExecReload=/usr/sbin/haproxy ' '$UNIT_SRC' | cut -d: -f1); do
        sed -n \"\${l}p\" '$UNIT_SRC' | grep -qF -- \"-c \$start\" || { echo \"line \$l: not -c \$start\"; exit 1; }
    done"

# systemd-analyze verify: the full unit as `make install` writes it (binary present), and the drop-in
# on the distribution's own haproxy.service.
make -s install DESTDIR= PREFIX="$TMP/verify" UNITDIR="$TMP/verify/units" >/dev/null 2>&1 \
    || echo "(make install for systemd-analyze failed)"
check "systemd-analyze verify: full unit" \
    env MANPATH="$TMP/verify/share/man:" SYSTEMD_UNIT_PATH="$TMP/verify/units:" \
    systemd-analyze verify "$TMP/verify/units/haproxy.service"
mkdir -p "$TMP/dist-units/haproxy.service.d"
cp /lib/systemd/system/haproxy.service "$TMP/dist-units/"
sed "s|/usr/sbin/$BIN|$TMP/verify/sbin/$BIN|" "$DROPIN_SRC" >"$TMP/dist-units/haproxy.service.d/$BIN.conf"
check "systemd-analyze verify: drop-in on Debian's haproxy.service" \
    env SYSTEMD_UNIT_PATH="$TMP/dist-units:" systemd-analyze verify "$TMP/dist-units/haproxy.service"

## ---- man page ----
check "man page: renders without warnings (man --warnings -l, groff -ww)" man_clean man/$BIN.8
# The check itself sees a warning: the page with an unknown request added must fail it.
{ cat man/$BIN.8; printf '.no-such-request\n'; } >"$TMP/broken.8"
check "man page: (control) a page with an unknown request fails that check" bash -c \
    "$(declare -f man_clean); TMP='$TMP'; ! man_clean '$TMP/broken.8'"
LC_ALL=C.UTF-8 MANWIDTH=80 man -l -Tutf8 man/$BIN.8 2>/dev/null | col -b >"$TMP/man.txt"
# What the rendered page (not its source) says: the options, signals, notify messages, the
# variables, and one paragraph per exit status.
for word in '--haproxy' '--ready-timeout' '--stop-timeout' 'SIGUSR2' 'SIGTTIN' 'RELOADING=1' \
    'MONOTONIC_USEC' 'WATCHDOG=1' 'STOPPING=1' 'WRAPPER_MODE' 'HAPROXY_SYSTEMD_WRAPPER_STATE'; do
    check "man page (rendered): mentions $word" grep -qF -- "$word" "$TMP/man.txt"
done
for code in 64 69 70 126 127; do
    check "man page (rendered): exit status $code has its paragraph" grep -qE "^ +$code +[^ ]" "$TMP/man.txt"
done

## ---- make install / uninstall ----
check "make install does not rebuild a built binary" bash -c \
    "make -s build >/dev/null 2>&1 && ! make -n install DESTDIR=$TMP/dry | grep -w cargo"
for flavour in full dropin; do
    d=$TMP/destdir-$flavour
    make -s install DESTDIR="$d" SYSTEMD_UNIT=$flavour >"$TMP/install.log" 2>&1
    (cd "$d" && find . -type f -printf '%m %p\n' | sort) >"$TMP/installed"
    if [ $flavour = full ]; then unit="644 ./usr/local/lib/systemd/system/haproxy.service"
    else unit="644 ./usr/local/lib/systemd/system/haproxy.service.d/$BIN.conf"; fi
    printf '%s\n' "755 ./usr/local/sbin/$BIN" "644 ./usr/local/share/man/man8/$BIN.8" "$unit" | sort >"$TMP/expected"
    check "make install ($flavour): files and modes under DESTDIR" same "$TMP/expected" "$TMP/installed"
    check "make install ($flavour): ExecStart uses PREFIX's sbin" \
        grep -rqF "ExecStart=/usr/local/sbin/$BIN \$WRAPPER_MODE" "$d/usr/local/lib/systemd/system"
    make -s uninstall DESTDIR="$d" SYSTEMD_UNIT=$flavour >/dev/null 2>&1
    check "make uninstall ($flavour): no file left" bash -c "find '$d' ! -type d | grep . && exit 1; \
        find '$d' -name haproxy.service.d | grep . && exit 1; exit 0"
done
mkdir -p "$TMP/foreign/lib/systemd/system"
echo "[Service]" >"$TMP/foreign/lib/systemd/system/haproxy.service"
make -s uninstall DESTDIR="$TMP/foreign" UNITDIR=/lib/systemd/system >/dev/null 2>&1
check "make uninstall leaves a haproxy.service that is not ours" test -f "$TMP/foreign/lib/systemd/system/haproxy.service"

## ---- the .deb ----
check "deb: exactly one .deb in dist/" test ${#DEBS[@]} -eq 1 -a -f "$DEB"
dpkg-deb -c "$DEB" | awk '{print $1, $2, $6}' | sed 's|\./|/|; s|/$||' | grep -v ' $' | sort -k3 >"$TMP/deb.list"
cat >"$TMP/deb.expected" <<LIST
drwxr-xr-x root/root /lib
drwxr-xr-x root/root /lib/systemd
drwxr-xr-x root/root /lib/systemd/system
drwxr-xr-x root/root /lib/systemd/system/haproxy.service.d
-rw-r--r-- root/root /lib/systemd/system/haproxy.service.d/$BIN.conf
drwxr-xr-x root/root /usr
drwxr-xr-x root/root /usr/sbin
-rwxr-xr-x root/root /usr/sbin/$BIN
drwxr-xr-x root/root /usr/share
drwxr-xr-x root/root /usr/share/doc
drwxr-xr-x root/root /usr/share/doc/$BIN
-rw-r--r-- root/root /usr/share/doc/$BIN/changelog.Debian.gz
-rw-r--r-- root/root /usr/share/doc/$BIN/copyright
drwxr-xr-x root/root /usr/share/lintian
drwxr-xr-x root/root /usr/share/lintian/overrides
-rw-r--r-- root/root /usr/share/lintian/overrides/$BIN
drwxr-xr-x root/root /usr/share/man
drwxr-xr-x root/root /usr/share/man/man8
-rw-r--r-- root/root /usr/share/man/man8/$BIN.8.gz
LIST
sort -k3 -o "$TMP/deb.expected" "$TMP/deb.expected"
check "deb: paths, modes and owners" same "$TMP/deb.expected" "$TMP/deb.list"
check "deb: Depends on haproxy" bash -c "dpkg-deb -f '$DEB' Depends | tr ',' '\n' | grep -qx ' *haproxy'"
rm -rf "$TMP/deb-x" && dpkg-deb -R "$DEB" "$TMP/deb-x"
check "deb: drop-in is systemd/$BIN.conf" same "$DROPIN_SRC" "$TMP/deb-x/lib/systemd/system/haproxy.service.d/$BIN.conf"
check "deb: ships no unit of its own" bash -c "! dpkg-deb -c '$DEB' | grep -E 'system/[^/]+\.service$'"
check "deb: ships no example (examples/ansible is in the source tarball only)" lacks "$TMP/deb.list" 'examples\|ansible\|\.yml$'
check "deb: binary is the wrapper" bash -c "'$TMP/deb-x/usr/sbin/$BIN' --version | grep -q '$VERSION'"
for s in postinst postrm; do
    check "deb: $s is valid sh" sh -n "$TMP/deb-x/DEBIAN/$s"
done
# What postinst and postrm do is run, not read: the end-to-end flows 1, 7, 9 and 10 (install,
# upgrade, purge, install over a running haproxy) under a booted systemd.
check "deb: lintian has no errors or warnings" lintian_clean "$DEB"
# The control: lintian's exit status is what the check reads (a .deb lintian rejects must fail it).
printf 'not a deb\n' >"$TMP/broken.deb"
check "deb: (control) lintian_clean fails on a file lintian cannot read" bash -c "$(declare -f lintian_clean); ! lintian_clean '$TMP/broken.deb'"

## ---- buildd: the .dsc built in a fresh Debian 12 chroot without network ----
# tests/packaging/buildd.sh: mmdebstrap --variant=buildd + apt-get build-dep of the .dsc (cached tarball),
# then dpkg-source -x and dpkg-buildpackage as an unprivileged user in a network namespace with only lo.
t0=$(date +%s)
tests/packaging/buildd.sh "$DSC" "$TMP/buildd" >"$TMP/buildd.out" 2>&1; brc=$?
echo "     (buildd: $(( $(date +%s) - t0 )) s)"
check "buildd: the .dsc builds in a fresh chroot, offline, as nobody (dpkg-buildpackage exit 0)" bash -c \
    "cat '$TMP/buildd.out'; tail -n 40 '$TMP/buildd/build.log' 2>/dev/null; [ $brc = 0 ]"
check "buildd: the build namespace had no interface but lo" grep -qx 'buildd: network namespace with interfaces: lo:' "$TMP/buildd/build.log"
check "buildd: dh_auto_test ran the test suite (no failures)" bash -c \
    "[ \$(grep -c '^test result: ok\.' '$TMP/buildd/build.log') -ge 2 ] && ! grep -q '^test result: FAILED' '$TMP/buildd/build.log'"
if cmp -s "$DEB" "$TMP/buildd/$(basename "$DEB")"; then
    check "buildd: reproducible: the chroot's .deb is make deb's, byte for byte" true
else
    check "buildd: reproducible: the chroot's .deb is make deb's, byte for byte" bash -c \
        "ls '$TMP/buildd'; debdiff '$DEB' '$TMP/buildd/$(basename "$DEB")'; cmp '$DEB' '$TMP/buildd/$(basename "$DEB")'; false"
fi

## ---- the .rpm ----
check "rpm: exactly one .rpm and one .src.rpm in dist/" test ${#RPMS[@]} -eq 1 -a -f "$RPM" -a ${#SRPMS[@]} -eq 1 -a -f "$SRPM"
check "srpm: holds the spec, Source0 and Source1 (make dist's tarballs)" bash -c \
    "diff -u <(printf '%s\n' $BIN-$VERSION-vendor.tar.xz $BIN-$VERSION.tar.gz $BIN.spec) <(rpm -qpl '$SRPM' 2>/dev/null | sort) &&
     mkdir -p '$TMP/srpm-x' && cd '$TMP/srpm-x' && rpm2cpio '$ROOT/$SRPM' | cpio -id --quiet &&
     cmp $BIN-$VERSION.tar.gz '$ROOT/$DIST_SRC' && cmp $BIN-$VERSION-vendor.tar.xz '$ROOT/$DIST_VENDOR'"
# rpmbuild --rebuild of the .src.rpm in a fresh _topdir, HOME and CARGO_HOME (empty: no crate cache),
# with Debian's own cargo/rustc (PATH without rustup), in a network namespace with only lo.
mkdir -p "$TMP/rpm-offline/home"
t0=$(date +%s)
unshare --net -- sh -c 'ip link set lo up && exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$1/home" LANG=C.UTF-8 \
    rpmbuild --rebuild $2 --define "_topdir $1/top" "$3"' sh "$TMP/rpm-offline" "$(make -s -C "$ROOT" --no-print-directory print-rpmbuild-flags)" "$ROOT/$SRPM" \
    >"$TMP/rpm-offline.log" 2>&1; rrc=$?
echo "     (rpmbuild --rebuild offline: $(( $(date +%s) - t0 )) s)"
check "srpm: rpmbuild --rebuild without network and with an empty CARGO_HOME (exit 0)" bash -c "tail -n 30 '$TMP/rpm-offline.log'; [ $rrc = 0 ]"
check "srpm: %check ran the test suite (no failures)" bash -c \
    "[ \$(grep -c '^test result: ok\.' '$TMP/rpm-offline.log') -ge 2 ] && ! grep -q '^test result: FAILED' '$TMP/rpm-offline.log'"
check "srpm: the offline rebuild ships the same files as dist/'s .rpm" bash -c \
    "diff -u <(rpm -qpl '$RPM' 2>/dev/null | grep -v '^/usr/lib/.build-id/') <(rpm -qpl '$TMP'/rpm-offline/top/RPMS/*/$BIN-$VERSION-*.rpm 2>/dev/null | grep -v '^/usr/lib/.build-id/')"
DEBUGINFO=$(ls target/packaging/rpm/RPMS/*/$BIN-debuginfo-"$VERSION"-*.rpm 2>/dev/null | head -n1)
check "rpm: a -debuginfo package with the wrapper's debug information" bash -c \
    "[ -n '$DEBUGINFO' ] && rpm -qpl '$DEBUGINFO' 2>/dev/null | grep -q '^/usr/lib/debug/usr/sbin/$BIN-.*\.debug\$'"
rpm -qp --qf '[%{FILEMODES:perms} %{FILEUSERNAME}/%{FILEGROUPNAME} %{FILENAMES}\n]' "$RPM" 2>/dev/null |
    grep -v -e ' /usr/lib/.build-id' | sort -k3 >"$TMP/rpm.list"
cat >"$TMP/rpm.expected" <<LIST
drwxr-xr-x root/root /usr/lib/systemd/system/haproxy.service.d
-rw-r--r-- root/root /usr/lib/systemd/system/haproxy.service.d/$BIN.conf
-rwxr-xr-x root/root /usr/sbin/$BIN
drwxr-xr-x root/root /usr/share/licenses/$BIN-$VERSION
-rw-r--r-- root/root /usr/share/licenses/$BIN-$VERSION/LICENSE
-rw-r--r-- root/root /usr/share/man/man8/$BIN.8
LIST
sort -k3 -o "$TMP/rpm.expected" "$TMP/rpm.expected"
# Fedora compresses man pages (.gz); Debian's rpmbuild does not.
sed -i 's|\(man8/.*\.8\)\.gz$|\1|' "$TMP/rpm.list"
check "rpm: paths, modes and owners" same "$TMP/rpm.expected" "$TMP/rpm.list"
check "rpm: ships no example (examples/ansible is in the source tarball only)" lacks "$TMP/rpm.list" 'examples\|ansible\|\.yml$'
# Same files as the .deb, modulo /lib vs /usr/lib, compressed man pages and the doc/licence files.
norm() { awk '$1 !~ /^d/ {print $3}' "$1" | sed -e 's|^/lib/|/usr/lib/|' -e 's|\.gz$||' | grep -v -e '^/usr/share/doc/' -e '^/usr/share/licenses/' -e '^/usr/share/lintian/' | sort; }
check "rpm: same files as the .deb" bash -c "diff -u <($(declare -f norm); norm '$TMP/deb.list') <($(declare -f norm); norm '$TMP/rpm.list')"
check "rpm: Requires haproxy" bash -c "rpm -qp --requires '$RPM' 2>/dev/null | grep -qx 'haproxy'"
rm -rf "$TMP/rpm-x" && mkdir -p "$TMP/rpm-x" && (cd "$TMP/rpm-x" && rpm2cpio "$ROOT/$RPM" | cpio -id --quiet)
sed -e 's|-f \$CONFIG |-f $CONFIG -f $CFGDIR |' -e 's|^Environment=OPTIONS=$|Environment=OPTIONS= EXTRAOPTS=|' "$DROPIN_SRC" >"$TMP/dropin-fedora"
check "rpm: drop-in is systemd/$BIN.conf plus -f \$CFGDIR and an empty EXTRAOPTS" \
    same "$TMP/dropin-fedora" "$TMP/rpm-x/usr/lib/systemd/system/haproxy.service.d/$BIN.conf"
# Every command line that names the configuration (the start's check, the wrapper's) names $CFGDIR too.
check "rpm: drop-in loads \$CFGDIR in every haproxy command" bash -c \
    "n=\$(grep -c -- '-f \$CONFIG ' '$TMP/dropin-fedora'); [ \$n -ge 2 ] && [ \$(grep -c -- '-f \$CONFIG -f \$CFGDIR ' '$TMP/dropin-fedora') -eq \$n ]"
# What %post and %postun do is run, not read: the end-to-end flow 13 runs them (from rpm -qp)
# against a real haproxy.service. Here: both exist and are valid sh.
rpm -qp --scripts "$RPM" >"$TMP/rpm.scripts" 2>/dev/null
for s in POSTIN:post POSTUN:postun; do
    rpm -qp --qf "%{${s%:*}}" "$RPM" >"$TMP/rpm.${s#*:}" 2>/dev/null
    check "rpm: %${s#*:} is there and is valid sh" bash -c "[ -s '$TMP/rpm.${s#*:}' ] && sh -n '$TMP/rpm.${s#*:}'"
done
check "rpm: no preset/disable of haproxy.service (not our unit)" lacks "$TMP/rpm.scripts" 'preset\|disable'
# Fedora's settings (rpm/rpmlint-fedora.toml) and the package's own filters; rpmlint's exit status
# counts. Warnings left must be the two artefacts of Debian's rpm (no brp-compress of man pages).
rpmlint -c rpm/rpmlint-fedora.toml -r rpm/$BIN.rpmlintrc "$RPM" "$SRPM" ${DEBUGINFO:+"$DEBUGINFO"} rpm/$BIN.spec \
    >"$TMP/rpmlint.out" 2>&1; lrc=$?
check "rpm: rpmlint exits 0 with 0 errors" bash -c "cat '$TMP/rpmlint.out'; [ $lrc = 0 ] && grep -q ' 0 errors, ' '$TMP/rpmlint.out'"
check "rpm: rpmlint warnings only the man page compression Debian's rpmbuild skips" bash -c \
    "grep ': W: ' '$TMP/rpmlint.out' | grep -v -e ': W: manpage-not-compressed gz /usr/share/man/man8/$BIN.8\$' \
        -e ': W: no-manual-page-for-binary $BIN\$' && exit 1; exit 0"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
