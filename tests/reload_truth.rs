//! Real haproxy (/usr/sbin/haproxy): a reload as `systemctl reload` runs it (SIGUSR2, then
//! `--wait-reload PID`) exits 0 only once the new configuration answers, and non-zero, with
//! haproxy's reason, when it cannot take effect, while the old generation answers every request.
//! Each configuration answers with its own tag, so old and new generations are told apart.

#[macro_use]
mod util;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use nix::sys::signal::Signal;

use util::*;

/// A configuration answering `tag`; `global` and `frontend` lines added as given.
fn config(t: &Ctx, mode: Mode, tag: &str, global: &str, frontend: &str) -> String {
    let expose = match mode {
        Mode::Foreground => format!(
            "    stats socket {} mode 600 level admin expose-fd listeners\n",
            t.p("admin.sock")
        ),
        Mode::MasterWorker => String::new(),
    };
    format!(
        "global\n{expose}{global}\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 10s\n    timeout server 10s\n\
         frontend fe\n    bind 127.0.0.1:{}\n{frontend}    http-request return status 200 content-type text/plain string {tag}\n",
        t.port
    )
}

/// Starts the wrapper on real haproxy (foreground: with `-x` when `handover`) and waits until `tag` answers.
fn start(t: &mut Ctx, mode: Mode, cfg_text: &str, handover: bool, tag: &str) {
    assert!(
        Path::new(REAL_HAPROXY).exists(),
        "{REAL_HAPROXY} is missing: run `make deps`"
    );
    let cfg = t.write("haproxy.cfg", cfg_text);
    let mut args: Vec<String> = vec!["--haproxy".into(), REAL_HAPROXY.into()];
    if mode == Mode::MasterWorker {
        args.push("-Ws".into());
    }
    args.extend(["-f".to_string(), cfg]);
    if mode == Mode::Foreground && handover {
        args.extend(["-x".to_string(), t.p("admin.sock")]);
    }
    t.start(&args);
    t.wait_ready(T_REAL);
    t.track_haproxy(REAL_HAPROXY);
    assert_eq!(wait_http_200(t.port, T_REAL).body.trim(), tag);
}

fn body(t: &Ctx) -> String {
    let r = http_get(t.port, "/").unwrap_or_else(|e| panic!("GET / on port {}: {e}", t.port));
    assert_eq!(r.status(), 200, "{}", r.status_line);
    r.body.trim().to_string()
}

both_modes! {
    /// Once the client exits 0, the very first new connection is answered by the new
    /// configuration (no polling, no retry), reload after reload.
    fn the_first_request_after_a_successful_reload_gets_the_new_configuration(mode) {
        let mut t = Ctx::new("truth-sync");
        let cfg = config(&t, mode, "tag-0", "", "");
        start(&mut t, mode, &cfg, true, "tag-0");
        for i in 1..=5 {
            let tag = format!("tag-{i}");
            t.replace("haproxy.cfg", &config(&t, mode, &tag, "", ""));
            let out = systemctl_reload(&mut t);
            assert_eq!(out.status.code(), Some(0), "reload {i}: {}", describe(&out));
            assert_eq!(body(&t), tag, "reload {i}: the first request after the client's exit 0");
        }
    }
}

both_modes! {
    /// A configuration that passes `haproxy -c` but cannot bind (an address the host does not
    /// have): the reload exits 1 with haproxy's reason, and the old generation answers every
    /// request during it and after it (zero failures). Foreground: the serving generation is not
    /// in the new one's -sf, so haproxy never pauses it. Master-worker: the wrapper tries the bind
    /// first (src/binds.rs) and never asks haproxy's master, which would pause its workers while
    /// it retries. The next good reload succeeds.
    fn a_bind_failure_fails_the_reload_and_refuses_nothing(mode) {
        let mut t = Ctx::new("truth-bind");
        let cfg = config(&t, mode, "old", "", "");
        start(&mut t, mode, &cfg, true, "old");
        let check = Command::new(REAL_HAPROXY).args(["-c", "-f"]).arg(t.path("haproxy.cfg")).output().unwrap();
        assert!(check.status.success(), "the base configuration must pass haproxy -c");
        let bad = config(&t, mode, "new", "", &format!("    bind 192.0.2.1:{}\n", t.port));
        t.write("check.cfg", &bad);
        let check = Command::new(REAL_HAPROXY).args(["-c", "-f"]).arg(t.path("check.cfg")).output().unwrap();
        assert!(check.status.success(), "the bind-failing configuration must pass haproxy -c: {}", String::from_utf8_lossy(&check.stderr));
        let load = Load::start(t.port, 2);
        poll_until(T, || if load.ok() > 0 { Some(()) } else { None }).expect("load generator got no answer");
        t.replace("haproxy.cfg", &bad);
        let out = systemctl_reload(&mut t);
        // Requests keep flowing after the verdict, too.
        let after = load.ok();
        poll_until(T, || if load.ok() > after + 20 { Some(()) } else { None }).expect("load stalled after the failed reload");
        let res = load.stop();
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot bind") && err.contains("192.0.2.1"), "haproxy's reason is not on stderr: {err}");
        assert_eq!(res.fail, 0, "{} of {} requests failed during the failed reload: {:?}", res.fail, res.ok + res.fail, res.errors);
        if mode == Mode::MasterWorker {
            let log = t.log();
            // Once: one SIGUSR2, one attempt (not begun again after the wrapper's re-exec).
            assert_eq!(log.matches("haproxy's master was not asked to reload").count(), 1, "{log}");
            assert!(!log.contains("Paused frontend"), "{log}");
        }
        assert_eq!(body(&t), "old");
        t.replace("haproxy.cfg", &config(&t, mode, "fixed", "", ""));
        let out = systemctl_reload(&mut t);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        assert_eq!(body(&t), "fixed");
    }
}

/// Foreground without `-x` and with `noreuseport`, the wrapper holding no socket (pidfd_getfd
/// refused by a seccomp filter, a stats socket without `expose-fd listeners`): the new generation
/// can bind only once the old one lets go, which is what haproxy's pause of its `-sf` pids is for;
/// the wrapper retries with the old generation in `-sf`, and the reload succeeds.
#[test]
fn noreuseport_without_handover_still_reloads() {
    let mode = Mode::Foreground;
    let mut t = Ctx::new("truth-noreuseport");
    let text = |t: &Ctx, tag: &str| config(t, mode, tag, "    noreuseport\n", "").replace(" expose-fd listeners", "");
    let cfg = t.write("haproxy.cfg", &text(&t, "one"));
    let mut cmd = t.command(&["--haproxy", REAL_HAPROXY, "-f", &cfg]);
    // SAFETY: refuse_pidfd_getfd only makes async-signal-safe calls.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(refuse_pidfd_getfd);
    }
    t.spawn(cmd);
    t.wait_ready(T_REAL);
    t.track_haproxy(REAL_HAPROXY);
    assert_eq!(wait_http_200(t.port, T_REAL).body.trim(), "one");
    for tag in ["two", "three"] {
        t.replace("haproxy.cfg", &text(&t, tag));
        let out = systemctl_reload(&mut t);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        assert_eq!(body(&t), tag);
    }
    let log = t.log();
    assert!(
        log.contains("no stats socket with \"expose-fd listeners\" offered it"),
        "{log}"
    );
    assert!(log.contains("could not bind an address our generation holds (noreuseport); retrying once with the older generations in -sf"), "{log}");
}

/// Foreground without `-x` and with `noreuseport`: each reload's new generation takes over the
/// sockets the wrapper holds, so it does not need the old one to let go: no retry.
#[test]
fn noreuseport_reloads_on_the_sockets_the_wrapper_holds() {
    let mode = Mode::Foreground;
    let mut t = Ctx::new("truth-noreuseport-held");
    let cfg = config(&t, mode, "one", "    noreuseport\n", "");
    start(&mut t, mode, &cfg, false, "one");
    for tag in ["two", "three"] {
        t.replace("haproxy.cfg", &config(&t, mode, tag, "    noreuseport\n", ""));
        let out = systemctl_reload(&mut t);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        assert_eq!(body(&t), tag);
    }
    let log = t.log();
    assert_eq!(
        log.matches("with the listening sockets the wrapper holds").count(),
        2,
        "{log}"
    );
    assert!(!log.contains("retrying once"), "{log}");
}

both_modes! {
    /// The new configuration binds a port another program holds (a listener this test opens):
    /// the reload fails with "Address already in use" and the address, and the old generation
    /// answers after it, and during it too: zero refused, zero timed out (3 s, as a client
    /// waits). Foreground: the address is not ours, so the wrapper never retries with the serving
    /// generation in -sf, which haproxy would pause. Master-worker: the wrapper tries the bind
    /// first and does not ask haproxy's master. The next good reload succeeds.
    fn a_port_another_program_holds_fails_the_reload_and_refuses_nothing(mode) {
        port_held_by_another_program(mode, false);
    }
}

/// Master-worker, the same bind quoted, which the wrapper leaves to haproxy (src/binds.rs): its
/// master pauses its workers while it retries the bind (about 2 s), and the wrapper listens on
/// its copies of their sockets again, so connections wait instead of being refused.
#[test]
fn master_worker_a_bind_the_wrapper_leaves_to_haproxy_is_paused_for_and_refuses_nothing() {
    port_held_by_another_program(Mode::MasterWorker, true);
}

fn port_held_by_another_program(mode: Mode, quoted: bool) {
    {
        let mut t = Ctx::new("truth-taken");
        let cfg = config(&t, mode, "old", "", "");
        start(&mut t, mode, &cfg, true, "old");
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the other program's port");
        let taken_addr = taken.local_addr().unwrap();
        let load = Load::start_within(t.port, 4, Duration::from_secs(3));
        poll_until(T, || if load.ok() > 0 { Some(()) } else { None }).expect("load generator got no answer");
        let q = if quoted { "\"" } else { "" };
        t.replace(
            "haproxy.cfg",
            &config(&t, mode, "new", "", &format!("    bind {q}{taken_addr}{q}\n")),
        );
        let begun = std::time::Instant::now();
        let out = systemctl_reload(&mut t);
        let took = begun.elapsed();
        let after = load.ok();
        poll_until(T, || if load.ok() > after + 20 { Some(()) } else { None })
            .expect("load stalled after the failed reload");
        let res = load.stop();
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("Address already in use") && err.contains(&taken_addr.to_string()),
            "haproxy's reason is not on stderr: {err}"
        );
        assert_eq!(
            res.fail,
            0,
            "{} of {} requests failed during the failed reload ({:?}): {:?}\n{}",
            res.fail,
            res.ok + res.fail,
            took,
            res.errors,
            t.log()
        );
        let log = t.log();
        match mode {
            Mode::Foreground => {
                assert!(!log.contains("retrying once with the older generations"), "{log}");
                assert!(
                    log.contains(&format!("{taken_addr} is in use by another program")),
                    "{log}"
                );
            }
            Mode::MasterWorker if quoted => assert!(
                log.contains(&format!(
                    "while it retries a bind (tcp 127.0.0.1:{}): listening on the wrapper's copies again",
                    t.port
                )),
                "{log}"
            ),
            Mode::MasterWorker => {
                assert!(log.contains("haproxy's master was not asked to reload"), "{log}");
                assert!(!log.contains("Paused frontend"), "{log}");
            }
        }
        assert_eq!(body(&t), "old");
        drop(taken);
        t.replace("haproxy.cfg", &config(&t, mode, "after", "", ""));
        let out = systemctl_reload(&mut t);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        assert_eq!(body(&t), "after");
    }
}

/// The "ready in N ms" of a client's `reload ok` line.
fn ready_ms(o: &Output) -> u64 {
    let out = String::from_utf8_lossy(&o.stdout);
    let rest = out
        .split("ready in ")
        .nth(1)
        .unwrap_or_else(|| panic!("no 'ready in' in {}", describe(o)));
    rest.split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after 'ready in' in {}", describe(o)))
}

/// Lets a process the test stopped (SIGSTOP) go on, whatever happens to the test.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

/// master-worker: an old worker that never lets go of its listener (stopped, as haproxy 2.6
/// can leave one in state T) holds up the reload that retired it (the wait for retired workers
/// to stop listening, at most 2 s), never the later ones: each waits only for what it retired.
#[test]
fn a_stuck_old_worker_holds_up_only_the_reload_that_retired_it() {
    let mode = Mode::MasterWorker;
    let mut t = Ctx::new("truth-stuck-worker");
    let cfg = config(&t, mode, "tag-0", "", "");
    start(&mut t, mode, &cfg, false, "tag-0");
    let master = haproxy_descendants(t.pid, REAL_HAPROXY)
        .into_iter()
        .find(|&p| proc_stat(p).map_or(false, |s| s.ppid == t.pid))
        .expect("no master");
    let workers = haproxy_descendants(master, REAL_HAPROXY);
    assert_eq!(
        workers.len(),
        1,
        "one worker expected below master {master}: {workers:?}"
    );
    let stuck = workers[0];
    // Our child's child: this test started it. Stopped, it cannot act on the master's soft-stop.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(stuck), Signal::SIGSTOP).unwrap();
    let _resume = Resume(stuck);
    // From here on no HTTP: a connection the kernel hands to the stopped worker's socket hangs.
    t.replace("haproxy.cfg", &config(&t, mode, "tag-1", "", ""));
    let out = systemctl_reload(&mut t);
    assert_eq!(out.status.code(), Some(0), "reload 1: {}", describe(&out));
    let held = format!("pids [{stuck}] still listen 2 s after the new generation took over");
    assert_eq!(
        t.log().matches(&held).count(),
        1,
        "the reload that retired {stuck} did not wait for it (is it listening?):\n{}",
        t.log()
    );
    for i in 2..=3 {
        t.replace("haproxy.cfg", &config(&t, mode, &format!("tag-{i}"), "", ""));
        let out = systemctl_reload(&mut t);
        assert_eq!(out.status.code(), Some(0), "reload {i}: {}", describe(&out));
        assert_eq!(
            t.log().matches(&held).count(),
            1,
            "reload {i} waited for {stuck}, retired by reload 1:\n{}",
            t.log()
        );
        // Well under the 2 s bound of the wait: nothing of reload 1 was waited for.
        assert!(ready_ms(&out) < 1500, "reload {i}: {}", describe(&out));
    }
    let log = t.log();
    let waited_for = |l: &str| -> Vec<i32> {
        let list = l
            .split("waiting for [")
            .nth(1)
            .and_then(|r| r.split(']').next())
            .unwrap_or("");
        list.split(", ").filter_map(|p| p.parse().ok()).collect()
    };
    let waited: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("to stop listening") && waited_for(l).contains(&stuck))
        .collect();
    assert_eq!(
        waited.len(),
        1,
        "{stuck} was waited for by more than the reload that retired it: {waited:?}"
    );
    drop(_resume);
    stop_and_expect_0(&mut t, T_REAL);
}

/// master-worker: a reload slower than --ready-timeout (a configuration with a map of two million
/// entries, seconds to load) is reported failed, without claiming the previous generation keeps
/// serving: haproxy's master cannot be told to give it up. When it takes effect later, the log,
/// STATUS and the ledger say that its generation serves; the next reload goes on from there.
#[test]
fn a_reload_slower_than_the_ready_timeout_is_told_when_it_takes_effect_late() {
    use std::io::Write;
    let mode = Mode::MasterWorker;
    let mut t = Ctx::new("truth-late");
    assert!(
        Path::new(REAL_HAPROXY).exists(),
        "{REAL_HAPROXY} is missing: run `make deps`"
    );
    let cfg = t.write("haproxy.cfg", &config(&t, mode, "old", "", ""));
    t.start(&["--ready-timeout", "0.5", "--haproxy", REAL_HAPROXY, "-Ws", "-f", &cfg]);
    t.wait_ready(T_REAL);
    t.track_haproxy(REAL_HAPROXY);
    assert_eq!(wait_http_200(t.port, T_REAL).body.trim(), "old");
    let map = t.path("big.map");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&map).unwrap());
    for i in 0..2_000_000 {
        writeln!(f, "/k{i} v{i}").unwrap();
    }
    f.flush().unwrap();
    drop(f);
    let slow = config(
        &t,
        mode,
        "new",
        "",
        &format!("    http-request set-var(txn.m) path,map({})\n", map.display()),
    );
    t.replace("haproxy.cfg", &slow);
    let out = systemctl_reload(&mut t);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        err.contains("not ready after 0.5 s; haproxy may still complete it"),
        "{}",
        describe(&out)
    );
    assert!(
        !err.contains("keeps serving"),
        "the client claims what it does not know: {}",
        describe(&out)
    );
    // It does complete: the new configuration answers, and the wrapper says so.
    let mut last = String::new();
    poll_until(Duration::from_secs(60), || {
        last = body(&t);
        if last == "new" {
            Some(())
        } else {
            None
        }
    })
    .unwrap_or_else(|| panic!("the slow reload never took effect; last answer {last:?}"));
    let late = |m: &[Msg]| {
        m.iter().any(|m| {
            m.get("STATUS").map_or(false, |s| {
                s.contains("gen 2 serving") && s.contains("last reload: took effect late")
            })
        })
    };
    assert!(
        t.notify().wait_for(T_REAL, late),
        "STATUS never said gen 2 serves:\n{}",
        t.notify().dump()
    );
    assert!(
        t.log()
            .contains("gen 2: the reload reported failed at --ready-timeout took effect late"),
        "{}",
        t.log()
    );
    // The ledger too: asked again for that reload, the client says it serves.
    let again = t.wait_reload_command(t.pid, &["--timeout", "10"]).output().unwrap();
    assert_eq!(again.status.code(), Some(0), "{}", describe(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("reload ok: gen 2 serving, ready in "),
        "{}",
        describe(&again)
    );
    // And the next reload goes on from there.
    t.replace("haproxy.cfg", &config(&t, mode, "after", "", ""));
    let out = systemctl_reload(&mut t);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("gen 3 serving"),
        "{}",
        describe(&out)
    );
    assert_eq!(body(&t), "after");
    stop_and_expect_0(&mut t, T_REAL);
}

both_modes! {
    /// The run directory full (a small tmpfs, every block taken) when haproxy rejects the new
    /// configuration: the client never says the previous reload's "ok". It says the failure
    /// (when the wrapper found room for it: emptying its ledger file frees a page) or that the
    /// result went unrecorded (74), at once; the old configuration answers; with room again the
    /// next reload is answered.
    needs_root fn a_full_run_directory_never_answers_with_the_previous_result(mode) {
        let mut t = Ctx::new("truth-full");
        let run = Tmpfs::mount(&t.path("run"), "size=64k,mode=0700");
        let cfg = config(&t, mode, "one", "", "");
        start(&mut t, mode, &cfg, true, "one");
        t.replace("haproxy.cfg", &config(&t, mode, "two", "", ""));
        let out = systemctl_reload(&mut t);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        run.fill(false);
        t.replace("haproxy.cfg", &config(&t, mode, "three", "", "    no-such-keyword here\n"));
        let out = systemctl_reload(&mut t);
        let err = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(1) => assert!(err.contains("reload to gen 3 failed") && err.contains("no-such-keyword"), "{}", describe(&out)),
            Some(74) => assert!(err.contains("could not record the reload's result"), "{}", describe(&out)),
            _ => panic!("neither the failure nor 'unrecorded': {}", describe(&out)),
        }
        // The client may have answered before the attempt ended: its end, before going on.
        t.notify().wait_count("READY=1", 3, T_REAL, Msg::is_ready);
        assert!(t.log().contains("cannot write the reload ledger"), "{}", t.log());
        assert_eq!(body(&t), "two");
        run.empty();
        t.replace("haproxy.cfg", &config(&t, mode, "four", "", ""));
        let out = systemctl_reload(&mut t);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("reload ok: gen 3 serving"), "{}", describe(&out));
        assert_eq!(body(&t), "four");
    }
}

both_modes! {
    /// haproxy rejects a configuration of 25 long non-ASCII lines, reload after reload: each
    /// client says the failure (1) with haproxy's reasons, never a timeout for a ledger grown past
    /// what its reader accepts; then a good reload is answered.
    fn long_non_ascii_reasons_keep_the_ledger_readable(mode) {
        let mut t = Ctx::new("truth-long");
        let cfg = config(&t, mode, "one", "", "");
        start(&mut t, mode, &cfg, true, "one");
        let bad: String = (0..25).map(|i| format!("    réglage-{i}-{}\n", "é漢".repeat(400))).collect();
        t.replace("haproxy.cfg", &config(&t, mode, "two", "", &bad));
        for i in 1..=10 {
            t.signal(Signal::SIGUSR2);
            let out = t.wait_reload_command(t.pid, &["--timeout", "10"]).output().expect("run the client");
            assert_eq!(out.status.code(), Some(1), "failed reload {i}: {}", describe(&out));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("reload to gen 2 failed") && err.contains("réglage-"), "failed reload {i}: {err}");
            assert!(err.lines().filter(|l| l.contains("[ALERT]")).count() >= 5, "failed reload {i}: haproxy's lines: {err}");
        }
        t.replace("haproxy.cfg", &config(&t, mode, "two", "", ""));
        let out = systemctl_reload(&mut t);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        assert_eq!(body(&t), "two");
    }
}
