//! In-place edits of a frame already built (or received), with the TCP
//! checksum updated incrementally per RFC 1624 instead of re-summed.
//!
//! Why: a retransmission can reuse a frame still in the UMEM and refresh only
//! what went stale since it was built: the acknowledgment number and window
//! (what Linux does on retransmit, so the peer is not fed old values) and the
//! timestamps (RFC 7323 section 3.2: TSval is the timestamp clock when the
//! segment is sent). Re-summing costs a pass over up to 1.5 KB of payload;
//! patching costs a few additions per changed field.

use super::checksum::{update_checksum, update_checksum_u32};
use super::ethernet::{ETH_HEADER_LEN, ETHERTYPE_IPV4};
use super::{DropReason, Timestamps};

/// Offsets inside the TCP header.
const SEQ_AT: usize = 4;
const ACK_AT: usize = 8;
const WINDOW_AT: usize = 14;
const CHECKSUM_AT: usize = 16;

/// A mutable view of an Ethernet/IPv4/TCP frame whose TCP header fields can
/// be rewritten with incremental checksum updates.
///
/// Construction checks only what the edits need (that the TCP header and its
/// options lie inside the frame); it does not verify checksums: a frame with
/// a wrong checksum stays wrong by exactly the same amount.
#[derive(Debug)]
pub struct TcpFrameMut<'a> {
    frame: &'a mut [u8],
    tcp_at: usize,
    tcp_header_len: usize,
}

impl<'a> TcpFrameMut<'a> {
    pub fn new(frame: &'a mut [u8]) -> Result<Self, DropReason> {
        if frame.len() < ETH_HEADER_LEN + 20 {
            return Err(DropReason::Truncated);
        }
        if u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_IPV4 {
            return Err(DropReason::NotIpv4);
        }
        let ihl = usize::from(frame[ETH_HEADER_LEN] & 0x0F) * 4;
        if ihl < 20 {
            return Err(DropReason::BadIpHeader);
        }
        let tcp_at = ETH_HEADER_LEN + ihl;
        if frame.len() < tcp_at + 20 {
            return Err(DropReason::Truncated);
        }
        let tcp_header_len = usize::from(frame[tcp_at + 12] >> 4) * 4;
        if tcp_header_len < 20 || frame.len() < tcp_at + tcp_header_len {
            return Err(DropReason::BadTcpHeader);
        }
        Ok(Self {
            frame,
            tcp_at,
            tcp_header_len,
        })
    }

    pub fn set_seq(&mut self, seq: u32) {
        self.set_u32(SEQ_AT, seq);
    }

    pub fn set_ack(&mut self, ack: u32) {
        self.set_u32(ACK_AT, ack);
    }

    pub fn set_window(&mut self, window: u16) {
        let at = self.tcp_at + WINDOW_AT;
        let old = u16::from_be_bytes([self.frame[at], self.frame[at + 1]]);
        self.frame[at..at + 2].copy_from_slice(&window.to_be_bytes());
        let csum = update_checksum(self.checksum(), old, window);
        self.set_checksum(csum);
    }

    /// Rewrites the timestamps option in place. Returns false, changing
    /// nothing, when the header has no well-formed timestamps option.
    ///
    /// The option's values may sit at any even or odd offset (another
    /// stack's layout); we only patch the 4-byte-aligned layouts we and Linux
    /// send, where each 32-bit value starts at an even offset and is
    /// therefore two whole checksum words.
    pub fn set_timestamps(&mut self, ts: Timestamps) -> bool {
        let Some(at) = self.timestamps_at() else {
            return false;
        };
        self.set_u32(at, ts.tsval);
        self.set_u32(at + 4, ts.tsecr);
        true
    }

    /// Offset (from the TCP header) of TSval, when the option is present and
    /// its values start at an even offset.
    fn timestamps_at(&self) -> Option<usize> {
        let options = &self.frame[self.tcp_at + 20..self.tcp_at + self.tcp_header_len];
        let mut i = 0;
        while i < options.len() {
            match options[i] {
                0 => return None,
                1 => i += 1,
                kind => {
                    let len = usize::from(*options.get(i + 1)?);
                    if len < 2 || i + len > options.len() {
                        return None;
                    }
                    if kind == 8 && len == 10 {
                        let at = 20 + i + 2;
                        return (at % 2 == 0).then_some(at);
                    }
                    i += len;
                }
            }
        }
        None
    }

    fn set_u32(&mut self, offset: usize, value: u32) {
        let at = self.tcp_at + offset;
        let f = &mut self.frame[at..at + 4];
        let old = u32::from_be_bytes([f[0], f[1], f[2], f[3]]);
        f.copy_from_slice(&value.to_be_bytes());
        let csum = update_checksum_u32(self.checksum(), old, value);
        self.set_checksum(csum);
    }

    fn checksum(&self) -> u16 {
        let at = self.tcp_at + CHECKSUM_AT;
        u16::from_be_bytes([self.frame[at], self.frame[at + 1]])
    }

    fn set_checksum(&mut self, csum: u16) {
        let at = self.tcp_at + CHECKSUM_AT;
        self.frame[at..at + 2].copy_from_slice(&csum.to_be_bytes());
    }
}
