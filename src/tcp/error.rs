//! Errors returned to the application.

use thiserror::Error;

/// Why an active open could not start.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
pub enum ConnectError {
    #[error(
        "no free local port to this destination and no TIME_WAIT tuple safe to reuse; widen the port range, enable reuse or lower reuse_delay, or open fewer connections to this destination"
    )]
    NoPort,
    #[error(
        "the 4-tuple is already in use by a connection or an unsafe TIME_WAIT entry; pick another local port"
    )]
    TupleInUse,
    #[error("invalid address: the remote port and addresses must be non-zero and unicast")]
    InvalidAddress,
    #[error("too many connections for this endpoint's slab (u32 indices); close some first")]
    TooManyConnections,
}

/// Why an operation on a connection failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
pub enum ConnError {
    #[error(
        "unknown or stale connection id; it ended (Closed/Reset/TimedOut/Refused) or was aborted"
    )]
    InvalidId,
    #[error(
        "the connection is not connected (closed or not yet opened); wait for Connected/Accepted"
    )]
    NotConnected,
    #[error(
        "the sending side was already shut down (shutdown or close was called); no more data can be sent"
    )]
    SendClosed,
}
