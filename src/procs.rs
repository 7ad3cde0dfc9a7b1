//! What the kernel says about processes: parents and children, from /proc; and the wrapper's
//! own program.

use std::fs;
use std::path::PathBuf;

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
    // "pid (comm) S ppid ...": comm may hold spaces and parentheses; the last ')' ends it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((ppid, state))
}

/// Parent pid and state of a live process, None when it is gone.
pub fn stat(pid: i32) -> Option<(i32, char)> {
    parse_stat(&fs::read_to_string(format!("/proc/{}/stat", pid)).ok()?)
}

/// Is `pid` a child of `parent` that has not been reaped? Zombies count: they still hold the pid.
pub fn is_child_of(pid: i32, parent: i32) -> bool {
    matches!(stat(pid), Some((pp, _)) if pp == parent)
}

/// Live (non-zombie) children of `parent`, in ascending order.
pub fn children_of(parent: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut complete = false;
    if let Ok(tasks) = fs::read_dir(format!("/proc/{}/task", parent)) {
        complete = true;
        for t in tasks.flatten() {
            match fs::read_to_string(t.path().join("children")) {
                Ok(text) => out.extend(text.split_whitespace().filter_map(|p| p.parse::<i32>().ok())),
                Err(_) => {
                    complete = false;
                    break;
                }
            }
        }
    }
    if !complete {
        // Kernels without CONFIG_PROC_CHILDREN: scan every process.
        out.clear();
        if let Ok(all) = fs::read_dir("/proc") {
            for e in all.flatten() {
                if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
                    if matches!(stat(pid), Some((pp, _)) if pp == parent) {
                        out.push(pid);
                    }
                }
            }
        }
    }
    out.retain(|&p| !matches!(stat(p), Some((_, 'Z')) | None));
    out.sort_unstable();
    out.dedup();
    out
}

/// Every live process below `root` (children, their children, ...), parents before children.
pub fn descendants_of(root: i32) -> Vec<i32> {
    let mut found = Vec::new();
    let mut next = 0;
    let mut parent = root;
    loop {
        for child in children_of(parent) {
            if !found.contains(&child) {
                found.push(child);
            }
        }
        match found.get(next) {
            Some(&p) => parent = p,
            None => return found,
        }
        next += 1;
    }
}

/// The signals pending for a process (thread-directed and shared), from the text of
/// /proc/PID/status: bit N-1 stands for signal N.
pub fn parse_pending(status: &str) -> Option<u64> {
    let mask = |key: &str| status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
    Some(mask("ShdPnd:")? | mask("SigPnd:")?)
}

/// Is `sig` pending for `pid` (sent, not yet handled)? False when it is gone or /proc cannot tell.
pub fn signal_pending(pid: i32, sig: i32) -> bool {
    fs::read_to_string(format!("/proc/{}/status", pid)).ok().and_then(|s| parse_pending(&s)).map_or(false, |bits| bits & (1u64 << (sig - 1)) != 0)
}

/// The inodes of the sockets in LISTEN state in the text of /proc/PID/net/tcp or tcp6.
pub fn parse_listen_inodes(text: &str) -> Vec<u64> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match (fields.get(3), fields.get(9)) {
                (Some(&"0A"), Some(inode)) => inode.parse().ok(),
                _ => None,
            }
        })
        .collect()
}

/// Does `pid` still hold a listening TCP socket (its own, or one it shares with a newer haproxy
/// through `-x`)? False when it is gone or /proc cannot tell: nobody waits on a guess.
pub fn holds_listener(pid: i32) -> bool {
    let mut listening = Vec::new();
    for table in ["tcp", "tcp6"] {
        if let Ok(text) = fs::read_to_string(format!("/proc/{}/net/{}", pid, table)) {
            listening.extend(parse_listen_inodes(&text));
        }
    }
    if listening.is_empty() {
        return false;
    }
    let fds = match fs::read_dir(format!("/proc/{}/fd", pid)) {
        Ok(fds) => fds,
        Err(_) => return false,
    };
    fds.flatten().any(|fd| {
        let target = fs::read_link(fd.path()).ok();
        let inode = target.as_ref().and_then(|t| t.to_str()).and_then(|t| t.strip_prefix("socket:[")).and_then(|t| t.strip_suffix(']'));
        inode.and_then(|i| i.parse::<u64>().ok()).map_or(false, |i| listening.contains(&i))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_sockets_of_a_process() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:1F90 0100007F:D2E4 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(parse_listen_inodes(text), vec![4242]);
        assert_eq!(parse_listen_inodes("garbage\nmore garbage"), Vec::<u64>::new());
        let me = std::process::id() as i32;
        assert!(!holds_listener(me));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(holds_listener(me));
        drop(listener);
        assert!(!holds_listener(me));
        assert!(!holds_listener(i32::MAX));
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
        assert!(children_of(me).contains(&pid));
        assert!(descendants_of(me).contains(&pid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!is_child_of(pid, me));
    }
}
