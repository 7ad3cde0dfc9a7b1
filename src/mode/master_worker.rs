//! Master-worker mode: one haproxy master (`-Ws`) for the service's life. Its NOTIFY_SOCKET is
//! a private socket the wrapper owns. A start is done when the master says READY=1; a reload
//! is SIGUSR2 to the master, done when it says READY=1 again, and it succeeded when a new
//! worker (a child of the master not seen before) exists and haproxy reported no loading failure.

use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;

use super::{exited, not_ready, Event, Launch, Outcome, Protocol, Verdict};
use crate::clock;
use crate::error::Error;
use crate::haproxy;
use crate::notify::{self, MasterSocket};
use crate::procs;
use crate::state::{Gen, Generations, MasterWorkerGenerations};

/// How often draining workers are looked for while some remain.
const DRAIN_POLL: Duration = Duration::from_millis(500);

/// A start (a new master) or a reload (SIGUSR2 to the serving master) in progress.
#[derive(Debug)]
struct Attempt {
    gen: u32,
    first: bool,
    /// The master that answers: the new one at the first start, else the serving one.
    master: i32,
    /// The master's workers before the reload.
    workers_before: Vec<i32>,
    /// haproxy said its loading failed ("Loading failure", STATUS=...fail...).
    loading_failed: bool,
    /// The master's children when it said READY=1.
    children_at_ready: Vec<i32>,
}

pub struct MasterWorker {
    launch: Launch,
    socket: MasterSocket,
    generations: MasterWorkerGenerations,
    attempt: Option<Attempt>,
    next_drain_check_ns: u64,
}

/// The verdict on a READY=1 of the master: `children` are its children then.
fn judge_ready(attempt: &Attempt, children: &[i32]) -> Verdict {
    if attempt.first {
        return Verdict::Serving;
    }
    let reason = if attempt.loading_failed {
        "haproxy reported a loading failure"
    } else if children.iter().all(|c| attempt.workers_before.contains(c)) {
        "the master started no new worker"
    } else {
        return Verdict::Serving;
    };
    Verdict::Failed { reason: reason.to_string(), code: 1 }
}

impl MasterWorker {
    pub fn fresh(launch: Launch, socket: MasterSocket) -> MasterWorker {
        let generations = MasterWorkerGenerations { master: None, workers: vec![], old_workers: vec![], socket_fd: socket.fd() };
        MasterWorker { launch, socket, generations, attempt: None, next_drain_check_ns: 0 }
    }

    /// Takes the carried generations back, keeping only the workers the kernel confirms.
    pub fn resume(launch: Launch, socket: MasterSocket, mut generations: MasterWorkerGenerations) -> MasterWorker {
        let me = std::process::id() as i32;
        if let Some(generation) = generations.master {
            if !procs::is_child_of(generation.pid, me) {
                warning!("serving gen {} pid {} is not our child any more", generation.n, generation.pid);
            }
            generations.workers.retain(|&w| procs::is_child_of(w, generation.pid));
            generations.old_workers.retain(|&w| procs::is_child_of(w, generation.pid));
        }
        // Draining workers are looked for right away: some may have ended during the re-exec.
        MasterWorker { launch, socket, generations, attempt: None, next_drain_check_ns: 0 }
    }

    fn master_pid(&self) -> Option<i32> {
        self.generations.master.map(|generation| generation.pid)
    }

    /// The pid whose messages count: the attempt's master, else the serving one.
    fn answering_master(&self) -> Option<i32> {
        self.attempt.as_ref().map(|attempt| attempt.master).or_else(|| self.master_pid())
    }

    fn master_said(&mut self, message: &str, children: Option<&Vec<i32>>) -> Outcome {
        if let (Some(attempt), Some(status)) = (&mut self.attempt, notify::value(message, "STATUS")) {
            if !attempt.first && status.to_ascii_lowercase().contains("fail") {
                attempt.loading_failed = true;
            }
        }
        let children = match children {
            Some(c) if notify::says(message, "READY") => c,
            _ => return Outcome::Nothing,
        };
        match &mut self.attempt {
            Some(attempt) => {
                attempt.children_at_ready = children.clone();
                Outcome::Attempt(judge_ready(attempt, children))
            }
            None => {
                // A late answer to a reload that already timed out: learn the current workers.
                let old = &self.generations.old_workers;
                self.generations.workers = children.iter().copied().filter(|w| !old.contains(w)).collect();
                Outcome::StatusChanged
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
                debug!("ignoring a notify message from pid {} (not the master): {:?}", pid, message);
                continue;
            }
            debug!("master {} says {:?}", pid, message);
            // The fact the verdict needs, read once, when the master says it is ready.
            let children = if notify::says(&message, "READY") { Some(procs::children_of(pid)) } else { None };
            events.push(Event::MasterSaid { message, children });
        }
        events
    }

    fn begin(&mut self, gen: u32, first: bool) -> Result<(), Error> {
        if first {
            let program = &self.launch.program;
            let pid = haproxy::spawn(program, &self.launch.args.base, self.launch.relay_write, Some(&self.socket.address))
                .map_err(|e| Error::from_spawn(program, &e))?;
            info!("gen {}: started haproxy master pid {}", gen, pid);
            self.attempt = Some(Attempt { gen, first, master: pid, workers_before: vec![], loading_failed: false, children_at_ready: vec![] });
            return Ok(());
        }
        let master = self.master_pid().ok_or_else(|| Error::Internal("no master to reload".into()))?;
        // The workers before the signal are the ones already known: the master forks only at its
        // start and its reloads, and the wrapper records the children after each of them (a late
        // READY=1 too), so no /proc walk has to delay the signal.
        let mut before: Vec<i32> = self.generations.workers.iter().chain(self.generations.old_workers.iter()).copied().collect();
        before.sort_unstable();
        before.dedup();
        haproxy::signal(master, Signal::SIGUSR2);
        info!("gen {}: asked master {} to reload (workers before: {:?})", gen, master, before);
        self.attempt = Some(Attempt { gen, first, master, workers_before: before, loading_failed: false, children_at_ready: vec![] });
        Ok(())
    }

    fn on_event(&mut self, event: &Event, _alerts: &[String]) -> Outcome {
        match event {
            Event::Line(line) => {
                if let Some(attempt) = &mut self.attempt {
                    if line.contains("Loading failure") {
                        attempt.loading_failed = true;
                    }
                }
                Outcome::Nothing
            }
            Event::MasterSaid { message, children } => self.master_said(message, children.as_ref()),
            Event::ChildEnded { pid, status } => match &self.attempt {
                Some(attempt) if attempt.first && attempt.master == *pid => Outcome::Attempt(exited(status)),
                _ if self.master_pid() == Some(*pid) => {
                    self.generations.master = None;
                    Outcome::ServingEnded(*status)
                }
                _ => Outcome::Nothing,
            },
            Event::Deadline { ready_timeout } if self.attempt.is_some() => Outcome::Attempt(not_ready(*ready_timeout)),
            Event::Deadline { .. } => Outcome::Nothing,
        }
    }

    fn decides_attempt(&self, _pid: i32) -> bool {
        false
    }

    fn commit(&mut self) -> i32 {
        let attempt = match self.attempt.take() {
            Some(attempt) => attempt,
            None => return 0,
        };
        let children = attempt.children_at_ready;
        let new: Vec<i32> = children.iter().copied().filter(|w| !attempt.workers_before.contains(w)).collect();
        let mut old = std::mem::take(&mut self.generations.workers);
        old.extend(attempt.workers_before.iter().copied());
        old.sort_unstable();
        old.dedup();
        self.generations.old_workers = old.into_iter().filter(|w| children.contains(w) && !new.contains(w)).collect();
        self.generations.workers = new;
        self.generations.master = Some(Gen { n: attempt.gen, pid: attempt.master });
        self.next_drain_check_ns = clock::deadline_after(DRAIN_POLL);
        attempt.master
    }

    fn abandon(&mut self, _reload_failed: bool) -> Option<WaitStatus> {
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

    fn serving_text(&self) -> Option<String> {
        self.generations.master.map(|generation| format!("gen {} serving (master {}, workers {})", generation.n, generation.pid, super::pid_list(&self.generations.workers)))
    }

    fn serving_label(&self, pid: i32) -> String {
        format!("master pid {}", pid)
    }

    fn draining(&self) -> Vec<i32> {
        self.generations.old_workers.clone()
    }

    fn next_tick_ns(&self) -> Option<u64> {
        if self.generations.old_workers.is_empty() {
            None
        } else {
            Some(self.next_drain_check_ns)
        }
    }

    /// Which old workers are still draining, which are the current ones.
    fn on_tick(&mut self, now_ns: u64) -> bool {
        let master = match self.master_pid() {
            Some(m) if !self.generations.old_workers.is_empty() && now_ns >= self.next_drain_check_ns => m,
            _ => return false,
        };
        self.next_drain_check_ns = now_ns + DRAIN_POLL.as_nanos() as u64;
        let alive = procs::children_of(master);
        let before = self.generations.old_workers.len();
        self.generations.old_workers.retain(|w| alive.contains(w));
        self.generations.workers.retain(|w| alive.contains(w));
        if self.generations.old_workers.len() != before {
            info!("old workers still draining: {}", self.generations.old_workers.len());
            return true;
        }
        false
    }

    fn generations(&self) -> Generations {
        Generations::MasterWorker(self.generations.clone())
    }

    fn finish(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli;
    use nix::unistd::Pid;
    use std::path::PathBuf;

    const MASTER: i32 = 4_100_001;
    const W1: i32 = 4_100_011;
    const W2: i32 = 4_100_012;
    const W3: i32 = 4_100_013;

    /// A master-worker protocol with a made-up master: serving gen 1 (worker W1) and, when
    /// `reload`, reloading to gen 2; else starting gen 1. Nothing is started.
    fn protocol(reload: bool) -> MasterWorker {
        let hargs = match cli::parse(["-Ws", "-f", "h.cfg"]).unwrap() {
            cli::Command::Supervise(_, h) => h,
            _ => unreachable!(),
        };
        let launch = Launch { program: PathBuf::from("/nonexistent/haproxy"), args: hargs, relay_write: 2 };
        let mut p = MasterWorker::fresh(launch, MasterSocket::bind().unwrap());
        if reload {
            p.generations.master = Some(Gen { n: 1, pid: MASTER });
            p.generations.workers = vec![W1];
        }
        let workers_before = if reload { vec![W1] } else { vec![] };
        p.attempt = Some(Attempt { gen: 1 + reload as u32, first: !reload, master: MASTER, workers_before, loading_failed: false, children_at_ready: vec![] });
        p
    }

    fn ready(children: &[i32]) -> Event {
        Event::MasterSaid { message: "READY=1\nMAINPID=4100001\n".into(), children: Some(children.to_vec()) }
    }

    fn failed(reason: &str) -> Outcome {
        Outcome::Attempt(Verdict::Failed { reason: reason.into(), code: 1 })
    }

    #[test]
    fn ready_at_the_start_means_serving() {
        let mut p = protocol(false);
        assert_eq!(p.on_event(&ready(&[W1]), &[]), Outcome::Attempt(Verdict::Serving));
        assert_eq!(p.commit(), MASTER);
        assert_eq!(p.serving_text().unwrap(), format!("gen 1 serving (master {}, workers {})", MASTER, W1));
        assert_eq!(p.signal_targets(), vec![MASTER]);
    }

    #[test]
    fn a_reload_serves_when_the_master_has_a_new_worker() {
        let mut p = protocol(true);
        assert_eq!(p.on_event(&ready(&[W1, W2]), &[]), Outcome::Attempt(Verdict::Serving));
        p.commit();
        assert_eq!(p.generations.workers, vec![W2]);
        assert_eq!(p.draining(), vec![W1]);
        assert!(p.next_tick_ns().is_some());
    }

    #[test]
    fn a_reload_without_a_new_worker_failed() {
        let mut p = protocol(true);
        assert_eq!(p.on_event(&ready(&[W1]), &[]), failed("the master started no new worker"));
        let mut p = protocol(true);
        assert_eq!(p.on_event(&ready(&[]), &[]), failed("the master started no new worker"));
    }

    #[test]
    fn a_loading_failure_fails_the_reload_even_with_a_new_worker() {
        let mut p = protocol(true);
        assert_eq!(p.on_event(&Event::Line("[NOTICE]   (1) : Loading failure!".into()), &[]), Outcome::Nothing);
        assert_eq!(p.on_event(&ready(&[W1, W2]), &[]), failed("haproxy reported a loading failure"));
        // haproxy >= 3.1 says it in STATUS= of the READY=1 datagram itself.
        let mut p = protocol(true);
        let said = Event::MasterSaid { message: "READY=1\nSTATUS=Reload failed!\n".into(), children: Some(vec![W1, W3]) };
        assert_eq!(p.on_event(&said, &[]), failed("haproxy reported a loading failure"));
    }

    #[test]
    fn messages_without_ready_decide_nothing() {
        let mut p = protocol(true);
        let reloading = Event::MasterSaid { message: "RELOADING=1\n".into(), children: None };
        assert_eq!(p.on_event(&reloading, &[]), Outcome::Nothing);
        assert_eq!(p.on_event(&Event::Line("[ALERT] (1) : config : bad".into()), &["config : bad".into()]), Outcome::Nothing);
    }

    #[test]
    fn the_master_ending_fails_a_start_and_ends_a_running_service() {
        let mut p = protocol(false);
        let end = Event::ChildEnded { pid: MASTER, status: WaitStatus::Exited(Pid::from_raw(MASTER), 1) };
        assert_eq!(p.on_event(&end, &[]), Outcome::Attempt(Verdict::Failed { reason: "haproxy exited with status 1".into(), code: 1 }));
        let mut p = protocol(true);
        let killed = WaitStatus::Signaled(Pid::from_raw(MASTER), Signal::SIGKILL, false);
        assert_eq!(p.on_event(&Event::ChildEnded { pid: MASTER, status: killed }, &[]), Outcome::ServingEnded(killed));
        assert_eq!(p.serving_pid(), None);
    }

    #[test]
    fn a_late_ready_updates_the_workers() {
        let mut p = protocol(true);
        p.attempt = None;
        p.generations.old_workers = vec![W1];
        assert_eq!(p.on_event(&ready(&[W1, W3]), &[]), Outcome::StatusChanged);
        assert_eq!(p.generations.workers, vec![W3]);
    }

    #[test]
    fn a_deadline_fails_the_attempt_with_69() {
        let mut p = protocol(true);
        let d = Event::Deadline { ready_timeout: Duration::from_secs(2) };
        assert_eq!(p.on_event(&d, &[]), Outcome::Attempt(Verdict::Failed { reason: "not ready after 2 s".into(), code: 69 }));
    }
}
