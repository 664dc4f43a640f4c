//! Path MTU discovery for IPv4 (RFC 1191, with RFC 8201's rules where they
//! carry over): an ICMP "fragmentation needed" quoting one of our segments
//! lowers this connection's MSS, and what was sent too large is sent again
//! in segments that fit.

use super::{Connection, Ctx};
use crate::tcp::options::TS_OPTION_LEN;
use crate::tcp::seq::Seq;
use crate::tcp::state::State;

/// IPv4 and TCP headers without options.
const HEADERS: u16 = 40;
/// The smallest path MTU we believe (Linux's `net.ipv4.route.min_pmtu`):
/// an ICMP message claiming less is a resource attack (RFC 5927 section 7.2
/// calls for such a floor), and we clamp to this instead of obeying it.
pub(crate) const MIN_PMTU: u16 = 552;

/// RFC 1191 section 7, table 7-1: MTU plateaus, for routers that report no
/// next-hop MTU (the field is 0): the largest plateau below what did not fit.
const PLATEAUS: [u16; 10] = [32000, 17914, 8166, 4352, 2002, 1492, 1006, 508, 296, 68];

/// What an ICMP "fragmentation needed" did to the connection it quoted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PmtuOutcome {
    /// The MSS fell; data in flight is being sent again in smaller segments.
    Lowered,
    /// The quoted sequence number is not in flight (RFC 5927 section 4.1):
    /// stale, or forged by someone who does not see the flow.
    NotInFlight,
    /// The reported MTU is not below what the connection already uses.
    NotLower,
}

/// The MTU a "fragmentation needed" reports: the next-hop MTU, or without
/// one (RFC 1191 section 5: 0 from older routers) the plateau below the
/// quoted datagram's length; never below [`MIN_PMTU`]. A next-hop MTU that
/// is not lower than the one in use is ignored by the caller.
pub(crate) fn reported_mtu(next_hop_mtu: u16, quoted_len: u16) -> u16 {
    let mtu = if next_hop_mtu >= 68 {
        next_hop_mtu
    } else {
        PLATEAUS
            .iter()
            .copied()
            .find(|&p| p < quoted_len)
            .unwrap_or(68)
    };
    mtu.max(MIN_PMTU)
}

impl Connection {
    /// RFC 1191 section 6.1 / RFC 5927 section 4.1: `seq` is the quoted
    /// segment's sequence number, `mtu` from [`reported_mtu`].
    pub(crate) fn on_frag_needed(&mut self, seq: u32, mtu: u16, ctx: &mut Ctx<'_>) -> PmtuOutcome {
        let seq = Seq(seq);
        // RFC 5927 4.1: "validate that the sequence number in the TCP header
        // of the payload of the ICMP error message is within the range
        // SND.UNA =< SEG.SEQ < SND.NXT". SND.MAX here: after a timeout SND.NXT
        // is rewound, and what was sent beyond it is still in flight.
        let in_flight = self.state.is_synchronized() && seq >= self.snd_una && seq < self.snd_max;
        if !in_flight {
            return PmtuOutcome::NotInFlight;
        }
        let options = if self.neg.timestamps {
            TS_OPTION_LEN
        } else {
            0
        };
        let mss = mtu.saturating_sub(HEADERS + options);
        if mss >= self.neg.snd_mss {
            return PmtuOutcome::NotLower;
        }
        self.neg.snd_mss = mss;
        ctx.stats.pmtu_lowered += 1;
        // As Linux's tcp_simple_retransmit: everything in flight that was
        // cut to the old MSS is presumed lost and goes again at once, in
        // segments of the new one (the send buffer is cut at transmit time).
        // Not a congestion signal: cwnd stays.
        self.rtt_timing = None;
        if self.state != State::SynSent && self.snd_max > self.snd_una {
            if self.neg.sack {
                let (una, max) = (self.snd_una, self.snd_max);
                self.scoreboard().on_rto(una, max, false);
                self.fast_rexmit = true;
            } else {
                self.snd_nxt = self.snd_una;
            }
        }
        PmtuOutcome::Lowered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_hop_mtu_is_used_when_given_and_plausible() {
        assert_eq!(reported_mtu(1280, 1500), 1280);
        assert_eq!(reported_mtu(1400, 1500), 1400);
    }

    #[test]
    fn routers_without_rfc_1191_get_the_plateau_below_the_datagram() {
        assert_eq!(reported_mtu(0, 1500), 1492);
        assert_eq!(reported_mtu(0, 1492), 1006);
        assert_eq!(reported_mtu(1500, 1500), 1500);
    }

    #[test]
    fn no_mtu_below_the_floor_is_believed() {
        assert_eq!(reported_mtu(68, 1500), MIN_PMTU);
        assert_eq!(reported_mtu(1, 1500), 1492);
        assert_eq!(reported_mtu(0, 300), MIN_PMTU);
        assert_eq!(reported_mtu(0, 0), MIN_PMTU);
    }
}
