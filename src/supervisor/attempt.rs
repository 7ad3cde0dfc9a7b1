//! Attempts at a new generation: the first start and reloads (with the wrapper's re-exec),
//! and what their verdicts change.

use nix::sys::signal::Signal;

use super::status::phase_text;
use super::{Attempt, Phase, Supervisor};
use crate::clock::{self, now_ns};
use crate::error::status_code;
use crate::haproxy;
use crate::ledger;
use crate::reexec;
use crate::state::{Carried, LastReload};

impl Supervisor {
    pub(super) fn on_reload_request(&mut self, sig: Signal) {
        match self.phase {
            Phase::Running => {
                notice!("{} received: reloading", sig);
                self.reload_now();
            }
            Phase::Starting(_) | Phase::Reloading(_) => {
                if !self.pending_reload {
                    notice!("{} received during a start or reload: one more reload will follow", sig);
                }
                self.pending_reload = true;
            }
            Phase::Stopping(_) => notice!("{} received while stopping: ignored", sig),
        }
    }

    /// The state to carry across the re-exec.
    fn carried(&self, reload_started_ns: u64) -> Carried {
        Carried {
            wrapper_pid: self.wrapper_pid,
            exe: self.exe.clone(),
            next_gen: self.next_gen,
            last_reload: self.last_reload.clone(),
            reloads: self.reloads,
            relay_read: self.relay.r,
            relay_write: self.relay.w,
            reload_started_ns,
            generations: self.protocol.generations(),
        }
    }

    /// Re-executes the wrapper (same pid, the program now on disk), which then starts the reload;
    /// if the exec fails, reloads in this image.
    pub(super) fn reload_now(&mut self) {
        let t0 = now_ns();
        self.pending_reload = false;
        let status = self.status_with(&phase_text("reloading", self.next_gen, self.protocol.name()));
        self.systemd.reloading(&status);
        if let Some(partial) = self.relay.take_partial() {
            crate::log::write(crate::log::haproxy_line_priority(&partial), format_args!("{}", partial));
        }
        let carried = self.carried(t0);
        let fds = carried.descriptors();
        let mut ok = true;
        for fd in &fds {
            if let Err(e) = haproxy::set_cloexec(*fd, false) {
                warning!("cannot keep fd {} across re-exec: {}", fd, e);
                ok = false;
            }
        }
        if ok {
            let err = reexec::exec(&self.exe, &carried);
            warning!("re-exec of {} failed: {}; reloading without it", self.exe.display(), err);
        }
        for fd in &fds {
            let _ = haproxy::set_cloexec(*fd, true);
        }
        self.begin_attempt(t0, false);
    }

    pub(super) fn begin_attempt(&mut self, started_ns: u64, first: bool) {
        if !first {
            // Messages from before this reload must not be taken for its answer.
            self.on_messages();
        }
        let gen = self.next_gen;
        self.next_gen += 1;
        let ledger_seq = match (&mut self.ledger, first) {
            (Some(ledger), false) => Some(ledger.begin(gen, started_ns)),
            _ => None,
        };
        let attempt = Attempt { gen, first, started_ns, deadline_ns: clock::deadline_after(self.opts.ready_timeout), alerts: vec![], ledger_seq };
        self.phase = if first { Phase::Starting(attempt) } else { Phase::Reloading(attempt) };
        match self.protocol.begin(gen, first) {
            // A reload announced itself with RELOADING=1 before the re-exec.
            Ok(()) if first => {
                let status = self.status_with(&phase_text("starting", gen, self.protocol.name()));
                self.systemd.status(&status);
            }
            Ok(()) => {}
            Err(e) => self.attempt_failed(e.to_string(), e.exit_code()),
        }
    }

    pub(super) fn take_attempt(&mut self) -> Option<Attempt> {
        match std::mem::replace(&mut self.phase, Phase::Running) {
            Phase::Starting(attempt) | Phase::Reloading(attempt) => Some(attempt),
            other => {
                self.phase = other;
                None
            }
        }
    }

    pub(super) fn attempt_succeeded(&mut self) {
        let attempt = match self.take_attempt() {
            Some(attempt) => attempt,
            None => return,
        };
        let ms = clock::ms_since(attempt.started_ns);
        let pid = self.protocol.commit();
        if attempt.first {
            notice!("gen {}: {} serving, ready in {} ms", attempt.gen, self.protocol.serving_label(pid), ms);
        } else {
            self.reloads += 1;
            self.last_reload = LastReload::Ok { ms };
            if let (Some(seq), Some(ledger)) = (attempt.ledger_seq, &mut self.ledger) {
                ledger.finish(seq, ledger::Outcome::Ok { ms });
            }
            notice!("reload {} ok in {} ms: gen {} pid {} serving, draining {:?}", self.reloads, ms, attempt.gen, pid, self.protocol.draining());
        }
        let status = self.status_with("");
        self.systemd.ready(&status);
        if self.pending_reload {
            self.reload_now();
        }
    }

    /// The attempt failed. A first start ends the wrapper with `code`; a reload leaves the
    /// serving generation untouched.
    pub(super) fn attempt_failed(&mut self, reason: String, code: u8) {
        // Lines the failed haproxy wrote before it ended belong to this attempt's reason.
        self.relay_output();
        let attempt = match self.take_attempt() {
            Some(attempt) => attempt,
            None => return,
        };
        let ms = clock::ms_since(attempt.started_ns);
        let reason = match attempt.alerts.first() {
            Some(alert) => format!("{} ({})", alert, reason),
            None => reason,
        };
        let serving_ended = self.protocol.abandon(!attempt.first);
        if attempt.first {
            error!("gen {}: haproxy failed to start after {} ms: {}", attempt.gen, ms, reason);
            self.exit_code = Some(code);
            self.begin_stop(false);
            return;
        }
        self.next_gen = attempt.gen;
        self.last_reload = LastReload::Failed { ms, reason: reason.clone() };
        if let (Some(seq), Some(ledger)) = (attempt.ledger_seq, &mut self.ledger) {
            let mut reasons = vec![reason.clone()];
            reasons.extend(attempt.alerts.iter().cloned());
            ledger.finish(seq, ledger::Outcome::Failed { ms, reasons });
        }
        error!("reload failed after {} ms, the previous generation keeps serving: {}", ms, reason);
        if let Some(status) = serving_ended {
            error!("the serving haproxy ended during the failed reload: stopping");
            self.exit_code = Some(status_code(&status).unwrap_or(1));
            self.begin_stop(false);
            return;
        }
        let status = self.status_with("");
        self.systemd.ready(&status);
        if self.pending_reload {
            self.reload_now();
        }
    }
}
