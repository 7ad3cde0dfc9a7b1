//! The wrapper's re-exec on reload: the carried state (src/state.rs) encoded into one
//! environment variable of the new image, decoded there, and the exec itself.
//!
//! Format: `v=2;key=value;...` (the reload ledger, when carried, is `ledger=` its file's text in hex). Versions 1 and 2 are read (v=1 is the previous release's, from
//! before a reload could be carried in progress); unknown keys are ignored; a newer version is
//! refused. Before exec'ing into a program that is not the running one (a package upgrade or
//! downgrade), the wrapper asks it with `probe` whether it takes this state and command line.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::cli;
use crate::ledger::Ledger;
use crate::state::{
    Carried, CarriedAttempt, ForegroundGenerations, Gen, Generations, LastReload, MasterReload,
    MasterWorkerGenerations, Restarts,
};

pub const ENV: &str = "HAPROXY_SYSTEMD_WRAPPER_STATE";
/// Set (with ENV) when the wrapper asks a program whether it can take the state.
pub const PROBE_ENV: &str = "HAPROXY_SYSTEMD_WRAPPER_PROBE";
/// What a wrapper that takes the state answers to the probe, on stdout.
pub const PROBE_ANSWER: &str = "haproxy-systemd-wrapper: state accepted";
const VERSION: u32 = 2;
/// The oldest version this wrapper reads.
const OLDEST: u32 = 1;

fn gens(v: &[Gen]) -> String {
    v.iter()
        .map(|g| format!("{}:{}", g.n, g.pid))
        .collect::<Vec<_>>()
        .join(",")
}

fn pids(v: &[i32]) -> String {
    v.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",")
}

/// Hex-encodes bytes so paths and reasons survive any content.
fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{:02x}", x)).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if s.len() % 2 != 0 {
        return Err("odd hex length".into());
    }
    // By bytes: a slice of the str could cut a multibyte character (a panic, not an error).
    s.as_bytes()
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| "bad hex".to_string())
        })
        .collect()
}

pub fn encode(state: &Carried) -> String {
    let mut out = vec![
        format!("v={}", VERSION),
        format!("pid={}", state.wrapper_pid),
        format!("exe={}", hex(state.exe.as_os_str().as_bytes())),
        format!("next_gen={}", state.next_gen),
    ];
    match &state.generations {
        Generations::Foreground(fg) => {
            if let Some(g) = fg.serving {
                out.push(format!("serving={}", gens(&[g])));
            }
            out.push(format!("draining={}", gens(&fg.draining)));
            if !fg.stopped.is_empty() {
                out.push(format!("stopped={}", gens(&fg.stopped)));
            }
            out.push(format!("pidfile_written={}", fg.pidfile_written as u8));
        }
        Generations::MasterWorker(mw) => {
            if let Some(g) = mw.master {
                out.push(format!("serving={}", gens(&[g])));
            }
            out.push(format!("workers={}", pids(&mw.workers)));
            out.push(format!("old_workers={}", pids(&mw.old_workers)));
            // Its presence is what marks master-worker state.
            out.push(format!("master_sock={}", mw.socket_fd));
            for (key, r) in [("mw_reload", &mw.reload), ("mw_late", &mw.late)] {
                if let Some(r) = r {
                    out.push(format!(
                        "{}={}:{}:{}:{}:{}",
                        key,
                        r.gen,
                        r.signalled_ns,
                        r.master_began as u8,
                        r.loading_failed as u8,
                        pids(&r.workers_before)
                    ));
                }
            }
        }
    }
    out.push(match &state.last_reload {
        LastReload::None => "last=none".to_string(),
        LastReload::Ok { ms } => format!("last=ok:{}", ms),
        LastReload::Failed { ms, reason } => format!("last=failed:{}:{}", ms, hex(reason.as_bytes())),
        LastReload::Late { ms } => format!("last=late:{}", ms),
    });
    out.push(format!("reloads={}", state.reloads));
    out.push(format!("relay={},{}", state.relay_read, state.relay_write));
    out.push(format!("reload_t0={}", state.reload_started_ns));
    if let Some(a) = &state.attempt {
        let seq = a.ledger_seq.map_or("-".to_string(), |s| s.to_string());
        out.push(format!("attempt={}:{}:{}:{}", a.gen, a.started_ns, a.deadline_ns, seq));
    }
    if !state.held.is_empty() {
        let held: Vec<String> = state
            .held
            .iter()
            .map(|(fd, inode, stored)| format!("{}:{}:{}", fd, inode, *stored as u8))
            .collect();
        out.push(format!("held={}", held.join(",")));
    }
    if !state.left_paused.is_empty() {
        let inodes: Vec<String> = state.left_paused.iter().map(u64::to_string).collect();
        out.push(format!("left_paused={}", inodes.join(",")));
    }
    let r = &state.restarts;
    if r.total > 0 {
        out.push(format!(
            "restarts={}:{}:{}",
            r.total,
            pids_u64(&r.recent_ns),
            hex(r.last.as_deref().unwrap_or("").as_bytes())
        ));
    }
    if let Some(l) = &state.ledger {
        // At most MAX_WRITTEN bytes (Ledger::fit), twice that in hex.
        out.push(format!("ledger={}", hex(l.encode().as_bytes())));
    }
    out.join(";")
}

fn pids_u64(v: &[u64]) -> String {
    v.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",")
}

fn num<T: std::str::FromStr>(k: &str, v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("{}: '{}' is not a number", k, v))
}

fn parse_gens(k: &str, v: &str) -> Result<Vec<Gen>, String> {
    v.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (n, p) = s.split_once(':').ok_or_else(|| format!("{}: bad entry '{}'", k, s))?;
            Ok(Gen {
                n: num(k, n)?,
                pid: num(k, p)?,
            })
        })
        .collect()
}

fn parse_pids(k: &str, v: &str) -> Result<Vec<i32>, String> {
    v.split(',').filter(|s| !s.is_empty()).map(|s| num(k, s)).collect()
}

pub fn decode(s: &str) -> Result<Carried, String> {
    let mut state = Carried {
        wrapper_pid: 0,
        exe: PathBuf::new(),
        next_gen: 1,
        last_reload: LastReload::None,
        reloads: 0,
        relay_read: -1,
        relay_write: -1,
        reload_started_ns: 0,
        generations: Generations::Foreground(ForegroundGenerations::default()),
        attempt: None,
        ledger: None,
        held: vec![],
        left_paused: vec![],
        restarts: Restarts::default(),
    };
    let mut version = None;
    let mut serving = None;
    let mut fg = ForegroundGenerations::default();
    let mut mw = MasterWorkerGenerations {
        master: None,
        workers: vec![],
        old_workers: vec![],
        socket_fd: -1,
        reload: None,
        late: None,
    };
    let mut master_worker = false;
    for field in s.split(';') {
        let (k, v) = field.split_once('=').ok_or_else(|| format!("bad field '{}'", field))?;
        match k {
            "v" => version = Some(num::<u32>(k, v)?),
            "pid" => state.wrapper_pid = num(k, v)?,
            "exe" => state.exe = PathBuf::from(OsString::from(std::ffi::OsStr::from_bytes(&unhex(v)?))),
            "next_gen" => state.next_gen = num(k, v)?,
            "serving" => serving = parse_gens(k, v)?.into_iter().next(),
            "draining" => fg.draining = parse_gens(k, v)?,
            "stopped" => fg.stopped = parse_gens(k, v)?,
            "workers" => mw.workers = parse_pids(k, v)?,
            "old_workers" => mw.old_workers = parse_pids(k, v)?,
            "last" => {
                state.last_reload = if v == "none" {
                    LastReload::None
                } else if let Some(ms) = v.strip_prefix("ok:") {
                    LastReload::Ok { ms: num(k, ms)? }
                } else if let Some(ms) = v.strip_prefix("late:") {
                    LastReload::Late { ms: num(k, ms)? }
                } else if let Some(rest) = v.strip_prefix("failed:") {
                    let (ms, reason) = rest.split_once(':').ok_or("last: bad failed entry")?;
                    LastReload::Failed {
                        ms: num(k, ms)?,
                        reason: String::from_utf8_lossy(&unhex(reason)?).into_owned(),
                    }
                } else {
                    return Err(format!("last: bad value '{}'", v));
                }
            }
            "reloads" => state.reloads = num(k, v)?,
            "relay" => {
                let (r, w) = v.split_once(',').ok_or("relay: bad value")?;
                state.relay_read = num(k, r)?;
                state.relay_write = num(k, w)?;
            }
            "master_sock" => {
                mw.socket_fd = num(k, v)?;
                master_worker = true;
            }
            "reload_t0" => state.reload_started_ns = num(k, v)?,
            "attempt" => {
                let f: Vec<&str> = v.split(':').collect();
                if f.len() != 4 {
                    return Err(format!("attempt: bad value '{}'", v));
                }
                let ledger_seq = if f[3] == "-" { None } else { Some(num(k, f[3])?) };
                state.attempt = Some(CarriedAttempt {
                    gen: num(k, f[0])?,
                    started_ns: num(k, f[1])?,
                    deadline_ns: num(k, f[2])?,
                    ledger_seq,
                });
            }
            "mw_reload" | "mw_late" => {
                let f: Vec<&str> = v.splitn(5, ':').collect();
                if f.len() != 5 {
                    return Err(format!("{}: bad value '{}'", k, v));
                }
                let flag = |s: &str| match s {
                    "0" => Ok(false),
                    "1" => Ok(true),
                    _ => Err(format!("{}: bad flag '{}'", k, s)),
                };
                let slot = if k == "mw_reload" { &mut mw.reload } else { &mut mw.late };
                *slot = Some(MasterReload {
                    gen: num(k, f[0])?,
                    signalled_ns: num(k, f[1])?,
                    master_began: flag(f[2])?,
                    loading_failed: flag(f[3])?,
                    workers_before: parse_pids(k, f[4])?,
                });
            }
            "pidfile_written" => fg.pidfile_written = v == "1",
            "held" => {
                for entry in v.split(',').filter(|e| !e.is_empty()) {
                    let f: Vec<&str> = entry.split(':').collect();
                    if f.len() != 3 {
                        return Err(format!("held: bad entry '{}'", entry));
                    }
                    state.held.push((num(k, f[0])?, num(k, f[1])?, f[2] == "1"));
                }
            }
            "left_paused" => {
                state.left_paused = v
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| num(k, s))
                    .collect::<Result<_, _>>()?
            }
            "restarts" => {
                let f: Vec<&str> = v.split(':').collect();
                if f.len() != 3 {
                    return Err(format!("restarts: bad value '{}'", v));
                }
                let last = String::from_utf8_lossy(&unhex(f[2])?).into_owned();
                state.restarts = Restarts {
                    total: num(k, f[0])?,
                    recent_ns: f[1]
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(|s| num(k, s))
                        .collect::<Result<_, _>>()?,
                    last: if last.is_empty() { None } else { Some(last) },
                };
            }
            // A ledger that does not parse is a bug, not a reason to stop the service: the new
            // image falls back to the file (Recorder::resume).
            "ledger" => {
                state.ledger = unhex(v)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|t| Ledger::parse(&t).ok())
            }
            // Unknown keys come from a newer wrapper; what this one needs is checked below.
            _ => {}
        }
    }
    match version {
        Some(v) if (OLDEST..=VERSION).contains(&v) => {}
        Some(v) => {
            return Err(format!(
                "state version {} is newer than this wrapper's ({})",
                v, VERSION
            ))
        }
        None => return Err("state has no version".into()),
    }
    if state.attempt.is_some() != mw.reload.is_some() {
        return Err("state carries half of a reload in progress".into());
    }
    if state.wrapper_pid <= 0
        || state.relay_read < 0
        || state.relay_write < 0
        || state.exe.as_os_str().is_empty()
        || (master_worker && mw.socket_fd < 0)
    {
        return Err("state lacks pid, exe or relay".into());
    }
    state.generations = if master_worker {
        mw.master = serving;
        Generations::MasterWorker(mw)
    } else {
        fg.serving = serving;
        Generations::Foreground(fg)
    };
    Ok(state)
}

/// How long a probe may take, all told (its answer read, its exit seen).
pub const PROBE_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// Does `exe` take `state` and this command line? Runs it as a probe (same arguments, the state
/// and PROBE_ENV in its environment, a process group of its own), bounded in time; it must print
/// PROBE_ANSWER and exit 0. A previous release, or a file that is not a wrapper at all, does not:
/// the caller then reloads with the program it runs instead of exec'ing into one that would lose
/// the service. Never waits longer than PROBE_MAX: its output is read without blocking (a
/// background job it left may hold the pipes open), and when the bound passes, or `stop_asked`
/// says a stop was requested, the probe's process group is killed. Whatever the probe left in its
/// group (a background job) is killed when it ends, too.
pub fn probe(exe: &std::path::Path, state: &Carried, stop_asked: &dyn Fn() -> bool) -> Result<(), String> {
    use nix::poll::{poll, PollFd, PollFlags};
    use std::os::unix::io::AsRawFd;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .env(ENV, encode(state))
        .env(PROBE_ENV, "1")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setpgid is async-signal-safe; the child only calls it before exec.
    unsafe {
        cmd.pre_exec(|| {
            if nix::libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| format!("its probe could not start: {}", e))?;
    let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
    let kill_group = || {
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
    };
    let deadline = std::time::Instant::now() + PROBE_MAX;
    let mut out = Vec::new();
    let mut err = Vec::new();
    // The pipes still open (stdout, stderr), read without blocking; 4 KiB of each is kept.
    let mut open: Vec<(i32, bool)> = Vec::new();
    for (fd, is_out) in [
        (child.stdout.as_ref().map(|o| o.as_raw_fd()), true),
        (child.stderr.as_ref().map(|e| e.as_raw_fd()), false),
    ] {
        if let Some(fd) = fd {
            if nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).is_ok() {
                open.push((fd, is_out));
            }
        }
    }
    let drain = |open: &mut Vec<(i32, bool)>, out: &mut Vec<u8>, err: &mut Vec<u8>| {
        let mut buf = [0u8; 4096];
        open.retain(|&(fd, is_out)| {
            let keep = if is_out { &mut *out } else { &mut *err };
            loop {
                match nix::unistd::read(fd, &mut buf) {
                    Ok(0) => return false,
                    Ok(n) => {
                        let room = 4096usize.saturating_sub(keep.len());
                        keep.extend_from_slice(&buf[..n.min(room)]);
                    }
                    Err(nix::Error::EINTR) => continue,
                    Err(nix::Error::EAGAIN) => return true,
                    Err(_) => return false,
                }
            }
        });
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                kill_group();
                let _ = child.wait();
                return Err(format!("its probe could not be waited for: {}", e));
            }
        }
        let now = std::time::Instant::now();
        let why = if stop_asked() {
            Some("a stop was requested during its probe")
        } else if now >= deadline {
            Some("its probe did not answer in 2 s")
        } else {
            None
        };
        if let Some(why) = why {
            kill_group();
            let _ = child.wait();
            return Err(why.to_string());
        }
        // Woken by its output, else every 5 ms to see whether it ended (or a stop was asked).
        let wait_ms = (deadline - now).as_millis().clamp(1, 5) as i32;
        let mut polled: Vec<PollFd> = open.iter().map(|&(fd, _)| PollFd::new(fd, PollFlags::POLLIN)).collect();
        if polled.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(wait_ms as u64));
        } else {
            let _ = poll(&mut polled, wait_ms);
        }
        drain(&mut open, &mut out, &mut err);
    };
    // What it wrote before it ended is in the pipes already; a job it left behind is not waited for.
    drain(&mut open, &mut out, &mut err);
    kill_group();
    let (out, err) = (String::from_utf8_lossy(&out), String::from_utf8_lossy(&err));
    if status.success() && out.lines().any(|l| l == PROBE_ANSWER) {
        return Ok(());
    }
    let said = err
        .lines()
        .chain(out.lines())
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string();
    Err(format!(
        "it does not take this wrapper's state ({}{})",
        status,
        if said.is_empty() {
            String::new()
        } else {
            format!(": {}", said)
        }
    ))
}

/// The running wrapper asks, before exec'ing into this program, whether it takes the state and
/// the command line (`probe`): yes only when both parse and agree on the mode.
pub fn answer_probe(command: &cli::Command, state: Option<&str>) -> Result<u8, crate::error::Error> {
    let refuse = |why: String| Err(crate::error::Error::Internal(format!("probe: {}", why)));
    let hargs = match command {
        cli::Command::Supervise(_, hargs) => hargs,
        _ => return refuse("the command line does not supervise haproxy".into()),
    };
    let carried = match state.map(decode) {
        Some(Ok(carried)) => carried,
        Some(Err(e)) => return refuse(e),
        None => return refuse("no state".into()),
    };
    let carried_mode = match carried.generations {
        Generations::Foreground(_) => cli::Mode::Foreground,
        Generations::MasterWorker(_) => cli::Mode::MasterWorker,
    };
    if carried_mode != hargs.mode {
        return refuse(format!(
            "the state is of {} mode, the command line of {}",
            carried_mode.name(),
            hargs.mode.name()
        ));
    }
    println!("{}", PROBE_ANSWER);
    Ok(0)
}

/// Is `exe` the very file the running image came from (no probe needed)?
pub fn is_running_image(exe: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(exe), std::fs::metadata("/proc/self/exe")) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Replaces the process image with `exe`, same argv, with the state in the environment.
/// Returns only on failure.
pub fn exec(exe: &std::path::Path, state: &Carried) -> nix::Error {
    let to_c = |b: &[u8]| CString::new(b).map_err(|_| nix::Error::EINVAL);
    let mut argv = Vec::new();
    for a in std::env::args_os() {
        match to_c(a.as_bytes()) {
            Ok(state) => argv.push(state),
            Err(e) => return e,
        }
    }
    let mut envp = Vec::new();
    for (k, v) in std::env::vars_os() {
        if k == ENV {
            continue;
        }
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        match to_c(&kv) {
            Ok(state) => envp.push(state),
            Err(e) => return e,
        }
    }
    match to_c(format!("{}={}", ENV, encode(state)).as_bytes()) {
        Ok(state) => envp.push(state),
        Err(e) => return e,
    }
    let path = match to_c(exe.as_os_str().as_bytes()) {
        Ok(state) => state,
        Err(e) => return e,
    };
    match nix::unistd::execve(&path, &argv, &envp) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests;
