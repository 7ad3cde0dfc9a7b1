//! Command line: --help/--version, usage errors, haproxy not found / not executable, -c and -v
//! handed straight to haproxy, the unit's command line with wrapper options in WRAPPER_MODE (with
//! the fake haproxy, tests/fake-haproxy).
//!
//! Every test owns its temp dir, port and notify socket (`util::Ctx`), which kills what the test
//! spawned when it ends. No test sleeps to wait for something: each waits for a handshake (notify
//! datagram, fake haproxy event, HTTP answer) or polls with a deadline.

#[macro_use]
mod util;

use std::fs;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Stdio;

use util::*;

/// Runs the wrapper to completion with stdout and stderr captured separately.
fn run_split(t: &Ctx, args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let mut cmd = t.command(args);
    let out = fs::File::create(t.path("out")).unwrap();
    let err = fs::File::create(t.path("err")).unwrap();
    cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err));
    let mut child = cmd.spawn().expect("spawn wrapper");
    let st = poll_until(T, || child.try_wait().unwrap());
    let st = match st {
        Some(st) => st,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("wrapper {args:?} did not exit within {T:?}");
        }
    };
    (
        st,
        fs::read_to_string(t.path("out")).unwrap(),
        fs::read_to_string(t.path("err")).unwrap(),
    )
}

#[test]
fn help_exits_0() {
    let t = Ctx::new("help");
    let (st, out, _) = run_split(&t, &["--help"]);
    assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
    assert!(out.contains("--haproxy"), "--help does not mention --haproxy:\n{out}");
    assert!(
        out.contains("--ready-timeout") && out.contains("--stop-timeout"),
        "--help:\n{out}"
    );
}

#[test]
fn version_exits_0() {
    let t = Ctx::new("version");
    let (st, out, _) = run_split(&t, &["--version"]);
    assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
    assert!(
        out.contains(env!("CARGO_PKG_VERSION")),
        "--version does not print the version:\n{out}"
    );
}

#[test]
fn usage_errors_exit_64_with_one_line_and_start_nothing() {
    let t = Ctx::new("usage");
    let cfg = t.write("h.cfg", "");
    let cases: Vec<Vec<&str>> = vec![
        vec!["--haproxy", FAKE_HAPROXY, "-f", &cfg, "-p"],
        vec!["--haproxy", FAKE_HAPROXY, "-Ws", "-f", &cfg, "-p"],
        vec!["--haproxy", FAKE_HAPROXY, "-f"],
        vec!["--haproxy", FAKE_HAPROXY, "-f", &cfg, "-x"],
        vec!["--bogus", "--haproxy", FAKE_HAPROXY, "-f", &cfg],
        vec!["--haproxy"],
        vec!["--haproxy", FAKE_HAPROXY, "--ready-timeout", "soon", "-f", &cfg],
        vec!["--haproxy", FAKE_HAPROXY, "--stop-timeout"],
    ];
    let mut failures = Vec::new();
    for args in &cases {
        let (st, _out, err) = run_split(&t, args);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        if st.code() != Some(64) || lines.len() != 1 {
            failures.push(format!("{args:?}: {} with stderr {err:?}", describe_status(&st)));
        }
    }
    t.notify().sync();
    assert!(
        t.events().is_empty(),
        "a usage error started haproxy:\n{}",
        t.events_text()
    );
    assert!(
        t.notify().messages().is_empty(),
        "a usage error sent notify messages:\n{}",
        t.notify().dump()
    );
    assert!(
        failures.is_empty(),
        "expected exit 64 and exactly one stderr line:\n{}",
        failures.join("\n")
    );
}

#[test]
fn haproxy_not_found_exits_127() {
    let mut t = Ctx::new("notfound");
    let cfg = t.write("h.cfg", "");
    let missing = t.p("no-such-haproxy");
    let st = t.run_to_exit(&["--haproxy", &missing, "-f", &cfg], T);
    assert_eq!(st.code(), Some(127), "{}", describe_status(&st));
    assert!(!t.log().trim().is_empty(), "no error message");
    assert_eq!(
        t.notify().count(Msg::is_ready),
        0,
        "READY=1 sent:\n{}",
        t.notify().dump()
    );
}

#[test]
fn unusable_reexec_state_exits_70_and_starts_nothing() {
    // The state variable marks a wrapper re-executed by itself; a damaged one (or one that
    // belongs to another pid) is an internal error, reported in one line, exit 70.
    for state in ["garbage", "v=1;pid=1;exe=2f;relay=3,4"] {
        let mut t = Ctx::new("badstate");
        let cfg = t.write("h.cfg", "");
        let mut cmd = t.command(&t.fake_args(Mode::Foreground, &cfg, &[]));
        cmd.env("HAPROXY_SYSTEMD_WRAPPER_STATE", state);
        t.spawn(cmd);
        let st = t.wait_exit(T);
        assert_eq!(st.code(), Some(70), "{}", describe_status(&st));
        let log = t.log();
        assert_eq!(log.trim().lines().count(), 1, "not one line:\n{}", log);
        assert!(log.contains("re-exec"), "no error message naming the re-exec:\n{}", log);
        assert_eq!(
            t.notify().count(Msg::is_ready),
            0,
            "READY=1 sent:\n{}",
            t.notify().dump()
        );
        t.assert_no_fake_left();
    }
}

#[test]
fn haproxy_not_executable_exits_126() {
    let mut t = Ctx::new("notexec");
    let cfg = t.write("h.cfg", "");
    let prog = t.write("haproxy", "#!/bin/sh\nexit 0\n");
    set_mode(Path::new(&prog), 0o644);
    let st = t.run_to_exit(&["--haproxy", &prog, "-f", &cfg], T);
    assert_eq!(st.code(), Some(126), "{}", describe_status(&st));
    assert!(!t.log().trim().is_empty(), "no error message");
    assert_eq!(
        t.notify().count(Msg::is_ready),
        0,
        "READY=1 sent:\n{}",
        t.notify().dump()
    );
}

#[test]
fn check_mode_execs_haproxy() {
    let mut t = Ctx::new("check");
    let cfg = t.write("h.cfg", "fake-marker checked\n");
    let st = t.run_to_exit(&["--haproxy", FAKE_HAPROXY, "-c", "-f", &cfg], T);
    assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
    let ev = t.events();
    let starts: Vec<&Event> = ev.iter().filter(|e| e.what == "start").collect();
    assert_eq!(starts.len(), 1, "events:\n{}", t.events_text());
    assert_eq!(starts[0].role, "check");
    assert_eq!(
        starts[0].pid, t.pid,
        "-c must exec haproxy in place of the wrapper (same pid)"
    );
    let argv = report_argv(&t.report(t.pid));
    assert!(argv.iter().any(|a| a == "-c"), "argv {argv:?}");
    assert!(
        !argv.iter().any(|a| a == "-db" || a == "-Ws"),
        "-c must be passed unchanged: {argv:?}"
    );
    assert!(
        t.notify().messages().is_empty(),
        "notify messages in -c mode:\n{}",
        t.notify().dump()
    );
}

#[test]
fn check_mode_passes_the_exit_status() {
    let mut t = Ctx::new("checkbad");
    let cfg = t.write("h.cfg", "fake-bad\n");
    let st = t.run_to_exit(&["--haproxy", FAKE_HAPROXY, "-c", "-f", &cfg], T);
    assert_eq!(st.code(), Some(1), "{}", describe_status(&st));
}

#[test]
fn version_of_haproxy_execs_haproxy() {
    let mut t = Ctx::new("hapver");
    let st = t.run_to_exit(&["--haproxy", FAKE_HAPROXY, "-vv"], T);
    assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
    assert!(t.log().contains("HAProxy version"), "log:\n{}", t.log());
    let starts: Vec<Event> = t.events().into_iter().filter(|e| e.what == "start").collect();
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0].pid, t.pid, "-vv must exec haproxy in place of the wrapper");
}

/// The unit runs `haproxy-systemd-wrapper $WRAPPER_MODE -f $CONFIG -p $PIDFILE $EXTRAOPTS`, with
/// $WRAPPER_MODE unquoted (split on spaces). WRAPPER_MODE="--ready-timeout 2 --stop-timeout 1 -x
/// SOCKET": the wrapper options in front are the wrapper's (foreground mode, --ready-timeout 2
/// applies), -x SOCKET is passed on reloads only, -p is written by the wrapper, -S dropped.
#[test]
fn wrapper_mode_with_wrapper_options_in_front_of_x() {
    let mut t = Ctx::new("wrappermode");
    let cfg = t.write("h.cfg", "");
    let sock = t.p("admin.sock");
    let _listener = UnixListener::bind(&sock).unwrap();
    let pidf = t.p("h.pid");
    let wrapper_mode = format!("--ready-timeout 2 --stop-timeout 1 -x {sock}");
    let mut args: Vec<String> = vec!["--haproxy".into(), FAKE_HAPROXY.into()];
    args.extend(wrapper_mode.split(' ').map(str::to_string));
    args.extend(
        ["-f", &cfg, "-p", &pidf, "-S", "/run/haproxy-master.sock"]
            .iter()
            .map(|s| s.to_string()),
    );
    t.start(&args);
    let ready = t.wait_ready(T);
    let g1 = first_fake(&t, Mode::Foreground);
    assert_eq!(
        ready.get("STATUS"),
        Some(format!("foreground; gen 1 serving (pid {g1}); draining: none; last reload: none").as_str())
    );
    assert_eq!(
        fs::read_to_string(&pidf).unwrap_or_default().trim(),
        g1.to_string(),
        "pid file"
    );
    let argv1 = report_argv(&t.report(g1));
    for bad in ["--ready-timeout", "--stop-timeout", "2", "1", "-x", "-p", "-S"] {
        assert!(
            !argv1.iter().any(|a| a == bad),
            "{bad} passed to haproxy at start: {argv1:?}"
        );
    }
    assert_reload_ok(&t.reload(T));
    let g2 = newest_serving(&t, Mode::Foreground);
    let argv2 = report_argv(&t.report(g2));
    let i = argv2
        .iter()
        .position(|a| a == "-x")
        .unwrap_or_else(|| panic!("no -x on reload: {argv2:?}"));
    assert_eq!(argv2.get(i + 1).map(String::as_str), Some(sock.as_str()));
    t.replace("h.cfg", "fake-hang\n");
    let status = t.reload(T);
    assert_shape(
        &status,
        &format!(
            "foreground; gen 2 serving (pid {g2}); draining: none; last reload: failed after # ms: not ready after 2 s"
        ),
    );
}

/// A wrapper option after haproxy's own options (say WRAPPER_MODE="-x SOCKET --ready-timeout 5"
/// in the unit) is bad input: a one-line usage error naming it, exit 64, nothing started. Fails
/// until fixed: the wrapper passes it on to haproxy, which (the real one) prints its whole usage
/// text and exits 1, so the unit fails to start with "haproxy exited with status 1".
#[test]
fn wrapper_option_after_haproxy_options_is_a_usage_error() {
    let t = Ctx::new("lateopt");
    let cfg = t.write("h.cfg", "");
    let sock = t.p("admin.sock");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--haproxy",
                FAKE_HAPROXY,
                "-x",
                &sock,
                "--ready-timeout",
                "5",
                "-f",
                &cfg,
            ],
            "--ready-timeout",
        ),
        (
            vec!["--haproxy", FAKE_HAPROXY, "-Ws", "-f", &cfg, "--stop-timeout", "1"],
            "--stop-timeout",
        ),
    ];
    for (args, opt) in &cases {
        let (st, _out, err) = run_split(&t, args);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(
            st.code(),
            Some(64),
            "{args:?}: {} with stderr {err:?}",
            describe_status(&st)
        );
        assert_eq!(lines.len(), 1, "{args:?}: stderr {err:?}");
        assert!(
            lines[0].contains(opt),
            "{args:?}: the error does not name {opt}: {err:?}"
        );
    }
    t.notify().sync();
    assert!(t.events().is_empty(), "haproxy was started:\n{}", t.events_text());
}

/// The `<N>` priority prefix only when stderr is the journal (JOURNAL_STREAM names stderr's
/// device and inode, as systemd's own tools check): by hand, a plain `usage error: ...`.
#[test]
fn priority_prefix_only_when_stderr_is_the_journal() {
    use std::os::unix::fs::MetadataExt;
    let t = Ctx::new("journalstream");
    // run_split's stderr is its own file, not the JOURNAL_STREAM the harness names: a terminal's case.
    let (st, _, err) = run_split(&t, &["--bogus", "-f", "x"]);
    assert_eq!(st.code(), Some(64));
    assert!(err.starts_with("usage error: ") && !err.contains("<3>"), "{err:?}");
    // stderr that is the stream JOURNAL_STREAM names: the prefix.
    let file = fs::File::create(t.path("journal")).unwrap();
    let meta = file.metadata().unwrap();
    let mut cmd = t.command(&["--bogus", "-f", "x"]);
    cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stderr(Stdio::from(file));
    let st = cmd.status().unwrap();
    assert_eq!(st.code(), Some(64));
    let err = fs::read_to_string(t.path("journal")).unwrap();
    assert!(err.starts_with("<3>usage error: "), "{err:?}");
}
