//! The bounded send buffer: bytes from SND.UNA (or ISS+1) up to what the application queued.

/// A ring of bytes. Sent-but-unacknowledged bytes stay until acknowledged, so
/// retransmissions read them again by offset.
pub(crate) struct SendBuffer {
    buf: Box<[u8]>,
    head: usize,
    len: usize,
}

impl SendBuffer {
    pub(crate) fn new(storage: Box<[u8]>) -> Self {
        SendBuffer {
            buf: storage,
            head: 0,
            len: 0,
        }
    }

    /// Give the storage back (for the endpoint's buffer pool).
    pub(crate) fn into_storage(self) -> Box<[u8]> {
        self.buf
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
    pub(crate) fn free(&self) -> usize {
        self.buf.len() - self.len
    }

    /// Append what fits of `data`; returns the number of bytes taken.
    pub(crate) fn push(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.free());
        let cap = self.buf.len();
        if n == 0 {
            return 0;
        }
        let tail = (self.head + self.len) % cap;
        let first = n.min(cap - tail);
        self.buf[tail..tail + first].copy_from_slice(&data[..first]);
        self.buf[..n - first].copy_from_slice(&data[first..n]);
        self.len += n;
        n
    }

    /// Copy bytes starting `offset` bytes after the head into `out`; returns the count.
    pub(crate) fn copy_out(&self, offset: usize, out: &mut [u8]) -> usize {
        if offset >= self.len {
            return 0;
        }
        let n = out.len().min(self.len - offset);
        let cap = self.buf.len();
        let start = (self.head + offset) % cap;
        let first = n.min(cap - start);
        out[..first].copy_from_slice(&self.buf[start..start + first]);
        out[first..n].copy_from_slice(&self.buf[..n - first]);
        n
    }

    /// Drop `n` bytes from the head (they were acknowledged).
    pub(crate) fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        if n == 0 {
            return;
        }
        self.head = (self.head + n) % self.buf.len();
        self.len -= n;
        if self.len == 0 {
            self.head = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wraps_around() {
        let mut b = SendBuffer::new(vec![0; 8].into_boxed_slice());
        assert_eq!(b.push(b"abcdef"), 6);
        b.consume(4);
        assert_eq!(b.push(b"ghijklmn"), 6);
        assert_eq!(b.len(), 8);
        let mut out = [0u8; 8];
        assert_eq!(b.copy_out(0, &mut out), 8);
        assert_eq!(&out, b"efghijkl");
        assert_eq!(b.copy_out(5, &mut out[..2]), 2);
        assert_eq!(&out[..2], b"jk");
        assert_eq!(b.copy_out(8, &mut out), 0);
    }

    proptest! {
        #[test]
        fn behaves_like_a_queue(ops in proptest::collection::vec((0usize..40, 0usize..40), 1..50)) {
            let mut b = SendBuffer::new(vec![0; 32].into_boxed_slice());
            let mut model: std::collections::VecDeque<u8> = Default::default();
            let mut next = 0u8;
            for (push, pop) in ops {
                let data: Vec<u8> = (0..push).map(|_| { next = next.wrapping_add(1); next }).collect();
                let n = b.push(&data);
                prop_assert_eq!(n, push.min(32 - model.len()));
                model.extend(&data[..n]);
                next = next.wrapping_sub((push - n) as u8);
                let mut out = vec![0u8; model.len()];
                prop_assert_eq!(b.copy_out(0, &mut out), model.len());
                prop_assert!(out.iter().eq(model.iter()));
                b.consume(pop);
                for _ in 0..pop.min(model.len()) { model.pop_front(); }
                prop_assert_eq!(b.len(), model.len());
            }
        }
    }
}
