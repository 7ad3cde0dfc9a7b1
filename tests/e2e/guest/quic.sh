# Flow quic (sourced by flows.sh): an HTTP/3 (QUIC) frontend, with the guest's own curl as the
# client (--http3-only), in master-worker and then foreground mode: the first HTTP/3 request after
# each `systemctl reload` returns reaches the new configuration, the wrapper holds the QUIC socket
# (UDP), and HTTP/3 requests made while a killed haproxy is started again all succeed. Debian 12's
# haproxy 2.6 is built without QUIC: the flow says so there and checks nothing.

H3_URL=https://127.0.0.1:8443/
h3() { curl -sS --http3-only -k --max-time 3 "$H3_URL" 2>&1; }
# quic_cfg TAG: the test configuration plus a QUIC frontend on 127.0.0.1:8443 answering TAG-h3.
quic_cfg() {
    write_cfg "$1" "$(printf 'frontend h3\n\tbind quic4@127.0.0.1:8443 ssl crt /etc/haproxy/e2e-quic.pem alpn h3\n\thttp-request return status 200 content-type text/plain string "%s-h3"\n' "$1")"
}
h3_serves() { [ "$(h3)" = "$1-h3" ]; }
# quic_checks TAG: reloads and a crash under HTTP/3 in the running mode.
quic_checks() {
    local tag=$1 i got stale= n=0 failed=0 victim
    quic_cfg "$tag-0"
    reload
    check "$tag: the reload adding the QUIC frontend exits 0 (rc $RELOAD_RC)" expect rc "$RELOAD_RC" 0
    check "$tag: HTTP/3 answers" wait_for 10 h3_serves "$tag-0"
    holds_udp() {
        journalctl --sync
        # Copied from haproxy, or handed back by systemd's fd store when the wrapper started.
        journalctl -u $UNIT --no-pager --after-cursor="$FLOW_CURSOR" |
            grep -qE "\[$(mainpid)\]: (holding|systemd handed back) .*udp 127.0.0.1:8443" && return 0
        WHY="no 'holding ... udp 127.0.0.1:8443' or 'systemd handed back ... udp 127.0.0.1:8443' line of wrapper $(mainpid) in the journal"; return 1
    }
    check "$tag: the wrapper holds the QUIC socket" holds_udp
    for i in $(seq 1 10); do
        quic_cfg "$tag-$i"
        reload
        got=$(h3)
        [ "$RELOAD_RC" = 0 ] && [ "$got" = "$tag-$i-h3" ] || { n=$((n + 1)); stale="$stale #$i:rc=$RELOAD_RC:'$got'"; }
    done
    check "$tag: 10 reloads; the first HTTP/3 request after each is answered by its configuration" \
        expect "stale or failed ($n of 10)" "$stale" ""
    victim=$(serving_child)
    [ "$tag" = mw ] && victim=$(newest_worker)
    kill -9 "$victim"
    for i in $(seq 1 30); do h3_serves "$tag-10" || failed=$((failed + 1)); done
    check "$tag: kill -9 of the serving haproxy (pid $victim): 30 HTTP/3 requests right after it, all answered" \
        expect "failed requests" "$failed" 0
}

if wanted quic; then
begin quic "HTTP/3 (QUIC) through reloads and a crash (master-worker, then foreground)"
if ! haproxy -vv 2>/dev/null | grep -q '+QUIC'; then
    say "       (not applicable: $(haproxy -v | head -n1) is built without QUIC; nothing checked)"
elif need_active; then
    check "a self-signed certificate for the QUIC frontend" sh -c 'openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=127.0.0.1 -keyout /tmp/q.key -out /tmp/q.crt 2>/dev/null && cat /tmp/q.crt /tmp/q.key > /etc/haproxy/e2e-quic.pem'
    # haproxy built on OpenSSL's QUIC compatibility layer (3.0 here) needs it said.
    GLOBAL_EXTRA=
    haproxy -vv | grep -q '+QUIC_OPENSSL_COMPAT' && GLOBAL_EXTRA=$(printf '\tlimited-quic')
    quic_checks mw
    echo 'WRAPPER_MODE=-x /run/haproxy/admin.sock' >> /etc/default/haproxy
    check "foreground: systemctl restart exits 0" timeout 60 systemctl restart $UNIT
    check "StatusText: foreground" expect_match StatusText "$(status_text)" "^foreground; "
    quic_checks fg
    sed -i '/^WRAPPER_MODE=/d' /etc/default/haproxy
    GLOBAL_EXTRA=
    write_cfg "quic-done"
    check "back to master-worker without QUIC: restart exits 0" timeout 60 systemctl restart $UNIT
    check "serves" wait_for 10 serves
fi
fi
