//! `--max-draining N` (foreground mode): a reload that would leave more than N old generations
//! draining stops the oldest (SIGTERM to its own haproxy), names it in the log, and STATUS= counts
//! the draining ones. Real haproxy with long-lived TCP connections that keep every old
//! generation draining; the fake haproxy for the state carried across the wrapper's re-exec.

#[macro_use]
mod util;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use util::*;

/// A TCP server on 127.0.0.1 that accepts connections and holds them open, saying nothing (a
/// websocket that stays quiet): each one keeps the haproxy generation that carries it draining.
struct HoldingBackend {
    port: u16,
    accepted: Arc<AtomicUsize>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl HoldingBackend {
    fn start() -> HoldingBackend {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the holding backend");
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, h, s) = (accepted.clone(), held.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(conn) = conn {
                    h.lock().unwrap().push(conn);
                    a.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        HoldingBackend {
            port,
            accepted,
            held,
            stop,
        }
    }

    /// Waits until `n` connections have reached the backend (through haproxy).
    fn wait_accepted(&self, n: usize, timeout: Duration) {
        let reached = poll_until(timeout, || {
            if self.accepted.load(Ordering::SeqCst) >= n {
                Some(())
            } else {
                None
            }
        });
        assert!(
            reached.is_some(),
            "{} of {n} connections reached the backend",
            self.accepted.load(Ordering::SeqCst)
        );
    }
}

impl Drop for HoldingBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees `stop`; closes what it holds.
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
        self.held.lock().unwrap().clear();
    }
}

/// A TCP proxy to the backend, with idle timeouts far longer than the test: nothing but a stop
/// ends a connection.
fn tcp_config(t: &Ctx, backend: u16) -> String {
    format!(
        "global\n    stats socket {} mode 600 level admin expose-fd listeners\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 600s\n    timeout server 600s\n\
         frontend fe\n    bind 127.0.0.1:{}\n    default_backend be\n\
         backend be\n    server s1 127.0.0.1:{backend}\n",
        t.p("admin.sock"),
        t.port
    )
}

/// A client connection through the frontend, once the backend has it (the `n`-th in all).
fn hold_connection(t: &Ctx, backend: &HoldingBackend, n: usize) -> TcpStream {
    let conn = TcpStream::connect((Ipv4Addr::LOCALHOST, t.port));
    let conn = conn.unwrap_or_else(|e| panic!("connect to the frontend: {e}"));
    backend.wait_accepted(n, T_REAL);
    conn
}

/// The serving generation's pid as STATUS= names it ("gen N serving (pid P)").
fn serving_pid(status: &str, gen: u32) -> Option<i32> {
    let rest = status.split(&format!("gen {gen} serving (pid ")).nth(1)?;
    rest.split(')').next()?.parse().ok()
}

/// The latest STATUS= once it says gen `gen` serves with `draining` generations draining.
fn wait_status(t: &Ctx, gen: u32, draining: usize) -> String {
    let want = format!("draining: {draining} (");
    let ok = t.notify().wait_for(T_REAL, |m| {
        let last = m.iter().rev().find_map(|m| m.get("STATUS"));
        last.map_or(false, |s| serving_pid(s, gen).is_some() && s.contains(&want))
    });
    assert!(
        ok,
        "no STATUS with gen {gen} serving and '{want}':\n{}",
        t.notify().dump()
    );
    t.notify().last_status().unwrap_or_default()
}

/// The wrapper's children (haproxy generations, and a sentinel while a reload is in flight), not
/// counting those already ended and not reaped yet.
fn live_children(pid: i32) -> Vec<i32> {
    children_of(pid)
        .into_iter()
        .filter(|p| p.state != 'Z')
        .map(|p| p.pid)
        .collect()
}

/// 60 reloads with a connection held open after each one (each old generation keeps draining):
/// with `--max-draining 3` the wrapper never runs more than 3 draining generations and the
/// serving one once each reload has settled; each stopped generation is the oldest, named in the
/// log with its pid, and the connection it carried is closed; STATUS counts 3 draining. Every
/// reload re-executes the wrapper: the bound holds across 60 re-execs.
#[test]
fn sixty_reloads_with_held_connections_keep_at_most_max_draining_generations() {
    const BOUND: usize = 3;
    const RELOADS: u32 = 60;
    assert!(
        Path::new(REAL_HAPROXY).exists(),
        "{REAL_HAPROXY} is missing: run `make deps`"
    );
    let backend = HoldingBackend::start();
    let mut t = Ctx::new("maxdrain-real");
    let cfg = t.write("haproxy.cfg", &tcp_config(&t, backend.port));
    let bound = BOUND.to_string();
    t.start(&[
        "--max-draining",
        &bound,
        "--haproxy",
        REAL_HAPROXY,
        "-f",
        &cfg,
        "-x",
        &t.p("admin.sock"),
    ]);
    let ready = t.wait_ready(T_REAL);
    t.track_haproxy(REAL_HAPROXY);
    let mut pids: BTreeMap<u32, i32> = BTreeMap::new();
    pids.insert(
        1,
        serving_pid(ready.get("STATUS").unwrap_or(""), 1).expect("gen 1 in STATUS"),
    );
    // conns[i] was opened while gen i + 1 served: it keeps that generation draining.
    let mut conns = vec![hold_connection(&t, &backend, 1)];
    let mut most = 0;
    for i in 1..=RELOADS {
        let gen = i + 1;
        let out = systemctl_reload(&mut t);
        assert_eq!(out.status.code(), Some(0), "reload {i}: {}", describe(&out));
        let draining = (i as usize).min(BOUND);
        let status = wait_status(&t, gen, draining);
        pids.insert(gen, serving_pid(&status, gen).unwrap());
        conns.push(hold_connection(&t, &backend, i as usize + 1));
        // A stopped generation is gone as soon as haproxy has acted on its SIGTERM.
        let settled = poll_until(T_REAL, || {
            let children = live_children(t.pid);
            if children.len() <= BOUND + 1 {
                Some(children)
            } else {
                None
            }
        });
        let children =
            settled.unwrap_or_else(|| panic!("reload {i}: more than {BOUND} + 1 children: {:?}", live_children(t.pid)));
        assert_eq!(
            children.len(),
            draining + 1,
            "reload {i}: children {children:?}, STATUS {status}"
        );
        most = most.max(children.len());
        if (i as usize) > BOUND {
            // After reload i, gens i - 2 ..= i drain; gen i - 3, the oldest, was stopped.
            let stopped = i - BOUND as u32;
            let pid = pids[&stopped];
            let why = format!("more than {BOUND} draining generations");
            let line = format!("gen {stopped}: stopping haproxy pid {pid} (SIGTERM), its connections with it: {why}");
            assert!(
                t.log().contains(&line),
                "reload {i}: no '{line}' in the log:\n{}",
                t.log()
            );
            let conn = &mut conns[stopped as usize - 1];
            conn.set_read_timeout(Some(T_REAL)).unwrap();
            let mut buf = [0u8; 16];
            match conn.read(&mut buf) {
                Ok(0) => {}
                Err(e) if !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                other => panic!("reload {i}: the connection gen {stopped} carried is still open: {other:?}"),
            }
            let reaped = format!("gen {stopped}: haproxy pid {} finished draining", pids[&stopped]);
            let seen = poll_until(T_REAL, || if t.log().contains(&reaped) { Some(()) } else { None });
            assert!(seen.is_some(), "reload {i}: no '{reaped}' in the log:\n{}", t.log());
        }
    }
    let log = t.log();
    let stops = log
        .matches("(SIGTERM), its connections with it: more than 3 draining")
        .count();
    assert_eq!(stops, RELOADS as usize - BOUND, "one stop per reload past the bound");
    assert!(
        log.matches("re-executed ").count() >= RELOADS as usize,
        "every reload re-executes the wrapper:\n{log}"
    );
    let cmdline = fs::read(format!("/proc/{}/cmdline", t.pid)).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("--max-draining\u{0}3\u{0}"),
        "the option comes back with argv"
    );
    // The newest three still carry their connections.
    assert_eq!(live_children(t.pid).len(), BOUND + 1);
    eprintln!("max_draining: {RELOADS} reloads, --max-draining {BOUND}: at most {most} children of the wrapper");
    stop_and_expect_0(&mut t, T_REAL);
}

/// The fake haproxy ignores SIGUSR1 and SIGTERM (it drains until a file exists): a generation
/// stopped for `--max-draining 2` is still running at the next reload, crosses that reload's
/// re-exec as stopped (`stopped=` in the carried state), is never counted as draining nor
/// signalled again; each reload stops exactly the oldest draining one; once they end, every one
/// is reaped as finished draining.
#[test]
fn generations_stopped_for_the_bound_cross_the_reexec_and_are_stopped_once() {
    let mut t = Ctx::new("maxdrain-reexec");
    let done = t.p("done");
    let cfg = t.write(
        "h.cfg",
        &format!("fake-ignore-usr1\nfake-ignore-term\nfake-exit-on-file {done} 0\n"),
    );
    let args = t.fake_args_with_options(Mode::Foreground, &cfg, &["--max-draining", "2"]);
    t.start(&args);
    t.wait_ready(T);
    let mut pids = vec![0, first_fake(&t, Mode::Foreground)];
    for i in 1..=5u32 {
        if i == 5 {
            // gen 6 serves to the end like any haproxy.
            t.replace("h.cfg", "");
        }
        let status = t.reload(T);
        let gen = i + 1;
        let pid = newest_serving(&t, Mode::Foreground);
        pids.push(pid);
        let draining = (i as usize).min(2);
        let named: Vec<String> = ((gen - draining as u32)..gen)
            .map(|g| pids[g as usize].to_string())
            .collect();
        let named = named.join(" ");
        let serving = format!("foreground; gen {gen} serving (pid {pid})");
        let shape = format!("{serving}; draining: {draining} ({named}); last reload: ok in # ms");
        assert_shape(&status, &shape);
        if i > 2 {
            let stopped = i - 2;
            let p = pids[stopped as usize];
            t.wait_events(&format!("SIGTERM at gen {stopped}"), 1, T, |e| {
                e.pid == p && e.rest == "SIGTERM"
            });
            assert!(
                t.log()
                    .contains(&format!("gen {stopped}: stopping haproxy pid {p} (SIGTERM)")),
                "{}",
                t.log()
            );
        }
        if i > 3 {
            // The state this reload's re-exec carried: the generations stopped by earlier reloads.
            let carried: Vec<String> = (1..=(i - 3)).map(|g| format!("{g}:{}", pids[g as usize])).collect();
            let state = reexec_state(t.pid).expect("the wrapper re-executed itself");
            assert!(state.contains(&format!(";stopped={};", carried.join(","))), "{state}");
        }
    }
    // Gens 1..=3 stopped once each, never again after a re-exec; the newer ones not at all.
    for (gen, pid) in pids.iter().enumerate().skip(1) {
        let terms = t
            .events()
            .into_iter()
            .filter(|e| e.pid == *pid && e.rest == "SIGTERM")
            .count();
        assert_eq!(
            terms,
            usize::from(gen <= 3),
            "gen {gen} (pid {pid}) got {terms} SIGTERMs:\n{}",
            t.events_text()
        );
    }
    assert_eq!(
        t.log()
            .matches("more than 2 draining generations (--max-draining)")
            .count(),
        3,
        "{}",
        t.log()
    );
    fs::write(&done, "").unwrap();
    for (gen, pid) in pids.iter().enumerate().skip(1).take(5) {
        let reaped = format!("gen {gen}: haproxy pid {pid} finished draining (status 0)");
        let seen = poll_until(T, || if t.log().contains(&reaped) { Some(()) } else { None });
        assert!(seen.is_some(), "no '{reaped}':\n{}", t.log());
    }
    let none = format!(
        "foreground; gen 6 serving (pid {}); draining: none; last reload: ok in # ms",
        pids[6]
    );
    let last_is_none = |m: &[Msg]| {
        m.last()
            .and_then(|x| x.get("STATUS"))
            .map_or(false, |s| has_shape(s, &none))
    };
    let updated = t.notify().wait_for(T, last_is_none);
    assert!(updated, "no STATUS with draining: none:\n{}", t.notify().dump());
    stop_and_expect_0(&mut t, T);
}

/// master-worker mode: the option is accepted, has no effect (haproxy's master owns its
/// workers), and a notice at start says so once, pointing at mworker-max-reloads.
#[test]
fn master_worker_mode_accepts_max_draining_and_says_it_has_no_effect() {
    let mut t = Ctx::new("maxdrain-mw");
    let cfg = t.write("h.cfg", "");
    let args = t.fake_args_with_options(Mode::MasterWorker, &cfg, &["--max-draining", "1"]);
    t.start(&args);
    t.wait_ready(T);
    for _ in 0..2 {
        t.reload(T);
    }
    let log = t.log();
    assert_eq!(
        log.matches("--max-draining has no effect in master-worker mode")
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains("mworker-max-reloads"), "{log}");
    assert!(!log.contains("(SIGTERM), its connections with it"), "{log}");
    stop_and_expect_0(&mut t, T);
}

/// A bad value is a usage error (64) naming the option and the value, on one line.
#[test]
fn a_bad_max_draining_is_a_usage_error() {
    for bad in ["0", "-3", "many"] {
        let mut t = Ctx::without_notify("maxdrain-usage");
        let st = t.run_to_exit(&["--max-draining", bad, "--haproxy", FAKE_HAPROXY, "-f", "x.cfg"], T);
        assert_eq!(st.code(), Some(64), "--max-draining {bad}: {}", describe_status(&st));
        let log = t.log();
        let line = format!("--max-draining takes a positive whole number of generations, not '{bad}'");
        assert_eq!(log.lines().filter(|l| l.contains(&line)).count(), 1, "{log}");
    }
}
