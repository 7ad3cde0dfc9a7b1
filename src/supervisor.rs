//! The supervisor: one event loop over signals, haproxy's output and (master-worker mode) the
//! master's notify messages; the state machine start → running ⇄ reloading → stopping.
//!
//! Once haproxy runs, nothing here bails out: errors are logged and the loop goes on. The only
//! ways out are a requested stop, the serving haproxy dying, or a failed start.

use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::cli::{HaproxyArgs, Mode, Options};
use crate::error::{self, status_code, Error};
use crate::haproxy::{self, Relay};
use crate::notify::{self, MasterSocket, StatusView, Systemd};
use crate::pidfile;
use crate::procs;
use crate::reexec::{self, Carried, Gen, LastReload};
use crate::signals::{self, Action};

/// Nanoseconds of CLOCK_MONOTONIC (survives the re-exec, unlike Instant).
pub fn now_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64,
        Err(_) => 0,
    }
}

fn ms_since(t0: u64) -> u64 {
    now_ns().saturating_sub(t0) / 1_000_000
}

/// How often draining master-worker workers are looked for while some remain.
const DRAIN_POLL: Duration = Duration::from_millis(500);
/// How many ALERT lines of one attempt are kept for its failure reason.
const MAX_ALERTS: usize = 20;

/// One attempt at a new generation: the first start or a reload.
struct Attempt {
    gen: u32,
    first: bool,
    started_ns: u64,
    deadline_ns: u64,
    /// foreground: the new haproxy and its readiness sentinel.
    pid: Option<i32>,
    sentinel: Option<i32>,
    with_handover: bool,
    retried: bool,
    /// foreground: the serving generation exited while this reload ran (its status).
    serving_gone: Option<u8>,
    /// master-worker: the workers before the reload, and whether the master said loading failed.
    old_workers: Vec<i32>,
    loading_failed: bool,
    alerts: Vec<String>,
}

enum Phase {
    Starting(Attempt),
    Running,
    Reloading(Attempt),
    Stopping { deadline_ns: Option<u64> },
}

pub struct Supervisor {
    opts: Options,
    args: HaproxyArgs,
    program: PathBuf,
    c: Carried,
    phase: Phase,
    pending_reload: bool,
    sigfd: SignalFd,
    relay: Relay,
    master: Option<MasterSocket>,
    systemd: Systemd,
    watchdog: Option<Duration>,
    next_watchdog_ns: u64,
    next_drain_check_ns: u64,
    /// The exit status decided when the stop began (failed start, serving haproxy died).
    exit_code: Option<u8>,
    /// The serving haproxy's own end, when it ended during a requested stop.
    serving_status: Option<WaitStatus>,
}

fn resolve_self_exe() -> PathBuf {
    match std::fs::read_link("/proc/self/exe") {
        Ok(p) => {
            let s = p.to_string_lossy();
            match s.strip_suffix(" (deleted)") {
                Some(stripped) => PathBuf::from(stripped),
                None => p,
            }
        }
        Err(_) => std::env::args_os().next().map(PathBuf::from).unwrap_or_default(),
    }
}

fn internal(what: &str, e: nix::Error) -> Error {
    Error::Internal(format!("{}: {}", what, e))
}

/// Descriptors the wrapper inherited beyond 0-2 are not haproxy's business: mark them
/// close-on-exec so that no haproxy generation inherits them.
fn close_inherited_on_exec() {
    let fds: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir.flatten().filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok())).collect(),
        Err(e) => {
            warning!("cannot list inherited descriptors: {}", e);
            return;
        }
    };
    for fd in fds.into_iter().filter(|&fd| fd > 2) {
        // The directory's own descriptor is gone by now: EBADF is expected for it.
        let _ = haproxy::set_cloexec(fd, true);
    }
}

/// Did a generation that used `-x` fail because of the hand-over? haproxy names the socket in
/// its alert then; a configuration error does not deserve a second try.
fn handover_may_be_at_fault(alerts: &[String]) -> bool {
    alerts.is_empty() || alerts.iter().any(|a| a.contains("socket") || a.contains("-x"))
}

impl Supervisor {
    fn new(
        opts: Options,
        args: HaproxyArgs,
        program: PathBuf,
        c: Carried,
        sigfd: SignalFd,
        relay: Relay,
        master: Option<MasterSocket>,
    ) -> Supervisor {
        Supervisor {
            opts,
            args,
            program,
            c,
            phase: Phase::Running,
            pending_reload: false,
            sigfd,
            relay,
            master,
            systemd: Systemd::new(),
            watchdog: notify::watchdog_interval(),
            next_watchdog_ns: 0,
            next_drain_check_ns: 0,
            exit_code: None,
            serving_status: None,
        }
    }

    /// A fresh start: set up, start generation 1.
    pub fn start(opts: Options, args: HaproxyArgs) -> Result<Supervisor, Error> {
        let exe = resolve_self_exe();
        let program = haproxy::locate(opts.haproxy.as_deref(), &exe)?;
        for note in &args.notes {
            warning!("{}", note);
        }
        // SAFETY: plain prctl on ourselves; makes orphaned descendants (workers of a dead master)
        // come back to the wrapper so nothing it started outlives it.
        if unsafe { nix::libc::prctl(nix::libc::PR_SET_CHILD_SUBREAPER, 1) } != 0 {
            warning!("cannot become a child subreaper: {}", std::io::Error::last_os_error());
        }
        close_inherited_on_exec();
        let sigfd = signals::signalfd().map_err(|e| internal("signalfd", e))?;
        let relay = Relay::new().map_err(|e| internal("pipe", e))?;
        let master = match args.mode {
            Mode::MasterWorker => Some(MasterSocket::bind().map_err(|e| internal("master notify socket", e))?),
            Mode::Foreground => None,
        };
        if let Some(pf) = &args.pidfile {
            if args.mode == Mode::Foreground {
                Self::note_old_pidfile(pf);
            }
        }
        let c = Carried::new(std::process::id() as i32, exe, (relay.r, relay.w), master.as_ref().map(|m| m.fd()));
        let mut s = Supervisor::new(opts, args, program, c, sigfd, relay, master);
        info!(
            "starting {} ({} mode, haproxy {})",
            env!("CARGO_PKG_NAME"),
            s.args.mode.name(),
            s.program.display()
        );
        s.begin_attempt(now_ns(), true);
        Ok(s)
    }

    /// After the re-exec: take the carried state back, check it against the kernel, and go on
    /// with the reload that caused the exec.
    pub fn resume(opts: Options, args: HaproxyArgs, state: &str) -> Result<Supervisor, Error> {
        let me = std::process::id() as i32;
        let mut c = reexec::decode(state).map_err(|e| Error::Internal(format!("state carried across re-exec is unusable: {}", e)))?;
        if c.wrapper_pid != me {
            return Err(Error::Internal(format!("state carried across re-exec belongs to pid {}, not {}", c.wrapper_pid, me)));
        }
        for fd in [Some(c.relay.0), Some(c.relay.1), c.master_sock].iter().flatten() {
            haproxy::set_cloexec(*fd, true).map_err(|e| internal("carried descriptor", e))?;
        }
        let sigfd = signals::signalfd().map_err(|e| internal("signalfd", e))?;
        let relay = Relay::from_fds(c.relay.0, c.relay.1);
        let master = match c.master_sock {
            Some(fd) => Some(MasterSocket::from_fd(fd).map_err(|e| internal("carried master socket", e))?),
            None => None,
        };
        // Trust only what the kernel confirms: every carried pid must still be our child
        // (master-worker workers: the master's).
        if let Some(g) = c.serving {
            if !procs::is_child_of(g.pid, me) {
                warning!("serving gen {} pid {} is not our child any more", g.n, g.pid);
            }
        }
        c.draining.retain(|g| procs::is_child_of(g.pid, me));
        if let Some(g) = c.serving {
            c.workers.retain(|&w| procs::is_child_of(w, g.pid));
            c.old_workers.retain(|&w| procs::is_child_of(w, g.pid));
        }
        let program = haproxy::locate(opts.haproxy.as_deref(), &c.exe)?;
        let t0 = c.reload_started_ns;
        let mut s = Supervisor::new(opts, args, program, c, sigfd, relay, master);
        info!("re-executed {} (pid {}), reloading", s.c.exe.display(), me);
        // A child may have ended while we were exec'ing: its SIGCHLD is pending and read below,
        // but reap first so the reload starts from the truth.
        s.reap();
        if let Phase::Running = s.phase {
            s.begin_attempt(t0, false);
        }
        Ok(s)
    }

    fn note_old_pidfile(pf: &std::path::Path) {
        match pidfile::read(pf) {
            Ok(pids) => {
                let me = std::process::id() as i32;
                for p in pids {
                    if procs::stat(p).is_some() && !procs::is_child_of(p, me) {
                        notice!("pid file {} names pid {}, which is not ours: ignored and overwritten", pf.display(), p);
                    }
                }
            }
            Err(e) if pf.exists() => notice!("pid file {} ignored ({}); it will be overwritten", pf.display(), e),
            Err(_) => {}
        }
    }

    // ---- the event loop ----

    pub fn run(mut self) -> u8 {
        loop {
            if let Phase::Stopping { .. } = self.phase {
                if self.no_children_left() {
                    return self.finish();
                }
            }
            let timeout = self.poll_timeout_ms();
            let mut fds = vec![
                PollFd::new(self.sigfd.as_raw_fd(), PollFlags::POLLIN),
                PollFd::new(self.relay.r, PollFlags::POLLIN),
            ];
            if let Some(m) = &self.master {
                fds.push(PollFd::new(m.fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => {
                    error!("poll: {}", e);
                }
            }
            // Order matters: haproxy's lines first (they explain what follows), then the master's
            // messages, then signals (SIGCHLD included).
            let ready = |i: usize| fds.get(i).and_then(|f| f.revents()).map_or(false, |r| !r.is_empty());
            let (relay_ready, master_ready) = (ready(1), ready(2));
            if relay_ready {
                self.on_output();
            }
            if master_ready {
                self.on_master_messages();
            }
            while let Some(sig) = signals::read_one(&mut self.sigfd) {
                self.on_signal(sig);
            }
            self.on_tick();
        }
    }

    fn poll_timeout_ms(&self) -> i32 {
        let now = now_ns();
        let mut next: Option<u64> = None;
        let mut consider = |t: u64| next = Some(next.map_or(t, |n: u64| n.min(t)));
        match &self.phase {
            Phase::Starting(a) | Phase::Reloading(a) => consider(a.deadline_ns),
            Phase::Stopping { deadline_ns: Some(d) } => consider(*d),
            _ => {}
        }
        if self.watchdog.is_some() {
            consider(self.next_watchdog_ns);
        }
        if !self.c.old_workers.is_empty() {
            consider(self.next_drain_check_ns);
        }
        match next {
            None => -1,
            Some(t) if t <= now => 0,
            Some(t) => (((t - now) / 1_000_000) + 1).min(i32::MAX as u64) as i32,
        }
    }

    fn on_signal(&mut self, sig: Signal) {
        match signals::classify(sig) {
            Action::Reap => self.reap(),
            Action::Reload => self.on_reload_request(sig),
            Action::Stop => {
                notice!("{} received: stopping", sig);
                self.begin_stop(false);
            }
            Action::GracefulStop => {
                notice!("{} received: graceful stop", sig);
                self.begin_stop(true);
            }
            Action::Forward(s) => {
                info!("{} received: passing it on to haproxy", sig);
                for pid in self.haproxy_pids() {
                    haproxy::signal(pid, s);
                }
            }
            Action::Ignore => {}
        }
    }

    /// The haproxy processes to pass signals on to: foreground, every generation; master-worker,
    /// the master (it passes them to its workers).
    fn haproxy_pids(&self) -> Vec<i32> {
        let mut out: Vec<i32> = self.c.serving.iter().map(|g| g.pid).collect();
        if self.args.mode == Mode::Foreground {
            out.extend(self.c.draining.iter().map(|g| g.pid));
        }
        out
    }

    fn on_tick(&mut self) {
        let now = now_ns();
        if let Some(interval) = self.watchdog {
            if now >= self.next_watchdog_ns {
                let serving_alive = self.c.serving.map_or(false, |g| procs::stat(g.pid).map_or(false, |(_, st)| st != 'Z'));
                if serving_alive {
                    self.systemd.watchdog();
                }
                self.next_watchdog_ns = now + interval.as_nanos() as u64 / 2;
            }
        }
        if !self.c.old_workers.is_empty() && now >= self.next_drain_check_ns {
            self.next_drain_check_ns = now + DRAIN_POLL.as_nanos() as u64;
            self.refresh_workers();
        }
        let timed_out = match &self.phase {
            Phase::Starting(a) | Phase::Reloading(a) => now >= a.deadline_ns,
            _ => false,
        };
        if timed_out {
            let secs = self.opts.ready_timeout.as_secs_f64();
            self.attempt_failed(format!("not ready after {} s", secs), Some(error::EXIT_NOT_READY));
        }
        if let Phase::Stopping { deadline_ns: Some(d) } = self.phase {
            if now >= d {
                warning!("haproxy still running {} s after SIGTERM: sending SIGKILL", self.opts.stop_timeout.as_secs_f64());
                for pid in procs::children_of(self.c.wrapper_pid) {
                    haproxy::signal(pid, Signal::SIGKILL);
                }
                self.phase = Phase::Stopping { deadline_ns: None };
            }
        }
    }

    // ---- haproxy's output and the master's messages ----

    fn on_output(&mut self) {
        for line in self.relay.read_lines() {
            crate::log::write(crate::log::haproxy_line_priority(&line), format_args!("{}", line));
            if let Phase::Starting(a) | Phase::Reloading(a) = &mut self.phase {
                if let Some(alert) = crate::log::alert_text(&line) {
                    if a.alerts.len() < MAX_ALERTS {
                        a.alerts.push(alert.to_string());
                    }
                }
                if line.contains("Loading failure") {
                    a.loading_failed = true;
                }
            }
        }
    }

    fn on_master_messages(&mut self) {
        let master = match &self.master {
            Some(m) => m,
            None => return,
        };
        let msgs = master.recv_all();
        let master_pid = match &self.phase {
            Phase::Starting(a) => a.pid,
            _ => self.c.serving.map(|g| g.pid),
        };
        for (pid, msg) in msgs {
            if Some(pid) != master_pid {
                debug!("ignoring a notify message from pid {} (not the master): {:?}", pid, msg);
                continue;
            }
            debug!("master {} says {:?}", pid, msg);
            if let Some(st) = notify::value(&msg, "STATUS") {
                if st.to_ascii_lowercase().contains("fail") {
                    if let Phase::Reloading(a) = &mut self.phase {
                        a.loading_failed = true;
                    }
                }
            }
            if notify::says(&msg, "READY") {
                self.on_master_ready();
            }
        }
    }

    fn on_master_ready(&mut self) {
        // haproxy writes its lines before it sends READY=1, but they may still sit in the pipe when
        // the datagram is read: take them first, they decide the verdict and give the reason.
        self.on_output();
        let (first, old_workers, loading_failed) = match &self.phase {
            Phase::Starting(a) | Phase::Reloading(a) => (a.first, a.old_workers.clone(), a.loading_failed),
            Phase::Running => {
                // A late answer to a reload that already timed out: learn the current workers.
                if let Some(g) = self.c.serving {
                    let old = self.c.old_workers.clone();
                    self.c.workers = procs::children_of(g.pid).into_iter().filter(|w| !old.contains(w)).collect();
                    self.update_status();
                }
                return;
            }
            Phase::Stopping { .. } => return,
        };
        let master = match (&self.phase, self.c.serving) {
            (Phase::Starting(a), _) => a.pid.unwrap_or(0),
            (_, Some(g)) => g.pid,
            _ => return,
        };
        let workers = procs::children_of(master);
        let new: Vec<i32> = workers.iter().copied().filter(|w| !old_workers.contains(w)).collect();
        if !first && (loading_failed || new.is_empty()) {
            let reason = if loading_failed { "haproxy reported a loading failure" } else { "the master started no new worker" };
            self.attempt_failed(reason.to_string(), None);
        } else {
            self.attempt_succeeded(master, new, &workers);
        }
    }

    /// master-worker: which old workers are still draining, which are the current ones.
    fn refresh_workers(&mut self) {
        let master = match self.c.serving {
            Some(g) => g.pid,
            None => return,
        };
        let alive = procs::children_of(master);
        let before = self.c.old_workers.len();
        self.c.old_workers.retain(|w| alive.contains(w));
        self.c.workers.retain(|w| alive.contains(w));
        if self.c.old_workers.len() != before {
            info!("old workers still draining: {}", self.c.old_workers.len());
            self.update_status();
        }
    }

    // ---- attempts: the first start and reloads ----

    fn on_reload_request(&mut self, sig: Signal) {
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
            Phase::Stopping { .. } => notice!("{} received while stopping: ignored", sig),
        }
    }

    /// Re-executes the wrapper (same pid, the program now on disk), which then starts the reload;
    /// if the exec fails, reloads in this image.
    fn reload_now(&mut self) {
        let t0 = now_ns();
        self.pending_reload = false;
        let status = self.status_with(&self.phase_text("reloading", self.c.next_gen));
        self.systemd.reloading(&status);
        if let Some(partial) = self.relay.take_partial() {
            crate::log::write(crate::log::haproxy_line_priority(&partial), format_args!("{}", partial));
        }
        self.c.reload_started_ns = t0;
        let carried = [Some(self.c.relay.0), Some(self.c.relay.1), self.c.master_sock];
        let mut ok = true;
        for fd in carried.iter().flatten() {
            if let Err(e) = haproxy::set_cloexec(*fd, false) {
                warning!("cannot keep fd {} across re-exec: {}", fd, e);
                ok = false;
            }
        }
        if ok {
            let err = reexec::exec(&self.c.exe, &self.c);
            warning!("re-exec of {} failed: {}; reloading without it", self.c.exe.display(), err);
        }
        for fd in carried.iter().flatten() {
            let _ = haproxy::set_cloexec(*fd, true);
        }
        self.begin_attempt(t0, false);
    }

    fn begin_attempt(&mut self, t0: u64, first: bool) {
        let gen = self.c.next_gen;
        self.c.next_gen += 1;
        let mut a = Attempt {
            gen,
            first,
            started_ns: t0,
            deadline_ns: now_ns() + self.opts.ready_timeout.as_nanos() as u64,
            pid: None,
            sentinel: None,
            with_handover: false,
            retried: false,
            serving_gone: None,
            old_workers: vec![],
            loading_failed: false,
            alerts: vec![],
        };
        let result = match self.args.mode {
            Mode::Foreground => {
                a.with_handover = !first && self.args.handover_socket.as_ref().map_or(false, |p| p.exists());
                self.spawn_foreground(&mut a)
            }
            Mode::MasterWorker => self.start_master_worker(&mut a),
        };
        match result {
            Ok(()) => {
                self.phase = if first { Phase::Starting(a) } else { Phase::Reloading(a) };
                if first {
                    // A reload announced itself with RELOADING=1 before the re-exec.
                    let status = self.status_with(&self.phase_text("starting", gen));
                    self.systemd.status(&status);
                }
            }
            Err(e) => {
                self.phase = if first { Phase::Starting(a) } else { Phase::Reloading(a) };
                let code = e.exit_code();
                self.attempt_failed(e.to_string(), Some(code));
            }
        }
    }

    fn spawn_foreground(&mut self, a: &mut Attempt) -> Result<(), Error> {
        if a.sentinel.is_none() {
            a.sentinel = Some(haproxy::spawn_sentinel().map_err(|e| internal("fork", e))?);
        }
        let mut sf = vec![a.sentinel.unwrap_or(0)];
        sf.extend(self.haproxy_pids());
        let handover = if a.with_handover { self.args.handover_socket.as_deref() } else { None };
        let argv = haproxy::foreground_args(&self.args.base, &sf, handover);
        let pid = haproxy::spawn(&self.program, &argv, self.relay.w, None).map_err(|e| Error::from_spawn(&self.program, &e))?;
        info!(
            "gen {}: started haproxy pid {}{}{}",
            a.gen,
            pid,
            if handover.is_some() { " with listener hand-over" } else { "" },
            if sf.len() > 1 { format!(", old pids {:?}", &sf[1..]) } else { String::new() }
        );
        a.pid = Some(pid);
        Ok(())
    }

    fn start_master_worker(&mut self, a: &mut Attempt) -> Result<(), Error> {
        let master_sock = self.master.as_ref().map(|m| m.address.clone());
        if a.first {
            let pid = haproxy::spawn(&self.program, &self.args.base, self.relay.w, master_sock.as_deref())
                .map_err(|e| Error::from_spawn(&self.program, &e))?;
            info!("gen {}: started haproxy master pid {}", a.gen, pid);
            a.pid = Some(pid);
            return Ok(());
        }
        let master = match self.c.serving {
            Some(g) => g.pid,
            None => return Err(Error::Internal("no master to reload".into())),
        };
        // Messages from before this reload must not be taken for its answer.
        if self.master.is_some() {
            self.on_master_messages();
        }
        // The workers before the signal are the ones already known: the master forks only at its
        // start and its reloads, and the wrapper records the children after each of them (a late
        // READY=1 too), so no /proc walk has to delay the signal.
        let mut old: Vec<i32> = self.c.workers.iter().chain(self.c.old_workers.iter()).copied().collect();
        old.sort_unstable();
        old.dedup();
        a.old_workers = old;
        a.pid = Some(master);
        haproxy::signal(master, Signal::SIGUSR2);
        info!("gen {}: asked master {} to reload (workers before: {:?})", a.gen, master, a.old_workers);
        Ok(())
    }

    fn take_attempt(&mut self) -> Option<Attempt> {
        match std::mem::replace(&mut self.phase, Phase::Running) {
            Phase::Starting(a) | Phase::Reloading(a) => Some(a),
            other => {
                self.phase = other;
                None
            }
        }
    }

    /// `workers`: master-worker, the new workers; `children`: all the master's children now.
    fn attempt_succeeded(&mut self, pid: i32, workers: Vec<i32>, children: &[i32]) {
        let a = match self.take_attempt() {
            Some(a) => a,
            None => return,
        };
        let ms = ms_since(a.started_ns);
        let new = Gen { n: a.gen, pid };
        match self.args.mode {
            Mode::Foreground => {
                if let Some(old) = self.c.serving.take() {
                    if a.serving_gone.is_none() {
                        self.c.draining.push(old);
                    }
                }
            }
            Mode::MasterWorker => {
                let mut old = std::mem::take(&mut self.c.workers);
                old.extend(a.old_workers.iter().copied());
                old.sort_unstable();
                old.dedup();
                self.c.old_workers = old.into_iter().filter(|w| children.contains(w) && !workers.contains(w)).collect();
                self.c.workers = workers;
                self.next_drain_check_ns = now_ns() + DRAIN_POLL.as_nanos() as u64;
            }
        }
        self.c.serving = Some(new);
        self.write_pidfile();
        if a.first {
            let what = if self.args.mode == Mode::MasterWorker { "master" } else { "haproxy" };
            notice!("gen {}: {} pid {} serving, ready in {} ms", a.gen, what, pid, ms);
        } else {
            self.c.reloads += 1;
            self.c.last_reload = LastReload::Ok { ms };
            let draining: Vec<i32> = self.draining_pids();
            notice!("reload {} ok in {} ms: gen {} pid {} serving, draining {:?}", self.c.reloads, ms, a.gen, pid, draining);
        }
        let status = self.status_with("");
        self.systemd.ready(&status);
        if self.pending_reload {
            self.reload_now();
        }
    }

    /// The attempt failed. A first start ends the wrapper with `start_code`; a reload leaves the
    /// serving generation untouched (resumed, in case haproxy paused its listeners).
    fn attempt_failed(&mut self, reason: String, start_code: Option<u8>) {
        // Lines the failed haproxy wrote before it ended belong to this attempt's reason.
        self.on_output();
        let a = match self.take_attempt() {
            Some(a) => a,
            None => return,
        };
        let ms = ms_since(a.started_ns);
        let reason = a.alerts.first().cloned().map_or(reason.clone(), |alert| format!("{} ({})", alert, reason));
        if self.args.mode == Mode::Foreground {
            if let Some(pid) = a.pid {
                haproxy::signal(pid, Signal::SIGKILL);
            }
            if let Some(s) = a.sentinel {
                haproxy::signal(s, Signal::SIGKILL);
            }
        }
        if a.first {
            error!("gen {}: haproxy failed to start after {} ms: {}", a.gen, ms, reason);
            if self.args.mode == Mode::MasterWorker {
                if let Some(pid) = a.pid {
                    haproxy::signal(pid, Signal::SIGKILL);
                }
            }
            self.exit_code = Some(start_code.unwrap_or(1));
            self.begin_stop(false);
            return;
        }
        self.c.next_gen = a.gen;
        self.c.last_reload = LastReload::Failed { ms, reason: reason.clone() };
        error!("reload failed after {} ms, the previous generation keeps serving: {}", ms, reason);
        if self.args.mode == Mode::Foreground {
            for pid in self.haproxy_pids() {
                haproxy::signal(pid, Signal::SIGTTIN);
            }
        }
        if let Some(code) = a.serving_gone {
            error!("the serving haproxy ended during the failed reload: stopping");
            self.c.serving = None;
            self.exit_code = Some(code);
            self.begin_stop(false);
            return;
        }
        let status = self.status_with("");
        self.systemd.ready(&status);
        if self.pending_reload {
            self.reload_now();
        }
    }

    // ---- children ----

    fn reap(&mut self) {
        let mut ended = Vec::new();
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(st) => {
                    if let Some(pid) = st.pid() {
                        ended.push((pid.as_raw(), st));
                    }
                }
                Err(nix::Error::EINTR) => continue,
                Err(_) => break, // ECHILD: nobody left
            }
        }
        // A sentinel's news first: when a new generation's readiness and the old one's exit come
        // together, the reload has succeeded and the old one simply finished draining.
        ended.sort_by_key(|(pid, _)| !self.is_sentinel(*pid));
        for (pid, st) in ended {
            self.on_child_ended(pid, st);
        }
    }

    fn is_sentinel(&self, pid: i32) -> bool {
        matches!(&self.phase, Phase::Starting(a) | Phase::Reloading(a) if a.sentinel == Some(pid))
    }

    fn on_child_ended(&mut self, pid: i32, st: WaitStatus) {
        let code = status_code(&st).unwrap_or(1);
        // The attempt's own processes.
        let attempt_role = match &self.phase {
            Phase::Starting(a) | Phase::Reloading(a) if a.sentinel == Some(pid) => Some(true),
            Phase::Starting(a) | Phase::Reloading(a) if a.pid == Some(pid) && self.args.mode == Mode::Foreground => Some(false),
            Phase::Starting(a) if a.pid == Some(pid) => Some(false),
            _ => None,
        };
        match attempt_role {
            Some(true) => {
                if let WaitStatus::Exited(_, 0) = st {
                    let new_pid = match &self.phase {
                        Phase::Starting(a) | Phase::Reloading(a) => a.pid.unwrap_or(0),
                        _ => 0,
                    };
                    self.attempt_succeeded(new_pid, vec![], &[]);
                }
                return;
            }
            Some(false) => {
                self.new_haproxy_ended(pid, code);
                return;
            }
            None => {}
        }
        if self.c.serving.map(|g| g.pid) == Some(pid) {
            self.serving_ended(pid, st, code);
            return;
        }
        if let Some(i) = self.c.draining.iter().position(|g| g.pid == pid) {
            let g = self.c.draining.remove(i);
            info!("gen {}: haproxy pid {} finished draining (status {})", g.n, pid, code);
            self.update_status();
            return;
        }
        debug!("process {} ended (status {})", pid, code);
    }

    /// A new generation's haproxy ended before it was ready.
    fn new_haproxy_ended(&mut self, pid: i32, code: u8) {
        // Its last lines (written before it exited) tell whether the hand-over was at fault.
        self.on_output();
        let retry = match &mut self.phase {
            Phase::Starting(a) | Phase::Reloading(a)
                if self.args.mode == Mode::Foreground && a.with_handover && !a.retried && handover_may_be_at_fault(&a.alerts) =>
            {
                warning!("gen {}: haproxy pid {} exited with status {} using listener hand-over; retrying once without it", a.gen, pid, code);
                a.with_handover = false;
                a.retried = true;
                a.alerts.clear();
                true
            }
            _ => false,
        };
        if retry {
            let mut a = match self.take_attempt() {
                Some(a) => a,
                None => return,
            };
            let result = self.spawn_foreground(&mut a);
            self.phase = Phase::Reloading(a);
            if let Err(e) = result {
                self.attempt_failed(e.to_string(), None);
            }
            return;
        }
        self.attempt_failed(format!("haproxy exited with status {}", code), Some(code));
    }

    fn serving_ended(&mut self, pid: i32, st: WaitStatus, code: u8) {
        match &mut self.phase {
            Phase::Stopping { .. } => {
                info!("haproxy pid {} ended (status {})", pid, code);
                self.serving_status = Some(st);
                self.c.serving = None;
            }
            Phase::Reloading(a) if self.args.mode == Mode::Foreground => {
                // The new generation may have told it to stop already; the reload decides.
                info!("gen serving before the reload (pid {}) ended (status {})", pid, code);
                a.serving_gone = Some(code);
            }
            _ => {
                error!("the serving haproxy (pid {}) ended unexpectedly with status {}: stopping", pid, code);
                self.c.serving = None;
                self.exit_code = Some(code);
                self.begin_stop(false);
            }
        }
    }

    // ---- stopping ----

    fn begin_stop(&mut self, graceful: bool) {
        if let Phase::Stopping { deadline_ns } = self.phase {
            if graceful || deadline_ns.is_some() {
                return; // already stopping at least this hard
            }
        }
        if let Some(a) = self.take_attempt() {
            for pid in a.sentinel.iter().chain(a.pid.iter()) {
                // The master in a master-worker reload is the serving one; it is stopped below.
                if Some(*pid) != self.c.serving.map(|g| g.pid) {
                    haproxy::signal(*pid, Signal::SIGKILL);
                }
            }
        }
        self.systemd.stopping();
        let sig = if graceful { Signal::SIGUSR1 } else { Signal::SIGTERM };
        let mut targets = self.haproxy_pids();
        if !graceful {
            // Anything else of ours: orphaned workers of a dead master, leftovers.
            targets.extend(procs::children_of(self.c.wrapper_pid));
            targets.sort_unstable();
            targets.dedup();
        }
        for pid in targets {
            haproxy::signal(pid, sig);
        }
        let deadline_ns = if graceful { None } else { Some(now_ns() + self.opts.stop_timeout.as_nanos() as u64) };
        self.phase = Phase::Stopping { deadline_ns };
    }

    fn no_children_left(&mut self) -> bool {
        self.reap();
        matches!(waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)), Err(nix::Error::ECHILD))
    }

    fn finish(&mut self) -> u8 {
        if self.c.pidfile_written {
            if let Some(pf) = &self.args.pidfile {
                let _ = std::fs::remove_file(pf);
            }
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
        code
    }

    // ---- outputs: pid file, STATUS= ----

    fn write_pidfile(&mut self) {
        if self.args.mode != Mode::Foreground {
            return;
        }
        if let (Some(pf), Some(g)) = (&self.args.pidfile, self.c.serving) {
            match pidfile::write(pf, &[g.pid]) {
                Ok(()) => self.c.pidfile_written = true,
                Err(e) => warning!("cannot write pid file {}: {}", pf.display(), e),
            }
        }
    }

    fn draining_pids(&self) -> Vec<i32> {
        match self.args.mode {
            Mode::Foreground => self.c.draining.iter().map(|g| g.pid).collect(),
            Mode::MasterWorker => self.c.old_workers.clone(),
        }
    }

    fn status_with(&self, phase: &str) -> String {
        let draining = self.draining_pids();
        notify::status_line(&StatusView {
            mode: self.args.mode,
            phase,
            serving: self.c.serving.map(|g| (g.n, g.pid)),
            workers: &self.c.workers,
            draining: &draining,
            last: &self.c.last_reload,
        })
    }

    /// "starting gen 1 (foreground)", "reloading gen 4 (master-worker)".
    fn phase_text(&self, label: &str, gen: u32) -> String {
        format!("{} gen {} ({})", label, gen, self.args.mode.name())
    }

    fn update_status(&mut self) {
        let phase = match &self.phase {
            Phase::Running => String::new(),
            Phase::Starting(a) => self.phase_text("starting", a.gen),
            Phase::Reloading(a) => self.phase_text("reloading", a.gen),
            Phase::Stopping { .. } => return,
        };
        let status = self.status_with(&phase);
        self.systemd.status(&status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handover_retry_only_when_the_socket_may_be_at_fault() {
        assert!(handover_may_be_at_fault(&[]));
        assert!(handover_may_be_at_fault(&["Failed to connect to the old process socket '/run/a.sock'".to_string()]));
        assert!(!handover_may_be_at_fault(&["config : parsing [cfg:11] : unknown keyword 'garbage'".to_string()]));
    }
}
