//! SYN cookies: a stateless SYN+ACK when the SYN queue is full.
//!
//! Our ISN carries the state: `count(5) | mss index(3) | MAC(24)`, with
//! `count` = time / 64 s and the MAC a keyed hash of the 4-tuple, the peer's ISN
//! and `count`. When the peer offered timestamps, our TSval's low 5 bits carry
//! its window scale (4 bits, 15 = none) and SACK-permitted (1 bit); the peer
//! echoes them in TSecr on the completing ACK (the scheme Linux uses).

use super::id::FourTuple;
use super::isn::Keys;
use super::seq::Seq;
use super::time::Instant;
use crate::wire::{TcpOptions, Timestamps};

/// MSS values a cookie can carry; the largest not above the peer's is chosen.
const MSS_TABLE: [u16; 8] = [216, 536, 1220, 1360, 1440, 1460, 4312, 8960];
/// Seconds per cookie time step.
const PERIOD_SECS: u64 = 64;
/// A cookie is valid for its own and the two previous periods (up to ~3 minutes).
const MAX_AGE: u32 = 2;
const WS_NONE: u32 = 0xf;

/// How long a cookie we sent can still come back valid: a listener that
/// overflowed within this long validates cookies, any other drops them.
pub(crate) const LIFETIME: std::time::Duration =
    std::time::Duration::from_secs((MAX_AGE as u64 + 1) * PERIOD_SECS);

fn count_at(now: Instant) -> u32 {
    (now.as_micros() / 1_000_000 / PERIOD_SECS) as u32
}

/// Our ISN for a cookie SYN+ACK answering a SYN with `peer_isn` and `peer_mss`.
pub(crate) fn encode_isn(
    keys: &Keys,
    tuple: FourTuple,
    peer_isn: Seq,
    peer_mss: u16,
    now: Instant,
) -> Seq {
    let idx = MSS_TABLE.iter().rposition(|&m| m <= peer_mss).unwrap_or(0) as u32;
    let count = count_at(now);
    let mac = keys.cookie_mac(tuple, peer_isn, count) & 0x00ff_ffff;
    Seq(((count & 0x1f) << 27) | (idx << 24) | mac)
}

/// Our TSval for a cookie SYN+ACK: the clock with its low 5 bits replaced by
/// the options, never above the clock (so later TSvals stay monotonic).
pub(crate) fn encode_tsval(clock: u32, window_scale: Option<u8>, sack: bool) -> u32 {
    let ws = window_scale.map_or(WS_NONE, |w| u32::from(w.min(14)));
    let bits = (ws << 1) | u32::from(sack);
    let v = (clock & !0x1f) | bits;
    if (v.wrapping_sub(clock) as i32) > 0 {
        v.wrapping_sub(0x20)
    } else {
        v
    }
}

/// Check the ACK completing a cookie handshake (`ack` = our ISN + 1, `seq` = the
/// peer's ISN + 1). On success, the peer's SYN options as far as the cookie
/// recorded them, for `options::negotiate`.
pub(crate) fn decode(
    keys: &Keys,
    tuple: FourTuple,
    seq: Seq,
    ack: Seq,
    timestamps: Option<Timestamps>,
    clock: u32,
    now: Instant,
) -> Option<TcpOptions> {
    let cookie = (ack - 1u32).0;
    let peer_isn = seq - 1u32;
    let now_count = count_at(now);
    let c5 = cookie >> 27;
    let age = now_count.wrapping_sub(c5) & 0x1f;
    if age > MAX_AGE {
        return None;
    }
    let count = now_count.wrapping_sub(age);
    if keys.cookie_mac(tuple, peer_isn, count) & 0x00ff_ffff != cookie & 0x00ff_ffff {
        return None;
    }
    let mss = MSS_TABLE[((cookie >> 24) & 7) as usize];
    let mut opts = TcpOptions {
        mss: Some(mss),
        ..TcpOptions::default()
    };
    if let Some(ts) = timestamps {
        // The echoed TSval must be one we could have sent recently.
        let age_ms = clock.wrapping_sub(ts.tsecr);
        if age_ms > (MAX_AGE + 1) * PERIOD_SECS as u32 * 1000 {
            return None;
        }
        let ws = (ts.tsecr >> 1) & 0xf;
        opts.window_scale = (ws != WS_NONE).then_some(ws as u8);
        opts.sack_permitted = ts.tsecr & 1 == 1;
        opts.timestamps = Some(ts);
    }
    Some(opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn tuple() -> FourTuple {
        FourTuple {
            local: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 80),
            remote: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 40000),
        }
    }

    #[test]
    fn roundtrip_with_timestamps() {
        let k = Keys::new([3; 16]);
        let now = Instant::from_secs(1000);
        let isn = encode_isn(&k, tuple(), Seq(77), 1460, now);
        let clock = 123_456;
        let tsval = encode_tsval(clock, Some(7), true);
        assert!(tsval <= clock && clock - tsval < 64);
        let ts = Timestamps {
            tsval: 9,
            tsecr: tsval,
        };
        let later = Instant::from_secs(1100);
        let o = decode(
            &k,
            tuple(),
            Seq(78),
            isn + 1u32,
            Some(ts),
            clock + 100_000,
            later,
        )
        .unwrap();
        assert_eq!(o.mss, Some(1460));
        assert_eq!(o.window_scale, Some(7));
        assert!(o.sack_permitted);
        assert_eq!(o.timestamps, Some(ts));
    }

    #[test]
    fn without_timestamps_only_mss() {
        let k = Keys::new([3; 16]);
        let now = Instant::from_secs(5);
        let isn = encode_isn(&k, tuple(), Seq(1), 1400, now);
        let o = decode(&k, tuple(), Seq(2), isn + 1u32, None, 0, now).unwrap();
        assert_eq!(o.mss, Some(1360));
        assert_eq!(o.window_scale, None);
    }

    #[test]
    fn rejects_forgery_staleness_and_other_tuples() {
        let k = Keys::new([3; 16]);
        let now = Instant::from_secs(1000);
        let isn = encode_isn(&k, tuple(), Seq(1), 1460, now);
        assert!(decode(&k, tuple(), Seq(2), isn + 2u32, None, 0, now).is_none());
        assert!(decode(&k, tuple(), Seq(3), isn + 1u32, None, 0, now).is_none());
        let mut other = tuple();
        other.remote.set_port(40001);
        assert!(decode(&k, other, Seq(2), isn + 1u32, None, 0, now).is_none());
        let late = Instant::from_secs(1000 + 64 * 4);
        assert!(decode(&k, tuple(), Seq(2), isn + 1u32, None, 0, late).is_none());
        assert!(
            decode(
                &Keys::new([4; 16]),
                tuple(),
                Seq(2),
                isn + 1u32,
                None,
                0,
                now
            )
            .is_none()
        );
    }
}
