//! Start and stop with the fake haproxy (tests/fake-haproxy): readiness handshake, exit statuses,
//! stop signals, signals passed on to haproxy.
//!
//! Every test owns its temp dir, port and notify socket (`util::Ctx`), which kills what the test
//! spawned when it ends. No test sleeps to wait for something: each waits for a handshake (notify
//! datagram, fake haproxy event, HTTP answer) or polls with a deadline.

#[macro_use]
mod util;

use std::fs;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use util::*;

both_modes! {
    /// READY=1 (with MAINPID = wrapper pid) comes only once haproxy is ready, never before.
    fn ready_only_after_haproxy_is_ready(mode) {
        let mut t = Ctx::new("ready-after");
        let gate = t.p("gate");
        let cfg = t.write("h.cfg", &format!("fake-ready-delay-file {gate}\n"));
        let args = t.fake_args(mode, &cfg, &[]);
        t.start(&args);
        t.wait_events("fake start", 1, T, |e| e.what == "start" && e.role == mode.role());
        // haproxy runs but is not ready: no READY=1 may arrive (bounded negative check).
        let early = t.notify().wait_for(Duration::from_millis(500), |m| m.iter().any(Msg::is_ready));
        assert!(!early, "READY=1 before haproxy was ready:\n{}", t.notify().dump());
        assert!(t.ready_pids(mode.role()).is_empty());
        fs::write(&gate, "").unwrap();
        let ready = t.wait_ready(T);
        assert_eq!(ready.pid, t.pid, "READY=1 not sent by the wrapper");
        assert_eq!(ready.get("MAINPID"), Some(t.pid.to_string().as_str()), "READY=1 without MAINPID=<wrapper pid>: {:?}", ready.text);
        assert_eq!(t.ready_pids(mode.role()).len(), 1, "READY=1 but haproxy never said ready");
        let status = t.notify().last_status().unwrap_or_default();
        assert!(status.contains("gen 1 serving"), "STATUS after start: {status:?}");
        assert!(status.contains("last reload: none"), "STATUS after start: {status:?}");
        let mode_word = if mode == Mode::Foreground { "foreground" } else { "master-worker" };
        assert!(status.starts_with(mode_word), "STATUS after start: {status:?}");
    }
}

both_modes! {
    /// haproxy exits 3 while starting: the wrapper exits 3 and never says READY=1.
    fn start_failure_exit_status_is_passed_on(mode) {
        let mut t = Ctx::new("exit3");
        let cfg = t.write("h.cfg", "");
        let mut cmd = t.command(&t.fake_args(mode, &cfg, &[]));
        cmd.env("FAKE_EXIT", "3");
        t.spawn(cmd);
        let st = t.wait_exit(T);
        assert_eq!(st.code(), Some(3), "{}", describe_status(&st));
        assert_eq!(t.notify().count(Msg::is_ready), 0, "READY=1 sent:\n{}", t.notify().dump());
        t.assert_no_fake_left();
    }
}

both_modes! {
    /// haproxy never becomes ready: exit 69 after --ready-timeout, haproxy stopped.
    fn ready_timeout_exits_69(mode) {
        let mut t = Ctx::new("timeout69");
        let cfg = t.write("h.cfg", "fake-hang\n");
        t.start(&t.fake_args_with_options(mode, &cfg, &["--ready-timeout", "1"]));
        let st = t.wait_exit(T);
        assert_eq!(st.code(), Some(69), "{}", describe_status(&st));
        assert_eq!(t.notify().count(Msg::is_ready), 0, "READY=1 sent:\n{}", t.notify().dump());
        poll_until(T, || if t.fake_pids().iter().any(|p| alive(*p)) { None } else { Some(()) });
        t.assert_no_fake_left();
    }
}

both_modes! {
    /// SIGTERM: STOPPING=1, haproxy gets SIGTERM, wrapper exits 0, nothing left behind.
    fn sigterm_stops_everything_and_exits_0(mode) {
        let mut t = Ctx::new("sigterm");
        t.start_fake_ready(mode, "");
        let fake = first_fake(&t, mode);
        stop_and_expect_0(&mut t, T);
        assert!(t.events().iter().any(|e| e.pid == fake && e.what == "signal" && e.rest == "SIGTERM"), "haproxy did not get SIGTERM:\n{}", t.events_text());
        assert!(t.notify().messages().iter().any(Msg::is_stopping), "no STOPPING=1:\n{}", t.notify().dump());
        assert_eq!(notify_sequence(&t.notify().messages()), "R S");
        t.assert_no_fake_left();
    }
}

#[test]
fn sigint_stops_and_exits_0() {
    let mut t = Ctx::new("sigint");
    let cfg = t.write("h.cfg", "");
    let args = t.fake_args(Mode::Foreground, &cfg, &[]);
    t.start(&args);
    t.wait_ready(T);
    t.signal(Signal::SIGINT);
    let st = t.wait_exit(T);
    assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
    t.assert_no_fake_left();
}

both_modes! {
    /// haproxy ending with 143 after our SIGTERM is a clean stop: exit 0.
    fn sigterm_with_haproxy_exit_143_is_clean(mode) {
        let mut t = Ctx::new("term143");
        t.start_fake_ready(mode, "fake-term-exit 143\n");
        stop_and_expect_0(&mut t, T);
        t.assert_no_fake_left();
    }
}

both_modes! {
    /// SIGUSR1: graceful stop, haproxy gets SIGUSR1 (soft-stop), wrapper exits 0.
    fn sigusr1_graceful_stop(mode) {
        let mut t = Ctx::new("sigusr1");
        t.start_fake_ready(mode, "");
        let fake = first_fake(&t, mode);
        t.signal(Signal::SIGUSR1);
        let st = t.wait_exit(T);
        assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
        assert!(t.events().iter().any(|e| e.pid == fake && e.what == "signal" && e.rest == "SIGUSR1"), "haproxy did not get SIGUSR1:\n{}", t.events_text());
        t.assert_no_fake_left();
    }
}

both_modes! {
    /// --stop-timeout: a haproxy that ignores SIGTERM is SIGKILLed once the timeout has passed (not
    /// before), and the wrapper exits 0: that SIGKILL was its own, ending a requested stop
    /// (`haproxy_killed_by_sigkill_exits_137` is the SIGKILL it did not send). Nothing is left:
    /// in master-worker mode the master's workers are gone too when the wrapper exits.
    fn stop_timeout_kills_stuck_haproxy(mode) {
        let mut t = Ctx::new("stoptimeout");
        let cfg = t.write("h.cfg", "fake-ignore-term\n");
        t.start(&t.fake_args_with_options(mode, &cfg, &["--stop-timeout", "1"]));
        t.wait_ready(T);
        let fake = first_fake(&t, mode);
        let workers = t.ready_pids("worker");
        assert_eq!(workers.is_empty(), mode == Mode::Foreground, "workers: {workers:?}\n{}", t.events_text());
        let sent = Instant::now();
        t.signal(Signal::SIGTERM);
        t.wait_events("SIGTERM at haproxy", 1, T, |e| e.pid == fake && e.rest == "SIGTERM");
        let st = t.wait_exit(T);
        let took = sent.elapsed();
        assert!(took >= Duration::from_secs(1), "the wrapper exited {took:?} after SIGTERM, before --stop-timeout 1");
        assert!(took < Duration::from_secs(4), "the wrapper took {took:?} to stop with --stop-timeout 1");
        assert!(t.log().contains("sending SIGKILL"), "no SIGKILL logged:\n{}", t.log());
        // The wrapper exits only once its children are reaped: no poll here.
        for p in std::iter::once(fake).chain(workers) {
            assert!(!alive(p), "haproxy {p} still alive after the wrapper exited");
        }
        t.assert_no_fake_left();
        assert_eq!(st.code(), Some(0), "exit status after the wrapper's own SIGKILL at --stop-timeout: {}", describe_status(&st));
    }
}

both_modes! {
    /// The serving haproxy killed by SIGKILL with `--max-restarts 0`: the wrapper exits 128+9.
    fn haproxy_killed_by_sigkill_exits_137(mode) {
        let mut t = Ctx::new("kill9");
        let cfg = t.write("h.cfg", "");
        let args = t.fake_args_with_options(mode, &cfg, &["--max-restarts", "0"]);
        t.start(&args);
        t.wait_ready(T);
        let fake = first_fake(&t, mode);
        kill(Pid::from_raw(fake), Signal::SIGKILL).unwrap();
        let st = t.wait_exit(T);
        assert_eq!(st.code(), Some(137), "{}", describe_status(&st));
        assert!(t.log().contains("--max-restarts 0"), "{}", t.log());
    }
}

both_modes! {
    /// The serving haproxy killed again and again: the wrapper starts it again at once, at most
    /// `--max-restarts` times within 60 s (same wrapper, a READY=1 each time, STATUS counting
    /// them); the next death ends the wrapper with its status, for systemd's Restart=.
    fn restarts_are_bounded_by_max_restarts(mode) {
        let mut t = Ctx::new("restarts");
        let cfg = t.write("h.cfg", "");
        let args = t.fake_args_with_options(mode, &cfg, &["--max-restarts", "2"]);
        t.start(&args);
        t.wait_ready(T);
        for n in 1..=2 {
            let serving = *t.ready_pids(mode.role()).last().expect("no ready fake");
            kill(Pid::from_raw(serving), Signal::SIGKILL).unwrap();
            t.wait_events("fake ready after the restart", n + 1, T, |e| e.what == "ready" && e.role == mode.role());
            t.notify().wait_count("READY=1 after the restart", n + 1, T, |m| m.is_ready());
            let status = t.notify().last_status().unwrap_or_default();
            assert!(status.contains(&format!("restarted after a crash: {n} (last: the serving ")), "STATUS: {status}");
        }
        let serving = *t.ready_pids(mode.role()).last().expect("no ready fake");
        kill(Pid::from_raw(serving), Signal::SIGKILL).unwrap();
        let st = t.wait_exit(T);
        assert_eq!(st.code(), Some(137), "{}", describe_status(&st));
        assert!(t.log().contains("stopping, after 2 restarts within 60 s"), "{}", t.log());
    }
}

both_modes! {
    /// SIGTTOU and SIGTTIN are passed on to haproxy.
    fn sigttou_sigttin_are_passed_on(mode) {
        let mut t = Ctx::new("ttou");
        t.start_fake_ready(mode, "");
        let fake = first_fake(&t, mode);
        t.signal(Signal::SIGTTOU);
        t.wait_events("SIGTTOU at haproxy", 1, T, |e| e.pid == fake && e.rest == "SIGTTOU");
        t.signal(Signal::SIGTTIN);
        t.wait_events("SIGTTIN at haproxy", 1, T, |e| e.pid == fake && e.rest == "SIGTTIN");
        t.assert_running();
    }
}
both_modes! {
    /// The serving haproxy exits by itself with 7: the wrapper exits 7.
    fn serving_haproxy_exit_status_is_passed_on(mode) {
        let mut t = Ctx::new("exit7");
        let die = t.p("die");
        t.start_fake_ready(mode, &format!("fake-exit-on-file {die} 7\n"));
        fs::write(&die, "").unwrap();
        let st = t.wait_exit(T);
        assert_eq!(st.code(), Some(7), "{}", describe_status(&st));
        t.assert_no_fake_left();
    }
}

both_modes! {
    /// A SIGUSR2 while haproxy is still starting is kept: one reload follows the start.
    fn sigusr2_during_start_reloads_after_ready(mode) {
        let mut t = Ctx::new("usr2start");
        let gate = t.p("gate");
        let cfg = t.write("h.cfg", &format!("fake-ready-delay-file {gate}\n"));
        let args = t.fake_args(mode, &cfg, &[]);
        t.start(&args);
        t.wait_events("fake start", 1, T, |e| e.what == "start" && e.role == mode.role());
        t.signal(Signal::SIGUSR2);
        // The wrapper's log line is the handshake: the signal was read while haproxy starts.
        let seen = poll_until(T, || t.log().contains("received during a start or reload").then_some(()));
        assert!(seen.is_some(), "the SIGUSR2 was not read during the start:\n{}", t.log());
        assert_eq!(t.notify().count(Msg::is_ready), 0, "READY=1 before haproxy was ready:\n{}", t.notify().dump());
        fs::write(&gate, "").unwrap();
        let ok = t.notify().wait_for(T, |m| notify_sequence(m) == "R L R");
        assert!(ok, "expected start, then one reload:\n{}", t.notify().dump());
        assert_reload_ok(&t.notify().last_status().unwrap_or_default());
    }
}

both_modes! {
    /// SIGTTOU and SIGTTIN reach the draining generation too (foreground: the wrapper signals
    /// each generation; master-worker: through the master, which has the old worker), not only
    /// the serving one. A handshake between the two: this test is about who gets them.
    fn sigttou_sigttin_reach_draining_generations(mode) {
        let mut t = Ctx::new("ttoudrain");
        t.start_fake_ready(mode, "fake-ignore-usr1\n");
        let old = newest_serving(&t, mode);
        assert_reload_ok(&t.reload(T));
        let new = newest_serving(&t, mode);
        assert_ne!(old, new);
        t.wait_events("soft-stop of the old generation", 1, T, |e| e.pid == old && e.rest == "SIGUSR1");
        assert!(alive(old), "the old generation should still be draining");
        for sig in [Signal::SIGTTOU, Signal::SIGTTIN] {
            let name = sig.as_str();
            t.signal(sig);
            t.wait_events(&format!("{name} at the draining generation {old}"), 1, T, |e| e.pid == old && e.rest == name);
            t.wait_events(&format!("{name} at the serving generation {new}"), 1, T, |e| e.pid == new && e.rest == name);
        }
        t.assert_running();
    }
}

both_modes! {
    /// SIGTTOU then SIGTTIN sent back to back, 20 times: haproxy always ends up resumed
    /// (SIGTTIN last). When both are pending together the signalfd hands out SIGTTIN first; the
    /// wrapper must still pass SIGTTOU on before it (seen: about half the rounds failed without).
    /// A stopped wrapper cannot force both pending: SIGCONT discards pending SIGTTOU/SIGTTIN.
    fn sigttou_then_sigttin_back_to_back_leave_haproxy_resumed(mode) {
        let mut t = Ctx::new("ttouttin");
        t.start_fake_ready(mode, "");
        // The process the wrapper signals: the foreground haproxy, or the master (which passes
        // them on to its workers itself, as fast as it handles them: haproxy's own business).
        let serving = match mode {
            Mode::Foreground => newest_serving(&t, mode),
            Mode::MasterWorker => t.ready_pids("master")[0],
        };
        for round in 1..=20 {
            t.signal(Signal::SIGTTOU);
            t.signal(Signal::SIGTTIN);
            let got = t.wait_events("SIGTTOU and SIGTTIN at haproxy", 2 * round, T, |e| e.pid == serving && (e.rest == "SIGTTOU" || e.rest == "SIGTTIN"));
            let order: Vec<&str> = got.iter().map(|e| e.rest.as_str()).collect();
            assert_eq!(order.last(), Some(&"SIGTTIN"), "round {round}: haproxy left paused: {order:?}");
            assert_eq!(order.iter().filter(|s| **s == "SIGTTOU").count(), round, "{order:?}");
        }
        t.assert_running();
    }
}

both_modes! {
    /// SIGUSR1 (graceful stop) with a haproxy that keeps draining: the wrapper waits as long as
    /// haproxy lives, well past --stop-timeout 1 (no SIGKILL: that is for SIGTERM), says
    /// STOPPING=1, and exits 0 once haproxy ends by itself.
    fn sigusr1_waits_for_a_haproxy_that_keeps_draining(mode) {
        let mut t = Ctx::new("usr1drain");
        let done = t.p("done");
        let cfg = t.write("h.cfg", &format!("fake-ignore-usr1\nfake-exit-on-file {done} 0\n"));
        t.start(&t.fake_args_with_options(mode, &cfg, &["--stop-timeout", "1"]));
        t.wait_ready(T);
        let fake = first_fake(&t, mode);
        let serving = newest_serving(&t, mode);
        t.signal(Signal::SIGUSR1);
        t.wait_events("SIGUSR1 at the serving haproxy", 1, T, |e| e.pid == serving && e.rest == "SIGUSR1");
        assert!(t.notify().wait_for(T, |m| m.iter().any(Msg::is_stopping)), "no STOPPING=1:\n{}", t.notify().dump());
        // Bounded negative check: for twice --stop-timeout, neither the wrapper nor haproxy ends.
        let ended = poll_until(Duration::from_secs(2), || t.try_exit().map(|st| describe_status(&st)).or_else(|| if alive(serving) { None } else { Some(format!("haproxy {serving} ended")) }));
        assert!(ended.is_none(), "graceful stop cut short: {ended:?}\n{}", t.log());
        assert!(alive(fake) && alive(serving));
        fs::write(&done, "").unwrap();
        let st = t.wait_exit(T);
        assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
        assert!(!t.log().contains("SIGKILL"), "{}", t.log());
        t.assert_no_fake_left();
    }
}
