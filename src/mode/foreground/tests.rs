//! Unit tests of `foreground` (in a file of their own to keep the module short).

use super::*;
use nix::unistd::Pid;

const SENTINEL: i32 = 4_000_001;
const NEW: i32 = 4_000_002;
const SERVING: i32 = 4_000_003;
const DRAINING: i32 = 4_000_004;

fn exit(pid: i32, code: i32) -> Event {
    Event::ChildEnded {
        pid,
        status: WaitStatus::Exited(Pid::from_raw(pid), code),
    }
}

/// A foreground protocol in the middle of a start (no serving generation) or of a reload of
/// gen 2 (gen 1 serving, gen 0 draining), with made-up pids: nothing is started.
fn attempt(first: bool, with_handover: bool) -> Foreground {
    let launch = Launch::for_tests(&["-f", "h.cfg", "-x", "/nonexistent/admin.sock"]);
    let generations = if first {
        ForegroundGenerations::default()
    } else {
        ForegroundGenerations {
            serving: Some(Gen { n: 1, pid: SERVING }),
            draining: vec![Gen { n: 0, pid: DRAINING }],
            stopped: vec![],
            pidfile_written: false,
        }
    };
    let attempt = NewGeneration {
        gen: 2,
        first,
        sentinel: SENTINEL,
        haproxy: Some(NEW),
        with_handover,
        ours: None,
        old_in_sf: false,
        retried: false,
        serving_ended: None,
    };
    Foreground {
        launch,
        generations,
        attempt: Some(attempt),
    }
}

#[test]
fn the_sentinel_exiting_0_means_serving() {
    let mut p = attempt(false, false);
    assert!(p.decides_attempt(SENTINEL) && !p.decides_attempt(NEW));
    assert_eq!(p.on_event(&exit(SENTINEL, 0), &[]), Change::Attempt(Verdict::Serving));
    assert_eq!(p.commit(), NEW);
    assert_eq!(p.serving_pid(), Some(NEW));
    assert_eq!(p.draining(), vec![DRAINING, SERVING]);
    assert_eq!(p.serving_text().unwrap(), format!("gen 2 serving (pid {})", NEW));
}

#[test]
fn a_sentinel_ending_otherwise_decides_nothing() {
    let mut p = attempt(false, false);
    let killed = Event::ChildEnded {
        pid: SENTINEL,
        status: WaitStatus::Signaled(Pid::from_raw(SENTINEL), Signal::SIGKILL, false),
    };
    assert_eq!(p.on_event(&killed, &[]), Change::Nothing);
    assert_eq!(p.on_event(&exit(SENTINEL, 1), &[]), Change::Nothing);
}

#[test]
fn the_new_haproxy_exiting_fails_the_attempt_with_its_status() {
    let mut p = attempt(true, false);
    assert_eq!(
        p.on_event(&exit(NEW, 3), &[]),
        Change::Attempt(Verdict::Failed {
            reason: "haproxy exited with status 3".into(),
            code: 3
        })
    );
    let mut p = attempt(true, false);
    let killed = Event::ChildEnded {
        pid: NEW,
        status: WaitStatus::Signaled(Pid::from_raw(NEW), Signal::SIGSEGV, true),
    };
    assert_eq!(
        p.on_event(&killed, &[]),
        Change::Attempt(Verdict::Failed {
            reason: "haproxy exited with status 139".into(),
            code: 139
        })
    );
}

#[test]
fn a_failed_handover_is_retried_once_a_config_error_is_not() {
    // A configuration alert: no second try.
    let mut p = attempt(false, true);
    let alerts = vec!["config : parsing [cfg:11] : unknown keyword 'garbage'".to_string()];
    assert_eq!(
        p.on_event(&exit(NEW, 1), &alerts),
        Change::Attempt(Verdict::Failed {
            reason: "haproxy exited with status 1".into(),
            code: 1
        })
    );
    // The socket named: a second try, without -x (here it cannot start: /nonexistent/haproxy).
    let mut p = attempt(false, true);
    let alerts = vec!["Failed to get the sockets from the old process!".to_string()];
    match p.on_event(&exit(NEW, 1), &alerts) {
        Change::Attempt(Verdict::Failed { reason, code: 127 }) => assert!(reason.contains("not found"), "{}", reason),
        other => panic!("no retry: {:?}", other),
    }
    assert!(p.attempt.as_ref().map_or(false, |attempt| attempt.retried
        && !attempt.with_handover
        && attempt.old_in_sf));
    // The retry's own end is final.
    if let Some(attempt) = &mut p.attempt {
        attempt.haproxy = Some(NEW);
    }
    assert_eq!(
        p.on_event(&exit(NEW, 1), &alerts),
        Change::Attempt(Verdict::Failed {
            reason: "haproxy exited with status 1".into(),
            code: 1
        })
    );
    assert!(handover_may_be_at_fault(&[]));
    // "cannot bind socket" is not about the hand-over (it names a socket, though).
    let mut p = attempt(false, true);
    let alerts =
        vec!["Starting frontend fe: cannot bind socket (Cannot assign requested address) [192.0.2.1:80]".to_string()];
    assert_eq!(
        p.on_event(&exit(NEW, 1), &alerts),
        Change::Attempt(Verdict::Failed {
            reason: "haproxy exited with status 1".into(),
            code: 1
        })
    );
}

#[test]
fn haproxy_names_the_addresses_in_use() {
    let alerts = |lines: &[&str]| lines.iter().map(|l| l.to_string()).collect::<Vec<String>>();
    let found = addresses_in_use(&alerts(&[
        "Binding [/etc/h.cfg:9] for frontend fe: cannot bind socket (Address already in use) for [::1:33991]",
        "Starting frontend fe: cannot bind socket (Address already in use) [0.0.0.0:9804] ",
        "Binding [/etc/h.cfg:8] for frontend fe: cannot bind socket (Address already in use) for [no-address]",
        "Binding [/etc/h.cfg:7] for frontend fe: cannot bind socket (Permission denied) for [127.0.0.1:80]",
    ]));
    assert_eq!(
        found,
        vec![
            Some("[::1]:33991".parse().unwrap()),
            Some("0.0.0.0:9804".parse().unwrap()),
            None
        ]
    );
}

#[test]
fn address_in_use_is_retried_once_only_when_our_own_generation_holds_it() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let alerts = vec![format!(
        "Binding [h.cfg:3] for frontend fe: cannot bind socket (Address already in use) for [{}]",
        listener.local_addr().unwrap()
    )];
    let status_1 = Change::Attempt(Verdict::Failed {
        reason: "haproxy exited with status 1".into(),
        code: 1,
    });
    // Another program holds it (this test process is none of the generations): failed at once,
    // nothing paused.
    let mut p = attempt(false, false);
    assert_eq!(p.on_event(&exit(NEW, 1), &alerts), status_1);
    assert!(p
        .attempt
        .as_ref()
        .map_or(false, |attempt| !attempt.retried && !attempt.old_in_sf));
    // The serving generation holds it (noreuseport): retried once with the older generations in -sf.
    let mut p = attempt(false, false);
    p.generations.serving = Some(Gen {
        n: 1,
        pid: std::process::id() as i32,
    });
    match p.on_event(&exit(NEW, 1), &alerts) {
        Change::Attempt(Verdict::Failed { code: 127, .. }) => {}
        other => panic!("no retry: {:?}", other),
    }
    assert!(p
        .attempt
        .as_ref()
        .map_or(false, |attempt| attempt.retried && attempt.old_in_sf));
    if let Some(attempt) = &mut p.attempt {
        attempt.haproxy = Some(NEW);
    }
    assert_eq!(p.on_event(&exit(NEW, 1), &alerts), status_1);
    // Nobody listens there any more, or haproxy named no address: no retry.
    drop(listener);
    let mut p = attempt(false, false);
    p.generations.serving = Some(Gen {
        n: 1,
        pid: std::process::id() as i32,
    });
    assert_eq!(p.on_event(&exit(NEW, 1), &alerts), status_1);
    let unnamed = vec!["Starting frontend fe: cannot bind socket (Address already in use)".to_string()];
    let mut p = attempt(false, false);
    assert_eq!(p.on_event(&exit(NEW, 1), &unnamed), status_1);
    // At the first start there is nobody to wait for: no retry.
    let mut p = attempt(true, false);
    assert_eq!(p.on_event(&exit(NEW, 1), &alerts), status_1);
}

#[test]
fn the_serving_generation_ending_during_a_reload_is_left_to_the_reload() {
    let mut p = attempt(false, false);
    assert_eq!(p.on_event(&exit(SERVING, 0), &[]), Change::Attempt(Verdict::Pending));
    assert_eq!(p.on_event(&exit(SENTINEL, 0), &[]), Change::Attempt(Verdict::Serving));
    p.commit();
    assert_eq!(p.draining(), vec![DRAINING], "the ended generation is not draining");
    // A failed reload returns the serving generation's end (the service is gone).
    let mut p = attempt(false, false);
    p.on_event(&exit(SERVING, 7), &[]);
    p.on_event(&exit(NEW, 1), &[]);
    assert_eq!(
        p.abandon(Abandon::ReloadFailed),
        Some(WaitStatus::Exited(Pid::from_raw(SERVING), 7))
    );
    assert_eq!(p.serving_pid(), None);
}

#[test]
fn outside_an_attempt_the_serving_end_is_the_services_and_draining_ends_change_status() {
    let mut p = attempt(false, false);
    p.attempt = None;
    assert_eq!(p.on_event(&exit(DRAINING, 0), &[]), Change::StatusChanged);
    assert_eq!(
        p.on_event(&exit(SERVING, 2), &[]),
        Change::ServingEnded(WaitStatus::Exited(Pid::from_raw(SERVING), 2))
    );
    assert_eq!(p.on_event(&exit(12345678, 0), &[]), Change::Nothing);
    assert_eq!(p.signal_targets(), Vec::<i32>::new());
}

#[test]
fn a_deadline_fails_the_attempt_with_69() {
    let mut p = attempt(true, false);
    let timeout = std::time::Duration::from_millis(1500);
    assert_eq!(
        p.on_event(&Event::Deadline { ready_timeout: timeout }, &[]),
        Change::Attempt(Verdict::Failed {
            reason: "not ready after 1.5 s".into(),
            code: 69
        })
    );
    p.attempt = None;
    assert_eq!(
        p.on_event(&Event::Deadline { ready_timeout: timeout }, &[]),
        Change::Nothing
    );
}

#[test]
fn past_max_draining_the_oldest_draining_generation_is_stopped_and_reaped_as_usual() {
    let mut p = attempt(false, false);
    p.launch.max_draining = 1;
    assert_eq!(p.on_event(&exit(SENTINEL, 0), &[]), Change::Attempt(Verdict::Serving));
    assert_eq!(p.commit(), NEW);
    // gen 1 (SERVING) now drains too: two, one more than the bound; gen 0 is the oldest.
    assert_eq!(p.draining(), vec![SERVING]);
    assert_eq!(p.generations.stopped, vec![Gen { n: 0, pid: DRAINING }]);
    assert_eq!(
        p.signal_targets(),
        vec![NEW, SERVING, DRAINING],
        "a stop still waits for the stopped one"
    );
    match p.generations() {
        Generations::Foreground(fg) => assert_eq!(fg.stopped, vec![Gen { n: 0, pid: DRAINING }]),
        other => panic!("{:?}", other),
    }
    assert_eq!(p.on_event(&exit(DRAINING, 143), &[]), Change::StatusChanged);
    assert!(p.generations.stopped.is_empty());
    assert_eq!(p.signal_targets(), vec![NEW, SERVING]);
}

#[test]
fn within_max_draining_nothing_is_stopped() {
    let mut p = attempt(false, false);
    p.launch.max_draining = 2;
    p.on_event(&exit(SENTINEL, 0), &[]);
    p.commit();
    assert_eq!(p.draining(), vec![DRAINING, SERVING]);
    assert!(p.generations.stopped.is_empty());
}

#[test]
fn the_oldest_go_first_whatever_the_order_they_were_carried_in() {
    let mut p = attempt(false, false);
    p.launch.max_draining = 1;
    // gen 10 replaces gen 9; carried out of order: gen 7 first.
    p.attempt.as_mut().unwrap().gen = 10;
    p.generations.serving = Some(Gen { n: 9, pid: SERVING });
    p.generations.draining = vec![
        Gen { n: 7, pid: 4_000_017 },
        Gen { n: 4, pid: 4_000_014 },
        Gen { n: 6, pid: DRAINING },
    ];
    p.on_event(&exit(SENTINEL, 0), &[]);
    p.commit();
    let stopped: Vec<u32> = p.generations.stopped.iter().map(|generation| generation.n).collect();
    assert_eq!(stopped, vec![4, 6, 7]);
    assert_eq!(p.draining(), vec![SERVING]);
}
