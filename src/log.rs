//! The wrapper's logger: one line per event on stderr, with the journald priority prefix
//! (`<3>` error ... `<7>` debug) so that `journalctl -p` filters work.

use std::fmt;
use std::io::Write;

pub const ERR: u8 = 3;
pub const WARNING: u8 = 4;
pub const NOTICE: u8 = 5;
pub const INFO: u8 = 6;
pub const DEBUG: u8 = 7;

/// Writes one log line, in one write(2) so that no reader (journald, a tail) sees half of it.
/// A line never contains a newline: embedded ones become spaces.
pub fn write(priority: u8, args: fmt::Arguments) {
    let text = fmt::format(args).replace('\n', " ");
    let line = format!("<{}>{}\n", priority, text);
    // Nothing sensible can be done when stderr is gone; the wrapper keeps supervising.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
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
        RateLimit { burst, window_ns: window.as_nanos() as u64, window_start_ns: 0, in_window: 0, held_back: 0 }
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
        let allowed = (0..100_000u64).filter(|i| r.allow(3 * s + i * 20_000).is_some()).count();
        assert_eq!(allowed, 3 * 2, "100 000 events over 2 s make two windows of 3 lines");
    }

    #[test]
    fn priorities_follow_haproxy_tags() {
        assert_eq!(haproxy_line_priority("[ALERT]    (12) : config : x"), ERR);
        assert_eq!(haproxy_line_priority("[WARNING]  (12) : Proxy fe stopped"), WARNING);
        assert_eq!(haproxy_line_priority("[NOTICE]   (12) : New worker (13) forked"), NOTICE);
        assert_eq!(haproxy_line_priority("plain text"), INFO);
    }

    #[test]
    fn alert_text_strips_tag_and_pid() {
        assert_eq!(
            alert_text("[ALERT]    (5967) : config : parsing [good.cfg:11] : unknown keyword 'garbage'"),
            Some("config : parsing [good.cfg:11] : unknown keyword 'garbage'")
        );
        assert_eq!(alert_text("[ALERT] 123/456 (7) : Starting frontend fe: cannot bind"), Some("123/456 (7) : Starting frontend fe: cannot bind"));
        assert_eq!(alert_text("[WARNING]  (1) : x"), None);
    }
}
