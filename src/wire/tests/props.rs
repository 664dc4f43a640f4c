//! Property tests: build/parse round trips, and no panic or silent
//! acceptance on truncated, corrupted or random input.

use std::net::Ipv4Addr;

use proptest::prelude::*;

use super::super::options::MAX_WINDOW_SCALE;
use super::super::{
    DropReason, FrameMeta, MAX_HEADER_LEN, ParsedFrame, TcpFlags, TcpOptions, TcpRepr, Timestamps,
    build_frame, frame_header_len, parse_frame,
};
use super::{build, fix_ip_checksum, fix_tcp_checksum};

fn arb_meta() -> impl Strategy<Value = FrameMeta> {
    (
        any::<[u8; 6]>(),
        any::<[u8; 6]>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(|(src_mac, dst_mac, src, dst)| FrameMeta {
            src_mac,
            dst_mac,
            src_ip: Ipv4Addr::from_bits(src),
            dst_ip: Ipv4Addr::from_bits(dst),
        })
}

fn arb_options() -> impl Strategy<Value = TcpOptions> {
    (
        proptest::option::of(any::<u16>()),
        proptest::option::of(0..=MAX_WINDOW_SCALE),
        any::<bool>(),
        proptest::option::of((any::<u32>(), any::<u32>())),
    )
        .prop_map(|(mss, window_scale, sack_permitted, ts)| TcpOptions {
            sack: crate::wire::SackBlocks::EMPTY,
            mss,
            window_scale,
            sack_permitted,
            timestamps: ts.map(|(tsval, tsecr)| Timestamps { tsval, tsecr }),
        })
}

fn arb_repr() -> impl Strategy<Value = TcpRepr> {
    (
        any::<u16>(),
        any::<u16>(),
        any::<u32>(),
        any::<u32>(),
        any::<u8>(),
        any::<u16>(),
        arb_options(),
    )
        .prop_map(
            |(src_port, dst_port, seq, ack, flags, window, options)| TcpRepr {
                src_port,
                dst_port,
                seq,
                ack,
                flags: TcpFlags(flags),
                window,
                options,
            },
        )
}

fn arb_payload() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..=1500)
}

/// What "parsed consistently" means for a frame we did not build: the payload
/// lies inside the frame, ends where the IPv4 total length says, and building
/// the parsed values again gives a frame that parses to the same values.
fn assert_consistent(frame: &[u8], parsed: &ParsedFrame<'_>) {
    let start = parsed.payload.as_ptr() as usize - frame.as_ptr() as usize;
    let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    assert!(start + parsed.payload.len() <= frame.len());
    assert_eq!(start + parsed.payload.len(), 14 + total);
    if let Some(ws) = parsed.tcp.options.window_scale {
        assert!(ws <= MAX_WINDOW_SCALE);
    }
    let rebuilt = build(&parsed.meta, &parsed.tcp, parsed.payload);
    let again = parse_frame(&rebuilt).expect("our own frame parses");
    assert_eq!(&again, parsed);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// parse(build(x)) == x for every header, option combination, address
    /// and payload up to 1500 bytes, wherever the payload starts in the buffer.
    #[test]
    fn parse_inverts_build(
        meta in arb_meta(),
        repr in arb_repr(),
        payload in arb_payload(),
        payload_at in 0usize..200,
    ) {
        let mut buf = vec![0u8; payload_at.max(MAX_HEADER_LEN) + payload.len() + 7];
        buf[payload_at..payload_at + payload.len()].copy_from_slice(&payload);
        let len = build_frame(&mut buf, &meta, &repr, payload_at, payload.len()).unwrap();
        prop_assert_eq!(len, frame_header_len(&repr.options) + payload.len());
        let parsed = parse_frame(&buf[..len]).unwrap();
        prop_assert_eq!(parsed.meta, meta);
        prop_assert_eq!(parsed.tcp, repr);
        prop_assert_eq!(parsed.payload, &payload[..]);
        // Trailing bytes are Ethernet padding: ignored.
        let padded = parse_frame(&buf[..len + 7]).unwrap();
        prop_assert_eq!(padded, parsed);
    }

    /// Every proper prefix of a valid frame is Truncated.
    #[test]
    fn truncation_is_always_reported(
        repr in arb_repr(),
        payload in proptest::collection::vec(any::<u8>(), 0..100),
        cut in any::<prop::sample::Index>(),
    ) {
        let frame = build(&super::META, &repr, &payload);
        let len = cut.index(frame.len());
        prop_assert_eq!(parse_frame(&frame[..len]), Err(DropReason::Truncated));
    }

    /// Changing any single byte of the IPv4 header, TCP header or payload is
    /// never accepted: a checksum or a structural check catches it (a single
    /// byte changes its 16-bit word by less than 0xFFFF, so the one's
    /// complement sum always changes). A changed MAC is accepted as that MAC;
    /// a changed EtherType is NotIpv4; changed padding is ignored.
    #[test]
    fn any_single_byte_change_is_caught_or_parsed_consistently(
        meta in arb_meta(),
        repr in arb_repr(),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let mut frame = build(&meta, &repr, &payload);
        let len = frame.len();
        frame.extend_from_slice(&[0; 6]); // padding
        let at = at.index(frame.len());
        frame[at] ^= xor;
        let result = parse_frame(&frame);
        match at {
            0..12 => {
                let parsed = result.unwrap();
                prop_assert_eq!(parsed.tcp, repr);
                prop_assert_ne!(parsed.meta, meta);
            }
            12..14 => prop_assert_eq!(result, Err(DropReason::NotIpv4)),
            14.. if at < len => prop_assert!(result.is_err(), "byte {} accepted: {:?}", at, result),
            _ => {
                let parsed = result.unwrap();
                prop_assert_eq!(parsed.tcp, repr);
                prop_assert_eq!(parsed.payload, &payload[..]);
            }
        }
    }

    /// Random bytes never panic; what parses is consistent.
    #[test]
    fn random_bytes_never_panic(frame in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(parsed) = parse_frame(&frame) {
            assert_consistent(&frame, &parsed);
        }
    }

    /// A valid frame with random bytes written over it, checksums repaired
    /// (so the parse reaches the option walker and the length checks), then
    /// cut at a random length: never panics, and what parses is consistent.
    #[test]
    fn mutated_frames_with_repaired_checksums_never_panic(
        repr in arb_repr(),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        tcp_only in any::<bool>(),
        cut in proptest::option::weighted(0.2, any::<prop::sample::Index>()),
        repair in any::<bool>(),
    ) {
        let mut frame = build(&super::META, &repr, &payload);
        // Half the cases edit only the TCP header and payload, so the IPv4
        // checks pass and the TCP checks are the ones exercised.
        let first = if tcp_only { 34 } else { 14 };
        for (at, value) in edits {
            let at = at.index(frame.len() - first) + first;
            frame[at] = value;
        }
        if repair {
            let ihl = usize::from(frame[14] & 0x0F) * 4;
            let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
            if (20..=frame.len() - 14).contains(&ihl) {
                fix_ip_checksum(&mut frame);
            }
            if ihl == 20 && (40..=frame.len() - 14).contains(&total) {
                fix_tcp_checksum(&mut frame);
            }
        }
        let len = frame.len() - cut.map_or(0, |cut| cut.index(frame.len() / 4 + 1));
        if let Ok(parsed) = parse_frame(&frame[..len]) {
            assert_consistent(&frame[..len], &parsed);
        }
    }

    /// Arbitrary option bytes in a header whose checksum is right: parse
    /// never panics, and a list made only of options we write parses to
    /// exactly what was written (the last of a repeated option wins).
    #[test]
    fn arbitrary_option_bytes_never_panic(
        // Mostly small values, so kinds and lengths often make sense and the
        // walker goes deep; sometimes anything.
        option_bytes in proptest::collection::vec(prop_oneof![3 => 0u8..=10, 1 => any::<u8>()], 0..=40),
        payload in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let padded_len = option_bytes.len().div_ceil(4) * 4;
        let repr = TcpRepr::default();
        let mut frame = build(&super::META, &repr, &[]);
        frame.splice(54..54, std::iter::repeat_n(0, padded_len));
        frame[54..54 + option_bytes.len()].copy_from_slice(&option_bytes);
        frame.extend_from_slice(&payload);
        frame[46] = ((20 + padded_len as u8) / 4) << 4;
        let total = (20 + 20 + padded_len + payload.len()) as u16;
        frame[16..18].copy_from_slice(&total.to_be_bytes());
        fix_ip_checksum(&mut frame);
        fix_tcp_checksum(&mut frame);
        match parse_frame(&frame) {
            Ok(parsed) => {
                prop_assert_eq!(parsed.payload, &payload[..]);
                assert_consistent(&frame, &parsed);
            }
            Err(reason) => prop_assert_eq!(reason, DropReason::BadTcpOptions),
        }
    }

    /// Options written in any order, with NOPs between them, parse to the
    /// same values as our own layout.
    #[test]
    fn options_in_any_order_parse_the_same(
        opts in arb_options(),
        order in Just([0usize, 1, 2, 3]).prop_shuffle(),
        nops in proptest::collection::vec(0usize..3, 4),
    ) {
        let mut bytes = Vec::new();
        for (i, &which) in order.iter().enumerate() {
            bytes.extend(std::iter::repeat_n(1u8, nops[i]));
            match which {
                0 => if let Some(mss) = opts.mss {
                    bytes.extend_from_slice(&[2, 4]);
                    bytes.extend_from_slice(&mss.to_be_bytes());
                },
                1 => if let Some(ws) = opts.window_scale { bytes.extend_from_slice(&[3, 3, ws]) },
                2 => if opts.sack_permitted { bytes.extend_from_slice(&[4, 2]) },
                _ => if let Some(ts) = opts.timestamps {
                    bytes.extend_from_slice(&[8, 10]);
                    bytes.extend_from_slice(&ts.tsval.to_be_bytes());
                    bytes.extend_from_slice(&ts.tsecr.to_be_bytes());
                },
            }
        }
        prop_assume!(bytes.len() <= 40);
        prop_assert_eq!(super::super::options::parse(&bytes), Ok(opts));
    }
}
