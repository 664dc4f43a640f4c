//! Timer expiry: retransmission (RFC 6298 5), delayed ACK, persist (zero-window
//! probes, RFC 9293 3.8.6.1) and linger (full TIME-WAIT, orphaned FIN-WAIT-2).

use super::{Connection, Ctx, End};
use crate::tcp::state::State;
use crate::tcp::time::Instant;
use std::time::Duration;

fn due(t: Option<Instant>, now: Instant) -> bool {
    matches!(t, Some(t) if t <= now)
}

impl Connection {
    pub(crate) fn on_timeout(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        if self.end.is_some() {
            return;
        }
        if due(self.linger_at, now) {
            // 2MSL passed in TIME-WAIT (held in full), or an orphaned FIN-WAIT-2 gave up.
            self.linger_at = None;
            if self.state == State::TimeWait {
                ctx.stats.time_wait_expired += 1;
            }
            self.state = State::Closed;
            self.end = Some(End::Orderly);
            return;
        }
        if due(self.delack_at, now) {
            self.delack_at = None;
            self.ack_now = true;
        }
        if due(self.loss_timer.map(|(_, at)| at), now)
            && let Some((kind, _)) = self.loss_timer.take()
        {
            self.on_loss_timer(kind, now, ctx);
        }
        if self.bbr.is_some() {
            self.cc_on_timers(now);
        }
        if due(self.rto_at, now) {
            self.rto_at = None;
            self.on_rto(now, ctx);
        }
        if self.state.is_synchronized() && due(self.keepalive.map(|k| k.at), now) {
            self.on_keepalive_timer(now, ctx);
            if self.end.is_some() {
                return;
            }
        }
        if due(self.persist_at, now) {
            self.persist_at = None;
            self.probe_pending = true;
            self.persist_backoff = self.persist_backoff.saturating_add(1);
            self.probes = self.probes.saturating_add(1);
            if self.probes > ctx.cfg.max_retries {
                // The peer stopped answering probes altogether.
                ctx.stats.timeouts += 1;
                self.end = Some(End::TimedOut);
                self.state = State::Closed;
                return;
            }
            self.arm_persist(now, ctx.cfg.rto_max);
        }
    }

    /// RFC 6298 5.4-5.6: retransmit the earliest unacknowledged segment, back off.
    fn on_rto(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        ctx.stats.rto_expirations += 1;
        let handshake = matches!(self.state, State::SynSent | State::SynReceived);
        self.count_rto_cause(handshake, ctx);
        self.retries = self.retries.saturating_add(1);
        let limit = if handshake {
            ctx.cfg.max_syn_retries
        } else {
            ctx.cfg.max_retries
        };
        if self.retries > limit {
            if self.state == State::SynSent {
                ctx.stats.connect_timeout += 1;
            } else {
                ctx.stats.timeouts += 1;
            }
            self.end = Some(if self.state == State::SynReceived && self.passive {
                End::Silent
            } else {
                End::TimedOut
            });
            self.state = State::Closed;
            return;
        }
        self.rtt.backoff(ctx.cfg.rto_max);
        self.rtt_timing = None; // Karn: no samples from retransmitted segments
        if handshake {
            self.syn_pending = true;
            self.syn_retransmitted = true;
        } else if self.snd_max > self.snd_una {
            let flight = self.snd_max - self.snd_una;
            self.cc
                .on_rto(flight, self.snd_max, u32::from(self.neg.snd_mss));
            if self.bbr.is_some() {
                self.cc_on_rto();
            }
            self.fast_rexmit = false;
            self.loss_timer = None;
            self.probe = None;
            if self.neg.sack {
                // RFC 6675 5.1: resend every un-SACKed byte from SND.UNA,
                // skipping what the receiver holds. RFC 2018 8: the receiver
                // may have reneged, so a second timeout in a row forgets the
                // blocks.
                let (una, max, forget) = (self.snd_una, self.snd_max, self.retries >= 2);
                self.scoreboard().on_rto(una, max, forget);
            } else {
                // Go back N: resend from SND.UNA.
                self.snd_nxt = self.snd_una;
            }
        }
        if !handshake && self.snd_wnd == 0 && self.snd_una < self.snd_data_end {
            // The peer's window is closed: retransmitting data into it is
            // pointless (and would count towards giving up on a live peer).
            // Probe instead (RFC 9293 3.8.6.1); its answer reopens or keeps waiting.
            self.rto_at = None;
            self.arm_persist(now, ctx.cfg.rto_max);
            return;
        }
        self.rto_at = Some(now + self.rtt.rto());
    }

    /// What was outstanding when the retransmission timer fired (`Stats::rto_*`).
    fn count_rto_cause(&self, handshake: bool, ctx: &mut Ctx<'_>) {
        let una = self.snd_una;
        let sb = self.sb.as_deref();
        let st = &mut *ctx.stats;
        let counter = if handshake {
            &mut st.rto_handshake
        } else if self.retries > 0 {
            &mut st.rto_repeated
        } else if sb.is_some_and(|sb| sb.una_rexmitted(una)) {
            &mut st.rto_lost_rexmit
        } else if self.cc.in_recovery {
            &mut st.rto_in_recovery
        } else if self.probed {
            &mut st.rto_after_probe
        } else if sb.is_some_and(|sb| !sb.is_empty()) {
            &mut st.rto_sacked
        } else {
            &mut st.rto_tail
        };
        *counter += 1;
    }

    /// Start the persist timer: the RTO, doubled per unanswered probe, capped at `max`.
    pub(crate) fn arm_persist(&mut self, now: Instant, max: Duration) {
        if self.persist_at.is_none() {
            let shift = u32::from(self.persist_backoff.min(16));
            let d = self.rtt.rto().saturating_mul(1 << shift);
            self.persist_at = Some(now + d.min(max));
        }
    }

    /// After input: start or stop the persist timer. It runs while the peer's
    /// window is zero, data waits and nothing is in flight.
    pub(crate) fn update_persist(&mut self, now: Instant, max: Duration) {
        let waiting = self.state.is_synchronized()
            && self.snd_data_end > self.snd_nxt
            && self.snd_una == self.snd_max;
        if waiting && self.snd_wnd == 0 {
            if self.rto_at.is_none() {
                self.arm_persist(now, max);
            }
        } else {
            self.persist_at = None;
            self.probe_pending = false;
            if self.snd_wnd > 0 {
                self.persist_backoff = 0;
            }
        }
    }
}
