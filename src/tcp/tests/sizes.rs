//! Memory per connection and per TIME-WAIT entry.

use crate::tcp::connection::Connection;
use crate::tcp::id::FourTuple;
use crate::tcp::timewait::TimeWait;
use crate::tcp::{Config, Instant};

#[test]
fn time_wait_entry_is_at_most_64_bytes() {
    let entry = std::mem::size_of::<(FourTuple, TimeWait)>();
    let fifo = std::mem::size_of::<(Instant, FourTuple)>();
    eprintln!("TIME-WAIT entry (key + value): {entry} bytes; expiry FIFO record: {fifo} bytes");
    assert!(entry <= 64, "{entry}");
}

#[test]
fn connection_size_is_reported() {
    let conn = std::mem::size_of::<Connection>();
    let cfg = Config::default();
    eprintln!(
        "Connection struct: {conn} bytes, plus buffers {} + {} bytes",
        cfg.send_buffer, cfg.recv_buffer
    );
    // Guard against accidental growth (e.g. an inline buffer). 528 with the
    // SACK receiver state, the boxed scoreboard and the RACK/TLP timer; 552
    // with the keepalive timer (24 bytes), 16 more for receive-buffer
    // autotuning's measurement, 8 for the boxed congestion model (BBR).
    assert!(conn <= 576, "{conn}");
}

#[test]
fn an_endpoint_can_move_to_its_shard_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<crate::tcp::Endpoint>();
}
