//! TCP options (RFC 9293 section 3.1): parse the ones turnstile uses, skip the
//! rest by length, and write them in the layout Linux sends.
//!
//! Kinds handled: EOL (0), NOP (1), MSS (2, RFC 9293 3.7.1), window scale
//! (3, RFC 7323 2), SACK-permitted (4, RFC 2018), timestamps (8, RFC 7323 3).
//! SACK blocks (5, RFC 2018 3). Unknown kinds are skipped by their length.
//!
//! Whether an option is allowed on a given segment (MSS and WS only on SYN,
//! RFC 9293 3.7.1 and RFC 7323 2.2) is the engine's decision, not ours: we
//! report what the header says.

use super::{DropReason, MAX_SACK_BLOCKS, TcpOptions, Timestamps};

const KIND_EOL: u8 = 0;
const KIND_NOP: u8 = 1;
const KIND_MSS: u8 = 2;
const KIND_WINDOW_SCALE: u8 = 3;
const KIND_SACK_PERMITTED: u8 = 4;
const KIND_SACK: u8 = 5;
const KIND_TIMESTAMPS: u8 = 8;

const LEN_MSS: usize = 4;
const LEN_WINDOW_SCALE: usize = 3;
const LEN_SACK_PERMITTED: usize = 2;
const LEN_TIMESTAMPS: usize = 10;

/// RFC 7323 section 2.3: "If a Window Scale option is received with a
/// shift.cnt value larger than 14, the TCP SHOULD log the error but MUST use
/// 14 instead of the specified value."
pub const MAX_WINDOW_SCALE: u8 = 14;

/// Largest option area a TCP header can hold (data offset 15).
pub const MAX_OPTIONS_LEN: usize = 40;

/// Parses the option bytes of a TCP header (between byte 20 and the data
/// offset).
///
/// A length byte < 2 or an option running past the header is
/// `BadTcpOptions` and the segment is dropped. RFC 9293 section 3.1 (MUST-7)
/// asks to be prepared for such "illegal option length (e.g., zero)" and
/// suggests resetting; Linux's `tcp_parse_options` merely stops parsing. We
/// drop: the header cannot be trusted, and a counted drop is visible. A known
/// kind with the wrong length is ignored, as Linux ignores it, rather than
/// failing the segment. A repeated option: the last one wins.
pub fn parse(mut bytes: &[u8]) -> Result<TcpOptions, DropReason> {
    let mut opts = TcpOptions::default();
    while let [kind, rest @ ..] = bytes {
        match *kind {
            KIND_EOL => break,
            KIND_NOP => {
                bytes = rest;
                continue;
            }
            _ => {}
        }
        let Some(&len) = rest.first() else {
            return Err(DropReason::BadTcpOptions);
        };
        let len = usize::from(len);
        if len < 2 || len > bytes.len() {
            return Err(DropReason::BadTcpOptions);
        }
        let body = &bytes[2..len];
        match (*kind, len) {
            (KIND_MSS, LEN_MSS) => opts.mss = Some(u16::from_be_bytes([body[0], body[1]])),
            (KIND_WINDOW_SCALE, LEN_WINDOW_SCALE) => {
                opts.window_scale = Some(body[0].min(MAX_WINDOW_SCALE));
            }
            (KIND_SACK_PERMITTED, LEN_SACK_PERMITTED) => opts.sack_permitted = true,
            (KIND_TIMESTAMPS, LEN_TIMESTAMPS) => {
                opts.timestamps = Some(Timestamps {
                    tsval: u32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                    tsecr: u32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                });
            }
            // RFC 2018 3: "Length: Variable", 8 bytes per block after kind and length.
            (KIND_SACK, _) if (len - 2) % 8 == 0 && len > 2 => {
                opts.sack = Default::default();
                for b in body.chunks_exact(8).take(MAX_SACK_BLOCKS) {
                    let left = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                    let right = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                    opts.sack.push(left, right);
                }
            }
            _ => {} // unknown kinds, known kinds of the wrong length
        }
        bytes = &bytes[len..];
    }
    Ok(opts)
}

/// Bytes [`write()`] emits for `opts`; always a multiple of 4, at most 40
/// (SACK blocks beyond what fits are the caller's to leave out: 3 beside
/// timestamps, 4 without).
pub const fn len(opts: &TcpOptions) -> usize {
    let mut n = 0;
    if opts.mss.is_some() {
        n += LEN_MSS;
    }
    if opts.timestamps.is_some() {
        // SACK_PERM rides in the two bytes Linux otherwise fills with NOPs.
        n += 2 + LEN_TIMESTAMPS;
    } else if opts.sack_permitted {
        n += 2 + LEN_SACK_PERMITTED;
    }
    if opts.window_scale.is_some() {
        n += 1 + LEN_WINDOW_SCALE;
    }
    if !opts.sack.is_empty() {
        n += 4 + 8 * opts.sack.len();
    }
    n
}

/// Writes `opts` at the start of `buf` in Linux's layout and returns the
/// length (equal to [`len()`]). Linux `tcp_options_write` (net/ipv4/tcp_output.c)
/// emits, in this order and each 4-byte aligned without extra padding:
///
/// ```text
/// MSS          02 04 mm mm
/// SACK_PERM+TS 04 02 08 0a <tsval> <tsecr>    or, without SACK_PERM:
/// TS           01 01 08 0a <tsval> <tsecr>
/// SACK_PERM    01 01 04 02                    (only when no TS)
/// WS           01 03 03 ss
/// SACK         01 01 05 ll <left> <right>...
/// ```
///
/// A SYN with everything is `mss sackOK TS nop wscale`, 20 bytes; an
/// established segment is `nop nop TS`, 12 bytes. Matching the layout lets a
/// kernel peer's fast path (`tcp_parse_aligned_timestamp`, which expects
/// `nop nop TS`) recognise our timestamps without the slow parser.
///
/// # Panics
/// If `buf` is shorter than `len(opts)`.
pub fn write(buf: &mut [u8], opts: &TcpOptions) -> usize {
    let mut at = 0;
    if let Some(mss) = opts.mss {
        let [hi, lo] = mss.to_be_bytes();
        buf[at..at + 4].copy_from_slice(&[KIND_MSS, LEN_MSS as u8, hi, lo]);
        at += 4;
    }
    if let Some(ts) = opts.timestamps {
        let lead = if opts.sack_permitted {
            [KIND_SACK_PERMITTED, LEN_SACK_PERMITTED as u8]
        } else {
            [KIND_NOP, KIND_NOP]
        };
        buf[at..at + 2].copy_from_slice(&lead);
        buf[at + 2..at + 4].copy_from_slice(&[KIND_TIMESTAMPS, LEN_TIMESTAMPS as u8]);
        buf[at + 4..at + 8].copy_from_slice(&ts.tsval.to_be_bytes());
        buf[at + 8..at + 12].copy_from_slice(&ts.tsecr.to_be_bytes());
        at += 12;
    } else if opts.sack_permitted {
        buf[at..at + 4].copy_from_slice(&[
            KIND_NOP,
            KIND_NOP,
            KIND_SACK_PERMITTED,
            LEN_SACK_PERMITTED as u8,
        ]);
        at += 4;
    }
    if let Some(shift) = opts.window_scale {
        buf[at..at + 4].copy_from_slice(&[
            KIND_NOP,
            KIND_WINDOW_SCALE,
            LEN_WINDOW_SCALE as u8,
            shift,
        ]);
        at += 4;
    }
    if !opts.sack.is_empty() {
        // Linux tcp_options_write: NOP, NOP, then kind 5 with 8 bytes a block.
        let n = opts.sack.len();
        buf[at..at + 4].copy_from_slice(&[KIND_NOP, KIND_NOP, KIND_SACK, (2 + 8 * n) as u8]);
        at += 4;
        for &(left, right) in opts.sack.as_slice() {
            buf[at..at + 4].copy_from_slice(&left.to_be_bytes());
            buf[at + 4..at + 8].copy_from_slice(&right.to_be_bytes());
            at += 8;
        }
    }
    at
}
