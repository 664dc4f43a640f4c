//! The sans-IO TCP engine (RFC 9293): segments and a clock in, segments and events out.
//!
//! Shaped like quinn-proto: an [`Endpoint`] (one per shard) has getters, `handle_*`
//! inputs, application mutators and `poll_*` outputs. It does no I/O, reads no
//! clock (time is an [`Instant`] argument) and draws no randomness (the secret for
//! ISNs, timestamp offsets, port offsets and SYN cookies is passed in).
//!
//! # Driving an endpoint (the shard's loop)
//! 1. Each received TCP segment (checksums verified by `wire`):
//!    [`Endpoint::handle_segment`]`(local_ip, remote_ip, &repr, payload, now)`.
//! 2. When `now >= poll_timeout()`: [`Endpoint::handle_timeout`]`(now)`. After any
//!    `handle_*` call `poll_timeout` is exact (it may be early only after
//!    application calls that moved a deadline later).
//! 3. Drain [`Endpoint::poll_event`] to the application, which calls `send`, `recv`,
//!    `shutdown`, `close`, `abort`, `connect`.
//! 4. Drain [`Endpoint::poll_transmit`]`(now, buf)`: each [`Transmit`] is one segment,
//!    its payload in `buf[..payload_len]` (`buf` at least the MSS). Segments for
//!    closed ports (RSTs), TIME-WAIT ACKs and SYN-cookie SYN+ACKs come out here too.
//!
//! # Events
//! Edge-triggered. `Accepted`/`Connected` open a connection to the application;
//! `Readable` comes when in-order data arrives and `recv` was called since the
//! previous `Readable` (so read until `Ok(0)`); `Writable` when send space frees
//! after a `send` came up short; `PeerClosed` when the peer's FIN arrives (all data
//! before it is readable). `Closed` (orderly end), `Reset`, `TimedOut` and
//! `Refused` end a connection: the id is invalid afterwards. A connection that
//! ended in order while unread data remains is kept until the application reads
//! it all or calls `close`. `abort` sends a RST and produces no event.
//!
//! # Memory
//! A connection is a 552-byte struct plus its send and receive buffers (sizes from
//! [`Config`]; pooled and reused). A TIME-WAIT entry is 56 bytes in its table
//! (4-tuple key included) plus a 24-byte expiry record, plus 16 bytes in its
//! destination's reuse FIFO when it came from an active open.
//!
//! # Where this differs from the planned shape (docs/ARCHITECTURE.md)
//! The port allocator and TIME-WAIT expiry live here rather than in `shard/`: the
//! engine's API owns `connect` and the recycling rules, so it owns the ports and
//! the entries; the shard's only timer duty is calling `handle_timeout` at
//! `poll_timeout`. The engine keeps its own timer heap (one live entry per
//! connection) and a FIFO for TIME-WAIT (all entries live 2 MSL, so the FIFO is
//! ordered by expiry): both O(log n) or O(1), no wheel needed.

mod bbr;
mod config;
mod congestion;
pub(crate) mod connection;
mod control;
mod endpoint;
mod error;
mod event;
pub(crate) mod id;
pub(crate) mod isn;
mod listener;
mod minmax;
mod options;
mod pool;
mod ports;
mod rate;
mod reassembly;
mod reset;
mod rtt;
mod scoreboard;
mod send_buffer;
pub mod seq;
mod state;
mod stats;
pub(crate) mod syn_cookies;
mod time;
mod timer;
pub(crate) mod timewait;

pub use config::{Config, Keepalive, PortFilter};
pub use congestion::Congestion;
pub use endpoint::{BufferPoolStats, Endpoint};
pub use error::{ConnError, ConnectError};
pub use event::{Event, Transmit};
pub use id::{ConnId, FourTuple};
pub use reset::reset_for;
pub use state::State;
pub use stats::Stats;
pub use time::Instant;
// Reused by the proxy app for its per-session deadlines.
pub(crate) use timer::TimerQueue;

#[cfg(test)]
mod tests;
