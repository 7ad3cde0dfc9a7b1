# Sourced by flows.sh (its helpers: begin, check, ok, fail, say, wanted, prop, serves, status_text,
# start_load, stop_load, apt_install...) after packaging.sh. Fleet automation as a client of
# `systemctl reload`: the example role examples/ansible (template + validate + a `state: reloaded`
# handler + a rescue that prints haproxy's reason), run with the distribution's own ansible-core
# against the guest itself (connection: local), as a fleet would. docs/automation.md.
# Flow automation-distro (the control): the same plays against the distribution's unit (the
# package purged): a bind-failing change makes the play succeed although it never took effect.
# Flow automation: our drop-in, master-worker and foreground mode: a good change serves when
# ansible-playbook returns; each failure class of the README's table fails the play in the handler
# with haproxy's reason in the play's output, and the old configuration keeps serving.
# Input: /e2e/examples/ansible (tests/e2e/run.sh copies examples/ there), /e2e/deb/*.deb.

AUTO=/e2e/examples/ansible
AUTO_VARS=/tmp/automation-vars.yml
AUTO_HANDLER='RUNNING HANDLER [haproxy : Reload haproxy]'
AUTO_TEMPLATE='TASK [haproxy : Write the haproxy configuration]'
# auto_time_begin / auto_time_end: what the flow cost (plays, time in ansible-playbook, the whole flow).
auto_time_begin() { AUTO_PLAYS=0; AUTO_PLAYS_MS=0; AUTO_T0=$(now_ms); }
auto_time_end() {
    say "       flow $FLOW: $AUTO_PLAYS plays, $((AUTO_PLAYS_MS / 1000)) s in ansible-playbook, $(( ($(now_ms) - AUTO_T0) / 1000 )) s in all"
}
# The "not ready in time" class: a --ready-timeout of 1.5 s (WRAPPER_MODE) and a configuration
# that takes haproxy 8-9 s to load whatever its version: a second global section whose lua-load
# busy-waits (os.time() has whole seconds), long after the play and its checks have returned.
# (500000 regular expressions took 7.5 s on haproxy 2.6 but 2.6 s on 3.2, which then served the
# slow configuration before the checks of the old one ran.)
AUTO_READY_TIMEOUT=1.5
AUTO_SLOW_LUA=/etc/haproxy/e2e-slow.lua

# auto_vars TAG [VALIDATE] [EXTRA FRONTENDS (YAML list items)] [EXTRA CONFIG (one line)]: the
# play's variables: the frontend on 127.0.0.1:8080 answering TAG, the template's `validate:` on
# (default) or off, and haproxy_extra_config.
auto_vars() {
    AUTO_TAG=$1
    {
        printf 'haproxy_config_validate: %s\n' "${2:-true}"
        printf 'haproxy_frontends:\n  - name: e2e\n    binds: ["127.0.0.1:8080"]\n    lines:\n'
        printf '      - http-request return status 200 content-type text/plain string "%s"\n' "$1"
        [ -z "${3:-}" ] || printf '%s\n' "$3"
        [ -z "${4:-}" ] || printf 'haproxy_extra_config: "%s"\n' "$4"
    } > "$AUTO_VARS"
}
AUTO_UNBINDABLE=$'  - name: unbindable\n    binds: ["192.0.2.1:8082"]'
AUTO_HELD=$'  - name: held\n    binds: ["127.0.0.1:8083"]'
AUTO_SLOW=$'  - name: slow\n    binds: ["127.0.0.1:8084"]'
AUTO_SLOW_EXTRA="global\\n\\tlua-load $AUTO_SLOW_LUA"
auto_broken() { printf '  - name: broken\n    binds: ["127.0.0.1:8081"]\n    lines: ["%s on"]' "$1"; }

# play NAME: ansible-playbook of the example with $AUTO_VARS. PLAY_RC, PLAY_MS; the play's stdout
# in PLAY_LOG ($OUT/ansible-FLOW-NAME.out, kept with the guest's output), its stderr beside it.
play() {
    PLAY_LOG=$OUT/ansible-$FLOW-$1.out
    cp "$AUTO_VARS" "$OUT/ansible-$FLOW-$1.vars.yml"
    local t0; t0=$(now_ms)
    HOME=/root ANSIBLE_NOCOLOR=1 ANSIBLE_LOCAL_TEMP=/tmp/ansible-tmp ANSIBLE_REMOTE_TEMP=/tmp/ansible-tmp \
        timeout 180 ansible-playbook -i "$AUTO/inventory.ini" "$AUTO/site.yml" -e @"$AUTO_VARS" \
        > "$PLAY_LOG" 2> "${PLAY_LOG%.out}.err"
    PLAY_RC=$?
    PLAY_MS=$(( $(now_ms) - t0 ))
    AUTO_PLAYS=$((AUTO_PLAYS + 1)); AUTO_PLAYS_MS=$((AUTO_PLAYS_MS + PLAY_MS))
    cat "$PLAY_LOG" "${PLAY_LOG%.out}.err"      # into the trace
}
# The header of the task whose failure came first in the play's output ("TASK [...]" or
# "RUNNING HANDLER [...]").
failing_task() {
    awk '/^(TASK|RUNNING HANDLER) \[/ { h = $0; sub(/ \**$/, "", h) } /^fatal: / { print h; exit }' "$PLAY_LOG"
}
play_ok() {
    [ "$PLAY_RC" = 0 ] && return 0
    WHY="ansible-playbook exit status $PLAY_RC; $(grep -E '^(fatal|failed): ' "$PLAY_LOG" | head -n 2 | tr '\n' ' ')"
    return 1
}
play_failed_in() {                                       # play_failed_in TASK-HEADER
    local h; h=$(failing_task)
    [ "$PLAY_RC" != 0 ] && [ "$PLAY_RC" != 124 ] && [ "$h" = "$1" ] && return 0
    WHY="ansible-playbook exit status $PLAY_RC (want non-zero, 124 = timed out), first failed task '$h' (want '$1')"
    return 1
}
# reason_shown REGEX: the wrapper's reason for the last reload (StatusText "last reload: failed
# after N ms: REASON") matches REGEX, and the play's stdout has it word for word (quotes and
# backslashes left out on both sides: Ansible prints it inside JSON).
reason_shown() {
    local st reason
    st=$(status_text)
    [[ $st =~ last\ reload:\ failed\ after\ [0-9]+\ ms:\ (.+)$ ]] || { WHY="StatusText: $st"; return 1; }
    reason=${BASH_REMATCH[1]}
    [[ $reason =~ $1 ]] || { WHY="the reason '$reason' does not match /$1/"; return 1; }
    tr -d '"\\' < "$PLAY_LOG" | grep -qF -- "$(tr -d '"\\' <<<"$reason")" && return 0
    WHY="the reason '$reason' is not in the play's output: $(grep -E '^fatal: ' "$PLAY_LOG" | tail -n 1)"
    return 1
}
same_file() { cmp -s "$1" "$2" && return 0; WHY="$2 differs from $1"; return 1; }
# The "port another program holds": start_holder / stop_holder (flows.sh), 127.0.0.1:8083.

# auto_good TAG: a good change: the play succeeds and the first connection after it (one curl,
# no retry) is answered by the new configuration.
auto_good() {
    auto_vars "$1"
    play "good-$1"
    check "good change ($1): the play succeeds (${PLAY_MS} ms)" play_ok
    check "good change ($1): the first connection after the play gets the new configuration" serves "$1"
}
# auto_fails NAME WHAT REGEX: the play of $AUTO_VARS fails in the handler with the wrapper's reason
# (matching REGEX) in its output; the old configuration serves and is the file on disk again.
auto_fails() {
    local name=$1 what=$2 re=$3
    check "$what: the play fails in the handler ($PLAY_MS ms)" play_failed_in "$AUTO_HANDLER"
    check "$what: haproxy's reason is in the play's output" reason_shown "$re"
    check "$what: the old configuration serves" serves "$AUTO_OLD"
    check "$what: the rescue put the serving configuration file back" same_file /tmp/automation-serving.cfg /etc/haproxy/haproxy.cfg
}
# auto_failures MODE [from-stopped]: every failure class of the README's table, from a serving
# configuration MODE-base; with from-stopped, the unit is stopped and that play starts it
# (Ansible's state: reloaded runs systemctl start then), in master-worker mode.
auto_failures() {
    local mode=$1 key
    auto_good "$mode-base"; AUTO_OLD=$mode-base
    [ "${2:-}" != from-stopped ] || check "the play started the stopped unit under the wrapper, master-worker" \
        eval 'is_active && main_is_wrapper && expect_match StatusText "$(status_text)" "^master-worker; "'
    cp /etc/haproxy/haproxy.cfg /tmp/automation-serving.cfg
    # haproxy rejects the configuration (the template's validate: off, so that the reload sees it).
    key=no-such-keyword-$mode-$RANDOM
    auto_vars "$mode-broken" false "$(auto_broken "$key")"; play "$mode-broken-novalidate"
    auto_fails broken-novalidate "bad configuration, validate off" "$key"
    # An address the host lacks (passes haproxy -c).
    auto_vars "$mode-unbindable" true "$AUTO_UNBINDABLE"; play "$mode-unbindable"
    auto_fails unbindable "an address the host lacks" '192\.0\.2\.1:8082'
    # A port another program holds (passes haproxy -c), under a probe loop on the old configuration:
    # no probe may fail (in master-worker mode the wrapper tries the bind first and never asks
    # haproxy's master, whose retry would pause the serving listeners: src/binds.rs).
    check "a python3 listener holds 127.0.0.1:8083" start_holder
    auto_vars "$mode-held" true "$AUTO_HELD"
    start_load "$AUTO_OLD"
    local start end; start=$(date +%s.%N)
    play "$mode-port-held"
    end=$(date +%s.%N)
    echo "$start $end" > "$LOAD_DIR/window"
    stop_load
    stop_holder
    check "port held: no probe on the old configuration failed while ansible-playbook ran" load_clean
    auto_fails port-held "a port another program holds" '127\.0\.0\.1:8083'
}
# auto_not_ready MODE-LINE: not ready within --ready-timeout: WRAPPER_MODE gets a short one,
# the service restarts, and a configuration slow to load is applied (validate off: haproxy -c
# would take as long). Sets AUTO_SLOW_TAG.
auto_not_ready() {
    local mode=$1 line=$2
    sed -i '/^WRAPPER_MODE=/d' /etc/default/haproxy
    echo "WRAPPER_MODE=$line" >> /etc/default/haproxy
    check "WRAPPER_MODE=$line: restart exits 0" timeout 60 systemctl restart $UNIT
    check "serves $AUTO_OLD" wait_for 10 serves "$AUTO_OLD"
    AUTO_SLOW_TAG=$mode-slow
    auto_vars "$AUTO_SLOW_TAG" false "$AUTO_SLOW" "$AUTO_SLOW_EXTRA"; play "$mode-not-ready"
    auto_fails not-ready "not ready within --ready-timeout $AUTO_READY_TIMEOUT" "not ready after $AUTO_READY_TIMEOUT s"
}

if wanted automation-distro || wanted automation; then
    command -v ansible-playbook >/dev/null && say "       $(ansible-playbook --version | head -n1)"
    # The slow configuration's Lua file (8-9 s of haproxy's time per load), made once.
    printf -- '-- e2e: a configuration slow to load\nlocal t = os.time() + 9\nwhile os.time() < t do end\n' > "$AUTO_SLOW_LUA"
fi

if wanted automation-distro; then
begin automation-distro "(control) the example play against the distribution's unit: a bind-failing change is reported ok"
auto_time_begin
check "the .deb of the wrapper purged (the distribution's unit alone)" purge_wrapper
sed -i '/^WRAPPER_MODE=/d' /etc/default/haproxy
systemctl daemon-reload
check "ExecStart is /usr/sbin/haproxy (the distribution's unit)" expect_match ExecStart "$(prop ExecStart)" "path=/usr/sbin/haproxy ;"
timeout 60 systemctl stop $UNIT
auto_vars distro-base; play good-distro-base
check "good change on a stopped unit (Ansible starts it): the play succeeds" play_ok
check "active, MainPID is /usr/sbin/haproxy" eval 'is_active && expect exe "$(exe_of "$(mainpid)")" /usr/sbin/haproxy'
check "serves it" wait_for 10 serves distro-base
auto_vars distro-2; play good-distro-2
got=$(curl -sS --max-time 3 "$URL" 2>&1)
check "good change: the play succeeds" play_ok
say "       good change: the first connection after the play got '$got' (want distro-2; not asserted: the distribution's reload does not wait)"
check "good change: the new configuration serves within 5 s" wait_for 5 serves distro-2
# The documented difference: the play succeeds, the new configuration never took effect.
auto_vars distro-unbindable true "$AUTO_UNBINDABLE"; play unbindable
check "(control) an address the host lacks: the play SUCCEEDS (exit 0) with the distribution's unit" play_ok
check "(control) and the new configuration did not take effect: the old one serves (within 10 s: haproxy pauses it while it retries the bind)" wait_for 10 serves distro-2
# haproxy rejects it: the distribution's ExecReload checks the configuration first, so this fails.
auto_vars distro-broken false "$(auto_broken no-such-keyword-distro)"; play broken-novalidate
check "(control) bad configuration, validate off: the play fails in the handler" play_failed_in "$AUTO_HANDLER"
check "(control) the old configuration serves" serves distro-2
auto_time_end
fi

if wanted automation; then
begin automation "the example play (template + validate + a state: reloaded handler) with our drop-in, both modes"
auto_time_begin
if ! dpkg-query -W -f '${Status}' haproxy-systemd-wrapper 2>/dev/null | grep -q ' installed$'; then
    check "apt-get install $(basename "$DEB")" apt_install "$DEB"
fi
sed -i '/^WRAPPER_MODE=/d' /etc/default/haproxy
check "systemctl stop exits 0" timeout 60 systemctl stop $UNIT
# master-worker; the first play starts the stopped unit (Ansible runs systemctl start then)
auto_failures mw from-stopped
# The template's validate stops a broken configuration before it reaches the file (once: the
# mode does not matter): the play fails in the template task, with haproxy -c's message.
key=no-such-keyword-validate-$RANDOM
auto_vars mw-broken-validated true "$(auto_broken "$key")"; play mw-broken-validate
check "bad configuration, validate on: the play fails in the template task" play_failed_in "$AUTO_TEMPLATE"
check "bad configuration, validate on: haproxy -c's message is in the play's output" grep -qF -- "unknown keyword '$key'" "$PLAY_LOG"
check "bad configuration, validate on: the file is unchanged and the old configuration serves" eval \
    'same_file /tmp/automation-serving.cfg /etc/haproxy/haproxy.cfg && serves "$AUTO_OLD"'
auto_not_ready mw "--ready-timeout $AUTO_READY_TIMEOUT -Ws"
# haproxy's master itself goes on loading it after the wrapper gave up, and then serves it.
check "(master-worker) haproxy's master serves the slow configuration once it has loaded it" wait_for 30 serves "$AUTO_SLOW_TAG"
sed -i '/^WRAPPER_MODE=/d' /etc/default/haproxy
# foreground
echo 'WRAPPER_MODE=-x /run/haproxy/admin.sock' >> /etc/default/haproxy
check "foreground mode: restart exits 0" timeout 60 systemctl restart $UNIT
check "StatusText: foreground" expect_match StatusText "$(status_text)" "^foreground; "
auto_failures fg
auto_not_ready fg "--ready-timeout $AUTO_READY_TIMEOUT -x /run/haproxy/admin.sock"
check "(foreground) the slow generation is gone, one haproxy left" wait_one_generation 1
check "(foreground) the old configuration still serves" serves "$AUTO_OLD"
sed -i '/^WRAPPER_MODE=/d' /etc/default/haproxy
echo 'WRAPPER_MODE=-x /run/haproxy/admin.sock' >> /etc/default/haproxy
check "foreground, default --ready-timeout: restart exits 0" timeout 60 systemctl restart $UNIT
auto_good fg-fixed
# back to master-worker
sed -i '/^WRAPPER_MODE=/d' /etc/default/haproxy
check "back to master-worker: restart exits 0" timeout 60 systemctl restart $UNIT
check "StatusText: master-worker" expect_match StatusText "$(status_text)" "^master-worker; "
auto_time_end
fi
rm -f "$AUTO_SLOW_LUA"
