//! TIME-WAIT as compact entries (docs/ARCHITECTURE.md, "TIME_WAIT recycling").
//!
//! When a connection that closed first reaches TIME-WAIT and the application is
//! done with it, the full connection is freed and what RFC 9293 still needs is
//! kept here: the next sequence numbers both ways, the last timestamps and the
//! expiry. The table is bounded (`max_time_wait`); expiry is a FIFO because
//! every entry lives 2 MSL from its last (re)start, so deadlines are pushed in
//! order and the oldest entry is always at the front (O(1) expiry and eviction).

use super::id::FourTuple;
use super::seq::Seq;
use super::time::Instant;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;

/// Restarts of one entry's timer closer together than this are coalesced.
const RESTART_GRANULARITY: std::time::Duration = std::time::Duration::from_secs(1);

/// What remains of a connection in TIME-WAIT (the key, its 4-tuple, is beside it in the map).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimeWait {
    /// 2 MSL after entering TIME-WAIT or the last retransmitted FIN.
    pub(crate) expiry: Instant,
    /// When TIME-WAIT began (reuse delay; identity in the per-destination FIFO).
    pub(crate) entered: Instant,
    /// Our SND.NXT (after our FIN).
    pub(crate) snd_nxt: Seq,
    /// Our RCV.NXT (after the peer's FIN).
    pub(crate) rcv_nxt: Seq,
    /// RFC 7323 TS.Recent: the peer's last timestamp.
    pub(crate) ts_recent: u32,
    /// Our timestamp offset for this tuple and the last TSval we sent.
    pub(crate) ts_offset: u32,
    pub(crate) ts_last: u32,
    /// The window field of our ACKs.
    pub(crate) window: u16,
    /// Timestamps were negotiated.
    pub(crate) timestamps: bool,
    /// The local port came from the allocator (an active open): release it on removal.
    pub(crate) holds_port: bool,
}

/// Stale FIFO records tolerated beyond twice the live entries.
const COMPACT_SLACK: usize = 1024;

/// The bounded set of TIME-WAIT entries of one endpoint.
pub(crate) struct TimeWaitTable {
    map: FxHashMap<FourTuple, TimeWait>,
    /// (expiry, tuple) in push order; stale when the entry's expiry differs.
    expiry: VecDeque<(Instant, FourTuple)>,
    limit: usize,
}

impl TimeWaitTable {
    pub(crate) fn new(limit: usize) -> Self {
        TimeWaitTable {
            map: FxHashMap::default(),
            expiry: VecDeque::new(),
            limit,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn get(&self, tuple: &FourTuple) -> Option<&TimeWait> {
        self.map.get(tuple)
    }

    pub(crate) fn get_mut(&mut self, tuple: &FourTuple) -> Option<&mut TimeWait> {
        self.map.get_mut(tuple)
    }

    /// Add an entry. If the table is full, the oldest entry is evicted first and
    /// returned (the caller counts it and releases its port).
    pub(crate) fn insert(
        &mut self,
        tuple: FourTuple,
        entry: TimeWait,
    ) -> Option<(FourTuple, TimeWait)> {
        let evicted = if self.map.len() >= self.limit && !self.map.contains_key(&tuple) {
            self.pop_oldest()
        } else {
            None
        };
        self.expiry.push_back((entry.expiry, tuple));
        self.map.insert(tuple, entry);
        evicted
    }

    /// Restart an entry's 2 MSL (the peer retransmitted into TIME-WAIT). At
    /// most once a second per entry, so a flood cannot grow the FIFO faster.
    pub(crate) fn restart(&mut self, tuple: &FourTuple, expiry: Instant) {
        if let Some(e) = self.map.get_mut(tuple)
            && expiry.saturating_duration_since(e.expiry) >= RESTART_GRANULARITY
        {
            e.expiry = expiry;
            self.expiry.push_back((expiry, *tuple));
        }
    }

    pub(crate) fn remove(&mut self, tuple: &FourTuple) -> Option<TimeWait> {
        // Its FIFO record goes stale and is skipped later. Under churn every
        // entry is recycled long before 2 MSL, so stale records would pile up
        // at rate x 2 MSL: compact once they outnumber the live ones. After a
        // compaction at least `live + COMPACT_SLACK` removals pass before the
        // next, so the cost per removal stays O(1) amortised.
        let e = self.map.remove(tuple);
        if self.expiry.len() > 2 * self.map.len() + COMPACT_SLACK {
            let map = &self.map;
            self.expiry
                .retain(|(t, tuple)| map.get(tuple).is_some_and(|e| e.expiry == *t));
        }
        e
    }

    #[cfg(test)]
    pub(crate) fn records(&self) -> usize {
        self.expiry.len()
    }

    fn pop_oldest(&mut self) -> Option<(FourTuple, TimeWait)> {
        while let Some((t, tuple)) = self.expiry.pop_front() {
            if let Some(e) = self.map.get(&tuple)
                && e.expiry == t
            {
                let e = self.map.remove(&tuple)?;
                return Some((tuple, e));
            }
        }
        None
    }

    /// The next entry whose 2 MSL has passed at `now`.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<(FourTuple, TimeWait)> {
        while let Some(&(t, tuple)) = self.expiry.front() {
            let live = matches!(self.map.get(&tuple), Some(e) if e.expiry == t);
            if !live {
                self.expiry.pop_front();
                continue;
            }
            if t > now {
                return None;
            }
            self.expiry.pop_front();
            return self.map.remove(&tuple).map(|e| (tuple, e));
        }
        None
    }

    /// The earliest expiry (possibly of a stale record: waking early is harmless).
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.expiry.front().map(|&(t, _)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn tuple(port: u16) -> FourTuple {
        FourTuple {
            local: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), port),
            remote: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 80),
        }
    }

    fn entry(expiry: u64) -> TimeWait {
        TimeWait {
            expiry: Instant(expiry),
            entered: Instant(expiry.saturating_sub(100)),
            snd_nxt: Seq(1),
            rcv_nxt: Seq(2),
            ts_recent: 0,
            ts_offset: 0,
            ts_last: 0,
            window: 0,
            timestamps: false,
            holds_port: false,
        }
    }

    #[test]
    fn entry_is_compact() {
        // The acceptance bound: a TIME-WAIT entry, key included, in <= 64 bytes.
        assert!(std::mem::size_of::<(FourTuple, TimeWait)>() <= 64);
        assert!(std::mem::size_of::<(Instant, FourTuple)>() <= 24);
    }

    #[test]
    fn expires_in_order_and_restart_moves_to_back() {
        let mut t = TimeWaitTable::new(10);
        t.insert(tuple(1), entry(100));
        t.insert(tuple(2), entry(200));
        t.restart(&tuple(1), Instant(300)); // < 1 s later: coalesced
        assert_eq!(t.get(&tuple(1)).unwrap().expiry, Instant(100));
        t.restart(&tuple(1), Instant(3_000_000));
        assert_eq!(t.next_expiry(), Some(Instant(100))); // stale record, harmless
        assert_eq!(t.pop_expired(Instant(250)).map(|(k, _)| k), Some(tuple(2)));
        assert_eq!(t.pop_expired(Instant(2_999_999)), None);
        assert_eq!(
            t.pop_expired(Instant(3_000_000)).map(|(k, _)| k),
            Some(tuple(1))
        );
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn recycled_entries_do_not_pile_up_stale_records() {
        let mut t = TimeWaitTable::new(1 << 20);
        for port in 0..100u16 {
            t.insert(tuple(port), entry(1_000_000 + u64::from(port)));
        }
        // Churn: every entry is taken over (recycled) and a new one enters,
        // far more often than 2 MSL passes.
        for round in 0..20_000u64 {
            let port = (round % 100) as u16;
            assert!(t.remove(&tuple(port)).is_some());
            t.insert(tuple(port), entry(2_000_000 + round));
            assert!(
                t.records() <= 2 * t.len() + COMPACT_SLACK + 1,
                "round {round}"
            );
        }
        assert_eq!(t.len(), 100);
        // Compaction kept every live record: all 100 still expire.
        let mut expired = 0;
        while t.pop_expired(Instant(u64::MAX)).is_some() {
            expired += 1;
        }
        assert_eq!(expired, 100);
    }

    #[test]
    fn bounded_by_evicting_oldest() {
        let mut t = TimeWaitTable::new(2);
        assert!(t.insert(tuple(1), entry(100)).is_none());
        assert!(t.insert(tuple(2), entry(200)).is_none());
        let ev = t.insert(tuple(3), entry(300));
        assert_eq!(ev.map(|(k, _)| k), Some(tuple(1)));
        assert_eq!(t.len(), 2);
        assert!(t.get(&tuple(1)).is_none());
    }
}
