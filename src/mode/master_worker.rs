//! Master-worker mode: one haproxy master (`-Ws`) for the service's life. Its NOTIFY_SOCKET is
//! a private socket the wrapper owns. A start is done when the master says READY=1; a reload
//! is SIGUSR2 to the master, done when it says READY=1 again, and it succeeded when a new
//! worker (a child of the master not seen before) exists and haproxy reported no loading failure.
//!
//! A reload's answer is the first READY=1 after the master said RELOADING=1 for it (with a
//! MONOTONIC_USEC no older than the signal, when haproxy sends one): a late READY=1 of an
//! earlier reload that timed out is not taken for this one's. The master is signalled before the
//! wrapper re-executes itself, so the reload in progress is carried across the exec.

use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;

use super::{exited, not_ready, Abandon, Change, Event, Launch, Protocol, StillServing, Verdict};
use crate::binds;
use crate::clock;
use crate::error::Error;
use crate::haproxy;
use crate::listeners::HandoverArg;
use crate::log::RateLimit;
use crate::notify::{self, MasterSocket};
use crate::procs;
use crate::state::{Gen, Generations, MasterReload, MasterWorkerGenerations};

/// How often draining workers are looked for while some remain.
const DRAIN_POLL: Duration = Duration::from_millis(500);

/// A start (a new master) or a reload (SIGUSR2 to the serving master) in progress.
#[derive(Debug)]
struct MasterRequest {
    /// Number, workers before, signal time, what the master said: what crosses the re-exec
    /// (whole) and what a timed-out reload leaves to watch for (`generations.late`).
    reload: MasterReload,
    first: bool,
    /// The master that answers: the new one at the first start, else the serving one.
    master: i32,
    /// The master's children when it said READY=1 (None: /proc could not be read).
    children_at_ready: Option<Vec<i32>>,
}

pub struct MasterWorker {
    launch: Launch,
    socket: MasterSocket,
    generations: MasterWorkerGenerations,
    attempt: Option<MasterRequest>,
    next_drain_check_ns: u64,
    /// Logs of datagrams from other processes than the master.
    foreign_log: RateLimit,
    /// The current workers are not known (the master's children could not be read at its
    /// READY=1): the next drain check learns them.
    workers_unknown: bool,
    /// Logs of failed walks of the master's children during drain checks.
    walk_log: RateLimit,
}

/// How many times the master's children are read when one walk of /proc fails.
const WALK_TRIES: u32 = 3;

/// At most this many datagrams from other processes than the master are logged per second.
const FOREIGN_LOG_BURST: u32 = 5;

/// The verdict on a READY=1 of the master: `children` are its children then, None when they
/// could not be read: the master's READY=1 is trusted then (a warning was logged), since an
/// error reading /proc says nothing about haproxy.
fn judge_ready(attempt: &MasterRequest, children: Option<&[i32]>) -> Verdict {
    if attempt.first {
        return Verdict::Serving;
    }
    let reason = if attempt.reload.loading_failed {
        "haproxy reported a loading failure"
    } else if children.map_or(false, |children| {
        children.iter().all(|c| attempt.reload.workers_before.contains(c))
    }) {
        "the master started no new worker"
    } else {
        return Verdict::Serving;
    };
    Verdict::Failed {
        reason: reason.to_string(),
        code: 1,
    }
}

impl MasterWorker {
    /// haproxy said a loading failed: the attempt's, or (while no attempt awaits its own answer)
    /// the late reload's.
    fn loading_failed(&mut self) {
        let begun = match &mut self.attempt {
            Some(attempt) if !attempt.first => {
                attempt.reload.loading_failed = true;
                attempt.reload.master_began
            }
            Some(_) => true,
            None => false,
        };
        if !begun {
            if let Some(late) = &mut self.generations.late {
                late.loading_failed = true;
            }
        }
    }

    /// A READY=1 while a reload that timed out may still complete: it ends that reload. With a
    /// new worker (and no loading failure) the reload took effect late: its generation serves.
    fn late_ready(&mut self, children: Option<&Vec<i32>>) -> Option<Change> {
        let late = self.generations.late.take()?;
        let ms = clock::now_ns().saturating_sub(late.signalled_ns) / 1_000_000;
        let new: Option<Vec<i32>> = children.map(|children| without(children, &late.workers_before));
        let took_effect = !late.loading_failed && new.as_ref().map_or(true, |new| !new.is_empty());
        if !took_effect {
            match children {
                Some(children) => self.learn_workers(children),
                None => self.workers_unknown = true,
            }
            return Some(Change::LateReload {
                gen: late.gen,
                took_effect,
                ms,
            });
        }
        let mut old: Vec<i32> = self
            .generations
            .workers
            .iter()
            .chain(self.generations.old_workers.iter())
            .chain(late.workers_before.iter())
            .copied()
            .collect();
        old.sort_unstable();
        old.dedup();
        match (new, children) {
            (Some(new), Some(children)) => {
                self.generations.old_workers = old.into_iter().filter(|w| children.contains(w)).collect();
                self.generations.workers = new;
                self.workers_unknown = false;
            }
            _ => {
                self.generations.old_workers = old;
                self.workers_unknown = true;
            }
        }
        if let Some(master) = &mut self.generations.master {
            master.n = late.gen;
        }
        self.next_drain_check_ns = clock::deadline_after(DRAIN_POLL);
        Some(Change::LateReload {
            gen: late.gen,
            took_effect,
            ms,
        })
    }

    pub fn fresh(launch: Launch, socket: MasterSocket) -> MasterWorker {
        let generations = MasterWorkerGenerations {
            master: None,
            workers: vec![],
            old_workers: vec![],
            socket_fd: socket.fd(),
            reload: None,
            late: None,
        };
        MasterWorker::new(launch, socket, generations, None)
    }

    /// Takes the carried generations back, keeping only the workers the kernel confirms.
    pub fn resume(launch: Launch, socket: MasterSocket, mut generations: MasterWorkerGenerations) -> MasterWorker {
        let me = std::process::id() as i32;
        if let Some(generation) = generations.master {
            if !procs::is_child_of(generation.pid, me) {
                warning!(
                    "serving gen {} pid {} is not our child any more",
                    generation.n,
                    generation.pid
                );
            }
            generations.workers.retain(|&w| procs::is_child_of(w, generation.pid));
            generations
                .old_workers
                .retain(|&w| procs::is_child_of(w, generation.pid));
        }
        // A reload asked of the master before the exec goes on.
        let master = generations.master.map_or(0, |m| m.pid);
        let attempt = generations.reload.take().map(|reload| MasterRequest {
            reload,
            first: false,
            master,
            children_at_ready: None,
        });
        // Draining workers are looked for right away: some may have ended during the re-exec.
        MasterWorker::new(launch, socket, generations, attempt)
    }

    fn new(
        launch: Launch,
        socket: MasterSocket,
        generations: MasterWorkerGenerations,
        attempt: Option<MasterRequest>,
    ) -> MasterWorker {
        MasterWorker {
            launch,
            socket,
            generations,
            attempt,
            next_drain_check_ns: 0,
            foreign_log: RateLimit::new(FOREIGN_LOG_BURST, Duration::from_secs(1)),
            workers_unknown: false,
            walk_log: RateLimit::new(1, Duration::from_secs(10)),
        }
    }

    fn master_pid(&self) -> Option<i32> {
        self.generations.master.map(|generation| generation.pid)
    }

    /// The pid whose messages count: the attempt's master, else the serving one.
    fn answering_master(&self) -> Option<i32> {
        self.attempt
            .as_ref()
            .map(|attempt| attempt.master)
            .or_else(|| self.master_pid())
    }

    fn master_said(&mut self, message: &str, children: Option<&Vec<i32>>) -> Change {
        if notify::says(message, "STOPPING") {
            return Change::Stopping;
        }
        if let Some(attempt) = &mut self.attempt {
            if !attempt.first && notify::says(message, "RELOADING") {
                // haproxy >= 3.0 dates it: an older one is an earlier reload's.
                let usec = notify::value(message, "MONOTONIC_USEC").and_then(|v| v.parse::<u64>().ok());
                if usec.map_or(true, |usec| usec >= attempt.reload.signalled_ns / 1000) {
                    attempt.reload.master_began = true;
                }
            }
        }
        if let Some(status) = notify::value(message, "STATUS") {
            if status.to_ascii_lowercase().contains("fail") {
                self.loading_failed();
            }
        }
        if !notify::says(message, "READY") {
            return Change::Nothing;
        }
        // A READY=1 that does not answer the attempt in progress may be the late one of a reload
        // that timed out.
        let answers_attempt = matches!(&self.attempt, Some(attempt) if attempt.first || attempt.reload.master_began);
        let late = if answers_attempt {
            None
        } else {
            self.late_ready(children)
        };
        let late_took_effect = matches!(late, Some(Change::LateReload { took_effect: true, .. }));
        match (&mut self.attempt, children) {
            (Some(attempt), children) if !attempt.first && !attempt.reload.master_began => {
                // The late answer of an earlier reload (it timed out, or its RELOADING=1 came
                // before this reload's signal): what it printed or forked is not this reload's.
                info!(
                    "gen {}: a READY=1 of an earlier reload; still waiting for the master to begin this one",
                    attempt.reload.gen
                );
                attempt.reload.loading_failed = false;
                match children {
                    Some(children) => {
                        for &c in children {
                            if !attempt.reload.workers_before.contains(&c) {
                                attempt.reload.workers_before.push(c);
                            }
                        }
                        if !late_took_effect {
                            self.learn_workers(children);
                        }
                    }
                    None => self.workers_unknown = true,
                }
                late.unwrap_or(Change::StatusChanged)
            }
            (Some(attempt), children) => {
                attempt.children_at_ready = children.cloned();
                Change::Attempt(judge_ready(attempt, children.map(|c| c.as_slice())))
            }
            (None, _) if late.is_some() => late.unwrap_or(Change::StatusChanged),
            (None, Some(children)) => {
                // A late answer to a reload that already timed out: learn the current workers.
                self.learn_workers(children);
                Change::StatusChanged
            }
            (None, None) => {
                self.workers_unknown = true;
                Change::StatusChanged
            }
        }
    }
}

impl Protocol for MasterWorker {
    fn name(&self) -> &'static str {
        "master-worker"
    }

    fn message_fd(&self) -> Option<std::os::unix::io::RawFd> {
        Some(self.socket.fd())
    }

    fn read_messages(&mut self) -> Vec<Event> {
        let master = self.answering_master();
        let mut events = Vec::new();
        for (pid, message) in self.socket.recv_all() {
            if Some(pid) != master {
                // Anyone may send to the socket: a flood makes a few lines, not one per datagram.
                let message: String = message.chars().take(200).collect();
                match self.foreign_log.allow(clock::now_ns()) {
                    Some(0) => notice!("ignoring a notify message from pid {} (not the master): {:?}", pid, message),
                    Some(n) => notice!("ignoring a notify message from pid {} (not the master): {:?} ({} more ignored before it, not logged)", pid, message, n),
                    None => {}
                }
                continue;
            }
            debug!("master {} says {:?}", pid, message);
            // The fact the verdict needs, read once, when the master says it is ready.
            let children = if notify::says(&message, "READY") {
                master_children_at_ready(pid)
            } else {
                None
            };
            events.push(Event::MasterSaid { message, children });
        }
        events
    }

    fn begin(&mut self, gen: u32, first: bool, handover: Option<&HandoverArg>) -> Result<(), Error> {
        if first {
            let program = &self.launch.program;
            // haproxy's master (< 3.1) or its new worker (>= 3.1) takes the held sockets over.
            let mut args: Vec<std::ffi::OsString> = Vec::new();
            if let Some(h) = handover {
                args.push("-x".into());
                args.push(h.value.clone());
            }
            args.extend(self.launch.args.base.iter().cloned());
            let pid = haproxy::spawn(
                program,
                &args,
                self.launch.relay_write,
                Some(&self.socket.address),
                handover.map(|h| h.fd),
            )
            .map_err(|e| Error::from_spawn(program, &e))?;
            info!(
                "gen {}: started haproxy master pid {}{}",
                gen,
                pid,
                if handover.is_some() {
                    " with the listening sockets the wrapper holds"
                } else {
                    ""
                }
            );
            self.attempt = Some(MasterRequest {
                reload: MasterReload {
                    gen,
                    workers_before: vec![],
                    signalled_ns: 0,
                    master_began: true,
                    loading_failed: false,
                },
                first,
                master: pid,
                children_at_ready: None,
            });
            return Ok(());
        }
        let master = self
            .master_pid()
            .ok_or_else(|| Error::Internal("no master to reload".into()))?;
        // The workers before the signal are the ones already known: the master forks only at its
        // start and its reloads, and the wrapper records the children after each of them (a late
        // READY=1 too), so no /proc walk has to delay the signal.
        let mut before: Vec<i32> = self
            .generations
            .workers
            .iter()
            .chain(self.generations.old_workers.iter())
            .copied()
            .collect();
        before.sort_unstable();
        before.dedup();
        // A bind that cannot succeed would make haproxy pause the serving listeners while it
        // retries (src/binds.rs): such a reload fails here, before haproxy is asked.
        if let Some(why) = binds::check(&self.launch.args.base) {
            return Err(Error::CannotBind(format!(
                "{}; haproxy's master was not asked to reload (the wrapper tried that bind first)",
                why
            )));
        }
        let signalled_ns = clock::now_ns();
        haproxy::signal(master, Signal::SIGUSR2);
        info!(
            "gen {}: asked master {} to reload (workers before: {:?})",
            gen, master, before
        );
        self.attempt = Some(MasterRequest {
            reload: MasterReload {
                gen,
                workers_before: before,
                signalled_ns,
                master_began: false,
                loading_failed: false,
            },
            first,
            master,
            children_at_ready: None,
        });
        Ok(())
    }

    fn on_event(&mut self, event: &Event, _alerts: &[String]) -> Change {
        match event {
            Event::Line(line) => {
                if line.contains("Loading failure") {
                    self.loading_failed();
                }
                Change::Nothing
            }
            Event::MasterSaid { message, children } => self.master_said(message, children.as_ref()),
            Event::ChildEnded { pid, status } => match &self.attempt {
                Some(attempt) if attempt.first && attempt.master == *pid => Change::Attempt(exited(status)),
                _ if self.master_pid() == Some(*pid) => {
                    self.generations.master = None;
                    Change::ServingEnded(*status)
                }
                _ => Change::Nothing,
            },
            Event::Deadline { ready_timeout } if self.attempt.is_some() => {
                // A master cannot be told to give a reload up: it may still complete it.
                if let Some(attempt) = self.attempt.as_ref().filter(|attempt| !attempt.first) {
                    let mut workers_before = attempt.reload.workers_before.clone();
                    if let Some(earlier) = self.generations.late.take() {
                        workers_before.extend(
                            earlier
                                .workers_before
                                .iter()
                                .filter(|w| !attempt.reload.workers_before.contains(w)),
                        );
                    }
                    self.generations.late = Some(MasterReload {
                        workers_before,
                        ..attempt.reload.clone()
                    });
                }
                Change::Attempt(not_ready(*ready_timeout))
            }
            Event::Deadline { .. } => Change::Nothing,
        }
    }

    fn acknowledges_stop(&self) -> bool {
        // The master says STOPPING=1 when it acts on SIGUSR1/SIGTERM (haproxy >= 1.8 with -Ws;
        // seen on 2.6). While it re-executes itself (a reload, and right after its start on
        // 2.6) it drops signals.
        true
    }

    fn decides_attempt(&self, _pid: i32) -> bool {
        false
    }

    fn commit(&mut self) -> i32 {
        let attempt = match self.attempt.take() {
            Some(attempt) => attempt,
            None => return 0,
        };
        // A reload done since supersedes one that timed out before it.
        self.generations.late = None;
        let mut old = std::mem::take(&mut self.generations.workers);
        old.extend(attempt.reload.workers_before.iter().copied());
        old.sort_unstable();
        old.dedup();
        match attempt.children_at_ready {
            Some(children) => {
                let new = without(&children, &attempt.reload.workers_before);
                self.generations.old_workers = old
                    .into_iter()
                    .filter(|w| children.contains(w) && !new.contains(w))
                    .collect();
                self.generations.workers = new;
                self.workers_unknown = false;
            }
            None => {
                // Every worker known before is presumed draining; the drain check sorts them
                // out and learns the new ones.
                self.generations.old_workers = old;
                self.workers_unknown = true;
            }
        }
        self.generations.master = Some(Gen {
            n: attempt.reload.gen,
            pid: attempt.master,
        });
        self.next_drain_check_ns = clock::deadline_after(DRAIN_POLL);
        attempt.master
    }

    fn abandon(&mut self, _why: Abandon) -> Option<WaitStatus> {
        let attempt = self.attempt.take()?;
        if attempt.first {
            haproxy::signal(attempt.master, Signal::SIGKILL);
        }
        None
    }

    fn signal_targets(&self) -> Vec<i32> {
        // The master passes signals on to its workers.
        self.master_pid().into_iter().collect()
    }

    fn serving_pid(&self) -> Option<i32> {
        self.master_pid()
    }

    fn forget_serving(&mut self) -> Option<i32> {
        let master = self.generations.master.take()?;
        // Its workers, if any are left, are the wrapper's to reap (subreaper) and stop.
        let workers = std::mem::take(&mut self.generations.workers);
        self.generations.old_workers.extend(workers);
        Some(master.pid)
    }

    fn listener_pids(&self) -> Vec<i32> {
        if !self.generations.workers.is_empty() {
            return self.generations.workers.clone();
        }
        // Workers unknown: whatever the master has forked that is not draining.
        self.master_pid()
            .and_then(|m| procs::children_of(m).ok())
            .map(|children| without(&children, &self.generations.old_workers))
            .unwrap_or_default()
    }

    fn still_serving(&mut self) -> StillServing {
        let master = match self.master_pid() {
            Some(master) => master,
            None => return StillServing::No,
        };
        if matches!(procs::stat(master), None | Some((_, 'Z'))) {
            return StillServing::No;
        }
        if self.workers_unknown {
            return StillServing::Yes; // nothing known to check: the master lives
        }
        let alive = match procs::children_of(master) {
            Ok(alive) => alive,
            Err(_) => return StillServing::Yes,
        };
        // The serving workers known (some may have been found gone after a re-exec); with
        // none known, any child of the master.
        let known = !self.generations.workers.is_empty();
        self.generations.workers.retain(|w| alive.contains(w));
        self.generations.old_workers.retain(|w| alive.contains(w));
        let serving: Vec<i32> = if known { self.generations.workers.clone() } else { alive };
        if serving.is_empty() {
            return StillServing::No;
        }
        // Alive is not serving: haproxy may have soft-stopped them for the new worker, or
        // stopped them (2.6 leaves an old worker in state T when the new one fails early).
        // Only TCP listeners are seen; this only words the log, nothing is stopped on it.
        if serving
            .iter()
            .any(|&w| procs::stat(w).map_or(false, |(_, state)| state != 'T') && procs::holds_listener(w))
        {
            StillServing::Yes
        } else {
            StillServing::Unsure(format!(
                "its workers {} hold no listening TCP socket or are stopped",
                super::pid_list(&serving)
            ))
        }
    }

    fn serving_text(&self) -> Option<String> {
        let workers = if self.workers_unknown {
            "unknown".to_string()
        } else {
            super::pid_list(&self.generations.workers)
        };
        self.generations.master.map(|generation| {
            format!(
                "gen {} serving (master {}, workers {})",
                generation.n, generation.pid, workers
            )
        })
    }

    fn serving_label(&self, pid: i32) -> String {
        format!("master pid {}", pid)
    }

    fn draining(&self) -> Vec<i32> {
        self.generations.old_workers.clone()
    }

    fn next_tick_ns(&self) -> Option<u64> {
        if self.generations.old_workers.is_empty() && !self.workers_unknown {
            None
        } else {
            Some(self.next_drain_check_ns)
        }
    }

    /// Which old workers are still draining, which are the current ones.
    fn on_tick(&mut self, now_ns: u64) -> bool {
        let master = match self.master_pid() {
            Some(m)
                if (!self.generations.old_workers.is_empty() || self.workers_unknown)
                    && now_ns >= self.next_drain_check_ns =>
            {
                m
            }
            _ => return false,
        };
        self.next_drain_check_ns = clock::after(now_ns, DRAIN_POLL);
        let alive = match procs::children_of(master) {
            Ok(alive) => alive,
            Err(e) => {
                // Unknown is not "all gone": keep the lists, look again at the next check.
                if let Some(n) = self.walk_log.allow(now_ns) {
                    warning!(
                        "cannot list the children of master {} ({}); draining workers are looked for again later{}",
                        master,
                        e,
                        held_back(n)
                    );
                }
                return false;
            }
        };
        self.drain_checked(&alive)
    }

    fn generations(&self) -> Generations {
        let mut generations = self.generations.clone();
        generations.reload = self
            .attempt
            .as_ref()
            .filter(|attempt| !attempt.first)
            .map(|attempt| attempt.reload.clone());
        Generations::MasterWorker(generations)
    }

    fn may_still_complete(&self, gen: u32) -> bool {
        self.generations.late.as_ref().map_or(false, |late| late.gen == gen)
    }

    fn pauses_listeners_on_failed_bind(&self) -> bool {
        true
    }

    fn reloads_before_reexec(&self) -> bool {
        // SIGUSR2 to the master first: the wrapper's re-exec is then off the reload's critical path.
        true
    }

    fn finish(&mut self) {}
}

mod workers;

use workers::{held_back, master_children_at_ready, without};

#[cfg(test)]
mod tests;
