//! Unit tests of `cli` (in a file of their own to keep the module short).

use super::*;

fn os(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

fn supervise(v: &[&str]) -> (Options, HaproxyArgs) {
    match parse(os(v)).unwrap() {
        Command::Supervise(o, h) => (o, h),
        other => panic!("expected Supervise, got {:?}", other),
    }
}

#[test]
fn master_worker_keeps_pidfile_and_master_cli() {
    let (_, h) = supervise(&[
        "-W",
        "-f",
        "/etc/haproxy/haproxy.cfg",
        "-p",
        "/run/haproxy.pid",
        "-S",
        "/run/m.sock",
    ]);
    assert_eq!(h.mode, Mode::MasterWorker);
    assert_eq!(
        h.base,
        os(&[
            "-Ws",
            "-p",
            "/run/haproxy.pid",
            "-S",
            "/run/m.sock",
            "-f",
            "/etc/haproxy/haproxy.cfg"
        ])
    );
    assert_eq!(h.pidfile, Some(PathBuf::from("/run/haproxy.pid")));
}

#[test]
fn foreground_takes_pidfile_and_socket_out_and_adds_db() {
    let (_, h) = supervise(&[
        "-f",
        "a.cfg",
        "-f",
        "b.cfg",
        "-p",
        "p",
        "-x",
        "/run/s.sock",
        "-D",
        "-S",
        "m",
        "-q",
    ]);
    assert_eq!(h.mode, Mode::Foreground);
    assert_eq!(h.base, os(&["-db", "-f", "a.cfg", "-f", "b.cfg", "-q"]));
    assert_eq!(h.handover_socket, Some(PathBuf::from("/run/s.sock")));
    assert_eq!(
        h.notes,
        vec![
            "-D dropped: haproxy stays under the wrapper".to_string(),
            "-S dropped: the master CLI needs master-worker mode (-Ws)".to_string()
        ]
    );
}

#[test]
fn user_sf_pids_are_dropped() {
    let (_, h) = supervise(&["-f", "a.cfg", "-sf", "1", "2", "3", "-q"]);
    assert_eq!(h.base, os(&["-db", "-f", "a.cfg", "-q"]));
}

#[test]
fn double_dash_ends_options() {
    let (_, h) = supervise(&["-Ws", "--", "a.cfg", "-p"]);
    assert_eq!(h.base, os(&["-Ws", "--", "a.cfg", "-p"]));
}

#[test]
fn wrapper_options_come_first() {
    let (o, h) = supervise(&[
        "--haproxy",
        "/opt/haproxy",
        "--ready-timeout=5",
        "--stop-timeout",
        "1.5",
        "-f",
        "x",
    ]);
    assert_eq!(o.haproxy, Some(PathBuf::from("/opt/haproxy")));
    assert_eq!(o.ready_timeout, Duration::from_secs(5));
    assert_eq!(o.stop_timeout, Duration::from_millis(1500));
    assert_eq!(h.base, os(&["-db", "-f", "x"]));
}

#[test]
fn wrapper_options_after_haproxys_arguments_are_refused() {
    match parse(os(&["-x", "/run/a.sock", "--ready-timeout", "5", "-f", "x"])) {
        Err(Error::Usage(m)) => assert!(m.starts_with("--ready-timeout after haproxy's arguments"), "{}", m),
        other => panic!("{:?}", other),
    }
    // After "--" everything is haproxy's (configuration files).
    assert!(parse(os(&["-f", "x", "--", "--odd-file-name"])).is_ok());
}

#[test]
fn usage_errors() {
    for bad in [
        &["-f"][..],
        &["-f", "x", "-p"],
        &["--bogus", "-f", "x"],
        &[],
        &["--ready-timeout", "abc", "-f", "x"],
        &["--ready-timeout", "0", "-f", "x"],
        &["--haproxy"],
    ] {
        match parse(os(bad)) {
            Err(Error::Usage(_)) => {}
            other => panic!("{:?} gave {:?}", bad, other),
        }
    }
}

#[test]
fn wait_reload_client() {
    match parse(os(&[
        "--wait-reload",
        "1234",
        "--run-dir",
        "/tmp/r",
        "--timeout",
        "2.5",
    ]))
    .unwrap()
    {
        Command::WaitReload(w) => {
            assert_eq!(
                (w.pid, w.run_dir, w.timeout),
                (1234, PathBuf::from("/tmp/r"), Duration::from_millis(2500))
            )
        }
        other => panic!("{:?}", other),
    }
    match parse(os(&["--wait-reload", "77"])).unwrap() {
        Command::WaitReload(w) => assert_eq!(
            (w.run_dir, w.timeout),
            (
                PathBuf::from("/run/haproxy-systemd-wrapper"),
                crate::client::DEFAULT_TIMEOUT
            )
        ),
        other => panic!("{:?}", other),
    }
    for bad in [
        &["--wait-reload", ""][..],
        &["--wait-reload", "0"],
        &["--wait-reload", "x"],
        &["--wait-reload", "5", "-f", "x"],
        &["--timeout", "3", "-f", "x"],
        &["--run-dir", "", "-f", "x"],
    ] {
        assert!(matches!(parse(os(bad)), Err(Error::Usage(_))), "{:?}", bad);
    }
}

#[test]
fn tiny_timeouts_are_refused_not_rounded_to_zero() {
    assert!(matches!(
        parse(os(&["--ready-timeout", "0.0001", "-f", "x"])),
        Err(Error::Usage(_))
    ));
    let (o, _) = supervise(&["--ready-timeout", "0.001", "-f", "x"]);
    assert_eq!(o.ready_timeout, Duration::from_millis(1));
}

#[test]
fn help_version_and_oneshots() {
    assert!(matches!(parse(os(&["--help"])).unwrap(), Command::Help));
    assert!(matches!(parse(os(&["--version"])).unwrap(), Command::Version));
    assert!(matches!(parse(os(&["-c", "-f", "x"])).unwrap(), Command::Exec(..)));
    assert!(matches!(parse(os(&["-vv"])).unwrap(), Command::Exec(..)));
    // "-c" as the value of -f is a file name, not the check flag.
    assert!(matches!(parse(os(&["-f", "-c"])).unwrap(), Command::Supervise(..)));
}

#[test]
fn randomized_command_lines_parse_or_fail_with_a_usage_error() {
    use crate::fuzz::{assert_clear_error, Rng, CASES};
    use std::os::unix::ffi::OsStringExt;
    const WORDS: &[&str] = &[
        "--haproxy",
        "--ready-timeout",
        "--stop-timeout",
        "--run-dir",
        "--wait-reload",
        "--timeout",
        "--help",
        "--version",
        "--",
        "--bogus",
        "--haproxy=",
        "--ready-timeout=0.5",
        "-W",
        "-Ws",
        "-D",
        "-db",
        "-f",
        "-p",
        "-x",
        "-S",
        "-sf",
        "-st",
        "-c",
        "-v",
        "-vv",
        "-q",
        "-L",
        "-C",
        "-N",
        "-m",
        "-n",
        "0",
        "0.0001",
        "0.001",
        "1",
        "30",
        "86400",
        "86401",
        "-1",
        "1e3",
        "nan",
        "inf",
        "x",
        "",
        "/etc/haproxy/h.cfg",
        "1234",
        "/run/h.sock",
    ];
    let valid: &[&[&str]] = &[
        &["-f", "/etc/haproxy/h.cfg"],
        &[
            "--ready-timeout",
            "5",
            "--",
            "-Ws",
            "-f",
            "h.cfg",
            "-p",
            "/run/h.pid",
            "-S",
            "/run/m.sock",
        ],
        &[
            "--stop-timeout",
            "1.5",
            "-f",
            "h.cfg",
            "-x",
            "/run/a.sock",
            "-D",
            "-sf",
            "1",
            "2",
        ],
        &["--wait-reload", "1234", "--timeout", "10"],
    ];
    let mut rng = Rng::new(0xc11);
    for case in 0..CASES {
        let mut args: Vec<OsString> = match case % 3 {
            0 => (0..rng.below(8)).map(|_| OsString::from(*rng.pick(WORDS))).collect(),
            _ => rng.pick(valid).iter().map(OsString::from).collect(),
        };
        // Edits: a word replaced, inserted or removed; random bytes (not always UTF-8) as a word.
        for _ in 0..rng.below(4) {
            let at = rng.below(args.len() + 1);
            let word = if rng.one_in(3) {
                OsString::from_vec(rng.bytes(12))
            } else {
                OsString::from(*rng.pick(WORDS))
            };
            match rng.below(3) {
                0 => args.insert(at, word),
                1 if at < args.len() => args[at] = word,
                _ if at < args.len() => {
                    args.remove(at);
                }
                _ => {}
            }
        }
        match parse(args.clone()) {
            Ok(Command::Supervise(o, h)) => {
                for t in [o.ready_timeout, o.stop_timeout] {
                    assert!(
                        t >= Duration::from_millis(1) && t <= Duration::from_secs(86400),
                        "case {}: {:?} gave {:?}",
                        case,
                        args,
                        t
                    );
                }
                let mode_flag = if h.mode == Mode::MasterWorker { "-Ws" } else { "-db" };
                assert!(
                    h.base.iter().any(|a| a == mode_flag),
                    "case {}: {:?} gave {:?}",
                    case,
                    args,
                    h.base
                );
            }
            Ok(Command::Exec(_, rest)) => assert!(!rest.is_empty(), "case {}: {:?}", case, args),
            Ok(_) => {}
            Err(e) => {
                assert_eq!(
                    e.exit_code(),
                    crate::error::EXIT_USAGE,
                    "case {}: {:?}: {}",
                    case,
                    args,
                    e
                );
                assert_clear_error(&args, &e.to_string());
            }
        }
    }
}

#[test]
fn max_draining_takes_a_positive_whole_number() {
    let (o, _) = supervise(&["-f", "x"]);
    assert_eq!((o.max_draining, o.max_draining()), (None, DEFAULT_MAX_DRAINING));
    assert_eq!(DEFAULT_MAX_DRAINING, 50);
    let (o, _) = supervise(&["--max-draining", "3", "-f", "x"]);
    assert_eq!((o.max_draining, o.max_draining()), (Some(3), 3));
    let (o, h) = supervise(&["--max-draining=1", "-Ws", "-f", "x"]);
    assert_eq!(
        (o.max_draining(), h.mode),
        (1, Mode::MasterWorker),
        "accepted in master-worker mode too"
    );
}

#[test]
fn max_draining_refuses_zero_negatives_and_words() {
    for bad in ["0", "-1", "-0", "abc", "", "2.5", "1e3", " 3", "99999999999"] {
        match parse(os(&["--max-draining", bad, "-f", "x"])) {
            Err(e @ Error::Usage(_)) => {
                let m = e.to_string();
                assert_eq!(e.exit_code(), crate::error::EXIT_USAGE);
                assert!(!m.contains('\n'), "{:?}", m);
                let named = format!(
                    "--max-draining takes a positive whole number of generations, not '{}'",
                    bad
                );
                assert!(m.contains(&named), "{:?} gave {:?}", bad, m);
            }
            other => panic!("--max-draining {:?} gave {:?}", bad, other),
        }
    }
    match parse(os(&["--max-draining"])) {
        Err(Error::Usage(m)) => assert!(m.contains("--max-draining"), "{}", m),
        other => panic!("{:?}", other),
    }
    // After haproxy's arguments it is a wrapper option in the wrong place.
    match parse(os(&["-f", "x", "--max-draining", "3"])) {
        Err(Error::Usage(m)) => assert!(m.starts_with("--max-draining after haproxy's arguments"), "{}", m),
        other => panic!("{:?}", other),
    }
}
