//! Unit tests of `ledger` (in a file of their own to keep the module short).

use super::*;

fn sample() -> Ledger {
    let mut l = Ledger::new(42, 777);
    l.requests = 2;
    let a = l.begin(2, 1000);
    l.finish(a, Outcome::Ok { ms: 48 });
    l.requests = 3;
    let b = l.begin(3, 2000);
    l.finish(
        b,
        Outcome::Failed {
            ms: 20,
            reasons: vec![
                "cannot bind (haproxy exited with status 1)".into(),
                "[ALERT] line\nwith newline".into(),
            ],
        },
    );
    l.begin(4, 3000);
    l
}

#[test]
fn round_trips() {
    let l = sample();
    let back = Ledger::parse(&l.encode()).unwrap();
    assert_eq!(
        back.attempts[1].outcome,
        Outcome::Failed {
            ms: 20,
            reasons: vec![
                "cannot bind (haproxy exited with status 1)".into(),
                "[ALERT] line with newline".into()
            ]
        }
    );
    assert_eq!(back, Ledger::parse(&back.encode()).unwrap());
    assert_eq!(
        back.attempts
            .iter()
            .map(|a| (a.seq, a.covers, a.gen))
            .collect::<Vec<_>>(),
        vec![(1, 2, 2), (2, 3, 3), (3, 3, 4)]
    );
    assert_eq!(back.attempts[2].outcome, Outcome::Pending);
    assert_eq!(
        (back.pid, back.start_time, back.requests, back.stopping),
        (42, 777, 3, false)
    );
}

#[test]
fn a_failure_followed_by_a_restart_round_trips_and_older_readers_skip_it() {
    let mut l = sample();
    l.attempts[1].restarted = true;
    let text = l.encode();
    assert!(text.contains("restarted 2\n"), "{}", text);
    assert_eq!(Ledger::parse(&text).unwrap(), l);
    // Only a failed attempt is followed by a restart.
    assert!(Ledger::parse("haproxy-systemd-wrapper-ledger 1\npid 1\nattempt 1 0 0 2 ok 5\nrestarted 1\n").is_err());
}

#[test]
fn a_failure_that_may_still_complete_round_trips() {
    let mut l = sample();
    l.set_late(3, Late::Possible);
    let text = l.encode();
    assert!(text.contains("late 2 possible\n"), "{}", text);
    assert_eq!(Ledger::parse(&text).unwrap(), l);
    l.set_late(3, Late::Served { ms: 4100 });
    assert_eq!(
        Ledger::parse(&l.encode()).unwrap().attempts[1].late,
        Late::Served { ms: 4100 }
    );
    // Only a failed attempt can have taken effect late.
    assert!(Ledger::parse("haproxy-systemd-wrapper-ledger 1\npid 1\nattempt 1 0 0 2 ok 5\nlate 1 possible\n").is_err());
    assert!(Ledger::parse("haproxy-systemd-wrapper-ledger 1\npid 1\nattempt 1 0 0 2 failed 5\nlate 1 soon\n").is_err());
}

#[test]
fn keeps_the_newest_attempts() {
    let mut l = Ledger::new(1, 1);
    for g in 0..100 {
        l.requests += 1;
        l.begin(g, g as u64);
    }
    assert_eq!(l.attempts.len(), KEEP);
    assert_eq!(l.attempts.back().unwrap().seq, 100);
    assert_eq!(l.attempts.front().unwrap().seq, 100 - KEEP as u64 + 1);
}

#[test]
fn rejects_damaged_ledgers() {
    for bad in [
        "",
        "garbage",
        "haproxy-systemd-wrapper-ledger 2\npid 1\n",
        "haproxy-systemd-wrapper-ledger 1\n",
        "haproxy-systemd-wrapper-ledger 1\npid x\n",
        "haproxy-systemd-wrapper-ledger 1\npid 1\nattempt 1 2 3\n",
        "haproxy-systemd-wrapper-ledger 1\npid 1\nattempt 1 0 0 1 maybe 0\n",
        "haproxy-systemd-wrapper-ledger 1\npid 1\nreason 9 x\n",
        "haproxy-systemd-wrapper-ledger 1\npid 1\nstate odd\n",
        "haproxy-systemd-wrapper-ledger 1\npid 1\nnoseparator\n",
    ] {
        assert!(Ledger::parse(bad).is_err(), "{:?} was accepted", bad);
    }
    assert!(Ledger::parse("haproxy-systemd-wrapper-ledger 1\npid 1\nfuture thing\n").is_ok());
    assert!(Ledger::parse(&"x".repeat(MAX_FILE + 1)).is_err());
}

#[test]
fn stores_atomically_in_a_private_dir() {
    let dir = std::env::temp_dir().join(format!("hsw-ledger-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    prepare_dir(&dir).unwrap();
    assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    let l = sample();
    store(&dir, &l).unwrap();
    store(&dir, &l).unwrap();
    assert_eq!(load(&path(&dir, 42)).unwrap(), Ledger::parse(&l.encode()).unwrap());
    assert_eq!(std::fs::metadata(path(&dir, 42)).unwrap().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file is left");
    // A FIFO where the ledger should be is refused without blocking.
    let fifo = dir.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    assert_eq!(load(&fifo).unwrap_err(), LoadError::Bad("not a regular file".into()));
    // A directory others may write is refused.
    let open = dir.join("open");
    std::fs::DirBuilder::new().mode(0o777).create(&open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    assert!(prepare_dir(&open).unwrap_err().contains("writable by others"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn start_time_of_self() {
    let me = std::process::id() as i32;
    assert!(crate::procs::start_time(me).is_some());
    assert_eq!(crate::procs::start_time(me), crate::procs::start_time(me));
    assert_eq!(crate::procs::start_time(i32::MAX), None);
}

#[test]
fn randomized_ledgers_round_trip_and_damaged_ones_fail_clearly() {
    use crate::fuzz::{assert_clear_error, Rng, CASES};
    let mut rng = Rng::new(0x1ed9e5);
    for case in 0..CASES / 5 {
        let mut l = Ledger::new(1 + rng.below(4_194_304) as i32, rng.number());
        for _ in 0..rng.below(40) {
            l.requests += rng.below(3) as u64;
            let seq = l.begin(rng.number() as u32, rng.number());
            let outcome = match rng.below(3) {
                0 => Outcome::Pending,
                1 => Outcome::Ok { ms: rng.number() },
                // Reasons as haproxy or anyone may write them: the ledger keeps one line each.
                _ => Outcome::Failed {
                    ms: rng.number(),
                    reasons: (0..rng.below(4)).map(|_| rng.text(30)).collect(),
                },
            };
            l.finish(seq, outcome);
        }
        l.stopping = rng.one_in(3);
        let text = l.encode();
        assert_eq!(Ledger::parse(&text).as_ref(), Ok(&l), "case {}:\n{}", case, text);
        for _ in 0..5 {
            let damaged = if rng.one_in(4) {
                rng.text(100)
            } else {
                rng.mutate_text(&text, b" \nattemptreasonpid0123456789")
            };
            match Ledger::parse(&damaged) {
                Ok(back) => assert!(back.pid > 0, "case {}: {:?}", case, damaged),
                Err(e) => {
                    assert_clear_error(&damaged, &e);
                    assert!(
                        !e.contains('\n') && e.chars().count() < 1100,
                        "case {}: one line: {:?}",
                        case,
                        e
                    );
                }
            }
        }
    }
}

#[test]
fn what_the_wrapper_writes_its_reader_accepts_at_the_bound() {
    // haproxy rejecting a configuration of long non-ASCII lines, reload after reload: every
    // attempt with more reason lines than are kept, each longer than a line may be, in 2-, 3- and
    // 4-byte characters whose boundaries fall anywhere on the cut.
    let chars = ['é', '漢', '🦀', 'a'];
    let mut l = Ledger::new(4_194_304, u64::MAX);
    for n in 0..(3 * KEEP as u64) {
        l.requests = u64::MAX - 1000 + n;
        let seq = l.begin(u32::MAX, u64::MAX - n);
        let reasons: Vec<String> = (0..30)
            .map(|i| {
                std::iter::repeat(chars[(n as usize + i) % 4])
                    .take(MAX_REASON_LINE + i)
                    .collect()
            })
            .collect();
        l.finish(seq, Outcome::Failed { ms: u64::MAX, reasons });
        let text = l.encode();
        assert!(text.len() <= MAX_WRITTEN, "attempt {}: {} bytes written", n, text.len());
        assert_eq!(
            Ledger::parse(&text).as_ref(),
            Ok(&l),
            "attempt {}: the reader refuses or alters what was written",
            n
        );
        for a in &l.attempts {
            if let Outcome::Failed { reasons, .. } = &a.outcome {
                assert!(
                    reasons
                        .iter()
                        .all(|r| r.len() <= MAX_REASON_LINE && r.len() > MAX_REASON_LINE - 4),
                    "attempt {}: a line is not cut at its bound",
                    a.seq
                );
                // Every attempt keeps its summary, the newest all of its lines.
                let want = if a.seq == seq { MAX_REASON_LINES } else { 1 };
                assert!(reasons.len() >= want, "attempt {} kept {} lines", a.seq, reasons.len());
            }
        }
    }
    assert_eq!(l.attempts.len(), KEEP);
    // And the file it stores is one `load` reads back.
    let dir = std::env::temp_dir().join(format!("hsw-ledger-bound-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    store(&dir, &l).unwrap();
    assert_eq!(load(&path(&dir, l.pid)).unwrap(), l);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_failed_store_empties_the_file_and_a_removed_dir_is_made_again() {
    let dir = std::env::temp_dir().join(format!("hsw-ledger-unrec-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    prepare_dir(&dir).unwrap();
    let l = sample();
    store(&dir, &l).unwrap();
    mark_unrecorded(&dir, l.pid).unwrap();
    assert_eq!(load(&path(&dir, l.pid)), Err(LoadError::Unrecorded));
    // Removed (another unit sharing it stopped): the next store makes it again, 0700.
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(load(&path(&dir, l.pid)), Err(LoadError::Missing));
    mark_unrecorded(&dir, l.pid).unwrap();
    store(&dir, &l).unwrap();
    assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    assert_eq!(load(&path(&dir, l.pid)).unwrap(), Ledger::parse(&l.encode()).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
    // A file where the directory should be: refused, with why.
    std::fs::write(&dir, "").unwrap();
    assert!(store(&dir, &l).unwrap_err().to_string().contains("is not a directory"));
    assert_eq!(
        check_dir(&dir).unwrap_err().unwrap(),
        format!("{} is not a directory", dir.display())
    );
    std::fs::remove_file(&dir).unwrap();
}

#[test]
fn after_the_exec_the_carried_ledger_counts_not_the_file() {
    let dir = std::env::temp_dir().join(format!("hsw-ledger-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let me = std::process::id() as i32;
    let start = crate::procs::start_time(me).unwrap();
    // The file as an earlier, successful store left it; the ledger in memory has gone on since.
    let mut stale = Ledger::new(me, start);
    stale.requests = 1;
    let seq = stale.begin(2, 100);
    stale.finish(seq, Outcome::Ok { ms: 5 });
    store(&dir, &stale).unwrap();
    let mut carried = stale.clone();
    carried.requests = 2;
    carried.begin(3, 200);
    let r = Recorder::resume(&dir, Some(carried.clone()));
    assert_eq!(r.ledger, carried);
    assert_eq!(
        load(&path(&dir, me)).unwrap(),
        carried,
        "the file is written from the carried ledger"
    );
    // Carried by a wrapper that did not carry it: the file, when it is ours.
    assert_eq!(Recorder::resume(&dir, None).ledger, carried);
    // Another process's ledger is never taken.
    let mut foreign = carried.clone();
    foreign.start_time += 1;
    assert_eq!(Recorder::resume(&dir, Some(foreign)).ledger, carried);
    std::fs::remove_dir_all(&dir).unwrap();
}
