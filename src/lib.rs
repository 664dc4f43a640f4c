//! turnstile: a kernel-bypass TCP stack on AF_XDP with safe TIME_WAIT recycling.
//!
//! Layers only look down: `wire` <- `tcp` <- `shard` <- `app` <- the binaries.

pub mod tcp;
pub mod wire;
