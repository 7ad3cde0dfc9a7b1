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
use std::os::unix::io::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

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
    /// kill -9 of the serving haproxy (foreground process / master) with `--max-restarts 0`:
    /// the wrapper exits 137.
    fn kill9_of_serving_haproxy_exits_137(mode) {
        require_haproxy();
        let mut t = Ctx::new("real-kill9");
        let cfg = t.write("haproxy.cfg", &config(&t, mode, "config-1", ""));
        let mut a = args(&t, mode, &cfg);
        a.splice(0..0, ["--max-restarts".to_string(), "0".to_string()]);
        t.start(&a);
        t.wait_ready(T_REAL);
        t.track_haproxy(REAL_HAPROXY);
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

// ---- The listening sockets outlive every haproxy (src/listeners.rs) ----

/// The inode of the TCP socket listening on 127.0.0.1:port, from /proc/net/tcp.
fn listening_inode(port: u16) -> Option<u64> {
    let table = fs::read_to_string("/proc/self/net/tcp").ok()?;
    let local = format!("0100007F:{:04X}", port);
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A")).then(|| f.get(9)?.parse().ok())?
    })
}

/// The haproxy processes that accept: the foreground haproxy, or the master's workers.
fn accepting(t: &Ctx, mode: Mode) -> Vec<i32> {
    let direct: Vec<i32> = children_of(t.pid)
        .into_iter()
        .filter(|p| exe_of(p.pid).map_or(false, |e| e == Path::new(REAL_HAPROXY)))
        .map(|p| p.pid)
        .collect();
    match mode {
        Mode::Foreground => direct,
        Mode::MasterWorker => direct.iter().flat_map(|m| children_of(*m)).map(|p| p.pid).collect(),
    }
}

both_modes! {
    /// kill -9 of what serves (the foreground haproxy; the worker, then the master): the wrapper
    /// starts haproxy again at once on the listening sockets it holds, and a client opening new
    /// connections all along sees no refusal and no timeout; STATUS says it happened.
    fn a_killed_haproxy_is_started_again_and_no_connection_is_refused(mode) {
        let (mut t, _cfg) = start("real-crash", mode, "config-1");
        let load = Load::start(t.port, 2);
        poll_until(T, || (load.ok() >= 20).then_some(())).expect("no answer under load");
        let mut readies = 1;
        let rounds: u64 = if mode == Mode::MasterWorker { 2 } else { 1 };
        for round in 0..rounds {
            let victim = if mode == Mode::MasterWorker && round == 0 {
                *accepting(&t, mode).last().expect("no worker")
            } else {
                children_of(t.pid)
                    .into_iter()
                    .find(|p| exe_of(p.pid).map_or(false, |e| e == Path::new(REAL_HAPROXY)))
                    .expect("no haproxy child")
                    .pid
            };
            kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
            readies += 1;
            t.notify().wait_count("READY=1 after the restart", readies, T_REAL, |m| m.is_ready());
            let before = load.ok();
            poll_until(T, || (load.ok() >= before + 50).then_some(())).expect("no answers after the restart");
        }
        let r = load.stop();
        // None refused, none timed out. A connection the killed haproxy had accepted dies with it
        // (reset, or closed unanswered): at most one per load thread and kill.
        let refused_or_slow = r
            .errors
            .iter()
            .filter(|e| e.contains("refused") || e.contains("timed out") || e.contains("os error 11"))
            .count();
        assert_eq!(refused_or_slow, 0, "{} of {} failed: {:?}\n{}", r.fail, r.ok + r.fail, r.errors, t.log());
        assert!(r.fail <= 2 * rounds, "{} of {} failed: {:?}\n{}", r.fail, r.ok + r.fail, r.errors, t.log());
        assert!(t.try_exit().is_none(), "the wrapper exited:\n{}", t.log());
        let status = t.notify().last_status().unwrap_or_default();
        assert!(
            status.contains(&format!("restarted after a crash: {rounds} (last: the serving ")),
            "STATUS: {status}"
        );
        let log = t.log();
        assert!(log.contains("ended unexpectedly with status 137: starting gen"), "{log}");
        assert!(log.contains("with the listening sockets the wrapper holds"), "{log}");
        get_tag(&t, "config-1");
        stop_and_check_nothing_left(&mut t);
    }
}

both_modes! {
    /// The listening sockets go to systemd's store (FDSTORE=1, named, FDPOLL=0). With the wrapper
    /// and haproxy gone and only the store's copies left (the test's), a new connection waits in
    /// the queue; a wrapper started with them in LISTEN_FDS hands them to its haproxy, which
    /// answers that connection on the very same socket.
    fn the_listening_sockets_go_to_the_fd_store_and_come_back_from_it(mode) {
        require_haproxy();
        let t0 = Ctx::new("real-store");
        t0.notify().keep_fds();
        let text = config(&t0, mode, "config-1", "");
        let (mut t, _cfg) = start_with(t0, mode, &text);
        let inode = listening_inode(t.port).expect("no listener");
        let name = format!("haproxy-listener-{inode}");
        let stored = |m: &Msg| m.has("FDSTORE=1") && m.has("FDPOLL=0") && m.get("FDNAME").is_some() && m.fds.len() == 1;
        let want = if mode == Mode::Foreground { 2 } else { 1 }; // foreground: the admin socket too
        t.notify().wait_count("FDSTORE=1", want, T, stored);
        let store: Vec<(String, Arc<OwnedFd>)> = t
            .notify()
            .messages()
            .iter()
            .filter(|m| stored(m))
            .map(|m| (m.get("FDNAME").unwrap().to_string(), m.fds[0].clone()))
            .collect();
        assert!(store.iter().any(|(n, _)| *n == name), "no FDSTORE=1 for {name}: {}", t.notify().dump());
        stop_and_expect_0(&mut t, T_REAL);
        assert_eq!(listening_inode(t.port), Some(inode), "the store's copy keeps the socket listening");
        let port = t.port;
        let queued = std::thread::spawn(move || http_get(port, "/"));
        // As systemd starts the service again: the store in LISTEN_FDS from fd 3, LISTEN_PID the
        // wrapper's own (a shell exports its pid, then execs the wrapper in place).
        t.wrapper = None;
        let cfg = t.p("haproxy.cfg");
        let a = args(&t, mode, &cfg);
        let base = t.command(&a);
        let mut sh = std::process::Command::new("/bin/sh");
        sh.arg("-c")
            .arg("LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" \"$@\"")
            .args(std::iter::once(base.get_program()).chain(base.get_args()));
        for (k, v) in base.get_envs() {
            match v {
                Some(v) => sh.env(k, v),
                None => sh.env_remove(k),
            };
        }
        let names: Vec<&str> = store.iter().map(|(n, _)| n.as_str()).collect();
        sh.env("LISTEN_FDS", store.len().to_string()).env("LISTEN_FDNAMES", names.join(":"));
        let log = fs::File::options().append(true).open(t.log_path()).unwrap();
        sh.stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let raw: Vec<i32> = store.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
        // SAFETY: fcntl and dup2 are async-signal-safe; the copies land on 3, 4, ... in the child
        // only. They go first to numbers above the targets: a source may already sit on 3 or 4
        // (then dup2 onto itself would do nothing and leave it close-on-exec), or on a target a
        // later one needs.
        unsafe {
            use std::os::unix::process::CommandExt;
            sh.pre_exec(move || {
                let above = 3 + raw.len() as i32;
                let mut moved = Vec::with_capacity(raw.len());
                for fd in &raw {
                    let arg = nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(above);
                    moved.push(nix::fcntl::fcntl(*fd, arg).map_err(std::io::Error::from)?);
                }
                for (i, fd) in moved.iter().enumerate() {
                    nix::unistd::dup2(*fd, 3 + i as i32).map_err(std::io::Error::from)?;
                }
                Ok(())
            });
        }
        t.spawn(sh);
        t.notify().wait_count("READY=1 of the second wrapper", 2, T_REAL, |m| m.is_ready());
        let log = t.log();
        assert!(log.contains(&format!("systemd handed back {} listening sockets", store.len())), "{log}");
        let answer = queued.join().unwrap().expect("the connection made while nothing ran");
        assert_eq!((answer.status(), answer.body.trim()), (200, "config-1"));
        drop(store);
        t.notify().close_fds();
        assert_eq!(listening_inode(t.port), Some(inode), "haproxy listens on another socket");
        let holders: Vec<i32> = accepting(&t, mode)
            .into_iter()
            .filter(|p| fs::read_dir(format!("/proc/{p}/fd")).unwrap().flatten().any(|e| {
                fs::read_link(e.path()).map_or(false, |l| l.to_string_lossy() == format!("socket:[{inode}]"))
            }))
            .collect();
        assert!(!holders.is_empty(), "no haproxy holds socket {inode}");
        t.track_haproxy(REAL_HAPROXY);
        stop_and_expect_0(&mut t, T_REAL);
        let left: Vec<i32> = t.seen.iter().copied().filter(|p| alive(*p)).collect();
        assert!(left.is_empty(), "haproxy processes left: {left:?}");
    }
}

both_modes! {
    /// A listener the new configuration drops is closed by the time the reload is said done (a
    /// client is refused, not left waiting on a socket nobody accepts from), and removed from
    /// systemd's store.
    fn a_listener_the_configuration_drops_is_closed_when_the_reload_is_done(mode) {
        let extra_port = free_port();
        require_haproxy();
        let t0 = Ctx::new("real-drop");
        let extra = format!("frontend extra\n    bind 127.0.0.1:{extra_port}\n");
        let text = format!("{}{extra}", config(&t0, mode, "config-1", ""));
        let (mut t, _cfg) = start_with(t0, mode, &text);
        let extra_inode = listening_inode(extra_port).expect("extra frontend not listening");
        let name = format!("haproxy-listener-{extra_inode}");
        t.notify().wait_count("FDSTORE=1 of the extra listener", 1, T, |m| m.get("FDNAME") == Some(name.as_str()));
        t.replace("haproxy.cfg", &config(&t, mode, "config-2", ""));
        assert_reload_ok(&t.reload(T_REAL));
        let refused = std::net::TcpStream::connect(("127.0.0.1", extra_port)).map(|_| ()).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused, "{}", t.log());
        t.notify().sync();
        assert_eq!(
            t.notify().count(|m| m.has("FDSTOREREMOVE=1") && m.get("FDNAME") == Some(name.as_str())),
            1,
            "{}",
            t.notify().dump()
        );
        get_tag(&t, "config-2");
        stop_and_check_nothing_left(&mut t);
    }
}

both_modes! {
    /// Where pidfd_getfd(2) is refused (a seccomp filter), the wrapper gets the listening sockets
    /// from haproxy's stats socket (`expose-fd listeners`) instead, and a killed haproxy still
    /// refuses no connection.
    fn where_pidfd_getfd_is_refused_the_stats_socket_hands_the_listeners_out(mode) {
        require_haproxy();
        let mut t = Ctx::new("real-seccomp");
        let stats = format!("global\n    stats socket {} mode 600 level admin expose-fd listeners\n", t.p("admin.sock"));
        let text = config(&t, mode, "config-1", "").replacen("global\n", &stats, 1);
        let text = if mode == Mode::Foreground { config(&t, mode, "config-1", "") } else { text };
        let cfg = t.write("haproxy.cfg", &text);
        let a = args(&t, mode, &cfg);
        let mut cmd = t.command(&a);
        // SAFETY: refuse_pidfd_getfd only makes async-signal-safe calls.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(refuse_pidfd_getfd);
        }
        t.spawn(cmd);
        t.wait_ready(T_REAL);
        t.track_haproxy(REAL_HAPROXY);
        let inode = listening_inode(t.port).expect("no listener");
        let name = format!("haproxy-listener-{inode}");
        let stored = t.notify().wait_for(T, |m| m.iter().any(|m| m.get("FDNAME") == Some(name.as_str())));
        assert!(stored, "no FDSTORE=1 for {name}:\n{}\n{}", t.notify().dump(), t.log());
        let log = t.log();
        assert!(log.contains("Operation not permitted (os error 1); tcp 127.0.0.1:"), "pidfd_getfd was not refused:\n{log}");
        assert!(log.contains("came from haproxy's stats socket instead"), "{log}");
        let load = Load::start(t.port, 2);
        poll_until(T, || (load.ok() >= 20).then_some(())).expect("no answer under load");
        let victim = children_of(t.pid)
            .into_iter()
            .find(|p| exe_of(p.pid).map_or(false, |e| e == Path::new(REAL_HAPROXY)))
            .expect("no haproxy child")
            .pid;
        kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
        t.notify().wait_count("READY=1 after the restart", 2, T_REAL, |m| m.is_ready());
        let before = load.ok();
        poll_until(T, || (load.ok() >= before + 50).then_some(())).expect("no answers after the restart");
        let r = load.stop();
        let refused = r.errors.iter().filter(|e| e.contains("refused")).count();
        assert_eq!(refused, 0, "{:?}\n{}", r.errors, t.log());
        assert!(r.fail <= 2, "{:?}\n{}", r.errors, t.log());
        assert!(t.log().contains("with the listening sockets the wrapper holds"), "{}", t.log());
        stop_and_check_nothing_left(&mut t);
    }
}
