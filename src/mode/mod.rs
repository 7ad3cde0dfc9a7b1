//! The two ways of running haproxy, each behind the `Protocol` trait: the supervisor's loop
//! (src/supervisor) drives either one without knowing which.
//!
//! - `foreground`: one haproxy per generation, `-sf` and the readiness sentinel, `-x`, the pid file.
//! - `master_worker`: one haproxy master, its private notify socket, READY=1 and worker lists.
//!
//! A protocol turns events (a child ended, a line of haproxy's output, a message of the master,
//! a deadline) into an `Change` for the attempt in progress or the serving generation. It takes
//! facts as input (the master's children are read when its READY=1 arrives, not while judging),
//! so that its verdicts are tested in-process, without starting anything.
//!
//! Imports: this module and its children never import the supervisor.

use std::os::unix::io::RawFd;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::wait::WaitStatus;

use crate::cli::{HaproxyArgs, Mode};
use crate::error::{self, Error};
use crate::listeners::HandoverArg;
use crate::state::Generations;

pub mod foreground;
pub mod master_worker;

/// Something that happened, as a protocol sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A child of the wrapper ended (reaped).
    ChildEnded { pid: i32, status: WaitStatus },
    /// One line haproxy printed.
    Line(String),
    /// master-worker: a datagram from the master on its private socket. `children` are the
    /// master's children read when the datagram said READY=1; None for other datagrams, and
    /// for a READY=1 when /proc could not be read (an unknown list, never an empty one).
    MasterSaid {
        message: String,
        children: Option<Vec<i32>>,
    },
    /// The attempt in progress was not ready within --ready-timeout.
    Deadline { ready_timeout: Duration },
}

/// The verdict on the attempt in progress (a start or a reload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not decided yet.
    Pending,
    /// The new generation is serving.
    Serving,
    /// The attempt failed; `code` is the exit status should this be the first start.
    Failed { reason: String, code: u8 },
}

/// After a failed reload, what is left of the serving generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StillServing {
    Yes,
    /// Its processes live, but by what /proc shows they may not serve (why).
    Unsure(String),
    /// Its processes are gone: nothing serves.
    No,
}

/// What an event means to the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Nothing the loop acts on.
    Nothing,
    /// What STATUS shows changed (a draining generation finished, workers came or went).
    StatusChanged,
    /// News for the attempt in progress.
    Attempt(Verdict),
    /// The attempt started over (foreground: without `-x`): what haproxy printed so far no
    /// longer explains it.
    StartedOver,
    /// The serving generation ended on its own (outside an attempt that decides for it).
    ServingEnded(WaitStatus),
    /// haproxy acted on a stop request (master-worker: the master said STOPPING=1).
    Stopping,
    /// master-worker: a reload reported failed at --ready-timeout ended, `ms` after it was asked
    /// for: it took effect (its generation serves now), or not.
    LateReload { gen: u32, took_effect: bool, ms: u64 },
}

/// Where haproxy is started from: its program, its classified arguments, the relay pipe's write end.
#[derive(Debug, Clone)]
pub struct Launch {
    pub program: PathBuf,
    pub args: HaproxyArgs,
    pub relay_write: RawFd,
    /// Foreground mode: at most this many draining generations (`--max-draining`).
    pub max_draining: u32,
}

#[cfg(test)]
impl Launch {
    /// For the modes' unit tests: haproxy's arguments `args`, a program that does not exist
    /// (nothing is started), the default `--max-draining`.
    pub fn for_tests(args: &[&str]) -> Launch {
        let args = match crate::cli::parse(args.iter().copied()).unwrap() {
            crate::cli::Command::Supervise(_, h) => h,
            _ => unreachable!(),
        };
        Launch {
            program: PathBuf::from("/nonexistent/haproxy"),
            args,
            relay_write: 2,
            max_draining: 50,
        }
    }
}

/// Why an attempt is given up (`Protocol::abandon`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abandon {
    /// The first start failed: nothing serves.
    StartFailed,
    /// A reload failed: the serving generation goes on (and is resumed if it was paused).
    ReloadFailed,
    /// The wrapper stops.
    Stopping,
}

/// One haproxy mode. The loop calls `begin` to start a generation (the first start, or a reload
/// with a generation serving), feeds it events until an `Change::Attempt` verdict other than
/// `Pending`, then `commit` or `abandon`s the attempt.
pub trait Protocol {
    /// "foreground" or "master-worker".
    fn name(&self) -> &'static str;

    /// A descriptor the loop should poll for this protocol's own messages (the master's socket).
    fn message_fd(&self) -> Option<RawFd>;

    /// Reads what arrived on `message_fd` as events (the master's children read for a READY=1).
    fn read_messages(&mut self) -> Vec<Event>;

    /// Starts generation `gen`: the first start, or a reload (foreground: a new haproxy; master-
    /// worker: SIGUSR2 to the master). `handover`: the wrapper's own `-x` with the listening
    /// sockets it holds, for a haproxy it starts (src/listeners.rs). An error is the attempt's
    /// failure.
    fn begin(&mut self, gen: u32, first: bool, handover: Option<&HandoverArg>) -> Result<(), Error>;

    /// Whether a reload's new haproxy takes the wrapper's hand-over (foreground mode without a
    /// `-x` of the user's); a first start always does when the wrapper holds sockets.
    fn takes_handover_on_reload(&self) -> bool {
        false
    }

    /// Whether a reload whose new configuration cannot bind makes haproxy pause the serving
    /// listeners while it retries (master-worker: the master pauses its workers, SIGTTOU, for
    /// about 2 s). The wrapper then listens on its copies again (`Held::relisten`). Foreground
    /// mode never puts the serving generation in `-sf`, so nothing pauses it.
    fn pauses_listeners_on_failed_bind(&self) -> bool {
        false
    }

    /// Nothing serves any more and a new generation is about to start in its place: the serving
    /// generation is forgotten; its process, when it still lives (a master slow to exit after
    /// haproxy stopped its workers), is returned for the caller to end.
    fn forget_serving(&mut self) -> Option<i32>;

    /// The serving generation's processes that accept (foreground: its haproxy; master-worker:
    /// its workers): the listening sockets the wrapper holds are theirs.
    fn listener_pids(&self) -> Vec<i32>;

    /// What `event` means. `alerts`: the [ALERT] texts of the attempt in progress so far.
    fn on_event(&mut self, event: &Event, alerts: &[String]) -> Change;

    /// A process whose end decides the attempt in progress: such ends are judged before the
    /// others that were reaped at the same time (the new generation's readiness comes before
    /// the old one finishing).
    fn decides_attempt(&self, pid: i32) -> bool;

    /// The attempt is serving: it becomes the serving generation. Returns the pid to name in
    /// the log (the new haproxy or the master).
    fn commit(&mut self) -> i32;

    /// The attempt failed or is given up: ends what it started that is not serving. After a
    /// failed reload, returns the serving generation's own end if it ended meanwhile.
    fn abandon(&mut self, why: Abandon) -> Option<WaitStatus>;

    /// The processes to pass SIGTTOU/SIGTTIN on to, and to stop (SIGTERM/SIGUSR1).
    fn signal_targets(&self) -> Vec<i32>;

    /// Whether haproxy says when it acts on a stop request (`Change::Stopping`). A graceful stop
    /// is then re-sent until haproxy acted on it, and escalated when it never does (a master busy
    /// reloading drops signals); without it, the SIGUSR1 is sent once and the drain is awaited.
    fn acknowledges_stop(&self) -> bool;

    /// The serving generation's process (haproxy or master), for the watchdog.
    fn serving_pid(&self) -> Option<i32>;

    /// After a failed reload: does the serving generation still serve? (master-worker: a new
    /// worker that fails can make haproxy stop every process, its exit-on-failure.) Brings what
    /// STATUS shows up to date. Foreground: the reload's verdict already knows (`abandon`).
    fn still_serving(&mut self) -> StillServing {
        StillServing::Yes
    }

    /// "gen 3 serving (pid 1234)" for STATUS, or None before the first start.
    fn serving_text(&self) -> Option<String>;

    /// "haproxy pid 1234" / "master pid 1234", for the log.
    fn serving_label(&self, pid: i32) -> String;

    /// The pids of older generations still draining, for STATUS and the log.
    fn draining(&self) -> Vec<i32>;

    /// When the protocol next wants `on_tick` (master-worker: looking for drained workers).
    fn next_tick_ns(&self) -> Option<u64>;

    /// Periodic work; true when what STATUS shows changed.
    fn on_tick(&mut self, now_ns: u64) -> bool;

    /// The generations, for the state carried across the re-exec (with a reload in progress,
    /// when `reloads_before_reexec`).
    fn generations(&self) -> Generations;

    /// Whether a reload begins before the wrapper re-executes itself (and is carried across the
    /// exec) rather than after.
    fn reloads_before_reexec(&self) -> bool {
        false
    }

    /// Whether the attempt at generation `gen`, just failed, may still take effect (master-worker:
    /// a reload that timed out; the master cannot be told to give it up). Foreground: never (the
    /// new haproxy is killed).
    fn may_still_complete(&self, _gen: u32) -> bool {
        false
    }

    /// The service has stopped: remove what the protocol left behind (the pid file).
    fn finish(&mut self);
}

/// The protocol for `launch.args.mode`, fresh (nothing started) or from carried generations.
pub fn protocol(launch: Launch, carried: Option<Generations>, wrapper_pid: i32) -> Result<Box<dyn Protocol>, Error> {
    let internal = |what: &str, e: nix::Error| Error::Internal(format!("{}: {}", what, e));
    Ok(match (launch.args.mode, carried) {
        (Mode::Foreground, None) => Box::new(foreground::Foreground::fresh(launch)),
        (Mode::Foreground, Some(Generations::Foreground(generations))) => {
            Box::new(foreground::Foreground::resume(launch, generations, wrapper_pid))
        }
        (Mode::MasterWorker, None) => {
            let socket = crate::notify::MasterSocket::bind().map_err(|e| internal("master notify socket", e))?;
            Box::new(master_worker::MasterWorker::fresh(launch, socket))
        }
        (Mode::MasterWorker, Some(Generations::MasterWorker(generations))) => {
            let socket = crate::notify::MasterSocket::from_fd(generations.socket_fd)
                .map_err(|e| internal("carried master socket", e))?;
            Box::new(master_worker::MasterWorker::resume(launch, socket, generations))
        }
        (mode, Some(_)) => {
            return Err(Error::Internal(format!(
                "state carried across re-exec is not of {} mode",
                mode.name()
            )));
        }
    })
}

/// The verdict both modes give when the deadline passes.
pub fn not_ready(ready_timeout: Duration) -> Verdict {
    Verdict::Failed {
        reason: format!("not ready after {} s", ready_timeout.as_secs_f64()),
        code: error::EXIT_NOT_READY,
    }
}

/// "haproxy exited with status N" and N as the exit status. A haproxy that exits 0 before it
/// was ready (a configuration that only checks, `-cc` conditions) never served: should this be
/// the first start, the wrapper must not exit 0 as if stopped on request, so the status is 69,
/// "never became ready", like a start that timed out.
pub fn exited(status: &WaitStatus) -> Verdict {
    match error::status_code(status).unwrap_or(1) {
        0 => Verdict::Failed {
            reason: "haproxy exited with status 0 before it was ready".into(),
            code: error::EXIT_NOT_READY,
        },
        code => Verdict::Failed {
            reason: format!("haproxy exited with status {}", code),
            code,
        },
    }
}

/// "1300 1301", or "none".
pub fn pid_list(pids: &[i32]) -> String {
    if pids.is_empty() {
        "none".to_string()
    } else {
        pids.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;
    use nix::unistd::Pid;

    #[test]
    fn an_exit_before_ready_is_a_failure_and_never_exit_status_0() {
        let p = Pid::from_raw(4_300_001);
        let failed = |reason: &str, code| Verdict::Failed {
            reason: reason.into(),
            code,
        };
        assert_eq!(
            exited(&WaitStatus::Exited(p, 0)),
            failed("haproxy exited with status 0 before it was ready", 69)
        );
        assert_eq!(
            exited(&WaitStatus::Exited(p, 3)),
            failed("haproxy exited with status 3", 3)
        );
        assert_eq!(
            exited(&WaitStatus::Signaled(p, Signal::SIGSEGV, true)),
            failed("haproxy exited with status 139", 139)
        );
    }
}
