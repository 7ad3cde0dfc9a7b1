//! How a supervisor comes to be: a fresh start, the resume after its own re-exec, or, when the
//! carried state cannot be used, a supervisor that only stops what it finds.

use std::os::unix::io::RawFd;
use std::path::PathBuf;

use super::stop::StopHow;
use super::{Attempt, Phase, Supervisor};
use crate::cli::{HaproxyArgs, Mode, Options};
use crate::clock::now_ns;
use crate::error::Error;
use crate::haproxy;
use crate::ledger;
use crate::listeners::Held;
use crate::mode::{self, Launch, Protocol};
use crate::notify::{self, Systemd};
use crate::procs;
use crate::reexec;
use crate::relay::Relay;
use crate::signals;
use crate::state::{Carried, LastReload, Restarts};

type SignalFds = (nix::sys::signalfd::SignalFd, nix::sys::signalfd::SignalFd);

fn internal(what: &str, e: nix::Error) -> Error {
    Error::Internal(format!("{}: {}", what, e))
}

/// The carried state could not be used after a re-exec: why, and the relay pipe when it is known.
pub struct Unplaced {
    pub error: Error,
    relay: Option<(RawFd, RawFd)>,
}

impl Unplaced {
    fn new(error: Error, relay: Option<(RawFd, RawFd)>) -> Unplaced {
        Unplaced { error, relay }
    }
}

/// Descriptors the wrapper inherited beyond 0-2 are not haproxy's business: mark them
/// close-on-exec so that no haproxy generation inherits them.
fn close_inherited_on_exec() {
    let fds: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
            .collect(),
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

impl Supervisor {
    fn new(
        opts: Options,
        protocol: Box<dyn Protocol>,
        exe: PathBuf,
        relay: Relay,
        signalfds: SignalFds,
        ledger: ledger::Recorder,
        held: Held,
    ) -> Supervisor {
        let (signals, reload_signals) = signalfds;
        Supervisor {
            opts,
            protocol,
            wrapper_pid: std::process::id() as i32,
            exe,
            next_gen: 1,
            reloads: 0,
            last_reload: LastReload::None,
            phase: Phase::Running,
            pending_reload: false,
            signals,
            reload_signals,
            ledger,
            relay,
            systemd: Systemd::new(),
            watchdog: notify::watchdog_interval(),
            next_watchdog_ns: 0,
            exit_code: None,
            serving_status: None,
            fatal: None,
            held,
            handover: None,
            restarts: Restarts::default(),
        }
    }

    /// A fresh start: set up, start generation 1.
    pub fn start(opts: Options, args: HaproxyArgs) -> Result<Supervisor, Error> {
        let exe = procs::own_program();
        let program = haproxy::locate(opts.haproxy.as_deref(), &exe)?;
        for note in &args.notes {
            warning!("{}", note);
        }
        // SAFETY: plain prctl on ourselves; makes orphaned descendants (workers of a dead master)
        // come back to the wrapper so nothing it started outlives it.
        if unsafe { nix::libc::prctl(nix::libc::PR_SET_CHILD_SUBREAPER, 1) } != 0 {
            warning!("cannot become a child subreaper: {}", std::io::Error::last_os_error());
        }
        // What the service listened on before systemd started it again (its fd store).
        let (mut held, notes) = Held::from_systemd();
        for note in notes {
            warning!("{}", note);
        }
        if !held.is_empty() {
            notice!(
                "systemd handed back {} listening sockets: {}; gen 1 takes them over",
                held.len(),
                held.summary()
            );
        }
        close_inherited_on_exec();
        let signals = signals::signalfds().map_err(|e| internal("signalfd", e))?;
        let relay = Relay::new().map_err(|e| internal("pipe", e))?;
        let max_draining = opts.max_draining();
        let run_mode = args.mode;
        let launch = Launch {
            program,
            args,
            relay_write: relay.w,
            max_draining,
        };
        let protocol = mode::protocol(launch.clone(), None, std::process::id() as i32)?;
        match run_mode {
            Mode::Foreground => info!(
                "starting {} (foreground mode, haproxy {}, at most {} draining generations)",
                env!("CARGO_PKG_NAME"),
                launch.program.display(),
                max_draining
            ),
            Mode::MasterWorker => {
                info!(
                    "starting {} (master-worker mode, haproxy {})",
                    env!("CARGO_PKG_NAME"),
                    launch.program.display()
                );
                if opts.max_draining.is_some() {
                    notice!(
                        "--max-draining has no effect in master-worker mode: haproxy's master owns its workers \
                         (its global setting mworker-max-reloads bounds them)"
                    );
                }
            }
        }
        let ledger = ledger::Recorder::open(&opts.run_dir);
        let mut s = Supervisor::new(opts, protocol, exe, relay, signals, ledger, held);
        s.begin_start(now_ns());
        Ok(s)
    }

    /// After the re-exec: take the carried state back, check it against the kernel, and go on
    /// with the reload that caused the exec.
    pub fn resume(opts: Options, args: HaproxyArgs, state: &str) -> Result<Supervisor, Unplaced> {
        let me = std::process::id() as i32;
        let carried: Carried = reexec::decode(state).map_err(|e| {
            Unplaced::new(
                Error::Internal(format!("state carried across re-exec is unusable: {}", e)),
                None,
            )
        })?;
        if carried.wrapper_pid != me {
            let e = Error::Internal(format!(
                "state carried across re-exec belongs to pid {}, not {}",
                carried.wrapper_pid, me
            ));
            return Err(Unplaced::new(e, None));
        }
        let relay_fds = Some((carried.relay_read, carried.relay_write));
        let unplaced = |e: Error| Unplaced::new(e, relay_fds);
        for fd in carried.descriptors() {
            haproxy::set_cloexec(fd, true).map_err(|e| unplaced(internal("carried descriptor", e)))?;
        }
        let signals = signals::signalfds().map_err(|e| unplaced(internal("signalfd", e)))?;
        // A haproxy program gone missing (removed, chmod -x) fails the reload, never the service:
        // foreground mode finds out when it starts the new generation; master-worker mode does
        // not even need it (it signals the master).
        let program = match haproxy::locate(opts.haproxy.as_deref(), &carried.exe) {
            Ok(program) => program,
            Err(e) => {
                warning!("{}", e);
                haproxy::program_path(opts.haproxy.as_deref(), &carried.exe)
            }
        };
        let relay = Relay::from_fds(carried.relay_read, carried.relay_write);
        let launch = Launch {
            program,
            args,
            relay_write: carried.relay_write,
            max_draining: opts.max_draining(),
        };
        let protocol = mode::protocol(launch, Some(carried.generations.clone()), me).map_err(unplaced)?;
        // The ledger as the previous image had it in memory, not as its file may (not) say.
        let ledger = ledger::Recorder::resume(&opts.run_dir, carried.ledger.clone());
        let (held, notes) = Held::from_carried(&carried.held, &carried.left_paused);
        for note in notes {
            warning!("{}", note);
        }
        let mut s = Supervisor::new(opts, protocol, carried.exe.clone(), relay, signals, ledger, held);
        s.restarts = carried.restarts.clone();
        s.next_gen = carried.next_gen;
        s.reloads = carried.reloads;
        s.last_reload = carried.last_reload.clone();
        info!("re-executed {} (pid {}), reloading", s.exe.display(), me);
        // A child may have ended while we were exec'ing: its SIGCHLD is pending and read later,
        // but reap first so the reload starts from the truth.
        s.reap();
        match carried.attempt {
            // master-worker: the master was asked before the exec; its answer is awaited here
            // (unless the service ended meanwhile: then the stop goes on).
            Some(attempt) if matches!(s.phase, Phase::Running) => {
                s.next_gen = attempt.gen + 1;
                s.phase = Phase::Reloading(Attempt::new(attempt, false));
            }
            Some(_) => {}
            None => {
                if let Phase::Running = s.phase {
                    s.begin_reload(carried.reload_started_ns);
                }
            }
        }
        Ok(s)
    }

    /// The carried state could not be used: the haproxy processes are still our children but
    /// their roles are unknown. Stop them (they are ours) the normal way rather than leave them
    /// unsupervised, relaying their output, and end with the error; Restart= brings the service back.
    pub fn stop_unplaced(opts: Options, args: HaproxyArgs, unplaced: Unplaced) -> Result<Supervisor, Error> {
        let relay = match unplaced.relay {
            Some((r, w)) if haproxy::set_cloexec(r, true).is_ok() && haproxy::set_cloexec(w, true).is_ok() => {
                Relay::from_fds(r, w)
            }
            _ => Relay::new().map_err(|e| internal("pipe", e))?,
        };
        let signals = signals::signalfds().map_err(|e| internal("signalfd", e))?;
        let launch = Launch {
            program: PathBuf::new(),
            args,
            relay_write: relay.w,
            max_draining: opts.max_draining(),
        };
        let protocol = mode::protocol(launch, None, std::process::id() as i32)?;
        let ledger = ledger::Recorder::resume(&opts.run_dir, None);
        let mut s = Supervisor::new(
            opts,
            protocol,
            procs::own_program(),
            relay,
            signals,
            ledger,
            Held::default(),
        );
        match procs::children_of(s.wrapper_pid) {
            Ok(orphans) if orphans.is_empty() => {}
            Ok(orphans) => warning!("stopping pids {:?}: the state carried across the re-exec does not say what they are", orphans),
            Err(e) => warning!("stopping every process below the wrapper (the state carried across the re-exec is unusable; cannot list them: {})", e),
        }
        s.fatal = Some(unplaced.error);
        s.begin_stop(StopHow::Terminate);
        Ok(s)
    }
}
