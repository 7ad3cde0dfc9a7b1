//! The one way the wrapper stops: SIGTERM (or SIGUSR1, graceful) to haproxy, SIGKILL to
//! everything left after --stop-timeout, then the exit status.
//!
//! A graceful stop has no deadline once haproxy acted on it: draining connections take the time
//! they take. Until it acted (master-worker: the master said STOPPING=1; a master re-executing
//! itself on a reload drops signals), SIGUSR1 is sent again every `RESEND`, and after
//! --stop-timeout without an answer the stop becomes a SIGTERM stop (SIGKILL another
//! --stop-timeout later): a dropped SIGUSR1 ends in at most twice --stop-timeout.

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use std::time::Duration;

use super::{Phase, Supervisor};
use crate::clock;
use crate::error::{status_code, Error};
use crate::haproxy;
use crate::mode::Abandon;
use crate::procs;

/// After the SIGKILL of a stop, how often the wrapper looks for processes that became its own
/// since (workers reparented to it, the subreaper) and kills them too.
const KILL_SWEEP: Duration = Duration::from_millis(100);

/// The stopping phase: what the loop keeps of a stop in progress.
pub(super) struct Stop {
    /// When SIGKILL follows SIGTERM (None: a graceful stop, or already killed).
    pub(super) kill_deadline_ns: Option<u64>,
    /// A graceful stop that haproxy has not acted on yet (`GracefulStop`).
    pub(super) unacknowledged: Option<GracefulStop>,
    /// The processes the wrapper SIGKILLed, and when it next looks for more.
    pub(super) killed: Vec<i32>,
    pub(super) next_sweep_ns: Option<u64>,
}

/// A graceful stop waiting for haproxy to act on its SIGUSR1.
pub(super) struct GracefulStop {
    /// When SIGUSR1 is sent again.
    pub(super) resend_ns: u64,
    /// When the stop becomes a SIGTERM stop (--stop-timeout after the SIGUSR1).
    pub(super) escalate_ns: u64,
}

/// How often a graceful stop's SIGUSR1 is sent again until haproxy acted on it.
const RESEND: Duration = Duration::from_millis(500);

/// How a stop begins: SIGTERM (SIGKILL after --stop-timeout), or graceful (SIGUSR1: connections
/// drain for as long as they take).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopHow {
    Terminate,
    Graceful,
}

impl Supervisor {
    /// The one way to stop: SIGTERM (or SIGUSR1, graceful) to haproxy, SIGKILL to everything
    /// left after --stop-timeout; the loop ends when no child is left.
    pub(super) fn begin_stop(&mut self, how: StopHow) {
        let graceful = how == StopHow::Graceful;
        if let Phase::Stopping(stop) = &self.phase {
            if graceful || stop.kill_deadline_ns.is_some() || !stop.killed.is_empty() {
                return; // already stopping at least this hard
            }
        }
        if self.take_attempt().is_some() {
            self.protocol.abandon(Abandon::Stopping);
        }
        if !matches!(self.phase, Phase::Stopping(_)) {
            self.systemd.stopping();
            self.ledger.stopping();
        }
        let sig = if graceful { Signal::SIGUSR1 } else { Signal::SIGTERM };
        let mut targets = self.protocol.signal_targets();
        if !graceful {
            // Anything else of ours: orphaned workers of a dead master, leftovers.
            match procs::children_of(self.wrapper_pid) {
                Ok(children) => targets.extend(children),
                // The SIGKILL rounds after --stop-timeout walk the tree again.
                Err(e) => warning!("cannot list the wrapper's children ({}): SIGTERM to haproxy only", e),
            }
            targets.sort_unstable();
            targets.dedup();
        }
        for pid in targets {
            haproxy::signal(pid, sig);
        }
        let kill_deadline_ns = if graceful {
            None
        } else {
            Some(clock::deadline_after(self.opts.stop_timeout))
        };
        let unacknowledged = if graceful && self.protocol.acknowledges_stop() {
            Some(GracefulStop {
                resend_ns: clock::deadline_after(RESEND),
                escalate_ns: clock::deadline_after(self.opts.stop_timeout),
            })
        } else {
            None
        };
        self.phase = Phase::Stopping(Stop {
            kill_deadline_ns,
            unacknowledged,
            killed: vec![],
            next_sweep_ns: None,
        });
    }

    /// haproxy acted on the graceful stop: from now on its drain is awaited, however long.
    pub(super) fn stop_acknowledged(&mut self) {
        if let Phase::Stopping(stop) = &mut self.phase {
            if stop.unacknowledged.take().is_some() {
                info!("haproxy acted on the graceful stop; waiting for its connections to finish");
            }
        }
    }

    /// haproxy said it was ready again after it acted on the graceful stop: a master that was
    /// busy reloading handled SIGUSR1, then finished the reload with a new worker (haproxy 2.6).
    /// The stop still stands: ask again, with the same bound as the first time.
    pub(super) fn stop_undone(&mut self) {
        let stop = match &mut self.phase {
            Phase::Stopping(stop)
                if stop.kill_deadline_ns.is_none() && stop.killed.is_empty() && stop.unacknowledged.is_none() =>
            {
                stop
            }
            _ => return,
        };
        stop.unacknowledged = Some(GracefulStop {
            resend_ns: clock::deadline_after(RESEND),
            escalate_ns: clock::deadline_after(self.opts.stop_timeout),
        });
        let targets = self.protocol.signal_targets();
        warning!("haproxy is ready again after it acted on the graceful stop (a reload it was busy with): sending SIGUSR1 again to {:?}", targets);
        for pid in targets {
            haproxy::signal(pid, Signal::SIGUSR1);
        }
    }

    /// A graceful stop haproxy has not acted on yet: SIGUSR1 again, or after --stop-timeout, SIGTERM.
    fn press_graceful_stop(&mut self, now: u64) {
        let graceful = match &mut self.phase {
            Phase::Stopping(Stop {
                unacknowledged: Some(graceful),
                ..
            }) => graceful,
            _ => return,
        };
        if now >= graceful.escalate_ns {
            warning!(
                "haproxy did not act on SIGUSR1 within {} s (a master busy reloading drops signals): stopping with SIGTERM",
                self.opts.stop_timeout.as_secs_f64()
            );
            if let Phase::Stopping(stop) = &mut self.phase {
                stop.unacknowledged = None;
            }
            self.begin_stop(StopHow::Terminate);
        } else if now >= graceful.resend_ns {
            graceful.resend_ns = clock::after(now, RESEND);
            let targets = self.protocol.signal_targets();
            info!(
                "haproxy has not acted on SIGUSR1 yet: sending it again to {:?}",
                targets
            );
            for pid in targets {
                haproxy::signal(pid, Signal::SIGUSR1);
            }
        }
    }

    /// After --stop-timeout: SIGKILL to every process below the wrapper, and again to any that
    /// becomes its own later (workers reparented to it when their master died).
    pub(super) fn kill_when_due(&mut self, now: u64) {
        self.press_graceful_stop(now);
        let stop = match &mut self.phase {
            Phase::Stopping(stop) => stop,
            _ => return,
        };
        let first_round = stop.kill_deadline_ns.map_or(false, |d| now >= d);
        let sweep = stop.next_sweep_ns.map_or(false, |t| now >= t);
        if !first_round && !sweep {
            return;
        }
        let pids = match procs::descendants_of(self.wrapper_pid) {
            Ok(pids) => pids,
            Err(e) => {
                // Kill what is known now; the next sweep walks the tree again.
                let known = self.protocol.signal_targets();
                warning!(
                    "cannot list the processes below the wrapper ({}): SIGKILL to {:?}, trying again in {} ms",
                    e,
                    known,
                    KILL_SWEEP.as_millis()
                );
                known
            }
        };
        if first_round {
            warning!(
                "haproxy still running {} s after SIGTERM: sending SIGKILL to pids {:?}",
                self.opts.stop_timeout.as_secs_f64(),
                pids
            );
        } else if !pids.is_empty() {
            warning!("sending SIGKILL to pids {:?}, left after the stop's SIGKILL", pids);
        }
        for &pid in &pids {
            haproxy::signal(pid, Signal::SIGKILL);
        }
        stop.killed.extend(pids);
        stop.kill_deadline_ns = None;
        stop.next_sweep_ns = Some(clock::after(now, KILL_SWEEP));
    }

    pub(super) fn no_children_left(&mut self) -> bool {
        self.reap();
        matches!(
            waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)),
            Err(nix::Error::ECHILD)
        )
    }

    pub(super) fn finish(mut self) -> Result<u8, Error> {
        self.protocol.finish();
        self.ledger.remove();
        if let Some(e) = self.fatal.take() {
            return Err(e);
        }
        let killed_by_us: &[i32] = match &self.phase {
            Phase::Stopping(stop) => &stop.killed,
            _ => &[],
        };
        let code = exit_status(self.exit_code, self.serving_status, killed_by_us);
        notice!("stopped, exit status {}", code);
        Ok(code)
    }
}

/// The wrapper's exit status once everything has stopped: the one decided when the stop began
/// (failed start, serving haproxy died), else 0 for a requested stop that haproxy completed or
/// the wrapper's own SIGKILL ended, else the serving haproxy's own end (128+N for a signal the
/// wrapper did not send: an OOM kill is 137, and Restart= brings the service back).
fn exit_status(decided: Option<u8>, serving_end: Option<WaitStatus>, killed_by_us: &[i32]) -> u8 {
    if let Some(code) = decided {
        return code;
    }
    match serving_end {
        None => 0,
        Some(WaitStatus::Exited(_, 0)) | Some(WaitStatus::Exited(_, 143)) => 0,
        Some(WaitStatus::Signaled(_, Signal::SIGTERM, _)) | Some(WaitStatus::Signaled(_, Signal::SIGUSR1, _)) => 0,
        Some(WaitStatus::Signaled(pid, Signal::SIGKILL, _)) if killed_by_us.contains(&pid.as_raw()) => 0,
        Some(st) => status_code(&st).unwrap_or(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_requested_stop_exits_0_unless_haproxy_ended_otherwise() {
        let p = Pid::from_raw(4_200_001);
        assert_eq!(exit_status(None, None, &[]), 0);
        assert_eq!(exit_status(None, Some(WaitStatus::Exited(p, 0)), &[]), 0);
        assert_eq!(exit_status(None, Some(WaitStatus::Exited(p, 143)), &[]), 0);
        assert_eq!(
            exit_status(None, Some(WaitStatus::Signaled(p, Signal::SIGTERM, false)), &[]),
            0
        );
        assert_eq!(exit_status(None, Some(WaitStatus::Exited(p, 3)), &[]), 3);
        // The wrapper's own SIGKILL after --stop-timeout completes the stop...
        let killed = Some(WaitStatus::Signaled(p, Signal::SIGKILL, false));
        assert_eq!(exit_status(None, killed, &[4_200_005, 4_200_001]), 0);
        // ...a SIGKILL it did not send (the OOM killer) is 137, so Restart= restarts the service.
        assert_eq!(exit_status(None, killed, &[4_200_005]), 137);
        // A status decided when the stop began wins.
        assert_eq!(exit_status(Some(69), killed, &[4_200_001]), 69);
    }
}
