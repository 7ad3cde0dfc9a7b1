//! All sd_notify traffic: the wrapper's messages to systemd (formatted by the sd-notify crate,
//! sent over one socket of our own, see `Systemd`), the watchdog interval systemd asks for, and
//! the private socket on which the haproxy master (master-worker mode) reports to the wrapper.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::sys::socket::{self, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr};

use sd_notify::NotifyState;

/// The wrapper's messages to systemd. Without NOTIFY_SOCKET they are skipped.
///
/// Sent over one socket opened at start, not with `sd_notify::notify`: sd-notify 0.4.2 (the last
/// release that builds with rustc 1.63) opens a new blocking socket for every message (the
/// descriptor count flickers, and a full NOTIFY_SOCKET would block the event loop), and it does
/// not reach an abstract `@name` NOTIFY_SOCKET. The crate formats the messages.
pub struct Systemd {
    target: Option<(OwnedFd, UnixAddr)>,
    last_status: String,
}

/// NOTIFY_SOCKET's address: a path, or `@name` in the abstract namespace.
fn notify_address(value: &OsStr) -> nix::Result<UnixAddr> {
    match value.as_bytes().strip_prefix(b"@") {
        Some(name) => UnixAddr::new_abstract(name),
        None => UnixAddr::new(value),
    }
}

impl Systemd {
    pub fn new() -> Systemd {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|value| {
            let opened = notify_address(&value).and_then(|addr| {
                let raw = socket::socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
                // SAFETY: `raw` was just returned by socket(2) and is owned by nothing else.
                Ok((unsafe { OwnedFd::from_raw_fd(raw) }, addr))
            });
            match opened {
                Ok(t) => Some(t),
                Err(e) => {
                    warning!("NOTIFY_SOCKET={:?} is unusable: {}", value, e);
                    None
                }
            }
        });
        Systemd { target, last_status: String::new() }
    }

    fn send(&self, fields: &[NotifyState]) {
        if let Some((fd, addr)) = &self.target {
            let msg = message(fields);
            if let Err(e) = socket::sendto(fd.as_raw_fd(), msg.as_bytes(), addr, MsgFlags::MSG_NOSIGNAL) {
                warning!("sd_notify failed: {}", e);
            }
        }
    }

    pub fn ready(&mut self, status: &str) {
        self.last_status = status.to_string();
        self.send(&[NotifyState::Ready, NotifyState::MainPid(std::process::id()), NotifyState::Status(status)]);
    }

    pub fn reloading(&mut self, status: &str) {
        self.last_status = status.to_string();
        // systemd >= 253 wants MONOTONIC_USEC with RELOADING=1 to match the reload to its request
        // (sd-notify 0.4.2 has no variant for it).
        let usec = monotonic_usec(crate::clock::now_ns());
        self.send(&[NotifyState::Reloading, NotifyState::Custom(&usec), NotifyState::Status(status)]);
    }

    pub fn stopping(&mut self) {
        self.last_status = "stopping".into();
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// Sends STATUS= when it changed.
    pub fn status(&mut self, status: &str) {
        if status != self.last_status {
            self.last_status = status.to_string();
            self.send(&[NotifyState::Status(status)]);
        }
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }
}

/// One datagram: one `KEY=VALUE` line per state.
fn message(fields: &[NotifyState]) -> String {
    fields.iter().map(|f| format!("{}\n", f)).collect()
}

fn monotonic_usec(now_ns: u64) -> String {
    format!("MONOTONIC_USEC={}", now_ns / 1000)
}

/// The watchdog interval systemd asks for (WATCHDOG_USEC, with WATCHDOG_PID naming this pid), if any.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec))
    } else {
        None
    }
}

/// The datagram socket the haproxy master sends its sd_notify messages to.
pub struct MasterSocket {
    fd: OwnedFd,
    pub address: String,
}

impl MasterSocket {
    /// A new socket in the abstract namespace, with SO_PASSCRED so each message carries its sender.
    pub fn bind() -> nix::Result<MasterSocket> {
        let raw = socket::socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)?;
        // SAFETY: `raw` was just returned by socket(2) and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        socket::setsockopt(raw, socket::sockopt::PassCred, &true)?;
        let nonce = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map(|t| t.tv_nsec()).unwrap_or(0);
        let name = format!("haproxy-systemd-wrapper/{}/{}", std::process::id(), nonce);
        socket::bind(raw, &UnixAddr::new_abstract(name.as_bytes())?)?;
        Ok(MasterSocket { fd, address: format!("@{}", name) })
    }

    /// Takes back the socket carried across the re-exec.
    pub fn from_fd(raw: RawFd) -> nix::Result<MasterSocket> {
        let addr: UnixAddr = socket::getsockname(raw)?;
        let name = addr.as_abstract().map(|b| format!("@{}", String::from_utf8_lossy(b))).ok_or(nix::Error::EINVAL)?;
        // SAFETY: the fd number comes from our own previous image, which owned it; nothing else does now.
        Ok(MasterSocket { fd: unsafe { OwnedFd::from_raw_fd(raw) }, address: name })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Every datagram waiting, with the sender's pid (0 when the kernel gave none).
    pub fn recv_all(&self) -> Vec<(i32, String)> {
        let mut out = Vec::new();
        loop {
            let mut buf = [0u8; 4096];
            let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let (len, pid) = match socket::recvmsg::<()>(self.fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT) {
                Ok(msg) => {
                    let mut pid = 0;
                    for c in msg.cmsgs() {
                        if let ControlMessageOwned::ScmCredentials(cred) = c {
                            pid = cred.pid();
                        }
                    }
                    (msg.bytes, pid)
                }
                Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => break,
                Err(e) => {
                    warning!("reading the master's notify socket: {}", e);
                    break;
                }
            };
            out.push((pid, String::from_utf8_lossy(&buf[..len]).into_owned()));
        }
        out
    }
}

/// One sd_notify datagram says `KEY=1` (e.g. READY) on one of its lines.
pub fn says(msg: &str, key: &str) -> bool {
    msg.lines().any(|l| l.split_once('=').map_or(false, |(k, v)| k == key && v == "1"))
}

/// The value of `KEY=` in a datagram.
pub fn value<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| l.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_per_state() {
        let usec = monotonic_usec(5_000_123_456);
        assert_eq!(
            message(&[NotifyState::Reloading, NotifyState::Custom(&usec), NotifyState::Status("reloading gen 2 (foreground)")]),
            "RELOADING=1\nMONOTONIC_USEC=5000123\nSTATUS=reloading gen 2 (foreground)\n"
        );
        assert_eq!(message(&[NotifyState::Ready, NotifyState::MainPid(7)]), "READY=1\nMAINPID=7\n");
    }

    #[test]
    fn notify_addresses() {
        assert_eq!(notify_address(OsStr::new("@abc")).unwrap().as_abstract(), Some(&b"abc"[..]));
        assert_eq!(notify_address(OsStr::new("/run/systemd/notify")).unwrap().path(), Some(std::path::Path::new("/run/systemd/notify")));
    }

    #[test]
    fn reads_keys_of_a_datagram() {
        let m = "READY=1\nMAINPID=5967\nSTATUS=Ready.";
        assert!(says(m, "READY"));
        assert!(!says(m, "RELOADING"));
        assert!(!says("NOTREADY=1", "READY"));
        assert_eq!(value(m, "MAINPID"), Some("5967"));
        assert_eq!(value(m, "STATUS"), Some("Ready."));
    }
}
