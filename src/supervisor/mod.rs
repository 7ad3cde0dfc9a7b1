//! The supervisor's event loop: signals, haproxy's output, the protocol's messages and the
//! deadlines, through the phases start → running ⇄ reloading → stopping. What the events mean
//! for haproxy is the protocol's business (src/mode); this loop knows neither mode.
//!
//! Once haproxy runs, nothing here bails out: errors are logged and the loop goes on. The only
//! ways out are a requested stop, the serving haproxy dying, or a failed start.

mod attempt;
mod setup;
mod status;
mod stop;

use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::cli::Options;
use crate::clock::{self, now_ns};
use crate::error::{status_code, Error};
use crate::haproxy;
use crate::ledger;
use crate::listeners::{Handover, Held};
use crate::mode::{Change, Event, Protocol, Verdict};
use crate::notify::Systemd;
use crate::procs;
use crate::relay::Relay;
use crate::signals::{self, Action};
use crate::state::{LastReload, Restarts};

use attempt::Attempt;
use status::{phase_text, status_line, StatusView};
use stop::{Stop, StopHow};

/// How many ALERT lines of one attempt are kept for its failure reason.
const MAX_ALERTS: usize = 20;

enum Phase {
    Starting(Attempt),
    Running,
    Reloading(Attempt),
    Stopping(Stop),
}

pub struct Supervisor {
    opts: Options,
    protocol: Box<dyn Protocol>,
    wrapper_pid: i32,
    /// The wrapper's program, re-executed on reload.
    exe: PathBuf,
    next_gen: u32,
    reloads: u32,
    last_reload: LastReload,
    phase: Phase,
    pending_reload: bool,
    signals: SignalFd,
    /// SIGUSR2/SIGHUP only: each is counted in the ledger before it is read.
    reload_signals: SignalFd,
    /// Reload requests and verdicts for `--wait-reload` clients.
    ledger: ledger::Recorder,
    relay: Relay,
    systemd: Systemd,
    watchdog: Option<Duration>,
    next_watchdog_ns: u64,
    /// The exit status decided when the stop began (failed start, serving haproxy died).
    exit_code: Option<u8>,
    /// The serving haproxy's own end, when it ended during a requested stop.
    serving_status: Option<WaitStatus>,
    /// The error to end with once everything is stopped (the carried state was unusable).
    fatal: Option<Error>,
    /// The serving generation's listening sockets, held open (src/listeners.rs).
    held: Held,
    /// The hand-over of `held` to the haproxy the attempt in progress started, until it asks.
    handover: Option<Handover>,
    /// Generations started because nothing served any more (see `restart_or_stop`).
    restarts: Restarts,
}

/// At most `--max-restarts` restarts of haproxy by the wrapper itself within this window: past
/// that, the wrapper stops and systemd's `Restart=` and start limit take over.
const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// Waits (at most 50 ms: these signals are an administrator's, and rare) until `pid` no longer
/// has `sig` pending.
fn wait_until_handled(pid: i32, sig: Signal) {
    let deadline = now_ns() + 50_000_000;
    while procs::signal_pending(pid, sig as i32) && now_ns() < deadline {
        std::thread::sleep(Duration::from_micros(200));
    }
}

impl Supervisor {
    // ---- the event loop ----

    /// Runs until the service has stopped; returns the wrapper's exit status.
    pub fn run(mut self) -> Result<u8, Error> {
        loop {
            if let Phase::Stopping(_) = self.phase {
                if self.no_children_left() {
                    return self.finish();
                }
            }
            let timeout = clock::poll_timeout_ms(&self.deadlines(), now_ns());
            let mut fds = vec![
                PollFd::new(self.signals.as_raw_fd(), PollFlags::POLLIN),
                PollFd::new(self.relay.r, PollFlags::POLLIN),
                PollFd::new(self.reload_signals.as_raw_fd(), PollFlags::POLLIN),
            ];
            let messages_at = self.protocol.message_fd().map(|fd| {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
                fds.len() - 1
            });
            let handover_at = self.handover.as_ref().map(|h| {
                fds.push(PollFd::new(h.fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            // During a reload that haproxy may pause them for, the held listeners: each hangs up
            // when paused (no event asked for: POLLHUP is always reported).
            let pausable = match self.phase {
                Phase::Reloading(_) if self.protocol.pauses_listeners_on_failed_bind() => self.held.pausable_fds(),
                _ => Vec::new(),
            };
            let pausable_at = fds.len();
            fds.extend(pausable.iter().map(|&fd| PollFd::new(fd, PollFlags::empty())));
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => error!("poll: {}", e),
            }
            let paused: Vec<i32> = pausable
                .iter()
                .zip(fds.get(pausable_at..).unwrap_or(&[]))
                .filter(|(_, p)| p.revents().map_or(false, |r| !r.is_empty()))
                .map(|(&fd, _)| fd)
                .collect();
            if !paused.is_empty() {
                // Connections are refused until it listens again: before anything else.
                self.relisten(&paused);
            }
            // Order matters: haproxy's lines first (they explain what follows), then the
            // protocol's messages, then signals (SIGCHLD included).
            let ready = |i: Option<usize>| {
                i.and_then(|i| fds.get(i))
                    .and_then(|f| f.revents())
                    .map_or(false, |r| !r.is_empty())
            };
            let (output_ready, messages_ready, handover_ready) =
                (ready(Some(1)), ready(messages_at), ready(handover_at));
            if handover_ready {
                // haproxy waits for its sockets before it binds: before anything else.
                self.serve_handover();
            }
            if output_ready {
                self.relay_output();
            }
            if messages_ready {
                self.on_messages();
            }
            // Reload signals first, as the kernel would order them (SIGHUP and SIGUSR2 come
            // before SIGTERM, SIGCHLD, SIGTTIN/SIGTTOU): a signal sent after a reload signal is
            // read after it, also across the re-exec.
            self.read_reload_signals();
            while let Some(sig) = signals::read_one(&mut self.signals) {
                self.on_signal(sig);
            }
            self.on_tick();
        }
    }

    /// Each reload signal is counted in the ledger before it is read: a `--wait-reload` client
    /// that finds the signal no longer pending knows the ledger counts it (ledger.rs). One at a
    /// time: a reload re-executes the wrapper, and what is still pending survives the exec.
    fn read_reload_signals(&mut self) {
        while signals::reload_pending() {
            self.ledger.note_request();
            match signals::read_one(&mut self.reload_signals) {
                Some(sig) => self.on_signal(sig),
                None => break,
            }
        }
    }

    fn deadlines(&self) -> Vec<Option<u64>> {
        let mut out = vec![
            self.watchdog.map(|_| self.next_watchdog_ns),
            self.protocol.next_tick_ns(),
            self.systemd.next_retry_ns(),
        ];
        match &self.phase {
            Phase::Starting(attempt) | Phase::Reloading(attempt) => out.push(match &attempt.settling {
                Some(settle) => Some(settle.next_check_ns),
                None => Some(attempt.carried.deadline_ns),
            }),
            Phase::Stopping(stop) => {
                out.extend([stop.kill_deadline_ns, stop.next_sweep_ns]);
                if let Some(graceful) = &stop.unacknowledged {
                    out.extend([Some(graceful.resend_ns), Some(graceful.escalate_ns)]);
                }
            }
            Phase::Running => {}
        }
        out
    }

    fn attempt_mut(&mut self) -> Option<&mut Attempt> {
        match &mut self.phase {
            Phase::Starting(attempt) | Phase::Reloading(attempt) => Some(attempt),
            _ => None,
        }
    }

    /// Hands an event to the protocol and acts on what it means.
    fn judge(&mut self, event: Event) {
        let alerts = self
            .attempt_mut()
            .map(|attempt| std::mem::take(&mut attempt.alerts))
            .unwrap_or_default();
        let outcome = self.protocol.on_event(&event, &alerts);
        if let Some(attempt) = self.attempt_mut() {
            attempt.alerts = alerts;
        }
        match outcome {
            Change::Nothing => {
                if let Event::ChildEnded { pid, status } = event {
                    debug!("process {} ended (status {})", pid, status_code(&status).unwrap_or(1));
                }
            }
            Change::Attempt(Verdict::Pending) => {}
            Change::StatusChanged => self.update_status(),
            Change::StartedOver => {
                if let Some(attempt) = self.attempt_mut() {
                    attempt.alerts.clear();
                }
            }
            Change::Attempt(Verdict::Serving) => self.attempt_succeeded(),
            Change::Attempt(Verdict::Failed { reason, code }) => self.attempt_failed(reason, code),
            Change::ServingEnded(status) => self.serving_ended(status),
            Change::Stopping => info!("haproxy says it is stopping"),
            Change::LateReload { gen, took_effect, ms } => self.late_reload(gen, took_effect, ms),
        }
    }

    fn on_signal(&mut self, sig: Signal) {
        match signals::classify(sig) {
            Action::Reap => self.reap(),
            Action::Reload => self.on_reload_request(sig),
            Action::Stop => {
                notice!("{} received: stopping", sig);
                self.begin_stop(StopHow::Terminate);
            }
            Action::GracefulStop => {
                notice!("{} received: graceful stop", sig);
                self.begin_stop(StopHow::Graceful);
            }
            Action::Forward(s) => {
                // The signalfd hands out the lowest pending signal first: SIGTTIN (21) before
                // SIGTTOU (22) when both are pending, whatever order they were sent in. Both
                // pending means "pause, then resume" as far as anyone can tell, and the resume
                // must win: never leave haproxy paused.
                if s == Signal::SIGTTIN && signals::take_pending(Signal::SIGTTOU) {
                    info!("SIGTTOU and SIGTTIN received together: passing both on to haproxy, SIGTTIN last");
                    for pid in self.protocol.signal_targets() {
                        haproxy::signal(pid, Signal::SIGTTOU);
                    }
                }
                info!("{} received: passing it on to haproxy", sig);
                if s == Signal::SIGTTOU {
                    // An administrator's pause: never undone by the wrapper (`relisten`).
                    self.held.leave_paused();
                }
                for pid in self.protocol.signal_targets() {
                    if s == Signal::SIGTTIN {
                        // haproxy, too, takes the lowest pending signal first: a SIGTTIN that
                        // reaches it while its SIGTTOU is still pending would be undone by it.
                        wait_until_handled(pid, Signal::SIGTTOU);
                    }
                    haproxy::signal(pid, s);
                }
            }
            Action::Ignore => {}
        }
    }

    fn on_tick(&mut self) {
        let now = now_ns();
        if self.systemd.next_retry_ns().map_or(false, |t| now >= t) {
            self.systemd.flush(now);
        }
        if let Some(interval) = self.watchdog {
            if now >= self.next_watchdog_ns {
                let serving_alive = self
                    .protocol
                    .serving_pid()
                    .map_or(false, |pid| procs::stat(pid).map_or(false, |(_, state)| state != 'Z'));
                if serving_alive {
                    self.systemd.watchdog();
                }
                self.next_watchdog_ns = clock::after(now, interval / 2);
            }
        }
        if self.protocol.on_tick(now) {
            self.update_status();
        }
        if self.held.unstored() && self.systemd.next_retry_ns().map_or(true, |t| now >= t) {
            for problem in self.held.store_pending(&mut self.systemd) {
                warning!("{}", problem);
            }
        }
        self.settle_when_due(now);
        let timed_out = match &self.phase {
            Phase::Starting(attempt) | Phase::Reloading(attempt) => {
                attempt.settling.is_none() && now >= attempt.carried.deadline_ns
            }
            _ => false,
        };
        if timed_out {
            self.judge(Event::Deadline {
                ready_timeout: self.opts.ready_timeout,
            });
        }
        self.kill_when_due(now);
    }

    // ---- haproxy's output and the protocol's messages ----

    /// Re-emits haproxy's pending lines, in bulk (a reload's old worker prints a line per proxy:
    /// thousands); an attempt in progress keeps its alerts.
    fn relay_output(&mut self) {
        let lines = self.relay.read_lines();
        crate::log::write_lines(
            lines
                .iter()
                .map(|line| (crate::log::haproxy_line_priority(line), line.as_str())),
        );
        for line in lines {
            if let Some(attempt) = self.attempt_mut() {
                if let Some(alert) = crate::log::alert_text(&line) {
                    if attempt.alerts.len() < MAX_ALERTS {
                        attempt.alerts.push(alert.to_string());
                    }
                }
            }
            self.judge(Event::Line(line));
        }
    }

    fn on_messages(&mut self) {
        for event in self.protocol.read_messages() {
            if let Phase::Stopping(_) = self.phase {
                // Only whether haproxy acted on the stop (or came back from it) matters now.
                let ready_again =
                    matches!(&event, Event::MasterSaid { message, .. } if crate::notify::says(message, "READY"));
                if self.protocol.on_event(&event, &[]) == Change::Stopping {
                    self.stop_acknowledged();
                } else if ready_again {
                    self.stop_undone();
                }
                continue;
            }
            // haproxy writes its lines before it sends a message, but they may still sit in the
            // pipe when the datagram is read: take them first, they decide and explain verdicts.
            self.relay_output();
            self.judge(event);
        }
    }

    // ---- children ----

    fn reap(&mut self) {
        let mut ended = Vec::new();
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(status) => {
                    if let Some(pid) = status.pid() {
                        ended.push((pid.as_raw(), status));
                    }
                }
                Err(nix::Error::EINTR) => continue,
                Err(_) => break, // ECHILD: nobody left
            }
        }
        let protocol = &self.protocol;
        ended.sort_by_key(|(pid, _)| !protocol.decides_attempt(*pid));
        for (pid, status) in ended {
            // Lines a process wrote before it ended belong to what its end means.
            self.relay_output();
            self.judge(Event::ChildEnded { pid, status });
        }
    }

    fn serving_ended(&mut self, status: WaitStatus) {
        let pid = status.pid().map_or(0, |p| p.as_raw());
        let code = status_code(&status).unwrap_or(1);
        if let Phase::Stopping(_) = self.phase {
            info!("haproxy pid {} ended (status {})", pid, code);
            self.serving_status = Some(status);
            return;
        }
        let what = format!(
            "the serving {} ended unexpectedly with status {}",
            self.protocol.serving_label(pid),
            code
        );
        if let Phase::Reloading(_) = self.phase {
            // The reload cannot take effect now: it fails, and nothing serves (attempt_failed).
            self.attempt_failed(format!("{} during the reload", what), code);
            return;
        }
        self.restart_or_stop(what, code);
    }

    /// May the wrapper start a generation itself now that nothing serves? At most
    /// `--max-restarts` within RESTART_WINDOW.
    fn restart_allowed(&mut self) -> bool {
        let now = now_ns();
        let window = clock::nanos(RESTART_WINDOW);
        self.restarts.recent_ns.retain(|&t| now.saturating_sub(t) < window);
        self.restarts.recent_ns.len() < self.opts.max_restarts as usize
    }

    /// Nothing serves any more (`what` ended): a new generation at once, on the listening sockets
    /// the wrapper holds (connections wait in their queues meanwhile, none is refused); after
    /// `--max-restarts` within RESTART_WINDOW, a stop with `code` instead, for systemd's Restart=.
    pub(super) fn restart_or_stop(&mut self, what: String, code: u8) {
        if !self.restart_allowed() {
            match self.opts.max_restarts {
                0 => error!("{}: stopping (--max-restarts 0: systemd's Restart= takes over)", what),
                n => error!(
                    "{}: stopping, after {} restarts within {} s (--max-restarts; systemd's Restart= takes over)",
                    what,
                    n,
                    RESTART_WINDOW.as_secs()
                ),
            }
            self.exit_code = Some(code);
            self.begin_stop(StopHow::Terminate);
            return;
        }
        if let Some(pid) = self.protocol.forget_serving() {
            if procs::stat(pid).map_or(false, |(_, state)| state != 'Z') {
                info!(
                    "pid {} of the generation that no longer serves is still there: SIGTERM",
                    pid
                );
                haproxy::signal(pid, Signal::SIGTERM);
            }
        }
        let now = now_ns();
        self.restarts.recent_ns.push(now);
        self.restarts.total += 1;
        self.restarts.last = Some(what.clone());
        let on = if self.held.is_empty() {
            " (no listening socket held: it binds its own)".to_string()
        } else {
            format!(" on the {} listening sockets the wrapper holds", self.held.len())
        };
        error!(
            "{}: starting gen {} at once{} (restart {} of at most {} within {} s)",
            what,
            self.next_gen,
            on,
            self.restarts.recent_ns.len(),
            self.opts.max_restarts,
            RESTART_WINDOW.as_secs()
        );
        self.begin_start(now);
    }

    // ---- the listening sockets ----

    /// haproxy's master paused held listeners during a reload (its bind retry): listen on them
    /// again, so that the kernel queues connections rather than refuse them (`Held::relisten`).
    fn relisten(&mut self, fds: &[i32]) {
        let gen = self.attempt_mut().map_or(0, |a| a.carried.gen);
        let (again, problems) = self.held.relisten(fds);
        if !again.is_empty() {
            notice!(
                "gen {}: haproxy paused {} listening socket(s) while it retries a bind ({}): listening on the wrapper's copies again, connections wait until haproxy accepts again",
                gen,
                again.len(),
                again.join(", ")
            );
        }
        for problem in problems {
            warning!(
                "gen {}: {}: connections to it are refused until haproxy resumes it",
                gen,
                problem
            );
        }
    }

    /// haproxy asks for the held sockets (or closed its end): answer once.
    fn serve_handover(&mut self) {
        let handover = match self.handover.take() {
            Some(h) => h,
            None => return,
        };
        match handover.serve(&self.held) {
            Ok(n) => info!(
                "handed {} listening sockets over to haproxy: {}",
                n,
                self.held.summary()
            ),
            Err(e) => warning!("listener hand-over to haproxy: {}", e),
        }
    }

    /// Holds what the serving generation listens on, and only that (src/listeners.rs).
    fn hold_listeners(&mut self) {
        let t0 = now_ns();
        let pids = self.protocol.listener_pids();
        let synced = self.held.sync(&pids, &mut self.systemd);
        debug!("listening sockets in step in {} us", (now_ns() - t0) / 1000);
        for problem in &synced.problems {
            warning!("{}", problem);
        }
        for note in &synced.notes {
            info!("{}", note);
        }
        if !synced.added.is_empty() || !synced.closed.is_empty() {
            let list = |v: &[String]| if v.is_empty() { "none".to_string() } else { v.join(", ") };
            info!(
                "holding {} listening sockets of pids {:?} (new: {}; closed, no longer listened on: {})",
                self.held.len(),
                pids,
                list(&synced.added),
                list(&synced.closed)
            );
        }
    }

    // ---- STATUS= ----

    fn status_with(&self, phase: &str) -> String {
        let draining = self.protocol.draining();
        status_line(&StatusView {
            mode: self.protocol.name(),
            phase,
            serving: self.protocol.serving_text(),
            draining: &draining,
            last: &self.last_reload,
            restarts: &self.restarts,
        })
    }

    fn update_status(&mut self) {
        let phase = match &self.phase {
            Phase::Running => String::new(),
            Phase::Starting(attempt) => phase_text("starting", attempt.carried.gen, self.protocol.name()),
            Phase::Reloading(attempt) => phase_text("reloading", attempt.carried.gen, self.protocol.name()),
            Phase::Stopping(_) => return,
        };
        let status = self.status_with(&phase);
        self.systemd.status(&status);
    }
}
