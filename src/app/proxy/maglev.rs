//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016, section 3.4).
//!
//! Each backend has a permutation of the table's slots, `offset + j * skip
//! (mod M)` with `offset` and `skip` from two hashes of its name and `M`
//! prime. Population: backends take turns, each claiming the next slot of
//! its permutation that is still free, until the table is full (paper,
//! pseudocode 1). A client's address hashes to a slot; the slot names its
//! backend.
//!
//! The paper rebuilds the table from scratch on every change, which is
//! nearly minimally disruptive. We start from the paper's table and then
//! change it incrementally ([`Maglev::rebuild`]): slots of a removed backend
//! are refilled by the remaining ones, still in permutation order, and a new
//! backend claims its preferred slots from backends above their fair share.
//! So removing a backend moves exactly that backend's clients, adding one
//! moves clients only to it, and every backend keeps its share within one
//! slot (of its weighted share). The cost: after changes the table depends on their history, not
//! only on the current set (two sidecars that lived through different
//! changes may disagree; a restart gives the paper's table again).
//!
//! Weights (the paper, section 3.4: "backends with higher weights ... have
//! more chances to fill entries"; Linux IPVS `ip_vs_mh.c` does it with
//! turns): in each round of the population a backend of weight `w` claims
//! up to `w / gcd(weights)` slots in a row, and its share of the table is
//! `M * w / sum(w)` (within one slot). All weights 1 is the unweighted
//! table.

use std::hash::Hasher;
use std::net::{Ipv4Addr, SocketAddrV4};

use siphasher::sip::SipHasher13;

/// The paper's suggested size: prime, and much larger than the number of
/// backends (it bounds the imbalance to about n/M).
pub const TABLE_SIZE: usize = 65537;

const NONE: u16 = u16::MAX;

// Fixed keys: every sidecar computes the same permutations and the same
// client slots (consistency across restarts and replicas).
const KEY_OFFSET: (u64, u64) = (0x7475_726e_7374_696c, 0x6d61_676c_6576_2d6f);
const KEY_SKIP: (u64, u64) = (0x6d61_676c_6576_2d73, 0x6b69_702d_7475_726e);
const KEY_CLIENT: (u64, u64) = (0x636c_6965_6e74_2d6b, 0x6579_2d74_7572_6e73);

fn sip(key: (u64, u64), bytes: &[u8]) -> u64 {
    let mut h = SipHasher13::new_with_keys(key.0, key.1);
    h.write(bytes);
    h.finish()
}

fn name_bytes(addr: SocketAddrV4) -> [u8; 6] {
    let mut b = [0u8; 6];
    b[..4].copy_from_slice(&addr.ip().octets());
    b[4..].copy_from_slice(&addr.port().to_be_bytes());
    b
}

/// The hash of a client address that selects its slot.
pub fn client_key(ip: Ipv4Addr) -> u64 {
    sip(KEY_CLIENT, &ip.octets())
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A lookup table from client hashes to backends.
#[derive(Clone, Debug)]
pub struct Maglev {
    backends: Vec<SocketAddrV4>,
    /// Per backend, at least 1.
    weights: Vec<u32>,
    /// Per slot, an index into `backends`.
    entries: Vec<u16>,
}

/// A backend's permutation of the slots.
#[derive(Clone, Copy)]
struct Permutation {
    offset: usize,
    skip: usize,
    next: usize,
}

impl Permutation {
    fn of(addr: SocketAddrV4, m: usize) -> Self {
        let name = name_bytes(addr);
        Permutation {
            offset: (sip(KEY_OFFSET, &name) % m as u64) as usize,
            skip: (sip(KEY_SKIP, &name) % (m as u64 - 1)) as usize + 1,
            next: 0,
        }
    }

    /// The next slot in this backend's order of preference.
    fn advance(&mut self, m: usize) -> usize {
        // offset, skip < m and next < m: no overflow in u64 for m < 2^32.
        let slot = ((self.offset as u64 + self.next as u64 * self.skip as u64) % m as u64) as usize;
        self.next += 1;
        slot
    }
}

impl Maglev {
    /// The paper's table for `backends` (in this order), size [`TABLE_SIZE`].
    pub fn new(backends: &[SocketAddrV4]) -> Self {
        Self::with_size(backends, TABLE_SIZE)
    }

    /// The paper's table with `m` slots; `m` must be prime (so every skip
    /// walks every slot) and at least the number of backends.
    pub fn with_size(backends: &[SocketAddrV4], m: usize) -> Self {
        Self::weighted(backends, &vec![1; backends.len()], m)
    }

    /// The paper's weighted table: `weights[i]` (at least 1; 0 is read as
    /// 1, leave a drained backend out instead) for `backends[i]`.
    pub fn weighted(backends: &[SocketAddrV4], weights: &[u32], m: usize) -> Self {
        assert_eq!(backends.len(), weights.len(), "one weight per backend");
        assert!(
            (2..=u32::MAX as usize).contains(&m),
            "table size {m} out of range"
        );
        assert!(
            backends.len() <= m && backends.len() < NONE as usize,
            "too many backends"
        );
        let mut table = Maglev {
            backends: backends.to_vec(),
            weights: weights.iter().map(|&w| w.max(1)).collect(),
            entries: vec![NONE; m],
        };
        table.populate();
        table
    }

    /// A table for `backends` that keeps every slot of a backend still
    /// present unless a new backend needs it to reach its share.
    pub fn rebuild(&self, backends: &[SocketAddrV4]) -> Self {
        self.rebuild_weighted(backends, &vec![1; backends.len()])
    }

    /// [`Maglev::rebuild`] with weights (as in [`Maglev::weighted`]).
    pub fn rebuild_weighted(&self, backends: &[SocketAddrV4], weights: &[u32]) -> Self {
        assert_eq!(backends.len(), weights.len(), "one weight per backend");
        assert!(backends.len() < NONE as usize, "too many backends");
        let m = self.entries.len();
        let map: Vec<u16> = self
            .backends
            .iter()
            .map(|old| {
                backends
                    .iter()
                    .position(|b| b == old)
                    .map_or(NONE, |i| i as u16)
            })
            .collect();
        let entries = self
            .entries
            .iter()
            .map(|&e| if e == NONE { NONE } else { map[e as usize] })
            .collect();
        let mut table = Maglev {
            backends: backends.to_vec(),
            weights: weights.iter().map(|&w| w.max(1)).collect(),
            entries,
        };
        if backends.is_empty() {
            table.entries = vec![NONE; m];
        } else {
            table.populate();
        }
        table
    }

    /// Fills free slots (and slots of backends above their share) by turns
    /// in permutation order. From an empty table this is the paper's
    /// population.
    fn populate(&mut self) {
        let n = self.backends.len();
        if n == 0 {
            return;
        }
        let m = self.entries.len();
        let mut count = vec![0usize; n];
        for &e in &self.entries {
            if e != NONE {
                count[e as usize] += 1;
            }
        }
        // Shares: M * w / W each (M / n unweighted), one more for the
        // backends left with the largest remainders of that division, ties
        // to those holding the most slots already (so an unchanged set
        // moves nothing), then the first in order (from an empty table,
        // the paper's outcome).
        let total: u64 = self.weights.iter().map(|&w| u64::from(w)).sum();
        let mut target: Vec<usize> = self
            .weights
            .iter()
            .map(|&w| (m as u64 * u64::from(w) / total) as usize)
            .collect();
        let rem = |i: usize| (m as u64 * u64::from(self.weights[i])) % total;
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(rem(i)), std::cmp::Reverse(count[i]), i));
        let left = m - target.iter().sum::<usize>();
        for &i in &order[..left] {
            target[i] += 1;
        }
        // Turns per round: IPVS mh's `turns = weight / gcd`.
        let g = self.weights.iter().fold(0u32, |g, &w| gcd(g, w)).max(1);
        let turns: Vec<u32> = self.weights.iter().map(|&w| w / g).collect();
        let mut perms: Vec<Permutation> = self
            .backends
            .iter()
            .map(|&b| Permutation::of(b, m))
            .collect();
        loop {
            let mut claimed = false;
            for i in 0..n {
                for _ in 0..turns[i] {
                    if count[i] >= target[i] {
                        break;
                    }
                    // Terminates within m steps: while i is below its share some
                    // slot is free or held by a backend above its share, and a
                    // slot skipped once (held by a backend at or below its share)
                    // stays so.
                    while perms[i].next < m {
                        let slot = perms[i].advance(m);
                        let owner = self.entries[slot];
                        if owner == NONE {
                            self.entries[slot] = i as u16;
                            count[i] += 1;
                            claimed = true;
                            break;
                        }
                        let o = owner as usize;
                        if o != i && count[o] > target[o] {
                            count[o] -= 1;
                            self.entries[slot] = i as u16;
                            count[i] += 1;
                            claimed = true;
                            break;
                        }
                    }
                }
            }
            if !claimed {
                break;
            }
        }
        debug_assert!(self.entries.iter().all(|&e| e != NONE));
    }

    /// The weights the table was built with, in the order of
    /// [`Maglev::backends`].
    pub fn weights(&self) -> &[u32] {
        &self.weights
    }

    /// The backends the table was built for, in their order.
    pub fn backends(&self) -> &[SocketAddrV4] {
        &self.backends
    }

    pub fn size(&self) -> usize {
        self.entries.len()
    }

    /// The backend (index into [`Maglev::backends`]) of slot `key mod M`.
    #[inline]
    pub fn lookup(&self, key: u64) -> Option<usize> {
        self.slot(key, 0)
    }

    /// The backend of the `k`-th slot after `key`'s: a deterministic
    /// fallback order when the chosen backend cannot be used.
    #[inline]
    pub fn slot(&self, key: u64, k: usize) -> Option<usize> {
        if self.backends.is_empty() {
            return None;
        }
        let m = self.entries.len() as u64;
        let e = self.entries[((key % m + k as u64 % m) % m) as usize];
        (e != NONE).then_some(e as usize)
    }

    /// Slots per backend (for tests and diagnostics).
    pub fn shares(&self) -> Vec<usize> {
        let mut count = vec![0; self.backends.len()];
        for &e in &self.entries {
            if e != NONE {
                count[e as usize] += 1;
            }
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: usize) -> Vec<SocketAddrV4> {
        (0..n)
            .map(|i| {
                SocketAddrV4::new(
                    Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250) as u8 + 1),
                    8080,
                )
            })
            .collect()
    }

    /// A direct transcription of the paper's pseudocode 1, as the reference.
    fn paper(backends: &[SocketAddrV4], m: usize) -> Vec<usize> {
        let n = backends.len();
        let perm: Vec<(usize, usize)> = backends
            .iter()
            .map(|&b| {
                let p = Permutation::of(b, m);
                (p.offset, p.skip)
            })
            .collect();
        let mut next = vec![0usize; n];
        let mut entry = vec![usize::MAX; m];
        let mut filled = 0;
        loop {
            for i in 0..n {
                let mut c = (perm[i].0 + next[i] * perm[i].1) % m;
                while entry[c] != usize::MAX {
                    next[i] += 1;
                    c = (perm[i].0 + next[i] * perm[i].1) % m;
                }
                entry[c] = i;
                next[i] += 1;
                filled += 1;
                if filled == m {
                    return entry;
                }
            }
        }
    }

    fn owners(t: &Maglev) -> Vec<SocketAddrV4> {
        (0..t.size())
            .map(|s| t.backends()[t.slot(s as u64, 0).unwrap()])
            .collect()
    }

    #[test]
    fn matches_the_papers_population() {
        for (n, m) in [(1, 7), (3, 13), (5, 65537), (3, 65537), (17, 251)] {
            let b = addrs(n);
            let ours = Maglev::with_size(&b, m);
            let reference = paper(&b, m);
            let got: Vec<usize> = (0..m).map(|s| ours.slot(s as u64, 0).unwrap()).collect();
            assert_eq!(got, reference, "n={n} m={m}");
        }
    }

    #[test]
    fn shares_are_even_within_one_slot() {
        for n in [1, 2, 3, 7, 100] {
            let t = Maglev::new(&addrs(n));
            let shares = t.shares();
            let (lo, hi) = (*shares.iter().min().unwrap(), *shares.iter().max().unwrap());
            assert!(hi - lo <= 1, "n={n}: {lo}..{hi}");
            assert_eq!(shares.iter().sum::<usize>(), TABLE_SIZE);
        }
    }

    #[test]
    fn same_key_same_backend_and_keys_spread() {
        let t = Maglev::new(&addrs(3));
        let mut counts = [0usize; 3];
        for i in 0..3000u32 {
            let ip = Ipv4Addr::from(0xc612_0000 + i);
            let k = client_key(ip);
            let b = t.lookup(k).unwrap();
            assert_eq!(t.lookup(client_key(ip)), Some(b));
            counts[b] += 1;
        }
        // 3000 clients over 3 backends: each well within 1000 +- 150.
        assert!(
            counts.iter().all(|&c| (850..=1150).contains(&c)),
            "{counts:?}"
        );
        // A table built again from the same list agrees everywhere.
        assert_eq!(owners(&t), owners(&Maglev::new(&addrs(3))));
    }

    #[test]
    fn removing_a_backend_moves_only_its_clients() {
        for (n, gone) in [(3, 1), (3, 0), (5, 4), (10, 3)] {
            let all = addrs(n);
            let old = Maglev::new(&all);
            let kept: Vec<SocketAddrV4> = all.iter().copied().filter(|&a| a != all[gone]).collect();
            let new = old.rebuild(&kept);
            let (before, after) = (owners(&old), owners(&new));
            for (s, (b, a)) in before.iter().zip(&after).enumerate() {
                if *b != all[gone] {
                    assert_eq!(a, b, "slot {s} moved from a backend still present");
                } else {
                    assert_ne!(*a, all[gone]);
                }
            }
            let shares = new.shares();
            let (lo, hi) = (*shares.iter().min().unwrap(), *shares.iter().max().unwrap());
            assert!(hi - lo <= 1, "n={n}: shares after removal {shares:?}");
        }
    }

    #[test]
    fn adding_a_backend_moves_clients_only_to_it() {
        let all = addrs(4);
        let old = Maglev::new(&all[..3]);
        let new = old.rebuild(&all);
        let (before, after) = (owners(&old), owners(&new));
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if a != b {
                assert_eq!(*a, all[3], "a slot moved to an old backend");
                moved += 1;
            }
        }
        let shares = new.shares();
        assert_eq!(moved, shares[3]);
        let (lo, hi) = (*shares.iter().min().unwrap(), *shares.iter().max().unwrap());
        assert!(hi - lo <= 1, "{shares:?}");
        // And back: removing it again restores the old owners exactly.
        let again = new.rebuild(&all[..3]);
        let restored = owners(&again);
        let same = before.iter().zip(&restored).filter(|(a, b)| a == b).count();
        assert!(same as f64 > 0.95 * TABLE_SIZE as f64, "{same}");
    }

    #[test]
    fn reordering_and_empty_sets() {
        let b = addrs(3);
        let t = Maglev::new(&b);
        let reordered = vec![b[2], b[0], b[1]];
        let r = t.rebuild(&reordered);
        assert_eq!(owners(&t), owners(&r), "same set: nothing moves");
        let empty = t.rebuild(&[]);
        assert_eq!(empty.lookup(1), None);
        let back = empty.rebuild(&b);
        assert_eq!(back.shares().iter().sum::<usize>(), TABLE_SIZE);
        assert_eq!(owners(&back), owners(&t), "from empty: the paper's table");
        assert_eq!(Maglev::new(&[]).lookup(7), None);
    }

    #[test]
    fn weighted_shares_follow_the_weights() {
        let b = addrs(3);
        let t = Maglev::weighted(&b, &[1, 2, 3], TABLE_SIZE);
        let shares = t.shares();
        for (i, w) in [1usize, 2, 3].into_iter().enumerate() {
            let want = TABLE_SIZE * w / 6;
            assert!(shares[i].abs_diff(want) <= 1, "{shares:?}");
        }
        // Equal weights are the unweighted table.
        let even = Maglev::weighted(&b, &[4, 4, 4], 251);
        assert_eq!(owners(&even), owners(&Maglev::with_size(&b, 251)));
        // Reweighting moves slots only towards the heavier backend.
        let more = t.rebuild_weighted(&b, &[1, 2, 6]);
        let (before, after) = (owners(&t), owners(&more));
        for (x, y) in before.iter().zip(&after) {
            assert!(x == y || *y == b[2], "{x} -> {y}");
        }
        assert!(more.shares()[2].abs_diff(TABLE_SIZE * 6 / 9) <= 1);
    }
}
