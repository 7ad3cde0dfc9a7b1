//! What the kernel says about processes: parents and children, from /proc; and the wrapper's
//! own program.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

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
/// cannot tell.
pub fn listeners(pid: i32) -> Vec<Listener> {
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
    let mut out = Vec::new();
    for table in ["udp", "udp6"] {
        if let Ok(file) = fs::File::open(format!("/proc/{}/net/{}", pid, table)) {
            out.extend(read_udp_listeners(std::io::BufReader::new(file), ephemeral));
        }
    }
    out
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
