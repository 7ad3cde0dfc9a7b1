//! Unit tests of `reexec` (in a file of their own to keep the module short).

use super::*;

fn sample(generations: Generations) -> Carried {
    Carried {
        wrapper_pid: 42,
        exe: PathBuf::from("/usr/sbin/haproxy-systemd-wrapper"),
        next_gen: 5,
        last_reload: LastReload::Failed {
            ms: 31,
            reason: "config : parsing [x.cfg:3] ; unknown=keyword\n".into(),
        },
        reloads: 7,
        relay_read: 3,
        relay_write: 4,
        reload_started_ns: 123456789,
        generations,
        attempt: None,
        ledger: None,
        held: vec![(7, 123456, true), (8, 654321, false)],
        left_paused: vec![654321],
        restarts: Restarts {
            total: 3,
            recent_ns: vec![11, 22],
            last: Some("gen 3: haproxy pid 1234 ended with status 137".into()),
        },
    }
}

fn foreground() -> Generations {
    Generations::Foreground(ForegroundGenerations {
        serving: Some(Gen { n: 4, pid: 1000 }),
        draining: vec![Gen { n: 2, pid: 900 }, Gen { n: 3, pid: 950 }],
        stopped: vec![Gen { n: 1, pid: 850 }],
        pidfile_written: true,
    })
}

fn master_worker() -> Generations {
    Generations::MasterWorker(MasterWorkerGenerations {
        master: Some(Gen { n: 4, pid: 1000 }),
        workers: vec![1001, 1002],
        old_workers: vec![990],
        socket_fd: 5,
        reload: None,
        late: None,
    })
}

#[test]
fn round_trips() {
    for state in [sample(foreground()), sample(master_worker())] {
        assert_eq!(decode(&encode(&state)).unwrap(), state);
    }
    // A master-worker reload carried in progress.
    let mut carried = sample(master_worker());
    if let Generations::MasterWorker(mw) = &mut carried.generations {
        mw.reload = Some(MasterReload {
            gen: 5,
            workers_before: vec![1001, 1002],
            signalled_ns: 77,
            master_began: false,
            loading_failed: true,
        });
    }
    carried.attempt = Some(CarriedAttempt {
        gen: 5,
        started_ns: 70,
        deadline_ns: 30_000_000_070,
        ledger_seq: Some(3),
    });
    assert_eq!(decode(&encode(&carried)).unwrap(), carried);
    carried.attempt = Some(CarriedAttempt {
        gen: 5,
        started_ns: 70,
        deadline_ns: 71,
        ledger_seq: None,
    });
    assert_eq!(decode(&encode(&carried)).unwrap(), carried);
    // A reload that timed out and may still take effect, and one that did.
    if let Generations::MasterWorker(mw) = &mut carried.generations {
        mw.late = Some(MasterReload {
            gen: 4,
            workers_before: vec![1001],
            signalled_ns: 55,
            master_began: true,
            loading_failed: false,
        });
    }
    carried.last_reload = LastReload::Late { ms: 4000 };
    assert_eq!(decode(&encode(&carried)).unwrap(), carried);
    assert!(encode(&carried).starts_with("v=2;"));
    let mut other = sample(Generations::Foreground(ForegroundGenerations::default()));
    other.last_reload = LastReload::Ok { ms: 85 };
    assert_eq!(decode(&encode(&other)).unwrap(), other);
}

#[test]
fn generations_stopped_for_max_draining_cross_the_exec_apart_from_the_draining_ones() {
    let text = encode(&sample(foreground()));
    assert!(text.contains(";draining=2:900,3:950;stopped=1:850;"), "{}", text);
    // Nothing stopped: no key (a wrapper that does not know it reads the same state as before).
    let mut none = sample(foreground());
    if let Generations::Foreground(fg) = &mut none.generations {
        fg.stopped.clear();
    }
    assert!(!encode(&none).contains("stopped="), "{}", encode(&none));
    assert_eq!(decode(&encode(&none)).unwrap(), none);
}

#[test]
fn reads_the_state_of_the_wrapper_before_the_mode_split() {
    // Written by the previous wrapper (both modes' keys side by side): an upgrade re-execs into this one.
    let old = "v=1;pid=42;exe=2f78;next_gen=3;serving=2:100;draining=;workers=101;old_workers=;last=ok:5;reloads=1;relay=3,4;master_sock=5;reload_t0=9;pidfile_written=0";
    let state = decode(old).unwrap();
    assert_eq!(
        state.generations,
        Generations::MasterWorker(MasterWorkerGenerations {
            master: Some(Gen { n: 2, pid: 100 }),
            workers: vec![101],
            old_workers: vec![],
            socket_fd: 5,
            reload: None,
            late: None
        })
    );
}

#[test]
fn rejects_damaged_state() {
    assert!(decode("").is_err());
    assert!(decode("v=3;pid=1;exe=2f;relay=3,4")
        .unwrap_err()
        .contains("newer than this wrapper's"));
    assert!(decode("v=2;pid=1;exe=2f;relay=3,4").is_ok());
    assert!(decode("v=2;pid=1;exe=2f;relay=3,4;attempt=1:2:3:-")
        .unwrap_err()
        .contains("half"));
    assert!(decode("v=2;pid=1;exe=2f;relay=3,4;master_sock=5;mw_reload=1:2:3:0:").is_err());
    assert!(decode("v=1;pid=x;exe=2f;relay=3,4").is_err());
    assert!(decode("v=1;pid=1;exe=2f").is_err());
    assert!(decode("v=1;pid=1;exe=2f;relay=3,4;draining=1:").is_err());
    assert!(decode("v=1;pid=1;exe=2f;relay=3,4;future_key=7").is_ok());
}

/// A carried state of either mode with every field random (within what a wrapper writes).
fn random_state(rng: &mut crate::fuzz::Rng) -> Carried {
    let pid = |rng: &mut crate::fuzz::Rng| 1 + rng.below(4_194_304) as i32;
    let gen = |rng: &mut crate::fuzz::Rng| Gen {
        n: rng.number() as u32,
        pid: 1 + rng.below(4_194_304) as i32,
    };
    let mut exe = rng.bytes(40);
    exe.retain(|&b| b != 0);
    exe.insert(0, b'/');
    let master_worker = rng.one_in(2);
    let in_progress = master_worker && rng.one_in(2);
    let generations = if master_worker {
        Generations::MasterWorker(MasterWorkerGenerations {
            master: if rng.one_in(4) { None } else { Some(gen(rng)) },
            workers: (0..rng.below(4)).map(|_| pid(rng)).collect(),
            old_workers: (0..rng.below(4)).map(|_| pid(rng)).collect(),
            socket_fd: rng.below(1024) as i32,
            reload: if in_progress {
                Some(MasterReload {
                    gen: rng.number() as u32,
                    workers_before: (0..rng.below(4)).map(|_| pid(rng)).collect(),
                    signalled_ns: rng.number(),
                    master_began: rng.one_in(2),
                    loading_failed: rng.one_in(2),
                })
            } else {
                None
            },
            late: if rng.one_in(3) {
                Some(MasterReload {
                    gen: rng.number() as u32,
                    workers_before: (0..rng.below(4)).map(|_| pid(rng)).collect(),
                    signalled_ns: rng.number(),
                    master_began: rng.one_in(2),
                    loading_failed: rng.one_in(2),
                })
            } else {
                None
            },
        })
    } else {
        Generations::Foreground(ForegroundGenerations {
            serving: if rng.one_in(4) { None } else { Some(gen(rng)) },
            draining: (0..rng.below(4)).map(|_| gen(rng)).collect(),
            stopped: (0..rng.below(3)).map(|_| gen(rng)).collect(),
            pidfile_written: rng.one_in(2),
        })
    };
    Carried {
        wrapper_pid: pid(rng),
        exe: PathBuf::from(OsString::from(std::ffi::OsStr::from_bytes(&exe))),
        next_gen: rng.number() as u32,
        last_reload: match rng.below(4) {
            0 => LastReload::None,
            1 => LastReload::Ok { ms: rng.number() },
            2 => LastReload::Late { ms: rng.number() },
            _ => LastReload::Failed {
                ms: rng.number(),
                reason: rng.text(60),
            },
        },
        reloads: rng.number() as u32,
        relay_read: rng.below(1024) as i32,
        relay_write: rng.below(1024) as i32,
        reload_started_ns: rng.number(),
        generations,
        attempt: if in_progress {
            Some(CarriedAttempt {
                gen: rng.number() as u32,
                started_ns: rng.number(),
                deadline_ns: rng.number(),
                ledger_seq: if rng.one_in(2) { None } else { Some(rng.number()) },
            })
        } else {
            None
        },
        ledger: if rng.one_in(2) {
            None
        } else {
            let mut l = crate::ledger::Ledger::new(pid(rng), rng.number());
            l.requests = rng.below(10) as u64;
            let seq = l.begin(rng.number() as u32, rng.number());
            l.finish(
                seq,
                crate::ledger::Outcome::Failed {
                    ms: rng.number(),
                    reasons: vec![rng.text(40)],
                },
            );
            Some(crate::ledger::Ledger::parse(&l.encode()).unwrap())
        },
        held: (0..rng.below(4))
            .map(|_| (rng.below(1024) as i32, rng.number(), rng.one_in(2)))
            .collect(),
        left_paused: (0..rng.below(3)).map(|_| rng.number()).collect(),
        restarts: if rng.one_in(2) {
            Restarts::default()
        } else {
            Restarts {
                total: 1 + rng.below(100) as u32,
                recent_ns: (0..rng.below(5)).map(|_| rng.number()).collect(),
                last: if rng.one_in(2) {
                    None
                } else {
                    Some(format!("x{}", rng.text(30)))
                },
            }
        },
    }
}

#[test]
fn randomized_states_round_trip_and_damaged_ones_fail_clearly() {
    use crate::fuzz::{assert_clear_error, Rng, CASES};
    let mut rng = Rng::new(0x5747e);
    for case in 0..CASES {
        let state = random_state(&mut rng);
        let encoded = encode(&state);
        assert_eq!(decode(&encoded).as_ref(), Ok(&state), "case {}: {}", case, encoded);
        // Damaged: a mutation of it, or random text; an error or a state, never a panic.
        let damaged = if case % 4 == 0 {
            rng.text(80)
        } else {
            rng.mutate_text(&encoded, b";=:,-0123456789abcdef")
        };
        match decode(&damaged) {
            Ok(decoded) => assert!(
                decoded.wrapper_pid > 0 && decoded.relay_read >= 0 && decoded.relay_write >= 0,
                "case {}: {:?}",
                case,
                damaged
            ),
            Err(e) => assert_clear_error(&damaged, &e),
        }
    }
}

#[test]
fn a_ledger_at_its_bound_crosses_the_exec() {
    // The largest ledger the wrapper writes, carried in one environment variable: under the
    // kernel's limit for one string (MAX_ARG_STRLEN, 128 KiB), and back as it was.
    let mut l = crate::ledger::Ledger::new(42, 7);
    for n in 0..100u64 {
        l.requests = n;
        let seq = l.begin(n as u32, n);
        l.finish(
            seq,
            crate::ledger::Outcome::Failed {
                ms: n,
                reasons: (0..30).map(|_| "漢".repeat(400)).collect(),
            },
        );
    }
    let mut state = sample(master_worker());
    state.ledger = Some(l);
    let env = format!("{}={}", ENV, encode(&state));
    assert!(env.len() < 128 * 1024, "{} bytes", env.len());
    assert_eq!(decode(&encode(&state)).unwrap(), state);
}
