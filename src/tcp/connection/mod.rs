//! One connection's state machine (RFC 9293 3.3.2), split by concern:
//! `input` (segment arrival, 3.10.7), `output` (segment generation),
//! `timers` (retransmission, delayed ACK, persist, linger) and the application
//! calls below (3.10.1 to 3.10.5).

mod congestion;
mod input;
mod keepalive;
mod output;
pub(crate) mod pmtu;
mod sack;
mod timers;

use super::bbr::Bbr;
use super::config::Config;
use super::congestion::NewReno;
use super::control::ControlQueue;
use super::error::ConnError;
use super::event::Event;
use super::id::{ConnId, FourTuple};
use super::options::{self, Negotiated};
use super::pool::ChunkPool;
use super::reassembly::RecvBuffer;
use super::rtt::RttEstimator;
use super::scoreboard::Scoreboard;
use super::send_buffer::SendBuffer;
use super::seq::Seq;
use super::state::State;
use super::stats::Stats;
use super::time::Instant;
use crate::wire::{TcpOptions, TcpRepr};
use std::collections::VecDeque;

/// What a connection may touch of its endpoint while it runs.
pub(crate) struct Ctx<'a> {
    pub(crate) cfg: &'a Config,
    pub(crate) stats: &'a mut Stats,
    pub(crate) events: &'a mut VecDeque<(ConnId, Event)>,
    pub(crate) ctl: &'a mut ControlQueue,
    /// The shard's chunk pool, which the buffers store their bytes in.
    pub(crate) pool: &'a mut ChunkPool,
}

/// How a connection ended; the endpoint frees it and tells the application.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum End {
    /// Both FINs exchanged and acknowledged (or the application closed before
    /// the handshake finished): `Event::Closed`.
    Orderly,
    Reset,
    TimedOut,
    Refused,
    /// No event: aborted by the application, or a passive open it never saw.
    Silent,
}

/// The full state of a connection (its TIME_WAIT remainder is `timewait::TimeWait`).
pub(crate) struct Connection {
    pub(crate) id: ConnId,
    pub(crate) tuple: FourTuple,
    pub(crate) state: State,
    /// Opened by a listener (a passive open).
    pub(crate) passive: bool,
    /// The application has this id (active opens; passive ones after `Accepted`).
    pub(crate) app_knows: bool,
    /// The application called `close`: it is done with the id.
    pub(crate) app_closed: bool,
    /// The local port came from the port allocator (released when the tuple is gone).
    pub(crate) holds_port: bool,
    pub(crate) end: Option<End>,

    // RFC 9293 3.3.1, send sequence variables.
    pub(crate) iss: Seq,
    /// Our SYN has been acknowledged (SND.UNA passed ISS). An explicit flag, not
    /// `snd_una == iss`: after 2^32 - 1 bytes SND.UNA equals ISS again.
    pub(crate) syn_acked: bool,
    pub(crate) snd_una: Seq,
    /// Next sequence number to send (rewound to SND.UNA on a retransmission timeout).
    pub(crate) snd_nxt: Seq,
    /// Highest sequence number sent plus one.
    pub(crate) snd_max: Seq,
    pub(crate) snd_wnd: u32,
    pub(crate) snd_wl1: Seq,
    pub(crate) snd_wl2: Seq,
    pub(crate) max_snd_wnd: u32,
    /// Sequence number after the last byte queued by the application; the
    /// sequence number of our FIN once `fin_queued`.
    pub(crate) snd_data_end: Seq,
    pub(crate) fin_queued: bool,

    // RFC 9293 3.3.1, receive sequence variables.
    pub(crate) irs: Seq,
    pub(crate) rcv_nxt: Seq,
    /// Right edge of the window we last advertised (never moved left, RFC 9293 3.8.6).
    pub(crate) rcv_adv: Seq,
    /// RFC 7323 4.3: RCV.NXT as of the last ACK we sent.
    pub(crate) last_ack_sent: Seq,
    /// Sequence number of the peer's FIN, once seen (possibly before earlier data).
    pub(crate) peer_fin_at: Option<Seq>,
    pub(crate) peer_fin: bool,

    pub(crate) neg: Negotiated,
    /// The peer's SYN carried window scale (so our SYN+ACK does too).
    pub(crate) peer_ws: bool,
    pub(crate) ts_offset: u32,
    /// RFC 7323 4.3 TS.Recent and when it was set (for the 24-day PAWS rule).
    pub(crate) ts_recent: u32,
    pub(crate) ts_recent_at: Instant,

    pub(crate) send_buf: SendBuffer,
    pub(crate) recv_buf: RecvBuffer,
    pub(crate) rtt: RttEstimator,
    /// Karn timing without timestamps: (sequence number that ends the timed
    /// segment, when it was sent). Cleared on any retransmission.
    pub(crate) rtt_timing: Option<(Seq, Instant)>,
    /// Our TSval when we last retransmitted: Karn's rule for timestamps. An
    /// echo older than this belongs to a segment sent before the retransmission
    /// (its ACK was lost), and would inflate RTT by the whole timeout.
    pub(crate) rexmit_tsval: Option<u32>,
    pub(crate) cc: NewReno,
    /// The model-based controller, when `Config::congestion` picks it
    /// (boxed: a NewReno connection carries 8 bytes for it).
    pub(crate) bbr: Option<Box<Bbr>>,
    /// RFC 6675 scoreboard, boxed and made at the first sign of loss: a
    /// connection that never loses anything carries 8 bytes for it.
    pub(crate) sb: Option<Box<Scoreboard>>,
    /// Receiver side: starts of the most recently received out-of-order
    /// segments, newest first, for the order of our SACK blocks (RFC 2018 4).
    pub(crate) sack_recent: [u32; sack::SACK_RECENT],
    pub(crate) sack_recent_len: u8,
    /// RACK reordering timer or tail loss probe (RFC 8985), never both.
    pub(crate) loss_timer: Option<(sack::LossTimer, Instant)>,
    /// A tail loss probe to send on the next poll.
    pub(crate) probe: Option<sack::Probe>,
    /// The last segment sent with data or FIN was a tail loss probe: no
    /// further probe until the ACK clock lets an ordinary segment go.
    pub(crate) probed: bool,

    pub(crate) rto_at: Option<Instant>,
    pub(crate) delack_at: Option<Instant>,
    pub(crate) persist_at: Option<Instant>,
    pub(crate) persist_backoff: u8,
    /// Window probes sent since the peer last sent an acceptable ACK.
    pub(crate) probes: u8,
    /// RFC 1122 4.2.3.6 keepalive, when on for this connection.
    pub(crate) keepalive: Option<keepalive::KeepaliveTimer>,
    /// TIME_WAIT held in full (application still reading), or orphaned FIN_WAIT_2.
    pub(crate) linger_at: Option<Instant>,
    pub(crate) retries: u8,

    /// (Re)send our SYN or SYN+ACK.
    pub(crate) syn_pending: bool,
    pub(crate) syn_retransmitted: bool,
    pub(crate) ack_now: bool,
    /// Further duplicate ACKs owed, one per out-of-order segment beyond the
    /// first since the last poll (RFC 5681 4.2: "a TCP receiver SHOULD send an
    /// immediate duplicate ACK when an out-of-order segment arrives"). A rx
    /// batch delivers many segments before `poll_transmit` runs; one ACK for
    /// all of them would hide the loss from a sender counting duplicates.
    pub(crate) dupacks_owed: u8,
    /// Bytes received since our last ACK (delayed ACK: ACK every second full segment).
    pub(crate) unacked_bytes: u32,
    pub(crate) fast_rexmit: bool,
    pub(crate) probe_pending: bool,

    pub(crate) readable_pending: bool,
    pub(crate) writable_wanted: bool,
    /// RFC 5961 7 rate limit: second (of `Instant`) and ACKs sent in it.
    chal_second: u32,
    chal_count: u32,

    /// Endpoint bookkeeping: live timer-heap entry, membership of the send queue.
    pub(crate) scheduled: Option<Instant>,
    pub(crate) in_send_queue: bool,
}

impl Connection {
    fn new(
        id: ConnId,
        tuple: FourTuple,
        iss: Seq,
        ts_offset: u32,
        cfg: &Config,
        send: SendBuffer,
        recv: RecvBuffer,
    ) -> Self {
        let neg = options::negotiate(cfg, &TcpOptions::default());
        Connection {
            id,
            tuple,
            state: State::Closed,
            passive: false,
            app_knows: false,
            app_closed: false,
            holds_port: false,
            end: None,
            iss,
            syn_acked: false,
            snd_una: iss,
            snd_nxt: iss,
            snd_max: iss,
            snd_wnd: 0,
            snd_wl1: Seq(0),
            snd_wl2: iss,
            max_snd_wnd: 0,
            snd_data_end: iss + 1u32,
            fin_queued: false,
            irs: Seq(0),
            rcv_nxt: Seq(0),
            rcv_adv: Seq(0),
            last_ack_sent: Seq(0),
            peer_fin_at: None,
            peer_fin: false,
            neg,
            peer_ws: false,
            ts_offset,
            ts_recent: 0,
            ts_recent_at: Instant::ZERO,
            send_buf: send,
            recv_buf: recv,
            rtt: RttEstimator::new(cfg.rto_initial),
            rtt_timing: None,
            rexmit_tsval: None,
            cc: NewReno::new(u32::from(neg.snd_mss)),
            bbr: None,
            sb: None,
            sack_recent: [0; sack::SACK_RECENT],
            sack_recent_len: 0,
            loss_timer: None,
            probe: None,
            probed: false,
            rto_at: None,
            delack_at: None,
            persist_at: None,
            persist_backoff: 0,
            probes: 0,
            keepalive: None,
            linger_at: None,
            retries: 0,
            syn_pending: false,
            syn_retransmitted: false,
            ack_now: false,
            dupacks_owed: 0,
            unacked_bytes: 0,
            fast_rexmit: false,
            probe_pending: false,
            readable_pending: false,
            writable_wanted: false,
            chal_second: 0,
            chal_count: 0,
            scheduled: None,
            in_send_queue: false,
        }
    }

    /// RFC 9293 3.10.1 OPEN, active: a SYN goes out on the next `poll_transmit`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new_active(
        id: ConnId,
        tuple: FourTuple,
        iss: Seq,
        ts_offset: u32,
        cfg: &Config,
        send: SendBuffer,
        recv: RecvBuffer,
    ) -> Self {
        let mut c = Connection::new(id, tuple, iss, ts_offset, cfg, send, recv);
        c.state = State::SynSent;
        // The idle period starts when the handshake completes.
        c.set_keepalive(cfg.keepalive_active.as_ref(), Instant::ZERO);
        c.app_knows = true;
        c.syn_pending = true;
        c
    }

    /// RFC 9293 3.10.7.2: a SYN reached a listener; we answer with SYN+ACK.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new_passive(
        id: ConnId,
        tuple: FourTuple,
        iss: Seq,
        ts_offset: u32,
        cfg: &Config,
        send: SendBuffer,
        recv: RecvBuffer,
        syn: &TcpRepr,
        now: Instant,
    ) -> Self {
        let mut c = Connection::new(id, tuple, iss, ts_offset, cfg, send, recv);
        c.state = State::SynReceived;
        c.passive = true;
        c.syn_pending = true;
        c.set_keepalive(cfg.keepalive_passive(tuple.local.port()).as_ref(), now);
        c.accept_peer_syn(syn, now, cfg);
        c
    }

    /// Record the peer's SYN (from LISTEN or SYN-SENT): IRS, RCV.NXT, options.
    pub(crate) fn accept_peer_syn(&mut self, syn: &TcpRepr, now: Instant, cfg: &Config) {
        self.irs = Seq(syn.seq);
        self.rcv_nxt = self.irs + 1u32;
        self.last_ack_sent = self.rcv_nxt;
        self.neg = options::negotiate(cfg, &syn.options);
        self.peer_ws = syn.options.window_scale.is_some();
        self.init_congestion(cfg);
        if let (true, Some(ts)) = (self.neg.timestamps, syn.options.timestamps) {
            self.ts_recent = ts.tsval;
            self.ts_recent_at = now;
        }
        // RFC 7323 2.2: the window in a SYN is never scaled.
        self.snd_wnd = u32::from(syn.window);
        self.max_snd_wnd = self.snd_wnd;
        self.snd_wl1 = self.irs;
        self.rcv_adv = self.rcv_nxt + self.recv_buf.window().min(0xffff);
    }

    /// The sender's loss-recovery state, relative to SND.UNA (diagnostics in tests).
    #[cfg(test)]
    pub(crate) fn sender_dump(&self) -> String {
        let una = self.snd_una;
        let rel = |s: Seq| s - una;
        format!(
            "una+ nxt {} max {} data_end {} wnd {} cwnd {} ssthresh {} pipe {} rec {} recover {:?} \
             retries {} probed {} loss_timer {:?} rto_at {:?} state {:?} sb {:?}",
            rel(self.snd_nxt),
            rel(self.snd_max),
            rel(self.snd_data_end),
            self.snd_wnd,
            self.cc.cwnd,
            self.cc.ssthresh,
            self.pipe(),
            self.cc.in_recovery,
            self.cc.recover.map(|r| r - una),
            self.retries,
            self.probed,
            self.loss_timer.map(|(k, _)| k),
            self.rto_at.map(Instant::as_micros),
            self.state,
            self.sb.as_deref().map(|sb| sb.dump(una)),
        )
    }

    /// The sequence number of the first byte in the send buffer.
    pub(crate) fn buf_seq_start(&self) -> Seq {
        if self.syn_acked {
            self.snd_una
        } else {
            self.iss + 1u32
        }
    }

    pub(crate) fn fin_acked(&self) -> bool {
        self.fin_queued && self.snd_una > self.snd_data_end
    }

    pub(crate) fn push_event(&self, ctx: &mut Ctx<'_>, event: Event) {
        ctx.events.push_back((self.id, event));
    }

    /// RFC 5961 7: allow an ACK for an unacceptable segment (challenge ACK) at most
    /// `limit` times a second per connection. Per connection rather than global,
    /// because a global counter is the side channel of CVE-2016-5696.
    pub(crate) fn rate_limited_ack(&mut self, now: Instant, ctx: &mut Ctx<'_>, challenge: bool) {
        let second = (now.as_micros() / 1_000_000) as u32;
        if second != self.chal_second {
            self.chal_second = second;
            self.chal_count = 0;
        }
        if self.chal_count < ctx.cfg.challenge_ack_limit {
            self.chal_count += 1;
            self.ack_now = true;
            if challenge {
                ctx.stats.challenge_acks += 1;
            }
        } else if challenge {
            ctx.stats.challenge_acks_suppressed += 1;
        }
    }

    /// The window we can advertise now, in bytes (all space when the application
    /// has closed: we discard what arrives).
    pub(crate) fn free_window(&self) -> u32 {
        if self.app_closed {
            self.recv_buf.capacity() as u32
        } else {
            self.recv_buf.window() as u32
        }
    }

    // ---- Application calls (RFC 9293 3.10.2 to 3.10.5) ----

    /// SEND: queue what fits. Data queued before the handshake completes goes out after it.
    pub(crate) fn app_send(
        &mut self,
        data: &[u8],
        pool: &mut ChunkPool,
    ) -> Result<usize, ConnError> {
        if self.fin_queued || self.app_closed {
            return Err(ConnError::SendClosed);
        }
        if !self.state.can_send() {
            return Err(ConnError::NotConnected);
        }
        let n = self.send_buf.push(data, pool);
        self.snd_data_end += n as u32;
        if n < data.len() {
            self.writable_wanted = true;
        }
        Ok(n)
    }

    /// RECEIVE: copy in-order data out; may open the window (RFC 9293 3.8.6.2.2).
    pub(crate) fn app_recv(&mut self, buf: &mut [u8], cfg: &Config, pool: &mut ChunkPool) -> usize {
        self.readable_pending = false;
        let n = self.recv_buf.read(buf, pool);
        self.after_app_read(n, cfg);
        n
    }

    /// RECEIVE of `n` bytes without copying them out (`Endpoint::relay`
    /// copied them into another connection's send buffer first).
    pub(crate) fn app_discard(&mut self, n: usize, cfg: &Config, pool: &mut ChunkPool) {
        self.readable_pending = false;
        let n = n.min(self.recv_buf.readable());
        self.recv_buf.discard(n, pool);
        self.after_app_read(n, cfg);
    }

    /// SEND's bookkeeping for `n` bytes the caller put in the send buffer
    /// itself (`Endpoint::relay`), `wanted` being what it had to offer.
    pub(crate) fn app_sent(&mut self, n: usize, wanted: usize) {
        self.snd_data_end += n as u32;
        if n < wanted {
            self.writable_wanted = true;
        }
    }

    /// Whether SEND is allowed now (the checks of `app_send`).
    pub(crate) fn app_can_send(&self) -> Result<(), ConnError> {
        if self.fin_queued || self.app_closed {
            return Err(ConnError::SendClosed);
        }
        if !self.state.can_send() {
            return Err(ConnError::NotConnected);
        }
        Ok(())
    }

    fn after_app_read(&mut self, n: usize, cfg: &Config) {
        if n > 0 && self.state.can_receive() {
            // Receiver SWS avoidance: announce the opening once it is at least
            // min(buffer/2, MSS) beyond what was advertised, and the advertised
            // window had fallen below half the buffer.
            let advertised = if self.rcv_adv > self.rcv_nxt {
                self.rcv_adv - self.rcv_nxt
            } else {
                0
            };
            let cap = self.recv_buf.capacity() as u32;
            let step = (cap / 2).min(u32::from(cfg.mss));
            if advertised < cap / 2 && self.free_window() >= advertised + step {
                self.ack_now = true;
            }
        }
    }

    /// Half-close (CLOSE of RFC 9293 3.10.4 for the sending direction): FIN after queued data.
    pub(crate) fn app_shutdown(&mut self) {
        if self.fin_queued {
            return;
        }
        self.fin_queued = true;
        match self.state {
            State::Established => self.state = State::FinWait1,
            State::CloseWait => self.state = State::LastAck,
            // SYN-SENT / SYN-RECEIVED: the FIN goes out after the handshake
            // (RFC 9293 3.10.4, "queue for processing after entering ESTABLISHED").
            _ => {}
        }
    }

    /// CLOSE: the application is done with the id.
    pub(crate) fn app_close(&mut self, now: Instant, cfg: &Config, pool: &mut ChunkPool) {
        self.app_closed = true;
        self.recv_buf.discard(self.recv_buf.readable(), pool);
        match self.state {
            // RFC 9293 3.10.4: CLOSE in SYN-SENT deletes the TCB.
            State::SynSent => self.end = Some(End::Orderly),
            State::FinWait2 => self.linger_at = Some(now + cfg.fin_wait2_timeout),
            State::TimeWait | State::Closed => {}
            _ => self.app_shutdown(),
        }
    }

    /// ABORT (RFC 9293 3.10.5): `<SEQ=SND.NXT><CTL=RST>` in synchronized states.
    pub(crate) fn app_abort(&mut self) -> Option<TcpRepr> {
        self.end = Some(End::Silent);
        let rst = match self.state {
            State::SynReceived
            | State::Established
            | State::FinWait1
            | State::FinWait2
            | State::CloseWait => Some(TcpRepr {
                src_port: self.tuple.local.port(),
                dst_port: self.tuple.remote.port(),
                seq: self.snd_max.0,
                ack: 0,
                flags: crate::wire::TcpFlags::RST,
                window: 0,
                options: TcpOptions::default(),
            }),
            _ => None,
        };
        self.state = State::Closed;
        rst
    }

    /// The application can read or is still owed the end of the stream.
    pub(crate) fn recv_available(&self) -> usize {
        if self.app_closed {
            0
        } else {
            self.recv_buf.readable()
        }
    }

    pub(crate) fn send_capacity(&self) -> usize {
        if self.fin_queued || self.app_closed || !self.state.can_send() {
            0
        } else {
            self.send_buf.free()
        }
    }

    /// Earliest of this connection's timers.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        [
            self.rto_at,
            self.delack_at,
            self.persist_at,
            self.linger_at,
            self.loss_timer.map(|(_, at)| at),
            self.pacing_deadline(),
            self.keepalive
                .filter(|_| self.state.is_synchronized())
                .map(|k| k.at),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Something may be ready for `poll_transmit` (a cheap over-approximation).
    pub(crate) fn wants_transmit(&self) -> bool {
        if self.end.is_some() {
            return false;
        }
        self.syn_pending
            || self.ack_now
            || self.dupacks_owed > 0
            || self.fast_rexmit
            || self.probe_pending
            || self.probe.is_some()
            || self
                .sb
                .as_deref()
                .is_some_and(|sb| sb.has_lost(self.snd_una, self.snd_max))
            || (self.state.is_synchronized()
                && (self.snd_nxt < self.snd_data_end
                    || (self.fin_queued && self.snd_nxt == self.snd_data_end)))
    }

    /// Give the buffers' chunks back to the pool.
    pub(crate) fn release_buffers(&mut self, pool: &mut ChunkPool) {
        self.send_buf.release(pool);
        self.recv_buf.release(pool);
    }
}
