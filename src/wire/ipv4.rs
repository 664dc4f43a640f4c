//! IPv4 header (RFC 791): a checked view for receive, a writer for transmit.
//!
//! We accept IP options on receive (skipped via IHL) but never send them, so
//! every header we write is [`IPV4_HEADER_LEN`] bytes.

use std::net::Ipv4Addr;

use super::DropReason;
use super::checksum;

/// Length of the IPv4 header we emit: no options.
pub const IPV4_HEADER_LEN: usize = 20;

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;

/// TTL of every datagram we send: Linux's default (`net.ipv4.ip_default_ttl`).
pub const DEFAULT_TTL: u8 = 64;

/// Flags/fragment-offset word: DF set (RFC 791 section 3.1), offset 0.
const FLAGS_DF: u16 = 0x4000;
/// The "more fragments" bit and the 13-bit fragment offset.
const FLAG_MF: u16 = 0x2000;
const FRAG_OFFSET_MASK: u16 = 0x1FFF;

/// A checked view of an IPv4 header and the datagram it heads.
///
/// Construction checks version, IHL, total length against the bytes
/// available (trailing Ethernet padding allowed and cut off), the header
/// checksum, and that the datagram is not a fragment. The protocol is left to
/// the caller.
#[derive(Clone, Copy, Debug)]
pub struct Ipv4Packet<'a> {
    /// Exactly `total_length` bytes: header, options, payload; no padding.
    bytes: &'a [u8],
    header_len: usize,
}

impl<'a> Ipv4Packet<'a> {
    /// Checks `bytes` (the Ethernet payload) as an IPv4 datagram.
    ///
    /// Order matters for the reason reported: structure first (we cannot
    /// checksum what we cannot delimit), then the checksum (so corruption of
    /// the flags or protocol byte counts as corruption), then fragmentation.
    pub fn new_checked(bytes: &'a [u8]) -> Result<Self, DropReason> {
        if bytes.len() < IPV4_HEADER_LEN {
            return Err(DropReason::Truncated);
        }
        let version = bytes[0] >> 4;
        let header_len = usize::from(bytes[0] & 0x0F) * 4;
        if version != 4 || header_len < IPV4_HEADER_LEN {
            return Err(DropReason::BadIpHeader);
        }
        if bytes.len() < header_len {
            return Err(DropReason::Truncated);
        }
        let total_len = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        if total_len < header_len {
            return Err(DropReason::BadIpHeader);
        }
        if total_len > bytes.len() {
            // The datagram claims more than the frame carries: cut short on
            // the way (RFC 1122 3.2.1.1 "silently discard").
            return Err(DropReason::Truncated);
        }
        if !checksum::verify(checksum::sum(&bytes[..header_len], 0)) {
            return Err(DropReason::BadIpChecksum);
        }
        let flags_frag = u16::from_be_bytes([bytes[6], bytes[7]]);
        if flags_frag & (FLAG_MF | FRAG_OFFSET_MASK) != 0 {
            return Err(DropReason::Fragment);
        }
        Ok(Self {
            bytes: &bytes[..total_len],
            header_len,
        })
    }

    /// Header length in bytes, options included (IHL * 4).
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    pub fn total_len(&self) -> usize {
        self.bytes.len()
    }

    pub fn ttl(&self) -> u8 {
        self.bytes[8]
    }

    pub fn protocol(&self) -> u8 {
        self.bytes[9]
    }

    pub fn ident(&self) -> u16 {
        u16::from_be_bytes([self.bytes[4], self.bytes[5]])
    }

    pub fn dont_fragment(&self) -> bool {
        u16::from_be_bytes([self.bytes[6], self.bytes[7]]) & FLAGS_DF != 0
    }

    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(
            self.bytes[12],
            self.bytes[13],
            self.bytes[14],
            self.bytes[15],
        )
    }

    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(
            self.bytes[16],
            self.bytes[17],
            self.bytes[18],
            self.bytes[19],
        )
    }

    /// The transport segment, without Ethernet padding.
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[self.header_len..]
    }
}

/// Writes a 20-byte IPv4 header carrying `payload_len` bytes of TCP into
/// `buf[..20]`, checksum included: version 4, IHL 5, DSCP/ECN 0, id 0, DF,
/// TTL 64.
///
/// Identification 0: with DF set the datagram is atomic and RFC 6864
/// section 4.1 gives its ID no meaning, so we spend nothing on a counter.
/// (Linux sends 0 for DF datagrams without a socket, and a per-socket counter
/// otherwise; receivers must not care either way.)
///
/// # Panics
/// If `buf` is shorter than 20 bytes or `IPV4_HEADER_LEN + payload_len`
/// exceeds 65535; `build_frame` checks both first.
pub fn write_header(buf: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, payload_len: usize) {
    let total_len =
        u16::try_from(IPV4_HEADER_LEN + payload_len).expect("caller checked the datagram length");
    let h = &mut buf[..IPV4_HEADER_LEN];
    h[0] = 0x45;
    h[1] = 0;
    h[2..4].copy_from_slice(&total_len.to_be_bytes());
    h[4..6].copy_from_slice(&0u16.to_be_bytes());
    h[6..8].copy_from_slice(&FLAGS_DF.to_be_bytes());
    h[8] = DEFAULT_TTL;
    h[9] = PROTO_TCP;
    h[10..12].copy_from_slice(&[0, 0]);
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let csum = checksum::checksum(h);
    h[10..12].copy_from_slice(&csum.to_be_bytes());
}
