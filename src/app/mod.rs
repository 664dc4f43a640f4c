//! The application interface: what an app may do with connections, all on
//! its shard's thread, and the built-in apps.
//!
//! An app is event driven. The shard calls [`App::on_event`] for every engine
//! event and [`App::on_tick`] once per loop pass; through [`Ctx`] the app
//! accepts (passive opens arrive as `Event::Accepted`), reads, writes,
//! half-closes, closes, aborts and opens connections. Apps are generic
//! parameters of the shard, so there is no dynamic dispatch per event.

pub mod discard;
pub mod echo;
pub mod http;
pub mod load;
pub mod proxy;

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::tcp::{ConnError, ConnId, ConnectError, Endpoint, Event, FourTuple, Instant, State};

/// Why an active open could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("no next hop for {ip}: {reason}")]
    Neighbor { ip: Ipv4Addr, reason: String },
}

/// Whether an active open to an address can send its SYN.
#[derive(Debug, PartialEq, Eq)]
pub enum Readiness {
    /// The next hop's MAC is known.
    Ready,
    /// Being resolved off the shard: the connect waits (its SYN is held).
    Pending,
    /// Known unreachable lately (or no room to wait): fail now.
    Unreachable(String),
}

/// The link-layer next hop of a destination before an active open. Never
/// blocks: resolution runs on another thread.
pub trait NextHop {
    fn prepare(&mut self, ip: Ipv4Addr, now: Instant) -> Readiness;
    /// After `Pending`: the connect `id` waits for `ip`; false when the
    /// pending list is full (the connect is then undone).
    fn wait_for(&mut self, _id: ConnId, _ip: Ipv4Addr) -> bool {
        true
    }
}

/// What an app sees of its shard during one call.
pub struct Ctx<'a> {
    pub(crate) ep: &'a mut Endpoint,
    pub(crate) now: Instant,
    pub(crate) local_ip: Ipv4Addr,
    pub(crate) shard: usize,
    pub(crate) next_hop: &'a mut dyn NextHop,
}

impl Ctx<'_> {
    pub fn now(&self) -> Instant {
        self.now
    }
    pub fn shard(&self) -> usize {
        self.shard
    }
    pub fn local_ip(&self) -> Ipv4Addr {
        self.local_ip
    }
    pub fn recv(&mut self, id: ConnId, buf: &mut [u8]) -> Result<usize, ConnError> {
        self.ep.recv(id, buf)
    }
    pub fn send(&mut self, id: ConnId, data: &[u8]) -> Result<usize, ConnError> {
        self.ep.send(id, data)
    }
    /// `recv` from `from` and `send` to `to` in one copy (`Endpoint::relay`).
    pub fn relay(&mut self, from: ConnId, to: ConnId, max: usize) -> Result<usize, ConnError> {
        self.ep.relay(from, to, max)
    }
    /// Half-close: a FIN after what was queued; reading goes on.
    pub fn shutdown(&mut self, id: ConnId) -> Result<(), ConnError> {
        self.ep.shutdown(id)
    }
    pub fn close(&mut self, id: ConnId) -> Result<(), ConnError> {
        self.ep.close(id)
    }
    pub fn abort(&mut self, id: ConnId) -> Result<(), ConnError> {
        self.ep.abort(id)
    }
    pub fn state(&self, id: ConnId) -> Option<State> {
        self.ep.state(id)
    }
    pub fn send_capacity(&self, id: ConnId) -> usize {
        self.ep.send_capacity(id)
    }
    pub fn recv_available(&self, id: ConnId) -> usize {
        self.ep.recv_available(id)
    }
    /// The connection's addresses (the proxy hashes the client's).
    pub fn tuple(&self, id: ConnId) -> Option<FourTuple> {
        self.ep.tuple(id)
    }
    /// Asks for `Event::Writable` once send space frees. The engine arms it
    /// on a send that comes up short, so with a full buffer a one-byte send
    /// is refused (nothing is queued) and arms it; with room, there is
    /// nothing to wait for.
    pub fn want_writable(&mut self, id: ConnId) {
        if self.ep.send_capacity(id) == 0 {
            let _ = self.ep.send(id, &[0]);
        }
    }
    /// After a `NoPort` failure: when a retry can succeed through TIME_WAIT
    /// reuse, or `None` when it cannot (reuse off, nothing reusable).
    pub fn next_reuse_at(&mut self, remote: SocketAddrV4) -> Option<Instant> {
        self.ep.next_reuse_at(self.local_ip, remote)
    }
    /// Opens a connection from this shard's address and port range. When
    /// the next hop is still being resolved the connect waits for it: the
    /// SYN goes when the MAC arrives, or the app gets `Event::Unreachable`.
    pub fn connect(&mut self, remote: SocketAddrV4) -> Result<ConnId, OpenError> {
        let ip = *remote.ip();
        let unreachable = |reason| OpenError::Neighbor { ip, reason };
        match self.next_hop.prepare(ip, self.now) {
            Readiness::Ready => Ok(self.ep.connect(self.local_ip, remote, self.now)?),
            Readiness::Unreachable(reason) => Err(unreachable(reason)),
            Readiness::Pending => {
                let id = self.ep.connect(self.local_ip, remote, self.now)?;
                if !self.next_hop.wait_for(id, ip) {
                    let _ = self.ep.abort(id);
                    return Err(unreachable(
                        "too many connects are waiting for their next hop on this shard".into(),
                    ));
                }
                Ok(id)
            }
        }
    }
}

/// An application running on every shard.
pub trait App {
    /// Called once on the shard thread before the first packet.
    fn on_start(&mut self, _ctx: &mut Ctx<'_>) {}
    fn on_event(&mut self, ctx: &mut Ctx<'_>, id: ConnId, event: Event);
    /// Called once per loop pass, after the events.
    fn on_tick(&mut self, _ctx: &mut Ctx<'_>) {}
    /// True when the app has nothing more to do and its shard may stop.
    fn finished(&self) -> bool {
        false
    }
}

/// Moves as much as fits from `id`'s receive buffer to its send buffer.
/// Reading only what can be sent keeps memory bounded without a copy of
/// our own: a peer that does not read stops our window from opening.
pub(crate) fn pump_back(
    ctx: &mut Ctx<'_>,
    id: ConnId,
    scratch: &mut [u8],
) -> Result<usize, ConnError> {
    let mut moved = 0;
    loop {
        let room = ctx.send_capacity(id).min(scratch.len());
        if room == 0 {
            if ctx.recv_available(id) > 0 {
                ctx.want_writable(id);
            }
            return Ok(moved);
        }
        let n = ctx.recv(id, &mut scratch[..room])?;
        if n == 0 {
            return Ok(moved);
        }
        let sent = ctx.send(id, &scratch[..n])?;
        debug_assert_eq!(sent, n, "send_capacity promised room");
        moved += sent;
    }
}
