//! The pid file: written by the wrapper in foreground mode, never read for decisions (fake
//! haproxy, tests/fake-haproxy).
//!
//! Every test owns its temp dir, port and notify socket (`util::Ctx`), which kills what the test
//! spawned when it ends. No test sleeps to wait for something: each waits for a handshake (notify
//! datagram, fake haproxy event, HTTP answer) or polls with a deadline.

#[macro_use]
mod util;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::sys::signal::Signal;

use util::*;

#[test]
fn foreground_pid_file_follows_the_serving_pid_and_is_removed() {
    let mut t = Ctx::new("pidfile");
    let cfg = t.write("h.cfg", "");
    let pidf = t.p("h.pid");
    let args = t.fake_args(Mode::Foreground, &cfg, &["-p", &pidf]);
    t.start(&args);
    t.wait_ready(T);
    let g1 = first_fake(&t, Mode::Foreground);
    assert_eq!(
        fs::read_to_string(&pidf).unwrap_or_default().trim(),
        g1.to_string(),
        "pid file at READY"
    );
    assert_reload_ok(&t.reload(T));
    let g2 = newest_serving(&t, Mode::Foreground);
    // The old generation may still be listed while it drains; the new one must be.
    let content = fs::read_to_string(&pidf).unwrap_or_default();
    assert!(
        content.lines().any(|l| l.trim() == g2.to_string()),
        "pid file after reload: {content:?} (serving {g2})"
    );
    stop_and_expect_0(&mut t, T);
    assert!(!Path::new(&pidf).exists(), "pid file not removed at exit");
}

both_modes! {
    /// A pid file with garbage, a foreign pid, the test's own pid or megabytes of text changes
    /// nothing: reloads and stop work, nobody else is signalled.
    fn pid_file_content_is_never_trusted(mode) {
        let mut t = Ctx::new("pidgarbage");
        // A bystander process that logs every signal it gets (the fake, run by the test).
        let vdir = t.path("victim");
        fs::create_dir_all(&vdir).unwrap();
        let vcfg = t.write("victim.cfg", "");
        let victim = Command::new(FAKE_HAPROXY)
            .args(["-db", "-f", &vcfg])
            .env("FAKE_REPORT_DIR", &vdir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let vpid = victim.id() as i32;
        t.extra.push(victim);
        let vevents = vdir.join("events");
        poll_until(T, || if fs::read_to_string(&vevents).unwrap_or_default().contains("ready") { Some(()) } else { None })
            .expect("victim did not start");
        let me = std::process::id();
        let pidf = t.p("h.pid");
        fs::write(&pidf, "garbage\n\u{0}\u{1}\u{7f} 12ab\n99999999999999999999\n").unwrap();
        let cfg = t.write("h.cfg", "");
        let args = t.fake_args(mode, &cfg, &["-p", &pidf]);
        t.start(&args);
        t.wait_ready(T);
        fs::write(&pidf, format!("{vpid}\n{me}\n")).unwrap();
        assert_reload_ok(&t.reload(T));
        fs::write(&pidf, format!("{vpid}\n")).unwrap();
        t.signal(Signal::SIGTTOU);
        t.signal(Signal::SIGTTIN);
        assert_reload_ok(&t.reload(T));
        let big = "1234567890 garbage ".repeat(300_000);
        fs::write(&pidf, big).unwrap();
        assert_reload_ok(&t.reload(T));
        fs::write(&pidf, format!("{vpid}\n{me}\n")).unwrap();
        stop_and_expect_0(&mut t, T);
        let vev = fs::read_to_string(&vevents).unwrap_or_default();
        assert!(!vev.contains("signal"), "the bystander named in the pid file was signalled:\n{vev}");
        assert!(alive(vpid), "the bystander named in the pid file died");
    }
}
