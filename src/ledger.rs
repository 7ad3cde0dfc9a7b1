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
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const DEFAULT_RUN_DIR: &str = "/run/haproxy-systemd-wrapper";
const MAGIC: &str = "haproxy-systemd-wrapper-ledger";
const VERSION: u32 = 1;
/// Attempts kept: enough for every client of a burst of reloads to find its own.
const KEEP: usize = 32;
/// Reason lines kept per attempt (the summary, then haproxy's [ALERT] lines).
const MAX_REASON_LINES: usize = 21;
const MAX_LINE: usize = 1000;
/// Largest ledger file a reader accepts.
pub const MAX_FILE: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pending,
    Ok { ms: u64 },
    Failed { ms: u64, reasons: Vec<String> },
}

/// One reload attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
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
    pub attempts: VecDeque<Attempt>,
}

fn one_line(s: &str) -> String {
    let s: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    s.chars().take(MAX_LINE).collect()
}

impl Ledger {
    pub fn new(pid: i32, start_time: u64) -> Ledger {
        Ledger { pid, start_time, requests: 0, stopping: false, attempts: VecDeque::new() }
    }

    fn next_seq(&self) -> u64 {
        self.attempts.back().map_or(1, |a| a.seq + 1)
    }

    /// A reload attempt begins; it answers every request counted so far. Returns its seq.
    pub fn begin(&mut self, gen: u32, now_ns: u64) -> u64 {
        let seq = self.next_seq();
        self.attempts.push_back(Attempt { seq, covers: self.requests, begun_ns: now_ns, gen, outcome: Outcome::Pending, late: Late::No });
        while self.attempts.len() > KEEP {
            self.attempts.pop_front();
        }
        seq
    }

    pub fn finish(&mut self, seq: u64, outcome: Outcome) {
        let outcome = match outcome {
            Outcome::Failed { ms, reasons } => {
                Outcome::Failed { ms, reasons: reasons.iter().take(MAX_REASON_LINES).map(|r| one_line(r)).collect() }
            }
            other => other,
        };
        if let Some(a) = self.attempts.iter_mut().find(|a| a.seq == seq) {
            a.outcome = outcome;
        }
    }

    /// What became of the last attempt at `gen` that may still complete.
    pub fn set_late(&mut self, gen: u32, late: Late) {
        if let Some(a) = self.attempts.iter_mut().rev().find(|a| a.gen == gen && matches!(a.outcome, Outcome::Failed { .. })) {
            a.late = late;
        }
    }

    pub fn encode(&self) -> String {
        let mut out = format!("{} {}\npid {}\nstart {}\nrequests {}\nstate {}\n", MAGIC, VERSION, self.pid, self.start_time, self.requests, if self.stopping { "stopping" } else { "running" });
        for a in &self.attempts {
            let (word, ms) = match &a.outcome {
                Outcome::Pending => ("pending", 0),
                Outcome::Ok { ms } => ("ok", *ms),
                Outcome::Failed { ms, .. } => ("failed", *ms),
            };
            out.push_str(&format!("attempt {} {} {} {} {} {}\n", a.seq, a.covers, a.begun_ns, a.gen, word, ms));
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
            Some((_, l)) if l.starts_with(MAGIC) => return Err(format!("ledger version '{}' is not {}", one_line(l), VERSION)),
            _ => return Err("not a reload ledger".into()),
        }
        let mut ledger = Ledger::new(0, 0);
        for (i, line) in lines {
            let bad = || format!("line {}: '{}'", i + 1, one_line(line).chars().take(60).collect::<String>());
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
                    ledger.attempts.push_back(Attempt { seq: num(f[0])?, covers: num(f[1])?, begun_ns: num(f[2])?, gen, outcome, late: Late::No });
                }
                "reason" => {
                    let (seq, text) = rest.split_once(' ').unwrap_or((rest, ""));
                    let seq = num(seq)?;
                    match ledger.attempts.iter_mut().find(|a| a.seq == seq).map(|a| &mut a.outcome) {
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

/// Makes sure `dir` is a directory only this user can write (created 0700 when missing); a
/// symlink, a file, or a directory others can write is refused.
pub fn prepare_dir(dir: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().mode(0o700).create(dir).map_err(|e| format!("cannot create {}: {}", dir.display(), e))?;
            Ok(())
        }
        Err(e) => Err(format!("{}: {}", dir.display(), e)),
        Ok(m) if !m.file_type().is_dir() => Err(format!("{} is not a directory", dir.display())),
        Ok(m) if m.uid() != nix::unistd::geteuid().as_raw() => Err(format!("{} is owned by uid {}, not us", dir.display(), m.uid())),
        Ok(m) if m.mode() & 0o022 != 0 => Err(format!("{} is writable by others (mode {:o})", dir.display(), m.mode() & 0o7777)),
        Ok(_) => Ok(()),
    }
}

/// Replaces the ledger file atomically: a fresh temporary file (O_EXCL|O_NOFOLLOW, 0600) beside
/// it, then rename.
pub fn store(dir: &Path, ledger: &Ledger) -> std::io::Result<()> {
    let target = path(dir, ledger.pid);
    let tmp = dir.join(format!(".reload-{}.tmp", ledger.pid));
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(&tmp)
    };
    let mut f = match open() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Left by a wrapper that died between create and rename (same pid: ours or long gone).
            std::fs::remove_file(&tmp)?;
            open()?
        }
        other => other?,
    };
    let result = f.write_all(ledger.encode().as_bytes()).and_then(|_| std::fs::rename(&tmp, &target));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads a ledger file (at most MAX_FILE bytes; a FIFO or device is refused without blocking).
pub fn load(file: &Path) -> Result<Ledger, String> {
    use std::io::Read;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(file)
        .map_err(|e| e.to_string())?;
    let meta = f.metadata().map_err(|e| e.to_string())?;
    if !meta.file_type().is_file() {
        return Err("not a regular file".into());
    }
    let mut buf = Vec::new();
    f.take(MAX_FILE as u64 + 1).read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8(buf).map_err(|_| "not text".to_string())?;
    Ledger::parse(&text)
}

/// The wrapper's side: the ledger in memory and its file, stored after every change. A failure to
/// store is logged once; the wrapper goes on (only `--wait-reload` clients lose their answer).
pub struct Recorder {
    dir: PathBuf,
    pub ledger: Ledger,
    failing: bool,
}

impl Recorder {
    /// At the first start: a fresh ledger. After the re-exec: ours from the file; none there
    /// (an older wrapper without a ledger re-executed into this one) means one request, the
    /// reload that caused the exec.
    pub fn open(dir: &Path, resumed: bool) -> Option<Recorder> {
        let pid = std::process::id() as i32;
        if let Err(e) = prepare_dir(dir) {
            info!("no reload ledger (--wait-reload cannot answer): {}", e);
            return None;
        }
        let start = crate::procs::start_time(pid).unwrap_or(0);
        let ledger = match load(&path(dir, pid)) {
            Ok(l) if resumed && l.pid == pid && l.start_time == start => l,
            _ => {
                let mut l = Ledger::new(pid, start);
                l.requests = resumed as u64;
                l
            }
        };
        let mut r = Recorder { dir: dir.to_path_buf(), ledger, failing: false };
        r.save();
        Some(r)
    }

    fn save(&mut self) {
        match store(&self.dir, &self.ledger) {
            Ok(()) => self.failing = false,
            Err(e) if !self.failing => {
                self.failing = true;
                warning!("cannot write the reload ledger in {}: {}", self.dir.display(), e);
            }
            Err(_) => {}
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
