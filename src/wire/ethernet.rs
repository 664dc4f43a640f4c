//! Ethernet II header (IEEE 802.3 clause 3.2.6 framing, "DIX" EtherType).
//!
//! No VLAN tags: AF_XDP hands us frames after the NIC stripped them (or the
//! XDP program passed tagged frames to the kernel), so a tagged frame shows
//! up here as a non-IPv4 EtherType and is dropped as `NotIpv4`.

use super::DropReason;

pub const ETH_HEADER_LEN: usize = 14;

/// EtherType of IPv4 (RFC 894).
pub const ETHERTYPE_IPV4: u16 = 0x0800;

/// A checked view of an Ethernet II header; the frame is at least 14 bytes.
#[derive(Clone, Copy, Debug)]
pub struct EthernetFrame<'a> {
    bytes: &'a [u8],
}

impl<'a> EthernetFrame<'a> {
    /// Checks that the frame holds a whole Ethernet header.
    pub fn new_checked(bytes: &'a [u8]) -> Result<Self, DropReason> {
        if bytes.len() < ETH_HEADER_LEN {
            return Err(DropReason::Truncated);
        }
        Ok(Self { bytes })
    }

    pub fn dst_mac(&self) -> [u8; 6] {
        mac_at(self.bytes, 0)
    }

    pub fn src_mac(&self) -> [u8; 6] {
        mac_at(self.bytes, 6)
    }

    pub fn ethertype(&self) -> u16 {
        u16::from_be_bytes([self.bytes[12], self.bytes[13]])
    }

    /// Everything after the header, including any Ethernet padding.
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[ETH_HEADER_LEN..]
    }
}

fn mac_at(bytes: &[u8], at: usize) -> [u8; 6] {
    let mut mac = [0; 6];
    mac.copy_from_slice(&bytes[at..at + 6]);
    mac
}

/// Writes an Ethernet II header into the first 14 bytes of `buf`.
///
/// # Panics
/// If `buf` is shorter than 14 bytes; callers size the buffer first.
pub fn write_header(buf: &mut [u8], src_mac: [u8; 6], dst_mac: [u8; 6], ethertype: u16) {
    buf[0..6].copy_from_slice(&dst_mac);
    buf[6..12].copy_from_slice(&src_mac);
    buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
}
