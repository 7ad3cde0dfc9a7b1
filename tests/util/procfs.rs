//! /proc readers for the tests: processes, children, descendants, fds, signal masks.

use super::*;

#[derive(Clone, Debug)]
pub struct ProcStat {
    pub pid: i32,
    pub comm: String,
    pub state: char,
    pub ppid: i32,
}

pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_string();
    let mut rest = s[close + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some(ProcStat { pid, comm, state, ppid })
}

pub fn all_procs() -> Vec<ProcStat> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) {
                if let Some(st) = proc_stat(pid) {
                    out.push(st);
                }
            }
        }
    }
    out
}

/// Alive = exists and is neither a zombie nor dead.
pub fn alive(pid: i32) -> bool {
    match proc_stat(pid) {
        Some(st) => st.state != 'Z' && st.state != 'X',
        None => false,
    }
}

pub fn children_of(pid: i32) -> Vec<ProcStat> {
    all_procs().into_iter().filter(|p| p.ppid == pid).collect()
}

/// Every process below `root` (not including it), by walking the ppid links.
pub fn descendants(root: i32) -> Vec<ProcStat> {
    let procs = all_procs();
    let mut found: Vec<ProcStat> = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for c in procs.iter().filter(|c| c.ppid == p) {
            if !found.iter().any(|f| f.pid == c.pid) {
                found.push(c.clone());
                frontier.push(c.pid);
            }
        }
    }
    found
}

pub fn zombie_children(pid: i32) -> Vec<ProcStat> {
    children_of(pid).into_iter().filter(|p| p.state == 'Z').collect()
}

pub fn exe_of(pid: i32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// The HAPROXY_SYSTEMD_WRAPPER_STATE value the process image of `pid` was exec'd with (from
/// /proc/PID/environ, which shows the environment given to the last execve): present only in a
/// wrapper that re-executed itself.
pub fn reexec_state(pid: i32) -> Option<String> {
    let env = fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(b"HAPROXY_SYSTEMD_WRAPPER_STATE=".as_slice()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

pub fn fd_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| rd.count())
        .unwrap_or(0)
}

pub fn fd_list(pid: i32) -> String {
    let mut out = String::new();
    if let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fd")) {
        let mut v: Vec<(u32, String)> = rd
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_str()?.parse().ok()?;
                let t = fs::read_link(e.path()).ok()?;
                Some((n, t.display().to_string()))
            })
            .collect();
        v.sort();
        for (n, t) in v {
            out.push_str(&format!("  {n} -> {t}\n"));
        }
    }
    out
}

/// The SigIgn/SigBlk value of a `/proc/PID/status`-style text.
pub fn sig_field(text: &str, field: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} line in:\n{text}"));
    u64::from_str_radix(line[field.len() + 1..].trim(), 16).expect("hex signal mask")
}

/// Haproxy processes below `root` (by executable path), newest pid last.
pub fn haproxy_descendants(root: i32, exe: &str) -> Vec<i32> {
    let mut v: Vec<i32> = descendants(root)
        .into_iter()
        .filter(|p| exe_of(p.pid).map_or(false, |e| e == Path::new(exe)))
        .map(|p| p.pid)
        .collect();
    v.sort_unstable();
    v
}
