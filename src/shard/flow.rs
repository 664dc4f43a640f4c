//! Which shard owns a flow.
//!
//! Without RSS knowledge (veth, or a NIC that does not report its key): a
//! passive flow belongs to `hash(4-tuple) % shards`; an active flow belongs
//! to the shard whose slice of the active-open port range holds its local
//! port, so replies find the connection that sent the SYN. Frames that
//! arrive elsewhere are handed off.
//!
//! With the NIC's RSS key and indirection table: a passive flow belongs to
//! the queue it arrives on (RSS delivers every packet of a flow to one
//! queue), and every shard chooses active-open ports, from the whole range,
//! whose reply tuple hashes to its own queue ([`rss_port_filter`]); the
//! owner of a reply is computed with the same hash, so a NIC that hashes as
//! told needs no handoff, and one that does not shows up in the handoff
//! counter instead of breaking connections.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::sync::Arc;

use crate::rss::RssSteering;
use crate::tcp::PortFilter;

#[derive(Clone, Debug)]
pub struct FlowMap {
    shards: usize,
    active: RangeInclusive<u16>,
    rss: Option<Arc<RssSteering>>,
}

/// Accepts the local ports of an active open whose reply (remote -> local)
/// the NIC delivers to `queue`.
pub fn rss_port_filter(rss: Arc<RssSteering>, queue: u32) -> PortFilter {
    PortFilter(Arc::new(move |local, remote, port| {
        rss.queue(*remote.ip(), local, remote.port(), port) == queue
    }))
}

impl FlowMap {
    pub fn new(shards: usize, active: RangeInclusive<u16>) -> Self {
        FlowMap {
            shards: shards.max(1),
            active,
            rss: None,
        }
    }

    /// Ownership that follows the NIC's RSS (see the module comment).
    pub fn with_rss(shards: usize, active: RangeInclusive<u16>, rss: Arc<RssSteering>) -> Self {
        FlowMap {
            rss: Some(rss),
            ..Self::new(shards, active)
        }
    }

    /// The port filter of shard `shard`'s engine (None without RSS).
    pub fn port_filter(&self, shard: usize) -> Option<PortFilter> {
        let rss = self.rss.clone()?;
        Some(rss_port_filter(rss, shard as u32))
    }

    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The slice of the active port range that shard `shard` allocates from.
    /// With RSS every shard draws from the whole range (its port filter
    /// keeps the shards apart).
    pub fn port_slice(&self, shard: usize) -> RangeInclusive<u16> {
        if self.rss.is_some() {
            return self.active.clone();
        }
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

    /// The owner of a segment that arrived on queue `arrival` for
    /// `local_ip:local_port` from `remote`.
    #[inline]
    pub fn owner(
        &self,
        arrival: usize,
        local_ip: Ipv4Addr,
        local_port: u16,
        remote_ip: Ipv4Addr,
        remote_port: u16,
    ) -> usize {
        if self.shards == 1 {
            return 0;
        }
        if let Some(rss) = &self.rss {
            if self.active.contains(&local_port) {
                let q = rss.queue(remote_ip, local_ip, remote_port, local_port);
                return q as usize % self.shards;
            }
            return arrival;
        }
        let remote_ip = u32::from(remote_ip);
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
    use crate::rss::{MICROSOFT_KEY, RssConfig};
    use crate::tcp::{Config, Endpoint, Instant};
    use std::net::SocketAddrV4;

    const L: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

    fn ip(v: u32) -> Ipv4Addr {
        Ipv4Addr::from(v)
    }

    #[test]
    fn port_slices_partition_the_range_and_match_owner() {
        let map = FlowMap::new(3, 40000..=40999);
        let mut covered = 0;
        for s in 0..3 {
            let slice = map.port_slice(s);
            for p in slice.clone() {
                assert_eq!(map.owner(0, L, p, ip(0x0a000001), 80), s, "port {p}");
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
            let o = map.owner(0, L, 80, ip(0xc6120002), port);
            assert_eq!(o, map.owner(1, L, 80, ip(0xc6120002), port));
            counts[o] += 1;
        }
        assert!(counts[0] > 800 && counts[1] > 800, "{counts:?}");
        assert_eq!(FlowMap::new(1, 1..=2).owner(0, L, 80, ip(1), 2), 0);
    }

    fn steering(table: Vec<u32>) -> Arc<RssSteering> {
        let cfg = RssConfig {
            key: MICROSOFT_KEY.to_vec(),
            table,
            source: "test",
        };
        Arc::new(RssSteering::new(&cfg).unwrap())
    }

    /// The acceptance property: for a key and indirection table, every
    /// port each shard's engine chooses for a destination has its reply
    /// hashed to that shard's queue, the shards never share a port, and
    /// together they use the whole range.
    #[test]
    fn every_chosen_port_replies_to_the_openers_queue() {
        let table: Vec<u32> = (0..128).map(|i| i % 3).collect();
        let rss = steering(table);
        let range = 40000..=40999u16;
        let map = FlowMap::with_rss(3, range.clone(), rss.clone());
        let local = Ipv4Addr::new(198, 18, 0, 1);
        let mut all = std::collections::HashSet::new();
        for (remote, rport) in [
            (Ipv4Addr::new(198, 18, 0, 2), 8081),
            (Ipv4Addr::new(198, 19, 7, 9), 443),
        ] {
            let dest = SocketAddrV4::new(remote, rport);
            all.clear();
            for shard in 0..3 {
                let cfg = Config {
                    port_range: map.port_slice(shard),
                    port_filter: map.port_filter(shard),
                    ..Config::default()
                };
                let mut ep = Endpoint::new(cfg, [7; 16]);
                let mut n = 0;
                while let Ok(id) = ep.connect(local, dest, Instant::ZERO) {
                    let port = ep.tuple(id).expect("open").local.port();
                    assert!(range.contains(&port));
                    assert_eq!(
                        rss.queue(remote, local, rport, port),
                        shard as u32,
                        "port {port}"
                    );
                    assert_eq!(map.owner(2 - shard, local, port, remote, rport), shard);
                    assert!(all.insert(port), "port {port} chosen twice");
                    n += 1;
                }
                assert!(n > 250, "shard {shard} got {n} of 1000 ports");
            }
            assert_eq!(all.len(), 1000, "together the shards use every port");
        }
    }

    #[test]
    fn with_rss_passive_flows_stay_on_their_arrival_queue() {
        let map = FlowMap::with_rss(2, 61000..=65535, steering(vec![0, 1]));
        for port in 1024..1100u16 {
            assert_eq!(map.owner(1, L, 80, ip(0xc6120002), port), 1);
            assert_eq!(map.owner(0, L, 80, ip(0xc6120002), port), 0);
        }
        assert_eq!(map.port_slice(1), 61000..=65535);
    }
}
