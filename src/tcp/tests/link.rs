//! One bulk connection over a path with a rate, a delay and a bottleneck
//! queue (a simulated clock, seeded loss): what receive-window autotuning
//! and send buffers that follow cwnd let one connection reach, and what a
//! per-connection memory bound holds it to.

use crate::tcp::{Config, Congestion, ConnId, Endpoint, Event, Instant};
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
/// The checked byte stream repeats with this prime period.
const PATTERN_PERIOD: usize = 65_521;
/// Bytes offered to `send` at a time.
const CHUNK: usize = 256 * 1024;

struct Path {
    rate_bps: u64,
    /// One way.
    delay: Duration,
    loss: f64,
    /// Bottleneck queue per direction, bytes (tail drop beyond it).
    queue: u64,
}

struct Packet {
    /// 0: the receiver B; i + 1: sender i.
    to: usize,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    tcp: TcpRepr,
    payload: Vec<u8>,
}

struct Outcome {
    /// Goodput at the receiver's application over the measured interval.
    rate_bps: f64,
    retransmits: u64,
    rtos: u64,
    grown: u64,
    dropped_queue: u64,
}

/// Runs `warmup + measure` of simulated time; A sends as fast as it may, B's
/// application reads everything at once.
fn run(seed: u64, path: &Path, cfg: Config, warmup: Duration, measure: Duration) -> Outcome {
    run_flows(seed, path, &[cfg], warmup, measure).remove(0)
}

/// Like `run` with one sender per configuration, each with its own
/// endpoint and address, all to one receiver over the same bottleneck (the
/// receiver takes the first configuration). One `Outcome` per flow; each
/// flow's `grown` and `dropped_queue` are the receiver's and the path's.
fn run_flows(
    seed: u64,
    path: &Path,
    cfgs: &[Config],
    warmup: Duration,
    measure: Duration,
) -> Vec<Outcome> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut senders: Vec<Endpoint> = cfgs
        .iter()
        .enumerate()
        .map(|(i, c)| Endpoint::new(c.clone(), [3 + i as u8; 16]))
        .collect();
    let mut b = Endpoint::new(cfgs[0].clone(), [4; 16]);
    b.listen(PORT);
    let mut now = Instant::from_secs(1);
    let start = now;
    let sender_ip = |i: usize| Ipv4Addr::from(u32::from(A_IP) + i as u32);
    let ids: Vec<ConnId> = senders
        .iter_mut()
        .enumerate()
        .map(|(i, a)| {
            a.connect(sender_ip(i), SocketAddrV4::new(B_IP, PORT), now)
                .unwrap()
        })
        .collect();
    // Every byte is checked: a pattern of prime period no segment or
    // buffer size divides, read from a table at the stream offset.
    let table: Vec<u8> = (0..PATTERN_PERIOD + CHUNK)
        .map(|i| ((i % PATTERN_PERIOD) * 131 / 7) as u8 ^ (i % PATTERN_PERIOD % 253) as u8)
        .collect();
    let mut sent = vec![0u64; cfgs.len()];
    let mut scratch = vec![0u8; CHUNK];
    let mut buf = vec![0u8; 2048];
    let mut in_flight: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut packets: std::collections::HashMap<u64, Packet> = Default::default();
    let mut next = 0u64;
    // Per direction: when the bottleneck is free again, in nanoseconds.
    let mut link_free_ns = [0u64; 2];
    let n = cfgs.len();
    let mut received = vec![0u64; n];
    let mut received_at_warmup: Option<Vec<u64>> = None;
    let mut dropped_queue = 0;
    let end = start + warmup + measure;
    let mut steps = 0u64;
    while now < end {
        steps += 1;
        assert!(steps < 50_000_000, "the simulation does not advance");
        // Deliver what is due.
        while let Some(&Reverse((at, k))) = in_flight.peek() {
            if at > now {
                break;
            }
            in_flight.pop();
            let p = packets.remove(&k).unwrap();
            let ep = if p.to == 0 {
                &mut b
            } else {
                &mut senders[p.to - 1]
            };
            ep.handle_segment(p.dst, p.src, &p.tcp, &p.payload, now);
        }
        for a in &mut senders {
            a.handle_timeout(now);
        }
        b.handle_timeout(now);
        // Applications.
        while let Some((bid, ev)) = b.poll_event() {
            if matches!(ev, Event::Accepted { .. } | Event::Readable) {
                let from = *b.conn_for_test(bid).tuple.remote.ip();
                let flow = (u32::from(from) - u32::from(A_IP)) as usize;
                while let Ok(got @ 1..) = b.recv(bid, &mut scratch) {
                    let at = (received[flow] % PATTERN_PERIOD as u64) as usize;
                    assert!(
                        scratch[..got] == table[at..at + got],
                        "flow {flow}: wrong bytes at offset {}",
                        received[flow]
                    );
                    received[flow] += got as u64;
                }
            }
        }
        for (i, (a, &id)) in senders.iter_mut().zip(&ids).enumerate() {
            while a.poll_event().is_some() {}
            while a.send_capacity(id) > 0 {
                let at = (sent[i] % PATTERN_PERIOD as u64) as usize;
                let w = a.send(id, &table[at..at + CHUNK]).unwrap_or(0);
                sent[i] += w as u64;
                if w == 0 {
                    break;
                }
            }
        }
        if received_at_warmup.is_none() && now >= start + warmup {
            received_at_warmup = Some(received.clone());
        }
        // Transmit onto the path: every sender shares the forward link.
        for from in (1..=n).chain([0]) {
            let (ep, dir) = if from == 0 {
                (&mut b, 1)
            } else {
                (&mut senders[from - 1], 0)
            };
            while let Some(t) = ep.poll_transmit(now, &mut buf) {
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
                let to = if from == 0 {
                    (u32::from(t.remote) - u32::from(A_IP)) as usize + 1
                } else {
                    0
                };
                packets.insert(
                    next,
                    Packet {
                        to,
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
        let wake = [in_flight.peek().map(|Reverse((t, _))| *t), b.poll_timeout()]
            .into_iter()
            .chain(senders.iter().map(Endpoint::poll_timeout))
            .flatten()
            .min()
            .unwrap_or(end);
        now = wake.max(now + Duration::from_micros(1)).min(end);
    }
    let at_warmup = received_at_warmup.unwrap_or_else(|| vec![0; n]);
    (0..n)
        .map(|i| Outcome {
            rate_bps: (received[i] - at_warmup[i]) as f64 * 8.0 / measure.as_secs_f64(),
            retransmits: senders[i].stats().retransmits,
            rtos: senders[i].stats().rto_expirations,
            grown: b.stats().recv_buffer_grown,
            dropped_queue,
        })
        .collect()
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
    // Issue #12 asks for 80% of the link here; not with NewReno. Measured
    // 271 Mbit/s (seed 0x1212, main 0f7f45a and after; 143 in an earlier
    // build): AIMD's response to random loss, 1.22 to 1.68 / sqrt(p)
    // segments per RTT (`aimd_bps`), is 142-196 Mbit/s at p = 1e-4 and 10 ms,
    // whatever the window. `congestion = bbr` meets it (the test below).
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

fn with(congestion: Congestion) -> Config {
    Config {
        congestion,
        ..Config::default()
    }
}

/// The response function of a loss-based AIMD flow (Mathis et al.),
/// MSS / RTT x C / sqrt(p), in bits per second. C = sqrt(3/2) = 1.22 for
/// Reno's halving; sqrt((1 + b) / (2 (1 - b))) = 1.68 for our decrease
/// b = 0.7. CUBIC does no better here: RFC 9438 4.3 takes the larger of
/// its cubic window and the Reno-friendly estimate, and its cubic
/// response, ((C (3 + b)) / (4 (1 - b)))^(1/4) x RTT^(3/4) / p^(3/4)
/// segments with C = 0.4, is 33 segments per RTT (39 Mbit/s) at 10 ms and
/// p = 1e-4, below Reno's 122 (141 Mbit/s). 80% of 1 Gbit/s at 10 ms is 690
/// segments per RTT, which AIMD reaches only below p = 6e-6.
fn aimd_bps(mss: f64, rtt: f64, p: f64, beta: f64) -> f64 {
    mss * 8.0 / rtt * ((1.0 + beta) / (2.0 * (1.0 - beta))).sqrt() / p.sqrt()
}

/// Issue #12's acceptance: one connection over 1 Gbit/s, 10 ms, 0.01%
/// random loss reaches at least 80% of the link. Not with NewReno (the
/// test above): with the model-based controller.
#[test]
fn bbr_fills_a_gigabit_10ms_path_with_0_01_percent_loss() {
    let path = gigabit_10ms(0.0001);
    let (warmup, measure) = (Duration::from_secs(2), Duration::from_secs(4));
    let bbr = run(SEED, &path, with(Congestion::Bbr), warmup, measure);
    let reno = run(SEED, &path, with(Congestion::NewReno), warmup, measure);
    // 1448-byte segments (timestamps on), 10 ms.
    let mathis = aimd_bps(1448.0, 0.010, 0.0001, 0.5);
    let aimd_07 = aimd_bps(1448.0, 0.010, 0.0001, 0.7);
    eprintln!(
        "1 Gbit/s, 10 ms RTT, 0.01% loss: bbr {:.0} Mbit/s ({} retransmits, {} queue drops); \
         newreno {:.0} Mbit/s ({} retransmits); AIMD response {:.0} Mbit/s (Reno), {:.0} (beta 0.7)",
        bbr.rate_bps / 1e6,
        bbr.retransmits,
        bbr.dropped_queue,
        reno.rate_bps / 1e6,
        reno.retransmits,
        mathis / 1e6,
        aimd_07 / 1e6
    );
    assert!(bbr.retransmits > 0, "the path lost segments");
    assert!(
        bbr.rate_bps >= 0.8 * path.rate_bps as f64,
        "bbr: {:.0} Mbit/s is under 80% of the link",
        bbr.rate_bps / 1e6
    );
    // NewReno stays near its response function: the reason for the model.
    assert!(
        reno.rate_bps < 1.5 * aimd_07,
        "newreno {:.0} Mbit/s",
        reno.rate_bps / 1e6
    );
}

#[test]
fn bbr_without_loss_runs_at_line_rate() {
    let path = gigabit_10ms(0.0);
    let o = run(
        SEED,
        &path,
        with(Congestion::Bbr),
        Duration::from_secs(2),
        Duration::from_secs(2),
    );
    eprintln!(
        "bbr, 1 Gbit/s, 10 ms RTT, no loss: {:.0} Mbit/s; {} retransmits, {} queue drops",
        o.rate_bps / 1e6,
        o.retransmits,
        o.dropped_queue
    );
    assert!(
        o.rate_bps >= 0.9 * path.rate_bps as f64,
        "{:.0} Mbit/s",
        o.rate_bps / 1e6
    );
}

#[test]
fn bbr_is_held_to_a_64_kib_memory_bound() {
    let path = gigabit_10ms(0.0001);
    let bound = 64 * 1024;
    let cfg = Config {
        recv_buffer: bound,
        recv_buffer_max: bound,
        send_buffer: bound,
        send_buffer_max: bound,
        ..with(Congestion::Bbr)
    };
    let o = run(
        SEED,
        &path,
        cfg,
        Duration::from_secs(1),
        Duration::from_secs(2),
    );
    let expected = bound as f64 * 8.0 / 0.0105;
    eprintln!(
        "bbr, 64 KiB bound, 0.01% loss: {:.1} Mbit/s (one window per RTT: {:.1} Mbit/s)",
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

/// Heavy random loss: every byte still arrives in order (checked in
/// `run_flows`), and the model collapses no worse than NewReno.
#[test]
fn bbr_under_1_and_5_percent_loss_is_byte_exact_and_no_worse_than_newreno() {
    for loss in [0.01, 0.05] {
        let path = gigabit_10ms(loss);
        let (warmup, measure) = (Duration::from_secs(1), Duration::from_secs(2));
        let bbr = run(SEED, &path, with(Congestion::Bbr), warmup, measure);
        let reno = run(SEED, &path, with(Congestion::NewReno), warmup, measure);
        eprintln!(
            "1 Gbit/s, 10 ms RTT, {}% loss: bbr {:.1} Mbit/s ({} retransmits), \
             newreno {:.1} Mbit/s ({} retransmits)",
            loss * 100.0,
            bbr.rate_bps / 1e6,
            bbr.retransmits,
            reno.rate_bps / 1e6,
            reno.retransmits
        );
        assert!(bbr.rate_bps > 0.0, "{loss}: bbr moved nothing");
        assert!(
            bbr.rate_bps >= reno.rate_bps,
            "{loss}: bbr {:.1} Mbit/s below newreno {:.1}",
            bbr.rate_bps / 1e6,
            reno.rate_bps / 1e6
        );
    }
}

/// Two model-based flows through one bottleneck share it: neither starves
/// and the shares are even. Not full: each flow keeps up to 2 BDP of its
/// own estimate in flight, so two overfill a one-BDP drop-tail buffer and
/// lose about a tenth of their segments (measured 714 Mbit/s together,
/// 30,000 retransmissions each): BBR v1's known weakness in shallow
/// buffers, which BBRv2's loss-driven inflight bound addresses (not built).
/// A NewReno flow beside a BBR flow is printed, not judged (BBR v1 takes
/// more than its share from loss-based flows there).
#[test]
fn two_bbr_flows_share_a_bottleneck() {
    let path = gigabit_10ms(0.0);
    let (warmup, measure) = (Duration::from_secs(3), Duration::from_secs(3));
    let two = run_flows(
        SEED,
        &path,
        &[with(Congestion::Bbr), with(Congestion::Bbr)],
        warmup,
        measure,
    );
    let (x, y) = (two[0].rate_bps, two[1].rate_bps);
    // Jain's fairness index: 1 for equal shares, 0.5 for one flow taking all.
    let jain = (x + y).powi(2) / (2.0 * (x * x + y * y));
    let mixed = run_flows(
        SEED,
        &path,
        &[with(Congestion::Bbr), with(Congestion::NewReno)],
        warmup,
        measure,
    );
    eprintln!(
        "two bbr flows: {:.0} + {:.0} Mbit/s (Jain index {jain:.3}, {} queue drops, \
         {} + {} retransmits, {} + {} timeouts); bbr beside newreno: {:.0} + {:.0} Mbit/s",
        x / 1e6,
        y / 1e6,
        two[0].dropped_queue,
        two[0].retransmits,
        two[1].retransmits,
        two[0].rtos,
        two[1].rtos,
        mixed[0].rate_bps / 1e6,
        mixed[1].rate_bps / 1e6
    );
    let link = path.rate_bps as f64;
    assert!(x + y >= 0.6 * link, "together {:.0} Mbit/s", (x + y) / 1e6);
    assert!(
        x.min(y) >= 0.25 * link,
        "one flow starved: {:.0} and {:.0} Mbit/s",
        x / 1e6,
        y / 1e6
    );
    assert!(jain >= 0.9, "Jain index {jain:.3}");
    assert!(mixed[1].rate_bps > 0.0, "newreno moved nothing beside bbr");
}
