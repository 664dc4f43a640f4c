//! Sequence numbers at their edges: trace tests with ISS and IRS near 2^31 and
//! 2^32, on connections that have already moved (almost) 2^31 or 2^32 bytes,
//! on both the sending and the receiving side. Built with the state fixtures,
//! so a test starts at any point of the sequence space.
//!
//! RFC 9293 3.4: "the sequence number space ranges from 0 to 2^32 - 1 ... all
//! arithmetic dealing with sequence numbers must be performed modulo 2^32."

use super::fixture::*;
use super::pair::{ACK, FIN, PSH};
use crate::tcp::State;
use crate::wire::TcpRepr;
use std::time::Duration;

const TWO_31: u32 = 1 << 31;

/// Starting points of the sequence space: just below 2^31 and 2^32, and 0.
const EDGES: [u32; 5] = [TWO_31 - 10, TWO_31 - 1, u32::MAX - 9, u32::MAX, 0];

/// Connection ages (bytes already acknowledged): fresh, about to pass 2^31,
/// past 2^31, one ACK short of 2^32 - 1 (SND.UNA meets ISS mid-trace), and
/// exactly 2^32 - 1 (SND.UNA == ISS at the start).
const AGES: [u32; 6] = [
    0,
    TWO_31 - 2500,
    TWO_31 + 1000,
    u32::MAX - 2000,
    u32::MAX - 1,
    u32::MAX,
];

fn pattern(n: usize, salt: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31) ^ ((i >> 8) as u8) ^ salt)
        .collect()
}

/// Run `trace` for every (start, age) pair and report all failing pairs together.
fn every_case(name: &str, trace: impl Fn(u32, u32)) {
    let mut failed = Vec::new();
    for start in EDGES {
        for age in AGES {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| trace(start, age)));
            if r.is_err() {
                failed.push((start, age));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{name}: failed at (start, age) = {failed:?}"
    );
}

fn spec_at(iss: u32, sent: u32, irs: u32, received: u32) -> Spec {
    Spec {
        iss,
        sent,
        irs,
        received,
        ..SPEC
    }
}

/// Send 5,000 bytes, the peer ACKs each segment as it arrives; then 3,000 more
/// and a FIN. Every segment must carry the right bytes at the right number,
/// and the send buffer must empty exactly.
fn sender_trace(spec: Spec) {
    let ctx = format!("{spec:?}");
    let mut f = Fix::new(spec);
    let data = pattern(8000, 0x11);
    f.app_send(&data[..5000]);
    let segs = f.recv_all();
    assert_eq!(segs.len(), 5, "{ctx}");
    for (i, s) in segs.iter().enumerate() {
        let off = 1000 * i as u32;
        let flags = if i == 4 { ACK | PSH } else { ACK };
        s.expect(flags, f.our_seq(off), f.peer_seq(0));
        assert!(
            s.payload == data[off as usize..off as usize + 1000],
            "payload of segment {i} at {ctx}"
        );
    }
    for i in 1..=5u32 {
        f.send_ack(0, 1000 * i);
        assert_eq!(
            f.ep.send_queued(f.id),
            5000 - 1000 * i as usize,
            "after ACK {i} at {ctx}"
        );
    }
    f.recv_nothing();
    f.app_send(&data[5000..]);
    f.ep.shutdown(f.id).unwrap();
    let segs = f.recv_all();
    assert_eq!(segs.len(), 3, "{ctx}");
    for (i, s) in segs.iter().enumerate() {
        let off = 5000 + 1000 * i as u32;
        let flags = if i == 2 { ACK | PSH | FIN } else { ACK };
        s.expect(flags, f.our_seq(off), f.peer_seq(0));
        assert!(
            s.payload == data[off as usize..off as usize + 1000],
            "payload of segment {} at {ctx}",
            i + 5
        );
    }
    assert_eq!(f.state(), Some(State::FinWait1), "{ctx}");
    f.send_ack(0, 8001);
    assert_eq!(f.state(), Some(State::FinWait2), "{ctx}");
    assert_eq!(f.ep.send_queued(f.id), 0, "{ctx}");
    assert_eq!(f.ep.stats().rto_expirations, 0, "{ctx}");
}

#[test]
fn sender_at_every_edge_and_age() {
    every_case("sender", |iss, sent| {
        sender_trace(spec_at(iss, sent, 5000, 0))
    });
}

/// Ten segments out, the first lost: three duplicate ACKs must trigger a fast
/// retransmit of exactly that segment (RFC 5681 3.2), whatever the connection's
/// age (RFC 6582 3.2: `recover` must not disable it on a loss-free connection
/// that passed 2^31 bytes). The clock does not move, so no RTO can help.
fn fast_retransmit_trace(spec: Spec) {
    let ctx = format!("{spec:?}");
    let mut f = Fix::new(spec);
    let data = pattern(10_000, 0x22);
    f.app_send(&data);
    let segs = f.recv_all();
    assert_eq!(segs.len(), 10, "{ctx}");
    for _ in 0..3 {
        f.send_ack(0, 0);
    }
    let r = f.try_recv();
    let Some(r) = r else {
        panic!("no fast retransmit after three duplicate ACKs at {ctx}");
    };
    r.expect(ACK, f.our_seq(0), f.peer_seq(0));
    assert!(r.payload == data[..1000], "retransmitted bytes at {ctx}");
    f.send_ack(0, 10_000);
    assert_eq!(f.ep.send_queued(f.id), 0, "{ctx}");
    assert_eq!(f.ep.stats().fast_retransmits, 1, "{ctx}");
    assert_eq!(f.ep.stats().rto_expirations, 0, "{ctx}");
    // A second loss, later: recovery works again (recover was passed). The
    // window is opened by hand (growing it back takes many round trips).
    f.ep.conn_for_test(f.id).cc.cwnd = 10_000;
    f.app_send(&data);
    assert_eq!(f.recv_all().len(), 10, "{ctx}");
    for _ in 0..3 {
        f.send_ack(0, 10_000);
    }
    let r = f
        .try_recv()
        .unwrap_or_else(|| panic!("no second fast retransmit at {ctx}"));
    r.expect(ACK, f.our_seq(10_000), f.peer_seq(0));
}

#[test]
fn fast_retransmit_at_every_edge_and_age() {
    every_case("fast retransmit", |iss, sent| {
        fast_retransmit_trace(spec_at(iss, sent, 5000, 0))
    });
}

/// The peer sends 3,000 bytes out of order, with an overlap and a duplicate,
/// then a FIN; out-of-window segments far behind and far ahead are refused.
fn receiver_trace(spec: Spec) {
    let ctx = format!("{spec:?}");
    let mut f = Fix::new(spec);
    let data = pattern(3000, 0x33);
    let seg = |f: &Fix, off: u32| TcpRepr {
        seq: f.peer_seq(off),
        ack: f.our_seq(0),
        ..SEND_TEMPL
    };
    // Second segment first: ACK for RCV.NXT, at once (RFC 5681 4.2).
    f.send(seg(&f, 1000), &data[1000..2000]);
    f.recv().expect(ACK, f.our_seq(0), f.peer_seq(0));
    f.send(seg(&f, 0), &data[..1000]);
    f.recv().expect(ACK, f.our_seq(0), f.peer_seq(2000));
    // Overlapping old and new bytes.
    f.send(seg(&f, 500), &data[500..3000]);
    f.recv().expect(ACK, f.our_seq(0), f.peer_seq(3000));
    // An old duplicate.
    f.send(seg(&f, 0), &data[..1000]);
    f.recv().expect(ACK, f.our_seq(0), f.peer_seq(3000));
    // Far behind and far ahead (2^30 away): not acceptable, answered with an ACK.
    f.send(seg(&f, 3000u32.wrapping_sub(1 << 30)), &data[..100]);
    f.recv().expect(ACK, f.our_seq(0), f.peer_seq(3000));
    f.send(seg(&f, 3000 + (1 << 30)), &data[..100]);
    f.recv().expect(ACK, f.our_seq(0), f.peer_seq(3000));
    assert!(f.app_recv_all() == data, "received bytes at {ctx}");
    f.send(
        TcpRepr {
            flags: ACK | FIN,
            ..seg(&f, 3000)
        },
        &[],
    );
    f.recv().expect(ACK, f.our_seq(0), f.peer_seq(3001));
    assert_eq!(f.state(), Some(State::CloseWait), "{ctx}");
    f.recv_nothing();
}

#[test]
fn receiver_at_every_edge_and_age() {
    every_case("receiver", |irs, received| {
        receiver_trace(spec_at(7000, 0, irs, received))
    });
}

/// ACK acceptability at the edges (RFC 5961 5.2): an ACK 2^30 ahead of SND.MAX
/// or 2^30 behind SND.UNA changes nothing; the right one still works.
#[test]
fn ack_acceptability_at_every_edge() {
    every_case("ack acceptability", |iss, sent| {
        let spec = spec_at(iss, sent, 5000, 0);
        let mut f = Fix::new(spec);
        f.app_send(&pattern(2000, 1));
        assert_eq!(f.recv_all().len(), 2);
        f.send_ack(0, 2000 + (1 << 30));
        f.send_ack(0, 0u32.wrapping_sub(1 << 30));
        assert_eq!(f.ep.send_queued(f.id), 2000, "{spec:?}");
        f.recv_all();
        f.send_ack(0, 2000);
        assert_eq!(f.ep.send_queued(f.id), 0, "{spec:?}");
    });
}

/// Retransmission after a timeout re-reads the right bytes at any age.
#[test]
fn rto_retransmission_at_every_edge_and_age() {
    every_case("rto retransmission", |iss, sent| {
        let spec = spec_at(iss, sent, 5000, 0);
        let mut f = Fix::new(spec);
        let data = pattern(3000, 0x44);
        f.app_send(&data);
        assert_eq!(f.recv_all().len(), 3);
        f.send_ack(0, 1000);
        f.advance(Duration::from_secs(2));
        let r = f.recv();
        r.expect(ACK, f.our_seq(1000), f.peer_seq(0));
        assert!(r.payload == data[1000..2000], "{spec:?}");
        f.send_ack(0, 3000);
        assert_eq!(f.ep.send_queued(f.id), 0, "{spec:?}");
    });
}
