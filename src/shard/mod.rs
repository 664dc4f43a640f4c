//! The per-core loop: one shard owns one queue's AF_XDP socket and UMEM, an
//! engine `Endpoint` (its connections, TIME_WAIT entries, timers and port
//! slice) and an app.
//!
//! Run to completion, one pass at a time: receive a batch, parse, route to the
//! owning shard, run the engine, run the app, transmit the batch, fire due
//! timers; busy-poll while there is work and sleep in poll(2) after a while
//! without any.

pub mod clock;
pub mod flow;
pub mod handoff;
pub mod neighbors;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use crate::app::{App, Ctx};
use crate::metrics::ShardMetrics;
use crate::tcp::{ConnId, Endpoint, Event, FourTuple, Instant};
use crate::wire::icmp::FragNeeded;
use crate::wire::{self, DATA_PAYLOAD_AT, FrameMeta, ParsedFrame, TcpFlags};
use crate::xdp::CookieState;
use crate::xsk::{SendOutcome, XskSocket};
use flow::FlowMap;
use handoff::Exchange;
use neighbors::{Hop, Neighbors};

/// Run state shared by the runtime and every shard.
pub const RUNNING: u8 = 0;
/// Stop accepting; exit once no connection is left or the grace period ends.
pub const DRAINING: u8 = 1;
/// Exit now.
pub const STOPPED: u8 = 2;

/// Idle passes of busy polling before the loop sleeps in poll(2). Short: on
/// a small machine the kernel peers need the cores we would spin on.
const SPIN_BEFORE_SLEEP: u32 = 64;

/// Everything a shard thread owns.
pub struct Shard<A: App> {
    pub id: usize,
    pub xsk: XskSocket,
    pub endpoint: Endpoint,
    pub app: A,
    pub ports: Vec<u16>,
    pub local_mac: [u8; 6],
    pub local_ip: Ipv4Addr,
    /// Listener addresses besides `local_ip` (virtual IPs); a handful, so a
    /// linear scan per frame is cheaper than a hash.
    pub vips: Vec<Ipv4Addr>,
    pub neighbors: Neighbors,
    pub flows: FlowMap,
    pub exchange: Arc<Exchange>,
    pub metrics: Arc<ShardMetrics>,
    pub control: Arc<AtomicU8>,
    pub grace: Duration,
    /// Shards whose app has finished; a finished shard keeps polling (its
    /// queue may still carry other shards' flows) until the runtime stops it.
    pub done: Arc<std::sync::atomic::AtomicUsize>,
    /// Shards with no connection left (or out of grace) while draining.
    pub drained: Arc<std::sync::atomic::AtomicUsize>,
    pub core: Option<core_affinity::CoreId>,
    /// Scratch for connects that failed `unreachable` (reused, no allocation).
    pub unreachable: Vec<ConnId>,
    /// This shard's share of listeners' `max_connections`.
    pub listen_limits: Vec<(u16, usize)>,
    /// The XDP program's SYN-cookie state (flood mode), when it answers SYNs.
    pub cookies: Option<Arc<CookieState>>,
    /// The engine's and the program's cookie counts seen last pass.
    pub seen_cookies: (u64, u64),
}

impl<A: App> Shard<A> {
    /// Runs until stopped (or the app is finished and its connections are
    /// gone); returns the app so callers can read what it measured.
    pub fn run(mut self) -> A {
        if let Some(core) = self.core
            && !core_affinity::set_for_current(core)
        {
            tracing::warn!(shard = self.id, ?core, "could not pin shard thread");
        }
        for &port in &self.ports {
            match self.listen_limits.iter().find(|(p, _)| *p == port) {
                Some(&(_, max)) => self.endpoint.listen_limited(port, max),
                None => self.endpoint.listen(port),
            }
        }
        let now = clock::now();
        self.with_ctx(now, |app, ctx| app.on_start(ctx));
        let mut idle = 0u32;
        let mut last_stats = now;
        let mut drain_deadline: Option<Instant> = None;
        let mut counted_done = false;
        let mut counted_drained = false;
        loop {
            let now = clock::now();
            match self.control.load(Ordering::Relaxed) {
                STOPPED => break,
                DRAINING => {
                    let deadline = *drain_deadline.get_or_insert_with(|| {
                        for &port in &self.ports {
                            self.endpoint.unlisten(port);
                        }
                        now.saturating_add(self.grace)
                    });
                    if !counted_drained
                        && (self.endpoint.connection_count() == 0 || now >= deadline)
                    {
                        counted_drained = true;
                        self.drained.fetch_add(1, Ordering::Relaxed);
                    }
                    // Leave together: a shard that closed its socket early
                    // would take its queue's share of the others' flows with it.
                    if self.drained.load(Ordering::Relaxed) >= self.flows.shards() {
                        break;
                    }
                }
                _ => {}
            }
            if !counted_done && self.app.finished() && self.endpoint.connection_count() == 0 {
                counted_done = true;
                self.done.fetch_add(1, Ordering::Relaxed);
            }
            let work = self.pass(now);
            if work == 0 {
                idle += 1;
                if idle > SPIN_BEFORE_SLEEP {
                    self.xsk.wait(1);
                }
            } else {
                idle = 0;
            }
            if now.saturating_duration_since(last_stats) >= Duration::from_millis(50) {
                self.publish_stats();
                last_stats = now;
            }
        }
        self.xsk.flush();
        self.publish_stats();
        self.app
    }

    fn with_ctx<R>(&mut self, now: Instant, f: impl FnOnce(&mut A, &mut Ctx<'_>) -> R) -> R {
        let mut ctx = Ctx {
            ep: &mut self.endpoint,
            now,
            local_ip: self.local_ip,
            shard: self.id,
            next_hop: &mut self.neighbors,
        };
        f(&mut self.app, &mut ctx)
    }

    /// The neighbour table's pass: answers from the resolver, frames held
    /// for them, connects that waited in vain.
    fn neighbor_pass(&mut self, now: Instant) -> usize {
        self.neighbors.poll(now);
        let xsk = &mut self.xsk;
        let mut work = self.neighbors.release(|frame| {
            matches!(
                xsk.send_with(|buf| {
                    buf[..frame.len()].copy_from_slice(frame);
                    Some(frame.len())
                }),
                SendOutcome::Queued
            )
        });
        let mut failed = std::mem::take(&mut self.unreachable);
        self.neighbors.take_failed(&mut failed);
        for id in failed.drain(..) {
            // Still the app's: abort (nothing was sent, so no RST) and tell it.
            if self.endpoint.state(id).is_some() && self.endpoint.abort(id).is_ok() {
                self.with_ctx(now, |app, ctx| app.on_event(ctx, id, Event::Unreachable));
                work += 1;
            }
        }
        self.unreachable = failed;
        work
    }

    /// The flood mode's two signals, memory loads only: our SYN queue
    /// overflowed (the engine sent a cookie) turns it on in XDP; cookies
    /// sent in XDP make the engine validate cookies, as after an overflow.
    fn flood_pass(&mut self, now: Instant) {
        let Some(c) = &self.cookies else {
            return;
        };
        let engine = self.endpoint.stats().syn_cookies_sent;
        if engine != self.seen_cookies.0 {
            self.seen_cookies.0 = engine;
            c.flood_started(clock::to_monotonic_ns(now));
        }
        let xdp = c.sent();
        if xdp != self.seen_cookies.1 {
            self.seen_cookies.1 = xdp;
            self.endpoint.note_syn_cookies_sent(now);
        }
    }

    /// One pass; returns a measure of the work done (0 = idle).
    fn pass(&mut self, now: Instant) -> usize {
        self.flood_pass(now);
        let mut work = self.receive(now);
        work += self.neighbor_pass(now);
        while let Some(h) = self.exchange.recv(self.id) {
            // The full parse and checks happen here, in the owner: the
            // shard that received it only read its addresses and ports.
            if let Ok(p) = parse_incoming(&h.buf[..h.len]) {
                deliver(&mut self.endpoint, &mut self.neighbors, &p, now);
            }
            self.exchange.release(h);
            work += 1;
        }
        if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
            self.endpoint.handle_timeout(now);
        }
        while let Some((id, event)) = self.endpoint.poll_event() {
            self.with_ctx(now, |app, ctx| app.on_event(ctx, id, event));
            work += 1;
        }
        self.with_ctx(now, |app, ctx| app.on_tick(ctx));
        // on_tick may have produced events (e.g. a failed connect).
        while let Some((id, event)) = self.endpoint.poll_event() {
            self.with_ctx(now, |app, ctx| app.on_event(ctx, id, event));
            work += 1;
        }
        work += self.transmit(now);
        work
    }

    fn receive(&mut self, now: Instant) -> usize {
        let Shard {
            id,
            xsk,
            endpoint,
            neighbors,
            flows,
            exchange,
            metrics,
            local_ip,
            vips,
            ..
        } = self;
        let ours = |ip: &Ipv4Addr| ip == local_ip || vips.contains(ip);
        let hand_off = |frame: &[u8], owner: usize| {
            if exchange.send(*id, owner, frame) {
                ShardMetrics::add(&metrics.handoff, 1);
            } else {
                ShardMetrics::add(&metrics.handoff_dropped, 1);
            }
        };
        let sharded = flows.shards() > 1;
        let got = xsk.recv_batch(|frame| {
            // A TCP frame for another shard goes there unverified: the owner
            // runs the full parse (and the TCP checksum) anyway, so the pass
            // over the payload is made once, not twice.
            if sharded && let Some((src, dst, sport, dport)) = wire::peek_tcp_flow(frame) {
                if !ours(&dst) {
                    ShardMetrics::add(&metrics.rx_not_local, 1);
                    return;
                }
                let owner = flows.owner(*id, dst, dport, src, sport);
                if owner != *id {
                    hand_off(frame, owner);
                    return;
                }
            }
            match parse_incoming(frame) {
                Err(reason) => metrics.dropped(reason),
                Ok(p) => {
                    let (local, remote) = p.flow();
                    if !ours(&p.dst_ip()) || !ours(local.ip()) {
                        ShardMetrics::add(&metrics.rx_not_local, 1);
                        return;
                    }
                    let owner =
                        flows.owner(*id, *local.ip(), local.port(), *remote.ip(), remote.port());
                    if owner != *id {
                        hand_off(frame, owner);
                        return;
                    }
                    deliver(endpoint, neighbors, &p, now);
                }
            }
        });
        ShardMetrics::add(&metrics.rx_packets, got as u64);
        got
    }

    fn transmit(&mut self, now: Instant) -> usize {
        let Shard {
            xsk,
            endpoint,
            neighbors,
            metrics,
            local_mac,
            ..
        } = self;
        let mut sent = 0;
        loop {
            let mut no_neighbor = false;
            let mut held = false;
            let outcome = xsk.send_with(|buf| {
                let t = endpoint.poll_transmit(now, &mut buf[DATA_PAYLOAD_AT..])?;
                let (dst_mac, hold) = match neighbors.hop(t.remote) {
                    Hop::Mac(mac) => (mac, false),
                    // Built with a blank MAC, kept aside (copied out of the
                    // UMEM frame), patched and sent when the MAC arrives.
                    Hop::Hold => ([0; 6], true),
                    Hop::Unknown => {
                        no_neighbor = true;
                        return None;
                    }
                };
                let meta = FrameMeta {
                    src_mac: *local_mac,
                    dst_mac,
                    src_ip: t.local,
                    dst_ip: t.remote,
                };
                let len =
                    wire::build_frame(buf, &meta, &t.tcp, DATA_PAYLOAD_AT, t.payload_len).ok()?;
                if hold {
                    held = true;
                    no_neighbor = !neighbors.hold(t.remote, &buf[..len]);
                    return None;
                }
                Some(len)
            });
            match outcome {
                SendOutcome::Queued => sent += 1,
                SendOutcome::Nothing if no_neighbor => {
                    ShardMetrics::add(&metrics.tx_no_neighbor, 1);
                }
                SendOutcome::Nothing if held => {}
                SendOutcome::Nothing => break,
                SendOutcome::NoFrame => {
                    ShardMetrics::add(&metrics.tx_no_frame, 1);
                    break;
                }
            }
        }
        xsk.flush();
        sent
    }

    fn publish_stats(&self) {
        let m = &self.metrics;
        let s = self.xsk.stats();
        ShardMetrics::set(&m.tx_packets, s.tx_frames);
        ShardMetrics::set(&m.rx_bytes, s.rx_bytes);
        ShardMetrics::set(&m.tx_bytes, s.tx_bytes);
        ShardMetrics::set(&m.xsk_zerocopy, u64::from(self.xsk.zerocopy()));
        if let Ok(x) = self.xsk.xdp_statistics() {
            ShardMetrics::set(&m.rx_ring_full, x.rx_ring_full());
            ShardMetrics::set(&m.rx_no_frame, x.rx_fill_ring_empty_descs());
        }
        let e = self.endpoint.stats();
        ShardMetrics::set(&m.established, self.endpoint.established_count() as u64);
        ShardMetrics::set(&m.connections, self.endpoint.connection_count() as u64);
        ShardMetrics::set(&m.time_wait, self.endpoint.time_wait_count() as u64);
        ShardMetrics::set(&m.accepted, e.accepted);
        ShardMetrics::set(&m.opened, e.opened);
        ShardMetrics::set(&m.recycled_passive, e.time_wait_recycled_passive);
        ShardMetrics::set(&m.recycled_active, e.time_wait_recycled_active);
        ShardMetrics::set(&m.connect_no_port, e.connect_no_port);
        ShardMetrics::set(&m.connect_timeout, e.connect_timeout);
        ShardMetrics::set(&m.connect_refused, e.connect_refused);
        ShardMetrics::set(&m.retransmits, e.retransmits);
        ShardMetrics::set(&m.retransmitted_bytes, e.retransmitted_bytes);
        ShardMetrics::set(&m.tlp_probes, e.tlp_probes);
        ShardMetrics::set(&m.loss_recoveries, e.fast_retransmits);
        ShardMetrics::set(&m.rto_expirations, e.rto_expirations);
        for (m, v) in m.rto_causes.iter().zip([
            e.rto_repeated,
            e.rto_lost_rexmit,
            e.rto_in_recovery,
            e.rto_after_probe,
            e.rto_sacked,
            e.rto_tail,
            e.rto_handshake,
        ]) {
            ShardMetrics::set(m, v);
        }
        ShardMetrics::set(&m.keepalive_probes, e.keepalive_probes);
        ShardMetrics::set(&m.keepalive_timeouts, e.keepalive_timeouts);
        ShardMetrics::set(&m.challenge_acks, e.challenge_acks);
        ShardMetrics::set(&m.rst_sent, e.rst_sent);
        ShardMetrics::set(&m.rst_unknown_flow, e.rst_unknown_flow);
        ShardMetrics::set(&m.rx_engine_dropped, e.dropped_segments);
        ShardMetrics::set(&m.time_wait_expired, e.time_wait_expired);
        let pool = self.endpoint.buffer_pool();
        ShardMetrics::set(&m.buffer_pool_in_use, pool.in_use_bytes as u64);
        ShardMetrics::set(&m.buffer_pool_allocated, pool.allocated_bytes as u64);
        ShardMetrics::set(&m.buffer_pool_exhausted, pool.exhausted);
        ShardMetrics::set(
            &m.syn_dropped_max_connections,
            e.syn_dropped_max_connections,
        );
        ShardMetrics::set(&m.syn_dropped_syn_queue, e.syn_queue_overflow);
        ShardMetrics::set(&m.syn_dropped_accept_queue, e.accept_queue_overflow);
        ShardMetrics::set(&m.syn_cookies_sent, e.syn_cookies_sent);
        ShardMetrics::set(&m.syn_cookies_accepted, e.syn_cookies_accepted);
        ShardMetrics::set(&m.syn_cookies_rejected, e.syn_cookies_rejected);
        ShardMetrics::set(&m.syn_cookies_no_overflow, e.syn_cookies_no_overflow);
        ShardMetrics::set(&m.challenge_acks_suppressed, e.challenge_acks_suppressed);
        ShardMetrics::set(&m.icmp_frag_lowered, e.pmtu_lowered);
        ShardMetrics::set(&m.icmp_frag_not_in_flight, e.icmp_not_in_flight);
        ShardMetrics::set(&m.icmp_frag_not_lower, e.icmp_not_lower);
        ShardMetrics::set(&m.icmp_frag_unknown_flow, e.icmp_unknown_flow);
        let n = &self.neighbors;
        ShardMetrics::set(&m.connect_unreachable, n.stats.connect_unreachable);
        ShardMetrics::set(&m.neighbors_kernel, n.kernel_len() as u64);
        ShardMetrics::set(&m.neighbors_learned, n.learned_len() as u64);
        ShardMetrics::set(&m.neighbor_waiting, n.pending_len() as u64);
        ShardMetrics::set(&m.neighbor_resolved, n.stats.resolved);
        ShardMetrics::set(&m.neighbor_failed, n.stats.resolve_failed);
        ShardMetrics::set(&m.neighbor_moved, n.stats.moved);
        ShardMetrics::set(&m.neighbor_learn_full, n.stats.learn_full);
        ShardMetrics::set(&m.neighbor_held_dropped, n.stats.held_dropped);
    }
}

/// What the XDP program sends a shard: a TCP segment, or an ICMP
/// "fragmentation needed" quoting one of ours (it steers no other ICMP).
enum Incoming<'a> {
    Tcp(ParsedFrame<'a>),
    FragNeeded(FragNeeded),
}

impl Incoming<'_> {
    /// The flow it belongs to: (our side, the peer's side).
    fn flow(&self) -> (SocketAddrV4, SocketAddrV4) {
        match self {
            Incoming::Tcp(p) => (
                SocketAddrV4::new(p.meta.dst_ip, p.tcp.dst_port),
                SocketAddrV4::new(p.meta.src_ip, p.tcp.src_port),
            ),
            Incoming::FragNeeded(f) => (f.local, f.remote),
        }
    }

    fn dst_ip(&self) -> Ipv4Addr {
        match self {
            Incoming::Tcp(p) => p.meta.dst_ip,
            Incoming::FragNeeded(f) => f.meta.dst_ip,
        }
    }
}

/// Parses a received frame; ICMP is tried only for what is not TCP, so a
/// TCP segment is parsed once.
#[inline]
fn parse_incoming(frame: &[u8]) -> Result<Incoming<'_>, wire::DropReason> {
    match wire::parse_frame(frame) {
        Ok(p) => Ok(Incoming::Tcp(p)),
        Err(wire::DropReason::NotTcp) => {
            wire::icmp::parse_frag_needed(frame).map(Incoming::FragNeeded)
        }
        Err(e) => Err(e),
    }
}

/// One frame to the engine.
#[inline]
fn deliver(ep: &mut Endpoint, neighbors: &mut Neighbors, p: &Incoming<'_>, now: Instant) {
    match p {
        Incoming::Tcp(p) => deliver_segment(ep, neighbors, p, now),
        // Nothing is learned from it: the router is not a peer of ours.
        Incoming::FragNeeded(f) => ep.handle_frag_needed(f, now),
    }
}

/// One segment to the engine. Its source MAC is where a reply goes if
/// nothing better is known (`note`); it is learned for the peer only once
/// the engine holds the segment's flow synchronized (`confirm`): a forged
/// SYN or stray ACK teaches nothing.
#[inline]
fn deliver_segment(
    ep: &mut Endpoint,
    neighbors: &mut Neighbors,
    p: &ParsedFrame<'_>,
    now: Instant,
) {
    let (src, mac) = (p.meta.src_ip, p.meta.src_mac);
    neighbors.note(src, mac);
    ep.handle_segment(p.meta.dst_ip, src, &p.tcp, p.payload, now);
    let f = p.tcp.flags;
    if f.contains(TcpFlags::ACK) && !f.intersects(TcpFlags::SYN | TcpFlags::RST) {
        let tuple = FourTuple {
            local: SocketAddrV4::new(p.meta.dst_ip, p.tcp.dst_port),
            remote: SocketAddrV4::new(src, p.tcp.src_port),
        };
        neighbors.confirm(src, mac, now, || ep.state_of(&tuple).is_synchronized());
    }
}
