//! The listening sockets the wrapper keeps open for the service, so that no connection is refused
//! while no haproxy accepts: a crash of haproxy or of its master, a restart of the wrapper or of
//! the service. A kernel queues new connections on a listening socket that is open, whoever holds
//! it; they wait (a delay, not a refusal) until a haproxy accepts from it again.
//!
//! - What haproxy listens on: the sockets among its descriptors that accept (TCP in LISTEN, unix
//!   stream sockets with a path) or receive datagrams unconnected (UDP outside the ephemeral
//!   port range: QUIC), read from /proc.
//! - Copies taken with pidfd_getfd(2) (the wrapper is haproxy's parent or grandparent), kept in
//!   step with the serving generation after each start and reload (`Held::sync`): a listener the
//!   configuration no longer has is closed at once, or clients would wait on a socket nobody
//!   accepts from.
//! - Each one in systemd's file-descriptor store (`FDSTORE=1`, named `FD_PREFIX` + its inode, so
//!   that one can be removed alone), so that it outlives the wrapper: systemd hands the store back
//!   in `LISTEN_FDS` when it starts the service again (`Held::from_systemd`).
//! - Handed to a haproxy that starts with no haproxy to take over from (`Handover`): `-x
//!   sockpair@N`, haproxy's own `_getsocks` exchange (haproxy's src/sock.c `sock_get_old_sockets`),
//!   served by the wrapper. haproxy matches each socket to a `bind` line by address and closes
//!   the ones it does not use.

use std::ffi::OsString;
use std::io::{self, BufRead};
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::socket::{self, sockopt, ControlMessage, ControlMessageOwned, MsgFlags};
use nix::sys::time::TimeVal;

use crate::notify::{Stored, Systemd};
use crate::procs;

/// The name of a held socket in systemd's store: this, then the socket's inode.
pub const FD_PREFIX: &str = "haproxy-listener-";

/// haproxy receives at most this many descriptors per message (its MAX_SEND_FD).
const MAX_SEND_FD: usize = 253;

/// How long one step of the `_getsocks` exchange may take (haproxy's own timeout on its side).
const EXCHANGE_TIMEOUT_S: i64 = 1;

/// One listening socket the wrapper holds.
#[derive(Debug)]
struct Socket {
    fd: OwnedFd,
    inode: u64,
    /// "tcp 127.0.0.1:80", "unix /run/haproxy/admin.sock", for the log.
    what: String,
    /// In systemd's store (or no store to put it in).
    stored: bool,
    /// TCP with SO_REUSEPORT: listened on again while haproxy's master pauses it (`relisten`).
    pausable: bool,
    /// Not listening when the reload in progress began (an administrator's pause: SIGTTOU or
    /// `disable frontend`), or paused by one since: left as haproxy has it.
    left_paused: bool,
}

/// The listening sockets the wrapper holds.
#[derive(Debug, Default)]
pub struct Held {
    sockets: Vec<Socket>,
}

/// What one `Held::sync` changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Synced {
    pub added: Vec<String>,
    pub closed: Vec<String>,
    pub kept: usize,
    /// What could not be copied or read, for a warning.
    pub problems: Vec<String>,
    /// How sockets were taken otherwise, for the log.
    pub notes: Vec<String>,
}

/// The inode of an open descriptor.
fn inode_of(fd: RawFd) -> io::Result<u64> {
    // st_ino is 32 bits on some targets.
    #[allow(clippy::unnecessary_cast)]
    nix::sys::stat::fstat(fd)
        .map(|st| st.st_ino as u64)
        .map_err(io::Error::from)
}

/// Whether haproxy's pause of this socket may be undone by listening on it again: TCP (a pause
/// disconnects it, `connect(AF_UNSPEC)`) with SO_REUSEPORT. Without SO_REUSEPORT, freeing the
/// address may be what the pause is for (a new socket of haproxy's binds it): left alone.
fn pausable(fd: RawFd) -> bool {
    use nix::sys::socket::SockaddrLike;
    let tcp = matches!(socket::getsockopt(fd, sockopt::SockType), Ok(socket::SockType::Stream))
        && matches!(
            socket::getsockname::<socket::SockaddrStorage>(fd)
                .ok()
                .and_then(|a| a.family()),
            Some(socket::AddressFamily::Inet) | Some(socket::AddressFamily::Inet6)
        );
    tcp && socket::getsockopt(fd, sockopt::ReusePort).unwrap_or(false)
}

/// Which of `fds` hang up (POLLHUP, a TCP socket that no longer listens), at once.
fn hung_up(fds: &[RawFd]) -> Vec<RawFd> {
    let mut polled: Vec<PollFd> = fds.iter().map(|&fd| PollFd::new(fd, PollFlags::empty())).collect();
    if poll(&mut polled, 0).is_err() {
        return Vec::new();
    }
    polled
        .iter()
        .zip(fds)
        .filter(|(p, _)| p.revents().map_or(false, |r| r.contains(PollFlags::POLLHUP)))
        .map(|(_, &fd)| fd)
        .collect()
}

/// What the sockets with these inodes are, as this process's network namespace lists them
/// ("tcp 127.0.0.1:80", "unix /run/haproxy/admin.sock"); "socket N" for one it does not list
/// (not listening now).
fn describe(inodes: &[u64]) -> Vec<String> {
    let listening = listening_in(std::process::id() as i32);
    inodes
        .iter()
        .map(|inode| {
            listening
                .iter()
                .find(|(i, _)| i == inode)
                .map_or_else(|| format!("socket {}", inode), |(_, what)| what.clone())
        })
        .collect()
}

/// The listening unix stream sockets with a path in a /proc/net/unix table (the `__SO_ACCEPTCON`
/// flag; abstract ones, `@name`, cannot be handed over): inode and path.
pub fn read_unix_listeners<R: BufRead>(table: R) -> Vec<(u64, String)> {
    const ACCEPTCON: u32 = 0x0001_0000;
    let mut out = Vec::new();
    for line in table.lines().skip(1).flatten() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (flags, inode, path) = match (fields.get(3), fields.get(6), fields.get(7)) {
            (Some(f), Some(i), Some(p)) => (f, i, p),
            _ => continue,
        };
        let accepts = u32::from_str_radix(flags, 16).map_or(false, |f| f & ACCEPTCON != 0);
        if let (true, Ok(inode), false) = (accepts, inode.parse(), path.starts_with('@')) {
            out.push((inode, path.to_string()));
        }
    }
    out
}

/// Every listening socket of `pid`'s network namespace: inode and what it is.
fn listening_in(pid: i32) -> Vec<(u64, String)> {
    let mut out: Vec<(u64, String)> = procs::listeners(pid)
        .into_iter()
        .map(|l| (l.inode, format!("tcp {}", l.addr)))
        .collect();
    out.extend(
        procs::udp_listeners(pid)
            .into_iter()
            .map(|(inode, addr)| (inode, format!("udp {}", addr))),
    );
    if let Ok(file) = std::fs::File::open(format!("/proc/{}/net/unix", pid)) {
        out.extend(
            read_unix_listeners(io::BufReader::new(file))
                .into_iter()
                .map(|(inode, path)| (inode, format!("unix {}", bound_path(&path)))),
        );
    }
    out
}

/// A copy of descriptor `fd` of process `pid` (pidfd_getfd(2), Linux >= 5.6: nix has no wrapper),
/// close-on-exec.
fn copy_fd(pid: i32, fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain system calls with integer arguments; each returned descriptor is new and
    // owned by nothing else.
    unsafe {
        let pidfd = nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0);
        if pidfd < 0 {
            return Err(io::Error::last_os_error());
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as RawFd);
        let copy = nix::libc::syscall(nix::libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
        if copy < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(copy as RawFd))
    }
}

impl Held {
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// The sockets systemd handed back (`LISTEN_FDS`, names in `LISTEN_FDNAMES`) that are ours
    /// (named `FD_PREFIX`...): what the service listened on before systemd started it again.
    /// Others are closed, with a line each in the returned notes. The variables are removed, so
    /// that no haproxy inherits them.
    pub fn from_systemd() -> (Held, Vec<String>) {
        let mut notes = Vec::new();
        let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
            .map(|v| v.split(':').map(str::to_string).collect())
            .unwrap_or_default();
        std::env::remove_var("LISTEN_FDNAMES");
        // sd-notify checks LISTEN_PID, marks them close-on-exec and removes the variables.
        let fds: Vec<RawFd> = match sd_notify::listen_fds() {
            Ok(fds) => fds.collect(),
            Err(e) => {
                notes.push(format!("descriptors from systemd unusable: {}", e));
                Vec::new()
            }
        };
        let mut held = Held::default();
        for (i, fd) in fds.into_iter().enumerate() {
            // SAFETY: systemd passed these descriptors to this process; nothing else owns them.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            let name = names.get(i).map(String::as_str).unwrap_or("");
            match (name.strip_prefix(FD_PREFIX), inode_of(fd)) {
                (Some(_), Ok(inode)) => held.sockets.push(Socket {
                    what: String::new(),
                    pausable: pausable(fd),
                    fd: owned,
                    inode,
                    stored: true,
                    left_paused: false,
                }),
                (_, inode) => {
                    notes.push(format!(
                        "descriptor {} from systemd ({:?}{}) is not a listener of ours: closed",
                        fd,
                        name,
                        inode.err().map(|e| format!(", {}", e)).unwrap_or_default()
                    ));
                }
            }
        }
        held.describe();
        (held, notes)
    }

    fn describe(&mut self) {
        let inodes: Vec<u64> = self.sockets.iter().map(|s| s.inode).collect();
        for (socket, what) in self.sockets.iter_mut().zip(describe(&inodes)) {
            socket.what = what;
        }
    }

    /// The held sockets as carried across the re-exec: descriptor, inode, stored.
    pub fn carry(&self) -> Vec<(RawFd, u64, bool)> {
        self.sockets
            .iter()
            .map(|s| (s.fd.as_raw_fd(), s.inode, s.stored))
            .collect()
    }

    /// The held sockets back after the re-exec; a descriptor that is not the socket it was is
    /// left alone (returned as a note).
    pub fn from_carried(carried: &[(RawFd, u64, bool)], left_paused: &[u64]) -> (Held, Vec<String>) {
        let mut held = Held::default();
        let mut notes = Vec::new();
        for &(fd, inode, stored) in carried {
            match inode_of(fd) {
                Ok(found) if found == inode => held.sockets.push(Socket {
                    pausable: pausable(fd),
                    // SAFETY: the previous image held this descriptor and carried it to us alone.
                    fd: unsafe { OwnedFd::from_raw_fd(fd) },
                    inode,
                    what: String::new(),
                    stored,
                    left_paused: left_paused.contains(&inode),
                }),
                Ok(found) => notes.push(format!(
                    "carried listener fd {} is inode {}, not {}: not held",
                    fd, found, inode
                )),
                Err(e) => notes.push(format!("carried listener fd {}: {}", fd, e)),
            }
        }
        // Described when the log needs it (`summary`, `sync`): not on the reload's path.
        (held, notes)
    }

    /// "tcp 127.0.0.1:80, unix /run/haproxy/admin.sock", for the log.
    pub fn summary(&mut self) -> String {
        if self.sockets.iter().any(|s| s.what.is_empty()) {
            self.describe();
        }
        self.sockets
            .iter()
            .map(|s| s.what.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Holds what the serving generation (`pids`: the processes that accept) listens on, and
    /// only that: copies of its listeners not held yet (put in systemd's store), the held ones
    /// it no longer has closed (and removed from the store). Nothing is closed when the
    /// generation's descriptors cannot be read at all.
    pub fn sync(&mut self, pids: &[i32], systemd: &mut Systemd) -> Synced {
        let mut out = Synced::default();
        let first = match pids.first() {
            Some(&pid) => pid,
            None => return out,
        };
        let listening = listening_in(first);
        // inode → (what, pid, fd number to copy it from)
        let mut wanted: Vec<(u64, String, i32, i32)> = Vec::new();
        let mut readable = false;
        for &pid in pids {
            let fds = match procs::read_socket_fds(pid) {
                Ok(fds) => fds,
                Err(e) => {
                    out.problems
                        .push(format!("cannot read the descriptors of pid {}: {}", pid, e));
                    continue;
                }
            };
            readable = true;
            for (fd, inode) in fds {
                if wanted.iter().any(|w| w.0 == inode) {
                    continue;
                }
                if let Some((_, what)) = listening.iter().find(|(i, _)| *i == inode) {
                    wanted.push((inode, what.clone(), pid, fd));
                }
            }
        }
        if !readable {
            out.kept = self.sockets.len();
            return out;
        }
        let before = std::mem::take(&mut self.sockets);
        for mut socket in before {
            if let Some(w) = wanted.iter().find(|w| w.0 == socket.inode) {
                if socket.what.is_empty() {
                    socket.what = w.1.clone();
                }
                self.sockets.push(socket);
            } else {
                if socket.stored {
                    systemd.remove_stored(&format!("{}{}", FD_PREFIX, socket.inode));
                }
                out.closed.push(if socket.what.is_empty() {
                    format!("socket {}", socket.inode)
                } else {
                    socket.what
                });
            }
        }
        out.kept = self.sockets.len();
        // Where pidfd_getfd(2) is refused (a container's seccomp filter, no CAP_SYS_PTRACE over a
        // haproxy that changed user), haproxy's own stats sockets may hand the sockets out
        // (`expose-fd listeners`): asked once, and only then.
        let mut from_haproxy: Option<Vec<(u64, OwnedFd)>> = None;
        for (inode, what, pid, fd) in wanted.iter().cloned() {
            if self.sockets.iter().any(|s| s.inode == inode) {
                continue;
            }
            let copy = match copy_fd(pid, fd) {
                Ok(copy) => copy,
                Err(e) => {
                    let offered = from_haproxy.get_or_insert_with(|| {
                        let paths: Vec<&str> = wanted.iter().filter_map(|w| w.1.strip_prefix("unix ")).collect();
                        ask_haproxy(&paths, &mut out.problems)
                    });
                    match offered.iter().position(|(i, _)| *i == inode) {
                        Some(at) => {
                            out.notes.push(format!(
                                "pidfd_getfd of pid {} fd {}: {}; {} came from haproxy's stats socket instead",
                                pid, fd, e, what
                            ));
                            offered.swap_remove(at).1
                        }
                        None => {
                            out.problems.push(format!(
                                "cannot copy {} from pid {} (fd {}): {}; no stats socket with \"expose-fd listeners\" offered it",
                                what, pid, fd, e
                            ));
                            continue;
                        }
                    }
                }
            };
            // The descriptor number may have been reused since /proc was read.
            if inode_of(copy.as_raw_fd()).ok() != Some(inode) {
                out.problems
                    .push(format!("{}: pid {} fd {} changed while it was copied", what, pid, fd));
                continue;
            }
            let mut socket = Socket {
                pausable: pausable(copy.as_raw_fd()),
                fd: copy,
                inode,
                what: what.clone(),
                stored: false,
                left_paused: false,
            };
            socket.stored = store(systemd, &socket, &mut out.problems);
            self.sockets.push(socket);
            out.added.push(what);
        }
        out
    }

    /// Puts the held sockets systemd's store could not take before (its socket was full) there now.
    pub fn store_pending(&mut self, systemd: &mut Systemd) -> Vec<String> {
        let mut problems = Vec::new();
        for socket in self.sockets.iter_mut().filter(|s| !s.stored) {
            socket.stored = store(systemd, socket, &mut problems);
        }
        problems
    }

    /// Some held socket waits to go to systemd's store.
    pub fn unstored(&self) -> bool {
        self.sockets.iter().any(|s| !s.stored)
    }

    /// The inodes of the sockets left paused, as carried across the re-exec.
    pub fn left_paused(&self) -> Vec<u64> {
        self.sockets.iter().filter(|s| s.left_paused).map(|s| s.inode).collect()
    }

    /// A reload begins whose haproxy may pause the serving listeners (`relisten`): the ones not
    /// listening now were paused by an administrator and stay so. Returns how many.
    pub fn note_paused(&mut self) -> usize {
        let fds: Vec<RawFd> = self
            .sockets
            .iter()
            .filter(|s| s.pausable)
            .map(|s| s.fd.as_raw_fd())
            .collect();
        let paused = hung_up(&fds);
        for socket in self.sockets.iter_mut() {
            socket.left_paused = paused.contains(&socket.fd.as_raw_fd());
        }
        paused.len()
    }

    /// An administrator pauses haproxy's listeners (SIGTTOU): the wrapper leaves them paused.
    pub fn leave_paused(&mut self) {
        for socket in self.sockets.iter_mut() {
            socket.left_paused = true;
        }
    }

    /// The reload is over: haproxy resumed what it paused (or the new generation listens).
    pub fn forget_paused(&mut self) {
        for socket in self.sockets.iter_mut() {
            socket.left_paused = false;
        }
    }

    /// The sockets to watch while haproxy's master may pause them: each hangs up (POLLHUP) when
    /// paused, and `relisten` then listens on it again.
    pub fn pausable_fds(&self) -> Vec<RawFd> {
        self.sockets
            .iter()
            .filter(|s| s.pausable && !s.left_paused)
            .map(|s| s.fd.as_raw_fd())
            .collect()
    }

    /// haproxy's master paused these sockets (the ones of `fds` that hang up) while it retries a bind that failed: the pause
    /// disconnects the socket itself (every holder's), and the kernel refuses connections until
    /// haproxy resumes it (SIGTTIN, about 2 s later). Listening on it again makes the kernel queue
    /// them instead; the paused workers take them when they resume, a new worker when the
    /// reload succeeds. The backlog is the kernel's most (net.core.somaxconn) until haproxy's own
    /// `listen` sets it again. Returns what listens again, and what could not (left paused).
    pub fn relisten(&mut self, fds: &[RawFd]) -> (Vec<String>, Vec<String>) {
        let (mut again, mut problems) = (Vec::new(), Vec::new());
        let mut listening = Vec::new();
        let paused = hung_up(fds);
        for socket in self.sockets.iter_mut().filter(|s| fds.contains(&s.fd.as_raw_fd())) {
            if !paused.contains(&socket.fd.as_raw_fd()) {
                // Another event (POLLERR): not a pause; no longer watched in this reload.
                socket.left_paused = true;
                continue;
            }
            match socket::listen(socket.fd.as_raw_fd(), i32::MAX as usize) {
                Ok(()) => listening.push(socket.inode),
                Err(e) => {
                    socket.left_paused = true;
                    problems.push(format!("cannot listen on socket {} again: {}", socket.inode, e));
                }
            }
        }
        // Named once they listen again (a paused socket is not in the kernel's list of listeners).
        if self.sockets.iter().any(|s| s.what.is_empty()) && !listening.is_empty() {
            self.describe();
        }
        for socket in self.sockets.iter().filter(|s| listening.contains(&s.inode)) {
            again.push(socket.what.clone());
        }
        (again, problems)
    }
}

/// The path a unix listener was bound to, as it is named now: haproxy binds `PATH.PID.tmp` and
/// renames it over PATH, and /proc/net/unix keeps the first name.
pub fn bound_path(listed: &str) -> &str {
    if let Some(rest) = listed.strip_suffix(".tmp") {
        if let Some((path, pid)) = rest.rsplit_once('.') {
            if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) {
                return path;
            }
        }
    }
    listed
}

/// haproxy's listening sockets as its stats sockets hand them out (`_getsocks`, which needs
/// `expose-fd listeners`), with their inodes: from the first of `paths` that answers.
fn ask_haproxy(paths: &[&str], problems: &mut Vec<String>) -> Vec<(u64, OwnedFd)> {
    let mut why = Vec::new();
    for listed in paths {
        let path = bound_path(listed);
        match fetch_sockets(path) {
            Ok(fds) => {
                return fds
                    .into_iter()
                    .filter_map(|fd| Some((inode_of(fd.as_raw_fd()).ok()?, fd)))
                    .collect()
            }
            Err(e) => why.push(format!("{}: {}", path, e)),
        }
    }
    if !why.is_empty() {
        problems.push(format!("no stats socket handed the listeners out ({})", why.join("; ")));
    }
    Vec::new()
}

/// The client side of haproxy's `_getsocks` (what `haproxy -x` does): the count, then batches of
/// descriptors, each acknowledged.
fn fetch_sockets(path: &str) -> Result<Vec<OwnedFd>, String> {
    use std::io::Write;
    let stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| e.to_string())?;
    let c = stream.as_raw_fd();
    timeouts(c).map_err(|e| e.to_string())?;
    (&stream).write_all(b"_getsocks\n").map_err(|e| e.to_string())?;
    let mut count = [0u8; 4];
    match socket::recv(c, &mut count, MsgFlags::MSG_WAITALL) {
        Ok(4) => {}
        Ok(n) => return Err(format!("{} bytes instead of a count", n)),
        Err(e) => return Err(e.to_string()),
    }
    let count = i32::from_ne_bytes(count);
    if !(1..=65536).contains(&count) {
        return Err(format!("no sockets offered (count {})", count));
    }
    let mut got: Vec<OwnedFd> = Vec::new();
    let mut buf = vec![0u8; MAX_SEND_FD * (1 + 255 + 1 + 16 + 4)];
    while got.len() < count as usize {
        let mut space = nix::cmsg_space!([RawFd; MAX_SEND_FD]);
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let msg = socket::recvmsg::<()>(c, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(|e| e.to_string())?;
        let before = got.len();
        for cmsg in msg.cmsgs() {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                // SAFETY: the kernel just installed these descriptors for us.
                got.extend(fds.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        if msg.bytes == 0 || got.len() == before {
            return Err(format!("{} of {} sockets came", got.len(), count));
        }
        // The acknowledgement haproxy waits for after each full batch (after the last one it may
        // have closed the connection already, as its own receiver expects).
        let _ = socket::send(c, &(got.len() as i32).to_ne_bytes(), MsgFlags::MSG_NOSIGNAL);
    }
    Ok(got)
}

/// Puts one socket in systemd's store; whether it is done with (stored, or no store to put it in).
fn store(systemd: &mut Systemd, socket: &Socket, problems: &mut Vec<String>) -> bool {
    match systemd.store_fd(socket.fd.as_raw_fd(), &format!("{}{}", FD_PREFIX, socket.inode)) {
        Stored::Yes | Stored::NoStore => true,
        Stored::Later => false,
        Stored::Failed(e) => {
            problems.push(format!("cannot put {} in systemd's fd store: {}", socket.what, e));
            true
        }
    }
}

/// The `-x` value and the descriptor a haproxy must inherit for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoverArg {
    pub value: OsString,
    pub fd: RawFd,
}

/// One `-x sockpair@N` hand-over of the held sockets to a haproxy being started: a socketpair
/// whose end N the haproxy inherits. haproxy sends the wrapper one end of a new socketpair over
/// it, asks `_getsocks` there, and receives the sockets.
#[derive(Debug)]
pub struct Handover {
    ours: OwnedFd,
    theirs: Option<OwnedFd>,
}

fn timeouts(fd: RawFd) -> nix::Result<()> {
    let t = TimeVal::new(EXCHANGE_TIMEOUT_S, 0);
    socket::setsockopt(fd, sockopt::ReceiveTimeout, &t)?;
    socket::setsockopt(fd, sockopt::SendTimeout, &t)
}

impl Handover {
    pub fn new() -> nix::Result<Handover> {
        let (a, b) = socket::socketpair(
            socket::AddressFamily::Unix,
            socket::SockType::Stream,
            None,
            socket::SockFlag::SOCK_CLOEXEC,
        )?;
        // SAFETY: both were just returned by socketpair(2) and are owned by nothing else.
        Ok(unsafe {
            Handover {
                ours: OwnedFd::from_raw_fd(a),
                theirs: Some(OwnedFd::from_raw_fd(b)),
            }
        })
    }

    /// What haproxy is given: `-x sockpair@N`, N inherited (the spawn clears its close-on-exec).
    pub fn arg(&self) -> Option<HandoverArg> {
        self.theirs.as_ref().map(|t| HandoverArg {
            value: format!("sockpair@{}", t.as_raw_fd()).into(),
            fd: t.as_raw_fd(),
        })
    }

    /// haproxy was started: the wrapper's copy of its end is closed.
    pub fn started(&mut self) {
        self.theirs = None;
    }

    /// The descriptor to poll: readable when haproxy asks (or closed its end).
    pub fn fd(&self) -> RawFd {
        self.ours.as_raw_fd()
    }

    /// Answers haproxy's `_getsocks` with every held socket; the number sent. Blocking, each
    /// step bounded by `EXCHANGE_TIMEOUT_S` (the loop calls it once the descriptor is readable).
    pub fn serve(&self, held: &Held) -> Result<usize, String> {
        let mut two = [0u8; 2];
        let mut space = nix::cmsg_space!(RawFd);
        let mut iov = [io::IoSliceMut::new(&mut two)];
        let msg = socket::recvmsg::<()>(
            self.ours.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
        )
        .map_err(|e| format!("reading the hand-over socket: {}", e))?;
        let mut conversation = None;
        for cmsg in msg.cmsgs() {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                for fd in fds {
                    // SAFETY: the kernel just installed this descriptor for us.
                    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                    conversation.get_or_insert(owned);
                }
            }
        }
        let conversation = match (conversation, msg.bytes) {
            (Some(c), _) => c,
            (None, 0) => return Err("haproxy closed the hand-over socket without asking for the sockets".into()),
            (None, _) => return Err("haproxy sent no socket to talk over".into()),
        };
        let c = conversation.as_raw_fd();
        timeouts(c).map_err(|e| format!("hand-over timeouts: {}", e))?;
        let mut request = Vec::new();
        while !request.ends_with(b"\n") && request.len() < 64 {
            let mut buf = [0u8; 64];
            match socket::recv(c, &mut buf[..64 - request.len()], MsgFlags::empty()) {
                Ok(0) => break,
                Ok(n) => request.extend_from_slice(&buf[..n]),
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(format!("reading haproxy's request: {}", e)),
            }
        }
        if request != b"_getsocks\n" {
            return Err(format!(
                "haproxy asked {:?}, not _getsocks",
                String::from_utf8_lossy(&request)
            ));
        }
        let send_all = |bytes: &[u8], fds: &[RawFd]| -> Result<(), String> {
            let cmsgs: Vec<ControlMessage> = if fds.is_empty() {
                vec![]
            } else {
                vec![ControlMessage::ScmRights(fds)]
            };
            let sent = socket::sendmsg::<()>(c, &[io::IoSlice::new(bytes)], &cmsgs, MsgFlags::MSG_NOSIGNAL, None)
                .map_err(|e| format!("sending the sockets: {}", e))?;
            if sent != bytes.len() {
                return Err(format!("sent {} of {} bytes", sent, bytes.len()));
            }
            Ok(())
        };
        let count = held.sockets.len() as i32;
        send_all(&count.to_ne_bytes(), &[])?;
        for batch in held.sockets.chunks(MAX_SEND_FD) {
            // Per socket: namespace name length and name (none: the wrapper cannot tell a
            // `namespace` bind's), interface length and name, 4 bytes that once were options.
            let mut payload = Vec::new();
            for s in batch {
                payload.push(0u8);
                let iface = socket::getsockopt(s.fd.as_raw_fd(), sockopt::BindToDevice).unwrap_or_default();
                let iface = iface.to_str().unwrap_or("").trim_end_matches('\0').as_bytes().to_vec();
                payload.push(iface.len().min(255) as u8);
                payload.extend_from_slice(&iface[..iface.len().min(255)]);
                payload.extend_from_slice(&[0u8; 4]);
            }
            let fds: Vec<RawFd> = batch.iter().map(|s| s.fd.as_raw_fd()).collect();
            send_all(&payload, &fds)?;
            let mut ack = [0u8; 4];
            match socket::recv(c, &mut ack, MsgFlags::MSG_WAITALL) {
                Ok(4) => {}
                Ok(n) => return Err(format!("haproxy's acknowledgement was {} bytes", n)),
                Err(e) => return Err(format!("waiting for haproxy's acknowledgement: {}", e)),
            }
        }
        Ok(held.sockets.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_listeners_are_unconnected_and_outside_the_ephemeral_range() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
  1: 00000000:01BB 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 501 2 0000000000000000 0\n\
  2: 0100007F:9C40 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 502 2 0000000000000000 0\n\
  3: 0100007F:1F90 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 503 2 0000000000000000 0\n\
  garbage\n";
        let found = procs::read_udp_listeners(table.as_bytes(), (32768, 60999));
        assert_eq!(found, vec![(501, "0.0.0.0:443".parse().unwrap())]);
        // A port inside the range is a client's.
        assert_eq!(
            procs::read_udp_listeners(table.as_bytes(), (400, 500)),
            vec![(502, "127.0.0.1:40000".parse().unwrap())]
        );
    }

    #[test]
    fn a_unix_listener_is_named_as_haproxy_renamed_it() {
        assert_eq!(bound_path("/run/haproxy/admin.sock.338.tmp"), "/run/haproxy/admin.sock");
        assert_eq!(bound_path("/run/haproxy/admin.sock"), "/run/haproxy/admin.sock");
        assert_eq!(bound_path("/run/a.tmp"), "/run/a.tmp");
        assert_eq!(bound_path("/run/a.x.tmp"), "/run/a.x.tmp");
    }

    #[test]
    fn unix_listeners_accept_and_have_a_path() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
0000000000000000: 00000002 00000000 00010000 0001 01 601 /run/haproxy/admin.sock\n\
0000000000000000: 00000002 00000000 00000000 0001 03 602 /run/haproxy/admin.sock\n\
0000000000000000: 00000002 00000000 00010000 0001 01 603 @abstract\n\
0000000000000000: 00000002 00000000 00010000 0001 01 604\n";
        assert_eq!(
            read_unix_listeners(table.as_bytes()),
            vec![(601, "/run/haproxy/admin.sock".to_string())]
        );
    }

    #[test]
    fn held_sockets_are_copied_from_a_process_and_closed_when_it_no_longer_listens() {
        use std::os::unix::process::CommandExt;
        // The "serving generation": a process that inherited a listener, which the test then closes.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let fd = listener.as_raw_fd();
        let mut serving = std::process::Command::new("sleep");
        serving.arg("60");
        // SAFETY: fcntl is async-signal-safe; it clears close-on-exec in the child only.
        unsafe {
            serving.pre_exec(move || {
                nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()))
                    .map(|_| ())
                    .map_err(io::Error::from)
            });
        }
        let mut serving = serving.spawn().unwrap();
        let mut other = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        drop(listener);
        let pid = serving.id() as i32;
        let mut systemd = Systemd::disabled();
        let mut held = Held::default();
        let synced = held.sync(&[pid], &mut systemd);
        assert_eq!(
            synced.added,
            vec![format!("tcp {}", addr)],
            "problems: {:?}",
            synced.problems
        );
        let again = held.sync(&[pid], &mut systemd);
        assert_eq!((again.added.len(), again.kept), (0, 1), "{:?}", again);
        // Only the wrapper's copy is left: a connection still completes (queued on it).
        serving.kill().unwrap();
        serving.wait().unwrap();
        assert!(
            std::net::TcpStream::connect(addr).is_ok(),
            "the held copy keeps {} listening",
            addr
        );
        // A generation that does not listen there: the copy is closed, the address refuses.
        let after = held.sync(&[other.id() as i32], &mut systemd);
        assert_eq!(after.closed, vec![format!("tcp {}", addr)], "{:?}", after);
        assert!(held.is_empty());
        let refused = std::net::TcpStream::connect(addr).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        other.kill().unwrap();
        other.wait().unwrap();
    }

    /// A TCP listener, with SO_REUSEPORT as haproxy binds by default or without, on 127.0.0.1.
    fn reuseport_listener(reuseport: bool) -> (OwnedFd, std::net::SocketAddr) {
        use nix::libc;
        use socket::{AddressFamily, SockFlag, SockType};
        let fd = socket::socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
        // SAFETY: a new descriptor, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        socket::setsockopt(fd.as_raw_fd(), sockopt::ReusePort, &reuseport).unwrap();
        // A port named, as haproxy's are: a socket bound to port 0 loses its port when paused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // nix's SockaddrIn needs its "net" feature, which the program does not: libc's.
        let mut sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
            },
            sin_zero: [0; 8],
        };
        let mut len = std::mem::size_of_val(&sin) as libc::socklen_t;
        // SAFETY: bind(2) and getsockname(2) with a sockaddr_in of the size given.
        unsafe {
            assert_eq!(
                libc::bind(fd.as_raw_fd(), &sin as *const _ as *const libc::sockaddr, len),
                0
            );
            assert_eq!(
                libc::getsockname(fd.as_raw_fd(), &mut sin as *mut _ as *mut libc::sockaddr, &mut len),
                0
            );
        }
        socket::listen(fd.as_raw_fd(), 16).unwrap();
        (
            fd,
            std::net::SocketAddr::from(([127, 0, 0, 1], u16::from_be(sin.sin_port))),
        )
    }

    /// haproxy's pause of a TCP listener (its tcp_suspend_receiver): disconnect the socket.
    fn pause(fd: RawFd) {
        let sa = nix::libc::sockaddr {
            sa_family: nix::libc::AF_UNSPEC as nix::libc::sa_family_t,
            sa_data: [0; 14],
        };
        // SAFETY: connect(2) with a valid address of the size given.
        let rc = unsafe { nix::libc::connect(fd, &sa, std::mem::size_of_val(&sa) as nix::libc::socklen_t) };
        assert_eq!(rc, 0, "connect(AF_UNSPEC): {}", io::Error::last_os_error());
    }

    fn held_copy(fd: &OwnedFd, left_paused: &[u64]) -> Held {
        // Close-on-exec: tests in other threads start processes.
        let copy = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(0)).unwrap();
        let inode = inode_of(copy).unwrap();
        let (held, notes) = Held::from_carried(&[(copy, inode, true)], left_paused);
        assert!(notes.is_empty(), "{:?}", notes);
        held
    }

    #[test]
    fn a_paused_listener_listens_again_from_the_held_copy_unless_an_administrator_paused_it() {
        let (haproxys, addr) = reuseport_listener(true);
        let mut held = held_copy(&haproxys, &[]);
        let watched = held.pausable_fds();
        assert_eq!(watched.len(), 1);
        assert!(hung_up(&watched).is_empty(), "a listening socket does not hang up");
        pause(haproxys.as_raw_fd());
        assert_eq!(hung_up(&watched), watched, "a paused socket hangs up");
        let refused = std::net::TcpStream::connect(addr).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        let (again, problems) = held.relisten(&watched);
        assert_eq!((again, problems), (vec![format!("tcp {}", addr)], vec![]));
        // The kernel queues the connection on the shared socket: haproxy's fd, resumed, takes it.
        let _queued = std::net::TcpStream::connect(addr).expect("queued on the socket listening again");
        assert!(socket::accept(haproxys.as_raw_fd()).is_ok());
        // Not listening when the reload began (SIGTTOU, "disable frontend"): left paused.
        pause(haproxys.as_raw_fd());
        assert_eq!(held.note_paused(), 1);
        assert!(held.pausable_fds().is_empty());
        assert_eq!(held.left_paused().len(), 1);
        held.forget_paused();
        assert_eq!(held.pausable_fds(), watched);
        // Carried across the re-exec.
        let inode = inode_of(haproxys.as_raw_fd()).unwrap();
        assert!(held_copy(&haproxys, &[inode]).pausable_fds().is_empty());
        held.leave_paused();
        assert!(held.pausable_fds().is_empty());
    }

    #[test]
    fn listeners_without_reuseport_and_unix_ones_are_never_listened_on_again() {
        let (plain, _) = reuseport_listener(false);
        assert!(held_copy(&plain, &[]).pausable_fds().is_empty());
        let dir = std::env::temp_dir().join(format!("hsw-listeners-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let unix = std::os::unix::net::UnixListener::bind(&dir).unwrap();
        let fd: OwnedFd = unix.into();
        assert!(held_copy(&fd, &[]).pausable_fds().is_empty());
        let _ = std::fs::remove_file(&dir);
    }
}
