//! Tunables of one endpoint.

use super::congestion::Congestion;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

/// Which local ports an active open may use: `(local address, remote,
/// local port) -> allowed`. The runtime passes one that accepts only ports
/// whose replies the NIC's RSS delivers to the opening shard's queue.
/// Evaluated once per port and destination, when the destination is first
/// used, never per packet.
#[derive(Clone)]
pub struct PortFilter(pub Arc<dyn Fn(Ipv4Addr, SocketAddrV4, u16) -> bool + Send + Sync>);

impl std::fmt::Debug for PortFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PortFilter(..)")
    }
}

/// Configuration of an [`Endpoint`](super::Endpoint). `Default` gives Linux-like behaviour.
#[derive(Clone, Debug)]
pub struct Config {
    /// Our MSS (advertised in SYNs; 1460 = 1500-byte MTU minus 40 bytes of headers).
    pub mss: u16,
    /// Receive buffer per connection at the start, bytes (bounds the
    /// advertised window until autotuning grows it).
    pub recv_buffer: usize,
    /// Receive-buffer autotuning's ceiling per connection, bytes: once per
    /// RTT the bound grows to about twice what the application consumed in
    /// the last one (dynamic right-sizing, Linux's tcp_moderate_rcvbuf), up
    /// to this (6 MiB like Linux's tcp_rmem max). At or below `recv_buffer`:
    /// no autotuning.
    pub recv_buffer_max: usize,
    /// Send buffer per connection at the start, bytes (bounds what `send` accepts).
    pub send_buffer: usize,
    /// The send buffer follows the congestion window (twice cwnd, as Linux's
    /// tcp_sndbuf_expand) up to this many bytes (4 MiB like tcp_wmem max).
    pub send_buffer_max: usize,
    /// Bytes all connections' buffers may hold together (the endpoint's chunk
    /// pool). Storage is taken in 2 KiB chunks as bytes arrive and given back
    /// when read or acknowledged; when the budget is spent, advertised windows
    /// shrink and `send` takes less (counted as pool exhaustion).
    pub buffer_pool_budget: usize,
    /// Our window-scale shift (RFC 7323 2). Raised to what `recv_buffer` needs;
    /// 7 like Linux by default. Clamped to 14.
    pub window_scale: u8,
    /// Offer and accept RFC 7323 timestamps (needed for PAWS and active TIME_WAIT reuse).
    pub timestamps: bool,
    /// Offer and accept SACK-permitted (RFC 2018), on by default as in Linux:
    /// our ACKs then carry SACK blocks for out-of-order data, and loss recovery
    /// uses the peer's blocks (RFC 6675 scoreboard, RACK-TLP of RFC 8985).
    /// Without it, NewReno (RFC 6582) on duplicate ACKs.
    pub sack_permitted: bool,
    /// Delayed-ACK timeout (RFC 1122 4.2.3.2 allows up to 500 ms; RFC 9293 3.8.6.3).
    /// 40 ms is Linux's minimum delayed-ACK time: short enough not to stall
    /// request/response traffic, long enough to piggyback ACKs on replies. An ACK is
    /// sent at once for every second full-sized segment, for out-of-order data and
    /// for a FIN regardless. `None` ACKs every segment immediately.
    pub delayed_ack: Option<Duration>,
    /// Nagle's algorithm (RFC 9293 3.7.4). Off: request/response latency matters more here.
    pub nagle: bool,
    /// Maximum segment lifetime; TIME_WAIT lasts 2 MSL.
    pub msl: Duration,
    /// Bound on TIME_WAIT entries; when full, the oldest is dropped early (counted).
    pub max_time_wait: usize,
    /// Per listener: connections in SYN_RECEIVED.
    pub syn_backlog: usize,
    /// Per listener: completed connections whose `Accepted` event the application has
    /// not yet taken with `poll_event`. When full, the handshake's final ACK is dropped
    /// (the peer retransmits; counted in `accept_queue_overflow`).
    pub accept_backlog: usize,
    /// Answer SYNs with SYN cookies when the SYN queue is full (else drop them).
    pub syn_cookies: bool,
    /// RFC 6298 2.4 says 1 s minimum; we follow Linux's 200 ms (a datacenter-friendly
    /// lower bound, RFC 6298 allows it as a deliberate choice).
    pub rto_min: Duration,
    /// RFC 6298 2.5: at least 60 s.
    pub rto_max: Duration,
    /// RFC 6298 2.1: 1 s.
    pub rto_initial: Duration,
    /// Retransmissions of data or FIN before the connection times out (Linux tcp_retries2 = 15).
    pub max_retries: u8,
    /// Retransmissions of SYN or SYN+ACK (Linux tcp_syn_retries = 6).
    pub max_syn_retries: u8,
    /// Local ports for active opens.
    pub port_range: RangeInclusive<u16>,
    /// Restricts `port_range` per destination (None: every port).
    pub port_filter: Option<PortFilter>,
    /// Reuse a TIME_WAIT tuple for an active open when no port is free and it is safe.
    pub reuse: bool,
    /// Minimum age of a TIME_WAIT entry before its tuple may be reused by an active open.
    pub reuse_delay: Duration,
    /// RFC 5961 7: challenge ACKs per second, per connection (and, for the
    /// stateless replies of TIME_WAIT entries, the middle of a budget drawn at
    /// random each second between half and one and a half times this).
    pub challenge_ack_limit: u32,
    /// Orphaned FIN_WAIT_2 (application closed, peer never sends its FIN) lasts this
    /// long (Linux tcp_fin_timeout = 60 s).
    pub fin_wait2_timeout: Duration,
    /// Connections held in full (any state but TIME_WAIT) beyond which new
    /// SYNs are dropped, like a full backlog; `usize::MAX`: no limit.
    pub max_connections: usize,
    /// RFC 1122 4.2.3.6 keepalive for passive opens whose port is not in
    /// `keepalive_ports`. Off (`None`) by default, as RFC 1122 requires.
    pub keepalive: Option<Keepalive>,
    /// Keepalive per listening port (the sidecar's per-listener setting),
    /// taking precedence over `keepalive`.
    pub keepalive_ports: Vec<(u16, Keepalive)>,
    /// Keepalive for active opens (the sidecar's upstream legs).
    pub keepalive_active: Option<Keepalive>,
    /// Congestion control of new connections: NewReno (the default) or the
    /// model-based BBR (paced; random loss does not cut its window).
    pub congestion: Congestion,
}

/// RFC 1122 4.2.3.6 keepalive: after `idle` without an acceptable ACK from
/// the peer while nothing is in flight, send a probe (`SEG.SEQ = SND.NXT - 1`,
/// no data) every `interval`; after `count` probes without an answer, reset
/// the connection and report `Event::TimedOut`. Like Linux's
/// `tcp_keepalive_time`/`_intvl`/`_probes`: the peer is declared gone at
/// `idle + interval * count` after it was last heard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// RFC 1122: "MUST default to no less than two hours" when on by default;
    /// here it is off by default and the operator picks it.
    pub idle: Duration,
    pub interval: Duration,
    /// Unanswered probes before the connection is reset (at least 1).
    pub count: u8,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mss: 1460,
            recv_buffer: 64 * 1024,
            recv_buffer_max: 6 << 20,
            send_buffer: 64 * 1024,
            send_buffer_max: 4 << 20,
            buffer_pool_budget: 256 << 20,
            window_scale: 7,
            timestamps: true,
            sack_permitted: true,
            delayed_ack: Some(Duration::from_millis(40)),
            nagle: false,
            msl: Duration::from_secs(30),
            max_time_wait: 262_144,
            syn_backlog: 1024,
            accept_backlog: 1024,
            syn_cookies: true,
            rto_min: Duration::from_millis(200),
            rto_max: Duration::from_secs(60),
            rto_initial: Duration::from_secs(1),
            max_retries: 15,
            max_syn_retries: 6,
            port_range: 32768..=60999,
            port_filter: None,
            reuse: true,
            reuse_delay: Duration::from_secs(1),
            challenge_ack_limit: 10,
            fin_wait2_timeout: Duration::from_secs(60),
            max_connections: usize::MAX,
            keepalive: None,
            keepalive_ports: Vec::new(),
            keepalive_active: None,
            congestion: Congestion::NewReno,
        }
    }
}

impl Keepalive {
    /// `IDLE_MS,INTERVAL_MS,COUNT` (the `serve --keepalive` form).
    pub fn parse(s: &str) -> Result<Keepalive, String> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let [idle, interval, count] = parts[..] else {
            return Err(format!(
                "{s:?}: expected IDLE_MS,INTERVAL_MS,COUNT, e.g. 60000,10000,5"
            ));
        };
        let ms = |what: &str, v: &str| match v.parse::<u32>() {
            Ok(n) if n > 0 => Ok(Duration::from_millis(u64::from(n))),
            _ => Err(format!("{what} {v:?}: need 1 to {} ms", u32::MAX)),
        };
        let count = match count.parse::<u8>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("count {count:?}: need 1 to 255 probes")),
        };
        Ok(Keepalive {
            idle: ms("idle", idle)?,
            interval: ms("interval", interval)?,
            count,
        })
    }
}

impl Config {
    /// The keepalive of a passive open on local `port`.
    pub(crate) fn keepalive_passive(&self, port: u16) -> Option<Keepalive> {
        self.keepalive_ports
            .iter()
            .find(|(p, _)| *p == port)
            .map(|&(_, k)| k)
            .or(self.keepalive)
    }

    /// The window-scale shift actually offered: at least what the largest
    /// receive buffer (`recv_buffer`, or what autotuning may grow it to)
    /// needs to be advertised in 16 bits, at most 14 (RFC 7323 2.3).
    pub(crate) fn effective_window_scale(&self) -> u8 {
        let largest = self.recv_buffer.max(self.recv_buffer_max);
        let mut needed = 0u8;
        while needed < 14 && (largest >> needed) > 0xffff {
            needed += 1;
        }
        self.window_scale.max(needed).min(14)
    }
}
