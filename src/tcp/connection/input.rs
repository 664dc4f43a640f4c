//! Segment arrival (RFC 9293 3.10.7.3 and 3.10.7.4), with RFC 5961 (blind
//! attacks) and RFC 7323 (PAWS) on top.

use super::{Connection, Ctx, End};
use crate::tcp::congestion::AckAction;
use crate::tcp::event::Event;
use crate::tcp::isn::ts_clock;
use crate::tcp::seq::Seq;
use crate::tcp::state::State;
use crate::tcp::time::Instant;
use crate::wire::{TcpFlags, TcpOptions, TcpRepr};
use std::time::Duration;

/// Duplicate ACKs owed at most between two polls (about one rx batch).
const MAX_DUPACKS_OWED: u8 = 64;

/// RFC 7323 5.5: TS.Recent older than this is invalid (24 days).
const PAWS_IDLE: Duration = Duration::from_secs(24 * 24 * 3600);

impl Connection {
    /// A segment for this connection's 4-tuple arrived.
    pub(crate) fn on_segment(
        &mut self,
        seg: &TcpRepr,
        payload: &[u8],
        now: Instant,
        ctx: &mut Ctx<'_>,
    ) {
        match self.state {
            State::SynSent => self.on_segment_syn_sent(seg, now, ctx),
            State::Closed | State::Listen => {}
            _ => self.on_segment_synchronized(seg, payload, now, ctx),
        }
        self.update_persist(now, ctx.cfg.rto_max);
    }

    pub(super) fn send_rst(&self, seq: u32, ctx: &mut Ctx<'_>) {
        let rst = TcpRepr {
            src_port: self.tuple.local.port(),
            dst_port: self.tuple.remote.port(),
            seq,
            ack: 0,
            flags: TcpFlags::RST,
            window: 0,
            options: TcpOptions::default(),
        };
        let t = crate::tcp::event::Transmit {
            local: *self.tuple.local.ip(),
            remote: *self.tuple.remote.ip(),
            tcp: rst,
            payload_len: 0,
        };
        if ctx.ctl.push(t) {
            ctx.stats.rst_sent += 1;
        } else {
            ctx.stats.drop_control_queue_full += 1;
        }
    }

    fn drop_segment(ctx: &mut Ctx<'_>) {
        ctx.stats.dropped_segments += 1;
    }

    /// RFC 9293 3.10.7.3, SYN-SENT.
    fn on_segment_syn_sent(&mut self, seg: &TcpRepr, now: Instant, ctx: &mut Ctx<'_>) {
        let f = seg.flags;
        let ack = Seq(seg.ack);
        // First, check the ACK bit: acceptable iff SND.UNA < SEG.ACK <= SND.NXT.
        if f.contains(TcpFlags::ACK) && !(ack > self.snd_una && ack <= self.snd_max) {
            if !f.contains(TcpFlags::RST) {
                self.send_rst(seg.ack, ctx);
            }
            ctx.stats.drop_bad_ack += 1;
            return Self::drop_segment(ctx);
        }
        // Second, the RST bit (RFC 5961 3.2: only with an acceptable ACK).
        if f.contains(TcpFlags::RST) {
            if f.contains(TcpFlags::ACK) {
                ctx.stats.rst_received += 1;
                ctx.stats.connect_refused += 1;
                self.end = Some(End::Refused);
                self.state = State::Closed;
            } else {
                Self::drop_segment(ctx);
            }
            return;
        }
        // Fourth, the SYN bit.
        if !f.contains(TcpFlags::SYN) {
            return Self::drop_segment(ctx);
        }
        self.accept_peer_syn(seg, now, ctx.cfg);
        if f.contains(TcpFlags::ACK) {
            // Our SYN is acknowledged: ESTABLISHED.
            self.rtt_sample_on_ack(seg, ack, now, ctx);
            self.snd_una = ack;
            self.syn_acked = true;
            self.snd_nxt = self.snd_nxt.max(ack);
            self.snd_wl2 = ack;
            self.rto_at = None;
            self.retries = 0;
            self.syn_pending = false;
            self.establish(ctx);
            self.keepalive_heard(now);
            self.ack_now = true;
        } else {
            // Simultaneous open (RFC 9293 3.5 figure 7): SYN-RECEIVED, send
            // <SEQ=ISS><ACK=RCV.NXT><CTL=SYN,ACK>. Our SYN stays outstanding.
            self.state = State::SynReceived;
            self.syn_pending = true;
        }
    }

    /// Leave SYN-SENT / SYN-RECEIVED for ESTABLISHED (or FIN-WAIT-1 if the
    /// application already asked for a FIN) and tell the application.
    fn establish(&mut self, ctx: &mut Ctx<'_>) {
        self.state = if self.fin_queued {
            State::FinWait1
        } else {
            State::Established
        };
        self.retries = 0;
        if self.passive {
            self.app_knows = true;
            ctx.stats.accepted += 1;
            self.push_event(
                ctx,
                Event::Accepted {
                    port: self.tuple.local.port(),
                },
            );
        } else {
            ctx.stats.connected += 1;
            if !self.app_closed {
                self.push_event(ctx, Event::Connected);
            }
        }
    }

    /// RFC 9293 3.10.7.4 "first, check sequence number".
    fn acceptable(&self, seq: Seq, seg_len: u32) -> bool {
        let wnd = if self.rcv_adv > self.rcv_nxt {
            self.rcv_adv - self.rcv_nxt
        } else {
            0
        };
        let end = self.rcv_nxt + wnd;
        match (seg_len, wnd) {
            (0, 0) => seq == self.rcv_nxt,
            (0, _) => seq.in_range(self.rcv_nxt, end),
            (_, 0) => false,
            _ => {
                seq.in_range(self.rcv_nxt, end) || (seq + (seg_len - 1)).in_range(self.rcv_nxt, end)
            }
        }
    }

    /// RFC 9293 3.10.7.4 for SYN-RECEIVED and the synchronized states.
    fn on_segment_synchronized(
        &mut self,
        seg: &TcpRepr,
        payload: &[u8],
        now: Instant,
        ctx: &mut Ctx<'_>,
    ) {
        let f = seg.flags;
        let seq = Seq(seg.seq);
        let ack = Seq(seg.ack);
        let rst = f.contains(TcpFlags::RST);
        let syn = f.contains(TcpFlags::SYN);
        let fin = f.contains(TcpFlags::FIN);
        let seg_len = payload.len() as u32 + u32::from(syn) + u32::from(fin);

        if self.state == State::SynReceived && !rst {
            // Simultaneous open / self-connect: the peer's SYN+ACK repeats its SYN
            // (already counted in RCV.NXT) and acknowledges ours. Linux accepts
            // this the same way; RCV.NXT is not advanced again.
            if syn
                && f.contains(TcpFlags::ACK)
                && !self.passive
                && seq + 1u32 == self.rcv_nxt
                && ack == self.iss + 1u32
            {
                self.rtt_sample_on_ack(seg, ack, now, ctx);
                self.snd_una = ack;
                self.syn_acked = true;
                self.snd_nxt = self.snd_nxt.max(ack);
                self.snd_wnd = u32::from(seg.window); // a SYN's window is not scaled
                self.max_snd_wnd = self.max_snd_wnd.max(self.snd_wnd);
                self.snd_wl1 = seq;
                self.snd_wl2 = ack;
                self.rto_at = None;
                self.syn_pending = false;
                self.establish(ctx);
                self.keepalive_heard(now);
                return;
            }
            // A retransmitted SYN: our SYN+ACK was lost, send it again.
            if syn && !f.contains(TcpFlags::ACK) && seq == self.irs {
                self.syn_pending = true;
                return;
            }
        }

        // TIME-WAIT held in full: a retransmitted FIN is ACKed again and the
        // 2MSL timer restarts (RFC 9293 3.10.7.4, eighth, TIME-WAIT).
        if self.state == State::TimeWait
            && fin
            && !rst
            && !syn
            && seq + (payload.len() as u32 + 1) == self.rcv_nxt
        {
            self.ack_now = true;
            self.linger_at = Some(now + 2 * ctx.cfg.msl);
            return;
        }

        // RFC 7323 5.3 PAWS: a segment whose TSval is older than TS.Recent is an
        // old duplicate (unless TS.Recent is older than 24 days).
        if let (true, Some(ts)) = (self.neg.timestamps, seg.options.timestamps)
            && !rst
            && (ts.tsval.wrapping_sub(self.ts_recent) as i32) < 0
            && now.saturating_duration_since(self.ts_recent_at) < PAWS_IDLE
        {
            ctx.stats.drop_paws += 1;
            Self::drop_segment(ctx);
            self.rate_limited_ack(now, ctx, false);
            return;
        }

        // First: sequence number acceptability.
        if !self.acceptable(seq, seg_len) {
            ctx.stats.drop_out_of_window += 1;
            Self::drop_segment(ctx);
            if !rst {
                if seg_len > 0 && !syn {
                    // Data or FIN (often a retransmission whose ACK we lost):
                    // answer, as Linux does, without a rate limit.
                    self.ack_now = true;
                    if self.state == State::TimeWait {
                        // As for compact entries: the peer still needs our ACK.
                        self.linger_at = Some(now + 2 * ctx.cfg.msl);
                    }
                } else {
                    self.rate_limited_ack(now, ctx, false);
                }
            }
            return;
        }

        // Second: RST (RFC 5961 3.2: reset only when SEG.SEQ == RCV.NXT exactly,
        // else a challenge ACK).
        if rst {
            if seq != self.rcv_nxt {
                self.rate_limited_ack(now, ctx, true);
                return Self::drop_segment(ctx);
            }
            ctx.stats.rst_received += 1;
            match self.state {
                // RFC 1337: ignore RSTs in TIME-WAIT (TIME-WAIT assassination).
                State::TimeWait => {
                    ctx.stats.drop_time_wait += 1;
                    return Self::drop_segment(ctx);
                }
                State::SynReceived if self.passive => self.end = Some(End::Silent),
                State::SynReceived => {
                    ctx.stats.connect_refused += 1;
                    self.end = Some(End::Refused);
                }
                _ => self.end = Some(End::Reset),
            }
            self.state = State::Closed;
            return;
        }

        // Fourth: SYN in a synchronized state (RFC 5961 4.2): challenge ACK.
        if syn {
            self.rate_limited_ack(now, ctx, true);
            return Self::drop_segment(ctx);
        }

        // Fifth: the ACK field.
        if !f.contains(TcpFlags::ACK) {
            return Self::drop_segment(ctx);
        }
        if self.state == State::SynReceived {
            if ack > self.snd_una && ack <= self.snd_max {
                // RFC 9293: SND.WND <- SEG.WND, SND.WL1 <- SEG.SEQ, SND.WL2 <- SEG.ACK.
                self.snd_wnd = u32::from(seg.window) << self.neg.snd_wscale;
                self.max_snd_wnd = self.max_snd_wnd.max(self.snd_wnd);
                self.snd_wl1 = seq;
                self.snd_wl2 = ack;
                self.syn_pending = false;
                self.establish(ctx);
            } else {
                // <SEQ=SEG.ACK><CTL=RST>
                self.send_rst(seg.ack, ctx);
                ctx.stats.drop_bad_ack += 1;
                return Self::drop_segment(ctx);
            }
        }
        // RFC 5961 5.2: acceptable iff SND.UNA - MAX.SND.WND <= SEG.ACK <= SND.NXT,
        // else drop and ACK.
        let max_wnd = self.max_snd_wnd.max(u32::from(ctx.cfg.mss));
        if ack > self.snd_max || ack < self.snd_una - max_wnd {
            ctx.stats.drop_bad_ack += 1;
            self.rate_limited_ack(now, ctx, true);
            return Self::drop_segment(ctx);
        }
        self.update_ts_recent(seg, seq, now);
        self.probes = 0;
        // RFC 1122 4.2.3.6: any acceptable ACK (a keepalive's answer, or
        // traffic) shows the peer alive.
        self.keepalive_heard(now);
        let window = u32::from(seg.window) << self.neg.snd_wscale;
        let old_una = self.snd_una;
        if ack > self.snd_una {
            self.on_new_ack(seg, ack, now, ctx);
        } else if ack == self.snd_una
            && payload.is_empty()
            && !fin
            && window == self.snd_wnd
            && self.snd_max > self.snd_una
            && self.neg.sack
        {
            // RFC 6675 2: a duplicate ACK; the scoreboard decides (below).
            self.cc.dupacks = self.cc.dupacks.saturating_add(1);
        } else if ack == self.snd_una
            && payload.is_empty()
            && !fin
            && window == self.snd_wnd
            && self.snd_max > self.snd_una
        {
            // RFC 5681 2: a duplicate ACK.
            let flight = self.snd_max - self.snd_una;
            let mss = u32::from(self.neg.snd_mss);
            if self.cc.on_dup_ack(self.snd_una, self.snd_max, flight, mss)
                == AckAction::RetransmitFirst
            {
                self.fast_rexmit = true;
                self.rtt_timing = None;
                ctx.stats.fast_retransmits += 1;
            }
        }
        // RFC 9293 3.10.7.4: update the send window from the most recent
        // segment, and (as Linux's tcp_may_update_window) from any segment
        // whose ACK advances SND.UNA: the RFC's SND.UNA + SND.WND would
        // otherwise carry an old window forward to the new SND.UNA, past the
        // edge the peer offered (a retransmission of old data that brings a
        // new ACK and a closed window, found by the engine fuzzer). Only
        // "If SND.UNA =< SEG.ACK =< SND.NXT": an old ACK below SND.UNA (RFC
        // 5961 lets it in) offered its window from its own, older number,
        // and applied at SND.UNA it would reach past that edge (fuzzer).
        if ack >= old_una
            && (self.snd_wl1 < seq || (self.snd_wl1 == seq && self.snd_wl2 <= ack) || ack > old_una)
        {
            self.snd_wnd = window;
            self.max_snd_wnd = self.max_snd_wnd.max(window);
            self.snd_wl1 = seq;
            self.snd_wl2 = ack;
        }
        if self.neg.sack && self.state.is_synchronized() {
            self.sack_on_ack(seg, old_una, self.snd_una > old_una, now, ctx);
        }
        if self.bbr.is_some() {
            self.cc_on_ack(seg, old_una, now);
        }
        match self.state {
            State::FinWait1 if self.fin_acked() => {
                self.state = State::FinWait2;
                if self.app_closed {
                    self.linger_at = Some(now + ctx.cfg.fin_wait2_timeout);
                }
            }
            State::Closing if self.fin_acked() => {
                self.enter_time_wait(now, ctx);
                return;
            }
            State::LastAck if self.fin_acked() => {
                self.state = State::Closed;
                self.end = Some(End::Orderly);
                return;
            }
            _ => {}
        }

        // Seventh: segment text.
        if !payload.is_empty() && self.state.can_receive() {
            self.receive_text(seq, payload, now, ctx);
        }

        // Eighth: FIN. Recorded if everything before it fits; processed once
        // RCV.NXT reaches it.
        if fin && self.state.can_receive() {
            let fin_seq = seq + payload.len();
            let room = self.rcv_nxt + self.free_window();
            if fin_seq <= room {
                self.peer_fin_at = Some(fin_seq);
            }
        }
        if let Some(fin_seq) = self.peer_fin_at
            && !self.peer_fin
            && fin_seq == self.rcv_nxt
        {
            self.on_peer_fin(now, ctx);
        }
    }

    /// RFC 7323 4.3: TS.Recent <- SEG.TSval when SEG.TSval >= TS.Recent and
    /// SEG.SEQ <= Last.ACK.sent.
    fn update_ts_recent(&mut self, seg: &TcpRepr, seq: Seq, now: Instant) {
        if let (true, Some(ts)) = (self.neg.timestamps, seg.options.timestamps)
            && (ts.tsval.wrapping_sub(self.ts_recent) as i32) >= 0
            && seq <= self.last_ack_sent
        {
            self.ts_recent = ts.tsval;
            self.ts_recent_at = now;
        }
    }

    /// RTT measurement for an ACK of new data: from the echoed timestamp
    /// (RFC 7323 4.1), else from Karn-timed segments (RFC 6298 3).
    fn rtt_sample_on_ack(&mut self, seg: &TcpRepr, ack: Seq, now: Instant, ctx: &mut Ctx<'_>) {
        let cfg = ctx.cfg;
        if self.neg.timestamps {
            if let Some(ts) = seg.options.timestamps
                && ts.tsecr != 0
                && self
                    .rexmit_tsval
                    .is_none_or(|r| (ts.tsecr.wrapping_sub(r) as i32) >= 0)
            {
                let ms = ts_clock(now, self.ts_offset).wrapping_sub(ts.tsecr);
                // Ignore nonsense (an echo from the future or older than 10 minutes).
                if ms < 600_000 {
                    let sample = Duration::from_millis(u64::from(ms));
                    self.rtt.sample(sample, cfg.rto_min, cfg.rto_max);
                }
            }
        } else if let Some((end, sent)) = self.rtt_timing
            && ack >= end
        {
            self.rtt.sample(
                now.saturating_duration_since(sent),
                cfg.rto_min,
                cfg.rto_max,
            );
            self.rtt_timing = None;
        }
    }

    /// SND.UNA < SEG.ACK <= SND.MAX: new data (or our SYN/FIN) acknowledged.
    fn on_new_ack(&mut self, seg: &TcpRepr, ack: Seq, now: Instant, ctx: &mut Ctx<'_>) {
        let old_una = self.snd_una;
        let flight = self.snd_max - old_una;
        let mut acked_data = ack - old_una;
        if !self.syn_acked {
            acked_data -= 1; // our SYN
            self.syn_acked = true;
        }
        if self.fin_queued && ack > self.snd_data_end {
            acked_data -= 1; // our FIN
        }
        self.rtt_sample_on_ack(seg, ack, now, ctx);
        self.send_buf.consume(acked_data as usize, ctx.pool);
        self.snd_una = ack;
        if self.snd_nxt < ack {
            self.snd_nxt = ack;
        }
        let mss = u32::from(self.neg.snd_mss);
        if self.neg.sack {
            self.cc.on_new_ack_sack(ack - old_una, ack, mss);
        } else if self.cc.on_new_ack(ack - old_una, ack, flight, mss) == AckAction::RetransmitFirst
            && self.snd_max > ack
        {
            self.fast_rexmit = true;
            self.rtt_timing = None;
        }
        // The send buffer follows cwnd (twice it, as Linux's
        // tcp_sndbuf_expand), so a path with a large window is not
        // limited by the initial buffer.
        self.send_buf
            .grow_to((2 * self.cc.cwnd as usize).min(ctx.cfg.send_buffer_max));
        self.retries = 0;
        self.persist_backoff = 0;
        // RFC 6298 5.2/5.3: stop the timer when all is acknowledged, else restart it.
        self.rto_at = if self.snd_una == self.snd_max {
            None
        } else {
            Some(now + self.rtt.rto())
        };
        if self.writable_wanted && self.send_buf.free() > 0 && !self.fin_queued {
            self.writable_wanted = false;
            if self.app_knows && !self.app_closed {
                self.push_event(ctx, Event::Writable);
            }
        }
    }

    /// Seventh step: store the text, advance RCV.NXT, decide how soon to ACK.
    fn receive_text(&mut self, seq: Seq, payload: &[u8], now: Instant, ctx: &mut Ctx<'_>) {
        let (offset, data) = if seq < self.rcv_nxt {
            let skip = (self.rcv_nxt - seq) as usize;
            (0usize, &payload[skip.min(payload.len())..])
        } else {
            ((seq - self.rcv_nxt) as usize, payload)
        };
        if data.is_empty() {
            self.ack_now = true; // a duplicate: RFC 5681 4.2, ACK at once
            return;
        }
        let had_holes = self.recv_buf.has_out_of_order();
        let r = self.recv_buf.insert(offset, data, ctx.pool);
        if offset > 0 {
            self.note_sack_recent(self.rcv_nxt + offset);
        }
        if !r.complete {
            ctx.stats.drop_out_of_order_full += u64::from(offset > 0);
        }
        self.rcv_nxt += r.advanced as u32;
        if r.advanced > 0
            && let Some(srtt) = self.rtt.srtt_us()
            && self.recv_buf.autotune(
                now,
                Duration::from_micros(u64::from(srtt)),
                usize::from(self.neg.snd_mss),
                ctx.cfg.recv_buffer_max,
            )
        {
            ctx.stats.recv_buffer_grown += 1;
        }
        if r.advanced > 0 {
            // Owed duplicates would now repeat a new ACK: a sender would take
            // them for duplicates of it and retransmit spuriously.
            self.dupacks_owed = 0;
        }
        if offset > 0 || had_holes || !r.complete {
            // RFC 5681 4.2: out-of-order data, or data filling a hole, is ACKed at once.
            if offset > 0 && self.ack_now {
                // One duplicate ACK per out-of-order segment, bounded.
                self.dupacks_owed = self.dupacks_owed.saturating_add(1).min(MAX_DUPACKS_OWED);
            }
            self.ack_now = true;
        } else {
            self.unacked_bytes = self.unacked_bytes.saturating_add(data.len() as u32);
            let full = u32::from(ctx.cfg.mss) - if self.neg.timestamps { 12 } else { 0 };
            match ctx.cfg.delayed_ack {
                // RFC 1122 4.2.3.2 / RFC 5681 4.2: at least every second full segment.
                Some(delay) if self.unacked_bytes < 2 * full => {
                    if self.delack_at.is_none() {
                        self.delack_at = Some(now + delay);
                    }
                }
                _ => self.ack_now = true,
            }
        }
        if r.advanced > 0 {
            if self.app_closed {
                self.recv_buf.discard(self.recv_buf.readable(), ctx.pool);
            } else if self.app_knows && !self.readable_pending {
                self.readable_pending = true;
                self.push_event(ctx, Event::Readable);
            }
        }
    }

    /// The peer's FIN is next in sequence: RCV.NXT passes it.
    fn on_peer_fin(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        self.rcv_nxt += 1u32;
        self.peer_fin = true;
        self.ack_now = true;
        if self.app_knows && !self.app_closed {
            self.push_event(ctx, Event::PeerClosed);
        }
        match self.state {
            State::SynReceived | State::Established => self.state = State::CloseWait,
            State::FinWait1 => {
                if self.fin_acked() {
                    self.enter_time_wait(now, ctx);
                } else {
                    self.state = State::Closing;
                }
            }
            State::FinWait2 => self.enter_time_wait(now, ctx),
            _ => {}
        }
    }

    /// TIME-WAIT for 2 MSL, all other timers off (RFC 9293 3.10.7.4).
    pub(crate) fn enter_time_wait(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        self.state = State::TimeWait;
        self.linger_at = Some(now + 2 * ctx.cfg.msl);
        self.rto_at = None;
        self.persist_at = None;
        self.delack_at = None;
        self.fast_rexmit = false;
        self.probe_pending = false;
        self.loss_timer = None;
        self.probe = None;
        ctx.stats.time_wait_entered += 1;
    }
}
