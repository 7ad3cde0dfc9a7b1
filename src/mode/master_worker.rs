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

use super::{exited, not_ready, Event, Launch, Outcome, Protocol, Verdict};
use crate::clock;
use crate::error::Error;
use crate::haproxy;
use crate::notify::{self, MasterSocket};
use crate::procs;
use crate::state::{Gen, Generations, MasterReload, MasterWorkerGenerations};

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
    /// CLOCK_MONOTONIC ns just before SIGUSR2 was sent (reloads).
    signalled_ns: u64,
    /// The master said RELOADING=1 for this reload: its next READY=1 answers it.
    master_began: bool,
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
        let generations = MasterWorkerGenerations { master: None, workers: vec![], old_workers: vec![], socket_fd: socket.fd(), reload: None };
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
        // A reload asked of the master before the exec goes on.
        let attempt = generations.reload.take().map(|r| Attempt {
            gen: r.gen,
            first: false,
            master: generations.master.map_or(0, |m| m.pid),
            workers_before: r.workers_before,
            loading_failed: r.loading_failed,
            signalled_ns: r.signalled_ns,
            master_began: r.master_began,
            children_at_ready: vec![],
        });
        // Draining workers are looked for right away: some may have ended during the re-exec.
        MasterWorker { launch, socket, generations, attempt, next_drain_check_ns: 0 }
    }

    fn master_pid(&self) -> Option<i32> {
        self.generations.master.map(|generation| generation.pid)
    }

    /// The pid whose messages count: the attempt's master, else the serving one.
    fn answering_master(&self) -> Option<i32> {
        self.attempt.as_ref().map(|attempt| attempt.master).or_else(|| self.master_pid())
    }

    fn master_said(&mut self, message: &str, children: Option<&Vec<i32>>) -> Outcome {
        if let Some(attempt) = &mut self.attempt {
            if !attempt.first && notify::says(message, "RELOADING") {
                // haproxy >= 3.0 dates it: an older one is an earlier reload's.
                let usec = notify::value(message, "MONOTONIC_USEC").and_then(|v| v.parse::<u64>().ok());
                if usec.map_or(true, |usec| usec >= attempt.signalled_ns / 1000) {
                    attempt.master_began = true;
                }
            }
        }
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
            Some(attempt) if !attempt.first && !attempt.master_began => {
                // The late answer of an earlier reload (it timed out, or its RELOADING=1 came
                // before this reload's signal): what it printed or forked is not this reload's.
                info!("gen {}: a READY=1 of an earlier reload; still waiting for the master to begin this one", attempt.gen);
                attempt.loading_failed = false;
                for &c in children {
                    if !attempt.workers_before.contains(&c) {
                        attempt.workers_before.push(c);
                    }
                }
                let old = &self.generations.old_workers;
                self.generations.workers = children.iter().copied().filter(|w| !old.contains(w)).collect();
                Outcome::StatusChanged
            }
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
            self.attempt = Some(Attempt { gen, first, master: pid, workers_before: vec![], loading_failed: false, signalled_ns: 0, master_began: true, children_at_ready: vec![] });
            return Ok(());
        }
        let master = self.master_pid().ok_or_else(|| Error::Internal("no master to reload".into()))?;
        // The workers before the signal are the ones already known: the master forks only at its
        // start and its reloads, and the wrapper records the children after each of them (a late
        // READY=1 too), so no /proc walk has to delay the signal.
        let mut before: Vec<i32> = self.generations.workers.iter().chain(self.generations.old_workers.iter()).copied().collect();
        before.sort_unstable();
        before.dedup();
        let signalled_ns = clock::now_ns();
        haproxy::signal(master, Signal::SIGUSR2);
        info!("gen {}: asked master {} to reload (workers before: {:?})", gen, master, before);
        self.attempt = Some(Attempt { gen, first, master, workers_before: before, loading_failed: false, signalled_ns, master_began: false, children_at_ready: vec![] });
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
        let mut generations = self.generations.clone();
        generations.reload = self.attempt.as_ref().filter(|attempt| !attempt.first).map(|attempt| MasterReload {
            gen: attempt.gen,
            workers_before: attempt.workers_before.clone(),
            signalled_ns: attempt.signalled_ns,
            master_began: attempt.master_began,
            loading_failed: attempt.loading_failed,
        });
        Generations::MasterWorker(generations)
    }

    fn reloads_before_reexec(&self) -> bool {
        // SIGUSR2 to the master first: the wrapper's re-exec is then off the reload's critical path.
        true
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
        // A reload the master has begun (it said RELOADING=1 after the signal).
        p.attempt = Some(Attempt {
            gen: 1 + reload as u32,
            first: !reload,
            master: MASTER,
            workers_before,
            loading_failed: false,
            signalled_ns: 1_000_000,
            master_began: true,
            children_at_ready: vec![],
        });
        p
    }

    fn reloading(usec: Option<u64>) -> Event {
        let message = match usec {
            Some(usec) => format!("RELOADING=1\nMONOTONIC_USEC={}\n", usec),
            None => "RELOADING=1\n".to_string(),
        };
        Event::MasterSaid { message, children: None }
    }

    #[test]
    fn a_late_ready_of_an_earlier_reload_is_not_this_ones() {
        let mut p = protocol(true);
        if let Some(attempt) = &mut p.attempt {
            attempt.master_began = false;
        }
        // The earlier reload (timed out) ends now: its READY=1, its worker W2, its failure line.
        assert_eq!(p.on_event(&Event::Line("[WARNING] (1) : Loading failure!".into()), &[]), Outcome::Nothing);
        assert_eq!(p.on_event(&ready(&[W1, W2]), &[]), Outcome::StatusChanged);
        // Its RELOADING=1, dated before this reload's signal, does not begin this one either.
        assert_eq!(p.on_event(&reloading(Some(999)), &[]), Outcome::Nothing);
        assert_eq!(p.on_event(&ready(&[W1, W2]), &[]), Outcome::StatusChanged);
        // This reload's RELOADING=1: its READY=1 answers, and W2 is not its new worker.
        assert_eq!(p.on_event(&reloading(Some(1000)), &[]), Outcome::Nothing);
        assert_eq!(p.on_event(&ready(&[W1, W2]), &[]), failed("the master started no new worker"));
        // Undated (haproxy < 3.0): a RELOADING=1 after the signal begins it; the failure line of
        // the earlier reload does not count against it.
        let mut p = protocol(true);
        if let Some(attempt) = &mut p.attempt {
            attempt.master_began = false;
        }
        p.on_event(&Event::Line("[WARNING] (1) : Loading failure!".into()), &[]);
        p.on_event(&ready(&[W1, W2]), &[]);
        p.on_event(&reloading(None), &[]);
        assert_eq!(p.on_event(&ready(&[W1, W2, W3]), &[]), Outcome::Attempt(Verdict::Serving));
    }

    #[test]
    fn a_reload_in_progress_is_carried_across_the_reexec() {
        let mut p = protocol(true);
        if let Some(attempt) = &mut p.attempt {
            attempt.master_began = false;
        }
        let generations = match p.generations() {
            Generations::MasterWorker(g) => g,
            _ => unreachable!(),
        };
        let carried = generations.reload.clone().unwrap();
        assert_eq!((carried.gen, carried.workers_before.clone(), carried.signalled_ns, carried.master_began), (2, vec![W1], 1_000_000, false));
        let launch = p.launch.clone();
        let mut q = MasterWorker::resume(launch, MasterSocket::bind().unwrap(), generations);
        assert!(q.generations.reload.is_none());
        q.on_event(&reloading(None), &[]);
        assert_eq!(q.on_event(&ready(&[W1, W2]), &[]), Outcome::Attempt(Verdict::Serving));
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
