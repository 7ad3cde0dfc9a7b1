//! The state carried across the wrapper's re-exec on reload: encoded into one environment
//! variable of the new image, decoded and checked against the kernel's view before use.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::RawFd;
use std::path::PathBuf;

pub const ENV: &str = "HAPROXY_SYSTEMD_WRAPPER_STATE";
const VERSION: u32 = 1;

/// One haproxy generation: in foreground mode the haproxy process, in master-worker mode the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gen {
    pub n: u32,
    pub pid: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LastReload {
    None,
    Ok { ms: u64 },
    Failed { ms: u64, reason: String },
}

/// Everything the supervisor must remember across an exec of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carried {
    pub wrapper_pid: i32,
    /// The wrapper's program path as resolved at the first start (the file a package upgrade replaces).
    pub exe: PathBuf,
    pub next_gen: u32,
    pub serving: Option<Gen>,
    pub draining: Vec<Gen>,
    /// master-worker: the current workers and the older ones still draining.
    pub workers: Vec<i32>,
    pub old_workers: Vec<i32>,
    pub last_reload: LastReload,
    pub reloads: u32,
    /// The pipe haproxy's output comes through (read end, write end).
    pub relay: (RawFd, RawFd),
    /// master-worker: the master's private notify socket.
    pub master_sock: Option<RawFd>,
    /// CLOCK_MONOTONIC ns at which the reload that caused the exec was asked for.
    pub reload_started_ns: u64,
    pub pidfile_written: bool,
}

impl Carried {
    /// The state of a wrapper that has started nothing yet.
    pub fn new(wrapper_pid: i32, exe: PathBuf, relay: (RawFd, RawFd), master_sock: Option<RawFd>) -> Carried {
        Carried {
            wrapper_pid,
            exe,
            next_gen: 1,
            serving: None,
            draining: vec![],
            workers: vec![],
            old_workers: vec![],
            last_reload: LastReload::None,
            reloads: 0,
            relay,
            master_sock,
            reload_started_ns: 0,
            pidfile_written: false,
        }
    }
}

fn gens(v: &[Gen]) -> String {
    v.iter().map(|g| format!("{}:{}", g.n, g.pid)).collect::<Vec<_>>().join(",")
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
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| "bad hex".to_string()))
        .collect()
}

pub fn encode(c: &Carried) -> String {
    let mut out = Vec::new();
    out.push(format!("v={}", VERSION));
    out.push(format!("pid={}", c.wrapper_pid));
    out.push(format!("exe={}", hex(c.exe.as_os_str().as_bytes())));
    out.push(format!("next_gen={}", c.next_gen));
    if let Some(g) = c.serving {
        out.push(format!("serving={}", gens(&[g])));
    }
    out.push(format!("draining={}", gens(&c.draining)));
    out.push(format!("workers={}", pids(&c.workers)));
    out.push(format!("old_workers={}", pids(&c.old_workers)));
    out.push(match &c.last_reload {
        LastReload::None => "last=none".to_string(),
        LastReload::Ok { ms } => format!("last=ok:{}", ms),
        LastReload::Failed { ms, reason } => format!("last=failed:{}:{}", ms, hex(reason.as_bytes())),
    });
    out.push(format!("reloads={}", c.reloads));
    out.push(format!("relay={},{}", c.relay.0, c.relay.1));
    if let Some(fd) = c.master_sock {
        out.push(format!("master_sock={}", fd));
    }
    out.push(format!("reload_t0={}", c.reload_started_ns));
    out.push(format!("pidfile_written={}", c.pidfile_written as u8));
    out.join(";")
}

fn num<T: std::str::FromStr>(k: &str, v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("{}: '{}' is not a number", k, v))
}

fn parse_gens(k: &str, v: &str) -> Result<Vec<Gen>, String> {
    v.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (n, p) = s.split_once(':').ok_or_else(|| format!("{}: bad entry '{}'", k, s))?;
            Ok(Gen { n: num(k, n)?, pid: num(k, p)? })
        })
        .collect()
}

fn parse_pids(k: &str, v: &str) -> Result<Vec<i32>, String> {
    v.split(',').filter(|s| !s.is_empty()).map(|s| num(k, s)).collect()
}

pub fn decode(s: &str) -> Result<Carried, String> {
    let mut c = Carried::new(0, PathBuf::new(), (-1, -1), None);
    let mut version = None;
    for field in s.split(';') {
        let (k, v) = field.split_once('=').ok_or_else(|| format!("bad field '{}'", field))?;
        match k {
            "v" => version = Some(num::<u32>(k, v)?),
            "pid" => c.wrapper_pid = num(k, v)?,
            "exe" => c.exe = PathBuf::from(OsString::from(std::ffi::OsStr::from_bytes(&unhex(v)?))),
            "next_gen" => c.next_gen = num(k, v)?,
            "serving" => c.serving = parse_gens(k, v)?.into_iter().next(),
            "draining" => c.draining = parse_gens(k, v)?,
            "workers" => c.workers = parse_pids(k, v)?,
            "old_workers" => c.old_workers = parse_pids(k, v)?,
            "last" => {
                c.last_reload = if v == "none" {
                    LastReload::None
                } else if let Some(ms) = v.strip_prefix("ok:") {
                    LastReload::Ok { ms: num(k, ms)? }
                } else if let Some(rest) = v.strip_prefix("failed:") {
                    let (ms, reason) = rest.split_once(':').ok_or("last: bad failed entry")?;
                    LastReload::Failed { ms: num(k, ms)?, reason: String::from_utf8_lossy(&unhex(reason)?).into_owned() }
                } else {
                    return Err(format!("last: bad value '{}'", v));
                }
            }
            "reloads" => c.reloads = num(k, v)?,
            "relay" => {
                let (r, w) = v.split_once(',').ok_or("relay: bad value")?;
                c.relay = (num(k, r)?, num(k, w)?);
            }
            "master_sock" => c.master_sock = Some(num(k, v)?),
            "reload_t0" => c.reload_started_ns = num(k, v)?,
            "pidfile_written" => c.pidfile_written = v == "1",
            // Unknown keys come from a newer wrapper; what this one needs is checked below.
            _ => {}
        }
    }
    match version {
        Some(VERSION) => {}
        Some(v) => return Err(format!("state version {} is not {}", v, VERSION)),
        None => return Err("state has no version".into()),
    }
    if c.wrapper_pid <= 0 || c.relay.0 < 0 || c.relay.1 < 0 || c.exe.as_os_str().is_empty() {
        return Err("state lacks pid, exe or relay".into());
    }
    Ok(c)
}

/// Replaces the process image with `exe`, same argv, with the state in the environment.
/// Returns only on failure.
pub fn exec(exe: &std::path::Path, state: &Carried) -> nix::Error {
    let to_c = |b: &[u8]| CString::new(b).map_err(|_| nix::Error::EINVAL);
    let mut argv = Vec::new();
    for a in std::env::args_os() {
        match to_c(a.as_bytes()) {
            Ok(c) => argv.push(c),
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
            Ok(c) => envp.push(c),
            Err(e) => return e,
        }
    }
    match to_c(format!("{}={}", ENV, encode(state)).as_bytes()) {
        Ok(c) => envp.push(c),
        Err(e) => return e,
    }
    let path = match to_c(exe.as_os_str().as_bytes()) {
        Ok(c) => c,
        Err(e) => return e,
    };
    match nix::unistd::execve(&path, &argv, &envp) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Carried {
        Carried {
            wrapper_pid: 42,
            exe: PathBuf::from("/usr/sbin/haproxy-systemd-wrapper"),
            next_gen: 5,
            serving: Some(Gen { n: 4, pid: 1000 }),
            draining: vec![Gen { n: 2, pid: 900 }, Gen { n: 3, pid: 950 }],
            workers: vec![1001, 1002],
            old_workers: vec![],
            last_reload: LastReload::Failed { ms: 31, reason: "config : parsing [x.cfg:3] ; unknown=keyword\n".into() },
            reloads: 7,
            relay: (3, 4),
            master_sock: Some(5),
            reload_started_ns: 123456789,
            pidfile_written: true,
        }
    }

    #[test]
    fn round_trips() {
        let c = sample();
        assert_eq!(decode(&encode(&c)).unwrap(), c);
        let mut d = sample();
        d.serving = None;
        d.master_sock = None;
        d.last_reload = LastReload::Ok { ms: 85 };
        assert_eq!(decode(&encode(&d)).unwrap(), d);
    }

    #[test]
    fn rejects_damaged_state() {
        assert!(decode("").is_err());
        assert!(decode("v=2;pid=1;exe=2f;relay=3,4").is_err());
        assert!(decode("v=1;pid=x;exe=2f;relay=3,4").is_err());
        assert!(decode("v=1;pid=1;exe=2f").is_err());
        assert!(decode("v=1;pid=1;exe=2f;relay=3,4;draining=1:").is_err());
        assert!(decode("v=1;pid=1;exe=2f;relay=3,4;future_key=7").is_ok());
    }
}
