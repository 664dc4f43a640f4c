//! Keyed functions of the 4-tuple: ISNs (RFC 6528), timestamp offsets (RFC 7323 5.4),
//! ephemeral-port offsets (RFC 6056 3.3.3) and SYN-cookie MACs.
//!
//! One SipHash-1-3 key (the endpoint's secret) with a domain byte per use, so the
//! values are unrelated to each other and unpredictable off-path.

use super::id::FourTuple;
use super::seq::Seq;
use super::time::Instant;
use siphasher::sip::SipHasher13;
use std::net::Ipv4Addr;

const DOMAIN_ISN: u8 = 1;
const DOMAIN_TS: u8 = 2;
const DOMAIN_PORT: u8 = 3;
const DOMAIN_COOKIE: u8 = 4;
const DOMAIN_CHALLENGE: u8 = 5;

/// The endpoint's secret, turned into the keyed functions the engine needs.
#[derive(Clone)]
pub(crate) struct Keys {
    sip: SipHasher13,
}

impl Keys {
    pub(crate) fn new(secret: [u8; 16]) -> Self {
        Keys {
            sip: SipHasher13::new_with_key(&secret),
        }
    }

    fn hash(&self, domain: u8, tuple: &[u8; 12], extra: u64) -> u64 {
        let mut b = [0u8; 21];
        b[0] = domain;
        b[1..13].copy_from_slice(tuple);
        b[13..21].copy_from_slice(&extra.to_le_bytes());
        self.sip.hash(&b)
    }

    /// The challenge-ACK budget of TIME-WAIT entries for `second`: in
    /// [limit/2, limit/2 + limit), unpredictable without the secret.
    pub(crate) fn challenge_budget(&self, second: u32, limit: u32) -> u32 {
        let half = limit.div_ceil(2);
        half + (self.hash(DOMAIN_CHALLENGE, &[0; 12], u64::from(second)) % u64::from(limit.max(1)))
            as u32
    }

    /// RFC 6528 3: ISN = M + F(localip, localport, remoteip, remoteport, secretkey),
    /// M a timer ticking every 4 microseconds.
    pub(crate) fn isn(&self, tuple: FourTuple, now: Instant) -> Seq {
        let m = (now.as_micros() / 4) as u32;
        let f = self.hash(DOMAIN_ISN, &tuple.to_bytes(), 0) as u32;
        Seq(m.wrapping_add(f))
    }

    /// RFC 7323 5.4 / 7.1: a per-tuple offset added to our 1 ms timestamp clock, so
    /// TSvals are monotonic per tuple (across incarnations) but unrelated between tuples.
    pub(crate) fn ts_offset(&self, tuple: FourTuple) -> u32 {
        self.hash(DOMAIN_TS, &tuple.to_bytes(), 0) as u32
    }

    /// RFC 6056 3.3.3-style starting point in the port range for one destination.
    pub(crate) fn port_offset(&self, local: Ipv4Addr, remote: Ipv4Addr, remote_port: u16) -> u32 {
        let mut t = [0u8; 12];
        t[0..4].copy_from_slice(&local.octets());
        t[6..10].copy_from_slice(&remote.octets());
        t[10..12].copy_from_slice(&remote_port.to_be_bytes());
        self.hash(DOMAIN_PORT, &t, 0) as u32
    }

    /// MAC of a SYN cookie: tuple, the peer's ISN and the cookie's time counter.
    pub(crate) fn cookie_mac(&self, tuple: FourTuple, peer_isn: Seq, count: u32) -> u32 {
        let extra = (u64::from(peer_isn.0) << 32) | u64::from(count);
        self.hash(DOMAIN_COOKIE, &tuple.to_bytes(), extra) as u32
    }
}

/// Our RFC 7323 timestamp clock: 1 ms ticks plus the tuple's offset.
pub(crate) fn ts_clock(now: Instant, offset: u32) -> u32 {
    (now.as_millis() as u32).wrapping_add(offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddrV4;

    fn tuple(port: u16) -> FourTuple {
        FourTuple {
            local: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), port),
            remote: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 80),
        }
    }

    #[test]
    fn isn_advances_with_the_4us_clock() {
        let k = Keys::new([7; 16]);
        let t = tuple(40000);
        let a = k.isn(t, Instant::from_micros(1_000_000));
        let b = k.isn(t, Instant::from_micros(1_000_400));
        assert_eq!(b - a, 100);
    }

    #[test]
    fn keyed_values_depend_on_key_and_tuple() {
        let k1 = Keys::new([1; 16]);
        let k2 = Keys::new([2; 16]);
        let now = Instant::from_secs(1);
        assert_ne!(k1.isn(tuple(1), now), k2.isn(tuple(1), now));
        assert_ne!(k1.isn(tuple(1), now), k1.isn(tuple(2), now));
        assert_ne!(k1.ts_offset(tuple(1)), k1.ts_offset(tuple(2)));
        assert_ne!(k1.ts_offset(tuple(1)), k1.isn(tuple(1), Instant::ZERO).0);
        assert_ne!(
            k1.cookie_mac(tuple(1), Seq(5), 1),
            k1.cookie_mac(tuple(1), Seq(5), 2)
        );
    }

    #[test]
    fn ts_clock_ticks_per_millisecond() {
        assert_eq!(ts_clock(Instant::from_millis(10), 5), 15);
        assert_eq!(ts_clock(Instant::from_micros(10_999), u32::MAX), 9);
    }
}
