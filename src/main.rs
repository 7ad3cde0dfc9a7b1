//! haproxy-systemd-wrapper: runs HAProxy as a systemd Type=notify service with seamless,
//! truthful reloads. See docs/DESIGN.md and haproxy-systemd-wrapper(8).

#[macro_use]
mod log;
mod cli;
mod error;
mod haproxy;
mod notify;
mod pidfile;
mod procs;
mod reexec;
mod signals;
mod supervisor;

use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use error::Error;

fn main() -> ExitCode {
    // Before anything else, so that no signal is lost: a reload or stop that arrives during
    // start-up (or during the re-exec) waits, pending, for the event loop.
    if let Err(e) = signals::block() {
        error!("cannot block signals: {}", e);
        return ExitCode::from(error::EXIT_INTERNAL);
    }
    match run() {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            error!("{}", e);
            ExitCode::from(e.exit_code())
        }
    }
}

fn run() -> Result<u8, Error> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let resumed = std::env::var(reexec::ENV).ok();
    if resumed.is_some() {
        std::env::remove_var(reexec::ENV);
    }
    let command = match cli::parse(args) {
        Ok(c) => c,
        Err(e) if resumed.is_some() => return Err(Error::Internal(format!("re-executed with arguments it cannot parse: {}", e))),
        Err(e) => return Err(e),
    };
    match command {
        cli::Command::Help => {
            print!("{}", cli::HELP);
            Ok(0)
        }
        cli::Command::Version => {
            println!("{} {}", env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        cli::Command::Exec(opts, args) => {
            let exe = std::fs::read_link("/proc/self/exe").unwrap_or_default();
            let program = haproxy::locate(opts.haproxy.as_deref(), &exe)?;
            let _ = signals::unblock_all();
            let err = std::process::Command::new(&program).args(&args).env_remove("NOTIFY_SOCKET").exec();
            Err(Error::from_spawn(&program, &err))
        }
        cli::Command::Supervise(opts, hargs) => {
            let sup = match resumed {
                Some(state) => match supervisor::Supervisor::resume(opts, hargs, &state) {
                    Ok(s) => s,
                    Err(e) => return Err(stop_orphans(e)),
                },
                None => supervisor::Supervisor::start(opts, hargs)?,
            };
            Ok(sup.run())
        }
    }
}

/// The carried state could not be used after a re-exec: the haproxy processes are still our
/// children but their roles are unknown. Stop them (they are ours, by pid) rather than leave
/// them unsupervised; systemd's Restart= brings the service back.
fn stop_orphans(e: Error) -> Error {
    use nix::sys::signal::Signal;
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let me = std::process::id() as i32;
    for pid in procs::children_of(me) {
        haproxy::signal(pid, Signal::SIGTERM);
    }
    // Bounded: what has not ended after 20 s is killed. This path runs once, with nothing else to do.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match waitpid(None::<nix::unistd::Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Ok(WaitStatus::StillAlive) => {
                for pid in procs::children_of(me) {
                    haproxy::signal(pid, Signal::SIGKILL);
                }
                while nix::sys::wait::wait().is_ok() {}
                break;
            }
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(_) => break,
        }
    }
    e
}
