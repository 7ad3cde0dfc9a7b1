//! What children inherit: signal mask and dispositions, environment, file descriptors; and the
//! wrapper's own descriptors across reloads (re-execs); the wrapper as child subreaper. With the
//! fake haproxy (tests/fake-haproxy), which reports what it inherited.
//!
//! Every test owns its temp dir, port and notify socket (`util::Ctx`), which kills what the test
//! spawned when it ends. No test sleeps to wait for something: each waits for a handshake (notify
//! datagram, fake haproxy event, HTTP answer) or polls with a deadline.

#[macro_use]
mod util;

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

use util::*;

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
        .filter(|(n, target)| {
            *n > 2
                && fs::read_link(format!("/proc/self/fd/{n}")).map_or(true, |t| t.to_string_lossy() != target.as_str())
        })
        .map(|(n, _)| n)
        .collect()
}

fn check_child(t: &Ctx, mode: Mode, pid: i32, baseline: &str) {
    let rep = t.report(pid);
    assert_eq!(
        sig_field(&rep, "SigBlk"),
        0,
        "child {pid} starts with blocked signals:\n{rep}"
    );
    let ign = sig_field(&rep, "SigIgn");
    let base = sig_field(baseline, "SigIgn");
    assert_eq!(
        ign & !base,
        0,
        "child {pid} ignores signals a normal start does not (SigIgn {ign:016x} vs {base:016x}):\n{rep}"
    );
    for var in ["WATCHDOG_USEC", "WATCHDOG_PID", "HAPROXY_SYSTEMD_WRAPPER_STATE"] {
        assert!(!rep.contains(&format!("env {var}=")), "child {pid} got {var}:\n{rep}");
    }
    let ours = t.notify().path.display().to_string();
    match mode {
        Mode::Foreground => assert!(
            !rep.contains("env NOTIFY_SOCKET="),
            "child {pid} got NOTIFY_SOCKET:\n{rep}"
        ),
        Mode::MasterWorker => {
            assert!(
                !rep.contains(&format!("env NOTIFY_SOCKET={ours}")),
                "master got systemd's NOTIFY_SOCKET:\n{rep}"
            );
            assert!(
                rep.contains("env NOTIFY_SOCKET=@"),
                "master has no private (abstract) NOTIFY_SOCKET:\n{rep}"
            );
        }
    }
    let allowed = python_own_fds(baseline);
    let extra: Vec<u32> = report_fds(&rep)
        .into_iter()
        .map(|(n, _)| n)
        .filter(|fd| *fd > 2 && !allowed.contains(fd))
        .collect();
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
            // By way of a number above 9: dup2 onto itself would leave it close-on-exec.
            let high = nix::fcntl::fcntl(stray_fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))?;
            nix::unistd::dup2(high, 9)?;
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
