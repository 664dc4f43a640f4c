//! Closing: both close orders, FIN+ACK in FIN-WAIT-1, simultaneous close,
//! half-close, and TIME-WAIT's duties (the lost final ACK, old duplicates).

use super::pair::*;
use crate::tcp::{Event, State};
use std::time::Duration;

const TWO_MSL: Duration = Duration::from_secs(60);

#[test]
fn client_closes_first() {
    let mut p = Pair::new();
    let (a_id, b_id, a_iss, b_iss) = p.establish();
    let (a1, b1) = (add(a_iss, 1), add(b_iss, 1));
    p.a.close(a_id).unwrap();
    let fin = p.a_sends();
    fin.expect(FIN | ACK, a1, b1);
    p.deliver_b(&fin);
    let ack = p.b_sends();
    ack.expect(ACK, b1, add(a1, 1));
    p.deliver_a(&ack);
    assert_eq!(p.b_events(), vec![(b_id, Event::PeerClosed)]);
    p.b.close(b_id).unwrap();
    let fin2 = p.b_sends();
    fin2.expect(FIN | ACK, b1, add(a1, 1));
    p.deliver_a(&fin2);
    let last = p.a_sends();
    last.expect(ACK, add(a1, 1), add(b1, 1));
    p.deliver_b(&last);
    p.a_silent();
    p.b_silent();
    assert_eq!(p.a_events(), vec![(a_id, Event::Closed)]);
    assert_eq!(p.b_events(), vec![(b_id, Event::Closed)]);
    assert_eq!(p.a.time_wait_count(), 1);
    assert_eq!(p.b.connection_count(), 0);
    p.advance(TWO_MSL - Duration::from_millis(1));
    assert_eq!(p.a.time_wait_count(), 1);
    p.advance(Duration::from_millis(1));
    assert_eq!(p.a.time_wait_count(), 0);
    assert_eq!(
        p.a_states,
        vec![
            State::Closed,
            State::SynSent,
            State::Established,
            State::FinWait1,
            State::FinWait2,
            State::TimeWait,
            State::Closed
        ]
    );
    assert_eq!(
        p.b_states,
        vec![
            State::Listen,
            State::SynReceived,
            State::Established,
            State::CloseWait,
            State::LastAck,
            State::Closed
        ]
    );
}

#[test]
fn server_closes_first() {
    let mut p = Pair::new();
    let (a_id, b_id, a_iss, b_iss) = p.establish();
    let (a1, b1) = (add(a_iss, 1), add(b_iss, 1));
    p.b.send(b_id, b"bye").unwrap();
    p.b.close(b_id).unwrap();
    let data_fin = p.b_sends();
    data_fin.expect(ACK | PSH | FIN, b1, a1);
    assert_eq!(data_fin.payload, b"bye");
    p.deliver_a(&data_fin);
    let ack = p.a_sends();
    ack.expect(ACK, a1, add(b1, 4));
    p.deliver_b(&ack);
    assert_eq!(
        p.a_events(),
        vec![(a_id, Event::Readable), (a_id, Event::PeerClosed)]
    );
    assert_eq!(p.recv_all_a(a_id), b"bye");
    p.a.close(a_id).unwrap();
    let fin = p.a_sends();
    fin.expect(FIN | ACK, a1, add(b1, 4));
    p.deliver_b(&fin);
    let last = p.b_sends();
    last.expect(ACK, add(b1, 4), add(a1, 1));
    p.deliver_a(&last);
    assert_eq!(p.a_events(), vec![(a_id, Event::Closed)]);
    assert_eq!(p.b_events(), vec![(b_id, Event::Closed)]);
    assert_eq!(p.b.time_wait_count(), 1, "the server holds TIME-WAIT");
    assert_eq!(p.a.connection_count() + p.a.time_wait_count(), 0);
    p.advance(TWO_MSL);
    assert_eq!(p.b.time_wait_count(), 0);
    assert_eq!(
        p.a_states,
        vec![
            State::Closed,
            State::SynSent,
            State::Established,
            State::CloseWait,
            State::LastAck,
            State::Closed
        ]
    );
    assert_eq!(
        p.b_states,
        vec![
            State::Listen,
            State::SynReceived,
            State::Established,
            State::FinWait1,
            State::FinWait2,
            State::TimeWait,
            State::Closed
        ]
    );
}

#[test]
fn fin_ack_in_fin_wait_1_goes_straight_to_time_wait() {
    let mut p = Pair::new();
    let (a_id, b_id, a_iss, b_iss) = p.establish();
    let (a1, b1) = (add(a_iss, 1), add(b_iss, 1));
    p.a.close(a_id).unwrap();
    let fin = p.a_sends();
    fin.expect(FIN | ACK, a1, b1);
    p.deliver_b(&fin);
    // B's application closes at once: its FIN carries the ACK of A's FIN.
    p.b.close(b_id).unwrap();
    let fin_ack = p.b_sends();
    fin_ack.expect(FIN | ACK, b1, add(a1, 1));
    p.b_silent();
    p.deliver_a(&fin_ack);
    let last = p.a_sends();
    last.expect(ACK, add(a1, 1), add(b1, 1));
    p.deliver_b(&last);
    assert_eq!(
        p.a_states,
        vec![
            State::Closed,
            State::SynSent,
            State::Established,
            State::FinWait1,
            State::TimeWait
        ]
    );
    assert_eq!(
        p.b_states,
        vec![
            State::Listen,
            State::SynReceived,
            State::Established,
            State::CloseWait,
            State::LastAck,
            State::Closed
        ]
    );
}

#[test]
fn simultaneous_close() {
    let mut p = Pair::new();
    let (a_id, b_id, a_iss, b_iss) = p.establish();
    let (a1, b1) = (add(a_iss, 1), add(b_iss, 1));
    p.a.close(a_id).unwrap();
    p.b.close(b_id).unwrap();
    let a_fin = p.a_sends();
    let b_fin = p.b_sends();
    a_fin.expect(FIN | ACK, a1, b1);
    b_fin.expect(FIN | ACK, b1, a1);
    // The FINs cross: each side sees a FIN that does not ack its own.
    p.deliver_b(&a_fin);
    p.deliver_a(&b_fin);
    let a_ack = p.a_sends();
    let b_ack = p.b_sends();
    a_ack.expect(ACK, add(a1, 1), add(b1, 1));
    b_ack.expect(ACK, add(b1, 1), add(a1, 1));
    p.deliver_b(&a_ack);
    p.deliver_a(&b_ack);
    let expected_tail = [
        State::Established,
        State::FinWait1,
        State::Closing,
        State::TimeWait,
    ];
    assert_eq!(&p.a_states[2..], &expected_tail);
    assert_eq!(&p.b_states[2..], &expected_tail);
    assert_eq!(p.a.time_wait_count(), 1);
    assert_eq!(p.b.time_wait_count(), 1);
    p.advance(TWO_MSL);
    assert_eq!(p.a.time_wait_count() + p.b.time_wait_count(), 0);
}

#[test]
fn half_close_lets_the_peer_keep_sending() {
    let mut p = Pair::new();
    let (a_id, b_id, a_iss, b_iss) = p.establish();
    let (a1, b1) = (add(a_iss, 1), add(b_iss, 1));
    p.a.shutdown(a_id).unwrap();
    assert!(
        p.a.send(a_id, b"late").is_err(),
        "no sending after shutdown"
    );
    let fin = p.a_sends();
    fin.expect(FIN | ACK, a1, b1);
    p.deliver_b(&fin);
    let ack = p.b_sends();
    p.deliver_a(&ack);
    // B, in CLOSE-WAIT, still sends; A, in FIN-WAIT-2, still receives.
    p.b.send(b_id, b"more data").unwrap();
    let d = p.b_sends();
    d.expect(ACK | PSH, b1, add(a1, 1));
    p.deliver_a(&d);
    assert_eq!(p.a.state(a_id), Some(State::FinWait2));
    assert_eq!(p.recv_all_a(a_id), b"more data");
    p.b.close(b_id).unwrap();
    p.drive();
    assert_eq!(
        p.a_events(),
        vec![
            (a_id, Event::Readable),
            (a_id, Event::PeerClosed),
            (a_id, Event::Closed)
        ]
    );
    assert_eq!(
        p.a_states,
        vec![
            State::Closed,
            State::SynSent,
            State::Established,
            State::FinWait1,
            State::FinWait2,
            State::TimeWait
        ]
    );
    assert_eq!(p.b_states.last(), Some(&State::Closed));
}

#[test]
fn time_wait_held_in_full_until_the_application_has_read() {
    let mut p = Pair::new();
    let (a_id, b_id, ..) = p.establish();
    p.a.shutdown(a_id).unwrap();
    p.drive();
    p.b.send(b_id, b"unread").unwrap();
    p.b.close(b_id).unwrap();
    p.drive();
    // A is in TIME-WAIT but its application has not read: the id stays valid.
    assert_eq!(p.a.state(a_id), Some(State::TimeWait));
    assert_eq!(p.a.time_wait_count(), 0);
    let mut buf = [0u8; 16];
    assert_eq!(p.a.recv(a_id, &mut buf), Ok(6));
    // Reading the last byte releases it into a compact entry.
    assert_eq!(p.a.state(a_id), None);
    assert_eq!(p.a.time_wait_count(), 1);
    let ev = p.a_events();
    assert_eq!(ev.last(), Some(&(a_id, Event::Closed)));
}

#[test]
fn lost_final_ack_is_resent_from_time_wait() {
    let mut p = Pair::new();
    let (a_id, b_id, a_iss, b_iss) = p.establish();
    let (a1, b1) = (add(a_iss, 1), add(b_iss, 1));
    p.a.close(a_id).unwrap();
    let fin = p.a_sends();
    p.deliver_b(&fin);
    let ack = p.b_sends();
    p.deliver_a(&ack);
    p.b.close(b_id).unwrap();
    let b_fin = p.b_sends();
    p.advance(Duration::from_secs(5));
    p.deliver_a(&b_fin);
    let lost = p.a_sends(); // the final ACK, lost
    lost.expect(ACK, add(a1, 1), add(b1, 1));
    assert_eq!(p.a.time_wait_count(), 1);
    // B retransmits its FIN after its RTO.
    let deadline = p.b.poll_timeout().unwrap();
    p.advance(deadline.saturating_duration_since(p.now));
    let again = p.b_sends();
    again.expect(FIN | ACK, b1, add(a1, 1));
    p.deliver_a(&again);
    let reack = p.a_sends();
    reack.expect(ACK, add(a1, 1), add(b1, 1));
    assert_eq!(p.a.stats().time_wait_fin_reacked, 1);
    p.deliver_b(&reack);
    assert_eq!(p.b_states.last(), Some(&State::Closed));
    assert_eq!(
        p.b_events(),
        vec![(b_id, Event::PeerClosed), (b_id, Event::Closed)]
    );
    // The 2MSL timer restarted at the retransmitted FIN: 2MSL after the first
    // entry the entry is still there, and it goes 2MSL after the re-ACK.
    let reacked_at = p.now;
    p.advance(TWO_MSL - Duration::from_secs(2));
    assert_eq!(p.a.time_wait_count(), 1);
    p.advance((reacked_at + TWO_MSL).saturating_duration_since(p.now));
    assert_eq!(p.a.time_wait_count(), 0);
    assert_eq!(
        &p.a_states[3..],
        &[
            State::FinWait1,
            State::FinWait2,
            State::TimeWait,
            State::Closed
        ]
    );
}

#[test]
fn old_duplicates_during_time_wait_are_dropped() {
    let mut p = Pair::new();
    let (a_id, b_id, a_iss, b_iss) = p.establish();
    let (a1, b1) = (add(a_iss, 1), add(b_iss, 1));
    p.b.send(b_id, b"data").unwrap();
    let data = p.b_sends();
    p.deliver_a(&data);
    p.drive();
    p.recv_all_a(a_id);
    p.a.close(a_id).unwrap();
    p.drive();
    p.b.close(b_id).unwrap();
    p.drive();
    assert_eq!(p.a.time_wait_count(), 1);
    p.a_events();
    let dropped_before = p.a.stats().drop_time_wait;
    // An old duplicate of B's data arrives (with its old timestamp: PAWS drops it).
    p.deliver_a(&data);
    let reply = p.a_sends();
    reply.expect(ACK, add(a1, 1), add(b1, 5));
    assert_eq!(p.a.time_wait_count(), 1);
    assert!(p.a_events().is_empty(), "nothing is delivered");
    // The same without timestamps (or a newer one): still only the ACK.
    let mut no_ts = data.clone();
    no_ts.tcp.options.timestamps = None;
    p.advance(Duration::from_secs(2)); // a fresh challenge-ACK second
    p.deliver_a(&no_ts);
    p.a_sends().expect(ACK, add(a1, 1), add(b1, 5));
    // An old bare ACK is dropped silently (no ACK war).
    let mut bare = data.clone();
    bare.payload.clear();
    bare.tcp.options.timestamps = None;
    p.deliver_a(&bare);
    p.a_silent();
    assert_eq!(p.a.stats().drop_time_wait, dropped_before + 3);
    assert_eq!(p.a.state_of(&p.tuple), State::TimeWait);
}

#[test]
fn an_orphaned_fin_wait_2_gives_up_after_its_timeout() {
    let mut p = Pair::new();
    let (a_id, b_id, ..) = p.establish();
    p.a.close(a_id).unwrap();
    p.drive();
    // B never closes: A (whose application is gone) waits fin_wait2_timeout.
    assert_eq!(p.a_states.last(), Some(&State::FinWait2));
    p.advance(Duration::from_secs(59));
    assert_eq!(p.a.state_of(&p.tuple), State::FinWait2);
    p.advance(Duration::from_secs(1));
    assert_eq!(p.a.state_of(&p.tuple), State::Closed);
    assert_eq!(p.a_events(), vec![(a_id, Event::Closed)]);
    assert_eq!(p.b.state(b_id), Some(State::CloseWait));
}

#[test]
fn abort_sends_rst_and_the_peer_sees_reset() {
    let mut p = Pair::new();
    let (a_id, b_id, a_iss, _) = p.establish();
    p.a.abort(a_id).unwrap();
    assert_eq!(p.a.state(a_id), None);
    assert!(p.a_events().is_empty(), "no event for the aborting side");
    let rst = p.a_sends();
    rst.expect(RST, add(a_iss, 1), 0);
    p.deliver_b(&rst);
    assert_eq!(p.b_events(), vec![(b_id, Event::Reset)]);
    assert_eq!(p.b_states.last(), Some(&State::Closed));
    assert_eq!(p.a.send(a_id, b"x"), Err(crate::tcp::ConnError::InvalidId));
}

#[test]
fn readable_is_edge_triggered_until_recv() {
    let mut p = Pair::new();
    let (a_id, b_id, ..) = p.establish();
    p.a.send(a_id, b"one").unwrap();
    p.drive();
    p.a.send(a_id, b"two").unwrap();
    p.drive();
    // One event for both: the application has not called recv in between.
    assert_eq!(p.b_events(), vec![(b_id, Event::Readable)]);
    let mut buf = [0u8; 2];
    assert_eq!(p.b.recv(b_id, &mut buf), Ok(2));
    p.a.send(a_id, b"three").unwrap();
    p.drive();
    // recv was called: new data gives a new event.
    assert_eq!(p.b_events(), vec![(b_id, Event::Readable)]);
    assert_eq!(p.recv_all_b(b_id), b"etwothree");
}
