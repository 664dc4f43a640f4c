//! Picking a backend for a new client connection: weighted round-robin,
//! weighted least-connections, or weighted Maglev on the client address.
//!
//! - Weight 0 (drain, maint) never takes a new session.
//! - Backups take sessions only while no primary is up.
//! - A backend at its `max_connections` is passed over; when every
//!   candidate is full the caller queues the client ([`Pick::Full`]).
//! - Slow start: a backend up for less than `slow_start` is taken with
//!   probability `effective weight / weight` each time it comes up in the
//!   order (deterministically, from the turn or the client's hash; the
//!   effective weight ramps linearly from 1 to the weight), so its share of
//!   new sessions ramps from 1/weight of its full share to all of it.
//! - Backends already tried for this client (refused or timed out) are
//!   skipped; ejected backends of the serving tier are used only when every
//!   healthy one has been tried (health may lag; a refusal is cheap and the
//!   client gets its RST only when nothing is left).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::Ordering;

use super::maglev::client_key;
use super::pool::Route;
use super::settings::Balance;
use crate::tcp::Instant;

/// What [`Route::pick`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// The index in `backends` to try.
    Backend(usize),
    /// Every candidate is at its `max_connections`: wait for a slot.
    Full,
    /// Nothing left to try.
    None,
}

/// A well-mixed 64-bit value from a turn number (splitmix64's finalizer).
#[inline]
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Route {
    /// The backend for this client's next attempt (see the module doc).
    pub fn pick(&self, client: Ipv4Addr, tried: &[SocketAddrV4], now: Instant) -> Pick {
        let backup_tier = !self.primary_up();
        let fresh = |i: usize| self.admits(i) && !tried.contains(&self.backends[i].addr);
        let in_tier = |i: usize| fresh(i) && self.settings[i].backup == backup_tier;
        let room = |i: usize| {
            self.settings[i]
                .max_connections
                .is_none_or(|m| self.backends[i].reserved() < u64::from(m))
        };
        let tiers: [&dyn Fn(usize) -> bool; 3] = [
            &|i| in_tier(i) && self.backends[i].is_up(),
            &in_tier,
            // With no primary up, anything not yet tried (ejected ones too).
            &|i| backup_tier && fresh(i),
        ];
        for usable in tiers {
            if let Some(i) = self.pick_among(client, now, backup_tier, &|i| usable(i) && room(i)) {
                return Pick::Backend(i);
            }
            if (0..self.backends.len()).any(usable) {
                return Pick::Full;
            }
        }
        Pick::None
    }

    /// Whether slow start lets backend `i` take a session now; `draw` is
    /// a well-mixed number for this decision.
    #[inline]
    fn ramp_admits(&self, i: usize, now: Instant, draw: u64) -> bool {
        let w = self.settings[i].weight;
        if self.slow_start.is_zero() || w <= 1 {
            return true;
        }
        let eff = self.backends[i].effective_weight(w, self.slow_start, now);
        eff >= w || draw % u64::from(w) < u64::from(eff)
    }

    fn pick_among(
        &self,
        client: Ipv4Addr,
        now: Instant,
        backup: bool,
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = self.backends.len();
        if n == 0 {
            return None;
        }
        match self.balance {
            Balance::RoundRobin => {
                // Backups have their own turns (else a backup's turn would
                // fall to the primary after it).
                let schedule = if backup {
                    &self.backup_schedule
                } else {
                    &self.schedule
                };
                let len = schedule.len();
                if len == 0 {
                    return (0..n).find(|&i| usable(i));
                }
                let start = self.turn.fetch_add(1, Ordering::Relaxed);
                let at = |k: usize| schedule[(start + k) % len] as usize;
                (0..len)
                    .find(|&k| {
                        let i = at(k);
                        usable(i) && self.ramp_admits(i, now, mix((start + k) as u64))
                    })
                    .or_else(|| (0..len).find(|&k| usable(at(k))))
                    .map(at)
                    .or_else(|| (0..n).find(|&i| usable(i)))
            }
            Balance::LeastConn => {
                // Fewest open sessions per unit of (effective) weight; ties
                // go to the first after a rotating start, so equal loads
                // still spread.
                let start = self.turn.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| usable(i))
                    .min_by(|&a, &b| {
                        let load = |i: usize| {
                            let w = self.settings[i].weight;
                            let eff = self.backends[i].effective_weight(w, self.slow_start, now);
                            (self.backends[i].active.load(Ordering::Relaxed) + 1) as f64
                                / f64::from(eff.max(1))
                        };
                        load(a).total_cmp(&load(b))
                    })
            }
            Balance::Maglev => {
                let key = client_key(client);
                if let Some((table, live)) = &self.maglev {
                    // The client's slot, then the slots after it: the same
                    // fallback order for every connection of this client.
                    let steps = (16 * live.len() + 16).min(table.size());
                    let mut fallback = None;
                    for k in 0..steps {
                        match table.slot(key, k) {
                            Some(e) if usable(live[e]) => {
                                if self.ramp_admits(live[e], now, mix(key)) {
                                    return Some(live[e]);
                                }
                                fallback.get_or_insert(live[e]);
                            }
                            Some(_) => {}
                            None => break,
                        }
                    }
                    if fallback.is_some() {
                        return fallback;
                    }
                }
                (0..n).find(|&i| usable(i))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::pool::{BackendSet, Routes, Slot};
    use super::*;
    use crate::config::Config;

    fn routes(balance: &str, backends: &[&str], set: &BackendSet) -> Routes {
        let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
        let text = format!(
            "interface = \"eth0\"\n[[listener]]\nport = 80\nbalance = \"{balance}\"\nbackends = [{}]\n",
            list.join(", ")
        );
        let config = Config::parse(&text, Path::new("t.toml")).unwrap();
        Routes::build(&config.proxy_settings(), set, None, 1)
    }

    impl Route {
        fn pick_idx(&self, client: Ipv4Addr, tried: &[SocketAddrV4]) -> Option<usize> {
            match self.pick(client, tried, Instant::from_secs(1)) {
                Pick::Backend(i) => Some(i),
                _ => None,
            }
        }
    }

    const THREE: [&str; 3] = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"];
    const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 9);

    #[test]
    fn round_robin_takes_turns_and_skips_ejected() {
        let set = BackendSet::default();
        let r = routes("round-robin", &THREE, &set);
        let route = r.route(80).unwrap();
        let picks: Vec<usize> = (0..6)
            .map(|_| route.pick_idx(CLIENT, &[]).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        route.backends[1].set_up(false);
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[route.pick_idx(CLIENT, &[]).unwrap()] += 1;
        }
        assert_eq!(counts[1], 0, "an ejected backend takes no new connection");
        assert!(counts[0] >= 100 && counts[2] >= 100, "{counts:?}");
    }

    #[test]
    fn retries_skip_tried_backends_then_use_ejected_ones_then_give_up() {
        let set = BackendSet::default();
        let r = routes("round-robin", &THREE, &set);
        let route = r.route(80).unwrap();
        route.backends[2].set_up(false);
        let a = route.backends[0].addr;
        let b = route.backends[1].addr;
        let first = route.pick_idx(CLIENT, &[]).unwrap();
        assert!(first < 2);
        assert_eq!(route.pick_idx(CLIENT, &[a]), Some(1));
        assert_eq!(
            route.pick_idx(CLIENT, &[b, a]),
            Some(2),
            "last resort: the ejected one"
        );
        assert_eq!(
            route.pick_idx(CLIENT, &[a, b, route.backends[2].addr]),
            None
        );
    }

    #[test]
    fn least_conn_picks_the_least_loaded_and_spreads_ties() {
        let set = BackendSet::default();
        let r = routes("least-conn", &THREE, &set);
        let route = r.route(80).unwrap();
        route.backends[0].opened();
        route.backends[0].opened();
        route.backends[2].opened();
        assert_eq!(route.pick_idx(CLIENT, &[]), Some(1));
        route.backends[1].opened();
        route.backends[1].opened();
        assert_eq!(route.pick_idx(CLIENT, &[]), Some(2));
        // Equal loads: every backend gets a turn.
        route.backends[2].opened();
        let mut seen = [false; 3];
        for _ in 0..3 {
            seen[route.pick_idx(CLIENT, &[]).unwrap()] = true;
        }
        assert_eq!(seen, [true; 3]);
        route.backends[1].closed();
        assert_eq!(route.pick_idx(CLIENT, &[]), Some(1));
    }

    #[test]
    fn maglev_is_stable_per_client_and_falls_back_deterministically() {
        let set = BackendSet::default();
        let r = routes("maglev", &THREE, &set);
        let route = r.route(80).unwrap();
        let mut counts = [0; 3];
        for i in 0..600u32 {
            let client = Ipv4Addr::from(0xc612_0100 + i);
            let b = route.pick_idx(client, &[]).unwrap();
            for _ in 0..3 {
                assert_eq!(route.pick_idx(client, &[]), Some(b));
            }
            counts[b] += 1;
        }
        assert!(counts.iter().all(|&c| c > 120), "{counts:?}");
        // The chosen backend ejected (table not yet rebuilt): the client's
        // fallback is the same every time and is not the ejected one.
        let b = route.pick_idx(CLIENT, &[]).unwrap();
        route.backends[b].set_up(false);
        let f = route.pick_idx(CLIENT, &[]).unwrap();
        assert_ne!(f, b);
        assert_eq!(route.pick_idx(CLIENT, &[]), Some(f));
        assert!(r.tables_stale());
        // Rebuilt without it: its clients move, and of the others only the
        // few whose slots the paper's fill hands on (at most 1% of the
        // table, `maglev::tests::removing_one_of_n_moves_about_one_nth`).
        let config_text = "interface = \"eth0\"\n[[listener]]\nport = 80\nbalance = \"maglev\"\nbackends = [\"10.0.0.1:80\", \"10.0.0.2:80\", \"10.0.0.3:80\"]\n";
        let config = Config::parse(config_text, Path::new("t.toml")).unwrap();
        let rebuilt = Routes::build(&config.proxy_settings(), &set, Some(&r), 2);
        assert!(!rebuilt.tables_stale());
        let route2 = rebuilt.route(80).unwrap();
        route.backends[b].set_up(true);
        let (mut others, mut others_moved) = (0, 0);
        for i in 0..6000u32 {
            let client = Ipv4Addr::from(0xc612_0100 + i);
            let before = route.pick_idx(client, &[]).unwrap();
            route.backends[b].set_up(false);
            let after = route2.pick_idx(client, &[]).unwrap();
            route.backends[b].set_up(true);
            if before != b {
                others += 1;
                others_moved += usize::from(after != before);
            } else {
                assert_ne!(after, b);
            }
        }
        assert!(
            others_moved * 50 <= others,
            "{others_moved} of {others} clients of the other backends moved"
        );
    }

    #[test]
    fn snapshots_share_backends_and_turns() {
        let set = BackendSet::default();
        let a = routes("round-robin", &THREE, &set);
        a.route(80).unwrap().backends[0].opened();
        let b = routes("round-robin", &THREE[..2], &set);
        assert_eq!(
            b.route(80).unwrap().backends[0]
                .active
                .load(Ordering::Relaxed),
            1
        );
        assert_eq!(b.checked.len(), 2);
    }

    /// A route from backend entries written as in the file.
    fn routes_of(balance: &str, entries: &str, extra: &str, set: &BackendSet) -> Routes {
        let text = format!(
            "interface = \"eth0\"\n[[listener]]\nport = 80\nbalance = \"{balance}\"\n{extra}\nbackends = [{entries}]\n"
        );
        let config = Config::parse(&text, Path::new("t.toml")).unwrap();
        Routes::build(&config.proxy_settings(), set, None, 1)
    }

    const WEIGHTED: &str = r#"{ addr = "10.0.0.1:80", weight = 1 }, { addr = "10.0.0.2:80", weight = 2 }, { addr = "10.0.0.3:80", weight = 3 }"#;

    fn within_2pct(counts: &[usize], weights: &[usize]) {
        let total: usize = counts.iter().sum();
        let wsum: usize = weights.iter().sum();
        for (c, w) in counts.iter().zip(weights) {
            let want = total as f64 * *w as f64 / wsum as f64;
            assert!(
                (*c as f64 - want).abs() <= 0.02 * want,
                "{counts:?} vs weights {weights:?}"
            );
        }
    }

    #[test]
    fn weights_1_2_3_over_30000_sessions() {
        for balance in ["round-robin", "maglev", "least-conn"] {
            let set = BackendSet::default();
            let r = routes_of(balance, WEIGHTED, "", &set);
            let route = r.route(80).unwrap();
            // Maglev hashes the client: 30,000 distinct clients are 30,000
            // draws from the table's (exact) shares, sigma 1.29% of the 1/6
            // share, so a 2% bound there would be a 1.5-sigma test. With
            // 600,000 clients sigma is 0.29% and 2% is 6.9 sigma.
            let clients = if balance == "maglev" { 600_000 } else { 30_000 };
            let mut counts = [0usize; 3];
            for i in 0..clients {
                let client = Ipv4Addr::from(0x6440_0000 + i);
                let b = route.pick_idx(client, &[]).unwrap();
                counts[b] += 1;
                if balance == "least-conn" {
                    // Sessions open and stay: load follows weight.
                    route.backends[b].opened();
                }
            }
            within_2pct(&counts, &[1, 2, 3]);
            if balance == "round-robin" {
                assert_eq!(counts, [5000, 10000, 15000], "exact over whole rounds");
            }
            if balance == "maglev" {
                let (table, _) = route.maglev.as_ref().unwrap();
                assert_eq!(table.shares(), vec![10923, 21846, 32768], "exact quotas");
            }
        }
    }

    #[test]
    fn weight_zero_drains_and_backups_wait_for_every_primary_to_be_down() {
        for balance in ["round-robin", "maglev", "least-conn"] {
            let set = BackendSet::default();
            let entries = r#""10.0.0.1:80", { addr = "10.0.0.2:80", weight = 0 }, "10.0.0.3:80", { addr = "10.0.0.4:80", backup = true }"#;
            let r = routes_of(balance, entries, "", &set);
            let route = r.route(80).unwrap();
            let mut counts = [0usize; 4];
            for i in 0..3000u32 {
                counts[route
                    .pick_idx(Ipv4Addr::from(0xc612_0000 + i), &[])
                    .unwrap()] += 1;
            }
            assert_eq!((counts[1], counts[3]), (0, 0), "{balance}: {counts:?}");
            assert!(
                counts[0] > 1000 && counts[2] > 1000,
                "{balance}: {counts:?}"
            );
            // One primary down: the other takes everything, still no backup.
            route.backends[0].set_up(false);
            let r2 = Routes::build(&r_settings(balance, entries), &set, Some(&r), 2);
            let route2 = r2.route(80).unwrap();
            for i in 0..300u32 {
                assert_eq!(
                    route2.pick_idx(Ipv4Addr::from(0xc612_0000 + i), &[]),
                    Some(2)
                );
            }
            // Every primary down (the drained one does not count): the backup.
            route.backends[2].set_up(false);
            let r3 = Routes::build(&r_settings(balance, entries), &set, Some(&r2), 3);
            let route3 = r3.route(80).unwrap();
            for i in 0..300u32 {
                assert_eq!(
                    route3.pick_idx(Ipv4Addr::from(0xc612_0000 + i), &[]),
                    Some(3),
                    "{balance}"
                );
            }
            // A primary back: the backup stops taking new sessions.
            route.backends[0].set_up(true);
            let r4 = Routes::build(&r_settings(balance, entries), &set, Some(&r3), 4);
            let route4 = r4.route(80).unwrap();
            for i in 0..300u32 {
                assert_eq!(
                    route4.pick_idx(Ipv4Addr::from(0xc612_0000 + i), &[]),
                    Some(0),
                    "{balance}"
                );
            }
        }
    }

    fn r_settings(balance: &str, entries: &str) -> crate::app::proxy::settings::ProxySettings {
        let text = format!(
            "interface = \"eth0\"\n[[listener]]\nport = 80\nbalance = \"{balance}\"\nbackends = [{entries}]\n"
        );
        Config::parse(&text, Path::new("t.toml"))
            .unwrap()
            .proxy_settings()
    }

    #[test]
    fn max_connections_full_backends_are_passed_over_then_reported_full() {
        let set = BackendSet::default();
        let entries = r#"{ addr = "10.0.0.1:80", max_connections = 2 }, { addr = "10.0.0.2:80", max_connections = 1 }"#;
        let r = routes_of("round-robin", entries, "", &set);
        let route = r.route(80).unwrap();
        let mut held = Vec::new();
        for _ in 0..3 {
            let Pick::Backend(i) = route.pick(CLIENT, &[], Instant::from_secs(1)) else {
                panic!("room left")
            };
            held.push(
                Slot::reserve(&route.backends[i], route.settings[i].max_connections).unwrap(),
            );
        }
        assert_eq!(route.pick(CLIENT, &[], Instant::from_secs(1)), Pick::Full);
        assert!(Slot::reserve(&route.backends[1], Some(1)).is_none());
        held.pop();
        assert!(matches!(
            route.pick(CLIENT, &[], Instant::from_secs(1)),
            Pick::Backend(_)
        ));
        drop(held);
        assert_eq!(
            route.backends[0].reserved() + route.backends[1].reserved(),
            0
        );
    }

    #[test]
    fn slow_start_ramps_from_one_to_the_weight() {
        let set = BackendSet::default();
        let entries =
            r#"{ addr = "10.0.0.1:80", weight = 10 }, { addr = "10.0.0.2:80", weight = 10 }"#;
        let r = routes_of("round-robin", entries, "slow_start_ms = 10000", &set);
        let route = r.route(80).unwrap();
        let t0 = Instant::from_secs(100);
        route.backends[1].came_up(t0);
        let share = |at: Instant| {
            let mut n = [0usize; 2];
            for _ in 0..20_000 {
                if let Pick::Backend(i) = route.pick(CLIENT, &[], at) {
                    n[i] += 1;
                }
            }
            n[1] as f64 / 20_000.0
        };
        // Its turns are taken with probability effective/weight: just up,
        // 1/10 of its half; half-way, 5.5/10 of it.
        let s0 = share(t0);
        assert!((0.03..0.08).contains(&s0), "{s0}");
        let s_half = share(t0.saturating_add(std::time::Duration::from_secs(5)));
        assert!((0.22..0.33).contains(&s_half), "{s_half}");
        let s_done = share(t0.saturating_add(std::time::Duration::from_secs(10)));
        assert!((0.48..0.52).contains(&s_done), "{s_done}");
    }
}
