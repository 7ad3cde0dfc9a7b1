//! Integration tests of haproxy-systemd-wrapper against docs/DESIGN.md.
//!
//! One test binary, one module per area. Most areas drive the wrapper with the fake haproxy
//! (tests/fake-haproxy, `--haproxy PATH`) to reach signal paths, races and exit statuses
//! deterministically; `real_haproxy` runs /usr/sbin/haproxy in both modes. Every test owns its
//! temp dir, port and notify socket (`util::Ctx`), which kills what the test spawned when it ends.
//! No test sleeps to wait for something: each waits for a handshake (notify datagram, fake haproxy
//! event, HTTP answer) or polls with a deadline.

mod util;

use std::fs;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use util::*;

/// Generates `mod NAME { fn foreground(); fn master_worker(); }` running the same body in both
/// haproxy modes.
macro_rules! both_modes {
    ($(#[$doc:meta])* fn $name:ident($mode:ident) $body:block) => {
        $(#[$doc])*
        mod $name {
            use super::*;
            fn run($mode: Mode) $body
            #[test]
            fn foreground() {
                run(Mode::Foreground)
            }
            #[test]
            fn master_worker() {
                run(Mode::MasterWorker)
            }
        }
    };
}

/// The fake haproxy pid the wrapper started for this mode (foreground process or master), the
/// first one that became ready.
fn first_fake(t: &Ctx, mode: Mode) -> i32 {
    t.wait_events("fake ready", 1, T, |e| e.what == "ready" && e.role == mode.role())[0].pid
}

/// The serving generation's fake process in foreground mode (newest ready fg), or the newest
/// worker in master-worker mode.
fn newest_serving(t: &Ctx, mode: Mode) -> i32 {
    *t.ready_pids(mode.serving_role()).last().expect("no ready fake")
}

/// The arguments a fake haproxy got (its report's "arg X" lines).
fn report_argv(report: &str) -> Vec<String> {
    report.lines().filter_map(|l| l.strip_prefix("arg ")).map(str::to_string).collect()
}

/// The pids given to a fake after `-sf`/`-st`.
fn sf_pids(argv: &[String]) -> Vec<i32> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < argv.len() {
        if argv[i] == "-sf" || argv[i] == "-st" {
            while i + 1 < argv.len() && argv[i + 1].parse::<i32>().is_ok() {
                i += 1;
                out.push(argv[i].parse().unwrap());
            }
        }
        i += 1;
    }
    out
}

/// Whether `s` contains haproxy's "(1234) :" pid tag.
fn has_pid_tag(s: &str) -> bool {
    s.match_indices('(').any(|(i, _)| {
        let rest = &s[i + 1..];
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        digits > 0 && rest[digits..].starts_with(") :")
    })
}

fn assert_reload_ok(status: &str) {
    assert!(status.contains("last reload: ok"), "STATUS does not say the reload succeeded: {status:?}");
}

fn assert_all_from_wrapper(t: &Ctx) {
    for m in t.notify().messages() {
        assert_eq!(m.pid, t.pid, "notify datagram from pid {} (wrapper is {}): {:?}", m.pid, t.pid, m.text);
    }
}

/// Every RELOADING=1 carries MONOTONIC_USEC = CLOCK_MONOTONIC at the time it was sent.
fn assert_monotonic_usec(t: &Ctx) {
    for m in t.notify().messages().iter().filter(|m| m.is_reloading()) {
        let v: u64 = m
            .get("MONOTONIC_USEC")
            .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {:?}", m.text))
            .parse()
            .unwrap_or_else(|_| panic!("MONOTONIC_USEC not a number: {:?}", m.text));
        assert!(v <= m.recv_usec && m.recv_usec - v < 10_000_000, "MONOTONIC_USEC={v} but received at {}", m.recv_usec);
    }
}

fn stop_and_expect_0(t: &mut Ctx, timeout: Duration) {
    t.signal(Signal::SIGTERM);
    let st = t.wait_exit(timeout);
    assert_eq!(st.code(), Some(0), "wrapper after SIGTERM: {}", describe_status(&st));
}

// ================================================================================================
/// Command line: --help/--version, usage errors, haproxy not found / not executable, -c and -v
/// handed straight to haproxy.
mod cli {
    use super::*;

    /// Runs the wrapper to completion with stdout and stderr captured separately.
    fn run_split(t: &Ctx, args: &[&str]) -> (std::process::ExitStatus, String, String) {
        let mut cmd = t.command(args);
        let out = fs::File::create(t.path("out")).unwrap();
        let err = fs::File::create(t.path("err")).unwrap();
        cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err));
        let mut child = cmd.spawn().expect("spawn wrapper");
        let st = poll_until(T, || child.try_wait().unwrap());
        let st = match st {
            Some(st) => st,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("wrapper {args:?} did not exit within {T:?}");
            }
        };
        (st, fs::read_to_string(t.path("out")).unwrap(), fs::read_to_string(t.path("err")).unwrap())
    }

    #[test]
    fn help_exits_0() {
        let t = Ctx::new("help");
        let (st, out, _) = run_split(&t, &["--help"]);
        assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
        assert!(out.contains("--haproxy"), "--help does not mention --haproxy:\n{out}");
        assert!(out.contains("--ready-timeout") && out.contains("--stop-timeout"), "--help:\n{out}");
    }

    #[test]
    fn version_exits_0() {
        let t = Ctx::new("version");
        let (st, out, _) = run_split(&t, &["--version"]);
        assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
        assert!(out.contains(env!("CARGO_PKG_VERSION")), "--version does not print the version:\n{out}");
    }

    #[test]
    fn usage_errors_exit_64_with_one_line_and_start_nothing() {
        let t = Ctx::new("usage");
        let cfg = t.write("h.cfg", "");
        let cases: Vec<Vec<&str>> = vec![
            vec!["--haproxy", FAKE_HAPROXY, "-f", &cfg, "-p"],
            vec!["--haproxy", FAKE_HAPROXY, "-Ws", "-f", &cfg, "-p"],
            vec!["--haproxy", FAKE_HAPROXY, "-f"],
            vec!["--haproxy", FAKE_HAPROXY, "-f", &cfg, "-x"],
            vec!["--bogus", "--haproxy", FAKE_HAPROXY, "-f", &cfg],
            vec!["--haproxy"],
            vec!["--haproxy", FAKE_HAPROXY, "--ready-timeout", "soon", "-f", &cfg],
            vec!["--haproxy", FAKE_HAPROXY, "--stop-timeout"],
        ];
        let mut failures = Vec::new();
        for args in &cases {
            let (st, _out, err) = run_split(&t, args);
            let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
            if st.code() != Some(64) || lines.len() != 1 {
                failures.push(format!("{args:?}: {} with stderr {err:?}", describe_status(&st)));
            }
        }
        t.notify().sync();
        assert!(t.events().is_empty(), "a usage error started haproxy:\n{}", t.events_text());
        assert!(t.notify().messages().is_empty(), "a usage error sent notify messages:\n{}", t.notify().dump());
        assert!(failures.is_empty(), "expected exit 64 and exactly one stderr line:\n{}", failures.join("\n"));
    }

    #[test]
    fn haproxy_not_found_exits_127() {
        let mut t = Ctx::new("notfound");
        let cfg = t.write("h.cfg", "");
        let missing = t.p("no-such-haproxy");
        let st = t.run_to_exit(&["--haproxy", &missing, "-f", &cfg], T);
        assert_eq!(st.code(), Some(127), "{}", describe_status(&st));
        assert!(!t.log().trim().is_empty(), "no error message");
        assert_eq!(t.notify().count(Msg::is_ready), 0, "READY=1 sent:\n{}", t.notify().dump());
    }

    #[test]
    fn unusable_reexec_state_exits_70_and_starts_nothing() {
        // The state variable marks a wrapper re-executed by itself; a damaged one (or one that
        // belongs to another pid) is an internal error, reported in one line, exit 70.
        for state in ["garbage", "v=1;pid=1;exe=2f;relay=3,4"] {
            let mut t = Ctx::new("badstate");
            let cfg = t.write("h.cfg", "");
            let mut cmd = t.command(&t.fake_args(Mode::Foreground, &cfg, &[]));
            cmd.env("HAPROXY_SYSTEMD_WRAPPER_STATE", state);
            t.spawn(cmd);
            let st = t.wait_exit(T);
            assert_eq!(st.code(), Some(70), "{}", describe_status(&st));
            let log = t.log();
            assert_eq!(log.trim().lines().count(), 1, "not one line:\n{}", log);
            assert!(log.contains("re-exec"), "no error message naming the re-exec:\n{}", log);
            assert_eq!(t.notify().count(Msg::is_ready), 0, "READY=1 sent:\n{}", t.notify().dump());
            t.assert_no_fake_left();
        }
    }

    #[test]
    fn haproxy_not_executable_exits_126() {
        let mut t = Ctx::new("notexec");
        let cfg = t.write("h.cfg", "");
        let prog = t.write("haproxy", "#!/bin/sh\nexit 0\n");
        set_mode(Path::new(&prog), 0o644);
        let st = t.run_to_exit(&["--haproxy", &prog, "-f", &cfg], T);
        assert_eq!(st.code(), Some(126), "{}", describe_status(&st));
        assert!(!t.log().trim().is_empty(), "no error message");
        assert_eq!(t.notify().count(Msg::is_ready), 0, "READY=1 sent:\n{}", t.notify().dump());
    }

    #[test]
    fn check_mode_execs_haproxy() {
        let mut t = Ctx::new("check");
        let cfg = t.write("h.cfg", "fake-marker checked\n");
        let st = t.run_to_exit(&["--haproxy", FAKE_HAPROXY, "-c", "-f", &cfg], T);
        assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
        let ev = t.events();
        let starts: Vec<&Event> = ev.iter().filter(|e| e.what == "start").collect();
        assert_eq!(starts.len(), 1, "events:\n{}", t.events_text());
        assert_eq!(starts[0].role, "check");
        assert_eq!(starts[0].pid, t.pid, "-c must exec haproxy in place of the wrapper (same pid)");
        let argv = report_argv(&t.report(t.pid));
        assert!(argv.iter().any(|a| a == "-c"), "argv {argv:?}");
        assert!(!argv.iter().any(|a| a == "-db" || a == "-Ws"), "-c must be passed unchanged: {argv:?}");
        assert!(t.notify().messages().is_empty(), "notify messages in -c mode:\n{}", t.notify().dump());
    }

    #[test]
    fn check_mode_passes_the_exit_status() {
        let mut t = Ctx::new("checkbad");
        let cfg = t.write("h.cfg", "fake-bad\n");
        let st = t.run_to_exit(&["--haproxy", FAKE_HAPROXY, "-c", "-f", &cfg], T);
        assert_eq!(st.code(), Some(1), "{}", describe_status(&st));
    }

    #[test]
    fn version_of_haproxy_execs_haproxy() {
        let mut t = Ctx::new("hapver");
        let st = t.run_to_exit(&["--haproxy", FAKE_HAPROXY, "-vv"], T);
        assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
        assert!(t.log().contains("HAProxy version"), "log:\n{}", t.log());
        let starts: Vec<Event> = t.events().into_iter().filter(|e| e.what == "start").collect();
        assert_eq!(starts.len(), 1);
        assert_eq!(starts[0].pid, t.pid, "-vv must exec haproxy in place of the wrapper");
    }
}

// ================================================================================================
/// Start and stop with the fake haproxy: readiness handshake, exit statuses, stop signals.
mod start_stop {
    use super::*;

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
        /// --stop-timeout: a haproxy that ignores SIGTERM is SIGKILLed, the wrapper still exits.
        fn stop_timeout_kills_stuck_haproxy(mode) {
            let mut t = Ctx::new("stoptimeout");
            let cfg = t.write("h.cfg", "fake-ignore-term\n");
            t.start(&t.fake_args_with_options(mode, &cfg, &["--stop-timeout", "1"]));
            t.wait_ready(T);
            let fake = first_fake(&t, mode);
            t.signal(Signal::SIGTERM);
            t.wait_events("SIGTERM at haproxy", 1, T, |e| e.pid == fake && e.rest == "SIGTERM");
            t.wait_exit(T);
            poll_until(Duration::from_secs(2), || if alive(fake) { None } else { Some(()) });
            assert!(!alive(fake), "haproxy {fake} survived --stop-timeout");
        }
    }

    both_modes! {
        /// The serving haproxy killed by SIGKILL: the wrapper exits 128+9.
        fn haproxy_killed_by_sigkill_exits_137(mode) {
            let mut t = Ctx::new("kill9");
            t.start_fake_ready(mode, "");
            let fake = first_fake(&t, mode);
            kill(Pid::from_raw(fake), Signal::SIGKILL).unwrap();
            let st = t.wait_exit(T);
            assert_eq!(st.code(), Some(137), "{}", describe_status(&st));
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

}

// ================================================================================================
/// What children inherit: signal mask and dispositions, environment, file descriptors; and the
/// wrapper's own descriptors across reloads (re-execs).
mod child_state {
    use super::*;

    /// The report of the fake started directly by the test: the baseline of a "normal" start.
    fn baseline_report(t: &Ctx) -> String {
        let dir = t.path("baseline");
        fs::create_dir_all(&dir).unwrap();
        let out = Command::new(FAKE_HAPROXY)
            .arg("-v")
            .env("FAKE_REPORT_DIR", &dir)
            .stdin(Stdio::null())
            .output()
            .expect("run fake haproxy directly");
        assert!(out.status.success());
        let entry = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(".report"))
            .expect("baseline report");
        fs::read_to_string(entry.path()).unwrap()
    }

    fn report_fds(report: &str) -> Vec<(u32, String)> {
        report
            .lines()
            .filter_map(|l| l.strip_prefix("fd "))
            .filter_map(|l| {
                let (n, target) = l.split_once(' ')?;
                Some((n.parse().ok()?, target.to_string()))
            })
            .collect()
    }

    /// The fds Python opens by itself: those of the baseline that it did not inherit from the
    /// test process (whatever the test runner leaked to us is not the wrapper's doing, and the
    /// wrapper should not pass it on either).
    fn python_own_fds(baseline: &str) -> Vec<u32> {
        report_fds(baseline)
            .into_iter()
            .filter(|(n, target)| *n > 2 && fs::read_link(format!("/proc/self/fd/{n}")).map_or(true, |t| t.to_string_lossy() != target.as_str()))
            .map(|(n, _)| n)
            .collect()
    }

    fn check_child(t: &Ctx, mode: Mode, pid: i32, baseline: &str) {
        let rep = t.report(pid);
        assert_eq!(sig_field(&rep, "SigBlk"), 0, "child {pid} starts with blocked signals:\n{rep}");
        let ign = sig_field(&rep, "SigIgn");
        let base = sig_field(baseline, "SigIgn");
        assert_eq!(ign & !base, 0, "child {pid} ignores signals a normal start does not (SigIgn {ign:016x} vs {base:016x}):\n{rep}");
        for var in ["WATCHDOG_USEC", "WATCHDOG_PID", "HAPROXY_SYSTEMD_WRAPPER_STATE"] {
            assert!(!rep.contains(&format!("env {var}=")), "child {pid} got {var}:\n{rep}");
        }
        let ours = t.notify().path.display().to_string();
        match mode {
            Mode::Foreground => assert!(!rep.contains("env NOTIFY_SOCKET="), "child {pid} got NOTIFY_SOCKET:\n{rep}"),
            Mode::MasterWorker => {
                assert!(!rep.contains(&format!("env NOTIFY_SOCKET={ours}")), "master got systemd's NOTIFY_SOCKET:\n{rep}");
                assert!(rep.contains("env NOTIFY_SOCKET=@"), "master has no private (abstract) NOTIFY_SOCKET:\n{rep}");
            }
        }
        let allowed = python_own_fds(baseline);
        let extra: Vec<u32> = report_fds(&rep).into_iter().map(|(n, _)| n).filter(|fd| *fd > 2 && !allowed.contains(fd)).collect();
        assert!(extra.is_empty(), "child {pid} inherited fds {extra:?}:\n{rep}");
    }

    both_modes! {
        /// Empty signal mask, no extra ignored signals, no systemd/wrapper variables, only fds 0-2,
        /// for the first generation and for a generation started after a reload (re-exec).
        fn children_start_clean(mode) {
            let mut t = Ctx::new("clean");
            let baseline = baseline_report(&t);
            let cfg = t.write("h.cfg", "");
            let args = t.fake_args(mode, &cfg, &[]);
            let cmd = t.command_with_watchdog(&args, 60_000_000);
            t.spawn(cmd);
            t.wait_ready(T);
            let first = first_fake(&t, mode);
            check_child(&t, mode, first, &baseline);
            assert_reload_ok(&t.reload(T));
            if mode == Mode::Foreground {
                let second = newest_serving(&t, mode);
                assert_ne!(first, second);
                check_child(&t, mode, second, &baseline);
            }
        }
    }

    both_modes! {
        /// The wrapper's own fd count is the same after 10 reloads (re-execs) as before.
        fn wrapper_fd_count_stable_over_10_reloads(mode) {
            let mut t = Ctx::new("fds");
            t.start_fake_ready(mode, "");
            let before = fd_count(t.pid);
            let before_list = fd_list(t.pid);
            for _ in 0..10 {
                assert_reload_ok(&t.reload(T));
            }
            // Old generations drain away by themselves; their pipes close when they are gone.
            let settled = poll_until(Duration::from_secs(5), || if fd_count(t.pid) <= before { Some(()) } else { None });
            assert!(settled.is_some(), "wrapper fds: {before} before, {} after 10 reloads\nbefore:\n{before_list}after:\n{}", fd_count(t.pid), fd_list(t.pid));
        }
    }
    #[test]
    fn children_start_clean_when_the_wrapper_inherits_a_dirty_signal_state() {
        use nix::sys::signal::{sigaction, sigprocmask, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow};
        use std::os::unix::process::CommandExt;
        let mut t = Ctx::new("dirty");
        let baseline = baseline_report(&t);
        let cfg = t.write("h.cfg", "");
        let args = t.fake_args(Mode::Foreground, &cfg, &[]);
        let mut cmd = t.command(&args);
        // The wrapper also inherits a stray descriptor (fd 9, no FD_CLOEXEC): not haproxy's business.
        let stray = fs::File::open("/dev/null").unwrap();
        let stray_fd = std::os::unix::io::AsRawFd::as_raw_fd(&stray);
        // SAFETY: only async-signal-safe calls (dup2, sigaction, sigprocmask) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::dup2(stray_fd, 9)?;
                let ign = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
                let _ = sigaction(Signal::SIGQUIT, &ign);
                let _ = sigaction(Signal::SIGWINCH, &ign);
                let mut set = SigSet::empty();
                set.add(Signal::SIGALRM);
                set.add(Signal::SIGQUIT);
                let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
                Ok(())
            });
        }
        t.spawn(cmd);
        drop(stray);
        t.wait_ready(T);
        let first = first_fake(&t, Mode::Foreground);
        check_child(&t, Mode::Foreground, first, &baseline);
    }

    both_modes! {
        /// The wrapper is a child subreaper: a process haproxy left behind (double fork) is
        /// reparented to the wrapper and does not outlive it.
        fn orphans_do_not_outlive_the_wrapper(mode) {
            let mut t = Ctx::new("orphan");
            let opid = t.p("orphan.pid");
            t.start_fake_ready(mode, &format!("fake-orphan {opid}\n"));
            let orphan: i32 = poll_until(T, || fs::read_to_string(&opid).ok().and_then(|s| s.trim().parse().ok()))
                .expect("the fake did not leave its orphan");
            t.seen.insert(orphan);
            let reparented = poll_until(T, || proc_stat(orphan).filter(|p| p.ppid == t.pid));
            assert!(reparented.is_some(), "orphan {orphan} not reparented to the wrapper (ppid {:?}): no child subreaper", proc_stat(orphan).map(|p| p.ppid));
            stop_and_expect_0(&mut t, T);
            let gone = poll_until(Duration::from_secs(2), || if alive(orphan) { None } else { Some(()) });
            assert!(gone.is_some(), "orphan {orphan} outlived the wrapper");
        }
    }
}

// ================================================================================================
/// Reloads with the fake haproxy: sequence, coalescing, signals during the re-exec, failures,
/// zombies, the haproxy command line per generation.
mod reload {
    use super::*;

    both_modes! {
        /// Three reloads: same wrapper pid, each RELOADING=1 (MONOTONIC_USEC) ... READY=1, a new
        /// generation each time, then STOPPING=1.
        fn reload_sequence(mode) {
            let mut t = Ctx::new("reloadseq");
            t.start_fake_ready(mode, "");
            let mut serving = vec![newest_serving(&t, mode)];
            for gen in 2..=4 {
                let status = t.reload(T);
                assert_reload_ok(&status);
                assert!(status.contains(&format!("gen {gen} serving")), "STATUS after reload {}: {status:?}", gen - 1);
                let now = newest_serving(&t, mode);
                assert!(!serving.contains(&now), "reload did not start a new generation");
                serving.push(now);
                assert_eq!(exe_of(t.pid).as_deref(), Some(Path::new(WRAPPER)), "wrapper pid {} is no longer the wrapper", t.pid);
            }
            if mode == Mode::MasterWorker {
                assert_eq!(t.ready_pids("master").len(), 1, "master-worker reload must not start a new master");
            }
            stop_and_expect_0(&mut t, T);
            assert_eq!(notify_sequence(&t.notify().messages()), "R L R L R L R S");
            assert_all_from_wrapper(&t);
            assert_monotonic_usec(&t);
            t.assert_no_fake_left();
        }
    }

    both_modes! {
        /// Two SIGUSR2 1 ms apart: one or two reloads, never overlapping, each ending in READY=1.
        fn two_sigusr2_1ms_apart(mode) {
            let mut t = Ctx::new("usr2x2");
            t.start_fake_ready(mode, "");
            t.signal(Signal::SIGUSR2);
            thread::sleep(Duration::from_millis(1)); // the spacing under test, not a wait
            t.signal(Signal::SIGUSR2);
            let done = |m: &[Msg]| {
                let s = notify_sequence(m);
                s.ends_with('R') && s.contains('L')
            };
            assert!(t.notify().wait_for(T, done), "no reload completed:\n{}", t.notify().dump());
            // A coalesced follow-up reload, if any, starts right after: give it a bounded chance.
            t.notify().wait_for(Duration::from_secs(2), |m| notify_sequence(m).matches('L').count() >= 2);
            assert!(t.notify().wait_for(T, done), "second reload did not complete:\n{}", t.notify().dump());
            assert_eq!(exe_of(t.pid).as_deref(), Some(Path::new(WRAPPER)));
            stop_and_expect_0(&mut t, T);
            let seq = notify_sequence(&t.notify().messages());
            assert!(seq == "R L R S" || seq == "R L R L R S", "unexpected notify sequence {seq:?}:\n{}", t.notify().dump());
            assert_all_from_wrapper(&t);
            assert_reload_ok(t.notify().messages().iter().rev().filter_map(|m| m.get("STATUS")).nth(1).unwrap_or_default());
        }
    }

    both_modes! {
        /// A SIGUSR2 sent right after another (config changed in between) is not lost: the last
        /// config is eventually served.
        fn sigusr2_right_after_sigusr2_is_not_lost(mode) {
            let mut t = Ctx::new("usr2lost");
            t.start_fake_ready(mode, "fake-marker A\n");
            t.replace("h.cfg", "fake-marker B\n");
            t.signal(Signal::SIGUSR2);
            t.replace("h.cfg", "fake-marker C\n");
            t.signal(Signal::SIGUSR2);
            let role = mode.serving_role();
            t.wait_events("a generation with the last config", 1, T, |e| e.what == "ready" && e.role == role && e.rest == "C");
            assert!(
                t.notify().wait_for(T, |m| {
                    let s = notify_sequence(m);
                    s.ends_with('R') && s.contains('L') && t.ready_pids(role).last().map_or(false, |p| t.events().iter().any(|e| e.pid == *p && e.rest == "C"))
                }),
                "the reload of the last config did not complete:\n{}",
                t.notify().dump()
            );
            let seq = notify_sequence(&t.notify().messages());
            assert!(!seq.contains("L L"), "overlapping reloads: {seq}");
        }
    }

    both_modes! {
        /// A SIGUSR2 arriving while a reload is in progress (after RELOADING=1) causes exactly one
        /// follow-up reload.
        fn sigusr2_during_reload_gives_one_followup(mode) {
            let mut t = Ctx::new("usr2during");
            t.start_fake_ready(mode, "fake-marker A\n");
            t.replace("h.cfg", "fake-marker B\n");
            t.signal(Signal::SIGUSR2);
            t.notify().wait_count("RELOADING=1", 1, T, Msg::is_reloading);
            t.replace("h.cfg", "fake-marker C\n");
            t.signal(Signal::SIGUSR2);
            let ok = t.notify().wait_for(T, |m| notify_sequence(m) == "R L R L R");
            assert!(ok, "expected two complete reloads:\n{}", t.notify().dump());
            let role = mode.serving_role();
            t.wait_events("a generation with the last config", 1, T, |e| e.what == "ready" && e.role == role && e.rest == "C");
            let status = t.notify().last_status().unwrap_or_default();
            assert_reload_ok(&status);
            assert!(status.contains("gen 3 serving"), "{status:?}");
        }
    }

    both_modes! {
        /// SIGTERM right after SIGUSR2 is not lost: the wrapper stops and exits 0.
        fn sigterm_right_after_sigusr2_stops(mode) {
            let mut t = Ctx::new("usr2term");
            t.start_fake_ready(mode, "");
            t.signal(Signal::SIGUSR2);
            t.signal(Signal::SIGTERM);
            let st = t.wait_exit(T);
            assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
            assert!(t.notify().messages().iter().any(Msg::is_stopping), "no STOPPING=1:\n{}", t.notify().dump());
            t.assert_no_fake_left();
        }
    }

    both_modes! {
        /// After reloads no child of the wrapper stays a zombie.
        fn no_zombies_after_reloads(mode) {
            let mut t = Ctx::new("zombies");
            t.start_fake_ready(mode, "");
            for _ in 0..5 {
                assert_reload_ok(&t.reload(T));
            }
            let role = mode.serving_role();
            let old: Vec<i32> = t.ready_pids(role).into_iter().rev().skip(1).collect();
            t.wait_events("old generations exit", old.len(), T, |e| e.what == "exit" && old.contains(&e.pid));
            let clean = poll_until(Duration::from_secs(5), || if zombie_children(t.pid).is_empty() { Some(()) } else { None });
            assert!(clean.is_some(), "zombie children of the wrapper: {:?}", zombie_children(t.pid));
        }
    }

    both_modes! {
        /// A reload with a broken config fails (STATUS says so with haproxy's alert), the old
        /// generation keeps running, and the next reload with a fixed config succeeds.
        fn failed_reload_keeps_old_generation(mode) {
            let mut t = Ctx::new("badreload");
            t.start_fake_ready(mode, "");
            let old = newest_serving(&t, mode);
            t.replace("h.cfg", "fake-bad\n");
            let status = t.reload(T);
            assert!(status.contains("last reload: failed"), "STATUS after a failed reload: {status:?}");
            assert!(status.contains("unknown keyword 'fake-bad'"), "STATUS does not give haproxy's alert: {status:?}");
            assert!(!status.contains("[ALERT]"), "the alert tag must be stripped: {status:?}");
            assert!(!has_pid_tag(&status), "the alert's pid must be stripped: {status:?}");
            assert!(status.contains("gen 1 serving"), "{status:?}");
            assert!(alive(old), "old generation {old} died after a failed reload");
            assert_eq!(newest_serving(&t, mode), old);
            t.assert_running();
            t.replace("h.cfg", "");
            let status = t.reload(T);
            assert_reload_ok(&status);
            assert_ne!(newest_serving(&t, mode), old);
            stop_and_expect_0(&mut t, T);
            assert_eq!(notify_sequence(&t.notify().messages()), "R L R L R S");
        }
    }

    #[test]
    fn failed_reload_without_alert_gives_the_exit_status() {
        let mut t = Ctx::new("badquiet");
        let cfg = t.write("h.cfg", "");
        let args = t.fake_args(Mode::Foreground, &cfg, &[]);
        t.start(&args);
        t.wait_ready(T);
        let old = newest_serving(&t, Mode::Foreground);
        t.replace("h.cfg", "fake-quiet-exit 5\n");
        let status = t.reload(T);
        assert!(status.contains("last reload: failed"), "{status:?}");
        assert!(status.contains("haproxy exited with status 5"), "{status:?}");
        assert!(alive(old));
        t.assert_running();
    }

    #[test]
    fn failed_reload_status_gives_the_alert() {
        let mut t = Ctx::new("badexit");
        let cfg = t.write("h.cfg", "");
        let args = t.fake_args(Mode::Foreground, &cfg, &[]);
        t.start(&args);
        t.wait_ready(T);
        let old = newest_serving(&t, Mode::Foreground);
        // fake-exit prints an [ALERT] "fake-exit 5" and exits 5.
        t.replace("h.cfg", "fake-exit 5\n");
        let status = t.reload(T);
        assert!(status.contains("last reload: failed"), "{status:?}");
        assert!(status.contains("fake-exit 5") || status.contains("haproxy exited with status 5"), "{status:?}");
        assert!(alive(old));
        t.assert_running();
    }

    #[test]
    fn foreground_command_line() {
        let mut t = Ctx::new("fgargv");
        let cfg = t.write("h.cfg", "");
        let pidf = t.p("h.pid");
        let args = t.fake_args(Mode::Foreground, &cfg, &["-D", "-p", &pidf, "-S", "/nonexistent/master.sock", "-sf", "999999"]);
        t.start(&args);
        t.wait_ready(T);
        let g1 = first_fake(&t, Mode::Foreground);
        let argv1 = report_argv(&t.report(g1));
        assert!(argv1.iter().any(|a| a == "-db"), "no -db: {argv1:?}");
        for bad in ["-D", "-p", "-S", "/nonexistent/master.sock", "-W", "-Ws", "-x", "999999"] {
            assert!(!argv1.iter().any(|a| a == bad), "{bad} passed to haproxy: {argv1:?}");
        }
        let sf1 = sf_pids(&argv1);
        assert_eq!(sf1.len(), 1, "gen 1 should get exactly the sentinel after -sf: {argv1:?}");
        for opt in ["-D", "-sf", "-S"] {
            let warned = t.log().lines().any(|l| l.starts_with("<4>") && !l.contains("[WARNING]") && l.contains(opt));
            assert!(warned, "no warning logged for the dropped {opt}:\n{}", t.log());
        }
        assert_reload_ok(&t.reload(T));
        let g2 = newest_serving(&t, Mode::Foreground);
        let argv2 = report_argv(&t.report(g2));
        let sf2 = sf_pids(&argv2);
        // Only the sentinel: haproxy pauses every -sf pid while it retries a failing bind, so the
        // serving generation stays out; the wrapper soft-stops it once gen 2 serves.
        assert_eq!(sf2.len(), 1, "gen 2 -sf names more than its sentinel (gen 1 is {g1}): {argv2:?}");
        assert!(!sf2.contains(&g1) && !sf2.contains(&999999));
        t.wait_events("SIGUSR1 from the wrapper to gen 1", 1, T, |e| e.pid == g1 && e.rest == "SIGUSR1");
    }

    #[test]
    fn master_worker_command_line() {
        let mut t = Ctx::new("mwargv");
        let cfg = t.write("h.cfg", "");
        let pidf = t.p("h.pid");
        t.start(&["--haproxy", FAKE_HAPROXY, "-W", "-f", &cfg, "-p", &pidf]);
        t.wait_ready(T);
        let m = first_fake(&t, Mode::MasterWorker);
        let argv = report_argv(&t.report(m));
        assert!(argv.iter().any(|a| a == "-Ws"), "master not run as -Ws: {argv:?}");
        assert!(!argv.iter().any(|a| a == "-db"), "{argv:?}");
        // In master-worker mode haproxy writes the pid file (the master's pid).
        let i = argv.iter().position(|a| a == "-p").unwrap_or_else(|| panic!("-p not passed to the master: {argv:?}"));
        assert_eq!(argv.get(i + 1).map(String::as_str), Some(pidf.as_str()));
        assert_eq!(fs::read_to_string(&pidf).unwrap_or_default().trim(), m.to_string());
    }

    #[test]
    fn default_haproxy_is_the_program_beside_the_wrapper() {
        let mut t = Ctx::new("beside");
        let wrapper = t.copy_wrapper("bin/haproxy-systemd-wrapper");
        std::os::unix::fs::symlink(FAKE_HAPROXY, t.path("bin/haproxy")).unwrap();
        let cfg = t.write("h.cfg", "fake-marker beside\n");
        let cmd = t.command_prog(&wrapper, &["-f", &cfg]);
        t.spawn(cmd);
        t.wait_ready(T);
        assert_eq!(t.ready_pids("fg").len(), 1, "the haproxy beside the wrapper was not used");
        assert_reload_ok(&t.reload(T));
        assert_eq!(t.ready_pids("fg").len(), 2);
    }

    #[test]
    fn started_by_bare_name_through_path() {
        // argv[0] is a bare name: the haproxy beside the wrapper and the re-exec must still be found.
        let mut t = Ctx::new("barename");
        t.copy_wrapper("bin/haproxy-systemd-wrapper");
        std::os::unix::fs::symlink(FAKE_HAPROXY, t.path("bin/haproxy")).unwrap();
        let cfg = t.write("h.cfg", "");
        let path = format!("{}:{}", t.p("bin"), std::env::var("PATH").unwrap_or_default());
        let mut cmd = t.command_prog(Path::new("haproxy-systemd-wrapper"), &["-f", &cfg]);
        cmd.env("PATH", path);
        t.spawn(cmd);
        t.wait_ready(T);
        assert_eq!(t.ready_pids("fg").len(), 1, "the haproxy beside the wrapper was not used");
        assert_reload_ok(&t.reload(T));
        assert_eq!(t.ready_pids("fg").len(), 2);
        stop_and_expect_0(&mut t, T);
    }

    #[test]
    fn reload_reexecs_the_program_now_on_disk() {
        let mut t = Ctx::new("upgrade");
        let wrapper = t.copy_wrapper("bin/hsw");
        let cfg = t.write("h.cfg", "");
        let args = t.fake_args(Mode::Foreground, &cfg, &[]);
        let cmd = t.command_prog(&wrapper, &args);
        t.spawn(cmd);
        t.wait_ready(T);
        // An upgrade: a new file takes the program's place (the running image is now "deleted").
        t.copy_wrapper("bin/hsw");
        let exe = fs::read_link(format!("/proc/{}/exe", t.pid)).unwrap();
        assert!(exe.to_string_lossy().ends_with("(deleted)"), "{exe:?}");
        assert_reload_ok(&t.reload(T));
        let exe = fs::read_link(format!("/proc/{}/exe", t.pid)).unwrap();
        assert_eq!(exe, wrapper, "after the reload the wrapper does not run the program now on disk");
        assert_reload_ok(&t.reload(T));
        stop_and_expect_0(&mut t, T);
    }

    #[test]
    fn x_socket_only_on_reload_and_only_when_it_exists() {
        let mut t = Ctx::new("xsock");
        let cfg = t.write("h.cfg", "");
        let sock = t.p("admin.sock");
        let args = t.fake_args(Mode::Foreground, &cfg, &["-x", &sock]);
        t.start(&args);
        t.wait_ready(T);
        let g1 = first_fake(&t, Mode::Foreground);
        assert!(!report_argv(&t.report(g1)).iter().any(|a| a == "-x"), "-x at start");
        // The socket does not exist yet: no -x on this reload.
        assert_reload_ok(&t.reload(T));
        let g2 = newest_serving(&t, Mode::Foreground);
        assert!(!report_argv(&t.report(g2)).iter().any(|a| a == "-x"), "-x passed while the socket does not exist");
        let listener = UnixListener::bind(&sock).unwrap();
        assert_reload_ok(&t.reload(T));
        let g3 = newest_serving(&t, Mode::Foreground);
        let argv3 = report_argv(&t.report(g3));
        let i = argv3.iter().position(|a| a == "-x").unwrap_or_else(|| panic!("no -x on reload with the socket present: {argv3:?}"));
        assert_eq!(argv3.get(i + 1).map(String::as_str), Some(sock.as_str()));
        drop(listener);
    }

    #[test]
    fn reload_failing_with_x_is_retried_without_it() {
        let mut t = Ctx::new("xretry");
        let cfg = t.write("h.cfg", "fake-fail-with-x\n");
        let sock = t.p("admin.sock");
        let _listener = UnixListener::bind(&sock).unwrap();
        let args = t.fake_args(Mode::Foreground, &cfg, &["-x", &sock]);
        t.start(&args);
        t.wait_ready(T);
        let status = t.reload(T);
        assert_reload_ok(&status);
        let ev = t.events();
        let failed: Vec<&Event> = ev.iter().filter(|e| e.what == "exit" && e.role == "fg" && e.rest == "1").collect();
        assert_eq!(failed.len(), 1, "expected one failed attempt with -x:\n{}", t.events_text());
        assert!(report_argv(&t.report(failed[0].pid)).iter().any(|a| a == "-x"));
        let g2 = newest_serving(&t, Mode::Foreground);
        assert!(!report_argv(&t.report(g2)).iter().any(|a| a == "-x"), "retry still used -x");
    }
    both_modes! {
        /// A new generation that does not become ready within --ready-timeout: the reload fails
        /// ("not ready after 3 s"), the old generation keeps serving, the next reload works.
        fn reload_not_ready_in_time_fails(mode) {
            let mut t = Ctx::new("reloadhang");
            let cfg = t.write("h.cfg", "");
            // 3 s: the first start (Python) must fit in it even on a loaded machine.
            t.start(&t.fake_args_with_options(mode, &cfg, &["--ready-timeout", "3"]));
            t.wait_ready(T);
            let old = newest_serving(&t, mode);
            t.replace("h.cfg", "fake-hang\n");
            let status = t.reload(T);
            assert!(status.contains("last reload: failed"), "{status:?}");
            assert!(status.contains("not ready after 3 s"), "{status:?}");
            assert!(alive(old), "the serving generation died");
            t.assert_running();
            if mode == Mode::Foreground {
                let hung: Vec<i32> = t.events().iter().filter(|e| e.what == "start" && e.pid != old).map(|e| e.pid).collect();
                assert_eq!(hung.len(), 1, "{}", t.events_text());
                let gone = poll_until(T, || if alive(hung[0]) { None } else { Some(()) });
                assert!(gone.is_some(), "the generation that never became ready ({}) was left running", hung[0]);
            }
            t.replace("h.cfg", "");
            assert_reload_ok(&t.reload(T));
            assert_ne!(newest_serving(&t, mode), old);
        }
    }

    #[test]
    fn failed_reload_never_signals_the_serving_generation() {
        let mut t = Ctx::new("ttinafter");
        let cfg = t.write("h.cfg", "");
        let args = t.fake_args(Mode::Foreground, &cfg, &[]);
        t.start(&args);
        t.wait_ready(T);
        let old = newest_serving(&t, Mode::Foreground);
        t.replace("h.cfg", "fake-bad\n");
        let status = t.reload(T);
        assert!(status.contains("last reload: failed"), "{status:?}");
        // Not in the failed generation's -sf: never paused, so nothing to resume; still serving.
        // A SIGTTOU handshake marks the point by which any signal of the reload would be logged.
        t.signal(Signal::SIGTTOU);
        t.wait_events("the handshake's SIGTTOU", 1, T, |e| e.pid == old && e.rest == "SIGTTOU");
        let to_old: Vec<String> = t.events().into_iter().filter(|e| e.pid == old && e.what == "signal").map(|e| e.rest).collect();
        assert_eq!(to_old, vec!["SIGTTOU".to_string()], "the serving generation got signals from the failed reload");
        assert!(alive(old));
    }

    #[test]
    fn sighup_reloads_like_sigusr2() {
        let mut t = Ctx::new("sighup");
        let cfg = t.write("h.cfg", "");
        let args = t.fake_args(Mode::Foreground, &cfg, &[]);
        t.start(&args);
        t.wait_ready(T);
        t.signal(Signal::SIGHUP);
        assert!(t.notify().wait_for(T, |m| notify_sequence(m) == "R L R"), "{}", t.notify().dump());
        assert_reload_ok(&t.notify().last_status().unwrap_or_default());
        assert_eq!(t.ready_pids("fg").len(), 2);
    }

    both_modes! {
        /// SIGTERM while an old generation is still draining stops it too.
        fn stop_while_draining_stops_every_generation(mode) {
            let mut t = Ctx::new("stopdrain");
            t.start_fake_ready(mode, "fake-ignore-usr1\n");
            let old = newest_serving(&t, mode);
            assert_reload_ok(&t.reload(T));
            t.wait_events("soft-stop of the old generation", 1, T, |e| e.pid == old && e.rest == "SIGUSR1");
            assert!(alive(old), "old generation should still be draining");
            stop_and_expect_0(&mut t, T);
            t.assert_no_fake_left();
        }
    }
}

// ================================================================================================
/// The pid file: written by the wrapper in foreground mode, never read for decisions.
mod pidfile {
    use super::*;

    #[test]
    fn foreground_pid_file_follows_the_serving_pid_and_is_removed() {
        let mut t = Ctx::new("pidfile");
        let cfg = t.write("h.cfg", "");
        let pidf = t.p("h.pid");
        let args = t.fake_args(Mode::Foreground, &cfg, &["-p", &pidf]);
        t.start(&args);
        t.wait_ready(T);
        let g1 = first_fake(&t, Mode::Foreground);
        assert_eq!(fs::read_to_string(&pidf).unwrap_or_default().trim(), g1.to_string(), "pid file at READY");
        assert_reload_ok(&t.reload(T));
        let g2 = newest_serving(&t, Mode::Foreground);
        // The old generation may still be listed while it drains; the new one must be.
        let content = fs::read_to_string(&pidf).unwrap_or_default();
        assert!(content.lines().any(|l| l.trim() == g2.to_string()), "pid file after reload: {content:?} (serving {g2})");
        stop_and_expect_0(&mut t, T);
        assert!(!Path::new(&pidf).exists(), "pid file not removed at exit");
    }

    both_modes! {
        /// A pid file with garbage, a foreign pid, the test's own pid or megabytes of text changes
        /// nothing: reloads and stop work, nobody else is signalled.
        fn pid_file_content_is_never_trusted(mode) {
            let mut t = Ctx::new("pidgarbage");
            // A bystander process that logs every signal it gets (the fake, run by the test).
            let vdir = t.path("victim");
            fs::create_dir_all(&vdir).unwrap();
            let vcfg = t.write("victim.cfg", "");
            let victim = Command::new(FAKE_HAPROXY)
                .args(["-db", "-f", &vcfg])
                .env("FAKE_REPORT_DIR", &vdir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let vpid = victim.id() as i32;
            t.extra.push(victim);
            let vevents = vdir.join("events");
            poll_until(T, || if fs::read_to_string(&vevents).unwrap_or_default().contains("ready") { Some(()) } else { None })
                .expect("victim did not start");
            let me = std::process::id();
            let pidf = t.p("h.pid");
            fs::write(&pidf, "garbage\n\u{0}\u{1}\u{7f} 12ab\n99999999999999999999\n").unwrap();
            let cfg = t.write("h.cfg", "");
            let args = t.fake_args(mode, &cfg, &["-p", &pidf]);
            t.start(&args);
            t.wait_ready(T);
            fs::write(&pidf, format!("{vpid}\n{me}\n")).unwrap();
            assert_reload_ok(&t.reload(T));
            fs::write(&pidf, format!("{vpid}\n")).unwrap();
            t.signal(Signal::SIGTTOU);
            t.signal(Signal::SIGTTIN);
            assert_reload_ok(&t.reload(T));
            let big = "1234567890 garbage ".repeat(300_000);
            fs::write(&pidf, big).unwrap();
            assert_reload_ok(&t.reload(T));
            fs::write(&pidf, format!("{vpid}\n{me}\n")).unwrap();
            stop_and_expect_0(&mut t, T);
            let vev = fs::read_to_string(&vevents).unwrap_or_default();
            assert!(!vev.contains("signal"), "the bystander named in the pid file was signalled:\n{vev}");
            assert!(alive(vpid), "the bystander named in the pid file died");
        }
    }
}

// ================================================================================================
/// Running without systemd's NOTIFY_SOCKET.
mod no_notify_socket {
    use super::*;

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
}

// ================================================================================================
/// Logging: haproxy's lines go through the wrapper with journald priorities.
mod logs {
    use super::*;

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
}

// ================================================================================================
/// The real haproxy (/usr/sbin/haproxy), in both modes.
mod real_haproxy {
    use super::*;

    fn require_haproxy() {
        assert!(Path::new(REAL_HAPROXY).exists(), "{REAL_HAPROXY} is missing: run `make deps` (installs the test dependencies)");
    }

    fn config(t: &Ctx, mode: Mode, extra: &str) -> String {
        let global = match mode {
            Mode::Foreground => format!("global\n    stats socket {} mode 600 level admin expose-fd listeners\n", t.p("admin.sock")),
            Mode::MasterWorker => "global\n".to_string(),
        };
        format!(
            "{global}\
             defaults\n    mode http\n    timeout connect 5s\n    timeout client 10s\n    timeout server 10s\n\
             frontend fe\n    bind 127.0.0.1:{}\n    http-request return status 200 content-type text/plain string ok\n{extra}",
            t.port
        )
    }

    fn args(t: &Ctx, mode: Mode, cfg: &str) -> Vec<String> {
        let mut v: Vec<String> = vec!["--haproxy".into(), REAL_HAPROXY.into()];
        match mode {
            Mode::MasterWorker => v.extend(["-Ws", "-f", cfg, "-p"].iter().map(|s| s.to_string())),
            Mode::Foreground => v.extend(["-f", cfg, "-x", &t.p("admin.sock"), "-p"].iter().map(|s| s.to_string())),
        }
        v.push(t.p("haproxy.pid"));
        v
    }

    fn start(name: &str, mode: Mode) -> (Ctx, String) {
        require_haproxy();
        let mut t = Ctx::new(name);
        let cfg = t.write("haproxy.cfg", &config(&t, mode, ""));
        let a = args(&t, mode, &cfg);
        t.start(&a);
        let ready = t.wait_ready(T_REAL);
        assert_eq!(ready.get("MAINPID"), Some(t.pid.to_string().as_str()), "READY=1 without MAINPID=<wrapper pid>: {:?}", ready.text);
        t.track_haproxy(REAL_HAPROXY);
        (t, cfg)
    }

    fn get_ok(t: &Ctx) {
        let r = http_get(t.port, "/").unwrap_or_else(|e| panic!("GET / on port {}: {e}", t.port));
        assert_eq!(r.status(), 200, "{}", r.status_line);
        assert_eq!(r.body.trim(), "ok");
    }

    fn stop_and_check_nothing_left(t: &mut Ctx) {
        t.track_haproxy(REAL_HAPROXY);
        stop_and_expect_0(t, T_REAL);
        assert_all_from_wrapper(t);
        let left: Vec<i32> = t.seen.iter().copied().filter(|p| alive(*p)).collect();
        assert!(left.is_empty(), "haproxy processes left after the wrapper exited: {left:?}");
    }

    both_modes! {
        /// Start → READY=1 + HTTP 200; 3 reloads → RELOADING=1 (MONOTONIC_USEC) ... READY=1, ok;
        /// SIGTERM → STOPPING=1, exit 0, nothing left; every datagram from the wrapper's pid.
        fn notify_sequence_and_http(mode) {
            let (mut t, _cfg) = start("real-seq", mode);
            let r = wait_http_200(t.port, T_REAL);
            assert_eq!(r.body.trim(), "ok");
            for _ in 0..3 {
                assert_reload_ok(&t.reload(T_REAL));
                t.track_haproxy(REAL_HAPROXY);
                get_ok(&t);
            }
            stop_and_check_nothing_left(&mut t);
            assert_eq!(notify_sequence(&t.notify().messages()), "R L R L R L R S", "{}", t.notify().dump());
            assert_all_from_wrapper(&t);
            assert_monotonic_usec(&t);
        }
    }

    both_modes! {
        /// 20 reloads under a steady stream of new connections: not one request fails.
        fn twenty_reloads_under_load_lose_nothing(mode) {
            let (mut t, _cfg) = start("real-load", mode);
            wait_http_200(t.port, T_REAL);
            let load = Load::start(t.port, 2);
            poll_until(T, || if load.ok() > 0 { Some(()) } else { None }).expect("load generator got no answer");
            for i in 0..20 {
                let before = load.ok();
                let status = t.reload(T_REAL);
                assert!(status.contains("last reload: ok"), "reload {}: {status:?}", i + 1);
                // Some requests go through each new generation.
                poll_until(T, || if load.ok() > before { Some(()) } else { None }).expect("load stalled");
                t.track_haproxy(REAL_HAPROXY);
            }
            let res = load.stop();
            assert_eq!(res.fail, 0, "{} of {} requests failed during reloads: {:?}", res.fail, res.ok + res.fail, res.errors);
            assert!(res.ok >= 20);
            stop_and_check_nothing_left(&mut t);
        }
    }

    both_modes! {
        /// A broken config: the reload fails (STATUS "failed"), the old generation keeps serving;
        /// fixed config: the next reload succeeds.
        fn bad_config_reload_keeps_serving(mode) {
            let (mut t, _cfg) = start("real-bad", mode);
            wait_http_200(t.port, T_REAL);
            let before = t.track_haproxy(REAL_HAPROXY);
            assert!(!before.is_empty());
            t.replace("haproxy.cfg", &config(&t, mode, "    this-is-not-a-keyword here\n"));
            let status = t.reload(T_REAL);
            assert!(status.contains("failed"), "STATUS after a bad-config reload: {status:?}");
            assert!(status.contains("last reload: failed"), "{status:?}");
            get_ok(&t);
            for p in &before {
                assert!(alive(*p), "haproxy {p} of the serving generation died after a failed reload");
            }
            t.assert_running();
            t.replace("haproxy.cfg", &config(&t, mode, ""));
            let status = t.reload(T_REAL);
            assert_reload_ok(&status);
            get_ok(&t);
            stop_and_check_nothing_left(&mut t);
            assert_eq!(notify_sequence(&t.notify().messages()), "R L R L R S", "{}", t.notify().dump());
        }
    }

    both_modes! {
        /// SIGUSR1: haproxy soft-stops, the wrapper exits 0 once it is gone, nothing left.
        fn sigusr1_graceful_stop(mode) {
            let (mut t, _cfg) = start("real-usr1", mode);
            wait_http_200(t.port, T_REAL);
            t.track_haproxy(REAL_HAPROXY);
            t.signal(Signal::SIGUSR1);
            let st = t.wait_exit(T_REAL);
            assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
            let left: Vec<i32> = t.seen.iter().copied().filter(|p| alive(*p)).collect();
            assert!(left.is_empty(), "haproxy processes left after the wrapper exited: {left:?}");
            assert_all_from_wrapper(&t);
        }
    }

    both_modes! {
        /// The pid file names the serving haproxy (foreground: the generation's process, kept
        /// current across reloads and removed at exit; master-worker: the master, written by it).
        fn pid_file_names_the_serving_process(mode) {
            let (mut t, _cfg) = start("real-pid", mode);
            let pidf = t.path("haproxy.pid");
            let direct = |t: &Ctx| -> Vec<i32> {
                children_of(t.pid)
                    .into_iter()
                    .filter(|p| exe_of(p.pid).map_or(false, |e| e == Path::new(REAL_HAPROXY)))
                    .map(|p| p.pid)
                    .collect()
            };
            let serving = direct(&t);
            assert_eq!(serving.len(), 1, "{serving:?}");
            let content = poll_until(T, || fs::read_to_string(&pidf).ok().filter(|c| c.lines().any(|l| l.trim() == serving[0].to_string())));
            assert!(content.is_some(), "pid file {} does not name {}: {:?}", pidf.display(), serving[0], fs::read_to_string(&pidf));
            assert_reload_ok(&t.reload(T_REAL));
            let newest = match mode {
                Mode::Foreground => *direct(&t).iter().find(|p| !serving.contains(p)).expect("no new generation"),
                Mode::MasterWorker => serving[0],
            };
            let content = fs::read_to_string(&pidf).unwrap_or_default();
            assert!(content.lines().any(|l| l.trim() == newest.to_string()), "pid file after reload: {content:?}, serving {newest}");
            stop_and_check_nothing_left(&mut t);
            if mode == Mode::Foreground {
                assert!(!pidf.exists(), "pid file not removed at exit");
            }
        }
    }

    both_modes! {
        /// kill -9 of the serving haproxy (foreground process / master): the wrapper exits 137.
        fn kill9_of_serving_haproxy_exits_137(mode) {
            let (mut t, _cfg) = start("real-kill9", mode);
            let direct: Vec<i32> = children_of(t.pid)
                .into_iter()
                .filter(|p| exe_of(p.pid).map_or(false, |e| e == Path::new(REAL_HAPROXY)))
                .map(|p| p.pid)
                .collect();
            assert_eq!(direct.len(), 1, "expected one haproxy child of the wrapper, got {direct:?}");
            kill(Pid::from_raw(direct[0]), Signal::SIGKILL).unwrap();
            let st = t.wait_exit(T_REAL);
            assert_eq!(st.code(), Some(137), "{}", describe_status(&st));
        }
    }
}
