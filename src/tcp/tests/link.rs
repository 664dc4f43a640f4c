//! One bulk connection over a path with a rate, a delay and a bottleneck
//! queue (a simulated clock, seeded loss): what receive-window autotuning
//! and send buffers that follow cwnd let one connection reach, and what a
//! per-connection memory bound holds it to.

use crate::tcp::{Config, ConnId, Endpoint, Event, Instant};
use crate::wire::TcpRepr;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

const A_IP: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 2);
const PORT: u16 = 5201;
/// Ethernet, IPv4 and TCP headers around a payload (TCP options included
/// in the TCP header length the sim adds below).
const FRAME_OVERHEAD: u64 = 14 + 20 + 20;

struct Path {
    rate_bps: u64,
    /// One way.
    delay: Duration,
    loss: f64,
    /// Bottleneck queue per direction, bytes (tail drop beyond it).
    queue: u64,
}

struct Packet {
    to_b: bool,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    tcp: TcpRepr,
    payload: Vec<u8>,
}

struct Outcome {
    /// Goodput at the receiver's application over the measured interval.
    rate_bps: f64,
    retransmits: u64,
    grown: u64,
    dropped_queue: u64,
}

/// Runs `warmup + measure` of simulated time; A sends as fast as it may, B's
/// application reads everything at once.
fn run(seed: u64, path: &Path, cfg: Config, warmup: Duration, measure: Duration) -> Outcome {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut a = Endpoint::new(cfg.clone(), [3; 16]);
    let mut b = Endpoint::new(cfg, [4; 16]);
    b.listen(PORT);
    let mut now = Instant::from_secs(1);
    let start = now;
    let id: ConnId = a.connect(A_IP, SocketAddrV4::new(B_IP, PORT), now).unwrap();
    let data = vec![0x5au8; 256 * 1024];
    let mut scratch = vec![0u8; 256 * 1024];
    let mut buf = vec![0u8; 2048];
    let mut in_flight: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut packets: std::collections::HashMap<u64, Packet> = Default::default();
    let mut next = 0u64;
    // Per direction: when the bottleneck is free again, in nanoseconds.
    let mut link_free_ns = [0u64; 2];
    let mut received = 0u64;
    let mut received_at_warmup = None;
    let mut dropped_queue = 0;
    let end = start + warmup + measure;
    let mut steps = 0u64;
    while now < end {
        steps += 1;
        assert!(steps < 50_000_000, "the simulation does not advance");
        // Deliver what is due.
        while let Some(&Reverse((at, n))) = in_flight.peek() {
            if at > now {
                break;
            }
            in_flight.pop();
            let p = packets.remove(&n).unwrap();
            let ep = if p.to_b { &mut b } else { &mut a };
            ep.handle_segment(p.dst, p.src, &p.tcp, &p.payload, now);
        }
        a.handle_timeout(now);
        b.handle_timeout(now);
        // Applications.
        while let Some((bid, ev)) = b.poll_event() {
            if matches!(ev, Event::Accepted { .. } | Event::Readable) {
                while let Ok(n @ 1..) = b.recv(bid, &mut scratch) {
                    received += n as u64;
                }
            }
        }
        while a.poll_event().is_some() {}
        while a.send_capacity(id) > 0 {
            if a.send(id, &data).unwrap_or(0) == 0 {
                break;
            }
        }
        if received_at_warmup.is_none() && now >= start + warmup {
            received_at_warmup = Some(received);
        }
        // Transmit onto the path.
        for to_b in [true, false] {
            let ep = if to_b { &mut a } else { &mut b };
            while let Some(t) = ep.poll_transmit(now, &mut buf) {
                let dir = usize::from(!to_b);
                let options = if t.tcp.options.timestamps.is_some() {
                    12
                } else {
                    0
                };
                let bytes = t.payload_len as u64 + FRAME_OVERHEAD + options;
                let now_ns = now.as_micros() * 1000;
                let free = link_free_ns[dir].max(now_ns);
                let backlog_bytes = (free - now_ns) * path.rate_bps / 8 / 1_000_000_000;
                if backlog_bytes + bytes > path.queue {
                    dropped_queue += 1;
                    continue;
                }
                link_free_ns[dir] = free + bytes * 8 * 1_000_000_000 / path.rate_bps;
                if rng.random_bool(path.loss) {
                    continue;
                }
                let at = Instant::from_micros(link_free_ns[dir].div_ceil(1000)) + path.delay;
                packets.insert(
                    next,
                    Packet {
                        to_b,
                        src: t.local,
                        dst: t.remote,
                        tcp: t.tcp,
                        payload: buf[..t.payload_len].to_vec(),
                    },
                );
                in_flight.push(Reverse((at, next)));
                next += 1;
            }
        }
        let wake = [
            in_flight.peek().map(|Reverse((t, _))| *t),
            a.poll_timeout(),
            b.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(end);
        now = wake.max(now + Duration::from_micros(1)).min(end);
    }
    let measured = received - received_at_warmup.unwrap_or(0);
    Outcome {
        rate_bps: measured as f64 * 8.0 / measure.as_secs_f64(),
        retransmits: a.stats().retransmits,
        grown: b.stats().recv_buffer_grown,
        dropped_queue,
    }
}

/// 1 Gbit/s, 10 ms RTT, a bandwidth-delay product of queue.
fn gigabit_10ms(loss: f64) -> Path {
    Path {
        rate_bps: 1_000_000_000,
        delay: Duration::from_millis(5),
        loss,
        queue: 1_250_000,
    }
}

const SEED: u64 = 0x1212;

#[test]
fn autotuning_fills_a_gigabit_10ms_path() {
    let path = gigabit_10ms(0.0);
    let o = run(
        SEED,
        &path,
        Config::default(),
        Duration::from_secs(2),
        Duration::from_secs(2),
    );
    eprintln!(
        "1 Gbit/s, 10 ms RTT, no loss: {:.0} Mbit/s; {} retransmits, {} queue drops, window grown {} times",
        o.rate_bps / 1e6,
        o.retransmits,
        o.dropped_queue,
        o.grown
    );
    assert!(o.grown > 0, "the receive buffer grew");
    assert!(
        o.rate_bps >= 0.8 * path.rate_bps as f64,
        "{:.0} Mbit/s is under 80% of the link",
        o.rate_bps / 1e6
    );
}

#[test]
fn a_gigabit_10ms_path_with_0_01_percent_loss() {
    let path = gigabit_10ms(0.0001);
    let o = run(
        SEED,
        &path,
        Config::default(),
        Duration::from_secs(2),
        Duration::from_secs(4),
    );
    eprintln!(
        "1 Gbit/s, 10 ms RTT, 0.01% loss: {:.0} Mbit/s; {} retransmits, {} queue drops, window grown {} times",
        o.rate_bps / 1e6,
        o.retransmits,
        o.dropped_queue,
        o.grown
    );
    // Issue #12 asks for 80% of the link here; NOT MET. Measured 143 Mbit/s
    // (seed 0x1212): the NewReno/SACK response to random loss, about
    // 1.22 / sqrt(p) segments per RTT (Mathis et al.), is 142 Mbit/s at
    // p = 1e-4 and 10 ms, whatever the window; 80% needs a congestion
    // control that backs off less per random loss (src/tcp/congestion.rs).
    // What is asserted: windows are no longer the limit (a fixed 64 KiB
    // window carries at most 52 Mbit/s).
    assert!(o.retransmits > 0, "the path lost segments");
    assert!(
        o.rate_bps >= 2.0 * 52e6,
        "{:.0} Mbit/s with 0.01% loss",
        o.rate_bps / 1e6
    );
}

#[test]
fn a_64_kib_memory_bound_carries_about_64_kib_per_rtt() {
    let path = gigabit_10ms(0.0);
    let bound = 64 * 1024;
    let cfg = Config {
        recv_buffer: bound,
        recv_buffer_max: bound,
        send_buffer: bound,
        send_buffer_max: bound,
        ..Config::default()
    };
    let o = run(
        SEED,
        &path,
        cfg,
        Duration::from_secs(1),
        Duration::from_secs(2),
    );
    // One window per RTT: 10 ms of propagation plus serialization.
    let expected = bound as f64 * 8.0 / 0.0105;
    eprintln!(
        "64 KiB bound: {:.1} Mbit/s (one window per RTT: {:.1} Mbit/s)",
        o.rate_bps / 1e6,
        expected / 1e6
    );
    assert_eq!(o.grown, 0, "the bound holds");
    assert!(
        o.rate_bps > 0.6 * expected && o.rate_bps < 1.05 * expected,
        "{:.1} Mbit/s, expected about {:.1}",
        o.rate_bps / 1e6,
        expected / 1e6
    );
}
