//! A Maglev lookup table (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016, section 3.4) that is a pure
//! function of (backend set with weights, table size, seed).
//!
//! A fleet of instances behind ECMP must send a client to the same backend
//! whichever instance the router picks, and must keep doing so after any
//! sequence of reloads and health changes. So the table may depend on
//! nothing but its inputs: not on the order of the configuration file, not
//! on the previous table.
//!
//! Population. The paper lets backends take turns claiming the next free
//! slot of their permutation; removing a backend then also moves a few
//! slots between the backends that stay (its table is "nearly" minimally
//! disruptive). A pure function cannot do better by remembering: if
//! removing any one backend must leave every other backend's slots in place
//! for every set, each slot must have a fixed order of preference over all
//! backends and belong to the first present one. We build exactly that: a
//! slot belongs to the backend with the best weighted rendezvous score
//! (Thaler and Ravishankar's highest random weight, with Schindelhauer and
//! Schomaker's logarithmic weighting: score = -ln(u) / weight for a
//! pseudo-random u of (seed, backend, slot); the lowest wins, so a
//! backend's expected share is weight / total weight). Consequences:
//! - removing a backend moves exactly its slots; adding one moves slots
//!   only to it; a weight change moves slots only to or from that backend;
//! - shares are statistical rather than exact: with M = 65537 slots and n
//!   equal backends each holds M/n +- sqrt(M/n) or so (0.7 % for n = 3);
//! - building costs M x n scores (about 10 ms per 10 backends here), done
//!   on the control thread, never on a shard.
//!
//! Lookup is the paper's: a client's address hashes to a slot, the slot
//! names its backend.
//!
//! Determinism across machines: the hashes are SipHash and a 64-bit
//! finaliser; the logarithm is computed here from IEEE-754 additions,
//! multiplications and divisions (correctly rounded everywhere; Rust never
//! contracts them into FMAs), not from the platform's libm, whose last bit
//! may differ between libc versions.

use std::hash::Hasher;
use std::net::{Ipv4Addr, SocketAddrV4};

use siphasher::sip::SipHasher13;

/// The paper's suggested size: prime, and much larger than the number of
/// backends (it bounds the imbalance a client range can see).
pub const TABLE_SIZE: usize = 65537;

const NONE: u16 = u16::MAX;

// Fixed keys, mixed with the configured seed: every instance with the same
// seed computes the same backend scores and the same client slots.
const KEY_BACKEND: (u64, u64) = (0x7475_726e_7374_696c, 0x6d61_676c_6576_2d6f);
const KEY_CLIENT: (u64, u64) = (0x636c_6965_6e74_2d6b, 0x6579_2d74_7572_6e73);

fn sip(key: (u64, u64), bytes: &[u8]) -> u64 {
    let mut h = SipHasher13::new_with_keys(key.0, key.1);
    h.write(bytes);
    h.finish()
}

/// The 64-bit finaliser of SplitMix64 (Steele, Lea, Flood 2014): a
/// bijection with full avalanche, cheap enough for M x n calls.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
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

/// ln(x) for x in (0, 1], from correctly rounded operations only, so every
/// machine gets the same bits. x = m * 2^e with m in [sqrt(1/2), sqrt(2)),
/// ln(m) = 2 atanh(t) with t = (m - 1) / (m + 1), |t| < 0.172: 12 terms of
/// the odd series leave an error below 1e-19, past f64's precision.
fn ln_portable(x: f64) -> f64 {
    debug_assert!(x > 0.0 && x <= 1.0 && x.is_normal());
    const LN2: f64 = std::f64::consts::LN_2;
    let bits = x.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    if m > std::f64::consts::SQRT_2 {
        m /= 2.0;
        e += 1;
    }
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let mut term = t;
    let mut sum = 0.0;
    for k in 0..12 {
        sum += term / (2 * k + 1) as f64;
        term *= t2;
    }
    2.0 * sum + e as f64 * LN2
}

/// A uniform value in (0, 1] from 53 bits of `h` (never 0: ln is finite).
#[inline]
fn unit(h: u64) -> f64 {
    ((h >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A lookup table from client hashes to backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Maglev {
    /// Sorted by address: the table's own order, whatever the input's.
    backends: Vec<SocketAddrV4>,
    weights: Vec<u32>,
    seed: u64,
    /// Per slot, an index into `backends`.
    entries: Vec<u16>,
}

impl Maglev {
    /// The table for `backends` (each of weight 1), size [`TABLE_SIZE`],
    /// seed 0.
    pub fn new(backends: &[SocketAddrV4]) -> Self {
        let weighted: Vec<(SocketAddrV4, u32)> = backends.iter().map(|&b| (b, 1)).collect();
        Self::build(&weighted, TABLE_SIZE, 0)
    }

    /// The table for `backends` with their weights, `m` slots and `seed`.
    /// The order of `backends` does not matter; a repeated address counts
    /// once (its largest weight); weight 0 takes no slot. `m` must be at
    /// least 2 (a prime spreads client hashes best).
    pub fn build(backends: &[(SocketAddrV4, u32)], m: usize, seed: u64) -> Self {
        assert!(
            (2..=u32::MAX as usize).contains(&m),
            "table size {m} out of range"
        );
        let mut set: Vec<(SocketAddrV4, u32)> =
            backends.iter().copied().filter(|&(_, w)| w > 0).collect();
        set.sort_by_key(|&(a, w)| (a, std::cmp::Reverse(w)));
        set.dedup_by_key(|&mut (a, _)| a);
        assert!(set.len() < NONE as usize, "too many backends");
        let (backends, weights): (Vec<SocketAddrV4>, Vec<u32>) = set.into_iter().unzip();
        let mut table = Maglev {
            backends,
            weights,
            seed,
            entries: vec![NONE; m],
        };
        table.populate();
        table
    }

    /// Every slot goes to the backend with the lowest -ln(u) / weight;
    /// ties (vanishingly rare) to the lower address.
    fn populate(&mut self) {
        if self.backends.is_empty() {
            return;
        }
        let key = (
            KEY_BACKEND.0 ^ self.seed,
            KEY_BACKEND.1 ^ self.seed.rotate_left(32),
        );
        let salts: Vec<u64> = self
            .backends
            .iter()
            .map(|&b| sip(key, &name_bytes(b)))
            .collect();
        let uniform = self.weights.iter().all(|&w| w == self.weights[0]);
        for (slot, entry) in self.entries.iter_mut().enumerate() {
            let s = mix(slot as u64 ^ 0x9e37_79b9_7f4a_7c15);
            let score = |i: usize| mix(salts[i] ^ s);
            let best = if uniform {
                // Equal weights: -ln(u)/w is lowest where u is highest, so
                // compare the hashes themselves (no logarithm).
                (0..salts.len()).max_by_key(|&i| (score(i), std::cmp::Reverse(i)))
            } else {
                (0..salts.len()).min_by(|&a, &b| {
                    let sa = -ln_portable(unit(score(a))) / self.weights[a] as f64;
                    let sb = -ln_portable(unit(score(b))) / self.weights[b] as f64;
                    sa.total_cmp(&sb).then(a.cmp(&b))
                })
            };
            *entry = best.map_or(NONE, |i| i as u16);
        }
    }

    /// The backends the table was built for, sorted by address.
    pub fn backends(&self) -> &[SocketAddrV4] {
        &self.backends
    }

    pub fn weights(&self) -> &[u32] {
        &self.weights
    }

    pub fn seed(&self) -> u64 {
        self.seed
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

    /// A 64-bit digest of everything the table is (for a one-line compare).
    pub fn digest(&self) -> u64 {
        let mut h = SipHasher13::new_with_keys(0, 0);
        h.write(self.dump().as_bytes());
        h.finish()
    }

    /// The whole table as text, the same bytes on every instance that
    /// built it from the same inputs: a header, one line per backend
    /// (`backend INDEX ADDR weight W slots N`), then one line per slot
    /// with its backend's index (`-` for none). Two instances compare
    /// with `cmp`.
    pub fn dump(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(self.entries.len() * 3 + 64 * self.backends.len());
        let _ = writeln!(
            out,
            "maglev size={} seed={} backends={}",
            self.entries.len(),
            self.seed,
            self.backends.len()
        );
        for (i, (b, s)) in self.backends.iter().zip(self.shares()).enumerate() {
            let _ = writeln!(out, "backend {i} {b} weight {} slots {s}", self.weights[i]);
        }
        for &e in &self.entries {
            if e == NONE {
                out.push_str("-\n");
            } else {
                let _ = writeln!(out, "{e}");
            }
        }
        out
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

    fn weighted(b: &[SocketAddrV4]) -> Vec<(SocketAddrV4, u32)> {
        b.iter().map(|&a| (a, 1)).collect()
    }

    fn owners(t: &Maglev) -> Vec<SocketAddrV4> {
        (0..t.size())
            .map(|s| t.backends()[t.slot(s as u64, 0).unwrap()])
            .collect()
    }

    #[test]
    fn portable_ln_agrees_with_libm() {
        for i in 1..10_000u64 {
            let x = unit(mix(i));
            let (ours, libm) = (ln_portable(x), x.ln());
            assert!(
                (ours - libm).abs() <= 4.0 * f64::EPSILON * libm.abs().max(1.0),
                "{x}: {ours} vs {libm}"
            );
        }
        assert_eq!(ln_portable(1.0), 0.0);
    }

    #[test]
    fn shares_are_even_within_statistical_bounds() {
        for n in [1, 2, 3, 7, 100] {
            let t = Maglev::new(&addrs(n));
            let shares = t.shares();
            assert_eq!(shares.iter().sum::<usize>(), TABLE_SIZE);
            let fair = TABLE_SIZE as f64 / n as f64;
            // Binomial: sd = sqrt(M p (1-p)); 5 sd is never reached by chance.
            let sd = (fair * (1.0 - 1.0 / n as f64)).sqrt();
            for &s in &shares {
                assert!(
                    (s as f64 - fair).abs() <= 5.0 * sd + 1.0,
                    "n={n}: {s} vs {fair:.0} (sd {sd:.0})"
                );
            }
        }
    }

    #[test]
    fn weights_set_the_shares() {
        let b = addrs(3);
        let t = Maglev::build(&[(b[0], 1), (b[1], 2), (b[2], 5)], TABLE_SIZE, 7);
        let shares = t.shares();
        for (s, w) in shares.iter().zip([1.0, 2.0, 5.0]) {
            let want = TABLE_SIZE as f64 * w / 8.0;
            assert!((*s as f64 - want).abs() < 0.03 * want, "{shares:?}");
        }
        // Weight 0: no slot (a drained backend takes no new client).
        let t = Maglev::build(&[(b[0], 1), (b[1], 0)], 101, 0);
        assert_eq!(t.backends(), &b[..1]);
        assert_eq!(t.shares(), vec![101]);
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
        assert_eq!(owners(&t), owners(&Maglev::new(&addrs(3))));
    }

    #[test]
    fn removing_a_backend_moves_only_its_clients() {
        for (n, gone) in [(3, 1), (3, 0), (5, 4), (10, 3)] {
            let all = addrs(n);
            let old = Maglev::new(&all);
            let kept: Vec<SocketAddrV4> = all.iter().copied().filter(|&a| a != all[gone]).collect();
            let new = Maglev::new(&kept);
            let (before, after) = (owners(&old), owners(&new));
            let mut moved = 0;
            for (s, (b, a)) in before.iter().zip(&after).enumerate() {
                if *b != all[gone] {
                    assert_eq!(a, b, "slot {s} moved from a backend still present");
                } else {
                    assert_ne!(*a, all[gone]);
                    moved += 1;
                }
            }
            assert_eq!(moved, old.shares()[gone], "n={n}: exactly its share moved");
        }
    }

    #[test]
    fn adding_a_backend_or_changing_a_weight_moves_clients_only_to_or_from_it() {
        let all = addrs(4);
        let old = Maglev::new(&all[..3]);
        let new = Maglev::new(&all);
        let mut moved = 0;
        for (b, a) in owners(&old).iter().zip(&owners(&new)) {
            if a != b {
                assert_eq!(*a, all[3], "a slot moved to an old backend");
                moved += 1;
            }
        }
        assert_eq!(moved, new.shares()[3]);
        let mut heavier = weighted(&all);
        heavier[1].1 = 3;
        let h = Maglev::build(&heavier, TABLE_SIZE, 0);
        for (b, a) in owners(&new).iter().zip(&owners(&h)) {
            if a != b {
                assert_eq!(*a, all[1], "a weight increase moved a slot elsewhere");
            }
        }
    }

    /// The point of purity: whatever sets and weights an instance lived
    /// through, its table for the current inputs is byte for byte the one a
    /// fresh instance builds.
    #[test]
    fn any_history_yields_the_same_table() {
        use rand::rngs::SmallRng;
        use rand::{Rng, SeedableRng};
        let pool = addrs(12);
        let target: Vec<(SocketAddrV4, u32)> = vec![(pool[3], 2), (pool[7], 1), (pool[0], 1)];
        let fresh = Maglev::build(&target, 1009, 42);
        let mut rng = SmallRng::seed_from_u64(1);
        for _ in 0..50 {
            let mut last = None;
            for _ in 0..rng.random_range(1..6) {
                let mut set: Vec<(SocketAddrV4, u32)> = Vec::new();
                for &a in &pool {
                    if rng.random_bool(0.5) {
                        set.push((a, rng.random_range(0..4)));
                    }
                }
                last = Some(Maglev::build(&set, 1009, 42));
            }
            drop(last);
            let mut shuffled = target.clone();
            shuffled.rotate_left(rng.random_range(0..3));
            let t = Maglev::build(&shuffled, 1009, 42);
            assert_eq!(t.dump(), fresh.dump());
            assert_eq!(t.digest(), fresh.digest());
        }
        // The seed matters (it is what a fleet shares).
        assert_ne!(Maglev::build(&target, 1009, 43).dump(), fresh.dump());
    }

    #[test]
    fn a_known_table_stays_the_same_across_builds_and_machines() {
        // Pinned so that a change to the hashing (which would make a new
        // binary disagree with the old ones in a rolling upgrade) is seen.
        let b = addrs(3);
        let t = Maglev::build(&[(b[0], 1), (b[1], 2), (b[2], 1)], 13, 0);
        let got: Vec<usize> = (0..13).map(|s| t.slot(s, 0).unwrap()).collect();
        assert_eq!(got, PINNED);
    }
    const PINNED: [usize; 13] = [2, 0, 1, 2, 2, 2, 1, 1, 1, 1, 1, 2, 1];

    #[test]
    fn empty_sets() {
        assert_eq!(Maglev::new(&[]).lookup(7), None);
        let t = Maglev::new(&[]);
        assert!(
            t.dump()
                .starts_with("maglev size=65537 seed=0 backends=0\n-\n")
        );
    }
}
