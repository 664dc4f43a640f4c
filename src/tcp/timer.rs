//! The endpoint's timer queue: one live deadline per connection in a binary heap.
//!
//! A connection has several timers (retransmission, delayed ACK, persist,
//! TIME_WAIT/linger); it exposes the earliest. The heap holds at most one *live*
//! entry per connection (`scheduled`): a later deadline does not push (the
//! entry fires early, the connection finds nothing due and is rescheduled), an
//! earlier one pushes and leaves the old entry stale. Stale entries are skipped
//! when popped. Pushes reuse the heap's capacity, so steady state does not allocate.

use super::time::Instant;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

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
}
