//! Delivery-rate estimation (draft-cheng-iccrg-delivery-rate-estimation,
//! "Delivery Rate Estimation"), the measurement BBR's model is built on.
//!
//! Each segment sent takes a snapshot of the connection's delivery state
//! (`delivered`, `delivered_time`, `first_sent_time`, whether the sender was
//! application-limited). When an ACK delivers segments, the most recently
//! sent of them gives one rate sample: the bytes delivered since its
//! snapshot over the longer of its send interval and its ACK interval.
//!
//! "Delivered" counts bytes cumulatively acknowledged plus bytes SACKed above
//! SND.UNA (the scoreboard's count), so a hole does not stall the
//! measurement while SACKs keep arriving.
//!
//! The snapshots live in a ring in sequence order, one per segment in
//! flight (40 bytes each: about 3% of the data in flight at a 1,448-byte MSS),
//! reused in steady state: no allocation per segment once the ring has grown
//! to the largest flight. Only connections with a model-based controller
//! carry one.

use super::seq::Seq;
use super::time::Instant;
use std::collections::VecDeque;

/// The snapshot a segment takes when it is (re)sent.
#[derive(Clone, Copy, Debug)]
struct SentSegment {
    start: Seq,
    end: Seq,
    /// draft 3.2 `P.delivered`.
    delivered: u64,
    /// `P.delivered_time`.
    delivered_time: Instant,
    /// `P.first_sent_time`.
    first_sent_time: Instant,
    /// `P.sent_time` (the last transmission).
    sent_time: Instant,
    /// `P.is_app_limited`.
    app_limited: bool,
    /// Sent more than once: no RTT sample from it (Karn).
    retransmitted: bool,
}

/// One rate sample (draft 3.3 `rs`), produced per ACK that delivered data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RateSample {
    /// Bytes delivered over `interval` (`rs.delivered`).
    pub(crate) delivered: u64,
    /// `rs.interval`: max(send_elapsed, ack_elapsed).
    pub(crate) interval_us: u64,
    /// `rs.prior_delivered`: C.delivered when the sampled segment was sent.
    pub(crate) prior_delivered: u64,
    /// `rs.is_app_limited`.
    pub(crate) app_limited: bool,
    /// Round-trip time of the sampled segment, if it was sent once.
    pub(crate) rtt_us: Option<u64>,
}

impl RateSample {
    /// Bytes per second, `None` for a sample without an interval.
    pub(crate) fn bytes_per_sec(&self) -> Option<u64> {
        (self.interval_us > 0)
            .then(|| (u128::from(self.delivered) * 1_000_000 / u128::from(self.interval_us)) as u64)
    }
}

/// The connection's side of the estimator (draft 3.1 `C.*`).
#[derive(Debug, Default)]
pub(crate) struct DeliveryRate {
    /// `C.delivered`: bytes delivered (acknowledged or SACKed) so far.
    delivered: u64,
    /// Cumulatively acknowledged bytes (a u64 that does not wrap with Seq).
    acked: u64,
    /// `C.delivered_time`.
    delivered_time: Instant,
    /// `C.first_sent_time`.
    first_sent_time: Instant,
    /// `C.app_limited`: 0, or the `delivered` count at which the
    /// application-limited period ends.
    app_limited_until: u64,
    sent: VecDeque<SentSegment>,
}

impl DeliveryRate {
    pub(crate) fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Segments whose snapshot is kept (the data in flight).
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.sent.len()
    }

    /// draft 3.4 "Detecting application-limited phases": the sender has
    /// less than an MSS to send and room in cwnd; samples taken until what
    /// is in flight now is delivered are marked app-limited. `pipe`: bytes
    /// in flight.
    pub(crate) fn mark_app_limited(&mut self, pipe: u32) {
        self.app_limited_until = (self.delivered + u64::from(pipe)).max(1);
    }

    pub(crate) fn app_limited(&self) -> bool {
        self.app_limited_until != 0
    }

    /// draft 3.2 "Transmitting or retransmitting a data packet": segment
    /// `[start, end)` leaves now; `pipe`: bytes in flight before it.
    pub(crate) fn on_sent(&mut self, start: Seq, end: Seq, pipe: u32, now: Instant) {
        if pipe == 0 {
            // "If there are no packets in flight yet, then we can start the
            // delivery rate interval at the current time".
            self.first_sent_time = now;
            self.delivered_time = now;
        }
        let snap = SentSegment {
            start,
            end,
            delivered: self.delivered,
            delivered_time: self.delivered_time,
            first_sent_time: self.first_sent_time,
            sent_time: now,
            app_limited: self.app_limited(),
            retransmitted: false,
        };
        match self.sent.back() {
            Some(last) if start < last.end => {
                // A retransmission (or an overlap): refresh the snapshots of
                // the segments it covers, which are in sequence order.
                let from = self.sent.partition_point(|s| s.end <= start);
                for s in self.sent.range_mut(from..) {
                    if s.start >= end {
                        break;
                    }
                    *s = SentSegment {
                        start: s.start,
                        end: s.end,
                        retransmitted: true,
                        ..snap
                    };
                }
                if end > self.sent.back().map_or(end, |l| l.end) {
                    let tail = self.sent.back().map_or(start, |l| l.end);
                    self.sent.push_back(SentSegment {
                        start: tail,
                        ..snap
                    });
                }
            }
            _ => self.sent.push_back(snap),
        }
    }

    /// draft 3.3 "Upon receiving ACK": SND.UNA moved from `old_una` to `una`,
    /// `sacked` bytes are SACKed above `una` now (the scoreboard's count),
    /// `sack_high`: the highest SACKed sequence number in this ACK's blocks.
    /// Returns the rate sample, if the ACK delivered anything.
    pub(crate) fn on_ack(
        &mut self,
        old_una: Seq,
        una: Seq,
        sacked: u32,
        sack_high: Option<Seq>,
        now: Instant,
    ) -> Option<RateSample> {
        self.acked += u64::from(una - old_una);
        let delivered = self.acked + u64::from(sacked);
        if delivered <= self.delivered {
            // Nothing new (a duplicate ACK without a new block, or SACK
            // information forgotten after a timeout: the count never falls).
            self.drop_acked(una);
            return None;
        }
        self.delivered = delivered;
        self.delivered_time = now;
        // The most recently sent segment among those this ACK delivered:
        // the largest `delivered` snapshot, among the cumulatively
        // acknowledged ones and the one at the top of the new SACK block.
        let mut newest: Option<SentSegment> = None;
        let mut consider = |s: &SentSegment| {
            if newest.is_none_or(|n| {
                s.delivered > n.delivered
                    || (s.delivered == n.delivered && s.sent_time > n.sent_time)
            }) {
                newest = Some(*s);
            }
        };
        while let Some(s) = self.sent.front() {
            if s.end > una {
                break;
            }
            consider(s);
            self.sent.pop_front();
        }
        if let Some(high) = sack_high.filter(|&h| h > una) {
            let i = self.sent.partition_point(|s| s.end < high);
            if let Some(s) = self.sent.get(i).filter(|s| s.start < high) {
                consider(s);
            }
        }
        let p = newest?;
        // "C.first_sent_time = P.sent_time": the next sample's send interval
        // starts at the send time of this one's newest segment.
        self.first_sent_time = p.sent_time;
        let send_elapsed = p.sent_time.saturating_duration_since(p.first_sent_time);
        let ack_elapsed = now.saturating_duration_since(p.delivered_time);
        // "Mark the end of the app-limited phase once everything sent while
        // app-limited is delivered".
        if self.app_limited_until != 0 && self.delivered > self.app_limited_until {
            self.app_limited_until = 0;
        }
        Some(RateSample {
            delivered: self.delivered - p.delivered,
            // "we use the longer of the send and ACK intervals": a
            // compressed ACK burst cannot claim a rate above the send rate.
            interval_us: send_elapsed.max(ack_elapsed).as_micros() as u64,
            prior_delivered: p.delivered,
            app_limited: p.app_limited,
            rtt_us: (!p.retransmitted)
                .then(|| now.saturating_duration_since(p.sent_time).as_micros() as u64),
        })
    }

    fn drop_acked(&mut self, una: Seq) {
        while self.sent.front().is_some_and(|s| s.end <= una) {
            self.sent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: u32 = 1000;

    fn at(us: u64) -> Instant {
        Instant::from_micros(1_000_000 + us)
    }

    /// A steady sender: one segment every 10 us, each ACKed 1 ms later.
    #[test]
    fn a_paced_flow_measures_its_send_rate() {
        let mut r = DeliveryRate::default();
        let mut una = Seq(1);
        let mut nxt = Seq(1);
        let mut last = None;
        for i in 0..1000u64 {
            let now = at(i * 10);
            // ACKs of what was sent 1 ms (100 segments) ago.
            if i >= 100 {
                let new = una + MSS;
                last = r.on_ack(una, new, 0, None, now).or(last);
                una = new;
            }
            r.on_sent(nxt, nxt + MSS, nxt - una, now);
            nxt += MSS;
        }
        let s = last.unwrap();
        // 1000 bytes every 10 us: 100 MB/s.
        let rate = s.bytes_per_sec().unwrap();
        assert!((99_000_000..=101_000_000).contains(&rate), "{rate}");
        assert_eq!(s.rtt_us, Some(1000));
        assert!(!s.app_limited);
        assert_eq!(r.tracked(), 100, "one snapshot per segment in flight");
    }

    /// An ACK burst after a stall (ACK compression) cannot claim more than
    /// the rate the segments were sent at.
    #[test]
    fn compressed_acks_are_bounded_by_the_send_interval() {
        let mut r = DeliveryRate::default();
        for i in 0..10u32 {
            // 10 segments over 1 ms.
            r.on_sent(
                Seq(1 + i * MSS),
                Seq(1 + (i + 1) * MSS),
                i * MSS,
                at(u64::from(i) * 100),
            );
        }
        // One ACK for all ten, all at once, 5 ms later.
        let s = r
            .on_ack(Seq(1), Seq(1 + 10 * MSS), 0, None, at(5000))
            .unwrap();
        // The newest segment (sent at 900 us) was sent with nothing
        // delivered yet: its interval is the ACK interval, 5 ms since the
        // start, not the 0 us between the ACKs.
        assert_eq!(s.delivered, 10 * u64::from(MSS));
        assert_eq!(s.interval_us, 5000);
        assert_eq!(s.rtt_us, Some(4100));
    }

    #[test]
    fn sacked_bytes_count_as_delivered_and_retransmissions_give_no_rtt() {
        let mut r = DeliveryRate::default();
        for i in 0..4u32 {
            r.on_sent(
                Seq(1 + i * MSS),
                Seq(1 + (i + 1) * MSS),
                i * MSS,
                at(u64::from(i)),
            );
        }
        // Segment 0 lost; 1..3 SACKed.
        let s = r
            .on_ack(Seq(1), Seq(1), 3 * MSS, Some(Seq(1 + 4 * MSS)), at(1000))
            .unwrap();
        assert_eq!(r.delivered(), 3 * u64::from(MSS));
        assert_eq!(s.rtt_us, Some(997));
        // Resend segment 0: its snapshot is refreshed, not duplicated.
        r.on_sent(Seq(1), Seq(1 + MSS), MSS, at(1100));
        assert_eq!(r.tracked(), 4);
        // The cumulative ACK covers everything: the retransmission is the
        // newest segment delivered, and gives no RTT sample (Karn).
        let s = r
            .on_ack(Seq(1), Seq(1 + 4 * MSS), 0, None, at(2100))
            .unwrap();
        assert_eq!(r.delivered(), 4 * u64::from(MSS));
        assert_eq!(
            s.delivered,
            u64::from(MSS),
            "since the retransmission's snapshot"
        );
        assert_eq!(s.rtt_us, None);
        assert_eq!(r.tracked(), 0);
        // A repeated ACK delivers nothing.
        assert!(
            r.on_ack(Seq(1 + 4 * MSS), Seq(1 + 4 * MSS), 0, None, at(2200))
                .is_none()
        );
    }

    #[test]
    fn app_limited_marks_samples_until_that_flight_is_delivered() {
        let mut r = DeliveryRate::default();
        r.on_sent(Seq(1), Seq(1 + MSS), 0, at(0));
        r.mark_app_limited(MSS);
        r.on_sent(Seq(1 + MSS), Seq(1 + 2 * MSS), MSS, at(10));
        let s = r.on_ack(Seq(1), Seq(1 + MSS), 0, None, at(1000)).unwrap();
        assert!(!s.app_limited, "sent before the mark");
        assert!(
            r.app_limited(),
            "the marked flight is not all delivered yet"
        );
        let s = r
            .on_ack(Seq(1 + MSS), Seq(1 + 2 * MSS), 0, None, at(1010))
            .unwrap();
        assert!(s.app_limited);
        assert!(
            !r.app_limited(),
            "everything sent while app-limited is delivered"
        );
    }
}
