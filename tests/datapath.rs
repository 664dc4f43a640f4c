//! The datapath against real kernel peers: XDP steering, AF_XDP sockets and
//! the closed-port RST, in network namespaces joined by veth. Needs root.

mod common;

use std::time::Duration;

use common::*;
use turnstile::wire::{self, TcpFlags};

const PORT: u16 = 7000;

/// Reads the frames of a classic pcap file (Ethernet link type).
fn pcap_frames(bytes: &[u8]) -> Vec<&[u8]> {
    assert!(bytes.len() >= 24, "pcap too short");
    let le = bytes[..4] == [0xd4, 0xc3, 0xb2, 0xa1];
    let u32_at = |b: &[u8], i: usize| {
        let w: [u8; 4] = b[i..i + 4].try_into().unwrap();
        if le {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        }
    };
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let caplen = u32_at(bytes, at + 8) as usize;
        at += 16;
        if at + caplen > bytes.len() {
            break;
        }
        frames.push(&bytes[at..at + caplen]);
        at += caplen;
    }
    frames
}

#[test]
fn refused_a_thousand_times_while_the_kernel_keeps_the_rest() {
    if !need_root() {
        return;
    }
    let mut topo = Topology::new(TopologyConfig::default()).expect("topology");
    let pcap = format!("/tmp/{}-refused.pcap", topo.client.netns);
    let dev = topo.client.dev.clone();
    topo.spawn_client(
        "tcpdump",
        &["-i", &dev, "-U", "-s", "128", "-w", &pcap, "tcp port 7000"],
    )
    .expect("tcpdump");
    let (line, _) = start_serve(
        &mut topo,
        &["--port", &PORT.to_string(), "--metrics", "127.0.0.1:9901"],
    );
    assert!(line.contains("ports=7000"), "{line}");
    std::thread::sleep(Duration::from_millis(500)); // tcpdump attaches

    let ip = topo.server.ip;
    let out = client_python(
        &topo,
        &format!(
            r#"
import socket, time
refused = 0; worst = 0.0; other = []
for i in range(1000):
    s = socket.socket(); s.settimeout(2.0)
    t = time.monotonic()
    try:
        s.connect(("{ip}", {PORT})); other.append("connected")
    except ConnectionRefusedError:
        refused += 1
    except Exception as e:
        other.append(repr(e))
    worst = max(worst, time.monotonic() - t)
    s.close()
print(refused, worst, other[:3])
"#
        ),
    );
    let mut parts = out.split_whitespace();
    let refused: u32 = parts.next().unwrap().parse().unwrap();
    let worst: f64 = parts.next().unwrap().parse().unwrap();
    assert_eq!(refused, 1000, "every connect must be refused: {out}");
    assert!(worst < 0.1, "slowest refusal took {worst} s: {out}");

    // A kernel listener on a port that is not chosen, same address, accepts.
    topo.spawn_server(
        "python3",
        &["-m", "http.server", "7001", "--bind", &ip.to_string()],
    )
    .expect("python http.server");
    assert!(
        eventually(Duration::from_secs(10), || topo
            .client
            .sh(&format!(
                "curl -s -o /dev/null -w '%{{http_code}}' --max-time 2 http://{ip}:7001/"
            ))
            .map(|o| String::from_utf8_lossy(&o.stdout) == "200")
            .unwrap_or(false)),
        "the kernel's own port must still answer"
    );
    // ICMP stays with the kernel.
    topo.client
        .sh_ok(&format!("ping -c 2 -W 2 {ip}"))
        .expect("ping must still answer");

    let mut text = String::new();
    assert!(
        eventually(Duration::from_secs(15), || {
            text = scrape(&topo, "127.0.0.1:9901");
            metric(&text, "turnstile_rst_sent_total") >= 1000
        }),
        "{text}"
    );

    // Check every RST on the wire, field by field, against its SYN.
    std::thread::sleep(Duration::from_millis(500));
    topo.client.sh_ok("pkill -INT tcpdump; sleep 0.5").ok();
    let bytes = std::fs::read(&pcap).expect("read capture");
    let _ = std::fs::remove_file(&pcap);
    let frames = pcap_frames(&bytes);
    let mut syns = std::collections::HashMap::new();
    let mut rsts = 0;
    for f in frames {
        let p = wire::parse_frame(f).expect("every captured frame parses with valid checksums");
        if p.tcp.flags == TcpFlags::SYN {
            syns.insert(p.tcp.src_port, p.tcp.seq);
        } else if p.tcp.flags.contains(TcpFlags::RST) {
            let syn_seq = syns
                .get(&p.tcp.dst_port)
                .copied()
                .expect("RST answers a SYN seen before it");
            assert_eq!(p.tcp.flags, TcpFlags::RST | TcpFlags::ACK);
            assert_eq!(p.tcp.src_port, PORT);
            assert_eq!(p.tcp.seq, 0, "no ACK in the SYN: SEQ=0");
            assert_eq!(
                p.tcp.ack,
                syn_seq.wrapping_add(1),
                "ACK = SEG.SEQ + SEG.LEN (SYN counts 1)"
            );
            assert_eq!(p.meta.src_ip, ip);
            assert_eq!(p.meta.dst_ip, topo.client.ip);
            assert!(p.payload.is_empty());
            rsts += 1;
        }
    }
    assert!(rsts >= 1000, "captured {rsts} RSTs");
}

#[test]
fn sigkill_leaves_no_xdp_program_and_a_restart_works() {
    if !need_root() {
        return;
    }
    let mut topo = Topology::new(TopologyConfig::default()).expect("topology");
    let (_, pid) = start_serve(&mut topo, &["--port", "7000"]);
    assert!(xdp_attached(&topo), "program attached while running");
    // SAFETY: plain kill(2) of the child we started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert!(
        eventually(Duration::from_secs(15), || !xdp_attached(&topo)),
        "a killed turnstile must leave no XDP program"
    );
    let (line, _) = start_serve(&mut topo, &["--port", "7000"]);
    assert!(line.starts_with("listening "), "{line}");
    let ip = topo.server.ip;
    let out = client_python(
        &topo,
        &format!(
            "import socket\ns=socket.socket(); s.settimeout(2)\ntry:\n    s.connect(('{ip}', 7000)); print('connected')\nexcept ConnectionRefusedError:\n    print('refused')\n"
        ),
    );
    assert_eq!(out.trim(), "refused");
}

#[test]
fn sigterm_detaches_and_exits_zero() {
    if !need_root() {
        return;
    }
    let topo = Topology::new(TopologyConfig::default()).expect("topology");
    let mut child = spawn_serve_owned(&topo, &["--port", "7000"]);
    // SAFETY: plain kill(2) of the child we started.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let status = wait_exit(&mut child, Duration::from_secs(8))
        .expect("turnstile must exit within 8 s of SIGTERM (before its 10 s drain grace)");
    assert!(status.success(), "exit status {status:?}");
    assert!(!xdp_attached(&topo));
}

/// `auto` attaches in generic mode on a one-queue veth (a local flood
/// would keep native veth's ring full); `native` is still honoured there.
#[test]
fn auto_is_generic_on_a_one_queue_veth_and_native_is_honoured() {
    if !need_root() {
        return;
    }
    let mut topo = Topology::new(TopologyConfig::default()).expect("topology");
    let (line, pid) = start_serve(&mut topo, &["--port", "7000"]);
    assert!(
        line.contains("mode=generic"),
        "auto on a one-queue veth: {line}"
    );
    let out = topo
        .server
        .sh_ok(&format!("ip -d link show dev {}", topo.server.dev))
        .unwrap_or_default();
    assert!(out.contains("xdpgeneric"), "the kernel agrees: {out}");
    // SAFETY: plain kill(2) of the child we started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert!(
        eventually(Duration::from_secs(15), || !xdp_attached(&topo)),
        "detached on SIGTERM"
    );
    let (line, _) = start_serve(&mut topo, &["--port", "7000", "--xdp-mode", "native"]);
    assert!(line.contains("mode=native"), "asked for native: {line}");
}

#[test]
fn two_queues_both_get_a_socket_and_answer() {
    if !need_root() {
        return;
    }
    let mut topo = Topology::new(TopologyConfig { queues: 2 }).expect("topology");
    let (line, _) = start_serve(
        &mut topo,
        &["--port", "7000", "--metrics", "127.0.0.1:9902"],
    );
    assert!(line.contains("queues=2"), "{line}");
    assert!(
        line.contains("mode=native"),
        "auto keeps native XDP on a multi-queue veth (generic would put every frame on queue 0): {line}"
    );
    let ip = topo.server.ip;
    let out = client_python(
        &topo,
        &format!(
            r#"
import socket
refused = 0
for i in range(200):
    s = socket.socket(); s.settimeout(2)
    try:
        s.connect(("{ip}", 7000))
    except ConnectionRefusedError:
        refused += 1
    s.close()
print(refused)
"#
        ),
    );
    assert_eq!(out.trim(), "200");
    // Shards publish their counters every 50 ms.
    let mut text = String::new();
    assert!(
        eventually(Duration::from_secs(15), || {
            text = scrape(&topo, "127.0.0.1:9902");
            metric(&text, "turnstile_rst_sent_total") >= 200
        }),
        "{text}"
    );
    let q0 = metric(&text, "turnstile_shard_rx_packets_total{shard=\"0\"}");
    let q1 = metric(&text, "turnstile_shard_rx_packets_total{shard=\"1\"}");
    assert!(q0 > 0 && q1 > 0, "both queues must carry frames: {q0} {q1}");
}

#[test]
fn malformed_frames_are_counted_and_never_answered() {
    if !need_root() {
        return;
    }
    let mut topo = Topology::new(TopologyConfig::default()).expect("topology");
    let (_, pid) = start_serve(
        &mut topo,
        &["--port", "7000", "--metrics", "127.0.0.1:9903"],
    );
    // Learn the server's MAC from the kernel's neighbour table.
    let ip = topo.server.ip;
    topo.client
        .sh_ok(&format!("ping -c 1 -W 2 {ip}"))
        .expect("ping");
    let mac = topo
        .server
        .sh_ok(&format!("cat /sys/class/net/{}/address", topo.server.dev))
        .unwrap()
        .trim()
        .to_string();
    let before = scrape(&topo, "127.0.0.1:9903");
    let tx_before = metric(&before, "turnstile_tx_packets_total");
    let out = client_python(
        &topo,
        &format!(
            r#"
import socket, struct, random
random.seed(7)
dev = "{dev}"; dst = bytes.fromhex("{mac}".replace(":", ""))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((dev, 0))
src = s.getsockname()[4]
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b)//2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff
sip = socket.inet_aton("{cip}"); dip = socket.inet_aton("{ip}")
sent = 0
for i in range(10000):
    kind = i % 5
    payload = bytes(random.getrandbits(8) for _ in range(random.randint(0, 40)))
    doff = 5
    flags = random.choice([0x02, 0x10, 0x18, 0x11, 0x12])
    tcp = struct.pack("!HHIIBBHHH", random.randint(1024, 65000), 7000, random.getrandbits(32), random.getrandbits(32), doff << 4, flags, 1024, 0, 0)
    if kind == 1:   # data offset beyond the segment
        tcp = tcp[:12] + bytes([15 << 4]) + tcp[13:]
    if kind == 2:   # an option whose length overruns the header
        tcp = struct.pack("!HHIIBBHHH", 4000 + i % 1000, 7000, 1, 0, 6 << 4, 0x02, 1024, 0, 0) + bytes([2, 40, 5, 180])
    seg = tcp + payload
    ph = sip + dip + struct.pack("!BBH", 0, 6, len(seg))
    c = csum(ph + seg)
    if kind in (0, 3):  # wrong TCP checksum
        c ^= 0x5a5a
    seg = seg[:16] + struct.pack("!H", c) + seg[18:]
    if kind == 4:   # truncated: cut inside the TCP header, IP length left as if whole
        seg_on_wire = seg[:random.randint(4, 19)]
    else:
        seg_on_wire = seg
    iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), random.getrandbits(16), 0x4000, 64, 6, 0, sip, dip)
    iph = iph[:10] + struct.pack("!H", csum(iph)) + iph[12:]
    if kind == 3:   # and a wrong IP checksum on top
        iph = iph[:10] + b"\x00\x00" + iph[12:]
    frame = dst + src + b"\x08\x00" + iph + seg_on_wire
    s.send(frame); sent += 1
print(sent)
"#,
            dev = topo.client.dev,
            cip = topo.client.ip,
        ),
    );
    assert_eq!(out.trim(), "10000");
    let mut after = String::new();
    let counted = eventually(Duration::from_secs(10), || {
        after = scrape(&topo, "127.0.0.1:9903");
        let dropped = metric_sum(&after, "turnstile_rx_dropped_total")
            - metric_sum(&before, "turnstile_rx_dropped_total");
        dropped >= 10_000
    });
    let dropped = metric_sum(&after, "turnstile_rx_dropped_total")
        - metric_sum(&before, "turnstile_rx_dropped_total");
    assert!(
        counted,
        "10,000 bad frames, {dropped} counted as dropped:\n{after}"
    );
    assert_eq!(
        dropped, 10_000,
        "each bad frame is counted exactly once:\n{after}"
    );
    assert_eq!(
        metric(&after, "turnstile_tx_packets_total"),
        tx_before,
        "no bad frame is answered"
    );
    // Still alive and still answering.
    // SAFETY: signal 0 only checks that the process exists.
    assert_eq!(
        unsafe { libc::kill(pid as i32, 0) },
        0,
        "turnstile must not crash"
    );
    let out = client_python(
        &topo,
        &format!(
            "import socket\ns=socket.socket(); s.settimeout(2)\ntry:\n    s.connect(('{ip}', 7000))\nexcept ConnectionRefusedError:\n    print('refused')\n"
        ),
    );
    assert_eq!(out.trim(), "refused");
}
