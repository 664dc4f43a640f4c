//! The endpoint's timer queue: one live deadline per connection in a binary heap.
//!
//! A connection has several timers (retransmission, delayed ACK, persist,
//! TIME_WAIT/linger); it exposes the earliest. The heap holds at most one *live*
//! entry per connection (`scheduled`): a later deadline does not push (the
//! entry fires early, the connection finds nothing due and is rescheduled), an
//! earlier one pushes and leaves the old entry stale. Stale entries are skipped
//! when popped. Pushes reuse the heap's capacity, so steady state does not allocate.
//!
//! An owner that ended leaves its entry behind until that deadline comes; a
//! far one (a keepalive idle of hours, a session's idle timeout) would keep
//! it for that long, so churn would grow the heap with the connection rate
//! times the deadline. [`TimerQueue::compact_if_stale`] drops them all in one
//! pass once the heap holds more than twice the live owners, which is
//! amortised O(1) per stale entry.

use super::time::Instant;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Stale entries tolerated beyond twice the live owners before a compaction.
const COMPACT_SLACK: usize = 1024;

#[derive(Default)]
pub(crate) struct TimerQueue {
    heap: BinaryHeap<Reverse<(Instant, u32, u32)>>,
}

impl TimerQueue {
    /// Make sure connection `(index, generation)` is woken at or before `deadline`;
    /// `scheduled` is the connection's record of its live heap entry.
    pub(crate) fn schedule(
        &mut self,
        scheduled: &mut Option<Instant>,
        deadline: Option<Instant>,
        index: u32,
        generation: u32,
    ) {
        let Some(d) = deadline else { return };
        match *scheduled {
            Some(s) if s <= d => {}
            _ => {
                self.heap.push(Reverse((d, index, generation)));
                *scheduled = Some(d);
            }
        }
    }

    /// The earliest entry (possibly stale: then waking early is harmless).
    pub(crate) fn peek(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _, _))| *t)
    }

    /// The earliest entry itself.
    pub(crate) fn peek_entry(&self) -> Option<(Instant, u32, u32)> {
        self.heap.peek().map(|Reverse(e)| *e)
    }

    pub(crate) fn pop(&mut self) {
        self.heap.pop();
    }

    /// Pop one entry due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, u32, u32)> {
        match self.heap.peek() {
            Some(Reverse((t, _, _))) if *t <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Drops every entry `live` rejects once the heap holds more than twice
    /// `owners` (the most live entries there can be) plus a slack that keeps
    /// small heaps from compacting on every end. Returns whether it did.
    pub(crate) fn compact_if_stale(
        &mut self,
        owners: usize,
        mut live: impl FnMut(Instant, u32, u32) -> bool,
    ) -> bool {
        if self.heap.len() <= owners.saturating_mul(2).saturating_add(COMPACT_SLACK) {
            return false;
        }
        self.heap.retain(|Reverse((t, i, g))| live(*t, *i, *g));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_live_entry_per_connection() {
        let mut q = TimerQueue::default();
        let mut s = None;
        q.schedule(&mut s, Some(Instant(100)), 0, 0);
        q.schedule(&mut s, Some(Instant(200)), 0, 0); // later: no push
        assert_eq!(q.len(), 1);
        q.schedule(&mut s, Some(Instant(50)), 0, 0); // earlier: push
        assert_eq!(q.len(), 2);
        assert_eq!(q.peek(), Some(Instant(50)));
        assert_eq!(q.pop_due(Instant(49)), None);
        assert_eq!(q.pop_due(Instant(60)), Some((Instant(50), 0, 0)));
        assert_eq!(q.pop_due(Instant(60)), None);
    }

    #[test]
    fn entries_of_ended_owners_are_dropped_once_they_outnumber_the_live() {
        let mut q = TimerQueue::default();
        // 10,000 owners, each with one far deadline, of which one stays live.
        for i in 0..10_000u32 {
            let mut s = None;
            q.schedule(&mut s, Some(Instant(1_000_000 + u64::from(i))), i, 0);
        }
        assert!(
            !q.compact_if_stale(10_000, |_, _, _| true),
            "all live: no pass"
        );
        assert!(q.compact_if_stale(1, |_, i, _| i == 7));
        assert_eq!(q.len(), 1);
        assert_eq!(q.peek_entry(), Some((Instant(1_000_007), 7, 0)));
        // Below the slack nothing is scanned.
        assert!(!q.compact_if_stale(0, |_, _, _| false));
    }
}
