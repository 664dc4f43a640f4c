//! Per-shard counters and their Prometheus text exposition.
//!
//! Each shard is the only writer of its own `ShardMetrics` (relaxed atomics,
//! no contention); the management thread sums all shards when scraped.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::wire::DropReason;
use crate::xdp::XdpCounters;

/// Counters and gauges of one shard.
#[derive(Default, Debug)]
pub struct ShardMetrics {
    pub rx_packets: AtomicU64,
    pub tx_packets: AtomicU64,
    /// Indexed by `DropReason::index`.
    pub rx_dropped: [AtomicU64; DropReason::ALL.len()],
    /// The kernel found the rx ring full (xdp_statistics).
    pub rx_ring_full: AtomicU64,
    /// The kernel found no frame in the fill ring (xdp_statistics).
    pub rx_no_frame: AtomicU64,
    /// A reply found no free UMEM frame.
    pub tx_no_frame: AtomicU64,
    /// Segments for an address that is not ours.
    pub rx_not_local: AtomicU64,
    /// Segments the engine dropped (unacceptable, old duplicates, ...).
    pub rx_engine_dropped: AtomicU64,
    pub handoff: AtomicU64,
    /// A frame for another shard found no buffer or a full queue.
    pub handoff_dropped: AtomicU64,
    /// A segment to a host whose MAC is unknown.
    pub tx_no_neighbor: AtomicU64,
    /// Connections in any state but TIME_WAIT.
    pub connections: AtomicU64,
    pub time_wait_expired: AtomicU64,
    /// Bytes of the TCP buffer pool lent to connections now, and allocated in all.
    pub buffer_pool_in_use: AtomicU64,
    pub buffer_pool_allocated: AtomicU64,
    /// Chunk requests refused by the pool budget (windows shrank instead).
    pub buffer_pool_exhausted: AtomicU64,
    pub rst_sent: AtomicU64,
    pub established: AtomicU64,
    pub time_wait: AtomicU64,
    pub accepted: AtomicU64,
    pub opened: AtomicU64,
    pub recycled_passive: AtomicU64,
    pub recycled_active: AtomicU64,
    pub connect_no_port: AtomicU64,
    pub connect_timeout: AtomicU64,
    pub connect_refused: AtomicU64,
    pub retransmits: AtomicU64,
    pub challenge_acks: AtomicU64,
}

impl ShardMetrics {
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    #[inline]
    pub fn set(gauge: &AtomicU64, v: u64) {
        gauge.store(v, Ordering::Relaxed);
    }

    pub fn dropped(&self, reason: DropReason) {
        Self::add(&self.rx_dropped[reason.index()], 1);
    }
}

/// Appends more metric families to an exposition (apps with metrics of
/// their own, e.g. the sidecar's per-backend counters).
pub type Renderer = Arc<dyn Fn(&mut String) + Send + Sync>;

/// Every shard's metrics plus the XDP program's counters.
#[derive(Clone, Default)]
pub struct Registry {
    pub shards: Vec<Arc<ShardMetrics>>,
    pub xdp: Option<Arc<dyn Fn() -> XdpCounters + Send + Sync>>,
    /// Shared by every clone (so a renderer added after the metrics server
    /// started is served too).
    pub extra: Arc<std::sync::RwLock<Vec<Renderer>>>,
}

impl Registry {
    /// Adds families rendered after the built-in ones, on every scrape.
    pub fn add_renderer(&self, render: Renderer) {
        self.extra
            .write()
            .expect("metrics renderers lock")
            .push(render);
    }

    fn sum(&self, pick: impl Fn(&ShardMetrics) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .map(|s| pick(s).load(Ordering::Relaxed))
            .sum()
    }

    /// The Prometheus text exposition (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {v}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {v}");
                }
            }
        };
        let s = |pick: fn(&ShardMetrics) -> &AtomicU64| self.sum(pick);
        metric(
            "turnstile_connections_established",
            "gauge",
            "Connections in ESTABLISHED or later synchronized states.",
            &[("", s(|m| &m.established))],
        );
        metric(
            "turnstile_time_wait",
            "gauge",
            "Current TIME_WAIT entries.",
            &[("", s(|m| &m.time_wait))],
        );
        metric(
            "turnstile_connections_accepted_total",
            "counter",
            "Passive opens completed.",
            &[("", s(|m| &m.accepted))],
        );
        metric(
            "turnstile_connections_opened_total",
            "counter",
            "Active opens started.",
            &[("", s(|m| &m.opened))],
        );
        metric(
            "turnstile_time_wait_recycled_total",
            "counter",
            "TIME_WAIT entries taken over safely by a new connection.",
            &[
                ("side=\"passive\"", s(|m| &m.recycled_passive)),
                ("side=\"active\"", s(|m| &m.recycled_active)),
            ],
        );
        metric(
            "turnstile_connect_failures_total",
            "counter",
            "Active opens that failed.",
            &[
                ("reason=\"no_port\"", s(|m| &m.connect_no_port)),
                ("reason=\"timeout\"", s(|m| &m.connect_timeout)),
                ("reason=\"refused\"", s(|m| &m.connect_refused)),
            ],
        );
        metric(
            "turnstile_rx_packets_total",
            "counter",
            "Frames received on AF_XDP sockets.",
            &[("", s(|m| &m.rx_packets))],
        );
        metric(
            "turnstile_tx_packets_total",
            "counter",
            "Frames sent on AF_XDP sockets.",
            &[("", s(|m| &m.tx_packets))],
        );
        let per_shard: Vec<(String, u64)> = self
            .shards
            .iter()
            .enumerate()
            .map(|(i, m)| {
                (
                    format!("shard=\"{i}\""),
                    m.rx_packets.load(Ordering::Relaxed),
                )
            })
            .collect();
        let per_shard_ref: Vec<(&str, u64)> =
            per_shard.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        metric(
            "turnstile_shard_rx_packets_total",
            "counter",
            "Frames received, per shard (queue).",
            &per_shard_ref,
        );

        let mut dropped: Vec<(String, u64)> = DropReason::LABELS
            .iter()
            .map(|label| {
                let v = DropReason::ALL
                    .iter()
                    .filter(|r| r.label() == *label)
                    .map(|r| self.sum(|m| &m.rx_dropped[r.index()]))
                    .sum();
                (format!("reason=\"{label}\""), v)
            })
            .collect();
        dropped.push(("reason=\"no_frame\"".into(), s(|m| &m.rx_no_frame)));
        dropped.push(("reason=\"ring_full\"".into(), s(|m| &m.rx_ring_full)));
        dropped.push(("reason=\"not_local\"".into(), s(|m| &m.rx_not_local)));
        dropped.push(("reason=\"tcp\"".into(), s(|m| &m.rx_engine_dropped)));
        let dropped_ref: Vec<(&str, u64)> = dropped.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        metric(
            "turnstile_rx_dropped_total",
            "counter",
            "Received frames dropped, by reason.",
            &dropped_ref,
        );
        metric(
            "turnstile_tx_dropped_total",
            "counter",
            "Frames not sent, by reason.",
            &[
                ("reason=\"no_frame\"", s(|m| &m.tx_no_frame)),
                ("reason=\"no_neighbor\"", s(|m| &m.tx_no_neighbor)),
            ],
        );
        metric(
            "turnstile_connections",
            "gauge",
            "Connections in any state but TIME_WAIT.",
            &[("", s(|m| &m.connections))],
        );
        metric(
            "turnstile_time_wait_expired_total",
            "counter",
            "TIME_WAIT entries that reached 2MSL.",
            &[("", s(|m| &m.time_wait_expired))],
        );
        metric(
            "turnstile_buffer_pool_bytes",
            "gauge",
            "TCP buffer pool bytes, lent to connections (in_use) and taken from the heap (allocated).",
            &[
                ("state=\"in_use\"", s(|m| &m.buffer_pool_in_use)),
                ("state=\"allocated\"", s(|m| &m.buffer_pool_allocated)),
            ],
        );
        metric(
            "turnstile_buffer_pool_exhausted_total",
            "counter",
            "Buffer chunk requests refused by the pool budget (advertised windows shrank, send took less).",
            &[("", s(|m| &m.buffer_pool_exhausted))],
        );
        metric(
            "turnstile_handoff_dropped_total",
            "counter",
            "Frames for another shard dropped (no buffer or queue full).",
            &[("", s(|m| &m.handoff_dropped))],
        );
        metric(
            "turnstile_handoff_total",
            "counter",
            "Packets moved between shards.",
            &[("", s(|m| &m.handoff))],
        );
        metric(
            "turnstile_rst_sent_total",
            "counter",
            "RST segments sent.",
            &[("", s(|m| &m.rst_sent))],
        );
        metric(
            "turnstile_retransmits_total",
            "counter",
            "Segments retransmitted.",
            &[("", s(|m| &m.retransmits))],
        );
        metric(
            "turnstile_challenge_acks_total",
            "counter",
            "RFC 5961 challenge ACKs sent.",
            &[("", s(|m| &m.challenge_acks))],
        );
        if let Some(xdp) = &self.xdp {
            let c = xdp();
            metric(
                "turnstile_xdp_packets_total",
                "counter",
                "Packets seen by the XDP program, by action.",
                &[
                    ("action=\"redirected\"", c.redirected),
                    ("action=\"passed\"", c.passed),
                    ("action=\"malformed\"", c.malformed),
                    ("action=\"no_socket\"", c.no_socket),
                ],
            );
        }
        for render in self.extra.read().expect("metrics renderers lock").iter() {
            render(&mut out);
        }
        out
    }
}

/// Serves `GET /metrics` on `addr` from a management thread until `stop`.
pub fn serve(
    addr: SocketAddr,
    registry: Registry,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("turnstile-metrics".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => answer(stream, &registry),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) => tracing::warn!(%e, "metrics accept failed"),
                }
            }
        })
}

fn answer(mut stream: TcpStream, registry: &Registry) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut req = [0u8; 2048];
    let mut len = 0;
    while len < req.len() {
        match stream.read(&mut req[len..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                len += n;
                if req[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    let head = String::from_utf8_lossy(&req[..len]);
    let path = head.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = if path == "/metrics" || path.starts_with("/metrics?") {
        ("200 OK", registry.render())
    } else if path == "/healthz" {
        ("200 OK", "ok\n".to_string())
    } else {
        ("404 Not Found", "try /metrics\n".to_string())
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Reads one sample (`name{labels} value` or `name value`) from an exposition.
pub fn sample(text: &str, name_and_labels: &str) -> Option<u64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == name_and_labels).then(|| v.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_sums_shards_and_groups_drop_labels() {
        let a = Arc::new(ShardMetrics::default());
        let b = Arc::new(ShardMetrics::default());
        ShardMetrics::add(&a.rx_packets, 3);
        ShardMetrics::add(&b.rx_packets, 4);
        a.dropped(DropReason::BadIpChecksum);
        b.dropped(DropReason::BadTcpChecksum);
        b.dropped(DropReason::BadTcpOptions);
        ShardMetrics::add(&b.recycled_active, 9);
        let reg = Registry {
            shards: vec![a, b],
            xdp: None,
            ..Default::default()
        };
        let text = reg.render();
        assert_eq!(sample(&text, "turnstile_rx_packets_total"), Some(7));
        assert_eq!(
            sample(&text, "turnstile_rx_dropped_total{reason=\"bad_checksum\"}"),
            Some(2)
        );
        assert_eq!(
            sample(&text, "turnstile_rx_dropped_total{reason=\"malformed\"}"),
            Some(1)
        );
        assert_eq!(
            sample(&text, "turnstile_time_wait_recycled_total{side=\"active\"}"),
            Some(9)
        );
        assert_eq!(
            sample(
                &text,
                "turnstile_time_wait_recycled_total{side=\"passive\"}"
            ),
            Some(0)
        );
        assert_eq!(sample(&text, "turnstile_time_wait"), Some(0));
    }
}
