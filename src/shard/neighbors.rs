//! Next-hop MACs of one shard: learned from received frames (the MAC a
//! peer's frames come from is where our replies go), and resolved through
//! the kernel for active opens to a host not heard from yet.

use std::net::Ipv4Addr;
use std::time::Duration;

use rustc_hash::FxHashMap;

use crate::app::NextHop;
use crate::iface::Iface;
use crate::neigh::NeighborResolver;

/// How long an active open may wait for the kernel to resolve a next hop.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Neighbors {
    macs: FxHashMap<Ipv4Addr, [u8; 6]>,
    iface: Iface,
    resolver: Option<NeighborResolver>,
}

impl Neighbors {
    pub fn new(iface: Iface) -> Self {
        Neighbors {
            macs: FxHashMap::default(),
            iface,
            resolver: None,
        }
    }

    #[inline]
    pub fn learn(&mut self, ip: Ipv4Addr, mac: [u8; 6]) {
        match self.macs.get(&ip) {
            Some(known) if *known == mac => {}
            _ => {
                self.macs.insert(ip, mac);
            }
        }
    }

    #[inline]
    pub fn get(&self, ip: Ipv4Addr) -> Option<[u8; 6]> {
        self.macs.get(&ip).copied()
    }
}

impl NextHop for Neighbors {
    fn ensure(&mut self, ip: Ipv4Addr) -> Result<(), String> {
        if self.macs.contains_key(&ip) {
            return Ok(());
        }
        if self.resolver.is_none() {
            self.resolver = Some(NeighborResolver::new(&self.iface).map_err(|e| e.to_string())?);
        }
        let resolver = self.resolver.as_mut().expect("just set");
        // Off the fast path: once per new destination of an active open.
        let mac = resolver
            .resolve(ip, RESOLVE_TIMEOUT)
            .map_err(|e| e.to_string())?;
        self.macs.insert(ip, mac);
        Ok(())
    }
}
