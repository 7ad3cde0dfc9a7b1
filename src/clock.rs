//! Time for the supervisor: nanoseconds of CLOCK_MONOTONIC, which (unlike `Instant`) mean the
//! same thing before and after the wrapper's re-exec, and deadlines as such instants.
//! Imports nothing of the wrapper's.

use std::time::Duration;

/// Nanoseconds of CLOCK_MONOTONIC.
pub fn now_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64,
        Err(_) => 0,
    }
}

/// Whole milliseconds from `start_ns` until now.
pub fn ms_since(start_ns: u64) -> u64 {
    now_ns().saturating_sub(start_ns) / 1_000_000
}

/// The instant `d` after `from_ns` (saturating: a huge `d` is "never").
pub fn after(from_ns: u64, d: Duration) -> u64 {
    from_ns.saturating_add(nanos(d))
}

/// The instant `d` from now.
pub fn deadline_after(d: Duration) -> u64 {
    after(now_ns(), d)
}

/// `d` in nanoseconds (saturating).
pub fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

/// poll(2)'s timeout for the earliest of `deadlines` (-1: none, wait for an event).
pub fn poll_timeout_ms(deadlines: &[Option<u64>], now_ns: u64) -> i32 {
    match deadlines.iter().flatten().min() {
        None => -1,
        Some(&t) if t <= now_ns => 0,
        // Rounded up, so that the deadline has passed when poll returns.
        Some(&t) => (((t - now_ns) / 1_000_000) + 1).min(i32::MAX as u64) as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_timeout_is_the_earliest_deadline_rounded_up() {
        assert_eq!(poll_timeout_ms(&[None, None], 5), -1);
        assert_eq!(
            poll_timeout_ms(&[Some(3_000_000_000), Some(1_500_000), None], 1_000_000),
            1
        );
        assert_eq!(poll_timeout_ms(&[Some(10)], 20), 0);
        assert!(deadline_after(Duration::from_secs(1)) > now_ns());
        assert_eq!(after(5, Duration::from_nanos(7)), 12);
        assert_eq!(after(u64::MAX - 1, Duration::from_secs(u64::MAX)), u64::MAX);
    }
}
