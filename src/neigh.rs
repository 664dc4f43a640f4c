//! The next-hop MAC address for an IPv4 destination, asked of the kernel.
//!
//! turnstile writes whole Ethernet frames, so it needs the MAC of the next
//! hop, which the kernel already knows how to find: its routing table says
//! whether a destination is on-link or behind a gateway, and its neighbour
//! table (ARP) holds the answer. We ask both over rtnetlink instead of
//! speaking ARP ourselves, so `ip route` / `ip neigh` stay the one truth an
//! operator looks at. When the neighbour is not known yet we make the kernel
//! resolve it and poll its table.
//!
//! This runs on the resolver thread (src/resolver.rs), never on a shard:
//! [`NeighborResolver::next_hop`], [`NeighborResolver::lookup`] and
//! [`NeighborResolver::probe`] are the steps it interleaves for many
//! destinations at once; [`NeighborResolver::resolve`] is the same steps for
//! one destination, blocking, for tools and tests.

use std::io;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::iface::Iface;

#[derive(Debug, thiserror::Error)]
pub enum NeighError {
    #[error("no route to {0} (check `ip route get {0}`; add a route or a default gateway)")]
    NoRoute(Ipv4Addr),
    #[error(
        "{0} is an address of this host: turnstile cannot send frames to itself on the wire \
         (use another host's address)"
    )]
    Local(Ipv4Addr),
    #[error(
        "the kernel routes {ip} as {kind}, not to a single neighbour \
         (turnstile only sends unicast; check `ip route get {ip}`)"
    )]
    NotUnicast { ip: Ipv4Addr, kind: String },
    #[error(
        "the route to {ip} leaves through {via}, not {iface} which turnstile serves \
         (check `ip route get {ip}`; add a route through {iface})"
    )]
    WrongInterface {
        ip: Ipv4Addr,
        via: String,
        iface: String,
    },
    /// `ip` is the next hop: the destination itself, or its gateway.
    #[error(
        "the kernel could not resolve the MAC address of {ip} on {iface} in time: \
         is the host up? check `ip neigh show dev {iface}`"
    )]
    Unresolved { ip: Ipv4Addr, iface: String },
    #[error(
        "could not send the UDP datagram that makes the kernel resolve {ip}: {err} \
         (is {ip} reachable from this host's address, or does a firewall drop it?)"
    )]
    Probe { ip: Ipv4Addr, err: io::Error },
    #[error("rtnetlink: {0}")]
    Netlink(String),
}

/// How long one rtnetlink request may wait for the kernel's answer. The
/// kernel answers a get in microseconds; this only keeps a lost reply from
/// hanging the caller.
const REPLY_TIMEOUT: Duration = Duration::from_secs(1);

/// How often the neighbour table is read while the kernel resolves.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// How often a resolution is asked for again when the kernel has given up
/// on one (state FAILED) or dropped the entry, while time remains.
const REPROBE_INTERVAL: Duration = Duration::from_millis(250);

/// The discard port (RFC 863): the probe datagram means nothing to the peer.
const DISCARD_PORT: u16 = 9;

/// Receive buffer for one datagram. Replies to a get are a few hundred bytes.
const RECV_BUFFER: usize = 16 * 1024;

/// Datagrams read for one request before giving up: stale replies to earlier
/// requests (after a reply timeout) are skipped, but not forever.
const MAX_DATAGRAMS: usize = 64;

/// Neighbour states whose link-layer address can be used (the kernel's
/// NUD_VALID): REACHABLE, STALE, DELAY, PROBE, NOARP, PERMANENT. STALE, DELAY
/// and PROBE are addresses the kernel is re-confirming; it still sends to
/// them, and so do we.
const NUD_VALID: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80;

/// Resolves next hops through the kernel, on the interface turnstile serves.
pub struct NeighborResolver {
    socket: Socket,
    seq: u32,
    ifindex: u32,
    iface: String,
    ipv4: Ipv4Addr,
    buf: Vec<u8>,
}

/// Where the kernel sends packets for a destination.
struct Route {
    next_hop: Ipv4Addr,
    oif: u32,
}

/// What the kernel answered to one request.
enum Reply {
    Message(RouteNetlinkMessage),
    /// An NLMSG_ERROR with this errno: the kernel understood and said no.
    Refused(io::Error),
}

impl NeighborResolver {
    /// Opens an rtnetlink socket in the calling thread's network namespace:
    /// create the resolver where `iface` lives.
    pub fn new(iface: &Iface) -> Result<Self, NeighError> {
        let mut socket = Socket::new(NETLINK_ROUTE)
            .map_err(|e| NeighError::Netlink(format!("cannot open a NETLINK_ROUTE socket: {e}")))?;
        socket
            .bind_auto()
            .map_err(|e| NeighError::Netlink(format!("cannot bind the netlink socket: {e}")))?;
        // Port 0 is the kernel: replies come only from it.
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| NeighError::Netlink(format!("cannot connect to the kernel: {e}")))?;
        set_recv_timeout(&socket, REPLY_TIMEOUT)
            .map_err(|e| NeighError::Netlink(format!("cannot set SO_RCVTIMEO: {e}")))?;
        Ok(NeighborResolver {
            socket,
            seq: 0,
            ifindex: iface.index,
            iface: iface.name.clone(),
            ipv4: iface.ipv4,
            buf: vec![0; RECV_BUFFER],
        })
    }

    /// The MAC to put in frames for `dst`: the route gives the next hop (the
    /// gateway, or `dst` itself when on-link), which must leave through our
    /// interface; the neighbour table gives its MAC. When the kernel does not
    /// know it yet, it is made to resolve it and the table is polled until
    /// `timeout`.
    pub fn resolve(&mut self, dst: Ipv4Addr, timeout: Duration) -> Result<[u8; 6], NeighError> {
        let deadline = Instant::now() + timeout;
        let next_hop = self.next_hop(dst)?;
        let mut last_probe: Option<Instant> = None;
        loop {
            let state = match self.lookup(next_hop)? {
                Neighbour::Usable { mac, .. } => return Ok(mac),
                other => other,
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(self.unresolved(next_hop));
            }
            let due = last_probe.is_none_or(|t| now.duration_since(t) >= REPROBE_INTERVAL);
            if state.wants_probe() && due {
                self.probe(next_hop)?;
                last_probe = Some(now);
            }
            std::thread::sleep(POLL_INTERVAL.min(deadline - now));
        }
    }

    /// The next hop for `dst` (the destination itself, or its gateway),
    /// which must leave through our interface.
    pub fn next_hop(&mut self, dst: Ipv4Addr) -> Result<Ipv4Addr, NeighError> {
        let route = self.route_to(dst)?;
        if route.oif != self.ifindex {
            return Err(NeighError::WrongInterface {
                ip: dst,
                via: ifname(route.oif),
                iface: self.iface.clone(),
            });
        }
        Ok(route.next_hop)
    }

    /// What the kernel's neighbour table says about `next_hop` now (one
    /// RTM_GETNEIGH; the kernel answers in microseconds).
    pub fn lookup(&mut self, next_hop: Ipv4Addr) -> Result<Neighbour, NeighError> {
        self.neighbour(next_hop)
    }

    /// The error for a next hop that did not resolve in time.
    pub fn unresolved(&self, next_hop: Ipv4Addr) -> NeighError {
        NeighError::Unresolved {
            ip: next_hop,
            iface: self.iface.clone(),
        }
    }

    /// RTM_GETROUTE for `dst`, like `ip route get`.
    fn route_to(&mut self, dst: Ipv4Addr) -> Result<Route, NeighError> {
        let mut request = RouteMessage::default();
        request.header.address_family = AddressFamily::Inet;
        request.header.destination_prefix_length = 32;
        request
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        let reply = self.request(RouteNetlinkMessage::GetRoute(request))?;
        let route = match reply {
            Reply::Message(RouteNetlinkMessage::NewRoute(route)) => route,
            Reply::Message(other) => {
                return Err(NeighError::Netlink(format!(
                    "unexpected answer to a route lookup for {dst}: {other:?}"
                )));
            }
            // What `ip route get` prints as "Network is unreachable" (no
            // matching route) or "No route to host" (an unreachable route).
            Reply::Refused(err)
                if matches!(
                    err.raw_os_error(),
                    Some(libc::ENETUNREACH | libc::EHOSTUNREACH)
                ) =>
            {
                return Err(NeighError::NoRoute(dst));
            }
            Reply::Refused(err) => {
                return Err(NeighError::Netlink(format!(
                    "the kernel refused the route lookup for {dst}: {err} \
                     (check `ip route get {dst}`: a blackhole or prohibit route?)"
                )));
            }
        };
        match route.header.kind {
            RouteType::Unicast => {}
            RouteType::Local => return Err(NeighError::Local(dst)),
            kind => {
                return Err(NeighError::NotUnicast {
                    ip: dst,
                    kind: format!("{kind:?}").to_lowercase(),
                });
            }
        }
        let mut gateway = None;
        let mut oif = None;
        for attr in &route.attributes {
            match attr {
                RouteAttribute::Gateway(RouteAddress::Inet(gw)) => gateway = Some(*gw),
                RouteAttribute::Oif(index) => oif = Some(*index),
                _ => {}
            }
        }
        let oif = oif.ok_or_else(|| {
            NeighError::Netlink(format!(
                "the route to {dst} names no output interface (check `ip route get {dst}`)"
            ))
        })?;
        Ok(Route {
            next_hop: gateway.unwrap_or(dst),
            oif,
        })
    }

    /// RTM_GETNEIGH for `ip` on our interface, like `ip neigh get`.
    fn neighbour(&mut self, ip: Ipv4Addr) -> Result<Neighbour, NeighError> {
        let mut request = NeighbourMessage::default();
        request.header.family = AddressFamily::Inet;
        request.header.ifindex = self.ifindex;
        request
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        match self.request(RouteNetlinkMessage::GetNeighbour(request))? {
            Reply::Message(RouteNetlinkMessage::NewNeighbour(entry)) => Ok(Neighbour::of(&entry)),
            Reply::Message(other) => Err(NeighError::Netlink(format!(
                "unexpected answer to a neighbour lookup for {ip}: {other:?}"
            ))),
            Reply::Refused(err) if err.raw_os_error() == Some(libc::ENOENT) => {
                Ok(Neighbour::Absent)
            }
            Reply::Refused(err) => Err(NeighError::Netlink(format!(
                "the kernel refused the neighbour lookup for {ip} on {}: {err} \
                 (check `ip neigh get {ip} dev {}`)",
                self.iface, self.iface
            ))),
        }
    }

    /// Makes the kernel resolve `next_hop`: an empty UDP datagram from our
    /// address goes out through the neighbour layer, which creates the entry
    /// (INCOMPLETE) and sends ARP requests, exactly as for any application.
    /// It needs no privilege and works on any kernel, where creating the
    /// entry with RTM_NEWNEIGH needs CAP_NET_ADMIN and probes or not
    /// depending on the kernel.
    pub fn probe(&self, next_hop: Ipv4Addr) -> Result<(), NeighError> {
        let err = |err| NeighError::Probe { ip: next_hop, err };
        // Bound to our address so the datagram leaves with the source we use.
        let socket = UdpSocket::bind((self.ipv4, 0)).map_err(err)?;
        socket.connect((next_hop, DISCARD_PORT)).map_err(err)?;
        socket.send(&[]).map_err(err)?;
        Ok(())
    }

    /// Sends one request and returns the kernel's answer to it.
    fn request(&mut self, message: RouteNetlinkMessage) -> Result<Reply, NeighError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.socket
            .send(&bytes, 0)
            .map_err(|e| NeighError::Netlink(format!("cannot send a request: {e}")))?;

        for _ in 0..MAX_DATAGRAMS {
            let len = self.recv()?;
            if let Some(reply) = find_reply(&self.buf[..len], self.seq)? {
                return Ok(reply);
            }
        }
        Err(NeighError::Netlink(format!(
            "no answer to request {} among {MAX_DATAGRAMS} datagrams from the kernel",
            self.seq
        )))
    }

    /// Reads one datagram into `self.buf`, returning its length.
    fn recv(&mut self) -> Result<usize, NeighError> {
        // MSG_TRUNC makes recv return the datagram's real length, so a
        // reply larger than the buffer is an error rather than a cut message.
        let mut buf = &mut self.buf[..];
        let len = match self.socket.recv(&mut buf, libc::MSG_TRUNC) {
            Ok(len) => len,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(NeighError::Netlink(format!(
                    "the kernel did not answer within {REPLY_TIMEOUT:?}"
                )));
            }
            Err(e) => return Err(NeighError::Netlink(format!("cannot receive: {e}"))),
        };
        if len > self.buf.len() {
            return Err(NeighError::Netlink(format!(
                "a {len}-byte reply does not fit the {}-byte buffer",
                self.buf.len()
            )));
        }
        Ok(len)
    }
}

/// What the neighbour table says about a next hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Neighbour {
    /// A MAC the kernel itself would send to (`stale`: in STALE, DELAY or
    /// PROBE, i.e. not confirmed lately; the kernel still sends to it).
    Usable { mac: [u8; 6], stale: bool },
    /// INCOMPLETE: ARP requests are on their way.
    Resolving,
    /// FAILED, NONE, or a state without a usable address: ask again.
    Stuck,
    /// No entry at all.
    Absent,
}

/// NUD_STALE: the kernel has not confirmed the address for
/// base_reachable_time; it re-confirms it (DELAY, PROBE) once traffic goes
/// to it, which for us means a probe datagram.
const NUD_STALE: u16 = 0x04;

impl Neighbour {
    /// Whether a probe datagram would help: not while the kernel is already
    /// sending ARP requests (INCOMPLETE), where it would only queue behind
    /// them; yes for an absent or failed entry (it starts a resolution) and a
    /// STALE one (it starts the kernel's re-confirmation).
    pub fn wants_probe(&self) -> bool {
        match self {
            Neighbour::Resolving => false,
            Neighbour::Usable { stale, .. } => *stale,
            Neighbour::Stuck | Neighbour::Absent => true,
        }
    }

    fn of(entry: &NeighbourMessage) -> Self {
        let state = u16::from(entry.header.state);
        if state & NUD_VALID != 0 {
            for attr in &entry.attributes {
                if let NeighbourAttribute::LinkLayerAddress(lladdr) = attr
                    && let Ok(mac) = <[u8; 6]>::try_from(lladdr.as_slice())
                {
                    return Neighbour::Usable {
                        mac,
                        stale: state & NUD_STALE != 0,
                    };
                }
            }
        }
        if entry.header.state == NeighbourState::Incomplete {
            Neighbour::Resolving
        } else {
            Neighbour::Stuck
        }
    }
}

/// Walks the netlink messages in one datagram and returns the answer to
/// request `seq`, if it is there. Messages for other requests are skipped.
fn find_reply(datagram: &[u8], seq: u32) -> Result<Option<Reply>, NeighError> {
    let mut rest = datagram;
    while !rest.is_empty() {
        let buffer = NetlinkBuffer::new_checked(rest)
            .map_err(|e| NeighError::Netlink(format!("malformed reply: {e}")))?;
        let len = buffer.length() as usize;
        // new_checked guarantees a length of at least a header and at most
        // `rest`; the next message starts at the 4-byte aligned offset.
        let (message, tail) = rest.split_at(len);
        rest = tail.get((len.next_multiple_of(4) - len)..).unwrap_or(&[]);
        if buffer.sequence_number() != seq {
            continue;
        }
        let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(message)
            .map_err(|e| NeighError::Netlink(format!("cannot parse the kernel's reply: {e}")))?;
        return match message.payload {
            NetlinkPayload::InnerMessage(inner) => Ok(Some(Reply::Message(inner))),
            NetlinkPayload::Error(error) if error.code.is_some() => {
                Ok(Some(Reply::Refused(error.to_io())))
            }
            other => Err(NeighError::Netlink(format!(
                "unexpected reply to request {seq}: {other:?}"
            ))),
        };
    }
    Ok(None)
}

fn set_recv_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt reads a timeval of the size we pass, from a live
    // local, on a descriptor the socket owns.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The name of interface `index` in this namespace, for error messages.
fn ifname(index: u32) -> String {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes, NUL included.
    let found = unsafe { libc::if_indextoname(index, name.as_mut_ptr()) };
    if found.is_null() {
        return format!("interface #{index}");
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(state: NeighbourState, lladdr: Option<&[u8]>) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.state = state;
        if let Some(l) = lladdr {
            m.attributes
                .push(NeighbourAttribute::LinkLayerAddress(l.to_vec()));
        }
        m
    }

    const MAC: [u8; 6] = [2, 0, 0x5e, 0x10, 0, 1];

    #[test]
    fn valid_states_give_the_address() {
        for state in [
            NeighbourState::Reachable,
            NeighbourState::Stale,
            NeighbourState::Delay,
            NeighbourState::Probe,
            NeighbourState::Permanent,
            NeighbourState::Noarp,
        ] {
            assert!(
                matches!(Neighbour::of(&entry(state, Some(&MAC))), Neighbour::Usable { mac, stale }
                    if mac == MAC && stale == (state == NeighbourState::Stale)),
                "{state}"
            );
        }
    }

    #[test]
    fn unresolved_states_or_odd_addresses_are_not_used() {
        assert!(matches!(
            Neighbour::of(&entry(NeighbourState::Incomplete, None)),
            Neighbour::Resolving
        ));
        assert!(matches!(
            Neighbour::of(&entry(NeighbourState::Failed, Some(&MAC))),
            Neighbour::Stuck
        ));
        // NOARP on a device without MACs, or a non-Ethernet address.
        assert!(matches!(
            Neighbour::of(&entry(NeighbourState::Noarp, None)),
            Neighbour::Stuck
        ));
        assert!(matches!(
            Neighbour::of(&entry(NeighbourState::Reachable, Some(&[1, 2, 3, 4]))),
            Neighbour::Stuck
        ));
    }

    #[test]
    fn odd_datagrams_are_errors_not_panics() {
        // Too short for a header, a length beyond the datagram, a length
        // smaller than a header.
        assert!(find_reply(&[1, 2, 3], 1).is_err());
        let mut long = [0u8; 16];
        long[0] = 200;
        assert!(find_reply(&long, 1).is_err());
        let mut short = [0u8; 16];
        short[0] = 4;
        assert!(find_reply(&short, 1).is_err());
        assert!(find_reply(&[], 1).unwrap().is_none());
    }

    #[test]
    fn replies_to_other_requests_are_skipped() {
        // An NLMSG_ERROR (ENOENT) for request 7 followed by one for 8.
        let mut datagram = Vec::new();
        for seq in [7u32, 8] {
            datagram.extend_from_slice(&36u32.to_ne_bytes()); // length
            datagram.extend_from_slice(&2u16.to_ne_bytes()); // NLMSG_ERROR
            datagram.extend_from_slice(&0u16.to_ne_bytes());
            datagram.extend_from_slice(&seq.to_ne_bytes());
            datagram.extend_from_slice(&0u32.to_ne_bytes());
            datagram.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
            datagram.extend_from_slice(&[0; 16]); // the request's header
        }
        match find_reply(&datagram, 8) {
            Ok(Some(Reply::Refused(e))) => assert_eq!(e.raw_os_error(), Some(libc::ENOENT)),
            _ => panic!("expected the refusal of request 8"),
        }
        assert!(find_reply(&datagram, 9).unwrap().is_none());
    }
}
