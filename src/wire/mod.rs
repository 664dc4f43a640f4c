//! Zero-copy views and builders for Ethernet II, IPv4 and TCP (with options).
//!
//! The lowest layer: it knows frames and headers, never connections.
//! The types in this file are the contract shared by `tcp/` and `shard/`;
//! each header and concern has its own module:
//!
//! - [`checksum`]: RFC 1071 sum, pseudo-header, RFC 1624 incremental update
//! - [`ethernet`], [`ipv4`], [`tcp`]: checked views and header writers
//! - [`options`]: TCP option parsing and Linux-layout emission
//! - [`frame`]: [`parse_frame`] and [`build_frame`] for a whole frame
//! - [`icmp`]: "fragmentation needed" quoting one of our segments (PMTU discovery)
//! - [`patch`]: in-place field edits with RFC 1624 checksum updates
//! - [`drop_reason`]: why a received frame was dropped, with metric labels
//!
//! Nothing here allocates: views borrow the rx buffer, builders write into
//! the caller's tx buffer.

use std::net::Ipv4Addr;

pub mod checksum;
pub mod drop_reason;
pub mod ethernet;
pub mod frame;
pub mod icmp;
pub mod ipv4;
pub mod options;
pub mod patch;
pub mod tcp;

#[cfg(test)]
mod tests;

pub use drop_reason::DropReason;
pub use ethernet::ETH_HEADER_LEN;
pub use frame::{
    BuildError, DATA_PAYLOAD_AT, MAX_HEADER_LEN, build_frame, frame_header_len, parse_frame,
    peek_tcp_flow, tcp_header_len,
};
pub use ipv4::IPV4_HEADER_LEN;
pub use patch::TcpFrameMut;

/// TCP control bits as they sit in byte 13 of the header.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: Self = Self(0x01);
    pub const SYN: Self = Self(0x02);
    pub const RST: Self = Self(0x04);
    pub const PSH: Self = Self(0x08);
    pub const ACK: Self = Self(0x10);
    pub const URG: Self = Self(0x20);
    pub const ECE: Self = Self(0x40);
    pub const CWR: Self = Self(0x80);
    pub const NONE: Self = Self(0);

    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
    pub const fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
    pub const fn without(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }
}

impl std::ops::BitOr for TcpFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

impl std::fmt::Debug for TcpFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const NAMES: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
        let mut first = true;
        for (i, name) in NAMES.iter().enumerate() {
            if self.0 & (1 << i) != 0 {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("-")?;
        }
        Ok(())
    }
}

/// RFC 7323 timestamps option values.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Timestamps {
    pub tsval: u32,
    pub tsecr: u32,
}

/// RFC 2018 3: "the option can contain at most 4 blocks" (40 bytes of option
/// space, 3 when timestamps take 12 of them).
pub const MAX_SACK_BLOCKS: usize = 4;

/// The SACK blocks of one segment, `[left edge, right edge)` as sent (the
/// first is the most recent, RFC 2018 4). Inline: no allocation per segment.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct SackBlocks {
    len: u8,
    blocks: [(u32, u32); MAX_SACK_BLOCKS],
}

impl SackBlocks {
    pub const EMPTY: SackBlocks = SackBlocks {
        len: 0,
        blocks: [(0, 0); MAX_SACK_BLOCKS],
    };

    /// Adds a block; false (and nothing added) once `MAX_SACK_BLOCKS` are held.
    pub fn push(&mut self, left: u32, right: u32) -> bool {
        if usize::from(self.len) == MAX_SACK_BLOCKS {
            return false;
        }
        self.blocks[usize::from(self.len)] = (left, right);
        self.len += 1;
        true
    }

    pub const fn len(&self) -> usize {
        self.len as usize
    }

    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[(u32, u32)] {
        &self.blocks[..usize::from(self.len)]
    }

    /// Keeps the first `n` blocks.
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n as u8);
    }
}

/// The TCP options turnstile understands; others are skipped by length on parse.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct TcpOptions {
    pub mss: Option<u16>,
    pub window_scale: Option<u8>,
    pub sack_permitted: bool,
    pub timestamps: Option<Timestamps>,
    /// SACK blocks (kind 5, RFC 2018 3).
    pub sack: SackBlocks,
}

/// A TCP header in host terms (ports, numbers, flags, window, options).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct TcpRepr {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
    pub window: u16,
    pub options: TcpOptions,
}

/// Link and network addressing of one frame.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FrameMeta {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
}

/// A received Ethernet/IPv4/TCP frame, checked and borrowed from the rx buffer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ParsedFrame<'a> {
    pub meta: FrameMeta,
    pub tcp: TcpRepr,
    pub payload: &'a [u8],
}
