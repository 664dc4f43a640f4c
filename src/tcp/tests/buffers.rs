//! Buffers on demand: storage from the endpoint's chunk pool only while there
//! are bytes to hold, and a pool budget that shrinks windows when spent.

use super::pair::*;
use crate::tcp::Config;
use std::time::Duration;

#[test]
fn connections_hold_no_chunk_once_their_bytes_are_read_and_acknowledged() {
    let mut p = Pair::new();
    let (a_id, b_id, ..) = p.establish();
    assert_eq!(
        p.a.buffer_pool().in_use_bytes,
        0,
        "a new connection holds nothing"
    );
    assert_eq!(p.b.buffer_pool().in_use_bytes, 0);
    p.a.send(a_id, &[1u8; 10_000]).unwrap();
    assert!(
        p.a.buffer_pool().in_use_bytes >= 10_000,
        "queued bytes take chunks"
    );
    p.drive();
    assert!(
        p.b.buffer_pool().in_use_bytes >= 10_000,
        "unread bytes hold chunks"
    );
    assert_eq!(p.recv_all_b(b_id).len(), 10_000);
    p.b.send(b_id, b"reply").unwrap();
    p.drive();
    assert_eq!(p.recv_all_a(a_id), b"reply");
    p.advance(Duration::from_millis(50)); // delayed ACKs
    p.drive();
    for (name, ep) in [("a", &p.a), ("b", &p.b)] {
        let pool = ep.buffer_pool();
        assert_eq!(pool.in_use_bytes, 0, "{name}: idle again, no chunk held");
        assert!(
            pool.allocated_bytes > 0,
            "{name}: chunks stay pooled for reuse"
        );
    }
}

#[test]
fn a_spent_pool_budget_shrinks_the_window_and_the_transfer_still_completes() {
    let budget = 128 * 1024;
    let receiver = Config {
        recv_buffer: 1 << 20,
        buffer_pool_budget: budget,
        ..config()
    };
    let sender = Config {
        send_buffer: 1 << 20,
        buffer_pool_budget: budget,
        ..config()
    };
    let mut p = Pair::with_configs(sender, receiver);
    let (a_id, b_id, ..) = p.establish();
    let total = 1 << 20;
    let data: Vec<u8> = (0..total).map(|i| (i * 13 / 7) as u8).collect();
    let (mut sent, mut got) = (0, Vec::new());
    let mut most_held = 0;
    for _ in 0..10_000 {
        if got.len() == total {
            break;
        }
        if sent < total {
            let n = p.a.send(a_id, &data[sent..]).unwrap();
            assert!(n <= budget, "send took {n} bytes past the sender's budget");
            sent += n;
            assert!(p.a.send_capacity(a_id) <= budget);
        }
        p.drive();
        most_held = most_held.max(p.b.recv_available(b_id));
        assert!(p.b.buffer_pool().in_use_bytes <= budget);
        // The application reads only now and then, so the window fills.
        got.extend(p.recv_all_b(b_id));
        p.advance(Duration::from_millis(50));
    }
    assert_eq!(got.len(), total, "transfer completed");
    assert!(got == data, "bytes intact");
    assert!(
        most_held <= budget,
        "held {most_held} unread bytes under a {budget}-byte budget"
    );
    assert!(
        most_held > 64 * 1024,
        "the budget, not 64 KiB, bounded it: {most_held}"
    );
    assert!(p.a.buffer_pool().exhausted > 0, "running out is counted");
    assert!(p.a.buffer_pool().allocated_bytes <= budget);
    assert!(p.b.buffer_pool().allocated_bytes <= budget);
}
