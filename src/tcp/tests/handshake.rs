//! Opening: the three-way handshake from both sides, simultaneous open,
//! self-connect, refused and timed-out opens, options as Linux sends them.

use super::pair::*;
use crate::tcp::{Config, Endpoint, Event, FourTuple, Instant, State};
use crate::wire::{TcpOptions, TcpRepr, Timestamps};
use std::net::SocketAddrV4;
use std::time::Duration;

#[test]
fn three_way_handshake_both_sides() {
    let mut p = Pair::new();
    let (a_id, b_id, a_iss, b_iss) = p.establish();
    assert_eq!(
        p.a_states,
        vec![State::Closed, State::SynSent, State::Established]
    );
    assert_eq!(
        p.b_states,
        vec![State::Listen, State::SynReceived, State::Established]
    );
    assert_eq!(p.a.state(a_id), Some(State::Established));
    assert_eq!(p.b.state(b_id), Some(State::Established));
    assert_eq!(p.a.established_count(), 1);
    assert_eq!(p.b.established_count(), 1);
    assert_eq!(p.b.stats().accepted, 1);
    assert_eq!(p.a.stats().connected, 1);
    // First data from each side starts right after its ISS.
    p.a.send(a_id, b"hello").unwrap();
    let d = p.a_sends();
    d.expect(ACK | PSH, add(a_iss, 1), add(b_iss, 1));
    assert_eq!(d.payload, b"hello");
    p.deliver_b(&d);
    assert_eq!(p.b_events(), vec![(b_id, crate::tcp::Event::Readable)]);
    assert_eq!(p.recv_all_b(b_id), b"hello");
}

#[test]
fn syn_options_and_window_scaling_against_a_linux_syn() {
    let mut p = Pair::new();
    // A SYN as Linux sends it: MSS, SACK_PERM, TS, NOP, WS=7.
    let syn = Seg {
        src: A_IP,
        dst: B_IP,
        tcp: TcpRepr {
            src_port: A_PORT,
            dst_port: B_PORT,
            seq: 1_000_000,
            ack: 0,
            flags: SYN,
            window: 64240,
            options: TcpOptions {
                sack: crate::wire::SackBlocks::EMPTY,
                mss: Some(1460),
                window_scale: Some(7),
                sack_permitted: true,
                timestamps: Some(Timestamps {
                    tsval: 5000,
                    tsecr: 0,
                }),
            },
        },
        payload: vec![],
    };
    p.deliver_b(&syn);
    let synack = p.b_sends();
    let b_iss = synack.tcp.seq;
    synack.expect(SYN | ACK, b_iss, 1_000_001);
    assert_eq!(synack.tcp.options.mss, Some(1460));
    assert_eq!(synack.tcp.options.window_scale, Some(7));
    assert!(
        synack.tcp.options.sack_permitted,
        "SACK-permitted answered when the SYN offers it (RFC 2018 2)"
    );
    assert_eq!(synack.tcp.options.timestamps.unwrap().tsecr, 5000);
    assert_eq!(synack.tcp.window, 65535, "a SYN's window is not scaled");
    // The ACK advertises a window of 2 << 7 = 256 bytes.
    let ack = Seg {
        tcp: TcpRepr {
            seq: 1_000_001,
            ack: add(b_iss, 1),
            flags: ACK,
            window: 2,
            options: TcpOptions {
                timestamps: Some(Timestamps {
                    tsval: 5001,
                    tsecr: synack.tcp.options.timestamps.unwrap().tsval,
                }),
                ..TcpOptions::default()
            },
            ..syn.tcp
        },
        ..syn.clone()
    };
    p.deliver_b(&ack);
    let ev = p.b_events();
    let b_id = ev[0].0;
    assert_eq!(p.b.send(b_id, &[7u8; 1000]).unwrap(), 1000);
    let d = p.b_sends();
    d.expect(ACK, add(b_iss, 1), 1_000_001);
    assert_eq!(
        d.payload.len(),
        256,
        "the sender respects the scaled window"
    );
    // Our window field is scaled by our shift (7): 64 KiB -> 512.
    assert_eq!(d.tcp.window, 512);
    p.b_silent();
}

#[test]
fn simultaneous_open() {
    // Two endpoints that both open actively towards each other (RFC 9293 3.5 figure 7).
    let mut a = Endpoint::new(config(), [1; 16]);
    let mut b = Endpoint::new(config(), [2; 16]);
    let now = Instant::from_secs(10);
    let ta = SocketAddrV4::new(A_IP, 5000);
    let tb = SocketAddrV4::new(B_IP, 6000);
    let a_id = a.connect_from(ta, tb, now).unwrap();
    let b_id = b.connect_from(tb, ta, now).unwrap();
    let mut buf = [0u8; 2048];
    let a_syn = a.poll_transmit(now, &mut buf).unwrap().tcp;
    let b_syn = b.poll_transmit(now, &mut buf).unwrap().tcp;
    assert_eq!((a_syn.flags, b_syn.flags), (SYN, SYN));
    let (a_iss, b_iss) = (a_syn.seq, b_syn.seq);
    let mut a_states = vec![a.state(a_id).unwrap()];
    let mut b_states = vec![b.state(b_id).unwrap()];
    // The SYNs cross.
    a.handle_segment(A_IP, B_IP, &b_syn, &[], now);
    b.handle_segment(B_IP, A_IP, &a_syn, &[], now);
    a_states.push(a.state(a_id).unwrap());
    b_states.push(b.state(b_id).unwrap());
    let a_synack = a.poll_transmit(now, &mut buf).unwrap().tcp;
    let b_synack = b.poll_transmit(now, &mut buf).unwrap().tcp;
    // <SEQ=ISS><ACK=peer ISS+1><CTL=SYN,ACK>: the sequence number is not advanced.
    assert_eq!(
        (a_synack.flags, a_synack.seq, a_synack.ack),
        (SYN | ACK, a_iss, add(b_iss, 1))
    );
    assert_eq!(
        (b_synack.flags, b_synack.seq, b_synack.ack),
        (SYN | ACK, b_iss, add(a_iss, 1))
    );
    a.handle_segment(A_IP, B_IP, &b_synack, &[], now);
    b.handle_segment(B_IP, A_IP, &a_synack, &[], now);
    a_states.push(a.state(a_id).unwrap());
    b_states.push(b.state(b_id).unwrap());
    let expected = vec![State::SynSent, State::SynReceived, State::Established];
    assert_eq!(a_states, expected);
    assert_eq!(b_states, expected);
    assert!(
        a.poll_transmit(now, &mut buf).is_none(),
        "no further ACK is needed"
    );
    assert!(b.poll_transmit(now, &mut buf).is_none());
    assert_eq!(a.poll_event(), Some((a_id, Event::Connected)));
    assert_eq!(b.poll_event(), Some((b_id, Event::Connected)));
    assert_eq!(a.connection_count(), 1);
    // One connection: data flows from ISS+1.
    a.send(a_id, b"x").unwrap();
    let d = a.poll_transmit(now, &mut buf).unwrap();
    assert_eq!((d.tcp.seq, d.tcp.ack), (add(a_iss, 1), add(b_iss, 1)));
    b.handle_segment(B_IP, A_IP, &d.tcp, &buf[..1], now);
    let mut r = [0u8; 4];
    assert_eq!(b.recv(b_id, &mut r), Ok(1));
}

#[test]
fn self_connect_completes_like_simultaneous_open() {
    let mut e = Endpoint::new(config(), [3; 16]);
    let now = Instant::from_secs(10);
    let me = SocketAddrV4::new(A_IP, 7000);
    let tuple = FourTuple {
        local: me,
        remote: me,
    };
    let id = e.connect_from(me, me, now).unwrap();
    let mut states = vec![e.state_of(&tuple)];
    let mut buf = [0u8; 2048];
    let mut segs = Vec::new();
    while let Some(t) = e.poll_transmit(now, &mut buf) {
        segs.push((t.tcp.flags, t.tcp.seq, t.tcp.ack));
        let payload = buf[..t.payload_len].to_vec();
        e.handle_segment(t.remote, t.local, &t.tcp, &payload, now);
        let s = e.state_of(&tuple);
        if states.last() != Some(&s) {
            states.push(s);
        }
    }
    let iss = segs[0].1;
    assert_eq!(
        segs,
        vec![(SYN, iss, 0), (SYN | ACK, iss, add(iss, 1))],
        "our own SYN puts us in SYN-RECEIVED; our own SYN+ACK completes"
    );
    assert_eq!(
        states,
        vec![State::SynSent, State::SynReceived, State::Established]
    );
    assert_eq!(e.poll_event(), Some((id, Event::Connected)));
    assert_eq!(e.poll_event(), None);
    // Talking to oneself works.
    e.send(id, b"echo").unwrap();
    let t = e.poll_transmit(now, &mut buf).unwrap();
    let payload = buf[..t.payload_len].to_vec();
    e.handle_segment(t.remote, t.local, &t.tcp, &payload, now);
    let mut r = [0u8; 8];
    assert_eq!(e.recv(id, &mut r), Ok(4));
    assert_eq!(&r[..4], b"echo");
}

#[test]
fn syn_to_closed_port_is_refused_with_rst() {
    let mut p = Pair::new();
    p.b.unlisten(B_PORT);
    let a_id = p.connect();
    let syn = p.a_sends();
    p.deliver_b(&syn);
    let rst = p.b_sends();
    // RFC 9293 3.10.7.1: <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>
    rst.expect(RST | ACK, 0, add(syn.tcp.seq, 1));
    assert_eq!(p.b.stats().rst_sent, 1);
    p.deliver_a(&rst);
    assert_eq!(p.a_events(), vec![(a_id, Event::Refused)]);
    assert_eq!(
        p.a_states,
        vec![State::Closed, State::SynSent, State::Closed]
    );
    assert_eq!(p.a.stats().connect_refused, 1);
    assert_eq!(p.a.state(a_id), None);
}

#[test]
fn syn_is_retransmitted_with_backoff_then_times_out() {
    let mut p = Pair::with_configs(
        Config {
            max_syn_retries: 3,
            ..config()
        },
        config(),
    );
    let a_id = p.connect();
    let syn = p.a_sends();
    let t0 = p.now;
    let mut sent_at = vec![];
    for _ in 0..3 {
        let deadline = p.a.poll_timeout().unwrap();
        p.advance(deadline.saturating_duration_since(p.now));
        let again = p.a_sends();
        again.expect(SYN, syn.tcp.seq, 0);
        sent_at.push(p.now.saturating_duration_since(t0));
        p.a_silent();
    }
    // RFC 6298: initial RTO 1 s, doubled each time.
    assert_eq!(
        sent_at,
        vec![
            Duration::from_secs(1),
            Duration::from_secs(3),
            Duration::from_secs(7)
        ]
    );
    let deadline = p.a.poll_timeout().unwrap();
    p.advance(deadline.saturating_duration_since(p.now));
    assert_eq!(p.a_events(), vec![(a_id, Event::TimedOut)]);
    assert_eq!(p.a.stats().connect_timeout, 1);
    assert_eq!(
        p.a_states,
        vec![State::Closed, State::SynSent, State::Closed]
    );
}

#[test]
fn synack_is_retransmitted_on_timeout_and_on_a_repeated_syn() {
    let mut p = Pair::new();
    p.connect();
    let syn = p.a_sends();
    p.deliver_b(&syn);
    let synack = p.b_sends(); // lost
    p.b_silent();
    // The client's SYN is retransmitted first: B answers with its SYN+ACK again.
    p.deliver_b(&syn);
    let again = p.b_sends();
    again.expect(SYN | ACK, synack.tcp.seq, add(syn.tcp.seq, 1));
    // And B's own timer retransmits it too.
    p.advance(Duration::from_secs(1));
    let third = p.b_sends();
    third.expect(SYN | ACK, synack.tcp.seq, add(syn.tcp.seq, 1));
    p.deliver_a(&third);
    let ack = p.a_sends();
    p.deliver_b(&ack);
    assert_eq!(
        p.b_states,
        vec![State::Listen, State::SynReceived, State::Established]
    );
    assert!(p.b.stats().retransmits >= 2);
}

#[test]
fn syn_cookies_when_the_syn_queue_is_full() {
    let mut p = Pair::with_configs(
        config(),
        Config {
            syn_backlog: 0,
            ..config()
        },
    );
    let a_id = p.connect();
    let syn = p.a_sends();
    p.deliver_b(&syn);
    let synack = p.b_sends();
    synack.expect(SYN | ACK, synack.tcp.seq, add(syn.tcp.seq, 1));
    assert_eq!(p.b.stats().syn_cookies_sent, 1);
    assert_eq!(p.b.connection_count(), 0, "no state kept for a cookie");
    // Window scale and timestamps survive in the cookie.
    assert_eq!(synack.tcp.options.window_scale, Some(7));
    assert!(synack.tcp.options.timestamps.is_some());
    // A forged ACK (wrong cookie) gets a RST and no connection.
    let mut forged = syn.clone();
    forged.tcp.flags = ACK;
    forged.tcp.seq = add(syn.tcp.seq, 1);
    forged.tcp.ack = add(synack.tcp.seq, 2);
    forged.tcp.options.timestamps = synack.tcp.options.timestamps.map(|t| Timestamps {
        tsval: t.tsecr,
        tsecr: t.tsval,
    });
    p.deliver_b(&forged);
    p.b_sends().expect(RST, add(synack.tcp.seq, 2), 0);
    assert_eq!(p.b.stats().syn_cookies_rejected, 1);
    // The real ACK completes the handshake statelessly: ESTABLISHED at once.
    p.deliver_a(&synack);
    let ack = p.a_sends();
    p.deliver_b(&ack);
    assert_eq!(p.b.stats().syn_cookies_accepted, 1);
    let ev = p.b_events();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].1, Event::Accepted { port: B_PORT });
    let b_id = ev[0].0;
    assert_eq!(p.b.state(b_id), Some(State::Established));
    assert_eq!(p.b_states, vec![State::Listen, State::Established]);
    // Data both ways with the decoded window scale: B's window field is scaled.
    p.a.send(a_id, &[5u8; 3000]).unwrap();
    p.drive();
    assert_eq!(p.recv_all_b(b_id).len(), 3000);
    p.b.send(b_id, b"pong").unwrap();
    let d = p.b_sends();
    assert_eq!(d.tcp.window, 512);
    p.deliver_a(&d);
    assert_eq!(p.recv_all_a(a_id), b"pong");
}

#[test]
fn a_full_accept_queue_holds_back_handshakes() {
    let mut p = Pair::with_configs(
        config(),
        Config {
            accept_backlog: 1,
            ..config()
        },
    );
    p.connect();
    p.drive();
    // Not polled: the accept queue holds one.
    let other = FourTuple {
        local: SocketAddrV4::new(A_IP, A_PORT + 1),
        remote: p.tuple.remote,
    };
    let second = p.a.connect_from(other.local, other.remote, p.now).unwrap();
    let syn = p.a_sends();
    p.deliver_b(&syn);
    p.b_silent();
    assert_eq!(p.b.stats().accept_queue_overflow, 1);
    // The application takes the first: the retransmitted SYN gets through.
    assert!(matches!(
        p.b.poll_event(),
        Some((_, Event::Accepted { .. }))
    ));
    p.advance(Duration::from_secs(1));
    p.drive();
    assert_eq!(p.a.state(second), Some(State::Established));
    assert!(matches!(
        p.b.poll_event(),
        Some((_, Event::Accepted { .. }))
    ));
}

#[test]
fn close_in_syn_sent_deletes_the_connection() {
    let mut p = Pair::new();
    let a_id = p.connect();
    let _syn = p.a_sends();
    p.a.close(a_id).unwrap();
    p.a_silent();
    assert_eq!(p.a_events(), vec![(a_id, Event::Closed)]);
    assert_eq!(
        p.a_states,
        vec![State::Closed, State::SynSent, State::Closed]
    );
    assert_eq!(p.a.connection_count(), 0);
}

#[test]
fn shutdown_before_the_handshake_sends_fin_after_it() {
    let mut p = Pair::new();
    let a_id = p.connect();
    p.a.send(a_id, b"early").unwrap();
    p.a.shutdown(a_id).unwrap();
    let syn = p.a_sends();
    p.a_silent(); // nothing but the SYN before the handshake
    p.deliver_b(&syn);
    let synack = p.b_sends();
    p.deliver_a(&synack);
    let d = p.a_sends();
    d.expect(ACK | PSH | FIN, add(syn.tcp.seq, 1), add(synack.tcp.seq, 1));
    assert_eq!(d.payload, b"early");
    assert_eq!(
        p.a_states,
        vec![State::Closed, State::SynSent, State::FinWait1]
    );
}

#[test]
fn rst_in_syn_received_returns_a_passive_open_to_listen_silently() {
    let mut p = Pair::new();
    p.connect();
    let syn = p.a_sends();
    p.deliver_b(&syn);
    let synack = p.b_sends();
    let rst = Seg {
        tcp: TcpRepr {
            seq: add(syn.tcp.seq, 1),
            flags: RST,
            options: TcpOptions::default(),
            ..syn.tcp
        },
        ..syn.clone()
    };
    p.deliver_b(&rst);
    assert!(p.b_events().is_empty(), "the application never saw it");
    assert_eq!(
        p.b_states,
        vec![State::Listen, State::SynReceived, State::Closed]
    );
    assert_eq!(p.b.connection_count(), 0);
    // The listener still works.
    p.deliver_b(&syn);
    // (Same tuple, same clock: the same ISN.)
    p.b_sends()
        .expect(SYN | ACK, synack.tcp.seq, add(syn.tcp.seq, 1));
}
