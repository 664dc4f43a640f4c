//! The XDP program's SYN cookies against the engine's: the program is run
//! on crafted SYNs with BPF_PROG_TEST_RUN (no interface involved), and the
//! SYN+ACK it returns must be the engine's own cookie, completed by the
//! engine. Needs root (loading a BPF program).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::time::Duration;

use libbpf_rs::{MapCore, MapFlags, libbpf_sys};

use super::{CookieConfig, CookieState, Loaded, choose_ports, load};
use crate::shard::clock;
use crate::tcp::isn::{Keys, ts_clock};
use crate::tcp::{Config, Endpoint, Event, FourTuple, syn_cookies};
use crate::wire::{self, FrameMeta, TcpFlags, TcpOptions, TcpRepr, Timestamps};

const SECRET: [u8; 16] = *b"turnstile-cookie";
const LOCAL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const PORT: u16 = 80;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// Root is needed to load BPF; anything else is reported, loudly, and under
/// CI=true fails.
fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
        "loading the XDP program needs root; under CI=true this fails instead of passing"
    );
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "NOT RUN HERE: loading the XDP program needs root"
    );
    false
}

fn config() -> Config {
    Config {
        sack_permitted: true,
        ..Config::default()
    }
}

struct Prog {
    prog: std::os::fd::OwnedFd,
    chosen_ports: libbpf_rs::MapHandle,
    state: CookieState,
    /// The other maps stay open with the program.
    _loaded: Loaded,
}

fn prog(flooding: bool) -> Prog {
    let loaded = load().expect("load the XDP program");
    let mut steer = [0u8; 8];
    steer[..4].copy_from_slice(&u32::from_ne_bytes(LOCAL.octets()).to_ne_bytes());
    steer[4..].copy_from_slice(&1u32.to_ne_bytes());
    loaded
        .steer
        .update(&0u32.to_ne_bytes(), &steer, MapFlags::ANY)
        .expect("steer");
    choose_ports(&loaded.chosen_ports, &[PORT], true).expect("chosen_ports");
    let dup = |m: &libbpf_rs::MapHandle| libbpf_rs::MapHandle::try_from(m).expect("dup a map");
    let state = CookieState::map(dup(&loaded.cookie)).expect("mmap the cookie state");
    let chosen_ports = dup(&loaded.chosen_ports);
    let prog = loaded.prog.try_clone().expect("dup the program fd");
    let cfg = config();
    state.configure(&CookieConfig {
        secret: SECRET,
        epoch_us: clock::epoch_us(),
        mss: cfg.mss,
        window: cfg.recv_buffer.min(0xffff) as u16,
        wscale: cfg.effective_window_scale(),
        timestamps: cfg.timestamps,
        sack: cfg.sack_permitted,
        sustain_per_s: 1024,
        hold: Duration::from_secs(5),
    });
    if flooding {
        state.flood_started(clock::monotonic_ns());
    }
    Prog {
        prog,
        chosen_ports,
        state,
        _loaded: loaded,
    }
}

/// Runs the program once on `frame`; its verdict and the frame it left.
fn run(p: &Prog, frame: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; 4096];
    // SAFETY: plain data; zeroed is its documented default.
    let mut opts: libbpf_sys::bpf_test_run_opts = unsafe { std::mem::zeroed() };
    opts.sz = std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as _;
    opts.data_in = frame.as_ptr().cast();
    opts.data_size_in = frame.len() as u32;
    opts.data_out = out.as_mut_ptr().cast();
    opts.data_size_out = out.len() as u32;
    opts.repeat = 1;
    // SAFETY: the buffers live across the call and their sizes are given.
    let rc = unsafe { libbpf_sys::bpf_prog_test_run_opts(p.prog.as_raw_fd(), &mut opts) };
    assert_eq!(
        rc,
        0,
        "BPF_PROG_TEST_RUN: {}",
        std::io::Error::last_os_error()
    );
    out.truncate(opts.data_size_out as usize);
    (opts.retval, out)
}

fn syn_frame(sport: u16, seq: u32, options: TcpOptions) -> Vec<u8> {
    let mut buf = vec![0u8; 256];
    let meta = FrameMeta {
        src_mac: [2, 0, 0, 0, 0, 2],
        dst_mac: [2, 0, 0, 0, 0, 1],
        src_ip: REMOTE,
        dst_ip: LOCAL,
    };
    let tcp = TcpRepr {
        src_port: sport,
        dst_port: PORT,
        seq,
        ack: 0,
        flags: TcpFlags::SYN,
        window: 64240,
        options,
    };
    let len = wire::build_frame(&mut buf, &meta, &tcp, 0, 0).expect("build the SYN");
    buf.truncate(len);
    buf
}

fn linux_options(tsval: u32) -> TcpOptions {
    TcpOptions {
        mss: Some(1460),
        window_scale: Some(7),
        sack_permitted: true,
        timestamps: Some(Timestamps { tsval, tsecr: 0 }),
        ..TcpOptions::default()
    }
}

fn tuple(sport: u16) -> FourTuple {
    FourTuple {
        local: SocketAddrV4::new(LOCAL, PORT),
        remote: SocketAddrV4::new(REMOTE, sport),
    }
}

/// The engine, completing the handshake from `synack` with the ACK a
/// client sends; returns it for inspection.
fn complete(synack: &TcpRepr, syn_seq: u32, sport: u16, timestamps: bool) -> Endpoint {
    let mut ep = Endpoint::new(config(), SECRET);
    ep.listen(PORT);
    let now = clock::now();
    ep.note_syn_cookies_sent(now);
    let ack = TcpRepr {
        src_port: sport,
        dst_port: PORT,
        seq: syn_seq.wrapping_add(1),
        ack: synack.seq.wrapping_add(1),
        flags: TcpFlags::ACK,
        window: 502,
        options: TcpOptions {
            timestamps: timestamps.then(|| Timestamps {
                tsval: 1001,
                tsecr: synack.options.timestamps.expect("TS in SYN+ACK").tsval,
            }),
            ..TcpOptions::default()
        },
    };
    ep.handle_segment(LOCAL, REMOTE, &ack, &[], now);
    ep
}

#[test]
fn a_syn_answered_in_xdp_carries_the_engines_cookie_and_the_engine_completes_it() {
    if !root() {
        return;
    }
    let p = prog(true);
    let (sport, seq) = (40_001, 0x1234_5678);
    let before = clock::now();
    let (verdict, out) = run(&p, &syn_frame(sport, seq, linux_options(777)));
    let after = clock::now();
    assert_eq!(verdict, XDP_TX, "answered in XDP while flooding");
    let f = wire::parse_frame(&out).expect("a valid frame with valid checksums");
    assert_eq!(f.meta.src_mac, [2, 0, 0, 0, 0, 1]);
    assert_eq!(f.meta.dst_mac, [2, 0, 0, 0, 0, 2]);
    assert_eq!((f.meta.src_ip, f.meta.dst_ip), (LOCAL, REMOTE));
    let t = f.tcp;
    assert_eq!(t.flags, TcpFlags::SYN | TcpFlags::ACK);
    assert_eq!((t.src_port, t.dst_port), (PORT, sport));
    assert_eq!(t.ack, seq + 1);
    assert_eq!(t.window, 0xffff);
    let cfg = config();
    assert_eq!(t.options.mss, Some(cfg.mss));
    assert_eq!(t.options.window_scale, Some(cfg.effective_window_scale()));
    assert!(t.options.sack_permitted);
    assert_eq!(t.options.timestamps.map(|ts| ts.tsecr), Some(777));
    assert!(f.payload.is_empty());

    // Bit for bit what the engine itself computes (at a time between the
    // two clock reads: the cookie counts 64 s, the TSval 1 ms).
    let keys = Keys::new(SECRET);
    let isns: Vec<u32> = [before, after]
        .iter()
        .map(|&now| {
            syn_cookies::encode_isn(&keys, tuple(sport), crate::tcp::seq::Seq(seq), 1460, now).0
        })
        .collect();
    assert!(isns.contains(&t.seq), "ISN {:#x}, engine {isns:x?}", t.seq);
    let offset = keys.ts_offset(tuple(sport));
    let tsval = t.options.timestamps.expect("timestamps").tsval;
    let lo = syn_cookies::encode_tsval(ts_clock(before, offset), Some(7), true);
    let hi = syn_cookies::encode_tsval(ts_clock(after, offset), Some(7), true);
    assert!(
        tsval.wrapping_sub(lo) <= hi.wrapping_sub(lo),
        "TSval {tsval} not in the engine's [{lo}, {hi}]"
    );
    assert_eq!(tsval & 0x1f, (7 << 1) | 1, "window scale 7 and SACK");

    let mut ep = complete(&t, seq, sport, true);
    assert_eq!(ep.stats().syn_cookies_accepted, 1, "{:?}", ep.stats());
    assert_eq!(ep.established_count(), 1);
    assert!(matches!(
        ep.poll_event(),
        Some((_, Event::Accepted { port: PORT }))
    ));
    assert_eq!(p.state.sent(), 1);
}

#[test]
fn a_bare_syn_gets_an_mss_only_cookie_the_engine_accepts() {
    if !root() {
        return;
    }
    let p = prog(true);
    // What turnstile-bench syn-flood sends: no options at all.
    let (verdict, out) = run(&p, &syn_frame(40_002, 99, TcpOptions::default()));
    assert_eq!(verdict, XDP_TX);
    let f = wire::parse_frame(&out).expect("a valid frame");
    assert_eq!(out.len(), 14 + 20 + 24);
    assert_eq!(f.tcp.options.mss, Some(config().mss));
    assert_eq!(f.tcp.options.window_scale, None);
    assert!(!f.tcp.options.sack_permitted);
    assert_eq!(f.tcp.options.timestamps, None);
    // The cookie recorded the default MSS (536).
    assert_eq!((f.tcp.seq >> 24) & 7, 1);
    let ep = complete(&f.tcp, 99, 40_002, false);
    assert_eq!(ep.stats().syn_cookies_accepted, 1, "{:?}", ep.stats());
    assert_eq!(ep.established_count(), 1);
}

#[test]
fn without_a_flood_or_with_a_bad_checksum_the_syn_goes_to_the_engine() {
    if !root() {
        return;
    }
    // No socket in the XSKMAP: a redirected frame falls back to XDP_PASS.
    let quiet = prog(false);
    let syn = syn_frame(40_003, 5, linux_options(1));
    assert_eq!(run(&quiet, &syn).0, XDP_PASS, "no flood: the engine's");
    assert_eq!(quiet.state.sent(), 0);

    let p = prog(true);
    let mut bad = syn.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x40; // inside the options: the TCP checksum no longer holds
    assert_eq!(run(&p, &bad).0, XDP_PASS, "a damaged SYN gets no cookie");
    // Not a listener's port (an active open's local port): never answered.
    choose_ports(&p.chosen_ports, &[81], false).expect("chosen_ports");
    let mut other = syn_frame(40_004, 5, linux_options(1));
    // Re-target port 81 with a fresh checksum.
    let meta_fix = wire::parse_frame(&other).expect("parse").tcp;
    other = {
        let mut buf = vec![0u8; 256];
        let tcp = TcpRepr {
            dst_port: 81,
            ..meta_fix
        };
        let meta = wire::parse_frame(&other).expect("parse").meta;
        let len = wire::build_frame(&mut buf, &meta, &tcp, 0, 0).expect("build");
        buf.truncate(len);
        buf
    };
    assert_eq!(
        run(&p, &other).0,
        XDP_PASS,
        "active-open ports are not listeners"
    );
    // And the flood mode ends: with the hold passed, the SYN is the engine's.
    p.state.disable();
    assert_eq!(run(&p, &syn).0, XDP_PASS);
}

/// Counter `idx` of the program's per-CPU array, summed.
fn counter(p: &Prog, idx: u32) -> u64 {
    p._loaded
        .counters
        .lookup_percpu(&idx.to_ne_bytes(), MapFlags::ANY)
        .expect("read counters")
        .map_or(0, |per_cpu| {
            per_cpu
                .iter()
                .map(|v| u64::from_ne_bytes(v[..8].try_into().expect("u64")))
                .sum()
        })
}

/// RFC 1191: a "fragmentation needed" quoting a segment that left from a
/// chosen port is steered to the AF_XDP socket (here none is bound, so the
/// program counts `no_socket` and passes it); one quoting another port, or
/// another ICMP message, stays with the kernel.
#[test]
fn frag_needed_quoting_our_segments_is_steered_and_other_icmp_is_not() {
    if !root() {
        return;
    }
    let p = prog(false);
    let ours = |sport: u16| {
        let mut buf = vec![0u8; 2048];
        let meta = FrameMeta {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 9],
            src_ip: LOCAL,
            dst_ip: REMOTE,
        };
        let tcp = TcpRepr {
            src_port: sport,
            dst_port: 40000,
            seq: 7,
            ack: 1,
            flags: TcpFlags::ACK,
            window: 100,
            options: TcpOptions::default(),
        };
        let at = wire::frame_header_len(&TcpOptions::default());
        let len = wire::build_frame(&mut buf, &meta, &tcp, at, 1400).expect("segment");
        buf.truncate(len);
        let mut icmp = vec![0u8; 128];
        let router = Ipv4Addr::new(198, 18, 0, 254);
        let n = wire::icmp::build_frag_needed(&mut icmp, [2, 0, 0, 0, 0, 9], router, &buf, 1280)
            .expect("icmp");
        icmp.truncate(n);
        icmp
    };
    let (redirected, passed, no_socket) = (0, 1, 3);
    let before = (counter(&p, no_socket), counter(&p, passed));
    let (verdict, _) = run(&p, &ours(PORT));
    assert_eq!(verdict, XDP_PASS, "no socket is bound in a test run");
    assert_eq!(
        counter(&p, no_socket),
        before.0 + 1,
        "steered towards AF_XDP"
    );
    assert_eq!(counter(&p, redirected), 0);

    let (_, _) = run(&p, &ours(PORT + 1));
    assert_eq!(counter(&p, no_socket), before.0 + 1, "not a chosen port");
    assert_eq!(counter(&p, passed), before.1 + 1);

    // An echo request (type 8) is the kernel's.
    let mut echo = ours(PORT);
    echo[34] = 8;
    echo[35] = 0;
    let (verdict, _) = run(&p, &echo);
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(counter(&p, no_socket), before.0 + 1);
    assert_eq!(counter(&p, passed), before.1 + 2);
}

/// A RST alone (no ACK) from the SYN's source, as a host that never sent
/// the SYN answers our SYN+ACK (RFC 9293: `<SEQ=SEG.ACK><CTL=RST>`).
fn rst_frame(sport: u16, seq: u32) -> Vec<u8> {
    let mut buf = vec![0u8; 256];
    let meta = FrameMeta {
        src_mac: [2, 0, 0, 0, 0, 2],
        dst_mac: [2, 0, 0, 0, 0, 1],
        src_ip: REMOTE,
        dst_ip: LOCAL,
    };
    let tcp = TcpRepr {
        src_port: sport,
        dst_port: PORT,
        seq,
        ack: 0,
        flags: TcpFlags::RST,
        window: 0,
        options: TcpOptions::default(),
    };
    let len = wire::build_frame(&mut buf, &meta, &tcp, 0, 0).expect("build the RST");
    buf.truncate(len);
    buf
}

const XDP_DROP: u32 = 1;
const CNT_COOKIE_RST: u32 = 5;

#[test]
fn the_reset_of_a_cookie_synack_is_dropped_in_xdp_and_no_other_rst_is() {
    if !root() {
        return;
    }
    // The table is per CPU: every run of this test on one.
    let core = core_affinity::get_core_ids().expect("core ids")[0];
    assert!(core_affinity::set_for_current(core), "pin the test thread");
    let p = prog(true);
    let (sport, seq) = (40_010, 0x0bad_cafe_u32);
    let (verdict, out) = run(&p, &syn_frame(sport, seq, TcpOptions::default()));
    assert_eq!(verdict, XDP_TX);
    assert_eq!(wire::parse_frame(&out).expect("SYN+ACK").tcp.ack, seq + 1);

    // Another sequence number, or another port: not an answer to our
    // SYN+ACK; to the engine (XDP_PASS here: no socket bound).
    assert_eq!(run(&p, &rst_frame(sport, seq)).0, XDP_PASS);
    assert_eq!(run(&p, &rst_frame(sport + 1, seq + 1)).0, XDP_PASS);
    assert_eq!(counter(&p, CNT_COOKIE_RST), 0);
    // The one the SYN's owner sends: dropped, counted, once.
    assert_eq!(run(&p, &rst_frame(sport, seq + 1)).0, XDP_DROP);
    assert_eq!(counter(&p, CNT_COOKIE_RST), 1);
    assert_eq!(run(&p, &rst_frame(sport, seq + 1)).0, XDP_PASS, "only once");
    assert_eq!(counter(&p, CNT_COOKIE_RST), 1);

    // A RST with ACK set is never one (a SYN+ACK's reset carries none).
    let (verdict, _) = run(&p, &syn_frame(sport, seq, TcpOptions::default()));
    assert_eq!(verdict, XDP_TX);
    let mut with_ack = rst_frame(sport, seq + 1);
    {
        let f = wire::parse_frame(&with_ack).expect("parse").tcp;
        let meta = wire::parse_frame(&with_ack).expect("parse").meta;
        let mut buf = vec![0u8; 256];
        let tcp = TcpRepr {
            flags: TcpFlags::RST | TcpFlags::ACK,
            ack: 1,
            ..f
        };
        let len = wire::build_frame(&mut buf, &meta, &tcp, 0, 0).expect("build");
        buf.truncate(len);
        with_ack = buf;
    }
    assert_eq!(run(&p, &with_ack).0, XDP_PASS);
    // Out of flood mode every RST is the engine's, even a matching one.
    p.state.disable();
    assert_eq!(run(&p, &rst_frame(sport, seq + 1)).0, XDP_PASS);
    assert_eq!(counter(&p, CNT_COOKIE_RST), 1);
}
