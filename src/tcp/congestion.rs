//! NewReno congestion control (RFC 5681, RFC 6582) in bytes, and the choice
//! between it and the model-based controller (`bbr.rs`).
//!
//! NewReno's state here also carries loss recovery's bookkeeping (the
//! recovery point, duplicate ACKs, whether recovery runs) for either
//! controller; with [`Congestion::Bbr`] the model sets `cwnd` after every
//! ACK and timeout (src/tcp/connection/congestion.rs).

use super::seq::Seq;

/// Which congestion controller new connections use (`Config::congestion`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Congestion {
    /// RFC 5681 / RFC 6582 (RFC 6675 with SACK), multiplicative decrease
    /// 0.7: the default.
    #[default]
    NewReno,
    /// A model of the path's bandwidth and RTT in the manner of BBR v1
    /// (src/tcp/bbr.rs): random loss does not cut the window; paced.
    Bbr,
}

impl Congestion {
    /// The configuration spelling: `newreno` or `bbr`.
    pub fn name(self) -> &'static str {
        match self {
            Congestion::NewReno => "newreno",
            Congestion::Bbr => "bbr",
        }
    }
}

impl std::str::FromStr for Congestion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "newreno" => Ok(Congestion::NewReno),
            "bbr" => Ok(Congestion::Bbr),
            _ => Err(format!(
                "congestion control {s:?}: expected \"newreno\" or \"bbr\""
            )),
        }
    }
}

/// Congestion window state of one connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NewReno {
    pub(crate) cwnd: u32,
    pub(crate) ssthresh: u32,
    /// RFC 6582 3.2: highest sequence sent when loss recovery (or a timeout)
    /// began; `None` once SND.UNA has passed it. RFC 6582 initialises it to
    /// ISS, but a sequence number only orders against another less than 2^31
    /// away: a fixed `recover` compares as ahead of SND.UNA again after 2^31
    /// loss-free bytes and would turn fast retransmit off for the next 2^31.
    /// So it is compared only while it can still be ahead, and forgotten once
    /// an ACK reaches it (every ACK moves SND.UNA by less than 2^31).
    pub(crate) recover: Option<Seq>,
    pub(crate) in_recovery: bool,
    pub(crate) dupacks: u8,
    /// RFC 5681 3.1 appropriate byte counting in congestion avoidance.
    bytes_acked: u32,
}

/// The multiplicative decrease on entering loss recovery: RFC 9438 4.6
/// (CUBIC) "beta_cubic ... SHOULD be set to 0.7", where RFC 5681 halves.
/// Recovery episodes are frequent on a lossy path (about one per 20 KiB
/// at 5% loss) and each halving leaves the window far below the path's
/// capacity for many round trips; 0.7 keeps more in flight, as Linux's
/// default CUBIC does. A retransmission timeout still halves (RFC 5681 eq.
/// 4) and collapses cwnd to one segment.
pub(crate) const BETA_NUM: u32 = 7;
pub(crate) const BETA_DEN: u32 = 10;

/// `flight` reduced by beta, at least two segments (RFC 5681 eq. 4's floor).
fn reduced(flight: u32, mss: u32) -> u32 {
    ((u64::from(flight) * u64::from(BETA_NUM) / u64::from(BETA_DEN)) as u32).max(2 * mss)
}

/// What the sender should do after an ACK.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum AckAction {
    None,
    /// Retransmit the segment at SND.UNA now (fast retransmit or a partial ACK).
    RetransmitFirst,
}

impl NewReno {
    /// RFC 6928: IW = min(10*MSS, max(2*MSS, 14600)).
    pub(crate) fn new(mss: u32) -> Self {
        NewReno {
            cwnd: (10 * mss).min((2 * mss).max(14600)),
            ssthresh: u32::MAX,
            recover: None,
            in_recovery: false,
            dupacks: 0,
            bytes_acked: 0,
        }
    }

    /// New data acknowledged: `acked` bytes, `ack` the new SND.UNA, `flight` bytes
    /// outstanding before this ACK.
    pub(crate) fn on_new_ack(&mut self, acked: u32, ack: Seq, flight: u32, mss: u32) -> AckAction {
        self.dupacks = 0;
        let passed = self.recover.is_some_and(|r| ack >= r);
        if passed {
            self.recover = None;
        }
        if self.in_recovery {
            if passed || self.recover.is_none() {
                // RFC 6582 3.2 step 3 (full ACK): deflate.
                self.in_recovery = false;
                let remaining = flight.saturating_sub(acked);
                self.cwnd = self.ssthresh.min(remaining.max(mss) + mss);
                return AckAction::None;
            }
            // Partial ACK: retransmit the next hole, deflate by the amount acked,
            // add back one MSS if at least one was acked (RFC 6582 3.2 step 4).
            self.cwnd = self.cwnd.saturating_sub(acked);
            if acked >= mss {
                self.cwnd = self.cwnd.saturating_add(mss);
            }
            self.cwnd = self.cwnd.max(mss);
            return AckAction::RetransmitFirst;
        }
        self.grow(acked, mss);
        AckAction::None
    }

    fn grow(&mut self, acked: u32, mss: u32) {
        if self.cwnd < self.ssthresh {
            // RFC 5681 3.1 slow start (with L = 1 SMSS per ACK, RFC 3465 style).
            self.cwnd = self.cwnd.saturating_add(acked.min(mss));
        } else {
            // Congestion avoidance: one MSS per cwnd of data acknowledged.
            self.bytes_acked = self.bytes_acked.saturating_add(acked);
            if self.bytes_acked >= self.cwnd {
                self.bytes_acked -= self.cwnd;
                self.cwnd = self.cwnd.saturating_add(mss);
            }
        }
    }

    /// New data acknowledged on a connection that uses SACK (RFC 6675): no
    /// inflation or deflation in recovery, where the scoreboard's pipe
    /// governs what is sent; recovery ends when SND.UNA reaches `recover`.
    pub(crate) fn on_new_ack_sack(&mut self, acked: u32, ack: Seq, mss: u32) {
        self.dupacks = 0;
        if self.recover.is_some_and(|r| ack >= r) {
            self.recover = None;
            if self.in_recovery {
                // RFC 6675 5 (6): "... the TCP MUST exit loss recovery"; cwnd
                // is ssthresh from entry.
                self.in_recovery = false;
                self.cwnd = self.ssthresh;
                return;
            }
        }
        if !self.in_recovery {
            self.grow(acked, mss);
        }
    }

    /// A loss recovery episode may begin at SND.UNA `una` (RFC 6675 5 (4):
    /// not while a previous episode's or a timeout's `recover` is ahead).
    pub(crate) fn may_enter_recovery(&self, una: Seq) -> bool {
        !self.in_recovery && !self.recover.is_some_and(|r| una < r)
    }

    /// RFC 6675 5 (4.2): "ssthresh = cwnd = (FlightSize / 2)", with
    /// CUBIC's beta 0.7 for the 1/2 (see [`BETA_NUM`]; at least two
    /// segments, RFC 5681 eq. 4), RecoveryPoint = HighData.
    pub(crate) fn enter_sack_recovery(&mut self, flight: u32, snd_max: Seq, mss: u32) {
        self.ssthresh = reduced(flight, mss);
        self.cwnd = self.ssthresh;
        self.recover = Some(snd_max);
        self.in_recovery = true;
        self.bytes_acked = 0;
    }

    /// A duplicate ACK (RFC 5681 2 definition, checked by the caller).
    pub(crate) fn on_dup_ack(
        &mut self,
        snd_una: Seq,
        snd_max: Seq,
        flight: u32,
        mss: u32,
    ) -> AckAction {
        self.dupacks = self.dupacks.saturating_add(1);
        if self.in_recovery {
            // RFC 6582 3.2 step 3: inflate for each further duplicate.
            self.cwnd = self.cwnd.saturating_add(mss);
            return AckAction::None;
        }
        if self.dupacks == 3 {
            // RFC 6582 3.2 step 2: not while the ACK is still below `recover`
            // (avoids a second reduction for losses of one window; we enter at
            // `recover` itself, the less conservative reading of 4.1).
            if self.recover.is_some_and(|r| snd_una < r) {
                return AckAction::None;
            }
            // RFC 6582 3.2 step 2 with beta 0.7 for the halving (BETA_NUM).
            self.ssthresh = reduced(flight, mss);
            self.recover = Some(snd_max);
            self.in_recovery = true;
            self.cwnd = self.ssthresh + 3 * mss;
            return AckAction::RetransmitFirst;
        }
        AckAction::None
    }

    /// RFC 5681 3.1 (eq. 4) and 6582 4: after a retransmission timeout.
    pub(crate) fn on_rto(&mut self, flight: u32, snd_max: Seq, mss: u32) {
        self.ssthresh = (flight / 2).max(2 * mss);
        self.cwnd = mss;
        self.recover = Some(snd_max);
        self.in_recovery = false;
        self.dupacks = 0;
        self.bytes_acked = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: u32 = 1000;

    #[test]
    fn slow_start_then_avoidance() {
        let mut cc = NewReno::new(MSS);
        assert_eq!(cc.cwnd, 10 * MSS);
        cc.on_new_ack(MSS, Seq(1001), 5 * MSS, MSS);
        assert_eq!(cc.cwnd, 11 * MSS);
        cc.ssthresh = cc.cwnd;
        for _ in 0..10 {
            cc.on_new_ack(MSS, Seq(1), 5 * MSS, MSS);
        }
        assert_eq!(cc.cwnd, 11 * MSS);
        cc.on_new_ack(MSS, Seq(1), 5 * MSS, MSS);
        assert_eq!(cc.cwnd, 12 * MSS);
    }

    #[test]
    fn three_dupacks_then_partial_and_full_ack() {
        let mut cc = NewReno::new(MSS);
        let una = Seq(1);
        let max = Seq(10_001);
        assert_eq!(cc.on_dup_ack(una, max, 10 * MSS, MSS), AckAction::None);
        assert_eq!(cc.on_dup_ack(una, max, 10 * MSS, MSS), AckAction::None);
        assert_eq!(
            cc.on_dup_ack(una, max, 10 * MSS, MSS),
            AckAction::RetransmitFirst
        );
        // Beta 0.7 of a 10-segment flight.
        assert_eq!(cc.ssthresh, 7 * MSS);
        assert_eq!(cc.cwnd, 10 * MSS);
        assert_eq!(cc.on_dup_ack(una, max, 10 * MSS, MSS), AckAction::None);
        assert_eq!(cc.cwnd, 11 * MSS);
        // Partial ACK of 2 segments.
        assert_eq!(
            cc.on_new_ack(2 * MSS, Seq(2001), 10 * MSS, MSS),
            AckAction::RetransmitFirst
        );
        assert!(cc.in_recovery);
        // Full ACK.
        assert_eq!(cc.on_new_ack(8 * MSS, max, 8 * MSS, MSS), AckAction::None);
        assert!(!cc.in_recovery);
        assert_eq!(cc.cwnd, 2 * MSS);
    }

    #[test]
    fn sack_recovery_holds_cwnd_until_recover() {
        let mut cc = NewReno::new(MSS);
        assert!(cc.may_enter_recovery(Seq(1)));
        cc.enter_sack_recovery(10 * MSS, Seq(10_001), MSS);
        assert_eq!((cc.cwnd, cc.ssthresh), (7 * MSS, 7 * MSS));
        assert!(!cc.may_enter_recovery(Seq(2001)));
        cc.on_new_ack_sack(MSS, Seq(2001), MSS);
        assert_eq!(cc.cwnd, 7 * MSS);
        cc.on_new_ack_sack(8 * MSS, Seq(10_001), MSS);
        assert!(!cc.in_recovery && cc.recover.is_none());
        assert_eq!(cc.cwnd, 7 * MSS);
        // Congestion avoidance from ssthresh: one MSS per window acknowledged.
        cc.on_new_ack_sack(7 * MSS, Seq(17_001), MSS);
        assert_eq!(cc.cwnd, 8 * MSS);
        assert!(cc.may_enter_recovery(Seq(11_001)));
    }

    #[test]
    fn recovery_keeps_seven_tenths_and_at_least_two_segments() {
        let mut cc = NewReno::new(MSS);
        cc.enter_sack_recovery(100 * MSS, Seq(100_001), MSS);
        assert_eq!((cc.ssthresh, cc.cwnd), (70 * MSS, 70 * MSS));
        let mut cc = NewReno::new(MSS);
        cc.enter_sack_recovery(2 * MSS, Seq(2001), MSS);
        assert_eq!(cc.ssthresh, 2 * MSS, "RFC 5681 floor");
        // No overflow near the top of u32.
        let mut cc = NewReno::new(MSS);
        cc.enter_sack_recovery(u32::MAX, Seq(1), MSS);
        assert_eq!(cc.ssthresh, (u64::from(u32::MAX) * 7 / 10) as u32);
        // A timeout still halves.
        cc.on_rto(100 * MSS, Seq(1), MSS);
        assert_eq!((cc.ssthresh, cc.cwnd), (50 * MSS, MSS));
    }

    #[test]
    fn rto_collapses_window() {
        let mut cc = NewReno::new(MSS);
        cc.on_rto(8 * MSS, Seq(8001), MSS);
        assert_eq!((cc.cwnd, cc.ssthresh), (MSS, 4 * MSS));
    }
}
