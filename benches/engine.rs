//! Whole short connections between two in-memory endpoints on one core:
//! handshake, a small request and response, close (the server closes first,
//! as an HTTP server does, so the TIME-WAIT entry is the server's).
//!
//! Run: `cargo bench --bench engine`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;
use turnstile::tcp::{Config, Endpoint, Event, Instant};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const PORT: u16 = 80;
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: turnstile\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

struct Bench {
    client: Endpoint,
    server: Endpoint,
    now: Instant,
    seg: Vec<u8>,
    app: Vec<u8>,
}

impl Bench {
    fn new() -> Self {
        let cfg = Config::default();
        let client = Endpoint::new(cfg.clone(), [1; 16]);
        let mut server = Endpoint::new(cfg, [2; 16]);
        server.listen(PORT);
        Bench {
            client,
            server,
            now: Instant::from_secs(1),
            seg: vec![0; 2048],
            app: vec![0; 4096],
        }
    }

    /// Move every pending segment both ways, with the applications reacting
    /// to their events, until both sides are quiet.
    fn pump(&mut self) -> bool {
        let mut done = false;
        loop {
            let mut moved = false;
            while let Some(t) = self.client.poll_transmit(self.now, &mut self.seg) {
                let (tcp, n) = (t.tcp, t.payload_len);
                self.server
                    .handle_segment(t.remote, t.local, &tcp, &self.seg[..n], self.now);
                moved = true;
            }
            while let Some((id, ev)) = self.server.poll_event() {
                if ev == Event::Readable {
                    let n = self.server.recv(id, &mut self.app).unwrap();
                    if n > 0 {
                        self.server.send(id, RESPONSE).unwrap();
                        self.server.close(id).unwrap();
                    }
                }
            }
            while let Some(t) = self.server.poll_transmit(self.now, &mut self.seg) {
                let (tcp, n) = (t.tcp, t.payload_len);
                self.client
                    .handle_segment(t.remote, t.local, &tcp, &self.seg[..n], self.now);
                moved = true;
            }
            while let Some((id, ev)) = self.client.poll_event() {
                match ev {
                    Event::Connected => {
                        self.client.send(id, REQUEST).unwrap();
                    }
                    Event::Readable => while self.client.recv(id, &mut self.app).unwrap() > 0 {},
                    Event::PeerClosed => self.client.close(id).unwrap(),
                    Event::Closed => done = true,
                    other => panic!("unexpected {other:?}"),
                }
            }
            if !moved {
                return done;
            }
        }
    }

    fn one_connection(&mut self) {
        // 20 µs of virtual time per connection: TIME-WAIT entries pile up to
        // max_time_wait and are evicted, ports wrap around every ~0.6 s and
        // meet the server's TIME-WAIT entries (recycled by their timestamps).
        self.now = self.now + Duration::from_micros(20);
        self.client.handle_timeout(self.now);
        self.server.handle_timeout(self.now);
        let id = self
            .client
            .connect(CLIENT, SocketAddrV4::new(SERVER, PORT), self.now)
            .unwrap();
        black_box(id);
        assert!(self.pump(), "connection did not complete");
    }
}

fn short_connections(c: &mut Criterion) {
    let mut b = Bench::new();
    // Warm up past the first port wrap, so the steady state includes recycling.
    for _ in 0..40_000 {
        b.one_connection();
    }
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(1));
    g.bench_function("short_connection", |bench| {
        bench.iter(|| b.one_connection())
    });
    g.finish();
    let s = b.server.stats();
    eprintln!(
        "server: accepted {}, TIME-WAIT {} (recycled by SYN {}, evicted {}); client connections left {}",
        s.accepted,
        b.server.time_wait_count(),
        s.time_wait_recycled_passive,
        s.time_wait_dropped_early,
        b.client.connection_count()
    );
}

criterion_group!(benches, short_connections);
criterion_main!(benches);
