//! ICMPv4 "fragmentation needed and DF set" (RFC 792 type 3 code 4, with the
//! next-hop MTU of RFC 1191 section 4): the one ICMP message the XDP program
//! steers to us, when the datagram it quotes is one of our TCP segments.
//!
//! The quoted datagram is whatever the router copied: at least its IP header
//! and the first 8 bytes of its payload (RFC 792), which for TCP are the
//! ports and the sequence number. Its checksums are not verified (RFC 5927
//! section 4.1: routers may have changed it, e.g. the TTL); what makes the
//! message believable is the sequence number, which the engine checks
//! against what is in flight.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::checksum;
use super::ethernet::{ETHERTYPE_IPV4, EthernetFrame};
use super::ipv4::{IPV4_HEADER_LEN, Ipv4Packet, PROTO_TCP};
use super::{DropReason, FrameMeta};

/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// RFC 792: destination unreachable.
pub const TYPE_DEST_UNREACHABLE: u8 = 3;
/// RFC 792: fragmentation needed and DF set.
pub const CODE_FRAG_NEEDED: u8 = 4;
/// ICMP header: type, code, checksum, 4 bytes (unused, next-hop MTU).
const ICMP_HEADER_LEN: usize = 8;
/// RFC 792: the quoted datagram carries at least 64 bits of its payload.
const QUOTED_PAYLOAD_MIN: usize = 8;

/// A checked "fragmentation needed" quoting one of our TCP segments.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FragNeeded {
    /// Outer addressing: the router (source) and us (destination).
    pub meta: FrameMeta,
    /// RFC 1191 section 4: the MTU of the next-hop network; 0 from routers
    /// older than RFC 1191.
    pub next_hop_mtu: u16,
    /// The quoted segment's source: our side of the flow.
    pub local: SocketAddrV4,
    /// The quoted segment's destination: the peer.
    pub remote: SocketAddrV4,
    /// The quoted segment's sequence number (RFC 5927: must be in flight).
    pub seq: u32,
    /// The quoted datagram's total length: what did not fit.
    pub quoted_len: u16,
}

/// Parses an Ethernet/IPv4/ICMP frame as a "fragmentation needed" quoting a
/// TCP segment. Any other ICMP message is `NotTcp` (the XDP program sends us
/// no other); a short or corrupt one is `Truncated`, `BadIcmp` or
/// `BadIcmpChecksum`. Never panics.
pub fn parse_frag_needed(frame: &[u8]) -> Result<FragNeeded, DropReason> {
    let eth = EthernetFrame::new_checked(frame)?;
    if eth.ethertype() != ETHERTYPE_IPV4 {
        return Err(DropReason::NotIpv4);
    }
    let ip = Ipv4Packet::new_checked(eth.payload())?;
    if ip.protocol() != PROTO_ICMP {
        return Err(DropReason::NotTcp);
    }
    let icmp = ip.payload();
    if icmp.len() < ICMP_HEADER_LEN {
        return Err(DropReason::Truncated);
    }
    if !checksum::verify(checksum::sum(icmp, 0)) {
        return Err(DropReason::BadIcmpChecksum);
    }
    if icmp[0] != TYPE_DEST_UNREACHABLE || icmp[1] != CODE_FRAG_NEEDED {
        return Err(DropReason::NotTcp);
    }
    let next_hop_mtu = u16::from_be_bytes([icmp[6], icmp[7]]);
    let quoted = &icmp[ICMP_HEADER_LEN..];
    if quoted.len() < IPV4_HEADER_LEN {
        return Err(DropReason::Truncated);
    }
    let ihl = usize::from(quoted[0] & 0x0f) * 4;
    if quoted[0] >> 4 != 4 || ihl < IPV4_HEADER_LEN || quoted[9] != PROTO_TCP {
        return Err(DropReason::BadIcmp);
    }
    if quoted.len() < ihl + QUOTED_PAYLOAD_MIN {
        return Err(DropReason::Truncated);
    }
    let addr =
        |at: usize| Ipv4Addr::new(quoted[at], quoted[at + 1], quoted[at + 2], quoted[at + 3]);
    let tcp = &quoted[ihl..];
    let port = |at: usize| u16::from_be_bytes([tcp[at], tcp[at + 1]]);
    Ok(FragNeeded {
        meta: FrameMeta {
            src_mac: eth.src_mac(),
            dst_mac: eth.dst_mac(),
            src_ip: ip.src_addr(),
            dst_ip: ip.dst_addr(),
        },
        next_hop_mtu,
        local: SocketAddrV4::new(addr(12), port(0)),
        remote: SocketAddrV4::new(addr(16), port(2)),
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        quoted_len: u16::from_be_bytes([quoted[2], quoted[3]]),
    })
}

/// Builds the frame a router would send for `quoted` (an Ethernet/IPv4
/// frame we sent): outer IPv4 from `router` to the quoted source, the IP
/// header and first 8 payload bytes of the quoted datagram (RFC 792).
/// Returns the frame's length. For tests and the fuzz corpus; `buf` must
/// hold 14 + 20 + 8 + the quoted header + 8 bytes.
pub fn build_frag_needed(
    buf: &mut [u8],
    router_mac: [u8; 6],
    router: Ipv4Addr,
    quoted: &[u8],
    next_hop_mtu: u16,
) -> Option<usize> {
    use super::ethernet::{ETH_HEADER_LEN, write_header};
    let q = quoted.get(ETH_HEADER_LEN..)?;
    let ihl = usize::from(*q.first()? & 0x0f) * 4;
    let q = q.get(..ihl + QUOTED_PAYLOAD_MIN)?;
    let to_mac: [u8; 6] = quoted.get(6..12)?.try_into().ok()?;
    let to = Ipv4Addr::new(q[12], q[13], q[14], q[15]);
    let icmp_len = ICMP_HEADER_LEN + q.len();
    let total = ETH_HEADER_LEN + IPV4_HEADER_LEN + icmp_len;
    let buf = buf.get_mut(..total)?;
    write_header(buf, router_mac, to_mac, ETHERTYPE_IPV4);
    super::ipv4::write_header(&mut buf[ETH_HEADER_LEN..], router, to, icmp_len);
    let ip = &mut buf[ETH_HEADER_LEN..ETH_HEADER_LEN + IPV4_HEADER_LEN];
    ip[9] = PROTO_ICMP;
    ip[10..12].copy_from_slice(&[0, 0]);
    let c = checksum::checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let icmp = &mut buf[ETH_HEADER_LEN + IPV4_HEADER_LEN..];
    icmp[..ICMP_HEADER_LEN].copy_from_slice(&[
        TYPE_DEST_UNREACHABLE,
        CODE_FRAG_NEEDED,
        0,
        0,
        0,
        0,
        0,
        0,
    ]);
    icmp[6..8].copy_from_slice(&next_hop_mtu.to_be_bytes());
    icmp[ICMP_HEADER_LEN..].copy_from_slice(q);
    let c = checksum::checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Some(total)
}
