//! Backends and the routing snapshot every shard reads.
//!
//! A [`Backend`] lives as long as anything refers to it: its health and
//! counters are atomics shared by every shard (each shard writes only a
//! few per connection, not per packet). [`Routes`] is an immutable
//! snapshot of what the configuration and health say now; the sidecar's
//! control thread builds a new one on reload or on a health change and
//! publishes it through a [`RouteCell`]; shards notice with one atomic load
//! per loop pass and swap their `Arc`.

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::maglev::{Maglev, TABLE_SIZE};
use super::settings::{Balance, Health, ProxySettings, Timeouts};

/// Why a connection to a backend failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// It answered our SYN with a RST.
    Refused,
    /// The connect did not complete within the connect timeout (or the
    /// engine gave up retransmitting).
    Timeout,
    /// It reset a connection before any byte was relayed.
    Reset,
    /// No local port free (and no TIME_WAIT tuple safe to reuse) towards it.
    NoPort,
    /// No next hop: its link-layer address could not be resolved.
    Unreachable,
}

impl Failure {
    pub const ALL: [Failure; 5] = [
        Failure::Refused,
        Failure::Timeout,
        Failure::Reset,
        Failure::NoPort,
        Failure::Unreachable,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::Timeout => "timeout",
            Failure::Reset => "reset",
            Failure::NoPort => "no_port",
            Failure::Unreachable => "unreachable",
        }
    }
}

/// One backend address and what is known about it.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddrV4,
    up: AtomicBool,
    /// In the running configuration (false once a reload removed it).
    configured: AtomicBool,
    /// Proxied connections open to it now.
    pub active: AtomicU64,
    /// Proxied connections established to it.
    pub connections: AtomicU64,
    failures: [AtomicU64; 5],
    /// Bytes relayed from clients to it.
    pub bytes_to: AtomicU64,
    /// Bytes relayed from it to clients.
    pub bytes_from: AtomicU64,
    pub checks_ok: AtomicU64,
    pub checks_failed: AtomicU64,
}

impl Backend {
    pub fn new(addr: SocketAddrV4) -> Self {
        Backend {
            addr,
            up: AtomicBool::new(true),
            configured: AtomicBool::new(true),
            active: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            failures: Default::default(),
            bytes_to: AtomicU64::new(0),
            bytes_from: AtomicU64::new(0),
            checks_ok: AtomicU64::new(0),
            checks_failed: AtomicU64::new(0),
        }
    }

    #[inline]
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }

    pub fn is_configured(&self) -> bool {
        self.configured.load(Ordering::Relaxed)
    }

    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn failed(&self, why: Failure) {
        Self::add(&self.failures[why as usize], 1);
    }

    pub fn failures(&self, why: Failure) -> u64 {
        self.failures[why as usize].load(Ordering::Relaxed)
    }

    pub fn opened(&self) {
        Self::add(&self.connections, 1);
        Self::add(&self.active, 1);
    }

    pub fn closed(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every backend the sidecar has known, by address; the same `Arc` across
/// reloads, so counters and health survive them.
#[derive(Default)]
pub struct BackendSet {
    all: Mutex<Vec<Arc<Backend>>>,
}

impl BackendSet {
    pub fn get(&self, addr: SocketAddrV4) -> Arc<Backend> {
        let mut all = self.all.lock().expect("backend set lock");
        if let Some(b) = all.iter().find(|b| b.addr == addr) {
            return b.clone();
        }
        let b = Arc::new(Backend::new(addr));
        all.push(b.clone());
        b
    }

    /// Marks which backends the running configuration lists; forgets the
    /// others once no connection uses them.
    pub fn retain_configured(&self, configured: &[SocketAddrV4]) {
        let mut all = self.all.lock().expect("backend set lock");
        for b in all.iter() {
            b.configured
                .store(configured.contains(&b.addr), Ordering::Relaxed);
        }
        all.retain(|b| b.is_configured() || b.active.load(Ordering::Relaxed) > 0);
    }

    /// A copy of the list (for metrics).
    pub fn snapshot(&self) -> Vec<Arc<Backend>> {
        self.all.lock().expect("backend set lock").clone()
    }
}

/// One listener's pool.
#[derive(Debug)]
pub struct Route {
    pub port: u16,
    pub balance: Balance,
    pub backends: Vec<Arc<Backend>>,
    /// For `maglev`: the table over the backends that were up when the
    /// snapshot was built (all of them when none was), and for each of its
    /// backends (in the table's order) the index in `backends`.
    pub maglev: Option<(Maglev, Vec<usize>)>,
    /// Round-robin position; carried across snapshots of the same port.
    pub turn: Arc<AtomicUsize>,
}

/// What every shard routes by.
#[derive(Debug)]
pub struct Routes {
    pub generation: u64,
    pub routes: Vec<Route>,
    pub health: Health,
    pub timeouts: Timeouts,
    /// Every configured backend, once; shard `s` checks those at indices
    /// `i % shards == s`.
    pub checked: Vec<Arc<Backend>>,
}

impl Routes {
    /// A snapshot of `settings` with the current health of `set`, keeping
    /// the round-robin positions of `prev` (Maglev tables are always built
    /// afresh: they depend only on the live set).
    pub fn build(
        settings: &ProxySettings,
        set: &BackendSet,
        prev: Option<&Routes>,
        generation: u64,
    ) -> Routes {
        let routes = settings
            .listeners
            .iter()
            .map(|l| {
                let backends: Vec<Arc<Backend>> =
                    l.backends.iter().map(|b| set.get(b.addr)).collect();
                let old = prev.and_then(|p| p.route(l.port));
                let maglev = (l.balance == Balance::Maglev).then(|| {
                    let mut live: Vec<usize> = (0..backends.len())
                        .filter(|&i| backends[i].is_up())
                        .collect();
                    if live.is_empty() {
                        live = (0..backends.len()).collect();
                    }
                    // A pure function of the live set (never of `prev`):
                    // every instance of a fleet builds the same table.
                    let set: Vec<(SocketAddrV4, u32)> =
                        live.iter().map(|&i| (backends[i].addr, 1)).collect();
                    let table = Maglev::build(&set, TABLE_SIZE, settings.maglev_seed);
                    let index = table
                        .backends()
                        .iter()
                        .map(|a| {
                            backends
                                .iter()
                                .position(|b| b.addr == *a)
                                .expect("a table backend is a route backend")
                        })
                        .collect();
                    (table, index)
                });
                Route {
                    port: l.port,
                    balance: l.balance,
                    backends,
                    maglev,
                    turn: old.map_or_else(|| Arc::new(AtomicUsize::new(0)), |o| o.turn.clone()),
                }
            })
            .collect();
        Routes {
            generation,
            routes,
            health: settings.health,
            timeouts: settings.timeouts,
            checked: settings
                .all_backends()
                .into_iter()
                .map(|a| set.get(a))
                .collect(),
        }
    }

    /// Every Maglev listener's table as text (see [`Maglev::dump`]), in
    /// port order: the same bytes on every instance with the same live
    /// backends and seed, whatever its history.
    pub fn maglev_dump(&self) -> String {
        let mut routes: Vec<&Route> = self.routes.iter().filter(|r| r.maglev.is_some()).collect();
        routes.sort_by_key(|r| r.port);
        let mut out = String::new();
        for r in routes {
            let (table, _) = r.maglev.as_ref().expect("filtered");
            out.push_str(&format!("listener {}\n", r.port));
            out.push_str(&table.dump());
        }
        out
    }

    pub fn route(&self, port: u16) -> Option<&Route> {
        self.routes.iter().find(|r| r.port == port)
    }

    /// Whether the up/down state of some backend differs from what the
    /// Maglev tables were built with.
    pub fn tables_stale(&self) -> bool {
        self.routes.iter().any(|r| match &r.maglev {
            None => false,
            Some((_, live)) => {
                let now: Vec<usize> = (0..r.backends.len())
                    .filter(|&i| r.backends[i].is_up())
                    .collect();
                let now_or_all = if now.is_empty() {
                    (0..r.backends.len()).collect()
                } else {
                    now
                };
                let mut have = live.clone();
                have.sort_unstable();
                now_or_all != have
            }
        })
    }
}

/// The published snapshot: a generation number to check cheaply and the
/// snapshot behind a lock taken only when it changed.
pub struct RouteCell {
    generation: AtomicU64,
    current: RwLock<Arc<Routes>>,
}

impl RouteCell {
    pub fn new(routes: Routes) -> Self {
        RouteCell {
            generation: AtomicU64::new(routes.generation),
            current: RwLock::new(Arc::new(routes)),
        }
    }

    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn load(&self) -> Arc<Routes> {
        self.current.read().expect("routes lock").clone()
    }

    pub fn store(&self, routes: Routes) {
        let generation = routes.generation;
        *self.current.write().expect("routes lock") = Arc::new(routes);
        self.generation.store(generation, Ordering::Release);
    }
}
