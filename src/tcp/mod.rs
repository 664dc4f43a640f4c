//! The sans-IO TCP engine (RFC 9293): segments and a clock in, segments and events out.
//!
//! Shaped like quinn-proto: an [`Endpoint`] (one per shard) has getters, `handle_*`
//! inputs, application mutators and `poll_*` outputs. It does no I/O, reads no
//! clock (time is an [`Instant`] argument) and draws no randomness (the secret for
//! ISNs, timestamp offsets, port offsets and SYN cookies is passed in).

mod config;
mod congestion;
pub(crate) mod connection;
mod control;
mod endpoint;
mod error;
mod event;
pub(crate) mod id;
mod isn;
mod listener;
mod options;
mod ports;
mod reassembly;
mod reset;
mod rtt;
mod send_buffer;
pub mod seq;
mod state;
mod stats;
mod syn_cookies;
mod time;
mod timer;
pub(crate) mod timewait;

pub use config::Config;
pub use endpoint::Endpoint;
pub use error::{ConnError, ConnectError};
pub use event::{Event, Transmit};
pub use id::{ConnId, FourTuple};
pub use reset::reset_for;
pub use state::State;
pub use stats::Stats;
pub use time::Instant;

#[cfg(test)]
mod tests;
