//! Reloads with the fake haproxy (tests/fake-haproxy): sequence, coalescing, signals during the
//! re-exec, failures, zombies, the haproxy command line per generation, the re-exec of the program
//! now on disk, user -sf/-st dropped; master-worker failure reasons at runtime.
//!
//! Every test owns its temp dir, port and notify socket (`util::Ctx`), which kills what the test
//! spawned when it ends. No test sleeps to wait for something: each waits for a handshake (notify
//! datagram, fake haproxy event, HTTP answer) or polls with a deadline.

#[macro_use]
mod util;

use std::fs;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::thread;
use std::time::Duration;

use nix::sys::signal::Signal;

use util::*;

both_modes! {
    /// Three reloads: same wrapper pid, each RELOADING=1 (MONOTONIC_USEC) ... READY=1, a new
    /// generation each time, then STOPPING=1.
    fn reload_sequence(mode) {
        let mut t = Ctx::new("reloadseq");
        t.start_fake_ready(mode, "");
        let mut serving = vec![newest_serving(&t, mode)];
        for gen in 2..=4 {
            let status = t.reload(T);
            assert_reload_ok(&status);
            assert!(status.contains(&format!("gen {gen} serving")), "STATUS after reload {}: {status:?}", gen - 1);
            let now = newest_serving(&t, mode);
            assert!(!serving.contains(&now), "reload did not start a new generation");
            serving.push(now);
            assert_eq!(exe_of(t.pid).as_deref(), Some(Path::new(WRAPPER)), "wrapper pid {} is no longer the wrapper", t.pid);
            // The image now running was exec'd for this reload: the kernel keeps the environment
            // it was given, and it carries the state of the wrapper that started gen {gen}.
            let state = reexec_state(t.pid).unwrap_or_else(|| panic!("wrapper {} was not re-executed for reload {}", t.pid, gen - 1));
            // Foreground: the new image starts gen {gen}; master-worker: the master was asked for
            // gen {gen} before the exec, and the attempt is carried.
            let carried = match mode {
                Mode::Foreground => state.split(';').any(|f| f == format!("next_gen={gen}")),
                Mode::MasterWorker => state.split(';').any(|f| f.starts_with(&format!("attempt={gen}:"))),
            };
            assert!(carried, "reload {}: the running image was exec'd with state {state:?}", gen - 1);
        }
        if mode == Mode::MasterWorker {
            assert_eq!(t.ready_pids("master").len(), 1, "master-worker reload must not start a new master");
        }
        stop_and_expect_0(&mut t, T);
        assert_eq!(notify_sequence(&t.notify().messages()), "R L R L R L R S");
        assert_all_from_wrapper(&t);
        assert_monotonic_usec(&t);
        t.assert_no_fake_left();
    }
}

both_modes! {
    /// Two SIGUSR2 1 ms apart: one or two reloads, never overlapping, each ending in READY=1.
    fn two_sigusr2_1ms_apart(mode) {
        let mut t = Ctx::new("usr2x2");
        // Old generations keep draining, so the handshake below always finds a haproxy to tell.
        t.start_fake_ready(mode, "fake-ignore-usr1\n");
        t.signal(Signal::SIGUSR2);
        thread::sleep(Duration::from_millis(1)); // the spacing under test, not a wait
        t.signal(Signal::SIGUSR2);
        signals_read_handshake(&t);
        // Both signals are read now (or the kernel merged them into one): the wrapper's log says
        // how many reloads it decided on, one per line below.
        let log = t.log();
        let reloads = log.matches("SIGUSR2 received: reloading").count() + log.matches("SIGUSR2 received during a start or reload").count();
        assert!(reloads == 1 || reloads == 2, "{reloads} reload decisions for two SIGUSR2:\n{log}");
        let expected = format!("R{}", " L R".repeat(reloads));
        assert!(t.notify().wait_for(T, |m| notify_sequence(m) == expected), "expected {expected:?}:\n{}", t.notify().dump());
        assert_eq!(exe_of(t.pid).as_deref(), Some(Path::new(WRAPPER)));
        stop_and_expect_0(&mut t, T);
        let seq = notify_sequence(&t.notify().messages());
        assert_eq!(seq, format!("{expected} S"), "unexpected notify sequence:\n{}", t.notify().dump());
        assert_all_from_wrapper(&t);
        assert_reload_ok(t.notify().messages().iter().rev().filter_map(|m| m.get("STATUS")).nth(1).unwrap_or_default());
    }
}

both_modes! {
    /// A SIGUSR2 sent right after another (config changed in between) is not lost: the last
    /// config is eventually served.
    fn sigusr2_right_after_sigusr2_is_not_lost(mode) {
        let mut t = Ctx::new("usr2lost");
        t.start_fake_ready(mode, "fake-marker A\n");
        t.replace("h.cfg", "fake-marker B\n");
        t.signal(Signal::SIGUSR2);
        t.replace("h.cfg", "fake-marker C\n");
        t.signal(Signal::SIGUSR2);
        let role = mode.serving_role();
        t.wait_events("a generation with the last config", 1, T, |e| e.what == "ready" && e.role == role && e.rest == "C");
        assert!(
            t.notify().wait_for(T, |m| {
                let s = notify_sequence(m);
                s.ends_with('R') && s.contains('L') && t.ready_pids(role).last().map_or(false, |p| t.events().iter().any(|e| e.pid == *p && e.rest == "C"))
            }),
            "the reload of the last config did not complete:\n{}",
            t.notify().dump()
        );
        let seq = notify_sequence(&t.notify().messages());
        assert!(!seq.contains("L L"), "overlapping reloads: {seq}");
    }
}

both_modes! {
    /// A SIGUSR2 arriving while a reload is in progress (after RELOADING=1) causes exactly one
    /// follow-up reload.
    fn sigusr2_during_reload_gives_one_followup(mode) {
        let mut t = Ctx::new("usr2during");
        t.start_fake_ready(mode, "fake-marker A\n");
        t.replace("h.cfg", "fake-marker B\n");
        t.signal(Signal::SIGUSR2);
        t.notify().wait_count("RELOADING=1", 1, T, Msg::is_reloading);
        t.replace("h.cfg", "fake-marker C\n");
        t.signal(Signal::SIGUSR2);
        let ok = t.notify().wait_for(T, |m| notify_sequence(m) == "R L R L R");
        assert!(ok, "expected two complete reloads:\n{}", t.notify().dump());
        let role = mode.serving_role();
        t.wait_events("a generation with the last config", 1, T, |e| e.what == "ready" && e.role == role && e.rest == "C");
        let status = t.notify().last_status().unwrap_or_default();
        assert_reload_ok(&status);
        assert!(status.contains("gen 3 serving"), "{status:?}");
    }
}

both_modes! {
    /// SIGTERM right after SIGUSR2 is not lost: the wrapper stops and exits 0.
    fn sigterm_right_after_sigusr2_stops(mode) {
        let mut t = Ctx::new("usr2term");
        t.start_fake_ready(mode, "");
        t.signal(Signal::SIGUSR2);
        t.signal(Signal::SIGTERM);
        let st = t.wait_exit(T);
        assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
        assert!(t.notify().messages().iter().any(Msg::is_stopping), "no STOPPING=1:\n{}", t.notify().dump());
        t.assert_no_fake_left();
    }
}

both_modes! {
    /// After reloads no child of the wrapper stays a zombie.
    fn no_zombies_after_reloads(mode) {
        let mut t = Ctx::new("zombies");
        t.start_fake_ready(mode, "");
        for _ in 0..5 {
            assert_reload_ok(&t.reload(T));
        }
        let role = mode.serving_role();
        let old: Vec<i32> = t.ready_pids(role).into_iter().rev().skip(1).collect();
        t.wait_events("old generations exit", old.len(), T, |e| e.what == "exit" && old.contains(&e.pid));
        let clean = poll_until(Duration::from_secs(5), || if zombie_children(t.pid).is_empty() { Some(()) } else { None });
        assert!(clean.is_some(), "zombie children of the wrapper: {:?}", zombie_children(t.pid));
    }
}

both_modes! {
    /// A reload with a broken config fails (STATUS says so with haproxy's alert), the old
    /// generation keeps running, and the next reload with a fixed config succeeds.
    fn failed_reload_keeps_old_generation(mode) {
        let mut t = Ctx::new("badreload");
        t.start_fake_ready(mode, "");
        let old = newest_serving(&t, mode);
        t.replace("h.cfg", "fake-bad\n");
        let status = t.reload(T);
        assert!(status.contains("last reload: failed"), "STATUS after a failed reload: {status:?}");
        assert!(status.contains("unknown keyword 'fake-bad'"), "STATUS does not give haproxy's alert: {status:?}");
        assert!(!status.contains("[ALERT]"), "the alert tag must be stripped: {status:?}");
        assert!(!has_pid_tag(&status), "the alert's pid must be stripped: {status:?}");
        assert!(status.contains("gen 1 serving"), "{status:?}");
        assert!(alive(old), "old generation {old} died after a failed reload");
        assert_eq!(newest_serving(&t, mode), old);
        t.assert_running();
        t.replace("h.cfg", "");
        let status = t.reload(T);
        assert_reload_ok(&status);
        assert_ne!(newest_serving(&t, mode), old);
        stop_and_expect_0(&mut t, T);
        assert_eq!(notify_sequence(&t.notify().messages()), "R L R L R S");
    }
}

#[test]
fn failed_reload_without_alert_gives_the_exit_status() {
    let mut t = Ctx::new("badquiet");
    let cfg = t.write("h.cfg", "");
    let args = t.fake_args(Mode::Foreground, &cfg, &[]);
    t.start(&args);
    t.wait_ready(T);
    let old = newest_serving(&t, Mode::Foreground);
    t.replace("h.cfg", "fake-quiet-exit 5\n");
    let status = t.reload(T);
    assert!(status.contains("last reload: failed"), "{status:?}");
    assert!(status.contains("haproxy exited with status 5"), "{status:?}");
    assert!(alive(old));
    t.assert_running();
}

#[test]
fn failed_reload_status_gives_the_alert() {
    let mut t = Ctx::new("badexit");
    let cfg = t.write("h.cfg", "");
    let args = t.fake_args(Mode::Foreground, &cfg, &[]);
    t.start(&args);
    t.wait_ready(T);
    let old = newest_serving(&t, Mode::Foreground);
    // fake-exit prints an [ALERT] "fake-exit 5" and exits 5.
    t.replace("h.cfg", "fake-exit 5\n");
    let status = t.reload(T);
    assert!(status.contains("last reload: failed"), "{status:?}");
    // The whole line: haproxy's alert (tag and pid stripped) first, the exit status after it.
    assert_shape(&status, &format!("foreground; gen 1 serving (pid {old}); draining: none; last reload: failed after # ms: fake-exit 5 (haproxy exited with status 5)"));
    assert!(alive(old));
    t.assert_running();
}

#[test]
fn foreground_command_line() {
    let mut t = Ctx::new("fgargv");
    let cfg = t.write("h.cfg", "");
    let pidf = t.p("h.pid");
    let args = t.fake_args(
        Mode::Foreground,
        &cfg,
        &["-D", "-p", &pidf, "-S", "/nonexistent/master.sock", "-sf", "999999"],
    );
    t.start(&args);
    t.wait_ready(T);
    let g1 = first_fake(&t, Mode::Foreground);
    let argv1 = report_argv(&t.report(g1));
    assert!(argv1.iter().any(|a| a == "-db"), "no -db: {argv1:?}");
    for bad in [
        "-D",
        "-p",
        "-S",
        "/nonexistent/master.sock",
        "-W",
        "-Ws",
        "-x",
        "999999",
    ] {
        assert!(!argv1.iter().any(|a| a == bad), "{bad} passed to haproxy: {argv1:?}");
    }
    let sf1 = sf_pids(&argv1);
    assert_eq!(
        sf1.len(),
        1,
        "gen 1 should get exactly the sentinel after -sf: {argv1:?}"
    );
    for opt in ["-D", "-sf", "-S"] {
        let warned = t
            .log()
            .lines()
            .any(|l| l.starts_with("<4>") && !l.contains("[WARNING]") && l.contains(opt));
        assert!(warned, "no warning logged for the dropped {opt}:\n{}", t.log());
    }
    assert_reload_ok(&t.reload(T));
    let g2 = newest_serving(&t, Mode::Foreground);
    let argv2 = report_argv(&t.report(g2));
    let sf2 = sf_pids(&argv2);
    // Only the sentinel: haproxy pauses every -sf pid while it retries a failing bind, so the
    // serving generation stays out; the wrapper soft-stops it once gen 2 serves.
    assert_eq!(
        sf2.len(),
        1,
        "gen 2 -sf names more than its sentinel (gen 1 is {g1}): {argv2:?}"
    );
    assert!(!sf2.contains(&g1) && !sf2.contains(&999999));
    t.wait_events("SIGUSR1 from the wrapper to gen 1", 1, T, |e| {
        e.pid == g1 && e.rest == "SIGUSR1"
    });
}

#[test]
fn master_worker_command_line() {
    let mut t = Ctx::new("mwargv");
    let cfg = t.write("h.cfg", "");
    let pidf = t.p("h.pid");
    t.start(&["--haproxy", FAKE_HAPROXY, "-W", "-f", &cfg, "-p", &pidf]);
    t.wait_ready(T);
    let m = first_fake(&t, Mode::MasterWorker);
    let argv = report_argv(&t.report(m));
    assert!(argv.iter().any(|a| a == "-Ws"), "master not run as -Ws: {argv:?}");
    assert!(!argv.iter().any(|a| a == "-db"), "{argv:?}");
    // In master-worker mode haproxy writes the pid file (the master's pid).
    let i = argv
        .iter()
        .position(|a| a == "-p")
        .unwrap_or_else(|| panic!("-p not passed to the master: {argv:?}"));
    assert_eq!(argv.get(i + 1).map(String::as_str), Some(pidf.as_str()));
    assert_eq!(fs::read_to_string(&pidf).unwrap_or_default().trim(), m.to_string());
}

#[test]
fn default_haproxy_is_the_program_beside_the_wrapper() {
    let mut t = Ctx::new("beside");
    let wrapper = t.copy_wrapper("bin/haproxy-systemd-wrapper");
    std::os::unix::fs::symlink(FAKE_HAPROXY, t.path("bin/haproxy")).unwrap();
    let cfg = t.write("h.cfg", "fake-marker beside\n");
    let cmd = t.command_prog(&wrapper, &["-f", &cfg]);
    t.spawn(cmd);
    t.wait_ready(T);
    assert_eq!(
        t.ready_pids("fg").len(),
        1,
        "the haproxy beside the wrapper was not used"
    );
    assert_reload_ok(&t.reload(T));
    assert_eq!(t.ready_pids("fg").len(), 2);
}

#[test]
fn started_by_bare_name_through_path() {
    // argv[0] is a bare name: the haproxy beside the wrapper and the re-exec must still be found.
    let mut t = Ctx::new("barename");
    t.copy_wrapper("bin/haproxy-systemd-wrapper");
    std::os::unix::fs::symlink(FAKE_HAPROXY, t.path("bin/haproxy")).unwrap();
    let cfg = t.write("h.cfg", "");
    let path = format!("{}:{}", t.p("bin"), std::env::var("PATH").unwrap_or_default());
    let mut cmd = t.command_prog(Path::new("haproxy-systemd-wrapper"), &["-f", &cfg]);
    cmd.env("PATH", path);
    t.spawn(cmd);
    t.wait_ready(T);
    assert_eq!(
        t.ready_pids("fg").len(),
        1,
        "the haproxy beside the wrapper was not used"
    );
    assert_reload_ok(&t.reload(T));
    assert_eq!(t.ready_pids("fg").len(), 2);
    stop_and_expect_0(&mut t, T);
}

#[test]
fn reload_reexecs_the_program_now_on_disk() {
    let mut t = Ctx::new("upgrade");
    let wrapper = t.copy_wrapper("bin/hsw");
    let cfg = t.write("h.cfg", "");
    let args = t.fake_args(Mode::Foreground, &cfg, &[]);
    let cmd = t.command_prog(&wrapper, &args);
    t.spawn(cmd);
    t.wait_ready(T);
    // An upgrade: a new file takes the program's place (the running image is now "deleted").
    t.copy_wrapper("bin/hsw");
    let exe = fs::read_link(format!("/proc/{}/exe", t.pid)).unwrap();
    assert!(exe.to_string_lossy().ends_with("(deleted)"), "{exe:?}");
    assert_reload_ok(&t.reload(T));
    let exe = fs::read_link(format!("/proc/{}/exe", t.pid)).unwrap();
    assert_eq!(
        exe, wrapper,
        "after the reload the wrapper does not run the program now on disk"
    );
    assert_reload_ok(&t.reload(T));
    stop_and_expect_0(&mut t, T);
}

#[test]
fn x_socket_only_on_reload_and_only_when_it_exists() {
    let mut t = Ctx::new("xsock");
    let cfg = t.write("h.cfg", "");
    let sock = t.p("admin.sock");
    let args = t.fake_args(Mode::Foreground, &cfg, &["-x", &sock]);
    t.start(&args);
    t.wait_ready(T);
    let g1 = first_fake(&t, Mode::Foreground);
    assert!(!report_argv(&t.report(g1)).iter().any(|a| a == "-x"), "-x at start");
    // The socket does not exist yet: no -x on this reload.
    assert_reload_ok(&t.reload(T));
    let g2 = newest_serving(&t, Mode::Foreground);
    assert!(
        !report_argv(&t.report(g2)).iter().any(|a| a == "-x"),
        "-x passed while the socket does not exist"
    );
    let listener = UnixListener::bind(&sock).unwrap();
    assert_reload_ok(&t.reload(T));
    let g3 = newest_serving(&t, Mode::Foreground);
    let argv3 = report_argv(&t.report(g3));
    let i = argv3
        .iter()
        .position(|a| a == "-x")
        .unwrap_or_else(|| panic!("no -x on reload with the socket present: {argv3:?}"));
    assert_eq!(argv3.get(i + 1).map(String::as_str), Some(sock.as_str()));
    drop(listener);
}

#[test]
fn reload_failing_with_x_is_retried_without_it() {
    let mut t = Ctx::new("xretry");
    let cfg = t.write("h.cfg", "fake-fail-with-x\n");
    let sock = t.p("admin.sock");
    let _listener = UnixListener::bind(&sock).unwrap();
    let args = t.fake_args(Mode::Foreground, &cfg, &["-x", &sock]);
    t.start(&args);
    t.wait_ready(T);
    let status = t.reload(T);
    assert_reload_ok(&status);
    let ev = t.events();
    let failed: Vec<&Event> = ev
        .iter()
        .filter(|e| e.what == "exit" && e.role == "fg" && e.rest == "1")
        .collect();
    assert_eq!(
        failed.len(),
        1,
        "expected one failed attempt with -x:\n{}",
        t.events_text()
    );
    assert!(report_argv(&t.report(failed[0].pid)).iter().any(|a| a == "-x"));
    let g2 = newest_serving(&t, Mode::Foreground);
    assert!(
        !report_argv(&t.report(g2)).iter().any(|a| a == "-x"),
        "retry still used -x"
    );
}
both_modes! {
    /// A new generation that does not become ready within --ready-timeout: the reload fails
    /// ("not ready after 3 s"), the old generation keeps serving, the next reload works.
    fn reload_not_ready_in_time_fails(mode) {
        let mut t = Ctx::new("reloadhang");
        let cfg = t.write("h.cfg", "");
        // 3 s: the first start (Python) must fit in it even on a loaded machine.
        t.start(&t.fake_args_with_options(mode, &cfg, &["--ready-timeout", "3"]));
        t.wait_ready(T);
        let old = newest_serving(&t, mode);
        t.replace("h.cfg", "fake-hang\n");
        let status = t.reload(T);
        assert!(status.contains("last reload: failed"), "{status:?}");
        assert!(status.contains("not ready after 3 s"), "{status:?}");
        assert!(alive(old), "the serving generation died");
        t.assert_running();
        if mode == Mode::Foreground {
            let hung: Vec<i32> = t.events().iter().filter(|e| e.what == "start" && e.pid != old).map(|e| e.pid).collect();
            assert_eq!(hung.len(), 1, "{}", t.events_text());
            let gone = poll_until(T, || if alive(hung[0]) { None } else { Some(()) });
            assert!(gone.is_some(), "the generation that never became ready ({}) was left running", hung[0]);
        }
        t.replace("h.cfg", "");
        assert_reload_ok(&t.reload(T));
        assert_ne!(newest_serving(&t, mode), old);
    }
}

#[test]
fn failed_reload_never_signals_the_serving_generation() {
    let mut t = Ctx::new("ttinafter");
    let cfg = t.write("h.cfg", "");
    let args = t.fake_args(Mode::Foreground, &cfg, &[]);
    t.start(&args);
    t.wait_ready(T);
    let old = newest_serving(&t, Mode::Foreground);
    t.replace("h.cfg", "fake-bad\n");
    let status = t.reload(T);
    assert!(status.contains("last reload: failed"), "{status:?}");
    // Not in the failed generation's -sf: never paused, so nothing to resume; still serving.
    // A SIGTTOU handshake marks the point by which any signal of the reload would be logged.
    t.signal(Signal::SIGTTOU);
    t.wait_events("the handshake's SIGTTOU", 1, T, |e| e.pid == old && e.rest == "SIGTTOU");
    let to_old: Vec<String> = t
        .events()
        .into_iter()
        .filter(|e| e.pid == old && e.what == "signal")
        .map(|e| e.rest)
        .collect();
    assert_eq!(
        to_old,
        vec!["SIGTTOU".to_string()],
        "the serving generation got signals from the failed reload"
    );
    assert!(alive(old));
}

#[test]
fn sighup_reloads_like_sigusr2() {
    let mut t = Ctx::new("sighup");
    let cfg = t.write("h.cfg", "");
    let args = t.fake_args(Mode::Foreground, &cfg, &[]);
    t.start(&args);
    t.wait_ready(T);
    t.signal(Signal::SIGHUP);
    assert!(
        t.notify().wait_for(T, |m| notify_sequence(m) == "R L R"),
        "{}",
        t.notify().dump()
    );
    assert_reload_ok(&t.notify().last_status().unwrap_or_default());
    assert_eq!(t.ready_pids("fg").len(), 2);
}

both_modes! {
    /// SIGTERM while an old generation is still draining stops it too.
    fn stop_while_draining_stops_every_generation(mode) {
        let mut t = Ctx::new("stopdrain");
        t.start_fake_ready(mode, "fake-ignore-usr1\n");
        let old = newest_serving(&t, mode);
        assert_reload_ok(&t.reload(T));
        t.wait_events("soft-stop of the old generation", 1, T, |e| e.pid == old && e.rest == "SIGUSR1");
        assert!(alive(old), "old generation should still be draining");
        stop_and_expect_0(&mut t, T);
        t.assert_no_fake_left();
    }
}

both_modes! {
    /// Coalescing: five SIGUSR2, each read by the wrapper (a handshake after each, so the kernel
    /// cannot merge them), while one reload waits for its new generation, give exactly one
    /// follow-up reload, which loads the last configuration.
    fn five_sigusr2_during_one_reload_give_one_followup(mode) {
        let mut t = Ctx::new("coalesce");
        let gate = t.p("gate");
        fs::write(&gate, "").unwrap();
        // fake-ignore-usr1: generation 1 stays alive to answer the handshakes.
        let cfg = |marker: &str| format!("fake-ready-delay-file {gate}\nfake-ignore-usr1\nfake-marker {marker}\n");
        t.start_fake_ready(mode, &cfg("A"));
        fs::remove_file(&gate).unwrap();
        t.replace("h.cfg", &cfg("B"));
        t.signal(Signal::SIGUSR2);
        t.notify().wait_count("RELOADING=1", 1, T, Msg::is_reloading);
        match mode {
            Mode::Foreground => t.wait_events("generation 2 waiting", 1, T, |e| e.what == "start" && e.rest == "B"),
            Mode::MasterWorker => t.wait_events("the master's reload waiting", 1, T, |e| e.what == "reload" && e.rest == "gated"),
        };
        t.replace("h.cfg", &cfg("C"));
        for _ in 0..5 {
            t.signal(Signal::SIGUSR2);
            signals_read_handshake(&t);
        }
        assert_eq!(notify_sequence(&t.notify().messages()), "R L", "the gated reload ended early:\n{}", t.notify().dump());
        assert_eq!(t.log().matches("received during a start or reload").count(), 1, "{}", t.log());
        fs::write(&gate, "").unwrap();
        let role = mode.serving_role();
        t.wait_events("a generation with the last config", 1, T, |e| e.what == "ready" && e.role == role && e.rest == "C");
        assert!(t.notify().wait_for(T, |m| notify_sequence(m) == "R L R L R"), "{}", t.notify().dump());
        let status = t.notify().last_status().unwrap_or_default();
        assert_reload_ok(&status);
        assert!(status.contains("gen 3 serving"), "{status:?}");
        // A further reload would have sent RELOADING=1 right after that READY=1, before the
        // wrapper reads the SIGTERM.
        stop_and_expect_0(&mut t, T);
        assert_eq!(notify_sequence(&t.notify().messages()), "R L R L R S", "{}", t.notify().dump());
    }
}

both_modes! {
    /// SIGTERM during a reload whose new generation never becomes ready: the wrapper stops at
    /// once (long before --ready-timeout 60), exits 0, says STOPPING=1 and leaves nothing.
    fn sigterm_during_a_hung_reload_stops(mode) {
        let mut t = Ctx::new("termhung");
        let cfg = t.write("h.cfg", "");
        t.start(&t.fake_args_with_options(mode, &cfg, &["--ready-timeout", "60"]));
        t.wait_ready(T);
        t.replace("h.cfg", "fake-hang\n");
        t.signal(Signal::SIGUSR2);
        t.notify().wait_count("RELOADING=1", 1, T, Msg::is_reloading);
        match mode {
            Mode::Foreground => t.wait_events("the hung generation", 2, T, |e| e.what == "start" && e.role == "fg"),
            Mode::MasterWorker => t.wait_events("the master's hung reload", 1, T, |e| e.what == "reload" && e.rest == "hang"),
        };
        t.signal(Signal::SIGTERM);
        let st = t.wait_exit(T);
        assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
        assert_eq!(notify_sequence(&t.notify().messages()), "R L S", "{}", t.notify().dump());
        assert_eq!(t.notify().last_status().as_deref(), Some("stopping"));
        t.assert_no_fake_left();
    }
}

/// The master answers a reload with READY=1 but started no new worker (and printed no alert):
/// the reload failed, for that reason, and the old worker serves on.
#[test]
fn master_worker_reload_without_a_new_worker_fails() {
    let mut t = Ctx::new("nonewworker");
    t.start_fake_ready(Mode::MasterWorker, "");
    let master = first_fake(&t, Mode::MasterWorker);
    let worker = newest_serving(&t, Mode::MasterWorker);
    t.replace("h.cfg", "fake-quiet-exit 5\n");
    let status = t.reload(T);
    assert_shape(&status, &format!("master-worker; gen 1 serving (master {master}, workers {worker}); draining: none; last reload: failed after # ms: the master started no new worker"));
    assert!(alive(worker));
    t.assert_running();
}

/// The master prints "Loading failure!" (no [ALERT]) and answers READY=1: the reload failed,
/// and the reason says haproxy reported it.
#[test]
fn master_worker_loading_failure_is_the_reason() {
    let mut t = Ctx::new("loadingfail");
    t.start_fake_ready(Mode::MasterWorker, "");
    let master = first_fake(&t, Mode::MasterWorker);
    let worker = newest_serving(&t, Mode::MasterWorker);
    t.replace("h.cfg", "fake-loading-failure\n");
    let status = t.reload(T);
    assert_shape(&status, &format!("master-worker; gen 1 serving (master {master}, workers {worker}); draining: none; last reload: failed after # ms: haproxy reported a loading failure"));
    assert!(alive(worker));
    t.assert_running();
}

/// Foreground mode: `-st PIDS` on the command line is dropped with a warning; every generation
/// is started with -sf (its sentinel), never -st, the older generation is soft-stopped, and the
/// given pids are nobody's business.
#[test]
fn foreground_drops_user_st() {
    let mut t = Ctx::new("fgst");
    let cfg = t.write("h.cfg", "");
    let args = t.fake_args(Mode::Foreground, &cfg, &["-st", "999999", "999998"]);
    t.start(&args);
    t.wait_ready(T);
    let g1 = first_fake(&t, Mode::Foreground);
    let argv1 = report_argv(&t.report(g1));
    for bad in ["-st", "999999", "999998"] {
        assert!(!argv1.iter().any(|a| a == bad), "{bad} passed to haproxy: {argv1:?}");
    }
    assert!(argv1.iter().any(|a| a == "-sf"), "{argv1:?}");
    assert_eq!(
        sf_pids(&argv1).len(),
        1,
        "gen 1 should get exactly the sentinel after -sf: {argv1:?}"
    );
    assert!(
        t.log().lines().any(|l| l.contains("-st dropped")),
        "no warning for the dropped -st:\n{}",
        t.log()
    );
    assert_reload_ok(&t.reload(T));
    let g2 = newest_serving(&t, Mode::Foreground);
    let argv2 = report_argv(&t.report(g2));
    assert!(
        !argv2.iter().any(|a| a == "-st" || a == "999999" || a == "999998"),
        "{argv2:?}"
    );
    assert_eq!(
        sf_pids(&argv2).len(),
        1,
        "gen 2 -sf names more than its sentinel: {argv2:?}"
    );
    // Soft stop (SIGUSR1, from the wrapper once gen 2 serves), never a hard stop.
    t.wait_events("soft-stop of gen 1", 1, T, |e| e.pid == g1 && e.rest == "SIGUSR1");
}

/// A reload is answered (READY=1, the ledger's "ok") only once the generation it retired has
/// stopped listening: until then the old haproxy could still take a new connection. Here the
/// old one keeps its listening socket after SIGUSR1 until a gate file exists.
#[test]
fn reload_is_declared_only_once_the_old_generation_stops_listening() {
    let mut t = Ctx::new("settle");
    let gate = t.p("gate");
    t.start_fake_ready(Mode::Foreground, &format!("fake-listen-linger {gate}\n"));
    let old = newest_serving(&t, Mode::Foreground);
    t.replace("h.cfg", "fake-marker two\n");
    t.signal(Signal::SIGUSR2);
    t.wait_events("the old generation lingering", 1, T, |e| {
        e.pid == old && e.what == "linger"
    });
    // The new generation serves, the old one still listens: no verdict yet.
    let early = t
        .notify()
        .wait_for(std::time::Duration::from_millis(300), |m| notify_sequence(m) == "R L R");
    assert!(
        !early,
        "READY=1 while the old generation still listened:\n{}",
        t.notify().dump()
    );
    fs::write(&gate, "").unwrap();
    assert!(
        t.notify().wait_for(T, |m| notify_sequence(m) == "R L R"),
        "{}",
        t.notify().dump()
    );
    assert_reload_ok(&t.notify().last_status().unwrap_or_default());
}
