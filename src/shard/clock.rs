//! The shard's clock, the engine's `Instant`: microseconds on a timeline
//! that does not restart with the process.
//!
//! ISNs (RFC 6528: a clock plus a keyed hash) and timestamps (a clock plus
//! a keyed offset) grow per tuple only if the clock does, across restarts
//! too. CLOCK_MONOTONIC alone restarts at every boot; so the epoch is the
//! wall clock (CLOCK_REALTIME) read once per process, and time advances
//! with CLOCK_MONOTONIC from there, so a wall-clock step while running
//! changes nothing. Across a restart the new process starts where the wall
//! clock says, past everything the old one sent; across a reboot too, as
//! long as the wall clock was not set back (see deploy/README.md, RFC 9293
//! 3.4.3 quiet time).

use std::sync::OnceLock;

use crate::tcp::Instant;

/// CLOCK_REALTIME minus CLOCK_MONOTONIC at the process's first read.
static EPOCH: OnceLock<u64> = OnceLock::new();

fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is valid for the kernel (vDSO) to write.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// Fixes the epoch; the runtime calls it before any shard starts (later
/// calls, and `now`, only read it: an atomic load).
pub fn init() {
    EPOCH.get_or_init(|| read(libc::CLOCK_REALTIME).saturating_sub(read(libc::CLOCK_MONOTONIC)));
}

#[inline]
pub fn now() -> Instant {
    init();
    let epoch = EPOCH.get().copied().unwrap_or(0);
    Instant::from_micros(read(libc::CLOCK_MONOTONIC) + epoch)
}

/// The engine clock minus CLOCK_MONOTONIC, µs: what turns the kernel's
/// `bpf_ktime_get_ns` into engine time in the XDP program's SYN cookies.
pub fn epoch_us() -> u64 {
    init();
    EPOCH.get().copied().unwrap_or(0)
}

/// CLOCK_MONOTONIC in nanoseconds (the kernel's `bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is valid for the kernel (vDSO) to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// An engine `Instant` read by [`now`] as CLOCK_MONOTONIC nanoseconds.
pub fn to_monotonic_ns(t: Instant) -> u64 {
    t.as_micros().saturating_sub(epoch_us()) * 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_is_wall_time_and_advances() {
        let a = now();
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        assert!(a.as_micros().abs_diff(wall) < 5_000_000, "{a:?} vs {wall}");
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(now() > a);
    }
}
