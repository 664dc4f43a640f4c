//! The proxy app driven through the real engine on a simulated wire: a
//! client endpoint C, the proxy's endpoint P (running [`Proxy`]) and two
//! backend endpoints B1, B2, all on a virtual clock. The client and the
//! backends are scripted by the tests; segments to a "black hole" vanish.
//! `lifecycle`: the PROXY header accepted from a balancer, retries,
//! passive health, half-close and lifetime bounds, timers. `cost`:
//! callgrind measurements (ignored tests).

mod cost;
mod lifecycle;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::pool::{Failure, Routes};
use super::{Proxy, Shared};
use crate::app::{App, Ctx, NextHop, Readiness};
use crate::config::Config;
use crate::tcp::{self, ConnId, Endpoint, Event, Instant};

const C: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const P: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const B1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
const B2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 4);
const LB: SocketAddrV4 = SocketAddrV4::new(P, 80);
const BACKEND_PORT: u16 = 8080;

struct Hop;
impl NextHop for Hop {
    fn prepare(&mut self, _ip: Ipv4Addr, _now: Instant) -> Readiness {
        Readiness::Ready
    }
}

struct Host {
    ip: Ipv4Addr,
    ep: Endpoint,
    events: Vec<(ConnId, Event)>,
}

struct Sim {
    now: Instant,
    /// hosts[0] is the proxy.
    hosts: Vec<Host>,
    proxy: Proxy,
    shared: Arc<Shared>,
    hop: Hop,
    black_holes: Vec<Ipv4Addr>,
    buf: Vec<u8>,
}

fn tcp_config() -> tcp::Config {
    tcp::Config {
        // Small buffers, held fixed (no autotuning, no growth with cwnd),
        // make backpressure visible quickly and its bound exact.
        recv_buffer: 16 * 1024,
        recv_buffer_max: 16 * 1024,
        send_buffer: 16 * 1024,
        send_buffer_max: 16 * 1024,
        ..tcp::Config::default()
    }
}

impl Sim {
    /// `extra` goes after the listener (sections).
    fn new(balance: &str, extra: &str) -> Sim {
        Sim::with_listener(balance, "", extra)
    }

    /// `keys` go into the listener, `extra` after it.
    fn with_listener(balance: &str, keys: &str, extra: &str) -> Sim {
        let text = format!(
            "interface = \"eth0\"\n[[listener]]\nport = 80\nbalance = \"{balance}\"\n{keys}\n\
             backends = [\"{B1}:{BACKEND_PORT}\", \"{B2}:{BACKEND_PORT}\"]\n\
             [health]\n{interval}{extra}",
            // No checks during a test unless it sets its own interval.
            interval = if extra.contains("interval_ms") {
                ""
            } else {
                "interval_ms = 3600000\n"
            }
        );
        let config = Config::parse(&text, Path::new("sim.toml")).unwrap();
        let set = super::pool::BackendSet::default();
        let shared = Arc::new(Shared::new(Routes::build(
            &config.proxy_settings(),
            &set,
            None,
            1,
        )));
        let host = |ip: Ipv4Addr, seed: u8| {
            let mut cfg = tcp_config();
            cfg.port_range = 40000..=40999;
            Host {
                ip,
                ep: Endpoint::new(cfg, [seed; 16]),
                events: Vec::new(),
            }
        };
        let mut hosts = vec![host(P, 1), host(C, 2), host(B1, 3), host(B2, 4)];
        hosts[0].ep.listen(80);
        let mut sim = Sim {
            now: Instant::from_secs(1000),
            proxy: Proxy::new(shared.clone(), 0, 1),
            shared,
            hosts,
            hop: Hop,
            black_holes: Vec::new(),
            buf: vec![0; 65536],
        };
        // The start-up health check of B1 (the first backend is checked at
        // once) comes and goes before the tests begin.
        sim.run(50);
        sim.host(B1).events.clear();
        sim.host(B2).events.clear();
        sim
    }

    fn host(&mut self, ip: Ipv4Addr) -> &mut Host {
        self.hosts.iter_mut().find(|h| h.ip == ip).expect("host")
    }

    fn ep(&mut self, ip: Ipv4Addr) -> &mut Endpoint {
        &mut self.host(ip).ep
    }

    fn listen(&mut self, ip: Ipv4Addr) {
        self.ep(ip).listen(BACKEND_PORT);
    }

    fn step(&mut self) {
        let now = self.now;
        {
            let Sim {
                hosts, proxy, hop, ..
            } = self;
            let p = &mut hosts[0];
            let mut ctx = Ctx {
                ep: &mut p.ep,
                now,
                local_ip: P,
                shard: 0,
                next_hop: hop,
            };
            while let Some((id, e)) = ctx.ep.poll_event() {
                proxy.on_event(&mut ctx, id, e);
            }
            proxy.on_tick(&mut ctx);
            while let Some((id, e)) = ctx.ep.poll_event() {
                proxy.on_event(&mut ctx, id, e);
            }
        }
        for h in &mut self.hosts[1..] {
            while let Some(e) = h.ep.poll_event() {
                h.events.push(e);
            }
        }
        let mut wire = Vec::new();
        for h in &mut self.hosts {
            while let Some(t) = h.ep.poll_transmit(now, &mut self.buf) {
                wire.push((t.local, t.remote, t.tcp, self.buf[..t.payload_len].to_vec()));
            }
        }
        for (src, dst, tcp, payload) in wire {
            if self.black_holes.contains(&dst) {
                continue;
            }
            if let Some(h) = self.hosts.iter_mut().find(|h| h.ip == dst) {
                h.ep.handle_segment(dst, src, &tcp, &payload, now);
            }
        }
        self.now = self.now.saturating_add(Duration::from_millis(1));
        for h in &mut self.hosts {
            if h.ep.poll_timeout().is_some_and(|t| t <= self.now) {
                h.ep.handle_timeout(self.now);
            }
        }
    }

    fn run(&mut self, ms: u64) {
        for _ in 0..ms {
            self.step();
        }
    }

    /// Steps until `done` holds; false after `limit_ms`.
    fn run_until(&mut self, limit_ms: u64, mut done: impl FnMut(&mut Sim) -> bool) -> bool {
        for _ in 0..limit_ms {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    fn connect_client(&mut self) -> ConnId {
        let now = self.now;
        self.ep(C).connect(C, LB, now).expect("client connect")
    }

    fn has_event(&mut self, ip: Ipv4Addr, id: ConnId, e: Event) -> bool {
        self.host(ip).events.contains(&(id, e))
    }

    /// The last connection a backend accepted.
    fn accepted(&mut self, ip: Ipv4Addr) -> Option<ConnId> {
        self.host(ip)
            .events
            .iter()
            .rev()
            .find(|(_, e)| matches!(e, Event::Accepted { .. }))
            .map(|(id, _)| *id)
    }

    fn read(&mut self, ip: Ipv4Addr, id: ConnId) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.ep(ip).recv(id, &mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    fn sessions(&self) -> usize {
        self.proxy.sessions()
    }
}

/// A byte of a deterministic stream.
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 9)) as u8
}

#[test]
fn relays_both_ways_and_propagates_half_close_in_order() {
    let mut sim = Sim::new("round-robin", "");
    sim.listen(B1);
    sim.listen(B2);
    let c = sim.connect_client();
    assert!(sim.run_until(100, |s| s.has_event(C, c, Event::Connected)));
    sim.ep(C).send(c, b"hello ").unwrap();
    let mut got = Vec::new();
    let mut backend = None;
    assert!(sim.run_until(200, |s| {
        for ip in [B1, B2] {
            if let Some(b) = s.accepted(ip) {
                let data = s.read(ip, b);
                if !data.is_empty() {
                    backend = Some((ip, b));
                    got.extend(data);
                }
            }
        }
        got == b"hello "
    }));
    let (bip, b) = backend.unwrap();
    // The client half-closes after more data: the backend gets the data,
    // then the FIN.
    sim.ep(C).send(c, b"world").unwrap();
    sim.ep(C).shutdown(c).unwrap();
    assert!(sim.run_until(200, |s| {
        got.extend(s.read(bip, b));
        s.has_event(bip, b, Event::PeerClosed)
    }));
    got.extend(sim.read(bip, b));
    assert_eq!(got, b"hello world");
    // The backend answers on the half-open connection, then closes.
    sim.ep(bip).send(b, b"answer").unwrap();
    sim.ep(bip).close(b).unwrap();
    let mut answer = Vec::new();
    assert!(sim.run_until(500, |s| {
        answer.extend(s.read(C, c));
        s.has_event(C, c, Event::PeerClosed)
    }));
    answer.extend(sim.read(C, c));
    assert_eq!(answer, b"answer");
    // Both FINs are through: the client may already be in TIME_WAIT.
    let _ = sim.ep(C).close(c);
    assert!(sim.run_until(1000, |s| s.has_event(C, c, Event::Closed)
        && s.sessions() == 0));
    let backend = &sim.shared.routes.load().checked[if bip == B1 { 0 } else { 1 }];
    assert_eq!(
        backend.bytes_to.load(std::sync::atomic::Ordering::Relaxed),
        11
    );
    assert_eq!(
        backend
            .bytes_from
            .load(std::sync::atomic::Ordering::Relaxed),
        6
    );
    assert_eq!(backend.active.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn client_bytes_wait_unread_until_the_upstream_is_connected() {
    let mut sim = Sim::new("round-robin", "[timeouts]\nconnect_ms = 5000\n");
    sim.listen(B1);
    sim.listen(B2);
    // The backends cannot be reached yet: SYNs vanish.
    sim.black_holes = vec![B1, B2];
    let c = sim.connect_client();
    assert!(sim.run_until(100, |s| s.has_event(C, c, Event::Connected)));
    sim.ep(C).send(c, b"early bytes").unwrap();
    sim.run(200);
    // They sit in the proxy's receive buffer for the client leg, unread.
    let (&leg, _) = sim
        .proxy
        .legs
        .iter()
        .find(|(_, (_, leg))| *leg == super::Leg::Client)
        .unwrap();
    assert_eq!(sim.hosts[0].ep.recv_available(leg), 11);
    // The network heals; the SYN is retransmitted and connects.
    sim.black_holes.clear();
    let mut got = Vec::new();
    assert!(sim.run_until(3000, |s| {
        for ip in [B1, B2] {
            if let Some(b) = s.accepted(ip) {
                got.extend(s.read(ip, b));
            }
        }
        got == b"early bytes"
    }));
}

#[test]
fn backpressure_a_backend_that_does_not_read_stops_the_client() {
    let mut sim = Sim::new("round-robin", "");
    sim.listen(B1);
    sim.listen(B2);
    let c = sim.connect_client();
    assert!(sim.run_until(100, |s| s.has_event(C, c, Event::Connected)));
    // The client pushes as much as it can for 2 s; the backend reads nothing.
    const TOTAL: usize = 4 * 1024 * 1024;
    let mut sent = 0usize;
    let mut chunk = vec![0u8; 8192];
    let mut push = |sim: &mut Sim, sent: &mut usize| {
        while *sent < TOTAL {
            for (k, b) in chunk.iter_mut().enumerate() {
                *b = pattern(*sent + k);
            }
            let n = (TOTAL - *sent).min(chunk.len());
            match sim.ep(C).send(c, &chunk[..n]) {
                Ok(0) | Err(_) => break,
                Ok(k) => *sent += k,
            }
        }
    };
    for _ in 0..2000 {
        push(&mut sim, &mut sent);
        sim.step();
    }
    // Four 16 KiB buffers can hold what left the client's send buffer: the
    // proxy's two (client leg receive, upstream leg send) and the backend's
    // receive buffer, plus the client's own send buffer.
    let bound = 4 * 16 * 1024 + 4096;
    assert!(
        sent <= bound,
        "the client could send {sent} bytes to a backend that reads nothing (bound {bound})"
    );
    assert!(sent >= 2 * 16 * 1024, "the buffers should fill: {sent}");
    // The backend starts reading: everything arrives, in order.
    let (bip, b) = if let Some(b) = sim.accepted(B1) {
        (B1, b)
    } else {
        (B2, sim.accepted(B2).unwrap())
    };
    let mut got = 0usize;
    let ok = sim.run_until(60_000, |s| {
        push(s, &mut sent);
        let data = s.read(bip, b);
        for (k, &byte) in data.iter().enumerate() {
            assert_eq!(byte, pattern(got + k), "byte {} differs", got + k);
        }
        got += data.len();
        got == TOTAL
    });
    assert!(ok, "only {got} of {TOTAL} bytes arrived");
}

#[test]
fn a_refusing_backend_is_replaced_before_any_byte() {
    let mut sim = Sim::new("round-robin", "");
    // B1 refuses (no listener: RST), B2 accepts.
    sim.listen(B2);
    for _ in 0..2 {
        let c = sim.connect_client();
        sim.ep(C).send(c, b"ping").unwrap_or(0);
        assert!(sim.run_until(300, |s| s.accepted(B2).is_some_and(|b| {
            let d = s.read(B2, b);
            d == b"ping" || !d.is_empty()
        })));
        assert!(!sim.has_event(C, c, Event::Reset));
    }
    let routes = sim.shared.routes.load();
    let b1 = &routes.checked[0];
    assert!(b1.failures(Failure::Refused) >= 1, "the refusal is counted");
    assert!(
        sim.shared
            .stats
            .retries
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

#[test]
fn a_silent_backend_times_out_and_the_next_one_is_tried() {
    let mut sim = Sim::new("round-robin", "[timeouts]\nconnect_ms = 300\n");
    sim.listen(B1);
    sim.listen(B2);
    sim.black_holes = vec![B1];
    // Round-robin starts at B1 for this first client.
    let c = sim.connect_client();
    assert!(sim.run_until(100, |s| s.has_event(C, c, Event::Connected)));
    sim.ep(C).send(c, b"x").unwrap();
    let started = sim.now;
    assert!(sim.run_until(2000, |s| {
        s.accepted(B2).is_some_and(|b| s.read(B2, b) == b"x")
    }));
    let waited = sim.now.saturating_duration_since(started);
    assert!(
        waited >= Duration::from_millis(250),
        "moved on after {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(1000),
        "moved on after {waited:?}"
    );
    assert_eq!(
        sim.shared.routes.load().checked[0].failures(Failure::Timeout),
        1
    );
}

#[test]
fn the_client_is_reset_when_no_backend_is_left() {
    let mut sim = Sim::new("round-robin", "");
    let c = sim.connect_client();
    assert!(sim.run_until(500, |s| s.has_event(C, c, Event::Reset)));
    assert_eq!(sim.sessions(), 0);
    assert_eq!(
        sim.shared
            .stats
            .no_backend
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn resets_are_propagated_both_ways() {
    let mut sim = Sim::new("round-robin", "");
    sim.listen(B1);
    sim.listen(B2);
    // Backend resets after data was relayed: the client is reset.
    let c = sim.connect_client();
    sim.run(20);
    sim.ep(C).send(c, b"data").unwrap();
    let mut backend = None;
    assert!(sim.run_until(300, |s| {
        for ip in [B1, B2] {
            if let Some(b) = s.accepted(ip)
                && !s.read(ip, b).is_empty()
            {
                backend = Some((ip, b));
            }
        }
        backend.is_some()
    }));
    let (bip, b) = backend.unwrap();
    sim.ep(bip).abort(b).unwrap();
    assert!(sim.run_until(300, |s| s.has_event(C, c, Event::Reset)));
    assert!(sim.run_until(100, |s| s.sessions() == 0));

    // Client resets: the upstream leg is aborted.
    let c = sim.connect_client();
    sim.run(20);
    sim.ep(C).send(c, b"data").unwrap();
    let mut backend = None;
    assert!(sim.run_until(300, |s| {
        for ip in [B1, B2] {
            if let Some(nb) = s.accepted(ip)
                && (ip, nb) != (bip, b)
                && !s.read(ip, nb).is_empty()
            {
                backend = Some((ip, nb));
            }
        }
        backend.is_some()
    }));
    let (bip2, b2) = backend.unwrap();
    sim.ep(C).abort(c).unwrap();
    assert!(sim.run_until(300, |s| s.has_event(bip2, b2, Event::Reset)));
    assert!(sim.run_until(100, |s| s.sessions() == 0));
}

#[test]
fn idle_connections_are_reset_on_both_legs() {
    let mut sim = Sim::new("round-robin", "[timeouts]\nidle_ms = 500\n");
    sim.listen(B1);
    sim.listen(B2);
    let c = sim.connect_client();
    sim.run(20);
    sim.ep(C).send(c, b"hi").unwrap();
    let mut backend = None;
    assert!(sim.run_until(300, |s| {
        for ip in [B1, B2] {
            if let Some(b) = s.accepted(ip)
                && !s.read(ip, b).is_empty()
            {
                backend = Some((ip, b));
            }
        }
        backend.is_some()
    }));
    let (bip, b) = backend.unwrap();
    let quiet_from = sim.now;
    assert!(sim.run_until(2000, |s| s.has_event(C, c, Event::Reset)
        && s.has_event(bip, b, Event::Reset)));
    let after = sim.now.saturating_duration_since(quiet_from);
    assert!(after >= Duration::from_millis(450), "reset after {after:?}");
    assert_eq!(sim.sessions(), 0);
    assert_eq!(
        sim.shared
            .stats
            .idle_timeouts
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn after_a_reload_new_connections_use_the_new_pool_and_old_ones_finish() {
    let mut sim = Sim::new("round-robin", "");
    sim.listen(B1);
    sim.listen(B2);
    // Round-robin: the first client goes to B1.
    let c1 = sim.connect_client();
    sim.run(20);
    sim.ep(C).send(c1, b"one").unwrap();
    assert!(sim.run_until(300, |s| {
        s.accepted(B1).is_some_and(|b| s.read(B1, b) == b"one")
    }));
    let b1 = sim.accepted(B1).unwrap();
    // Reload without B1.
    let text = format!(
        "interface = \"eth0\"\n[[listener]]\nport = 80\nbackends = [\"{B2}:{BACKEND_PORT}\"]\n[health]\ninterval_ms = 3600000\n"
    );
    let config = Config::parse(&text, Path::new("sim.toml")).unwrap();
    let set = super::pool::BackendSet::default();
    let prev = sim.shared.routes.load();
    sim.shared.routes.store(Routes::build(
        &config.proxy_settings(),
        &set,
        Some(&prev),
        prev.generation + 1,
    ));
    // New connections: B2 only.
    for _ in 0..3 {
        let before = sim.host(B2).events.len();
        let c = sim.connect_client();
        sim.run(20);
        sim.ep(C).send(c, b"new").unwrap();
        assert!(sim.run_until(300, |s| s.host(B2).events.len() > before
            && s.accepted(B2).is_some_and(|b| s.read(B2, b) == b"new")));
    }
    assert_eq!(
        sim.accepted(B1),
        Some(b1),
        "no new connection to the removed backend"
    );
    // The old connection still relays both ways and closes cleanly.
    sim.ep(C).send(c1, b" more").unwrap();
    assert!(sim.run_until(300, |s| s.read(B1, b1) == b" more"));
    sim.ep(B1).send(b1, b"bye").unwrap();
    sim.ep(B1).close(b1).unwrap();
    let mut got = Vec::new();
    assert!(sim.run_until(500, |s| {
        got.extend(s.read(C, c1));
        s.has_event(C, c1, Event::PeerClosed)
    }));
    got.extend(sim.read(C, c1));
    assert_eq!(got, b"bye");
}

#[test]
fn proxy_protocol_header_precedes_the_client_bytes() {
    for (version, want_prefix) in [
        ("v1", b"PROXY TCP4 10.0.0.1 10.0.0.2 ".to_vec()),
        ("v2", super::proxy_protocol::V2_SIGNATURE.to_vec()),
    ] {
        let mut sim = Sim::with_listener(
            "round-robin",
            &format!("proxy_protocol = \"{version}\""),
            "",
        );
        sim.listen(B1);
        sim.listen(B2);
        let c = sim.connect_client();
        // Client bytes sent before the upstream is even connected.
        sim.ep(C).send(c, b"hello").unwrap();
        let client_port = sim.ep(C).tuple(c).unwrap().local.port();
        let mut got = Vec::new();
        assert!(sim.run_until(300, |s| {
            for ip in [B1, B2] {
                if let Some(b) = s.accepted(ip) {
                    got.extend(s.read(ip, b));
                }
            }
            got.ends_with(b"hello")
        }));
        assert!(got.starts_with(&want_prefix), "{version}: {got:?}");
        let header = &got[..got.len() - 5];
        if version == "v1" {
            let line = std::str::from_utf8(header).unwrap();
            assert_eq!(
                line,
                format!("PROXY TCP4 10.0.0.1 10.0.0.2 {client_port} 80\r\n")
            );
        } else {
            assert_eq!(header.len(), 28);
            assert_eq!(&header[16..20], &[10, 0, 0, 1]);
            assert_eq!(&header[24..26], &client_port.to_be_bytes());
            assert_eq!(&header[26..28], &80u16.to_be_bytes());
        }
    }
}
