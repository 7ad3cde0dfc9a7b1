//! What the wrapper tells systemd and the journal, with the fake haproxy (tests/fake-haproxy): the
//! STATUS= shapes (starting, reloading, serving with the draining pids, stopping), WATCHDOG=1
//! (interval, only while haproxy lives), running without systemd's NOTIFY_SOCKET, and haproxy's
//! lines re-emitted with journald priorities.
//!
//! Every test owns its temp dir, port and notify socket (`util::Ctx`), which kills what the test
//! spawned when it ends. No test sleeps to wait for something: each waits for a handshake (notify
//! datagram, fake haproxy event, HTTP answer) or polls with a deadline.

#[macro_use]
mod util;

use std::fs;
use std::thread;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

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
    let found = poll_until(T, || {
        if t.log().lines().any(|l| l.starts_with(prefix) && l.contains(needle)) {
            Some(())
        } else {
            None
        }
    });
    assert!(
        found.is_some(),
        "no log line starting with {prefix:?} containing {needle:?}:\n{}",
        t.log()
    );
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

/// The STATUS= word of each mode.
fn mode_word(mode: Mode) -> &'static str {
    match mode {
        Mode::Foreground => "foreground",
        Mode::MasterWorker => "master-worker",
    }
}

/// The "gen N serving (...)" part of STATUS= for the fake's current generation.
fn serving_part(t: &Ctx, mode: Mode, gen: u32) -> String {
    match mode {
        Mode::Foreground => format!("gen {gen} serving (pid {})", newest_serving(t, mode)),
        Mode::MasterWorker => format!(
            "gen {gen} serving (master {}, workers {})",
            first_fake(t, mode),
            newest_serving(t, mode)
        ),
    }
}

// ================================================================================================
// STATUS= shapes

both_modes! {
    /// "starting gen 1 (MODE)" while haproxy starts, "MODE; gen 1 serving (...); draining: none;
    /// last reload: none" with READY=1, "reloading gen 2 (MODE); gen 1 serving (...); ..." with
    /// RELOADING=1 (sent while the new generation is held back), then gen 2 serving.
    fn starting_and_reloading_statuses(mode) {
        let mut t = Ctx::new("statuses");
        let gate = t.p("gate");
        let cfg = t.write("h.cfg", &format!("fake-ready-delay-file {gate}\n"));
        let args = t.fake_args(mode, &cfg, &[]);
        t.start(&args);
        t.wait_events("fake start", 1, T, |e| e.what == "start" && e.role == mode.role());
        let starting = format!("starting gen 1 ({})", mode_word(mode));
        let seen = t.notify().wait_for(T, |m| m.iter().any(|x| x.get("STATUS") == Some(starting.as_str())));
        assert!(seen, "no STATUS={starting}:\n{}", t.notify().dump());
        assert_eq!(t.notify().count(Msg::is_ready), 0);
        fs::write(&gate, "").unwrap();
        let ready = t.wait_ready(T);
        let gen1 = serving_part(&t, mode, 1);
        assert_eq!(ready.get("STATUS"), Some(format!("{}; {gen1}; draining: none; last reload: none", mode_word(mode)).as_str()), "{:?}", ready.text);

        fs::remove_file(&gate).unwrap();
        t.signal(Signal::SIGUSR2);
        t.notify().wait_count("RELOADING=1", 1, T, Msg::is_reloading);
        let reloading = t.notify().messages().into_iter().find(Msg::is_reloading).unwrap();
        assert_eq!(
            reloading.get("STATUS"),
            Some(format!("reloading gen 2 ({}); {gen1}; draining: none; last reload: none", mode_word(mode)).as_str()),
            "{:?}",
            reloading.text
        );
        fs::write(&gate, "").unwrap();
        t.notify().wait_count("READY=1", 2, T, Msg::is_ready);
        let last = t.notify().messages().into_iter().rev().find(Msg::is_ready).unwrap();
        let gen2 = serving_part(&t, mode, 2);
        let status = last.get("STATUS").unwrap_or_default().to_string();
        assert!(status.starts_with(&format!("{}; {gen2}; draining: ", mode_word(mode))), "{status:?}");
        assert!(has_shape(&status[status.find("; last reload").unwrap()..], "; last reload: ok in # ms"), "{status:?}");
    }
}

both_modes! {
    /// After a reload the STATUS= lists the old generation (foreground: its haproxy; master-worker:
    /// its worker) as draining while it lives, and "draining: none" once it has ended.
    fn draining_pids_are_listed_until_they_end(mode) {
        let mut t = Ctx::new("draining");
        let done = t.p("done");
        // Generation 1 keeps draining after its soft-stop, until `done` exists.
        t.start_fake_ready(mode, &format!("fake-ignore-usr1\nfake-exit-on-file {done} 0\n"));
        let old = newest_serving(&t, mode);
        t.replace("h.cfg", "");
        let status = t.reload(T);
        let new = newest_serving(&t, mode);
        assert_ne!(old, new);
        let gen2 = serving_part(&t, mode, 2);
        assert_shape(&status, &format!("{}; {gen2}; draining: 1 ({old}); last reload: ok in # ms", mode_word(mode)));
        t.wait_events("soft-stop of the old generation", 1, T, |e| e.pid == old && e.rest == "SIGUSR1");
        assert!(alive(old), "the old generation should still be draining");
        fs::write(&done, "").unwrap();
        let none = format!("{}; {gen2}; draining: none; last reload: ok in # ms", mode_word(mode));
        let updated = t.notify().wait_for(T, |m| m.last().and_then(|x| x.get("STATUS")).map_or(false, |s| has_shape(s, &none)));
        assert!(updated, "no STATUS with draining: none after {old} ended:\n{}", t.notify().dump());
        assert!(!alive(old));
    }
}

both_modes! {
    /// A stop sends exactly "STOPPING=1" and "STATUS=stopping", the last STATUS= of the service.
    fn stopping_status(mode) {
        let mut t = Ctx::new("stopstatus");
        t.start_fake_ready(mode, "");
        stop_and_expect_0(&mut t, T);
        let msgs = t.notify().messages();
        let stopping: Vec<&Msg> = msgs.iter().filter(|m| m.is_stopping()).collect();
        assert_eq!(stopping.len(), 1, "{}", t.notify().dump());
        let lines: Vec<&str> = stopping[0].text.lines().collect();
        assert_eq!(lines, vec!["STOPPING=1", "STATUS=stopping"], "{:?}", stopping[0].text);
        assert_eq!(t.notify().last_status().as_deref(), Some("stopping"), "{}", t.notify().dump());
    }
}

// ================================================================================================
// WATCHDOG=1 at the configured interval, only while haproxy lives

both_modes! {
    /// WATCHDOG_USEC=1000000: WATCHDOG=1 every 500 ms (WATCHDOG_USEC/2): no gap shorter than
    /// 400 ms or longer than the 1 s systemd allows, the median gap within 400-750 ms.
    fn watchdog_every_half_interval(mode) {
        let mut t = Ctx::new("wdinterval");
        let cfg = t.write("h.cfg", "");
        let args = t.fake_args(mode, &cfg, &[]);
        let cmd = t.command_with_watchdog(&args, 1_000_000);
        t.spawn(cmd);
        t.wait_ready(T);
        let is_wd = |m: &Msg| m.has("WATCHDOG=1");
        let n0 = t.notify().count(is_wd);
        t.notify().wait_count("WATCHDOG=1", n0 + 6, T, is_wd);
        let at: Vec<u64> = t.notify().messages().iter().filter(|m| is_wd(m)).map(|m| m.recv_usec).collect();
        let mut gaps: Vec<u64> = at.windows(2).map(|w| w[1] - w[0]).collect();
        for g in &gaps {
            assert!((400_000..=1_000_000).contains(g), "WATCHDOG=1 gap of {g} us with WATCHDOG_USEC=1000000; gaps {gaps:?}");
        }
        gaps.sort_unstable();
        let median = gaps[gaps.len() / 2];
        assert!((400_000..=750_000).contains(&median), "median WATCHDOG=1 gap {median} us, expected about 500000; gaps {gaps:?}");
        assert_all_from_wrapper(&t);
    }
}

both_modes! {
    /// No WATCHDOG=1 once the serving haproxy (foreground process, master) is dead, even though the
    /// wrapper's next ping is due: the wrapper is frozen (SIGSTOP) while haproxy is killed and an
    /// interval passes, then let go; it exits 137 without another ping.
    fn watchdog_only_while_haproxy_lives(mode) {
        let mut t = Ctx::new("wdlives");
        let cfg = t.write("h.cfg", "");
        // --max-restarts 0: haproxy stays dead (the wrapper would start it again at once).
        let args = t.fake_args_with_options(mode, &cfg, &["--max-restarts", "0"]);
        let cmd = t.command_with_watchdog(&args, 200_000);
        t.spawn(cmd);
        t.wait_ready(T);
        let is_wd = |m: &Msg| m.has("WATCHDOG=1");
        t.notify().wait_count("WATCHDOG=1", 2, T, is_wd);
        let fake = first_fake(&t, mode);
        t.signal(Signal::SIGSTOP);
        poll_until(T, || proc_stat(t.pid).filter(|p| p.state == 'T')).expect("wrapper not stopped");
        t.notify().sync();
        let before = t.notify().count(is_wd);
        kill(Pid::from_raw(fake), Signal::SIGKILL).unwrap();
        poll_until(T, || proc_stat(fake).filter(|p| p.state == 'Z')).expect("haproxy not dead");
        // The wrapper's next ping must fall due while haproxy is dead: time itself is under test.
        thread::sleep(Duration::from_millis(300));
        t.signal(Signal::SIGCONT);
        let st = t.wait_exit(T);
        assert_eq!(st.code(), Some(137), "{}", describe_status(&st));
        assert_eq!(t.notify().count(is_wd), before, "WATCHDOG=1 after haproxy died:\n{}", t.notify().dump());
    }
}
