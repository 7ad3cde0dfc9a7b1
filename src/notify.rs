//! All sd_notify traffic: the wrapper's messages to systemd (formatted by the sd-notify crate,
//! sent over one socket of our own, see `Systemd`), the watchdog interval systemd asks for, and
//! the private socket on which the haproxy master (master-worker mode) reports to the wrapper.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::sys::socket::{self, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr};

use sd_notify::NotifyState;

/// How often messages systemd's socket had no room for are tried again.
pub const RETRY_EVERY: Duration = Duration::from_millis(100);
/// How long a message is tried again before it is given up (with an error in the log).
const RETRY_FOR: Duration = Duration::from_secs(60);
/// How many state messages (READY=1, RELOADING=1, STOPPING=1) wait at most; older ones are given up.
const MAX_PENDING: usize = 32;

/// The wrapper's messages to systemd. Without NOTIFY_SOCKET (unset or empty) they are skipped.
///
/// Sent over one socket opened at start, not with `sd_notify::notify`: sd-notify 0.4.2 (the last
/// release that builds with rustc 1.63) opens a new blocking socket for every message (the
/// descriptor count flickers, and a full NOTIFY_SOCKET would block the event loop), and it does
/// not reach an abstract `@name` NOTIFY_SOCKET. The crate formats the messages.
///
/// Sending never blocks the loop: the socket is non-blocking. When systemd's socket is full
/// (nobody reads it), the message waits and the loop tries again every `RETRY_EVERY` (see
/// `next_retry_ns`, `flush`), in order: a READY=1, RELOADING=1 or STOPPING=1 is kept (at most
/// `MAX_PENDING`, for at most `RETRY_FOR`), a STATUS= or WATCHDOG=1 only until a newer one
/// replaces it. The first full socket is logged once.
pub struct Systemd {
    target: Option<(OwnedFd, UnixAddr)>,
    last_status: String,
    /// Messages systemd's socket had no room for, oldest first.
    pending: VecDeque<Pending>,
    next_retry_ns: Option<u64>,
    warned_full: bool,
}

/// What became of a descriptor sent to systemd's store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    Yes,
    /// No NOTIFY_SOCKET: no store to put it in.
    NoStore,
    /// systemd's socket is full: try again later.
    Later,
    Failed(String),
}

/// What a message is, for what may replace it while it waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// READY=1, RELOADING=1, STOPPING=1: never replaced, never dropped silently.
    State,
    /// Only STATUS=: a newer one replaces it.
    Status,
    Watchdog,
}

#[derive(Debug)]
struct Pending {
    text: String,
    kind: Kind,
    since_ns: u64,
}

/// NOTIFY_SOCKET's address: a path, or `@name` in the abstract namespace.
fn notify_address(value: &OsStr) -> nix::Result<UnixAddr> {
    match value.as_bytes().strip_prefix(b"@") {
        Some(name) => UnixAddr::new_abstract(name),
        None => UnixAddr::new(value),
    }
}

/// NOTIFY_SOCKET as systemd means it: an empty value is the same as none.
fn notify_socket_value(value: Option<std::ffi::OsString>) -> Option<std::ffi::OsString> {
    value.filter(|v| !v.is_empty())
}

/// Queues `text` behind what already waits: a STATUS= or WATCHDOG=1 replaces the waiting one of
/// its kind; state messages beyond `MAX_PENDING` push the oldest out (returned, to be logged).
fn enqueue(pending: &mut VecDeque<Pending>, text: String, kind: Kind, now_ns: u64) -> Option<Pending> {
    if kind != Kind::State {
        pending.retain(|p| p.kind != kind);
    }
    pending.push_back(Pending {
        text,
        kind,
        since_ns: now_ns,
    });
    if pending.iter().filter(|p| p.kind == Kind::State).count() > MAX_PENDING {
        let oldest = pending.iter().position(|p| p.kind == Kind::State)?;
        return pending.remove(oldest);
    }
    None
}

/// A unix datagram socket of the wrapper's own (close-on-exec, non-blocking).
fn datagram_socket() -> nix::Result<OwnedFd> {
    let raw = socket::socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    // SAFETY: `raw` was just returned by socket(2) and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

impl Systemd {
    pub fn new() -> Systemd {
        let target = notify_socket_value(std::env::var_os("NOTIFY_SOCKET")).and_then(|value| {
            let opened = notify_address(&value).and_then(|addr| Ok((datagram_socket()?, addr)));
            match opened {
                Ok(t) => Some(t),
                Err(e) => {
                    warning!("NOTIFY_SOCKET={:?} is unusable: {}", value, e);
                    None
                }
            }
        });
        Systemd {
            target,
            last_status: String::new(),
            pending: VecDeque::new(),
            next_retry_ns: None,
            warned_full: false,
        }
    }

    /// No notify socket: every message is skipped (unit tests).
    #[cfg(test)]
    pub fn disabled() -> Systemd {
        Systemd {
            target: None,
            last_status: String::new(),
            pending: VecDeque::new(),
            next_retry_ns: None,
            warned_full: false,
        }
    }

    /// Puts `fd` in systemd's file-descriptor store as `name`, with `FDPOLL=0`: haproxy pausing a
    /// listener (SIGTTOU, a bind retry) hangs it up for a moment, and systemd would otherwise drop
    /// it from the store then. Never blocks: a full notify socket is `Stored::Later`.
    pub fn store_fd(&mut self, fd: RawFd, name: &str) -> Stored {
        let (sock, addr) = match &self.target {
            Some(t) => t,
            None => return Stored::NoStore,
        };
        let name = format!("FDNAME={}", name);
        let text = message(&[
            NotifyState::Custom("FDSTORE=1"),
            NotifyState::Custom(&name),
            NotifyState::Custom("FDPOLL=0"),
        ]);
        let fds = [fd];
        match socket::sendmsg(
            sock.as_raw_fd(),
            &[std::io::IoSlice::new(text.as_bytes())],
            &[socket::ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            Some(addr),
        ) {
            Ok(_) => Stored::Yes,
            Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => Stored::Later,
            Err(e) => Stored::Failed(e.to_string()),
        }
    }

    /// Removes what the store holds as `name`.
    pub fn remove_stored(&mut self, name: &str) {
        let name = format!("FDNAME={}", name);
        self.send(
            &[NotifyState::Custom("FDSTOREREMOVE=1"), NotifyState::Custom(&name)],
            Kind::State,
        );
    }

    fn send(&mut self, fields: &[NotifyState], kind: Kind) {
        if self.target.is_none() {
            return;
        }
        let now = crate::clock::now_ns();
        if let Some(lost) = enqueue(&mut self.pending, message(fields), kind, now) {
            error!(
                "systemd's notify socket is full: gave up {:?} after {} waiting messages",
                lost.text.trim_end(),
                MAX_PENDING
            );
        }
        self.flush(now);
    }

    /// Sends what waits, oldest first, until systemd's socket is full again. Never blocks.
    pub fn flush(&mut self, now_ns: u64) {
        let (fd, addr) = match &self.target {
            Some(t) => t,
            None => return,
        };
        while let Some(first) = self.pending.front() {
            match socket::sendto(
                fd.as_raw_fd(),
                first.text.as_bytes(),
                addr,
                MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(_) => {}
                Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => {
                    if !self.warned_full {
                        self.warned_full = true;
                        warning!("systemd's notify socket is full (nobody reads it?): messages wait and are tried again every {} ms (warned once)", RETRY_EVERY.as_millis());
                    }
                    break;
                }
                Err(e) => warning!("sd_notify failed: {}", e),
            }
            self.pending.pop_front();
        }
        // Too old to matter any more: given up, loudly for state messages.
        let retry_for = crate::clock::nanos(RETRY_FOR);
        self.pending.retain(|p| {
            let keep = now_ns.saturating_sub(p.since_ns) < retry_for;
            if !keep && p.kind == Kind::State {
                error!(
                    "systemd's notify socket stayed full for {} s: gave up {:?}",
                    RETRY_FOR.as_secs(),
                    p.text.trim_end()
                );
            }
            keep
        });
        self.next_retry_ns = if self.pending.is_empty() {
            None
        } else {
            Some(crate::clock::after(now_ns, RETRY_EVERY))
        };
    }

    /// When the loop should call `flush` again (messages wait), if ever.
    pub fn next_retry_ns(&self) -> Option<u64> {
        self.next_retry_ns
    }

    pub fn ready(&mut self, status: &str) {
        self.last_status = status.to_string();
        self.send(
            &[
                NotifyState::Ready,
                NotifyState::MainPid(std::process::id()),
                NotifyState::Status(status),
            ],
            Kind::State,
        );
    }

    pub fn reloading(&mut self, status: &str) {
        self.last_status = status.to_string();
        // systemd >= 253 wants MONOTONIC_USEC with RELOADING=1 to match the reload to its request
        // (sd-notify 0.4.2 has no variant for it).
        let usec = monotonic_usec(crate::clock::now_ns());
        self.send(
            &[
                NotifyState::Reloading,
                NotifyState::Custom(&usec),
                NotifyState::Status(status),
            ],
            Kind::State,
        );
        // The wrapper re-executes itself right after this: what still waits does not survive it.
        let lost: Vec<&str> = self
            .pending
            .iter()
            .filter(|p| p.kind == Kind::State)
            .map(|p| p.text.lines().next().unwrap_or(""))
            .collect();
        if !lost.is_empty() {
            error!(
                "systemd's notify socket is full: {:?} will be lost at the re-exec",
                lost
            );
        }
    }

    pub fn stopping(&mut self) {
        self.last_status = "stopping".into();
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")], Kind::State);
    }

    /// Sends STATUS= when it changed.
    pub fn status(&mut self, status: &str) {
        if status != self.last_status {
            self.last_status = status.to_string();
            self.send(&[NotifyState::Status(status)], Kind::Status);
        }
    }

    pub fn watchdog(&mut self) {
        self.send(&[NotifyState::Watchdog], Kind::Watchdog);
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

/// How many datagrams of the master's socket one turn of the loop reads at most.
const MAX_RECV: usize = 256;

/// The datagram socket the haproxy master sends its sd_notify messages to.
pub struct MasterSocket {
    fd: OwnedFd,
    pub address: String,
}

impl MasterSocket {
    /// A new socket in the abstract namespace, with SO_PASSCRED so each message carries its sender.
    pub fn bind() -> nix::Result<MasterSocket> {
        let fd = datagram_socket()?;
        let raw = fd.as_raw_fd();
        socket::setsockopt(raw, socket::sockopt::PassCred, &true)?;
        let nonce = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_nsec())
            .unwrap_or(0);
        let name = format!("haproxy-systemd-wrapper/{}/{}", std::process::id(), nonce);
        socket::bind(raw, &UnixAddr::new_abstract(name.as_bytes())?)?;
        Ok(MasterSocket {
            fd,
            address: format!("@{}", name),
        })
    }

    /// Takes back the socket carried across the re-exec.
    pub fn from_fd(raw: RawFd) -> nix::Result<MasterSocket> {
        let addr: UnixAddr = socket::getsockname(raw)?;
        let name = addr
            .as_abstract()
            .map(|b| format!("@{}", String::from_utf8_lossy(b)))
            .ok_or(nix::Error::EINVAL)?;
        // SAFETY: the fd number comes from our own previous image, which owned it; nothing else does now.
        Ok(MasterSocket {
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
            address: name,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The datagrams waiting (at most `MAX_RECV` per call: a flood must not keep the loop from
    /// signals), with the sender's pid (0 when the kernel gave none).
    pub fn recv_all(&self) -> Vec<(i32, String)> {
        let mut out = Vec::new();
        while out.len() < MAX_RECV {
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
    msg.lines()
        .any(|l| l.split_once('=').map_or(false, |(k, v)| k == key && v == "1"))
}

/// The value of `KEY=` in a datagram.
pub fn value<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.lines()
        .find_map(|l| l.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
}

#[cfg(test)]
mod tests;
