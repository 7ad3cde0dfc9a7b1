//! Robustness of haproxy-systemd-wrapper (issue 9): starts that end without being ready, stops
//! that must end in bounded time whatever haproxy and its descendants do, a graceful stop whose
//! signal the master dropped, a systemd notify socket nobody reads, floods on the master's
//! private socket, and an empty NOTIFY_SOCKET.
//!
//! Same rules as tests/tests.rs: the fake haproxy (tests/fake-haproxy) drives the signal and
//! exit-status paths, every wait is a handshake or a poll with a deadline, `util::Ctx` kills what
//! a test spawned.

#[macro_use]
mod util;

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use util::*;

/// Generates `mod NAME { fn foreground(); fn master_worker(); }` running the same body in both
/// haproxy modes.
/// The fake haproxy pid the wrapper started for this mode (foreground process or master).
fn first_fake(t: &Ctx, mode: Mode) -> i32 {
    t.wait_events("fake ready", 1, T, |e| e.what == "ready" && e.role == mode.role())[0].pid
}

/// Waits for the pid a fake `fake-orphan PATH` grandchild wrote.
fn orphan_pid(path: &str) -> i32 {
    poll_until(T, || fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()))
        .expect("the fake did not leave its orphan")
}

// ================================================================================================
/// A start whose haproxy ends without ever being ready is a failed start, whatever its status.
mod start {
    use super::*;

    both_modes! {
        /// haproxy exits 0 at start (a configuration that only checks): exit 69, never 0, no READY=1.
        fn haproxy_exiting_0_at_start_is_a_failed_start(mode) {
            let mut t = Ctx::new("exit0start");
            let cfg = t.write("h.cfg", "fake-quiet-exit 0\n");
            let st = t.run_to_exit(&t.fake_args(mode, &cfg, &[]), T);
            assert_eq!(st.code(), Some(69), "{}", describe_status(&st));
            assert_eq!(t.notify().count(Msg::is_ready), 0, "READY=1 sent:\n{}", t.notify().dump());
            assert!(t.log().contains("haproxy exited with status 0 before it was ready"), "log:\n{}", t.log());
        }
    }
}

// ================================================================================================
/// systemd's notify socket: sends never block the loop; an empty NOTIFY_SOCKET is unset.
mod notify_socket {
    use super::*;
    use std::path::Path;

    /// Fills the receive queue of the datagram socket at `path` (which nobody reads) until a
    /// fresh sender cannot queue a single datagram more; returns how many were queued.
    fn fill(path: &Path) -> usize {
        let mut queued = 0;
        loop {
            let sender = UnixDatagram::unbound().expect("socket");
            sender.set_nonblocking(true).unwrap();
            let mut here = 0;
            loop {
                match sender.send_to(b"X_TEST_FILLER=1", path) {
                    Ok(_) => here += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("filling {}: {e}", path.display()),
                }
            }
            queued += here;
            if here == 0 {
                return queued;
            }
            assert!(queued < 1_000_000, "{} never filled", path.display());
        }
    }

    both_modes! {
        /// A NOTIFY_SOCKET whose queue is full: the wrapper keeps running its loop (haproxy starts,
        /// READY=1 arrives once there is room, it warns once) and stops promptly on SIGTERM.
        fn an_unread_notify_socket_never_blocks_the_wrapper(mode) {
            let mut t = Ctx::without_notify("fullnotify");
            let path = t.path("full.sock");
            let receiver = UnixDatagram::bind(&path).expect("bind");
            receiver.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            let queued = fill(&path);
            assert!(queued > 0);
            let cfg = t.write("h.cfg", "");
            let mut cmd = t.command(&t.fake_args(mode, &cfg, &[]));
            cmd.env("NOTIFY_SOCKET", &path);
            t.spawn(cmd);
            first_fake(&t, mode);
            // READY=1 is not lost: once the test reads its queue, the wrapper's retry delivers it.
            let ready = format!("MAINPID={}", t.pid);
            let deadline = Instant::now() + T;
            let mut buf = [0u8; 4096];
            let mut got_ready = false;
            while !got_ready && Instant::now() < deadline {
                if let Ok(n) = receiver.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    got_ready = text.lines().any(|l| l == "READY=1") && text.lines().any(|l| l == ready);
                }
            }
            assert!(got_ready, "READY=1 of the wrapper never arrived; log:\n{}", t.log());
            // Full again: SIGTERM still stops everything promptly.
            fill(&path);
            let t0 = Instant::now();
            t.signal(Signal::SIGTERM);
            let st = t.wait_exit(T);
            assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
            assert!(t0.elapsed() < Duration::from_secs(5), "the stop took {:?}", t0.elapsed());
            t.assert_no_fake_left();
            let warnings = t.log().matches("notify socket is full (").count();
            assert_eq!(warnings, 1, "the full socket is warned about once; log:\n{}", t.log());
            drop(receiver);
        }
    }

    /// `NOTIFY_SOCKET=` (empty) is no socket: no warning, no attempt to send.
    #[test]
    fn an_empty_notify_socket_is_unset() {
        let mut t = Ctx::without_notify("emptynotify");
        let cfg = t.write("h.cfg", "");
        let mut cmd = t.command(&t.fake_args(Mode::Foreground, &cfg, &[]));
        cmd.env("NOTIFY_SOCKET", "");
        t.spawn(cmd);
        first_fake(&t, Mode::Foreground);
        // The wrapper logs the generation serving once its READY=1 would have gone out.
        let serving = poll_until(T, || {
            if t.log().contains(" serving, ready in ") {
                Some(())
            } else {
                None
            }
        });
        assert!(serving.is_some(), "log:\n{}", t.log());
        t.signal(Signal::SIGTERM);
        let st = t.wait_exit(T);
        assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
        let log = t.log();
        assert!(
            !log.contains("NOTIFY_SOCKET") && !log.contains("sd_notify"),
            "an empty NOTIFY_SOCKET was used; log:\n{log}"
        );
        // The wrapper's own warnings and errors (haproxy's re-emitted lines start with its tag).
        let own = log
            .lines()
            .filter(|l| (l.starts_with("<4>") || l.starts_with("<3>")) && !l[3..].starts_with('['))
            .count();
        assert_eq!(own, 0, "warnings or errors for an empty NOTIFY_SOCKET; log:\n{log}");
    }
}

// ================================================================================================
/// The master's private notify socket (master-worker mode) is reachable by anyone on the host.
mod master_socket {
    use super::*;
    use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};

    /// A flood of datagrams from another process (this test) on the master's socket: a handful of
    /// log lines, not one per datagram; the wrapper still reloads and stops.
    #[test]
    fn a_flood_of_foreign_datagrams_is_logged_a_few_times() {
        let mut t = Ctx::new("flood");
        t.start_fake_ready(Mode::MasterWorker, "");
        let master = first_fake(&t, Mode::MasterWorker);
        let report = t.report(master);
        let address = report
            .lines()
            .find_map(|l| l.strip_prefix("env NOTIFY_SOCKET=@"))
            .expect("the master's NOTIFY_SOCKET")
            .to_string();
        let addr = UnixAddr::new_abstract(address.as_bytes()).unwrap();
        let sock = socket::socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .unwrap();
        const FLOOD: usize = 50_000;
        let t0 = Instant::now();
        let mut sent = 0;
        while sent < FLOOD && t0.elapsed() < Duration::from_secs(20) {
            match socket::sendto(sock, b"READY=1\nSTATUS=spoofed", &addr, MsgFlags::empty()) {
                Ok(_) => sent += 1,
                Err(nix::errno::Errno::EAGAIN) => std::thread::yield_now(),
                Err(e) => panic!("sendto the master's socket: {e}"),
            }
        }
        let flood_time = t0.elapsed();
        nix::unistd::close(sock).unwrap();
        assert!(sent > 10_000, "only {sent} datagrams in {flood_time:?}");
        // The wrapper kept up and still works: a reload answers (after the flood was read).
        let status = t.reload(T);
        assert!(status.contains("last reload: ok"), "{status}");
        let lines = t.log().lines().filter(|l| l.contains("not the master")).count();
        let bound = 5 * (flood_time.as_secs() as usize + 2) + 5;
        assert!(lines > 0, "foreign datagrams are not logged at all; log:\n{}", t.log());
        assert!(
            lines <= bound,
            "{lines} log lines for {sent} foreign datagrams in {flood_time:?} (bound {bound})"
        );
        t.signal(Signal::SIGTERM);
        let st = t.wait_exit(T);
        assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
        eprintln!("flood: {sent} datagrams in {flood_time:?}, {lines} log lines");
    }
}

// ================================================================================================
/// The master-worker verdict reads the master's children in /proc: a walk that fails is an
/// unknown list, never an empty one.
mod proc_walk {
    use super::*;
    use std::collections::BTreeSet;

    /// The wrapper's descriptors that survive its re-exec (0-2, the relay pipe's two ends, the
    /// master's socket), and how many it opens again after it (its signalfds, its socket to
    /// systemd). Anything else it inherited is close-on-exec.
    fn descriptors_across_exec(pid: i32) -> (BTreeSet<i32>, usize) {
        let unix = fs::read_to_string("/proc/net/unix").unwrap();
        let master_socket_inode = |inode: &str| {
            unix.lines()
                .any(|l| l.split_whitespace().nth(6) == Some(inode) && l.contains("haproxy-systemd-wrapper/"))
        };
        let mut targets = Vec::new();
        for entry in fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
            let fd: i32 = entry.file_name().to_str().unwrap().parse().unwrap();
            if let Ok(target) = fs::read_link(entry.path()) {
                targets.push((fd, target.display().to_string()));
            }
        }
        let mut kept: BTreeSet<i32> = [0, 1, 2].into_iter().collect();
        let mut reopened = 0;
        for (fd, target) in &targets {
            let socket_inode = target.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']'));
            if target.contains("signalfd") || socket_inode.map_or(false, |inode| !master_socket_inode(inode)) {
                reopened += 1;
            } else if socket_inode.is_some()
                || (target.starts_with("pipe:") && targets.iter().filter(|(_, t)| t == target).count() == 2)
            {
                kept.insert(*fd);
            }
        }
        (kept, reopened)
    }

    fn set_nofile(pid: i32, soft: u64) -> u64 {
        let mut old = nix::libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit reads `new` and writes `old`, both valid for the call.
        let rc = unsafe { nix::libc::prlimit(pid, nix::libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
        let new = nix::libc::rlimit {
            rlim_cur: soft,
            rlim_max: old.rlim_max,
        };
        // SAFETY: as above.
        let rc = unsafe { nix::libc::prlimit(pid, nix::libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
        old.rlim_cur
    }

    /// The wrapper out of descriptors when the master says READY=1: the reload that did start a
    /// new worker is reported ok (not "the master started no new worker"), with a warning; STATUS
    /// says the workers are unknown, then names the new one once /proc can be read again.
    #[test]
    fn a_reload_when_proc_cannot_be_read_trusts_the_masters_ready() {
        let mut t = Ctx::new("nofile");
        t.start_fake_ready(Mode::MasterWorker, "");
        let old_worker = t.wait_events("first worker", 1, T, |e| e.what == "ready" && e.role == "worker")[0].pid;
        // After the re-exec the wrapper opens its signalfds and its systemd socket again: leave it
        // room for those and nothing more, so every walk of /proc fails with EMFILE.
        let (kept, reopened) = descriptors_across_exec(t.pid);
        let limit = (0..).filter(|fd| !kept.contains(fd)).nth(reopened).unwrap() as u64;
        let before = set_nofile(t.pid, limit);
        let status = t.reload(T);
        let new_worker = t.wait_events("second worker", 2, T, |e| e.what == "ready" && e.role == "worker")[1].pid;
        assert!(
            status.contains("last reload: ok"),
            "the reload is reported failed: {status:?}"
        );
        assert!(status.contains("workers unknown"), "{status:?}");
        assert!(
            !status.contains(&old_worker.to_string()) || status.contains("draining"),
            "{status:?}"
        );
        assert!(
            t.log().contains("cannot list the children of master"),
            "log:\n{}",
            t.log()
        );
        set_nofile(t.pid, before);
        let named = format!("workers {new_worker}); draining: none");
        let learnt = t.notify().wait_for(T, |m| {
            m.iter().any(|m| m.get("STATUS").map_or(false, |s| s.contains(&named)))
        });
        assert!(
            learnt,
            "STATUS never named the new worker {new_worker}:\n{}",
            t.notify().dump()
        );
        t.signal(Signal::SIGTERM);
        let st = t.wait_exit(T);
        assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
    }
}

// ================================================================================================
/// A requested stop ends by --stop-timeout plus a small bound, whatever haproxy and what it left
/// behind do with SIGTERM.
mod stop {
    use super::*;

    /// How long after --stop-timeout the wrapper may take to SIGKILL, reap and exit.
    const BOUND: Duration = Duration::from_millis(1500);

    both_modes! {
        /// haproxy ignores SIGTERM, left a detached grandchild (reparented to the wrapper, a
        /// subreaper) and has a child of its own (reparented to the wrapper only once haproxy is
        /// killed), both ignoring SIGTERM: all are SIGKILLed at --stop-timeout and the wrapper
        /// exits 0 within the bound, with nothing left.
        fn stubborn_haproxy_and_orphan_are_gone_by_the_stop_timeout(mode) {
            let mut t = Ctx::new("stubborn");
            let opid = t.p("orphan.pid");
            let cpid = t.p("child.pid");
            let cfg = t.write("h.cfg", &format!("fake-ignore-term\nfake-orphan {opid}\nfake-orphan-ignore-term\nfake-child {cpid}\n"));
            t.start(&t.fake_args_with_options(mode, &cfg, &["--stop-timeout", "1"]));
            t.wait_ready(T);
            let fake = first_fake(&t, mode);
            let orphan = orphan_pid(&opid);
            t.seen.insert(orphan);
            let child = orphan_pid(&cpid);
            t.seen.insert(child);
            assert_eq!(proc_stat(child).map(|p| p.ppid), Some(fake), "the child is haproxy's");
            let reparented = poll_until(T, || proc_stat(orphan).filter(|p| p.ppid == t.pid));
            assert!(reparented.is_some(), "orphan {orphan} not reparented to the wrapper");
            let t0 = Instant::now();
            t.signal(Signal::SIGTERM);
            let st = t.wait_exit(Duration::from_secs(1) + BOUND + T);
            let took = t0.elapsed();
            assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
            eprintln!("stop with stubborn processes: {took:?} (--stop-timeout 1)");
            assert!(took >= Duration::from_millis(900), "the stubborn processes were not given --stop-timeout: {took:?}");
            assert!(took <= Duration::from_secs(1) + BOUND, "the stop took {took:?}, more than --stop-timeout 1 s + {BOUND:?}");
            assert!(!alive(orphan), "orphan {orphan} outlived the wrapper");
            assert!(!alive(fake), "haproxy {fake} outlived the wrapper");
            assert!(!alive(child), "haproxy's child {child} outlived the wrapper");
            t.assert_no_fake_left();
            assert!(t.log().contains("sending SIGKILL"), "log:\n{}", t.log());
        }
    }
}

// ================================================================================================
/// SIGUSR1, the graceful stop: re-sent until haproxy acted on it (a master-worker master busy
/// reloading drops it), escalated after --stop-timeout without an answer, never cut once haproxy
/// acted (draining connections take the time they take).
mod graceful_stop {
    use super::*;

    fn events_of(t: &Ctx, pid: i32, what: &str, rest: &str) -> usize {
        t.events()
            .iter()
            .filter(|e| e.pid == pid && e.what == what && e.rest == rest)
            .count()
    }

    /// Starts master-worker with --stop-timeout `stop_timeout`, then a reload that stays busy
    /// (dropping signals) until `busy` exists; returns the master's pid once it is busy.
    fn busy_reload(t: &mut Ctx, stop_timeout: &str) -> (i32, String) {
        let busy = t.p("busy");
        let cfg = t.write("h.cfg", "");
        t.start(&t.fake_args_with_options(Mode::MasterWorker, &cfg, &["--stop-timeout", stop_timeout]));
        t.wait_ready(T);
        let master = first_fake(t, Mode::MasterWorker);
        t.replace("h.cfg", &format!("fake-busy-reload {busy}\n"));
        t.signal(Signal::SIGUSR2);
        t.wait_events("busy reload", 1, T, |e| {
            e.pid == master && e.what == "reload" && e.rest == "busy"
        });
        (master, busy)
    }

    /// The master drops the SIGUSR1 while it reloads; once it is done, the wrapper's next
    /// SIGUSR1 stops it gracefully: no SIGTERM, exit 0, nothing left.
    #[test]
    fn a_sigusr1_the_busy_master_dropped_is_sent_again() {
        let mut t = Ctx::new("usr1dropped");
        let (master, busy) = busy_reload(&mut t, "20");
        t.signal(Signal::SIGUSR1);
        t.wait_events("SIGUSR1 dropped", 1, T, |e| {
            e.pid == master && e.what == "dropped" && e.rest == "SIGUSR1"
        });
        fs::write(&busy, "").unwrap();
        let st = t.wait_exit(T);
        assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
        assert!(
            events_of(&t, master, "signal", "SIGUSR1") >= 1,
            "the master never got a SIGUSR1 it acted on:\n{}",
            t.events_text()
        );
        assert_eq!(
            events_of(&t, master, "signal", "SIGTERM"),
            0,
            "the graceful stop was escalated:\n{}",
            t.events_text()
        );
        t.assert_no_fake_left();
    }

    /// A master that never acts on SIGUSR1: after --stop-timeout the stop becomes a SIGTERM stop;
    /// the wrapper exits 0 well within twice --stop-timeout.
    #[test]
    fn a_sigusr1_never_acted_on_becomes_a_sigterm_after_the_stop_timeout() {
        let mut t = Ctx::new("usr1escalate");
        let (master, _busy) = busy_reload(&mut t, "1");
        let t0 = Instant::now();
        t.signal(Signal::SIGUSR1);
        let st = t.wait_exit(T);
        let took = t0.elapsed();
        assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
        assert!(
            events_of(&t, master, "dropped", "SIGUSR1") >= 2,
            "SIGUSR1 was not sent again:\n{}",
            t.events_text()
        );
        assert_eq!(
            events_of(&t, master, "signal", "SIGTERM"),
            1,
            "no SIGTERM after --stop-timeout:\n{}",
            t.events_text()
        );
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(2),
            "the stop took {took:?} with --stop-timeout 1"
        );
        assert!(t.log().contains("did not act on SIGUSR1"), "log:\n{}", t.log());
        t.assert_no_fake_left();
    }

    both_modes! {
        /// haproxy acted on SIGUSR1 and keeps draining (its serving processes ignore the
        /// soft-stop here): the wrapper waits, well past --stop-timeout, and never escalates.
        fn a_long_drain_is_never_cut(mode) {
            let mut t = Ctx::new("longdrain");
            let cfg = t.write("h.cfg", "fake-ignore-usr1\n");
            t.start(&t.fake_args_with_options(mode, &cfg, &["--stop-timeout", "1"]));
            t.wait_ready(T);
            let serving = t.wait_events("serving", 1, T, |e| e.what == "ready" && e.role == mode.serving_role())[0].pid;
            t.signal(Signal::SIGUSR1);
            t.wait_events("SIGUSR1 at the serving process", 1, T, |e| e.pid == serving && e.what == "signal" && e.rest == "SIGUSR1");
            // Three times --stop-timeout: nothing is escalated, the drain goes on.
            let exited = poll_until(Duration::from_secs(3), || t.wrapper.as_mut().unwrap().try_wait().unwrap());
            assert!(exited.is_none(), "the wrapper ended a draining haproxy: {:?}\nlog:\n{}", exited, t.log());
            assert!(alive(serving), "the draining process {serving} was ended");
            let escalated: Vec<Event> = t.events().into_iter().filter(|e| e.what == "signal" && (e.rest == "SIGTERM" || e.rest == "SIGKILL")).collect();
            assert!(escalated.is_empty(), "the graceful stop was escalated: {escalated:?}");
            if mode == Mode::MasterWorker {
                assert!(t.log().contains("haproxy acted on the graceful stop"), "log:\n{}", t.log());
                let master = first_fake(&t, mode);
                assert_eq!(events_of(&t, master, "signal", "SIGUSR1"), 1, "SIGUSR1 sent again after the master acted:\n{}", t.events_text());
            }
            t.signal(Signal::SIGTERM);
            let st = t.wait_exit(T);
            assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
            t.assert_no_fake_left();
        }
    }
}

// ================================================================================================
/// The real haproxy (/usr/sbin/haproxy), where the behaviour is haproxy's own.
mod real_haproxy {
    use super::*;
    use std::path::Path;

    fn start_master_worker(name: &str, wrapper_opts: &[&str]) -> Ctx {
        assert!(
            Path::new(REAL_HAPROXY).exists(),
            "{REAL_HAPROXY} is missing: run `make deps` (installs the test dependencies)"
        );
        let mut t = Ctx::new(name);
        let cfg = t.write(
            "haproxy.cfg",
            &format!(
                "global\ndefaults\n    mode http\n    timeout connect 5s\n    timeout client 10s\n    timeout server 10s\n\
                 frontend fe\n    bind 127.0.0.1:{}\n    http-request return status 200 content-type text/plain string ok\n",
                t.port
            ),
        );
        let mut args: Vec<String> = vec!["--haproxy".into(), REAL_HAPROXY.into()];
        args.extend(wrapper_opts.iter().map(|s| s.to_string()));
        args.extend(["-Ws".to_string(), "-f".to_string(), cfg]);
        t.start(&args);
        t.wait_ready(T_REAL);
        t.track_haproxy(REAL_HAPROXY);
        t
    }

    /// SIGUSR1 right after SIGUSR2: the master re-executes itself for the reload and may drop the
    /// SIGUSR1 (haproxy 2.6). Either way the wrapper ends within twice --stop-timeout (plus a
    /// margin), exit 0, nothing left. Ten rounds, since whether the signal is dropped is a race.
    #[test]
    fn sigusr1_during_a_reload_ends_in_bounded_time() {
        for round in 0..10 {
            let mut t = start_master_worker(&format!("real-usr1-reload-{round}"), &["--stop-timeout", "2"]);
            let t0 = Instant::now();
            t.signal(Signal::SIGUSR2);
            t.signal(Signal::SIGUSR1);
            let st = t.wait_exit(Duration::from_secs(4) + T);
            let took = t0.elapsed();
            assert_eq!(st.code(), Some(0), "round {round}: {}", describe_status(&st));
            assert!(
                took < Duration::from_secs(5),
                "round {round}: the graceful stop took {took:?} (bound: 2 x --stop-timeout 2 s)"
            );
            let left: Vec<i32> = t.seen.iter().copied().filter(|p| alive(*p)).collect();
            assert!(left.is_empty(), "round {round}: haproxy processes left: {left:?}");
            let resent = t.log().contains("sending it again");
            eprintln!(
                "round {round}: stopped in {took:?}{}",
                if resent { " (SIGUSR1 sent again)" } else { "" }
            );
        }
    }
}

// ================================================================================================
/// haproxy 2.6 and later, master-worker: a reload whose new worker cannot start (a chroot that
/// does not exist) makes haproxy stop everything (exit-on-failure, its default).
mod real_exit_on_failure {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_failing_new_worker_is_never_reported_as_the_old_generation_serving() {
        assert!(
            Path::new(REAL_HAPROXY).exists(),
            "{REAL_HAPROXY} is missing: run `make deps` (installs the test dependencies)"
        );
        let mut t = Ctx::new("real-exitonfailure");
        let port = t.port;
        let config = move |extra: &str| {
            format!(
                "global\n{extra}defaults\n    mode http\n    timeout connect 5s\n    timeout client 10s\n    timeout server 10s\n\
                 frontend fe\n    bind 127.0.0.1:{}\n    http-request return status 200 content-type text/plain string ok\n",
                port
            )
        };
        let cfg = t.write("haproxy.cfg", &config(""));
        // --max-restarts 0: the wrapper does not start haproxy again itself (this test is about
        // the reload's verdict when haproxy stopped everything).
        t.start(&[
            "--haproxy",
            REAL_HAPROXY,
            "--stop-timeout",
            "2",
            "--max-restarts",
            "0",
            "-Ws",
            "-f",
            &cfg,
        ]);
        t.wait_ready(T_REAL);
        t.track_haproxy(REAL_HAPROXY);
        t.replace("haproxy.cfg", &config(&format!("    chroot {}\n", t.p("no-such-dir"))));
        t.signal(Signal::SIGUSR2);
        // haproxy 2.6 either stops everything (the wrapper then exits 1) or, when its new worker
        // failed before the old one finished its soft-stop, hangs with the old worker stopped
        // (state T) and nothing listening: the wrapper must say so, not "keeps serving".
        let decided = poll_until(T_REAL, || {
            let exited = t.wrapper.as_mut().unwrap().try_wait().unwrap();
            if exited.is_some() || t.log().contains("reload failed") {
                Some(exited)
            } else {
                None
            }
        });
        let exited = decided.expect("no verdict on the reload");
        let log = t.log();
        assert!(
            !log.contains("keeps serving"),
            "the wrapper claimed the previous generation keeps serving:\n{log}"
        );
        let outcome = match exited {
            Some(st) => {
                assert_eq!(st.code(), Some(1), "{}", describe_status(&st));
                assert!(
                    log.contains("nothing serves") || log.contains("ended unexpectedly"),
                    "log:\n{log}"
                );
                "haproxy stopped everything"
            }
            None => {
                let settled = poll_until(T_REAL, || {
                    let log = t.log();
                    if log.contains("nothing serves")
                        || log.contains("may not serve any more")
                        || log.contains("ended unexpectedly")
                    {
                        Some(log)
                    } else {
                        None
                    }
                });
                assert!(settled.is_some(), "log:\n{}", t.log());
                t.signal(Signal::SIGTERM);
                t.wait_exit(T_REAL);
                "haproxy hung, reported as such"
            }
        };
        eprintln!("real exit-on-failure: {outcome}");
        assert!(!t.log().contains("keeps serving"), "log:\n{}", t.log());
        let left: Vec<i32> = t.seen.iter().copied().filter(|p| alive(*p)).collect();
        assert!(left.is_empty(), "haproxy processes left: {left:?}");
    }
}

// ================================================================================================
/// A failed reload after which nothing serves any more is reported as such, never as "the
/// previous generation keeps serving".
mod failed_reload_truth {
    use super::*;

    /// master-worker: the reload's new worker fails and haproxy (its exit-on-failure) stops every
    /// worker; its master answers READY=1 and is slow to exit. With `--max-restarts 0` the wrapper
    /// says nothing serves, stops with a failure status for Restart=, and never claims that the
    /// previous generation keeps serving. (When the master's end comes first, the wrapper reports
    /// that instead.)
    #[test]
    fn a_new_worker_failure_that_takes_haproxy_down_is_reported_truthfully() {
        let mut t = Ctx::new("exitonfailure");
        let cfg = t.write("h.cfg", "");
        let args = t.fake_args_with_options(Mode::MasterWorker, &cfg, &["--max-restarts", "0"]);
        t.start(&args);
        t.wait_ready(T);
        let master = first_fake(&t, Mode::MasterWorker);
        t.replace("h.cfg", "fake-new-worker-fails 1\n");
        t.signal(Signal::SIGUSR2);
        // The unit's ExecReload= client, right after the signal.
        let client = t
            .wait_reload_command(t.pid, &[])
            .output()
            .expect("run the --wait-reload client");
        let said = String::from_utf8_lossy(&client.stderr).into_owned();
        eprintln!("--wait-reload: {:?}: {}", client.status.code(), said.trim());
        assert!(
            !said.contains("keeps serving"),
            "the client claimed the previous generation keeps serving: {said}"
        );
        // 1 with the failure and that the service is stopping; when the client comes late, the
        // wrapper may be stopping or gone already (its own answers for that, not checked here).
        if client.status.code() == Some(1) {
            assert!(
                said.contains("failed") && said.contains("the service is stopping"),
                "{said}"
            );
        }
        let st = t.wait_exit(T);
        assert_ne!(st.code(), Some(0), "{}", describe_status(&st));
        t.wait_events("the master's end", 1, T, |e| e.pid == master && e.what == "exit");
        let log = t.log();
        assert!(
            !log.contains("keeps serving"),
            "the wrapper claimed the previous generation keeps serving:\n{log}"
        );
        assert!(log.contains("nothing serves"), "log:\n{log}");
        t.assert_no_fake_left();
    }

    /// The same failure with restarts allowed (the default): the reload fails (exit status 1, not
    /// "stopping"), and the wrapper starts a new master at once: it serves again, same wrapper.
    #[test]
    fn a_new_worker_failure_that_takes_haproxy_down_is_followed_by_a_restart() {
        let mut t = Ctx::new("exitonfailure-restart");
        t.start_fake_ready(Mode::MasterWorker, "");
        let master = first_fake(&t, Mode::MasterWorker);
        t.replace("h.cfg", "fake-new-worker-fails 1\n");
        t.signal(Signal::SIGUSR2);
        let client = t
            .wait_reload_command(t.pid, &[])
            .output()
            .expect("run the --wait-reload client");
        let said = String::from_utf8_lossy(&client.stderr).into_owned();
        assert_eq!(client.status.code(), Some(1), "{said}");
        assert!(
            said.contains("failed after") && said.contains("the wrapper started haproxy again"),
            "{said}"
        );
        assert!(!said.contains("keeps serving"), "{said}");
        t.wait_events("the first master's end", 1, T, |e| e.pid == master && e.what == "exit");
        t.notify()
            .wait_count("READY=1 of the new master", 2, T, |m| m.is_ready());
        t.wait_events("a second master ready", 2, T, |e| {
            e.what == "ready" && e.role == "master"
        });
        assert!(t.try_exit().is_none(), "the wrapper exited:\n{}", t.log());
        let log = t.log();
        assert!(log.contains("nothing serves"), "log:\n{log}");
        assert!(log.contains(": starting gen 2 at once"), "log:\n{log}");
        let status = t.notify().last_status().unwrap_or_default();
        assert!(status.contains("restarted after a crash: 1"), "STATUS: {status}");
        stop_and_expect_0(&mut t, T);
        t.assert_no_fake_left();
    }
}

/// A graceful stop that haproxy acted on (STOPPING=1) and then undid (READY=1: the reload it was
/// busy with brought it back, as haproxy 2.6 does when SIGUSR1 lands in a reload): the wrapper asks
/// again and stops, instead of waiting for ever.
#[test]
fn a_graceful_stop_undone_by_a_reload_is_asked_again() {
    let mut t = Ctx::new("usr1undone");
    let cfg = t.write("h.cfg", "fake-usr1-undone\n");
    let args = t.fake_args_with_options(Mode::MasterWorker, &cfg, &["--stop-timeout", "2"]);
    t.start(&args);
    t.wait_ready(T);
    t.signal(Signal::SIGUSR1);
    t.wait_events("the master undoing the first SIGUSR1", 1, T, |e| {
        e.what == "usr1-undone"
    });
    let st = t.wait_exit(T);
    assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
    assert!(
        t.log().contains("ready again after it acted on the graceful stop"),
        "{}",
        t.log()
    );
    t.assert_no_fake_left();
}

// ================================================================================================
/// The run directory misbehaving (issue 15): full, removed while the wrapper runs, not usable.
/// The client never answers with another reload's result: it says at once that the result went
/// unrecorded (74), and the wrapper, which keeps serving, writes its whole ledger again once it can.
mod run_dir {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::process::Output;

    /// `kill -USR2` then the client, as the unit's two ExecReload= lines do.
    fn reload(t: &Ctx) -> Output {
        t.signal(Signal::SIGUSR2);
        t.wait_reload_command(t.pid, &["--timeout", "20"])
            .output()
            .expect("run the client")
    }

    fn said(o: &Output) -> String {
        format!(
            "status {:?}: {}{}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    both_modes! {
        /// No block and no inode left: no ledger can be written. The wrapper empties its file, so
        /// the client of a rejected configuration says the result is unrecorded (74), never the
        /// previous reload's "ok"; with room again, the next reload is answered.
        needs_root fn a_full_run_directory_leaves_the_result_unrecorded_never_stale(mode) {
            let mut t = Ctx::new("rd-full");
            let run = Tmpfs::mount(&t.path("run"), "size=64k,nr_inodes=32,mode=0700");
            t.start_fake_ready(mode, "fake-marker one\n");
            t.replace("h.cfg", "fake-marker two\n");
            let out = reload(&t);
            assert_eq!(out.status.code(), Some(0), "{}", said(&out));
            run.fill(true);
            t.replace("h.cfg", "fake-bad\n");
            let out = reload(&t);
            assert_eq!(out.status.code(), Some(74), "{}", said(&out));
            assert!(said(&out).contains("could not record the reload's result"), "{}", said(&out));
            // The client may have said so before the attempt ended: its end, before going on.
            t.notify().wait_count("READY=1", 3, T, Msg::is_ready);
            t.assert_running();
            assert!(t.log().contains("cannot write the reload ledger"), "{}", t.log());
            // Room again. The file is still empty when the next request is sent (the wrapper is
            // stopped: the signal stays pending): that emptiness is the earlier failure's, and the
            // client waits for this request's answer instead of saying "unrecorded".
            run.empty();
            t.replace("h.cfg", "fake-marker three\n");
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(t.pid), Signal::SIGSTOP).unwrap();
            t.signal(Signal::SIGUSR2);
            let mut c = t.wait_reload_command(t.pid, &["--timeout", "20"]).spawn().expect("spawn the client");
            let early = poll_until(Duration::from_millis(300), || c.try_wait().unwrap());
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(t.pid), Signal::SIGCONT).unwrap();
            assert!(early.is_none(), "the client answered before its request was counted: {:?}", early);
            let out = c.wait_with_output().unwrap();
            assert_eq!(out.status.code(), Some(0), "{}", said(&out));
            assert!(said(&out).contains("reload ok: gen 3 serving"), "{}", said(&out));
            assert!(t.log().contains("is written again"), "{}", t.log());
        }
    }

    both_modes! {
        /// Removed while the wrapper runs (another unit sharing it stopped): made again, 0700,
        /// and the next reload is answered.
        fn a_removed_run_directory_is_made_again(mode) {
            let mut t = Ctx::new("rd-removed");
            t.start_fake_ready(mode, "fake-marker one\n");
            fs::remove_dir_all(t.path("run")).unwrap();
            t.replace("h.cfg", "fake-marker two\n");
            let out = reload(&t);
            assert_eq!(out.status.code(), Some(0), "{}", said(&out));
            let meta = fs::symlink_metadata(t.path("run")).unwrap();
            assert!(meta.is_dir() && meta.mode() & 0o777 == 0o700 && meta.uid() == nix::unistd::geteuid().as_raw(), "mode {:o} uid {}", meta.mode(), meta.uid());
            fs::remove_dir_all(t.path("run")).unwrap();
            t.replace("h.cfg", "fake-bad\n");
            let out = reload(&t);
            assert_eq!(out.status.code(), Some(1), "{}", said(&out));
        }
    }

    /// A file, or a directory others may write, where the run directory should be: the client says
    /// so at once (74, naming the problem) instead of waiting out its timeout; fixed, the next
    /// reload is answered (the wrapper looks at the directory again at each write).
    #[test]
    fn an_unusable_run_directory_is_said_at_once() {
        let mut t = Ctx::new("rd-unusable");
        fs::write(t.path("run"), "").unwrap();
        t.start_fake_ready(Mode::Foreground, "fake-marker one\n");
        let out = reload(&t);
        assert_eq!(out.status.code(), Some(74), "{}", said(&out));
        assert!(
            said(&out).contains(&format!("{} is not a directory", t.p("run"))),
            "{}",
            said(&out)
        );
        // The client answered at once; the reload goes on (and writes the ledger as it ends): let
        // it end before the run directory changes under it.
        t.notify().wait_count("READY=1", 2, T, Msg::is_ready);
        // The others-writable directory takes the file's place in one step (RENAME_EXCHANGE): the
        // wrapper never sees it with the mode mkdir gave it.
        fs::create_dir(t.path("run.new")).unwrap();
        fs::set_permissions(t.path("run.new"), fs::Permissions::from_mode(0o777)).unwrap();
        nix::fcntl::renameat2(
            None,
            &t.path("run.new"),
            None,
            &t.path("run"),
            nix::fcntl::RenameFlags::RENAME_EXCHANGE,
        )
        .unwrap();
        fs::remove_file(t.path("run.new")).unwrap();
        let out = reload(&t);
        assert_eq!(out.status.code(), Some(74), "{}", said(&out));
        assert!(said(&out).contains("is writable by others"), "{}", said(&out));
        t.notify().wait_count("READY=1", 3, T, Msg::is_ready);
        fs::set_permissions(t.path("run"), fs::Permissions::from_mode(0o700)).unwrap();
        let out = reload(&t);
        assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    }
}
