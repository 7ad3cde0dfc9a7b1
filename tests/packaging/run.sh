#!/usr/bin/env bash
# Checks what the packages ship: `make test-packaging` (which first runs `make deb` and `make rpm`).
# Needs root (installs missing tools with tests/install-deps.sh). Prints one ok/FAIL line per check,
# ends with "N passed, M failed", exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BIN=haproxy-systemd-wrapper
VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)
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

DEBS=(dist/${BIN}_"$VERSION"_*.deb)
RPMS=(dist/$BIN-"$VERSION"-*.rpm)
DEB=${DEBS[0]} RPM=${RPMS[0]}

## ---- versions ----
check "version: Cargo.toml, debian/changelog and the spec agree ($VERSION)" bash -c \
    "[ \"\$(dpkg-parsechangelog -S Version)\" = '$VERSION' ] && grep -qx 'Version: *$VERSION' rpm/$BIN.spec"

## ---- the units ----
# [Service] directives of the drop-in: every one is in the full unit too (same order).
directives() { sed -n '/^\[Service\]/,/^\[/p' "$1" | grep -v -e '^#' -e '^$' -e '^\['; }
directives "$DROPIN_SRC" >"$TMP/dropin.lines"
directives "$UNIT_SRC" >"$TMP/unit.lines"
check "unit: the drop-in's [Service] lines are the full unit's, in order" \
    bash -c "grep -vxFf '$TMP/unit.lines' '$TMP/dropin.lines' && exit 1; \
             grep -xFf '$TMP/dropin.lines' '$TMP/unit.lines' | diff -u '$TMP/dropin.lines' -"
for line in 'Type=notify' 'KillMode=mixed' 'Restart=always' 'SuccessExitStatus=143' 'LimitCORE=infinity' \
    'Environment=WRAPPER_MODE=-Ws' 'EnvironmentFile=-/etc/default/haproxy' 'EnvironmentFile=-/etc/sysconfig/haproxy' \
    'ExecStartPre=' 'ExecStart=' 'ExecReload=' \
    'ExecStart=/usr/sbin/haproxy-systemd-wrapper $WRAPPER_MODE -f $CONFIG -p $PIDFILE $EXTRAOPTS $OPTIONS' \
    'ExecStartPre=/usr/sbin/haproxy -Ws -c -f $CONFIG $EXTRAOPTS $OPTIONS' \
    'ExecReload=/usr/sbin/haproxy -Ws -c -f $CONFIG $EXTRAOPTS $OPTIONS' \
    'ExecReload=/bin/kill -USR2 $MAINPID'; do
    check "drop-in: $line" has_line "$DROPIN_SRC" "$line"
done
for line in 'After=network-online.target rsyslog.service' 'Wants=network-online.target' \
    'Environment="CONFIG=/etc/haproxy/haproxy.cfg" "PIDFILE=/run/haproxy.pid" "EXTRAOPTS=-S /run/haproxy-master.sock" "CFGDIR=/etc/haproxy/conf.d"' \
    'BindReadOnlyPaths=/dev/log:/var/lib/haproxy/dev/log' 'WantedBy=multi-user.target'; do
    check "unit: $line" has_line "$UNIT_SRC" "$line"
done
check "unit: the config check runs before the reload signal" \
    bash -c "grep '^ExecReload=.' '$UNIT_SRC' | head -n1 | grep -q -- ' -c '"
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
check "man page: renders without warnings" bash -c \
    "man --warnings -E UTF-8 -l -Tutf8 man/$BIN.8 2>&1 >/dev/null | (! grep .)"
for word in '\-\-haproxy' '\-\-ready\-timeout' '\-\-stop\-timeout' 'SIGUSR2' 'SIGTTIN' 'RELOADING=1' \
    'MONOTONIC_USEC' 'WATCHDOG=1' 'STOPPING=1' '.B 64' '.B 69' '.B 70' '.B 126' '.B 127' 'WRAPPER_MODE' \
    'HAPROXY_SYSTEMD_WRAPPER_STATE'; do
    check "man page: mentions $word" grep -qF -- "$word" "man/$BIN.8"
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
-rw-r--r-- root/root /usr/share/doc/$BIN/changelog.gz
-rw-r--r-- root/root /usr/share/doc/$BIN/copyright
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
check "deb: binary is the wrapper" bash -c "'$TMP/deb-x/usr/sbin/$BIN' --version | grep -q '$VERSION'"
for s in postinst postrm; do
    check "deb: $s is valid sh" sh -n "$TMP/deb-x/DEBIAN/$s"
done
check "deb: postinst reloads or restarts haproxy.service" bash -c \
    "grep -q 'daemon-reload' '$TMP/deb-x/DEBIAN/postinst' && grep -q 'deb-systemd-invoke reload haproxy.service' '$TMP/deb-x/DEBIAN/postinst' \
     && grep -q 'deb-systemd-invoke restart haproxy.service' '$TMP/deb-x/DEBIAN/postinst'"
check "deb: postrm gives the distribution's unit back on remove" bash -c \
    "grep -q '\"remove\"' '$TMP/deb-x/DEBIAN/postrm' && grep -q daemon-reload '$TMP/deb-x/DEBIAN/postrm' \
     && grep -q 'deb-systemd-invoke restart haproxy.service' '$TMP/deb-x/DEBIAN/postrm'"
check "deb: lintian has no errors or warnings" bash -c \
    "lintian --fail-on error,warning --no-tag-display-limit '$DEB' | tee /dev/stderr | (! grep -E '^[EW]:')"
# Same commit, another directory and CARGO_HOME, built again: byte-identical.
mkdir -p "$TMP/repro"
packaging/source-tree.sh | tar -x -C "$TMP/repro"
if (cd "$TMP/repro" && DEB_BUILD_OPTIONS=nocheck make deb) >"$TMP/repro.log" 2>&1; then
    check "deb: reproducible (rebuilt elsewhere, byte-identical)" cmp "$DEB" "$TMP/repro/$DEB"
else
    check "deb: reproducible (rebuild failed)" bash -c "tail -n 30 '$TMP/repro.log'; false"
fi

## ---- the .rpm ----
check "rpm: exactly one .rpm in dist/" test ${#RPMS[@]} -eq 1 -a -f "$RPM"
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
# Same files as the .deb, modulo /lib vs /usr/lib, compressed man pages and the doc/licence files.
norm() { awk '$1 !~ /^d/ {print $3}' "$1" | sed -e 's|^/lib/|/usr/lib/|' -e 's|\.gz$||' | grep -v -e '^/usr/share/doc/' -e '^/usr/share/licenses/' | sort; }
check "rpm: same files as the .deb" bash -c "diff -u <($(declare -f norm); norm '$TMP/deb.list') <($(declare -f norm); norm '$TMP/rpm.list')"
check "rpm: Requires haproxy" bash -c "rpm -qp --requires '$RPM' 2>/dev/null | grep -qx 'haproxy'"
rm -rf "$TMP/rpm-x" && mkdir -p "$TMP/rpm-x" && (cd "$TMP/rpm-x" && rpm2cpio "$ROOT/$RPM" | cpio -id --quiet)
sed 's|-f \$CONFIG |-f $CONFIG -f $CFGDIR |' "$DROPIN_SRC" >"$TMP/dropin-fedora"
check "rpm: drop-in is systemd/$BIN.conf plus -f \$CFGDIR" \
    same "$TMP/dropin-fedora" "$TMP/rpm-x/usr/lib/systemd/system/haproxy.service.d/$BIN.conf"
check "rpm: drop-in loads \$CFGDIR in every haproxy command" bash -c \
    "[ \$(grep -c -- '-f \$CONFIG -f \$CFGDIR ' '$TMP/dropin-fedora') -eq 3 ]"
rpm -qp --scripts "$RPM" >"$TMP/rpm.scripts" 2>/dev/null
check "rpm: %post reloads or restarts haproxy.service" bash -c \
    "grep -q 'systemctl reload haproxy.service' '$TMP/rpm.scripts' && grep -q 'systemctl try-restart haproxy.service' '$TMP/rpm.scripts'"
check "rpm: %postun on erase gives the distribution's unit back" bash -c \
    "sed -n '/^postuninstall/,\$p' '$TMP/rpm.scripts' | grep -q '\"\$1\" -eq 0' && grep -c daemon-reload '$TMP/rpm.scripts' | grep -qx 2"
check "rpm: no preset/disable of haproxy.service (not our unit)" lacks "$TMP/rpm.scripts" 'preset\|disable'
check "rpm: spec has %check running cargo test --locked" bash -c \
    "sed -n '/^%check/,/^%/p' rpm/$BIN.spec | grep -qx 'cargo test --locked'"
check "rpm: rpmlint has no errors" bash -c \
    "rpmlint -r rpm/$BIN.rpmlintrc '$RPM' rpm/$BIN.spec | tee /dev/stderr | grep -q ' 0 errors'"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
