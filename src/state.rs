//! What the supervisor remembers, and carries across its re-exec on reload (src/reexec.rs
//! encodes it): the generations of each mode, the last reload's result, the descriptors that
//! must survive the exec.

use std::os::unix::io::RawFd;
use std::path::PathBuf;

/// One haproxy generation: in foreground mode the haproxy process, in master-worker mode the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gen {
    pub n: u32,
    pub pid: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LastReload {
    None,
    Ok {
        ms: u64,
    },
    Failed {
        ms: u64,
        reason: String,
    },
    /// master-worker: a reload reported failed when --ready-timeout passed took effect later,
    /// `ms` after it was asked for.
    Late {
        ms: u64,
    },
}

/// Foreground mode: one haproxy per generation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForegroundGenerations {
    pub serving: Option<Gen>,
    /// Older generations told to stop (by the new one's `-sf`), still finishing their connections.
    pub draining: Vec<Gen>,
    /// Draining generations the wrapper stopped (SIGTERM) because more than `--max-draining`
    /// drained at once, until they are reaped. Not counted as draining any more.
    pub stopped: Vec<Gen>,
    /// The wrapper wrote the `-p` file (and removes it at exit).
    pub pidfile_written: bool,
}

/// Master-worker mode: one master for the service's life, workers forked at each reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterWorkerGenerations {
    pub master: Option<Gen>,
    /// The workers forked at the last successful start or reload.
    pub workers: Vec<i32>,
    /// Older workers still finishing their connections.
    pub old_workers: Vec<i32>,
    /// The private socket the master sends its notify messages to.
    pub socket_fd: RawFd,
    /// A reload the master was asked for before the wrapper re-executed itself.
    pub reload: Option<MasterReload>,
    /// A reload reported failed when --ready-timeout passed, that the master may still complete
    /// (it cannot be called off): its late READY=1, with a new worker, means it took effect.
    pub late: Option<MasterReload>,
}

/// master-worker: a reload asked of the master (SIGUSR2), not answered yet: the protocol's own
/// attempt holds it, and it is carried whole across the re-exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterReload {
    pub gen: u32,
    /// The master's workers before the signal.
    pub workers_before: Vec<i32>,
    /// CLOCK_MONOTONIC ns just before the signal: a RELOADING=1 whose MONOTONIC_USEC is older
    /// belongs to an earlier reload.
    pub signalled_ns: u64,
    /// The master said RELOADING=1 for this reload: its next READY=1 answers it.
    pub master_began: bool,
    pub loading_failed: bool,
}

/// The loop's side of an attempt (`supervisor::Attempt` holds it), carried whole across the
/// re-exec (master-worker mode signals the master first, then re-executes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CarriedAttempt {
    pub gen: u32,
    pub started_ns: u64,
    pub deadline_ns: u64,
    pub ledger_seq: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Generations {
    Foreground(ForegroundGenerations),
    MasterWorker(MasterWorkerGenerations),
}

/// Everything the supervisor must remember across an exec of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carried {
    pub wrapper_pid: i32,
    /// The wrapper's program path as resolved at the first start (the file a package upgrade replaces).
    pub exe: PathBuf,
    pub next_gen: u32,
    pub last_reload: LastReload,
    pub reloads: u32,
    /// The pipe haproxy's output comes through.
    pub relay_read: RawFd,
    pub relay_write: RawFd,
    /// CLOCK_MONOTONIC ns at which the reload that caused the exec was asked for.
    pub reload_started_ns: u64,
    pub generations: Generations,
    /// The reload attempt already begun before the exec (None: the new image begins it).
    pub attempt: Option<CarriedAttempt>,
    /// The reload ledger (the in-memory one is authoritative: its file may be stale when the
    /// run directory is full or gone). None from a wrapper that did not carry it.
    pub ledger: Option<crate::ledger::Ledger>,
    /// The listening sockets the wrapper holds (src/listeners.rs): descriptor, inode, stored.
    pub held: Vec<(RawFd, u64, bool)>,
    /// The inodes of held sockets that were not listening when the reload in progress began (an
    /// administrator's pause): never listened on again by the wrapper (`Held::relisten`).
    pub left_paused: Vec<u64>,
    pub restarts: Restarts,
}

/// The generations the wrapper started itself because nothing served any more (a crash).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restarts {
    /// How many, in the service's life.
    pub total: u32,
    /// CLOCK_MONOTONIC ns of the recent ones (within the window that bounds them).
    pub recent_ns: Vec<u64>,
    /// What ended, the last time ("gen 3: haproxy pid 1234 ended with status 137").
    pub last: Option<String>,
}

impl Carried {
    /// The descriptors that must survive the exec.
    pub fn descriptors(&self) -> Vec<RawFd> {
        let mut fds = vec![self.relay_read, self.relay_write];
        fds.extend(self.held.iter().map(|(fd, _, _)| *fd));
        if let Generations::MasterWorker(mw) = &self.generations {
            fds.push(mw.socket_fd);
        }
        fds
    }
}
