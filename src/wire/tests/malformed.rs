//! Every malformed input mapped to its DropReason, built by editing a valid
//! frame and (where the test is about structure, not corruption) repairing
//! the checksums so the intended check is the one that fires.

use super::super::{DropReason, TcpOptions, TcpRepr, parse_frame};
use super::{DATA, META, SYN, build, fix_ip_checksum, fix_tcp_checksum};

fn data_frame() -> Vec<u8> {
    build(&META, &DATA, b"some payload")
}

#[test]
fn truncated_at_every_length() {
    for repr in [DATA, SYN] {
        let frame = build(&META, &repr, b"payload bytes");
        for len in 0..frame.len() {
            assert_eq!(
                parse_frame(&frame[..len]),
                Err(DropReason::Truncated),
                "{repr:?} cut at {len}"
            );
        }
        assert!(parse_frame(&frame).is_ok());
    }
}

#[test]
fn non_ipv4_ethertypes_are_not_ipv4() {
    for ethertype in [[0x08, 0x06], [0x86, 0xdd], [0x81, 0x00], [0x00, 0x00]] {
        let mut frame = data_frame();
        frame[12..14].copy_from_slice(&ethertype);
        assert_eq!(parse_frame(&frame), Err(DropReason::NotIpv4));
    }
}

#[test]
fn other_protocols_are_not_tcp() {
    for proto in [1u8, 17, 41, 0, 255] {
        let mut frame = data_frame();
        frame[23] = proto;
        fix_ip_checksum(&mut frame);
        assert_eq!(parse_frame(&frame), Err(DropReason::NotTcp));
    }
}

#[test]
fn ip_version_other_than_4_is_bad_ip_header() {
    let mut frame = data_frame();
    frame[14] = 0x65;
    fix_ip_checksum(&mut frame);
    assert_eq!(parse_frame(&frame), Err(DropReason::BadIpHeader));
}

#[test]
fn ihl_below_5_is_bad_ip_header() {
    for ihl in 0..5u8 {
        let mut frame = data_frame();
        frame[14] = 0x40 | ihl;
        assert_eq!(
            parse_frame(&frame),
            Err(DropReason::BadIpHeader),
            "IHL {ihl}"
        );
    }
}

#[test]
fn ihl_beyond_the_frame_is_truncated() {
    // IHL 15 = 60 bytes of IP header; a frame with 14 + 40 bytes cannot hold it.
    let mut frame = build(
        &META,
        &TcpRepr {
            options: TcpOptions::default(),
            ..DATA
        },
        &[],
    );
    frame[14] = 0x4F;
    assert_eq!(parse_frame(&frame), Err(DropReason::Truncated));
}

#[test]
fn ip_options_are_skipped() {
    // Insert 4 bytes of IP options (NOP NOP NOP EOL) into a valid frame.
    let frame = data_frame();
    let mut with_opts = frame[..34].to_vec();
    with_opts.extend_from_slice(&[1, 1, 1, 0]);
    with_opts.extend_from_slice(&frame[34..]);
    with_opts[14] = 0x46;
    let total = u16::from_be_bytes([with_opts[16], with_opts[17]]) + 4;
    with_opts[16..18].copy_from_slice(&total.to_be_bytes());
    fix_ip_checksum(&mut with_opts);
    let parsed = parse_frame(&with_opts).unwrap();
    assert_eq!(parsed.tcp, DATA);
    assert_eq!(parsed.payload, b"some payload");
}

#[test]
fn total_length_beyond_the_frame_is_truncated() {
    let mut frame = data_frame();
    let total = u16::from_be_bytes([frame[16], frame[17]]) + 1;
    frame[16..18].copy_from_slice(&total.to_be_bytes());
    fix_ip_checksum(&mut frame);
    assert_eq!(parse_frame(&frame), Err(DropReason::Truncated));
}

#[test]
fn total_length_below_the_header_is_bad_ip_header() {
    let mut frame = data_frame();
    frame[16..18].copy_from_slice(&19u16.to_be_bytes());
    fix_ip_checksum(&mut frame);
    assert_eq!(parse_frame(&frame), Err(DropReason::BadIpHeader));
}

#[test]
fn total_length_shorter_than_the_frame_cuts_the_payload() {
    // The bytes past the total length are Ethernet padding, not payload; a
    // TCP checksum computed over the shorter segment must then verify.
    let mut frame = data_frame();
    let total = u16::from_be_bytes([frame[16], frame[17]]) - 4;
    frame[16..18].copy_from_slice(&total.to_be_bytes());
    fix_ip_checksum(&mut frame);
    fix_tcp_checksum(&mut frame);
    assert_eq!(parse_frame(&frame).unwrap().payload, b"some pay");
}

#[test]
fn fragments_are_dropped() {
    // MF set; offset 1 (8 bytes); offset max; MF with offset. DF alone is fine.
    for flags_frag in [0x2000u16, 0x0001, 0x1FFF, 0x2001, 0x6000] {
        let mut frame = data_frame();
        frame[20..22].copy_from_slice(&flags_frag.to_be_bytes());
        fix_ip_checksum(&mut frame);
        assert_eq!(
            parse_frame(&frame),
            Err(DropReason::Fragment),
            "{flags_frag:#x}"
        );
    }
    let mut frame = data_frame();
    frame[20..22].copy_from_slice(&0u16.to_be_bytes());
    fix_ip_checksum(&mut frame);
    assert!(parse_frame(&frame).is_ok(), "DF clear, not a fragment");
}

#[test]
fn bad_ip_checksum() {
    let mut frame = data_frame();
    frame[24] ^= 0x01;
    assert_eq!(parse_frame(&frame), Err(DropReason::BadIpChecksum));
    let mut frame = data_frame();
    frame[22] = 63; // TTL changed without updating the checksum
    assert_eq!(parse_frame(&frame), Err(DropReason::BadIpChecksum));
}

#[test]
fn bad_tcp_checksum() {
    let mut frame = data_frame();
    frame[50] ^= 0x80;
    assert_eq!(parse_frame(&frame), Err(DropReason::BadTcpChecksum));
    let mut frame = data_frame();
    let last = frame.len() - 1;
    frame[last] ^= 0x01;
    assert_eq!(parse_frame(&frame), Err(DropReason::BadTcpChecksum));
    // The pseudo-header is covered: a changed source address (with a repaired
    // IP checksum) breaks the TCP checksum.
    let mut frame = data_frame();
    frame[29] ^= 0x01;
    fix_ip_checksum(&mut frame);
    assert_eq!(parse_frame(&frame), Err(DropReason::BadTcpChecksum));
}

#[test]
fn data_offset_below_5_is_bad_tcp_header() {
    for doff in 0..5u8 {
        let mut frame = data_frame();
        frame[46] = doff << 4;
        fix_tcp_checksum(&mut frame);
        assert_eq!(
            parse_frame(&frame),
            Err(DropReason::BadTcpHeader),
            "doff {doff}"
        );
    }
}

#[test]
fn data_offset_beyond_the_segment_is_bad_tcp_header() {
    // A bare 20-byte header with no payload claiming 24 or 60 bytes.
    let bare = TcpRepr {
        options: TcpOptions::default(),
        ..DATA
    };
    for doff in [6u8, 15] {
        let mut frame = build(&META, &bare, &[]);
        frame[46] = doff << 4;
        fix_tcp_checksum(&mut frame);
        assert_eq!(
            parse_frame(&frame),
            Err(DropReason::BadTcpHeader),
            "doff {doff}"
        );
    }
}

#[test]
fn tcp_segment_shorter_than_20_is_truncated() {
    // IP total length says the segment is 19 bytes.
    let mut frame = data_frame();
    frame[16..18].copy_from_slice(&(20u16 + 19).to_be_bytes());
    fix_ip_checksum(&mut frame);
    assert_eq!(parse_frame(&frame), Err(DropReason::Truncated));
}

/// A frame whose 12-byte option area is `opts`, checksums repaired.
fn frame_with_options(opts: [u8; 12]) -> Vec<u8> {
    let mut frame = data_frame();
    frame[54..66].copy_from_slice(&opts);
    fix_tcp_checksum(&mut frame);
    frame
}

#[test]
fn zero_and_one_length_options_are_bad_tcp_options() {
    for len in [0u8, 1] {
        let f = frame_with_options([1, 1, 99, len, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(parse_frame(&f), Err(DropReason::BadTcpOptions), "len {len}");
    }
}

#[test]
fn option_overrunning_the_header_is_bad_tcp_options() {
    // Timestamps claiming 10 bytes with only 8 left; SACK block claiming 13.
    let f = frame_with_options([1, 1, 1, 1, 8, 10, 0, 0, 0, 0, 0, 0]);
    assert_eq!(parse_frame(&f), Err(DropReason::BadTcpOptions));
    let f = frame_with_options([5, 13, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(parse_frame(&f), Err(DropReason::BadTcpOptions));
    // A kind byte with no room for its length byte.
    let f = frame_with_options([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2]);
    assert_eq!(parse_frame(&f), Err(DropReason::BadTcpOptions));
}

#[test]
fn eol_ends_the_option_list() {
    // Garbage after EOL is padding, not options.
    let f = frame_with_options([2, 4, 0x05, 0xb4, 0, 99, 0, 0, 0, 0, 0, 0]);
    let opts = parse_frame(&f).unwrap().tcp.options;
    assert_eq!(opts.mss, Some(1460));
    assert_eq!(opts.timestamps, None);
}

#[test]
fn unknown_kinds_are_skipped_and_sack_blocks_parsed() {
    // Unknown kind 30 (MPTCP) of length 4, then SACK (5) with one 8-byte block
    // would not fit, so: kind 30 len 4, kind 254 len 2, MSS.
    let f = frame_with_options([30, 4, 0xde, 0xad, 254, 2, 2, 4, 0x01, 0x00, 1, 0]);
    let opts = parse_frame(&f).unwrap().tcp.options;
    assert_eq!(opts.mss, Some(256));
    let f = frame_with_options([1, 1, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    let opts = parse_frame(&f).unwrap().tcp.options;
    assert_eq!(opts.sack.as_slice(), &[(1, 2)]);
    assert_eq!(
        TcpOptions {
            sack: crate::wire::SackBlocks::EMPTY,
            ..opts
        },
        TcpOptions::default()
    );
    // A SACK option whose length is not 2 + 8n is skipped.
    let f = frame_with_options([1, 1, 5, 9, 0, 0, 0, 1, 0, 0, 0, 1]);
    assert!(parse_frame(&f).unwrap().tcp.options.sack.is_empty());
}

#[test]
fn known_kinds_with_the_wrong_length_are_ignored() {
    // MSS of length 3, WS of length 4, SACK_PERM of length 3: skipped as
    // Linux's tcp_parse_options skips them.
    let f = frame_with_options([2, 3, 5, 3, 4, 0, 0, 4, 3, 0, 1, 1]);
    assert_eq!(parse_frame(&f).unwrap().tcp.options, TcpOptions::default());
}

/// The ownership peek reads addresses and ports without the TCP checksum
/// (the owner verifies it), but never past a bad IP header or a short frame.
#[test]
fn peek_reads_the_flow_without_the_tcp_checksum() {
    let flow = Some((META.src_ip, META.dst_ip, DATA.src_port, DATA.dst_port));
    let mut frame = data_frame();
    assert_eq!(super::super::peek_tcp_flow(&frame), flow);
    let last = frame.len() - 1;
    frame[last] ^= 0x01;
    assert_eq!(parse_frame(&frame), Err(DropReason::BadTcpChecksum));
    assert_eq!(super::super::peek_tcp_flow(&frame), flow, "payload unread");
    let mut frame = data_frame();
    frame[24] ^= 0x01;
    assert_eq!(super::super::peek_tcp_flow(&frame), None, "bad IP checksum");
    let frame = data_frame();
    assert_eq!(super::super::peek_tcp_flow(&frame[..14 + 20 + 3]), None);
    let mut frame = data_frame();
    frame[12] = 0x86; // IPv6 ethertype
    assert_eq!(super::super::peek_tcp_flow(&frame), None);
}
