//! Segments the endpoint sends without a connection: RSTs to closed ports, ACKs
//! from TIME_WAIT entries, SYN cookie SYN+ACKs, RSTs from connections that ended.

use super::event::Transmit;
use std::collections::VecDeque;

/// A bounded FIFO of header-only transmits; when full, new ones are dropped
/// (they are all replies a peer will provoke again) and counted by the caller.
pub(crate) struct ControlQueue {
    queue: VecDeque<Transmit>,
    limit: usize,
}

impl ControlQueue {
    pub(crate) fn new(limit: usize) -> Self {
        ControlQueue {
            queue: VecDeque::with_capacity(limit.min(1024)),
            limit,
        }
    }
    /// Queue `t`; false if the queue was full and `t` was dropped.
    #[must_use]
    pub(crate) fn push(&mut self, t: Transmit) -> bool {
        if self.queue.len() >= self.limit {
            return false;
        }
        self.queue.push_back(t);
        true
    }
    pub(crate) fn pop(&mut self) -> Option<Transmit> {
        self.queue.pop_front()
    }
}
