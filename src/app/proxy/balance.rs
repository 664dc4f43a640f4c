//! Picking a backend for a new client connection: round-robin,
//! least-connections, or Maglev on the client address.
//!
//! Backends already tried for this client (refused or timed out) are
//! skipped; ejected backends are used only when every healthy one has been
//! tried (health may lag; a refusal is cheap and the client gets its RST
//! only when nothing is left).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::Ordering;

use super::maglev::client_key;
use super::pool::Route;
use super::settings::Balance;

impl Route {
    /// The index in `backends` of the backend for this client's next
    /// attempt, or `None` when every backend has been tried.
    pub fn pick(&self, client: Ipv4Addr, tried: &[SocketAddrV4]) -> Option<usize> {
        let untried = |i: usize| !tried.contains(&self.backends[i].addr);
        self.pick_among(client, &|i| untried(i) && self.backends[i].is_up())
            .or_else(|| self.pick_among(client, &untried))
    }

    fn pick_among(&self, client: Ipv4Addr, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        let n = self.backends.len();
        if n == 0 {
            return None;
        }
        match self.balance {
            Balance::RoundRobin => {
                let start = self.turn.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| (start + k) % n).find(|&i| usable(i))
            }
            Balance::LeastConn => {
                // Ties go to the first after a rotating start, so equal
                // loads still spread.
                let start = self.turn.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| usable(i))
                    .min_by_key(|&i| self.backends[i].active.load(Ordering::Relaxed))
            }
            Balance::Maglev => {
                if let Some((table, live)) = &self.maglev {
                    let key = client_key(client);
                    // The client's slot, then the slots after it: the same
                    // fallback order for every connection of this client.
                    let steps = (16 * live.len() + 16).min(table.size());
                    for k in 0..steps {
                        match table.slot(key, k) {
                            Some(e) if usable(live[e]) => return Some(live[e]),
                            Some(_) => {}
                            None => break,
                        }
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

    use super::super::pool::{BackendSet, Routes};
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

    const THREE: [&str; 3] = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"];
    const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 9);

    #[test]
    fn round_robin_takes_turns_and_skips_ejected() {
        let set = BackendSet::default();
        let r = routes("round-robin", &THREE, &set);
        let route = r.route(80).unwrap();
        let picks: Vec<usize> = (0..6).map(|_| route.pick(CLIENT, &[]).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        route.backends[1].set_up(false);
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[route.pick(CLIENT, &[]).unwrap()] += 1;
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
        let first = route.pick(CLIENT, &[]).unwrap();
        assert!(first < 2);
        assert_eq!(route.pick(CLIENT, &[a]), Some(1));
        assert_eq!(
            route.pick(CLIENT, &[b, a]),
            Some(2),
            "last resort: the ejected one"
        );
        assert_eq!(route.pick(CLIENT, &[a, b, route.backends[2].addr]), None);
    }

    #[test]
    fn least_conn_picks_the_least_loaded_and_spreads_ties() {
        let set = BackendSet::default();
        let r = routes("least-conn", &THREE, &set);
        let route = r.route(80).unwrap();
        route.backends[0].opened();
        route.backends[0].opened();
        route.backends[2].opened();
        assert_eq!(route.pick(CLIENT, &[]), Some(1));
        route.backends[1].opened();
        route.backends[1].opened();
        assert_eq!(route.pick(CLIENT, &[]), Some(2));
        // Equal loads: every backend gets a turn.
        route.backends[2].opened();
        let mut seen = [false; 3];
        for _ in 0..3 {
            seen[route.pick(CLIENT, &[]).unwrap()] = true;
        }
        assert_eq!(seen, [true; 3]);
        route.backends[1].closed();
        assert_eq!(route.pick(CLIENT, &[]), Some(1));
    }

    #[test]
    fn maglev_is_stable_per_client_and_falls_back_deterministically() {
        let set = BackendSet::default();
        let r = routes("maglev", &THREE, &set);
        let route = r.route(80).unwrap();
        let mut counts = [0; 3];
        for i in 0..600u32 {
            let client = Ipv4Addr::from(0xc612_0100 + i);
            let b = route.pick(client, &[]).unwrap();
            for _ in 0..3 {
                assert_eq!(route.pick(client, &[]), Some(b));
            }
            counts[b] += 1;
        }
        assert!(counts.iter().all(|&c| c > 120), "{counts:?}");
        // The chosen backend ejected (table not yet rebuilt): the client's
        // fallback is the same every time and is not the ejected one.
        let b = route.pick(CLIENT, &[]).unwrap();
        route.backends[b].set_up(false);
        let f = route.pick(CLIENT, &[]).unwrap();
        assert_ne!(f, b);
        assert_eq!(route.pick(CLIENT, &[]), Some(f));
        assert!(r.tables_stale());
        // Rebuilt without it, clients of the other backends stay put.
        let config_text = "interface = \"eth0\"\n[[listener]]\nport = 80\nbalance = \"maglev\"\nbackends = [\"10.0.0.1:80\", \"10.0.0.2:80\", \"10.0.0.3:80\"]\n";
        let config = Config::parse(config_text, Path::new("t.toml")).unwrap();
        let rebuilt = Routes::build(&config.proxy_settings(), &set, Some(&r), 2);
        assert!(!rebuilt.tables_stale());
        let route2 = rebuilt.route(80).unwrap();
        route.backends[b].set_up(true);
        for i in 0..600u32 {
            let client = Ipv4Addr::from(0xc612_0100 + i);
            let before = route.pick(client, &[]).unwrap();
            route.backends[b].set_up(false);
            let after = route2.pick(client, &[]).unwrap();
            route.backends[b].set_up(true);
            if before != b {
                assert_eq!(after, before, "client {client} moved");
            } else {
                assert_ne!(after, b);
            }
        }
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
}
