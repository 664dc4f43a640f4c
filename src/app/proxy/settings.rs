//! What the proxy runs by: its own settings types, independent of the
//! configuration file's schema. The `config` module maps the TOML onto
//! these (`Config::proxy_settings`); tests and other front-ends can build
//! them directly.

use std::net::SocketAddrV4;
use std::time::Duration;

pub use super::proxy_protocol::ProxyProtocol;

/// How a listener picks a backend for a new client connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    /// Each new connection to the next backend in turn.
    RoundRobin,
    /// The backend with the fewest open proxied connections.
    LeastConn,
    /// Maglev consistent hashing of the client's IPv4 address.
    Maglev,
}

impl Balance {
    pub const ALL: [Balance; 3] = [Balance::RoundRobin, Balance::LeastConn, Balance::Maglev];

    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round-robin",
            Balance::LeastConn => "least-conn",
            Balance::Maglev => "maglev",
        }
    }

    /// The inverse of [`Balance::as_str`].
    pub fn from_name(name: &str) -> Option<Balance> {
        Balance::ALL.into_iter().find(|b| b.as_str() == name)
    }
}

/// The largest backend weight (Maglev tables stay fair up to it).
pub const MAX_WEIGHT: u32 = 256;

/// What an operator said about a backend through the runtime API (the
/// file cannot say it; see `sidecar::overrides`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendState {
    /// Takes new sessions by its weight and health.
    #[default]
    Ready,
    /// No new sessions; the open ones finish. Still health checked.
    Drain,
    /// No new sessions and no health checks (the open ones finish).
    Maint,
}

impl BackendState {
    pub const ALL: [BackendState; 3] = [
        BackendState::Ready,
        BackendState::Drain,
        BackendState::Maint,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Ready => "ready",
            BackendState::Drain => "drain",
            BackendState::Maint => "maint",
        }
    }

    pub fn from_name(name: &str) -> Option<BackendState> {
        BackendState::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// One backend of a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSettings {
    pub addr: SocketAddrV4,
    /// Relative share of new sessions; 0 drains (no new sessions, the open
    /// ones finish).
    pub weight: u32,
    /// Open sessions to it at most (over all shards and listeners); more
    /// clients wait up to `connect` in a bounded queue. `None`: no limit.
    pub max_connections: Option<u32>,
    /// Takes sessions only while no primary backend of the listener is up.
    pub backup: bool,
    /// Ready unless the runtime API drained it or put it in maintenance.
    pub state: BackendState,
}

impl BackendSettings {
    pub fn new(addr: SocketAddrV4) -> Self {
        BackendSettings {
            addr,
            weight: 1,
            max_connections: None,
            backup: false,
            state: BackendState::Ready,
        }
    }
}

/// One listener's pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerSettings {
    pub port: u16,
    pub balance: Balance,
    /// In the order of the file (Maglev's table does not depend on it).
    pub backends: Vec<BackendSettings>,
    /// A backend that comes up (or back) ramps from weight 1 to its weight
    /// over this long. Zero: at once.
    pub slow_start: Duration,
    /// The PROXY protocol header sent to the backend first.
    pub proxy_protocol: ProxyProtocol,
    /// Expect a PROXY v1/v2 header from a trusted balancer in front
    /// before any client byte; the client it names becomes the session's
    /// client. A bad or missing header resets the connection.
    pub accept_proxy: bool,
    /// Other backends a session tries after its first attempt failed, at
    /// most (HAProxy's `retries`). `None`: each backend once (the number
    /// of backends - 1).
    pub retries: Option<u32>,
}

/// Active health checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    pub interval: Duration,
    /// A check that has not connected after this long failed.
    pub timeout: Duration,
    /// Consecutive failures before a backend is ejected.
    pub fall: u32,
    /// Consecutive successes before an ejected backend is readmitted.
    pub rise: u32,
    /// Consecutive failed connects on client sessions that also eject a
    /// backend (passive health; active checks readmit it). `None`: off.
    pub passive_fall: Option<u32>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            fall: 3,
            rise: 2,
            passive_fall: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// An upstream connect not completed after this long is abandoned (and
    /// retried on another backend).
    pub connect: Duration,
    /// A proxied connection with no byte either way for this long is reset
    /// on both legs. `None`: never.
    pub idle: Option<Duration>,
    /// On SIGINT/SIGTERM, how long open connections may take to finish.
    pub drain: Duration,
    /// A session with one direction closed (a FIN relayed) and no byte
    /// either way for this long is reset on both legs (HAProxy's `timeout
    /// client-fin`). `None`: only `idle` bounds it.
    pub client_fin: Option<Duration>,
    /// A session this old is reset on both legs, whatever it does.
    /// `None`: no bound.
    pub max_session: Option<Duration>,
    /// On an `accept_proxy` listener, the PROXY header must be complete
    /// this long after the accept, else the connection is reset.
    pub proxy_header: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            idle: Some(Duration::from_secs(300)),
            drain: Duration::from_secs(10),
            client_fin: None,
            max_session: None,
            proxy_header: Duration::from_secs(5),
        }
    }
}

/// Everything the proxy's routing snapshot is built from.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxySettings {
    pub listeners: Vec<ListenerSettings>,
    pub health: Health,
    pub timeouts: Timeouts,
    /// Seeds the Maglev tables: instances of one fleet share it, so they
    /// send a client to the same backend.
    pub maglev_seed: u64,
}

impl ProxySettings {
    /// Every backend of every listener, once, in first-seen order
    /// (linear: a set remembers what was seen).
    pub fn all_backends(&self) -> Vec<SocketAddrV4> {
        let mut seen = rustc_hash::FxHashSet::default();
        self.listeners
            .iter()
            .flat_map(|l| &l.backends)
            .filter(|b| seen.insert(b.addr))
            .map(|b| b.addr)
            .collect()
    }
}
