//! Tests of the wire layer, one file per kind:
//! - `malformed`: every drop reason, hand-built cases
//! - `roundtrip`: build then parse, option layouts, payload moves
//! - `checksum`: RFC 1071 differential and RFC 1624 incremental tests
//! - `captured`: real frames captured from Linux
//! - `icmp`: "fragmentation needed" parse, build, corruptions
//! - `patch`: in-place edits with incremental checksums equal a rebuild
//! - `props`: property tests over generated headers and corruptions

use std::net::Ipv4Addr;

use super::{FrameMeta, TcpFlags, TcpOptions, TcpRepr, Timestamps};

mod captured;
mod checksum;
mod icmp;
mod malformed;
mod patch;
mod props;
mod roundtrip;

pub(super) const META: FrameMeta = FrameMeta {
    src_mac: [0x02, 0, 0, 0, 0, 0x01],
    dst_mac: [0x02, 0, 0, 0, 0, 0x02],
    src_ip: Ipv4Addr::new(198, 18, 0, 1),
    dst_ip: Ipv4Addr::new(198, 18, 0, 2),
};

/// A data segment as the engine sends one: ACK|PSH with timestamps.
pub(super) const DATA: TcpRepr = TcpRepr {
    src_port: 40000,
    dst_port: 80,
    seq: 0x0102_0304,
    ack: 0xA0B0_C0D0,
    flags: TcpFlags(TcpFlags::ACK.0 | TcpFlags::PSH.0),
    window: 502,
    options: TcpOptions {
        sack: crate::wire::SackBlocks::EMPTY,
        mss: None,
        window_scale: None,
        sack_permitted: false,
        timestamps: Some(Timestamps {
            tsval: 1000,
            tsecr: 2000,
        }),
    },
};

/// A SYN with every option we send.
pub(super) const SYN: TcpRepr = TcpRepr {
    flags: TcpFlags::SYN,
    ack: 0,
    options: TcpOptions {
        sack: crate::wire::SackBlocks::EMPTY,
        mss: Some(1460),
        window_scale: Some(7),
        sack_permitted: true,
        timestamps: Some(Timestamps {
            tsval: 1000,
            tsecr: 0,
        }),
    },
    ..DATA
};

/// Builds `repr` with `payload` into a fresh buffer and returns the frame.
pub(super) fn build(meta: &FrameMeta, repr: &TcpRepr, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; super::MAX_HEADER_LEN + payload.len()];
    buf[super::MAX_HEADER_LEN..].copy_from_slice(payload);
    let len = super::build_frame(&mut buf, meta, repr, super::MAX_HEADER_LEN, payload.len())
        .expect("buffer sized for the frame");
    buf.truncate(len);
    buf
}

/// Recomputes the IPv4 header checksum of a frame (after a test edits it).
pub(super) fn fix_ip_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[14] & 0x0F) * 4;
    frame[24..26].copy_from_slice(&[0, 0]);
    let csum = super::checksum::checksum(&frame[14..14 + ihl]);
    frame[24..26].copy_from_slice(&csum.to_be_bytes());
}

/// Recomputes the TCP checksum of a frame with a 20-byte IPv4 header.
pub(super) fn fix_tcp_checksum(frame: &mut [u8]) {
    let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    let src = Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]);
    let dst = Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]);
    super::tcp::fill_checksum(&mut frame[34..14 + total], src, dst);
}
