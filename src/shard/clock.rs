//! The shard's clock: CLOCK_MONOTONIC in microseconds, the engine's `Instant`.
//!
//! Monotonic since boot rather than since process start, so every shard (and
//! a restarted process) reads the same timeline.

use crate::tcp::Instant;

#[inline]
pub fn now() -> Instant {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is valid for the kernel (vDSO) to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Instant::from_micros(ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000)
}
