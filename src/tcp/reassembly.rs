//! The bounded receive buffer: in-order bytes waiting for the application, and
//! out-of-order segments held until the hole before them is filled (RFC 9293 3.10.7.4,
//! "seventh, process the segment text").

use super::pool::{Chain, ChunkPool};
use super::time::Instant;
use std::time::Duration;

/// Out-of-order intervals kept per connection. A fixed array: no allocation per
/// segment; a segment that would need a further interval is dropped (and counted).
pub(crate) const MAX_OOO: usize = 8;

/// Result of storing a segment's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(crate) struct Inserted {
    /// Bytes by which the in-order part grew (RCV.NXT advances by this much).
    pub(crate) advanced: usize,
    /// Every byte of the segment was stored or already present (nothing trimmed or dropped).
    pub(crate) complete: bool,
}

/// `readable` in-order bytes, followed by a region where out-of-order bytes are
/// placed at their offsets; `ooo` lists which parts of it are valid, as sorted,
/// disjoint, non-adjacent `[start, end)` offsets from the first readable byte.
/// The bytes live in a chain of pool chunks that grows as data arrives and
/// shrinks as the application reads: with nothing held, no chunk is held.
pub(crate) struct RecvBuffer {
    chain: Chain,
    readable: usize,
    ooo: [(u32, u32); MAX_OOO],
    ooo_len: u8,
    /// Most bytes held (bounds the advertised window); grown by `autotune`.
    cap: usize,
    /// What the pool could still lend, as of the last call that saw it.
    pool_room: usize,
    /// Bytes the application consumed, in all (wrapping: only differences
    /// over one RTT are used).
    consumed: u32,
    /// Dynamic right-sizing: `consumed` and the time at the start of the
    /// current measurement, and what the last whole one measured.
    tune_mark: u32,
    tune_space: u32,
    tune_at: Instant,
}

/// The window is sized for 2 RTTs of what the application consumed in one, plus
/// this many segments of slack (Linux tcp_rcv_space_adjust: `2 * copied + 16 * advmss`).
const TUNE_SLACK_SEGMENTS: usize = 16;
/// The first measurement compares with this many segments (Linux: the
/// initial congestion window, TCP_INIT_CWND).
const TUNE_INITIAL_SEGMENTS: usize = 10;

impl RecvBuffer {
    pub(crate) fn new(cap: usize) -> Self {
        assert!(cap < u32::MAX as usize);
        RecvBuffer {
            chain: Chain::new(),
            readable: 0,
            ooo: [(0, 0); MAX_OOO],
            ooo_len: 0,
            cap,
            pool_room: usize::MAX,
            consumed: 0,
            tune_mark: 0,
            tune_at: Instant::ZERO,
            tune_space: 0,
        }
    }

    /// Receive-buffer autotuning, dynamic right-sizing as Linux does it
    /// (tcp_rcv_space_adjust): once per `rtt`, take the bytes the application
    /// consumed in it; if more than in the previous one, grow the bound to
    /// twice that plus slack (and, while it keeps growing, by the growth rate
    /// again, as a sender in slow start doubles per RTT), up to `max`. The
    /// bound never shrinks; the pool budget (`window`) still caps what is
    /// advertised. Returns whether the bound grew.
    pub(crate) fn autotune(&mut self, now: Instant, rtt: Duration, mss: usize, max: usize) -> bool {
        if self.tune_space == 0 {
            self.tune_space = (TUNE_INITIAL_SEGMENTS * mss).min(self.cap).max(1) as u32;
            self.tune_at = now;
            self.tune_mark = self.consumed;
            return false;
        }
        if now.saturating_duration_since(self.tune_at) < rtt {
            return false;
        }
        let copied = self.consumed.wrapping_sub(self.tune_mark) as usize;
        let space = self.tune_space as usize;
        self.tune_at = now;
        self.tune_mark = self.consumed;
        if copied <= space {
            return false;
        }
        let mut window = 2 * copied + TUNE_SLACK_SEGMENTS * mss;
        // Linux: rcvwin += 2 * rcvwin * (copied - space) / space.
        let grow = window.saturating_mul(copied - space) / space;
        window = window.saturating_add(2 * grow);
        self.tune_space = copied as u32;
        let target = window.min(max).min(u32::MAX as usize / 2);
        if target > self.cap {
            self.cap = target;
            return true;
        }
        false
    }

    /// Give every chunk back (the connection is gone).
    pub(crate) fn release(&mut self, pool: &mut ChunkPool) {
        self.chain.clear(pool);
        self.readable = 0;
        self.ooo_len = 0;
    }

    pub(crate) fn capacity(&self) -> usize {
        self.cap
    }
    /// Chunks held now.
    #[cfg(test)]
    pub(crate) fn chunks(&self) -> usize {
        self.chain.chunks()
    }
    /// The storage: in-order bytes are `0..readable()` of its run.
    pub(crate) fn chain(&self) -> &Chain {
        &self.chain
    }
    /// In-order bytes the application can read.
    pub(crate) fn readable(&self) -> usize {
        self.readable
    }
    /// Space from RCV.NXT that we could store: the most we can advertise. The
    /// bound, less what the pool cannot lend: when the shard's budget runs
    /// out, windows shrink instead of memory growing.
    pub(crate) fn window(&self) -> usize {
        let bound = self.cap.saturating_sub(self.readable);
        bound.min(
            self.chain
                .spare(self.readable)
                .saturating_add(self.pool_room),
        )
    }
    /// Tell the buffer how much the pool could still lend.
    pub(crate) fn note_pool(&mut self, pool: &ChunkPool) {
        self.pool_room = pool.room();
    }
    pub(crate) fn has_out_of_order(&self) -> bool {
        self.ooo_len > 0
    }

    /// The out-of-order ranges held, as `[start, end)` offsets from RCV.NXT,
    /// lowest first (what SACK blocks report, RFC 2018).
    pub(crate) fn out_of_order(&self) -> impl DoubleEndedIterator<Item = (u32, u32)> + '_ {
        let base = self.readable as u32;
        self.ooo[..self.ooo_len as usize]
            .iter()
            .map(move |&(s, e)| (s - base, e - base))
    }

    #[cfg(test)]
    fn ooo(&self) -> &[(u32, u32)] {
        &self.ooo[..self.ooo_len as usize]
    }

    /// Store `data`, which starts `offset` bytes after RCV.NXT. Bytes beyond the
    /// bound (or beyond what the pool can lend) are trimmed; an out-of-order
    /// piece that needs a new interval when all `MAX_OOO` are taken is dropped.
    pub(crate) fn insert(&mut self, offset: usize, data: &[u8], pool: &mut ChunkPool) -> Inserted {
        let start = self.readable.saturating_add(offset);
        let mut end = start.saturating_add(data.len()).min(self.cap);
        if start >= end {
            return Inserted {
                advanced: 0,
                complete: data.is_empty(),
            };
        }
        if offset > 0 && self.ooo_len as usize == MAX_OOO {
            // Cheap early check; the exact one (merging) follows.
            let n = self.ooo_len as usize;
            let (s, e) = (start as u32, end as u32);
            if !self.ooo[..n].iter().any(|&(is, ie)| ie >= s && is <= e) {
                return Inserted {
                    advanced: 0,
                    complete: false,
                };
            }
        }
        end = self.chain.reserve(pool, end).max(self.readable).min(end);
        self.pool_room = pool.room();
        if start >= end {
            self.shrink_if_empty(pool);
            return Inserted {
                advanced: 0,
                complete: false,
            };
        }
        let complete = end - start == data.len();
        let (s, e) = (start as u32, end as u32);
        if offset > 0 {
            // Out of order: merge into the interval list.
            let n = self.ooo_len as usize;
            let first = self.ooo[..n]
                .iter()
                .position(|&(_, ie)| ie >= s)
                .unwrap_or(n);
            let mut last = first;
            while last < n && self.ooo[last].0 <= e {
                last += 1;
            }
            if first == last {
                // No overlap or adjacency: a new interval at `first`.
                if n == MAX_OOO {
                    return Inserted {
                        advanced: 0,
                        complete: false,
                    };
                }
                self.ooo.copy_within(first..n, first + 1);
                self.ooo[first] = (s, e);
                self.ooo_len += 1;
            } else {
                let ns = s.min(self.ooo[first].0);
                let ne = e.max(self.ooo[last - 1].1);
                self.ooo[first] = (ns, ne);
                self.ooo.copy_within(last..n, first + 1);
                self.ooo_len -= (last - first - 1) as u8;
            }
            self.chain.write(pool, start, &data[..end - start]);
            return Inserted {
                advanced: 0,
                complete,
            };
        }
        self.chain.write(pool, start, &data[..end - start]);
        let before = self.readable;
        self.readable = end;
        // Absorb held intervals that now touch the in-order part.
        let n = self.ooo_len as usize;
        let mut k = 0;
        while k < n && self.ooo[k].0 as usize <= self.readable {
            self.readable = self.readable.max(self.ooo[k].1 as usize);
            k += 1;
        }
        if k > 0 {
            self.ooo.copy_within(k..n, 0);
            self.ooo_len -= k as u8;
        }
        Inserted {
            advanced: self.readable - before,
            complete,
        }
    }

    /// Copy in-order bytes into `out`, consuming them.
    pub(crate) fn read(&mut self, out: &mut [u8], pool: &mut ChunkPool) -> usize {
        let n = out.len().min(self.readable);
        if n == 0 {
            return 0;
        }
        self.chain.read(pool, 0, &mut out[..n]);
        self.discard(n, pool);
        n
    }

    /// Consume `n` in-order bytes without copying them; chunks left empty go
    /// back to the pool.
    pub(crate) fn discard(&mut self, n: usize, pool: &mut ChunkPool) {
        let n = n.min(self.readable);
        self.readable -= n;
        self.consumed = self.consumed.wrapping_add(n as u32);
        let shift = n as u32;
        let len = self.ooo_len as usize;
        for iv in &mut self.ooo[..len] {
            iv.0 -= shift;
            iv.1 -= shift;
        }
        if self.readable == 0 && self.ooo_len == 0 {
            self.chain.clear(pool);
        } else {
            self.chain.consume(pool, n);
        }
        self.pool_room = pool.room();
    }

    /// Storage reserved for bytes that did not arrive: give it back when
    /// nothing is held.
    fn shrink_if_empty(&mut self, pool: &mut ChunkPool) {
        if self.readable == 0 && self.ooo_len == 0 {
            self.chain.clear(pool);
        }
    }

    #[cfg(test)]
    pub(crate) fn intervals(&self) -> Vec<(u32, u32)> {
        self.ooo().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn buf(cap: usize) -> RecvBuffer {
        RecvBuffer::new(cap)
    }

    #[test]
    fn in_order_and_holes() {
        let mut p = ChunkPool::new(1 << 20);
        let mut b = buf(16);
        assert_eq!(b.insert(0, b"abc", &mut p).advanced, 3);
        assert_eq!(b.insert(3, b"ghi", &mut p).advanced, 0); // hole at 3..6 after rcv_nxt
        assert_eq!(b.intervals(), vec![(6, 9)]);
        assert_eq!(b.insert(0, b"def", &mut p).advanced, 6);
        assert!(!b.has_out_of_order());
        let mut out = [0u8; 16];
        assert_eq!(b.read(&mut out, &mut p), 9);
        assert_eq!(&out[..9], b"abcdefghi");
        assert_eq!(
            (b.chunks(), p.in_use()),
            (0, 0),
            "nothing held, no chunk held"
        );
    }

    #[test]
    fn trims_at_capacity() {
        let mut p = ChunkPool::new(1 << 20);
        let mut b = buf(4);
        let r = b.insert(0, b"abcdef", &mut p);
        assert_eq!(
            r,
            Inserted {
                advanced: 4,
                complete: false
            }
        );
        assert_eq!(b.window(), 0);
        assert_eq!(b.insert(0, b"x", &mut p).advanced, 0);
    }

    #[test]
    fn interval_limit_drops() {
        let mut p = ChunkPool::new(1 << 20);
        let mut b = buf(64);
        for i in 0..MAX_OOO {
            assert!(b.insert(2 + 3 * i, b"x", &mut p).complete);
        }
        assert!(!b.insert(60, b"y", &mut p).complete);
        assert_eq!(b.intervals().len(), MAX_OOO);
        // Merging into an existing interval still works.
        assert!(b.insert(3, b"z", &mut p).complete);
    }

    proptest! {
        /// Any set of segments of one stream, inserted in any order (with duplicates),
        /// reads back as exactly the stream prefix that was covered contiguously.
        #[test]
        fn reassembles_any_order(
            cap in 8usize..200,
            segs in proptest::collection::vec((0usize..300, 1usize..40), 1..60),
            reads in proptest::collection::vec(0usize..50, 1..60),
        ) {
            let stream: Vec<u8> = (0..400u32).map(|i| (i * 7 + i / 251) as u8).collect();
            let mut p = ChunkPool::new(1 << 20);
        let mut b = buf(cap);
            let mut rcv_nxt = 0usize; // stream offset of RCV.NXT
            let mut delivered: Vec<u8> = Vec::new();
            let mut have = vec![false; 400]; // model: stored and not yet consumed
            for (i, &(start, len)) in segs.iter().enumerate() {
                let end = (start + len).min(400);
                if end <= rcv_nxt { continue; }
                let s = start.max(rcv_nxt);
                // Model of the buffer: bytes past the ring's end are trimmed; an
                // out-of-order piece touching no held run, when MAX_OOO runs are
                // held, is dropped.
                let stored_end = end.min(delivered.len() + cap);
                let runs = (rcv_nxt..400).filter(|&k| have[k] && (k == rcv_nxt || !have[k - 1])).count();
                let touching = (s.saturating_sub(1)..=stored_end.min(399)).any(|k| k >= rcv_nxt && have[k]);
                let dropped = s > rcv_nxt && stored_end > s && !touching && runs == MAX_OOO;
                let r = b.insert(s - rcv_nxt, &stream[s..end], &mut p);
                if !dropped && s < stored_end {
                    have[s..stored_end].fill(true);
                }
                let mut nxt = rcv_nxt;
                while nxt < 400 && have[nxt] { nxt += 1; }
                prop_assert_eq!(r.advanced, nxt - rcv_nxt);
                prop_assert_eq!(r.complete, !dropped && stored_end == end);
                rcv_nxt = nxt;
                prop_assert_eq!(b.intervals().len(), (rcv_nxt..400).filter(|&k| have[k] && !have[k - 1]).count());
                let want = reads[i % reads.len()];
                let mut out = vec![0u8; want];
                let n = b.read(&mut out, &mut p);
                prop_assert_eq!(n, want.min(rcv_nxt - delivered.len()));
                delivered.extend_from_slice(&out[..n]);
                prop_assert_eq!(b.readable(), rcv_nxt - delivered.len());
            }
            prop_assert_eq!(&delivered[..], &stream[..delivered.len()]);
            prop_assert_eq!(p.in_use(), b.chunks());
            if b.readable() == 0 && !b.has_out_of_order() {
                prop_assert_eq!(b.chunks(), 0);
            }
        }
    }
}
