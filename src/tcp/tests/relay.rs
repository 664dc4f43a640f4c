//! `Endpoint::relay`: bytes from one connection's receive buffer into
//! another connection's send buffer of the same endpoint (the sidecar's two
//! legs), exact and bounded by the send buffer; and, for callgrind (ignored
//! test), its cost against the `recv` + `send` through a scratch buffer it
//! replaced.

use crate::tcp::{Config, ConnError, ConnId, Endpoint, Event, Instant};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

const C: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const P: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
const WINDOW: usize = 64 * 1024;

/// Client C -> P (port 80), P -> backend B (port 8080); P holds both legs.
struct Three {
    eps: Vec<(Ipv4Addr, Endpoint)>,
    now: Instant,
    buf: Vec<u8>,
}

fn config() -> Config {
    // Fixed 64 KiB buffers: a round of the cost test fills one window.
    Config {
        recv_buffer: WINDOW,
        recv_buffer_max: WINDOW,
        send_buffer: WINDOW,
        send_buffer_max: WINDOW,
        port_range: 40000..=40999,
        ..Config::default()
    }
}

impl Three {
    fn new() -> Three {
        let mut eps: Vec<(Ipv4Addr, Endpoint)> = [(C, 1u8), (P, 2), (B, 3)]
            .into_iter()
            .map(|(ip, seed)| (ip, Endpoint::new(config(), [seed; 16])))
            .collect();
        eps[1].1.listen(80);
        eps[2].1.listen(8080);
        Three {
            eps,
            now: Instant::from_secs(100),
            buf: vec![0; 65536],
        }
    }

    fn ep(&mut self, ip: Ipv4Addr) -> &mut Endpoint {
        &mut self.eps.iter_mut().find(|(i, _)| *i == ip).expect("host").1
    }

    /// Delivers every segment until the wire is quiet (the clock moves
    /// 100 us per round, so delayed ACKs fire).
    fn settle(&mut self) {
        for _ in 0..100_000 {
            let mut wire = Vec::new();
            for (_, ep) in &mut self.eps {
                while let Some(t) = ep.poll_transmit(self.now, &mut self.buf) {
                    wire.push((t.local, t.remote, t.tcp, self.buf[..t.payload_len].to_vec()));
                }
            }
            self.now = self.now + Duration::from_micros(100);
            let quiet = wire.is_empty();
            for (src, dst, tcp, payload) in wire {
                let now = self.now;
                self.ep(dst).handle_segment(dst, src, &tcp, &payload, now);
            }
            for (_, ep) in &mut self.eps {
                if ep.poll_timeout().is_some_and(|t| t <= self.now) {
                    ep.handle_timeout(self.now);
                }
            }
            let pending = self.eps.iter().any(|(_, e)| {
                e.poll_timeout()
                    .is_some_and(|t| t <= self.now + Duration::from_millis(50))
            });
            if quiet && !pending {
                return;
            }
        }
        panic!("the wire did not settle");
    }

    fn accepted(&mut self, ip: Ipv4Addr) -> ConnId {
        let ep = self.ep(ip);
        let mut found = None;
        while let Some((id, e)) = ep.poll_event() {
            if matches!(e, Event::Accepted { .. }) {
                found = Some(id);
            }
        }
        found.expect("accepted")
    }

    /// (C's connection, P's client leg, P's upstream leg, B's connection).
    fn sessions(&mut self) -> (ConnId, ConnId, ConnId, ConnId) {
        let now = self.now;
        let c = self
            .ep(C)
            .connect(C, SocketAddrV4::new(P, 80), now)
            .unwrap();
        self.settle();
        let a = self.accepted(P);
        let b = self
            .ep(P)
            .connect(P, SocketAddrV4::new(B, 8080), now)
            .unwrap();
        self.settle();
        let d = self.accepted(B);
        while self.ep(P).poll_event().is_some() {}
        while self.ep(C).poll_event().is_some() {}
        (c, a, b, d)
    }
}

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(131) ^ (i >> 11)) as u8
}

#[test]
fn relay_moves_bytes_exactly_bounded_by_the_send_buffer() {
    let mut t = Three::new();
    let (c, a, b, d) = t.sessions();
    assert_eq!(t.ep(P).relay(a, a, usize::MAX), Err(ConnError::InvalidId));
    let total = 300_000;
    let (mut sent, mut got) = (0, Vec::new());
    let mut buf = vec![0u8; 8192];
    let mut rounds = 0;
    while got.len() < total {
        rounds += 1;
        assert!(rounds < 10_000, "stalled at {} of {total}", got.len());
        let chunk: Vec<u8> = (sent..(sent + 20_000).min(total)).map(pattern).collect();
        sent += t.ep(C).send(c, &chunk).unwrap();
        t.settle();
        // A bounded relay first, then whatever fits.
        let (before, room0) = (t.ep(P).recv_available(a), t.ep(P).send_capacity(b));
        let n = t.ep(P).relay(a, b, 1000).unwrap();
        assert_eq!(n, before.min(1000).min(room0));
        let room = t.ep(P).send_capacity(b);
        let avail = t.ep(P).recv_available(a);
        let m = t.ep(P).relay(a, b, usize::MAX).unwrap();
        assert_eq!(m, avail.min(room), "takes what fits, no more");
        assert_eq!(t.ep(P).recv_available(a), avail - m);
        t.settle();
        loop {
            let n = t.ep(B).recv(d, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        t.settle();
    }
    assert_eq!(got.len(), total);
    assert!(
        got.iter().enumerate().all(|(i, &x)| x == pattern(i)),
        "bytes exact and in order"
    );
    // Once shut, the upstream takes nothing more.
    t.ep(P).shutdown(b).unwrap();
    t.ep(C).send(c, b"late").unwrap();
    t.settle();
    assert_eq!(t.ep(P).relay(a, b, usize::MAX), Err(ConnError::SendClosed));
    assert_eq!(t.ep(P).recv_available(a), 4, "left where it was");
}

/// What moving 1 MiB between the two legs costs (rounds of up to a 64 KiB
/// window), `RELAY=relay` (default: `Endpoint::relay`) or `RELAY=copy`
/// (`recv` into a 64 KiB scratch buffer, then `send`, as the proxy did
/// before). Only the move is counted:
///
/// ```text
/// RELAY=copy valgrind --tool=callgrind --toggle-collect='*measured_moves*' \
///   target/ci/deps/turnstile-HASH --ignored --exact tcp::tests::relay::relay_cost_per_mib
/// ```
#[test]
#[ignore = "a measurement for callgrind; see the doc comment"]
fn relay_cost_per_mib() {
    let copy = std::env::var("RELAY").is_ok_and(|m| m == "copy");
    let mut t = Three::new();
    let (c, a, b, d) = t.sessions();
    let data: Vec<u8> = (0..WINDOW).map(pattern).collect();
    let mut scratch = vec![0u8; WINDOW];
    let mut sink = vec![0u8; WINDOW];
    const MIB: usize = 1 << 20;
    let (mut sent, mut moved) = (0, 0);
    for _ in 0..1000 {
        if moved == MIB {
            break;
        }
        sent += t.ep(C).send(c, &data[..(MIB - sent).min(WINDOW)]).unwrap();
        t.settle();
        moved += measured_moves(t.ep(P), a, b, copy, &mut scratch);
        t.settle();
        while t.ep(B).recv(d, &mut sink).unwrap() > 0 {}
        t.settle();
    }
    assert_eq!(moved, MIB);
    println!(
        "{} bytes moved ({})",
        moved,
        if copy { "recv + send" } else { "relay" }
    );
}

#[inline(never)]
fn measured_moves(
    ep: &mut Endpoint,
    a: ConnId,
    b: ConnId,
    copy: bool,
    scratch: &mut [u8],
) -> usize {
    let mut moved = 0;
    loop {
        let n = if copy {
            let room = ep.send_capacity(b).min(scratch.len());
            let n = ep.recv(a, &mut scratch[..room]).unwrap();
            assert_eq!(ep.send(b, &scratch[..n]).unwrap(), n);
            n
        } else {
            ep.relay(a, b, usize::MAX).unwrap()
        };
        if n == 0 {
            return std::hint::black_box(moved);
        }
        moved += n;
    }
}
