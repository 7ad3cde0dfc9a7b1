//! Test harness: a per-test context (temp dir, free port, notify socket, the wrapper process and a
//! guard that kills everything it started), the fake haproxy's report/event files, HTTP and load
//! helpers, small /proc readers, and what the test files share (`both_modes!`, lookups of the fake
//! haproxy's processes, common assertions).
//!
//! Each integration test file covers one concern and starts with `#[macro_use] mod util;`: cli.rs,
//! start_stop.rs, reload.rs, child_state.rs, pidfile.rs, notify_logs.rs, real_haproxy.rs,
//! wait_reload.rs (the client), reload_truth.rs (the client's answer with real haproxy),
//! robustness.rs (run directory, probe, stderr), upgrade.rs (re-exec into a new program),
//! max_draining.rs (the bound on draining generations). Each uses
//! a part of this harness, hence the `allow` below. Beside this file: procfs.rs (/proc
//! readers), notify.rs (the test's notify socket), http.rs (GET, backend, load generator).
//!
//! Rules the helpers enforce: nothing here sleeps to wait for something; every wait is a handshake
//! (notify datagram, event line, HTTP answer) or a poll with a deadline. Environment is passed to
//! children through `Command::env`; the test process's own environment is never changed.

#![allow(dead_code, unused_macros)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, IoSliceMut, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
use nix::unistd::Pid;

mod http;
mod notify;
mod procfs;
// A test file that uses none of a part would call its re-export unused.
#[allow(unused_imports)]
pub use http::*;
#[allow(unused_imports)]
pub use notify::*;
#[allow(unused_imports)]
pub use procfs::*;

pub const WRAPPER: &str = env!("CARGO_BIN_EXE_haproxy-systemd-wrapper");
pub const FAKE_HAPROXY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fake-haproxy");
pub const REAL_HAPROXY: &str = "/usr/sbin/haproxy";

/// Default bound for handshakes that should take milliseconds (start, reload of the fake).
pub const T: Duration = Duration::from_secs(10);
/// Bound for real haproxy starts/reloads/stops (slow CI machines, parallel tests).
pub const T_REAL: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------------------------------------
// Small utilities

pub fn monotonic_usec() -> u64 {
    let mut ts = nix::libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec we pass.
    let rc = unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime failed");
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// Polls `f` until it returns Some, or the deadline passes (None). For conditions that have no
/// handshake (a process going away, a file appearing); polls every 10 ms.
pub fn poll_until<R, F: FnMut() -> Option<R>>(timeout: Duration, mut f: F) -> Option<R> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(r) = f() {
            return Some(r);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A free TCP port on 127.0.0.1 (never handed out twice by this test binary).
pub fn free_port() -> u16 {
    static USED: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let port = l.local_addr().unwrap().port();
        let mut used = USED.lock().unwrap();
        if !used.contains(&port) {
            used.push(port);
            return port;
        }
    }
}

/// `kill -USR2 $MAINPID` then `haproxy-systemd-wrapper --wait-reload $MAINPID`, as the unit does,
/// on a wrapper running the real haproxy.
pub fn systemctl_reload(t: &mut Ctx) -> std::process::Output {
    t.signal(Signal::SIGUSR2);
    let out = t
        .wait_reload_command(t.pid, &["--timeout", "60"])
        .output()
        .expect("run the client");
    t.track_haproxy(REAL_HAPROXY);
    out
}

/// A client's exit status, stdout and stderr, for assertion messages.
pub fn describe(o: &std::process::Output) -> String {
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    format!("status {:?}; stdout: {out}; stderr: {err}", o.status.code())
}

pub fn describe_status(st: &ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (_, Some(s)) => format!("killed by signal {s}"),
        _ => format!("{st:?}"),
    }
}

// ------------------------------------------------------------------------------------------------
// Fake haproxy events and reports

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub what: String,
    pub pid: i32,
    pub role: String,
    pub rest: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Foreground,
    MasterWorker,
}

impl Mode {
    /// The role the fake reports for the process the wrapper starts in this mode.
    pub fn role(self) -> &'static str {
        match self {
            Mode::Foreground => "fg",
            Mode::MasterWorker => "master",
        }
    }

    /// The role of the fake processes that serve a generation: the foreground process itself,
    /// or the master's worker.
    pub fn serving_role(self) -> &'static str {
        match self {
            Mode::Foreground => "fg",
            Mode::MasterWorker => "worker",
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Per-test context and process guard

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Everything one test owns: a unique temp dir (removed on drop), a free port, an optional notify
/// socket, the wrapper process and other spawned children. On drop it SIGKILLs the wrapper and
/// every process descended from it (found by a /proc walk while the tree is frozen), and, when the
/// test is failing, prints the wrapper's log, the notify messages and the fake's events.
pub struct Ctx {
    pub name: String,
    pub dir: PathBuf,
    pub port: u16,
    pub notify: Option<Notify>,
    pub wrapper: Option<Child>,
    pub pid: i32,
    pub extra: Vec<Child>,
    /// Pids of haproxy processes seen below the wrapper (tracked by `track_haproxy`).
    pub seen: BTreeSet<i32>,
}

impl Ctx {
    pub fn new(name: &str) -> Ctx {
        let mut c = Ctx::without_notify(name);
        c.notify = Some(Notify::bind(&c.dir.join("notify.sock")));
        c
    }

    pub fn without_notify(name: &str) -> Ctx {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        // Short: the notify socket path must fit in sun_path (108 bytes).
        let short: String = name.chars().take(24).collect();
        let dir = std::env::temp_dir().join(format!("hsw-{}-{n}-{short}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("reports")).unwrap();
        Ctx {
            name: name.to_string(),
            dir,
            port: free_port(),
            notify: None,
            wrapper: None,
            pid: 0,
            extra: Vec::new(),
            seen: BTreeSet::new(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn p(&self, rel: &str) -> String {
        self.path(rel).display().to_string()
    }

    pub fn notify(&self) -> &Notify {
        self.notify.as_ref().expect("this test has no notify socket")
    }

    pub fn write(&self, rel: &str, content: &str) -> String {
        let p = self.path(rel);
        fs::write(&p, content).unwrap();
        p.display().to_string()
    }

    /// Replaces a file atomically (the wrapper or haproxy may read it at any moment).
    pub fn replace(&self, rel: &str, content: &str) {
        let tmp = self.path(&format!("{rel}.tmp"));
        fs::write(&tmp, content).unwrap();
        fs::rename(&tmp, self.path(rel)).unwrap();
    }

    pub fn log_path(&self) -> PathBuf {
        self.path("wrapper.log")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A wrapper command: NOTIFY_SOCKET (when this test has one) and FAKE_REPORT_DIR set, the
    /// systemd variables of the test's own environment removed, stdin null, stdout+stderr to
    /// wrapper.log.
    pub fn command<S: AsRef<str>>(&self, args: &[S]) -> Command {
        self.command_prog(Path::new(WRAPPER), args)
    }

    /// `command` for another copy of the wrapper program.
    pub fn command_prog<S: AsRef<str>>(&self, program: &Path, args: &[S]) -> Command {
        let mut cmd = Command::new(program);
        // Each test's reload ledger in its own directory, not the system's /run/haproxy-systemd-wrapper.
        cmd.arg("--run-dir").arg(self.path("run"));
        cmd.args(args.iter().map(|a| a.as_ref()));
        cmd.env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("HAPROXY_SYSTEMD_WRAPPER_STATE")
            .env_remove("FAKE_EXIT")
            .env_remove("FAKE_HANG")
            .env_remove("FAKE_READY_DELAY_FILE")
            .env_remove("FAKE_TERM_EXIT")
            .env_remove("FAKE_IGNORE_TERM")
            .env("FAKE_REPORT_DIR", self.path("reports"));
        if let Some(n) = &self.notify {
            cmd.env("NOTIFY_SOCKET", &n.path);
        }
        let log = File::options().create(true).append(true).open(self.log_path()).unwrap();
        // As under systemd, stderr is "the journal": JOURNAL_STREAM names its device and inode, so
        // the wrapper writes the <N> priority prefixes the log tests check.
        let meta = log.metadata().unwrap();
        cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        cmd
    }

    /// Like `command`, with systemd's watchdog variables: WATCHDOG_USEC=usec and WATCHDOG_PID = the
    /// wrapper's pid (a shell exports its own pid, then execs the wrapper in place).
    pub fn command_with_watchdog<S: AsRef<str>>(&self, args: &[S], usec: u64) -> Command {
        let cmd = self.command(args);
        let mut sh = Command::new("/bin/sh");
        sh.arg("-c")
            .arg("WATCHDOG_PID=$$; export WATCHDOG_PID; exec \"$0\" \"$@\"")
            .arg(WRAPPER)
            .arg("--run-dir")
            .arg(self.path("run"))
            .args(args.iter().map(|a| a.as_ref()));
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => sh.env(k, v),
                None => sh.env_remove(k),
            };
        }
        sh.env("WATCHDOG_USEC", usec.to_string());
        let log = File::options().create(true).append(true).open(self.log_path()).unwrap();
        sh.stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        sh
    }

    /// Command for the wrapper running the fake haproxy: `--haproxy FAKE [extra wrapper opts]
    /// [mode flag] -f cfg [haproxy args]`.
    pub fn fake_args(&self, mode: Mode, cfg: &str, extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = vec!["--haproxy".into(), FAKE_HAPROXY.into()];
        if mode == Mode::MasterWorker {
            v.push("-Ws".into());
        }
        v.push("-f".into());
        v.push(cfg.into());
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    /// Writes `h.cfg`, starts the wrapper on the fake haproxy in `mode` and waits for its READY=1;
    /// returns the configuration's path.
    pub fn start_fake_ready(&mut self, mode: Mode, cfg_text: &str) -> String {
        let cfg = self.write("h.cfg", cfg_text);
        let args = self.fake_args(mode, &cfg, &[]);
        self.start(&args);
        self.wait_ready(T);
        cfg
    }

    /// `fake_args` with wrapper options (e.g. `--ready-timeout 1`) among the leading long options.
    pub fn fake_args_with_options(&self, mode: Mode, cfg: &str, wrapper_opts: &[&str]) -> Vec<String> {
        let mut v = self.fake_args(mode, cfg, &[]);
        let at = 2; // after "--haproxy PATH"
        for (i, o) in wrapper_opts.iter().enumerate() {
            v.insert(at + i, o.to_string());
        }
        v
    }

    /// `haproxy-systemd-wrapper --wait-reload PID --run-dir <test>/run [extra]`, the unit's last
    /// `ExecReload=` line: stdin null, stdout and stderr piped.
    pub fn wait_reload_command(&self, pid: i32, extra: &[&str]) -> Command {
        let mut cmd = Command::new(WRAPPER);
        cmd.args(["--wait-reload", &pid.to_string(), "--run-dir", &self.p("run")])
            .args(extra)
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// A private copy of the wrapper program at `rel` (for tests that replace or rename it).
    pub fn copy_wrapper(&self, rel: &str) -> PathBuf {
        let dst = self.path(rel);
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        let tmp = dst.with_extension("tmp");
        // Copied by cp, not in this process: a write descriptor open here could be inherited by a
        // child another test thread forks at that moment, and exec'ing the copy would then fail
        // with ETXTBSY.
        let st = Command::new("cp").arg(WRAPPER).arg(&tmp).status().expect("run cp");
        assert!(st.success(), "cp {WRAPPER} {}: {st:?}", tmp.display());
        fs::rename(&tmp, &dst).unwrap();
        dst
    }

    pub fn spawn(&mut self, mut cmd: Command) -> i32 {
        assert!(self.wrapper.is_none(), "one wrapper per test");
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
        self.pid = child.id() as i32;
        self.wrapper = Some(child);
        self.pid
    }

    /// Spawns the wrapper with these args (see `command`).
    pub fn start<S: AsRef<str>>(&mut self, args: &[S]) -> i32 {
        let cmd = self.command(args);
        self.spawn(cmd)
    }

    /// Runs a wrapper that should exit by itself; returns its status (panics after `timeout`).
    pub fn run_to_exit<S: AsRef<str>>(&mut self, args: &[S], timeout: Duration) -> ExitStatus {
        self.start(args);
        self.wait_exit(timeout)
    }

    pub fn signal(&self, sig: Signal) {
        assert!(self.pid > 0, "no wrapper started");
        kill(Pid::from_raw(self.pid), sig).unwrap_or_else(|e| panic!("kill({}, {sig}): {e}", self.pid));
    }

    /// Waits (polling with a deadline) for the wrapper to exit; panics on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.wrapper.as_mut().expect("no wrapper");
        let st = poll_until(timeout, || child.try_wait().expect("try_wait"));
        match st {
            Some(st) => {
                // Whatever the wrapper sent before it exited is recorded before the test looks.
                if let Some(n) = &self.notify {
                    n.sync();
                }
                st
            }
            None => panic!("wrapper (pid {}) still running after {timeout:?}", self.pid),
        }
    }

    /// The wrapper's exit status if it has exited (not waiting).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.wrapper.as_mut().expect("no wrapper").try_wait().expect("try_wait")
    }

    /// Checks the wrapper is still running.
    pub fn assert_running(&mut self) {
        let child = self.wrapper.as_mut().expect("no wrapper");
        if let Some(st) = child.try_wait().unwrap() {
            panic!("wrapper exited unexpectedly: {}", describe_status(&st));
        }
    }

    /// Waits for the wrapper's start READY=1; returns that message.
    pub fn wait_ready(&self, timeout: Duration) -> Msg {
        self.notify().wait_count("READY=1", 1, timeout, Msg::is_ready);
        self.notify().messages().into_iter().find(Msg::is_ready).unwrap()
    }

    /// Sends SIGUSR2 and waits for that reload's RELOADING=1 and READY=1 (the n-th of each, where
    /// n = reloads done so far + 1); returns the STATUS= of the final READY (or the last STATUS).
    pub fn reload(&self, timeout: Duration) -> String {
        let n = self.notify().count(Msg::is_reloading) + 1;
        self.signal(Signal::SIGUSR2);
        self.notify().wait_count("RELOADING=1", n, timeout, Msg::is_reloading);
        // READY=1 that follows the n-th RELOADING=1.
        let ok = self.notify().wait_for(timeout, |m| {
            let mut seen = 0;
            for (i, x) in m.iter().enumerate() {
                if x.is_reloading() {
                    seen += 1;
                    if seen == n {
                        return m[i + 1..].iter().any(Msg::is_ready);
                    }
                }
            }
            false
        });
        if !ok {
            panic!(
                "reload {n}: no READY=1 after RELOADING=1 within {timeout:?}:\n{}",
                self.notify().dump()
            );
        }
        self.notify().last_status().unwrap_or_default()
    }

    // ---- fake haproxy reports ----

    pub fn reports_dir(&self) -> PathBuf {
        self.path("reports")
    }

    pub fn events(&self) -> Vec<Event> {
        let text = self.events_text();
        // Only complete lines: a line being appended right now is not an event yet.
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        complete
            .lines()
            .filter_map(|l| {
                let mut it = l.splitn(4, ' ');
                Some(Event {
                    what: it.next()?.to_string(),
                    pid: it.next()?.parse().ok()?,
                    role: it.next()?.to_string(),
                    rest: it.next().unwrap_or("").to_string(),
                })
            })
            .collect()
    }

    pub fn events_text(&self) -> String {
        fs::read_to_string(self.reports_dir().join("events")).unwrap_or_default()
    }

    /// Waits (polling the events file with a deadline) until `n` events match; returns them.
    pub fn wait_events<F: Fn(&Event) -> bool>(&self, what: &str, n: usize, timeout: Duration, f: F) -> Vec<Event> {
        let r = poll_until(timeout, || {
            let v: Vec<Event> = self.events().into_iter().filter(|e| f(e)).collect();
            if v.len() >= n {
                Some(v)
            } else {
                None
            }
        });
        r.unwrap_or_else(|| {
            panic!(
                "timed out after {timeout:?} waiting for {n} x {what}; events:\n{}",
                self.events_text()
            )
        })
    }

    /// Pids that became ready with this role, in order.
    pub fn ready_pids(&self, role: &str) -> Vec<i32> {
        self.events()
            .into_iter()
            .filter(|e| e.what == "ready" && e.role == role)
            .map(|e| e.pid)
            .collect()
    }

    /// Every pid the fake ever ran as (any role).
    pub fn fake_pids(&self) -> BTreeSet<i32> {
        self.events()
            .into_iter()
            .filter(|e| e.what == "start" || e.what == "ready")
            .map(|e| e.pid)
            .collect()
    }

    pub fn report(&self, pid: i32) -> String {
        let p = self.reports_dir().join(format!("{pid}.report"));
        fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    }

    /// Asserts that no fake haproxy process this test saw is alive any more.
    pub fn assert_no_fake_left(&self) {
        let left: Vec<i32> = self.fake_pids().into_iter().filter(|p| alive(*p)).collect();
        assert!(
            left.is_empty(),
            "fake haproxy processes still alive: {left:?}\nevents:\n{}",
            self.events_text()
        );
    }

    /// Records the haproxy processes currently below the wrapper (real haproxy tests).
    pub fn track_haproxy(&mut self, exe: &str) -> Vec<i32> {
        let v = haproxy_descendants(self.pid, exe);
        self.seen.extend(v.iter().copied());
        v
    }

    /// Kills the wrapper and everything below it. The tree is frozen (SIGSTOP) first so nothing new
    /// can be forked between the /proc walk and the kill.
    pub fn kill_all(&mut self) {
        if let Some(mut child) = self.wrapper.take() {
            if child.try_wait().ok().flatten().is_none() {
                let root = Pid::from_raw(self.pid);
                let _ = kill(root, Signal::SIGSTOP);
                let mut victims: BTreeMap<i32, ()> = BTreeMap::new();
                loop {
                    let before = victims.len();
                    for d in descendants(self.pid) {
                        if victims.insert(d.pid, ()).is_none() {
                            let _ = kill(Pid::from_raw(d.pid), Signal::SIGSTOP);
                        }
                    }
                    if victims.len() == before {
                        break;
                    }
                }
                let _ = kill(root, Signal::SIGKILL);
                for pid in victims.keys() {
                    let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
                }
            }
            let _ = child.wait();
        }
        // Whatever else this test saw (processes left behind by an exited wrapper).
        for pid in self.fake_pids().into_iter().chain(self.seen.iter().copied()) {
            if alive(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        for mut c in self.extra.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        if thread::panicking() {
            let mut s = format!("\n===== {} (dir {}) =====\n", self.name, self.dir.display());
            s.push_str(&format!("----- wrapper log -----\n{}", self.log()));
            if let Some(n) = &self.notify {
                s.push_str(&format!(
                    "----- notify messages (wrapper pid {}) -----\n{}",
                    self.pid,
                    n.dump()
                ));
            }
            s.push_str(&format!("----- fake haproxy events -----\n{}", self.events_text()));
            s.push_str("===========\n");
            eprintln!("{s}");
        }
        self.kill_all();
        self.notify = None;
        if std::env::var_os("HSW_KEEP_TEST_DIRS").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Makes a file executable or not.
pub fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A tmpfs the test mounts (the tests run as root) at `path`, e.g. a small run directory to fill;
/// unmounted on drop. Declare it after the `Ctx` whose directory holds it, so that it is dropped
/// (unmounted) before that directory is removed.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    /// `mount -t tmpfs -o OPTIONS tmpfs PATH` (PATH created first).
    pub fn mount(path: &Path, options: &str) -> Tmpfs {
        fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs -o {options} {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }

    /// Fills it: `filler` takes every block left; with `inodes`, empty files take every inode
    /// left too (then no file can be created at all). Returns the bytes written.
    pub fn fill(&self, inodes: bool) -> usize {
        let mut f = File::create(self.path.join("filler")).expect("create the filler");
        let page = [b'x'; 4096];
        let mut written = 0;
        loop {
            match f.write(&page) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) => {
                    assert_eq!(
                        e.raw_os_error(),
                        Some(nix::libc::ENOSPC),
                        "filling {}: {e}",
                        self.path.display()
                    );
                    break;
                }
            }
        }
        let _ = f.sync_all();
        for n in 0.. {
            if !inodes {
                break;
            }
            match File::create(self.path.join(format!("filler-{n}"))) {
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(
                        e.raw_os_error(),
                        Some(nix::libc::ENOSPC),
                        "filling {}: {e}",
                        self.path.display()
                    );
                    break;
                }
            }
        }
        written
    }

    /// Removes what `fill` wrote.
    pub fn empty(&self) {
        for e in fs::read_dir(&self.path).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with("filler") {
                fs::remove_file(e.path()).unwrap();
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .map_or(false, |s| s.success());
        if !ok {
            // Still busy (a process of the test has it open): detach it now, it goes when they do.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Shared by the test files: both modes, fake haproxy lookups, common assertions

/// Generates `mod NAME { fn foreground(); fn master_worker(); }` running the same body in both
/// haproxy modes.
macro_rules! both_modes {
    // `needs_root fn ...`: the test mounts (a tmpfs); it is `#[ignore]`d, so a package build, which
    // runs the suite unprivileged, reports it ignored; `make test-cargo` runs it (--include-ignored).
    ($(#[$doc:meta])* needs_root fn $name:ident($mode:ident) $body:block) => {
        $(#[$doc])*
        mod $name {
            use super::*;
            fn run($mode: Mode) $body
            #[test]
            #[ignore = "needs root (mounts a tmpfs): make test-cargo runs it"]
            fn foreground() {
                run(Mode::Foreground)
            }
            #[test]
            #[ignore = "needs root (mounts a tmpfs): make test-cargo runs it"]
            fn master_worker() {
                run(Mode::MasterWorker)
            }
        }
    };
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
pub fn first_fake(t: &Ctx, mode: Mode) -> i32 {
    t.wait_events("fake ready", 1, T, |e| e.what == "ready" && e.role == mode.role())[0].pid
}

/// The serving generation's fake process in foreground mode (newest ready fg), or the newest
/// worker in master-worker mode.
pub fn newest_serving(t: &Ctx, mode: Mode) -> i32 {
    *t.ready_pids(mode.serving_role()).last().expect("no ready fake")
}

/// The arguments a fake haproxy got (its report's "arg X" lines).
pub fn report_argv(report: &str) -> Vec<String> {
    report
        .lines()
        .filter_map(|l| l.strip_prefix("arg "))
        .map(str::to_string)
        .collect()
}

/// The pids given to a fake after `-sf`/`-st`.
pub fn sf_pids(argv: &[String]) -> Vec<i32> {
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
pub fn has_pid_tag(s: &str) -> bool {
    s.match_indices('(').any(|(i, _)| {
        let rest = &s[i + 1..];
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        digits > 0 && rest[digits..].starts_with(") :")
    })
}

pub fn assert_reload_ok(status: &str) {
    assert!(
        status.contains("last reload: ok"),
        "STATUS does not say the reload succeeded: {status:?}"
    );
}

pub fn assert_all_from_wrapper(t: &Ctx) {
    for m in t.notify().messages() {
        assert_eq!(
            m.pid, t.pid,
            "notify datagram from pid {} (wrapper is {}): {:?}",
            m.pid, t.pid, m.text
        );
    }
}

/// Every RELOADING=1 carries MONOTONIC_USEC = CLOCK_MONOTONIC at the time it was sent.
pub fn assert_monotonic_usec(t: &Ctx) {
    for m in t.notify().messages().iter().filter(|m| m.is_reloading()) {
        let v: u64 = m
            .get("MONOTONIC_USEC")
            .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {:?}", m.text))
            .parse()
            .unwrap_or_else(|_| panic!("MONOTONIC_USEC not a number: {:?}", m.text));
        assert!(
            v <= m.recv_usec && m.recv_usec - v < 10_000_000,
            "MONOTONIC_USEC={v} but received at {}",
            m.recv_usec
        );
    }
}

pub fn stop_and_expect_0(t: &mut Ctx, timeout: Duration) {
    t.signal(Signal::SIGTERM);
    let st = t.wait_exit(timeout);
    assert_eq!(st.code(), Some(0), "wrapper after SIGTERM: {}", describe_status(&st));
}

/// Whether `s` has the shape `pattern`, where each `#` stands for one or more digits (a duration)
/// and everything else must match exactly.
pub fn has_shape(s: &str, pattern: &str) -> bool {
    fn go(s: &[u8], p: &[u8]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some((b'#', rest)) => {
                let digits = s.iter().take_while(|c| c.is_ascii_digit()).count();
                (1..=digits).any(|n| go(&s[n..], rest))
            }
            Some((c, rest)) => s.first() == Some(c) && go(&s[1..], rest),
        }
    }
    go(s.as_bytes(), pattern.as_bytes())
}

/// Asserts a STATUS= text (or any line) has the shape `pattern` (see `has_shape`).
pub fn assert_shape(s: &str, pattern: &str) {
    assert!(
        has_shape(s, pattern),
        "unexpected text\n  got:      {s:?}\n  expected: {pattern:?} (# = digits)"
    );
}

/// Handshake for signals sent to the wrapper: sends SIGTTIN and waits until a fake haproxy logs
/// it. The kernel hands pending signals out lowest number first, and the wrapper reads them in
/// that order, so once SIGTTIN (21) has been passed on, every SIGHUP, SIGINT, SIGUSR1, SIGUSR2 or
/// SIGTERM sent to the wrapper before this call has been read. Needs a living fake haproxy that
/// the wrapper passes signals to (the serving generation or master).
pub fn signals_read_handshake(t: &Ctx) {
    let is_ttin = |e: &Event| e.what == "signal" && e.rest == "SIGTTIN" && (e.role == "fg" || e.role == "master");
    let before = t.events().iter().filter(|e| is_ttin(e)).count();
    t.signal(Signal::SIGTTIN);
    t.wait_events("SIGTTIN passed on to haproxy (handshake)", before + 1, T, is_ttin);
}

/// Installs, in the calling process (a child about to exec), a seccomp filter that refuses
/// pidfd_getfd(2) with EPERM, as a container's filter does (systemd-nspawn's, Docker's default).
/// Only async-signal-safe calls: it runs between fork and exec.
pub fn refuse_pidfd_getfd() -> std::io::Result<()> {
    use nix::libc::*;
    let insn = |code: u32, jt: u8, jf: u8, k: u32| sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let filter = [
        // seccomp_data.nr is at offset 0
        insn(BPF_LD | BPF_W | BPF_ABS, 0, 0, 0),
        insn(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, SYS_pidfd_getfd as u32),
        insn(BPF_RET | BPF_K, 0, 0, SECCOMP_RET_ERRNO | EPERM as u32),
        insn(BPF_RET | BPF_K, 0, 0, SECCOMP_RET_ALLOW),
    ];
    let prog = sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut sock_filter,
    };
    // SAFETY: prctl with a filter program that outlives the call.
    unsafe {
        if prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || prctl(
                PR_SET_SECCOMP,
                SECCOMP_MODE_FILTER as c_ulong,
                &prog as *const sock_fprog,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
