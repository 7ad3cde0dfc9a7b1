//! The real haproxy (/usr/sbin/haproxy), in both modes: HTTP through a frontend, reloads under
//! load, bad-config reloads, graceful stop, the pid file, kill -9.
//!
//! Every test owns its temp dir, port and notify socket (`util::Ctx`), which kills what the test
//! spawned when it ends. No test sleeps to wait for something: each waits for a handshake (notify
//! datagram, fake haproxy event, HTTP answer) or polls with a deadline.

#[macro_use]
mod util;

use std::fs;
use std::path::Path;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use util::*;

fn require_haproxy() {
    assert!(Path::new(REAL_HAPROXY).exists(), "{REAL_HAPROXY} is missing: run `make deps` (installs the test dependencies)");
}

fn config(t: &Ctx, mode: Mode, extra: &str) -> String {
    let global = match mode {
        Mode::Foreground => format!("global\n    stats socket {} mode 600 level admin expose-fd listeners\n", t.p("admin.sock")),
        Mode::MasterWorker => "global\n".to_string(),
    };
    format!(
        "{global}\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 10s\n    timeout server 10s\n\
         frontend fe\n    bind 127.0.0.1:{}\n    http-request return status 200 content-type text/plain string ok\n{extra}",
        t.port
    )
}

fn args(t: &Ctx, mode: Mode, cfg: &str) -> Vec<String> {
    let mut v: Vec<String> = vec!["--haproxy".into(), REAL_HAPROXY.into()];
    match mode {
        Mode::MasterWorker => v.extend(["-Ws", "-f", cfg, "-p"].iter().map(|s| s.to_string())),
        Mode::Foreground => v.extend(["-f", cfg, "-x", &t.p("admin.sock"), "-p"].iter().map(|s| s.to_string())),
    }
    v.push(t.p("haproxy.pid"));
    v
}

fn start(name: &str, mode: Mode) -> (Ctx, String) {
    require_haproxy();
    let mut t = Ctx::new(name);
    let cfg = t.write("haproxy.cfg", &config(&t, mode, ""));
    let a = args(&t, mode, &cfg);
    t.start(&a);
    let ready = t.wait_ready(T_REAL);
    assert_eq!(ready.get("MAINPID"), Some(t.pid.to_string().as_str()), "READY=1 without MAINPID=<wrapper pid>: {:?}", ready.text);
    t.track_haproxy(REAL_HAPROXY);
    (t, cfg)
}

fn get_ok(t: &Ctx) {
    let r = http_get(t.port, "/").unwrap_or_else(|e| panic!("GET / on port {}: {e}", t.port));
    assert_eq!(r.status(), 200, "{}", r.status_line);
    assert_eq!(r.body.trim(), "ok");
}

fn stop_and_check_nothing_left(t: &mut Ctx) {
    t.track_haproxy(REAL_HAPROXY);
    stop_and_expect_0(t, T_REAL);
    assert_all_from_wrapper(t);
    let left: Vec<i32> = t.seen.iter().copied().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "haproxy processes left after the wrapper exited: {left:?}");
}

both_modes! {
    /// Start → READY=1 + HTTP 200; 3 reloads → RELOADING=1 (MONOTONIC_USEC) ... READY=1, ok;
    /// SIGTERM → STOPPING=1, exit 0, nothing left; every datagram from the wrapper's pid.
    fn notify_sequence_and_http(mode) {
        let (mut t, _cfg) = start("real-seq", mode);
        let r = wait_http_200(t.port, T_REAL);
        assert_eq!(r.body.trim(), "ok");
        for _ in 0..3 {
            assert_reload_ok(&t.reload(T_REAL));
            t.track_haproxy(REAL_HAPROXY);
            get_ok(&t);
        }
        stop_and_check_nothing_left(&mut t);
        assert_eq!(notify_sequence(&t.notify().messages()), "R L R L R L R S", "{}", t.notify().dump());
        assert_all_from_wrapper(&t);
        assert_monotonic_usec(&t);
    }
}

both_modes! {
    /// 20 reloads under a steady stream of new connections: not one request fails.
    fn twenty_reloads_under_load_lose_nothing(mode) {
        let (mut t, _cfg) = start("real-load", mode);
        wait_http_200(t.port, T_REAL);
        let load = Load::start(t.port, 2);
        poll_until(T, || if load.ok() > 0 { Some(()) } else { None }).expect("load generator got no answer");
        for i in 0..20 {
            let before = load.ok();
            let status = t.reload(T_REAL);
            assert!(status.contains("last reload: ok"), "reload {}: {status:?}", i + 1);
            // Some requests go through each new generation.
            poll_until(T, || if load.ok() > before { Some(()) } else { None }).expect("load stalled");
            t.track_haproxy(REAL_HAPROXY);
        }
        let res = load.stop();
        assert_eq!(res.fail, 0, "{} of {} requests failed during reloads: {:?}", res.fail, res.ok + res.fail, res.errors);
        assert!(res.ok >= 20);
        stop_and_check_nothing_left(&mut t);
    }
}

both_modes! {
    /// A broken config: the reload fails (STATUS "failed"), the old generation keeps serving;
    /// fixed config: the next reload succeeds.
    fn bad_config_reload_keeps_serving(mode) {
        let (mut t, _cfg) = start("real-bad", mode);
        wait_http_200(t.port, T_REAL);
        let before = t.track_haproxy(REAL_HAPROXY);
        assert!(!before.is_empty());
        t.replace("haproxy.cfg", &config(&t, mode, "    this-is-not-a-keyword here\n"));
        let status = t.reload(T_REAL);
        assert!(status.contains("failed"), "STATUS after a bad-config reload: {status:?}");
        assert!(status.contains("last reload: failed"), "{status:?}");
        get_ok(&t);
        for p in &before {
            assert!(alive(*p), "haproxy {p} of the serving generation died after a failed reload");
        }
        t.assert_running();
        t.replace("haproxy.cfg", &config(&t, mode, ""));
        let status = t.reload(T_REAL);
        assert_reload_ok(&status);
        get_ok(&t);
        stop_and_check_nothing_left(&mut t);
        assert_eq!(notify_sequence(&t.notify().messages()), "R L R L R S", "{}", t.notify().dump());
    }
}

both_modes! {
    /// SIGUSR1: haproxy soft-stops, the wrapper exits 0 once it is gone, nothing left.
    fn sigusr1_graceful_stop(mode) {
        let (mut t, _cfg) = start("real-usr1", mode);
        wait_http_200(t.port, T_REAL);
        t.track_haproxy(REAL_HAPROXY);
        t.signal(Signal::SIGUSR1);
        let st = t.wait_exit(T_REAL);
        assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
        let left: Vec<i32> = t.seen.iter().copied().filter(|p| alive(*p)).collect();
        assert!(left.is_empty(), "haproxy processes left after the wrapper exited: {left:?}");
        assert_all_from_wrapper(&t);
    }
}

both_modes! {
    /// The pid file names the serving haproxy (foreground: the generation's process, kept
    /// current across reloads and removed at exit; master-worker: the master, written by it).
    fn pid_file_names_the_serving_process(mode) {
        let (mut t, _cfg) = start("real-pid", mode);
        let pidf = t.path("haproxy.pid");
        let direct = |t: &Ctx| -> Vec<i32> {
            children_of(t.pid)
                .into_iter()
                .filter(|p| exe_of(p.pid).map_or(false, |e| e == Path::new(REAL_HAPROXY)))
                .map(|p| p.pid)
                .collect()
        };
        let serving = direct(&t);
        assert_eq!(serving.len(), 1, "{serving:?}");
        let content = poll_until(T, || fs::read_to_string(&pidf).ok().filter(|c| c.lines().any(|l| l.trim() == serving[0].to_string())));
        assert!(content.is_some(), "pid file {} does not name {}: {:?}", pidf.display(), serving[0], fs::read_to_string(&pidf));
        assert_reload_ok(&t.reload(T_REAL));
        let newest = match mode {
            Mode::Foreground => *direct(&t).iter().find(|p| !serving.contains(p)).expect("no new generation"),
            Mode::MasterWorker => serving[0],
        };
        let content = fs::read_to_string(&pidf).unwrap_or_default();
        assert!(content.lines().any(|l| l.trim() == newest.to_string()), "pid file after reload: {content:?}, serving {newest}");
        stop_and_check_nothing_left(&mut t);
        if mode == Mode::Foreground {
            assert!(!pidf.exists(), "pid file not removed at exit");
        }
    }
}

both_modes! {
    /// kill -9 of the serving haproxy (foreground process / master): the wrapper exits 137.
    fn kill9_of_serving_haproxy_exits_137(mode) {
        let (mut t, _cfg) = start("real-kill9", mode);
        let direct: Vec<i32> = children_of(t.pid)
            .into_iter()
            .filter(|p| exe_of(p.pid).map_or(false, |e| e == Path::new(REAL_HAPROXY)))
            .map(|p| p.pid)
            .collect();
        assert_eq!(direct.len(), 1, "expected one haproxy child of the wrapper, got {direct:?}");
        kill(Pid::from_raw(direct[0]), Signal::SIGKILL).unwrap();
        let st = t.wait_exit(T_REAL);
        assert_eq!(st.code(), Some(137), "{}", describe_status(&st));
    }
}
