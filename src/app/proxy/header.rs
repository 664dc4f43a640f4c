//! `accept_proxy`: a session's first bytes are the PROXY header of a
//! trusted balancer in front (HAProxy's "The PROXY protocol", v1 or v2;
//! parsed by [`proxy_protocol::decode`]). No backend is chosen before the
//! header is complete, so the client it names decides the backend (Maglev
//! hashes it), goes into the header sent upstream and into the access log.
//! A bad header, a header for what we cannot carry (IPv6), a client that
//! closes first, or a header not complete within `proxy_header_ms`: the
//! connection is reset and counted by reason.

use super::proxy_protocol::{self, Decoded, MAX_ACCEPTED};
use super::{Proxy, ProxyStats, access};
use crate::app::Ctx;
use crate::tcp::Instant;

/// The bytes of a header being read (boxed: only while it is read).
pub(super) struct HeaderBuf {
    bytes: [u8; MAX_ACCEPTED],
    have: usize,
    /// Reset the client if the header is not complete by then.
    pub(super) deadline: Instant,
}

impl HeaderBuf {
    pub(super) fn new(deadline: Instant) -> Box<HeaderBuf> {
        Box::new(HeaderBuf {
            bytes: [0; MAX_ACCEPTED],
            have: 0,
            deadline,
        })
    }
}

/// Why a connection's PROXY header was refused (the metric's label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    Invalid,
    Unsupported,
    Timeout,
    Closed,
}

impl Proxy {
    /// Reads what the client sent so far into the session's header; once
    /// it is whole, takes the client it names and connects upstream.
    /// `fin`: the client has closed its side (no more bytes will come).
    pub(super) fn read_header(&mut self, ctx: &mut Ctx<'_>, sid: u32, fin: bool) {
        let Some(s) = self.sessions[sid as usize].as_mut() else {
            return;
        };
        let Some(h) = s.header.as_mut() else {
            return;
        };
        // One recv takes all that is buffered up to the bound: what comes
        // after the header is kept and sent upstream first.
        if h.have < MAX_ACCEPTED
            && let Ok(n) = ctx.recv(s.client, &mut h.bytes[h.have..])
        {
            h.have += n;
        }
        let verdict = proxy_protocol::decode(&h.bytes[..h.have]);
        let refusal = match verdict {
            Decoded::Incomplete if !fin && h.have < MAX_ACCEPTED => return,
            Decoded::Incomplete if fin => Refusal::Closed,
            Decoded::Incomplete | Decoded::Invalid => Refusal::Invalid,
            Decoded::Unsupported => Refusal::Unsupported,
            Decoded::Header { len, addrs } => {
                if let Some((client, dst)) = addrs {
                    s.client_ip = *client.ip();
                    s.client_port = client.port();
                    s.dst = dst;
                }
                if h.have > len {
                    s.early = Some(h.bytes[len..h.have].into());
                }
                s.header = None;
                ProxyStats::bump(&self.shared.stats.headers_accepted);
                self.connect_next(ctx, sid);
                return;
            }
        };
        self.refuse_header(ctx, sid, refusal);
    }

    /// Resets the client of a session whose header was refused.
    pub(super) fn refuse_header(&mut self, ctx: &mut Ctx<'_>, sid: u32, why: Refusal) {
        let stats = &self.shared.stats;
        ProxyStats::bump(match why {
            Refusal::Invalid => &stats.headers_invalid,
            Refusal::Unsupported => &stats.headers_unsupported,
            Refusal::Timeout => &stats.headers_timeout,
            Refusal::Closed => &stats.headers_closed,
        });
        let Some(s) = self.sessions[sid as usize].as_mut() else {
            return;
        };
        tracing::debug!(client = %s.client_ip, ?why, "PROXY header refused: client reset");
        s.header = None;
        s.outcome = access::End::BadProxyHeader;
        self.abort_both(ctx, sid);
    }
}
