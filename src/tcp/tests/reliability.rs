//! Retransmission, fast retransmit, reassembly, flow control (zero-window
//! probes), delayed ACKs, Writable events.

use super::pair::*;
use crate::tcp::{Config, Event, State};
use crate::wire::{TcpOptions, TcpRepr};
use std::time::Duration;

#[test]
fn lost_data_is_retransmitted_after_rto_with_backoff() {
    let mut p = Pair::new();
    let (a_id, b_id, a_iss, b_iss) = p.establish();
    p.a.send(a_id, b"payload").unwrap();
    let d = p.a_sends(); // lost
    d.expect(ACK | PSH, add(a_iss, 1), add(b_iss, 1));
    let t0 = p.now;
    let mut gaps = vec![];
    let mut last = t0;
    for _ in 0..3 {
        let deadline = p.a.poll_timeout().unwrap();
        p.advance(deadline.saturating_duration_since(p.now));
        let again = p.a_sends(); // lost again
        again.expect(ACK | PSH, add(a_iss, 1), add(b_iss, 1));
        assert_eq!(again.payload, b"payload");
        gaps.push(p.now.saturating_duration_since(last));
        last = p.now;
    }
    // Each timeout doubles the previous one (RFC 6298 5.5).
    assert_eq!(gaps[1], gaps[0] * 2);
    assert_eq!(gaps[2], gaps[1] * 2);
    let deadline = p.a.poll_timeout().unwrap();
    p.advance(deadline.saturating_duration_since(p.now));
    let again = p.a_sends();
    p.deliver_b(&again);
    assert_eq!(p.recv_all_b(b_id), b"payload");
    assert!(p.a.stats().retransmits >= 4);
}

#[test]
fn retransmissions_exhausted_time_out() {
    let mut p = Pair::with_configs(
        Config {
            max_retries: 3,
            ..config()
        },
        config(),
    );
    let (a_id, ..) = p.establish();
    p.a.send(a_id, b"into the void").unwrap();
    let _ = p.a_sends();
    for _ in 0..3 {
        let deadline = p.a.poll_timeout().unwrap();
        p.advance(deadline.saturating_duration_since(p.now));
        let _ = p.a_sends();
    }
    let deadline = p.a.poll_timeout().unwrap();
    p.advance(deadline.saturating_duration_since(p.now));
    assert_eq!(p.a_events(), vec![(a_id, Event::TimedOut)]);
    assert_eq!(p.a.state(a_id), None);
    assert_eq!(p.a_states.last(), Some(&State::Closed));
}

#[test]
fn fin_is_retransmitted() {
    let mut p = Pair::new();
    let (a_id, _, a_iss, b_iss) = p.establish();
    p.a.close(a_id).unwrap();
    let fin = p.a_sends(); // lost
    fin.expect(FIN | ACK, add(a_iss, 1), add(b_iss, 1));
    let deadline = p.a.poll_timeout().unwrap();
    p.advance(deadline.saturating_duration_since(p.now));
    p.a_sends().expect(FIN | ACK, add(a_iss, 1), add(b_iss, 1));
}

#[test]
fn three_duplicate_acks_trigger_fast_retransmit() {
    let mut p = Pair::new();
    let (a_id, b_id, a_iss, _) = p.establish();
    // Let B's first segment settle A's view of its (scaled) window, so the
    // ACKs below are duplicates by RFC 5681's definition (same window).
    p.b.send(b_id, b"hi").unwrap();
    p.drive();
    let data: Vec<u8> = (0..5 * 1448).map(|i| i as u8).collect();
    p.a.send(a_id, &data).unwrap();
    let segs: Vec<Seg> = std::iter::from_fn(|| p.a_out()).collect();
    assert_eq!(segs.len(), 5);
    assert_eq!(segs[1].tcp.seq, add(a_iss, 1 + 1448));
    // The first is lost; the other four each draw a duplicate ACK.
    let mut dupacks = vec![];
    for s in &segs[1..] {
        p.deliver_b(s);
        dupacks.push(p.b_sends());
    }
    for d in &dupacks {
        assert_eq!(d.tcp.ack, add(a_iss, 1));
    }
    for d in &dupacks[..2] {
        p.deliver_a(d);
        p.a_silent();
    }
    p.deliver_a(&dupacks[2]);
    // Before any timer: the first segment again.
    let rexmit = p.a_sends();
    rexmit.expect(ACK, add(a_iss, 1), rexmit.tcp.ack);
    assert_eq!(rexmit.payload, &data[..1448]);
    assert_eq!(p.a.stats().fast_retransmits, 1);
    p.deliver_b(&rexmit);
    assert_eq!(
        p.b.recv_available(b_id),
        data.len(),
        "the held segments are reassembled"
    );
    assert_eq!(p.recv_all_b(b_id), data);
}

#[test]
fn out_of_order_segments_are_reassembled() {
    let mut p = Pair::new();
    let (a_id, b_id, ..) = p.establish();
    let data: Vec<u8> = (0..6000u32).map(|i| (i * 31 % 251) as u8).collect();
    p.a.send(a_id, &data).unwrap();
    let mut segs: Vec<Seg> = std::iter::from_fn(|| p.a_out()).collect();
    segs.reverse();
    for s in &segs {
        p.deliver_b(s);
        p.deliver_b(s); // and duplicated
    }
    assert_eq!(p.recv_all_b(b_id), data);
    p.drive();
    assert_eq!(p.a.send_queued(a_id), 0, "all acknowledged");
}

#[test]
fn zero_window_is_probed_and_reopened() {
    let small = Config {
        recv_buffer: 4096,
        ..config()
    };
    let mut p = Pair::with_configs(config(), small);
    let (a_id, b_id, ..) = p.establish();
    let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    assert_eq!(p.a.send(a_id, &data).unwrap(), 10_000);
    p.drive();
    p.advance(Duration::from_millis(40)); // B's delayed ACK of the last segment
    p.drive();
    // B's buffer is full (up to the 128-byte granularity of its window scale)
    // and its application does not read: zero window.
    let held = p.b.recv_available(b_id);
    assert!(held > 4096 - 128 && held <= 4096, "{held}");
    assert_eq!(p.a.send_queued(a_id), 10_000 - held);
    // A probes (with backoff) instead of giving up or sending into the window.
    let mut probes = 0;
    for _ in 0..3 {
        let deadline = p.a.poll_timeout().unwrap();
        p.advance(deadline.saturating_duration_since(p.now));
        if let Some(probe) = p.a_out() {
            assert!(probe.payload.is_empty());
            probes += 1;
            p.deliver_b(&probe);
            let reply = p.b_sends();
            assert_eq!(reply.tcp.window, 0);
            p.deliver_a(&reply);
        }
    }
    assert_eq!(probes, 3);
    // The application reads: B announces the window, A resumes.
    let mut got = p.recv_all_b(b_id);
    p.drive();
    got.extend(p.recv_all_b(b_id));
    p.drive();
    got.extend(p.recv_all_b(b_id));
    p.drive();
    got.extend(p.recv_all_b(b_id));
    assert_eq!(got, data);
}

#[test]
fn delayed_ack_waits_then_acks_every_second_full_segment() {
    let mut p = Pair::new();
    let (a_id, _, a_iss, _) = p.establish();
    p.a.send(a_id, b"small").unwrap();
    let d = p.a_sends();
    p.deliver_b(&d);
    p.b_silent();
    p.advance(Duration::from_millis(39));
    p.b_silent();
    p.advance(Duration::from_millis(1));
    p.b_sends().expect(ACK, d.tcp.ack, add(a_iss, 6));
    // Two full-sized segments: ACKed at once.
    p.a.send(a_id, &[1u8; 2 * 1448]).unwrap();
    let s1 = p.a_sends();
    let s2 = p.a_sends();
    assert_eq!(s1.payload.len(), 1448);
    p.deliver_b(&s1);
    p.b_silent();
    p.deliver_b(&s2);
    p.b_sends().expect(ACK, d.tcp.ack, add(a_iss, 6 + 2 * 1448));
}

#[test]
fn writable_follows_a_short_send() {
    let small = Config {
        send_buffer: 3000,
        send_buffer_max: 3000,
        ..config()
    };
    let mut p = Pair::with_configs(small, config());
    let (a_id, ..) = p.establish();
    assert_eq!(p.a.send(a_id, &[0u8; 5000]).unwrap(), 3000);
    assert_eq!(p.a.send_capacity(a_id), 0);
    p.drive();
    assert_eq!(p.a_events(), vec![(a_id, Event::Writable)]);
    assert_eq!(p.a.send_capacity(a_id), 3000);
}

#[test]
fn a_window_closing_under_data_in_flight_is_probed_not_timed_out() {
    let mut p = Pair::with_configs(
        Config {
            max_retries: 3,
            ..config()
        },
        config(),
    );
    let (a_id, b_id, _, b_iss) = p.establish();
    p.a.send(a_id, &[9u8; 3000]).unwrap();
    let s1 = p.a_sends();
    let _lost = (p.a_sends(), p.a_sends());
    p.deliver_b(&s1);
    p.advance(Duration::from_millis(40));
    let _b_ack_lost = p.b_sends();
    // The peer acknowledges s1 and shrinks its window to zero while s2 and s3
    // are in flight (B's own delayed ACK was lost).
    let shrink = Seg {
        src: B_IP,
        dst: A_IP,
        tcp: TcpRepr {
            src_port: B_PORT,
            dst_port: A_PORT,
            seq: add(b_iss, 1),
            ack: add(s1.tcp.seq, 1448),
            flags: ACK,
            window: 0,
            options: TcpOptions::default(),
        },
        payload: vec![],
    };
    p.deliver_a(&shrink);
    // More timeouts than max_retries pass: A probes rather than retransmitting
    // into the closed window and giving up; B's answers reopen it.
    for _ in 0..8 {
        let Some(deadline) = p.a.poll_timeout() else {
            break;
        };
        p.advance(deadline.saturating_duration_since(p.now));
        p.drive();
    }
    assert!(p.a_events().iter().all(|(_, e)| *e != Event::TimedOut));
    assert_eq!(p.a.state(a_id), Some(State::Established));
    assert_eq!(p.recv_all_b(b_id).len(), 3000);
}
