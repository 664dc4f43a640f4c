//! Moving bytes between a session's two legs, and what each leg's events
//! mean for the session (half-close, resets, the PROXY header).

use std::net::SocketAddrV4;

use super::pool::{Backend, Failure};
use super::proxy_protocol::{self, ProxyProtocol};
use super::{Leg, Proxy, ProxyStats, Session, access};
use crate::app::Ctx;
use crate::tcp::Event;

impl Proxy {
    /// Relays both directions as far as the send buffers allow.
    pub(super) fn relay_both(&mut self, ctx: &mut Ctx<'_>, sid: u32) {
        let Some(s) = self.sessions[sid as usize].as_mut() else {
            return;
        };
        if !s.connected {
            return;
        }
        let a = relay(ctx, s, Leg::Client);
        let b = relay(ctx, s, Leg::Upstream);
        if (a || b) && !s.blocked {
            s.blocked = true;
            self.blocked.push(sid);
        }
    }

    pub(super) fn on_client(&mut self, ctx: &mut Ctx<'_>, sid: u32, event: Event) {
        let Some(s) = self.sessions[sid as usize].as_mut() else {
            return;
        };
        match event {
            Event::Readable if s.header.is_some() => self.read_header(ctx, sid, false),
            Event::Readable | Event::Writable => self.relay_both(ctx, sid),
            Event::PeerClosed => {
                s.client_fin = true;
                s.half_closed_at.get_or_insert(ctx.now());
                if s.header.is_some() {
                    self.read_header(ctx, sid, true);
                } else {
                    self.relay_both(ctx, sid);
                }
            }
            Event::Closed => {
                s.client_gone = true;
                self.legs.remove(&s.client);
                self.finish_if_done(sid, ctx.now());
            }
            Event::Reset | Event::TimedOut | Event::Refused | Event::Unreachable => {
                s.client_gone = true;
                s.outcome = access::End::ClientReset;
                if s.upstream.is_some() && !s.upstream_gone {
                    ProxyStats::bump(&self.shared.stats.resets_propagated);
                }
                self.abort_both(ctx, sid);
            }
            Event::Accepted { .. } | Event::Connected => {}
        }
    }

    pub(super) fn on_upstream(&mut self, ctx: &mut Ctx<'_>, sid: u32, event: Event) {
        let Some(s) = self.sessions[sid as usize].as_mut() else {
            return;
        };
        match event {
            Event::Connected => {
                s.connected = true;
                s.last_active = ctx.now();
                // The PROXY header goes before any client byte; the send
                // buffer of a fresh connection has room for it. The client
                // is the connection's peer or, behind a balancer
                // (`accept_proxy`), the one its header named.
                let version = self
                    .routes
                    .route(s.port)
                    .map_or(ProxyProtocol::Off, |r| r.proxy_protocol);
                if version != ProxyProtocol::Off
                    && let Some(up) = s.upstream
                {
                    let client = SocketAddrV4::new(s.client_ip, s.client_port);
                    let mut header = [0u8; proxy_protocol::MAX_HEADER];
                    let n = proxy_protocol::encode(version, client, s.dst, &mut header);
                    if !matches!(ctx.send(up, &header[..n]), Ok(sent) if sent == n) {
                        self.abort_both(ctx, sid);
                        return;
                    }
                }
                // Client bytes read with the accepted header (at most
                // 1 KiB: room in a fresh send buffer too).
                if let (Some(early), Some(up)) = (s.early.take(), s.upstream) {
                    if !matches!(ctx.send(up, &early), Ok(sent) if sent == early.len()) {
                        self.abort_both(ctx, sid);
                        return;
                    }
                    let n = early.len() as u64;
                    s.relayed += n;
                    s.bytes_to += n;
                    if let Some(b) = &s.backend {
                        Backend::add(&b.bytes_to, n);
                    }
                }
                if let Some(b) = &s.backend {
                    b.passive_success();
                    b.opened();
                }
                // Client bytes (and its FIN) that arrived meanwhile go now.
                self.relay_both(ctx, sid);
            }
            Event::Readable | Event::Writable => self.relay_both(ctx, sid),
            Event::PeerClosed => {
                s.upstream_fin = true;
                s.half_closed_at.get_or_insert(ctx.now());
                self.relay_both(ctx, sid);
            }
            Event::Closed => {
                s.upstream_gone = true;
                if let Some(up) = s.upstream {
                    self.legs.remove(&up);
                }
                self.finish_if_done(sid, ctx.now());
            }
            Event::Refused | Event::TimedOut | Event::Reset | Event::Unreachable
                if s.relayed == 0 =>
            {
                s.upstream_gone = true;
                let why = match event {
                    Event::Refused => Failure::Refused,
                    Event::TimedOut => Failure::Timeout,
                    Event::Unreachable => Failure::Unreachable,
                    _ => Failure::Reset,
                };
                self.retry(ctx, sid, why);
            }
            Event::Refused | Event::TimedOut | Event::Reset | Event::Unreachable => {
                s.upstream_gone = true;
                s.outcome = access::End::BackendReset;
                if !s.client_gone {
                    ProxyStats::bump(&self.shared.stats.resets_propagated);
                }
                self.abort_both(ctx, sid);
            }
            Event::Accepted { .. } => {}
        }
    }

    /// Re-tries blocked directions. `want_writable` asks the engine for a
    /// `Writable` when space frees; this is the safety net, every scan.
    pub(super) fn unblock(&mut self, ctx: &mut Ctx<'_>) {
        if self.blocked.is_empty() {
            return;
        }
        let blocked = std::mem::take(&mut self.blocked);
        for &sid in &blocked {
            if let Some(s) = self.sessions[sid as usize].as_mut() {
                s.blocked = false;
            }
        }
        for sid in blocked {
            self.relay_both(ctx, sid);
        }
    }
}

/// Moves what fits from leg `from`'s receive buffer into the other leg's
/// send buffer; propagates `from`'s FIN once all its bytes are through.
/// Returns whether bytes are left waiting for send space.
fn relay(ctx: &mut Ctx<'_>, s: &mut Session, from: Leg) -> bool {
    let Some(up) = s.upstream else {
        return false;
    };
    let (src, dst, src_fin, dst_shut, dst_gone) = match from {
        Leg::Client => (s.client, up, s.client_fin, s.upstream_shut, s.upstream_gone),
        Leg::Upstream => (up, s.client, s.upstream_fin, s.client_shut, s.client_gone),
    };
    if dst_shut || dst_gone {
        return false;
    }
    // One call moves what fits, copying once (receive chunks to send
    // chunks); what is left waits for `Writable` on `dst`.
    let moved = ctx.relay(src, dst, usize::MAX).unwrap_or(0);
    let blocked = ctx.recv_available(src) > 0;
    if blocked {
        ctx.want_writable(dst);
    }
    if moved > 0 {
        s.relayed += moved as u64;
        match from {
            Leg::Client => s.bytes_to += moved as u64,
            Leg::Upstream => s.bytes_from += moved as u64,
        }
        s.last_active = ctx.now();
        if let Some(b) = &s.backend {
            let counter = if from == Leg::Client {
                &b.bytes_to
            } else {
                &b.bytes_from
            };
            Backend::add(counter, moved as u64);
        }
    }
    if src_fin && !blocked && ctx.recv_available(src) == 0 {
        let _ = ctx.shutdown(dst);
        match from {
            Leg::Client => s.upstream_shut = true,
            Leg::Upstream => s.client_shut = true,
        }
    }
    blocked
}
