//! Blind injection per RFC 5961: RST, SYN and data from an off-path attacker
//! who knows the 4-tuple but not the sequence numbers; plus PAWS (RFC 7323).

use super::pair::*;
use crate::tcp::{ConnId, Event, State};
use crate::wire::{TcpOptions, TcpRepr};
use std::time::Duration;

/// An established pair and a template of a segment from B to A without options.
fn setup() -> (Pair, ConnId, ConnId, u32, u32, Seg) {
    let mut p = Pair::new();
    let (a_id, b_id, a_iss, b_iss) = p.establish();
    let templ = Seg {
        src: B_IP,
        dst: A_IP,
        tcp: TcpRepr {
            src_port: B_PORT,
            dst_port: A_PORT,
            seq: add(b_iss, 1),
            ack: add(a_iss, 1),
            flags: ACK,
            window: 512,
            options: TcpOptions::default(),
        },
        payload: vec![],
    };
    (p, a_id, b_id, a_iss, b_iss, templ)
}

#[test]
fn rst_with_exact_sequence_number_resets() {
    let (mut p, a_id, _, _, b_iss, templ) = setup();
    let rst = Seg {
        tcp: TcpRepr {
            seq: add(b_iss, 1),
            flags: RST,
            ..templ.tcp
        },
        ..templ
    };
    p.deliver_a(&rst);
    p.a_silent();
    assert_eq!(p.a_events(), vec![(a_id, Event::Reset)]);
    assert_eq!(p.a_states.last(), Some(&State::Closed));
    assert_eq!(p.a.stats().rst_received, 1);
}

#[test]
fn rst_in_window_but_not_exact_gets_a_challenge_ack() {
    let (mut p, a_id, _, a_iss, b_iss, templ) = setup();
    let rst = Seg {
        tcp: TcpRepr {
            seq: add(b_iss, 1000),
            flags: RST,
            ..templ.tcp
        },
        ..templ
    };
    p.deliver_a(&rst);
    // RFC 5961 3.2: <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>
    p.a_sends().expect(ACK, add(a_iss, 1), add(b_iss, 1));
    assert_eq!(p.a.state(a_id), Some(State::Established));
    assert_eq!(p.a.stats().challenge_acks, 1);
    assert!(p.a_events().is_empty());
}

#[test]
fn rst_outside_the_window_is_dropped_silently() {
    let (mut p, a_id, _, _, b_iss, templ) = setup();
    let rst = Seg {
        tcp: TcpRepr {
            seq: add(b_iss, 10_000_000),
            flags: RST,
            ..templ.tcp
        },
        ..templ
    };
    p.deliver_a(&rst);
    p.a_silent();
    assert_eq!(p.a.state(a_id), Some(State::Established));
}

#[test]
fn syn_in_a_synchronized_state_gets_a_challenge_ack() {
    let (mut p, a_id, _, a_iss, b_iss, templ) = setup();
    for seq in [add(b_iss, 1), add(b_iss, 77), 12345] {
        let syn = Seg {
            tcp: TcpRepr {
                seq,
                flags: SYN,
                ..templ.tcp
            },
            ..templ.clone()
        };
        p.deliver_a(&syn);
        p.a_sends().expect(ACK, add(a_iss, 1), add(b_iss, 1));
    }
    assert_eq!(p.a.state(a_id), Some(State::Established));
    assert_eq!(p.a_states.last(), Some(&State::Established));
}

#[test]
fn data_with_an_unacceptable_ack_is_dropped() {
    let (mut p, a_id, _, a_iss, b_iss, templ) = setup();
    // ACK of data never sent (beyond SND.NXT).
    let inject = Seg {
        tcp: TcpRepr {
            ack: add(a_iss, 5000),
            ..templ.tcp
        },
        payload: b"evil".to_vec(),
        ..templ.clone()
    };
    p.deliver_a(&inject);
    p.a_sends().expect(ACK, add(a_iss, 1), add(b_iss, 1));
    // ACK far below SND.UNA - MAX.SND.WND.
    let inject_old = Seg {
        tcp: TcpRepr {
            ack: a_iss.wrapping_sub(1 << 30),
            ..templ.tcp
        },
        payload: b"evil".to_vec(),
        ..templ.clone()
    };
    p.advance(Duration::from_secs(1));
    p.deliver_a(&inject_old);
    p.a_sends().expect(ACK, add(a_iss, 1), add(b_iss, 1));
    assert_eq!(p.a.recv_available(a_id), 0, "nothing injected is delivered");
    assert_eq!(p.a.stats().drop_bad_ack, 2);
    // A correct segment still works.
    let good = Seg {
        payload: b"good".to_vec(),
        ..templ
    };
    p.deliver_a(&good);
    assert_eq!(p.recv_all_a(a_id), b"good");
}

#[test]
fn challenge_acks_are_rate_limited() {
    let (mut p, _, _, _, b_iss, templ) = setup();
    let mut acks = 0;
    for i in 0..25 {
        let syn = Seg {
            tcp: TcpRepr {
                seq: add(b_iss, i),
                flags: SYN,
                ..templ.tcp
            },
            ..templ.clone()
        };
        p.deliver_a(&syn);
        while p.a_out().is_some() {
            acks += 1;
        }
    }
    assert_eq!(acks, 10, "challenge_ack_limit per second");
    assert_eq!(p.a.stats().challenge_acks_suppressed, 15);
    p.advance(Duration::from_secs(1));
    p.deliver_a(&Seg {
        tcp: TcpRepr {
            flags: SYN,
            ..templ.tcp
        },
        ..templ
    });
    assert!(p.a_out().is_some(), "a new second, a new budget");
}

#[test]
fn paws_drops_a_segment_with_an_old_timestamp() {
    let mut p = Pair::new();
    let (a_id, b_id, ..) = p.establish();
    p.advance(Duration::from_millis(10));
    p.b.send(b_id, b"one").unwrap();
    let first = p.b_sends();
    p.advance(Duration::from_millis(10));
    p.b.send(b_id, b"two").unwrap();
    let second = p.b_sends();
    p.deliver_a(&first);
    p.advance(Duration::from_millis(40)); // A ACKs "one" (RFC 7323 4.3: Last.ACK.sent)
    p.drive();
    p.deliver_a(&second); // in sequence and acknowledged: TS.Recent is its TSval
    assert_eq!(p.recv_all_a(a_id), b"onetwo");
    // A duplicate of the first segment, replayed later with its old TSval:
    // dropped by PAWS before the sequence check.
    let mut replay = first.clone();
    replay.tcp.seq = add(second.tcp.seq, 3); // even if it looked new
    p.deliver_a(&replay);
    assert_eq!(p.a.recv_available(a_id), 0);
    assert_eq!(p.a.stats().drop_paws, 1);
}
