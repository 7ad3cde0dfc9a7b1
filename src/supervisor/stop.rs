//! The one way the wrapper stops: SIGTERM (or SIGUSR1, graceful) to haproxy, SIGKILL to
//! everything left after --stop-timeout, then the exit status.

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::{Phase, Stop, Supervisor};
use crate::clock;
use crate::error::{status_code, Error};
use crate::haproxy;
use crate::procs;

impl Supervisor {
    /// The one way to stop: SIGTERM (or SIGUSR1, graceful) to haproxy, SIGKILL to everything
    /// left after --stop-timeout; the loop ends when no child is left.
    pub(super) fn begin_stop(&mut self, graceful: bool) {
        if let Phase::Stopping(stop) = &self.phase {
            if graceful || stop.kill_deadline_ns.is_some() {
                return; // already stopping at least this hard
            }
        }
        if self.take_attempt().is_some() {
            self.protocol.abandon(false);
        }
        self.systemd.stopping();
        let sig = if graceful { Signal::SIGUSR1 } else { Signal::SIGTERM };
        let mut targets = self.protocol.signal_targets();
        if !graceful {
            // Anything else of ours: orphaned workers of a dead master, leftovers.
            targets.extend(procs::children_of(self.wrapper_pid));
            targets.sort_unstable();
            targets.dedup();
        }
        for pid in targets {
            haproxy::signal(pid, sig);
        }
        let kill_deadline_ns = if graceful { None } else { Some(clock::deadline_after(self.opts.stop_timeout)) };
        self.phase = Phase::Stopping(Stop { kill_deadline_ns });
    }

    /// After --stop-timeout: SIGKILL to every child of the wrapper.
    pub(super) fn kill_when_due(&mut self, now: u64) {
        let due = match &self.phase {
            Phase::Stopping(stop) => stop.kill_deadline_ns.map_or(false, |d| now >= d),
            _ => false,
        };
        if !due {
            return;
        }
        warning!("haproxy still running {} s after SIGTERM: sending SIGKILL", self.opts.stop_timeout.as_secs_f64());
        for pid in procs::children_of(self.wrapper_pid) {
            haproxy::signal(pid, Signal::SIGKILL);
        }
        self.phase = Phase::Stopping(Stop { kill_deadline_ns: None });
    }

    pub(super) fn no_children_left(&mut self) -> bool {
        self.reap();
        matches!(waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)), Err(nix::Error::ECHILD))
    }

    pub(super) fn finish(mut self) -> Result<u8, Error> {
        self.protocol.finish();
        if let Some(e) = self.fatal.take() {
            return Err(e);
        }
        let code = match self.exit_code {
            Some(c) => c,
            None => match self.serving_status {
                None => 0,
                Some(WaitStatus::Exited(_, 0)) | Some(WaitStatus::Exited(_, 143)) => 0,
                Some(WaitStatus::Signaled(_, Signal::SIGTERM, _)) | Some(WaitStatus::Signaled(_, Signal::SIGUSR1, _)) => 0,
                Some(st) => status_code(&st).unwrap_or(1),
            },
        };
        notice!("stopped, exit status {}", code);
        Ok(code)
    }
}
