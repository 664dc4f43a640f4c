//! The bounded send buffer: bytes from SND.UNA (or ISS+1) up to what the application queued.

use super::pool::{Chain, ChunkPool};

/// Queued bytes in a chain of pool chunks. Sent-but-unacknowledged bytes stay
/// until acknowledged, so retransmissions read them again by offset; chunks
/// return to the pool as soon as every byte in them is acknowledged, and a
/// connection with nothing queued holds none.
pub(crate) struct SendBuffer {
    chain: Chain,
    len: usize,
    /// Most bytes this connection may queue (its share of the budget).
    cap: usize,
}

impl SendBuffer {
    pub(crate) fn new(cap: usize) -> Self {
        SendBuffer {
            chain: Chain::new(),
            len: 0,
            cap,
        }
    }

    /// Give every chunk back (the connection is gone).
    pub(crate) fn release(&mut self, pool: &mut ChunkPool) {
        self.chain.clear(pool);
        self.len = 0;
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
    /// Bytes `push` would take now: the connection's bound, and what the pool
    /// can still lend (`room` as of the endpoint's last look).
    pub(crate) fn free(&self) -> usize {
        self.cap.saturating_sub(self.len)
    }
    /// Bytes `push` would take now, given the pool.
    pub(crate) fn free_in(&self, pool: &ChunkPool) -> usize {
        self.free().min(self.chain.spare(self.len) + pool.room())
    }
    /// Let the buffer grow to `cap` bytes (it never shrinks below what it has).
    pub(crate) fn grow_to(&mut self, cap: usize) {
        self.cap = self.cap.max(cap);
    }
    /// Chunks held now.
    #[cfg(test)]
    pub(crate) fn chunks(&self) -> usize {
        self.chain.chunks()
    }

    /// Append what fits of `data`; returns the number of bytes taken.
    pub(crate) fn push(&mut self, data: &[u8], pool: &mut ChunkPool) -> usize {
        let want = data.len().min(self.free());
        if want == 0 {
            return 0;
        }
        let n = self.chain.reserve(pool, self.len + want) - self.len;
        self.chain.write(pool, self.len, &data[..n]);
        self.len += n;
        n
    }

    /// Storage for up to `n` more bytes (within the bound and what the pool
    /// lends); returns how many have it. [`SendBuffer::fill_from`] then
    /// writes them and [`SendBuffer::commit`] queues them: three steps so
    /// the source can be another connection's buffer borrowed at the same
    /// time (`Endpoint::relay`).
    pub(crate) fn reserve(&mut self, n: usize, pool: &mut ChunkPool) -> usize {
        let want = n.min(self.free());
        if want == 0 {
            return 0;
        }
        self.chain.reserve(pool, self.len + want) - self.len
    }

    /// Copy the first `n` bytes of `src`'s run into the reserved storage,
    /// chunk to chunk.
    pub(crate) fn fill_from(&self, src: &Chain, n: usize, pool: &mut ChunkPool) {
        src.copy_to(pool, 0, &self.chain, self.len, n);
    }

    /// Queue `n` bytes written by `fill_from`.
    pub(crate) fn commit(&mut self, n: usize) {
        self.len += n;
    }

    /// Copy bytes starting `offset` bytes after the head into `out`; returns the count.
    pub(crate) fn copy_out(&self, offset: usize, out: &mut [u8], pool: &ChunkPool) -> usize {
        if offset >= self.len {
            return 0;
        }
        let n = out.len().min(self.len - offset);
        self.chain.read(pool, offset, &mut out[..n]);
        n
    }

    /// Drop `n` bytes from the head (they were acknowledged).
    pub(crate) fn consume(&mut self, n: usize, pool: &mut ChunkPool) {
        let n = n.min(self.len);
        if n == 0 {
            return;
        }
        self.len -= n;
        if self.len == 0 {
            self.chain.clear(pool);
        } else {
            self.chain.consume(pool, n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::pool::CHUNK;
    use proptest::prelude::*;

    #[test]
    fn wraps_around() {
        let mut p = ChunkPool::new(1 << 20);
        let mut b = SendBuffer::new(8);
        assert_eq!(b.push(b"abcdef", &mut p), 6);
        b.consume(4, &mut p);
        assert_eq!(b.push(b"ghijklmn", &mut p), 6);
        assert_eq!(b.len(), 8);
        let mut out = [0u8; 8];
        assert_eq!(b.copy_out(0, &mut out, &p), 8);
        assert_eq!(&out, b"efghijkl");
        assert_eq!(b.copy_out(5, &mut out[..2], &p), 2);
        assert_eq!(&out[..2], b"jk");
        assert_eq!(b.copy_out(8, &mut out, &p), 0);
        b.consume(8, &mut p);
        assert_eq!(
            (b.chunks(), p.in_use()),
            (0, 0),
            "an empty buffer holds no chunk"
        );
    }

    #[test]
    fn pool_budget_limits_push() {
        let mut p = ChunkPool::new(64 * CHUNK);
        let mut b = SendBuffer::new(1 << 20);
        let data = vec![7u8; 1 << 20];
        assert_eq!(b.push(&data, &mut p), 64 * CHUNK);
        assert_eq!(b.free_in(&p), 0);
        b.consume(CHUNK, &mut p);
        assert_eq!(b.free_in(&p), CHUNK);
    }

    #[test]
    fn fill_from_another_chain() {
        let mut p = ChunkPool::new(1 << 20);
        let mut src = Chain::new();
        let data: Vec<u8> = (0..9000u32).map(|i| (i % 249) as u8).collect();
        src.reserve(&mut p, data.len());
        src.write(&mut p, 0, &data);
        let mut b = SendBuffer::new(6000);
        assert_eq!(b.push(b"head", &mut p), 4);
        let n = b.reserve(data.len(), &mut p);
        assert_eq!(n, 5996, "bounded by the buffer's cap");
        b.fill_from(&src, n, &mut p);
        b.commit(n);
        let mut out = vec![0u8; 6000];
        assert_eq!(b.copy_out(0, &mut out, &p), 6000);
        assert_eq!(&out[..4], b"head");
        assert_eq!(&out[4..], &data[..5996]);
        assert_eq!(b.reserve(1, &mut p), 0);
    }

    proptest! {
        #[test]
        fn behaves_like_a_queue(ops in proptest::collection::vec((0usize..10_000, 0usize..10_000), 1..50)) {
            let mut p = ChunkPool::new(1 << 20);
            let mut b = SendBuffer::new(12_000);
            let mut model: std::collections::VecDeque<u8> = Default::default();
            let mut next = 0u8;
            for (push, pop) in ops {
                let data: Vec<u8> = (0..push).map(|_| { next = next.wrapping_add(1); next }).collect();
                let n = b.push(&data, &mut p);
                prop_assert_eq!(n, push.min(12_000 - model.len()));
                model.extend(&data[..n]);
                next = next.wrapping_sub((push - n) as u8);
                let mut out = vec![0u8; model.len()];
                prop_assert_eq!(b.copy_out(0, &mut out, &p), model.len());
                prop_assert!(out.iter().eq(model.iter()));
                if model.len() > 100 {
                    let mut mid = vec![0u8; 50];
                    prop_assert_eq!(b.copy_out(model.len() / 2, &mut mid, &p), 50);
                    prop_assert!(mid.iter().eq(model.iter().skip(model.len() / 2).take(50)));
                }
                b.consume(pop, &mut p);
                for _ in 0..pop.min(model.len()) { model.pop_front(); }
                prop_assert_eq!(b.len(), model.len());
                prop_assert_eq!(p.in_use(), b.chunks());
                prop_assert!(b.chunks() <= model.len().div_ceil(CHUNK) + 1);
            }
        }
    }
}
