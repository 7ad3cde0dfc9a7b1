//! Robustness of haproxy-systemd-wrapper (issue 9): starts that end without being ready, stops
//! that must end in bounded time whatever haproxy and its descendants do, a graceful stop whose
//! signal the master dropped, a systemd notify socket nobody reads, floods on the master's
//! private socket, and an empty NOTIFY_SOCKET.
//!
//! Same rules as tests/tests.rs: the fake haproxy (tests/fake-haproxy) drives the signal and
//! exit-status paths, every wait is a handshake or a poll with a deadline, `util::Ctx` kills what
//! a test spawned.

mod util;

use std::fs;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use util::*;

/// Generates `mod NAME { fn foreground(); fn master_worker(); }` running the same body in both
/// haproxy modes.
macro_rules! both_modes {
    ($(#[$doc:meta])* fn $name:ident($mode:ident) $body:block) => {
        $(#[$doc])*
        mod $name {
            use super::*;
            fn run($mode: Mode) $body
            #[test]
            fn foreground() {
                run(Mode::Foreground)
            }
            #[test]
            fn master_worker() {
                run(Mode::MasterWorker)
            }
        }
    };
}

/// The fake haproxy pid the wrapper started for this mode (foreground process or master).
fn first_fake(t: &Ctx, mode: Mode) -> i32 {
    t.wait_events("fake ready", 1, T, |e| e.what == "ready" && e.role == mode.role())[0].pid
}

/// Waits for the pid a fake `fake-orphan PATH` grandchild wrote.
fn orphan_pid(path: &str) -> i32 {
    poll_until(T, || fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok())).expect("the fake did not leave its orphan")
}

// ================================================================================================
/// A start whose haproxy ends without ever being ready is a failed start, whatever its status.
mod start {
    use super::*;

    both_modes! {
        /// haproxy exits 0 at start (a configuration that only checks): exit 69, never 0, no READY=1.
        fn haproxy_exiting_0_at_start_is_a_failed_start(mode) {
            let mut t = Ctx::new("exit0start");
            let cfg = t.write("h.cfg", "fake-quiet-exit 0\n");
            let st = t.run_to_exit(&t.fake_args(mode, &cfg, &[]), T);
            assert_eq!(st.code(), Some(69), "{}", describe_status(&st));
            assert_eq!(t.notify().count(Msg::is_ready), 0, "READY=1 sent:\n{}", t.notify().dump());
            assert!(t.log().contains("haproxy exited with status 0 before it was ready"), "log:\n{}", t.log());
        }
    }
}
