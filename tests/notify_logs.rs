//! What the wrapper tells systemd and the journal, with the fake haproxy (tests/fake-haproxy):
//! WATCHDOG=1, running without systemd's NOTIFY_SOCKET, and haproxy's lines re-emitted with journald
//! priorities.
//!
//! Every test owns its temp dir, port and notify socket (`util::Ctx`), which kills what the test
//! spawned when it ends. No test sleeps to wait for something: each waits for a handshake (notify
//! datagram, fake haproxy event, HTTP answer) or polls with a deadline.

#[macro_use]
mod util;

use nix::sys::signal::Signal;

use util::*;

// ================================================================================================
// Running without systemd's NOTIFY_SOCKET.

both_modes! {
    /// Start, reload, stop, exit 0, all without NOTIFY_SOCKET.
    fn works_without_notify_socket(mode) {
        let mut t = Ctx::without_notify("nonotify");
        let cfg = t.write("h.cfg", "");
        let args = t.fake_args(mode, &cfg, &[]);
        t.start(&args);
        let role = mode.serving_role();
        t.wait_events("generation 1 ready", 1, T, |e| e.what == "ready" && e.role == role);
        if mode == Mode::MasterWorker {
            // The master's readiness goes to the wrapper's private socket, not nowhere.
            t.wait_events("master ready", 1, T, |e| e.what == "notify" && e.rest.starts_with("READY=1"));
        }
        t.signal(Signal::SIGUSR2);
        t.wait_events("generation 2 ready", 2, T, |e| e.what == "ready" && e.role == role);
        let g1 = t.ready_pids(role)[0];
        t.wait_events("generation 1 gone", 1, T, |e| e.what == "exit" && e.pid == g1);
        t.assert_running();
        stop_and_expect_0(&mut t, T);
        t.assert_no_fake_left();
    }
}
// ================================================================================================
// Logging: haproxy's lines go through the wrapper with journald priorities.

fn wait_log_line(t: &Ctx, prefix: &str, needle: &str) {
    let found = poll_until(T, || if t.log().lines().any(|l| l.starts_with(prefix) && l.contains(needle)) { Some(()) } else { None });
    assert!(found.is_some(), "no log line starting with {prefix:?} containing {needle:?}:\n{}", t.log());
}

both_modes! {
    /// [WARNING] → <4>, [ALERT] → <3>; every wrapper line has a priority prefix.
    fn haproxy_lines_are_reemitted_with_priority(mode) {
        let mut t = Ctx::new("logprio");
        t.start_fake_ready(mode, "");
        wait_log_line(&t, "<4>", "fake haproxy started");
        t.replace("h.cfg", "fake-bad\n");
        t.reload(T);
        wait_log_line(&t, "<3>", "unknown keyword 'fake-bad'");
        let log = t.log();
        for l in log.lines().filter(|l| !l.is_empty()) {
            let ok = l.len() >= 3 && l.starts_with('<') && l.as_bytes()[2] == b'>' && (b'0'..=b'7').contains(&l.as_bytes()[1]);
            assert!(ok, "log line without a priority prefix: {l:?}\n{log}");
        }
    }
}

// ================================================================================================
// The watchdog.

#[test]
fn watchdog_pings_while_serving() {
    let mut t = Ctx::new("watchdog");
    let cfg = t.write("h.cfg", "");
    let args = t.fake_args(Mode::Foreground, &cfg, &[]);
    let cmd = t.command_with_watchdog(&args, 300_000);
    t.spawn(cmd);
    t.wait_ready(T);
    t.notify().wait_count("WATCHDOG=1", 3, T, |m| m.has("WATCHDOG=1"));
    assert_all_from_wrapper(&t);
}
