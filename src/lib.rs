//! turnstile: a kernel-bypass TCP stack on AF_XDP with safe TIME_WAIT recycling.
//!
//! Layers only look down: `wire` <- `tcp` <- `shard` <- `app` <- the binaries.

pub mod app;
pub mod config;
pub mod iface;
pub mod metrics;
pub mod neigh;
pub mod ports;
pub mod resolver;
pub mod rss;
pub mod runtime;
pub mod shard;
pub mod sidecar;
pub mod state;
pub mod tcp;
pub mod testkit;
pub mod topology;
pub mod wire;
pub mod xdp;
pub mod xsk;
