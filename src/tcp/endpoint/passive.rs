//! Passive opens: segments for a listening port with no connection
//! (RFC 9293 3.10.7.2), the SYN queue, the accept queue and SYN cookies.

use super::Endpoint;
use crate::tcp::connection::{Connection, Ctx};
use crate::tcp::id::{ConnId, FourTuple};
use crate::tcp::isn::ts_clock;
use crate::tcp::options;
use crate::tcp::reset::reset_for;
use crate::tcp::seq::Seq;
use crate::tcp::state::State;
use crate::tcp::syn_cookies;
use crate::tcp::time::Instant;
use crate::tcp::timewait::TimeWait;
use crate::wire::{TcpFlags, TcpOptions, TcpRepr, Timestamps};

impl Endpoint {
    /// RFC 9293 3.10.7.2, LISTEN. `recycled`: the TIME-WAIT entry this SYN
    /// replaced (its sequence space is skipped by the new ISN).
    pub(super) fn listener_segment(
        &mut self,
        tuple: FourTuple,
        seg: &TcpRepr,
        payload: &[u8],
        now: Instant,
        recycled: Option<TimeWait>,
    ) {
        let f = seg.flags;
        if f.contains(TcpFlags::RST) {
            // First, an incoming RST is ignored.
            self.stats.dropped_segments += 1;
            return;
        }
        if f.contains(TcpFlags::ACK) {
            // Second, any ACK is bad in LISTEN ... unless it completes a SYN cookie.
            if !f.contains(TcpFlags::SYN) && self.config.syn_cookies {
                let full = self
                    .listeners
                    .get(&tuple.local.port())
                    .is_some_and(|l| l.accept_queue_full(self.config.accept_backlog));
                if full || self.at_connection_limit(tuple.local.port()) {
                    // Possibly a cookie we cannot take now: drop, the peer retries.
                    self.stats.accept_queue_overflow += 1;
                    self.stats.dropped_segments += 1;
                    return;
                }
                let recent = self
                    .listeners
                    .get(&tuple.local.port())
                    .is_some_and(|l| l.recent_overflow(now));
                if !recent {
                    // Linux validates cookies only after a recent SYN-queue
                    // overflow: otherwise no cookie of ours can be out there,
                    // and checking would give forged ACKs a 2^-24 chance.
                    self.stats.syn_cookies_no_overflow += 1;
                } else if self.cookie_ack(tuple, seg, payload, now) {
                    return;
                }
            }
            self.stats.dropped_segments += 1;
            if let Some(rst) = reset_for(seg, payload.len()) {
                self.stats.rst_unknown_flow += 1;
                self.push_control(tuple, rst);
            }
            return;
        }
        if !f.contains(TcpFlags::SYN) {
            self.stats.dropped_segments += 1;
            return;
        }
        // Third, a SYN.
        let port = tuple.local.port();
        let Some(listener) = self.listeners.get(&port).copied() else {
            return;
        };
        if self.at_connection_limit(port) {
            // What the kernel does with a full backlog: drop the SYN, so
            // the client retries later (no RST: it would look refused).
            self.stats.syn_dropped_max_connections += 1;
            self.stats.dropped_segments += 1;
            return;
        }
        if listener.accept_queue_full(self.config.accept_backlog) {
            // Like Linux: no new handshakes while completed ones wait.
            self.stats.accept_queue_overflow += 1;
            self.stats.dropped_segments += 1;
            return;
        }
        if listener.syn_queue_full(self.config.syn_backlog) {
            if self.config.syn_cookies {
                if let Some(l) = self.listeners.get_mut(&port) {
                    l.last_overflow = Some(now);
                }
                self.send_cookie_synack(tuple, seg, now);
            } else {
                self.stats.syn_queue_overflow += 1;
                self.stats.dropped_segments += 1;
            }
            return;
        }
        let Some((index, generation)) = self.alloc_slot() else {
            self.stats.dropped_segments += 1;
            return;
        };
        let mut iss = self.keys.isn(tuple, now);
        if let Some(old) = recycled {
            // Linux does the same: start well past the old incarnation's sequence space.
            let floor = old.snd_nxt + 65537u32;
            if iss < floor {
                iss = floor;
            }
        }
        let (send, recv) = self.take_buffers();
        let id = ConnId { index, generation };
        let ts_offset = self.keys.ts_offset(tuple);
        let conn = Connection::new_passive(
            id,
            tuple,
            iss,
            ts_offset,
            &self.config,
            send,
            recv,
            seg,
            now,
        );
        self.install(index, conn, now);
        self.count_passive(index, port);
    }

    /// The endpoint's or `port`'s listener's `max_connections` is reached.
    fn at_connection_limit(&self, port: u16) -> bool {
        self.by_tuple.len() >= self.config.max_connections
            || self.listeners.get(&port).is_some_and(|l| l.at_limit())
    }

    /// The SYN queue is full: answer statelessly with a cookie SYN+ACK.
    fn send_cookie_synack(&mut self, tuple: FourTuple, seg: &TcpRepr, now: Instant) {
        let peer = &seg.options;
        let neg = options::negotiate(&self.config, peer);
        let peer_mss = peer.mss.unwrap_or(options::DEFAULT_MSS);
        let isn = syn_cookies::encode_isn(&self.keys, tuple, Seq(seg.seq), peer_mss, now);
        let clock = ts_clock(now, self.keys.ts_offset(tuple));
        let tsval = syn_cookies::encode_tsval(clock, peer.window_scale, neg.sack);
        let mut opts = options::synack_options(
            &self.config,
            &neg,
            peer.window_scale.is_some(),
            tsval,
            peer.timestamps.map_or(0, |t| t.tsval),
        );
        if !neg.timestamps {
            // Without timestamps the cookie cannot carry window scale or SACK:
            // offer neither (as Linux does).
            opts.window_scale = None;
            opts.sack_permitted = false;
        }
        let synack = TcpRepr {
            src_port: tuple.local.port(),
            dst_port: tuple.remote.port(),
            seq: isn.0,
            ack: seg.seq.wrapping_add(1),
            flags: TcpFlags::SYN | TcpFlags::ACK,
            window: self.config.recv_buffer.min(0xffff) as u16,
            options: opts,
        };
        self.stats.syn_cookies_sent += 1;
        self.push_control(tuple, synack);
    }

    /// Whether `seg` (an ACK) completes a cookie handshake `tuple`'s
    /// listener would take now: cookies on, a recent overflow, a valid cookie.
    pub(super) fn cookie_valid(&self, tuple: FourTuple, seg: &TcpRepr, now: Instant) -> bool {
        if !self.config.syn_cookies
            || !self
                .listeners
                .get(&tuple.local.port())
                .is_some_and(|l| l.recent_overflow(now))
        {
            return false;
        }
        let ts = if self.config.timestamps {
            seg.options.timestamps
        } else {
            None
        };
        let clock = ts_clock(now, self.keys.ts_offset(tuple));
        syn_cookies::decode(
            &self.keys,
            tuple,
            Seq(seg.seq),
            Seq(seg.ack),
            ts,
            clock,
            now,
        )
        .is_some()
    }

    /// A bare ACK to a listener: if it carries a valid cookie, the connection
    /// is created ESTABLISHED and the segment processed by it. False otherwise.
    fn cookie_ack(
        &mut self,
        tuple: FourTuple,
        seg: &TcpRepr,
        payload: &[u8],
        now: Instant,
    ) -> bool {
        let ts_offset = self.keys.ts_offset(tuple);
        let ts = if self.config.timestamps {
            seg.options.timestamps
        } else {
            None
        };
        let Some(peer) = syn_cookies::decode(
            &self.keys,
            tuple,
            Seq(seg.seq),
            Seq(seg.ack),
            ts,
            ts_clock(now, ts_offset),
            now,
        ) else {
            self.stats.syn_cookies_rejected += 1;
            return false;
        };
        let Some((index, generation)) = self.alloc_slot() else {
            return false;
        };
        self.stats.syn_cookies_accepted += 1;
        let (send, recv) = self.take_buffers();
        let id = ConnId { index, generation };
        let iss = Seq(seg.ack) - 1u32;
        // Rebuild the SYN as far as the cookie recorded it.
        let syn = TcpRepr {
            seq: seg.seq.wrapping_sub(1),
            window: seg.window,
            options: TcpOptions {
                timestamps: peer.timestamps.map(|t| Timestamps {
                    tsval: t.tsval,
                    tsecr: 0,
                }),
                ..peer
            },
            ..*seg
        };
        let mut conn = Connection::new_passive(
            id,
            tuple,
            iss,
            ts_offset,
            &self.config,
            send,
            recv,
            &syn,
            now,
        );
        // Our SYN+ACK went out statelessly: the handshake is done by this ACK.
        conn.syn_pending = false;
        conn.snd_nxt = iss + 1u32;
        conn.snd_max = conn.snd_nxt;
        conn.rcv_adv = conn.rcv_nxt + self.config.recv_buffer.min(0xffff) as u32;
        conn.state = State::SynReceived;
        self.install(index, conn, now);
        self.count_passive(index, tuple.local.port());
        let slot = &mut self.slots[index as usize];
        if let Some(conn) = slot.conn.as_mut() {
            let mut ctx = Ctx {
                cfg: &self.config,
                stats: &mut self.stats,
                events: &mut self.events,
                ctl: &mut self.ctl,
                pool: &mut self.pool,
            };
            conn.on_segment(seg, payload, now, &mut ctx);
        }
        self.after_call(index, now, true);
        true
    }
}
