//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! Sums here are *unfolded* one's-complement accumulators (`u64`): callers add
//! the pseudo-header, the header and the payload separately, then [`fold`]
//! once. Every slice handed to [`sum`] must start at an even offset of the
//! checksummed data (true for the 12-byte pseudo-header, a TCP header of 4-byte
//! multiples and the payload after it), because an odd trailing byte is padded
//! on the right as RFC 1071 section 1 prescribes for the *end* of the data.

use std::net::Ipv4Addr;

/// Adds `data`, read as big-endian 16-bit words, to the accumulator `acc`.
///
/// Why 8 bytes at a time: one's-complement addition is addition modulo
/// 0xFFFF, and 2^16 = 1 (mod 0xFFFF), so a big-endian `u32` or `u64` read of
/// the bytes is congruent to the sum of the 16-bit words it holds (RFC 1071
/// section 2(B), "parallel summation"). Splitting each `u64` into its two
/// 32-bit halves and adding those to a `u64` keeps the carries inside the
/// accumulator: it cannot overflow before 2^32 halves (16 GiB of data), far
/// beyond any frame, and the loop has no carry flag to chain on, so the
/// compiler is free to unroll and vectorise it. This runs for every byte of
/// every segment, in both directions (the kernel peer verifies our checksums
/// and we verify theirs; there is no offload).
#[inline]
pub fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let v = u64::from_be_bytes([
            chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7],
        ]);
        acc += (v >> 32) + (v & 0xFFFF_FFFF);
    }
    let mut rest = chunks.remainder();
    if rest.len() >= 4 {
        acc += u64::from(u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]));
        rest = &rest[4..];
    }
    if rest.len() >= 2 {
        acc += u64::from(u16::from_be_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
    }
    if let [last] = rest {
        // RFC 1071 section 4.1: "Add left-over byte, if any" as the high byte.
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds an accumulator to 16 bits with end-around carries (not complemented).
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    // Each step at least halves the bit width; four steps bring any u64 to 16
    // bits, the loop usually runs twice.
    while acc > 0xFFFF {
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    acc as u16
}

/// The checksum field value for `data` alone: the complement of its folded sum.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data, 0))
}

/// Unfolded sum of the TCP/UDP pseudo-header over IPv4 (RFC 9293 section
/// 3.1, "Checksum"): source, destination, zero, protocol, TCP length.
#[inline]
pub fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u16) -> u64 {
    u64::from(src.to_bits()) + u64::from(dst.to_bits()) + u64::from(protocol) + u64::from(length)
}

/// True when data that includes its own checksum field sums to all ones,
/// which is how RFC 1071 section 1(3) says a receiver verifies.
#[inline]
pub fn verify(acc: u64) -> bool {
    fold(acc) == 0xFFFF
}

/// Incrementally updates a checksum field when one 16-bit word of the
/// covered data changes from `old_word` to `new_word`.
///
/// RFC 1624 section 3, eqn. 3: `HC' = ~(~HC + ~m + m')`, rather than RFC
/// 1141's `HC' = HC + m - m'`, whose result can differ from a full recompute
/// in the representation of zero (RFC 1624 sections 3 and 4). Eqn. 3 agrees
/// with a recompute bit for bit, except when the data becomes all zeros (a
/// recompute gives 0xFFFF, eqn. 3 gives 0x0000, the same number in one's
/// complement), which no IPv4 or TCP header can be: both carry a version or a
/// pseudo-header with non-zero addresses. Used to patch a field of a frame
/// already built without summing its payload again.
#[inline]
pub fn update_checksum(old_csum: u16, old_word: u16, new_word: u16) -> u16 {
    let acc = u64::from(!old_csum) + u64::from(!old_word) + u64::from(new_word);
    !fold(acc)
}

/// [`update_checksum`] for a 32-bit field (a sequence or acknowledgment
/// number, an address, a timestamp): two word updates folded into one.
#[inline]
pub fn update_checksum_u32(old_csum: u16, old: u32, new: u32) -> u16 {
    let acc = u64::from(!old_csum)
        + u64::from(!(old >> 16) as u16)
        + u64::from(!(old as u16))
        + u64::from((new >> 16) as u16)
        + u64::from(new as u16);
    !fold(acc)
}
