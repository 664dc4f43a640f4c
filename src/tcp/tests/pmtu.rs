//! Path MTU discovery traces (RFC 1191, RFC 5927): an ICMP "fragmentation
//! needed" for a segment in flight lowers the MSS and resends what was too
//! large in segments that fit; one for a sequence number not in flight is
//! ignored and counted.

use super::fixture::{Fix, LOCAL_IP, LOCAL_PORT, REMOTE_IP, REMOTE_PORT, SPEC, Spec};
use crate::wire::FrameMeta;
use crate::wire::icmp::FragNeeded;
use std::net::{Ipv4Addr, SocketAddrV4};

fn icmp(seq: u32, mtu: u16, quoted_len: u16) -> FragNeeded {
    FragNeeded {
        meta: FrameMeta {
            src_mac: [2, 0, 0, 0, 0, 9],
            dst_mac: [2, 0, 0, 0, 0, 1],
            src_ip: Ipv4Addr::new(10, 9, 0, 254),
            dst_ip: LOCAL_IP,
        },
        next_hop_mtu: mtu,
        local: SocketAddrV4::new(LOCAL_IP, LOCAL_PORT),
        remote: SocketAddrV4::new(REMOTE_IP, REMOTE_PORT),
        seq,
        quoted_len,
    }
}

/// Sends 4 full segments at MSS 1460, then the router says 1280: the four
/// go again as segments of 1240 (1280 - 40) covering the same bytes, and
/// new data follows at the new size.
fn lowered_and_resent(spec: Spec) {
    let mut f = Fix::new(Spec { mss: 1460, ..spec });
    let data: Vec<u8> = (0..8000u32).map(|i| (i * 7) as u8).collect();
    f.app_send(&data);
    let first = f.recv_all();
    assert!(first.len() >= 4, "{} segments", first.len());
    assert!(first.iter().all(|s| s.payload.len() <= 1460));
    assert_eq!(first[0].payload.len(), 1460);
    let sent: usize = first.iter().map(|s| s.payload.len()).sum();

    let ts = if spec.timestamps { 12 } else { 0 };
    f.ep.handle_frag_needed(&icmp(first[1].tcp.seq, 1280, 1500), f.now);
    assert_eq!(f.ep.stats().pmtu_lowered, 1);
    let again = f.recv_all();
    assert!(!again.is_empty(), "nothing was resent");
    assert_eq!(
        again[0].tcp.seq,
        f.our_seq(0),
        "resending starts at SND.UNA"
    );
    for s in &again {
        assert!(
            s.payload.len() <= 1240 - ts,
            "a {}-byte segment after the MTU fell to 1280",
            s.payload.len()
        );
        let off = s.tcp.seq.wrapping_sub(f.our_seq(0)) as usize;
        assert_eq!(
            s.payload,
            data[off..off + s.payload.len()],
            "bytes at {off}"
        );
    }
    // The resent segments cover what had been sent, back to back.
    let mut next = f.our_seq(0);
    for s in again
        .iter()
        .take_while(|s| s.tcp.seq != f.our_seq(sent as u32))
    {
        assert_eq!(s.tcp.seq, next);
        next = next.wrapping_add(s.payload.len() as u32);
    }
    // The peer takes everything; the rest of the data goes at the new size.
    f.send_ack(0, sent as u32);
    for s in f.recv_all() {
        assert!(s.payload.len() <= 1240 - ts);
    }
}

#[test]
fn frag_needed_in_flight_lowers_the_mss_and_resends_smaller() {
    lowered_and_resent(SPEC);
}

#[test]
fn frag_needed_with_sack_resends_through_the_scoreboard() {
    lowered_and_resent(Spec { sack: true, ..SPEC });
}

#[test]
fn frag_needed_near_the_sequence_wrap() {
    lowered_and_resent(Spec {
        iss: 0xffff_fff0,
        ..SPEC
    });
}

#[test]
fn frag_needed_for_a_sequence_not_in_flight_is_ignored() {
    let mut f = Fix::new(Spec { mss: 1460, ..SPEC });
    f.app_send(&[1u8; 3000]);
    let first = f.recv_all();
    assert_eq!(first.len(), 3);
    // RFC 5927 4.1: below SND.UNA, or at/after SND.NXT: not ours to believe.
    for seq in [
        f.our_seq(0).wrapping_sub(1),
        f.our_seq(3000),
        f.our_seq(1 << 30),
    ] {
        f.ep.handle_frag_needed(&icmp(seq, 1280, 1500), f.now);
    }
    assert_eq!(f.ep.stats().icmp_not_in_flight, 3);
    assert_eq!(f.ep.stats().pmtu_lowered, 0);
    f.recv_nothing();
    // An MTU that is not lower changes nothing either.
    f.ep.handle_frag_needed(&icmp(f.our_seq(0), 1500, 1500), f.now);
    assert_eq!(f.ep.stats().icmp_not_lower, 1);
    f.recv_nothing();
    // A forged tiny MTU is floored at 552 (Linux's min_pmtu): MSS 512.
    f.ep.handle_frag_needed(&icmp(f.our_seq(0), 68, 1500), f.now);
    assert_eq!(f.ep.stats().pmtu_lowered, 1);
    let again = f.recv_all();
    assert!(again.iter().all(|s| s.payload.len() <= 512), "{again:?}");
    assert!(again.iter().any(|s| s.payload.len() == 512));
}

#[test]
fn frag_needed_for_no_connection_is_counted() {
    let mut f = Fix::new(SPEC);
    let mut m = icmp(f.our_seq(0), 1280, 1500);
    m.remote = SocketAddrV4::new(REMOTE_IP, REMOTE_PORT + 1);
    f.ep.handle_frag_needed(&m, f.now);
    assert_eq!(f.ep.stats().icmp_unknown_flow, 1);
}
