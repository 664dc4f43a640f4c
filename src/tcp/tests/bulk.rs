//! Bulk simulation: several GiB through ONE connection, both directions, on a
//! 50 us round trip with a simulated clock, so sequence numbers wrap (past
//! 2^31 and 2^32 on both sides) within one test. Every byte is checked.
//!
//! Phases on the A -> B stream: 2.25 GiB without loss, then exactly one lost
//! data segment (it must be repaired without a retransmission timeout: the
//! RFC 6582 `recover` bug made it wait for the RTO), then 1% loss in both
//! directions for the rest.

use crate::tcp::seq::Seq;
use crate::tcp::{Config, ConnId, Endpoint, Event, Instant, State};
use crate::wire::TcpRepr;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

const A_IP: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 2);
const ONE_WAY: Duration = Duration::from_micros(25);
const GIB: u64 = 1 << 30;

/// A byte stream that does not repeat with any period a segment or buffer
/// size could hide: a random table of prime length, read cyclically.
struct Pattern {
    table: Vec<u8>,
}

impl Pattern {
    const LEN: usize = 1_000_003;
    fn new(rng: &mut SmallRng) -> Self {
        let mut table = vec![0u8; Self::LEN + 65536];
        rng.fill(&mut table[..Self::LEN]);
        // The tail repeats the head, so a read may start anywhere in the cycle.
        table.copy_within(..65536, Self::LEN);
        Pattern { table }
    }
    fn at(&self, stream: u64, offset: u64, len: usize) -> &[u8] {
        let start = ((offset + stream * 4099) % Self::LEN as u64) as usize;
        &self.table[start..start + len]
    }
}

struct Packet {
    at: Instant,
    tcp: TcpRepr,
    payload: Vec<u8>,
}

/// One direction's application view.
struct Stream {
    total: u64,
    sent: u64,
    received: u64,
}

struct Bulk {
    rng: SmallRng,
    now: Instant,
    a: Endpoint,
    b: Endpoint,
    a_id: ConnId,
    b_id: ConnId,
    to_b: VecDeque<Packet>,
    to_a: VecDeque<Packet>,
    spare: Vec<Vec<u8>>,
    pattern: Pattern,
    /// [A -> B, B -> A]
    streams: [Stream; 2],
    loss: f64,
    /// Drop the next data segment from A (the single-loss probe).
    drop_next_a_data: bool,
    /// Sequence number of the probe's lost segment.
    probe_lost: Option<u32>,
    buf: Vec<u8>,
    lost: u64,
    /// B accepted: both ids are known.
    ready: bool,
    /// `loss` applies to A's segments only (data and ACKs), as the sidecar
    /// test drops only the proxy's segments.
    loss_from_a_only: bool,
    /// Print the sender's state at each retransmission timeout (diagnostics).
    trace_rto: bool,
}

impl Bulk {
    fn new(seed: u64, a_to_b: u64, _b_to_a: u64) -> Self {
        Self::with_config(
            seed,
            a_to_b,
            Config {
                send_buffer: 256 * 1024,
                recv_buffer: 256 * 1024,
                ..Config::default()
            },
        )
    }

    fn with_config(seed: u64, a_to_b: u64, cfg: Config) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut a = Endpoint::new(cfg.clone(), [1; 16]);
        let mut b = Endpoint::new(cfg, [2; 16]);
        b.listen(80);
        let now = Instant::from_secs(10);
        let a_id = a
            .connect_from(
                SocketAddrV4::new(A_IP, 40_000),
                SocketAddrV4::new(B_IP, 80),
                now,
            )
            .unwrap();
        let pattern = Pattern::new(&mut rng);
        let mut s = Bulk {
            rng,
            now,
            a,
            b,
            a_id,
            b_id: a_id,
            to_b: VecDeque::new(),
            to_a: VecDeque::new(),
            spare: Vec::new(),
            pattern,
            streams: [
                Stream {
                    total: a_to_b,
                    sent: 0,
                    received: 0,
                },
                // B's stream starts with the lossy phase: the probe needs
                // pure duplicate ACKs (RFC 5681 2: an ACK carrying data is
                // not a duplicate, so without SACK a loss during two-way
                // bulk waits for the RTO).
                Stream {
                    total: 0,
                    sent: 0,
                    received: 0,
                },
            ],
            loss: 0.0,
            drop_next_a_data: false,
            probe_lost: None,
            buf: vec![0; 65536],
            lost: 0,
            ready: false,
            loss_from_a_only: false,
            trace_rto: std::env::var_os("TRACE_RTO").is_some(),
        };
        for _ in 0..100 {
            s.step();
            if let Some((id, Event::Accepted { .. })) = s.b.poll_event() {
                s.b_id = id;
                s.ready = true;
                return s;
            }
        }
        panic!("no handshake");
    }

    fn transmit(&mut self) {
        for from_a in [true, false] {
            loop {
                let ep = if from_a { &mut self.a } else { &mut self.b };
                let Some(t) = ep.poll_transmit(self.now, &mut self.buf) else {
                    break;
                };
                if from_a && self.drop_next_a_data && t.payload_len > 0 {
                    self.drop_next_a_data = false;
                    self.probe_lost = Some(t.tcp.seq);
                    continue;
                }
                if self.loss > 0.0
                    && (from_a || !self.loss_from_a_only)
                    && self.rng.random_bool(self.loss)
                {
                    self.lost += 1;
                    continue;
                }
                let mut payload = self.spare.pop().unwrap_or_default();
                payload.clear();
                payload.extend_from_slice(&self.buf[..t.payload_len]);
                let p = Packet {
                    at: self.now + ONE_WAY,
                    tcp: t.tcp,
                    payload,
                };
                if from_a {
                    self.to_b.push_back(p);
                } else {
                    self.to_a.push_back(p);
                }
            }
        }
    }

    fn deliver(&mut self) -> bool {
        let mut moved = false;
        for to_b in [true, false] {
            loop {
                let q = if to_b { &mut self.to_b } else { &mut self.to_a };
                if q.front().is_none_or(|p| p.at > self.now) {
                    break;
                }
                let p = q.pop_front().unwrap();
                if to_b {
                    self.b
                        .handle_segment(B_IP, A_IP, &p.tcp, &p.payload, self.now);
                } else {
                    self.a
                        .handle_segment(A_IP, B_IP, &p.tcp, &p.payload, self.now);
                }
                self.spare.push(p.payload);
                moved = true;
            }
        }
        moved
    }

    /// Applications: fill the send buffers, drain and check the receive buffers.
    fn apps(&mut self) {
        if !self.ready {
            return;
        }
        for s in 0..2 {
            let (ep, id) = if s == 0 {
                (&mut self.a, self.a_id)
            } else {
                (&mut self.b, self.b_id)
            };
            let st = &mut self.streams[s];
            while st.sent < st.total {
                let n = ((st.total - st.sent) as usize).min(64 * 1024);
                let chunk = self.pattern.at(s as u64, st.sent, n);
                let w = ep.send(id, chunk).expect("send");
                st.sent += w as u64;
                if w < n {
                    break;
                }
            }
            // Reads: the other endpoint receives stream s.
            let (rep, rid) = if s == 0 {
                (&mut self.b, self.b_id)
            } else {
                (&mut self.a, self.a_id)
            };
            loop {
                let n = rep.recv(rid, &mut self.buf).expect("recv");
                if n == 0 {
                    break;
                }
                let want = self.pattern.at(s as u64, st.received, n);
                assert!(
                    self.buf[..n] == *want,
                    "stream {s}: wrong bytes at offset {}",
                    st.received
                );
                st.received += n as u64;
                assert!(
                    st.received <= st.sent,
                    "stream {s}: more received than sent"
                );
            }
        }
        while self.a.poll_event().is_some() {}
        while self.b.poll_event().is_some() {}
    }

    /// One round: deliver what is due, let the applications run, send; or
    /// advance the clock to the next packet or timer.
    fn step(&mut self) {
        let moved = self.deliver();
        self.apps();
        self.transmit();
        if moved {
            return;
        }
        let next = [
            self.to_b.front().map(|p| p.at),
            self.to_a.front().map(|p| p.at),
            self.a.poll_timeout(),
            self.b.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("something pending");
        if next > self.now {
            self.now = next;
        }
        if self.trace_rto && self.ready {
            for (name, ep, id) in [("A", &mut self.a, self.a_id), ("B", &mut self.b, self.b_id)] {
                if ep.state(id).is_some() {
                    let c = ep.conn_for_test(id);
                    if c.rto_at.is_some_and(|t| t <= self.now) {
                        eprintln!(
                            "RTO {name} at {} us: {}",
                            self.now.as_micros(),
                            c.sender_dump()
                        );
                    }
                }
            }
        }
        self.a.handle_timeout(self.now);
        self.b.handle_timeout(self.now);
    }

    fn run_until(&mut self, mut done: impl FnMut(&Bulk) -> bool) {
        let limit = self.now + Duration::from_secs(3600);
        while !done(self) {
            assert!(self.now < limit, "simulated hour passed without progress");
            self.step();
        }
    }
}

/// Drops A's next data segment once `at` bytes of A's stream have arrived
/// and checks its repair: by a loss recovery episode (fast retransmit, or
/// SACK recovery entered by RACK), with no retransmission timeout, within
/// 150 ms simulated. Returns the lost segment's distance from A's ISS.
fn single_loss_probe(s: &mut Bulk, seed: u64, at: u64) -> u32 {
    s.run_until(|s| s.streams[0].received >= at);
    let (rto_before, recoveries_before) =
        (s.a.stats().rto_expirations, s.a.stats().fast_retransmits);
    s.drop_next_a_data = true;
    s.run_until(|s| s.probe_lost.is_some());
    let lost_seq = s.probe_lost.take().unwrap();
    let from_iss = lost_seq.wrapping_sub(s.a.conn_for_test(s.a_id).iss.0);
    let sent_at = s.now;
    // Repaired when A's SND.UNA passes the lost segment (B's buffer may hold
    // megabytes sent before it, so bytes read by B's application say nothing).
    let limit = s.now + Duration::from_secs(60);
    while s.a.conn_for_test(s.a_id).snd_una <= Seq(lost_seq) {
        assert!(
            s.now < limit,
            "seed {seed}: the lost segment at ISS + {from_iss} was never repaired"
        );
        s.step();
    }
    assert_eq!(
        s.a.stats().rto_expirations,
        rto_before,
        "seed {seed}: the single loss at {at} B (ISS + {from_iss}) waited for a retransmission timeout"
    );
    assert_eq!(
        s.a.stats().fast_retransmits,
        recoveries_before + 1,
        "seed {seed}: the single loss at {at} B (ISS + {from_iss}) was not repaired by one recovery episode"
    );
    let took = s.now.saturating_duration_since(sent_at);
    assert!(
        took < Duration::from_millis(150),
        "seed {seed}: the single loss at {at} B (ISS + {from_iss}) took {took:?} to repair"
    );
    from_iss
}

fn bulk_run(seed: u64, a_to_b: u64, b_to_a: u64, lossless_first: u64) {
    let mut s = Bulk::new(seed, a_to_b, b_to_a);
    // Phases 1 and 2: lossless, then one lost data segment, repaired by
    // fast retransmit.
    single_loss_probe(&mut s, seed, lossless_first);
    // Phase 3: 1% loss both ways until both streams are through.
    s.loss = 0.01;
    s.streams[1].total = b_to_a;
    s.run_until(|s| s.streams.iter().all(|st| st.received == st.total));
    assert!(s.lost > 0);
    // Orderly close; both ends finish.
    s.loss = 0.0;
    s.ready = false;
    s.a.close(s.a_id).unwrap();
    s.b.close(s.b_id).unwrap();
    s.run_until(|s| {
        s.b.connection_count() == 0 && s.a.state(s.a_id).is_none_or(|st| st == State::TimeWait)
    });
    eprintln!(
        "bulk seed {seed}: {} + {} bytes, {} lost, {} fast retransmits, {} RTOs, {:?} simulated",
        a_to_b,
        b_to_a,
        s.lost,
        s.a.stats().fast_retransmits + s.b.stats().fast_retransmits,
        s.a.stats().rto_expirations + s.b.stats().rto_expirations,
        s.now.saturating_duration_since(Instant::from_secs(10)),
    );
}

/// 4.5 GiB A -> B (both of A's sequence wraps) and 1 GiB back, with the
/// single-loss probe after 2.25 GiB and 1% loss after it.
#[test]
#[ignore = "minutes in a loaded test run; run with --ignored"]
fn several_gib_through_one_connection() {
    bulk_run(7, 9 * GIB / 2, GIB, 9 * GIB / 4);
}

/// Small and quick variant with another seed (the big one runs in seconds in
/// release, minutes in debug).
#[test]
fn bulk_small_with_loss() {
    bulk_run(11, 64 << 20, 16 << 20, 16 << 20);
}

/// The RFC 6582 probe itself, past both of A's sequence laps: 2.25 GiB
/// (the lost segment is ISS + 2^31 + 2^28: a `recover` left at ISS
/// compared as ahead of SND.UNA there and turned fast retransmit off), then
/// 4.25 GiB (ISS + 2^32 + 2^28, the sequence numbers of the first lap
/// again) without loss, one lost segment each time; each is repaired by a
/// recovery episode, without a timeout, within 150 ms (simulated). The wrap
/// traces pin the same bug in milliseconds; this is the end-to-end view on
/// a connection that really moved the bytes (about 4 s in the ci profile).
#[test]
fn single_losses_past_2_31_and_2_32_from_the_iss_recover_without_rto() {
    let seed = 13;
    let mut s = Bulk::new(seed, 17 * GIB / 4 + (8 << 20), 0);
    let first = single_loss_probe(&mut s, seed, 9 * GIB / 4);
    let second = single_loss_probe(&mut s, seed, 17 * GIB / 4);
    // The distances wrap modulo 2^32: the first is past 2^31, the second
    // past 2^32 (small again).
    assert!(first > 1 << 31, "first probe at ISS + {first}");
    assert!(second < 1 << 29, "second probe at ISS + 2^32 + {second}");
    s.run_until(|s| s.streams[0].received == s.streams[0].total);
    eprintln!(
        "single losses at ISS + {first} and ISS + 2^32 + {second}: {} recoveries, {} RTOs, \
         {:?} simulated",
        s.a.stats().fast_retransmits,
        s.a.stats().rto_expirations,
        s.now.saturating_duration_since(Instant::from_secs(10)),
    );
}

/// What a lossy two-way transfer cost.
#[derive(Debug)]
struct Recovery {
    rtos: u64,
    probes: u64,
    simulated: Duration,
    lost: u64,
    retransmits: u64,
    /// RTOs by cause (`Stats::rto_*`), both ends: repeated, lost
    /// retransmission, in recovery, after a probe, SACKed, tail, handshake.
    causes: [u64; 7],
}

/// `Stats::rto_*` by cause, in `Recovery::causes` order.
fn rto_causes(s: &crate::tcp::Stats) -> [u64; 7] {
    [
        s.rto_repeated,
        s.rto_lost_rexmit,
        s.rto_in_recovery,
        s.rto_after_probe,
        s.rto_sacked,
        s.rto_tail,
        s.rto_handshake,
    ]
}

/// `bytes` each way through one connection on the 50 us path with 5% of the
/// segments lost in both directions (data and ACKs), SACK on or off.
fn lossy_two_way(seed: u64, bytes: u64, sack: bool) -> Recovery {
    lossy(seed, bytes, sack, false)
}

/// `lossy_two_way`, or with `a_only` the loss on A's segments only.
fn lossy(seed: u64, bytes: u64, sack: bool, a_only: bool) -> Recovery {
    let cfg = Config {
        send_buffer: 256 * 1024,
        recv_buffer: 256 * 1024,
        sack_permitted: sack,
        ..Config::default()
    };
    let mut s = Bulk::with_config(seed, bytes, cfg);
    s.streams[1].total = bytes;
    s.loss = 0.05;
    s.loss_from_a_only = a_only;
    let start = s.now;
    s.run_until(|s| s.streams.iter().all(|st| st.received == st.total));
    let (a, b) = (s.a.stats(), s.b.stats());
    Recovery {
        rtos: a.rto_expirations + b.rto_expirations,
        probes: a.tlp_probes + b.tlp_probes,
        simulated: s.now.saturating_duration_since(start),
        lost: s.lost,
        retransmits: a.retransmits + b.retransmits,
        causes: std::array::from_fn(|i| rto_causes(a)[i] + rto_causes(b)[i]),
    }
}

/// Diagnostics: RTO causes over many seeds at 50 MiB each way
/// (`TRACE_RTO=1` prints the sender's state at each timeout).
#[test]
#[ignore = "diagnostics"]
fn rto_causes_over_seeds() {
    let mut total = [0u64; 7];
    for seed in std::env::var("SEEDS").ok().map_or(100..110, |s| {
        let (a, b) = s.split_once("..").unwrap();
        a.parse().unwrap()..b.parse().unwrap()
    }) {
        let r = lossy(seed, 50 << 20, true, std::env::var_os("A_ONLY").is_some());
        eprintln!("seed {seed}: {r:?}");
        for (t, c) in total.iter_mut().zip(r.causes) {
            *t += c;
        }
    }
    eprintln!(
        "causes [repeated, lost rexmit, recovery, after probe, sacked, tail, handshake]: {total:?}"
    );
}

/// Recovery time under 5% random loss on a 50 us round trip is bounded by
/// round trips with SACK and RACK-TLP, by retransmission timeouts without:
/// the same seeds, with and without SACK. Every byte is checked on the way.
#[test]
fn sack_recovers_in_round_trips_not_timeouts() {
    for seed in [21, 22] {
        let with = lossy_two_way(seed, 8 << 20, true);
        let without = lossy_two_way(seed, 8 << 20, false);
        eprintln!(
            "seed {seed}: SACK {with:?} ({} tail loss probes)\n         NewReno {without:?}",
            with.probes
        );
        // RTOs are for what nothing else can repair (a lost probe, a lost
        // retransmission at the very tail): a handful, against one per
        // unrepaired loss without SACK.
        assert!(
            with.rtos * 5 <= without.rtos.max(5),
            "seed {seed}: {} RTOs with SACK, {} without",
            with.rtos,
            without.rtos
        );
        assert!(with.simulated * 3 < without.simulated, "seed {seed}");
        // The repair sends about what was lost, not more (ACKs are lost too,
        // so this counts against dropped packets of both kinds).
        assert!(
            with.retransmits <= with.lost * 3 / 2,
            "seed {seed}: {} retransmissions for {} lost packets",
            with.retransmits,
            with.lost
        );
    }
}
