# Sourced by flows.sh (its helpers: begin, check, ok, fail, say, wanted, prop, serves, write_cfg...)
# after flow 10, with the package installed and haproxy.service active under the wrapper.
# Flow 11: a start, a reload and a stop log no warning of systemd's about the unit.
# Flow 12: the source package's autopkgtest (debian/tests) with autopkgtest's null runner.
# Input: /e2e/deb/*.deb, /e2e/src/*.dsc and its tarballs (tests/e2e/run.sh copies them from dist/).

# systemd's warnings about haproxy.service since cursor $1: PID 1's messages about the unit (UNIT=)
# at priority warning or worse, any message of the unit's saying a variable is unset (-u: systemd 262
# logs that from the unit's own executor process, without UNIT=), and PID 1's warnings that name the
# unit in their text. Left out: "Failed to read pids.max for control group": systemd 262 in the sid
# guest says it whenever the unit's properties are read, because the cgroup2 hierarchy nspawn gives
# the guest on this hybrid host has no pids controller (the host keeps it on cgroup v1): a fact of
# the test machine, not of the unit.
systemd_warnings() {
    journalctl --sync
    {
        journalctl -q --no-pager -o short-monotonic --after-cursor="$1" -p warning UNIT=haproxy.service
        journalctl -q --no-pager -o short-monotonic --after-cursor="$1" -u haproxy.service | grep -i 'unset environment variable'
        journalctl -q --no-pager -o short-monotonic --after-cursor="$1" -p warning _PID=1 | grep -F haproxy.service
    } | grep -v 'Failed to read pids\.max for control group' | sort -u
}
# purge_wrapper: the .deb of the wrapper purged (apt-get fails on a package it does not know at all).
purge_wrapper() {
    if dpkg-query -W -f '${Status}' haproxy-systemd-wrapper 2>/dev/null | grep -q ' installed$'; then
        DEBIAN_FRONTEND=noninteractive timeout 300 apt-get purge -y haproxy-systemd-wrapper || return 1
    fi
    ! dpkg-query -W -f '${Status}' haproxy-systemd-wrapper 2>/dev/null | grep -q ' installed$'
}
journal_cursor() { journalctl -n1 --show-cursor --no-pager -q | sed -n 's/^-- cursor: //p'; }
quiet_cycle() {                                          # start, reload, stop; sets CYCLE_RC
    CYCLE_RC=
    timeout 60 systemctl start $UNIT || CYCLE_RC="$CYCLE_RC start:$?"
    wait_for 10 serves || CYCLE_RC="$CYCLE_RC serves"
    timeout 30 systemctl reload $UNIT || CYCLE_RC="$CYCLE_RC reload:$?"
    timeout 60 systemctl stop $UNIT || CYCLE_RC="$CYCLE_RC stop:$?"
}

if wanted 11; then
begin 11 "a quiet journal: start, reload and stop log no warning of systemd's about haproxy.service"
timeout 60 systemctl stop $UNIT
write_cfg "quiet"
cursor=$(journal_cursor)
quiet_cycle
check "start, reload, stop exit 0 and the unit serves in between" expect "failures" "$CYCLE_RC" ""
w=$(systemd_warnings "$cursor")
check "no warning of systemd's about haproxy.service" expect "systemd's warnings" "$w" ""
# The control: a drop-in naming a variable nobody sets must make the same check fail. systemd only
# warns about unset variables from version 254 on; before that the control proves nothing, and is
# reported, not counted.
sdver=$(systemctl --version | sed -n '1s/^systemd \([0-9]*\).*/\1/p')
if [ "${sdver:-0}" -ge 254 ]; then
    mkdir -p /run/systemd/system/haproxy.service.d
    printf '[Service]\nExecStartPre=/bin/true $E2E_NEVER_SET\n' > /run/systemd/system/haproxy.service.d/zz-e2e-unset.conf
    systemctl daemon-reload
    cursor=$(journal_cursor)
    quiet_cycle
    w=$(systemd_warnings "$cursor")
    rm -f /run/systemd/system/haproxy.service.d/zz-e2e-unset.conf; systemctl daemon-reload
    check "(control) with a drop-in naming an unset variable, the check sees systemd's warning" \
        expect_match "systemd's warnings" "$w" "E2E_NEVER_SET"
else
    say "       (control not run: systemd $sdver does not warn about unset variables)"
fi
check "back to running" timeout 60 systemctl start $UNIT
fi

if wanted 12; then
begin 12 "autopkgtest of the source package (debian/tests), null runner, in this guest"
DSC=$(ls /e2e/src/*.dsc 2>/dev/null | head -n1)
if [ -z "$DSC" ]; then
    fail "no source package in /e2e/src (tests/e2e/run.sh copies dist/*.dsc and its tarballs)"
else
    # autopkgtest installs the package itself (the test's Depends: @): start from a purged one.
    check "the .deb of the wrapper purged first" purge_wrapper
    rm -rf /tmp/autopkgtest-out
    # The guest is a booted container testbed. autopkgtest's null runner of bookworm declares
    # isolation-container itself; trixie's (5.49) declares nothing (its --fake-capability for it
    # trips an assertion of its own), so there autopkgtest is told to run the test anyway.
    opts=()
    if autopkgtest-virt-null --help 2>&1 | grep -q -- --fake-capability; then
        opts=(--ignore-restrictions=isolation-container)
    fi
    say "       autopkgtest $(dpkg-query -W -f '${Version}' autopkgtest): autopkgtest ${opts[*]} DSC DEB -- null"
    timeout 600 autopkgtest "${opts[@]}" --output-dir /tmp/autopkgtest-out "$DSC" "$DEB" -- null > /tmp/autopkgtest.log 2>&1
    APT_RC=$?
    cp -r /tmp/autopkgtest-out "$OUT/autopkgtest" 2>/dev/null; cp /tmp/autopkgtest.log "$OUT/" 2>/dev/null
    say "       autopkgtest summary: $(tr '\n' ';' < /tmp/autopkgtest-out/summary 2>/dev/null)"
    check "autopkgtest exits 0 (rc $APT_RC)" expect "autopkgtest exit status" "$APT_RC" 0
    check "autopkgtest: the test 'service' passed" expect_match "summary" \
        "$(cat /tmp/autopkgtest-out/summary 2>/dev/null)" "^service +PASS"
    check "autopkgtest: each step of the test reported ok (7)" expect "ok lines" \
        "$(grep -c "^ok [0-9]" /tmp/autopkgtest-out/service-stdout 2>/dev/null)" 7
fi
fi

# Flow 13: the RPM's %post and %postun (from rpm -qp on the host, tests/e2e/copy-source.sh) run with
# the arguments rpm gives them, against this guest's real haproxy.service: the .rpm's files are put
# in place (and removed) as rpm would, since the guest has no rpm database. The RPM's drop-in is
# Fedora's flavour (-f $CFGDIR): /etc/sysconfig/haproxy provides CFGDIR, as Fedora's unit does.
if wanted 13; then
begin 13 "the RPM's scriptlets against the real haproxy.service: install, upgrade, erase"
if [ ! -s /e2e/rpm/post.sh ] || [ ! -s /e2e/rpm/postun.sh ] || [ ! -d /e2e/rpm/root/usr ]; then
    fail "no .rpm unpacked in /e2e/rpm (tests/e2e/copy-source.sh; make rpm first)"
else
    say "       package: $(cat /e2e/rpm/name)"
    check "no .deb of the wrapper installed first" purge_wrapper
    rpm_files=$(cd /e2e/rpm/root && find . ! -type d | sed 's|^\./||')
    mkdir -p /etc/sysconfig /etc/haproxy/conf.d
    printf 'CFGDIR=/etc/haproxy/conf.d\n' > /etc/sysconfig/haproxy
    write_cfg "rpm-1"
    check "the distribution's haproxy runs (before the install)" eval 'timeout 60 systemctl restart $UNIT && is_active &&
        expect exe "$(exe_of "$(mainpid)")" /usr/sbin/haproxy && wait_for 10 serves'
    # install: files, then %post 1
    (cd /e2e/rpm/root && cp -P --parents $rpm_files /)
    check "%post 1 (install) exits 0" sh -e /e2e/rpm/post.sh 1
    check "after %post 1: no daemon-reload pending" expect NeedDaemonReload "$(prop NeedDaemonReload)" no
    check "after %post 1: haproxy restarted under the wrapper" eval 'is_active && main_is_wrapper'
    check "after %post 1: serves" wait_for 10 serves
    check "after %post 1: StatusText: last reload: none" expect_match StatusText "$(status_text)" "last reload: none"
    pid0=$(mainpid)
    # upgrade: new files (the same here), %post 2, then the old package's %postun 1
    write_cfg "rpm-2"
    check "%post 2 (upgrade) exits 0" sh -e /e2e/rpm/post.sh 2
    check "after %post 2: reloaded: same MainPID, new configuration, last reload: ok" eval '
        expect MainPID "$(mainpid)" "$pid0" && wait_for 10 serves rpm-2 &&
        expect_match StatusText "$(status_text)" "last reload: ok"'
    check "%postun 1 (the old package, on upgrade) exits 0" sh -e /e2e/rpm/postun.sh 1
    check "after %postun 1: untouched, same MainPID" eval 'is_active && expect MainPID "$(mainpid)" "$pid0"'
    # erase: files removed, then %postun 0
    for f in $rpm_files; do rm -f "/$f"; done
    rmdir /usr/lib/systemd/system/haproxy.service.d 2>/dev/null
    check "%postun 0 (erase) exits 0" sh -e /e2e/rpm/postun.sh 0
    check "after %postun 0: no daemon-reload pending" expect NeedDaemonReload "$(prop NeedDaemonReload)" no
    check "after %postun 0: the distribution's haproxy runs again" eval 'is_active &&
        expect exe "$(exe_of "$(mainpid)")" /usr/sbin/haproxy'
    check "after %postun 0: serves" wait_for 10 serves
    rm -f /etc/sysconfig/haproxy
fi
fi
