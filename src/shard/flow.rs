//! Which shard owns a flow.
//!
//! A passive flow belongs to `hash(4-tuple) % shards`; an active flow belongs
//! to the shard whose slice of the active-open port range holds its local
//! port, so replies find the connection that sent the SYN.

use std::ops::RangeInclusive;

#[derive(Clone, Debug)]
pub struct FlowMap {
    shards: usize,
    active: RangeInclusive<u16>,
}

impl FlowMap {
    pub fn new(shards: usize, active: RangeInclusive<u16>) -> Self {
        FlowMap {
            shards: shards.max(1),
            active,
        }
    }

    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The slice of the active port range that shard `shard` allocates from.
    pub fn port_slice(&self, shard: usize) -> RangeInclusive<u16> {
        let start = *self.active.start() as usize;
        let len = self.active.clone().count();
        let per = len / self.shards;
        let lo = start + per * shard;
        let hi = if shard + 1 == self.shards {
            *self.active.end() as usize
        } else {
            lo + per - 1
        };
        lo as u16..=hi as u16
    }

    /// The owner of a segment arriving for `local_port` from `remote`.
    #[inline]
    pub fn owner(&self, local_port: u16, remote_ip: u32, remote_port: u16) -> usize {
        if self.shards == 1 {
            return 0;
        }
        if self.active.contains(&local_port) {
            let len = self.active.clone().count();
            let per = len / self.shards;
            let idx = (local_port - *self.active.start()) as usize / per.max(1);
            return idx.min(self.shards - 1);
        }
        // A multiplicative mix: cheap, and every shard computes the same.
        let key =
            (u64::from(remote_ip) << 32) | (u64::from(remote_port) << 16) | u64::from(local_port);
        let h = key.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((h >> 32) as usize) % self.shards
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_slices_partition_the_range_and_match_owner() {
        let map = FlowMap::new(3, 40000..=40999);
        let mut covered = 0;
        for s in 0..3 {
            let slice = map.port_slice(s);
            for p in slice.clone() {
                assert_eq!(map.owner(p, 0x0a000001, 80), s, "port {p}");
            }
            covered += slice.count();
        }
        assert_eq!(covered, 1000);
    }

    #[test]
    fn passive_flows_spread_and_are_stable() {
        let map = FlowMap::new(2, 61000..=65535);
        let mut counts = [0; 2];
        for port in 1024..3024u16 {
            let o = map.owner(80, 0xc6120002, port);
            assert_eq!(o, map.owner(80, 0xc6120002, port));
            counts[o] += 1;
        }
        assert!(counts[0] > 800 && counts[1] > 800, "{counts:?}");
        assert_eq!(FlowMap::new(1, 1..=2).owner(80, 1, 2), 0);
    }
}
