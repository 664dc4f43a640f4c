//! The fall/rise state machine of one backend's health checks.
//!
//! An up backend is ejected after `fall` consecutive failed checks; an
//! ejected one is readmitted after `rise` consecutive successful checks. A
//! result that agrees with the current state resets the opposite streak.

/// A change of a backend's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Down,
    Up,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthState {
    up: bool,
    /// Consecutive results contrary to `up`.
    streak: u32,
}

impl HealthState {
    pub fn new(up: bool) -> Self {
        HealthState { up, streak: 0 }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Consecutive results against the current state so far.
    pub fn streak(&self) -> u32 {
        self.streak
    }

    /// Records one check; returns the transition it caused, if any.
    pub fn record(&mut self, ok: bool, fall: u32, rise: u32) -> Option<Transition> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { fall } else { rise }.max(1);
        if self.streak < needed {
            return None;
        }
        self.up = ok;
        self.streak = 0;
        Some(if ok { Transition::Up } else { Transition::Down })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(h: &mut HealthState, results: &str, fall: u32, rise: u32) -> Vec<Option<Transition>> {
        results
            .chars()
            .map(|c| h.record(c == '+', fall, rise))
            .collect()
    }

    #[test]
    fn ejected_after_fall_consecutive_failures() {
        let mut h = HealthState::new(true);
        let t = run(&mut h, "--+--", 3, 2);
        assert!(
            t.iter().all(Option::is_none),
            "a success resets the failure streak"
        );
        assert!(h.is_up());
        assert_eq!(h.record(false, 3, 2), Some(Transition::Down));
        assert!(!h.is_up());
        assert_eq!(h.record(false, 3, 2), None, "already down");
    }

    #[test]
    fn readmitted_after_rise_consecutive_successes() {
        let mut h = HealthState::new(false);
        let t = run(&mut h, "+-+", 3, 2);
        assert!(
            t.iter().all(Option::is_none),
            "a failure resets the success streak"
        );
        assert_eq!(h.streak(), 1);
        assert_eq!(h.record(true, 3, 2), Some(Transition::Up));
        assert!(h.is_up());
        assert_eq!(h.streak(), 0);
    }

    #[test]
    fn one_is_immediate_and_zero_counts_as_one() {
        let mut h = HealthState::new(true);
        assert_eq!(h.record(false, 1, 1), Some(Transition::Down));
        assert_eq!(h.record(true, 1, 1), Some(Transition::Up));
        assert_eq!(h.record(false, 0, 0), Some(Transition::Down));
    }

    #[test]
    fn a_full_cycle() {
        let mut h = HealthState::new(true);
        let t = run(&mut h, "+++---+-++", 3, 2);
        let changes: Vec<(usize, Transition)> = t
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.map(|t| (i, t)))
            .collect();
        assert_eq!(changes, vec![(5, Transition::Down), (9, Transition::Up)]);
    }
}
