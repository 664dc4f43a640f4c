//! Sequence-number arithmetic modulo 2^32 (RFC 9293 3.4, RFC 1982 serial numbers).
//!
//! `a < b` means "b is ahead of a by less than 2^31"; the comparison is only
//! meaningful for numbers less than 2^31 apart, which every window in TCP is.

use std::cmp::Ordering;
use std::fmt;
use std::ops::{Add, AddAssign, Sub};

/// A 32-bit TCP sequence (or acknowledgment) number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Seq(pub u32);

impl Seq {
    /// Signed distance from `other` to `self` (positive when `self` is ahead).
    #[inline]
    pub const fn diff(self, other: Seq) -> i32 {
        self.0.wrapping_sub(other.0) as i32
    }
    #[inline]
    pub fn max(self, other: Seq) -> Seq {
        if self.diff(other) >= 0 { self } else { other }
    }
    #[inline]
    pub fn min(self, other: Seq) -> Seq {
        if self.diff(other) <= 0 { self } else { other }
    }
    /// `lo <= self < hi`, in sequence space.
    #[inline]
    pub fn in_range(self, lo: Seq, hi: Seq) -> bool {
        self.0.wrapping_sub(lo.0) < hi.0.wrapping_sub(lo.0)
    }
}

impl PartialOrd for Seq {
    fn partial_cmp(&self, other: &Seq) -> Option<Ordering> {
        Some(self.diff(*other).cmp(&0))
    }
}

impl Add<u32> for Seq {
    type Output = Seq;
    #[inline]
    fn add(self, n: u32) -> Seq {
        Seq(self.0.wrapping_add(n))
    }
}

impl Add<usize> for Seq {
    type Output = Seq;
    #[inline]
    fn add(self, n: usize) -> Seq {
        // Lengths in TCP are < 2^31; truncation is the modular meaning.
        Seq(self.0.wrapping_add(n as u32))
    }
}

impl AddAssign<u32> for Seq {
    #[inline]
    fn add_assign(&mut self, n: u32) {
        self.0 = self.0.wrapping_add(n);
    }
}

impl Sub<Seq> for Seq {
    type Output = u32;
    /// The forward distance from `rhs` to `self` (callers ensure `self >= rhs`).
    #[inline]
    fn sub(self, rhs: Seq) -> u32 {
        self.0.wrapping_sub(rhs.0)
    }
}

impl Sub<u32> for Seq {
    type Output = Seq;
    #[inline]
    fn sub(self, n: u32) -> Seq {
        Seq(self.0.wrapping_sub(n))
    }
}

impl fmt::Debug for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wraps() {
        let a = Seq(u32::MAX - 5);
        let b = a + 10u32;
        assert_eq!(b, Seq(4));
        assert!(a < b);
        assert!(b > a);
        assert_eq!(b - a, 10);
        assert!(Seq(0).in_range(a, b + 1u32));
        assert!(!Seq(5).in_range(a, b + 1u32));
        assert!(!b.in_range(a, b));
        assert_eq!(a.max(b), b);
        assert_eq!(a.min(b), a);
    }

    proptest! {
        #[test]
        fn order_is_translation_invariant(base: u32, d in 1u32..(1 << 31)) {
            let a = Seq(base);
            let b = a + d;
            prop_assert!(a < b);
            prop_assert!(b > a);
            prop_assert_eq!(a.partial_cmp(&b), Some(std::cmp::Ordering::Less));
            prop_assert_eq!(b - a, d);
            prop_assert_eq!(b.diff(a), d as i32);
            prop_assert_eq!(a.max(b), b);
            prop_assert_eq!(b.min(a), a);
        }

        #[test]
        fn range_matches_offsets(base: u32, len in 0u32..(1 << 31), off: u32) {
            let lo = Seq(base);
            let hi = lo + len;
            let x = lo + off;
            prop_assert_eq!(x.in_range(lo, hi), off < len);
        }

        #[test]
        fn add_sub_roundtrip(a: u32, n: u32) {
            prop_assert_eq!((Seq(a) + n) - Seq(a), n);
        }
    }
}
