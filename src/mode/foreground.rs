//! Foreground mode: each generation is one `haproxy -db ... -sf <sentinel> [-x SOCKET]`.
//!
//! The sentinel is a tiny process of the wrapper's: haproxy signals the `-sf` pids only once it
//! has bound its listeners, so the sentinel exiting 0 on SIGUSR1 is haproxy's own "I am
//! serving" handshake; the wrapper then soft-stops (SIGUSR1) the generation that served before,
//! as haproxy would have. The serving generation is kept out of `-sf` because haproxy pauses
//! (SIGTTOU) every `-sf` pid while it retries a bind that fails: a configuration that cannot
//! bind would otherwise refuse connections on the old generation too.
//!
//! Two failures are retried once: a failed hand-over (`-x`) without it, and "Address already in
//! use" on addresses only our own generations hold (`noreuseport` without `-x`: the new generation
//! can bind only once the old one lets go) with the older generations in `-sf`, haproxy's own
//! pause-and-retry. An address another program holds fails the reload at once: pausing ours would
//! refuse connections and free nothing. The wrapper writes the `-p` pid file.
//!
//! At most `--max-draining` generations drain at once: a reload that would make one more stops
//! the oldest draining haproxy (SIGTERM), which haproxy's own master does past
//! `mworker-max-reloads`.

use std::net::SocketAddr;

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;

use super::{exited, not_ready, Abandon, Change, Event, Launch, Protocol, Verdict};
use crate::error::{self, Error};
use crate::haproxy;
use crate::listeners::HandoverArg;
use crate::pidfile;
use crate::procs;
use crate::state::{ForegroundGenerations, Gen, Generations};

/// A new generation being started.
#[derive(Debug)]
struct NewGeneration {
    gen: u32,
    first: bool,
    sentinel: i32,
    /// The new haproxy (None until it is started).
    haproxy: Option<i32>,
    with_handover: bool,
    /// The wrapper's own hand-over (once: a retry goes without it).
    ours: Option<HandoverArg>,
    /// The generations still running are in the new haproxy's `-sf` (it may pause them).
    old_in_sf: bool,
    /// The one retry was used.
    retried: bool,
    /// The generation serving before this reload ended meanwhile (its end).
    serving_ended: Option<WaitStatus>,
}

pub struct Foreground {
    launch: Launch,
    generations: ForegroundGenerations,
    attempt: Option<NewGeneration>,
}

/// Did a generation that used `-x` fail because of the hand-over? haproxy says "Failed to get
/// the sockets from the old process!" then (a silent death may be it too); a configuration error
/// or "cannot bind socket" does not deserve a try without `-x`.
fn handover_may_be_at_fault(alerts: &[String]) -> bool {
    alerts.is_empty()
        || alerts
            .iter()
            .any(|alert| alert.contains("sockets from the old process") || alert.contains("old process socket"))
}

/// The addresses haproxy could not bind because they are in use: its alert ends with the address
/// in brackets ("cannot bind socket (Address already in use) for [127.0.0.1:80]", "[::1:80]").
fn addresses_in_use(alerts: &[String]) -> Vec<Option<SocketAddr>> {
    alerts
        .iter()
        .filter(|alert| alert.contains("Address already in use"))
        .map(|alert| {
            let inside = alert.trim_end().strip_suffix(']')?;
            let (ip, port) = inside[inside.rfind('[')? + 1..].rsplit_once(':')?;
            Some(SocketAddr::new(ip.parse().ok()?, port.parse().ok()?))
        })
        .collect()
}

/// Who holds what a generation could not bind: `Ok(())` when every address is held by our own
/// generations (`owners`: their pids) and by nothing else — `noreuseport`, where the new generation
/// can bind only once the old one lets go; otherwise the address and who holds it, for the log.
fn held_by_ours(alerts: &[String], owners: &[i32]) -> Result<(), String> {
    let wanted = addresses_in_use(alerts);
    if wanted.is_empty() {
        return Err("no address in use".to_string());
    }
    let listening = procs::listeners(std::process::id() as i32);
    let ours: Vec<u64> = owners.iter().flat_map(|pid| procs::socket_inodes(*pid)).collect();
    for addr in wanted {
        let addr = addr.ok_or_else(|| "an address in use that haproxy did not name".to_string())?;
        let holders: Vec<&procs::Listener> = listening
            .iter()
            .filter(|l| procs::bind_conflicts(addr, l.addr))
            .collect();
        if holders.is_empty() {
            return Err(format!("{} is in use, by no listener this wrapper can see", addr));
        }
        if let Some(other) = holders.iter().find(|l| !ours.contains(&l.inode)) {
            return Err(format!(
                "{} is in use by another program (its listener on {})",
                addr, other.addr
            ));
        }
    }
    Ok(())
}

impl Foreground {
    pub fn fresh(launch: Launch) -> Foreground {
        Foreground {
            launch,
            generations: ForegroundGenerations::default(),
            attempt: None,
        }
    }

    /// Takes the carried generations back, keeping only what the kernel confirms is still ours.
    pub fn resume(launch: Launch, mut generations: ForegroundGenerations, wrapper_pid: i32) -> Foreground {
        if let Some(generation) = generations.serving {
            if !procs::is_child_of(generation.pid, wrapper_pid) {
                warning!(
                    "serving gen {} pid {} is not our child any more",
                    generation.n,
                    generation.pid
                );
            }
        }
        generations
            .draining
            .retain(|generation| procs::is_child_of(generation.pid, wrapper_pid));
        generations
            .stopped
            .retain(|generation| procs::is_child_of(generation.pid, wrapper_pid));
        Foreground {
            launch,
            generations,
            attempt: None,
        }
    }

    /// Starts the attempt's haproxy: `-sf` the sentinel (and the generations still running, on
    /// the address-in-use retry).
    fn spawn_haproxy(&mut self) -> Result<(), Error> {
        let mut sf = Vec::new();
        let mut with_handover = false;
        let mut gen = 0;
        let mut old_in_sf = false;
        let mut ours = None;
        if let Some(attempt) = &self.attempt {
            sf.push(attempt.sentinel);
            with_handover = attempt.with_handover;
            gen = attempt.gen;
            old_in_sf = attempt.old_in_sf;
            ours = attempt.ours.clone();
        }
        if old_in_sf {
            sf.extend(self.signal_targets());
        }
        let handover = match (&ours, with_handover) {
            (Some(ours), true) => Some(ours.value.as_os_str()),
            (None, true) => self.launch.args.handover_socket.as_deref().map(|p| p.as_os_str()),
            (_, false) => None,
        };
        let keep_fd = ours.as_ref().filter(|_| with_handover).map(|o| o.fd);
        let argv = haproxy::foreground_args(&self.launch.args.base, &sf, handover);
        let program = &self.launch.program;
        let pid = haproxy::spawn(program, &argv, self.launch.relay_write, None, keep_fd)
            .map_err(|e| Error::from_spawn(program, &e))?;
        info!(
            "gen {}: started haproxy pid {}{}{}",
            gen,
            pid,
            match (handover.is_some(), keep_fd.is_some()) {
                (true, true) => " with the listening sockets the wrapper holds",
                (true, false) => " with listener hand-over",
                _ => "",
            },
            if sf.len() > 1 {
                format!(", old pids {:?}", &sf[1..])
            } else {
                String::new()
            }
        );
        if let Some(attempt) = &mut self.attempt {
            attempt.haproxy = Some(pid);
        }
        Ok(())
    }

    /// The attempt's haproxy ended before it was ready: retry once (without `-x`, or with the
    /// older generations in `-sf`), or fail.
    fn haproxy_ended(&mut self, pid: i32, status: &WaitStatus, alerts: &[String]) -> Change {
        let code = error::status_code(status).unwrap_or(1);
        let owners = self.signal_targets();
        let retry = match &mut self.attempt {
            Some(attempt) if attempt.retried => false,
            Some(attempt) if attempt.with_handover && handover_may_be_at_fault(alerts) => {
                warning!(
                    "gen {}: haproxy pid {} exited with status {} using listener hand-over; retrying once without it",
                    attempt.gen,
                    pid,
                    code
                );
                // Without the hand-over, the old generation may have to let go of its sockets.
                attempt.with_handover = false;
                attempt.old_in_sf = !attempt.first;
                true
            }
            Some(attempt) if !attempt.first && !attempt.old_in_sf && !addresses_in_use(alerts).is_empty() => {
                match held_by_ours(alerts, &owners) {
                    Ok(()) => {
                        warning!("gen {}: haproxy pid {} could not bind an address our generation holds (noreuseport); retrying once with the older generations in -sf", attempt.gen, pid);
                        attempt.old_in_sf = true;
                        true
                    }
                    Err(why) => {
                        // Pausing the serving generation would refuse connections and not free the address.
                        warning!("gen {}: haproxy pid {} could not bind: {}; not retried, the serving generation is untouched", attempt.gen, pid, why);
                        false
                    }
                }
            }
            _ => false,
        };
        if let (true, Some(attempt)) = (retry, &mut self.attempt) {
            attempt.retried = true;
            attempt.haproxy = None;
            // The wrapper's hand-over serves one haproxy: its end is closed by now.
            if attempt.ours.take().is_some() {
                attempt.with_handover = false;
            }
        }
        if !retry {
            return Change::Attempt(exited(status));
        }
        match self.spawn_haproxy() {
            Ok(()) => Change::StartedOver,
            Err(e) => Change::Attempt(Verdict::Failed {
                reason: e.to_string(),
                code: e.exit_code(),
            }),
        }
    }

    fn child_ended(&mut self, pid: i32, status: &WaitStatus, alerts: &[String]) -> Change {
        if let Some(attempt) = &mut self.attempt {
            if attempt.sentinel == pid {
                // Only haproxy's SIGUSR1 makes the sentinel exit 0.
                return match status {
                    WaitStatus::Exited(_, 0) => Change::Attempt(Verdict::Serving),
                    _ => Change::Nothing,
                };
            }
            if attempt.haproxy == Some(pid) {
                return self.haproxy_ended(pid, status, alerts);
            }
            if !attempt.first && self.generations.serving.map(|generation| generation.pid) == Some(pid) {
                // The new generation may have told it to stop already; the reload decides.
                info!(
                    "gen serving before the reload (pid {}) ended (status {})",
                    pid,
                    error::status_code(status).unwrap_or(1)
                );
                attempt.serving_ended = Some(*status);
                return Change::Attempt(Verdict::Pending);
            }
        }
        if self.generations.serving.map(|generation| generation.pid) == Some(pid) {
            self.generations.serving = None;
            return Change::ServingEnded(*status);
        }
        let draining = &mut self.generations.draining;
        let found = match draining.iter().position(|generation| generation.pid == pid) {
            Some(i) => Some(draining.remove(i)),
            None => {
                let stopped = &mut self.generations.stopped;
                stopped
                    .iter()
                    .position(|generation| generation.pid == pid)
                    .map(|i| stopped.remove(i))
            }
        };
        if let Some(generation) = found {
            info!(
                "gen {}: haproxy pid {} finished draining (status {})",
                generation.n,
                pid,
                error::status_code(status).unwrap_or(1)
            );
            return Change::StatusChanged;
        }
        Change::Nothing
    }

    /// More than `--max-draining` generations draining: the oldest ones are stopped (SIGTERM to
    /// their own haproxy, which closes what connections they still hold) until the bound holds.
    /// They are reaped as any draining generation is.
    fn bound_draining(&mut self) {
        let max = self.launch.max_draining.max(1) as usize;
        while self.generations.draining.len() > max {
            let draining = &mut self.generations.draining;
            let oldest = match draining
                .iter()
                .enumerate()
                .min_by_key(|(_, generation)| generation.n)
                .map(|(i, _)| i)
            {
                Some(i) => draining.remove(i),
                None => break,
            };
            let why = format!("more than {} draining generations (--max-draining)", max);
            let (n, pid) = (oldest.n, oldest.pid);
            notice!(
                "gen {}: stopping haproxy pid {} (SIGTERM), its connections with it: {}",
                n,
                pid,
                why
            );
            haproxy::signal(oldest.pid, Signal::SIGTERM);
            self.generations.stopped.push(oldest);
        }
    }

    fn write_pidfile(&mut self) {
        if let (Some(path), Some(generation)) = (&self.launch.args.pidfile, self.generations.serving) {
            match pidfile::write(path, &[generation.pid]) {
                Ok(()) => self.generations.pidfile_written = true,
                Err(e) => warning!("cannot write pid file {}: {}", path.display(), e),
            }
        }
    }
}

fn note_old_pidfile(path: &std::path::Path) {
    match pidfile::read(path) {
        Ok(pids) => {
            let me = std::process::id() as i32;
            for p in pids {
                if procs::stat(p).is_some() && !procs::is_child_of(p, me) {
                    notice!(
                        "pid file {} names pid {}, which is not ours: ignored and overwritten",
                        path.display(),
                        p
                    );
                }
            }
        }
        Err(e) if path.exists() => notice!("pid file {} ignored ({}); it will be overwritten", path.display(), e),
        Err(_) => {}
    }
}

impl Protocol for Foreground {
    fn name(&self) -> &'static str {
        "foreground"
    }

    fn message_fd(&self) -> Option<std::os::unix::io::RawFd> {
        None
    }

    fn read_messages(&mut self) -> Vec<Event> {
        Vec::new()
    }

    fn begin(&mut self, gen: u32, first: bool, handover: Option<&HandoverArg>) -> Result<(), Error> {
        if first {
            if let Some(path) = &self.launch.args.pidfile {
                note_old_pidfile(path);
            }
        }
        let with_handover =
            handover.is_some() || (!first && self.launch.args.handover_socket.as_ref().map_or(false, |p| p.exists()));
        let sentinel = haproxy::spawn_sentinel().map_err(|e| Error::Internal(format!("fork: {}", e)))?;
        self.attempt = Some(NewGeneration {
            gen,
            first,
            sentinel,
            haproxy: None,
            with_handover,
            ours: handover.cloned(),
            old_in_sf: false,
            retried: false,
            serving_ended: None,
        });
        self.spawn_haproxy()
    }

    fn on_event(&mut self, event: &Event, alerts: &[String]) -> Change {
        match event {
            Event::ChildEnded { pid, status } => self.child_ended(*pid, status, alerts),
            Event::Deadline { ready_timeout } if self.attempt.is_some() => Change::Attempt(not_ready(*ready_timeout)),
            Event::Deadline { .. } | Event::Line(_) | Event::MasterSaid { .. } => Change::Nothing,
        }
    }

    fn acknowledges_stop(&self) -> bool {
        // Each generation handles SIGUSR1 itself, from its first instruction on (before haproxy
        // installs its handler, the default action ends it): nothing drops it.
        false
    }

    fn decides_attempt(&self, pid: i32) -> bool {
        self.attempt.as_ref().map_or(false, |attempt| attempt.sentinel == pid)
    }

    fn commit(&mut self) -> i32 {
        let attempt = match self.attempt.take() {
            Some(attempt) => attempt,
            None => return 0,
        };
        let pid = attempt.haproxy.unwrap_or(0);
        if let Some(old) = self.generations.serving.take() {
            if attempt.serving_ended.is_none() {
                if !attempt.old_in_sf {
                    // The new generation serves: the old one stops accepting and drains, as
                    // haproxy's own -sf would have told it.
                    haproxy::signal(old.pid, Signal::SIGUSR1);
                }
                self.generations.draining.push(old);
            }
        }
        self.generations.serving = Some(Gen { n: attempt.gen, pid });
        self.bound_draining();
        self.write_pidfile();
        pid
    }

    fn abandon(&mut self, why: Abandon) -> Option<WaitStatus> {
        let attempt = self.attempt.take()?;
        for pid in attempt.haproxy.iter().chain(Some(&attempt.sentinel)) {
            haproxy::signal(*pid, Signal::SIGKILL);
        }
        if attempt.serving_ended.is_some() {
            self.generations.serving = None;
        }
        if why == Abandon::ReloadFailed && attempt.old_in_sf {
            // The new haproxy may have paused the older ones' listeners (SIGTTOU) while it retried binding.
            for pid in self.signal_targets() {
                haproxy::signal(pid, Signal::SIGTTIN);
            }
        }
        attempt.serving_ended
    }

    fn signal_targets(&self) -> Vec<i32> {
        let generations = &self.generations;
        let all = generations
            .serving
            .iter()
            .chain(generations.draining.iter())
            .chain(generations.stopped.iter());
        all.map(|generation| generation.pid).collect()
    }

    fn serving_pid(&self) -> Option<i32> {
        self.generations.serving.map(|generation| generation.pid)
    }

    fn takes_handover_on_reload(&self) -> bool {
        // Without a stats socket of the user's, the wrapper's copies make the reload a hand-over
        // too (no connection queued on an old socket is lost when it closes).
        self.launch.args.handover_socket.is_none()
    }

    fn listener_pids(&self) -> Vec<i32> {
        self.serving_pid().into_iter().collect()
    }

    fn forget_serving(&mut self) -> Option<i32> {
        self.generations.serving.take().map(|generation| generation.pid)
    }

    fn serving_text(&self) -> Option<String> {
        self.generations
            .serving
            .map(|generation| format!("gen {} serving (pid {})", generation.n, generation.pid))
    }

    fn serving_label(&self, pid: i32) -> String {
        format!("haproxy pid {}", pid)
    }

    fn draining(&self) -> Vec<i32> {
        self.generations
            .draining
            .iter()
            .map(|generation| generation.pid)
            .collect()
    }

    fn next_tick_ns(&self) -> Option<u64> {
        None
    }

    fn on_tick(&mut self, _now_ns: u64) -> bool {
        false
    }

    fn generations(&self) -> Generations {
        Generations::Foreground(self.generations.clone())
    }

    fn finish(&mut self) {
        if self.generations.pidfile_written {
            if let Some(path) = &self.launch.args.pidfile {
                pidfile::remove(path);
            }
        }
    }
}

#[cfg(test)]
mod tests;
