//! A listening port: its bounded SYN queue and accept queue (counts only; the
//! half-open and completed connections live in the endpoint's table).

/// Occupancy of one listener's queues.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Listener {
    /// Passive opens in SYN-RECEIVED (bounded by `syn_backlog`).
    pub(crate) syn_queue: usize,
    /// Completed passive opens whose `Accepted` event the application has not yet
    /// polled (bounded by `accept_backlog`).
    pub(crate) accept_queue: usize,
}

impl Listener {
    pub(crate) fn syn_queue_full(&self, backlog: usize) -> bool {
        self.syn_queue >= backlog
    }
    pub(crate) fn accept_queue_full(&self, backlog: usize) -> bool {
        self.accept_queue >= backlog
    }
}
