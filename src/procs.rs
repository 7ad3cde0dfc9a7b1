//! What the kernel says about processes: parents and children, from /proc; and the wrapper's
//! own program.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use nix::libc;

/// The wrapper's own program file: what /proc/self/exe names (without the " (deleted)" a package
/// upgrade leaves there: the new file has the same name), else argv[0].
pub fn own_program() -> PathBuf {
    match fs::read_link("/proc/self/exe") {
        Ok(p) => match p.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
            Some(stripped) => PathBuf::from(stripped),
            None => p,
        },
        Err(_) => std::env::args_os().next().map(PathBuf::from).unwrap_or_default(),
    }
}

/// The parent pid and state letter from the text of /proc/PID/stat.
pub fn parse_stat(stat: &str) -> Option<(i32, char)> {
    let mut it = after_comm(stat)?.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((ppid, state))
}

/// The fields of /proc/PID/stat after "pid (comm)": comm may hold spaces and parentheses; the
/// last ')' ends it.
fn after_comm(stat: &str) -> Option<&str> {
    Some(&stat[stat.rfind(')')? + 1..])
}

/// A process's start time (field 22 of /proc/PID/stat), None when it is gone: with the pid, it
/// tells a process apart from a later one that reused the pid.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{}/stat", pid)).ok()?;
    // The fields after comm start at field 3 (state).
    after_comm(&stat)?.split_whitespace().nth(19)?.parse().ok()
}

/// Parent pid and state of a live process, None when it is gone.
pub fn stat(pid: i32) -> Option<(i32, char)> {
    parse_stat(&fs::read_to_string(format!("/proc/{}/stat", pid)).ok()?)
}

/// Is `pid` a child of `parent` that has not been reaped? Zombies count: they still hold the pid.
pub fn is_child_of(pid: i32, parent: i32) -> bool {
    matches!(stat(pid), Some((pp, _)) if pp == parent)
}

/// What the walks below read of /proc: the real one, or a failing one in unit tests.
pub trait ProcView {
    /// The names in a directory.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn read(&self, file: &Path) -> io::Result<String>;
}

/// The kernel's /proc.
pub struct Proc;

impl ProcView for Proc {
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn read(&self, file: &Path) -> io::Result<String> {
        fs::read_to_string(file)
    }
}

/// The process (or thread) is gone: what the walk was looking at no longer exists.
fn vanished(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(nix::libc::ENOENT) | Some(nix::libc::ESRCH))
}

/// Parent and state of `pid` as `view` sees it: Ok(None) when it is gone, Err when /proc could
/// not be read (out of descriptors, ...).
fn stat_in(view: &dyn ProcView, pid: i32) -> io::Result<Option<(i32, char)>> {
    match view.read(&Path::new("/proc").join(pid.to_string()).join("stat")) {
        Ok(text) => Ok(parse_stat(&text)),
        Err(e) if vanished(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Live (non-zombie) children of `parent`, in ascending order. An error reading the kernel's
/// view (out of descriptors, ...) is an error, never an empty list: callers decide what an
/// unknown list means. A `parent` that is gone has no children.
pub fn children_of(parent: i32) -> io::Result<Vec<i32>> {
    children_in(&Proc, parent)
}

pub fn children_in(view: &dyn ProcView, parent: i32) -> io::Result<Vec<i32>> {
    let task_dir = Path::new("/proc").join(parent.to_string()).join("task");
    let mut out = Vec::new();
    let from_tasks = match view.list(&task_dir) {
        Ok(tasks) => {
            let mut complete = true;
            for task in tasks {
                match view.read(&task_dir.join(task).join("children")) {
                    Ok(text) => out.extend(text.split_whitespace().filter_map(|p| p.parse::<i32>().ok())),
                    // A thread that ended meanwhile has no children left to tell.
                    Err(e) if vanished(&e) => {}
                    Err(_) => {
                        complete = false;
                        break;
                    }
                }
            }
            complete
        }
        Err(e) if vanished(&e) => return Ok(Vec::new()),
        Err(_) => false,
    };
    if !from_tasks {
        // Kernels without CONFIG_PROC_CHILDREN (or a read that failed): scan every process.
        out.clear();
        for name in view.list(Path::new("/proc"))? {
            if let Ok(pid) = name.parse::<i32>() {
                if let Some((pp, _)) = stat_in(view, pid)? {
                    if pp == parent {
                        out.push(pid);
                    }
                }
            }
        }
    }
    let mut live = Vec::with_capacity(out.len());
    for pid in out {
        if let Some((_, state)) = stat_in(view, pid)? {
            if state != 'Z' {
                live.push(pid);
            }
        }
    }
    live.sort_unstable();
    live.dedup();
    Ok(live)
}

/// Every live process below `root` (children, their children, ...), parents before children;
/// an error when any part of the tree could not be read.
pub fn descendants_of(root: i32) -> io::Result<Vec<i32>> {
    descendants_in(&Proc, root)
}

fn descendants_in(view: &dyn ProcView, root: i32) -> io::Result<Vec<i32>> {
    let mut found = Vec::new();
    let mut next = 0;
    let mut parent = root;
    loop {
        for child in children_in(view, parent)? {
            if !found.contains(&child) {
                found.push(child);
            }
        }
        match found.get(next) {
            Some(&p) => parent = p,
            None => return Ok(found),
        }
        next += 1;
    }
}

/// The signals pending for a process (thread-directed and shared), from the text of
/// /proc/PID/status: bit N-1 stands for signal N.
pub fn parse_pending(status: &str) -> Option<u64> {
    let mask = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    };
    Some(mask("ShdPnd:")? | mask("SigPnd:")?)
}

/// Is `sig` pending for `pid` (sent, not yet handled)? False when it is gone or /proc cannot tell.
pub fn signal_pending(pid: i32, sig: i32) -> bool {
    fs::read_to_string(format!("/proc/{}/status", pid))
        .ok()
        .and_then(|s| parse_pending(&s))
        .map_or(false, |bits| bits & (1u64 << (sig - 1)) != 0)
}

/// A TCP socket in LISTEN state, as /proc/net/tcp or tcp6 lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    pub inode: u64,
}

/// The address of a /proc/net/tcp(6) line: hex of the address in 32-bit words of host order, a
/// colon, the port in hex.
pub fn parse_proc_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for i in (0..ip.len()).step_by(8) {
        let word = u32::from_str_radix(ip.get(i..i + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        16 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&bytes);
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The sockets in LISTEN state in /proc/PID/net/tcp or tcp6, read line by line. The kernel lists
/// the listening sockets first: the reading stops at the first other one, so a table of thousands
/// of connections (TIME_WAIT under load) is never generated in full.
pub fn read_listeners<R: std::io::BufRead>(table: R) -> Vec<Listener> {
    let mut out = Vec::new();
    for line in table.lines().skip(1) {
        let line = match line {
            Ok(line) => line,
            Err(_) => break,
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        match (fields.get(1), fields.get(3), fields.get(9)) {
            (Some(addr), Some(&"0A"), Some(inode)) => {
                if let (Some(addr), Ok(inode)) = (parse_proc_addr(addr), inode.parse()) {
                    out.push(Listener { addr, inode });
                }
            }
            _ => break,
        }
    }
    out
}

/// The listening TCP sockets (IPv4 and IPv6) of `pid`'s network namespace; empty when /proc
/// cannot tell. In the wrapper's own namespace they come from sock_diag (`diag_sockets`), which
/// reads only the kernel's listening table: /proc/net/tcp6 walks every TCP connection of the host
/// (6.5 ms here with 14000 in TIME_WAIT, even with no IPv6 socket at all).
pub fn listeners(pid: i32) -> Vec<Listener> {
    if same_netns(pid) {
        let diag = [libc::AF_INET, libc::AF_INET6]
            .iter()
            .map(|&family| diag_sockets(family as u8, libc::IPPROTO_TCP as u8, 1 << TCP_LISTEN))
            .collect::<io::Result<Vec<_>>>();
        if let Ok(found) = diag {
            return found
                .into_iter()
                .flatten()
                .map(|d| Listener {
                    addr: d.local,
                    inode: d.inode,
                })
                .collect();
        }
    }
    let mut listening = Vec::new();
    for table in ["tcp", "tcp6"] {
        if let Ok(file) = fs::File::open(format!("/proc/{}/net/{}", pid, table)) {
            listening.extend(read_listeners(std::io::BufReader::new(file)));
        }
    }
    listening
}

/// The inodes of the sockets `pid` has open (its /proc/PID/fd links "socket:[INODE]").
pub fn socket_inodes(pid: i32) -> Vec<u64> {
    socket_fds(pid).into_iter().map(|(_, inode)| inode).collect()
}

/// The sockets `pid` has open: its descriptor numbers and the sockets' inodes; empty when /proc
/// cannot tell.
pub fn socket_fds(pid: i32) -> Vec<(i32, u64)> {
    read_socket_fds(pid).unwrap_or_default()
}

/// The sockets `pid` has open, or why its descriptors cannot be read.
pub fn read_socket_fds(pid: i32) -> io::Result<Vec<(i32, u64)>> {
    let fds = fs::read_dir(format!("/proc/{}/fd", pid))?;
    Ok(fds
        .flatten()
        .filter_map(|fd| {
            let number = fd.file_name().to_str()?.parse().ok()?;
            let target = fs::read_link(fd.path()).ok()?;
            let inode = target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            Some((number, inode))
        })
        .collect())
}

/// Would binding `wanted` conflict with a socket listening on `held`? The same port, and the same
/// address or a wildcard on either side (an IPv4-mapped IPv6 address counts as its IPv4 one; a
/// `::` socket may accept IPv4 too).
pub fn bind_conflicts(wanted: SocketAddr, held: SocketAddr) -> bool {
    fn plain(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        }
    }
    let (a, b) = (plain(wanted.ip()), plain(held.ip()));
    wanted.port() == held.port() && (a == b || a.is_unspecified() || b.is_unspecified())
}

/// The unconnected UDP sockets of a /proc/net/udp(6) table bound to a port outside `ephemeral`
/// (the kernel's ip_local_port_range: a port there is a client's, haproxy's own log or resolver
/// socket): inode and address.
pub fn read_udp_listeners<R: std::io::BufRead>(table: R, ephemeral: (u16, u16)) -> Vec<(u64, SocketAddr)> {
    let mut out = Vec::new();
    for line in table.lines().skip(1).flatten() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, inode) = match (fields.get(1), fields.get(2), fields.get(9)) {
            (Some(l), Some(r), Some(i)) => (l, r, i),
            _ => continue,
        };
        let (local, remote, inode) = match (parse_proc_addr(local), parse_proc_addr(remote), inode.parse::<u64>()) {
            (Some(l), Some(r), Ok(i)) => (l, r, i),
            _ => continue,
        };
        let unconnected = remote.port() == 0 && remote.ip().is_unspecified();
        let port = local.port();
        if unconnected && port != 0 && !(ephemeral.0..=ephemeral.1).contains(&port) {
            out.push((inode, local));
        }
    }
    out
}

/// The kernel's ephemeral port range (ip_local_port_range), its default when unreadable.
pub fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut it = text.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// The unconnected UDP sockets (IPv4 and IPv6) of `pid`'s network namespace bound outside the
/// ephemeral port range (QUIC listeners): inode and address; empty when /proc cannot tell.
pub fn udp_listeners(pid: i32) -> Vec<(u64, SocketAddr)> {
    let ephemeral = ephemeral_ports();
    if same_netns(pid) {
        // An unbound-remote UDP socket is in state TCP_CLOSE for sock_diag.
        let diag = [libc::AF_INET, libc::AF_INET6]
            .iter()
            .map(|&family| diag_sockets(family as u8, libc::IPPROTO_UDP as u8, 1 << TCP_CLOSE))
            .collect::<io::Result<Vec<_>>>();
        if let Ok(found) = diag {
            return found
                .into_iter()
                .flatten()
                .filter(|d| {
                    let port = d.local.port();
                    d.remote.port() == 0
                        && d.remote.ip().is_unspecified()
                        && port != 0
                        && !(ephemeral.0..=ephemeral.1).contains(&port)
                })
                .map(|d| (d.inode, d.local))
                .collect();
        }
    }
    let mut out = Vec::new();
    for table in ["udp", "udp6"] {
        if let Ok(file) = fs::File::open(format!("/proc/{}/net/{}", pid, table)) {
            out.extend(read_udp_listeners(std::io::BufReader::new(file), ephemeral));
        }
    }
    out
}

const TCP_LISTEN: u32 = 10;
const TCP_CLOSE: u32 = 7;

/// Is `pid` in the wrapper's own network namespace (where sock_diag answers for it)?
fn same_netns(pid: i32) -> bool {
    match (
        fs::read_link("/proc/self/ns/net"),
        fs::read_link(format!("/proc/{}/ns/net", pid)),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// One socket as sock_diag describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiagSocket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub inode: u64,
}

/// The address in an inet_diag_sockid: a big-endian port at `port_at`, the address at `addr_at`.
fn diag_addr(msg: &[u8], family: u8, port_at: usize, addr_at: usize) -> Option<SocketAddr> {
    let port = u16::from_be_bytes([*msg.get(port_at)?, *msg.get(port_at + 1)?]);
    let ip = if family == libc::AF_INET as u8 {
        let b = msg.get(addr_at..addr_at + 4)?;
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    } else {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(msg.get(addr_at..addr_at + 16)?);
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    Some(SocketAddr::new(ip, port))
}

/// Parses a sock_diag dump (netlink messages of inet_diag_msg): the sockets, and whether the
/// dump is over (NLMSG_DONE), or the kernel's error.
pub fn parse_diag(buf: &[u8], out: &mut Vec<DiagSocket>) -> io::Result<bool> {
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    let mut at = 0;
    while at + 16 <= buf.len() {
        let len = u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        if len < 16 || at + len > buf.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "short netlink message"));
        }
        let msg = &buf[at + 16..at + len];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = msg
                    .get(0..4)
                    .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                return Err(io::Error::from_raw_os_error(-errno));
            }
            _ => {
                // inet_diag_msg: family, state, timer, retrans, id (sport, dport, src, dst, if,
                // cookie), expires, rqueue, wqueue, uid, inode.
                let family = *msg.first().unwrap_or(&0);
                let inode = msg.get(68..72).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                if let (Some(local), Some(remote), Some(inode)) =
                    (diag_addr(msg, family, 4, 8), diag_addr(msg, family, 6, 24), inode)
                {
                    out.push(DiagSocket {
                        local,
                        remote,
                        inode: u64::from(inode),
                    });
                }
            }
        }
        at += (len + 3) & !3;
    }
    Ok(false)
}

/// The sockets of one family and protocol in `states` (a bit per TCP state) in the wrapper's
/// network namespace, from the kernel's sock_diag netlink interface (what `ss` uses).
pub fn diag_sockets(family: u8, protocol: u8, states: u32) -> io::Result<Vec<DiagSocket>> {
    use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST_DUMP: u16 = 0x301;
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = [0u8; 72];
    req[0..4].copy_from_slice(&72u32.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&NLM_F_REQUEST_DUMP.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = family;
    req[17] = protocol;
    req[20..24].copy_from_slice(&states.to_ne_bytes());
    // SAFETY: a zeroed sockaddr_nl with its family set is the kernel's address.
    let sent = unsafe {
        let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
        kernel.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(
            sock.as_raw_fd(),
            req.as_ptr() as *const libc::c_void,
            req.len(),
            0,
            &kernel as *const libc::sockaddr_nl as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: recv(2) into a buffer of ours, of the length given.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 || parse_diag(&buf[..n as usize], &mut out)? {
            return Ok(out);
        }
    }
}

/// Does `pid` still hold a listening TCP socket or a QUIC one (its own, or one it shares with a newer haproxy
/// through `-x`)? False when it is gone or /proc cannot tell: nobody waits on a guess.
pub fn holds_listener(pid: i32) -> bool {
    let mut listening: Vec<u64> = listeners(pid).iter().map(|l| l.inode).collect();
    // QUIC: a UDP socket that receives a new client's first datagram is a listener too.
    listening.extend(udp_listeners(pid).iter().map(|(inode, _)| *inode));
    if listening.is_empty() {
        return false;
    }
    socket_inodes(pid).iter().any(|inode| listening.contains(inode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sock_diag_lists_a_listener_and_a_quic_like_socket_with_their_inodes() {
        use std::os::unix::fs::MetadataExt;
        let inode_of = |fd: i32| fs::metadata(format!("/proc/self/fd/{}", fd)).unwrap().ino();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp_inode = inode_of(std::os::unix::io::AsRawFd::as_raw_fd(&tcp));
        let me = std::process::id() as i32;
        let found = listeners(me);
        assert!(
            found.contains(&Listener {
                addr: tcp.local_addr().unwrap(),
                inode: tcp_inode
            }),
            "{:?}",
            found
        );
        // The same answer as /proc's table.
        let table = read_listeners(std::io::BufReader::new(fs::File::open("/proc/self/net/tcp").unwrap()));
        assert!(table.iter().any(|l| l.inode == tcp_inode), "{:?}", table);
        // A bound UDP socket outside the ephemeral range (the test cannot bind below 1024
        // unprivileged: 4433 is above it and below 32768) is a listener; a connected one is not.
        if let Ok(udp) = std::net::UdpSocket::bind("127.0.0.1:4433") {
            let udp_inode = inode_of(std::os::unix::io::AsRawFd::as_raw_fd(&udp));
            assert!(udp_listeners(me).iter().any(|(i, _)| *i == udp_inode));
            udp.connect("127.0.0.1:9").unwrap();
            assert!(!udp_listeners(me).iter().any(|(i, _)| *i == udp_inode));
        }
    }

    #[test]
    fn a_sock_diag_error_is_the_kernels_errno() {
        // nlmsghdr (len 20, NLMSG_ERROR) + errno -EPERM
        let mut msg = vec![0u8; 20];
        msg[0..4].copy_from_slice(&20u32.to_ne_bytes());
        msg[4..6].copy_from_slice(&2u16.to_ne_bytes());
        msg[16..20].copy_from_slice(&(-1i32).to_ne_bytes());
        let err = parse_diag(&msg, &mut Vec::new()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(1));
        assert!(!parse_diag(&[0u8; 15], &mut Vec::new()).unwrap());
        let mut short = vec![0u8; 16];
        short[0..4].copy_from_slice(&64u32.to_ne_bytes());
        assert!(parse_diag(&short, &mut Vec::new()).is_err());
    }

    #[test]
    fn listening_sockets_of_a_process() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:1F90 0100007F:D2E4 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1\n";
        let inodes = |table: &str| {
            read_listeners(table.as_bytes())
                .iter()
                .map(|l| l.inode)
                .collect::<Vec<u64>>()
        };
        assert_eq!(
            read_listeners(text.as_bytes()),
            vec![Listener {
                addr: "127.0.0.1:8080".parse().unwrap(),
                inode: 4242
            }]
        );
        assert_eq!(inodes("garbage\nmore garbage"), Vec::<u64>::new());
        // Listening sockets come first; what follows is never read.
        let later = format!("{}   2: 0100007F:1F91 00000000:0000 0A 0 0 0 0 0 0 4444 1\n", text);
        assert_eq!(inodes(&later), vec![4242]);
        let v6 = "  sl  local_address remote_address st\n\
   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 0:0 0:0 0 0 0 77 1\n\
   1: 0000000000000000FFFF00000100007F:01BB 00000000000000000000000000000000:0000 0A 0:0 0:0 0 0 0 78 1\n";
        let v6: Vec<SocketAddr> = read_listeners(v6.as_bytes()).iter().map(|l| l.addr).collect();
        assert_eq!(
            v6,
            vec!["[::1]:80".parse().unwrap(), "[::ffff:127.0.0.1]:443".parse().unwrap()]
        );
        // (Other tests of this process may hold listeners: a child that has none tells "false".)
        let me = std::process::id() as i32;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(holds_listener(me));
        drop(listener);
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        assert!(!holds_listener(child.id() as i32));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!holds_listener(i32::MAX));
    }

    #[test]
    fn which_listeners_a_bind_conflicts_with() {
        let c = |wanted: &str, held: &str| bind_conflicts(wanted.parse().unwrap(), held.parse().unwrap());
        assert!(c("127.0.0.1:80", "127.0.0.1:80"));
        assert!(c("0.0.0.0:80", "127.0.0.1:80"));
        assert!(c("127.0.0.1:80", "0.0.0.0:80"));
        assert!(c("127.0.0.1:80", "[::]:80"));
        assert!(c("127.0.0.1:80", "[::ffff:127.0.0.1]:80"));
        assert!(!c("127.0.0.1:80", "127.0.0.1:81"));
        assert!(!c("127.0.0.1:80", "127.0.0.2:80"));
        assert!(!c("[::1]:80", "127.0.0.1:80"));
        // What this process holds, as the kernel lists it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let me = std::process::id() as i32;
        let held: Vec<Listener> = listeners(me).into_iter().filter(|l| l.addr == addr).collect();
        assert_eq!(held.len(), 1, "{:?}", listeners(me));
        assert!(socket_inodes(me).contains(&held[0].inode));
    }

    #[test]
    fn parses_stat_with_odd_names() {
        assert_eq!(parse_stat("123 (haproxy) S 1 123 123 0"), Some((1, 'S')));
        assert_eq!(parse_stat("7 (a) b) (c) Z 99 7 7"), Some((99, 'Z')));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn sees_own_children() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let me = std::process::id() as i32;
        let pid = child.id() as i32;
        assert!(is_child_of(pid, me));
        assert!(children_of(me).unwrap().contains(&pid));
        assert!(descendants_of(me).unwrap().contains(&pid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!is_child_of(pid, me));
        assert_eq!(
            children_of(4_194_304).unwrap(),
            Vec::<i32>::new(),
            "a process that is gone has no children"
        );
    }

    /// /proc as it is, except that opening files fails once `budget` reads are spent (out of
    /// descriptors), for the paths that contain `failing`.
    struct Failing {
        failing: &'static str,
        budget: std::cell::Cell<u32>,
    }

    impl ProcView for Failing {
        fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
            self.check(dir)?;
            Proc.list(dir)
        }
        fn read(&self, file: &Path) -> io::Result<String> {
            self.check(file)?;
            Proc.read(file)
        }
    }

    impl Failing {
        fn check(&self, path: &Path) -> io::Result<()> {
            if path.to_string_lossy().contains(self.failing) {
                if self.budget.get() == 0 {
                    return Err(io::Error::from_raw_os_error(nix::libc::EMFILE));
                }
                self.budget.set(self.budget.get() - 1);
            }
            Ok(())
        }
    }

    #[test]
    fn a_walk_that_cannot_read_proc_is_an_error_not_an_empty_list() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let me = std::process::id() as i32;
        let pid = child.id() as i32;
        // Every read fails: the task list, the fallback scan.
        for (failing, budget) in [
            ("/proc", 0),
            ("children", 0),
            ("/stat", 0),
            ("/proc", 1),
            ("/proc", 2),
            ("/proc", 3),
        ] {
            let view = Failing {
                failing,
                budget: std::cell::Cell::new(budget),
            };
            let walked = children_in(&view, me);
            assert!(
                walked.is_err() || walked.as_ref().unwrap().contains(&pid),
                "{} after {} reads: {:?}",
                failing,
                budget,
                walked
            );
            let view = Failing {
                failing,
                budget: std::cell::Cell::new(budget),
            };
            let walked = descendants_in(&view, me);
            assert!(
                walked.is_err() || walked.as_ref().unwrap().contains(&pid),
                "{} after {} reads: {:?}",
                failing,
                budget,
                walked
            );
        }
        let view = Failing {
            failing: "/proc",
            budget: std::cell::Cell::new(0),
        };
        assert_eq!(
            children_in(&view, me).unwrap_err().raw_os_error(),
            Some(nix::libc::EMFILE)
        );
        // Only the per-task children files fail: the scan of /proc still finds the child.
        let view = Failing {
            failing: "children",
            budget: std::cell::Cell::new(0),
        };
        assert!(children_in(&view, me).unwrap().contains(&pid));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn randomized_process_names_never_confuse_the_stat_parser() {
        use crate::fuzz::{Rng, CASES};
        // The name between the parentheses is the process's own choice (prctl, exec of any file).
        let mut rng = Rng::new(0x57a7);
        for case in 0..CASES {
            let comm = rng.text(16);
            let state = *rng.pick(&['R', 'S', 'D', 'Z', 'T', 'X']);
            let ppid = rng.below(4_194_305) as i32;
            let stat = format!(
                "{} ({}) {} {} 42 42 0 -1 4194560 100 0",
                1 + rng.below(4_194_304),
                comm,
                state,
                ppid
            );
            assert_eq!(parse_stat(&stat), Some((ppid, state)), "case {}: {:?}", case, stat);
            // Damaged text: an answer or None, never a panic.
            let _ = parse_stat(&rng.mutate_text(&stat, b"() "));
            let _ = parse_stat(&rng.text(40));
        }
    }
}
