//! The wrapper's own failures and the exit statuses they map to, the supervisor's and the
//! `--wait-reload` client's (all documented in the man page).

use std::fmt;

/// Usage error: a bad wrapper option or a haproxy option missing its value.
pub const EXIT_USAGE: u8 = 64;
/// haproxy did not become ready within `--ready-timeout` at start.
pub const EXIT_NOT_READY: u8 = 69;
/// The wrapper could not set itself up (signalfd, socket, pipe, ...).
pub const EXIT_INTERNAL: u8 = 70;
/// The haproxy program exists but is not executable.
pub const EXIT_NOT_EXECUTABLE: u8 = 126;
/// The haproxy program was not found.
pub const EXIT_NOT_FOUND: u8 = 127;

// `--wait-reload PID` (src/client.rs):
/// The reload served: the new generation answers.
pub const EXIT_OK: u8 = 0;
/// The reload failed; the previous generation keeps serving.
pub const EXIT_FAILED: u8 = 1;
/// PID is not a running haproxy-systemd-wrapper, or it ended or began stopping while we waited.
pub const EXIT_NO_WRAPPER: u8 = 69;
/// The wrapper could not record the reload's result: its ledger file is emptied (a full run
/// directory), missing after its request was counted, unreadable, or its run directory unusable.
/// The log of the wrapper says why; the reload's own outcome is unknown to the client.
pub const EXIT_UNRECORDED: u8 = 74;
/// No verdict within the timeout.
pub const EXIT_TIMEOUT: u8 = 75;

#[derive(Debug)]
pub enum Error {
    Usage(String),
    NotFound(String),
    NotExecutable(String),
    Internal(String),
    /// A reload's configuration binds an address that cannot be bound (src/binds.rs).
    CannotBind(String),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => EXIT_USAGE,
            Error::NotFound(_) => EXIT_NOT_FOUND,
            Error::NotExecutable(_) => EXIT_NOT_EXECUTABLE,
            Error::Internal(_) => EXIT_INTERNAL,
            // haproxy's own status when it cannot bind (only a reload checks first, though).
            Error::CannotBind(_) => 1,
        }
    }

    /// Maps a failure to start a program to 127 (not found) or 126 (not executable).
    pub fn from_spawn(program: &std::path::Path, err: &std::io::Error) -> Error {
        let what = format!("{}: {}", program.display(), err);
        match err.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(format!("haproxy not found: {}", what)),
            std::io::ErrorKind::PermissionDenied => Error::NotExecutable(format!("haproxy not executable: {}", what)),
            _ => match err.raw_os_error() {
                Some(code) if code == nix::libc::ENOEXEC || code == nix::libc::EISDIR => {
                    Error::NotExecutable(format!("haproxy not executable: {}", what))
                }
                _ => Error::Internal(format!("cannot start haproxy: {}", what)),
            },
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Error::Usage(m) => write!(f, "usage error: {} (see --help)", m),
            Error::NotFound(m) | Error::NotExecutable(m) | Error::Internal(m) | Error::CannotBind(m) => f.write_str(m),
        }
    }
}

/// Exit status for a child's wait status: exited(n) → n, killed by signal s → 128+s.
pub fn status_code(status: &nix::sys::wait::WaitStatus) -> Option<u8> {
    use nix::sys::wait::WaitStatus;
    match *status {
        WaitStatus::Exited(_, code) => Some((code & 0xff) as u8),
        WaitStatus::Signaled(_, sig, _) => Some(128u8.wrapping_add(sig as i32 as u8)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;
    use nix::sys::wait::WaitStatus;
    use nix::unistd::Pid;

    #[test]
    fn exit_statuses_map_like_a_shell() {
        let p = Pid::from_raw(10);
        assert_eq!(status_code(&WaitStatus::Exited(p, 0)), Some(0));
        assert_eq!(status_code(&WaitStatus::Exited(p, 3)), Some(3));
        assert_eq!(status_code(&WaitStatus::Signaled(p, Signal::SIGKILL, false)), Some(137));
        assert_eq!(status_code(&WaitStatus::Signaled(p, Signal::SIGTERM, true)), Some(143));
        assert_eq!(status_code(&WaitStatus::StillAlive), None);
    }

    #[test]
    fn spawn_errors_map_to_126_and_127() {
        let p = std::path::Path::new("/x/haproxy");
        let nf = std::io::Error::from_raw_os_error(nix::libc::ENOENT);
        let pd = std::io::Error::from_raw_os_error(nix::libc::EACCES);
        let nx = std::io::Error::from_raw_os_error(nix::libc::ENOEXEC);
        assert_eq!(Error::from_spawn(p, &nf).exit_code(), 127);
        assert_eq!(Error::from_spawn(p, &pd).exit_code(), 126);
        assert_eq!(Error::from_spawn(p, &nx).exit_code(), 126);
        assert_eq!(Error::Usage("x".into()).exit_code(), 64);
    }
}
