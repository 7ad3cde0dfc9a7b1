//! `haproxy-systemd-wrapper --wait-reload PID`: the unit's last `ExecReload=` line. It waits for
//! the reload that the preceding `kill -USR2 PID` asked for (or a later one it was coalesced
//! into) and exits 0 only once the new generation serves; otherwise non-zero, with the reason on
//! stderr, so that `systemctl reload` tells the truth.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::clock;
use crate::ledger::{self, Late, Ledger, Outcome};

pub use crate::error::{EXIT_FAILED, EXIT_NO_WRAPPER, EXIT_OK, EXIT_TIMEOUT, EXIT_UNRECORDED};

/// Under systemd's default TimeoutStartSec (90 s), so that we say why before systemd kills us.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(80);

#[derive(Debug, Clone, PartialEq)]
pub struct WaitOptions {
    pub pid: i32,
    pub run_dir: PathBuf,
    pub timeout: Duration,
}

/// Which attempt answers our request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The signal was already read: the ledger counted it, and the first attempt that answers
    /// at least this many requests is ours.
    Covers(u64),
    /// The signal was still pending at this instant: the first attempt that began later is ours
    /// (it read the configuration after the signal was sent).
    BegunAfter(u64),
}

/// What the ledger says about our request now.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer<'a> {
    Wait,
    Served {
        gen: u32,
        ms: u64,
    },
    /// `late`: haproxy may still complete it, or did (master-worker, at --ready-timeout).
    Failed {
        gen: u32,
        ms: u64,
        reasons: &'a [String],
        late: Late,
        /// Nothing served after it, and the wrapper started haproxy again.
        restarted: bool,
    },
    /// The wrapper is stopping and no attempt answers us.
    Stopping,
}

/// Pure: the answer for `target` in `ledger`.
pub fn answer(ledger: &Ledger, target: Target) -> Answer<'_> {
    let ours = ledger.attempts.iter().find(|a| match target {
        Target::Covers(n) => a.covers >= n,
        Target::BegunAfter(t) => a.begun_ns > t,
    });
    match ours.map(|a| (a.gen, &a.outcome, a.late, a.restarted)) {
        Some((gen, Outcome::Ok { ms }, _, _)) => Answer::Served { gen, ms: *ms },
        Some((gen, Outcome::Failed { ms, reasons }, late, restarted)) => Answer::Failed {
            gen,
            ms: *ms,
            reasons,
            late,
            restarted,
        },
        _ if ledger.stopping => Answer::Stopping,
        _ => Answer::Wait,
    }
}

/// Is a reload signal (SIGUSR2 or SIGHUP) pending for `pid`, per /proc/PID/status?
pub fn reload_pending(status: &str) -> Option<bool> {
    let bits = crate::procs::parse_pending(status)?;
    let bit = |sig: i32| 1u64 << (sig - 1);
    Some(bits & (bit(nix::libc::SIGUSR2) | bit(nix::libc::SIGHUP)) != 0)
}

fn looks_like_wrapper(pid: i32) -> bool {
    std::fs::read_link(format!("/proc/{}/exe", pid))
        .ok()
        .and_then(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().starts_with(env!("CARGO_PKG_NAME")))
        })
        .unwrap_or(false)
}

/// Is `pid` this program's `--wait-reload` client (another `systemctl reload` waiting), rather
/// than a wrapper? Its command line says so.
fn is_client(pid: i32) -> bool {
    // Between an exec's switch to the new program and the setting of its arguments, cmdline reads
    // empty (a client that has just started, a wrapper re-executing itself): look again briefly.
    let mut cmdline = Vec::new();
    for _ in 0..CMDLINE_TRIES {
        match std::fs::read(format!("/proc/{}/cmdline", pid)) {
            Ok(c) if !c.is_empty() => {
                cmdline = c;
                break;
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(1)),
            Err(_) => return false,
        }
    }
    use std::os::unix::ffi::OsStrExt;
    let args: Vec<std::ffi::OsString> = cmdline
        .split(|b| *b == 0)
        .skip(1)
        .filter(|a| !a.is_empty())
        .map(|a| std::ffi::OsStr::from_bytes(a).to_os_string())
        .collect();
    matches!(crate::cli::parse(args), Ok(crate::cli::Command::WaitReload(_)))
}

/// How many times (1 ms apart) an empty /proc/PID/cmdline is read again.
const CMDLINE_TRIES: u32 = 50;

/// A ledger missing while the wrapper has already read the reload signal (so it counted it, and
/// wrote the ledger or failed to) is waited for this long: the time an older wrapper without a
/// ledger takes to re-execute into this version, which writes one.
const MISSING_GRACE: Duration = Duration::from_secs(2);

/// When the ledger cannot be read: is that the wrapper's failure to record the result (then why,
/// in one line), or may it still come (None)?
fn unrecorded(
    pid: i32,
    run_dir: &Path,
    file: &Path,
    err: &ledger::LoadError,
    missing_for_long: bool,
) -> Option<String> {
    let cannot = |why: String| {
        Some(format!(
            "haproxy-systemd-wrapper (pid {}) could not record the reload's result: {}; see its log (systemctl status)",
            pid, why
        ))
    };
    match err {
        // Emptied before the wrapper counted our request (the signal still pending): an earlier
        // failure; its attempt to record ours is still to come.
        ledger::LoadError::Unrecorded if signal_pending(pid) != Some(false) => None,
        ledger::LoadError::Unrecorded => cannot(format!(
            "it failed to write its reload ledger {} (a full or unwritable run directory)",
            file.display()
        )),
        ledger::LoadError::Bad(why) => cannot(format!("its reload ledger {} is unreadable ({})", file.display(), why)),
        ledger::LoadError::Missing => match ledger::check_dir(run_dir) {
            Err(Some(why)) => cannot(format!("its run directory is unusable ({})", why)),
            _ if missing_for_long => cannot(format!(
                "its reload ledger {} is missing {} s after the request was counted",
                file.display(),
                MISSING_GRACE.as_secs()
            )),
            _ => None,
        },
    }
}

fn signal_pending(pid: i32) -> Option<bool> {
    std::fs::read_to_string(format!("/proc/{}/status", pid))
        .ok()
        .and_then(|s| reload_pending(&s))
}

/// The wrapper that wrote the ledger is no more: its pid is gone, reused (another start time), or
/// a zombie (it exited; its parent has not reaped it yet).
fn wrapper_gone(pid: i32, start: u64) -> bool {
    crate::procs::start_time(pid) != Some(start) || matches!(crate::procs::stat(pid), Some((_, 'Z')) | None)
}

/// Waits for a change in the run directory (or `max`), whichever comes first.
struct Waiter {
    inotify: Option<nix::sys::inotify::Inotify>,
}

impl Waiter {
    fn new(dir: &Path) -> Waiter {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .ok()
            .filter(|i| {
                i.add_watch(
                    dir,
                    AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_DELETE,
                )
                .is_ok()
            });
        Waiter { inotify }
    }

    fn wait(&self, max: Duration) {
        use nix::poll::{poll, PollFd, PollFlags};
        use std::os::unix::io::AsRawFd;
        let ms = max.as_millis().min(i32::MAX as u128) as i32;
        match &self.inotify {
            Some(i) => {
                let mut fds = [PollFd::new(i.as_raw_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, ms);
                let _ = i.read_events();
            }
            // No inotify: look again soon.
            None => std::thread::sleep(max.min(Duration::from_millis(20))),
        }
    }
}

/// Liveness and the signal's state are looked at again at least this often.
const RECHECK: Duration = Duration::from_millis(100);

pub fn wait_reload(opts: &WaitOptions) -> u8 {
    let pid = opts.pid;
    let deadline = clock::deadline_after(opts.timeout);
    let start = match crate::procs::start_time(pid) {
        Some(s) => s,
        None => {
            error!("no process {}: haproxy-systemd-wrapper is not running", pid);
            return EXIT_NO_WRAPPER;
        }
    };
    if looks_like_wrapper(pid) && is_client(pid) {
        error!(
            "process {} is a --wait-reload client, not haproxy-systemd-wrapper: give it the wrapper's pid ($MAINPID)",
            pid
        );
        return EXIT_NO_WRAPPER;
    }
    let file = ledger::path(&opts.run_dir, pid);
    let waiter = Waiter::new(&opts.run_dir);
    // First whether the signal is still pending, then the ledger: the wrapper counts a request
    // in the ledger before it reads the signal, so a signal no longer pending is counted.
    let asked_at = clock::now_ns();
    let pending = signal_pending(pid);
    let first = loop {
        let err = match ledger::load(&file) {
            Ok(l) => break l,
            Err(e) => e,
        };
        if wrapper_gone(pid, start) || !looks_like_wrapper(pid) {
            let what = if wrapper_gone(pid, start) {
                "ended"
            } else {
                "is not haproxy-systemd-wrapper"
            };
            error!("process {} {}: cannot learn the reload's result", pid, what);
            return EXIT_NO_WRAPPER;
        }
        // A ledger still missing once the signal has been read (and so counted) for a while.
        let missing_for_long =
            clock::now_ns() >= clock::after(asked_at, MISSING_GRACE) && signal_pending(pid) == Some(false);
        if let Some(why) = unrecorded(pid, &opts.run_dir, &file, &err, missing_for_long) {
            error!("{}", why);
            return EXIT_UNRECORDED;
        }
        if clock::now_ns() >= deadline {
            error!(
                "no reload ledger {} for pid {} after {} s: cannot learn the reload's result",
                file.display(),
                pid,
                opts.timeout.as_secs_f64()
            );
            return EXIT_TIMEOUT;
        }
        waiter.wait(RECHECK);
    };
    if first.pid != pid || first.start_time != start {
        error!("{} belongs to another process than pid {}", file.display(), pid);
        return EXIT_NO_WRAPPER;
    }
    let target = match pending {
        Some(true) => Target::BegunAfter(asked_at),
        Some(false) if first.requests > 0 => Target::Covers(first.requests),
        Some(false) => {
            error!("no reload was asked of pid {} (send it SIGUSR2 first)", pid);
            return crate::error::EXIT_USAGE;
        }
        None if wrapper_gone(pid, start) => {
            error!("haproxy-systemd-wrapper (pid {}) ended before the reload finished", pid);
            return EXIT_NO_WRAPPER;
        }
        None => {
            error!("cannot read the signal state of pid {}", pid);
            return EXIT_NO_WRAPPER;
        }
    };
    let mut ledger = first;
    loop {
        match answer(&ledger, target) {
            Answer::Served { gen, ms } => {
                println!("reload ok: gen {} serving, ready in {} ms", gen, ms);
                return EXIT_OK;
            }
            Answer::Failed {
                gen,
                late: Late::Served { ms: late_ms },
                ms,
                ..
            } => {
                println!(
                    "reload ok: gen {} serving, ready in {} ms (late: reported failed after {} ms, at --ready-timeout)",
                    gen, late_ms, ms
                );
                return EXIT_OK;
            }
            Answer::Failed {
                gen,
                ms,
                reasons,
                late,
                restarted,
            } => {
                let mut lines = reasons.iter();
                let summary = lines.next().map(String::as_str).unwrap_or("no reason recorded");
                if late == Late::Possible {
                    // The master cannot be told to give the reload up: it may still take effect.
                    error!(
                        "reload to gen {} failed after {} ms: {}; haproxy may still complete it",
                        gen, ms, summary
                    );
                } else if restarted {
                    // haproxy stopped every generation; the wrapper started it again.
                    error!(
                        "reload to gen {} failed after {} ms and haproxy stopped every generation; the wrapper started haproxy again with the configuration on disk: {}",
                        gen, ms, summary
                    );
                } else if ledger.stopping {
                    // The wrapper found nothing serving after the failure (or was asked to stop).
                    error!(
                        "reload to gen {} failed after {} ms and the service is stopping: {}",
                        gen, ms, summary
                    );
                } else {
                    error!(
                        "reload to gen {} failed after {} ms, the previous generation keeps serving: {}",
                        gen, ms, summary
                    );
                }
                // haproxy's own [ALERT] lines (tag restored), so that `systemctl status` shows them.
                for l in lines {
                    error!("[ALERT] (haproxy) : {}", l);
                }
                return EXIT_FAILED;
            }
            Answer::Stopping => {
                error!(
                    "haproxy-systemd-wrapper (pid {}) is stopping: the reload did not take effect",
                    pid
                );
                return EXIT_NO_WRAPPER;
            }
            Answer::Wait => {}
        }
        let now = clock::now_ns();
        if now >= deadline {
            error!(
                "no result for the reload after {} s: it is still in progress (see systemctl status)",
                opts.timeout.as_secs_f64()
            );
            return EXIT_TIMEOUT;
        }
        waiter.wait(RECHECK.min(Duration::from_nanos(deadline - now)));
        if wrapper_gone(pid, start) {
            error!("haproxy-systemd-wrapper (pid {}) ended before the reload finished", pid);
            return EXIT_NO_WRAPPER;
        }
        match ledger::load(&file) {
            Ok(l) => ledger = l,
            Err(e) => {
                // Removed at exit: the wrapper is ending.
                if wrapper_gone(pid, start) {
                    error!("haproxy-systemd-wrapper (pid {}) ended before the reload finished", pid);
                    return EXIT_NO_WRAPPER;
                }
                // Emptied or unreadable: said at once. Missing (the run directory removed): the
                // wrapper writes it again, recreating the directory, at its next change.
                if let Some(why) = unrecorded(pid, &opts.run_dir, &file, &e, false) {
                    error!("{}", why);
                    return EXIT_UNRECORDED;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> Ledger {
        let mut l = Ledger::new(9, 1);
        l.requests = 1;
        let a = l.begin(2, 100);
        l.finish(a, Outcome::Ok { ms: 40 });
        l.requests = 3;
        let b = l.begin(3, 200);
        l.finish(
            b,
            Outcome::Failed {
                ms: 7,
                reasons: vec!["bad".into()],
            },
        );
        l.requests = 4;
        l.begin(4, 300);
        l
    }

    #[test]
    fn the_attempt_that_answers_the_request() {
        let mut l = ledger();
        assert_eq!(answer(&l, Target::Covers(1)), Answer::Served { gen: 2, ms: 40 });
        assert_eq!(
            answer(&l, Target::Covers(2)),
            Answer::Failed {
                gen: 3,
                ms: 7,
                reasons: &["bad".to_string()],
                late: Late::No,
                restarted: false
            }
        );
        assert_eq!(
            answer(&l, Target::Covers(3)),
            Answer::Failed {
                gen: 3,
                ms: 7,
                reasons: &["bad".to_string()],
                late: Late::No,
                restarted: false
            }
        );
        // Counted, its attempt still running.
        assert_eq!(answer(&l, Target::Covers(4)), Answer::Wait);
        // Counted, not begun yet (coalesced into the next attempt).
        assert_eq!(answer(&l, Target::Covers(5)), Answer::Wait);
        // Pending when asked at t=150: the attempt begun at 200 answers, never the one of 100.
        assert_eq!(
            answer(&l, Target::BegunAfter(150)),
            Answer::Failed {
                gen: 3,
                ms: 7,
                reasons: &["bad".to_string()],
                late: Late::No,
                restarted: false
            }
        );
        assert_eq!(answer(&l, Target::BegunAfter(300)), Answer::Wait);
        l.stopping = true;
        assert_eq!(answer(&l, Target::BegunAfter(300)), Answer::Stopping);
        // A verdict already given stands even while stopping.
        assert_eq!(answer(&l, Target::Covers(1)), Answer::Served { gen: 2, ms: 40 });
    }

    #[test]
    fn pending_reload_signals_from_proc_status() {
        let st =
            |shd: &str, sig: &str| format!("Name:\tx\nSigQ:\t0/1\nSigPnd:\t{}\nShdPnd:\t{}\nSigBlk:\t0\n", sig, shd);
        assert_eq!(reload_pending(&st("0000000000000000", "0000000000000000")), Some(false));
        assert_eq!(reload_pending(&st("0000000000000800", "0000000000000000")), Some(true)); // SIGUSR2
        assert_eq!(reload_pending(&st("0000000000000000", "0000000000000001")), Some(true)); // SIGHUP
        assert_eq!(reload_pending(&st("0000000000010000", "0000000000000000")), Some(false)); // SIGCHLD
        assert_eq!(reload_pending("Name:\tx\n"), None);
    }
}
