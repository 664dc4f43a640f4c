//! A whole Ethernet II / IPv4 / TCP frame: parse (with every check) and build.

use super::ethernet::{self, ETH_HEADER_LEN, ETHERTYPE_IPV4, EthernetFrame};
use super::ipv4::{self, IPV4_HEADER_LEN, Ipv4Packet, PROTO_TCP};
use super::tcp::{self, TcpSegment};
use super::{DropReason, FrameMeta, ParsedFrame, TcpOptions, TcpRepr, Timestamps};

/// Room for any header we build: Ethernet, IPv4 without options, TCP with a
/// full 40-byte option area. A tx buffer that puts its payload at
/// `MAX_HEADER_LEN` before knowing the options is always valid for
/// [`build_frame`], which then moves the payload left to meet the headers.
pub const MAX_HEADER_LEN: usize = ETH_HEADER_LEN + IPV4_HEADER_LEN + tcp::TCP_MAX_HEADER_LEN;

/// Where a data segment's payload starts when RFC 7323 timestamps are in use
/// (every segment of such a connection carries them, and nothing else after
/// the handshake): a payload written here meets its headers, so
/// [`build_frame`] moves nothing. Segments with other options (SYNs carry no
/// payload) still build correctly from here, with the payload moved.
pub const DATA_PAYLOAD_AT: usize = frame_header_len(&TcpOptions {
    sack: crate::wire::SackBlocks::EMPTY,
    mss: None,
    window_scale: None,
    sack_permitted: false,
    timestamps: Some(Timestamps { tsval: 0, tsecr: 0 }),
});

/// Why [`build_frame`] could not build a frame. Each is a caller bug or a
/// mis-sized buffer, never something the peer did.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum BuildError {
    #[error(
        "frame of {needed} bytes does not fit the {capacity}-byte buffer; use a larger frame or send less payload"
    )]
    BufferTooSmall { needed: usize, capacity: usize },
    #[error(
        "payload at {payload_at}..+{payload_len} lies outside the {capacity}-byte buffer; the payload must already be in the buffer"
    )]
    PayloadOutOfBounds {
        payload_at: usize,
        payload_len: usize,
        capacity: usize,
    },
    #[error(
        "IPv4 datagram of {len} bytes exceeds the 65535-byte total length; segment the payload by the MSS"
    )]
    DatagramTooLong { len: usize },
    #[error(
        "TCP options of {len} bytes in our layout exceed the 40 bytes a header holds; send fewer SACK blocks"
    )]
    OptionsTooLong { len: usize },
}

/// Parses and verifies an Ethernet II / IPv4 / TCP frame: bounds, IHL, total
/// length vs frame length (Ethernet padding allowed), IPv4 fragments (MF or
/// offset != 0) rejected, IP header checksum, TCP data offset, TCP checksum
/// over the pseudo-header, options overrunning the header. Never panics.
///
/// The TCP checksum is verified before the options are walked, so a corrupted
/// option byte is reported as `BadTcpChecksum`, not `BadTcpOptions`.
pub fn parse_frame(frame: &[u8]) -> Result<ParsedFrame<'_>, DropReason> {
    let eth = EthernetFrame::new_checked(frame)?;
    if eth.ethertype() != ETHERTYPE_IPV4 {
        return Err(DropReason::NotIpv4);
    }
    let ip = Ipv4Packet::new_checked(eth.payload())?;
    if ip.protocol() != PROTO_TCP {
        return Err(DropReason::NotTcp);
    }
    let seg = TcpSegment::new_checked(ip.payload(), ip.src_addr(), ip.dst_addr())?;
    Ok(ParsedFrame {
        meta: FrameMeta {
            src_mac: eth.src_mac(),
            dst_mac: eth.dst_mac(),
            src_ip: ip.src_addr(),
            dst_ip: ip.dst_addr(),
        },
        tcp: seg.repr()?,
        payload: seg.payload(),
    })
}

/// The addresses and ports of a TCP/IPv4 frame, read without verifying the
/// TCP checksum: (source IP, destination IP, source port, destination port).
/// Ethernet and the IPv4 header (with its checksum) are checked as in
/// [`parse_frame`]. For deciding which shard owns a frame before paying for
/// the pass over its payload; the owner still runs [`parse_frame`]. None
/// for anything else (not IPv4/TCP, malformed, shorter than the ports).
pub fn peek_tcp_flow(frame: &[u8]) -> Option<(std::net::Ipv4Addr, std::net::Ipv4Addr, u16, u16)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.protocol() != PROTO_TCP {
        return None;
    }
    let t = ip.payload();
    let port = |at: usize| Some(u16::from_be_bytes([*t.get(at)?, *t.get(at + 1)?]));
    Some((ip.src_addr(), ip.dst_addr(), port(0)?, port(2)?))
}

/// TCP header length (20 + options, a multiple of 4) that [`build_frame`]
/// emits for these options.
pub const fn tcp_header_len(options: &TcpOptions) -> usize {
    tcp::header_len(options)
}

/// Total header length of a frame carrying these options (14 + 20 + TCP).
pub const fn frame_header_len(options: &TcpOptions) -> usize {
    ETH_HEADER_LEN + IPV4_HEADER_LEN + tcp_header_len(options)
}

/// Builds a whole frame in `buf` and returns its length.
///
/// The payload is already in `buf[payload_at..payload_at + payload_len]`
/// (the application wrote it into the UMEM frame); if the headers for these
/// options end elsewhere, the payload is moved (`copy_within`, overlap-safe)
/// to sit right after them. Writing the payload at [`MAX_HEADER_LEN`], or at
/// `frame_header_len` of the options the engine will use, is always valid.
///
/// Writes Ethernet, IPv4 (TTL 64, DF, id 0, header checksum) and TCP with a
/// full checksum: the kernel peer verifies it and we assume no tx offload.
/// Short frames are not padded to 60 bytes: NICs pad on transmit, and veth
/// has no minimum. No allocation.
pub fn build_frame(
    buf: &mut [u8],
    meta: &FrameMeta,
    tcp: &TcpRepr,
    payload_at: usize,
    payload_len: usize,
) -> Result<usize, BuildError> {
    let capacity = buf.len();
    if payload_len > 0
        && payload_at
            .checked_add(payload_len)
            .is_none_or(|end| end > capacity)
    {
        return Err(BuildError::PayloadOutOfBounds {
            payload_at,
            payload_len,
            capacity,
        });
    }
    // A header holds 40 bytes of options (data offset 15); our padded
    // layout of timestamps beside four SACK blocks would need 48, and the
    // data offset would wrap to garbage.
    let options_len = super::options::len(&tcp.options);
    if options_len > super::options::MAX_OPTIONS_LEN {
        return Err(BuildError::OptionsTooLong { len: options_len });
    }
    let header_len = frame_header_len(&tcp.options);
    let frame_len = header_len.saturating_add(payload_len);
    let datagram_len = frame_len - ETH_HEADER_LEN;
    if datagram_len > usize::from(u16::MAX) {
        return Err(BuildError::DatagramTooLong { len: datagram_len });
    }
    if frame_len > capacity {
        return Err(BuildError::BufferTooSmall {
            needed: frame_len,
            capacity,
        });
    }
    if payload_at != header_len && payload_len > 0 {
        buf.copy_within(payload_at..payload_at + payload_len, header_len);
    }

    ethernet::write_header(buf, meta.src_mac, meta.dst_mac, ETHERTYPE_IPV4);
    let ip_at = ETH_HEADER_LEN;
    let tcp_at = ip_at + IPV4_HEADER_LEN;
    let segment_len = frame_len - tcp_at;
    ipv4::write_header(&mut buf[ip_at..], meta.src_ip, meta.dst_ip, segment_len);
    tcp::write_header(&mut buf[tcp_at..], tcp);
    tcp::fill_checksum(&mut buf[tcp_at..frame_len], meta.src_ip, meta.dst_ip);
    Ok(frame_len)
}
