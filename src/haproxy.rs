//! Starting haproxy: which program, its command line per generation, a clean process state for
//! it, the readiness sentinel of foreground generations, and signals to it. Its output goes
//! through src/relay.rs.

use std::ffi::OsString;
use std::os::unix::io::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::{fork, ForkResult, Pid};

use crate::signals;

/// Environment the wrapper never hands to haproxy.
const PRIVATE_ENV: &[&str] = &["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", crate::reexec::ENV];

/// The argument list of one foreground generation: our options first (so a user's `--` still
/// ends the list), then the user's.
pub fn foreground_args(base: &[OsString], sf: &[i32], handover: Option<&std::ffi::OsStr>) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::new();
    let mut rest = base;
    if let Some(first) = base.first() {
        if first == "-db" {
            out.push(first.clone());
            rest = &base[1..];
        }
    }
    if let Some(sock) = handover {
        out.push("-x".into());
        out.push(sock.to_owned());
    }
    if !sf.is_empty() {
        out.push("-sf".into());
        out.extend(sf.iter().map(|p| OsString::from(p.to_string())));
    }
    out.extend(rest.iter().cloned());
    out
}

/// Starts haproxy with an empty signal mask, default dispositions, none of the wrapper's private
/// environment (but `notify_socket` when given), stdin from /dev/null and stdout/stderr into the
/// relay pipe. `keep_fd` (the listener hand-over's end) is inherited as it is numbered here.
pub fn spawn(
    program: &Path,
    args: &[OsString],
    relay_w: RawFd,
    notify_socket: Option<&str>,
    keep_fd: Option<RawFd>,
) -> std::io::Result<i32> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    for k in PRIVATE_ENV {
        cmd.env_remove(k);
    }
    if let Some(addr) = notify_socket {
        cmd.env("NOTIFY_SOCKET", addr);
    }
    // Close-on-exec duplicates: the child gets them as 1 and 2 (dup2 clears the flag there) and
    // nowhere else.
    let dup = || fcntl(relay_w, FcntlArg::F_DUPFD_CLOEXEC(3));
    let out = dup()?;
    let err = match dup() {
        Ok(fd) => fd,
        Err(e) => {
            let _ = nix::unistd::close(out);
            return Err(e.into());
        }
    };
    // SAFETY: `out` and `err` are fresh duplicates owned by nothing else; Stdio takes them over.
    unsafe {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from_raw_fd(out))
            .stderr(Stdio::from_raw_fd(err));
        cmd.pre_exec(move || {
            if let Some(fd) = keep_fd {
                // fcntl is async-signal-safe; this clears close-on-exec in the child only.
                fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
            }
            signals::reset_for_child()
        });
    }
    let child = cmd.spawn()?;
    // The child is reaped by the supervisor's waitpid(-1); dropping the handle neither waits nor kills.
    Ok(child.id() as i32)
}

/// Forks the readiness sentinel: a process that does nothing but wait for SIGUSR1, which haproxy
/// sends to every `-sf` pid once its listeners are bound. It exits 0 on that signal and dies with
/// the wrapper.
pub fn spawn_sentinel() -> nix::Result<i32> {
    let parent = nix::unistd::getpid();
    // SAFETY: the wrapper is single-threaded; the child only calls async-signal-safe functions.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => Ok(child.as_raw()),
        ForkResult::Child => {
            // SAFETY: prctl and _exit are async-signal-safe.
            unsafe {
                nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL);
                if nix::unistd::getppid() != parent {
                    nix::libc::_exit(1);
                }
            }
            let mut set = SigSet::empty();
            set.add(Signal::SIGUSR1);
            loop {
                // SIGUSR1 is blocked (inherited mask), so sigwait receives it.
                if let Ok(Signal::SIGUSR1) = set.wait() {
                    // SAFETY: _exit is async-signal-safe.
                    unsafe { nix::libc::_exit(0) }
                }
            }
        }
    }
}

/// The haproxy program to run: explicit, else beside the wrapper, else /usr/sbin/haproxy;
/// checked so that a missing or non-executable program fails before anything starts.
pub fn locate(explicit: Option<&Path>, wrapper_exe: &Path) -> Result<PathBuf, crate::error::Error> {
    use crate::error::Error;
    let path = program_path(explicit, wrapper_exe);
    match std::fs::metadata(&path) {
        Err(e) => Err(Error::from_spawn(&path, &e)),
        Ok(m) if m.is_dir() => Err(Error::NotExecutable(format!(
            "haproxy not executable: {} is a directory",
            path.display()
        ))),
        Ok(_) => match nix::unistd::access(&path, nix::unistd::AccessFlags::X_OK) {
            Ok(()) => Ok(path),
            Err(e) => Err(Error::from_spawn(&path, &std::io::Error::from(e))),
        },
    }
}

/// The haproxy program's path, unchecked (`locate` checks it).
pub fn program_path(explicit: Option<&Path>, wrapper_exe: &Path) -> PathBuf {
    match explicit {
        Some(p) => p.to_path_buf(),
        None => default_haproxy(wrapper_exe),
    }
}

/// The default haproxy program: beside the wrapper, named without `-systemd-wrapper`, else
/// /usr/sbin/haproxy.
fn default_haproxy(wrapper_exe: &Path) -> PathBuf {
    if let (Some(dir), Some(name)) = (
        wrapper_exe.parent(),
        wrapper_exe.file_name().and_then(std::ffi::OsStr::to_str),
    ) {
        if name.contains("-systemd-wrapper") {
            let candidate = dir.join(name.replacen("-systemd-wrapper", "", 1));
            if candidate.exists() {
                return candidate;
            }
        }
    }
    PathBuf::from("/usr/sbin/haproxy")
}

/// Sets or clears FD_CLOEXEC (cleared only around the wrapper's own re-exec).
pub fn set_cloexec(fd: RawFd, on: bool) -> nix::Result<()> {
    let flags = if on { FdFlag::FD_CLOEXEC } else { FdFlag::empty() };
    fcntl(fd, FcntlArg::F_SETFD(flags)).map(|_| ())
}

/// Sends a signal to one process the wrapper knows is its own; a process already gone is fine.
pub fn signal(pid: i32, sig: Signal) {
    match nix::sys::signal::kill(Pid::from_raw(pid), sig) {
        Ok(()) | Err(nix::Error::ESRCH) => {}
        Err(e) => warning!("cannot send {} to pid {}: {}", sig, pid, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn foreground_args_put_ours_first() {
        let base = os(&["-db", "-f", "a.cfg", "--", "b.cfg"]);
        assert_eq!(
            foreground_args(&base, &[7], None),
            os(&["-db", "-sf", "7", "-f", "a.cfg", "--", "b.cfg"])
        );
        assert_eq!(
            foreground_args(&base, &[7, 100, 200], Some(std::ffi::OsStr::new("/run/a.sock"))),
            os(&[
                "-db",
                "-x",
                "/run/a.sock",
                "-sf",
                "7",
                "100",
                "200",
                "-f",
                "a.cfg",
                "--",
                "b.cfg"
            ])
        );
    }

    #[test]
    fn default_haproxy_is_beside_the_wrapper() {
        let dir = std::env::temp_dir().join(format!("hsw-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("haproxy"), b"").unwrap();
        assert_eq!(
            default_haproxy(&dir.join("haproxy-systemd-wrapper")),
            dir.join("haproxy")
        );
        assert_eq!(
            default_haproxy(&dir.join("other-name")),
            PathBuf::from("/usr/sbin/haproxy")
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            default_haproxy(&dir.join("haproxy-systemd-wrapper")),
            PathBuf::from("/usr/sbin/haproxy")
        );
    }

    #[test]
    fn locate_reports_missing_and_not_executable() {
        let me = Path::new("/nonexistent/haproxy-systemd-wrapper");
        assert_eq!(
            locate(Some(Path::new("/nonexistent/haproxy")), me)
                .unwrap_err()
                .exit_code(),
            127
        );
        let plain = std::env::temp_dir().join(format!("hsw-locate-{}", std::process::id()));
        std::fs::write(&plain, b"not a program").unwrap();
        assert_eq!(locate(Some(&plain), me).unwrap_err().exit_code(), 126);
        std::fs::remove_file(&plain).unwrap();
        assert_eq!(locate(Some(Path::new("/etc")), me).unwrap_err().exit_code(), 126);
        assert!(locate(Some(Path::new("/bin/sh")), me).is_ok());
    }
}
