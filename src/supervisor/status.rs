//! The one-line STATUS= text (its shapes are in docs/DESIGN.md; tests match them).

use crate::mode::pid_list;
use crate::state::{LastReload, Restarts};

/// What the service is doing, for the STATUS= line.
pub struct StatusView<'a> {
    /// "foreground" or "master-worker".
    pub mode: &'a str,
    /// "starting gen 1 (foreground)", "reloading gen 4 (master-worker)", or "" when running.
    pub phase: &'a str,
    /// "gen 3 serving (pid 1234)", None before the first start.
    pub serving: Option<String>,
    pub draining: &'a [i32],
    pub last: &'a LastReload,
    pub restarts: &'a Restarts,
}

/// "starting gen 1 (foreground)", "reloading gen 4 (master-worker)".
pub fn phase_text(label: &str, gen: u32, mode: &str) -> String {
    format!("{} gen {} ({})", label, gen, mode)
}

pub fn status_line(v: &StatusView) -> String {
    let mut parts: Vec<String> = Vec::new();
    parts.push(if v.phase.is_empty() {
        v.mode.to_string()
    } else {
        v.phase.to_string()
    });
    if let Some(serving) = &v.serving {
        parts.push(serving.clone());
        // The count first: the line is cut at 1000 bytes, a long pid list last.
        parts.push(match v.draining.len() {
            0 => "draining: none".to_string(),
            n => format!("draining: {} ({})", n, pid_list(v.draining)),
        });
        // Before the last reload: its reason may be long, and the line is cut.
        if let (n @ 1..=u32::MAX, Some(last)) = (v.restarts.total, &v.restarts.last) {
            parts.push(format!("restarted after a crash: {} (last: {})", n, last));
        }
        parts.push(match v.last {
            LastReload::None => "last reload: none".to_string(),
            LastReload::Ok { ms } => format!("last reload: ok in {} ms", ms),
            LastReload::Failed { ms, reason } => format!("last reload: failed after {} ms: {}", ms, reason),
            LastReload::Late { ms } => format!(
                "last reload: took effect late, ready in {} ms (reported failed at --ready-timeout)",
                ms
            ),
        });
    }
    // Keep STATUS= well inside one datagram.
    crate::log::one_line(&parts.join("; "), 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        let none = LastReload::None;
        let ok = LastReload::Ok { ms: 85 };
        let failed = LastReload::Failed {
            ms: 30,
            reason: "config : parsing [a.cfg:3]\nx".into(),
        };
        let fg = StatusView {
            mode: "foreground",
            phase: "",
            serving: Some("gen 3 serving (pid 1234)".into()),
            draining: &[1200, 1201],
            last: &ok,
            restarts: &Restarts::default(),
        };
        assert_eq!(
            status_line(&fg),
            "foreground; gen 3 serving (pid 1234); draining: 2 (1200 1201); last reload: ok in 85 ms"
        );
        let mw = StatusView {
            mode: "master-worker",
            phase: "",
            serving: Some("gen 3 serving (master 1234, workers 1300 1301)".into()),
            draining: &[],
            last: &failed,
            restarts: &Restarts::default(),
        };
        assert_eq!(
            status_line(&mw),
            "master-worker; gen 3 serving (master 1234, workers 1300 1301); draining: none; last reload: failed after 30 ms: config : parsing [a.cfg:3] x"
        );
        let late = LastReload::Late { ms: 4100 };
        let mw = StatusView {
            mode: "master-worker",
            phase: "",
            serving: Some("gen 4 serving (master 1234, workers 1400)".into()),
            draining: &[1300],
            last: &late,
            restarts: &Restarts::default(),
        };
        assert_eq!(
            status_line(&mw),
            "master-worker; gen 4 serving (master 1234, workers 1400); draining: 1 (1300); \
             last reload: took effect late, ready in 4100 ms (reported failed at --ready-timeout)"
        );
        let starting = phase_text("starting", 1, "foreground");
        let start = StatusView {
            mode: "foreground",
            phase: &starting,
            serving: None,
            draining: &[],
            last: &none,
            restarts: &Restarts::default(),
        };
        assert_eq!(status_line(&start), "starting gen 1 (foreground)");
        let reloading = phase_text("reloading", 4, "foreground");
        let rel = StatusView {
            mode: "foreground",
            phase: &reloading,
            serving: Some("gen 3 serving (pid 9)".into()),
            draining: &[],
            last: &none,
            restarts: &Restarts::default(),
        };
        assert_eq!(
            status_line(&rel),
            "reloading gen 4 (foreground); gen 3 serving (pid 9); draining: none; last reload: none"
        );
        let restarted = Restarts {
            total: 2,
            recent_ns: vec![1, 2],
            last: Some("the serving haproxy pid 77 ended unexpectedly with status 137".into()),
        };
        let fg = StatusView {
            mode: "foreground",
            phase: "",
            serving: Some("gen 5 serving (pid 80)".into()),
            draining: &[],
            last: &ok,
            restarts: &restarted,
        };
        assert_eq!(
            status_line(&fg),
            "foreground; gen 5 serving (pid 80); draining: none; restarted after a crash: 2 (last: the serving \
             haproxy pid 77 ended unexpectedly with status 137); last reload: ok in 85 ms"
        );
        // Fifty draining generations: the count survives the cut at 1000 bytes.
        let many: Vec<i32> = (4_000_000..4_000_050).collect();
        let serving = Some("gen 52 serving (pid 9)".to_string());
        let fg = StatusView {
            mode: "foreground",
            phase: "",
            serving,
            draining: &many,
            last: &ok,
            restarts: &Restarts::default(),
        };
        let line = status_line(&fg);
        assert!(
            line.starts_with("foreground; gen 52 serving (pid 9); draining: 50 (4000000 4000001 "),
            "{}",
            line
        );
        assert!(line.len() <= 1000, "{}", line.len());
    }
}
