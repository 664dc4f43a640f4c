//! The fast checksum against RFC 1071's reference algorithm, and the RFC 1624
//! incremental update against a full recompute.

use proptest::prelude::*;

use super::super::checksum::{
    checksum, fold, pseudo_header_sum, sum, update_checksum, update_checksum_u32, verify,
};

/// A direct port of the C reference in RFC 1071 section 4.1, reading 16-bit
/// words in network (big-endian) order as the C code does on a big-endian
/// machine, so the left-over byte is the high byte of its word.
fn rfc1071_reference(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut count = data.len();
    let mut addr = 0;
    // "This is the inner loop"
    while count > 1 {
        sum += u32::from(u16::from_be_bytes([data[addr], data[addr + 1]]));
        addr += 2;
        count -= 2;
    }
    // "Add left-over byte, if any"
    if count > 0 {
        sum += u32::from(data[addr]) << 8;
    }
    // "Fold 32-bit sum to 16 bits"
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[test]
fn rfc1071_section_3_example() {
    // RFC 1071 section 3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2.
    let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
    assert_eq!(fold(sum(&data, 0)), 0xddf2);
    assert_eq!(checksum(&data), !0xddf2);
    assert_eq!(rfc1071_reference(&data), !0xddf2);
}

#[test]
fn known_ipv4_header_checksum() {
    // The classic example header (Wikipedia, "IPv4 header checksum").
    let mut h = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];
    assert_eq!(checksum(&h), 0xb861);
    h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
    assert!(verify(sum(&h, 0)));
}

#[test]
fn empty_and_all_ones() {
    assert_eq!(checksum(&[]), 0xFFFF);
    assert_eq!(checksum(&[0xFF; 64]), 0x0000);
    assert_eq!(rfc1071_reference(&[0xFF; 64]), 0x0000);
}

#[test]
fn pseudo_header_is_the_sum_of_its_bytes() {
    use std::net::Ipv4Addr;
    let src = Ipv4Addr::new(198, 18, 77, 1);
    let dst = Ipv4Addr::new(255, 255, 255, 254);
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&src.octets());
    bytes.extend_from_slice(&dst.octets());
    bytes.extend_from_slice(&[0, 6]);
    bytes.extend_from_slice(&65535u16.to_be_bytes());
    assert_eq!(
        fold(pseudo_header_sum(src, dst, 6, 65535)),
        fold(sum(&bytes, 0))
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The 8-bytes-at-a-time sum equals the reference on every length,
    /// odd ones included, and at every alignment of the slice in memory.
    #[test]
    fn fast_sum_matches_rfc1071_reference(
        data in proptest::collection::vec(any::<u8>(), 0..2100),
        skip in 0usize..8,
    ) {
        let data = &data[skip.min(data.len())..];
        prop_assert_eq!(checksum(data), rfc1071_reference(data));
    }

    /// Sums of pieces that start at even offsets add up to the sum of the
    /// whole, which is how pseudo-header, header and payload are combined.
    #[test]
    fn sums_of_even_pieces_compose(
        data in proptest::collection::vec(any::<u8>(), 0..600),
        cut in 0usize..300,
    ) {
        let cut = (cut * 2).min(data.len() & !1);
        let split = fold(sum(&data[cut..], sum(&data[..cut], 0)));
        prop_assert_eq!(!split, rfc1071_reference(&data));
    }

    /// RFC 1624 eqn. 3 on one 16-bit word equals a full recompute, unless
    /// the new data is all zeros (see `update_checksum`).
    #[test]
    fn incremental_update_equals_recompute(
        mut data in proptest::collection::vec(any::<u8>(), 2..200),
        index in any::<prop::sample::Index>(),
        new_word in any::<u16>(),
    ) {
        data.truncate(data.len() & !1);
        let at = index.index(data.len() / 2) * 2;
        let old_csum = checksum(&data);
        let old_word = u16::from_be_bytes([data[at], data[at + 1]]);
        data[at..at + 2].copy_from_slice(&new_word.to_be_bytes());
        prop_assume!(data.iter().any(|&b| b != 0));
        prop_assert_eq!(update_checksum(old_csum, old_word, new_word), checksum(&data));
    }

    /// The same for a 32-bit field at any even offset.
    #[test]
    fn incremental_update_u32_equals_recompute(
        mut data in proptest::collection::vec(any::<u8>(), 4..200),
        index in any::<prop::sample::Index>(),
        new in any::<u32>(),
    ) {
        data.truncate(data.len() & !1);
        let at = index.index(data.len() / 2 - 1) * 2;
        let old_csum = checksum(&data);
        let old = u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        data[at..at + 4].copy_from_slice(&new.to_be_bytes());
        prop_assume!(data.iter().any(|&b| b != 0));
        prop_assert_eq!(update_checksum_u32(old_csum, old, new), checksum(&data));
    }
}

#[test]
fn incremental_update_of_an_all_zero_result_is_negative_zero() {
    // The documented exception: data [0x0001] -> [0x0000].
    let old = checksum(&[0x00, 0x01]);
    assert_eq!(update_checksum(old, 0x0001, 0x0000), 0x0000);
    assert_eq!(checksum(&[0x00, 0x00]), 0xFFFF);
}
