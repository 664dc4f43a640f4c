//! `proxy`: the load-balancer sidecar's app. Each accepted client
//! connection is relayed to a backend over an active open from the same
//! shard (the shard owns the local port, so the replies come home): both
//! legs of a proxied connection live on one shard, and nothing is shared
//! per packet.
//!
//! - Backpressure: bytes move from one leg's receive buffer straight into
//!   the other leg's send buffer, never more than fits, so a slow reader
//!   keeps the other side's window closed and memory stays bounded (one
//!   scratch buffer per shard). A direction blocked on a full send buffer
//!   resumes on `Writable` (asked for with `want_writable`), with a
//!   periodic re-check as a safety net.
//! - Client bytes that arrive before the upstream is connected stay in the
//!   client leg's receive buffer (unread) until it is.
//! - Half-close: a FIN on one leg becomes `shutdown` of the other once
//!   every byte before it has been relayed. Resets: a RST (or timeout) on
//!   one leg aborts the other.
//! - Retries: an upstream that refuses, times out or resets before any byte
//!   was relayed is replaced by another backend; when none is left the
//!   client is reset.
//! - Health checks: each shard checks its share of the backends with TCP
//!   connects (see [`health`]); results flip the backend's shared `up` flag.

pub mod balance;
pub mod health;
pub mod maglev;
pub mod pool;
pub mod proxy_protocol;
pub mod settings;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rustc_hash::FxHashMap;

use super::{App, Ctx, OpenError};
use crate::tcp::{ConnId, ConnectError, Event, Instant};
use balance::Pick;
use health::{HealthState, Transition};
use pool::{Backend, Failure, RouteCell, Routes, Slot};
use proxy_protocol::ProxyProtocol;
use settings::Health;

/// How often deadlines (connect, idle, health checks) are looked at.
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
}

impl Shared {
    pub fn new(routes: Routes) -> Self {
        Shared {
            routes: RouteCell::new(routes),
            draining: AtomicBool::new(false),
            accepting: AtomicBool::new(true),
            health_changes: AtomicU64::new(0),
            stats: ProxyStats::default(),
        }
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
    client_ip: Ipv4Addr,
    port: u16,
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

/// One backend's checks, on the shard that checks it.
struct Probe {
    state: HealthState,
    next_at: Instant,
    /// The check in flight and its deadline.
    pending: Option<(ConnId, Instant)>,
}

pub struct Proxy {
    shared: Arc<Shared>,
    shard: usize,
    shards: usize,
    routes: Arc<Routes>,
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
    scratch: Box<[u8]>,
    next_scan: Instant,
}

impl Proxy {
    pub fn new(shared: Arc<Shared>, shard: usize, shards: usize) -> Self {
        let routes = shared.routes.load();
        Proxy {
            shared,
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
            scratch: vec![0; 64 * 1024].into_boxed_slice(),
            next_scan: Instant::ZERO,
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
            self.routes = self.shared.routes.load();
        }
    }

    // ---- Sessions ----

    fn accept(&mut self, ctx: &mut Ctx<'_>, client: ConnId, port: u16) {
        self.refresh_routes();
        let Some(client_ip) = ctx.tuple(client).map(|t| *t.remote.ip()) else {
            return;
        };
        ProxyStats::bump(&self.shared.stats.sessions);
        let now = ctx.now();
        let session = Session {
            client,
            client_ip,
            port,
            upstream: None,
            backend: None,
            tried: Vec::new(),
            connected: false,
            connect_deadline: now,
            last_active: now,
            relayed: 0,
            client_fin: false,
            upstream_fin: false,
            client_shut: false,
            upstream_shut: false,
            client_gone: false,
            upstream_gone: false,
            blocked: false,
            waiting_port: false,
            waiting_slot: false,
        };
        let sid = match self.free.pop() {
            Some(sid) => {
                self.sessions[sid as usize] = Some(session);
                sid
            }
            None => {
                self.sessions.push(Some(session));
                (self.sessions.len() - 1) as u32
            }
        };
        self.legs.insert(client, (sid, Leg::Client));
        self.connect_next(ctx, sid);
    }

    /// Opens the upstream leg to the next backend to try; queues the
    /// client while every candidate is at its `max_connections`; resets the
    /// client when none is left.
    fn connect_next(&mut self, ctx: &mut Ctx<'_>, sid: u32) {
        let routes = self.routes.clone();
        let now = ctx.now();
        loop {
            let Some(s) = self.sessions[sid as usize].as_mut() else {
                return;
            };
            let pick = match routes.route(s.port) {
                None => Pick::None,
                Some(r) => match r.pick(s.client_ip, &s.tried, now) {
                    Pick::Backend(i) => {
                        let limit = r.settings[i].max_connections;
                        match Slot::reserve(&r.backends[i], limit) {
                            Some(slot) => {
                                if !s.tried.is_empty() {
                                    ProxyStats::bump(&self.shared.stats.retries);
                                }
                                s.tried.push(slot.addr);
                                s.connect_deadline = now.saturating_add(routes.timeouts.connect);
                                match self.open_upstream(ctx, sid, slot) {
                                    Ok(()) => return,
                                    Err(Some(why)) => {
                                        tracing::debug!(
                                            why = why.label(),
                                            "upstream connect failed"
                                        );
                                        continue;
                                    }
                                    // Waiting for a local port; see `retry_port_waiters`.
                                    Err(None) => return,
                                }
                            }
                            // Another shard took the last slot meanwhile.
                            None => Pick::Full,
                        }
                    }
                    other => other,
                },
            };
            let Some(s) = self.sessions[sid as usize].as_mut() else {
                return;
            };
            if pick == Pick::Full {
                if s.waiting_slot {
                    return;
                }
                if self.slot_waiters.len() < MAX_QUEUED {
                    ProxyStats::bump(&self.shared.stats.queued);
                    s.waiting_slot = true;
                    s.connect_deadline = now.saturating_add(routes.timeouts.connect);
                    self.slot_waiters.push_back(sid);
                    return;
                }
                ProxyStats::bump(&self.shared.stats.queue_timeouts);
            }
            ProxyStats::bump(&self.shared.stats.no_backend);
            tracing::debug!(client = %s.client_ip, port = s.port, "no backend left: client reset");
            let _ = ctx.abort(s.client);
            s.client_gone = true;
            self.end(sid);
            return;
        }
    }

    /// Clients waiting for a backend slot, oldest first: each tries again;
    /// one past its deadline (`connect_ms` after it queued) is reset.
    fn retry_slot_waiters(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now();
        for _ in 0..self.slot_waiters.len() {
            let Some(sid) = self.slot_waiters.pop_front() else {
                break;
            };
            let Some(s) = self.sessions[sid as usize].as_mut() else {
                continue;
            };
            if !s.waiting_slot || s.client_gone {
                s.waiting_slot = false;
                continue;
            }
            if now >= s.connect_deadline {
                s.waiting_slot = false;
                ProxyStats::bump(&self.shared.stats.queue_timeouts);
                ProxyStats::bump(&self.shared.stats.no_backend);
                let _ = ctx.abort(s.client);
                s.client_gone = true;
                self.end(sid);
                continue;
            }
            // Still waiting: connect_next re-queues it (at the back) when
            // every candidate is still full.
            s.waiting_slot = false;
            let deadline = s.connect_deadline;
            self.connect_next(ctx, sid);
            if let Some(s) = self.sessions[sid as usize].as_mut()
                && s.waiting_slot
            {
                // Keeps its original deadline.
                s.connect_deadline = deadline;
            }
        }
    }

    /// One connect to `backend` for session `sid`. With no local port free
    /// (every tuple to it busy or in a TIME_WAIT too young to reuse), the
    /// session waits for one until its connect deadline instead of failing:
    /// `Err(None)`. Other failures are counted and returned.
    fn open_upstream(
        &mut self,
        ctx: &mut Ctx<'_>,
        sid: u32,
        backend: Slot,
    ) -> Result<(), Option<Failure>> {
        let Some(s) = self.sessions[sid as usize].as_mut() else {
            return Ok(());
        };
        match ctx.connect(backend.addr) {
            Ok(up) => {
                s.upstream = Some(up);
                s.upstream_gone = false;
                s.backend = Some(backend);
                self.legs.insert(up, (sid, Leg::Upstream));
                Ok(())
            }
            Err(OpenError::Connect(ConnectError::NoPort | ConnectError::TupleInUse))
                if ctx.now() < s.connect_deadline =>
            {
                s.backend = Some(backend);
                if !s.waiting_port {
                    s.waiting_port = true;
                    self.port_waiters.push_back(sid);
                }
                Err(None)
            }
            Err(e) => {
                let why = match e {
                    OpenError::Connect(ConnectError::NoPort | ConnectError::TupleInUse) => {
                        Failure::NoPort
                    }
                    _ => Failure::Unreachable,
                };
                backend.failed(why);
                Err(Some(why))
            }
        }
    }

    /// Sessions waiting for a local port towards their backend, oldest
    /// first: they get ports as TIME_WAIT tuples become reusable, so a burst
    /// beyond the port range's rate is delayed rather than reset.
    fn retry_port_waiters(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now();
        let mut next = now.saturating_add(PORT_RETRY_EVERY);
        let mut busy: Vec<SocketAddrV4> = Vec::new();
        for _ in 0..self.port_waiters.len() {
            let Some(sid) = self.port_waiters.pop_front() else {
                break;
            };
            let Some(s) = self.sessions[sid as usize].as_mut() else {
                continue;
            };
            if !s.waiting_port || s.client_gone {
                s.waiting_port = false;
                continue;
            }
            let Some(backend) = s.backend.take() else {
                s.waiting_port = false;
                continue;
            };
            if busy.contains(&backend.addr) && ctx.now() < s.connect_deadline {
                // Keeps its place: no port for this backend this pass.
                s.backend = Some(backend);
                self.port_waiters.push_back(sid);
                continue;
            }
            s.waiting_port = false;
            let addr = backend.addr;
            match self.open_upstream(ctx, sid, backend) {
                Ok(()) => {}
                Err(None) => {
                    busy.push(addr);
                    if let Some(at) = ctx.next_reuse_at(addr) {
                        next = next.min(at.max(now));
                    }
                }
                Err(Some(_)) => {
                    if let Some(s) = self.sessions[sid as usize].as_mut() {
                        s.backend = None;
                    }
                    self.connect_next(ctx, sid);
                }
            }
        }
        self.next_port_retry = next;
    }

    /// The upstream attempt failed before any byte was relayed: try the
    /// next backend.
    fn retry(&mut self, ctx: &mut Ctx<'_>, sid: u32, why: Failure) {
        let Some(s) = self.sessions[sid as usize].as_mut() else {
            return;
        };
        if let Some(up) = s.upstream.take() {
            self.legs.remove(&up);
            if !s.upstream_gone {
                let _ = ctx.abort(up);
            }
        }
        if let Some(b) = s.backend.take() {
            b.failed(why);
            if s.connected {
                b.closed();
            }
        }
        s.connected = false;
        s.upstream_gone = false;
        s.upstream_fin = false;
        s.upstream_shut = false;
        if s.client_gone {
            self.end(sid);
            return;
        }
        self.connect_next(ctx, sid);
    }

    /// Forgets a session once both legs are gone (or aborts what is left).
    fn end(&mut self, sid: u32) {
        let Some(s) = self.sessions[sid as usize].take() else {
            return;
        };
        self.legs.remove(&s.client);
        if let Some(up) = s.upstream {
            self.legs.remove(&up);
        }
        if s.connected
            && let Some(b) = &s.backend
        {
            b.closed();
        }
        self.free.push(sid);
    }

    fn finish_if_done(&mut self, sid: u32) {
        if let Some(s) = &self.sessions[sid as usize]
            && s.client_gone
            && (s.upstream_gone || s.upstream.is_none())
        {
            self.end(sid);
        }
    }

    /// Aborts whatever leg is still open and forgets the session.
    fn abort_both(&mut self, ctx: &mut Ctx<'_>, sid: u32) {
        if let Some(s) = self.sessions[sid as usize].as_mut() {
            if !s.client_gone {
                let _ = ctx.abort(s.client);
                s.client_gone = true;
            }
            if let Some(up) = s.upstream
                && !s.upstream_gone
            {
                let _ = ctx.abort(up);
                s.upstream_gone = true;
            }
        }
        self.end(sid);
    }

    /// Relays both directions as far as the send buffers allow.
    fn relay_both(&mut self, ctx: &mut Ctx<'_>, sid: u32) {
        let Some(s) = self.sessions[sid as usize].as_mut() else {
            return;
        };
        if !s.connected {
            return;
        }
        let a = relay(ctx, s, Leg::Client, &mut self.scratch);
        let b = relay(ctx, s, Leg::Upstream, &mut self.scratch);
        if (a || b) && !s.blocked {
            s.blocked = true;
            self.blocked.push(sid);
        }
    }

    fn on_client(&mut self, ctx: &mut Ctx<'_>, sid: u32, event: Event) {
        let Some(s) = self.sessions[sid as usize].as_mut() else {
            return;
        };
        match event {
            Event::Readable | Event::Writable => self.relay_both(ctx, sid),
            Event::PeerClosed => {
                s.client_fin = true;
                self.relay_both(ctx, sid);
            }
            Event::Closed => {
                s.client_gone = true;
                self.legs.remove(&s.client);
                self.finish_if_done(sid);
            }
            Event::Reset | Event::TimedOut | Event::Refused | Event::Unreachable => {
                s.client_gone = true;
                if s.upstream.is_some() && !s.upstream_gone {
                    ProxyStats::bump(&self.shared.stats.resets_propagated);
                }
                self.abort_both(ctx, sid);
            }
            Event::Accepted { .. } | Event::Connected => {}
        }
    }

    fn on_upstream(&mut self, ctx: &mut Ctx<'_>, sid: u32, event: Event) {
        let Some(s) = self.sessions[sid as usize].as_mut() else {
            return;
        };
        match event {
            Event::Connected => {
                s.connected = true;
                s.last_active = ctx.now();
                // The PROXY header goes before any client byte; the send
                // buffer of a fresh connection has room for it.
                let version = self
                    .routes
                    .route(s.port)
                    .map_or(ProxyProtocol::Off, |r| r.proxy_protocol);
                if version != ProxyProtocol::Off
                    && let (Some(t), Some(up)) = (ctx.tuple(s.client), s.upstream)
                {
                    let mut header = [0u8; proxy_protocol::MAX_HEADER];
                    let n = proxy_protocol::encode(version, t.remote, t.local, &mut header);
                    if !matches!(ctx.send(up, &header[..n]), Ok(sent) if sent == n) {
                        self.abort_both(ctx, sid);
                        return;
                    }
                }
                if let Some(b) = &s.backend {
                    b.opened();
                }
                // Client bytes (and its FIN) that arrived meanwhile go now.
                self.relay_both(ctx, sid);
            }
            Event::Readable | Event::Writable => self.relay_both(ctx, sid),
            Event::PeerClosed => {
                s.upstream_fin = true;
                self.relay_both(ctx, sid);
            }
            Event::Closed => {
                s.upstream_gone = true;
                if let Some(up) = s.upstream {
                    self.legs.remove(&up);
                }
                self.finish_if_done(sid);
            }
            Event::Refused | Event::TimedOut | Event::Reset | Event::Unreachable
                if s.relayed == 0 =>
            {
                s.upstream_gone = true;
                let why = match event {
                    Event::Refused => Failure::Refused,
                    Event::TimedOut => Failure::Timeout,
                    Event::Unreachable => Failure::Unreachable,
                    _ => Failure::Reset,
                };
                self.retry(ctx, sid, why);
            }
            Event::Refused | Event::TimedOut | Event::Reset | Event::Unreachable => {
                s.upstream_gone = true;
                if !s.client_gone {
                    ProxyStats::bump(&self.shared.stats.resets_propagated);
                }
                self.abort_both(ctx, sid);
            }
            Event::Accepted { .. } => {}
        }
    }

    /// Re-tries blocked directions. `want_writable` asks the engine for a
    /// `Writable` when space frees; this is the safety net, every scan.
    fn unblock(&mut self, ctx: &mut Ctx<'_>) {
        if self.blocked.is_empty() {
            return;
        }
        let blocked = std::mem::take(&mut self.blocked);
        for &sid in &blocked {
            if let Some(s) = self.sessions[sid as usize].as_mut() {
                s.blocked = false;
            }
        }
        for sid in blocked {
            self.relay_both(ctx, sid);
        }
    }

    /// Connect and idle deadlines.
    fn check_deadlines(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now();
        let idle = self.routes.timeouts.idle;
        for sid in 0..self.sessions.len() as u32 {
            let Some(s) = &self.sessions[sid as usize] else {
                continue;
            };
            if !s.connected && s.upstream.is_some() && now >= s.connect_deadline {
                self.retry(ctx, sid, Failure::Timeout);
            } else if s.connected
                && let Some(idle) = idle
                && now.saturating_duration_since(s.last_active) >= idle
            {
                ProxyStats::bump(&self.shared.stats.idle_timeouts);
                self.abort_both(ctx, sid);
            }
        }
    }

    // ---- Health checks ----

    fn check_health(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now();
        let routes = self.routes.clone();
        let draining = self.shared.draining.load(Ordering::Relaxed);
        // Forget backends no longer ours to check.
        self.probes.retain(|addr, probe| {
            let mine = routes
                .checked
                .iter()
                .position(|b| b.addr == *addr)
                .is_some_and(|i| i % self.shards == self.shard);
            if !mine && let Some((id, _)) = probe.pending {
                let _ = ctx.abort(id);
                self.probe_ids.remove(&id);
            }
            mine
        });
        let h = routes.health;
        for (i, backend) in routes.checked.iter().enumerate() {
            if i % self.shards != self.shard {
                continue;
            }
            let probe = self.probes.entry(backend.addr).or_insert_with(|| Probe {
                state: HealthState::new(backend.is_up()),
                // Spread the first checks over the interval.
                next_at: now.saturating_add(h.interval.mul_f64((i as f64 * 0.37).fract())),
                pending: None,
            });
            if let Some((id, deadline)) = probe.pending {
                if now >= deadline {
                    let _ = ctx.abort(id);
                    self.probe_ids.remove(&id);
                    probe.pending = None;
                    record(
                        &self.shared,
                        h,
                        backend,
                        probe,
                        false,
                        "check timed out",
                        now,
                    );
                }
                continue;
            }
            if draining || now < probe.next_at {
                continue;
            }
            probe.next_at = now.saturating_add(h.interval);
            match ctx.connect(backend.addr) {
                Ok(id) => {
                    probe.pending = Some((id, now.saturating_add(h.timeout)));
                    self.probe_ids.insert(id, backend.addr);
                }
                // Our port range is busy: says nothing about the backend.
                Err(OpenError::Connect(ConnectError::NoPort | ConnectError::TupleInUse)) => {}
                Err(e) => {
                    if matches!(e, OpenError::Neighbor { .. }) {
                        backend.failed(Failure::Unreachable);
                    }
                    let why = e.to_string();
                    record(&self.shared, h, backend, probe, false, &why, now);
                }
            }
        }
    }

    fn on_probe(&mut self, ctx: &mut Ctx<'_>, id: ConnId, addr: SocketAddrV4, event: Event) {
        let ok = match event {
            Event::Connected => true,
            Event::Refused | Event::Reset | Event::TimedOut | Event::Closed => false,
            // Counted with the backend's failures too: a health check that
            // finds no next hop is the first sign of a dead host.
            Event::Unreachable => {
                if let Some(b) = self.routes.checked.iter().find(|b| b.addr == addr) {
                    b.failed(Failure::Unreachable);
                }
                false
            }
            _ => return,
        };
        self.probe_ids.remove(&id);
        if ok {
            // Done with it: an orderly close (the TIME_WAIT is ours and
            // recycled like any other).
            let _ = ctx.close(id);
        }
        let Some(backend) = self.routes.checked.iter().find(|b| b.addr == addr).cloned() else {
            return;
        };
        let Some(probe) = self.probes.get_mut(&addr) else {
            return;
        };
        if probe.pending.is_some_and(|(p, _)| p == id) {
            probe.pending = None;
            let why = format!("{event:?}").to_lowercase();
            let now = ctx.now();
            record(
                &self.shared,
                self.routes.health,
                &backend,
                probe,
                ok,
                &why,
                now,
            );
        }
    }
}

/// Feeds one check result to a backend's state machine; on a transition,
/// flips its shared flag and logs one line.
fn record(
    shared: &Shared,
    h: Health,
    backend: &Backend,
    probe: &mut Probe,
    ok: bool,
    why: &str,
    now: Instant,
) {
    let counter = if ok {
        &backend.checks_ok
    } else {
        &backend.checks_failed
    };
    Backend::add(counter, 1);
    match probe.state.record(ok, h.fall, h.rise) {
        Some(Transition::Down) => {
            backend.set_up(false);
            shared.health_changes.fetch_add(1, Ordering::Release);
            tracing::warn!(backend = %backend.addr, fall = h.fall, last = why, "backend down: ejected");
        }
        Some(Transition::Up) => {
            // Slow start ramps from here.
            backend.came_up(now);
            backend.set_up(true);
            shared.health_changes.fetch_add(1, Ordering::Release);
            tracing::warn!(backend = %backend.addr, rise = h.rise, "backend up: readmitted");
        }
        None => {}
    }
}

/// Moves what fits from leg `from`'s receive buffer into the other leg's
/// send buffer; propagates `from`'s FIN once all its bytes are through.
/// Returns whether bytes are left waiting for send space.
fn relay(ctx: &mut Ctx<'_>, s: &mut Session, from: Leg, scratch: &mut [u8]) -> bool {
    let Some(up) = s.upstream else {
        return false;
    };
    let (src, dst, src_fin, dst_shut, dst_gone) = match from {
        Leg::Client => (s.client, up, s.client_fin, s.upstream_shut, s.upstream_gone),
        Leg::Upstream => (up, s.client, s.upstream_fin, s.client_shut, s.client_gone),
    };
    if dst_shut || dst_gone {
        return false;
    }
    let mut moved = 0usize;
    let mut blocked = false;
    loop {
        let room = ctx.send_capacity(dst).min(scratch.len());
        if room == 0 {
            blocked = ctx.recv_available(src) > 0;
            if blocked {
                ctx.want_writable(dst);
            }
            break;
        }
        let n = match ctx.recv(src, &mut scratch[..room]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        match ctx.send(dst, &scratch[..n]) {
            Ok(sent) => {
                // send_capacity promised the room; a short send would lose
                // bytes already taken from the other leg.
                debug_assert_eq!(sent, n, "send_capacity promised room");
                moved += sent;
            }
            Err(_) => break,
        }
    }
    if moved > 0 {
        s.relayed += moved as u64;
        s.last_active = ctx.now();
        if let Some(b) = &s.backend {
            let counter = if from == Leg::Client {
                &b.bytes_to
            } else {
                &b.bytes_from
            };
            Backend::add(counter, moved as u64);
        }
    }
    if src_fin && !blocked && ctx.recv_available(src) == 0 {
        let _ = ctx.shutdown(dst);
        match from {
            Leg::Client => s.upstream_shut = true,
            Leg::Upstream => s.client_shut = true,
        }
    }
    blocked
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
        let now = ctx.now();
        if now >= self.next_scan {
            self.next_scan = now.saturating_add(SCAN_EVERY);
            if !self.slot_waiters.is_empty() {
                self.retry_slot_waiters(ctx);
            }
            self.unblock(ctx);
            self.check_deadlines(ctx);
            self.check_health(ctx);
        }
    }
}
