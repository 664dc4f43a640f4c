//! The engine's notion of time: microseconds since an epoch chosen by the caller.
//!
//! The engine never reads a clock (docs/ARCHITECTURE.md, "Rules of the house"): every
//! input that can depend on time takes an [`Instant`] argument.

use std::ops::{Add, Sub};
use std::time::Duration;

/// A point in time, in microseconds since an arbitrary epoch supplied by the caller.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Instant(pub u64);

impl Instant {
    pub const ZERO: Instant = Instant(0);
    pub const MAX: Instant = Instant(u64::MAX);

    pub const fn from_micros(us: u64) -> Self {
        Instant(us)
    }
    pub const fn from_millis(ms: u64) -> Self {
        Instant(ms.saturating_mul(1000))
    }
    pub const fn from_secs(s: u64) -> Self {
        Instant(s.saturating_mul(1_000_000))
    }
    pub const fn as_micros(self) -> u64 {
        self.0
    }
    pub const fn as_millis(self) -> u64 {
        self.0 / 1000
    }
    /// `self + d`, or `None` on overflow.
    pub fn checked_add(self, d: Duration) -> Option<Self> {
        let us = u64::try_from(d.as_micros()).ok()?;
        self.0.checked_add(us).map(Instant)
    }
    /// `self + d`, clamped to [`Instant::MAX`].
    pub fn saturating_add(self, d: Duration) -> Self {
        self.checked_add(d).unwrap_or(Instant::MAX)
    }
    /// `self - d`, or `None` before the epoch.
    pub fn checked_sub(self, d: Duration) -> Option<Self> {
        let us = u64::try_from(d.as_micros()).ok()?;
        self.0.checked_sub(us).map(Instant)
    }
    /// The time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    /// Saturating: a deadline past the end of time is "never".
    fn add(self, d: Duration) -> Instant {
        self.saturating_add(d)
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    /// Saturating at the epoch.
    fn sub(self, d: Duration) -> Instant {
        self.checked_sub(d).unwrap_or(Instant::ZERO)
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    /// Saturating: zero when `rhs` is later.
    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_duration_since(rhs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Instant::from_millis(5);
        assert_eq!(t.as_micros(), 5000);
        assert_eq!((t + Duration::from_micros(7)).as_micros(), 5007);
        assert_eq!(Instant::MAX + Duration::from_secs(1), Instant::MAX);
        assert_eq!(t - Duration::from_secs(1), Instant::ZERO);
        assert_eq!(
            t.saturating_duration_since(Instant::from_millis(9)),
            Duration::ZERO
        );
        assert_eq!(Instant::from_millis(9) - t, Duration::from_millis(4));
        assert_eq!(t.checked_add(Duration::MAX), None);
    }
}
