//! `haproxy-systemd-wrapper --wait-reload PID`, the unit's last `ExecReload=` line: it exits 0 only
//! once the reload that a SIGUSR2 asked for serves, 1 with haproxy's reason when that reload
//! failed, 69 when PID is no running wrapper (or it ends meanwhile), 75 on its timeout, 64 when
//! no reload was asked. Driven with the fake haproxy in both modes; each wrapper keeps its ledger
//! in the test's own run directory.

#[macro_use]
mod util;

use std::process::{Child, Command, Output};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use util::*;

/// Starts the wrapper on the fake (its ledger in `<test>/run`, see `Ctx::command`) and waits for
/// READY=1; returns the cfg path.
fn start(t: &mut Ctx, mode: Mode, cfg_text: &str, opts: &[&str]) -> String {
    let cfg = t.write("h.cfg", cfg_text);
    let args = t.fake_args_with_options(mode, &cfg, opts);
    t.start(&args);
    t.wait_ready(T);
    cfg
}

/// The client for the test's wrapper, started now.
fn client(t: &Ctx, extra: &[&str]) -> Child {
    client_for(t, t.pid, extra)
}

fn client_for(t: &Ctx, pid: i32, extra: &[&str]) -> Child {
    t.wait_reload_command(pid, extra).spawn().expect("spawn the client")
}

/// Waits for the client's end (killing it after `timeout`).
fn finish(mut c: Child, timeout: Duration) -> Output {
    if poll_until(timeout, || c.try_wait().unwrap()).is_none() {
        let _ = c.kill();
        let out = c.wait_with_output().unwrap();
        panic!(
            "client still waiting after {timeout:?}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    c.wait_with_output().unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `kill -USR2` then the client, as the unit's two ExecReload= lines do.
fn reload_and_wait(t: &Ctx, timeout: Duration) -> Output {
    t.signal(Signal::SIGUSR2);
    finish(client(t, &[]), timeout)
}

both_modes! {
    /// A good reload: 0, and the new generation is the one serving.
    fn good_reload_exits_0_once_the_new_generation_serves(mode) {
        let mut t = Ctx::new("wr-good");
        start(&mut t, mode, "fake-marker one\n", &[]);
        t.replace("h.cfg", "fake-marker two\n");
        let out = reload_and_wait(&t, T);
        assert_eq!(code(&out), 0, "{}", text(&out));
        assert!(text(&out).contains("reload ok: gen 2 serving"), "{}", text(&out));
        // By the time the client said so, the wrapper had told systemd the same.
        let status = t.notify().last_status().unwrap();
        assert!(status.contains("gen 2 serving") && status.contains("last reload: ok"), "{status}");
        let newest = t.events().into_iter().rev().find(|e| e.what == "ready").unwrap();
        assert!(t.report(newest.pid).contains("two"), "newest ready fake runs the new config");
    }
}

both_modes! {
    /// A reload haproxy rejects: 1, haproxy's [ALERT] text on stderr, the old generation serving.
    fn failed_reload_exits_1_with_haproxys_reason(mode) {
        let mut t = Ctx::new("wr-bad");
        start(&mut t, mode, "fake-marker one\n", &[]);
        t.replace("h.cfg", "fake-bad\n");
        let out = reload_and_wait(&t, T);
        assert_eq!(code(&out), 1, "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("reload to gen 2 failed after") && err.contains("unknown keyword 'fake-bad'"), "{err}");
        assert!(err.contains("the previous generation keeps serving"), "{err}");
        // haproxy's own alert, tagged as such (what `systemctl status` shows of the failed reload).
        assert!(err.lines().any(|l| l.contains("[ALERT]") && l.contains("unknown keyword 'fake-bad'")), "{err}");
        t.assert_running();
        // The next reload is judged on its own: fixed, it succeeds (no stale "failed").
        t.replace("h.cfg", "fake-marker three\n");
        let out = reload_and_wait(&t, T);
        assert_eq!(code(&out), 0, "{}", text(&out));
        // And a failure after a success is a failure (no stale "ok").
        t.replace("h.cfg", "fake-bad\n");
        let out = reload_and_wait(&t, T);
        assert_eq!(code(&out), 1, "{}", text(&out));
    }
}

both_modes! {
    /// The client waits while the new generation is not ready, and answers once it is.
    fn waits_for_a_slow_generation(mode) {
        let mut t = Ctx::new("wr-slow");
        start(&mut t, mode, "fake-marker one\n", &[]);
        let gate = t.p("gate");
        t.replace("h.cfg", &format!("fake-ready-delay-file {gate}\n"));
        t.signal(Signal::SIGUSR2);
        let mut c = client(&t, &[]);
        // The reload has begun and is held at the gate: the client must still be waiting.
        t.notify().wait_count("RELOADING=1", 1, T, Msg::is_reloading);
        t.wait_events("gated generation", 1, T, |e| e.what == "gated" || (e.what == "reload" && e.rest == "gated"));
        assert!(c.try_wait().unwrap().is_none(), "the client answered before the new generation was ready");
        std::fs::write(&gate, "").unwrap();
        let out = finish(c, T);
        assert_eq!(code(&out), 0, "{}", text(&out));
    }
}

both_modes! {
    /// A reload already over when the client starts is still answered, from the ledger.
    fn reload_over_before_the_client_started(mode) {
        let mut t = Ctx::new("wr-over");
        start(&mut t, mode, "fake-marker one\n", &[]);
        t.replace("h.cfg", "fake-bad\n");
        t.reload(T);
        let out = finish(client(&t, &[]), T);
        assert_eq!(code(&out), 1, "{}", text(&out));
        t.replace("h.cfg", "fake-marker two\n");
        t.reload(T);
        let out = finish(client(&t, &[]), T);
        assert_eq!(code(&out), 0, "{}", text(&out));
    }
}

both_modes! {
    /// Signal still pending when the client looks (the wrapper is stopped): the client waits for
    /// the attempt that begins afterwards, never the previous one's result.
    fn pending_signal_waits_for_the_next_attempt(mode) {
        let mut t = Ctx::new("wr-pending");
        start(&mut t, mode, "fake-marker one\n", &[]);
        t.replace("h.cfg", "fake-bad\n");
        t.reload(T); // a failed reload in the ledger: it must not answer the next request
        t.replace("h.cfg", "fake-marker two\n");
        kill(Pid::from_raw(t.pid), Signal::SIGSTOP).unwrap();
        t.signal(Signal::SIGUSR2);
        let mut c = client(&t, &[]);
        // The client has looked (its inotify watch or poll is running) once it has read the ledger;
        // it cannot answer while the wrapper is stopped.
        let waited = poll_until(Duration::from_millis(300), || c.try_wait().unwrap());
        assert!(waited.is_none(), "the client answered with the wrapper stopped: {:?}", waited);
        kill(Pid::from_raw(t.pid), Signal::SIGCONT).unwrap();
        let out = finish(c, T);
        assert_eq!(code(&out), 0, "{}", text(&out));
    }
}

both_modes! {
    /// Three reload requests, three clients, while a gated reload runs: all are answered by the
    /// reload that followed (coalesced), all 0, and the newest configuration serves.
    fn concurrent_clients_are_all_answered(mode) {
        let mut t = Ctx::new("wr-concurrent");
        start(&mut t, mode, "fake-marker one\n", &[]);
        let gate = t.p("gate");
        t.replace("h.cfg", &format!("fake-ready-delay-file {gate}\nfake-marker two\n"));
        t.signal(Signal::SIGUSR2);
        t.notify().wait_count("RELOADING=1", 1, T, Msg::is_reloading);
        let c1 = client(&t, &[]);
        t.replace("h.cfg", "fake-marker three\n");
        t.signal(Signal::SIGUSR2);
        let c2 = client(&t, &[]);
        t.signal(Signal::SIGUSR2);
        let c3 = client(&t, &[]);
        std::fs::write(&gate, "").unwrap();
        for c in [c1, c2, c3] {
            let out = finish(c, T);
            assert_eq!(code(&out), 0, "{}", text(&out));
        }
        let newest = t.events().into_iter().rev().find(|e| e.what == "ready").unwrap();
        assert!(t.report(newest.pid).contains("three"), "the newest configuration serves");
    }
}

both_modes! {
    /// The wrapper dies while the client waits: 69, not a hang and not "ok".
    fn wrapper_dying_meanwhile_gives_69(mode) {
        let mut t = Ctx::new("wr-dies");
        start(&mut t, mode, "fake-marker one\n", &[]);
        let gate = t.p("gate");
        t.replace("h.cfg", &format!("fake-ready-delay-file {gate}\n"));
        t.signal(Signal::SIGUSR2);
        let c = client(&t, &[]);
        t.notify().wait_count("RELOADING=1", 1, T, Msg::is_reloading);
        t.kill_all();
        let out = finish(c, T);
        assert_eq!(code(&out), 69, "{}", text(&out));
        // Killed before or after the client first looked: either way it says the wrapper is gone.
        let said = text(&out);
        assert!(said.contains("ended before the reload finished") || said.contains("haproxy-systemd-wrapper is not running"), "{said}");
    }
}

/// A bounded wait: 75 with a message, while the reload is still in progress.
#[test]
fn timeout_gives_75() {
    let mut t = Ctx::new("wr-timeout");
    start(&mut t, Mode::Foreground, "fake-marker one\n", &[]);
    let gate = t.p("gate");
    t.replace("h.cfg", &format!("fake-ready-delay-file {gate}\n"));
    t.signal(Signal::SIGUSR2);
    let out = finish(client(&t, &["--timeout", "0.5"]), T);
    assert_eq!(code(&out), 75, "{}", text(&out));
    assert!(
        text(&out).contains("no result for the reload after 0.5 s"),
        "{}",
        text(&out)
    );
}

/// Not a wrapper, no such process, no reload asked: distinct statuses, one clear line each.
#[test]
fn no_wrapper_or_no_request() {
    let mut t = Ctx::new("wr-nowrapper");
    let mut other = Command::new("sleep").arg("30").spawn().unwrap();
    let out = finish(client_for(&t, other.id() as i32, &[]), T);
    assert_eq!(code(&out), 69, "{}", text(&out));
    assert!(text(&out).contains("is not haproxy-systemd-wrapper"), "{}", text(&out));
    let _ = other.kill();
    let _ = other.wait();
    let out = finish(client_for(&t, other.id() as i32, &[]), T);
    assert_eq!(code(&out), 69, "{}", text(&out));
    start(&mut t, Mode::Foreground, "fake-marker one\n", &[]);
    let out = finish(client(&t, &[]), T);
    assert_eq!(code(&out), 64, "{}", text(&out));
    assert!(text(&out).contains("no reload was asked"), "{}", text(&out));
}

/// Given the pid of another `--wait-reload` (the same program, but a client): 69 at once, saying
/// so, rather than waiting for a ledger that client never writes; the other client is answered.
#[test]
fn a_client_given_another_clients_pid_says_so_at_once() {
    let mut t = Ctx::new("wr-client-pid");
    start(&mut t, Mode::Foreground, "fake-marker one\n", &[]);
    let gate = t.p("gate");
    t.replace("h.cfg", &format!("fake-ready-delay-file {gate}\n"));
    t.signal(Signal::SIGUSR2);
    let waiting = client(&t, &[]);
    let other = waiting.id() as i32;
    // The program and its arguments: /proc shows the new program a moment before its arguments.
    poll_until(T, || {
        let cmdline = std::fs::read(format!("/proc/{other}/cmdline")).unwrap_or_default();
        let runs = exe_of(other).map_or(false, |e| e == std::path::Path::new(WRAPPER));
        (runs && String::from_utf8_lossy(&cmdline).contains("--wait-reload")).then_some(())
    })
    .expect("the first client runs the wrapper program as --wait-reload");
    let out = finish(client_for(&t, other, &["--timeout", "5"]), T);
    assert_eq!(code(&out), 69, "{}", text(&out));
    assert!(
        text(&out).contains(&format!("process {other} is a --wait-reload client")),
        "{}",
        text(&out)
    );
    std::fs::write(&gate, "").unwrap();
    let out = finish(waiting, T);
    assert_eq!(code(&out), 0, "{}", text(&out));
}
