//! haproxy-systemd-wrapper: runs HAProxy as a systemd Type=notify service with seamless,
//! truthful reloads. See docs/DESIGN.md (its module map first) and haproxy-systemd-wrapper(8).

#[macro_use]
mod log;
mod binds;
mod cli;
mod client;
mod clock;
mod error;
#[cfg(test)]
mod fuzz;
mod haproxy;
mod ledger;
mod listeners;
mod mode;
mod notify;
mod pidfile;
mod procs;
mod reexec;
mod relay;
mod signals;
mod state;
mod supervisor;

use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use error::Error;
use supervisor::Supervisor;

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
        Err(e) if resumed.is_some() => {
            return Err(Error::Internal(format!(
                "re-executed with arguments it cannot parse: {}",
                e
            )))
        }
        Err(e) => return Err(e),
    };
    if std::env::var_os(reexec::PROBE_ENV).is_some() {
        return reexec::answer_probe(&command, resumed.as_deref());
    }
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
            let program = haproxy::locate(opts.haproxy.as_deref(), &procs::own_program())?;
            let _ = signals::unblock_all();
            let err = std::process::Command::new(&program)
                .args(&args)
                .env_remove("NOTIFY_SOCKET")
                .exec();
            Err(Error::from_spawn(&program, &err))
        }
        cli::Command::WaitReload(w) => Ok(client::wait_reload(&w)),
        cli::Command::Supervise(opts, hargs) => {
            let supervisor = match resumed {
                Some(state) => match Supervisor::resume(opts.clone(), hargs.clone(), &state) {
                    Ok(s) => s,
                    // One stop path: the children whose roles are lost are stopped by the loop.
                    Err(unplaced) => Supervisor::stop_unplaced(opts, hargs, unplaced)?,
                },
                None => Supervisor::start(opts, hargs)?,
            };
            supervisor.run()
        }
    }
}
