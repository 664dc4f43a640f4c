//! RFC 1122 4.2.3.6 keepalive: probe an idle connection, reset it when the
//! peer stops answering.
//!
//! "Keep-alive packets MUST only be sent when no data or acknowledgement
//! packets have been received for the connection within an interval", and
//! "an implementation SHOULD send a keep-alive segment with no data", with
//! "SEG.SEQ = SND.NXT-1" so that the peer, finding it outside its window,
//! answers with an ACK. That probe has the form of our zero-window probe
//! (SND.UNA - 1 = SND.NXT - 1 when nothing is in flight), so it goes out
//! through `probe_pending`.

use super::{Connection, Ctx, End};
use crate::tcp::config::Keepalive;
use crate::tcp::state::State;
use crate::tcp::time::Instant;
use std::num::NonZeroU8;

/// One connection's keepalive: its settings in compact form and its timer.
/// 24 bytes inside `Option` (the count is never zero, which gives `Option`
/// its niche).
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeepaliveTimer {
    /// Next action: the first probe (idle passed), the next one, or giving up.
    pub(crate) at: Instant,
    idle_ms: u32,
    interval_ms: u32,
    count: NonZeroU8,
    /// Probes sent since the peer was last heard.
    pub(crate) sent: u8,
}

impl KeepaliveTimer {
    pub(crate) fn new(k: &Keepalive, now: Instant) -> Self {
        let ms = |d: std::time::Duration| d.as_millis().clamp(1, u128::from(u32::MAX)) as u32;
        let idle_ms = ms(k.idle);
        KeepaliveTimer {
            at: now + std::time::Duration::from_millis(u64::from(idle_ms)),
            idle_ms,
            interval_ms: ms(k.interval),
            count: NonZeroU8::new(k.count).unwrap_or(NonZeroU8::MIN),
            sent: 0,
        }
    }

    /// The peer was heard from at `now`: the idle period starts again.
    pub(crate) fn heard(&mut self, now: Instant) {
        self.sent = 0;
        self.at = Instant(now.0 + u64::from(self.idle_ms) * 1000);
    }
}

/// What the keepalive timer found due.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum KeepaliveDue {
    Nothing,
    Probe,
    GiveUp,
}

impl Connection {
    /// Turn keepalive on (or off, `None`) for this connection, its idle
    /// period starting at `now`.
    pub(crate) fn set_keepalive(&mut self, k: Option<&Keepalive>, now: Instant) {
        self.keepalive = k.map(|k| KeepaliveTimer::new(k, now));
    }

    /// An acceptable ACK arrived: the peer is alive.
    pub(crate) fn keepalive_heard(&mut self, now: Instant) {
        if let Some(ka) = self.keepalive.as_mut() {
            ka.heard(now);
        }
    }

    /// Probes are sent only while the connection is idle: synchronized, our
    /// side not waiting on its own retransmission or persist timers (those
    /// give up by themselves), and nothing in flight. Linux probes in the same
    /// states (ESTABLISHED, CLOSE-WAIT, FIN-WAIT-2).
    fn keepalive_applies(&self) -> bool {
        matches!(
            self.state,
            State::Established | State::CloseWait | State::FinWait2
        ) && self.snd_una == self.snd_max
            && self.rto_at.is_none()
            && self.persist_at.is_none()
    }

    /// The keepalive timer is due at `now` (the caller checked `at <= now`).
    pub(crate) fn on_keepalive_timer(&mut self, now: Instant, ctx: &mut Ctx<'_>) {
        let applies = self.keepalive_applies();
        let Some(ka) = self.keepalive.as_mut() else {
            return;
        };
        let due = if !applies {
            // Busy (data in flight, a window probe running) or a state with
            // no keepalive: look again after another idle period.
            ka.heard(now);
            KeepaliveDue::Nothing
        } else if ka.sent >= ka.count.get() {
            KeepaliveDue::GiveUp
        } else {
            ka.sent += 1;
            ka.at = Instant(now.0 + u64::from(ka.interval_ms) * 1000);
            KeepaliveDue::Probe
        };
        match due {
            KeepaliveDue::Nothing => {}
            KeepaliveDue::Probe => {
                ctx.stats.keepalive_probes += 1;
                self.probe_pending = true;
            }
            KeepaliveDue::GiveUp => {
                // `count` probes unanswered: the peer is gone. Reset (as
                // Linux does, in case it is only the path back that broke)
                // and tell the application.
                ctx.stats.keepalive_timeouts += 1;
                self.send_rst(self.snd_max.0, ctx);
                self.keepalive = None;
                self.end = Some(End::TimedOut);
                self.state = State::Closed;
            }
        }
    }
}
