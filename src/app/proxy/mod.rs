//! `proxy`: the load-balancer sidecar's app. Each accepted client
//! connection is relayed to a backend over an active open from the same
//! shard (the shard owns the local port, so the replies come home): both
//! legs of a proxied connection live on one shard, and nothing is shared
//! per packet.
//!
//! - Backpressure: bytes move from one leg's receive buffer straight into
//!   the other leg's send buffer, never more than fits, so a slow reader
//!   keeps the other side's window closed and memory stays bounded; one
//!   copy per byte, chunk to chunk (`Endpoint::relay`), with no buffer in
//!   between. A direction blocked on a full send buffer
//!   resumes on `Writable` (asked for with `want_writable`), with a
//!   periodic re-check as a safety net.
//! - Client bytes that arrive before the upstream is connected stay in the
//!   client leg's receive buffer (unread) until it is.
//! - Half-close: a FIN on one leg becomes `shutdown` of the other once
//!   every byte before it has been relayed. Resets: a RST (or timeout) on
//!   one leg aborts the other.
//! - Retries: an upstream that refuses, times out or resets before any byte
//!   was relayed is replaced by another backend, at most `retries` times
//!   (default: each backend once); then the client is reset. With
//!   `passive_fall`, failed connects on client sessions eject a backend.
//! - `accept_proxy`: the session first reads the PROXY header of the
//!   balancer in front (see [`header`]); the client it names is the
//!   session's client for the backend choice, the header sent upstream and
//!   the access log.
//! - Deadlines (PROXY header, connect, idle, half-close, lifetime) are
//!   per-session entries in a timer heap ([`timers`]): a tick touches only
//!   the sessions whose deadline is due, never every session.
//! - Health checks: each shard checks its share of the backends with TCP
//!   connects (see [`health`]); results flip the backend's shared `up` flag.
//!
//! Layout: `session` (lifecycle, backend choice, waits, retries),
//! `header` (the PROXY header accepted from a balancer), `timers`
//! (deadlines), `relay` (bytes and leg events), `checks` (health check
//! scheduling); routing data in `pool`, `balance`, `maglev`.

pub mod access;
pub mod balance;
pub mod health;
pub mod maglev;
pub mod pool;
pub mod proxy_protocol;
pub mod settings;
#[cfg(test)]
mod tests;

mod checks;
mod header;
mod relay;
mod session;
mod timers;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustc_hash::FxHashMap;

use super::{App, Ctx};
use crate::tcp::{ConnId, Event, Instant, TimerQueue};
use checks::Probe;
use pool::{RouteCell, Routes, Slot};

/// How often health checks, slot waiters and blocked directions are
/// looked at (session deadlines are timers, see [`timers`]).
const SCAN_EVERY: Duration = Duration::from_millis(5);

/// Sessions waiting for a local port try again when the engine says a
/// TIME_WAIT tuple becomes reusable, and at least this often (a port may
/// also free when a connection ends without TIME_WAIT).
const PORT_RETRY_EVERY: Duration = Duration::from_millis(5);

/// Clients waiting for a backend below its `max_connections`, per shard at
/// most (more are reset at once and counted).
const MAX_QUEUED: usize = 4096;

/// Proxy-wide counters (all shards).
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Client connections accepted.
    pub sessions: AtomicU64,
    /// Upstream attempts after the first for a client.
    pub retries: AtomicU64,
    /// Clients reset because no backend could be connected.
    pub no_backend: AtomicU64,
    /// Proxied connections reset on both legs for inactivity.
    pub idle_timeouts: AtomicU64,
    /// Resets (or timeouts) on one leg turned into an abort of the other.
    pub resets_propagated: AtomicU64,
    /// Clients that waited for a backend slot (`max_connections`).
    pub queued: AtomicU64,
    /// Of those, reset after `connect_ms` without a slot, or at once
    /// because the queue was full.
    pub queue_timeouts: AtomicU64,
    /// Clients reset because `retries` other backends failed too.
    pub retries_exhausted: AtomicU64,
    /// Sessions reset after `client_fin_ms` half-closed and inactive.
    pub client_fin_timeouts: AtomicU64,
    /// Sessions reset at `max_session_ms`.
    pub max_session_timeouts: AtomicU64,
    /// `accept_proxy`: headers accepted, and connections reset for a
    /// header that was not valid, was valid but for what we cannot carry
    /// (IPv6, UNIX), did not complete within `proxy_header_ms`, or did not
    /// come before the client closed.
    pub headers_accepted: AtomicU64,
    pub headers_invalid: AtomicU64,
    pub headers_unsupported: AtomicU64,
    pub headers_timeout: AtomicU64,
    pub headers_closed: AtomicU64,
}

impl ProxyStats {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the control thread and all shards share.
pub struct Shared {
    pub routes: RouteCell,
    /// Set before the stack drains: stop health checks.
    pub draining: AtomicBool,
    /// Cleared at SIGTERM: `/ready` says 503 from then on (new connections
    /// are still served through `announce_grace_ms`).
    pub accepting: AtomicBool,
    /// Bumped at every backend state change (the control thread then
    /// rebuilds the Maglev tables).
    pub health_changes: AtomicU64,
    pub stats: ProxyStats,
    /// Per shard, the routing generation it runs by (registered once at
    /// start; stored by the shard, read by the runtime API to say when a
    /// change is in effect everywhere).
    seen: Mutex<Vec<Arc<AtomicU64>>>,
    /// The access log's rings (`access_log`), when it is on.
    pub access: Option<Arc<access::AccessLog>>,
}

impl Shared {
    pub fn new(routes: Routes) -> Self {
        Shared {
            routes: RouteCell::new(routes),
            draining: AtomicBool::new(false),
            accepting: AtomicBool::new(true),
            health_changes: AtomicU64::new(0),
            stats: ProxyStats::default(),
            seen: Mutex::new(Vec::new()),
            access: None,
        }
    }

    /// With an access log: each shard gets a ring of `log`.
    pub fn with_access_log(mut self, log: Arc<access::AccessLog>) -> Self {
        self.access = Some(log);
        self
    }

    /// A shard's slot for the generation it runs by.
    fn register_shard(&self, generation: u64) -> Arc<AtomicU64> {
        let slot = Arc::new(AtomicU64::new(generation));
        self.seen.lock().expect("seen lock").push(slot.clone());
        slot
    }

    /// The oldest routing generation some shard still runs by (`None`
    /// before any shard started). Never touched by a shard: the control
    /// and API threads call it.
    pub fn oldest_seen(&self) -> Option<u64> {
        let seen = self.seen.lock().expect("seen lock");
        seen.iter().map(|g| g.load(Ordering::Acquire)).min()
    }
}

impl Shared {
    /// `/ready`: whether a BGP speaker or an orchestrator should send new
    /// connections here: not after SIGTERM, and not while every backend is
    /// down. The body says why.
    pub fn readiness(&self) -> (bool, String) {
        if !self.accepting.load(Ordering::Relaxed) || self.draining.load(Ordering::Relaxed) {
            return (false, "draining\n".into());
        }
        let routes = self.routes.load();
        let up = routes
            .routes
            .iter()
            .flat_map(|r| &r.backends)
            .any(|b| b.is_up());
        if up {
            (true, "ready\n".into())
        } else {
            (false, "no backend up\n".into())
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Leg {
    Client,
    Upstream,
}

/// One proxied connection.
struct Session {
    client: ConnId,
    /// The client: the connection's peer, or the one the balancer's PROXY
    /// header names (`accept_proxy`).
    client_ip: Ipv4Addr,
    client_port: u16,
    /// What the client connected to (likewise), for the header sent upstream.
    dst: SocketAddrV4,
    port: u16,
    /// Tells this session from a later one in the same slot (timer entries).
    serial: u32,
    /// The live timer entry's deadline (see [`timers`]).
    timer: Option<Instant>,
    /// `accept_proxy`: the header being read, until it is complete.
    header: Option<Box<header::HeaderBuf>>,
    /// Client bytes read with the header, sent upstream first.
    early: Option<Box<[u8]>>,
    /// When the first FIN (either leg) arrived, for `client_fin_ms`.
    half_closed_at: Option<Instant>,
    /// When it was accepted (for the access log's duration).
    started: Instant,
    /// Bytes relayed client -> backend and back.
    bytes_to: u64,
    bytes_from: u64,
    /// How it ended, for the access log (set where it ends otherwise than
    /// by an orderly close).
    outcome: access::End,
    /// The current upstream attempt, or the established upstream leg.
    upstream: Option<ConnId>,
    /// The backend of `upstream` (holding one of its slots).
    backend: Option<Slot>,
    tried: Vec<SocketAddrV4>,
    /// The upstream handshake completed.
    connected: bool,
    /// While connecting: when to give up on this backend.
    connect_deadline: Instant,
    last_active: Instant,
    relayed: u64,
    /// The client's FIN arrived.
    client_fin: bool,
    /// The upstream's FIN arrived.
    upstream_fin: bool,
    /// We shut down our sending side towards the client / the upstream.
    client_shut: bool,
    upstream_shut: bool,
    /// The leg's id is invalid (it ended).
    client_gone: bool,
    upstream_gone: bool,
    /// Queued in `Proxy::blocked`.
    blocked: bool,
    /// Queued in `Proxy::port_waiters` (`backend` is the one waited for).
    waiting_port: bool,
    /// Queued in `Proxy::slot_waiters` until `connect_deadline`.
    waiting_slot: bool,
}

pub struct Proxy {
    shared: Arc<Shared>,
    shard: usize,
    shards: usize,
    routes: Arc<Routes>,
    /// Where this shard says which generation it runs by.
    seen: Arc<AtomicU64>,
    /// This shard's access log ring.
    access: Option<access::Ring>,
    sessions: Vec<Option<Session>>,
    free: Vec<u32>,
    legs: FxHashMap<ConnId, (u32, Leg)>,
    /// Sessions with a direction waiting for send space.
    blocked: Vec<u32>,
    /// Sessions waiting for a local port towards their backend.
    port_waiters: VecDeque<u32>,
    next_port_retry: Instant,
    /// Sessions waiting for a backend below its `max_connections`.
    slot_waiters: VecDeque<u32>,
    probes: FxHashMap<SocketAddrV4, Probe>,
    probe_ids: FxHashMap<ConnId, SocketAddrV4>,
    next_scan: Instant,
    /// Session deadlines: one live entry per session.
    timers: TimerQueue,
    next_serial: u32,
}

impl Proxy {
    pub fn new(shared: Arc<Shared>, shard: usize, shards: usize) -> Self {
        let routes = shared.routes.load();
        let seen = shared.register_shard(routes.generation);
        let access = shared.access.as_ref().map(|log| log.ring());
        Proxy {
            shared,
            seen,
            access,
            shard,
            shards: shards.max(1),
            routes,
            sessions: Vec::new(),
            free: Vec::new(),
            legs: FxHashMap::default(),
            blocked: Vec::new(),
            port_waiters: VecDeque::new(),
            next_port_retry: Instant::ZERO,
            slot_waiters: VecDeque::new(),
            probes: FxHashMap::default(),
            probe_ids: FxHashMap::default(),
            next_scan: Instant::ZERO,
            timers: TimerQueue::default(),
            next_serial: 0,
        }
    }

    /// Proxied connections open on this shard.
    pub fn sessions(&self) -> usize {
        self.legs
            .values()
            .filter(|(_, leg)| *leg == Leg::Client)
            .count()
    }

    #[inline]
    fn refresh_routes(&mut self) {
        if self.shared.routes.generation() != self.routes.generation {
            let before = self.routes.timeouts;
            self.routes = self.shared.routes.load();
            self.seen.store(self.routes.generation, Ordering::Release);
            if self.routes.timeouts != before {
                // A reload changed a timeout: every session's deadline
                // again (once per such reload, not per tick).
                self.rearm_all();
            }
        }
    }
}

impl App for Proxy {
    fn on_event(&mut self, ctx: &mut Ctx<'_>, id: ConnId, event: Event) {
        if let Event::Accepted { port } = event {
            self.accept(ctx, id, port);
            return;
        }
        if let Some(&(sid, leg)) = self.legs.get(&id) {
            match leg {
                Leg::Client => self.on_client(ctx, sid, event),
                Leg::Upstream => self.on_upstream(ctx, sid, event),
            }
            // A deadline may have come closer (connected, half-closed).
            self.arm(sid);
        } else if let Some(&addr) = self.probe_ids.get(&id) {
            self.on_probe(ctx, id, addr, event);
        }
        // Anything else: a closed check or a leg we aborted; nothing to do.
    }

    fn on_tick(&mut self, ctx: &mut Ctx<'_>) {
        self.refresh_routes();
        if !self.port_waiters.is_empty() && ctx.now() >= self.next_port_retry {
            // Every attempt that finds no port is counted by the engine
            // (turnstile_connect_failures_total{reason="no_port"}): at most
            // one per busy backend per retry.
            self.retry_port_waiters(ctx);
        }
        // Only the sessions whose deadline is due: a peek at the heap's
        // top when none is.
        self.fire_timers(ctx);
        let now = ctx.now();
        if now >= self.next_scan {
            self.next_scan = now.saturating_add(SCAN_EVERY);
            if !self.slot_waiters.is_empty() {
                self.retry_slot_waiters(ctx);
            }
            self.unblock(ctx);
            self.check_health(ctx);
        }
    }
}
