//! The sidecar's configuration (`turnstile run --config FILE`): TOML read
//! with serde, then validated. Every error names the file, the line and
//! column, and the problem, on one line:
//!
//! ```text
//! /etc/turnstile.toml:7:12: listener.backends: "10.0.0.300:80" is not an IPv4 address:port (e.g. "10.0.0.5:8080")
//! ```
//!
//! By concern:
//! - [`schema`]: the file as written (serde types; a new key is a field there),
//! - `error`: byte spans to file:line:column errors,
//! - `parse`: validation, schema to [`Config`] (one function per section),
//! - `convert`: [`Config`] to what the stack and the proxy run by
//!   ([`Config::stack_options`], [`Config::proxy_settings`]),
//! - `reload`: what SIGHUP may change ([`Config::reload_check`]).

mod convert;
mod dns;
mod error;
mod parse;
mod reload;
pub mod schema;
#[cfg(test)]
mod tests;

use std::net::{SocketAddr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::app::proxy::settings::{BackendSettings, Balance, Health, ProxyProtocol, Timeouts};
use crate::xdp::XdpMode;
pub use error::ConfigError;
pub use parse::parse_port_range;

/// A validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Where it was read from (for messages).
    pub file: PathBuf,
    pub interface: String,
    pub queues: Option<u32>,
    pub xdp_mode: XdpMode,
    pub metrics: Option<SocketAddr>,
    /// Clamp on the MSS (otherwise the interface MTU - 40).
    pub mss: Option<u16>,
    /// `zero_copy` and `busy_poll_us`/`busy_poll_budget`: how the AF_XDP
    /// sockets are bound (a restart applies a change).
    pub zero_copy: crate::xsk::ZeroCopy,
    pub busy_poll: Option<crate::xsk::BusyPoll>,
    /// `congestion`: "newreno" (default) or "bbr", for every connection of
    /// both legs (a restart applies a change).
    pub congestion: crate::tcp::Congestion,
    pub listeners: Vec<Listener>,
    pub upstream: Upstream,
    pub health: Health,
    pub timeouts: Timeouts,
    /// Memory bounds of connection buffers (`[buffers]`).
    pub buffers: Buffers,
    /// Connections held by the whole process at most (`max_connections`).
    pub max_connections: Option<usize>,
    /// Where the ISN/timestamp secret is kept (`state_dir`).
    pub state_dir: PathBuf,
    /// Seeds the Maglev tables: instances of one fleet share it, so they
    /// send a client to the same backend.
    pub maglev_seed: u64,
    /// After SIGTERM, how long /ready says 503 while new connections are
    /// still served (for routes to converge), before the drain.
    pub announce_grace: Duration,
    /// How `backends_dns` names are resolved (`[dns]`).
    pub dns: Dns,
    /// The runtime API's address (`admin`); off when `None`.
    pub admin: Option<SocketAddr>,
    /// The bearer token the runtime API requires (`admin_token_file`,
    /// read when the file is loaded; surrounding whitespace trimmed).
    pub admin_token: Option<String>,
    /// Where one JSON line per finished session goes (`access_log`).
    pub access_log: Option<AccessLog>,
}

/// The access log's destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessLog {
    Stderr,
    File(PathBuf),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// A virtual IP served instead of the interface's own address (the
    /// kernel need not have it). Several listeners may share one.
    pub address: Option<std::net::Ipv4Addr>,
    pub port: u16,
    pub balance: Balance,
    /// In the order of the file (Maglev's table does not depend on it).
    pub backends: Vec<BackendSettings>,
    /// Client connections held at once at most (`max_connections`).
    pub max_connections: Option<usize>,
    pub slow_start: Duration,
    pub proxy_protocol: ProxyProtocol,
    /// Expect a PROXY header from a balancer in front (`accept_proxy`).
    pub accept_proxy: bool,
    /// Other backends a session tries at most (`retries`).
    pub retries: Option<u32>,
    /// Backends published in DNS, resolved off the shards and added to
    /// `backends` (see `sidecar::dns`).
    pub backends_dns: Option<DnsName>,
    /// TCP keepalive on client connections (`keepalive`; off when `None`).
    pub keepalive: Option<crate::tcp::Keepalive>,
}

/// A listener's `backends_dns`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DnsName {
    /// `_service._proto.name`: SRV records name each backend's host and port.
    Srv(String),
    /// `name:port`: every A record of `name`, on `port`.
    A { host: String, port: u16 },
}

impl std::fmt::Display for DnsName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsName::Srv(name) => f.write_str(name),
            DnsName::A { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// The `[dns]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dns {
    /// Name servers asked; `None`: those of /etc/resolv.conf.
    pub resolvers: Option<Vec<SocketAddr>>,
    /// Names are re-resolved at their TTL, but never sooner than this
    /// (and failures are retried after it).
    pub min_ttl: Duration,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            resolvers: None,
            min_ttl: Duration::from_secs(1),
        }
    }
}

/// Memory bounds of connection buffers (`[buffers]`, restart to change).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffers {
    /// Receive-buffer autotuning's ceiling per connection, bytes (`recv_max_kb`).
    pub recv_max: usize,
    /// The send buffer follows cwnd up to this, bytes (`send_max_kb`).
    pub send_max: usize,
    /// All connections' buffers of one shard together, bytes (`pool_mb`):
    /// past it, advertised windows shrink and sends take less (counted in
    /// `turnstile_buffer_pool_exhausted_total`).
    pub pool: usize,
}

impl Default for Buffers {
    fn default() -> Self {
        let tcp = crate::tcp::Config::default();
        Buffers {
            recv_max: tcp.recv_buffer_max,
            send_max: tcp.send_buffer_max,
            pool: tcp.buffer_pool_budget,
        }
    }
}

/// Connections from the sidecar to backends: local ports and TIME_WAIT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub ports: RangeInclusive<u16>,
    pub msl: Duration,
    pub reuse: bool,
    pub reuse_delay: Duration,
    pub max_time_wait: usize,
    /// TCP keepalive on connections to backends (`keepalive`; off when `None`).
    pub keepalive: Option<crate::tcp::Keepalive>,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            // Outside Linux's default ip_local_port_range: nothing to reserve.
            ports: crate::runtime::DEFAULT_ACTIVE_PORTS,
            msl: Duration::from_secs(30),
            reuse: true,
            reuse_delay: Duration::from_secs(1),
            max_time_wait: 262_144,
            keepalive: None,
        }
    }
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
            file: path.display().to_string(),
            err,
        })?;
        Config::parse(&text, path)
    }

    /// Validates `text`; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        parse::parse(text, file)
    }

    /// The listening ports, in file order.
    pub fn ports(&self) -> Vec<u16> {
        self.listeners.iter().map(|l| l.port).collect()
    }

    /// Every backend of every listener, once, in first-seen order.
    pub fn all_backends(&self) -> Vec<SocketAddrV4> {
        self.proxy_settings().all_backends()
    }
}
