//! A deterministic benchmark: instruction counts from callgrind, which do not
//! depend on a noisy shared machine the way criterion's timings do.
//!
//! Two engines exchange whole Ethernet/IPv4/TCP frames built with
//! `wire::build_frame` and checked with `wire::parse_frame`, as a shard does,
//! so the count covers the engine, the frame code and the applications' copies.
//! Only the functions named `measured_*` are counted (callgrind's
//! `--toggle-collect`); the warm-up before them reaches the steady state
//! (ports wrapped onto TIME-WAIT entries, buffer pools full).
//!
//! Run: `bash bench/callgrind.sh` (builds this example and prints the counts).
//! Without valgrind, `cargo run --release --example callgrind -- short 1000`
//! just runs it.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;
use turnstile::tcp::{Config, ConnId, Endpoint, Event, Instant};
use turnstile::wire::{self, DATA_PAYLOAD_AT, FrameMeta};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const PORT: u16 = 80;
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: turnstile\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
const MEGABYTE: usize = 1 << 20;

struct Pair {
    client: Endpoint,
    server: Endpoint,
    now: Instant,
    frame: Vec<u8>,
    app: Vec<u8>,
    data: Vec<u8>,
    /// Bytes the server application has read (bulk mode).
    received: usize,
}

/// Build `t`'s frame in `frame` (payload written where the shard writes it), parse it
/// back and hand it to `to`.
fn deliver(from: &mut Endpoint, to: &mut Endpoint, now: Instant, frame: &mut [u8]) -> bool {
    let Some(t) = from.poll_transmit(now, &mut frame[DATA_PAYLOAD_AT..]) else {
        return false;
    };
    let meta = FrameMeta {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        src_ip: t.local,
        dst_ip: t.remote,
    };
    let len = wire::build_frame(frame, &meta, &t.tcp, DATA_PAYLOAD_AT, t.payload_len)
        .expect("frame fits");
    let p = wire::parse_frame(&frame[..len]).expect("frame we built parses");
    to.handle_segment(p.meta.dst_ip, p.meta.src_ip, &p.tcp, p.payload, now);
    true
}

impl Pair {
    fn new() -> Self {
        let cfg = Config::default();
        let client = Endpoint::new(cfg.clone(), [1; 16]);
        let mut server = Endpoint::new(cfg, [2; 16]);
        server.listen(PORT);
        Pair {
            client,
            server,
            now: Instant::from_secs(1),
            frame: vec![0; 2048],
            app: vec![0; 16384],
            data: (0..16384u32).map(|i| (i * 7) as u8).collect(),
            received: 0,
        }
    }

    fn tick(&mut self, d: Duration) {
        self.now = self.now + d;
        self.client.handle_timeout(self.now);
        self.server.handle_timeout(self.now);
    }

    /// Move segments both ways with the applications reacting, until quiet.
    /// `bulk`: the client keeps its send buffer full and the server only reads.
    fn pump(&mut self, bulk: Option<ConnId>) -> bool {
        let mut done = false;
        loop {
            let mut moved = false;
            while deliver(
                &mut self.client,
                &mut self.server,
                self.now,
                &mut self.frame,
            ) {
                moved = true;
            }
            while let Some((id, ev)) = self.server.poll_event() {
                if ev == Event::Readable {
                    let mut got = 0;
                    loop {
                        let n = self.server.recv(id, &mut self.app).unwrap();
                        if n == 0 {
                            break;
                        }
                        got += n;
                    }
                    self.received += got;
                    if bulk.is_none() && got > 0 {
                        self.server.send(id, RESPONSE).unwrap();
                        self.server.close(id).unwrap();
                    }
                }
            }
            while deliver(
                &mut self.server,
                &mut self.client,
                self.now,
                &mut self.frame,
            ) {
                moved = true;
            }
            while let Some((id, ev)) = self.client.poll_event() {
                match ev {
                    Event::Connected if bulk.is_none() => {
                        self.client.send(id, REQUEST).unwrap();
                    }
                    Event::Readable => while self.client.recv(id, &mut self.app).unwrap() > 0 {},
                    Event::PeerClosed => self.client.close(id).unwrap(),
                    Event::Closed => done = true,
                    _ => {}
                }
            }
            if let Some(id) = bulk {
                while self.client.send_capacity(id) > 0 {
                    if self.client.send(id, &self.data).unwrap() == 0 {
                        break;
                    }
                }
                // One round per call: with instant delivery and a sender that
                // always refills, the exchange would otherwise never pause.
                return done;
            }
            if !moved {
                return done;
            }
        }
    }

    fn one_connection(&mut self) {
        self.tick(Duration::from_micros(20));
        let id = self
            .client
            .connect(CLIENT, SocketAddrV4::new(SERVER, PORT), self.now)
            .unwrap();
        black_box(id);
        assert!(self.pump(None), "connection did not complete");
    }

    /// Run the bulk connection until the server application has read `bytes` more.
    fn transfer(&mut self, id: ConnId, bytes: usize) {
        let goal = self.received + bytes;
        let mut rounds = 0;
        while self.received < goal {
            self.tick(Duration::from_micros(100));
            self.pump(Some(id));
            rounds += 1;
            assert!(rounds < 1_000_000, "transfer stalled");
        }
    }
}

#[inline(never)]
fn measured_short_connections(p: &mut Pair, n: usize) {
    for _ in 0..n {
        p.one_connection();
    }
}

#[inline(never)]
fn measured_bulk_megabyte(p: &mut Pair, id: ConnId) {
    p.transfer(id, MEGABYTE);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "short".into());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let mut p = Pair::new();
    match mode.as_str() {
        "short" => {
            // Past the first port wrap, so recycling is part of the steady state.
            for _ in 0..30_000 {
                p.one_connection();
            }
            measured_short_connections(&mut p, n);
            println!("short: {n} connections measured");
        }
        "bulk" => {
            let id = p
                .client
                .connect(CLIENT, SocketAddrV4::new(SERVER, PORT), p.now)
                .unwrap();
            p.transfer(id, 4 * MEGABYTE);
            measured_bulk_megabyte(&mut p, id);
            println!("bulk: 1 MiB measured ({} bytes read in all)", p.received);
        }
        other => {
            eprintln!("usage: callgrind short [N] | bulk (got {other:?})");
            std::process::exit(2);
        }
    }
}
