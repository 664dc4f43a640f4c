//! State fixtures (smoltcp style): one endpoint holding one connection built
//! directly in a chosen state, with chosen ISS and IRS, windows and options,
//! and segment templates for struct-update syntax:
//!
//! ```ignore
//! let mut f = Fix::new(Spec { iss: 0xffff_fff0, ..SPEC });
//! f.send(TcpRepr { seq: f.peer_seq(0), ack: f.our_seq(0), ..SEND_TEMPL }, b"");
//! f.recv().expect(ACK, f.our_seq(0), f.peer_seq(0));
//! ```
//!
//! `send` is a segment from the (simulated) peer to the engine, `recv` the
//! engine's next segment, as in smoltcp's tests. Sequence numbers are given as
//! offsets from the first data byte of each side (`our_seq(n)` = SND.UNA at
//! build time + n), so a test reads the same at any ISS.

use super::pair::Seg;
use crate::tcp::connection::Connection;
use crate::tcp::options::Negotiated;
use crate::tcp::seq::Seq;
use crate::tcp::{Config, ConnId, Endpoint, FourTuple, Instant, State};
use crate::wire::{TcpFlags, TcpOptions, TcpRepr};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

pub(crate) const LOCAL_IP: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
pub(crate) const REMOTE_IP: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
pub(crate) const LOCAL_PORT: u16 = 80;
pub(crate) const REMOTE_PORT: u16 = 49_500;

const NO_OPTIONS: TcpOptions = TcpOptions {
    sack: crate::wire::SackBlocks::EMPTY,
    mss: None,
    window_scale: None,
    sack_permitted: false,
    timestamps: None,
};

/// A segment from the peer: complete it with `seq`, `ack`, flags, window.
pub(crate) const SEND_TEMPL: TcpRepr = TcpRepr {
    src_port: REMOTE_PORT,
    dst_port: LOCAL_PORT,
    seq: 0,
    ack: 0,
    flags: TcpFlags::ACK,
    window: 0xffff,
    options: NO_OPTIONS,
};

/// The connection under test.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spec {
    /// Established, CloseWait (peer's FIN received), FinWait1 (our FIN queued,
    /// not yet sent), FinWait2 (our FIN acknowledged) or LastAck (both).
    pub(crate) state: State,
    /// Our initial send sequence number.
    pub(crate) iss: u32,
    /// The peer's initial sequence number.
    pub(crate) irs: u32,
    /// Bytes of ours the peer had acknowledged before the test starts (the
    /// connection's age on the sending side): SND.UNA = ISS + 1 + sent.
    pub(crate) sent: u32,
    /// Bytes of the peer's we had received: RCV.NXT = IRS + 1 + received.
    pub(crate) received: u32,
    /// The peer's window, in bytes (already scaled).
    pub(crate) snd_wnd: u32,
    /// Our send MSS.
    pub(crate) mss: u16,
    /// Window scale shifts (peer's windows, our windows).
    pub(crate) snd_wscale: u8,
    pub(crate) rcv_wscale: u8,
    pub(crate) timestamps: bool,
    pub(crate) sack: bool,
}

pub(crate) const SPEC: Spec = Spec {
    state: State::Established,
    iss: 1000,
    irs: 5000,
    sent: 0,
    received: 0,
    snd_wnd: 0xffff,
    mss: 1000,
    snd_wscale: 0,
    rcv_wscale: 0,
    timestamps: false,
    sack: false,
};

/// Engine configuration for fixtures: immediate ACKs (traces need no delayed-ACK timer).
pub(crate) fn fixture_config() -> Config {
    Config {
        delayed_ack: None,
        timestamps: false,
        ..Config::default()
    }
}

pub(crate) struct Fix {
    pub(crate) ep: Endpoint,
    pub(crate) id: ConnId,
    pub(crate) now: Instant,
    pub(crate) spec: Spec,
    buf: Vec<u8>,
}

impl Fix {
    pub(crate) fn new(spec: Spec) -> Fix {
        Self::with_config(fixture_config(), spec)
    }

    pub(crate) fn with_config(cfg: Config, spec: Spec) -> Fix {
        let mut ep = Endpoint::new(cfg, [0x5a; 16]);
        let now = Instant::from_secs(100);
        let tuple = FourTuple {
            local: SocketAddrV4::new(LOCAL_IP, LOCAL_PORT),
            remote: SocketAddrV4::new(REMOTE_IP, REMOTE_PORT),
        };
        let id = ep.install_fixture(tuple, Seq(spec.iss), now, |c| build(c, &spec));
        Fix {
            ep,
            id,
            now,
            spec,
            buf: vec![0xa5; 65536],
        }
    }

    /// Our sequence number `n` bytes after SND.UNA as built.
    pub(crate) fn our_seq(&self, n: u32) -> u32 {
        self.spec
            .iss
            .wrapping_add(1)
            .wrapping_add(self.spec.sent)
            .wrapping_add(n)
    }
    /// The peer's sequence number `n` bytes after RCV.NXT as built.
    pub(crate) fn peer_seq(&self, n: u32) -> u32 {
        self.spec
            .irs
            .wrapping_add(1)
            .wrapping_add(self.spec.received)
            .wrapping_add(n)
    }

    /// A segment from the peer arrives.
    pub(crate) fn send(&mut self, tcp: TcpRepr, payload: &[u8]) {
        self.ep
            .handle_segment(LOCAL_IP, REMOTE_IP, &tcp, payload, self.now);
    }
    /// A pure ACK from the peer for our byte offset `n` (seq at the peer's current position `p`).
    pub(crate) fn send_ack(&mut self, p: u32, n: u32) {
        let tcp = TcpRepr {
            seq: self.peer_seq(p),
            ack: self.our_seq(n),
            ..SEND_TEMPL
        };
        self.send(tcp, &[]);
    }

    /// The engine's next segment.
    #[track_caller]
    pub(crate) fn recv(&mut self) -> Seg {
        self.try_recv().expect("the engine should send a segment")
    }
    pub(crate) fn try_recv(&mut self) -> Option<Seg> {
        // Poison the buffer: a segment must write every payload byte it claims.
        self.buf.fill(0xa5);
        let t = self.ep.poll_transmit(self.now, &mut self.buf)?;
        Some(Seg {
            src: t.local,
            dst: t.remote,
            tcp: t.tcp,
            payload: self.buf[..t.payload_len].to_vec(),
        })
    }
    #[track_caller]
    pub(crate) fn recv_nothing(&mut self) {
        if let Some(s) = self.try_recv() {
            panic!("the engine should send nothing, sent {s:?}");
        }
    }
    /// Everything the engine sends now.
    pub(crate) fn recv_all(&mut self) -> Vec<Seg> {
        std::iter::from_fn(|| self.try_recv())
            .take(10_000)
            .collect()
    }

    /// The application queues `data` (all of it must fit).
    #[track_caller]
    pub(crate) fn app_send(&mut self, data: &[u8]) {
        assert_eq!(self.ep.send(self.id, data), Ok(data.len()));
    }
    pub(crate) fn app_recv_all(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut b = [0u8; 4096];
        while let Ok(n @ 1..) = self.ep.recv(self.id, &mut b) {
            out.extend_from_slice(&b[..n]);
        }
        out
    }
    pub(crate) fn state(&self) -> Option<State> {
        self.ep.state(self.id)
    }

    /// Move the clock and run the timers.
    pub(crate) fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        self.ep.handle_timeout(self.now);
    }
}

/// Shape a fresh active connection into `spec`.
fn build(c: &mut Connection, spec: &Spec) {
    let una = Seq(spec.iss) + 1u32 + spec.sent;
    let rcv_nxt = Seq(spec.irs) + 1u32 + spec.received;
    c.state = State::Established;
    c.app_knows = true;
    c.neg = Negotiated {
        snd_mss: spec.mss,
        snd_wscale: spec.snd_wscale,
        rcv_wscale: spec.rcv_wscale,
        timestamps: spec.timestamps,
        sack: spec.sack,
    };
    c.snd_una = una;
    c.snd_nxt = una;
    c.snd_max = una;
    c.snd_data_end = una;
    c.snd_wnd = spec.snd_wnd;
    // RFC 6928 initial window for the fixture's MSS (the rest of the
    // congestion state is what a fresh connection has).
    c.cc.cwnd = 10 * u32::from(spec.mss);
    c.max_snd_wnd = spec.snd_wnd;
    c.snd_wl1 = rcv_nxt;
    c.snd_wl2 = una;
    c.irs = Seq(spec.irs);
    c.rcv_nxt = rcv_nxt;
    c.last_ack_sent = rcv_nxt;
    c.rcv_adv = rcv_nxt + (c.recv_buf.window() as u32).min(0xffff << spec.rcv_wscale);
    mark_syn_acked(c);
    let our_fin = matches!(
        spec.state,
        State::FinWait1 | State::FinWait2 | State::LastAck
    );
    let peer_fin = matches!(spec.state, State::CloseWait | State::LastAck);
    if our_fin {
        c.fin_queued = true;
    }
    if spec.state == State::FinWait2 {
        // Our FIN was sent and acknowledged.
        c.snd_una = una + 1u32;
        c.snd_nxt = c.snd_una;
        c.snd_max = c.snd_una;
    }
    if peer_fin {
        // The peer's FIN sits at `peer_seq(0)`; its next number is `peer_seq(1)`.
        c.peer_fin_at = Some(rcv_nxt);
        c.peer_fin = true;
        c.rcv_nxt = rcv_nxt + 1u32;
        c.last_ack_sent = c.rcv_nxt;
    }
    c.state = spec.state;
}

/// The fixture's SYNs were exchanged before the test begins.
fn mark_syn_acked(c: &mut Connection) {
    c.syn_acked = true;
}
