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
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use std::time::Duration;

use super::maglev::{Maglev, TABLE_SIZE};
use super::proxy_protocol::ProxyProtocol;
use super::settings::{BackendSettings, BackendState, Balance, Health, ProxySettings, Timeouts};
use crate::tcp::Instant;
use rustc_hash::{FxHashMap, FxHashSet};

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
    /// Upstream attempts and sessions holding one of its
    /// `max_connections` slots (over all shards).
    slots: AtomicU64,
    /// When it last came up (microseconds of the shards' clock; 0: up
    /// since start), for slow start.
    up_since: AtomicU64,
    /// Consecutive failed connects on client sessions (any shard), for
    /// `passive_fall`; a connect that completes clears it.
    passive_streak: AtomicU32,
    /// Times passive health ejected it.
    pub passive_ejections: AtomicU64,
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
            slots: AtomicU64::new(0),
            up_since: AtomicU64::new(0),
            passive_streak: AtomicU32::new(0),
            passive_ejections: AtomicU64::new(0),
        }
    }

    /// A connect from a client session failed: true when this makes
    /// `fall` in a row and the backend was up (the caller ejects it; one
    /// caller wins the race between shards).
    pub fn passive_failure(&self, fall: u32) -> bool {
        let streak = self.passive_streak.fetch_add(1, Ordering::AcqRel) + 1;
        streak >= fall && self.up.swap(false, Ordering::AcqRel)
    }

    /// A connect from a client session completed.
    #[inline]
    pub fn passive_success(&self) {
        if self.passive_streak.load(Ordering::Relaxed) != 0 {
            self.passive_streak.store(0, Ordering::Relaxed);
        }
    }

    /// Takes one of `limit` slots; false when all are held.
    pub fn try_reserve(&self, limit: Option<u32>) -> bool {
        let Some(limit) = limit else {
            self.slots.fetch_add(1, Ordering::Relaxed);
            return true;
        };
        self.slots
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < u64::from(limit)).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back a slot taken by [`Backend::try_reserve`].
    pub fn release(&self) {
        let _ = self
            .slots
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Slots held now.
    pub fn reserved(&self) -> u64 {
        self.slots.load(Ordering::Relaxed)
    }

    /// Marks it up from `now` (slow start ramps from here).
    pub fn came_up(&self, now: Instant) {
        self.up_since
            .store(now.as_micros().max(1), Ordering::Relaxed);
    }

    /// Its weight now: `weight` once up for `slow_start`, ramping
    /// linearly from 1 before that.
    pub fn effective_weight(&self, weight: u32, slow_start: Duration, now: Instant) -> u32 {
        let since = self.up_since.load(Ordering::Relaxed);
        if weight <= 1 || slow_start.is_zero() || since == 0 {
            return weight;
        }
        let up = now.saturating_duration_since(Instant::from_micros(since));
        if up >= slow_start {
            return weight;
        }
        let frac = up.as_secs_f64() / slow_start.as_secs_f64();
        1 + ((weight - 1) as f64 * frac) as u32
    }

    #[inline]
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn set_up(&self, up: bool) {
        if up {
            // Readmitted: passive health counts afresh.
            self.passive_streak.store(0, Ordering::Relaxed);
        }
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

/// One of a backend's `max_connections` slots, held by a session from its
/// upstream attempt until it ends; given back when dropped.
#[derive(Debug)]
pub struct Slot(Arc<Backend>);

impl Slot {
    /// A slot of `backend` if it has one free under `limit`.
    pub fn reserve(backend: &Arc<Backend>, limit: Option<u32>) -> Option<Slot> {
        backend.try_reserve(limit).then(|| Slot(backend.clone()))
    }
}

impl std::ops::Deref for Slot {
    type Target = Backend;
    fn deref(&self) -> &Backend {
        &self.0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// Every backend the sidecar has known, by address; the same `Arc` across
/// reloads, so counters and health survive them.
/// Kept in first-seen order (metrics list them so) beside an index by
/// address, so building a snapshot is linear in the backends.
#[derive(Default)]
pub struct BackendSet {
    all: Mutex<Known>,
}

/// The backends in first-seen order and each one's index by address.
type Known = (Vec<Arc<Backend>>, FxHashMap<SocketAddrV4, usize>);

impl BackendSet {
    pub fn get(&self, addr: SocketAddrV4) -> Arc<Backend> {
        let mut guard = self.all.lock().expect("backend set lock");
        let (all, index) = &mut *guard;
        if let Some(&i) = index.get(&addr) {
            return all[i].clone();
        }
        let b = Arc::new(Backend::new(addr));
        index.insert(addr, all.len());
        all.push(b.clone());
        b
    }

    /// Marks which backends the running configuration lists; forgets the
    /// others once no connection uses them.
    pub fn retain_configured(&self, configured: &[SocketAddrV4]) {
        let configured: FxHashSet<SocketAddrV4> = configured.iter().copied().collect();
        let mut guard = self.all.lock().expect("backend set lock");
        let (all, index) = &mut *guard;
        for b in all.iter() {
            b.configured
                .store(configured.contains(&b.addr), Ordering::Relaxed);
        }
        all.retain(|b| b.is_configured() || b.active.load(Ordering::Relaxed) > 0);
        *index = all.iter().enumerate().map(|(i, b)| (b.addr, i)).collect();
    }

    /// A copy of the list (for metrics).
    pub fn snapshot(&self) -> Vec<Arc<Backend>> {
        self.all.lock().expect("backend set lock").0.clone()
    }
}

/// One listener's pool.
#[derive(Debug)]
pub struct Route {
    pub port: u16,
    pub balance: Balance,
    pub backends: Vec<Arc<Backend>>,
    /// Per backend (same index): weight, limit and role in this listener.
    pub settings: Vec<BackendSettings>,
    pub slow_start: Duration,
    /// The PROXY header sent upstream.
    pub proxy_protocol: ProxyProtocol,
    /// A PROXY header is expected from the balancer in front.
    pub accept_proxy: bool,
    /// Other backends a session tries at most (`None`: each once).
    pub retries: Option<u32>,
    /// For `round-robin`: primary backend indices in smooth weighted
    /// round-robin order, each `weight` times (weight 0: absent).
    pub schedule: Vec<u32>,
    /// The same for the backups.
    pub backup_schedule: Vec<u32>,
    /// For `maglev`: the table over the backends it would pick now (see
    /// [`Route::maglev_members`]) when the snapshot was built, and for each
    /// of its entries the index in `backends`.
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
    /// The index in `checked` of each address.
    pub checked_index: FxHashMap<SocketAddrV4, usize>,
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
                let mut route = Route {
                    port: l.port,
                    balance: l.balance,
                    backends,
                    settings: l.backends.clone(),
                    slow_start: l.slow_start,
                    proxy_protocol: l.proxy_protocol,
                    accept_proxy: l.accept_proxy,
                    retries: l.retries,
                    schedule: smooth_schedule(&l.backends, false),
                    backup_schedule: smooth_schedule(&l.backends, true),
                    maglev: None,
                    turn: old.map_or_else(|| Arc::new(AtomicUsize::new(0)), |o| o.turn.clone()),
                };
                if l.balance == Balance::Maglev {
                    // A pure function of the members and their weights (never
                    // of `prev`): every instance of a fleet builds the same
                    // table. Members have weight >= 1 (drained ones are out).
                    let set: Vec<(SocketAddrV4, u32)> = route
                        .maglev_members()
                        .iter()
                        .map(|&i| (route.backends[i].addr, route.settings[i].weight.max(1)))
                        .collect();
                    let table = Maglev::build(&set, TABLE_SIZE, settings.maglev_seed);
                    let at: FxHashMap<SocketAddrV4, usize> = route
                        .backends
                        .iter()
                        .enumerate()
                        .map(|(i, b)| (b.addr, i))
                        .collect();
                    let index = table.backends().iter().map(|a| at[a]).collect();
                    route.maglev = Some((table, index));
                }
                route
            })
            .collect();
        // A backend in maintenance (in every listener that has it) is not
        // checked: the operator took it out, and its checks would only log
        // flaps while it is worked on.
        let in_service: FxHashSet<SocketAddrV4> = settings
            .listeners
            .iter()
            .flat_map(|l| &l.backends)
            .filter(|b| b.state != BackendState::Maint)
            .map(|b| b.addr)
            .collect();
        let checked: Vec<Arc<Backend>> = settings
            .all_backends()
            .into_iter()
            .filter(|a| in_service.contains(a))
            .map(|a| set.get(a))
            .collect();
        Routes {
            generation,
            routes,
            health: settings.health,
            timeouts: settings.timeouts,
            checked_index: checked
                .iter()
                .enumerate()
                .map(|(i, b)| (b.addr, i))
                .collect(),
            checked,
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
                let mut now = r.maglev_members();
                now.sort_unstable();
                let mut have = live.clone();
                have.sort_unstable();
                now != have
            }
        })
    }
}

impl Route {
    /// Whether backend `i` may take new sessions at all: weight above 0
    /// and not drained or in maintenance through the runtime API.
    #[inline]
    pub fn admits(&self, i: usize) -> bool {
        self.settings[i].weight > 0 && self.settings[i].state == BackendState::Ready
    }

    /// Whether some primary backend is up and admitting: backups wait
    /// until none is.
    pub fn primary_up(&self) -> bool {
        (0..self.backends.len())
            .any(|i| !self.settings[i].backup && self.admits(i) && self.backends[i].is_up())
    }

    /// What a Maglev table is built over: the admitting primaries that are
    /// up; else the admitting backups that are up; else every admitting
    /// backend (health may lag; a refusal is cheap).
    pub fn maglev_members(&self) -> Vec<usize> {
        let n = self.backends.len();
        let tier = |backup: bool| -> Vec<usize> {
            (0..n)
                .filter(|&i| {
                    self.settings[i].backup == backup && self.admits(i) && self.backends[i].is_up()
                })
                .collect()
        };
        let primaries = tier(false);
        if !primaries.is_empty() {
            return primaries;
        }
        let backups = tier(true);
        if !backups.is_empty() {
            return backups;
        }
        (0..n).filter(|&i| self.admits(i)).collect()
    }
}

/// Smooth weighted round-robin (as nginx does it): each turn every backend
/// gains its weight, the one with the most credit is chosen and pays the
/// total. Weights 5:1:1 give a,a,b,a,c,a,a rather than a,a,a,a,a,b,c.
fn smooth_schedule(backends: &[BackendSettings], backup: bool) -> Vec<u32> {
    let weight = |b: &BackendSettings| {
        if b.backup == backup {
            i64::from(b.weight)
        } else {
            0
        }
    };
    let total: i64 = backends.iter().map(weight).sum();
    let mut credit = vec![0i64; backends.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, b) in backends.iter().enumerate() {
            credit[i] += weight(b);
            if credit[i] > credit[best] {
                best = i;
            }
        }
        credit[best] -= total;
        out.push(best as u32);
    }
    out
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
