//! What the engine tells the application, and what it hands the datapath.

use crate::wire::TcpRepr;
use std::net::Ipv4Addr;

/// Something the application should act on, from [`Endpoint::poll_event`](super::Endpoint::poll_event).
///
/// Events are edge-triggered: `Readable` comes when new in-order data arrives
/// and the application has called `recv` since the last `Readable` (so read
/// until `Ok(0)`); `Writable` comes when send space frees after a `send` came up
/// short. After `Closed`, `Reset`, `TimedOut` or `Refused` the id is invalid.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Event {
    /// A passive open on `port` completed; the `ConnId` is new to the application.
    Accepted { port: u16 },
    /// Our active open completed.
    Connected,
    /// In-order data can be read with `recv`.
    Readable,
    /// Send space freed after a short `send`.
    Writable,
    /// The peer's FIN arrived; all data before it is readable.
    PeerClosed,
    /// Orderly end (both FINs exchanged and acknowledged); the id is invalid after.
    Closed,
    /// The peer reset the connection.
    Reset,
    /// Retransmissions were exhausted (data, FIN, SYN+ACK or SYN).
    TimedOut,
    /// The peer answered our SYN with a RST.
    Refused,
    /// Our active open never left: its next hop's MAC could not be resolved.
    /// Never produced by this engine (it sends no frames); the shard reports
    /// it after aborting the connection.
    Unreachable,
}

/// One segment to put on the wire: the IPv4 addresses, the TCP header and
/// `payload_len` bytes written at the start of the caller's payload buffer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Transmit {
    pub local: Ipv4Addr,
    pub remote: Ipv4Addr,
    pub tcp: TcpRepr,
    pub payload_len: usize,
}
