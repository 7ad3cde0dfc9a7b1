//! Signals: blocked from the first instruction of main and read synchronously from a signalfd,
//! so none is lost, whenever it arrives (also across the re-exec, which keeps the mask and
//! anything pending).

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// What a signal asks the wrapper to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Reload,
    Stop,
    GracefulStop,
    /// Pass on to haproxy (SIGTTOU pause / SIGTTIN resume listeners).
    Forward(Signal),
    Reap,
    Ignore,
}

pub fn classify(sig: Signal) -> Action {
    match sig {
        Signal::SIGUSR2 | Signal::SIGHUP => Action::Reload,
        Signal::SIGTERM | Signal::SIGINT => Action::Stop,
        Signal::SIGUSR1 => Action::GracefulStop,
        Signal::SIGTTOU | Signal::SIGTTIN => Action::Forward(sig),
        Signal::SIGCHLD => Action::Reap,
        _ => Action::Ignore,
    }
}

/// The signals the wrapper handles.
pub fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGUSR2,
        Signal::SIGHUP,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGUSR1,
        Signal::SIGTTOU,
        Signal::SIGTTIN,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    set
}

/// The reload signals, read from a signalfd of their own so that each one is counted in the
/// reload ledger before it is read (see ledger.rs).
pub fn reload_set() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGUSR2);
    set.add(Signal::SIGHUP);
    set
}

/// Every other handled signal.
pub fn other_set() -> SigSet {
    let mut set = handled();
    set.remove(Signal::SIGUSR2);
    set.remove(Signal::SIGHUP);
    set
}

/// Is any of `sigs` pending (sent, not read yet)?
fn any_pending(sigs: &[i32]) -> bool {
    let mut set = std::mem::MaybeUninit::<nix::libc::sigset_t>::uninit();
    // SAFETY: sigpending fills the set it is given.
    if unsafe { nix::libc::sigpending(set.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: initialised by the successful sigpending above.
    let set = unsafe { set.assume_init() };
    // SAFETY: sigismember only reads the set.
    sigs.iter()
        .any(|&sig| unsafe { nix::libc::sigismember(&set, sig) == 1 })
}

/// Is a reload signal pending (sent, not read yet)?
pub fn reload_pending() -> bool {
    any_pending(&[nix::libc::SIGUSR2, nix::libc::SIGHUP])
}

/// Is a stop signal (SIGTERM, SIGINT, SIGUSR1) pending? Work that must not hold a stop up (the
/// probe of a changed program) looks, without reading it: the loop reads and acts on it.
pub fn stop_pending() -> bool {
    any_pending(&[nix::libc::SIGTERM, nix::libc::SIGINT, nix::libc::SIGUSR1])
}

/// Takes `sig` if it is pending (without waiting); true when it was.
pub fn take_pending(sig: Signal) -> bool {
    let mut set = SigSet::empty();
    set.add(sig);
    let zero = nix::libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: sigtimedwait reads the set and the timeout; a null siginfo pointer is allowed.
    unsafe { nix::libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &zero) == sig as i32 }
}

/// Blocks the handled signals; call before anything else.
pub fn block() -> nix::Result<()> {
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&handled()), None)
}

/// Restores an empty signal mask (before exec'ing haproxy in place of the wrapper).
pub fn unblock_all() -> nix::Result<()> {
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
}

/// The loop's two signalfds: every handled signal but the reload ones, and the reload ones.
pub fn signalfds() -> nix::Result<(SignalFd, SignalFd)> {
    let flags = SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC;
    Ok((
        SignalFd::with_flags(&other_set(), flags)?,
        SignalFd::with_flags(&reload_set(), flags)?,
    ))
}

/// The next signal waiting on the signalfd, if any. One at a time on purpose: handling a signal may
/// re-exec the wrapper, and whatever is still pending in the kernel survives the exec, while a
/// signal already read into memory would not.
pub fn read_one(fd: &mut SignalFd) -> Option<Signal> {
    loop {
        match fd.read_signal() {
            Ok(Some(info)) => match Signal::try_from(info.ssi_signo as i32) {
                Ok(sig) => return Some(sig),
                Err(_) => continue,
            },
            Ok(None) => return None,
            Err(nix::Error::EINTR) => continue,
            Err(e) => {
                warning!("reading signals: {}", e);
                return None;
            }
        }
    }
}

/// Run in a freshly forked child before exec: empty mask, default dispositions.
/// Only async-signal-safe calls.
pub fn reset_for_child() -> std::io::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler};
    let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in Signal::iterator() {
        if sig == Signal::SIGKILL || sig == Signal::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL is always sound; nothing in the child relies on a handler.
        unsafe {
            let _ = sigaction(sig, &dfl);
        }
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None).map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_signals() {
        assert_eq!(classify(Signal::SIGUSR2), Action::Reload);
        assert_eq!(classify(Signal::SIGHUP), Action::Reload);
        assert_eq!(classify(Signal::SIGTERM), Action::Stop);
        assert_eq!(classify(Signal::SIGINT), Action::Stop);
        assert_eq!(classify(Signal::SIGUSR1), Action::GracefulStop);
        assert_eq!(classify(Signal::SIGTTOU), Action::Forward(Signal::SIGTTOU));
        assert_eq!(classify(Signal::SIGTTIN), Action::Forward(Signal::SIGTTIN));
        assert_eq!(classify(Signal::SIGCHLD), Action::Reap);
        assert_eq!(classify(Signal::SIGPIPE), Action::Ignore);
    }
}
