//! The endpoint's side of TIME-WAIT: turning a connection into a compact entry,
//! and answering segments that reach an entry (RFC 9293 3.10.7.4, TIME-WAIT;
//! RFC 6191 and RFC 1122 4.2.2.13 for SYNs that may reopen the tuple).

use super::{Endpoint, dest_key};
use crate::tcp::id::FourTuple;
use crate::tcp::isn::ts_clock;
use crate::tcp::time::Instant;
use crate::tcp::timewait::TimeWait;
use crate::wire::{TcpFlags, TcpOptions, TcpRepr, Timestamps};
use std::net::SocketAddrV4;

impl Endpoint {
    /// Connection `index` is in TIME-WAIT and the application is done with it:
    /// keep a compact entry, free the rest.
    pub(super) fn compact(&mut self, index: u32, now: Instant) {
        let Some(mut conn) = self.unlink(index) else {
            return;
        };
        let two_msl = 2 * self.config.msl;
        let expiry = conn.linger_at.unwrap_or(now + two_msl);
        let window = conn.window_field();
        let entry = TimeWait {
            expiry,
            entered: expiry - two_msl,
            snd_nxt: conn.snd_max,
            rcv_nxt: conn.rcv_nxt,
            ts_recent: conn.ts_recent,
            ts_offset: conn.ts_offset,
            ts_last: ts_clock(now, conn.ts_offset),
            window,
            timestamps: conn.neg.timestamps,
            holds_port: conn.holds_port,
        };
        let tuple = conn.tuple;
        if conn.ack_now {
            // The ACK of the peer's FIN that took us here.
            let ack = time_wait_ack(&tuple, &entry, now);
            self.push_control(tuple, ack);
        }
        if entry.holds_port {
            let time_wait = &self.time_wait;
            let (local, remote) = (*tuple.local.ip(), tuple.remote);
            self.ports.push_time_wait(
                dest_key(&tuple),
                tuple.local.port(),
                entry.entered,
                |port, entered| {
                    let t = FourTuple {
                        local: SocketAddrV4::new(local, port),
                        remote,
                    };
                    time_wait.get(&t).is_some_and(|e| e.entered == entered)
                },
            );
        }
        if let Some((old, evicted)) = self.time_wait.insert(tuple, entry) {
            self.stats.time_wait_dropped_early += 1;
            if evicted.holds_port {
                self.ports.release(dest_key(&old), old.local.port());
            }
        }
        self.recycle(conn, true);
    }

    /// RFC 5961 7 for TIME-WAIT entries: "An implementation SHOULD include an
    /// ACK throttling mechanism". A budget shared by all entries, but drawn
    /// anew each second between limit/2 and 1.5 x limit, keyed by the secret
    /// (Linux's fix of CVE-2016-5696, commit 75ff39ccc1bd): an off-path
    /// attacker counting our challenge ACKs cannot tell how many of the
    /// budget its own probes used, so the shared counter leaks nothing.
    fn time_wait_ack_allowed(&mut self, now: Instant) -> bool {
        let second = (now.as_micros() / 1_000_000) as u32;
        if second != self.tw_ack_second {
            self.tw_ack_second = second;
            // What is left of this second's budget.
            self.tw_ack_count = self
                .keys
                .challenge_budget(second, self.config.challenge_ack_limit);
        }
        if self.tw_ack_count > 0 {
            self.tw_ack_count -= 1;
            true
        } else {
            self.stats.challenge_acks_suppressed += 1;
            false
        }
    }

    fn send_time_wait_ack(&mut self, tuple: FourTuple, now: Instant) {
        let Some(entry) = self.time_wait.get_mut(&tuple) else {
            return;
        };
        let ack = time_wait_ack(&tuple, entry, now);
        if let Some(ts) = ack.options.timestamps {
            entry.ts_last = ts.tsval;
        }
        self.push_control(tuple, ack);
    }

    /// A segment for a tuple in TIME-WAIT.
    pub(super) fn time_wait_segment(
        &mut self,
        tuple: FourTuple,
        seg: &TcpRepr,
        payload: &[u8],
        now: Instant,
    ) {
        let Some(entry) = self.time_wait.get(&tuple).copied() else {
            return;
        };
        let f = seg.flags;
        let ts = seg.options.timestamps;
        if f.contains(TcpFlags::RST) {
            // RFC 1337: a RST must not end TIME-WAIT early (TIME-WAIT assassination).
            return self.drop_time_wait();
        }
        let newer_ts = |ts: Option<Timestamps>| {
            ts.is_some_and(|t| (t.tsval.wrapping_sub(entry.ts_recent) as i32) > 0)
        };
        if f.contains(TcpFlags::SYN) && !f.contains(TcpFlags::ACK) {
            // A new incarnation may start if it cannot be confused with the old:
            // RFC 6191 with timestamps (TSval newer than the entry's), else
            // RFC 1122 4.2.2.13 (ISN beyond the entry's RCV.NXT).
            let seq = crate::tcp::seq::Seq(seg.seq);
            let recyclable = if entry.timestamps && ts.is_some() {
                newer_ts(ts)
            } else {
                seq > entry.rcv_nxt
            };
            if recyclable && self.listeners.contains_key(&tuple.local.port()) {
                let entry = self.time_wait.remove(&tuple).expect("entry just read");
                if entry.holds_port {
                    self.ports.release(dest_key(&tuple), tuple.local.port());
                }
                self.stats.time_wait_recycled_passive += 1;
                self.listener_segment(tuple, seg, payload, now, Some(entry));
                return;
            }
            // RFC 9293 3.10.7.4 with RFC 5961 4.2: answer with the TIME-WAIT ACK.
            self.stats.dropped_segments += 1;
            self.stats.drop_time_wait += 1;
            if self.time_wait_ack_allowed(now) {
                self.stats.challenge_acks += 1;
                self.send_time_wait_ack(tuple, now);
            }
            return;
        }
        // The ACK completing a cookie handshake of a new incarnation: its
        // SYN was answered statelessly (in XDP during a flood, which cannot
        // see this entry), so the SYN's RFC 6191 / RFC 1122 4.2.2.13 check
        // is made here on the ACK, and only a valid cookie ends the entry
        // (a forged ACK cannot assassinate it, RFC 1337).
        if f.contains(TcpFlags::ACK) && !f.intersects(TcpFlags::SYN | TcpFlags::RST) {
            let peer_isn = crate::tcp::seq::Seq(seg.seq) - 1u32;
            let recyclable = if entry.timestamps && ts.is_some() {
                newer_ts(ts)
            } else {
                peer_isn > entry.rcv_nxt
            };
            if recyclable && self.cookie_valid(tuple, seg, now) {
                let entry = self.time_wait.remove(&tuple).expect("entry just read");
                if entry.holds_port {
                    self.ports.release(dest_key(&tuple), tuple.local.port());
                }
                self.stats.time_wait_recycled_passive += 1;
                self.listener_segment(tuple, seg, payload, now, None);
                return;
            }
        }
        // RFC 7323 5.3 PAWS.
        if entry.timestamps
            && let Some(t) = ts
            && (t.tsval.wrapping_sub(entry.ts_recent) as i32) < 0
        {
            self.stats.drop_paws += 1;
            self.drop_time_wait();
            if self.time_wait_ack_allowed(now) {
                self.send_time_wait_ack(tuple, now);
            }
            return;
        }
        let seq = crate::tcp::seq::Seq(seg.seq);
        if f.contains(TcpFlags::FIN) && seq + (payload.len() as u32 + 1) == entry.rcv_nxt {
            // The peer's FIN again (our ACK was lost): ACK it, restart 2 MSL.
            if let Some(e) = self.time_wait.get_mut(&tuple)
                && let Some(t) = ts
                && (t.tsval.wrapping_sub(e.ts_recent) as i32) > 0
            {
                e.ts_recent = t.tsval;
            }
            self.stats.time_wait_fin_reacked += 1;
            self.time_wait.restart(&tuple, now + 2 * self.config.msl);
            self.send_time_wait_ack(tuple, now);
            return;
        }
        // Anything else is an old duplicate and is dropped. One carrying data
        // or a FIN means the peer still lacks our ACK (it is retransmitting into
        // our TIME-WAIT): answer it without a rate limit (RFC 9293, unacceptable
        // segments get an ACK; data is no ACK-loop risk, as Linux reasons) and,
        // like Linux, restart 2 MSL so the peer's next (backed-off)
        // retransmission still finds us. A bare ACK gets nothing (no ACK war).
        self.drop_time_wait();
        let seg_end = seq + (payload.len() as u32 + u32::from(f.contains(TcpFlags::FIN)));
        // Only a plausible retransmission: old data within what our receive
        // window could have covered (a blind guess rarely is).
        let plausible = seq < entry.rcv_nxt
            && seg_end <= entry.rcv_nxt
            && entry.rcv_nxt - seq <= self.config.recv_buffer as u32 + 1;
        if seg_end != seq && plausible {
            self.time_wait.restart(&tuple, now + 2 * self.config.msl);
            self.send_time_wait_ack(tuple, now);
        } else if seg_end != seq && self.time_wait_ack_allowed(now) {
            self.send_time_wait_ack(tuple, now);
        }
    }

    fn drop_time_wait(&mut self) {
        self.stats.dropped_segments += 1;
        self.stats.drop_time_wait += 1;
    }
}

/// `<SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>` from a TIME-WAIT entry.
pub(super) fn time_wait_ack(tuple: &FourTuple, e: &TimeWait, now: Instant) -> TcpRepr {
    TcpRepr {
        src_port: tuple.local.port(),
        dst_port: tuple.remote.port(),
        seq: e.snd_nxt.0,
        ack: e.rcv_nxt.0,
        flags: TcpFlags::ACK,
        window: e.window,
        options: TcpOptions {
            timestamps: e.timestamps.then(|| Timestamps {
                tsval: ts_clock(now, e.ts_offset),
                tsecr: e.ts_recent,
            }),
            ..TcpOptions::default()
        },
    }
}
