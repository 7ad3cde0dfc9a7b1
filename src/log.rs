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
