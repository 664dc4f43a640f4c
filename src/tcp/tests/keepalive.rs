//! RFC 1122 4.2.3.6 keepalive traces: off by default, the probe's form
//! (SEG.SEQ = SND.NXT - 1, no data), any acceptable ACK restarts the idle
//! period, `count` unanswered probes reset the connection and report
//! `TimedOut`; nothing is probed while data is in flight. Built with the
//! state fixtures, so the probe's `SND.NXT - 1` is also checked across the
//! 2^32 wrap.

use super::fixture::*;
use super::pair::{A_IP, A_PORT, ACK, Pair, config};
use crate::tcp::Endpoint;
use crate::tcp::{Config, Event, Keepalive, State};
use crate::wire::TcpFlags;
use std::time::Duration;

const KA: Keepalive = Keepalive {
    idle: Duration::from_secs(10),
    interval: Duration::from_secs(1),
    count: 3,
};

fn fix_with_keepalive(iss: u32) -> Fix {
    let mut f = Fix::new(Spec { iss, ..SPEC });
    f.ep.set_keepalive(f.id, Some(KA)).unwrap();
    f
}

fn events(f: &mut Fix) -> Vec<Event> {
    std::iter::from_fn(|| f.ep.poll_event())
        .map(|(_, e)| e)
        .collect()
}

#[test]
fn off_by_default_nothing_is_sent_in_hours() {
    let mut f = Fix::new(SPEC);
    assert_eq!(Config::default().keepalive, None);
    assert_eq!(Config::default().keepalive_active, None);
    for _ in 0..(3 * 3600 / 60) {
        f.advance(Duration::from_secs(60));
        f.recv_nothing();
    }
    assert_eq!(f.state(), Some(State::Established));
    assert_eq!(f.ep.stats().keepalive_probes, 0);
    // Nothing scheduled either: the endpoint has no timer for it.
    assert_eq!(f.ep.poll_timeout(), None);
}

#[test]
fn probe_is_snd_nxt_minus_one_and_an_ack_restarts_idle() {
    for iss in [1000, u32::MAX - 1, u32::MAX] {
        let mut f = fix_with_keepalive(iss);
        f.advance(Duration::from_millis(9_999));
        f.recv_nothing();
        f.advance(Duration::from_millis(1));
        let probe = f.recv();
        // RFC 1122: "SEG.SEQ = SND.NXT-1", no data; here across the wrap too.
        probe.expect(ACK, f.our_seq(0).wrapping_sub(1), f.peer_seq(0));
        assert!(probe.payload.is_empty());
        f.recv_nothing();
        assert_eq!(f.ep.stats().keepalive_probes, 1);
        // The peer answers (its ACK for the probe): the idle period restarts.
        f.advance(Duration::from_millis(500));
        f.send_ack(0, 0);
        f.recv_nothing();
        f.advance(Duration::from_millis(9_999));
        f.recv_nothing();
        f.advance(Duration::from_millis(1));
        f.recv()
            .expect(ACK, f.our_seq(0).wrapping_sub(1), f.peer_seq(0));
        assert_eq!(f.ep.stats().keepalive_probes, 2);
        assert_eq!(f.state(), Some(State::Established));
    }
}

#[test]
fn unanswered_probes_reset_the_connection_at_idle_plus_interval_times_count() {
    let mut f = fix_with_keepalive(1000);
    let mut probes_at = Vec::new();
    let mut t = 0u64;
    while f.state().is_some() && t < 20_000 {
        f.advance(Duration::from_millis(100));
        t += 100;
        for s in f.recv_all() {
            if s.tcp.flags.contains(TcpFlags::RST) {
                // The reset at the last known sequence number.
                s.expect(TcpFlags::RST, f.our_seq(0), 0);
                probes_at.push((t, "rst"));
            } else {
                s.expect(ACK, f.our_seq(0) - 1, f.peer_seq(0));
                probes_at.push((t, "probe"));
            }
        }
    }
    assert_eq!(
        probes_at,
        vec![
            (10_000, "probe"),
            (11_000, "probe"),
            (12_000, "probe"),
            (13_000, "rst")
        ]
    );
    assert_eq!(events(&mut f), vec![Event::TimedOut]);
    assert_eq!(f.state(), None);
    let s = f.ep.stats();
    assert_eq!((s.keepalive_probes, s.keepalive_timeouts), (3, 1));
    assert_eq!(s.timeouts, 0, "a keepalive timeout is counted apart");
}

#[test]
fn a_late_answer_before_the_last_probe_expires_keeps_the_connection() {
    let mut f = fix_with_keepalive(1000);
    f.advance(Duration::from_secs(10));
    f.recv();
    f.advance(Duration::from_secs(1));
    f.recv();
    f.advance(Duration::from_secs(1));
    f.recv();
    f.advance(Duration::from_millis(999));
    f.send_ack(0, 0); // just in time
    f.advance(Duration::from_millis(1));
    f.recv_nothing();
    assert_eq!(f.state(), Some(State::Established));
    f.advance(Duration::from_secs(10));
    f.recv().expect(ACK, f.our_seq(0) - 1, f.peer_seq(0));
}

#[test]
fn no_probe_while_data_is_in_flight() {
    let mut f = fix_with_keepalive(1000);
    f.advance(Duration::from_secs(9));
    f.app_send(b"hello");
    f.recv()
        .expect(ACK | super::pair::PSH, f.our_seq(0), f.peer_seq(0));
    // The peer never answers: retransmissions follow, never a keepalive.
    for _ in 0..40 {
        f.advance(Duration::from_millis(500));
        for s in f.recv_all() {
            assert_eq!(s.payload, b"hello", "only retransmissions: {s:?}");
        }
    }
    assert_eq!(f.ep.stats().keepalive_probes, 0);
    assert!(f.ep.stats().rto_expirations > 0);
}

#[test]
fn turned_off_again_stops_probing() {
    let mut f = fix_with_keepalive(1000);
    f.advance(Duration::from_secs(10));
    f.recv();
    f.ep.set_keepalive(f.id, None).unwrap();
    for _ in 0..60 {
        f.advance(Duration::from_secs(1));
        f.recv_nothing();
    }
    assert_eq!(f.state(), Some(State::Established));
}

/// Two engines: a live peer answers every probe (its own rules for an
/// old sequence number), so an idle connection with keepalive lives on; once
/// the peer vanishes, the prober resets within idle + interval x count.
#[test]
fn engine_peer_answers_probes_then_vanishes() {
    let ca = Config {
        keepalive_active: Some(KA),
        ..config()
    };
    let mut p = Pair::with_configs(ca, config());
    let (a, _b, _, _) = p.establish();
    for _ in 0..60 {
        p.advance(Duration::from_secs(1));
        p.drive();
    }
    assert_eq!(p.a.state(a), Some(State::Established));
    let probes = p.a.stats().keepalive_probes;
    assert!(
        (5..=6).contains(&probes),
        "one probe per idle period: {probes}"
    );
    assert_eq!(p.b.stats().keepalive_probes, 0, "B has keepalive off");
    // B vanishes: A's segments go nowhere.
    let gone_at = p.now;
    let mut sent = 0;
    while p.a.state(a).is_some() && p.now < gone_at + Duration::from_secs(60) {
        p.advance(Duration::from_millis(100));
        while p.a_out().is_some() {
            sent += 1;
        }
    }
    let took = p.now.saturating_duration_since(gone_at);
    assert_eq!(p.a_events(), vec![(a, Event::TimedOut)]);
    assert!(took <= KA.idle + KA.interval * 3, "{took:?}");
    assert_eq!(sent, 4, "3 probes and a RST");
}

/// A connection that ends leaves its heap entry behind until that deadline
/// comes, and a keepalive idle of two hours (Linux's default) puts every
/// established connection's entry two hours ahead: churn used to grow each
/// endpoint's heap by one entry per connection for two hours.
#[test]
fn ended_connections_leave_no_keepalive_entries_behind() {
    let ka = Keepalive {
        idle: Duration::from_secs(7200),
        interval: Duration::from_secs(75),
        count: 9,
    };
    let cfg = Config {
        keepalive: Some(ka),
        keepalive_active: Some(ka),
        ..config()
    };
    let mut p = Pair::with_configs(cfg.clone(), cfg);
    // One connection that stays, probing every hour: its entry is always
    // the heap's earliest, so the stale entries behind it are not popped
    // off the top (as they would be on an otherwise idle endpoint).
    let stays =
        p.a.connect_from(
            std::net::SocketAddrV4::new(A_IP, A_PORT + 1),
            p.tuple.remote,
            p.now,
        )
        .unwrap();
    p.drive();
    p.a.set_keepalive(
        stays,
        Some(Keepalive {
            idle: Duration::from_secs(3600),
            ..ka
        }),
    )
    .unwrap();
    p.a_events();
    p.b_events();
    let bound = |ep: &Endpoint| ep.timer_entries() <= 2 * ep.connection_count() + 1024;
    // 2,000 connections 2 s apart, well inside the two hours: each lives
    // past its handshake's RTO entry, which fires early and schedules the
    // keepalive deadline, and is then aborted.
    for i in 0..2000 {
        let (a_id, _, _, _) = p.establish();
        p.advance(Duration::from_secs(2));
        p.a.abort(a_id).unwrap();
        p.drive();
        p.a_events();
        p.b_events();
        assert!(
            bound(&p.a) && bound(&p.b),
            "after {i}: {} and {} entries",
            p.a.timer_entries(),
            p.b.timer_entries()
        );
    }
    assert_eq!((p.a.connection_count(), p.b.connection_count()), (1, 1));
}
