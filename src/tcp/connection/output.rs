//! Segment generation: SYN, SYN+ACK, data and FIN (with congestion and flow
//! control), retransmissions, window probes and ACKs.

use super::sack::Probe;
use super::{Connection, Ctx};
use crate::tcp::isn::ts_clock;
use crate::tcp::options;
use crate::tcp::scoreboard::Source;
use crate::tcp::seq::Seq;
use crate::tcp::state::State;
use crate::tcp::time::Instant;
use crate::wire::{SackBlocks, TcpFlags, TcpOptions, TcpRepr, Timestamps};

impl Connection {
    /// The next segment this connection wants to send, its payload written to
    /// `buf[..len]`; `None` when it has nothing to send now.
    pub(crate) fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        ctx: &mut Ctx<'_>,
    ) -> Option<(TcpRepr, usize)> {
        if self.end.is_some() {
            return None;
        }
        match self.state {
            State::Closed | State::Listen => return None,
            State::SynSent => {
                return self
                    .syn_pending
                    .then(|| (self.syn_segment(now, ctx, false), 0));
            }
            State::SynReceived if self.syn_pending => {
                return Some((self.syn_segment(now, ctx, true), 0));
            }
            _ => {}
        }
        if self.state.is_synchronized() {
            if let Some(out) = self.data_segment(now, buf, ctx) {
                return Some(out);
            }
            if self.probe_pending {
                // Zero-window probe (RFC 9293 3.8.6.1): an old sequence number
                // that makes the peer answer with its current window.
                self.probe_pending = false;
                let sack = self.sack_blocks();
                let seg = self.header(now, self.snd_una - 1u32, TcpFlags::ACK, sack);
                return Some((seg, 0));
            }
        }
        if self.ack_now || self.dupacks_owed > 0 {
            // SEQ = SND.MAX rather than a rewound SND.NXT, so the peer finds it acceptable.
            if !self.ack_now {
                self.dupacks_owed -= 1;
            }
            let sack = self.sack_blocks();
            let seg = self.header(now, self.snd_max, TcpFlags::ACK, sack);
            return Some((seg, 0));
        }
        None
    }

    /// The window field of a non-SYN segment: free space, scaled (RFC 7323 2.3),
    /// never moving the right edge left (RFC 9293 3.8.6).
    pub(crate) fn window_field(&mut self) -> u16 {
        let free = self.free_window();
        let shift = self.neg.rcv_wscale;
        let advertised = if self.rcv_adv > self.rcv_nxt {
            self.rcv_adv - self.rcv_nxt
        } else {
            0
        };
        let field = if free >= advertised {
            free >> shift
        } else {
            // Round up so the advertised edge does not retreat.
            advertised.div_ceil(1 << shift)
        }
        .min(0xffff);
        let edge = self.rcv_nxt + (field << shift);
        if edge > self.rcv_adv {
            self.rcv_adv = edge;
        }
        field as u16
    }

    fn timestamps(&self, now: Instant) -> Option<Timestamps> {
        self.neg.timestamps.then(|| Timestamps {
            tsval: ts_clock(now, self.ts_offset),
            tsecr: self.ts_recent,
        })
    }

    /// A non-SYN header; with ACK set it acknowledges RCV.NXT and satisfies any
    /// pending (delayed) ACK. `sack`: our blocks (`sack_blocks`), computed by
    /// the caller because they shrink the payload that fits.
    fn header(&mut self, now: Instant, seq: Seq, flags: TcpFlags, sack: SackBlocks) -> TcpRepr {
        let window = self.window_field();
        self.ack_sent();
        TcpRepr {
            src_port: self.tuple.local.port(),
            dst_port: self.tuple.remote.port(),
            seq: seq.0,
            ack: self.rcv_nxt.0,
            flags,
            window,
            options: TcpOptions {
                timestamps: self.timestamps(now),
                sack,
                ..TcpOptions::default()
            },
        }
    }

    fn ack_sent(&mut self) {
        self.last_ack_sent = self.rcv_nxt;
        self.ack_now = false;
        self.delack_at = None;
        self.unacked_bytes = 0;
    }

    /// Our SYN (SYN-SENT) or SYN+ACK (SYN-RECEIVED), first or retransmitted.
    fn syn_segment(&mut self, now: Instant, ctx: &mut Ctx<'_>, with_ack: bool) -> TcpRepr {
        self.syn_pending = false;
        let tsval = ts_clock(now, self.ts_offset);
        let window = self.free_window().min(0xffff) as u16; // not scaled in a SYN
        let (flags, ack, opts) = if with_ack {
            self.ack_sent();
            (
                TcpFlags::SYN | TcpFlags::ACK,
                self.rcv_nxt.0,
                options::synack_options(ctx.cfg, &self.neg, self.peer_ws, tsval, self.ts_recent),
            )
        } else {
            (TcpFlags::SYN, 0, options::syn_options(ctx.cfg, tsval))
        };
        if self.snd_max != self.iss {
            ctx.stats.retransmits += 1;
            self.rexmit_tsval = Some(tsval);
        } else if !self.neg.timestamps {
            self.rtt_timing = Some((self.iss + 1u32, now));
        }
        self.snd_nxt = self.iss + 1u32;
        self.snd_max = self.snd_nxt;
        if self.rto_at.is_none() {
            self.rto_at = Some(now + self.rtt.rto());
        }
        TcpRepr {
            src_port: self.tuple.local.port(),
            dst_port: self.tuple.remote.port(),
            seq: self.iss.0,
            ack,
            flags,
            window,
            options: opts,
        }
    }

    /// Data and/or FIN from SND.NXT (or SND.UNA for a fast retransmit), as much
    /// as the MSS, the peer's window and the congestion window allow.
    fn data_segment(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        ctx: &mut Ctx<'_>,
    ) -> Option<(TcpRepr, usize)> {
        let sack = self.sack_blocks();
        // RFC 2018 3 blocks take option space: the payload shrinks to keep
        // the segment within the path's MTU (as Linux's tcp_current_mss).
        let opt_room = if sack.is_empty() {
            0
        } else {
            4 + 8 * sack.len()
        };
        let mss = usize::from(self.neg.snd_mss)
            .saturating_sub(opt_room)
            .max(1)
            .min(buf.len());
        let buf_start = self.buf_seq_start();
        let data_end = self.snd_data_end;
        let fin_pending = self.fin_queued && !self.fin_acked();
        let mut rexmit_source = None;
        let mut probing = false;

        let (seq, len) = if let Some((seq, len)) = self.take_probe(mss) {
            probing = true;
            (seq, len)
        } else if let Some((seq, len, source)) = self.sack_retransmit(mss) {
            rexmit_source = Some(source);
            self.rtt_timing = None;
            self.fast_rexmit = false;
            (seq, len)
        } else if self.fast_rexmit && !self.neg.sack {
            // RFC 5681 3.2 / RFC 6582: retransmit the first unacknowledged segment.
            self.fast_rexmit = false;
            let seq = self.snd_una;
            let avail = if data_end > seq {
                (data_end - seq) as usize
            } else {
                0
            };
            (seq, avail.min(mss))
        } else {
            // With SACK, a recovery entry with nothing left to resend.
            self.fast_rexmit = false;
            let seq = self.snd_nxt;
            let unsent = if data_end > seq {
                (data_end - seq) as usize
            } else {
                0
            };
            let flight = (seq - self.snd_una) as usize;
            // The congestion window against the pipe (RFC 6675: in-flight
            // bytes less those deemed lost), the peer's window against all
            // bytes beyond SND.UNA.
            let cwnd_room = self.cc.cwnd.saturating_sub(self.pipe()) as usize;
            let usable = (self.snd_wnd as usize)
                .saturating_sub(flight)
                .min(cwnd_room);
            let mut len = unsent.min(usable).min(mss);
            if self.bbr.is_some() {
                if unsent < mss && cwnd_room > 0 {
                    self.cc_app_limited();
                }
                if len > 0 && !self.cc_may_send(now) {
                    // Paced (src/tcp/bbr.rs): the connection's timer brings
                    // the endpoint back when the next segment may leave.
                    len = 0;
                }
            }
            if len > 0 && len < mss && len < unsent && flight > 0 {
                // Sender SWS avoidance (RFC 9293 3.8.6.2.1): don't send a
                // window-limited runt while data is outstanding.
                len = 0;
            }
            if ctx.cfg.nagle && len > 0 && len < mss && flight > 0 {
                // Nagle (RFC 9293 3.7.4): one small segment in flight at a time.
                len = 0;
            }
            if unsent > 0 && len == 0 && self.snd_wnd == 0 && flight == 0 && self.rto_at.is_none() {
                self.arm_persist(now, ctx.cfg.rto_max);
            }
            (seq, len)
        };
        let fin = fin_pending && seq + len == data_end;
        if len == 0 && !fin {
            return None;
        }
        // One probe per segment sent the ordinary way (`arm_tlp`).
        self.probed = probing;
        let off = (seq - buf_start) as usize;
        let copied = self.send_buf.copy_out(off, &mut buf[..len], ctx.pool);
        debug_assert_eq!(copied, len);
        let mut flags = TcpFlags::ACK;
        if len > 0 && seq + len == data_end {
            flags = flags | TcpFlags::PSH;
        }
        if fin {
            flags = flags | TcpFlags::FIN;
        }
        let end = seq + (len as u32 + u32::from(fin));
        if seq < self.snd_max {
            ctx.stats.retransmits += 1;
            ctx.stats.retransmitted_bytes += len as u64;
            self.rexmit_tsval = Some(ts_clock(now, self.ts_offset));
        } else if !self.neg.timestamps && self.rtt_timing.is_none() {
            self.rtt_timing = Some((end, now));
        }
        if self.bbr.is_some() {
            self.cc_on_sent(seq, end, now);
        }
        if probing && seq < self.snd_max && self.sb.is_some() {
            // RACK follows a probe's copy too: its delivery shows the
            // retransmissions sent before it lost.
            rexmit_source = Some(Source::Probe);
        }
        if let Some(source) = rexmit_source {
            let snd_max = self.snd_max;
            self.scoreboard()
                .on_retransmitted(seq, end, source, now, snd_max);
        }
        if end > self.snd_nxt {
            self.snd_nxt = end;
        }
        if end > self.snd_max {
            self.snd_max = end;
        }
        if self.rto_at.is_none() {
            self.rto_at = Some(now + self.rtt.rto());
        }
        self.persist_at = None;
        if self.neg.sack && !probing {
            // RFC 8985 7.2: "start or restart a loss probe PTO timer after
            // transmitting new data (that was not itself a loss probe)"; and
            // after a retransmission, since the probe also runs in recovery
            // (src/tcp/connection/sack.rs).
            self.update_loss_timer(now, true);
        }
        let seg = self.header(now, seq, flags, sack);
        Some((seg, len))
    }

    /// A pending tail loss probe (RFC 8985 7.3): one new segment if the
    /// peer's window allows, else the last segment sent, regardless of cwnd.
    fn take_probe(&mut self, mss: usize) -> Option<(Seq, usize)> {
        let probe = self.probe.take()?;
        let una = self.snd_una;
        let data_end = self.snd_data_end;
        if probe == Probe::NewData && self.snd_nxt < data_end {
            let in_flight = self.snd_nxt - una;
            let room = self.snd_wnd.saturating_sub(in_flight) as usize;
            let len = ((data_end - self.snd_nxt) as usize).min(mss).min(room);
            if len > 0 {
                return Some((self.snd_nxt, len));
            }
        }
        // The highest segment sent: up to one MSS of data ending at SND.MAX
        // (its FIN, if sent, goes with it: `data_segment` adds it at the end).
        let end = self.snd_max.min(data_end);
        if end < una {
            // Only our FIN is outstanding.
            return Some((una, 0));
        }
        if let Some(sb) = self.sb.as_deref().filter(|sb| !sb.is_empty()) {
            // Not what the receiver holds: the highest hole's top segment.
            return match sb.last_unsacked(una, end, mss as u32) {
                Some((seq, len)) => Some((seq, len as usize)),
                // Every data byte is SACKed: only a FIN can be missing.
                None => Some((end, 0)),
            };
        }
        let len = ((end - una) as usize).min(mss);
        Some((end - len as u32, len))
    }

    /// RFC 6675 5 (C): while "cwnd - pipe >= 1 SMSS", NextSeg's lost hole (or a
    /// retransmission RACK found lost): `(seq, data bytes, source)`.
    /// On entry to recovery (`fast_rexmit`) the first lost segment goes
    /// regardless, RFC 6675 5 (4.3): "Retransmit the first data segment
    /// presumed dropped".
    fn sack_retransmit(&self, mss: usize) -> Option<(Seq, usize, Source)> {
        let sb = self.sb.as_deref()?;
        let (una, max) = (self.snd_una, self.snd_max);
        if !self.fast_rexmit && self.cc.cwnd.saturating_sub(sb.pipe(una, max)) < mss as u32 {
            return None;
        }
        let (seq, run, source) = sb.next_seg(una, max, mss as u32)?;
        let data_end = self.snd_data_end;
        let len = if seq < data_end {
            ((data_end - seq) as usize).min(run as usize)
        } else {
            0
        };
        Some((seq, len, source))
    }
}
