//! What the fuzz targets run, shared by the cargo-fuzz binaries
//! (`fuzz/fuzz_targets/*.rs`, on nightly with coverage guidance) and by the
//! stable replay of the committed corpora (`tests/fuzz_corpus.rs`), so an
//! input that crashed once stays a regression test. Written against the
//! public API of `turnstile::wire` and `turnstile::tcp` only; every check
//! is an `assert!`, so a violated invariant is a crash the fuzzer reports.
//!
//! No `arbitrary` crate: the stable replay has no such dependency, and a
//! byte cursor (below) is all the engine script needs.

use std::net::Ipv4Addr;
use std::time::Duration;

use turnstile::tcp::{Config, ConnId, Endpoint, Event, Instant};
use turnstile::wire::{self, DropReason, TcpFlags, TcpOptions, TcpRepr, Timestamps, options};

/// `wire::parse_frame`: never panics; what parses is consistent (payload
/// inside the frame and ending where the IPv4 total length says, window
/// scale clamped) and, where our builder can write its options, builds back
/// to a frame that parses to the same values.
pub fn parse_frame(data: &[u8]) {
    let Ok(parsed) = wire::parse_frame(data) else {
        return;
    };
    let start = parsed.payload.as_ptr() as usize - data.as_ptr() as usize;
    let total = usize::from(u16::from_be_bytes([data[16], data[17]]));
    assert!(start + parsed.payload.len() <= data.len());
    assert_eq!(start + parsed.payload.len(), 14 + total);
    check_options(&parsed.tcp.options);
    let mut buf = vec![0u8; wire::MAX_HEADER_LEN + parsed.payload.len()];
    buf[wire::MAX_HEADER_LEN..].copy_from_slice(parsed.payload);
    match wire::build_frame(
        &mut buf,
        &parsed.meta,
        &parsed.tcp,
        wire::MAX_HEADER_LEN,
        parsed.payload.len(),
    ) {
        Ok(len) => {
            let again = wire::parse_frame(&buf[..len]).expect("our own frame parses");
            assert_eq!(again, parsed);
        }
        // Parsed options that our (Linux-layout, padded) writer cannot fit
        // in 40 bytes: refused, never a malformed header.
        Err(wire::BuildError::OptionsTooLong { len }) => {
            assert!(options::len(&parsed.tcp.options) == len && len > options::MAX_OPTIONS_LEN);
        }
        Err(e) => panic!("rebuilding a parsed frame failed: {e}"),
    }
}

fn check_options(o: &TcpOptions) {
    if let Some(ws) = o.window_scale {
        assert!(ws <= options::MAX_WINDOW_SCALE);
    }
    assert!(o.sack.len() <= wire::MAX_SACK_BLOCKS);
}

/// TCP option parsing: never panics, fails only as `BadTcpOptions`, and what
/// parses writes back (when it fits) to bytes that parse the same.
pub fn tcp_options(data: &[u8]) {
    let data = &data[..data.len().min(options::MAX_OPTIONS_LEN)];
    match options::parse(data) {
        Err(reason) => assert_eq!(reason, DropReason::BadTcpOptions),
        Ok(opts) => {
            check_options(&opts);
            let len = options::len(&opts);
            if len <= options::MAX_OPTIONS_LEN {
                let mut buf = [0u8; options::MAX_OPTIONS_LEN];
                assert_eq!(options::write(&mut buf, &opts), len);
                assert_eq!(len % 4, 0);
                assert_eq!(options::parse(&buf[..len]), Ok(opts));
            }
        }
    }
}

/// Reads the fuzz input as a script; yields zeros once it is used up.
struct Cursor<'a> {
    data: &'a [u8],
}

impl Cursor<'_> {
    fn done(&self) -> bool {
        self.data.is_empty()
    }
    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn bit(&mut self) -> bool {
        self.u8() & 1 == 1
    }
}

/// The peer's byte stream: byte `i` (offset from its first data byte).
fn peer_byte(i: u32) -> u8 {
    (i.wrapping_mul(0x9e37_79b1) >> 24) as u8
}
/// The engine application's byte stream.
fn app_byte(i: u64) -> u8 {
    (i.wrapping_mul(0x2545_f491) >> 13) as u8 ^ 0x5c
}

const LOCAL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const PORT: u16 = 80;
const PEER_PORT: u16 = 40_000;

/// What the scripted peer knows and what the checker has seen.
struct Peer {
    irs: u32,
    /// Stream bytes the peer has sent (in order) so far.
    sent: u32,
    /// Highest stream offset the peer ever covered with data (any segment).
    max_end: u64,
    /// Its window-scale option, if its SYN carried one.
    ws: Option<u8>,
    mss: Option<u16>,
    ts: bool,
    sack: bool,
    /// The engine's ISS, from its SYN+ACK.
    eng_iss: Option<u32>,
    /// The engine's shift of the peer's windows (both SYNs carried the option).
    shift: u8,
    /// Engine stream bytes the peer received in order (its RCV.NXT offset).
    rcvd: u64,
    /// Highest engine stream offset sent so far (data end).
    eng_max: u64,
    /// Right edge (engine stream offset) of the largest window the peer
    /// ever offered with a plausible ACK: the engine never sends past it.
    edge: u64,
    tsval: u32,
    syn_drawn: bool,
    /// The application accepted the connection: its ISS is fixed.
    accepted: bool,
}

/// One engine (a listener) and a scripted peer driven by `data`. Checks:
/// no panic; the engine never sends data past the right edge of any window
/// the peer offered, nor bytes its application did not queue, nor bytes
/// other than those queued at that offset; the application reads the
/// peer's stream in order (each byte what the peer sent at that offset) and
/// never more than the peer sent; segments are well formed; timers are not
/// left due (no busy loop); `poll_transmit` stops.
pub fn engine(data: &[u8]) {
    let mut c = Cursor { data };
    let small = |c: &mut Cursor<'_>| 2048 * (1 + usize::from(c.u8() % 32));
    let cfg = Config {
        recv_buffer: small(&mut c),
        send_buffer: small(&mut c),
        timestamps: c.bit(),
        sack_permitted: c.bit(),
        delayed_ack: c.bit().then_some(Duration::from_millis(40)),
        ..Config::default()
    };
    let our_mss = cfg.mss;
    let mut ep = Endpoint::new(cfg, [7; 16]);
    ep.listen(PORT);
    let mut now = Instant::from_secs(1);
    let mut p = Peer {
        irs: c.u32(),
        sent: 0,
        max_end: 0,
        ws: None,
        mss: None,
        ts: false,
        sack: false,
        eng_iss: None,
        shift: 0,
        rcvd: 0,
        eng_max: 0,
        edge: 0,
        tsval: 1,
        syn_drawn: false,
        accepted: false,
    };
    let mut id: Option<ConnId> = None;
    let mut app_sent: u64 = 0;
    let mut app_read: u64 = 0;
    let mut ended = false;
    let mut buf = vec![0u8; 65536];
    let mut steps = 0;
    while !c.done() && steps < 2000 && !ended {
        steps += 1;
        match c.u8() % 12 {
            0 => {
                // The peer's SYN (first, or repeated, or in a synchronized
                // state). Its options are drawn once: every SYN of the
                // peer carries the same, so the checker knows what was
                // negotiated whichever SYN opened the connection.
                if !p.syn_drawn {
                    p.syn_drawn = true;
                    let o = c.u8();
                    p.ws = (o & 1 != 0).then(|| c.u8() % 16);
                    p.mss = (o & 2 != 0).then(|| 88 + c.u16() % 9000);
                    p.ts = o & 4 != 0;
                    p.sack = o & 8 != 0;
                }
                let window = c.u16();
                let seg = TcpRepr {
                    seq: p.irs,
                    ack: 0,
                    flags: TcpFlags::SYN,
                    window,
                    options: TcpOptions {
                        mss: p.mss,
                        window_scale: p.ws,
                        sack_permitted: p.sack,
                        timestamps: p.ts.then_some(Timestamps {
                            tsval: p.tsval,
                            tsecr: 0,
                        }),
                        ..TcpOptions::default()
                    },
                    ..peer_template()
                };
                // A SYN's window is never scaled (RFC 7323 2.2).
                p.edge = p.edge.max(u64::from(window));
                deliver(&mut ep, &seg, &[], now);
            }
            1 | 2 => {
                // In-order data (and maybe FIN) with a plausible ACK.
                let len = usize::from(c.u16() % 2000);
                let fin = c.u8().is_multiple_of(8);
                let window = c.u16();
                let sent = p.sent;
                let seg = data_segment(&mut p, sent, fin, window);
                p.sent = p.sent.wrapping_add(len as u32);
                send_data(&mut ep, &mut p, seg, len, now);
            }
            3 => {
                // Data at another offset: a retransmission, an overlap, a gap.
                let back = c.u16();
                let off = p
                    .sent
                    .wrapping_sub(u32::from(back))
                    .wrapping_add(c.u8().into());
                let len = usize::from(c.u16() % 1600);
                let window = c.u16();
                let seg = data_segment(&mut p, off, false, window);
                send_data(&mut ep, &mut p, seg, len, now);
            }
            4 => {
                // A pure ACK, for what the peer received or somewhat off it.
                let delta = i32::from(c.u8() as i8) * i32::from(1 + c.u8() % 64);
                let window = c.u16();
                let seg = ack_segment(&mut p, delta, window, &mut c);
                note_window(&mut p, &seg);
                deliver(&mut ep, &seg, &[], now);
            }
            5 => {
                // Anything at all (flags, numbers, options); the payload is
                // still the peer's stream at the offset it claims.
                let mut flags = TcpFlags(c.u8());
                if id.is_none() {
                    // Only the scripted SYN opens the connection (its IRS
                    // is what the stream check counts from).
                    flags = flags.without(TcpFlags::SYN);
                }
                let seq = c.u32();
                let ack = c.u32();
                let window = c.u16();
                let len = usize::from(c.u8());
                let mut sack = wire::SackBlocks::EMPTY;
                for _ in 0..c.u8() % 5 {
                    let l = c.u32();
                    sack.push(l, l.wrapping_add(c.u16().into()));
                }
                let seg = TcpRepr {
                    seq,
                    ack,
                    flags,
                    window,
                    options: TcpOptions {
                        sack,
                        timestamps: c.bit().then(|| Timestamps {
                            tsval: c.u32(),
                            tsecr: c.u32(),
                        }),
                        ..TcpOptions::default()
                    },
                    ..peer_template()
                };
                let off = seq.wrapping_sub(p.irs.wrapping_add(1));
                let payload: Vec<u8> = (0..len as u32)
                    .map(|i| peer_byte(off.wrapping_add(i)))
                    .collect();
                note_window(&mut p, &seg);
                note_data_end(&mut p, off, len);
                deliver(&mut ep, &seg, &payload, now);
            }
            6 => {
                // The application sends.
                let n = usize::from(c.u16() % 20_000);
                if let Some(id) = id {
                    let chunk: Vec<u8> = (0..n as u64).map(|i| app_byte(app_sent + i)).collect();
                    if let Ok(k) = ep.send(id, &chunk) {
                        assert!(k <= n);
                        app_sent += k as u64;
                    }
                }
            }
            7 => {
                // The application reads.
                if let Some(id) = id {
                    read_all(&mut ep, id, &mut app_read, &p);
                }
            }
            8 => {
                // The clock moves; timers run.
                let ms =
                    u64::from(c.u16() % 4000) * if c.u8().is_multiple_of(16) { 100 } else { 1 };
                now = now + Duration::from_millis(ms);
                ep.handle_timeout(now);
                if let Some(t) = ep.poll_timeout() {
                    assert!(t > now, "a timer at {t:?} is still due at {now:?}");
                }
            }
            9 | 10 => {
                // The engine's segments reach the peer (or some are lost).
                let loss = c.u8();
                collect(&mut ep, &mut p, &mut buf, now, app_sent, our_mss, loss);
            }
            _ => {
                // The application ends its side, rarely.
                if let Some(i) = id {
                    match c.u8() % 16 {
                        0 => {
                            let _ = ep.shutdown(i);
                        }
                        1 => {
                            let _ = ep.close(i);
                            ended = true;
                        }
                        2 => {
                            let _ = ep.abort(i);
                            ended = true;
                        }
                        _ => {}
                    }
                }
            }
        }
        while let Some((eid, ev)) = ep.poll_event() {
            match ev {
                Event::Accepted { .. } => {
                    assert!(id.is_none(), "one peer, one connection");
                    id = Some(eid);
                    p.accepted = true;
                }
                Event::Readable => read_all(&mut ep, eid, &mut app_read, &p),
                // The connection under test ended; what follows would be a
                // new one with a new sequence space.
                Event::Closed | Event::Reset | Event::TimedOut | Event::Refused
                    if Some(eid) == id =>
                {
                    read_all(&mut ep, eid, &mut app_read, &p);
                    ended = true;
                }
                _ => {}
            }
        }
        if !ended {
            collect(&mut ep, &mut p, &mut buf, now, app_sent, our_mss, 255);
        }
    }
    // However it ended, the endpoint still stops sending.
    let mut n = 0;
    while ep.poll_transmit(now, &mut buf).is_some() {
        n += 1;
        assert!(n < 100_000, "poll_transmit does not stop");
    }
}

fn peer_template() -> TcpRepr {
    TcpRepr {
        src_port: PEER_PORT,
        dst_port: PORT,
        seq: 0,
        ack: 0,
        flags: TcpFlags::ACK,
        window: 0xffff,
        options: TcpOptions::default(),
    }
}

fn deliver(ep: &mut Endpoint, seg: &TcpRepr, payload: &[u8], now: Instant) {
    if std::env::var_os("HARNESS_TRACE").is_some() {
        eprintln!("peer -> {seg:?} len {}", payload.len());
    }
    ep.handle_segment(LOCAL, REMOTE, seg, payload, now);
}

fn peer_ts(p: &mut Peer) -> Option<Timestamps> {
    p.tsval = p.tsval.wrapping_add(1);
    p.ts.then_some(Timestamps {
        tsval: p.tsval,
        tsecr: 0,
    })
}

/// The peer's ACK number for engine stream offset `off` (our SYN counts one).
fn ack_for(p: &Peer, off: u64) -> u32 {
    p.eng_iss
        .unwrap_or(0)
        .wrapping_add(1)
        .wrapping_add(off as u32)
}

fn data_segment(p: &mut Peer, off: u32, fin: bool, window: u16) -> TcpRepr {
    let mut flags = TcpFlags::ACK;
    if fin {
        flags = flags | TcpFlags::FIN;
    }
    TcpRepr {
        seq: p.irs.wrapping_add(1).wrapping_add(off),
        ack: ack_for(p, p.rcvd),
        flags,
        window,
        options: TcpOptions {
            timestamps: peer_ts(p),
            ..TcpOptions::default()
        },
        ..peer_template()
    }
}

fn ack_segment(p: &mut Peer, delta: i32, window: u16, c: &mut Cursor<'_>) -> TcpRepr {
    let ack = ack_for(p, p.rcvd).wrapping_add(delta as u32);
    let mut sack = wire::SackBlocks::EMPTY;
    if p.sack && c.bit() {
        // A block somewhere above what was received in order.
        let l = ack.wrapping_add(u32::from(c.u16()));
        sack.push(l, l.wrapping_add(u32::from(c.u16() % 8000)));
    }
    TcpRepr {
        seq: p.irs.wrapping_add(1).wrapping_add(p.sent),
        ack,
        flags: TcpFlags::ACK,
        window,
        options: TcpOptions {
            sack,
            timestamps: peer_ts(p),
            ..TcpOptions::default()
        },
        ..peer_template()
    }
}

fn send_data(ep: &mut Endpoint, p: &mut Peer, seg: TcpRepr, len: usize, now: Instant) {
    let off = seg.seq.wrapping_sub(p.irs.wrapping_add(1));
    let payload: Vec<u8> = (0..len as u32)
        .map(|i| peer_byte(off.wrapping_add(i)))
        .collect();
    note_window(p, &seg);
    note_data_end(p, off, len);
    deliver(ep, &seg, &payload, now);
}

/// The largest right edge the engine may use: ACK offset plus the window
/// scaled as negotiated, for an ACK no further than what the engine sent.
fn note_window(p: &mut Peer, seg: &TcpRepr) {
    if !seg.flags.contains(TcpFlags::ACK) || seg.flags.contains(TcpFlags::SYN) {
        if seg.flags.contains(TcpFlags::SYN) {
            p.edge = p.edge.max(u64::from(seg.window));
        }
        return;
    }
    let Some(iss) = p.eng_iss else { return };
    let off = u64::from(seg.ack.wrapping_sub(iss.wrapping_add(1)));
    // An ACK of our SYN alone (offset 2^32 - 1, one before the data) or
    // older anchors no window past its own number: counted as offset 0,
    // an over-estimate of the edge.
    let off = if off > 1 << 31 { 0 } else { off };
    if off <= p.eng_max + 1 {
        p.edge = p.edge.max(off + (u64::from(seg.window) << p.shift));
    }
}

fn note_data_end(p: &mut Peer, off: u32, len: usize) {
    // An offset "behind" the stream start (the segment begins before the
    // SYN's number) still covers the stream from 0 up to its end.
    let end = i64::from(off as i32) + len as i64;
    if end > 0 {
        p.max_end = p.max_end.max(end as u64);
    }
}

fn read_all(ep: &mut Endpoint, id: ConnId, read: &mut u64, p: &Peer) {
    let mut b = [0u8; 4096];
    for _ in 0..10_000 {
        match ep.recv(id, &mut b) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                for (i, &x) in b[..n].iter().enumerate() {
                    let at = *read + i as u64;
                    assert_eq!(x, peer_byte(at as u32), "delivered byte {at} differs");
                }
                *read += n as u64;
                assert!(
                    *read <= p.max_end,
                    "delivered {} bytes, the peer sent up to {}",
                    *read,
                    p.max_end
                );
            }
        }
    }
}

/// Poll every segment the engine has; check it; the peer takes in order
/// what arrives (`loss`: one segment in `loss` + 1 lost when small).
#[allow(clippy::too_many_arguments)]
fn collect(
    ep: &mut Endpoint,
    p: &mut Peer,
    buf: &mut [u8],
    now: Instant,
    app_sent: u64,
    our_mss: u16,
    loss: u8,
) {
    let mut n = 0u32;
    buf.fill(0xa5);
    while let Some(t) = ep.poll_transmit(now, buf) {
        n += 1;
        assert!(n < 100_000, "poll_transmit does not stop");
        assert_eq!((t.local, t.remote), (LOCAL, REMOTE));
        assert_eq!((t.tcp.src_port, t.tcp.dst_port), (PORT, PEER_PORT));
        let f = t.tcp.flags;
        let len = t.payload_len;
        if std::env::var_os("HARNESS_TRACE").is_some() {
            eprintln!(
                "engine -> {:?} len {len} (edge {}, iss {:?})",
                t.tcp, p.edge, p.eng_iss
            );
        }
        assert!(len <= usize::from(our_mss), "payload {len} > our MSS");
        if let Some(mss) = p.mss {
            assert!(
                len <= usize::from(mss.max(88)),
                "payload {len} > the peer's MSS {mss}"
            );
        }
        assert!(!(f.contains(TcpFlags::SYN) && f.intersects(TcpFlags::RST | TcpFlags::FIN)));
        if f.contains(TcpFlags::RST) {
            assert_eq!(len, 0);
        } else if !f.contains(TcpFlags::SYN) {
            assert!(f.contains(TcpFlags::ACK), "{:?} without ACK", t.tcp);
        }
        if f.contains(TcpFlags::SYN | TcpFlags::ACK) {
            assert_eq!(len, 0);
            if p.eng_iss != Some(t.tcp.seq) && !p.accepted {
                // The first SYN+ACK, or one of a new connection after a
                // half-open one was reset (the application never saw it).
                p.eng_iss = Some(t.tcp.seq);
                p.rcvd = 0;
                p.eng_max = 0;
                p.shift = match (p.ws, t.tcp.options.window_scale) {
                    (Some(ws), Some(_)) => ws.min(14),
                    _ => 0,
                };
            }
            assert_eq!(Some(t.tcp.seq), p.eng_iss, "the SYN+ACK keeps its ISS");
        } else if let (Some(iss), false) = (p.eng_iss, f.contains(TcpFlags::RST)) {
            let off = u64::from(t.tcp.seq.wrapping_sub(iss.wrapping_add(1)));
            if len > 0 {
                let end = off + len as u64;
                assert!(end <= app_sent, "sent up to {end}, queued {app_sent}");
                assert!(
                    end <= p.edge,
                    "sent up to {end} past the peer's window edge {}",
                    p.edge
                );
                for (i, &x) in buf[..len].iter().enumerate() {
                    assert_eq!(
                        x,
                        app_byte(off + i as u64),
                        "sent byte {} differs",
                        off + i as u64
                    );
                }
                p.eng_max = p.eng_max.max(end);
                let lost = loss < 255 && n.is_multiple_of(u32::from(loss % 8) + 2);
                if off == p.rcvd && !lost {
                    p.rcvd = end;
                }
            }
        }
        let dirty = len.max(1).min(buf.len());
        buf[..dirty].fill(0xa5);
    }
}
