//! Limits against hostile peers: cookies only after an overflow, the
//! randomized challenge-ACK budget of TIME-WAIT entries, max_connections.

use super::pair::*;
use crate::tcp::isn::Keys;
use crate::tcp::{Config, Endpoint};
use crate::wire::Timestamps;

/// The SYN and the cookie SYN+ACK of a listener with no SYN queue, and the
/// ACK that completes it.
fn cookie_handshake(p: &mut Pair) -> (Seg, Seg) {
    p.connect();
    let syn = p.a_sends();
    p.deliver_b(&syn);
    let synack = p.b_sends();
    assert_eq!(p.b.stats().syn_cookies_sent, 1);
    p.deliver_a(&synack);
    let ack = p.a_sends();
    (syn, ack)
}

#[test]
fn a_valid_cookie_is_refused_by_a_listener_that_never_overflowed() {
    let mut p = Pair::with_configs(
        config(),
        Config {
            syn_backlog: 0,
            ..config()
        },
    );
    let (_, ack) = cookie_handshake(&mut p);
    // The same secret (as after a restart, or another shard), the same
    // ACK, but this listener's SYN queue never overflowed: no cookie of
    // its own can be out there, so the ACK is answered with a RST.
    let mut fresh = Endpoint::new(config(), [0xbb; 16]);
    fresh.listen(B_PORT);
    fresh.handle_segment(ack.dst, ack.src, &ack.tcp, &ack.payload, p.now);
    let mut buf = [0u8; 2048];
    let rst = fresh.poll_transmit(p.now, &mut buf).expect("a reply");
    assert!(rst.tcp.flags.contains(RST), "{rst:?}");
    assert_eq!(fresh.connection_count(), 0);
    assert_eq!(fresh.stats().syn_cookies_no_overflow, 1);
    assert_eq!(fresh.stats().syn_cookies_accepted, 0);
    // The listener that sent it (overflowed just now) takes it.
    p.deliver_b(&ack);
    assert_eq!(p.b.stats().syn_cookies_accepted, 1);
    assert_eq!(p.b.connection_count(), 1);
}

#[test]
fn cookies_stop_being_checked_once_the_overflow_is_old() {
    let mut p = Pair::with_configs(
        config(),
        Config {
            syn_backlog: 0,
            ..config()
        },
    );
    let (_, mut ack) = cookie_handshake(&mut p);
    p.advance(crate::tcp::syn_cookies::LIFETIME + std::time::Duration::from_secs(1));
    // Keep the timestamp fresh so only the overflow rule can refuse it.
    if let Some(ts) = ack.tcp.options.timestamps.as_mut() {
        *ts = Timestamps {
            tsval: ts.tsval.wrapping_add(200_000),
            tsecr: ts.tsecr,
        };
    }
    p.deliver_b(&ack);
    assert_eq!(p.b.stats().syn_cookies_no_overflow, 1);
    assert_eq!(p.b.connection_count(), 0);
    p.b_sends().expect(RST, ack.tcp.ack, 0);
}

#[test]
fn the_time_wait_challenge_budget_is_drawn_per_second_around_the_limit() {
    let keys = Keys::new([7; 16]);
    let budgets: Vec<u32> = (0..200).map(|s| keys.challenge_budget(s, 10)).collect();
    assert!(budgets.iter().all(|b| (5..15).contains(b)), "{budgets:?}");
    let distinct: std::collections::BTreeSet<_> = budgets.iter().collect();
    assert!(
        distinct.len() >= 5,
        "varies from second to second: {distinct:?}"
    );
    // Another secret, another sequence.
    let other = Keys::new([8; 16]);
    assert_ne!(
        budgets,
        (0..200)
            .map(|s| other.challenge_budget(s, 10))
            .collect::<Vec<_>>()
    );
}

/// `n` SYNs from distinct client ports to B; returns how many got a SYN+ACK.
fn syns(p: &mut Pair, template: &Seg, n: u16, first_port: u16) -> usize {
    let mut answered = 0;
    for i in 0..n {
        let mut syn = template.clone();
        syn.tcp.src_port = first_port + i;
        p.deliver_b(&syn);
        while let Some(s) = p.b_out() {
            if s.tcp.flags.contains(SYN | ACK) {
                answered += 1;
            }
        }
    }
    answered
}

#[test]
fn a_listener_holds_at_most_its_max_connections_and_drops_further_syns() {
    let mut p = Pair::new();
    p.b.listen_limited(B_PORT, 3);
    p.connect();
    let syn = p.a_sends();
    assert_eq!(syns(&mut p, &syn, 5, 50_000), 3);
    assert_eq!(p.b.connection_count(), 3);
    assert_eq!(p.b.stats().syn_dropped_max_connections, 2);
    // A retransmitted SYN of a held connection is still answered.
    let mut again = syn.clone();
    again.tcp.src_port = 50_000;
    p.deliver_b(&again);
    assert!(p.b_out().is_some());
}

#[test]
fn the_endpoint_limit_counts_every_connection_and_frees_with_them() {
    let mut p = Pair::with_configs(
        config(),
        Config {
            max_connections: 2,
            ..config()
        },
    );
    p.connect();
    let syn = p.a_sends();
    assert_eq!(syns(&mut p, &syn, 4, 51_000), 2);
    assert_eq!(p.b.stats().syn_dropped_max_connections, 2);
    // The SYN-RECEIVED ones time out (SYN+ACK retransmissions back off
    // from 1 s, about two minutes in all) and go: room again.
    for _ in 0..300 {
        p.advance(std::time::Duration::from_secs(1));
        while p.b_out().is_some() {}
    }
    assert_eq!(p.b.connection_count(), 0);
    assert_eq!(syns(&mut p, &syn, 1, 52_000), 1);
}
