use std::net::{Ipv4Addr, SocketAddrV4};

use proptest::prelude::*;

use super::{DATA, META, build};
use crate::wire::DropReason;
use crate::wire::icmp::{build_frag_needed, parse_frag_needed};

const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);

fn frag_needed(mtu: u16) -> Vec<u8> {
    let seg = build(&META, &DATA, &[0xab; 1400]);
    let mut buf = vec![0u8; 256];
    let n = build_frag_needed(&mut buf, [2, 0, 0, 0, 0, 9], ROUTER, &seg, mtu).expect("fits");
    buf.truncate(n);
    buf
}

#[test]
fn a_router_s_message_names_our_flow_its_sequence_and_the_mtu() {
    let f = parse_frag_needed(&frag_needed(1280)).expect("valid");
    assert_eq!(f.meta.src_ip, ROUTER);
    assert_eq!(f.meta.dst_ip, META.src_ip);
    assert_eq!(f.local, SocketAddrV4::new(META.src_ip, DATA.src_port));
    assert_eq!(f.remote, SocketAddrV4::new(META.dst_ip, DATA.dst_port));
    assert_eq!(f.seq, DATA.seq);
    assert_eq!(f.next_hop_mtu, 1280);
    assert!(f.quoted_len > 1400);
}

#[test]
fn corrupt_or_foreign_messages_are_counted_drops() {
    let good = frag_needed(1280);
    let mut bad_sum = good.clone();
    bad_sum[40] ^= 0xff; // inside the ICMP message
    assert_eq!(
        parse_frag_needed(&bad_sum),
        Err(DropReason::BadIcmpChecksum)
    );

    let mut echo = good.clone();
    echo[34] = 8; // echo request, checksum fixed below
    echo[36..38].copy_from_slice(&[0, 0]);
    let c = crate::wire::checksum::checksum(&echo[34..]);
    echo[36..38].copy_from_slice(&c.to_be_bytes());
    assert_eq!(parse_frag_needed(&echo), Err(DropReason::NotTcp));

    let mut udp = good.clone();
    udp[34 + 8 + 9] = 17; // the quoted datagram is UDP
    udp[36..38].copy_from_slice(&[0, 0]);
    let c = crate::wire::checksum::checksum(&udp[34..]);
    udp[36..38].copy_from_slice(&c.to_be_bytes());
    assert_eq!(parse_frag_needed(&udp), Err(DropReason::BadIcmp));

    // A TCP segment is not an ICMP message.
    let seg = build(&META, &DATA, b"x");
    assert_eq!(parse_frag_needed(&seg), Err(DropReason::NotTcp));
}

proptest! {
    /// Any truncation or byte flip is a drop reason or a message whose
    /// fields come from the bytes: never a panic, never a read past the end.
    #[test]
    fn any_corruption_is_handled(cut in 0usize..120, flip in 0usize..120, bit in 0u8..8) {
        let mut f = frag_needed(1280);
        if flip < f.len() {
            f[flip] ^= 1 << bit;
        }
        f.truncate(cut.max(1).min(f.len()));
        if let Ok(m) = parse_frag_needed(&f) {
            prop_assert!(f.len() >= 14 + 20 + 8 + 20 + 8, "parsed {} bytes: {m:?}", f.len());
        }
    }
}
