//! Limits against hostile peers: cookies only after an overflow, the
//! randomized challenge-ACK budget of TIME-WAIT entries, max_connections.

use super::pair::*;
use crate::tcp::isn::Keys;
use crate::tcp::{Config, Endpoint};
use crate::wire::{TcpRepr, Timestamps};

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

/// The ACK completing a cookie handshake B never saw the SYN of (the XDP
/// program answered it), from A's port, its ISN `peer_isn` and TSval `tsval`.
fn xdp_cookie_ack(p: &Pair, peer_isn: u32, tsval: u32) -> TcpRepr {
    use crate::tcp::isn::ts_clock;
    use crate::tcp::seq::Seq;
    use crate::tcp::syn_cookies;
    let keys = Keys::new([0xbb; 16]);
    let t = p.b_tuple();
    let cookie = syn_cookies::encode_isn(&keys, t, Seq(peer_isn), 1460, p.now);
    let synack_tsval =
        syn_cookies::encode_tsval(ts_clock(p.now, keys.ts_offset(t)), Some(7), false);
    TcpRepr {
        src_port: A_PORT,
        dst_port: B_PORT,
        seq: peer_isn.wrapping_add(1),
        ack: (cookie + 1u32).0,
        flags: ACK,
        window: 1000,
        options: crate::wire::TcpOptions {
            timestamps: Some(Timestamps {
                tsval,
                tsecr: synack_tsval,
            }),
            ..Default::default()
        },
    }
}

#[test]
fn a_cookie_answered_elsewhere_completes_only_after_note_and_reopens_time_wait() {
    let mut p = Pair::new();
    let (_, b_id, _, _) = p.establish();
    // B closes first and holds the tuple in TIME-WAIT.
    p.b.close(b_id).unwrap();
    let fin = p.b_sends();
    p.deliver_a(&fin);
    let ack = p.a_sends();
    p.deliver_b(&ack);
    let a_id = p.a_events()[0].0;
    p.a.close(a_id).unwrap();
    let fin = p.a_sends();
    p.deliver_b(&fin);
    let last = p.b_sends();
    p.deliver_a(&last);
    assert_eq!(p.b.time_wait_count(), 1);
    let ts_recent = fin.tcp.options.timestamps.expect("timestamps").tsval;

    // Without a note of cookies sent elsewhere, the ACK does not reopen it.
    let ack = xdp_cookie_ack(&p, 0x5000_0000, ts_recent.wrapping_add(10));
    p.b.handle_segment(B_IP, A_IP, &ack, &[], p.now);
    assert_eq!(p.b.time_wait_count(), 1);
    assert_eq!(p.b.stats().syn_cookies_accepted, 0);

    // A forged cookie after the note: TIME-WAIT stays (RFC 1337).
    p.b.note_syn_cookies_sent(p.now);
    let mut forged = ack;
    forged.ack ^= 0x10;
    p.b.handle_segment(B_IP, A_IP, &forged, &[], p.now);
    assert_eq!(p.b.time_wait_count(), 1);
    // An old timestamp (not a new incarnation by RFC 6191): stays too.
    let old = xdp_cookie_ack(&p, 0x5000_0000, ts_recent.wrapping_sub(10));
    p.b.handle_segment(B_IP, A_IP, &old, &[], p.now);
    assert_eq!(p.b.time_wait_count(), 1);
    assert_eq!(p.b.connection_count(), 0);

    // The valid one replaces the entry with an established connection.
    p.b.handle_segment(B_IP, A_IP, &ack, &[], p.now);
    assert_eq!(p.b.time_wait_count(), 0);
    assert_eq!(p.b.stats().syn_cookies_accepted, 1);
    assert_eq!(p.b.established_count(), 1);
    assert_eq!(p.b.stats().time_wait_recycled_passive, 1);
}
