//! Windowed running maximum (and minimum) of a measurement: Kathleen
//! Nichols' algorithm as in Linux's `lib/win_minmax.c`, which BBR uses for
//! its bottleneck-bandwidth filter (max over the last 10 round trips).
//!
//! Three samples are kept: the best, the second best since the best, and
//! the third best since the second. When the best ages out of the window the
//! second takes its place, so the estimate is the best value seen within
//! the window (within one quarter window of precision) in O(1) time and 48
//! bytes, with no per-sample storage. Hand-written rather than a crate: it is
//! 40 lines, sans-IO, and no maintained crate offers a time-windowed max
//! over caller-supplied time.

/// One kept sample: when it was taken (in the caller's unit: round trips
/// for BBR's bandwidth filter) and its value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Sample {
    t: u64,
    v: u64,
}

/// A running maximum over a window of `win` time units.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct WindowedMax {
    s: [Sample; 3],
}

impl WindowedMax {
    /// The best value within the window as of the last update (0 before any).
    pub(crate) fn get(&self) -> u64 {
        self.s[0].v
    }

    /// Forget everything and start from `v` at time `t`.
    pub(crate) fn reset(&mut self, t: u64, v: u64) -> u64 {
        self.s = [Sample { t, v }; 3];
        v
    }

    /// Take sample `v` at time `t` (non-decreasing); `win`: the window length.
    /// Returns the new maximum.
    pub(crate) fn update(&mut self, win: u64, t: u64, v: u64) -> u64 {
        let val = Sample { t, v };
        // A new best, or nothing left in the window: start over from it.
        if v >= self.s[0].v || t.saturating_sub(self.s[2].t) > win {
            return self.reset(t, v);
        }
        if v >= self.s[1].v {
            self.s[2] = val;
            self.s[1] = val;
        } else if v >= self.s[2].v {
            self.s[2] = val;
        }
        self.subwin_update(win, val)
    }

    /// win_minmax.c `minmax_subwin_update`: age the kept samples.
    fn subwin_update(&mut self, win: u64, val: Sample) -> u64 {
        let dt = val.t.saturating_sub(self.s[0].t);
        if dt > win {
            // The best is out of the window: the second and third move up
            // and the new sample becomes the third. Checked again, as the
            // second may be out too.
            self.s[0] = self.s[1];
            self.s[1] = self.s[2];
            self.s[2] = val;
            if val.t.saturating_sub(self.s[0].t) > win {
                self.s[0] = self.s[1];
                self.s[1] = self.s[2];
                self.s[2] = val;
            }
        } else if self.s[1].t == self.s[0].t && dt > win / 4 {
            // A quarter window passed with no second choice: take one, so
            // the best does not linger a whole window before a replacement exists.
            self.s[2] = val;
            self.s[1] = val;
        } else if self.s[2].t == self.s[1].t && dt > win / 2 {
            // Likewise for the third after half a window.
            self.s[2] = val;
        }
        self.s[0].v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct definition: the largest value among samples taken within
    /// `win` of the last one.
    fn brute(samples: &[(u64, u64)], win: u64) -> u64 {
        let last = samples.last().unwrap().0;
        samples
            .iter()
            .filter(|(t, _)| last - t <= win)
            .map(|&(_, v)| v)
            .max()
            .unwrap()
    }

    #[test]
    fn keeps_the_best_until_it_ages_out() {
        let mut f = WindowedMax::default();
        assert_eq!(f.update(10, 0, 100), 100);
        for t in 1..=10 {
            assert_eq!(f.update(10, t, 50), 100, "t={t}: 100 still in the window");
        }
        // Round 11: 100 (taken at 0) is older than the window: the best since.
        assert_eq!(f.update(10, 11, 40), 50);
        // A new maximum replaces everything at once.
        assert_eq!(f.update(10, 12, 500), 500);
        assert_eq!(f.get(), 500);
    }

    #[test]
    fn never_above_the_true_window_max_and_never_below_the_last_quarter() {
        // Pseudo-random samples (an LCG: the engine's tests draw no
        // unseeded randomness), one per time unit.
        let mut x = 12345u64;
        let mut f = WindowedMax::default();
        let mut all = Vec::new();
        for t in 0..5000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = (x >> 33) % 1000;
            all.push((t, v));
            let got = f.update(40, t, v);
            let within = brute(&all, 40);
            assert!(got <= within, "t={t}: {got} above the window max {within}");
            // It is at least the best of the last quarter window (the
            // algorithm's guarantee).
            let quarter = brute(&all, 10);
            assert!(
                got >= quarter,
                "t={t}: {got} below the recent max {quarter}"
            );
        }
    }

    #[test]
    fn a_gap_longer_than_the_window_starts_over() {
        let mut f = WindowedMax::default();
        f.update(10, 0, 900);
        f.update(10, 1, 800);
        assert_eq!(f.update(10, 100, 5), 5);
    }
}
