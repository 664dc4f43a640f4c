//! Two endpoints, A (10.0.0.1, the client) and B (10.0.0.2, port 80), a virtual
//! clock, and helpers to move segments one at a time while recording the
//! sequence of states each side's tuple passes through.

use crate::tcp::{Config, ConnId, Endpoint, Event, FourTuple, Instant, State};
use crate::wire::{TcpFlags, TcpRepr};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

pub(crate) const A_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub(crate) const B_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub(crate) const B_PORT: u16 = 80;
pub(crate) const A_PORT: u16 = 40000;

pub(crate) const ACK: TcpFlags = TcpFlags::ACK;
pub(crate) const SYN: TcpFlags = TcpFlags::SYN;
pub(crate) const FIN: TcpFlags = TcpFlags::FIN;
pub(crate) const RST: TcpFlags = TcpFlags::RST;
pub(crate) const PSH: TcpFlags = TcpFlags::PSH;

/// A segment on the simulated wire.
#[derive(Clone, Debug)]
pub(crate) struct Seg {
    pub(crate) src: Ipv4Addr,
    pub(crate) dst: Ipv4Addr,
    pub(crate) tcp: TcpRepr,
    pub(crate) payload: Vec<u8>,
}

impl Seg {
    /// Assert flags, seq and ack (ack only checked when ACK is set).
    #[track_caller]
    pub(crate) fn expect(&self, flags: TcpFlags, seq: u32, ack: u32) {
        assert_eq!(self.tcp.flags, flags, "flags of {self:?}");
        assert_eq!(self.tcp.seq, seq, "seq of {self:?}");
        if flags.contains(TcpFlags::ACK) {
            assert_eq!(self.tcp.ack, ack, "ack of {self:?}");
        }
    }
}

pub(crate) fn config() -> Config {
    Config {
        msl: Duration::from_secs(30),
        ..Config::default()
    }
}

pub(crate) struct Pair {
    pub(crate) a: Endpoint,
    pub(crate) b: Endpoint,
    pub(crate) now: Instant,
    /// A's view of the connection under test (B's is mirrored).
    pub(crate) tuple: FourTuple,
    pub(crate) a_states: Vec<State>,
    pub(crate) b_states: Vec<State>,
    buf: Vec<u8>,
}

impl Pair {
    pub(crate) fn new() -> Self {
        Self::with_configs(config(), config())
    }

    pub(crate) fn with_configs(ca: Config, cb: Config) -> Self {
        let mut b = Endpoint::new(cb, [0xbb; 16]);
        b.listen(B_PORT);
        Pair {
            a: Endpoint::new(ca, [0xaa; 16]),
            b,
            now: Instant::from_secs(1000),
            tuple: FourTuple {
                local: SocketAddrV4::new(A_IP, A_PORT),
                remote: SocketAddrV4::new(B_IP, B_PORT),
            },
            a_states: vec![State::Closed],
            b_states: vec![State::Listen],
            buf: vec![0; 65536],
        }
    }

    pub(crate) fn b_tuple(&self) -> FourTuple {
        FourTuple {
            local: self.tuple.remote,
            remote: self.tuple.local,
        }
    }

    /// A connects from `A_PORT` to B's listener.
    pub(crate) fn connect(&mut self) -> ConnId {
        let id = self
            .a
            .connect_from(self.tuple.local, self.tuple.remote, self.now)
            .unwrap();
        self.observe();
        id
    }

    pub(crate) fn observe(&mut self) {
        let sa = self.a.state_of(&self.tuple);
        let sb = self.b.state_of(&self.b_tuple());
        if self.a_states.last() != Some(&sa) {
            self.a_states.push(sa);
        }
        if self.b_states.last() != Some(&sb) && !(sb == State::Closed && self.b_states.len() == 1) {
            self.b_states.push(sb);
        }
    }

    fn out(ep: &mut Endpoint, now: Instant, buf: &mut [u8]) -> Option<Seg> {
        let t = ep.poll_transmit(now, buf)?;
        Some(Seg {
            src: t.local,
            dst: t.remote,
            tcp: t.tcp,
            payload: buf[..t.payload_len].to_vec(),
        })
    }

    /// The next segment A sends, if any.
    pub(crate) fn a_out(&mut self) -> Option<Seg> {
        let s = Self::out(&mut self.a, self.now, &mut self.buf);
        self.observe();
        s
    }
    pub(crate) fn b_out(&mut self) -> Option<Seg> {
        let s = Self::out(&mut self.b, self.now, &mut self.buf);
        self.observe();
        s
    }
    #[track_caller]
    pub(crate) fn a_sends(&mut self) -> Seg {
        self.a_out().expect("A should send a segment")
    }
    #[track_caller]
    pub(crate) fn b_sends(&mut self) -> Seg {
        self.b_out().expect("B should send a segment")
    }
    #[track_caller]
    pub(crate) fn a_silent(&mut self) {
        if let Some(s) = self.a_out() {
            panic!("A should send nothing, sent {s:?}");
        }
    }
    #[track_caller]
    pub(crate) fn b_silent(&mut self) {
        if let Some(s) = self.b_out() {
            panic!("B should send nothing, sent {s:?}");
        }
    }

    pub(crate) fn deliver_a(&mut self, s: &Seg) {
        self.a
            .handle_segment(s.dst, s.src, &s.tcp, &s.payload, self.now);
        self.observe();
    }
    pub(crate) fn deliver_b(&mut self, s: &Seg) {
        self.b
            .handle_segment(s.dst, s.src, &s.tcp, &s.payload, self.now);
        self.observe();
    }

    /// Move the clock and run both endpoints' timers.
    pub(crate) fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        self.a.handle_timeout(self.now);
        self.b.handle_timeout(self.now);
        self.observe();
    }

    /// Exchange segments without loss until both are quiet (timers not run).
    pub(crate) fn drive(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            while let Some(s) = self.a_out() {
                self.deliver_b(&s);
                moved = true;
            }
            while let Some(s) = self.b_out() {
                self.deliver_a(&s);
                moved = true;
            }
            if !moved {
                return;
            }
        }
        panic!("drive did not settle");
    }

    pub(crate) fn a_events(&mut self) -> Vec<(ConnId, Event)> {
        std::iter::from_fn(|| self.a.poll_event()).collect()
    }
    pub(crate) fn b_events(&mut self) -> Vec<(ConnId, Event)> {
        std::iter::from_fn(|| self.b.poll_event()).collect()
    }

    /// Handshake A -> B with every segment checked; returns (A's id, B's id, A's ISS, B's ISS).
    pub(crate) fn establish(&mut self) -> (ConnId, ConnId, u32, u32) {
        let a_id = self.connect();
        let syn = self.a_sends();
        let a_iss = syn.tcp.seq;
        syn.expect(SYN, a_iss, 0);
        self.deliver_b(&syn);
        let synack = self.b_sends();
        let b_iss = synack.tcp.seq;
        synack.expect(SYN | ACK, b_iss, a_iss.wrapping_add(1));
        self.deliver_a(&synack);
        let ack = self.a_sends();
        ack.expect(ACK, a_iss.wrapping_add(1), b_iss.wrapping_add(1));
        self.deliver_b(&ack);
        assert_eq!(self.a_events(), vec![(a_id, Event::Connected)]);
        let ev = self.b_events();
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0].1, Event::Accepted { port: B_PORT });
        (a_id, ev[0].0, a_iss, b_iss)
    }

    pub(crate) fn recv_all_a(&mut self, id: ConnId) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = self.a.recv(id, &mut buf).unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }
    pub(crate) fn recv_all_b(&mut self, id: ConnId) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = self.b.recv(id, &mut buf).unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }
}

pub(crate) fn add(a: u32, n: u32) -> u32 {
    a.wrapping_add(n)
}
