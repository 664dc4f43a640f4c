//! SACK on both sides (RFC 2018), loss recovery driven by the scoreboard
//! (RFC 6675), and RACK-TLP (RFC 8985): the reordering timer and the tail
//! loss probe, which share one timer slot (the reordering timer, when a
//! hole waits below SACKed data outside recovery, takes it).
//!
//! Where we go beyond RFC 8985: its probe is only scheduled outside
//! recovery with nothing SACKed (7.2), so a lost retransmission, or a
//! recovery whose last segments are lost, with nothing sent after them
//! waits for the retransmission timeout: at least 200 ms on a path of tens
//! of microseconds, and the window collapses to one segment. At 5% loss
//! with windows of a few segments that was most of our timeouts (the
//! `rto_*` counters). So the probe also runs in recovery, with SACKed data
//! and after a timeout, as QUIC's PTO does in every state (RFC 9002 6.2):
//! armed at each transmission and at each ACK that brings news (SND.UNA
//! moved or new bytes SACKed), it fires only when the ACK clock has stopped
//! for 2 SRTT + 2 ms, sends one segment (new data if the peer's window
//! allows, else the highest un-SACKed one), and its delivery lets RACK find
//! what was lost before it. One probe per segment sent the ordinary way,
//! none after a timeout until it is answered; the RTO stays the backstop.

use super::{Connection, Ctx};
use crate::tcp::scoreboard::{DUP_THRESH, Scoreboard};
use crate::tcp::seq::Seq;
use crate::tcp::time::Instant;
use crate::wire::{SackBlocks, TcpRepr};
use std::time::Duration;

/// Most recent out-of-order arrivals remembered for block order (RFC 2018 4).
pub(crate) const SACK_RECENT: usize = 4;

/// RFC 8985 7.2: "WCDelAckT ... the worst-case delayed ACK timer; the RECOMMENDED value is 200 ms".
const WC_DEL_ACK: Duration = Duration::from_millis(200);
/// Added to 2 SRTT when more than one segment is in flight, as Linux adds
/// TCP_TIMEOUT_MIN (2 ms): on a path of tens of microseconds 2 SRTT alone
/// is shorter than the scheduling jitter of either end.
const TLP_SLACK: Duration = Duration::from_millis(2);
/// Floor of RACK's reordering window: our RTT samples come from 1 ms
/// timestamps, so a sub-millisecond path measures 0 or 1 ms.
const REO_WND_MIN: Duration = Duration::from_millis(1);

/// What the shared loss timer is for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum LossTimer {
    /// RFC 8985 7.2 the probe timeout (PTO).
    Tlp,
    /// RFC 8985 6.3 the reordering window of a hole below SACKed data ran out.
    Rack,
}

/// A tail loss probe waiting to be sent (RFC 8985 7.3).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Probe {
    /// "If a previously unsent segment exists AND the receive window allows
    /// new data to be sent: Send that segment".
    NewData,
    /// "Else: Retransmit the highest-sequence segment sent so far".
    Last,
}

impl Connection {
    // ---- Receiver: the blocks we send ----

    /// The out-of-order block holding sequence number `seq`, if any.
    fn ooo_block_at(&self, seq: Seq) -> Option<(Seq, Seq)> {
        if seq < self.rcv_nxt {
            return None;
        }
        let off = seq - self.rcv_nxt;
        self.recv_buf
            .out_of_order()
            .find(|&(s, e)| s <= off && off < e)
            .map(|(s, e)| (self.rcv_nxt + s, self.rcv_nxt + e))
    }

    /// An out-of-order segment starting at `seq` was stored: its block becomes
    /// the most recent. Older entries in the same (merged) block go.
    pub(crate) fn note_sack_recent(&mut self, seq: Seq) {
        if !self.neg.sack {
            return;
        }
        let Some((l, r)) = self.ooo_block_at(seq) else {
            return;
        };
        let mut kept = [seq.0; SACK_RECENT];
        let mut n = 1;
        for i in 0..usize::from(self.sack_recent_len) {
            let s = Seq(self.sack_recent[i]);
            if n < SACK_RECENT && !s.in_range(l, r) && self.ooo_block_at(s).is_some() {
                kept[n] = s.0;
                n += 1;
            }
        }
        self.sack_recent = kept;
        self.sack_recent_len = n as u8;
    }

    /// RFC 2018 4: "The first SACK block (i.e., the one immediately following
    /// the kind and length fields in the option) MUST specify the contiguous
    /// block of data containing the segment which triggered this ACK ... The
    /// SACK option SHOULD be filled out by repeating the most recently
    /// reported SACK blocks". As many as fit: 3 beside timestamps, else 4.
    pub(crate) fn sack_blocks(&self) -> SackBlocks {
        let mut out = SackBlocks::EMPTY;
        if !self.neg.sack || !self.recv_buf.has_out_of_order() {
            return out;
        }
        let max = if self.neg.timestamps { 3 } else { 4 };
        let push = |out: &mut SackBlocks, (l, r): (Seq, Seq)| {
            if out.len() < max && !out.as_slice().contains(&(l.0, r.0)) {
                out.push(l.0, r.0);
            }
        };
        for &s in &self.sack_recent[..usize::from(self.sack_recent_len)] {
            if let Some(b) = self.ooo_block_at(Seq(s)) {
                push(&mut out, b);
            }
        }
        // Then any others held, highest first.
        for (s, e) in self.recv_buf.out_of_order().rev() {
            push(&mut out, (self.rcv_nxt + s, self.rcv_nxt + e));
        }
        out
    }

    // ---- Sender: the blocks we receive ----

    /// The scoreboard, created (once per connection) on first need.
    pub(crate) fn scoreboard(&mut self) -> &mut Scoreboard {
        let una = self.snd_una;
        self.sb.get_or_insert_with(|| {
            let mut s = Box::<Scoreboard>::default();
            s.reset(una);
            s
        })
    }

    /// The scoreboard's pipe (RFC 6675 SetPipe), or without one the bytes
    /// from SND.UNA to SND.NXT (rewound by a timeout when SACK is off).
    pub(crate) fn pipe(&self) -> u32 {
        match self.sb.as_deref() {
            Some(sb) => sb.pipe(self.snd_una, self.snd_max),
            None => self.snd_nxt - self.snd_una,
        }
    }

    /// After the ACK field of an acceptable segment was processed on a SACK
    /// connection (RFC 6675 5): record its blocks, enter recovery if SND.UNA
    /// is lost, run the RACK or TLP timer. `new_ack`: SND.UNA moved.
    pub(crate) fn sack_on_ack(
        &mut self,
        seg: &TcpRepr,
        old_una: Seq,
        new_ack: bool,
        now: Instant,
        ctx: &mut Ctx<'_>,
    ) {
        let blocks = seg.options.sack.as_slice();
        if self.sb.is_none() && blocks.is_empty() && u32::from(self.cc.dupacks) < DUP_THRESH {
            // No loss seen on this connection yet: the fast path.
            if new_ack {
                self.arm_tlp(now);
            }
            return;
        }
        let mss = u32::from(self.neg.snd_mss);
        let (una, max, in_rec) = (self.snd_una, self.snd_max, self.cc.in_recovery);
        let up = self
            .scoreboard()
            .on_ack(old_una, una, max, blocks, mss, in_rec);
        ctx.stats.sack_blocks_ignored += u64::from(up.ignored);
        ctx.stats.rack_lost_retransmits += u64::from(up.rexmits_lost);
        self.maybe_enter_recovery(ctx);
        // News (SND.UNA moved, or bytes newly SACKed) shows the ACK clock
        // running: the probe waits a PTO from here.
        self.update_loss_timer(now, new_ack || up.newly_sacked > 0);
    }

    /// RFC 6675 5 (4): "If DupAcks >= DupThresh or IsLost (HighACK + 1)":
    /// enter loss recovery (once per window).
    fn maybe_enter_recovery(&mut self, ctx: &mut Ctx<'_>) {
        let (una, max) = (self.snd_una, self.snd_max);
        if !self.cc.may_enter_recovery(una) || max <= una {
            return;
        }
        let mss = u32::from(self.neg.snd_mss);
        let dupacks = u32::from(self.cc.dupacks);
        let sb = self.scoreboard();
        if !sb.una_lost(una) && dupacks >= DUP_THRESH {
            sb.mark_una_lost(una, max, mss);
        }
        if sb.una_lost(una) {
            // RFC 8985 6.2: in recovery (no reordering seen) the reordering
            // window is zero: every hole below the highest SACK is lost.
            sb.mark_rack_lost();
            self.cc.enter_sack_recovery(max - una, max, mss);
            self.fast_rexmit = true;
            ctx.stats.fast_retransmits += 1;
            self.rtt_timing = None;
            self.loss_timer = None;
        }
    }

    /// The RACK reordering timer while a hole waits below SACKed data outside
    /// recovery; else the tail loss probe, (re)armed when `rearm_tlp`.
    pub(crate) fn update_loss_timer(&mut self, now: Instant, rearm_tlp: bool) {
        let Some(sb) = self.sb.as_deref() else {
            if rearm_tlp {
                self.arm_tlp(now);
            }
            return;
        };
        if sb.rack_pending() && !self.cc.in_recovery {
            // RFC 8985 6.3: "RACK.reo_wnd ... after which a segment is
            // considered lost"; kept if already running for an earlier hole.
            if !matches!(self.loss_timer, Some((LossTimer::Rack, _))) {
                self.loss_timer = Some((LossTimer::Rack, now + self.reo_wnd()));
            }
        } else if rearm_tlp {
            self.arm_tlp(now);
        } else if matches!(self.loss_timer, Some((LossTimer::Rack, _))) {
            // The hole it waited for was repaired or marked lost otherwise.
            self.loss_timer = None;
        }
    }

    /// RFC 8985 6.2: "RACK.reo_wnd = min(RACK.reo_wnd_mult * RACK.min_RTT / 4,
    /// SRTT)", with SRTT standing in for the minimum RTT we do not track.
    fn reo_wnd(&self) -> Duration {
        let srtt = self.rtt.srtt_us().unwrap_or(0);
        Duration::from_micros(u64::from(srtt / 4)).max(REO_WND_MIN)
    }

    /// RFC 8985 7.2: "PTO = 2 * SRTT ... If FlightSize is one segment, PTO +=
    /// WCDelAckT" (else our 2 ms slack); "If RTO is earlier, PTO = RTO" (the
    /// retransmission timer then fires first, so no probe is armed). Only
    /// when SACK is in use; in any state with data outstanding (see the
    /// module's note). With SACKed data the receiver holds out-of-order
    /// bytes and ACKs at once (RFC 5681 4.2), so no delayed-ACK allowance.
    pub(crate) fn arm_tlp(&mut self, now: Instant) {
        self.loss_timer = None;
        let una = self.snd_una;
        // Not after a timeout until an ACK answers it (RFC 8985 7.2: not in
        // "RTO recovery"; the backoff of a dead peer's timer stays as RFC 6298
        // 5.5 has it), and one probe per segment sent the ordinary way: a
        // probe whose answer lets nothing else go (a window held by losses
        // the scoreboard cannot see) is followed by the RTO, not by more
        // probes that each rearm it.
        if !self.neg.sack
            || !self.state.is_synchronized()
            || self.snd_max <= una
            || self.retries > 0
            || self.probed
        {
            return;
        }
        let sacked = self.sb.as_deref().is_some_and(|sb| !sb.is_empty());
        let pto = match self.rtt.srtt_us() {
            // "If SRTT is not available, PTO = 1 second" (the RTO then is too).
            None => Duration::from_secs(1),
            Some(srtt) => {
                let one_segment = self.snd_max - una <= u32::from(self.neg.snd_mss);
                2 * Duration::from_micros(u64::from(srtt))
                    + if one_segment && !sacked {
                        WC_DEL_ACK
                    } else {
                        TLP_SLACK
                    }
            }
        };
        let at = now + pto;
        if self.rto_at.is_none_or(|rto| at < rto) {
            self.loss_timer = Some((LossTimer::Tlp, at));
        }
    }

    /// The loss timer fired.
    pub(crate) fn on_loss_timer(&mut self, kind: LossTimer, now: Instant, ctx: &mut Ctx<'_>) {
        match kind {
            LossTimer::Rack => {
                if let Some(sb) = self.sb.as_deref_mut()
                    && sb.mark_rack_lost()
                {
                    ctx.stats.rack_reorder_timeouts += 1;
                    self.maybe_enter_recovery(ctx);
                }
            }
            LossTimer::Tlp => {
                if self.snd_max <= self.snd_una {
                    return;
                }
                let in_flight = self.snd_nxt - self.snd_una;
                let window_open = self.snd_wnd > in_flight;
                self.probe = Some(if self.snd_nxt < self.snd_data_end && window_open {
                    Probe::NewData
                } else {
                    Probe::Last
                });
                ctx.stats.tlp_probes += 1;
                // RFC 8985 7.3: "the sender MUST ... rearm the RTO timer".
                self.rto_at = Some(now + self.rtt.rto());
            }
        }
    }
}
