//! Command-line parsing: the wrapper's own long options, then haproxy's arguments, which are
//! classified (mode, pid file, hand-over socket) and filtered per mode. Pure: no I/O.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::Error;

pub const HELP: &str = "\
haproxy-systemd-wrapper: run HAProxy as a systemd Type=notify service with seamless reloads

Usage: haproxy-systemd-wrapper [WRAPPER OPTIONS] [--] HAPROXY ARGS...

Wrapper options (before haproxy's arguments):
  --haproxy PATH         haproxy program to run (default: the file beside this
                         program named without \"-systemd-wrapper\", else
                         /usr/sbin/haproxy)
  --ready-timeout SECS   time a new haproxy has to become ready (default 30)
  --stop-timeout SECS    time between SIGTERM and SIGKILL on stop (default 20)
  --max-draining N       foreground mode: at most N old generations draining;
                         a reload past that stops the oldest (SIGTERM)
                         (default 50; master-worker: haproxy's
                         mworker-max-reloads)
  --max-restarts N       when the serving haproxy (or master) dies, start it
                         again at once, on the listening sockets the wrapper
                         holds, at most N times within 60 s; past that, or
                         with 0, exit with its status for systemd's Restart=
                         (default 5)
  --run-dir DIR          where the reload ledger is kept, root-only (default
                         /run/haproxy-systemd-wrapper, the unit's RuntimeDirectory)
  --help                 print this help and exit
  --wait-reload PID      client role (the unit's last ExecReload= line): wait
                         for the reload that SIGUSR2 asked of wrapper PID and
                         exit 0 once the new generation serves, 1 if it failed
                         (reason on stderr), 69 if PID is no running wrapper,
                         74 if the wrapper could not record the result,
                         75 after --timeout SECS (default 80)
  --version              print the version and exit

Modes: -W or -Ws selects master-worker mode (one haproxy master, reloaded with
SIGUSR2); otherwise each generation is one foreground haproxy and a reload
starts a new one with -sf (and -x SOCKET for listener hand-over when given).

Signals: SIGUSR2/SIGHUP reload, SIGTERM/SIGINT stop, SIGUSR1 graceful stop,
SIGTTOU/SIGTTIN passed on to haproxy.

Exit status: haproxy's own (128+N when killed by signal N); 0 after a
requested stop; 64 usage error; 69 haproxy not ready in time at start;
70 internal error; 126 haproxy not executable; 127 haproxy not found.
See haproxy-systemd-wrapper(8).
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Foreground,
    MasterWorker,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Foreground => "foreground",
            Mode::MasterWorker => "master-worker",
        }
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Help,
    Version,
    /// `-c`, `-v`, `-vv`: nothing to supervise; haproxy runs in place of the wrapper.
    Exec(Options, Vec<OsString>),
    Supervise(Options, HaproxyArgs),
    /// `--wait-reload PID`: wait for the reload's verdict in the ledger.
    WaitReload(crate::client::WaitOptions),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub haproxy: Option<PathBuf>,
    pub ready_timeout: Duration,
    pub stop_timeout: Duration,
    /// Where the reload ledger lives (see ledger.rs).
    pub run_dir: PathBuf,
    /// `--max-draining N` as given (None: DEFAULT_MAX_DRAINING). Foreground mode only.
    pub max_draining: Option<u32>,
    /// `--max-restarts N`: restarts of a dead serving generation by the wrapper within a minute.
    pub max_restarts: u32,
}

/// How many times a minute the wrapper starts a dead serving generation again unless
/// `--max-restarts` says otherwise (systemd's own default start limit is 5 in 10 s).
pub const DEFAULT_MAX_RESTARTS: u32 = 5;

/// Foreground mode: how many old generations may drain at once unless `--max-draining` says
/// otherwise (haproxy's own `mworker-max-reloads` default, from 3.3).
pub const DEFAULT_MAX_DRAINING: u32 = 50;

impl Options {
    /// The bound on draining generations in force.
    pub fn max_draining(&self) -> u32 {
        self.max_draining.unwrap_or(DEFAULT_MAX_DRAINING)
    }
}

/// haproxy's arguments, classified.
#[derive(Debug, Clone, PartialEq)]
pub struct HaproxyArgs {
    pub mode: Mode,
    /// `-p FILE`: in foreground mode the wrapper writes it; in master-worker mode haproxy does.
    pub pidfile: Option<PathBuf>,
    /// `-x SOCKET`: listener hand-over socket for foreground reloads.
    pub handover_socket: Option<PathBuf>,
    /// Arguments given to every haproxy the wrapper starts (mode-specific options first).
    pub base: Vec<OsString>,
    /// What was dropped or changed, for a warning at start.
    pub notes: Vec<String>,
}

/// haproxy options that take the next argument as their value.
pub fn takes_value(opt: &str) -> bool {
    matches!(opt, "-f" | "-C" | "-L" | "-m" | "-n" | "-N" | "-p" | "-x" | "-S")
}

pub fn parse<I>(args: I) -> Result<Command, Error>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let mut opts = Options {
        haproxy: None,
        ready_timeout: Duration::from_secs(30),
        stop_timeout: Duration::from_secs(20),
        run_dir: PathBuf::from(crate::ledger::DEFAULT_RUN_DIR),
        max_draining: None,
        max_restarts: DEFAULT_MAX_RESTARTS,
    };
    let mut wait_reload: Option<i32> = None;
    let mut timeout: Option<Duration> = None;
    // Wrapper options are long options at the front; the first other argument starts haproxy's.
    loop {
        {
            let mut raw = match parser.try_raw_args() {
                Some(raw) => raw,
                None => break,
            };
            match raw.peek().and_then(|a| a.to_str()) {
                Some("--") => {
                    raw.next();
                    break;
                }
                Some(a) if a.starts_with("--") => {}
                _ => break,
            }
        }
        match parser.next().map_err(usage)? {
            Some(Long("help")) => return Ok(Command::Help),
            Some(Long("version")) => return Ok(Command::Version),
            Some(Long("haproxy")) => {
                let v = parser.value().map_err(usage)?;
                if v.is_empty() {
                    return Err(Error::Usage("--haproxy needs a path".into()));
                }
                opts.haproxy = Some(PathBuf::from(v));
            }
            Some(Long("ready-timeout")) => {
                opts.ready_timeout = seconds("--ready-timeout", parser.value().map_err(usage)?)?
            }
            Some(Long("stop-timeout")) => {
                opts.stop_timeout = seconds("--stop-timeout", parser.value().map_err(usage)?)?
            }
            Some(Long("max-draining")) => {
                opts.max_draining = Some(generations("--max-draining", parser.value().map_err(usage)?)?);
            }
            Some(Long("max-restarts")) => {
                let v = parser.value().map_err(usage)?;
                let s = v.to_string_lossy();
                opts.max_restarts = s.parse::<u32>().map_err(|_| {
                    Error::Usage(format!("--max-restarts takes a whole number of restarts, not '{}'", s))
                })?;
            }
            Some(Long("run-dir")) => {
                let v = parser.value().map_err(usage)?;
                if v.is_empty() {
                    return Err(Error::Usage("--run-dir needs a directory".into()));
                }
                opts.run_dir = PathBuf::from(v);
            }
            Some(Long("wait-reload")) => {
                let v = parser.value().map_err(usage)?;
                match v.to_str().and_then(|s| s.parse::<i32>().ok()) {
                    Some(p) if p > 1 => wait_reload = Some(p),
                    _ => {
                        return Err(Error::Usage(format!(
                            "--wait-reload takes the wrapper's pid ($MAINPID), not '{}'",
                            v.to_string_lossy()
                        )))
                    }
                }
            }
            Some(Long("timeout")) => timeout = Some(seconds("--timeout", parser.value().map_err(usage)?)?),
            Some(other) => return Err(usage(other.unexpected())),
            None => break,
        }
    }
    let rest: Vec<OsString> = match parser.raw_args() {
        Ok(raw) => raw.collect(),
        Err(e) => return Err(usage(e)),
    };
    if let Some(pid) = wait_reload {
        if !rest.is_empty() {
            return Err(Error::Usage("--wait-reload takes no haproxy arguments".into()));
        }
        let timeout = timeout.unwrap_or(crate::client::DEFAULT_TIMEOUT);
        return Ok(Command::WaitReload(crate::client::WaitOptions {
            pid,
            run_dir: opts.run_dir,
            timeout,
        }));
    }
    if timeout.is_some() {
        return Err(Error::Usage("--timeout goes with --wait-reload".into()));
    }
    if rest.is_empty() {
        return Err(Error::Usage("no haproxy arguments (at least -f CONFIG)".into()));
    }
    if is_oneshot(&rest)? {
        return Ok(Command::Exec(opts, rest));
    }
    Ok(Command::Supervise(opts, classify(&rest)?))
}

fn usage(e: lexopt::Error) -> Error {
    Error::Usage(e.to_string())
}

fn seconds(name: &str, v: OsString) -> Result<Duration, Error> {
    let s = v.to_string_lossy();
    match s.parse::<f64>() {
        // At least a millisecond: a value that rounds to 0 would make every attempt time out.
        Ok(x) if (0.001..=86400.0).contains(&x) => Ok(Duration::from_millis((x * 1000.0).round() as u64)),
        _ => Err(Error::Usage(format!(
            "{} takes seconds between 0.001 and 86400, not '{}'",
            name, s
        ))),
    }
}

/// A positive whole number of generations.
fn generations(name: &str, v: OsString) -> Result<u32, Error> {
    let s = v.to_string_lossy();
    match s.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(Error::Usage(format!(
            "{} takes a positive whole number of generations, not '{}'",
            name, s
        ))),
    }
}

/// `-c` (check) and `-v`/`-vv` (version) make haproxy do one thing and exit.
fn is_oneshot(args: &[OsString]) -> Result<bool, Error> {
    let mut i = 0;
    while i < args.len() {
        let a = args[i].to_string_lossy();
        if a == "--" {
            break;
        }
        if takes_value(&a) {
            i += 2;
            continue;
        }
        if a == "-c" || a == "-v" || a == "-vv" {
            return Ok(true);
        }
        i += 1;
    }
    Ok(false)
}

/// Classifies haproxy's arguments and builds the per-mode base argument list.
pub fn classify(args: &[OsString]) -> Result<HaproxyArgs, Error> {
    let mut mode = Mode::Foreground;
    let mut pidfile = None;
    let mut handover = None;
    let mut kept: Vec<OsString> = Vec::new();
    // Options that only mean something in one mode, applied once the mode is known.
    let mut master_cli: Vec<OsString> = Vec::new();
    let mut notes = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let a = arg.to_string_lossy().into_owned();
        if a == "--" {
            kept.extend(args[i..].iter().cloned());
            break;
        }
        if a.starts_with("--") {
            // haproxy has no long options: a wrapper option that came after haproxy's arguments.
            return Err(Error::Usage(format!(
                "{} after haproxy's arguments: wrapper options go first",
                a
            )));
        }
        if takes_value(&a) {
            let value = match args.get(i + 1) {
                Some(v) if !v.is_empty() => v.clone(),
                _ => return Err(Error::Usage(format!("haproxy option {} needs a value", a))),
            };
            match a.as_str() {
                "-p" => pidfile = Some(PathBuf::from(&value)),
                "-x" => handover = Some(PathBuf::from(&value)),
                "-S" => {
                    master_cli.push(arg.clone());
                    master_cli.push(value);
                }
                _ => {
                    kept.push(arg.clone());
                    kept.push(value);
                }
            }
            i += 2;
            continue;
        }
        match a.as_str() {
            "-W" | "-Ws" => mode = Mode::MasterWorker,
            "-D" => notes.push("-D dropped: haproxy stays under the wrapper".to_string()),
            "-db" | "-Ds" => {}
            "-sf" | "-st" => {
                let mut j = i + 1;
                while j < args.len() && !args[j].to_string_lossy().starts_with('-') {
                    j += 1;
                }
                notes.push(format!("{} dropped: the wrapper tells old generations itself", a));
                i = j;
                continue;
            }
            _ => kept.push(arg.clone()),
        }
        i += 1;
    }
    let mut base: Vec<OsString> = Vec::new();
    match mode {
        Mode::MasterWorker => {
            base.push("-Ws".into());
            if let Some(p) = &pidfile {
                base.push("-p".into());
                base.push(p.clone().into_os_string());
            }
            base.extend(master_cli);
            if handover.take().is_some() {
                notes.push("-x dropped: in master-worker mode haproxy hands sockets over itself".to_string());
            }
        }
        Mode::Foreground => {
            base.push("-db".into());
            if !master_cli.is_empty() {
                notes.push("-S dropped: the master CLI needs master-worker mode (-Ws)".to_string());
            }
        }
    }
    base.extend(kept);
    Ok(HaproxyArgs {
        mode,
        pidfile,
        handover_socket: handover,
        base,
        notes,
    })
}

#[cfg(test)]
mod tests;
