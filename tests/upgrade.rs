//! Reloads across changed files (issue 9): a haproxy program gone missing, a wrapper program
//! replaced by an older release, by something that is not a wrapper, or by a newer build; and a
//! master-worker reload whose answer comes late. Never a lost service, never a wrong verdict.

#[macro_use]
mod util;

use std::fs;
use std::path::Path;
use std::process::Command;

use nix::sys::signal::Signal;

use util::*;

/// `--wait-reload` for the test's wrapper: its exit status and stderr.
fn wait_reload(t: &Ctx) -> (Option<i32>, String) {
    let out = t.wait_reload_command(t.pid, &["--timeout", "20"]).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

both_modes! {
    /// The haproxy program removed, then made non-executable: a reload fails truthfully (or, in
    /// master-worker mode, does not even need it), the serving generation keeps serving, and no
    /// STOPPING=1 is sent. Once the program is back, reloads work again.
    fn missing_haproxy_at_reload_fails_the_reload_not_the_service(mode) {
        let mut t = Ctx::new("nohaproxy");
        let program = t.path("bin/haproxy");
        fs::create_dir_all(program.parent().unwrap()).unwrap();
        fs::copy(FAKE_HAPROXY, &program).unwrap();
        set_mode(&program, 0o755);
        let cfg = t.write("h.cfg", "");
        let mut args = vec!["--haproxy".to_string(), program.display().to_string()];
        if mode == Mode::MasterWorker {
            args.push("-Ws".into());
        }
        args.extend(["-f".to_string(), cfg]);
        t.start(&args);
        t.wait_ready(T);
        // The process the service lives in: the foreground haproxy, or the master.
        let serving = match mode {
            Mode::Foreground => newest_serving(&t, mode),
            Mode::MasterWorker => t.ready_pids("master")[0],
        };
        for (what, break_it) in [("removed", 0), ("not executable", 1)] {
            match break_it {
                0 => fs::remove_file(&program).unwrap(),
                _ => {
                    fs::copy(FAKE_HAPROXY, &program).unwrap();
                    set_mode(&program, 0o644);
                }
            }
            t.signal(Signal::SIGUSR2);
            let (code, err) = wait_reload(&t);
            match mode {
                Mode::Foreground => {
                    assert_eq!(code, Some(1), "haproxy {what}: {err}");
                    let expected = if break_it == 0 { "haproxy not found" } else { "haproxy not executable" };
                    assert!(err.contains(expected), "haproxy {what}: {err}");
                }
                // The master reloads itself; the wrapper only signals it.
                Mode::MasterWorker => assert_eq!(code, Some(0), "haproxy {what}: {err}"),
            }
            t.assert_running();
            assert!(alive(serving), "the serving generation is gone after a reload with haproxy {what}");
            assert_eq!(t.notify().count(Msg::is_stopping), 0, "STOPPING=1 sent:\n{}", t.notify().dump());
        }
        set_mode(&program, 0o755);
        t.signal(Signal::SIGUSR2);
        let (code, err) = wait_reload(&t);
        assert_eq!(code, Some(0), "{err}");
        stop_and_expect_0(&mut t, T);
    }
}

/// What a wrapper program file can be replaced with before a reload, and what the running
/// wrapper does about it.
enum Replacement {
    /// A previous release: it does not know the probe and refuses the state (as 0.1.0 does:
    /// "state version 2 is not 1", exit 70).
    OlderRelease,
    /// Not a wrapper at all: exits 0 and says nothing.
    NotAWrapper,
    /// A newer build (here: this build, as another file): it takes the state.
    NewerBuild,
}

fn replace_wrapper(t: &Ctx, exe: &Path, with: Replacement) {
    let tmp = exe.with_extension("new");
    match with {
        Replacement::OlderRelease => {
            fs::write(
                &tmp,
                "#!/bin/sh\necho 'state carried across re-exec is unusable: state version 2 is not 1' >&2\nexit 70\n",
            )
            .unwrap();
            set_mode(&tmp, 0o755);
        }
        Replacement::NotAWrapper => {
            fs::copy("/bin/true", &tmp).unwrap();
        }
        Replacement::NewerBuild => {
            let st = Command::new("cp").arg(WRAPPER).arg(&tmp).status().unwrap();
            assert!(st.success());
        }
    }
    // As a package upgrade does: a new file renamed over the old one.
    fs::rename(&tmp, exe).unwrap();
    let _ = t;
}

both_modes! {
    /// Upgrades and downgrades: a program that does not take the state (an older release, or
    /// not a wrapper at all) is never exec'd into; the reload happens in the running image and
    /// succeeds, nothing is orphaned. A newer build is exec'd into and carries on.
    fn reexec_only_into_a_program_that_takes_the_state(mode) {
        let mut t = Ctx::new("upgrade");
        let exe = t.copy_wrapper("w/haproxy-systemd-wrapper");
        let cfg = t.write("h.cfg", "");
        let args = t.fake_args(mode, &cfg, &[]);
        let cmd = t.command_prog(&exe, &args);
        t.spawn(cmd);
        t.wait_ready(T);
        let mut reloads = 0;
        for with in [Replacement::OlderRelease, Replacement::NotAWrapper] {
            replace_wrapper(&t, &exe, with);
            t.signal(Signal::SIGUSR2);
            let (code, err) = wait_reload(&t);
            reloads += 1;
            assert_eq!(code, Some(0), "{err}");
            assert!(reexec_state(t.pid).is_none(), "the wrapper exec'd into a program that does not take its state");
            t.assert_running();
            let refused = t.log().matches("does not take this wrapper's state").count();
            assert_eq!(refused, reloads, "{}", t.log());
        }
        replace_wrapper(&t, &exe, Replacement::NewerBuild);
        t.signal(Signal::SIGUSR2);
        let (code, err) = wait_reload(&t);
        assert_eq!(code, Some(0), "{err}");
        assert!(reexec_state(t.pid).is_some(), "the wrapper did not exec into the newer build");
        // And the new image reloads as well.
        t.signal(Signal::SIGUSR2);
        let (code, err) = wait_reload(&t);
        assert_eq!(code, Some(0), "{err}");
        stop_and_expect_0(&mut t, T);
        t.assert_no_fake_left();
    }
}

/// master-worker: a reload slower than --ready-timeout is reported failed; the master's late
/// READY=1 for it must not answer the next reload, which the busy master dropped (haproxy 2.6
/// does): that one is reported failed too, never "ok".
#[test]
fn a_late_ready_does_not_answer_the_next_reload() {
    let mut t = Ctx::new("lateready");
    let cfg = t.write("h.cfg", "");
    let args = t.fake_args_with_options(Mode::MasterWorker, &cfg, &["--ready-timeout", "1"]);
    t.start(&args);
    t.wait_ready(T);
    let gate = t.p("gate");
    t.replace("h.cfg", &format!("fake-ready-delay-file {gate}\n"));
    t.signal(Signal::SIGUSR2);
    let (code, err) = wait_reload(&t);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not ready after 1 s"), "{err}");
    // The second reload asks for a broken configuration while the master is still busy.
    t.replace("h.cfg", "fake-bad\n");
    t.signal(Signal::SIGUSR2);
    t.wait_events("the busy master dropping the second SIGUSR2", 1, T, |e| {
        e.what == "signal" && e.rest == "SIGUSR2 dropped-during-reload"
    });
    // Now the first reload finishes: its READY=1 arrives during the second reload.
    fs::write(&gate, "").unwrap();
    t.wait_events("the first reload's late READY=1", 1, T, |e| {
        e.what == "reload" && e.rest.starts_with("ok")
    });
    let (code, err) = wait_reload(&t);
    assert_eq!(
        code,
        Some(1),
        "the second reload was answered by the first one's late READY=1: {err}"
    );
    assert!(err.contains("not ready after 1 s"), "{err}");
    // STATUS= follows the ledger's answer by a moment (another datagram).
    let failed = t.notify().wait_for(T, |msgs| {
        msgs.iter()
            .rev()
            .find_map(|m| m.get("STATUS"))
            .map_or(false, |s| s.contains("last reload: failed"))
    });
    assert!(failed, "{:?}", t.notify().last_status());
}

/// Writes `script` (a shell script) over the wrapper's program file, as an upgrade would.
fn replace_with_script(exe: &Path, script: &str) {
    let tmp = exe.with_extension("new");
    fs::write(&tmp, script).unwrap();
    set_mode(&tmp, 0o755);
    fs::rename(&tmp, exe).unwrap();
}

/// The pid a script wrote to `file` (waiting for it: the script runs in the wrapper's probe).
fn pid_in(file: &Path) -> i32 {
    poll_until(T, || fs::read_to_string(file).ok().and_then(|s| s.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no pid in {}", file.display()))
}

both_modes! {
    /// A replacement program that leaves a background job holding its output open and exits 1:
    /// the probe's verdict comes when the program exits (its output is not read to the end of a
    /// job's life), the reload happens with the running program, and the job is killed with the
    /// probe's process group. Then a program that never answers: the probe is given up on after
    /// 2 s, killed, and the reload happens all the same.
    fn a_probe_that_leaves_a_job_or_hangs_is_bounded(mode) {
        let mut t = Ctx::new("probe-bounded");
        let exe = t.copy_wrapper("w/haproxy-systemd-wrapper");
        let cfg = t.write("h.cfg", "");
        let args = t.fake_args(mode, &cfg, &[]);
        let cmd = t.command_prog(&exe, &args);
        t.spawn(cmd);
        t.wait_ready(T);
        let job = t.path("job.pid");
        // The job keeps the probe's stdout and stderr open for 30 s (longer than the client waits).
        replace_with_script(&exe, &format!("#!/bin/sh\nsleep 30 &\necho $! > {}\necho 'not a wrapper' >&2\nexit 1\n", job.display()));
        t.signal(Signal::SIGUSR2);
        let (code, err) = wait_reload(&t);
        assert_eq!(code, Some(0), "the reload waited for the probe's background job: {err}");
        assert!(t.log().contains("it does not take this wrapper's state (exit status: 1: not a wrapper)"), "{}", t.log());
        let job_pid = pid_in(&job);
        assert!(poll_until(T, || if alive(job_pid) { None } else { Some(()) }).is_some(), "the probe's background job {job_pid} was left running");
        let hung = t.path("hung.pid");
        replace_with_script(&exe, &format!("#!/bin/sh\necho $$ > {}\nexec sleep 30\n", hung.display()));
        t.signal(Signal::SIGUSR2);
        let (code, err) = wait_reload(&t);
        assert_eq!(code, Some(0), "{err}");
        assert!(t.log().contains("its probe did not answer in 2 s; reloading with the running program"), "{}", t.log());
        let hung_pid = pid_in(&hung);
        assert!(poll_until(T, || if alive(hung_pid) { None } else { Some(()) }).is_some(), "the hung probe {hung_pid} was left running");
        t.assert_running();
        assert!(reexec_state(t.pid).is_none(), "the wrapper exec'd into a program that never answered its probe");
        stop_and_expect_0(&mut t, T);
        t.assert_no_fake_left();
    }
}

/// A SIGTERM while a probe hangs is acted on at once: the probe is killed, the wrapper stops
/// (exit 0, nothing left) without waiting out the probe's 2 s.
#[test]
fn a_stop_during_a_probe_is_not_held_up_by_it() {
    let mut t = Ctx::new("probe-stop");
    let exe = t.copy_wrapper("w/haproxy-systemd-wrapper");
    let cfg = t.write("h.cfg", "");
    let args = t.fake_args(Mode::Foreground, &cfg, &[]);
    let cmd = t.command_prog(&exe, &args);
    t.spawn(cmd);
    t.wait_ready(T);
    let hung = t.path("hung.pid");
    replace_with_script(
        &exe,
        &format!("#!/bin/sh\necho $$ > {}\nexec sleep 30\n", hung.display()),
    );
    t.signal(Signal::SIGUSR2);
    let hung_pid = pid_in(&hung);
    t.signal(Signal::SIGTERM);
    let st = t.wait_exit(T);
    assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
    assert!(
        t.log().contains("a stop was requested during its probe"),
        "the probe was not cut short by the stop:\n{}",
        t.log()
    );
    assert!(!alive(hung_pid), "the probe {hung_pid} outlived the wrapper");
    t.assert_no_fake_left();
}
