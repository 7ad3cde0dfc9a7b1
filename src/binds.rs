//! What a new configuration binds, learnt before haproxy's master is asked to reload.
//!
//! When a `bind` of the new configuration fails, haproxy's master (its new worker from 3.1) pauses
//! the serving workers' listeners (SIGTTOU: the shared socket itself is disconnected) and retries
//! for about 2 s before it gives up; the wrapper then listens on its copies again
//! (`Held::relisten`), but a connection that comes in the moment between haproxy's pause and the
//! wrapper's `listen()` is refused, and one the kernel had queued is reset. So in master-worker
//! mode the wrapper first reads the configuration files haproxy's command line names, takes the
//! TCP addresses of the `bind` lines it can be sure haproxy binds, and binds each of them itself,
//! without listening, with the options haproxy uses (SO_REUSEADDR, SO_REUSEPORT). A bind the kernel
//! refuses for a reason that haproxy's pause cannot change (an address the host lacks, a port
//! another program holds, a privileged port) fails the reload before haproxy is asked: nothing is
//! paused, nothing is refused, and the reason is the one haproxy would give.
//!
//! Whatever the wrapper cannot be sure of is left to haproxy: quoted or escaped words and
//! environment variables, `.if` blocks, host names, port ranges, addresses that are not TCP over
//! IPv4 or IPv6, the bind options that change what may be bound (`transparent`, `interface`,
//! `namespace`, `v4v6`, `v6only`), a privileged port when the wrapper is not root (haproxy may have
//! file capabilities), proxies that are `disabled` (and every bind once a `defaults`
//! section says `disabled`), `-C DIR`, a port a process of ours holds (the pause may be what frees
//! it: `noreuseport`), and an IPv6 address of the host still tentative (haproxy's retry may outlast
//! its duplicate address detection). Pure parsing here; the binding and /proc reading in `check`.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};

use crate::procs;

/// One address a `bind` line of a frontend or listen section binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub addr: SocketAddr,
    /// `FILE:LINE`, as haproxy names a line.
    pub place: String,
    /// `frontend NAME` or `listen NAME`.
    pub proxy: String,
}

/// The configuration files haproxy reads, in its order: each `-f` (a directory: its `*.cfg` files
/// not starting with a dot, sorted), then every argument after `--`. None when the wrapper cannot
/// know where they are (`-C DIR` makes relative paths haproxy's, and a directory may be
/// unreadable).
pub fn config_files(args: &[OsString]) -> Option<Vec<PathBuf>> {
    let mut named = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].to_string_lossy();
        if a == "--" {
            named.extend(args[i + 1..].iter().map(PathBuf::from));
            break;
        }
        match a.as_ref() {
            "-C" => return None,
            "-f" => named.push(PathBuf::from(args.get(i + 1)?)),
            _ => {}
        }
        i += if crate::cli::takes_value(&a) { 2 } else { 1 };
    }
    let mut files = Vec::new();
    for path in named {
        if path.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(&path)
                .ok()?
                .flatten()
                .map(|e| e.file_name())
                .filter(|n| {
                    let n = n.to_string_lossy();
                    !n.starts_with('.') && n.ends_with(".cfg")
                })
                .map(|n| path.join(n))
                .filter(|p| p.is_file())
                .collect();
            // haproxy's scandir(..., alphasort): byte order in the C locale it runs in.
            inside.sort_by(|a, b| a.as_os_str().cmp(b.as_os_str()));
            files.extend(inside);
        } else {
            files.push(path);
        }
    }
    Some(files)
}

/// The keywords that open a section (haproxy 2.6 to 3.2, and a few more).
const SECTIONS: &[&str] = &[
    "global",
    "defaults",
    "frontend",
    "backend",
    "listen",
    "peers",
    "resolvers",
    "userlist",
    "mailers",
    "program",
    "http-errors",
    "ring",
    "log-forward",
    "cache",
    "crt-store",
    "traces",
    "acme",
    "ech",
];

/// Bind options under which a bind may succeed where the wrapper's would not, or the reverse.
const UNSURE_OPTIONS: &[&str] = &["transparent", "interface", "namespace", "v4v6", "v6only", "disabled"];

/// The section the parser is in.
struct Section {
    /// `frontend NAME` / `listen NAME`: the binds of one are taken; None for any other section,
    /// or where the parser cannot tell which section a line belongs to.
    proxy: Option<String>,
    binds: Vec<Bind>,
    disabled: bool,
}

impl Section {
    fn none() -> Section {
        Section {
            proxy: None,
            binds: Vec::new(),
            disabled: false,
        }
    }
}

/// Reads configuration files in haproxy's order and keeps the binds it is sure of.
#[derive(Default)]
pub struct Parser {
    done: Vec<Bind>,
    /// A `defaults` section said `disabled`: the proxies after it may all be disabled.
    defaults_disable: bool,
}

impl Parser {
    /// One file's text; `file` names it in `Bind::place`. A file starts outside any section (a
    /// line before its first section header is not taken for the previous file's).
    pub fn file(&mut self, text: &str, file: &str) {
        let mut depth = 0usize;
        let mut section = Section::none();
        // In a `defaults` section, or one opened in a conditional block (it may be a defaults).
        let mut maybe_defaults = false;
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("");
            let words: Vec<&str> = line.split_whitespace().collect();
            let first = match words.first() {
                Some(w) => *w,
                None => continue,
            };
            if first.starts_with(".if") {
                depth += 1;
                continue;
            }
            if first == ".endif" {
                depth = depth.saturating_sub(1);
                continue;
            }
            if first.starts_with('.') {
                continue; // .elif, .else, .diag, .notice, .warning, .alert, .line ...
            }
            if SECTIONS.contains(&first) {
                self.done_with(std::mem::replace(&mut section, Section::none()));
                maybe_defaults = first == "defaults" || depth > 0;
                if depth == 0 && (first == "frontend" || first == "listen") {
                    if let Some(name) = words.get(1) {
                        section.proxy = Some(format!("{} {}", first, name));
                    }
                }
                continue;
            }
            if first == "disabled" {
                section.disabled = true;
                if maybe_defaults {
                    self.defaults_disable = true;
                }
                continue;
            }
            if depth > 0 || first != "bind" || section.proxy.is_none() {
                continue;
            }
            if line.contains(&['"', '\'', '\\', '$'][..]) || words.iter().skip(2).any(|w| UNSURE_OPTIONS.contains(w)) {
                continue;
            }
            let proxy = section.proxy.clone().unwrap_or_default();
            if let Some(list) = words.get(1) {
                for addr in list.split(',').filter_map(tcp_address) {
                    section.binds.push(Bind {
                        addr,
                        place: format!("{}:{}", file, n + 1),
                        proxy: proxy.clone(),
                    });
                }
            }
        }
        self.done_with(section);
    }

    fn done_with(&mut self, section: Section) {
        if !section.disabled {
            self.done.extend(section.binds);
        }
    }

    /// The binds the wrapper is sure haproxy makes.
    pub fn binds(self) -> Vec<Bind> {
        if self.defaults_disable {
            return Vec::new();
        }
        self.done
    }
}

/// The TCP address of one word of a bind's address list, as haproxy's str2sa_range reads it; None
/// for anything else or anything unsure (a host name, a port range or offset, another family).
pub fn tcp_address(word: &str) -> Option<SocketAddr> {
    let (v6, rest) = if let Some(rest) = word.strip_prefix("ipv4@").or_else(|| word.strip_prefix("tcp4@")) {
        (Some(false), rest)
    } else if let Some(rest) = word.strip_prefix("ipv6@").or_else(|| word.strip_prefix("tcp6@")) {
        (Some(true), rest)
    } else if let Some(rest) = word.strip_prefix("tcp@") {
        (None, rest)
    } else if word.contains('@') || word.starts_with('/') {
        return None; // unix@, abns@, fd@, sockpair@, quic4@, udp@, mptcp@, rhttp@, a path ...
    } else {
        (None, word)
    };
    // The port follows the last colon after any closing bracket.
    let (host, port) = rest.rsplit_once(':')?;
    if host.ends_with(']') && !host.starts_with('[') || port.contains(']') {
        return None;
    }
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.len() > 5 {
        return None;
    }
    let port: u16 = port.parse().ok().filter(|&p| p > 0)?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let ip = match (host, v6) {
        ("" | "*", Some(true)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ("" | "*", _) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (h, None) => h.parse().ok()?,
        (h, Some(false)) => IpAddr::V4(h.parse().ok()?),
        (h, Some(true)) => IpAddr::V6(h.parse().ok()?),
    };
    Some(SocketAddr::new(ip, port))
}

/// Binds `addr` as haproxy does (SO_REUSEADDR, SO_REUSEPORT), without listening, and closes it.
pub fn try_bind(addr: SocketAddr) -> Result<(), Errno> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    // SAFETY: a new descriptor, owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    socket::setsockopt(fd.as_raw_fd(), sockopt::ReuseAddr, &true)?;
    socket::setsockopt(fd.as_raw_fd(), sockopt::ReusePort, &true)?;
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))
}

/// Why a bind the kernel refused cannot succeed in haproxy either, or None when haproxy's pause
/// may change the answer or the wrapper cannot tell. `holders`: the listeners in conflict with
/// `addr` and whether each is a socket of ours (the wrapper's, or its descendants').
/// `on_host`: the address is one of the host's although the kernel refused it (an IPv6 address
/// still tentative, in duplicate address detection): haproxy's retry may see it usable.
pub fn judge(addr: SocketAddr, err: Errno, holders: &[(SocketAddr, bool)], on_host: bool) -> Option<String> {
    match err {
        Errno::EADDRNOTAVAIL if on_host => None,
        Errno::EADDRNOTAVAIL | Errno::EACCES => Some(format!("cannot bind socket ({}) [{}]", err.desc(), addr)),
        // Only where no socket of ours is in the way: haproxy's pause may free one of those.
        Errno::EADDRINUSE => match holders.first() {
            Some((other, _)) if holders.iter().all(|(_, ours)| !ours) => Some(format!(
                "cannot bind socket ({}) [{}]: in use by another program (its listener on {})",
                err.desc(),
                addr,
                other
            )),
            _ => None,
        },
        _ => None,
    }
}

/// The first bind of the configuration that cannot succeed, as the reason the reload fails; None
/// when every bind the wrapper is sure of binds, or it is sure of none.
pub fn check(args: &[OsString]) -> Option<String> {
    let files = config_files(args)?;
    let mut parser = Parser::default();
    for file in &files {
        // haproxy reports a file it cannot read itself.
        let text = std::fs::read_to_string(file).ok()?;
        parser.file(&text, &file.display().to_string());
    }
    let mut ours: Option<Vec<u64>> = None;
    let mut listening: Option<Vec<procs::Listener>> = None;
    for bind in parser.binds() {
        let err = match try_bind(bind.addr) {
            Ok(()) => continue,
            Err(e) => e,
        };
        let holders: Vec<(SocketAddr, bool)> = if err == Errno::EADDRINUSE {
            let me = std::process::id() as i32;
            let listening = listening.get_or_insert_with(|| procs::listeners(me));
            let ours = ours.get_or_insert_with(|| {
                let mut pids = vec![me];
                pids.extend(procs::descendants_of(me).unwrap_or_default());
                pids.iter().flat_map(|&pid| procs::socket_inodes(pid)).collect()
            });
            listening
                .iter()
                .filter(|l| procs::bind_conflicts(bind.addr, l.addr))
                .map(|l| (l.addr, ours.contains(&l.inode)))
                .collect()
        } else {
            Vec::new()
        };
        // Not root: haproxy may bind a port the wrapper may not (file capabilities on haproxy).
        if err == Errno::EACCES && !nix::unistd::geteuid().is_root() {
            continue;
        }
        let on_host = err == Errno::EADDRNOTAVAIL && ipv6_on_host(bind.addr.ip());
        if let Some(why) = judge(bind.addr, err, &holders, on_host) {
            return Some(format!("{} ({}): {}", bind.proxy, bind.place, why));
        }
    }
    None
}

/// Whether `ip` is an IPv6 address of the host, tentative ones included (/proc/net/if_inet6: the
/// address in 32 hex digits first on each line).
fn ipv6_on_host(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => std::fs::read_to_string("/proc/net/if_inet6").map_or(false, |t| listed_in_if_inet6(&t, v6)),
        IpAddr::V4(_) => false,
    }
}

fn listed_in_if_inet6(table: &str, ip: Ipv6Addr) -> bool {
    let hex: String = ip.octets().iter().map(|b| format!("{:02x}", b)).collect();
    table
        .lines()
        .any(|line| line.split_whitespace().next() == Some(hex.as_str()))
}

#[cfg(test)]
mod tests;
