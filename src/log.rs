//! The wrapper's logger: one line per event on stderr. When stderr is the journal, each line
//! starts with its journald priority prefix (`<3>` error ... `<7>` debug) so that
//! `journalctl -p` filters work; anywhere else (a terminal, a file) it is plain text.
//!
//! Writing never blocks: a reader that does not keep up (a stalled journal, a pipe nobody reads)
//! must not stop the wrapper from supervising or from acting on SIGTERM. A line that cannot be
//! written at once is dropped and counted, and the count is told with the next line written
//! ("N log lines dropped"); a line written in part has its rest written before anything else.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

pub const ERR: u8 = 3;
pub const WARNING: u8 = 4;
pub const NOTICE: u8 = 5;
pub const INFO: u8 = 6;
pub const DEBUG: u8 = 7;

/// Is stderr the journal? 0: not looked at yet, 1: no, 2: yes.
static STDERR_IS_JOURNAL: AtomicU8 = AtomicU8::new(0);

/// Does `$JOURNAL_STREAM` ("DEV:INODE", set by systemd for a service whose stderr it connected
/// to the journal) name the file stderr is? The check systemd's own log.c makes: a child that
/// inherited the variable but writes elsewhere must not prefix.
pub fn names_stderr(journal_stream: Option<&str>, stderr: Option<(u64, u64)>) -> bool {
    let parsed = journal_stream
        .and_then(|v| v.split_once(':'))
        .and_then(|(dev, ino)| Some((dev.parse::<u64>().ok()?, ino.parse::<u64>().ok()?)));
    matches!((parsed, stderr), (Some(named), Some(actual)) if named == actual)
}

fn stderr_is_journal() -> bool {
    match STDERR_IS_JOURNAL.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let stream = std::env::var("JOURNAL_STREAM").ok();
            // dev_t and ino_t are not u64 on every architecture Debian builds for.
            #[allow(clippy::unnecessary_cast)]
            let stderr = nix::sys::stat::fstat(2)
                .ok()
                .map(|st| (st.st_dev as u64, st.st_ino as u64));
            let journal = names_stderr(stream.as_deref(), stderr);
            STDERR_IS_JOURNAL.store(if journal { 2 } else { 1 }, Ordering::Relaxed);
            journal
        }
    }
}

/// `s` as one line of at most `max_bytes` bytes: control characters become spaces, and the text
/// is cut at a character boundary (STATUS=, the ledger's reasons).
pub fn one_line(s: &str, max_bytes: usize) -> String {
    let mut out = String::new();
    for c in s.chars().map(|c| if c.is_control() { ' ' } else { c }) {
        if out.len() + c.len_utf8() > max_bytes {
            break;
        }
        out.push(c);
    }
    out
}

/// One log line with its newline; embedded newlines become spaces.
fn line(priority: u8, args: fmt::Arguments, journal: bool) -> String {
    let text = fmt::format(args).replace('\n', " ");
    if journal {
        format!("<{}>{}\n", priority, text)
    } else {
        format!("{}\n", text)
    }
}

/// stderr as the logger writes it: without ever blocking.
struct Sink {
    /// The descriptor written: stderr itself (a socket, written with MSG_DONTWAIT; a regular
    /// file, which never blocks), or a non-blocking descriptor of its own for the pipe or
    /// terminal stderr is (opened anew through /proc/self/fd/2: O_NONBLOCK on stderr itself would
    /// change it for every process sharing it).
    fd: i32,
    socket: bool,
    /// The rest of a line written in part: written before anything else.
    rest: Vec<u8>,
    /// Lines dropped since the last one written.
    dropped: u64,
}

static SINK: Mutex<Option<Sink>> = Mutex::new(None);

fn open_sink() -> Sink {
    use nix::sys::stat::SFlag;
    let kind = nix::sys::stat::fstat(2).map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT);
    let mut sink = Sink {
        fd: 2,
        socket: false,
        rest: Vec::new(),
        dropped: 0,
    };
    match kind {
        Ok(k) if k == SFlag::S_IFSOCK => sink.socket = true,
        Ok(k) if k == SFlag::S_IFIFO || k == SFlag::S_IFCHR => {
            use nix::fcntl::OFlag;
            let flags = OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_APPEND;
            if let Ok(fd) = nix::fcntl::open("/proc/self/fd/2", flags, nix::sys::stat::Mode::empty()) {
                sink.fd = fd;
            }
        }
        _ => {}
    }
    sink
}

/// How a write went.
enum Wrote {
    All,
    /// This many bytes (fewer than asked).
    Part(usize),
    /// Nothing: it would block.
    WouldBlock,
    /// stderr is gone (closed, a broken pipe): nothing sensible to do, the wrapper goes on.
    Gone,
}

impl Sink {
    fn write_once(&self, bytes: &[u8]) -> Wrote {
        loop {
            let r = if self.socket {
                nix::sys::socket::send(
                    self.fd,
                    bytes,
                    nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
                )
            } else {
                nix::unistd::write(self.fd, bytes)
            };
            return match r {
                Ok(n) if n >= bytes.len() => Wrote::All,
                Ok(0) => Wrote::WouldBlock,
                Ok(n) => Wrote::Part(n),
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EAGAIN) => Wrote::WouldBlock,
                Err(_) => Wrote::Gone,
            };
        }
    }

    /// Writes whole lines (`bytes` ends with a newline), `lines` of them; true when written.
    fn write_lines(&mut self, bytes: &[u8], lines: u64) -> bool {
        if !self.rest.is_empty() {
            let rest = std::mem::take(&mut self.rest);
            match self.write_once(&rest) {
                Wrote::All | Wrote::Gone => {}
                Wrote::Part(n) => self.rest = rest[n..].to_vec(),
                Wrote::WouldBlock => self.rest = rest,
            }
            if !self.rest.is_empty() {
                self.dropped += lines;
                return false;
            }
        }
        let mut out = Vec::new();
        let told = self.dropped;
        if told > 0 {
            let journal = stderr_is_journal();
            out.extend_from_slice(
                line(
                    WARNING,
                    format_args!("{} log lines dropped: stderr was not ready to take them", told),
                    journal,
                )
                .as_bytes(),
            );
        }
        out.extend_from_slice(bytes);
        match self.write_once(&out) {
            Wrote::All | Wrote::Gone => {
                self.dropped = 0;
                true
            }
            Wrote::Part(n) => {
                // The line cut in two is finished first, at the next write; the whole lines
                // after it are dropped.
                let cut_end = out[n..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(out.len(), |i| n + i + 1);
                self.rest = out[n..cut_end].to_vec();
                let after = out[cut_end..].iter().filter(|&&b| b == b'\n').count() as u64;
                // The count told (if any) went out with the first bytes.
                self.dropped = after;
                after == 0
            }
            Wrote::WouldBlock => {
                self.dropped += lines;
                false
            }
        }
    }
}

fn emit(bytes: &[u8], lines: u64) {
    let mut guard = match SINK.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    guard.get_or_insert_with(open_sink).write_lines(bytes, lines);
}

/// Writes one log line, in one write(2) so that no reader (journald, a tail) sees half of it;
/// never blocking (see the module's comment).
pub fn write(priority: u8, args: fmt::Arguments) {
    let line = line(priority, args, stderr_is_journal());
    emit(line.as_bytes(), 1);
}

/// Writes many lines in as few write(2) calls as possible, each call holding whole lines only
/// (at most about 64 KiB), so no reader sees half a line; never blocking.
pub fn write_lines<'a>(lines: impl Iterator<Item = (u8, &'a str)>) {
    let journal = stderr_is_journal();
    let mut buf = String::new();
    let mut n = 0;
    for (priority, text) in lines {
        buf.push_str(&line(priority, format_args!("{}", text), journal));
        n += 1;
        if buf.len() >= 64 * 1024 {
            emit(buf.as_bytes(), n);
            buf.clear();
            n = 0;
        }
    }
    if !buf.is_empty() {
        emit(buf.as_bytes(), n);
    }
}

macro_rules! error { ($($t:tt)*) => { $crate::log::write($crate::log::ERR, format_args!($($t)*)) } }
macro_rules! warning { ($($t:tt)*) => { $crate::log::write($crate::log::WARNING, format_args!($($t)*)) } }
macro_rules! notice { ($($t:tt)*) => { $crate::log::write($crate::log::NOTICE, format_args!($($t)*)) } }
macro_rules! info { ($($t:tt)*) => { $crate::log::write($crate::log::INFO, format_args!($($t)*)) } }
macro_rules! debug { ($($t:tt)*) => { $crate::log::write($crate::log::DEBUG, format_args!($($t)*)) } }

/// Lets at most `burst` lines of one kind through per `window`: a flood (e.g. of spoofed notify
/// datagrams) makes a handful of lines, not one per event. The lines held back are counted and
/// their number is told with the next line let through.
#[derive(Debug)]
pub struct RateLimit {
    burst: u32,
    window_ns: u64,
    window_start_ns: u64,
    in_window: u32,
    held_back: u64,
}

impl RateLimit {
    pub fn new(burst: u32, window: std::time::Duration) -> RateLimit {
        RateLimit {
            burst,
            window_ns: crate::clock::nanos(window),
            window_start_ns: 0,
            in_window: 0,
            held_back: 0,
        }
    }

    /// Some(lines held back since the last one let through) when this line may be logged.
    pub fn allow(&mut self, now_ns: u64) -> Option<u64> {
        if self.in_window == 0 || now_ns.saturating_sub(self.window_start_ns) >= self.window_ns {
            self.window_start_ns = now_ns;
            self.in_window = 0;
        }
        if self.in_window >= self.burst {
            self.held_back += 1;
            return None;
        }
        self.in_window += 1;
        Some(std::mem::take(&mut self.held_back))
    }
}

/// Maps one line that haproxy printed to a journald priority, from haproxy's own tag.
pub fn haproxy_line_priority(line: &str) -> u8 {
    let t = line.trim_start();
    if t.starts_with("[ALERT]") || t.starts_with("[EMERG]") {
        ERR
    } else if t.starts_with("[WARNING]") {
        WARNING
    } else if t.starts_with("[NOTICE]") {
        NOTICE
    } else if t.starts_with("[DEBUG]") {
        DEBUG
    } else {
        INFO
    }
}

/// The text of an `[ALERT]` line without its tag and `(pid) :` prefix, or None for other lines.
pub fn alert_text(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix("[ALERT]")?.trim_start();
    // haproxy >= 2.4: "[ALERT]    (1234) : config : ..."
    let rest = match rest.strip_prefix('(') {
        Some(r) => match r.find(')') {
            Some(i) => r[i + 1..].trim_start(),
            None => rest,
        },
        None => rest,
    };
    let rest = rest.strip_prefix(':').unwrap_or(rest).trim();
    Some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_blanks_control_characters_and_cuts_at_a_character_boundary() {
        assert_eq!(one_line("a\nb\tc\u{7f}d", 100), "a b c d");
        assert_eq!(one_line("abcdef", 4), "abcd");
        // "é" is two bytes: never half of it.
        assert_eq!(one_line("aéé", 4), "aé");
        assert_eq!(one_line("ééé", 5).len(), 4);
        assert_eq!(one_line("", 0), "");
    }

    #[test]
    fn rate_limit_lets_a_burst_through_per_window_and_counts_the_rest() {
        let mut r = RateLimit::new(3, std::time::Duration::from_secs(1));
        let s = 1_000_000_000;
        assert_eq!(r.allow(10), Some(0));
        assert_eq!(r.allow(11), Some(0));
        assert_eq!(r.allow(12), Some(0));
        for t in 13..1000 {
            assert_eq!(r.allow(t), None);
        }
        // The next window: the count of what was held back comes with its first line.
        assert_eq!(r.allow(10 + s), Some(987));
        assert_eq!(r.allow(11 + s), Some(0));
        let allowed = (0..100_000u64)
            .filter(|i| r.allow(3 * s + i * 20_000).is_some())
            .count();
        assert_eq!(allowed, 3 * 2, "100 000 events over 2 s make two windows of 3 lines");
    }

    #[test]
    fn a_full_pipe_drops_whole_lines_counts_them_and_finishes_a_line_cut_in_two() {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap();
        // Two pages: the first line takes one, the next write fills the other and is cut.
        fcntl(w, FcntlArg::F_SETPIPE_SZ(8192)).unwrap();
        let mut sink = Sink {
            fd: w,
            socket: false,
            rest: Vec::new(),
            dropped: 0,
        };
        let line = |c: &str| format!("{}\n", c.repeat(2999));
        assert!(sink.write_lines(line("a").as_bytes(), 1));
        let batch = format!("{}{}{}", line("b"), line("c"), "d\n".repeat(10));
        assert!(!sink.write_lines(batch.as_bytes(), 12));
        assert_eq!(
            sink.dropped, 10,
            "the whole lines after the cut one are dropped and counted"
        );
        assert!(!sink.rest.is_empty() && sink.rest.len() < 3000 && sink.rest.ends_with(b"c\n"));
        // Nothing more fits: dropped, counted, never blocking.
        assert!(!sink.write_lines(b"x\n", 1));
        assert_eq!(sink.dropped, 11);
        let mut buf = vec![0u8; 16384];
        let n = nix::unistd::read(r, &mut buf).unwrap();
        assert_eq!(n, 3000 + 4096);
        // The reader took it all: the rest of the cut line first, then the count, then the line.
        assert!(sink.write_lines(b"e\n", 1));
        let n = nix::unistd::read(r, &mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{:?}", lines);
        assert!(lines[0].chars().all(|c| c == 'c'), "{:?}", lines);
        assert!(
            lines[1].ends_with("11 log lines dropped: stderr was not ready to take them"),
            "{:?}",
            lines
        );
        assert_eq!(lines[2], "e");
        assert_eq!(sink.dropped, 0);
        let _ = (nix::unistd::close(r), nix::unistd::close(w));
    }

    #[test]
    fn a_full_socket_drops_lines_and_never_blocks() {
        use std::io::Read;
        use std::os::unix::io::AsRawFd;
        // The journal's stream socket: written with MSG_DONTWAIT, its own flags untouched.
        let (ours, mut journal) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut sink = Sink {
            fd: ours.as_raw_fd(),
            socket: true,
            rest: Vec::new(),
            dropped: 0,
        };
        let line = format!("{}\n", "x".repeat(999));
        let written = (0..100_000)
            .take_while(|_| sink.write_lines(line.as_bytes(), 1))
            .count();
        assert!(written < 100_000, "a socket nobody reads took 100 MB");
        assert!(sink.dropped >= 1);
        let dropped = sink.dropped + (0..5).filter(|_| !sink.write_lines(line.as_bytes(), 1)).count() as u64;
        journal.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        while journal.read(&mut buf).map_or(false, |n| n > 0) {}
        assert!(sink.write_lines(b"after\n", 1));
        let n = journal.read(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(
            text.ends_with(&format!(
                "{} log lines dropped: stderr was not ready to take them\nafter\n",
                dropped
            )),
            "{:?}",
            text
        );
    }

    #[test]
    fn the_prefix_only_when_journal_stream_names_stderr() {
        assert!(names_stderr(Some("64768:123456"), Some((64768, 123456))));
        assert!(!names_stderr(Some("64768:123456"), Some((64768, 999))));
        assert!(!names_stderr(Some("64768:123456"), None));
        assert!(!names_stderr(None, Some((64768, 123456))));
        assert!(!names_stderr(Some(""), Some((0, 0))));
        assert!(!names_stderr(Some("x:1"), Some((0, 1))));
        assert_eq!(
            line(ERR, format_args!("usage error: {}", "x\ny"), false),
            "usage error: x y\n"
        );
        assert_eq!(
            line(ERR, format_args!("usage error: {}", "x"), true),
            "<3>usage error: x\n"
        );
    }

    #[test]
    fn priorities_follow_haproxy_tags() {
        assert_eq!(haproxy_line_priority("[ALERT]    (12) : config : x"), ERR);
        assert_eq!(haproxy_line_priority("[WARNING]  (12) : Proxy fe stopped"), WARNING);
        assert_eq!(
            haproxy_line_priority("[NOTICE]   (12) : New worker (13) forked"),
            NOTICE
        );
        assert_eq!(haproxy_line_priority("plain text"), INFO);
    }

    #[test]
    fn alert_text_strips_tag_and_pid() {
        assert_eq!(
            alert_text("[ALERT]    (5967) : config : parsing [good.cfg:11] : unknown keyword 'garbage'"),
            Some("config : parsing [good.cfg:11] : unknown keyword 'garbage'")
        );
        assert_eq!(
            alert_text("[ALERT] 123/456 (7) : Starting frontend fe: cannot bind"),
            Some("123/456 (7) : Starting frontend fe: cannot bind")
        );
        assert_eq!(alert_text("[WARNING]  (1) : x"), None);
    }

    #[test]
    fn randomized_haproxy_lines_get_a_priority_and_alerts_their_text() {
        use crate::fuzz::{Rng, CASES};
        let mut rng = Rng::new(0x106);
        let valid = [
            "[ALERT]    (5967) : config : parsing [good.cfg:11] : unknown keyword 'garbage'",
            "[WARNING]  (12) : Proxy fe stopped (cumulated conns: FE: 0, BE: 0).",
            "[NOTICE]   (12) : New worker (13) forked",
            "[ALERT] 123/456 (7) : Starting frontend fe: cannot bind",
            "plain text",
        ];
        for case in 0..CASES {
            let base = *rng.pick(&valid);
            let line = if case % 3 == 0 {
                rng.text(60)
            } else {
                rng.mutate_text(base, b"[]():ALERT ")
            };
            let priority = haproxy_line_priority(&line);
            assert!((ERR..=DEBUG).contains(&priority), "case {}: {:?}", case, line);
            let is_alert = line.trim_start().starts_with("[ALERT]");
            assert_eq!(
                priority == ERR,
                is_alert || line.trim_start().starts_with("[EMERG]"),
                "case {}: {:?}",
                case,
                line
            );
            match alert_text(&line) {
                Some(text) => {
                    assert!(is_alert, "case {}: {:?}", case, line);
                    // A piece of the line itself, trimmed, without the tag.
                    let start = text.as_ptr() as usize - line.as_ptr() as usize;
                    assert!(
                        start <= line.len() && line[start..].starts_with(text),
                        "case {}: {:?}",
                        case,
                        line
                    );
                    assert_eq!(text, text.trim(), "case {}: {:?}", case, line);
                    assert!(
                        !text.starts_with("[ALERT]") || line.matches("[ALERT]").count() > 1,
                        "case {}: {:?}",
                        case,
                        line
                    );
                }
                None => assert!(!is_alert, "case {}: {:?}", case, line),
            }
        }
    }
}
