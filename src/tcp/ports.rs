//! Ephemeral ports for active opens, allocated per destination (local IP,
//! remote IP, remote port), as RFC 6056 3.3.3/3.3.4 do: a port is only "used"
//! with respect to the destinations it is in use with.
//!
//! Per destination: a bitmap of the range (a bit is set while a connection or a
//! TIME-WAIT entry holds the tuple), a cursor that starts at a keyed hash of the
//! destination plus a global counter (so the sequence is not predictable off
//! path and restarts elsewhere), and the FIFO of this destination's TIME-WAIT
//! tuples, oldest first, for reuse when the range is exhausted. Finding a free
//! port scans 64 ports per word from the cursor, which advances past each
//! allocation, so allocation is amortised O(1) even with thousands of TIME-WAIT
//! entries (a kernel walks the range probing each port's hash bucket).

use super::config::PortFilter;
use super::time::Instant;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::RangeInclusive;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct DestKey {
    pub(crate) local: Ipv4Addr,
    pub(crate) remote: Ipv4Addr,
    pub(crate) remote_port: u16,
}

/// (local port, TIME-WAIT entry time), oldest first; records may be stale.
type TimeWaitRecords = VecDeque<(u16, Instant)>;

struct DestPorts {
    bits: Box<[u64]>,
    /// Bits set, including `foreign`.
    used: u32,
    /// Ports the filter gave to other shards, set in `bits` from the start
    /// (precomputed once per destination, so allocation never probes them).
    foreign: u32,
    cursor: u32,
    time_wait: TimeWaitRecords,
}

pub(crate) struct PortAllocator {
    lo: u16,
    len: u32,
    dests: FxHashMap<DestKey, DestPorts>,
    counter: u32,
    /// Storage of destinations that went idle, reused by new ones (a client
    /// with one connection at a time to a destination would otherwise allocate
    /// a bitmap per connection).
    spare: Vec<(Box<[u64]>, TimeWaitRecords)>,
    /// Only ports this filter accepts are handed out (RSS-aware choice).
    filter: Option<PortFilter>,
}

/// Idle destination storage kept for reuse.
const SPARE_LIMIT: usize = 64;
/// Stale TIME-WAIT records tolerated beyond twice the ports in use before compacting.
const COMPACT_SLACK: usize = 32;

impl PortAllocator {
    pub(crate) fn new(range: RangeInclusive<u16>) -> Self {
        let (lo, hi) = (*range.start(), *range.end());
        let len = if hi >= lo { u32::from(hi - lo) + 1 } else { 0 };
        PortAllocator {
            lo,
            len,
            dests: FxHashMap::default(),
            counter: 0,
            spare: Vec::new(),
            filter: None,
        }
    }

    /// Like [`PortAllocator::new`], handing out only the ports `filter`
    /// accepts for each destination.
    pub(crate) fn with_filter(range: RangeInclusive<u16>, filter: Option<PortFilter>) -> Self {
        PortAllocator {
            filter,
            ..Self::new(range)
        }
    }

    fn index(&self, port: u16) -> Option<u32> {
        let i = u32::from(port.wrapping_sub(self.lo));
        (port >= self.lo && i < self.len).then_some(i)
    }

    fn dest(&mut self, key: DestKey, offset: u32) -> &mut DestPorts {
        let (lo, len) = (self.lo, self.len);
        let start = if len == 0 {
            0
        } else {
            offset.wrapping_add(self.counter) % len
        };
        let spare = &mut self.spare;
        let filter = &self.filter;
        self.dests.entry(key).or_insert_with(|| {
            let (mut bits, time_wait) = spare.pop().unwrap_or_else(|| {
                (
                    vec![0u64; (len as usize).div_ceil(64)].into_boxed_slice(),
                    VecDeque::new(),
                )
            });
            let mut foreign = 0;
            if let Some(f) = filter {
                let remote = SocketAddrV4::new(key.remote, key.remote_port);
                for i in 0..len {
                    if !(f.0)(key.local, remote, lo.wrapping_add(i as u16)) {
                        bits[i as usize / 64] |= 1 << (i % 64);
                        foreign += 1;
                    }
                }
            }
            DestPorts {
                bits,
                used: foreign,
                foreign,
                cursor: start,
                time_wait,
            }
        })
    }

    /// A free port to `key`, marked used; `usable(port)` is the final check
    /// against the connection and TIME-WAIT tables. `offset` is the keyed hash
    /// of the destination.
    pub(crate) fn allocate(
        &mut self,
        key: DestKey,
        offset: u32,
        mut usable: impl FnMut(u16) -> bool,
    ) -> Option<u16> {
        if self.len == 0 {
            return None;
        }
        self.counter = self.counter.wrapping_add(1);
        let (lo, len) = (self.lo, self.len);
        let d = self.dest(key, offset);
        if d.used >= len {
            return None;
        }
        let words = d.bits.len();
        let start = d.cursor as usize;
        // Visit words from the cursor's word around to it again (one extra visit
        // covers the bits below the cursor in its own word).
        for step in 0..=words {
            let w = (start / 64 + step) % words;
            let mut free = !d.bits[w];
            if step == 0 {
                free &= !0u64 << (start % 64);
            }
            // Bits past the end of the range in the last word are not ports.
            let valid = (len as usize - w * 64).min(64);
            if valid < 64 {
                free &= (1u64 << valid) - 1;
            }
            while free != 0 {
                let b = free.trailing_zeros() as usize;
                free &= free - 1;
                let i = w * 64 + b;
                let port = lo + i as u16;
                if usable(port) {
                    d.bits[w] |= 1 << b;
                    d.used += 1;
                    d.cursor = ((i + 1) % len as usize) as u32;
                    return Some(port);
                }
            }
        }
        None
    }

    /// Mark `port` used to `key` (an explicit `connect_from`); false if it is
    /// outside the range or already marked.
    pub(crate) fn mark(&mut self, key: DestKey, port: u16, offset: u32) -> bool {
        let Some(i) = self.index(port) else {
            return false;
        };
        let d = self.dest(key, offset);
        let (w, b) = (i as usize / 64, i % 64);
        if d.bits[w] & (1 << b) != 0 {
            return false;
        }
        d.bits[w] |= 1 << b;
        d.used += 1;
        true
    }

    /// The tuple is gone (no connection, no TIME-WAIT entry): free the port.
    pub(crate) fn release(&mut self, key: DestKey, port: u16) {
        let Some(i) = self.index(port) else { return };
        let Some(d) = self.dests.get_mut(&key) else {
            return;
        };
        let (w, b) = (i as usize / 64, i % 64);
        if d.bits[w] & (1 << b) != 0 {
            d.bits[w] &= !(1 << b);
            d.used -= 1;
        }
        if d.used == d.foreign {
            // Only stale TIME-WAIT records can remain; drop the destination
            // and keep its bitmap (cleared: the next destination's foreign
            // ports differ) for the next one.
            if let Some(mut d) = self.dests.remove(&key)
                && self.spare.len() < SPARE_LIMIT
            {
                d.time_wait.clear();
                d.bits.fill(0);
                self.spare.push((d.bits, d.time_wait));
            }
        }
    }

    /// A TIME-WAIT entry now holds `port` to `key`. `live(port, entered)` says
    /// whether a record still names an existing entry: stale records (entries
    /// expired, evicted or recycled) are trimmed here, so the records stay
    /// bounded by the entries that exist even when the range is never
    /// exhausted and the destination never goes idle (steady churn below
    /// saturation would otherwise grow them by one record per connection).
    pub(crate) fn push_time_wait(
        &mut self,
        key: DestKey,
        port: u16,
        entered: Instant,
        mut live: impl FnMut(u16, Instant) -> bool,
    ) {
        let Some(d) = self.dests.get_mut(&key) else {
            return;
        };
        // Entries expire oldest first, so expired ones are at the front.
        while let Some(&(p, e)) = d.time_wait.front() {
            if live(p, e) {
                break;
            }
            d.time_wait.pop_front();
        }
        // Recycled or evicted entries leave stale records behind a live front.
        // Every live record holds a port (`used` counts them), so more than
        // twice that means mostly stale ones: compact. Amortised O(1) per push.
        if d.time_wait.len() > 2 * d.used as usize + COMPACT_SLACK {
            d.time_wait.retain(|&(p, e)| live(p, e));
        }
        d.time_wait.push_back((port, entered));
    }

    /// This destination's TIME-WAIT records, oldest first (some may be stale).
    pub(crate) fn time_wait_records(&mut self, key: DestKey) -> Option<&mut TimeWaitRecords> {
        self.dests.get_mut(&key).map(|d| &mut d.time_wait)
    }

    #[cfg(test)]
    pub(crate) fn is_exhausted(&self, key: &DestKey) -> bool {
        self.dests.get(key).is_some_and(|d| d.used >= self.len)
    }

    #[cfg(test)]
    pub(crate) fn used(&self, key: &DestKey) -> u32 {
        self.dests.get(key).map_or(0, |d| d.used - d.foreign)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: u16) -> DestKey {
        DestKey {
            local: Ipv4Addr::new(10, 0, 0, 1),
            remote: Ipv4Addr::new(10, 0, 0, 2),
            remote_port: p,
        }
    }

    #[test]
    fn allocates_every_port_once_then_exhausts() {
        let mut a = PortAllocator::new(1000..=1099);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            let p = a.allocate(key(80), 12345, |_| true).unwrap();
            assert!((1000..=1099).contains(&p));
            assert!(seen.insert(p));
        }
        assert!(a.allocate(key(80), 12345, |_| true).is_none());
        assert!(a.is_exhausted(&key(80)));
        // Per destination: another remote port has the whole range.
        assert!(a.allocate(key(81), 12345, |_| true).is_some());
        a.release(key(80), 1050);
        assert_eq!(a.allocate(key(80), 12345, |_| true), Some(1050));
    }

    /// The kernel's weakness: with a range nearly full of TIME-WAIT tuples, it
    /// probes port after port. Here a full range churned oldest-first (as
    /// TIME-WAIT expiry frees ports) costs one table check per allocation.
    #[test]
    fn churn_on_a_full_range_is_one_probe_per_allocation() {
        let mut a = PortAllocator::new(32768..=60999);
        let mut order = std::collections::VecDeque::new();
        while let Some(p) = a.allocate(key(80), 99, |_| true) {
            order.push_back(p);
        }
        assert_eq!(order.len(), 28232);
        let mut probes = 0u64;
        for _ in 0..100_000 {
            let oldest = order.pop_front().unwrap();
            a.release(key(80), oldest);
            let p = a
                .allocate(key(80), 99, |_| {
                    probes += 1;
                    true
                })
                .unwrap();
            assert_eq!(p, oldest);
            order.push_back(p);
        }
        assert_eq!(probes, 100_000);
    }

    #[test]
    fn skips_ports_the_tables_reject() {
        let mut a = PortAllocator::new(1000..=1003);
        let p = a.allocate(key(80), 0, |p| p % 2 == 0).unwrap();
        assert_eq!(p % 2, 0);
        assert_eq!(a.used(&key(80)), 1);
    }

    #[test]
    fn start_is_keyed_not_a_counter() {
        let mut a = PortAllocator::new(32768..=60999);
        let p1 = a.allocate(key(80), 1_000_003, |_| true).unwrap();
        let p2 = a.allocate(key(443), 2_718_281, |_| true).unwrap();
        assert_ne!(p1.abs_diff(p2), 1);
    }

    /// Steady churn below saturation: each connection's port goes through
    /// TIME-WAIT and expires, the range is never exhausted and the destination
    /// never idle. The records stay bounded by the live entries.
    #[test]
    fn time_wait_records_are_bounded_by_live_entries() {
        let mut a = PortAllocator::new(1000..=1999);
        let mut live: std::collections::VecDeque<(u16, Instant)> = Default::default();
        // One long-lived connection keeps the destination in use.
        a.allocate(key(80), 7, |_| true).unwrap();
        for i in 0..100_000u64 {
            let now = Instant::from_micros(i * 1000);
            // Entries older than 100 ms expire (and release their ports).
            while live
                .front()
                .is_some_and(|&(_, e)| e.as_micros() + 100_000 <= now.as_micros())
            {
                let (p, _) = live.pop_front().unwrap();
                a.release(key(80), p);
            }
            let p = a.allocate(key(80), 7, |_| true).unwrap();
            let is_live = |p: u16, e: Instant| live.iter().any(|&x| x == (p, e));
            a.push_time_wait(key(80), p, now, is_live);
            live.push_back((p, now));
            // Every tenth entry is recycled early (a stale record behind a live front).
            if i % 10 == 0 {
                let (p, _) = live.remove(live.len() / 2).unwrap();
                a.release(key(80), p);
            }
        }
        let records = a.time_wait_records(key(80)).unwrap().len();
        assert!(
            records <= 2 * 110 + COMPACT_SLACK + 1,
            "{records} records for ~100 live entries"
        );
    }

    #[test]
    fn explicit_marks_and_release_drops_destination() {
        let mut a = PortAllocator::new(1000..=1009);
        assert!(a.mark(key(80), 1005, 0));
        assert!(!a.mark(key(80), 1005, 0));
        assert!(!a.mark(key(80), 999, 0));
        a.release(key(80), 1005);
        assert_eq!(a.used(&key(80)), 0);
    }
}
