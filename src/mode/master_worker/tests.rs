//! Unit tests of `master_worker` (in a file of their own to keep the module short).

use super::*;
use nix::unistd::Pid;

const MASTER: i32 = 4_100_001;
const W1: i32 = 4_100_011;
const W2: i32 = 4_100_012;
const W3: i32 = 4_100_013;

/// A master-worker protocol with a made-up master: serving gen 1 (worker W1) and, when
/// `reload`, reloading to gen 2; else starting gen 1. Nothing is started.
fn protocol(reload: bool) -> MasterWorker {
    let launch = Launch::for_tests(&["-Ws", "-f", "h.cfg"]);
    let mut p = MasterWorker::fresh(launch, MasterSocket::bind().unwrap());
    if reload {
        p.generations.master = Some(Gen { n: 1, pid: MASTER });
        p.generations.workers = vec![W1];
    }
    let workers_before = if reload { vec![W1] } else { vec![] };
    // A reload the master has begun (it said RELOADING=1 after the signal).
    p.attempt = Some(MasterRequest {
        reload: MasterReload {
            gen: 1 + reload as u32,
            workers_before,
            signalled_ns: 1_000_000,
            master_began: true,
            loading_failed: false,
        },
        first: !reload,
        master: MASTER,
        children_at_ready: None,
    });
    p
}

fn reloading(usec: Option<u64>) -> Event {
    let message = match usec {
        Some(usec) => format!("RELOADING=1\nMONOTONIC_USEC={}\n", usec),
        None => "RELOADING=1\n".to_string(),
    };
    Event::MasterSaid {
        message,
        children: None,
    }
}

#[test]
fn a_late_ready_of_an_earlier_reload_is_not_this_ones() {
    let mut p = protocol(true);
    if let Some(attempt) = &mut p.attempt {
        attempt.reload.master_began = false;
    }
    // The earlier reload (timed out) ends now: its READY=1, its worker W2, its failure line.
    assert_eq!(
        p.on_event(&Event::Line("[WARNING] (1) : Loading failure!".into()), &[]),
        Change::Nothing
    );
    assert_eq!(p.on_event(&ready(&[W1, W2]), &[]), Change::StatusChanged);
    // Its RELOADING=1, dated before this reload's signal, does not begin this one either.
    assert_eq!(p.on_event(&reloading(Some(999)), &[]), Change::Nothing);
    assert_eq!(p.on_event(&ready(&[W1, W2]), &[]), Change::StatusChanged);
    // This reload's RELOADING=1: its READY=1 answers, and W2 is not its new worker.
    assert_eq!(p.on_event(&reloading(Some(1000)), &[]), Change::Nothing);
    assert_eq!(
        p.on_event(&ready(&[W1, W2]), &[]),
        failed("the master started no new worker")
    );
    // Undated (haproxy < 3.0): a RELOADING=1 after the signal begins it; the failure line of
    // the earlier reload does not count against it.
    let mut p = protocol(true);
    if let Some(attempt) = &mut p.attempt {
        attempt.reload.master_began = false;
    }
    p.on_event(&Event::Line("[WARNING] (1) : Loading failure!".into()), &[]);
    p.on_event(&ready(&[W1, W2]), &[]);
    p.on_event(&reloading(None), &[]);
    assert_eq!(
        p.on_event(&ready(&[W1, W2, W3]), &[]),
        Change::Attempt(Verdict::Serving)
    );
}

#[test]
fn a_reload_in_progress_is_carried_across_the_reexec() {
    let mut p = protocol(true);
    if let Some(attempt) = &mut p.attempt {
        attempt.reload.master_began = false;
    }
    let generations = match p.generations() {
        Generations::MasterWorker(g) => g,
        _ => unreachable!(),
    };
    let carried = generations.reload.clone().unwrap();
    assert_eq!(
        (
            carried.gen,
            carried.workers_before.clone(),
            carried.signalled_ns,
            carried.master_began
        ),
        (2, vec![W1], 1_000_000, false)
    );
    let launch = p.launch.clone();
    let mut q = MasterWorker::resume(launch, MasterSocket::bind().unwrap(), generations);
    assert!(q.generations.reload.is_none());
    q.on_event(&reloading(None), &[]);
    assert_eq!(q.on_event(&ready(&[W1, W2]), &[]), Change::Attempt(Verdict::Serving));
}

fn ready(children: &[i32]) -> Event {
    Event::MasterSaid {
        message: "READY=1\nMAINPID=4100001\n".into(),
        children: Some(children.to_vec()),
    }
}

fn failed(reason: &str) -> Change {
    Change::Attempt(Verdict::Failed {
        reason: reason.into(),
        code: 1,
    })
}

#[test]
fn ready_at_the_start_means_serving() {
    let mut p = protocol(false);
    assert_eq!(p.on_event(&ready(&[W1]), &[]), Change::Attempt(Verdict::Serving));
    assert_eq!(p.commit(), MASTER);
    assert_eq!(
        p.serving_text().unwrap(),
        format!("gen 1 serving (master {}, workers {})", MASTER, W1)
    );
    assert_eq!(p.signal_targets(), vec![MASTER]);
}

#[test]
fn a_reload_serves_when_the_master_has_a_new_worker() {
    let mut p = protocol(true);
    assert_eq!(p.on_event(&ready(&[W1, W2]), &[]), Change::Attempt(Verdict::Serving));
    p.commit();
    assert_eq!(p.generations.workers, vec![W2]);
    assert_eq!(p.draining(), vec![W1]);
    assert!(p.next_tick_ns().is_some());
}

#[test]
fn a_reload_without_a_new_worker_failed() {
    let mut p = protocol(true);
    assert_eq!(
        p.on_event(&ready(&[W1]), &[]),
        failed("the master started no new worker")
    );
    let mut p = protocol(true);
    assert_eq!(p.on_event(&ready(&[]), &[]), failed("the master started no new worker"));
}

#[test]
fn a_loading_failure_fails_the_reload_even_with_a_new_worker() {
    let mut p = protocol(true);
    assert_eq!(
        p.on_event(&Event::Line("[NOTICE]   (1) : Loading failure!".into()), &[]),
        Change::Nothing
    );
    assert_eq!(
        p.on_event(&ready(&[W1, W2]), &[]),
        failed("haproxy reported a loading failure")
    );
    // haproxy >= 3.1 says it in STATUS= of the READY=1 datagram itself.
    let mut p = protocol(true);
    let said = Event::MasterSaid {
        message: "READY=1\nSTATUS=Reload failed!\n".into(),
        children: Some(vec![W1, W3]),
    };
    assert_eq!(p.on_event(&said, &[]), failed("haproxy reported a loading failure"));
}

#[test]
fn messages_without_ready_decide_nothing() {
    let mut p = protocol(true);
    let reloading = Event::MasterSaid {
        message: "RELOADING=1\n".into(),
        children: None,
    };
    assert_eq!(p.on_event(&reloading, &[]), Change::Nothing);
    assert_eq!(
        p.on_event(
            &Event::Line("[ALERT] (1) : config : bad".into()),
            &["config : bad".into()]
        ),
        Change::Nothing
    );
}

#[test]
fn the_master_ending_fails_a_start_and_ends_a_running_service() {
    let mut p = protocol(false);
    let end = Event::ChildEnded {
        pid: MASTER,
        status: WaitStatus::Exited(Pid::from_raw(MASTER), 1),
    };
    assert_eq!(
        p.on_event(&end, &[]),
        Change::Attempt(Verdict::Failed {
            reason: "haproxy exited with status 1".into(),
            code: 1
        })
    );
    let mut p = protocol(true);
    let killed = WaitStatus::Signaled(Pid::from_raw(MASTER), Signal::SIGKILL, false);
    assert_eq!(
        p.on_event(
            &Event::ChildEnded {
                pid: MASTER,
                status: killed
            },
            &[]
        ),
        Change::ServingEnded(killed)
    );
    assert_eq!(p.serving_pid(), None);
}

#[test]
fn a_ready_whose_children_could_not_be_read_is_trusted_and_the_workers_learnt_later() {
    let mut p = protocol(true);
    let said = Event::MasterSaid {
        message: "READY=1\n".into(),
        children: None,
    };
    assert_eq!(p.on_event(&said, &[]), Change::Attempt(Verdict::Serving));
    assert_eq!(p.commit(), MASTER);
    // Not "none" and not the old worker: unknown, until a drain check reads them.
    assert_eq!(
        p.serving_text().unwrap(),
        format!("gen 2 serving (master {}, workers unknown)", MASTER)
    );
    assert_eq!(p.draining(), vec![W1]);
    assert!(p.next_tick_ns().is_some());
    assert!(p.drain_checked(&[W1, W2]));
    assert_eq!(
        p.serving_text().unwrap(),
        format!("gen 2 serving (master {}, workers {})", MASTER, W2)
    );
    assert_eq!(p.draining(), vec![W1]);
    assert!(p.drain_checked(&[W2]));
    assert_eq!(p.draining(), Vec::<i32>::new());
    assert!(p.next_tick_ns().is_none());
    // A loading failure still fails the reload without a worker list.
    let mut p = protocol(true);
    assert_eq!(
        p.on_event(&Event::Line("[NOTICE]   (1) : Loading failure!".into()), &[]),
        Change::Nothing
    );
    assert_eq!(p.on_event(&said, &[]), failed("haproxy reported a loading failure"));
    // A late READY=1 whose children are unknown: the next drain check learns them.
    let mut p = protocol(true);
    p.attempt = None;
    assert_eq!(p.on_event(&said, &[]), Change::StatusChanged);
    assert!(p.serving_text().unwrap().ends_with("workers unknown)"));
}

#[test]
fn still_serving_means_a_live_master_with_a_live_worker() {
    // A master that is gone serves nothing.
    let mut p = protocol(true);
    p.attempt = None;
    assert_eq!(p.still_serving(), StillServing::No);
    // This test process as the master, a child of it as its worker.
    let me = std::process::id() as i32;
    let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    p.generations.master = Some(Gen { n: 1, pid: me });
    p.generations.workers = vec![child.id() as i32];
    // Alive but without a listening socket: maybe not serving.
    assert!(matches!(p.still_serving(), StillServing::Unsure(_)));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(p.still_serving(), StillServing::No, "its only worker is gone");
    assert_eq!(p.generations.workers, Vec::<i32>::new(), "STATUS no longer names it");
    p.workers_unknown = true;
    assert_eq!(
        p.still_serving(),
        StillServing::Yes,
        "unknown workers: the live master is trusted"
    );
}

#[test]
fn the_master_saying_stopping_acknowledges_a_stop() {
    let mut p = protocol(true);
    assert!(p.acknowledges_stop());
    let stopping = Event::MasterSaid {
        message: "STOPPING=1\n".into(),
        children: None,
    };
    assert_eq!(p.on_event(&stopping, &[]), Change::Stopping);
    let status = Event::MasterSaid {
        message: "STATUS=stopping\n".into(),
        children: None,
    };
    assert_eq!(p.on_event(&status, &[]), Change::Nothing);
}

#[test]
fn a_late_ready_updates_the_workers() {
    let mut p = protocol(true);
    p.attempt = None;
    p.generations.old_workers = vec![W1];
    assert_eq!(p.on_event(&ready(&[W1, W3]), &[]), Change::StatusChanged);
    assert_eq!(p.generations.workers, vec![W3]);
}

#[test]
fn a_deadline_fails_the_attempt_with_69() {
    let mut p = protocol(true);
    let d = Event::Deadline {
        ready_timeout: Duration::from_secs(2),
    };
    assert_eq!(
        p.on_event(&d, &[]),
        Change::Attempt(Verdict::Failed {
            reason: "not ready after 2 s".into(),
            code: 69
        })
    );
}

/// The reload in progress (gen 2) passes --ready-timeout and is abandoned, as the loop does.
fn timed_out(p: &mut MasterWorker) {
    let timeout = Duration::from_millis(500);
    assert_eq!(
        p.on_event(&Event::Deadline { ready_timeout: timeout }, &[]),
        Change::Attempt(not_ready(timeout))
    );
    assert!(
        p.may_still_complete(2),
        "the master may still complete the reload that timed out"
    );
    assert!(!p.may_still_complete(3));
    assert_eq!(p.abandon(Abandon::ReloadFailed), None);
}

fn late(outcome: Change) -> (u32, bool) {
    match outcome {
        Change::LateReload { gen, took_effect, .. } => (gen, took_effect),
        other => panic!("not a late reload's end: {:?}", other),
    }
}

#[test]
fn a_reload_that_timed_out_and_completes_late_serves_and_is_told() {
    let mut p = protocol(true);
    timed_out(&mut p);
    assert_eq!(
        p.serving_text().unwrap(),
        format!("gen 1 serving (master {}, workers {})", MASTER, W1)
    );
    // Its READY=1, with a new worker: gen 2 serves, the old worker drains.
    assert_eq!(late(p.on_event(&ready(&[W1, W2]), &[])), (2, true));
    assert_eq!(
        p.serving_text().unwrap(),
        format!("gen 2 serving (master {}, workers {})", MASTER, W2)
    );
    assert_eq!(p.draining(), vec![W1]);
    assert!(!p.may_still_complete(2));
    // A later READY=1 (2.6's master says it again from its wait mode) is no second answer.
    assert_eq!(p.on_event(&ready(&[W2]), &[]), Change::StatusChanged);
    assert_eq!(
        p.serving_text().unwrap(),
        format!("gen 2 serving (master {}, workers {})", MASTER, W2)
    );
}

#[test]
fn a_reload_that_timed_out_and_ends_without_a_new_worker_or_with_a_loading_failure_did_not_take_effect() {
    let mut p = protocol(true);
    timed_out(&mut p);
    assert_eq!(late(p.on_event(&ready(&[W1]), &[])), (2, false));
    assert_eq!(
        p.serving_text().unwrap(),
        format!("gen 1 serving (master {}, workers {})", MASTER, W1)
    );
    let mut p = protocol(true);
    timed_out(&mut p);
    assert_eq!(
        p.on_event(&Event::Line("[WARNING] (1) : Loading failure!".into()), &[]),
        Change::Nothing
    );
    assert_eq!(late(p.on_event(&ready(&[W1, W2]), &[])), (2, false));
    assert!(p.serving_text().unwrap().starts_with("gen 1 serving"));
}

#[test]
fn a_late_answer_during_the_next_reload_ends_the_earlier_one_and_not_this_one() {
    let mut p = protocol(true);
    timed_out(&mut p);
    // The next reload (gen 3) is asked before the master answered the one that timed out.
    p.attempt = Some(MasterRequest {
        reload: MasterReload {
            gen: 3,
            workers_before: vec![W1],
            signalled_ns: 2_000_000,
            master_began: false,
            loading_failed: false,
        },
        first: false,
        master: MASTER,
        children_at_ready: None,
    });
    assert_eq!(late(p.on_event(&ready(&[W1, W2]), &[])), (2, true));
    assert_eq!(
        p.serving_text().unwrap(),
        format!("gen 2 serving (master {}, workers {})", MASTER, W2)
    );
    // gen 3's own answer: W2 is not its new worker, W3 is.
    assert_eq!(p.on_event(&reloading(None), &[]), Change::Nothing);
    assert_eq!(
        p.on_event(&ready(&[W1, W2, W3]), &[]),
        Change::Attempt(Verdict::Serving)
    );
    assert_eq!(p.commit(), MASTER);
    assert_eq!(
        p.serving_text().unwrap(),
        format!("gen 3 serving (master {}, workers {})", MASTER, W3)
    );
    assert_eq!(p.draining(), vec![W1, W2]);
}

#[test]
fn a_reload_that_may_still_complete_is_carried_across_the_reexec() {
    let mut p = protocol(true);
    timed_out(&mut p);
    let carried = match p.generations() {
        Generations::MasterWorker(mw) => mw,
        _ => unreachable!(),
    };
    assert_eq!(
        carried.late.as_ref().map(|l| (l.gen, l.workers_before.clone())),
        Some((2, vec![W1]))
    );
}
