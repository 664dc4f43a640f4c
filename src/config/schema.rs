//! The configuration file as written, before validation. Every key is an
//! `Option<Spanned<_>>` so that validation can name its line; unknown keys
//! are refused (`deny_unknown_fields`). To add a key: a field here, its
//! check in `parse.rs`, its place in [`super::Config`].

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub interface: Spanned<String>,
    pub queues: Option<Spanned<u32>>,
    pub xdp_mode: Option<Spanned<String>>,
    pub metrics: Option<Spanned<String>>,
    pub mss: Option<Spanned<u16>>,
    #[serde(default)]
    pub listener: Vec<Spanned<RawListener>>,
    pub upstream: Option<Spanned<RawUpstream>>,
    pub health: Option<Spanned<RawHealth>>,
    pub timeouts: Option<Spanned<RawTimeouts>>,
    pub max_connections: Option<Spanned<u64>>,
    pub state_dir: Option<Spanned<String>>,
    pub maglev_seed: Option<u64>,
    pub announce_grace_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub address: Option<Spanned<String>>,
    pub port: Spanned<u16>,
    pub balance: Option<Spanned<String>>,
    pub backends: Spanned<Vec<Spanned<String>>>,
    pub max_connections: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub ports: Option<Spanned<String>>,
    pub msl_ms: Option<Spanned<u64>>,
    pub reuse: Option<bool>,
    pub reuse_delay_ms: Option<Spanned<u64>>,
    pub max_time_wait: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub interval_ms: Option<Spanned<u64>>,
    pub timeout_ms: Option<Spanned<u64>>,
    pub fall: Option<Spanned<u32>>,
    pub rise: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect_ms: Option<Spanned<u64>>,
    pub idle_ms: Option<Spanned<u64>>,
    pub drain_ms: Option<Spanned<u64>>,
}
