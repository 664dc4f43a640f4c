//! The bounded receive buffer: in-order bytes waiting for the application, and
//! out-of-order segments held until the hole before them is filled (RFC 9293 3.10.7.4,
//! "seventh, process the segment text").

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

/// A ring holding `readable` in-order bytes from `head`, followed by a region where
/// out-of-order bytes are placed at their offsets; `ooo` lists which parts of it
/// are valid, as sorted, disjoint, non-adjacent `[start, end)` offsets from `head`.
pub(crate) struct RecvBuffer {
    buf: Box<[u8]>,
    head: usize,
    readable: usize,
    ooo: [(u32, u32); MAX_OOO],
    ooo_len: u8,
    /// Test builds: which ring bytes hold data not yet read (checks the interval logic).
    #[cfg(test)]
    written: Vec<bool>,
}

impl RecvBuffer {
    pub(crate) fn new(storage: Box<[u8]>) -> Self {
        assert!(storage.len() < u32::MAX as usize);
        #[cfg(test)]
        let storage_len = storage.len();
        RecvBuffer {
            buf: storage,
            head: 0,
            readable: 0,
            ooo: [(0, 0); MAX_OOO],
            ooo_len: 0,
            #[cfg(test)]
            written: vec![false; storage_len],
        }
    }

    pub(crate) fn into_storage(self) -> Box<[u8]> {
        self.buf
    }

    pub(crate) fn capacity(&self) -> usize {
        self.buf.len()
    }
    /// In-order bytes the application can read.
    pub(crate) fn readable(&self) -> usize {
        self.readable
    }
    /// Space from RCV.NXT to the end of the buffer: the most we can advertise.
    pub(crate) fn window(&self) -> usize {
        self.buf.len() - self.readable
    }
    pub(crate) fn has_out_of_order(&self) -> bool {
        self.ooo_len > 0
    }

    #[cfg(test)]
    fn ooo(&self) -> &[(u32, u32)] {
        &self.ooo[..self.ooo_len as usize]
    }

    fn copy_in(&mut self, at: usize, data: &[u8]) {
        let cap = self.buf.len();
        let start = (self.head + at) % cap;
        let first = data.len().min(cap - start);
        self.buf[start..start + first].copy_from_slice(&data[..first]);
        self.buf[..data.len() - first].copy_from_slice(&data[first..]);
        #[cfg(test)]
        for i in 0..data.len() {
            self.written[(start + i) % cap] = true;
        }
    }

    /// Store `data`, which starts `offset` bytes after RCV.NXT. Bytes beyond the
    /// buffer are trimmed; an out-of-order piece that needs a new interval when
    /// all `MAX_OOO` are taken is dropped.
    pub(crate) fn insert(&mut self, offset: usize, data: &[u8]) -> Inserted {
        let cap = self.buf.len();
        let start = self.readable.saturating_add(offset);
        let end = start.saturating_add(data.len()).min(cap);
        if start >= end {
            return Inserted {
                advanced: 0,
                complete: data.is_empty(),
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
            self.copy_in(start, &data[..end - start]);
            return Inserted {
                advanced: 0,
                complete,
            };
        }
        self.copy_in(start, &data[..end - start]);
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
    pub(crate) fn read(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.readable);
        if n == 0 {
            return 0;
        }
        let cap = self.buf.len();
        let first = n.min(cap - self.head);
        out[..first].copy_from_slice(&self.buf[self.head..self.head + first]);
        out[first..n].copy_from_slice(&self.buf[..n - first]);
        self.discard(n);
        n
    }

    /// Consume `n` in-order bytes without copying them.
    pub(crate) fn discard(&mut self, n: usize) {
        let n = n.min(self.readable);
        #[cfg(test)]
        for i in 0..n {
            let k = (self.head + i) % self.buf.len();
            assert!(self.written[k], "reading a ring byte never written");
            self.written[k] = false;
        }
        self.head = (self.head + n) % self.buf.len();
        self.readable -= n;
        let shift = n as u32;
        let len = self.ooo_len as usize;
        for iv in &mut self.ooo[..len] {
            iv.0 -= shift;
            iv.1 -= shift;
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
        RecvBuffer::new(vec![0; cap].into_boxed_slice())
    }

    #[test]
    fn in_order_and_holes() {
        let mut b = buf(16);
        assert_eq!(b.insert(0, b"abc").advanced, 3);
        assert_eq!(b.insert(3, b"ghi").advanced, 0); // hole at 3..6 after rcv_nxt
        assert_eq!(b.intervals(), vec![(6, 9)]);
        assert_eq!(b.insert(0, b"def").advanced, 6);
        assert!(!b.has_out_of_order());
        let mut out = [0u8; 16];
        assert_eq!(b.read(&mut out), 9);
        assert_eq!(&out[..9], b"abcdefghi");
    }

    #[test]
    fn trims_at_capacity() {
        let mut b = buf(4);
        let r = b.insert(0, b"abcdef");
        assert_eq!(
            r,
            Inserted {
                advanced: 4,
                complete: false
            }
        );
        assert_eq!(b.window(), 0);
        assert_eq!(b.insert(0, b"x").advanced, 0);
    }

    #[test]
    fn interval_limit_drops() {
        let mut b = buf(64);
        for i in 0..MAX_OOO {
            assert!(b.insert(2 + 3 * i, b"x").complete);
        }
        assert!(!b.insert(60, b"y").complete);
        assert_eq!(b.intervals().len(), MAX_OOO);
        // Merging into an existing interval still works.
        assert!(b.insert(3, b"z").complete);
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
                let r = b.insert(s - rcv_nxt, &stream[s..end]);
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
                let n = b.read(&mut out);
                prop_assert_eq!(n, want.min(rcv_nxt - delivered.len()));
                delivered.extend_from_slice(&out[..n]);
                prop_assert_eq!(b.readable(), rcv_nxt - delivered.len());
            }
            prop_assert_eq!(&delivered[..], &stream[..delivered.len()]);
        }
    }
}
