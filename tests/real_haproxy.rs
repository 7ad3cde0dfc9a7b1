//! The real haproxy (/usr/sbin/haproxy), in both modes: HTTP through a frontend, READY=1 means the
//! new configuration serves, reloads under load, connections in flight across a reload,
//! bad-config reloads, graceful stop, the pid file, kill -9. Each configuration answers with its
//! own tag (`config`), so an answer tells which generation gave it.
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
    assert!(
        Path::new(REAL_HAPROXY).exists(),
        "{REAL_HAPROXY} is missing: run `make deps` (installs the test dependencies)"
    );
}

/// A configuration whose frontend answers `GET /` itself with the body `tag`; `extra` goes at the
/// end of the frontend.
fn config(t: &Ctx, mode: Mode, tag: &str, extra: &str) -> String {
    config_with_backend(t, mode, tag, None, extra)
}

/// `config`, plus, with `backend = Some(port)`, `/slow...` requests proxied to 127.0.0.1:port;
/// every proxied answer carries the header `X-Config: tag`.
fn config_with_backend(t: &Ctx, mode: Mode, tag: &str, backend: Option<u16>, extra: &str) -> String {
    let global = match mode {
        Mode::Foreground => format!(
            "global\n    stats socket {} mode 600 level admin expose-fd listeners\n",
            t.p("admin.sock")
        ),
        Mode::MasterWorker => "global\n".to_string(),
    };
    let (proxy, be) = match backend {
        Some(port) => (
            format!("    http-response set-header X-Config {tag}\n    use_backend be if {{ path_beg /slow }}\n"),
            format!("backend be\n    server s1 127.0.0.1:{port}\n"),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        "{global}\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 10s\n    timeout server 10s\n\
         frontend fe\n    bind 127.0.0.1:{}\n{proxy}    http-request return status 200 content-type text/plain string {tag} if !{{ path_beg /slow }}\n{extra}{be}",
        t.port
    )
}

fn args(t: &Ctx, mode: Mode, cfg: &str) -> Vec<String> {
    let mut v: Vec<String> = vec!["--haproxy".into(), REAL_HAPROXY.into()];
    match mode {
        Mode::MasterWorker => v.extend(["-Ws", "-f", cfg, "-p"].iter().map(|s| s.to_string())),
        Mode::Foreground => v.extend(
            ["-f", cfg, "-x", &t.p("admin.sock"), "-p"]
                .iter()
                .map(|s| s.to_string()),
        ),
    }
    v.push(t.p("haproxy.pid"));
    v
}

/// Starts the wrapper on the real haproxy with `config(tag)` and waits for READY=1.
fn start(name: &str, mode: Mode, tag: &str) -> (Ctx, String) {
    require_haproxy();
    let t = Ctx::new(name);
    let text = config(&t, mode, tag, "");
    start_with(t, mode, &text)
}

fn start_with(mut t: Ctx, mode: Mode, cfg_text: &str) -> (Ctx, String) {
    let cfg = t.write("haproxy.cfg", cfg_text);
    let a = args(&t, mode, &cfg);
    t.start(&a);
    let ready = t.wait_ready(T_REAL);
    assert_eq!(
        ready.get("MAINPID"),
        Some(t.pid.to_string().as_str()),
        "READY=1 without MAINPID=<wrapper pid>: {:?}",
        ready.text
    );
    t.track_haproxy(REAL_HAPROXY);
    (t, cfg)
}

/// One GET / (no retry): 200 with the body of the configuration tagged `tag`.
fn get_tag(t: &Ctx, tag: &str) {
    let r = http_get(t.port, "/").unwrap_or_else(|e| panic!("GET / on port {} (expecting {tag:?}): {e}", t.port));
    assert_eq!(r.status(), 200, "{}", r.status_line);
    assert_eq!(
        r.body.trim(),
        tag,
        "answered by another configuration than the one expected"
    );
}

/// GET / until the configuration tagged `tag` answers (polling with a deadline), for tests whose
/// subject is not how soon after READY=1 that happens (`ready_means_the_new_configuration_serves`
/// is). Every answer on the way must be a 200.
fn wait_tag(t: &Ctx, tag: &str) {
    let mut last = String::new();
    let r = poll_until(T_REAL, || {
        let r = http_get(t.port, "/").unwrap_or_else(|e| panic!("GET / on port {} (waiting for {tag:?}): {e}", t.port));
        assert_eq!(r.status(), 200, "{}", r.status_line);
        last = r.body.trim().to_string();
        if last == tag {
            Some(())
        } else {
            None
        }
    });
    assert!(
        r.is_some(),
        "configuration {tag} not answering within {T_REAL:?}; last answer {last:?}"
    );
}

fn stop_and_check_nothing_left(t: &mut Ctx) {
    t.track_haproxy(REAL_HAPROXY);
    stop_and_expect_0(t, T_REAL);
    assert_all_from_wrapper(t);
    let left: Vec<i32> = t.seen.iter().copied().filter(|p| alive(*p)).collect();
    assert!(
        left.is_empty(),
        "haproxy processes left after the wrapper exited: {left:?}"
    );
}

both_modes! {
    /// Start → READY=1 + HTTP 200; 3 reloads → RELOADING=1 (MONOTONIC_USEC) ... READY=1, ok;
    /// SIGTERM → STOPPING=1, exit 0, nothing left; every datagram from the wrapper's pid.
    fn notify_sequence_and_http(mode) {
        let (mut t, _cfg) = start("real-seq", mode, "config-1");
        let r = wait_http_200(t.port, T_REAL);
        assert_eq!(r.body.trim(), "config-1");
        for n in 2..=4 {
            let tag = format!("config-{n}");
            t.replace("haproxy.cfg", &config(&t, mode, &tag, ""));
            assert_reload_ok(&t.reload(T_REAL));
            t.track_haproxy(REAL_HAPROXY);
            wait_tag(&t, &tag);
        }
        stop_and_check_nothing_left(&mut t);
        assert_eq!(notify_sequence(&t.notify().messages()), "R L R L R L R S", "{}", t.notify().dump());
        assert_all_from_wrapper(&t);
        assert_monotonic_usec(&t);
    }
}

both_modes! {
    /// 20 reloads under a steady stream of new connections: not one request fails, and each of
    /// the 21 configurations (tagged) answers requests once its reload is done.
    fn twenty_reloads_under_load_lose_nothing(mode) {
        let (mut t, _cfg) = start("real-load", mode, "config-0");
        wait_http_200(t.port, T_REAL);
        let load = Load::start(t.port, 2);
        poll_until(T, || if load.seen("config-0") > 0 { Some(()) } else { None }).expect("load generator got no answer");
        let tags: Vec<String> = (0..=20).map(|i| format!("config-{i}")).collect();
        for (i, tag) in tags.iter().enumerate().skip(1) {
            t.replace("haproxy.cfg", &config(&t, mode, tag, ""));
            let status = t.reload(T_REAL);
            assert!(status.contains("last reload: ok"), "reload {i}: {status:?}");
            // The new generation serves the stream.
            poll_until(T, || if load.seen(tag) > 0 { Some(()) } else { None })
                .unwrap_or_else(|| panic!("reload {i}: no request answered by {tag} within {T:?}"));
            t.track_haproxy(REAL_HAPROXY);
        }
        let res = load.stop();
        assert_eq!(res.fail, 0, "{} of {} requests failed during reloads: {:?}", res.fail, res.ok + res.fail, res.errors);
        for tag in &tags {
            assert!(res.bodies.get(tag).copied().unwrap_or(0) >= 1, "no answer from {tag}: {:?}", res.bodies);
        }
        let unknown: Vec<&String> = res.bodies.keys().filter(|b| !tags.contains(b)).collect();
        assert!(unknown.is_empty(), "answers from no configuration of this test: {unknown:?}");
        assert_eq!(res.bodies.values().sum::<u64>(), res.ok);
        assert!(res.ok >= 21, "{} answers for 21 configurations", res.ok);
        stop_and_check_nothing_left(&mut t);
    }
}

both_modes! {
    /// A broken config: the reload fails (STATUS "failed"), the old generation keeps serving;
    /// fixed config: the next reload succeeds.
    fn bad_config_reload_keeps_serving(mode) {
        let (mut t, _cfg) = start("real-bad", mode, "config-1");
        wait_http_200(t.port, T_REAL);
        let before = t.track_haproxy(REAL_HAPROXY);
        assert!(!before.is_empty());
        t.replace("haproxy.cfg", &config(&t, mode, "config-bad", "    this-is-not-a-keyword here\n"));
        let status = t.reload(T_REAL);
        assert!(status.contains("failed"), "STATUS after a bad-config reload: {status:?}");
        assert!(status.contains("last reload: failed"), "{status:?}");
        get_tag(&t, "config-1");
        for p in &before {
            assert!(alive(*p), "haproxy {p} of the serving generation died after a failed reload");
        }
        t.assert_running();
        t.replace("haproxy.cfg", &config(&t, mode, "config-2", ""));
        let status = t.reload(T_REAL);
        assert_reload_ok(&status);
        wait_tag(&t, "config-2");
        stop_and_check_nothing_left(&mut t);
        assert_eq!(notify_sequence(&t.notify().messages()), "R L R L R S", "{}", t.notify().dump());
    }
}

both_modes! {
    /// SIGUSR1: haproxy soft-stops, the wrapper exits 0 once it is gone, nothing left.
    fn sigusr1_graceful_stop(mode) {
        let (mut t, _cfg) = start("real-usr1", mode, "config-1");
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
        let (mut t, _cfg) = start("real-pid", mode, "config-1");
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
        let (mut t, _cfg) = start("real-kill9", mode, "config-1");
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

both_modes! {
    /// READY=1 means serving: one GET right after READY=1 (no retry, no polling), at the start
    /// and after each of 5 reloads, is answered, and by the configuration just (re)loaded.
    /// Fails until fixed in foreground mode, intermittently (about 1 run in 3 of this file under
    /// load): the old generation, told to stop by the new one's SIGUSR1 at the same moment as the
    /// sentinel, can still accept a connection after the wrapper's READY=1.
    fn ready_means_the_new_configuration_serves(mode) {
        let (mut t, _cfg) = start("real-ready", mode, "config-1");
        get_tag(&t, "config-1");
        for n in 2..=6 {
            let tag = format!("config-{n}");
            t.replace("haproxy.cfg", &config(&t, mode, &tag, ""));
            assert_reload_ok(&t.reload(T_REAL));
            get_tag(&t, &tag);
            t.track_haproxy(REAL_HAPROXY);
        }
        stop_and_check_nothing_left(&mut t);
    }
}

both_modes! {
    /// Connections in flight across a reload complete: a slow request on its own connection, and
    /// a second request on a keep-alive connection that already had one answered, both held by
    /// the backend while the reload happens, are answered in full by the old generation
    /// (`X-Config: before`) once released; the keep-alive connection is then closed in order.
    /// Meanwhile the new configuration serves new connections.
    fn connections_in_flight_complete_across_a_reload(mode) {
        require_haproxy();
        let backend = Backend::start();
        let t = Ctx::new("real-inflight");
        let text = config_with_backend(&t, mode, "before", Some(backend.port), "");
        let (mut t, _cfg) = start_with(t, mode, &text);
        let mut ka = HttpConn::connect(t.port).expect("connect (keep-alive)");
        let first = ka.get("/").expect("first request on the keep-alive connection");
        assert_eq!((first.status(), first.body.as_str()), (200, "before"), "{}", first.status_line);
        let mut slow = HttpConn::connect(t.port).expect("connect (slow request)");
        slow.send("/slow/alone").unwrap();
        assert_eq!(backend.wait_held(T_REAL), "/slow/alone");
        ka.send("/slow/keepalive").unwrap();
        assert_eq!(backend.wait_held(T_REAL), "/slow/keepalive");
        let old = t.track_haproxy(REAL_HAPROXY);

        t.replace("haproxy.cfg", &config_with_backend(&t, mode, "after", Some(backend.port), ""));
        assert_reload_ok(&t.reload(T_REAL));
        wait_tag(&t, "after");
        let still: Vec<i32> = old.iter().copied().filter(|p| alive(*p)).collect();
        assert!(!still.is_empty(), "no haproxy of the old generation left to finish the requests in flight");

        backend.release();
        for (what, conn, path) in [("slow request", &mut slow, "/slow/alone"), ("keep-alive request", &mut ka, "/slow/keepalive")] {
            let r = conn.read_response().unwrap_or_else(|e| panic!("{what} in flight during the reload: {e}"));
            assert_eq!(r.status(), 200, "{what}: {}", r.status_line);
            assert_eq!(r.body, format!("backend {path}"), "{what}: body");
            assert_eq!(r.header("x-config"), Some("before"), "{what}: not answered by the old generation: {:?}", r.head);
        }
        let rest = ka.read_to_close().unwrap_or_else(|e| panic!("keep-alive connection not closed in order by the draining haproxy: {e}"));
        assert_eq!(rest, 0, "bytes after the last response on the keep-alive connection");
        t.track_haproxy(REAL_HAPROXY);
        stop_and_check_nothing_left(&mut t);
    }
}

/// What the pipe `fd` holds now (read without blocking).
fn drain_pipe(fd: i32) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    while let Ok(n) = nix::unistd::read(fd, &mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The wrapper's stderr is a pipe nobody reads (a stalled journal): it never blocks on it.
/// Each reload makes the old worker say a line per proxy (200 of them), far more than the pipe
/// holds (4 KiB); every reload is still answered ok, the lines that could not be written are
/// counted and the count is told once the reader takes lines again, and a SIGTERM with the pipe
/// full stops the service at once.
#[test]
fn a_stderr_nobody_reads_never_blocks_the_wrapper() {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::unix::io::FromRawFd;
    require_haproxy();
    let mode = Mode::MasterWorker;
    let mut t = Ctx::new("real-stderr-full");
    let backends: String = (0..200).map(|i| format!("backend b{i}\n")).collect();
    let cfg = t.write("haproxy.cfg", &(config(&t, mode, "config-0", "") + &backends));
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
    fcntl(w, FcntlArg::F_SETPIPE_SZ(4096)).unwrap();
    fcntl(r, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
    // SAFETY: `r` is ours alone; the File closes it when the test ends.
    let _reader = unsafe { fs::File::from_raw_fd(r) };
    let mut cmd = t.command(&args(&t, mode, &cfg));
    // SAFETY: `w` is ours alone; Stdio takes it over (the wrapper's stderr, blocking as given).
    cmd.stderr(unsafe { std::process::Stdio::from_raw_fd(w) });
    t.spawn(cmd);
    t.wait_ready(T_REAL);
    t.track_haproxy(REAL_HAPROXY);
    let reload = |t: &mut Ctx, n: u32| {
        t.replace(
            "haproxy.cfg",
            &(config(t, mode, &format!("config-{n}"), "") + &backends),
        );
        t.signal(Signal::SIGUSR2);
        let out = t.wait_reload_command(t.pid, &["--timeout", "20"]).output().unwrap();
        t.track_haproxy(REAL_HAPROXY);
        assert_eq!(
            out.status.code(),
            Some(0),
            "reload {n} with the wrapper's stderr full: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_tag(t, &format!("config-{n}"));
    };
    for n in 1..=5 {
        reload(&mut t, n);
    }
    // The reader comes back: the next lines come with the count of those dropped.
    let held = drain_pipe(r);
    assert!(
        held.len() >= 2048,
        "the pipe was never full ({} bytes): the test proves nothing",
        held.len()
    );
    reload(&mut t, 6);
    let after = drain_pipe(r);
    assert!(
        after.contains(" log lines dropped: stderr was not ready to take them"),
        "no count of the dropped lines:\n{after}"
    );
    // Full again: a SIGTERM is acted on at once.
    reload(&mut t, 7);
    stop_and_check_nothing_left(&mut t);
}
