//! Session deadlines as timers: each session has at most one live entry in
//! a per-shard heap (the engine's [`TimerQueue`]) at its earliest deadline
//! (PROXY header, connect, idle, half-close, lifetime). A tick pops only
//! the entries due, so its cost does not grow with the open sessions.
//!
//! Deadlines that move later (every relayed byte moves `idle`'s) do not
//! touch the heap: the old entry fires early, finds nothing due and
//! schedules the real deadline. Entries of a session that ended, or that
//! were superseded by an earlier one, are skipped when popped (the
//! session's `serial` and `timer` tell).
//!
//! [`TimerQueue`]: crate::tcp::TimerQueue

use super::header::Refusal;
use super::pool::Failure;
use super::settings::Timeouts;
use super::{Proxy, ProxyStats, Session, access};
use crate::app::Ctx;
use crate::tcp::Instant;

/// A re-armed entry is at least this far ahead of the pass that fired it.
const FLOOR: std::time::Duration = std::time::Duration::from_micros(100);

/// The session's earliest deadline now, if it has one.
fn deadline(s: &Session, t: &Timeouts) -> Option<Instant> {
    let mut at: Option<Instant> = None;
    let mut add = |d: Instant| at = Some(at.map_or(d, |a| a.min(d)));
    if let Some(h) = &s.header {
        add(h.deadline);
    }
    if let Some(max) = t.max_session {
        add(s.started.saturating_add(max));
    }
    if !s.connected && s.upstream.is_some() {
        add(s.connect_deadline);
    }
    if s.connected {
        if let Some(idle) = t.idle {
            add(s.last_active.saturating_add(idle));
        }
        if let (Some(fin), Some(since)) = (t.client_fin, s.half_closed_at) {
            add(since.max(s.last_active).saturating_add(fin));
        }
    }
    at
}

impl Proxy {
    /// Makes sure session `sid` is woken at (or before) its earliest
    /// deadline. Cheap when nothing came closer: no heap push.
    pub(super) fn arm(&mut self, sid: u32) {
        let Some(s) = self.sessions[sid as usize].as_mut() else {
            return;
        };
        let d = deadline(s, &self.routes.timeouts);
        self.timers.schedule(&mut s.timer, d, sid, s.serial);
    }

    /// After a reload changed a timeout: every session's deadline again.
    pub(super) fn rearm_all(&mut self) {
        for sid in 0..self.sessions.len() as u32 {
            if let Some(s) = self.sessions[sid as usize].as_mut() {
                // A fresh live entry (the old ones become stale).
                s.timer = None;
            }
            self.arm(sid);
        }
    }

    /// Runs the deadlines due now.
    pub(super) fn fire_timers(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now();
        while let Some((at, sid, serial)) = self.timers.pop_due(now) {
            let Some(s) = self.sessions.get_mut(sid as usize).and_then(|s| s.as_mut()) else {
                continue;
            };
            if s.serial != serial || s.timer != Some(at) {
                continue; // stale: the session ended or was re-armed sooner
            }
            s.timer = None;
            self.expire(ctx, sid, now);
            // Every deadline that passed was acted on (the session ended,
            // or a retry set a later one); never again this pass.
            if let Some(s) = self.sessions[sid as usize].as_mut() {
                let d =
                    deadline(s, &self.routes.timeouts).map(|d| d.max(now.saturating_add(FLOOR)));
                self.timers.schedule(&mut s.timer, d, sid, s.serial);
            }
        }
    }

    /// Acts on whichever of the session's deadlines has passed.
    fn expire(&mut self, ctx: &mut Ctx<'_>, sid: u32, now: Instant) {
        let t = self.routes.timeouts;
        let Some(s) = self.sessions[sid as usize].as_mut() else {
            return;
        };
        if s.header.as_ref().is_some_and(|h| now >= h.deadline) {
            self.refuse_header(ctx, sid, Refusal::Timeout);
        } else if t
            .max_session
            .is_some_and(|m| now >= s.started.saturating_add(m))
        {
            ProxyStats::bump(&self.shared.stats.max_session_timeouts);
            s.outcome = access::End::MaxSession;
            self.abort_both(ctx, sid);
        } else if !s.connected && s.upstream.is_some() && now >= s.connect_deadline {
            self.retry(ctx, sid, Failure::Timeout);
        } else if s.connected
            && t.idle
                .is_some_and(|idle| now >= s.last_active.saturating_add(idle))
        {
            ProxyStats::bump(&self.shared.stats.idle_timeouts);
            s.outcome = access::End::Timeout;
            self.abort_both(ctx, sid);
        } else if s.connected
            && let (Some(fin), Some(since)) = (t.client_fin, s.half_closed_at)
            && now >= since.max(s.last_active).saturating_add(fin)
        {
            ProxyStats::bump(&self.shared.stats.client_fin_timeouts);
            s.outcome = access::End::ClientFinTimeout;
            self.abort_both(ctx, sid);
        }
    }
}
