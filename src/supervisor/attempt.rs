//! Attempts at a new generation: the first start and reloads (with the wrapper's re-exec),
//! and what their verdicts change.

use nix::sys::signal::Signal;

use super::status::phase_text;
use std::time::Duration;

use super::stop::StopHow;
use super::{Phase, Supervisor};
use crate::clock::{self, now_ns};
use crate::error::status_code;
use crate::haproxy;
use crate::ledger;
use crate::listeners::Handover;
use crate::mode::{Abandon, StillServing};
use crate::procs;
use crate::reexec;
use crate::state::{Carried, CarriedAttempt, LastReload};

/// One attempt at a new generation, the first start or a reload: what the loop keeps of it.
/// Its `carried` part (number, clock, deadline, ledger entry) crosses the re-exec whole; the rest
/// begins empty in the new image (nothing is read between beginning a reload and the exec).
pub(super) struct Attempt {
    pub(super) carried: CarriedAttempt,
    pub(super) first: bool,
    /// The [ALERT] texts haproxy printed during the attempt: the first one leads its failure reason.
    pub(super) alerts: Vec<String>,
    /// The new generation serves; the older ones still listen (see `Settle`).
    pub(super) settling: Option<Settle>,
}

impl Attempt {
    pub(super) fn new(carried: CarriedAttempt, first: bool) -> Attempt {
        Attempt {
            carried,
            first,
            alerts: vec![],
            settling: None,
        }
    }
}

/// A reload is declared done only once the generations it retired have stopped listening: an old
/// haproxy soft-stopped by SIGUSR1 may still accept a connection for a moment (with `-x` it
/// shares the very socket), and the first request after `systemctl reload` must reach the new
/// configuration. Bounded: a generation that keeps listening does not hold the verdict forever.
pub(super) struct Settle {
    pub(super) pids: Vec<i32>,
    pub(super) next_check_ns: u64,
    pub(super) deadline_ns: u64,
}

/// How often, and how long at most, the retired generations' listeners are looked for.
pub(super) const SETTLE_POLL: Duration = Duration::from_micros(500);
pub(super) const SETTLE_MAX: Duration = Duration::from_secs(2);

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
            attempt: match &self.phase {
                Phase::Reloading(attempt) => Some(attempt.carried),
                _ => None,
            },
            ledger: Some(self.ledger.ledger.clone()),
            held: self.held.carry(),
            left_paused: self.held.left_paused(),
            restarts: self.restarts.clone(),
        }
    }

    /// Re-executes the wrapper (same pid, the program now on disk) and reloads. Master-worker
    /// mode asks the master first (the exec is then off the reload's critical path) and carries
    /// the attempt across; foreground mode starts the new generation after the exec. A program
    /// on disk that is not the running one must accept the state first (`reexec::probe`): an
    /// older release, or a file that is not a wrapper, does not, and the reload runs in this
    /// image instead. If the exec fails, too.
    pub(super) fn reload_now(&mut self) {
        let t0 = now_ns();
        self.pending_reload = false;
        let status = self.status_with(&phase_text("reloading", self.next_gen, self.protocol.name()));
        self.systemd.reloading(&status);
        let begun_here = self.protocol.reloads_before_reexec();
        if begun_here {
            self.begin_reload(t0);
            if !matches!(self.phase, Phase::Reloading(_)) {
                // Failed before haproxy was asked (a bind that cannot succeed, src/binds.rs):
                // nothing to carry across an exec, which would begin the reload again.
                return;
            }
        }
        if let Some(partial) = self.relay.take_partial() {
            crate::log::write(crate::log::haproxy_line_priority(&partial), format_args!("{}", partial));
        }
        let carried = self.carried(t0);
        let usable = if reexec::is_running_image(&self.exe) {
            Ok(())
        } else {
            reexec::probe(&self.exe, &carried, &crate::signals::stop_pending)
        };
        match usable {
            Ok(()) => self.exec_self(&carried),
            Err(why) => warning!(
                "not re-executing {}: {}; reloading with the running program",
                self.exe.display(),
                why
            ),
        }
        if !begun_here {
            self.begin_reload(t0);
        }
    }

    /// Returns only if the exec failed.
    fn exec_self(&mut self, carried: &Carried) {
        let fds = carried.descriptors();
        let mut ok = true;
        for fd in &fds {
            if let Err(e) = haproxy::set_cloexec(*fd, false) {
                warning!("cannot keep fd {} across re-exec: {}", fd, e);
                ok = false;
            }
        }
        if ok {
            let err = reexec::exec(&self.exe, carried);
            warning!(
                "re-exec of {} failed: {}; reloading without it",
                self.exe.display(),
                err
            );
        }
        for fd in &fds {
            let _ = haproxy::set_cloexec(*fd, true);
        }
    }

    /// The first start: no ledger entry; a failure ends the wrapper.
    pub(super) fn begin_start(&mut self, started_ns: u64) {
        self.begin_attempt(started_ns, true)
    }

    /// A reload (asked for at `started_ns`): a ledger entry; a failure leaves the serving
    /// generation serving.
    pub(super) fn begin_reload(&mut self, started_ns: u64) {
        self.begin_attempt(started_ns, false)
    }

    fn begin_attempt(&mut self, started_ns: u64, first: bool) {
        if !first {
            // Messages from before this reload must not be taken for its answer.
            self.on_messages();
        }
        let gen = self.next_gen;
        self.next_gen += 1;
        let ledger_seq = if first {
            None
        } else {
            Some(self.ledger.begin(gen, started_ns))
        };
        let deadline_ns = clock::deadline_after(self.opts.ready_timeout);
        let attempt = Attempt::new(
            CarriedAttempt {
                gen,
                started_ns,
                deadline_ns,
                ledger_seq,
            },
            first,
        );
        self.phase = if first {
            Phase::Starting(attempt)
        } else {
            Phase::Reloading(attempt)
        };
        // A haproxy the wrapper starts takes over the listening sockets it holds (a restart, or
        // systemd handed them back), and so does a reload that has no hand-over of its own.
        let handover = if !self.held.is_empty() && (first || self.protocol.takes_handover_on_reload()) {
            match Handover::new() {
                Ok(h) => Some(h),
                Err(e) => {
                    warning!(
                        "gen {}: no hand-over of the {} listening sockets the wrapper holds (socketpair: {}): it binds its own",
                        gen,
                        self.held.len(),
                        e
                    );
                    None
                }
            }
        } else {
            None
        };
        if !first && self.protocol.pauses_listeners_on_failed_bind() {
            let paused = self.held.note_paused();
            if paused > 0 {
                info!(
                    "gen {}: {} of the listening sockets the wrapper holds are paused (SIGTTOU or \"disable frontend\"): left so during the reload",
                    gen, paused
                );
            }
        }
        let arg = handover.as_ref().and_then(|h| h.arg());
        let begun = self.protocol.begin(gen, first, arg.as_ref());
        self.handover = handover.map(|mut h| {
            h.started();
            h
        });
        match begun {
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
        // A hand-over not asked for by now never will be.
        self.handover = None;
        self.held.forget_paused();
        match std::mem::replace(&mut self.phase, Phase::Running) {
            Phase::Starting(attempt) | Phase::Reloading(attempt) => Some(attempt),
            other => {
                self.phase = other;
                None
            }
        }
    }

    /// The protocol says the new generation serves: it becomes the serving one now; the verdict
    /// is given once the generations it retired have stopped listening (`Settle`).
    /// Only what this reload retired is waited for: a generation retired by an earlier reload
    /// was waited for then (at most SETTLE_MAX), and one that never lets go (haproxy 2.6 can
    /// leave an old worker stopped, state T) must not hold every later reload up.
    pub(super) fn attempt_succeeded(&mut self) {
        let draining_before = self.protocol.draining();
        let new_pid = self.protocol.commit();
        let retired: Vec<i32> = self
            .protocol
            .draining()
            .into_iter()
            .filter(|pid| !draining_before.contains(pid) && procs::holds_listener(*pid))
            .collect();
        let now = now_ns();
        match self.attempt_mut() {
            Some(attempt) if !retired.is_empty() => {
                debug!(
                    "gen {}: serving (pid {}); waiting for {:?} to stop listening",
                    attempt.carried.gen, new_pid, retired
                );
                attempt.settling = Some(Settle {
                    pids: retired,
                    next_check_ns: clock::after(now, SETTLE_POLL),
                    deadline_ns: clock::after(now, SETTLE_MAX),
                });
            }
            Some(_) => self.declare_serving(new_pid),
            None => {}
        }
    }

    /// While settling: once the retired generations have stopped listening (or the bound passed),
    /// the verdict.
    pub(super) fn settle_when_due(&mut self, now: u64) {
        let settle = match self.attempt_mut().and_then(|attempt| attempt.settling.as_mut()) {
            Some(settle) if now >= settle.next_check_ns => settle,
            _ => return,
        };
        settle.pids.retain(|&pid| procs::holds_listener(pid));
        if !settle.pids.is_empty() && now < settle.deadline_ns {
            settle.next_check_ns = clock::after(now, SETTLE_POLL);
            return;
        }
        if !settle.pids.is_empty() {
            warning!(
                "pids {:?} still listen {} s after the new generation took over; declaring it serving",
                settle.pids,
                SETTLE_MAX.as_secs()
            );
        }
        let new_pid = self.protocol.serving_pid().unwrap_or(0);
        self.declare_serving(new_pid);
    }

    fn declare_serving(&mut self, pid: i32) {
        let attempt = match self.take_attempt() {
            Some(attempt) => attempt,
            None => return,
        };
        let ms = clock::ms_since(attempt.carried.started_ns);
        if attempt.first {
            notice!(
                "gen {}: {} serving, ready in {} ms",
                attempt.carried.gen,
                self.protocol.serving_label(pid),
                ms
            );
        } else {
            self.reloads += 1;
            self.last_reload = LastReload::Ok { ms };
            notice!(
                "reload {} ok in {} ms: gen {} pid {} serving, draining {:?}",
                self.reloads,
                ms,
                attempt.carried.gen,
                pid,
                self.protocol.draining()
            );
        }
        // Before READY=1: a listener the new configuration dropped is closed (it refuses) by
        // the time the reload is said done.
        self.hold_listeners();
        let status = self.status_with("");
        self.systemd.ready(&status);
        // Only now the ledger: once its client says so, systemd has been told the same.
        if let (false, Some(seq)) = (attempt.first, attempt.carried.ledger_seq) {
            self.ledger.finish(seq, ledger::Outcome::Ok { ms });
        }
        if self.pending_reload {
            self.reload_now();
        }
    }

    /// A reload reported failed at --ready-timeout ended later (master-worker): what serves now
    /// goes to the log, STATUS and the ledger.
    pub(super) fn late_reload(&mut self, gen: u32, took_effect: bool, ms: u64) {
        if !took_effect {
            notice!("gen {}: the reload that was not ready in time ended {} ms after it was asked for, without taking effect; the previous generation keeps serving", gen, ms);
            self.ledger.set_late(gen, ledger::Late::No);
            return;
        }
        self.reloads += 1;
        self.last_reload = LastReload::Late { ms };
        warning!(
            "gen {}: the reload reported failed at --ready-timeout took effect late, ready {} ms after it was asked for: {}, draining {:?}",
            gen,
            ms,
            self.protocol.serving_text().unwrap_or_default(),
            self.protocol.draining()
        );
        self.hold_listeners();
        // The ledger first: a client that saw STATUS say so and asks again finds it recorded.
        self.ledger.set_late(gen, ledger::Late::Served { ms });
        self.update_status();
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
        let ms = clock::ms_since(attempt.carried.started_ns);
        let reason = match attempt.alerts.first() {
            Some(alert) => format!("{} ({})", alert, reason),
            None => reason,
        };
        let serving_ended = self.protocol.abandon(if attempt.first {
            Abandon::StartFailed
        } else {
            Abandon::ReloadFailed
        });
        if attempt.first {
            error!(
                "gen {}: haproxy failed to start after {} ms: {}",
                attempt.carried.gen, ms, reason
            );
            self.exit_code = Some(code);
            self.begin_stop(StopHow::Terminate);
            return;
        }
        // A reload haproxy may still complete keeps its number: its generation may yet serve.
        let may_complete = self.protocol.may_still_complete(attempt.carried.gen);
        if !may_complete {
            self.next_gen = attempt.carried.gen;
        }
        self.last_reload = LastReload::Failed {
            ms,
            reason: reason.clone(),
        };
        let left = serving_ended
            .as_ref()
            .map(|_| StillServing::No)
            .unwrap_or_else(|| self.protocol.still_serving());
        let late = if may_complete && left != StillServing::No {
            ledger::Late::Possible
        } else {
            ledger::Late::No
        };
        let nothing_serves = left == StillServing::No;
        // Nothing serves: the wrapper starts a generation itself (bounded), or stops.
        let restart = nothing_serves && self.restart_allowed();
        let mut reasons = vec![reason.clone()];
        reasons.extend(attempt.alerts.iter().cloned());
        // The ledger's answer: after READY=1 and STATUS say the same, or before a stop begins.
        let record = |this: &mut Supervisor| {
            if let Some(seq) = attempt.carried.ledger_seq {
                if nothing_serves && !restart {
                    // A --wait-reload client reads the failure and, with it, that nothing serves.
                    this.ledger.stopping();
                }
                if restart {
                    // ... or that haproxy is started again.
                    this.ledger.mark_restarted(seq);
                }
                this.ledger
                    .finish_late(seq, ledger::Outcome::Failed { ms, reasons }, late);
            }
        };
        match left {
            StillServing::Yes if may_complete => error!(
                "reload to gen {} failed after {} ms: {}; haproxy may still complete it (the previous generation serves until it does)",
                attempt.carried.gen, ms, reason
            ),
            StillServing::Yes => error!("reload failed after {} ms, the previous generation keeps serving: {}", ms, reason),
            StillServing::Unsure(why) => {
                error!("reload failed after {} ms; the previous generation may not serve any more ({}): {}", ms, why, reason)
            }
            StillServing::No if serving_ended.is_none() => {
                // haproxy stopped everything (master-worker: its exit-on-failure when the new
                // worker failed): say so, and stop with a failure status so that Restart= brings
                // the service back.
                error!("reload failed after {} ms and haproxy stopped the previous generation too, nothing serves: {}", ms, reason);
                record(self);
                self.restart_or_stop(
                    format!("haproxy stopped every generation after the failed reload to gen {}", attempt.carried.gen),
                    code.max(1),
                );
                return;
            }
            StillServing::No => error!("reload failed after {} ms: {}", ms, reason),
        }
        if let Some(status) = serving_ended {
            record(self);
            let code = status_code(&status).unwrap_or(1);
            self.restart_or_stop(
                format!("the serving haproxy ended during the failed reload (status {})", code),
                code,
            );
            return;
        }
        if nothing_serves {
            // The serving generation ended during the reload (master-worker: the master).
            record(self);
            self.restart_or_stop(
                format!("nothing serves after the failed reload to gen {}", attempt.carried.gen),
                code.max(1),
            );
            return;
        }
        let status = self.status_with("");
        self.systemd.ready(&status);
        record(self);
        if self.pending_reload {
            self.reload_now();
        }
    }
}
