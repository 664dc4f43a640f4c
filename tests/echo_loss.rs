//! Long transfers through `turnstile serve --app echo` under wire loss
//! (issue #11): a kernel client behind a router namespace streams a
//! position-dependent byte pattern and checks every byte that comes back,
//! while the router's nftables `forward` hook drops segments in both
//! directions (`common::router`: loss neither sender is told about). And the
//! single-loss probe: after 2.25 GiB (past 2^31 from turnstile's ISS)
//! without loss, exactly one of turnstile's segments is dropped and a
//! capture times its retransmission. Needs root.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::capture::{Capture, read_segments};
use common::router::{Far, dropped, far_host, lose_both_ways};
use common::*;

const PORT: u16 = 7000;
const METRICS: &str = "127.0.0.1:9961";
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// The largest read or write of the client, and the pattern's wrap-around tail.
const CHUNK: usize = 1 << 20;

/// A byte stream that does not repeat with any period a segment, window or
/// buffer size could hide: a pseudo-random table of prime length, read
/// cyclically (the tail repeats the head, so a slice may start anywhere;
/// the table is longer than a slice, so one slice wraps at most once).
struct Pattern {
    table: Vec<u8>,
}

impl Pattern {
    const LEN: usize = 2_000_003;

    fn new() -> Pattern {
        let mut table = vec![0u8; Self::LEN + CHUNK];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for b in table[..Self::LEN].iter_mut() {
            // xorshift64*
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            *b = (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8;
        }
        table.copy_within(..CHUNK, Self::LEN);
        Pattern { table }
    }

    /// `len` (at most [`CHUNK`]) bytes of the stream at `offset`.
    fn at(&self, offset: u64, len: usize) -> &[u8] {
        let start = (offset % Self::LEN as u64) as usize;
        &self.table[start..start + len]
    }
}

/// Progress shared by the client's threads and the test.
#[derive(Default)]
struct Progress {
    sent: AtomicU64,
    received: AtomicU64,
    /// The writer waits at this offset (0: never) until `release`, so the
    /// test can arm a capture and a rule while data is still to come.
    hold_at: AtomicU64,
    release: AtomicBool,
}

/// What the client saw.
#[derive(Debug, Default)]
struct Report {
    received: u64,
    /// Offset of the first byte that came back different.
    mismatch: Option<u64>,
    error: Option<String>,
    elapsed: Duration,
    /// When each further `mark` bytes had come back, from the connect.
    marks: Vec<Duration>,
}

impl Report {
    /// MB/s (10^6 bytes) of each `mark`-sized stretch that came back.
    fn rates(&self, mark: u64) -> Vec<f64> {
        let mut prev = Duration::ZERO;
        self.marks
            .iter()
            .map(|&t| {
                let d = (t - prev).as_secs_f64();
                prev = t;
                mark as f64 / d / 1e6
            })
            .collect()
    }
}

/// Streams `total` bytes to `target` from the far host and checks every byte
/// echoed back. A stall of 60 s on either direction ends it with an error.
fn echo_client(far: &Far, target: SocketAddrV4, total: u64, mark: u64, p: &Progress) -> Report {
    let pattern = Pattern::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut r = Report::default();
            if let Err(e) = far.host.enter() {
                r.error = Some(format!("enter {}: {e}", far.host.netns));
                return r;
            }
            let start = Instant::now();
            let mut sock = match TcpStream::connect_timeout(&target.into(), Duration::from_secs(10))
            {
                Ok(s) => s,
                Err(e) => {
                    r.error = Some(format!("connect: {e}"));
                    return r;
                }
            };
            let stall = Some(Duration::from_secs(60));
            let _ = sock.set_read_timeout(stall);
            let _ = sock.set_write_timeout(stall);
            let mut out = sock.try_clone().expect("clone the socket");
            let pattern = &pattern;
            let writer = s.spawn(move || -> Result<(), String> {
                let mut sent = 0u64;
                while sent < total {
                    let hold = p.hold_at.load(Ordering::Relaxed);
                    if hold != 0 && sent >= hold {
                        let waited = Instant::now();
                        while !p.release.load(Ordering::Relaxed) {
                            if waited.elapsed() > Duration::from_secs(60) {
                                return Err(format!("held at {sent} for 60 s"));
                            }
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        p.hold_at.store(0, Ordering::Relaxed);
                    }
                    let n = ((total - sent) as usize).min(CHUNK);
                    out.write_all(pattern.at(sent, n))
                        .map_err(|e| format!("write at {sent}: {e}"))?;
                    sent += n as u64;
                    p.sent.store(sent, Ordering::Relaxed);
                }
                out.shutdown(Shutdown::Write)
                    .map_err(|e| format!("shutdown: {e}"))
            });
            let mut buf = vec![0u8; CHUNK];
            let mut next_mark = mark;
            loop {
                let n = match sock.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        r.error = Some(format!("read at {}: {e}", r.received));
                        let _ = sock.shutdown(Shutdown::Both);
                        break;
                    }
                };
                if r.mismatch.is_none() && buf[..n] != *pattern.at(r.received, n) {
                    let i = (0..n).find(|&i| buf[i] != pattern.at(r.received, n)[i]);
                    r.mismatch = Some(r.received + i.unwrap_or(0) as u64);
                }
                r.received += n as u64;
                p.received.store(r.received, Ordering::Relaxed);
                while r.received >= next_mark {
                    r.marks.push(start.elapsed());
                    next_mark += mark;
                }
            }
            r.elapsed = start.elapsed();
            if let Ok(Err(e)) = writer.join() {
                r.error.get_or_insert(e);
            }
            r
        })
        .join()
        .expect("client thread")
    })
}

/// The test's world: turnstile echoing on the server, the router, the far host.
struct World {
    topo: Topology,
    far: Far,
}

impl World {
    fn new() -> World {
        let mut topo = Topology::new(TopologyConfig::default()).expect("topology");
        let far = far_host(&topo);
        start_serve(
            &mut topo,
            &[
                "--port",
                &PORT.to_string(),
                "--app",
                "echo",
                "--metrics",
                METRICS,
            ],
        );
        World { topo, far }
    }

    fn target(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.topo.server.ip, PORT)
    }

    fn turnstile(&self) -> Ipv4Addr {
        self.topo.server.ip
    }

    /// turnstile's loss counters, for the report line.
    fn engine_counters(&self) -> String {
        let text = scrape(&self.topo, METRICS);
        format!(
            "turnstile: {} segments ({} B) retransmitted, {} recoveries, {} TLPs, {} RTOs",
            metric(&text, "turnstile_retransmits_total"),
            metric(&text, "turnstile_retransmitted_bytes_total"),
            metric(&text, "turnstile_loss_recoveries_total"),
            metric(&text, "turnstile_tlp_probes_total"),
            metric(&text, "turnstile_rto_expirations_total"),
        )
    }

    /// The far kernel's view (`nstat`, absolute, without touching nstat's
    /// history file).
    fn kernel_counters(&self) -> String {
        self.far
            .host
            .sh_ok(
                "nstat -asz TcpRetransSegs TcpExtTCPTimeouts TcpExtTCPLossProbes \
                 TcpExtTCPSackRecovery TcpExtTCPSACKReorder TcpExtTCPLostRetransmit",
            )
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join("="))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `total` bytes each way at `percent` loss both ways; returns the report
/// and the drops (turnstile's segments, the kernel's) after asserting the
/// echo came back whole and exact.
fn lossy_echo(total: u64, mark: u64, percent: u32) -> (Report, [u64; 2], World) {
    let w = World::new();
    lose_both_ways(
        &w.topo.client,
        "echoloss",
        w.turnstile(),
        w.far.host.ip,
        percent,
    );
    let r = echo_client(&w.far, w.target(), total, mark, &Progress::default());
    let d = dropped(&w.topo.client, "echoloss");
    eprintln!(
        "{} MiB each way at {percent}% loss both ways: {:?}, {} B back, error {:?}; \
         dropped {d:?} (turnstile's, the kernel's)\n  {}\n  kernel: {}",
        total / MIB,
        r.elapsed,
        r.received,
        r.error,
        w.engine_counters(),
        w.kernel_counters(),
    );
    assert_eq!(r.error, None, "the echo failed");
    assert_eq!(r.mismatch, None, "a byte came back wrong");
    assert_eq!(r.received, total, "bytes back");
    assert_eq!(d.len(), 2, "two loss rules: {d:?}");
    (r, [d[0], d[1]], w)
}

/// 256 MiB each way at 1% loss of every segment in both directions: the
/// echo comes back whole and exact, each sender's losses are repaired
/// (the bound is a hang guard, not a speed claim), and turnstile resends
/// about what was lost of its own segments, not a multiple.
#[test]
fn echo_256_mib_each_way_under_1_percent_loss_both_ways() {
    if !need_root() {
        return;
    }
    let _serial = serial();
    let (r, d, w) = lossy_echo(256 * MIB, 64 * MIB, 1);
    eprintln!("  per 64 MiB back: {:.1?} MB/s", r.rates(64 * MIB));
    assert!(d[0] > 0 && d[1] > 0, "the rules dropped nothing: {d:?}");
    let text = scrape(&w.topo, METRICS);
    let rexmit = metric(&text, "turnstile_retransmits_total");
    // Each of turnstile's lost segments once, some twice (a lost
    // retransmission, an ACK lost with the SACK block that would have
    // spared one): generous.
    assert!(
        rexmit <= 3 * d[0] + 20,
        "{rexmit} segments retransmitted for {} of turnstile's dropped",
        d[0]
    );
    assert!(
        r.elapsed < Duration::from_secs(240),
        "hang guard: {:?}",
        r.elapsed
    );
}

/// Issue #11's acceptance figure: 6 GiB each way at 1% loss both ways comes
/// back exact within 6 minutes, and each of the third to sixth GiB comes
/// back within 30% of the throughput of the first two.
#[test]
#[ignore = "6 GiB each way, 1-6 minutes: run with --ignored"]
fn echo_6_gib_each_way_under_1_percent_loss_is_steady() {
    if !need_root() {
        return;
    }
    let _serial = serial();
    let (r, d, _w) = lossy_echo(6 * GIB, GIB, 1);
    let rates = r.rates(GIB);
    eprintln!("  per GiB back: {rates:.1?} MB/s; dropped {d:?}");
    assert!(
        r.elapsed < Duration::from_secs(360),
        "6 GiB each way took {:?}",
        r.elapsed
    );
    let first = (rates[0] + rates[1]) / 2.0;
    for (i, &x) in rates.iter().enumerate().skip(2) {
        assert!(
            (x - first).abs() <= 0.3 * first,
            "GiB {} came back at {x:.1} MB/s, the first two at {first:.1} MB/s: {rates:.1?}",
            i + 1
        );
    }
}

/// The single-loss probe of issue #11: 2.25 GiB each way without loss (so
/// turnstile's SND.UNA is past ISS + 2^31: the RFC 6582 `recover` bug turned
/// fast retransmit off there), then exactly one of turnstile's data segments
/// is dropped by the router (an nftables quota that one full segment
/// exhausts). Its retransmission, timed in a capture on the router's
/// turnstile side (kept in target/test-artifacts/ on failure), follows within
/// 150 ms: by SACK/RACK recovery, not the 200 ms minimum RTO.
#[test]
fn one_loss_after_2_25_gib_is_retransmitted_within_150_ms() {
    if !need_root() {
        return;
    }
    let _serial = serial();
    let w = World::new();
    let lossless = 9 * GIB / 4;
    let total = lossless + 256 * MIB;
    let p = Progress::default();
    p.hold_at.store(lossless + 128 * MIB, Ordering::Relaxed);
    let router = &w.topo.client;
    let turnstile = w.turnstile();
    let filter = format!("tcp and src host {turnstile} and src port {PORT} and greater 1000");
    let (r, cap) = std::thread::scope(|s| {
        let client = s.spawn(|| echo_client(&w.far, w.target(), total, GIB, &p));
        let arm = || -> Result<Capture, String> {
            let start = Instant::now();
            while p.received.load(Ordering::Relaxed) < lossless {
                if client.is_finished() || start.elapsed() > Duration::from_secs(600) {
                    return Err(format!(
                        "no 2.25 GiB back: {} B",
                        p.received.load(Ordering::Relaxed)
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let cap = Capture::start_immediate("echo-one-loss", &[router], &filter);
            // Matched packets (full data segments of turnstile's) pass until
            // the quota's 2,000 bytes are used: the first one uses 1,000 to
            // 1,500 of them and is dropped, the second exhausts it.
            router
                .sh_ok(&format!(
                    "nft add table inet oneloss && \
                     nft add chain inet oneloss relay '{{ type filter hook forward priority 0; }}' && \
                     nft add rule inet oneloss relay ip saddr {turnstile} tcp sport {PORT} \
                       ip length '>' 1000 quota until 2000 bytes counter drop"
                ))
                .map_err(|e| format!("nft: {e}"))?;
            p.release.store(true, Ordering::Relaxed);
            let drops = || dropped(router, "oneloss").first().copied().unwrap_or(0);
            if !eventually(Duration::from_secs(30), || drops() >= 1) {
                return Err("the quota rule dropped nothing in 30 s".into());
            }
            // The client's stream is stuck at the hole until the
            // retransmission arrives: 32 MiB more back means it did.
            let at = p.received.load(Ordering::Relaxed);
            if !eventually(Duration::from_secs(60), || {
                p.received.load(Ordering::Relaxed) >= (at + 32 * MIB).min(total)
            }) {
                return Err(format!("stuck at {at} B back after the drop"));
            }
            let mut cap = cap;
            cap.stop();
            Ok(cap)
        };
        let cap = arm();
        p.release.store(true, Ordering::Relaxed);
        (client.join().expect("client"), cap)
    });
    let mut cap = cap.unwrap_or_else(|e| panic!("single-loss probe: {e}"));
    let drops = dropped(router, "oneloss");
    eprintln!(
        "{} MiB each way, one drop after {} MiB: {:?}, error {:?}; dropped {drops:?}\n  {}",
        total / MIB,
        lossless / MIB,
        r.elapsed,
        r.error,
        w.engine_counters()
    );
    assert_eq!(r.error, None, "the echo failed");
    assert_eq!(r.mismatch, None, "a byte came back wrong");
    assert_eq!(r.received, total, "bytes back");
    assert_eq!(drops, vec![1], "exactly one segment dropped");
    // Every sequence number sent twice, with both times (tcpdump -tt).
    let segs = read_segments(&cap.files()[0]);
    let mut first_seen = std::collections::HashMap::new();
    let mut repeats = Vec::new();
    for s in &segs {
        let (Some(seq), Some(t)) = (s.seq, capture_time(&s.line)) else {
            continue;
        };
        if let Some(&t0) = first_seen.get(&seq) {
            repeats.push((seq, t0, t));
        } else {
            first_seen.insert(seq, t);
        }
    }
    let files = cap.keep();
    let Some(&(seq, t0, t1)) = repeats.first() else {
        panic!(
            "no retransmission in the capture ({} segments): {files:?}",
            segs.len()
        );
    };
    let gap = t1 - t0;
    eprintln!(
        "  seq {seq} sent at {t0:.6}, again at {t1:.6}: {:.3} ms; {} segments sent twice in all \
         ({} captured)",
        gap * 1e3,
        repeats.len(),
        segs.len()
    );
    assert!(
        gap < 0.150,
        "the dropped segment came again after {:.3} ms (capture: {files:?})",
        gap * 1e3
    );
    // Passed: the capture need not stay.
    for f in files {
        let _ = std::fs::remove_file(f);
    }
}

/// The capture time of a `tcpdump -tt` line, in seconds.
fn capture_time(line: &str) -> Option<f64> {
    line.split_whitespace().next()?.parse().ok()
}
