# Flows never-refuse-mw and never-refuse-fg (sourced by flows.sh): a client opening a new connection
# every 10 ms (3 s timeout, tests/e2e/guest/prober.py) through each thing that happens to a service,
# in master-worker and in foreground mode. Asserted per event: no connection refused (but for at
# most one during a failing bind the wrapper leaves to haproxy in master-worker mode, see below),
# none timed out. The listening
# sockets outlive every process: the wrapper holds them, and systemd's file-descriptor store holds
# them while the wrapper is gone (src/listeners.rs).

# probe_start: the prober runs and has been answered once.
probe_start() {
    PROBE_DIR=$(mktemp -d /tmp/probe.XXXXXX)
    python3 /e2e/guest/prober.py 127.0.0.1 8080 "$PROBE_DIR" 10 3 120 & PROBE_PID=$!
    wait_for 10 test -e "$PROBE_DIR/ready"
}
# probe_stop: stops it, waits for its last attempts; PROBE_RESULT is its result line.
probe_stop() {
    touch "$PROBE_DIR/stop"
    wait_for 15 test -e "$PROBE_DIR/result" || kill -9 "$PROBE_PID"
    wait "$PROBE_PID" 2>/dev/null
    PROBE_RESULT=$(cat "$PROBE_DIR/result" 2>/dev/null || echo "no result")
}
# probed EVENT LOST COMMAND...: runs COMMAND under the prober until the service serves again and
# 100 more probes were answered. The event must have refused nothing and timed nothing out; at most
# LOST connections may have been reset (one that a killed haproxy held when it died; 0 for events
# that kill nothing). PROBE_REFUSED=N (for that call only): at most N refused.
probed() {
    local event=$1 lost=$2; shift 2
    if ! probe_start; then fail "$event: the prober is answered before the event"; return 1; fi
    "$@"
    EVENT_RC=$?
    # Serving again, then 100 more answered probes: the prober saw the service after the event.
    wait_for 20 serves_any
    local target=$(( $(probe_answered) + 100 ))
    wait_for 10 eval '[ "$(probe_answered)" -ge '"$target"' ]'
    probe_stop
    say "       $event: $PROBE_RESULT"
    local refused=${PROBE_REFUSED:-0}
    no_refusal() {
        [[ $PROBE_RESULT =~ ^ok=([0-9]+)\ refused=([0-9]+)\ timed_out=0\ reset=([0-9]+)\ other=0\  ]] &&
            [ "${BASH_REMATCH[1]}" -ge 100 ] && [ "${BASH_REMATCH[2]}" -le "$refused" ] &&
            [ "${BASH_REMATCH[3]}" -le "$lost" ] && return 0
        WHY="$PROBE_RESULT (at most $refused refused, $lost reset); first failures: $(head -n 3 "$PROBE_DIR/failures" | tr '\n' ';')"
        return 1
    }
    check "$event: <= $refused refused, 0 timed out, <= $lost reset (a connection every 10 ms)" no_refusal
}
probe_answered() { cat "$PROBE_DIR/progress" 2>/dev/null || echo 0; }
serves_any() { curl -fsS --max-time 3 -o /dev/null "$URL"; }
# The serving haproxy processes, by role: the wrapper's child (foreground haproxy or master) and,
# in master-worker mode, the master's newest worker.
# From StatusText: "gen 3 serving (pid 1234)" (foreground), "gen 3 serving (master 1234, workers
# 1300 1301)" (master-worker; the last worker listed).
serving_child() { status_text | sed -n 's/.* serving (\(pid\|master\) \([0-9]*\).*/\2/p'; }
newest_worker() { status_text | sed -n 's/.* serving (master [0-9]*, workers \([0-9 ]*\)).*/\1/p' | awk '{print $NF}'; }
stored_fds() { prop NFileDescriptorStore; }

kill_and_wait() {                                         # kill_and_wait PID: SIGKILL, then serving again
    local victim=$1
    kill -9 "$victim"
    wait_for 10 eval '! kill -0 '"$victim"' 2>/dev/null' && wait_for 20 serves_any
}
main_killed() {
    local pid0; pid0=$(mainpid)
    kill -9 "$pid0"
    wait_for 30 eval '[ "$(prop ActiveState)" = active ] && [ "$(mainpid)" != '"$pid0"' ] && [ "$(exe_of "$(mainpid)")" = "$WRAPPER" ]'
}

# never_refuse TAG MODE: the events of issue 18's table on the running service.
never_refuse() {
    local tag=$1 mode=$2 pid0 n0 victim
    pid0=$(mainpid); n0=$(prop NRestarts)
    local held; held=$(stored_fds)
    say "       systemd's fd store holds: ${held:-(property not shown by this systemd)}"
    [ -z "$held" ] || check "systemd's fd store holds the listening sockets (2: :8080 and the admin socket)" expect NFileDescriptorStore "$held" 2

    write_cfg "$tag-good"
    probed "good reload" 0 reload
    check "good reload exits 0" expect "rc" "$EVENT_RC:$RELOAD_RC" "0:0"
    check "serves the new configuration" serves "$tag-good"

    local old=$BODY
    write_cfg "$tag-unbindable" "$(printf 'frontend unbindable\n\tbind 192.0.2.1:8082\n')"
    BODY=$old
    probed "failing bind" 0 reload
    check "failing bind: systemctl reload exits non-zero (rc $RELOAD_RC)" reload_failed_fast
    if [ "$mode" = mw ]; then
        # The wrapper tried the bind first and never asked haproxy's master, whose retry would
        # have paused the serving listeners (src/binds.rs).
        tried_first() {
            journalctl --sync
            local log; log=$(journalctl -u $UNIT --no-pager --after-cursor="$FLOW_CURSOR")
            grep -q "frontend unbindable (/etc/haproxy/haproxy.cfg:[0-9]*): cannot bind socket (Cannot assign requested address) \[192.0.2.1:8082\]; haproxy's master was not asked to reload" <<<"$log" || { WHY="no line about the bind the wrapper tried first"; return 1; }
            ! grep -q "Paused frontend" <<<"$log" || { WHY="haproxy paused its frontends: $(grep -m1 "Paused frontend" <<<"$log")"; return 1; }
        }
        check "failing bind: the wrapper tried the bind itself; haproxy paused nothing" tried_first
        check "the old configuration still serves" serves "$old"

        # The same bind quoted: the wrapper leaves it to haproxy, whose master pauses its serving
        # workers' listeners while it retries the bind (the pause disconnects the shared socket
        # itself), and the wrapper listens on its copies again. The pause resets a connection the
        # kernel had queued and haproxy not yet accepted (at most one at this pace), and a
        # connection that comes between the pause and the wrapper's listen() is refused: at most
        # one (docs/DESIGN.md).
        write_cfg "$tag-unbindable-quoted" "$(printf 'frontend unbindable\n\tbind "192.0.2.1:8082"\n')"
        BODY=$old
        local quoted_cursor; quoted_cursor=$(journalctl -n1 --show-cursor --no-pager -q | sed -n 's/^-- cursor: //p')
        PROBE_REFUSED=1 probed "failing bind the wrapper leaves to haproxy (quoted)" 1 reload
        check "failing bind (quoted): systemctl reload exits non-zero (rc $RELOAD_RC)" reload_failed_fast
        relistened() {
            journalctl --sync
            journalctl -u $UNIT --no-pager --after-cursor="$quoted_cursor" | grep -q "while it retries a bind (tcp .*:8080.*): listening on the wrapper's copies again" && return 0
            WHY="no line about listening on the paused sockets again in the journal"; return 1
        }
        check "failing bind (quoted): the wrapper listened on the sockets haproxy's master paused" relistened
    fi
    check "the old configuration still serves" serves "$old"
    write_cfg "$tag-good"

    victim=$(serving_child)
    if [ "$mode" = mw ]; then
        victim=$(newest_worker)
        probed "SIGKILL of the serving worker (pid $victim)" 1 kill_and_wait "$victim"
        victim=$(serving_child)
        probed "SIGKILL of the master (pid $victim)" 1 kill_and_wait "$victim"
    else
        probed "SIGKILL of the serving haproxy (pid $victim)" 1 kill_and_wait "$victim"
    fi
    check "the wrapper started haproxy again itself: same MainPID, NRestarts unchanged" \
        expect "MainPID NRestarts" "$(mainpid) $(prop NRestarts)" "$pid0 $n0"
    check "StatusText says it restarted haproxy after a crash" expect_match StatusText "$(status_text)" "restarted after a crash: [12] \(last: the serving .* ended unexpectedly with status 137\)"
    crash_logged() {
        journalctl --sync
        journalctl -u $UNIT --no-pager --after-cursor="$FLOW_CURSOR" -p err | grep -q "ended unexpectedly with status 137: starting gen" && return 0
        WHY="no error line about the crash in the journal"; return 1
    }
    check "the journal has the crash at priority err" crash_logged

    probed "SIGKILL of the main process (the wrapper)" 1 main_killed
    check "systemd restarted the service (NRestarts $n0 -> $(prop NRestarts))" expect "NRestarts" "$(prop NRestarts)" "$((n0 + 1))"
    handed_back() {
        journalctl --sync
        journalctl -u $UNIT --no-pager --after-cursor="$FLOW_CURSOR" | grep -q "systemd handed back 2 listening sockets" && return 0
        WHY="the new wrapper did not log the sockets systemd handed back"; return 1
    }
    check "the new wrapper took the listening sockets back from systemd's fd store" handed_back

    probed "systemctl restart" 1 timeout 60 systemctl restart $UNIT
    check "systemctl restart exits 0" expect rc "$EVENT_RC" 0
    probed "package upgrade (apt-get install --reinstall)" 0 env DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y --allow-downgrades --reinstall "$DEB"
    check "package upgrade exits 0" expect rc "$EVENT_RC" 0
    check "serves the configuration" serves "$tag-good"

    check "systemctl stop exits 0" timeout 60 systemctl stop $UNIT
    refuses() {
        local rc; curl -sS --max-time 3 -o /dev/null "$URL" 2>/dev/null; rc=$?
        [ "$rc" = 7 ] && return 0
        WHY="curl exit status $rc (want 7: connection refused)"; return 1
    }
    check "after systemctl stop, a connection is refused (the sockets are closed)" refuses
    check "stopped: inactive, not failed" expect ActiveState "$(prop ActiveState)" inactive
    check "systemctl start exits 0" timeout 60 systemctl start $UNIT
}

if wanted never-refuse-mw; then
begin never-refuse-mw "no connection refused through crashes, restarts and upgrades (master-worker)"
if need_active; then
never_refuse mw mw
fi
fi

if wanted never-refuse-fg; then
begin never-refuse-fg "no connection refused through crashes, restarts and upgrades (foreground, WRAPPER_MODE=-x)"
echo 'WRAPPER_MODE=-x /run/haproxy/admin.sock' >> /etc/default/haproxy
write_cfg "nr-fg-start"
check "systemctl restart exits 0" timeout 60 systemctl restart $UNIT
if need_active; then
check "StatusText: foreground" expect_match StatusText "$(status_text)" "^foreground; "
never_refuse fg fg
fi
sed -i '/^WRAPPER_MODE=/d' /etc/default/haproxy
check "back to master-worker: restart exits 0" timeout 60 systemctl restart $UNIT
check "StatusText: master-worker" expect_match StatusText "$(status_text)" "^master-worker; "
fi
