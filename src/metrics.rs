//! Per-shard counters and their Prometheus text exposition.
//!
//! Each shard is the only writer of its own `ShardMetrics` (relaxed atomics,
//! no contention); the management thread sums all shards when scraped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::wire::DropReason;
use crate::xdp::XdpCounters;

/// Bytes live on the heap, kept by the binary's global allocator (see
/// `heap_grew`); a library user that does not count leaves it at 0.
static HEAP_BYTES: AtomicU64 = AtomicU64::new(0);

/// The global allocator handed out `bytes`.
pub fn heap_grew(bytes: usize) {
    HEAP_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
}

/// The global allocator took back `bytes`.
pub fn heap_shrank(bytes: usize) {
    HEAP_BYTES.fetch_sub(bytes as u64, Ordering::Relaxed);
}

/// Bytes live on the heap now (0 unless the binary counts).
pub fn heap_bytes() -> u64 {
    HEAP_BYTES.load(Ordering::Relaxed)
}

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
    /// Bytes of frames received and sent through the AF_XDP socket.
    pub rx_bytes: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// 1 when this shard's socket is bound in zero-copy mode, 0 in copy mode.
    pub xsk_zerocopy: AtomicU64,
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
    pub rst_unknown_flow: AtomicU64,
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
    pub retransmitted_bytes: AtomicU64,
    pub tlp_probes: AtomicU64,
    pub loss_recoveries: AtomicU64,
    pub rto_expirations: AtomicU64,
    /// `tcp::Stats::rto_*`: timeouts by the sender's state at expiry.
    pub rto_causes: [AtomicU64; 7],
    pub keepalive_probes: AtomicU64,
    pub keepalive_timeouts: AtomicU64,
    pub challenge_acks: AtomicU64,
    /// Active opens that failed for want of a next hop's MAC.
    pub connect_unreachable: AtomicU64,
    /// Next hops of active opens held (from the kernel's tables).
    pub neighbors_kernel: AtomicU64,
    /// Peers learned from frames of verified flows.
    pub neighbors_learned: AtomicU64,
    /// Connects waiting for their next hop now.
    pub neighbor_waiting: AtomicU64,
    pub neighbor_resolved: AtomicU64,
    pub neighbor_failed: AtomicU64,
    pub neighbor_moved: AtomicU64,
    pub neighbor_learn_full: AtomicU64,
    pub neighbor_held_dropped: AtomicU64,
    pub syn_dropped_max_connections: AtomicU64,
    pub syn_dropped_syn_queue: AtomicU64,
    pub syn_dropped_accept_queue: AtomicU64,
    pub syn_cookies_sent: AtomicU64,
    pub syn_cookies_accepted: AtomicU64,
    pub syn_cookies_rejected: AtomicU64,
    pub syn_cookies_no_overflow: AtomicU64,
    pub challenge_acks_suppressed: AtomicU64,
    pub icmp_frag_lowered: AtomicU64,
    pub icmp_frag_not_in_flight: AtomicU64,
    pub icmp_frag_not_lower: AtomicU64,
    pub icmp_frag_unknown_flow: AtomicU64,
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

/// Answers a GET on the metrics port: status code and body.
pub type Page = Arc<dyn Fn() -> (u16, String) + Send + Sync>;

/// Every shard's metrics plus the XDP program's counters.
#[derive(Clone, Default)]
pub struct Registry {
    pub shards: Vec<Arc<ShardMetrics>>,
    pub xdp: Option<Arc<dyn Fn() -> XdpCounters + Send + Sync>>,
    /// Shared by every clone (so a renderer added after the metrics server
    /// started is served too).
    pub extra: Arc<std::sync::RwLock<Vec<Renderer>>>,
    /// More paths (`/ready`, `/maglev`), shared by every clone too.
    pub pages: Arc<std::sync::RwLock<Vec<(String, Page)>>>,
}

impl Registry {
    /// Adds families rendered after the built-in ones, on every scrape.
    pub fn add_renderer(&self, render: Renderer) {
        self.extra
            .write()
            .expect("metrics renderers lock")
            .push(render);
    }

    /// Serves `path` (exact match, query string ignored) from `page`; a
    /// later page for the same path replaces the earlier one.
    pub fn add_page(&self, path: &str, page: Page) {
        let mut pages = self.pages.write().expect("metrics pages lock");
        pages.retain(|(p, _)| p != path);
        pages.push((path.to_string(), page));
    }

    fn page(&self, path: &str) -> Option<(u16, String)> {
        let path = path.split('?').next().unwrap_or(path);
        let pages = self.pages.read().expect("metrics pages lock");
        let page = pages.iter().find(|(p, _)| p == path)?.1.clone();
        drop(pages);
        Some(page())
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
            text::family(&mut out, name, kind, help);
            for (labels, v) in samples {
                if labels.is_empty() {
                    text::sample(&mut out, name, *v);
                } else {
                    text::labeled(&mut out, name, labels, *v);
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
                ("reason=\"unreachable\"", s(|m| &m.connect_unreachable)),
            ],
        );
        metric(
            "turnstile_syn_dropped_total",
            "counter",
            "SYNs dropped unanswered (as a full backlog drops them): max_connections reached, \
             SYN queue full without cookies, accept queue full.",
            &[
                (
                    "reason=\"max_connections\"",
                    s(|m| &m.syn_dropped_max_connections),
                ),
                ("reason=\"syn_queue\"", s(|m| &m.syn_dropped_syn_queue)),
                (
                    "reason=\"accept_queue\"",
                    s(|m| &m.syn_dropped_accept_queue),
                ),
            ],
        );
        metric(
            "turnstile_syn_cookies_total",
            "counter",
            "SYN cookies: sent (SYN queue full), accepted, rejected (bad cookie), \
             no_overflow (a bare ACK to a listener that did not overflow lately: not checked, RST).",
            &[
                ("result=\"sent\"", s(|m| &m.syn_cookies_sent)),
                ("result=\"accepted\"", s(|m| &m.syn_cookies_accepted)),
                ("result=\"rejected\"", s(|m| &m.syn_cookies_rejected)),
                ("result=\"no_overflow\"", s(|m| &m.syn_cookies_no_overflow)),
            ],
        );
        metric(
            "turnstile_challenge_acks_suppressed_total",
            "counter",
            "RFC 5961 challenge ACKs not sent (over the per-connection or TIME_WAIT budget).",
            &[("", s(|m| &m.challenge_acks_suppressed))],
        );
        metric(
            "turnstile_icmp_frag_needed_total",
            "counter",
            "ICMP \"fragmentation needed\" quoting our segments (path MTU discovery): \
             lowered (a connection's MSS fell), not_in_flight (quoted sequence number not \
             in flight: stale or forged, RFC 5927), not_lower, unknown_flow.",
            &[
                ("result=\"lowered\"", s(|m| &m.icmp_frag_lowered)),
                (
                    "result=\"not_in_flight\"",
                    s(|m| &m.icmp_frag_not_in_flight),
                ),
                ("result=\"not_lower\"", s(|m| &m.icmp_frag_not_lower)),
                ("result=\"unknown_flow\"", s(|m| &m.icmp_frag_unknown_flow)),
            ],
        );
        metric(
            "turnstile_neighbors",
            "gauge",
            "Next-hop MACs held: kind=\"resolved\" from the kernel for active opens, \
             kind=\"learned\" from frames of verified flows.",
            &[
                ("kind=\"resolved\"", s(|m| &m.neighbors_kernel)),
                ("kind=\"learned\"", s(|m| &m.neighbors_learned)),
            ],
        );
        metric(
            "turnstile_neighbor_waiting_connects",
            "gauge",
            "Active opens waiting for their next hop's MAC.",
            &[("", s(|m| &m.neighbor_waiting))],
        );
        metric(
            "turnstile_neighbor_resolutions_total",
            "counter",
            "Next-hop resolutions through the kernel (first ones and re-validations).",
            &[
                ("result=\"resolved\"", s(|m| &m.neighbor_resolved)),
                ("result=\"failed\"", s(|m| &m.neighbor_failed)),
            ],
        );
        metric(
            "turnstile_neighbor_events_total",
            "counter",
            "event=\"moved\": a next hop's MAC changed; \"learn_full\": a peer not learned \
             (table full); \"held_dropped\": a frame waiting for its MAC dropped (list full).",
            &[
                ("event=\"moved\"", s(|m| &m.neighbor_moved)),
                ("event=\"learn_full\"", s(|m| &m.neighbor_learn_full)),
                ("event=\"held_dropped\"", s(|m| &m.neighbor_held_dropped)),
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
        let queues = self.shards.len() as u64;
        let zc = s(|m| &m.xsk_zerocopy);
        metric(
            "turnstile_xsk_mode",
            "gauge",
            "AF_XDP sockets (one per queue) by bind mode.",
            &[
                ("mode=\"zerocopy\"", zc),
                ("mode=\"copy\"", queues.saturating_sub(zc)),
            ],
        );
        let copied = |pick: fn(&ShardMetrics) -> &AtomicU64| -> u64 {
            self.shards
                .iter()
                .filter(|m| m.xsk_zerocopy.load(Ordering::Relaxed) == 0)
                .map(|m| pick(m).load(Ordering::Relaxed))
                .sum()
        };
        metric(
            "turnstile_xsk_copied_bytes_total",
            "counter",
            "Frame bytes the kernel copied between its buffers and the UMEM (copy-mode sockets; zero-copy ones copy none).",
            &[
                ("direction=\"rx\"", copied(|m| &m.rx_bytes)),
                ("direction=\"tx\"", copied(|m| &m.tx_bytes)),
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
            "turnstile_heap_bytes",
            "gauge",
            "Bytes live on the process heap (allocated and not freed; what the allocator keeps besides is not counted). 0 when the binary does not count.",
            &[("", HEAP_BYTES.load(Ordering::Relaxed))],
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
            "turnstile_rst_unknown_flow_total",
            "counter",
            "RSTs answering segments of flows with no state here (e.g. moved by ECMP from another instance).",
            &[("", s(|m| &m.rst_unknown_flow))],
        );
        metric(
            "turnstile_retransmits_total",
            "counter",
            "Segments retransmitted.",
            &[("", s(|m| &m.retransmits))],
        );
        metric(
            "turnstile_retransmitted_bytes_total",
            "counter",
            "Payload bytes in retransmitted segments.",
            &[("", s(|m| &m.retransmitted_bytes))],
        );
        metric(
            "turnstile_loss_recoveries_total",
            "counter",
            "Loss recovery episodes entered (fast retransmit; with SACK, RFC 6675 recovery).",
            &[("", s(|m| &m.loss_recoveries))],
        );
        metric(
            "turnstile_tlp_probes_total",
            "counter",
            "Tail loss probes sent (RFC 8985).",
            &[("", s(|m| &m.tlp_probes))],
        );
        metric(
            "turnstile_rto_expirations_total",
            "counter",
            "Retransmission timeouts (RFC 6298 5.4), SYNs and FINs included.",
            &[("", s(|m| &m.rto_expirations))],
        );
        metric(
            "turnstile_rto_causes_total",
            "counter",
            "Retransmission timeouts by what was outstanding when they fired (the first that applies).",
            &[
                ("cause=\"repeated\"", s(|m| &m.rto_causes[0])),
                ("cause=\"lost_retransmission\"", s(|m| &m.rto_causes[1])),
                ("cause=\"in_recovery\"", s(|m| &m.rto_causes[2])),
                ("cause=\"after_probe\"", s(|m| &m.rto_causes[3])),
                ("cause=\"sacked\"", s(|m| &m.rto_causes[4])),
                ("cause=\"tail\"", s(|m| &m.rto_causes[5])),
                ("cause=\"handshake\"", s(|m| &m.rto_causes[6])),
            ],
        );
        metric(
            "turnstile_keepalive_probes_total",
            "counter",
            "TCP keepalive probes sent (RFC 1122 4.2.3.6).",
            &[("", s(|m| &m.keepalive_probes))],
        );
        metric(
            "turnstile_keepalive_timeouts_total",
            "counter",
            "Connections reset because the peer answered no keepalive probe.",
            &[("", s(|m| &m.keepalive_timeouts))],
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
                    ("action=\"syn_cookie\"", c.syn_cookies),
                    ("action=\"cookie_rst_dropped\"", c.cookie_rsts),
                ],
            );
            metric(
                "turnstile_syn_cookies_sent_total",
                "counter",
                "Cookie SYN+ACKs sent, by where: xdp (the XDP program, during a flood, \
                 XDP_TX) or engine (a shard, its SYN queue full).",
                &[
                    ("path=\"xdp\"", c.syn_cookies),
                    ("path=\"engine\"", self.sum(|m| &m.syn_cookies_sent)),
                ],
            );
            metric(
                "turnstile_syn_flood_active",
                "gauge",
                "1 while SYNs to listeners are answered in XDP (a SYN queue overflowed lately).",
                &[("", u64::from(c.flooding))],
            );
            metric(
                "turnstile_syn_cookies_xdp_failed",
                "gauge",
                "1 once most SYN+ACKs sent with XDP_TX were seen failing (on veth: no XDP \
                 program on the peer): the XDP cookie path is off, the shards answer SYNs.",
                &[("", u64::from(c.xdp_tx_failed))],
            );
        }
        for render in self.extra.read().expect("metrics renderers lock").iter() {
            render(&mut out);
        }
        out
    }
}

/// The one writer of the Prometheus text exposition format (version
/// 0.0.4), used by every page that renders metrics (the shards' counters
/// here, the sidecar's backends and reloads, its DNS answers), so a family's
/// header and a sample's syntax are written in one place.
pub mod text {
    use std::fmt::{Display, Write};

    /// A family's `# HELP` and `# TYPE` lines.
    pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// A sample without labels.
    pub fn sample(out: &mut String, name: &str, value: u64) {
        let _ = writeln!(out, "{name} {value}");
    }

    /// A sample with `labels` (already `key="value"` pairs, comma-separated).
    pub fn labeled(out: &mut String, name: &str, labels: impl Display, value: u64) {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
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
    } else if let Some((code, body)) = registry.page(path) {
        let status = match code {
            200 => "200 OK",
            503 => "503 Service Unavailable",
            404 => "404 Not Found",
            _ => "500 Internal Server Error",
        };
        (status, body)
    } else if path == "/ready" {
        // Without an app's own readiness (serve): up while this answers.
        ("200 OK", "ready\n".to_string())
    } else {
        (
            "404 Not Found",
            "try /metrics, /healthz or /ready\n".to_string(),
        )
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
