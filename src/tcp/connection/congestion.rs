//! The hooks that feed a model-based congestion controller (`tcp::bbr`) from
//! the connection's ACK, send and timer paths. With NewReno (the default)
//! `bbr` is `None` and every hook is one branch.
//!
//! Loss recovery (src/tcp/connection/sack.rs, the scoreboard) runs the same
//! for either controller: what to resend and when is its business. The model
//! only sets `cc.cwnd` after each ACK and timeout (overriding NewReno's
//! multiplicative decrease) and paces new data.

use super::Connection;
use crate::tcp::bbr::{AckInfo, Bbr};
use crate::tcp::config::Config;
use crate::tcp::congestion::{Congestion, NewReno};
use crate::tcp::seq::Seq;
use crate::tcp::time::Instant;
use crate::wire::TcpRepr;
use std::time::Duration;

impl Connection {
    /// The controller of a connection whose MSS is now known (the peer's
    /// SYN was taken in): NewReno's state always (it keeps loss recovery's
    /// bookkeeping), and the model when configured.
    pub(super) fn init_congestion(&mut self, cfg: &Config) {
        let mss = u32::from(self.neg.snd_mss);
        self.cc = NewReno::new(mss);
        self.bbr = match cfg.congestion {
            Congestion::NewReno => None,
            Congestion::Bbr => Some(Box::new(Bbr::new(self.cc.cwnd, self.iss.0))),
        };
    }

    /// After the ACK field of an acceptable segment was processed (RFC 9293
    /// 3.10.7.4 "fifth"), SACK blocks included: feed the model, take its cwnd.
    pub(super) fn cc_on_ack(&mut self, seg: &TcpRepr, old_una: Seq, now: Instant) {
        let pipe = self.pipe();
        let sacked = self.sb.as_deref().map_or(0, |sb| sb.sacked_bytes());
        let una = self.snd_una;
        let sack_high = seg
            .options
            .sack
            .as_slice()
            .iter()
            .map(|&(_, r)| Seq(r))
            .filter(|&r| r > una && r <= self.snd_max)
            .reduce(Seq::max);
        let outstanding = self.snd_max - una;
        let info = AckInfo {
            old_una,
            una,
            sacked,
            sack_high,
            pipe,
            unrepaired: outstanding.saturating_sub(sacked).saturating_sub(pipe),
            in_recovery: self.cc.in_recovery,
            recover_ahead: self.cc.recover.is_some_and(|r| una < r),
            mss: u32::from(self.neg.snd_mss),
        };
        let srtt = self
            .rtt
            .srtt_us()
            .map(|us| Duration::from_micros(u64::from(us)));
        if let Some(bbr) = self.bbr.as_deref_mut() {
            self.cc.cwnd = bbr.on_ack(&info, now, srtt);
        }
    }

    /// Segment `[seq, end)` is about to leave (new data or a retransmission).
    pub(super) fn cc_on_sent(&mut self, seq: Seq, end: Seq, now: Instant) {
        let pipe = self.pipe();
        let mss = u32::from(self.neg.snd_mss);
        let retransmission = seq < self.snd_max;
        if let Some(bbr) = self.bbr.as_deref_mut() {
            bbr.on_sent(seq, end, pipe, retransmission, now, mss);
        }
    }

    /// Pacing: may new data leave now? (Always, without a model.)
    pub(super) fn cc_may_send(&mut self, now: Instant) -> bool {
        self.bbr.as_deref_mut().is_none_or(|b| b.may_send(now))
    }

    /// draft-cheng-iccrg-delivery-rate-estimation 3.4: less than a segment
    /// to send and room in cwnd: the application, not the path, limits us.
    pub(super) fn cc_app_limited(&mut self) {
        let pipe = self.pipe();
        if let Some(bbr) = self.bbr.as_deref_mut() {
            bbr.on_app_limited(pipe);
        }
    }

    /// A retransmission timeout: the model's one window cut.
    pub(super) fn cc_on_rto(&mut self) {
        let mss = u32::from(self.neg.snd_mss);
        if let Some(bbr) = self.bbr.as_deref_mut() {
            bbr.on_rto(mss);
            self.cc.cwnd = bbr.cwnd;
        }
    }

    /// Timers ran: a pacing hold that is due ends (the endpoint then polls
    /// the connection again), and a recovery entered from the RACK timer
    /// keeps the model's cwnd rather than NewReno's reduction.
    pub(super) fn cc_on_timers(&mut self, now: Instant) {
        if let Some(bbr) = self.bbr.as_deref_mut() {
            bbr.on_timer(now);
            self.cc.cwnd = bbr.cwnd;
        }
    }

    /// When a send held back by pacing may go (part of `next_deadline`).
    pub(super) fn pacing_deadline(&self) -> Option<Instant> {
        self.bbr.as_deref().and_then(Bbr::pacing_deadline)
    }
}
