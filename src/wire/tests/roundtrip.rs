//! Build then parse: layouts, lengths, payload placement, build errors.

use super::super::{
    BuildError, DropReason, MAX_HEADER_LEN, TcpFlags, TcpOptions, TcpRepr, build_frame,
    frame_header_len, parse_frame, tcp_header_len,
};
use super::{DATA, META, SYN, build};

#[test]
fn data_segment_round_trips_with_payload() {
    let frame = build(&META, &DATA, b"hello, world");
    assert_eq!(frame.len(), 14 + 20 + 32 + 12);
    let parsed = parse_frame(&frame).unwrap();
    assert_eq!(parsed.meta, META);
    assert_eq!(parsed.tcp, DATA);
    assert_eq!(parsed.payload, b"hello, world");
}

#[test]
fn syn_round_trips_with_every_option() {
    let frame = build(&META, &SYN, &[]);
    assert_eq!(frame.len(), 14 + 20 + 40);
    let parsed = parse_frame(&frame).unwrap();
    assert_eq!(parsed.tcp, SYN);
    assert!(parsed.payload.is_empty());
}

#[test]
fn header_lengths_follow_the_linux_layout() {
    let none = TcpOptions::default();
    assert_eq!(tcp_header_len(&none), 20);
    assert_eq!(tcp_header_len(&DATA.options), 32);
    assert_eq!(tcp_header_len(&SYN.options), 40);
    assert_eq!(frame_header_len(&SYN.options), 74);
    let sack_only = TcpOptions {
        sack_permitted: true,
        ..none
    };
    assert_eq!(tcp_header_len(&sack_only), 24);
    assert!(frame_header_len(&SYN.options) <= MAX_HEADER_LEN);
}

#[test]
fn syn_options_are_mss_sackok_ts_nop_wscale() {
    let frame = build(&META, &SYN, &[]);
    let opts = &frame[54..74];
    assert_eq!(
        opts,
        &[
            2, 4, 0x05, 0xb4, // MSS 1460
            4, 2, 8, 10, 0, 0, 0x03, 0xe8, 0, 0, 0, 0, // sackOK, TS 1000/0
            1, 3, 3, 7, // nop, wscale 7
        ]
    );
}

#[test]
fn data_options_are_nop_nop_ts() {
    let frame = build(&META, &DATA, &[]);
    assert_eq!(
        &frame[54..66],
        &[1, 1, 8, 10, 0, 0, 0x03, 0xe8, 0, 0, 0x07, 0xd0]
    );
}

#[test]
fn ip_header_is_ttl64_df_id0() {
    let frame = build(&META, &DATA, b"x");
    assert_eq!(&frame[12..14], &[0x08, 0x00]);
    assert_eq!(frame[14], 0x45);
    assert_eq!(&frame[16..18], &((20 + 32 + 1) as u16).to_be_bytes());
    assert_eq!(&frame[18..20], &[0, 0], "id 0");
    assert_eq!(&frame[20..22], &[0x40, 0], "DF, offset 0");
    assert_eq!(frame[22], 64);
    assert_eq!(frame[23], 6);
}

#[test]
fn payload_is_moved_right_and_left_to_meet_the_headers() {
    let payload: Vec<u8> = (0..200u8).collect();
    for payload_at in [0, 10, 66, 74, MAX_HEADER_LEN, 300] {
        for repr in [DATA, SYN] {
            let mut buf = vec![0xEEu8; 600];
            buf[payload_at..payload_at + payload.len()].copy_from_slice(&payload);
            let len = build_frame(&mut buf, &META, &repr, payload_at, payload.len()).unwrap();
            assert_eq!(len, frame_header_len(&repr.options) + payload.len());
            let parsed = parse_frame(&buf[..len]).unwrap();
            assert_eq!(parsed.payload, &payload[..], "payload_at {payload_at}");
            assert_eq!(parsed.tcp, repr);
        }
    }
}

#[test]
fn build_rejects_small_buffers_and_bad_payload_ranges() {
    let mut buf = [0u8; 73];
    assert_eq!(
        build_frame(&mut buf, &META, &SYN, 73, 0),
        Err(BuildError::BufferTooSmall {
            needed: 74,
            capacity: 73
        })
    );
    let mut buf = [0u8; 100];
    assert_eq!(
        build_frame(&mut buf, &META, &DATA, 90, 20),
        Err(BuildError::PayloadOutOfBounds {
            payload_at: 90,
            payload_len: 20,
            capacity: 100
        })
    );
    assert!(matches!(
        build_frame(&mut buf, &META, &DATA, usize::MAX, 2),
        Err(BuildError::PayloadOutOfBounds { .. })
    ));
    // Payload fits where it is but not after the headers.
    assert_eq!(
        build_frame(&mut buf, &META, &DATA, 0, 60),
        Err(BuildError::BufferTooSmall {
            needed: 66 + 60,
            capacity: 100
        })
    );
    let mut big = vec![0u8; 70_000];
    assert_eq!(
        build_frame(&mut big, &META, &DATA, 0, 65_535 - 20 - 32 + 1),
        Err(BuildError::DatagramTooLong { len: 65_536 })
    );
    let ok = build_frame(&mut big, &META, &DATA, 0, 65_535 - 20 - 32).unwrap();
    assert_eq!(parse_frame(&big[..ok]).unwrap().payload.len(), 65_535 - 52);
}

#[test]
fn every_flag_and_bare_header_round_trip() {
    for bits in 0..=255u8 {
        let repr = TcpRepr {
            flags: TcpFlags(bits),
            options: TcpOptions::default(),
            ..DATA
        };
        let frame = build(&META, &repr, &[]);
        assert_eq!(frame.len(), 54);
        assert_eq!(parse_frame(&frame).unwrap().tcp, repr);
    }
}

#[test]
fn window_scale_above_14_is_clamped_on_parse() {
    let repr = TcpRepr {
        options: TcpOptions {
            window_scale: Some(15),
            ..SYN.options
        },
        ..SYN
    };
    let frame = build(&META, &repr, &[]);
    assert_eq!(frame[73], 15, "sent as given");
    assert_eq!(
        parse_frame(&frame).unwrap().tcp.options.window_scale,
        Some(14)
    );
}

#[test]
fn ethernet_padding_is_ignored() {
    let repr = TcpRepr {
        options: TcpOptions::default(),
        flags: TcpFlags::ACK,
        ..DATA
    };
    let mut frame = build(&META, &repr, &[]);
    frame.resize(60, 0);
    let parsed = parse_frame(&frame).unwrap();
    assert!(parsed.payload.is_empty());
    assert_eq!(parsed.tcp, repr);
}

#[test]
fn drop_reason_labels_are_stable() {
    let labels: Vec<&str> = DropReason::ALL.iter().map(|r| r.label()).collect();
    assert_eq!(
        labels,
        [
            "truncated",
            "not_ipv4",
            "not_tcp",
            "bad_ip_header",
            "fragment",
            "bad_checksum",
            "malformed",
            "malformed",
            "bad_checksum",
            "malformed",
            "bad_checksum"
        ]
    );
    for (i, r) in DropReason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i);
        assert!(DropReason::LABELS.contains(&r.label()));
    }
    for l in DropReason::LABELS {
        assert!(DropReason::ALL.iter().any(|r| r.label() == l));
    }
}

/// RFC 2018 3 blocks after the timestamps, as Linux writes them (nop, nop,
/// kind 5, length 2 + 8n): three fill the 40-byte option area beside TS.
#[test]
fn sack_blocks_round_trip_beside_timestamps() {
    let mut sack = crate::wire::SackBlocks::EMPTY;
    for (l, r) in [(100, 200), (300, 400), (0xffff_fff0, 5)] {
        assert!(sack.push(l, r));
    }
    let tcp = TcpRepr {
        options: TcpOptions {
            sack,
            ..DATA.options
        },
        ..DATA
    };
    assert_eq!(tcp_header_len(&tcp.options), 60);
    let frame = build(&META, &tcp, b"xy");
    assert_eq!(&frame[54 + 12..54 + 16], &[1, 1, 5, 26]);
    let parsed = parse_frame(&frame).unwrap();
    assert_eq!(parsed.tcp, tcp);
    assert_eq!(parsed.payload, b"xy");
    let mut four = sack;
    assert!(four.push(7, 8));
    assert!(!four.push(9, 10), "RFC 2018: at most 4 blocks");
    let bare = TcpOptions {
        sack: four,
        ..TcpOptions::default()
    };
    assert_eq!(tcp_header_len(&bare), 20 + 36);
}
