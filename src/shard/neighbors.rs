//! Next-hop MACs of one shard, never waited for on the shard's thread.
//!
//! Three sources, in order of trust:
//! - `kernel`: destinations of our active opens (backends), resolved by the
//!   kernel's route and neighbour tables through the resolver thread
//!   (src/resolver.rs). Frames never change these: a forged frame carrying a
//!   backend's address cannot redirect its traffic. Entries are re-validated
//!   every `REACHABLE` (like the kernel's REACHABLE -> STALE), a failed
//!   resolution is remembered with a doubling backoff (a negative cache), and
//!   connects to an address being resolved wait in a bounded pending list
//!   with their SYN held until the answer comes.
//! - `learned`: peers of flows the engine holds in a synchronized state: the
//!   MAC their frames came from is where replies go. Learned after the engine
//!   took the segment, so a SYN (which anyone can forge from any address)
//!   never creates an entry; bounded.
//! - `recent`: the last source MAC seen per address, in a fixed direct-mapped
//!   table, for the replies to segments not verified yet (a SYN+ACK, a RST).
//!   A flood from random addresses overwrites slots; it cannot grow anything.

use std::net::Ipv4Addr;
use std::time::Duration;

use rustc_hash::FxHashMap;

use crate::app::{NextHop, Readiness};
use crate::resolver::{Answer, ResolverLink};
use crate::tcp::{ConnId, Instant};

/// How long a connect may wait for its next hop before failing
/// `unreachable`. The kernel's first ARP request goes out at once and an
/// on-link host answers within milliseconds; one second covers a slow one.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(1);
/// Our deadline is a little later than the resolver's, so its answer
/// (with its reason) normally arrives first.
const SHARD_SLACK: Duration = Duration::from_millis(250);
/// A resolved MAC is used this long before it is re-validated (the kernel's
/// base_reachable_time); it is still used while the re-validation runs.
pub const REACHABLE: Duration = Duration::from_secs(30);
/// Negative cache: the first failure is remembered this long, each further
/// failure twice as long, up to `BACKOFF_MAX`. Bounded so a host that comes
/// back is tried again within seconds.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(4);
/// Destinations of active opens held at most (backends: few).
pub const MAX_KERNEL: usize = 4096;
/// Connects waiting for a next hop at most, per shard.
pub const MAX_PENDING: usize = 1024;
/// Frames held for a next hop being resolved (SYNs) at most, per shard.
const MAX_HELD: usize = 1024;
/// A held frame's room: a SYN with every option is 78 bytes.
const HELD_BYTES: usize = 128;
/// Peers learned from verified flows at most, per shard (about 32 bytes
/// each with the map's overhead: 8 MB at most).
pub const MAX_LEARNED: usize = 262_144;
/// Learned peers not heard from this long are forgotten when the table is
/// more than half full (swept every `SWEEP_EVERY`).
const LEARNED_IDLE: Duration = Duration::from_secs(600);
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Slots of the direct-mapped `recent` table (a power of two): 12 bytes each,
/// 768 KB per shard; large enough that a flood rarely overwrites a
/// legitimate client's slot between its SYN and our SYN+ACK (one pass).
const RECENT_SLOTS: usize = 1 << 16;

/// Where a frame to an address goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    Mac([u8; 6]),
    /// Being resolved: hold the frame.
    Hold,
    /// Unknown, or known unreachable: drop (counted by the caller).
    Unknown,
}

#[derive(Clone, Copy, Debug)]
enum Entry {
    Resolving {
        deadline: Instant,
        failures: u32,
    },
    Valid {
        mac: [u8; 6],
        confirmed: Instant,
        /// A re-validation is in flight since then.
        asked: Option<Instant>,
    },
    Failed {
        until: Instant,
        failures: u32,
    },
}

#[derive(Clone, Copy, Debug)]
struct Learned {
    mac: [u8; 6],
    seen: Instant,
}

#[derive(Clone, Copy, Default)]
struct Recent {
    ip: u32,
    mac: [u8; 6],
}

struct Pending {
    id: ConnId,
    ip: Ipv4Addr,
}

struct Held {
    ip: Ipv4Addr,
    len: usize,
    bytes: [u8; HELD_BYTES],
}

/// Counters, published with the shard's metrics.
#[derive(Default, Debug, Clone, Copy)]
pub struct NeighborStats {
    pub resolved: u64,
    pub resolve_failed: u64,
    /// Connects that failed for want of a next hop (at once from the
    /// negative cache, or after waiting).
    pub connect_unreachable: u64,
    /// Peers not learned because `learned` was full.
    pub learn_full: u64,
    /// Frames dropped because the held list was full (or too big to hold).
    pub held_dropped: u64,
    /// Peers whose MAC moved (on a verified flow, or in the kernel's table).
    pub moved: u64,
}

pub struct Neighbors {
    kernel: FxHashMap<Ipv4Addr, Entry>,
    learned: FxHashMap<Ipv4Addr, Learned>,
    recent: Box<[Recent]>,
    pending: Vec<Pending>,
    held: Vec<Held>,
    /// Connects that just failed `unreachable`, for the shard to report.
    failed: Vec<ConnId>,
    /// A resolution completed: held frames may go.
    released: bool,
    next_sweep: Instant,
    link: ResolverLink,
    pub stats: NeighborStats,
}

fn backoff(failures: u32) -> Duration {
    BACKOFF_BASE
        .saturating_mul(1 << failures.saturating_sub(1).min(8))
        .min(BACKOFF_MAX)
}

impl Neighbors {
    pub fn new(link: ResolverLink) -> Self {
        Neighbors {
            kernel: FxHashMap::default(),
            learned: FxHashMap::default(),
            recent: vec![Recent::default(); RECENT_SLOTS].into_boxed_slice(),
            pending: Vec::with_capacity(MAX_PENDING),
            held: Vec::with_capacity(MAX_HELD),
            failed: Vec::with_capacity(MAX_PENDING),
            released: false,
            next_sweep: Instant::ZERO,
            link,
            stats: NeighborStats::default(),
        }
    }

    #[inline]
    fn slot(ip: Ipv4Addr) -> usize {
        // Fibonacci hashing: consecutive addresses spread over the table.
        (u32::from(ip).wrapping_mul(0x9E37_79B9) >> 16) as usize & (RECENT_SLOTS - 1)
    }

    /// Every received frame, before the engine: where a reply to it goes if
    /// nothing better is known. Overwrites, never grows.
    #[inline]
    pub fn note(&mut self, ip: Ipv4Addr, mac: [u8; 6]) {
        let r = &mut self.recent[Self::slot(ip)];
        r.ip = u32::from(ip);
        r.mac = mac;
    }

    /// After the engine took a segment from `ip`: `verified` says whether it
    /// belongs to a flow the engine holds synchronized (asked only when the
    /// answer would change something, so the common case is one lookup).
    #[inline]
    pub fn confirm(
        &mut self,
        ip: Ipv4Addr,
        mac: [u8; 6],
        now: Instant,
        verified: impl FnOnce() -> bool,
    ) {
        if let Some(l) = self.learned.get_mut(&ip)
            && l.mac == mac
        {
            l.seen = now;
            return;
        }
        // Our own destinations take their MAC from the kernel only.
        if self.kernel.contains_key(&ip) || !verified() {
            return;
        }
        let full = self.learned.len() >= MAX_LEARNED;
        match self.learned.get_mut(&ip) {
            Some(l) => {
                self.stats.moved += 1;
                *l = Learned { mac, seen: now };
            }
            None if !full => {
                self.learned.insert(ip, Learned { mac, seen: now });
            }
            None => self.stats.learn_full += 1,
        }
    }

    /// Where a frame to `ip` goes.
    #[inline]
    pub fn hop(&self, ip: Ipv4Addr) -> Hop {
        match self.kernel.get(&ip) {
            Some(Entry::Valid { mac, .. }) => return Hop::Mac(*mac),
            Some(Entry::Resolving { .. }) => return Hop::Hold,
            Some(Entry::Failed { .. }) => return Hop::Unknown,
            None => {}
        }
        if let Some(l) = self.learned.get(&ip) {
            return Hop::Mac(l.mac);
        }
        let r = &self.recent[Self::slot(ip)];
        if r.ip == u32::from(ip) && r.ip != 0 {
            Hop::Mac(r.mac)
        } else {
            Hop::Unknown
        }
    }

    /// The MAC for `ip`, if a frame could go now (tests, diagnostics).
    pub fn get(&self, ip: Ipv4Addr) -> Option<[u8; 6]> {
        match self.hop(ip) {
            Hop::Mac(m) => Some(m),
            _ => None,
        }
    }

    /// Keeps a frame to `ip` (being resolved) until its MAC is known;
    /// returns false when it was dropped instead (counted).
    pub fn hold(&mut self, ip: Ipv4Addr, frame: &[u8]) -> bool {
        if self.held.len() >= MAX_HELD || frame.len() > HELD_BYTES {
            self.stats.held_dropped += 1;
            return false;
        }
        let mut bytes = [0u8; HELD_BYTES];
        bytes[..frame.len()].copy_from_slice(frame);
        self.held.push(Held {
            ip,
            len: frame.len(),
            bytes,
        });
        true
    }

    /// Hands held frames whose next hop is now known to `send` (the frame
    /// with its destination MAC patched); `send` returns false when it
    /// could not take one (no UMEM frame), which stays held.
    pub fn release(&mut self, mut send: impl FnMut(&[u8]) -> bool) -> usize {
        if !self.released {
            return 0;
        }
        self.released = false;
        let mut sent = 0;
        let mut i = 0;
        while i < self.held.len() {
            let ip = self.held[i].ip;
            match self.kernel.get(&ip) {
                Some(Entry::Valid { mac, .. }) => {
                    let h = &mut self.held[i];
                    h.bytes[..6].copy_from_slice(mac);
                    if !send(&h.bytes[..h.len]) {
                        self.released = true;
                        return sent;
                    }
                    sent += 1;
                    self.held.swap_remove(i);
                }
                Some(Entry::Resolving { .. }) => i += 1,
                _ => {
                    self.held.swap_remove(i);
                }
            }
        }
        sent
    }

    /// Once a pass: the resolver's answers, deadlines, re-validations and
    /// the learned table's sweep. Connects that failed are then in
    /// [`Neighbors::take_failed`].
    pub fn poll(&mut self, now: Instant) {
        while let Some(answer) = self.link.answer() {
            match answer {
                Answer::Resolved { ip, mac } => self.resolved(ip, mac, now),
                Answer::Failed { ip, why } => self.resolution_failed(ip, now, &why),
            }
        }
        if now >= self.next_sweep {
            self.next_sweep = now.saturating_add(Duration::from_millis(100));
            self.revalidate(now);
            let expired: Vec<Ipv4Addr> = self
                .kernel
                .iter()
                .filter(|(_, e)| matches!(e, Entry::Resolving { deadline, .. } if now >= *deadline))
                .map(|(ip, _)| *ip)
                .collect();
            for ip in expired {
                self.resolution_failed(ip, now, "no answer from the resolver in time");
            }
            if self.learned.len() > MAX_LEARNED / 2 {
                let idle = LEARNED_IDLE;
                self.learned
                    .retain(|_, l| now.saturating_duration_since(l.seen) < idle);
                self.next_sweep = now.saturating_add(SWEEP_EVERY);
            }
        }
    }

    /// Valid entries older than `REACHABLE` are asked for again; they stay
    /// in use meanwhile (the kernel's STALE), and a lost answer is asked
    /// for again after `RESOLVE_TIMEOUT`.
    fn revalidate(&mut self, now: Instant) {
        let link = &self.link;
        for (ip, e) in self.kernel.iter_mut() {
            if let Entry::Valid {
                confirmed, asked, ..
            } = e
            {
                let old = now.saturating_duration_since(*confirmed) >= REACHABLE;
                let waiting = asked.is_some_and(|t| {
                    now.saturating_duration_since(t) < RESOLVE_TIMEOUT + SHARD_SLACK
                });
                if old && !waiting && link.ask(*ip, RESOLVE_TIMEOUT) {
                    *asked = Some(now);
                }
            }
        }
    }

    fn resolved(&mut self, ip: Ipv4Addr, mac: [u8; 6], now: Instant) {
        self.stats.resolved += 1;
        if let Some(Entry::Valid { mac: old, .. }) = self.kernel.get(&ip)
            && *old != mac
        {
            self.stats.moved += 1;
            tracing::info!(%ip, "next hop moved to a new MAC (kernel neighbour table)");
        }
        self.kernel.insert(
            ip,
            Entry::Valid {
                mac,
                confirmed: now,
                asked: None,
            },
        );
        self.pending.retain(|p| p.ip != ip);
        self.released = true;
    }

    fn resolution_failed(&mut self, ip: Ipv4Addr, now: Instant, why: &str) {
        let failures = match self.kernel.get(&ip) {
            Some(Entry::Resolving { failures, .. }) => failures + 1,
            Some(Entry::Valid { .. }) => 1,
            // Already failed (a late answer), or forgotten.
            _ => return,
        };
        self.stats.resolve_failed += 1;
        let wait = backoff(failures);
        tracing::warn!(%ip, failures, retry_in_ms = wait.as_millis() as u64, why, "next hop unreachable");
        self.kernel.insert(
            ip,
            Entry::Failed {
                until: now.saturating_add(wait),
                failures,
            },
        );
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].ip == ip {
                let p = self.pending.swap_remove(i);
                self.stats.connect_unreachable += 1;
                self.failed.push(p.id);
            } else {
                i += 1;
            }
        }
        self.held.retain(|h| h.ip != ip);
    }

    /// Connects that failed `unreachable` since the last call: the shard
    /// aborts them and tells the app.
    pub fn take_failed(&mut self, out: &mut Vec<ConnId>) {
        out.append(&mut self.failed);
    }

    pub fn kernel_len(&self) -> usize {
        self.kernel.len()
    }
    pub fn learned_len(&self) -> usize {
        self.learned.len()
    }
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

impl NextHop for Neighbors {
    fn prepare(&mut self, ip: Ipv4Addr, now: Instant) -> Readiness {
        let failures = match self.kernel.get(&ip) {
            Some(Entry::Valid { .. }) => return Readiness::Ready,
            Some(Entry::Resolving { .. }) => return Readiness::Pending,
            Some(Entry::Failed { until, failures }) => {
                if now < *until {
                    self.stats.connect_unreachable += 1;
                    return Readiness::Unreachable(format!(
                        "its MAC address could not be resolved lately; next try in {} ms \
                         (check `ip neigh show {ip}`)",
                        until.saturating_duration_since(now).as_millis()
                    ));
                }
                *failures
            }
            None => {
                if self.kernel.len() >= MAX_KERNEL {
                    self.kernel
                        .retain(|_, e| !matches!(e, Entry::Failed { until, .. } if *until <= now));
                }
                if self.kernel.len() >= MAX_KERNEL {
                    self.stats.connect_unreachable += 1;
                    return Readiness::Unreachable(format!(
                        "the shard's table of {MAX_KERNEL} active-open destinations is full"
                    ));
                }
                0
            }
        };
        if !self.link.ask(ip, RESOLVE_TIMEOUT) {
            self.stats.connect_unreachable += 1;
            return Readiness::Unreachable("the resolver's request queue is full".into());
        }
        self.kernel.insert(
            ip,
            Entry::Resolving {
                deadline: now.saturating_add(RESOLVE_TIMEOUT + SHARD_SLACK),
                failures,
            },
        );
        Readiness::Pending
    }

    fn wait_for(&mut self, id: ConnId, ip: Ipv4Addr) -> bool {
        if self.pending.len() >= MAX_PENDING {
            self.stats.connect_unreachable += 1;
            return false;
        }
        self.pending.push(Pending { id, ip });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
    const C: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 20);
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
    const FOREIGN: [u8; 6] = [2, 0, 0, 0, 0, 0xf];

    fn at(ms: u64) -> Instant {
        Instant::from_micros(ms * 1000)
    }

    fn id(n: u32) -> ConnId {
        ConnId {
            index: n,
            generation: 0,
        }
    }

    #[test]
    fn a_connect_waits_then_its_frames_go_when_the_mac_arrives() {
        let link = ResolverLink::detached(0);
        let mut n = Neighbors::new(link.clone());
        assert_eq!(n.prepare(B, at(0)), Readiness::Pending);
        assert!(n.wait_for(id(1), B));
        assert_eq!(link.take_request().map(|r| r.ip), Some(B));
        assert_eq!(n.hop(B), Hop::Hold);
        assert!(n.hold(B, &[0u8; 74]));
        // A second connect while resolving asks nothing more.
        assert_eq!(n.prepare(B, at(1)), Readiness::Pending);
        assert!(link.take_request().is_none());
        link.inject(Answer::Resolved { ip: B, mac: MAC_B });
        n.poll(at(2));
        assert_eq!(n.hop(B), Hop::Mac(MAC_B));
        let mut out = Vec::new();
        assert_eq!(
            n.release(|f| {
                out.push(f.to_vec());
                true
            }),
            1
        );
        assert_eq!(&out[0][..6], &MAC_B);
        assert_eq!(n.pending_len(), 0);
    }

    #[test]
    fn an_unanswered_destination_fails_its_connects_and_is_cached_with_backoff() {
        let link = ResolverLink::detached(0);
        let mut n = Neighbors::new(link.clone());
        assert_eq!(n.prepare(B, at(0)), Readiness::Pending);
        n.wait_for(id(1), B);
        n.hold(B, &[0u8; 74]);
        link.inject(Answer::Failed {
            ip: B,
            why: "no ARP reply".into(),
        });
        n.poll(at(1000));
        let mut failed = Vec::new();
        n.take_failed(&mut failed);
        assert_eq!(failed, vec![id(1)]);
        assert_eq!(n.stats.connect_unreachable, 1);
        assert_eq!(n.hop(B), Hop::Unknown);
        // Within the backoff: fails at once, no request.
        while link.take_request().is_some() {}
        assert!(matches!(n.prepare(B, at(1100)), Readiness::Unreachable(_)));
        assert!(link.take_request().is_none());
        // After it: asked again; a second failure doubles the backoff.
        assert_eq!(n.prepare(B, at(1600)), Readiness::Pending);
        n.poll(at(1600 + 1300)); // shard-side deadline passes
        assert!(matches!(
            n.prepare(B, at(2900 + 900)),
            Readiness::Unreachable(_)
        ));
        assert_eq!(n.prepare(B, at(2900 + 1001)), Readiness::Pending);
    }

    #[test]
    fn frames_never_override_a_kernel_entry_and_syns_learn_nothing() {
        let link = ResolverLink::detached(0);
        let mut n = Neighbors::new(link.clone());
        n.prepare(B, at(0));
        link.inject(Answer::Resolved { ip: B, mac: MAC_B });
        n.poll(at(1));
        // A forged frame from B's address with another MAC, even on a flow
        // the engine holds: B's traffic still goes to B.
        n.note(B, FOREIGN);
        n.confirm(B, FOREIGN, at(2), || true);
        assert_eq!(n.hop(B), Hop::Mac(MAC_B));
        // An unverified frame (a SYN) only fills the recent slot.
        n.note(C, FOREIGN);
        n.confirm(C, FOREIGN, at(2), || false);
        assert_eq!(n.learned_len(), 0);
        assert_eq!(n.hop(C), Hop::Mac(FOREIGN));
        // A verified one is learned.
        n.confirm(C, MAC_B, at(3), || true);
        assert_eq!(n.learned_len(), 1);
        assert_eq!(n.hop(C), Hop::Mac(MAC_B));
    }

    #[test]
    fn a_flood_of_addresses_leaves_the_tables_bounded() {
        let mut n = Neighbors::new(ResolverLink::detached(0));
        for i in 0..200_000u32 {
            let ip = Ipv4Addr::from(0xC612_0000u32 + i);
            n.note(ip, FOREIGN);
            n.confirm(ip, FOREIGN, at(1), || false);
        }
        assert_eq!(n.learned_len(), 0);
        assert_eq!(n.kernel_len(), 0);
        assert_eq!(n.recent.len(), RECENT_SLOTS);
    }

    #[test]
    fn an_old_entry_is_revalidated_and_follows_a_moved_mac() {
        let link = ResolverLink::detached(0);
        let mut n = Neighbors::new(link.clone());
        n.prepare(B, at(0));
        link.take_request();
        link.inject(Answer::Resolved { ip: B, mac: MAC_B });
        n.poll(at(1));
        n.poll(at(31_000));
        assert_eq!(link.take_request().map(|r| r.ip), Some(B));
        // Still used while re-validating.
        assert_eq!(n.hop(B), Hop::Mac(MAC_B));
        link.inject(Answer::Resolved {
            ip: B,
            mac: FOREIGN,
        });
        n.poll(at(31_010));
        assert_eq!(n.hop(B), Hop::Mac(FOREIGN));
        assert_eq!(n.stats.moved, 1);
    }
}
