//! Segment generation: SYN, SYN+ACK, data and FIN (with congestion and flow
//! control), retransmissions, window probes and ACKs.

use super::{Connection, Ctx};
use crate::tcp::isn::ts_clock;
use crate::tcp::options;
use crate::tcp::seq::Seq;
use crate::tcp::state::State;
use crate::tcp::time::Instant;
use crate::wire::{TcpFlags, TcpOptions, TcpRepr, Timestamps};

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
                let seg = self.header(now, self.snd_una - 1u32, TcpFlags::ACK);
                return Some((seg, 0));
            }
        }
        if self.ack_now {
            // SEQ = SND.MAX rather than a rewound SND.NXT, so the peer finds it acceptable.
            let seg = self.header(now, self.snd_max, TcpFlags::ACK);
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
    /// pending (delayed) ACK.
    fn header(&mut self, now: Instant, seq: Seq, flags: TcpFlags) -> TcpRepr {
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
        let mss = usize::from(self.neg.snd_mss).min(buf.len());
        let buf_start = self.buf_seq_start();
        let data_end = self.snd_data_end;
        let fin_pending = self.fin_queued && !self.fin_acked();

        let (seq, len) = if self.fast_rexmit {
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
            let seq = self.snd_nxt;
            let unsent = if data_end > seq {
                (data_end - seq) as usize
            } else {
                0
            };
            let flight = (seq - self.snd_una) as usize;
            let wnd = self.snd_wnd.min(self.cc.cwnd) as usize;
            let usable = wnd.saturating_sub(flight);
            let mut len = unsent.min(usable).min(mss);
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
            self.rexmit_tsval = Some(ts_clock(now, self.ts_offset));
        } else if !self.neg.timestamps && self.rtt_timing.is_none() {
            self.rtt_timing = Some((end, now));
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
        let seg = self.header(now, seq, flags);
        Some((seg, len))
    }
}
