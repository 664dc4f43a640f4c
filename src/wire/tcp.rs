//! TCP header (RFC 9293 section 3.1): a checked view for receive and a
//! writer for transmit. In-place edits of a built frame live in `patch`.

use std::net::Ipv4Addr;

use super::checksum;
use super::ipv4::PROTO_TCP;
use super::options;
use super::{DropReason, TcpFlags, TcpOptions, TcpRepr};

/// Length of a TCP header without options.
pub const TCP_HEADER_LEN: usize = 20;

/// Largest TCP header: data offset 15.
pub const TCP_MAX_HEADER_LEN: usize = 60;

/// Offset of the checksum field inside the TCP header.
const CHECKSUM_AT: usize = 16;

/// A checked view of a TCP segment (header, options, payload).
///
/// Construction checks the data offset against the segment and the checksum
/// over the IPv4 pseudo-header; options are parsed by [`TcpSegment::repr`].
#[derive(Clone, Copy, Debug)]
pub struct TcpSegment<'a> {
    bytes: &'a [u8],
    header_len: usize,
}

impl<'a> TcpSegment<'a> {
    /// Checks `bytes` (the IPv4 payload, exactly the segment) as TCP from
    /// `src` to `dst`.
    pub fn new_checked(bytes: &'a [u8], src: Ipv4Addr, dst: Ipv4Addr) -> Result<Self, DropReason> {
        if bytes.len() < TCP_HEADER_LEN {
            return Err(DropReason::Truncated);
        }
        let header_len = usize::from(bytes[12] >> 4) * 4;
        if header_len < TCP_HEADER_LEN || header_len > bytes.len() {
            return Err(DropReason::BadTcpHeader);
        }
        // The IPv4 total length bounds the segment to < 65536 bytes.
        let Ok(seg_len) = u16::try_from(bytes.len()) else {
            return Err(DropReason::BadTcpHeader);
        };
        let acc = checksum::pseudo_header_sum(src, dst, PROTO_TCP, seg_len);
        if !checksum::verify(checksum::sum(bytes, acc)) {
            return Err(DropReason::BadTcpChecksum);
        }
        Ok(Self { bytes, header_len })
    }

    pub fn src_port(&self) -> u16 {
        u16::from_be_bytes([self.bytes[0], self.bytes[1]])
    }

    pub fn dst_port(&self) -> u16 {
        u16::from_be_bytes([self.bytes[2], self.bytes[3]])
    }

    pub fn seq(&self) -> u32 {
        be32(self.bytes, 4)
    }

    pub fn ack(&self) -> u32 {
        be32(self.bytes, 8)
    }

    /// Header length in bytes (data offset * 4).
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    pub fn flags(&self) -> TcpFlags {
        TcpFlags(self.bytes[13])
    }

    pub fn window(&self) -> u16 {
        u16::from_be_bytes([self.bytes[14], self.bytes[15]])
    }

    pub fn checksum(&self) -> u16 {
        u16::from_be_bytes([self.bytes[16], self.bytes[17]])
    }

    pub fn urgent_pointer(&self) -> u16 {
        u16::from_be_bytes([self.bytes[18], self.bytes[19]])
    }

    /// The raw option bytes (empty without options).
    pub fn options(&self) -> &'a [u8] {
        &self.bytes[TCP_HEADER_LEN..self.header_len]
    }

    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[self.header_len..]
    }

    /// The header in host terms, options parsed.
    ///
    /// The urgent pointer and the reserved bits (including the old NS, now AE, bit) are
    /// not represented: the engine ignores urgent data, as RFC 6093 advises
    /// new applications to.
    pub fn repr(&self) -> Result<TcpRepr, DropReason> {
        Ok(TcpRepr {
            src_port: self.src_port(),
            dst_port: self.dst_port(),
            seq: self.seq(),
            ack: self.ack(),
            flags: self.flags(),
            window: self.window(),
            options: options::parse(self.options())?,
        })
    }
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Header length [`write_header`] emits for these options (20 + options).
pub const fn header_len(options: &TcpOptions) -> usize {
    TCP_HEADER_LEN + options::len(options)
}

/// Writes the TCP header for `repr` into `buf[..header_len(&repr.options)]`
/// with a zero checksum and urgent pointer; returns the header length. The
/// caller fills the checksum once the payload is in place ([`fill_checksum`]).
///
/// # Panics
/// If `buf` is shorter than the header.
pub fn write_header(buf: &mut [u8], repr: &TcpRepr) -> usize {
    let len = header_len(&repr.options);
    let h = &mut buf[..len];
    h[0..2].copy_from_slice(&repr.src_port.to_be_bytes());
    h[2..4].copy_from_slice(&repr.dst_port.to_be_bytes());
    h[4..8].copy_from_slice(&repr.seq.to_be_bytes());
    h[8..12].copy_from_slice(&repr.ack.to_be_bytes());
    h[12] = ((len / 4) as u8) << 4;
    h[13] = repr.flags.0;
    h[14..16].copy_from_slice(&repr.window.to_be_bytes());
    h[16..20].copy_from_slice(&[0, 0, 0, 0]);
    options::write(&mut h[TCP_HEADER_LEN..], &repr.options);
    len
}

/// Computes and stores the checksum of `segment` (header with a zeroed
/// checksum field, then payload) over the pseudo-header for `src` -> `dst`.
///
/// # Panics
/// If the segment is shorter than a TCP header or longer than 65535 bytes.
pub fn fill_checksum(segment: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr) {
    let seg_len = u16::try_from(segment.len()).expect("caller checked the segment length");
    segment[CHECKSUM_AT..CHECKSUM_AT + 2].copy_from_slice(&[0, 0]);
    let acc = checksum::pseudo_header_sum(src, dst, PROTO_TCP, seg_len);
    let csum = !checksum::fold(checksum::sum(segment, acc));
    segment[CHECKSUM_AT..CHECKSUM_AT + 2].copy_from_slice(&csum.to_be_bytes());
}
