//! A session's lifecycle: accept, the choice of a backend and the upstream
//! connect (with its waits for a local port or a backend slot), retries,
//! deadlines, and the end.

use std::net::SocketAddrV4;

use std::sync::atomic::Ordering;

use super::balance::Pick;
use super::header::HeaderBuf;
use super::pool::{Failure, Slot};
use super::{Leg, MAX_QUEUED, PORT_RETRY_EVERY, Proxy, ProxyStats, Session, access};
use crate::app::{Ctx, OpenError};
use crate::tcp::{ConnId, ConnectError, FourTuple, Instant};

impl Session {
    /// A session for client connection `client` (`tuple` as seen here) on
    /// listener `port`, accepted at `now`, before any upstream.
    pub(super) fn new(
        client: ConnId,
        tuple: FourTuple,
        port: u16,
        serial: u32,
        header: Option<Box<HeaderBuf>>,
        now: Instant,
    ) -> Session {
        Session {
            client,
            client_ip: *tuple.remote.ip(),
            client_port: tuple.remote.port(),
            dst: tuple.local,
            port,
            serial,
            timer: None,
            header,
            early: None,
            half_closed_at: None,
            started: now,
            bytes_to: 0,
            bytes_from: 0,
            outcome: access::End::Closed,
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
        }
    }
}

impl Proxy {
    pub(super) fn accept(&mut self, ctx: &mut Ctx<'_>, client: ConnId, port: u16) {
        self.refresh_routes();
        let Some(tuple) = ctx.tuple(client) else {
            return;
        };
        ProxyStats::bump(&self.shared.stats.sessions);
        let now = ctx.now();
        let accept_proxy = self.routes.route(port).is_some_and(|r| r.accept_proxy);
        self.next_serial = self.next_serial.wrapping_add(1);
        let header = accept_proxy
            .then(|| HeaderBuf::new(now.saturating_add(self.routes.timeouts.proxy_header)));
        let session = Session::new(client, tuple, port, self.next_serial, header, now);
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
        if accept_proxy {
            // Bytes may have come with the handshake's last ACK.
            if ctx.recv_available(client) > 0 {
                self.read_header(ctx, sid, false);
            }
        } else {
            self.connect_next(ctx, sid);
        }
        self.arm(sid);
    }

    /// Opens the upstream leg to the next backend to try; queues the
    /// client while every candidate is at its `max_connections`; resets the
    /// client when none is left.
    pub(super) fn connect_next(&mut self, ctx: &mut Ctx<'_>, sid: u32) {
        let routes = self.routes.clone();
        let now = ctx.now();
        loop {
            let Some(s) = self.sessions[sid as usize].as_mut() else {
                return;
            };
            let route = routes.route(s.port);
            // `retries`: the first attempt and at most that many others.
            let exhausted = route
                .and_then(|r| r.retries)
                .is_some_and(|cap| s.tried.len() > cap as usize);
            if exhausted {
                ProxyStats::bump(&self.shared.stats.retries_exhausted);
            }
            let pick = match route {
                _ if exhausted => Pick::None,
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
            s.outcome = access::End::NoBackend;
            self.end_at(sid, now);
            return;
        }
    }

    /// Clients waiting for a backend slot, oldest first: each tries again;
    /// one past its deadline (`connect_ms` after it queued) is reset.
    pub(super) fn retry_slot_waiters(&mut self, ctx: &mut Ctx<'_>) {
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
                s.outcome = access::End::NoBackend;
                self.end_at(sid, now);
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
    pub(super) fn open_upstream(
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
                // The connect deadline.
                self.arm(sid);
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
                if why == Failure::Unreachable {
                    self.passive_failure(&backend);
                }
                Err(Some(why))
            }
        }
    }

    /// Sessions waiting for a local port towards their backend, oldest
    /// first: they get ports as TIME_WAIT tuples become reusable, so a burst
    /// beyond the port range's rate is delayed rather than reset.
    pub(super) fn retry_port_waiters(&mut self, ctx: &mut Ctx<'_>) {
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
    pub(super) fn retry(&mut self, ctx: &mut Ctx<'_>, sid: u32, why: Failure) {
        let Some(s) = self.sessions[sid as usize].as_mut() else {
            return;
        };
        if let Some(up) = s.upstream.take() {
            self.legs.remove(&up);
            if !s.upstream_gone {
                let _ = ctx.abort(up);
            }
        }
        let mut failed_connect = None;
        if let Some(b) = s.backend.take() {
            b.failed(why);
            if s.connected {
                b.closed();
            } else if why != Failure::NoPort {
                failed_connect = Some(b);
            }
        }
        if !s.client_fin {
            s.half_closed_at = None;
        }
        s.connected = false;
        s.upstream_gone = false;
        s.upstream_fin = false;
        s.upstream_shut = false;
        let client_gone = s.client_gone;
        if let Some(b) = failed_connect {
            self.passive_failure(&b);
        }
        if client_gone {
            self.end_at(sid, ctx.now());
            return;
        }
        self.connect_next(ctx, sid);
    }

    /// Passive health (`passive_fall`): a connect from a client session
    /// failed; `passive_fall` in a row eject the backend until the active
    /// checks readmit it (`rise` good checks).
    pub(super) fn passive_failure(&self, b: &super::pool::Backend) {
        let Some(fall) = self.routes.health.passive_fall else {
            return;
        };
        if b.passive_failure(fall) {
            super::pool::Backend::add(&b.passive_ejections, 1);
            self.shared.health_changes.fetch_add(1, Ordering::Release);
            tracing::warn!(backend = %b.addr, passive_fall = fall, "backend down: ejected by failed connects on client sessions");
        }
    }

    /// Forgets a session once both legs are gone (or aborts what is left),
    /// and logs it (access log) as ended at `now`.
    pub(super) fn end_at(&mut self, sid: u32, now: Instant) {
        let Some(s) = self.sessions[sid as usize].take() else {
            return;
        };
        if let Some(ring) = &self.access {
            ring.push(access::Record {
                end_us: now.as_micros(),
                duration_us: now.saturating_duration_since(s.started).as_micros() as u64,
                client: SocketAddrV4::new(s.client_ip, s.client_port),
                listener: s.port,
                backend: s.tried.last().copied(),
                bytes_to_backend: s.bytes_to,
                bytes_from_backend: s.bytes_from,
                end: s.outcome,
            });
        }
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
        let sessions = &self.sessions;
        self.timers
            .compact_if_stale(sessions.len() - self.free.len(), |at, sid, serial| {
                sessions
                    .get(sid as usize)
                    .and_then(Option::as_ref)
                    .is_some_and(|s| s.serial == serial && s.timer == Some(at))
            });
    }

    pub(super) fn finish_if_done(&mut self, sid: u32, now: Instant) {
        if let Some(s) = &self.sessions[sid as usize]
            && s.client_gone
            && (s.upstream_gone || s.upstream.is_none())
        {
            self.end_at(sid, now);
        }
    }

    /// Aborts whatever leg is still open and forgets the session.
    pub(super) fn abort_both(&mut self, ctx: &mut Ctx<'_>, sid: u32) {
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
        self.end_at(sid, ctx.now());
    }
}
