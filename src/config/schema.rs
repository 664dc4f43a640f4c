//! The configuration file as written, before validation. Every key is an
//! `Option<Spanned<_>>` so that validation can name its line; unknown keys
//! are refused (`deny_unknown_fields`). To add a key: a field here, its
//! check in `parse.rs`, its place in [`super::Config`].

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub interface: Spanned<String>,
    pub queues: Option<Spanned<u32>>,
    pub xdp_mode: Option<Spanned<String>>,
    pub metrics: Option<Spanned<String>>,
    pub mss: Option<Spanned<u16>>,
    pub zero_copy: Option<Spanned<String>>,
    pub busy_poll_us: Option<Spanned<u32>>,
    pub busy_poll_budget: Option<Spanned<u32>>,
    pub congestion: Option<Spanned<String>>,
    #[serde(default)]
    pub listener: Vec<Spanned<RawListener>>,
    pub upstream: Option<Spanned<RawUpstream>>,
    pub health: Option<Spanned<RawHealth>>,
    pub timeouts: Option<Spanned<RawTimeouts>>,
    pub buffers: Option<Spanned<RawBuffers>>,
    pub max_connections: Option<Spanned<u64>>,
    pub state_dir: Option<Spanned<String>>,
    pub maglev_seed: Option<u64>,
    pub announce_grace_ms: Option<Spanned<u64>>,
    pub dns: Option<Spanned<RawDns>>,
    pub admin: Option<Spanned<String>>,
    pub admin_token_file: Option<Spanned<String>>,
    pub access_log: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub address: Option<Spanned<String>>,
    pub port: Spanned<u16>,
    pub balance: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<u64>>,
    /// Optional beside `backends_dns`.
    pub backends: Option<Spanned<Vec<Spanned<RawBackend>>>>,
    pub backends_dns: Option<Spanned<String>>,
    pub slow_start_ms: Option<Spanned<u64>>,
    pub proxy_protocol: Option<Spanned<String>>,
    pub accept_proxy: Option<bool>,
    pub retries: Option<Spanned<u32>>,
    pub keepalive: Option<Spanned<RawKeepalive>>,
}

/// `keepalive = { idle_ms = 60000, interval_ms = 10000, count = 5 }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeepalive {
    pub idle_ms: Option<Spanned<u64>>,
    pub interval_ms: Option<Spanned<u64>>,
    pub count: Option<Spanned<u32>>,
}

/// A backend: `"ip:port"` or `{ addr = "ip:port", weight = 3, ... }`.
pub enum RawBackend {
    Addr(String),
    Table(RawBackendTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackendTable {
    pub addr: String,
    pub weight: Option<u32>,
    pub max_connections: Option<u32>,
    pub backup: Option<bool>,
}

impl RawBackend {
    pub fn addr(&self) -> &str {
        match self {
            RawBackend::Addr(a) => a,
            RawBackend::Table(t) => &t.addr,
        }
    }
}

// By hand rather than `#[serde(untagged)]`: an untagged enum reports only
// "did not match any variant", losing which key of the table was wrong.
impl<'de> Deserialize<'de> for RawBackend {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawBackend;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"ip:port\" or a table { addr = \"ip:port\", weight = N, max_connections = N, backup = true }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawBackend, E> {
                Ok(RawBackend::Addr(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawBackend, A::Error> {
                RawBackendTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawBackend::Table)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub ports: Option<Spanned<String>>,
    pub msl_ms: Option<Spanned<u64>>,
    pub reuse: Option<bool>,
    pub reuse_delay_ms: Option<Spanned<u64>>,
    pub max_time_wait: Option<Spanned<u64>>,
    pub keepalive: Option<Spanned<RawKeepalive>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub interval_ms: Option<Spanned<u64>>,
    pub timeout_ms: Option<Spanned<u64>>,
    pub fall: Option<Spanned<u32>>,
    pub rise: Option<Spanned<u32>>,
    pub passive_fall: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBuffers {
    pub recv_max_kb: Option<Spanned<u64>>,
    pub send_max_kb: Option<Spanned<u64>>,
    pub pool_mb: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect_ms: Option<Spanned<u64>>,
    pub idle_ms: Option<Spanned<u64>>,
    pub drain_ms: Option<Spanned<u64>>,
    pub client_fin_ms: Option<Spanned<u64>>,
    pub max_session_ms: Option<Spanned<u64>>,
    pub proxy_header_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    pub resolvers: Option<Spanned<Vec<Spanned<String>>>>,
    pub min_ttl_ms: Option<Spanned<u64>>,
}
