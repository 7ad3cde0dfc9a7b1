//! The reload ledger: a small root-only file in the run directory (the unit's RuntimeDirectory,
//! /run/haproxy-systemd-wrapper) where the wrapper records each reload request it is about to read
//! and each reload attempt's verdict, so that `haproxy-systemd-wrapper --wait-reload PID` (the
//! unit's last `ExecReload=` line) can wait for the reload that its `kill -USR2` asked for and
//! exit with the truth. No socket, no new network surface: a file replaced atomically.
//!
//! The wrapper counts a request *before* it reads the signal from the signalfd (it sees it in its
//! pending set first), so a client that finds the signal no longer pending knows the ledger
//! already counts it. See docs/DESIGN.md, "How `systemctl reload` learns the result".

use std::collections::VecDeque;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const DEFAULT_RUN_DIR: &str = "/run/haproxy-systemd-wrapper";
const MAGIC: &str = "haproxy-systemd-wrapper-ledger";
const VERSION: u32 = 1;
/// Attempts kept: enough for every client of a burst of reloads to find its own.
const KEEP: usize = 32;
/// Reason lines kept per attempt (the summary, then haproxy's [ALERT] lines).
const MAX_REASON_LINES: usize = 21;
/// Bytes kept of one reason line (cut at a character boundary).
const MAX_REASON_LINE: usize = 512;
/// Largest ledger the wrapper writes (`Ledger::fit` keeps it there): well under what a reader
/// accepts, and small enough to be carried across the re-exec in one environment variable
/// (hex-encoded, under the kernel's 128 KiB per string).
pub const MAX_WRITTEN: usize = 32 * 1024;
/// Largest ledger file a reader accepts.
pub const MAX_FILE: usize = 256 * 1024;
const _: () = assert!(MAX_WRITTEN <= MAX_FILE);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pending,
    Ok { ms: u64 },
    Failed { ms: u64, reasons: Vec<String> },
}

/// The record of one reload attempt: its request, its outcome, a late end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Counts attempts over the wrapper's life.
    pub seq: u64,
    /// How many reload requests had been counted when it began: it answers all of them.
    pub covers: u64,
    /// CLOCK_MONOTONIC ns when it began (its configuration was read after this).
    pub begun_ns: u64,
    pub gen: u32,
    pub outcome: Outcome,
    /// After a failure: whether haproxy may still complete the reload, or did (master-worker, at
    /// --ready-timeout). Written as a `late` line of its own, which older readers skip.
    pub late: Late,
    /// After a failure: nothing served any more (haproxy stopped every generation) and the
    /// wrapper started haproxy again. A `restarted` line of its own.
    pub restarted: bool,
}

/// What became of a reload reported failed that haproxy could still complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Late {
    /// Nothing pending: the failure is final.
    No,
    /// Not ready at --ready-timeout; haproxy may still complete it.
    Possible,
    /// It took effect later, `ms` after it began: its generation serves.
    Served { ms: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    pub pid: i32,
    /// The wrapper's start time (field 22 of /proc/PID/stat): a reused pid is not this wrapper.
    pub start_time: u64,
    pub requests: u64,
    pub stopping: bool,
    pub attempts: VecDeque<Record>,
}

/// One line of at most MAX_REASON_LINE bytes (see `log::one_line`).
fn one_line(s: &str) -> String {
    crate::log::one_line(s, MAX_REASON_LINE)
}

/// Bytes of one `reason SEQ TEXT` line.
fn reason_len(seq: u64, text: &str) -> usize {
    "reason  \n".len() + seq.to_string().len() + text.len()
}

impl Ledger {
    pub fn new(pid: i32, start_time: u64) -> Ledger {
        Ledger {
            pid,
            start_time,
            requests: 0,
            stopping: false,
            attempts: VecDeque::new(),
        }
    }

    fn next_seq(&self) -> u64 {
        self.attempts.back().map_or(1, |a| a.seq + 1)
    }

    /// A reload attempt begins; it answers every request counted so far. Returns its seq.
    pub fn begin(&mut self, gen: u32, now_ns: u64) -> u64 {
        let seq = self.next_seq();
        self.attempts.push_back(Record {
            seq,
            covers: self.requests,
            begun_ns: now_ns,
            gen,
            outcome: Outcome::Pending,
            late: Late::No,
            restarted: false,
        });
        while self.attempts.len() > KEEP {
            self.attempts.pop_front();
        }
        seq
    }

    pub fn finish(&mut self, seq: u64, outcome: Outcome) {
        let outcome = match outcome {
            Outcome::Failed { ms, reasons } => Outcome::Failed {
                ms,
                reasons: reasons.iter().take(MAX_REASON_LINES).map(|r| one_line(r)).collect(),
            },
            other => other,
        };
        if let Some(a) = self.attempts.iter_mut().find(|a| a.seq == seq) {
            a.outcome = outcome;
        }
        self.fit();
    }

    /// Keeps the encoded ledger within MAX_WRITTEN bytes, so that what the wrapper writes is
    /// always what a reader accepts: haproxy's [ALERT] lines of the oldest attempts go first,
    /// then the oldest attempts' summaries. Every attempt line stays (32 of them take under
    /// 4 KiB), and so, by the sizes, do the newest attempt's lines and every summary.
    pub fn fit(&mut self) {
        let mut len = self.encode().len();
        for summaries in [false, true] {
            for a in self.attempts.iter_mut() {
                if len <= MAX_WRITTEN {
                    return;
                }
                if let Outcome::Failed { reasons, .. } = &mut a.outcome {
                    let keep = if summaries { 0 } else { 1 };
                    while reasons.len() > keep && len > MAX_WRITTEN {
                        let r = reasons.pop().unwrap_or_default();
                        len -= reason_len(a.seq, &r);
                    }
                }
            }
        }
    }

    /// What became of the last attempt at `gen` that may still complete.
    pub fn set_late(&mut self, gen: u32, late: Late) {
        if let Some(a) = self
            .attempts
            .iter_mut()
            .rev()
            .find(|a| a.gen == gen && matches!(a.outcome, Outcome::Failed { .. }))
        {
            a.late = late;
        }
    }

    pub fn encode(&self) -> String {
        let mut out = format!(
            "{} {}\npid {}\nstart {}\nrequests {}\nstate {}\n",
            MAGIC,
            VERSION,
            self.pid,
            self.start_time,
            self.requests,
            if self.stopping { "stopping" } else { "running" }
        );
        for a in &self.attempts {
            let (word, ms) = match &a.outcome {
                Outcome::Pending => ("pending", 0),
                Outcome::Ok { ms } => ("ok", *ms),
                Outcome::Failed { ms, .. } => ("failed", *ms),
            };
            out.push_str(&format!(
                "attempt {} {} {} {} {} {}\n",
                a.seq, a.covers, a.begun_ns, a.gen, word, ms
            ));
            if let Outcome::Failed { reasons, .. } = &a.outcome {
                for r in reasons {
                    out.push_str(&format!("reason {} {}\n", a.seq, r));
                }
            }
            match a.late {
                Late::No => {}
                Late::Possible => out.push_str(&format!("late {} possible\n", a.seq)),
                Late::Served { ms } => out.push_str(&format!("late {} served {}\n", a.seq, ms)),
            }
            if a.restarted {
                out.push_str(&format!("restarted {}\n", a.seq));
            }
        }
        out
    }

    /// Parses a ledger; anything unexpected is an error naming the line.
    pub fn parse(text: &str) -> Result<Ledger, String> {
        if text.len() > MAX_FILE {
            return Err(format!("{} bytes is too long for a ledger", text.len()));
        }
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, l)) if l == format!("{} {}", MAGIC, VERSION) => {}
            Some((_, l)) if l.starts_with(MAGIC) => {
                return Err(format!("ledger version '{}' is not {}", one_line(l), VERSION))
            }
            _ => return Err("not a reload ledger".into()),
        }
        let mut ledger = Ledger::new(0, 0);
        for (i, line) in lines {
            let bad = || {
                format!(
                    "line {}: '{}'",
                    i + 1,
                    one_line(line).chars().take(60).collect::<String>()
                )
            };
            let (key, rest) = line.split_once(' ').ok_or_else(bad)?;
            let num = |s: &str| s.parse::<u64>().map_err(|_| bad());
            match key {
                "pid" => ledger.pid = rest.parse::<i32>().ok().filter(|p| *p > 0).ok_or_else(bad)?,
                "start" => ledger.start_time = num(rest)?,
                "requests" => ledger.requests = num(rest)?,
                "state" => {
                    ledger.stopping = match rest {
                        "running" => false,
                        "stopping" => true,
                        _ => return Err(bad()),
                    }
                }
                "attempt" => {
                    let f: Vec<&str> = rest.split(' ').collect();
                    if f.len() != 6 {
                        return Err(bad());
                    }
                    let ms = num(f[5])?;
                    let outcome = match f[4] {
                        "pending" => Outcome::Pending,
                        "ok" => Outcome::Ok { ms },
                        "failed" => Outcome::Failed { ms, reasons: vec![] },
                        _ => return Err(bad()),
                    };
                    let gen = u32::try_from(num(f[3])?).map_err(|_| bad())?;
                    ledger.attempts.push_back(Record {
                        seq: num(f[0])?,
                        covers: num(f[1])?,
                        begun_ns: num(f[2])?,
                        gen,
                        outcome,
                        late: Late::No,
                        restarted: false,
                    });
                }
                "reason" => {
                    let (seq, text) = rest.split_once(' ').unwrap_or((rest, ""));
                    let seq = num(seq)?;
                    match ledger
                        .attempts
                        .iter_mut()
                        .find(|a| a.seq == seq)
                        .map(|a| &mut a.outcome)
                    {
                        Some(Outcome::Failed { reasons, .. }) => reasons.push(text.to_string()),
                        _ => return Err(bad()),
                    }
                }
                "late" => {
                    let f: Vec<&str> = rest.split(' ').collect();
                    let late = match f.as_slice() {
                        [_, "possible"] => Late::Possible,
                        [_, "served", ms] => Late::Served { ms: num(ms)? },
                        _ => return Err(bad()),
                    };
                    let seq = num(f[0])?;
                    match ledger.attempts.iter_mut().find(|a| a.seq == seq) {
                        Some(a) if matches!(a.outcome, Outcome::Failed { .. }) => a.late = late,
                        _ => return Err(bad()),
                    }
                }
                "restarted" => {
                    let seq = num(rest)?;
                    match ledger.attempts.iter_mut().find(|a| a.seq == seq) {
                        Some(a) if matches!(a.outcome, Outcome::Failed { .. }) => a.restarted = true,
                        _ => return Err(bad()),
                    }
                }
                // Keys of a newer wrapper of the same version are skipped.
                _ => {}
            }
        }
        if ledger.pid == 0 {
            return Err("ledger names no pid".into());
        }
        Ok(ledger)
    }
}

/// The ledger file of wrapper `pid` in `dir`.
pub fn path(dir: &Path, pid: i32) -> PathBuf {
    dir.join(format!("reload-{}", pid))
}

/// Is `dir` a directory only this user can write? A symlink, a file, or a directory others can
/// write is refused, with why. Missing: `Err(None)`.
pub fn check_dir(dir: &Path) -> Result<(), Option<String>> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(None),
        Err(e) => Err(Some(format!("{}: {}", dir.display(), e))),
        Ok(m) if !m.file_type().is_dir() => Err(Some(format!("{} is not a directory", dir.display()))),
        Ok(m) if m.uid() != nix::unistd::geteuid().as_raw() => {
            Err(Some(format!("{} is owned by uid {}, not us", dir.display(), m.uid())))
        }
        Ok(m) if m.mode() & 0o022 != 0 => Err(Some(format!(
            "{} is writable by others (mode {:o})",
            dir.display(),
            m.mode() & 0o7777
        ))),
        Ok(_) => Ok(()),
    }
}

/// Makes sure `dir` is a directory only this user can write, created 0700 when missing (also
/// when it was removed while the wrapper runs: another unit sharing it stopped).
pub fn prepare_dir(dir: &Path) -> Result<(), String> {
    match check_dir(dir) {
        Err(None) => match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => Ok(()),
            // Created meanwhile by someone else: check what it is.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                check_dir(dir).map_err(|e| e.unwrap_or_else(|| format!("{} vanished", dir.display())))
            }
            Err(e) => Err(format!("cannot create {}: {}", dir.display(), e)),
        },
        Err(Some(why)) => Err(why),
        Ok(()) => Ok(()),
    }
}

/// Replaces the ledger file atomically (`pidfile::replace_file`, 0600, a temporary name of its
/// pid: one left by a wrapper that died between create and rename is removed first).
pub fn store(dir: &Path, ledger: &Ledger) -> std::io::Result<()> {
    prepare_dir(dir).map_err(|why| std::io::Error::new(std::io::ErrorKind::Other, why))?;
    let target = path(dir, ledger.pid);
    let tmp = dir.join(format!(".reload-{}.tmp", ledger.pid));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    crate::pidfile::replace_file(&target, &tmp, 0o600, ledger.encode().as_bytes(), false)
}

/// After a failed `store`: empties the ledger file in place (truncating needs no space, and
/// nothing but a rename of a complete file ever makes it non-empty), or removes it, so that a
/// client never takes the older record for the answer to a request the wrapper could not count.
fn mark_unrecorded(dir: &Path, pid: i32) -> std::io::Result<()> {
    let target = path(dir, pid);
    let emptied = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(&target)
        .and_then(|f| f.metadata().map(|m| m.file_type().is_file()));
    let absent =
        |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(nix::libc::ENOTDIR);
    match emptied {
        Ok(true) => Ok(()),
        // No file to mark (no directory either): a client finds none.
        Err(e) if absent(&e) => Ok(()),
        _ => match std::fs::remove_file(&target) {
            Err(e) if !absent(&e) => Err(e),
            _ => Ok(()),
        },
    }
}

/// Why a ledger file could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum LoadError {
    /// No such file (or directory).
    Missing,
    /// An empty file: the wrapper could not write its ledger and emptied the file, so that no
    /// older record is taken for an answer (`Recorder::save`).
    Unrecorded,
    /// Anything else, said in one line.
    Bad(String),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Missing => write!(f, "no such file"),
            LoadError::Unrecorded => write!(f, "emptied by the wrapper, which could not write it"),
            LoadError::Bad(why) => write!(f, "{}", why),
        }
    }
}

/// Reads a ledger file (at most MAX_FILE bytes; a FIFO or device is refused without blocking).
pub fn load(file: &Path) -> Result<Ledger, LoadError> {
    use std::io::Read;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(file)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(nix::libc::ENOTDIR) {
                LoadError::Missing
            } else {
                LoadError::Bad(e.to_string())
            }
        })?;
    let meta = f.metadata().map_err(|e| LoadError::Bad(e.to_string()))?;
    if !meta.file_type().is_file() {
        return Err(LoadError::Bad("not a regular file".into()));
    }
    let mut buf = Vec::new();
    f.take(MAX_FILE as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| LoadError::Bad(e.to_string()))?;
    if buf.is_empty() {
        return Err(LoadError::Unrecorded);
    }
    let text = String::from_utf8(buf).map_err(|_| LoadError::Bad("not text".to_string()))?;
    Ledger::parse(&text).map_err(LoadError::Bad)
}

/// The wrapper's side: the ledger in memory, which is the authoritative one (it crosses the
/// re-exec in the carried state, never through the file), and its file, stored after every
/// change. A failure to store empties the file (`mark_unrecorded`: a client then says the
/// wrapper could not record the answer) and is logged once; the wrapper goes on, and the next
/// store that succeeds (the run directory recreated when it was removed) writes it all again.
pub struct Recorder {
    dir: PathBuf,
    pub ledger: Ledger,
    failing: bool,
}

impl Recorder {
    /// At the first start: a fresh ledger.
    pub fn open(dir: &Path) -> Recorder {
        let pid = std::process::id() as i32;
        let start = crate::procs::start_time(pid).unwrap_or(0);
        Recorder::with(dir, Ledger::new(pid, start))
    }

    /// After the re-exec: the ledger carried in the state. None (an older wrapper re-executed
    /// into this one): the file that wrapper kept, when it is ours and readable; otherwise a
    /// fresh one counting one request, the reload that caused the exec.
    pub fn resume(dir: &Path, carried: Option<Ledger>) -> Recorder {
        let pid = std::process::id() as i32;
        let start = crate::procs::start_time(pid).unwrap_or(0);
        let ledger = match carried {
            Some(l) if l.pid == pid && l.start_time == start => l,
            _ => match load(&path(dir, pid)) {
                Ok(l) if l.pid == pid && l.start_time == start => l,
                _ => {
                    let mut l = Ledger::new(pid, start);
                    l.requests = 1;
                    l
                }
            },
        };
        Recorder::with(dir, ledger)
    }

    fn with(dir: &Path, ledger: Ledger) -> Recorder {
        let mut r = Recorder {
            dir: dir.to_path_buf(),
            ledger,
            failing: false,
        };
        r.save();
        r
    }

    fn save(&mut self) {
        match store(&self.dir, &self.ledger) {
            Ok(()) if self.failing => {
                self.failing = false;
                notice!("the reload ledger in {} is written again", self.dir.display());
            }
            Ok(()) => {}
            Err(e) => {
                let marked = mark_unrecorded(&self.dir, self.ledger.pid);
                if !self.failing {
                    self.failing = true;
                    match marked {
                        Ok(()) => warning!(
                            "cannot write the reload ledger in {}: {}; --wait-reload says the result is unrecorded",
                            self.dir.display(),
                            e
                        ),
                        Err(e2) => warning!(
                            "cannot write the reload ledger in {}: {}; nor empty it: {}",
                            self.dir.display(),
                            e,
                            e2
                        ),
                    }
                }
            }
        }
    }

    /// A reload signal is pending: counted before it is read.
    pub fn note_request(&mut self) {
        self.ledger.requests += 1;
        self.save();
    }

    pub fn begin(&mut self, gen: u32, now_ns: u64) -> u64 {
        let seq = self.ledger.begin(gen, now_ns);
        self.save();
        seq
    }

    pub fn finish(&mut self, seq: u64, outcome: Outcome) {
        self.finish_late(seq, outcome, Late::No);
    }

    /// `finish`, with what may still become of a failure, in the same write: a client never
    /// reads the one without the other.
    pub fn finish_late(&mut self, seq: u64, outcome: Outcome, late: Late) {
        self.ledger.finish(seq, outcome);
        if let Some(a) = self.ledger.attempts.iter_mut().find(|a| a.seq == seq) {
            a.late = late;
        }
        self.save();
    }

    pub fn set_late(&mut self, gen: u32, late: Late) {
        self.ledger.set_late(gen, late);
        self.save();
    }

    /// The attempt `seq`, about to be finished as failed, leaves nothing serving and the wrapper
    /// starts haproxy again: written with its verdict (not saved here).
    pub fn mark_restarted(&mut self, seq: u64) {
        if let Some(a) = self.ledger.attempts.iter_mut().find(|a| a.seq == seq) {
            a.restarted = true;
        }
    }

    pub fn stopping(&mut self) {
        if !self.ledger.stopping {
            self.ledger.stopping = true;
            self.save();
        }
    }

    /// At exit.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(path(&self.dir, self.ledger.pid));
    }
}

#[cfg(test)]
mod tests;
