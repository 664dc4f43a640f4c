//! A listening port: its bounded SYN queue and accept queue (counts only; the
//! half-open and completed connections live in the endpoint's table).

/// Occupancy of one listener's queues.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Listener {
    /// When its SYN queue last overflowed (a cookie was sent): cookies are
    /// validated only within `syn_cookies::LIFETIME` of it, like Linux's
    /// tcp_synq_no_recent_overflow.
    pub(crate) last_overflow: Option<super::time::Instant>,
    /// Passive connections of this listener held in full now, and the most
    /// it may hold (SYNs beyond are dropped, as a full backlog drops them).
    pub(crate) connections: usize,
    pub(crate) max_connections: usize,
    /// Passive opens in SYN-RECEIVED (bounded by `syn_backlog`).
    pub(crate) syn_queue: usize,
    /// Completed passive opens whose `Accepted` event the application has not yet
    /// polled (bounded by `accept_backlog`).
    pub(crate) accept_queue: usize,
}

impl Default for Listener {
    fn default() -> Self {
        Listener {
            last_overflow: None,
            connections: 0,
            max_connections: usize::MAX,
            syn_queue: 0,
            accept_queue: 0,
        }
    }
}

impl Listener {
    pub(crate) fn at_limit(&self) -> bool {
        self.connections >= self.max_connections
    }
    /// RFC 4987 3.6 (SYN cookies): only after the SYN queue overflowed lately.
    pub(crate) fn recent_overflow(&self, now: super::time::Instant) -> bool {
        self.last_overflow
            .is_some_and(|t| now.saturating_duration_since(t) < super::syn_cookies::LIFETIME)
    }
    pub(crate) fn syn_queue_full(&self, backlog: usize) -> bool {
        self.syn_queue >= backlog
    }
    pub(crate) fn accept_queue_full(&self, backlog: usize) -> bool {
        self.accept_queue >= backlog
    }
}
