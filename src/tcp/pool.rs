//! The per-endpoint (so per-shard) chunk pool behind every connection's send
//! and receive buffers.
//!
//! A connection holds no storage until it has bytes to hold: its buffers are
//! chains of fixed-size chunks taken from here as data arrives or is queued,
//! and given back as soon as it is read or acknowledged. Idle connections
//! then cost only their control block, where a buffer pair handed out at SYN
//! time cost 128 KiB each.
//!
//! Hand-written rather than a crate: chains are linked through one `next`
//! array shared with the free list, so neither a chain nor the free list ever
//! allocates, and a chunk is a `u32` (a chain costs a few words in the
//! connection). The pool grows a slab at a time (the only allocation, never in
//! steady state) up to its budget; past it, `take` fails and the buffers
//! shrink the window they advertise (see `room`).

/// Bytes per chunk: one full-sized segment (MSS 1460) fits in one chunk.
pub const CHUNK: usize = 2048;
/// Chunks allocated together when the pool grows (128 KiB).
const SLAB_CHUNKS: usize = 64;
/// No chunk (end of a chain or of the free list).
pub(crate) const NIL: u32 = u32::MAX;

pub(crate) struct ChunkPool {
    slabs: Vec<Box<[u8]>>,
    /// Per chunk: the next chunk of its chain, or of the free list.
    next: Vec<u32>,
    free_head: u32,
    free_count: u32,
    /// Chunks the pool may hold in all (its memory budget).
    budget: u32,
    /// Times a buffer asked for a chunk and the budget was spent.
    pub(crate) exhausted: u64,
}

impl ChunkPool {
    /// A pool that may grow to `budget_bytes` (rounded up to whole slabs).
    pub(crate) fn new(budget_bytes: usize) -> Self {
        let chunks = budget_bytes.div_ceil(CHUNK).div_ceil(SLAB_CHUNKS) * SLAB_CHUNKS;
        ChunkPool {
            slabs: Vec::new(),
            next: Vec::new(),
            free_head: NIL,
            free_count: 0,
            budget: chunks.min(u32::MAX as usize - 1) as u32,
            exhausted: 0,
        }
    }

    /// Chunks allocated from the heap so far.
    pub(crate) fn allocated(&self) -> usize {
        self.next.len()
    }
    /// Chunks lent to buffers now.
    pub(crate) fn in_use(&self) -> usize {
        self.next.len() - self.free_count as usize
    }
    /// Bytes the buffers could still take from the pool (free chunks plus
    /// what the budget still allows to allocate).
    pub(crate) fn room(&self) -> usize {
        (self.budget as usize - self.in_use()) * CHUNK
    }

    /// A chunk, or `None` when the budget is spent (counted).
    pub(crate) fn take(&mut self) -> Option<u32> {
        if self.free_head == NIL && !self.grow() {
            self.exhausted += 1;
            return None;
        }
        let id = self.free_head;
        self.free_head = self.next[id as usize];
        self.next[id as usize] = NIL;
        self.free_count -= 1;
        Some(id)
    }

    fn grow(&mut self) -> bool {
        let have = self.next.len();
        if have + SLAB_CHUNKS > self.budget as usize {
            return false;
        }
        // Zeroed memory comes from fresh pages the kernel maps on first touch:
        // a slab costs RSS only as its chunks are written.
        self.slabs
            .push(vec![0u8; SLAB_CHUNKS * CHUNK].into_boxed_slice());
        self.next.reserve_exact(SLAB_CHUNKS);
        for i in 0..SLAB_CHUNKS {
            let id = (have + i) as u32;
            self.next
                .push(if i + 1 < SLAB_CHUNKS { id + 1 } else { NIL });
        }
        self.free_head = have as u32;
        self.free_count += SLAB_CHUNKS as u32;
        true
    }

    /// Give back one chunk.
    pub(crate) fn put(&mut self, id: u32) {
        self.next[id as usize] = self.free_head;
        self.free_head = id;
        self.free_count += 1;
    }

    pub(crate) fn next(&self, id: u32) -> u32 {
        self.next[id as usize]
    }
    pub(crate) fn link(&mut self, id: u32, next: u32) {
        self.next[id as usize] = next;
    }

    /// Copy `n` bytes from chunk `src` at `src_off` to chunk `dst` at
    /// `dst_off`, two different chunks (a chunk is in one chain only), in
    /// one pass: the relay's one copy between two connections' buffers.
    pub(crate) fn copy_between(
        &mut self,
        src: u32,
        src_off: usize,
        dst: u32,
        dst_off: usize,
        n: usize,
    ) {
        debug_assert_ne!(src, dst, "a chunk belongs to one chain");
        debug_assert!(src_off + n <= CHUNK && dst_off + n <= CHUNK);
        let (ss, so) = (src as usize / SLAB_CHUNKS, src as usize % SLAB_CHUNKS);
        let (ds, d) = (dst as usize / SLAB_CHUNKS, dst as usize % SLAB_CHUNKS);
        let from = so * CHUNK + src_off;
        let to = d * CHUNK + dst_off;
        if ss == ds {
            self.slabs[ss].copy_within(from..from + n, to);
        } else {
            let (a, b) = self.slabs.split_at_mut(ss.max(ds));
            let (src_slab, dst_slab) = if ss < ds {
                (&a[ss], &mut b[0])
            } else {
                (&b[0], &mut a[ds])
            };
            dst_slab[to..to + n].copy_from_slice(&src_slab[from..from + n]);
        }
    }

    pub(crate) fn chunk(&self, id: u32) -> &[u8] {
        let (s, o) = (id as usize / SLAB_CHUNKS, id as usize % SLAB_CHUNKS);
        &self.slabs[s][o * CHUNK..(o + 1) * CHUNK]
    }
    pub(crate) fn chunk_mut(&mut self, id: u32) -> &mut [u8] {
        let (s, o) = (id as usize / SLAB_CHUNKS, id as usize % SLAB_CHUNKS);
        &mut self.slabs[s][o * CHUNK..(o + 1) * CHUNK]
    }
}

/// A run of bytes stored in a chain of chunks: byte `p` of the run lives at
/// offset `start + p` of the chain. The chain covers whole chunks from `head`;
/// it is extended on write and shortened from the front on consume. A cursor
/// remembers the last chunk visited, so sequential access (new data sent at
/// SND.NXT, in-order data stored at RCV.NXT) does not walk the chain.
pub(crate) struct Chain {
    head: u32,
    tail: u32,
    /// Chunks in the chain.
    chunks: u32,
    /// Offset of byte 0 of the run inside the head chunk.
    start: u32,
    /// Chunks released from the front so far: chunk `k` of the chain is
    /// absolute chunk `dropped + k` (keeps the cursor valid across consumes).
    dropped: u64,
    cursor: std::cell::Cell<(u64, u32)>,
}

impl Chain {
    pub(crate) const fn new() -> Self {
        Chain {
            head: NIL,
            tail: NIL,
            chunks: 0,
            start: 0,
            dropped: 0,
            cursor: std::cell::Cell::new((0, NIL)),
        }
    }

    /// Bytes of storage the chain holds beyond byte `len` of its run.
    pub(crate) fn spare(&self, len: usize) -> usize {
        (self.chunks as usize * CHUNK).saturating_sub(self.start as usize + len)
    }
    #[cfg(test)]
    pub(crate) fn chunks(&self) -> usize {
        self.chunks as usize
    }

    /// Chunk `k` of the chain (which must exist), from the cursor when it is
    /// at or before `k`, else from the head.
    fn nth(&self, pool: &ChunkPool, k: u32) -> u32 {
        let want = self.dropped + u64::from(k);
        let (at, id) = self.cursor.get();
        let (mut at, mut id) = if id != NIL && at >= self.dropped && at <= want {
            (at, id)
        } else {
            (self.dropped, self.head)
        };
        if k + 1 == self.chunks {
            (at, id) = (want, self.tail);
        }
        while at < want {
            id = pool.next(id);
            at += 1;
        }
        self.cursor.set((at, id));
        id
    }

    /// Grow the chain so bytes `..end` of the run have storage; returns how
    /// many of them have it (less than `end` when the pool is exhausted).
    pub(crate) fn reserve(&mut self, pool: &mut ChunkPool, end: usize) -> usize {
        let need = (self.start as usize + end).div_ceil(CHUNK);
        while (self.chunks as usize) < need {
            let Some(id) = pool.take() else {
                break;
            };
            if self.tail == NIL {
                self.head = id;
            } else {
                pool.link(self.tail, id);
            }
            self.tail = id;
            self.chunks += 1;
        }
        end.min((self.chunks as usize * CHUNK).saturating_sub(self.start as usize))
    }

    /// Copy `data` to bytes `at..` of the run (storage must be reserved).
    pub(crate) fn write(&self, pool: &mut ChunkPool, at: usize, mut data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let pos = self.start as usize + at;
        let mut k = (pos / CHUNK) as u32;
        let mut off = pos % CHUNK;
        let mut id = self.nth(pool, k);
        loop {
            let n = data.len().min(CHUNK - off);
            pool.chunk_mut(id)[off..off + n].copy_from_slice(&data[..n]);
            data = &data[n..];
            if data.is_empty() {
                return;
            }
            id = pool.next(id);
            k += 1;
            off = 0;
            self.cursor.set((self.dropped + u64::from(k), id));
        }
    }

    /// Copy bytes `at..at + out.len()` of the run (which must be stored) into `out`.
    pub(crate) fn read(&self, pool: &ChunkPool, at: usize, out: &mut [u8]) {
        if out.is_empty() {
            return;
        }
        let pos = self.start as usize + at;
        let mut k = (pos / CHUNK) as u32;
        let mut off = pos % CHUNK;
        let mut id = self.nth(pool, k);
        let mut done = 0;
        loop {
            let n = (out.len() - done).min(CHUNK - off);
            out[done..done + n].copy_from_slice(&pool.chunk(id)[off..off + n]);
            done += n;
            if done == out.len() {
                return;
            }
            id = pool.next(id);
            k += 1;
            off = 0;
            self.cursor.set((self.dropped + u64::from(k), id));
        }
    }

    /// Copy bytes `at..at + n` of this run (stored) to bytes `dst_at..` of
    /// `dst`'s run (storage reserved), chunk to chunk: no intermediate buffer.
    pub(crate) fn copy_to(
        &self,
        pool: &mut ChunkPool,
        at: usize,
        dst: &Chain,
        dst_at: usize,
        mut n: usize,
    ) {
        if n == 0 {
            return;
        }
        let pos = self.start as usize + at;
        let (mut sk, mut soff) = ((pos / CHUNK) as u32, pos % CHUNK);
        let mut sid = self.nth(pool, sk);
        let pos = dst.start as usize + dst_at;
        let (mut dk, mut doff) = ((pos / CHUNK) as u32, pos % CHUNK);
        let mut did = dst.nth(pool, dk);
        loop {
            let m = n.min(CHUNK - soff).min(CHUNK - doff);
            pool.copy_between(sid, soff, did, doff, m);
            n -= m;
            if n == 0 {
                return;
            }
            soff += m;
            doff += m;
            if soff == CHUNK {
                sid = pool.next(sid);
                sk += 1;
                soff = 0;
                self.cursor.set((self.dropped + u64::from(sk), sid));
            }
            if doff == CHUNK {
                did = pool.next(did);
                dk += 1;
                doff = 0;
                dst.cursor.set((dst.dropped + u64::from(dk), did));
            }
        }
    }

    /// Drop the first `n` bytes of the run, returning chunks left empty.
    pub(crate) fn consume(&mut self, pool: &mut ChunkPool, n: usize) {
        let mut start = self.start as usize + n;
        while start >= CHUNK && self.chunks > 0 {
            let id = self.head;
            self.head = pool.next(id);
            pool.put(id);
            self.chunks -= 1;
            self.dropped += 1;
            start -= CHUNK;
        }
        if self.chunks == 0 {
            self.head = NIL;
            self.tail = NIL;
            start = 0;
        }
        self.start = start as u32;
    }

    /// Give every chunk back (the run is empty or abandoned).
    pub(crate) fn clear(&mut self, pool: &mut ChunkPool) {
        let mut id = self.head;
        while id != NIL {
            let next = pool.next(id);
            pool.put(id);
            id = next;
        }
        self.dropped += u64::from(self.chunks);
        self.head = NIL;
        self.tail = NIL;
        self.chunks = 0;
        self.start = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_grows_reads_and_returns_chunks() {
        let mut pool = ChunkPool::new(1 << 20);
        let mut c = Chain::new();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(c.reserve(&mut pool, data.len()), data.len());
        c.write(&mut pool, 0, &data);
        assert_eq!(c.chunks(), 10_000usize.div_ceil(CHUNK));
        let mut out = vec![0u8; 3000];
        c.read(&pool, 5000, &mut out);
        assert_eq!(&out[..], &data[5000..8000]);
        c.consume(&mut pool, 4100);
        assert_eq!(c.chunks(), 10_000usize.div_ceil(CHUNK) - 2);
        c.read(&pool, 0, &mut out[..100]);
        assert_eq!(&out[..100], &data[4100..4200]);
        c.clear(&mut pool);
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn copy_to_moves_bytes_between_chains_at_any_alignment() {
        let mut pool = ChunkPool::new(4 << 20);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        // Chunks of both chains interleave across slabs.
        for (skip, dst_pre, n) in [(0, 0, 5000), (7, 1999, 70_000), (2047, 1, 150_000)] {
            let mut a = Chain::new();
            let mut b = Chain::new();
            assert_eq!(a.reserve(&mut pool, data.len()), data.len());
            a.write(&mut pool, 0, &data);
            a.consume(&mut pool, skip);
            assert_eq!(b.reserve(&mut pool, dst_pre), dst_pre);
            b.write(&mut pool, 0, &data[..dst_pre]);
            assert_eq!(b.reserve(&mut pool, dst_pre + n), dst_pre + n);
            a.copy_to(&mut pool, 3, &b, dst_pre, n);
            let mut out = vec![0u8; dst_pre + n];
            b.read(&pool, 0, &mut out);
            assert_eq!(&out[..dst_pre], &data[..dst_pre]);
            assert_eq!(
                &out[dst_pre..],
                &data[skip + 3..skip + 3 + n],
                "skip {skip}"
            );
            a.clear(&mut pool);
            b.clear(&mut pool);
        }
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn budget_bounds_the_pool() {
        let mut pool = ChunkPool::new(SLAB_CHUNKS * CHUNK);
        let mut c = Chain::new();
        let got = c.reserve(&mut pool, 10 * SLAB_CHUNKS * CHUNK);
        assert_eq!(got, SLAB_CHUNKS * CHUNK);
        assert_eq!(pool.room(), 0);
        assert!(pool.exhausted > 0);
        c.clear(&mut pool);
        assert_eq!(pool.room(), SLAB_CHUNKS * CHUNK);
        assert_eq!(pool.allocated(), SLAB_CHUNKS);
    }
}
