//! SACK (RFC 2018) negotiation and blocks, the RFC 6675 scoreboard, and
//! RACK-TLP (RFC 8985), as traces against fixtures.

use super::fixture::*;
use super::pair::{ACK, PSH, SYN};
use crate::tcp::{Config, Endpoint, Instant, State};
use crate::wire::{SackBlocks, TcpOptions, TcpRepr, Timestamps};
use std::time::Duration;

const SACK_SPEC: Spec = Spec { sack: true, ..SPEC };

fn pattern(n: usize, salt: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ salt).collect()
}

fn blocks(list: &[(u32, u32)]) -> SackBlocks {
    let mut b = SackBlocks::EMPTY;
    for &(l, r) in list {
        assert!(b.push(l, r));
    }
    b
}

/// The SYN-ACK a listener with `cfg` sends for a SYN with these options.
fn synack_for(cfg: Config, sack_permitted: bool, timestamps: bool) -> TcpRepr {
    let mut ep = Endpoint::new(cfg, [7; 16]);
    ep.listen(LOCAL_PORT);
    let syn = TcpRepr {
        src_port: REMOTE_PORT,
        dst_port: LOCAL_PORT,
        seq: 77,
        flags: SYN,
        window: 64240,
        options: TcpOptions {
            mss: Some(1460),
            window_scale: Some(7),
            sack_permitted,
            timestamps: timestamps.then_some(Timestamps { tsval: 9, tsecr: 0 }),
            sack: SackBlocks::EMPTY,
        },
        ..TcpRepr::default()
    };
    let now = Instant::from_secs(5);
    ep.handle_segment(LOCAL_IP, REMOTE_IP, &syn, &[], now);
    let mut buf = [0u8; 2048];
    let t = ep.poll_transmit(now, &mut buf).expect("a SYN-ACK");
    assert_eq!(t.tcp.flags, SYN | ACK);
    t.tcp
}

#[test]
fn synack_carries_sack_permitted_only_when_offered() {
    let cfg = Config::default();
    assert!(synack_for(cfg.clone(), true, true).options.sack_permitted);
    assert!(synack_for(cfg.clone(), true, false).options.sack_permitted);
    assert!(!synack_for(cfg.clone(), false, true).options.sack_permitted);
    let off = Config {
        sack_permitted: false,
        ..Config::default()
    };
    assert!(!synack_for(off, true, true).options.sack_permitted);
}

#[test]
fn syn_cookie_synack_keeps_sack_permitted() {
    // A SYN queue of one: the second SYN is answered with a cookie.
    let cfg = Config {
        syn_backlog: 1,
        ..Config::default()
    };
    let mut ep = Endpoint::new(cfg, [7; 16]);
    ep.listen(LOCAL_PORT);
    let now = Instant::from_secs(5);
    let mut buf = [0u8; 2048];
    let mut last = None;
    for port in [REMOTE_PORT, REMOTE_PORT + 1] {
        let syn = TcpRepr {
            src_port: port,
            dst_port: LOCAL_PORT,
            seq: 77,
            flags: SYN,
            window: 64240,
            options: TcpOptions {
                mss: Some(1460),
                window_scale: Some(7),
                sack_permitted: true,
                timestamps: Some(Timestamps { tsval: 9, tsecr: 0 }),
                sack: SackBlocks::EMPTY,
            },
            ..TcpRepr::default()
        };
        ep.handle_segment(LOCAL_IP, REMOTE_IP, &syn, &[], now);
        while let Some(t) = ep.poll_transmit(now, &mut buf) {
            last = Some(t.tcp);
        }
    }
    assert_eq!(ep.stats().syn_cookies_sent, 1);
    let cookie = last.expect("a cookie SYN-ACK");
    assert!(cookie.options.sack_permitted);
}

/// Out-of-order data is answered with blocks: the one holding the segment
/// that triggered the ACK first, then the most recently reported ones.
#[test]
fn blocks_for_out_of_order_data_most_recent_first() {
    let mut f = Fix::new(SACK_SPEC);
    let deliver = |f: &mut Fix, at: u32, len: usize| {
        let tcp = TcpRepr {
            seq: f.peer_seq(at),
            ack: f.our_seq(0),
            ..SEND_TEMPL
        };
        f.send(tcp, &pattern(len, at as u8));
        f.recv_all().pop().expect("an ACK")
    };
    let p = |f: &Fix, a: u32, b: u32| (f.peer_seq(a), f.peer_seq(b));
    let a = deliver(&mut f, 1000, 500);
    assert_eq!(a.tcp.ack, f.peer_seq(0));
    assert_eq!(a.tcp.options.sack.as_slice(), &[p(&f, 1000, 1500)]);
    let a = deliver(&mut f, 3000, 500);
    assert_eq!(
        a.tcp.options.sack.as_slice(),
        &[p(&f, 3000, 3500), p(&f, 1000, 1500)]
    );
    let a = deliver(&mut f, 5000, 100);
    let a2 = deliver(&mut f, 1500, 500);
    assert_eq!(
        a.tcp.options.sack.as_slice(),
        &[p(&f, 5000, 5100), p(&f, 3000, 3500), p(&f, 1000, 1500)]
    );
    // Merged with its neighbour: the block grows and moves to the front.
    assert_eq!(
        a2.tcp.options.sack.as_slice(),
        &[p(&f, 1000, 2000), p(&f, 5000, 5100), p(&f, 3000, 3500)]
    );
    // The hole at 0 filled: RCV.NXT jumps and the block below it goes.
    let a = deliver(&mut f, 0, 1000);
    assert_eq!(a.tcp.ack, f.peer_seq(2000));
    assert_eq!(
        a.tcp.options.sack.as_slice(),
        &[p(&f, 5000, 5100), p(&f, 3000, 3500)]
    );
    // With timestamps only three fit; without SACK negotiated, none.
    let mut f = Fix::new(SPEC);
    let tcp = TcpRepr {
        seq: f.peer_seq(1000),
        ack: f.our_seq(0),
        ..SEND_TEMPL
    };
    f.send(tcp, &pattern(10, 1));
    assert!(f.recv().tcp.options.sack.is_empty());
}

/// The sender's scoreboard: SACKed segments are not resent, each hole once.
#[test]
fn scoreboard_retransmits_only_the_holes() {
    let mut f = Fix::new(SACK_SPEC);
    let data = pattern(10_000, 3);
    f.app_send(&data);
    let sent = f.recv_all();
    assert_eq!(sent.len(), 10);
    let sack_ack = |f: &mut Fix, list: &[(u32, u32)]| {
        let b: Vec<(u32, u32)> = list
            .iter()
            .map(|&(l, r)| (f.our_seq(l), f.our_seq(r)))
            .collect();
        let tcp = TcpRepr {
            seq: f.peer_seq(0),
            ack: f.our_seq(0),
            options: TcpOptions {
                sack: blocks(&b),
                ..TcpOptions::default()
            },
            ..SEND_TEMPL
        };
        f.send(tcp, &[]);
    };
    // Segments 0 and 5 lost; the receiver reports the rest as they arrive.
    sack_ack(&mut f, &[(1000, 2000)]);
    sack_ack(&mut f, &[(1000, 3000)]);
    f.recv_nothing();
    sack_ack(&mut f, &[(1000, 4000)]);
    // Three segments above the first hole: it is lost (RFC 6675 IsLost).
    let r = f.recv();
    r.expect(ACK, f.our_seq(0), f.peer_seq(0));
    assert!(r.payload == data[..1000]);
    f.recv_nothing();
    sack_ack(&mut f, &[(6000, 7000), (1000, 5000)]);
    sack_ack(&mut f, &[(6000, 10_000), (1000, 5000)]);
    let r = f.recv();
    r.expect(ACK, f.our_seq(5000), f.peer_seq(0));
    assert!(r.payload == data[5000..6000]);
    f.recv_nothing();
    let s = f.ep.stats();
    assert_eq!((s.retransmits, s.retransmitted_bytes), (2, 2000));
    assert_eq!(s.fast_retransmits, 1, "one recovery episode");
    f.send_ack(0, 10_000);
    assert_eq!(f.ep.send_queued(f.id), 0);
    assert_eq!(f.ep.stats().rto_expirations, 0);
}

/// Blocks outside SND.UNA..SND.MAX (and D-SACK below SND.UNA) change nothing.
#[test]
fn invalid_blocks_are_ignored() {
    let mut f = Fix::new(SACK_SPEC);
    f.app_send(&pattern(3000, 4));
    assert_eq!(f.recv_all().len(), 3);
    // (Each with another window: window updates, not duplicate ACKs, which
    // would count towards DupThresh.)
    for (i, (l, r)) in [(3000, 4000), (2000, 1000), (u32::MAX - 999, 0)]
        .into_iter()
        .enumerate()
    {
        let tcp = TcpRepr {
            seq: f.peer_seq(0),
            ack: f.our_seq(0),
            window: 0xffff - i as u16,
            options: TcpOptions {
                sack: blocks(&[(f.our_seq(l), f.our_seq(r))]),
                ..TcpOptions::default()
            },
            ..SEND_TEMPL
        };
        f.send(tcp, &[]);
        f.recv_nothing();
    }
    assert_eq!(f.ep.stats().sack_blocks_ignored, 3);
    assert_eq!(f.ep.stats().retransmits, 0);
}

/// A tail loss: the last two segments are lost and no ACK comes. The probe
/// (RFC 8985 7) goes out after 2 SRTT + 2 ms, its SACK reveals the hole, and
/// RACK's reordering timer repairs it: milliseconds, no 200 ms RTO.
#[test]
fn tail_loss_probe_fires_at_pto_and_rack_repairs_the_hole() {
    let mut f = Fix::new(SACK_SPEC);
    let data = pattern(3000, 5);
    f.app_send(&data);
    assert_eq!(f.recv_all().len(), 3);
    // 100 us later the first segment's ACK: SRTT = 100 us (Karn timing).
    f.advance(Duration::from_micros(100));
    f.send_ack(0, 1000);
    f.recv_nothing();
    // PTO = 2 * 100 us + 2 ms.
    f.advance(Duration::from_micros(2100));
    f.recv_nothing();
    f.advance(Duration::from_micros(150));
    let probe = f.recv();
    probe.expect(ACK | PSH, f.our_seq(2000), f.peer_seq(0));
    assert!(probe.payload == data[2000..]);
    assert_eq!(f.ep.stats().tlp_probes, 1);
    // The probe arrives; segment 1 does not.
    let tcp = TcpRepr {
        seq: f.peer_seq(0),
        ack: f.our_seq(1000),
        options: TcpOptions {
            sack: blocks(&[(f.our_seq(2000), f.our_seq(3000))]),
            ..TcpOptions::default()
        },
        ..SEND_TEMPL
    };
    f.send(tcp, &[]);
    f.recv_nothing();
    // RACK: reordering window max(SRTT / 4, 1 ms).
    f.advance(Duration::from_micros(1000));
    let r = f.recv();
    r.expect(ACK, f.our_seq(1000), f.peer_seq(0));
    assert!(r.payload == data[1000..2000]);
    f.send_ack(0, 3000);
    assert_eq!(f.ep.send_queued(f.id), 0);
    let s = f.ep.stats();
    assert_eq!(s.rto_expirations, 0);
    assert_eq!(s.rack_reorder_timeouts, 1);
    assert_eq!(f.state(), Some(State::Established));
}

/// Without SACK negotiated no probe is sent: the tail waits for the RTO.
#[test]
fn no_probe_without_sack() {
    let mut f = Fix::new(SPEC);
    f.app_send(&pattern(3000, 6));
    assert_eq!(f.recv_all().len(), 3);
    f.advance(Duration::from_micros(100));
    f.send_ack(0, 1000);
    f.advance(Duration::from_millis(100));
    f.recv_nothing();
    assert_eq!(f.ep.stats().tlp_probes, 0);
    f.advance(Duration::from_millis(150));
    f.recv().expect(ACK, f.our_seq(1000), f.peer_seq(0));
    assert_eq!(f.ep.stats().rto_expirations, 1);
}

/// A retransmission that is lost again is found by RACK once data sent after
/// it is SACKed (RFC 8985 6.2), not by the RTO.
#[test]
fn lost_retransmission_is_resent_without_rto() {
    let mut f = Fix::new(SACK_SPEC);
    let data = pattern(6000, 7);
    f.app_send(&data[..4000]);
    assert_eq!(f.recv_all().len(), 4);
    let sack_ack = |f: &mut Fix, list: &[(u32, u32)]| {
        let b: Vec<(u32, u32)> = list
            .iter()
            .map(|&(l, r)| (f.our_seq(l), f.our_seq(r)))
            .collect();
        let tcp = TcpRepr {
            seq: f.peer_seq(0),
            ack: f.our_seq(0),
            options: TcpOptions {
                sack: blocks(&b),
                ..TcpOptions::default()
            },
            ..SEND_TEMPL
        };
        f.send(tcp, &[]);
    };
    sack_ack(&mut f, &[(1000, 4000)]);
    let r = f.recv();
    r.expect(ACK, f.our_seq(0), f.peer_seq(0));
    // That retransmission is lost. New data goes out behind it...
    f.app_send(&data[4000..]);
    let new = f.recv_all();
    assert!(!new.is_empty());
    assert_eq!(new[0].tcp.seq, f.our_seq(4000));
    // ... and is SACKed first: the retransmission is resent at once.
    sack_ack(&mut f, &[(4000, 5000), (1000, 4000)]);
    let again = f.recv();
    again.expect(ACK, f.our_seq(0), f.peer_seq(0));
    assert!(again.payload == data[..1000]);
    assert_eq!(f.ep.stats().rack_lost_retransmits, 1);
    // The hole filled: everything sent is acknowledged, the rest follows.
    let mut acked = 5000;
    for _ in 0..10 {
        f.send_ack(0, acked);
        for s in f.recv_all() {
            acked = acked.max(s.tcp.seq.wrapping_sub(f.our_seq(0)) + s.payload.len() as u32);
        }
        if f.ep.send_queued(f.id) == 0 {
            break;
        }
    }
    assert_eq!(f.ep.send_queued(f.id), 0);
    assert_eq!(f.ep.stats().rto_expirations, 0);
}

/// Entering SACK recovery keeps 0.7 of the flight (RFC 9438 beta_cubic, not
/// RFC 6675's half): ten segments in flight, one lost, cwnd = ssthresh = 7
/// segments; the retransmission and new data fill that window, and recovery
/// ends with cwnd at 7 segments.
#[test]
fn sack_recovery_reduces_to_seven_tenths_of_the_flight() {
    let mut f = Fix::new(SACK_SPEC);
    let data = pattern(20_000, 5);
    f.app_send(&data);
    assert_eq!(f.recv_all().len(), 10, "the initial window");
    let sack_ack = |f: &mut Fix, right: u32| {
        let tcp = TcpRepr {
            seq: f.peer_seq(0),
            ack: f.our_seq(0),
            options: TcpOptions {
                sack: blocks(&[(f.our_seq(1000), f.our_seq(right))]),
                ..TcpOptions::default()
            },
            ..SEND_TEMPL
        };
        f.send(tcp, &[]);
    };
    sack_ack(&mut f, 2000);
    sack_ack(&mut f, 3000);
    sack_ack(&mut f, 4000);
    let cc = f.ep.conn_for_test(f.id).cc;
    assert!(cc.in_recovery);
    assert_eq!((cc.ssthresh, cc.cwnd), (7000, 7000), "0.7 x 10 segments");
    // The hole goes first; pipe = 10 - 3 SACKed - 1 lost + 1 resent = 7
    // segments: the window is full.
    let out = f.recv_all();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].tcp.seq, f.our_seq(0));
    // Each further SACKed segment frees one: one new segment each.
    sack_ack(&mut f, 5000);
    let out = f.recv_all();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].tcp.seq, f.our_seq(10_000));
    // Everything through the new segment acknowledged: recovery is over at 7.
    f.send_ack(0, 11_000);
    let cc = f.ep.conn_for_test(f.id).cc;
    assert!(!cc.in_recovery);
    assert_eq!(cc.cwnd, 7000);
}

/// A retransmission lost at the tail of a recovery, with nothing sent after
/// it: RFC 8985 schedules no probe in recovery, so it waited for the RTO
/// (200 ms, window collapsed; most of our timeouts at 5% loss). The probe
/// now runs in recovery too: after 2 SRTT + 2 ms of silence it resends the
/// highest un-SACKed segment (here the lost retransmission itself), and
/// recovery ends without a timeout.
#[test]
fn lost_retransmission_at_the_tail_is_probed_not_timed_out() {
    let mut f = Fix::new(SACK_SPEC);
    let data = pattern(5000, 8);
    // SRTT = 100 us from the first segment's ACK (Karn timing).
    f.app_send(&data[..1000]);
    assert_eq!(f.recv_all().len(), 1);
    f.advance(Duration::from_micros(100));
    f.send_ack(0, 1000);
    f.app_send(&data[1000..]);
    assert_eq!(f.recv_all().len(), 4);
    // Segment 1000..2000 lost; three above it SACKed: recovery, resent at once.
    let tcp = TcpRepr {
        seq: f.peer_seq(0),
        ack: f.our_seq(1000),
        options: TcpOptions {
            sack: blocks(&[(f.our_seq(2000), f.our_seq(5000))]),
            ..TcpOptions::default()
        },
        ..SEND_TEMPL
    };
    f.send(tcp, &[]);
    let r = f.recv();
    r.expect(ACK, f.our_seq(1000), f.peer_seq(0));
    f.recv_nothing();
    assert!(f.ep.conn_for_test(f.id).cc.in_recovery);
    // That retransmission is lost too; nothing else is in flight or to send.
    // PTO = 2 * 100 us + 2 ms after it.
    f.advance(Duration::from_micros(2100));
    f.recv_nothing();
    f.advance(Duration::from_micros(150));
    let probe = f.recv();
    probe.expect(ACK, f.our_seq(1000), f.peer_seq(0));
    assert!(probe.payload == data[1000..2000]);
    f.recv_nothing();
    f.send_ack(0, 5000);
    assert_eq!(f.ep.send_queued(f.id), 0);
    let s = f.ep.stats();
    assert_eq!((s.tlp_probes, s.rto_expirations), (1, 0));
    assert!(!f.ep.conn_for_test(f.id).cc.in_recovery);
}

/// A probe in recovery prefers new data (RFC 8985 7.3): sent after the lost
/// retransmission, its SACK shows that retransmission lost (RACK, 6.2), and
/// it is resent at once. Eleven segments in flight, the first lost, three
/// SACKed: recovery at 0.7 x 11 leaves no room beside the retransmission;
/// then everything still in flight is lost (a burst) and the ACKs stop.
#[test]
fn probe_in_recovery_sends_new_data_and_rack_finds_the_lost_retransmission() {
    let mut f = Fix::new(SACK_SPEC);
    let data = pattern(14_000, 9);
    f.app_send(&data[..1000]);
    assert_eq!(f.recv_all().len(), 1);
    f.advance(Duration::from_micros(100));
    f.send_ack(0, 1000);
    f.app_send(&data[1000..]);
    assert_eq!(f.recv_all().len(), 11, "cwnd: eleven segments");
    let sack = |f: &mut Fix, list: &[(u32, u32)]| {
        let b: Vec<(u32, u32)> = list
            .iter()
            .map(|&(l, r)| (f.our_seq(l), f.our_seq(r)))
            .collect();
        let tcp = TcpRepr {
            seq: f.peer_seq(0),
            ack: f.our_seq(1000),
            options: TcpOptions {
                sack: blocks(&b),
                ..TcpOptions::default()
            },
            ..SEND_TEMPL
        };
        f.send(tcp, &[]);
    };
    sack(&mut f, &[(2000, 5000)]);
    f.recv().expect(ACK, f.our_seq(1000), f.peer_seq(0));
    f.recv_nothing();
    // The retransmission and 5000..12000 are lost. The probe: new data,
    // regardless of cwnd.
    f.advance(Duration::from_micros(2250));
    let probe = f.recv();
    probe.expect(ACK, f.our_seq(12_000), f.peer_seq(0));
    assert!(probe.payload == data[12_000..13_000]);
    f.recv_nothing();
    // It is SACKed: the retransmission sent before it was lost, and goes first.
    sack(&mut f, &[(12_000, 13_000), (2000, 5000)]);
    let again = f.recv();
    again.expect(ACK, f.our_seq(1000), f.peer_seq(0));
    assert!(again.payload == data[1000..2000]);
    let s = f.ep.stats();
    assert_eq!(
        (s.tlp_probes, s.rack_lost_retransmits, s.rto_expirations),
        (1, 1, 0)
    );
}
