//! Hostile and failing networks, against real kernel peers (root, --release):
//! a backend address with no host, a forged frame with a backend's address,
//! a flood of SYNs from random addresses.

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;

const LB_PORT: u16 = 8080;
const BACKEND_PORT: u16 = 9000;

/// A keep-alive HTTP backend answering `GET` with its name.
const BACKEND_PY: &str = r#"
import asyncio, sys
ip, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
BODY = (name + "\n").encode()
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
async def http(reader, writer):
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(RESP)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()
async def main():
    server = await asyncio.start_server(http, ip, port, backlog=4096, reuse_address=True)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"#;

/// Raw frames from the client namespace (AF_PACKET): `frame(src_mac,
/// dst_mac, src_ip, dst_ip, sport, dport, flags, seq, ack)`.
const FRAMES_PY: &str = r#"
import socket, struct, random
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
def mac(s): return bytes(int(x, 16) for x in s.split(":"))
def frame(smac, dmac, sip, dip, sport, dport, flags, seq, ack):
    s, d = socket.inet_aton(sip), socket.inet_aton(dip)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
    c = csum(s + d + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)
    tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), random.randrange(65536), 0, 64, 6, 0, s, d)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return mac(dmac) + mac(smac) + b"\x08\x00" + ip + tcp
def raw(dev):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((dev, 0))
    return s
"#;

struct Lab {
    topo: Topology,
    dir: PathBuf,
    backends: Vec<Ipv4Addr>,
    procs: Vec<Child>,
    sidecar: Option<ChildGuard>,
    metrics: String,
}

impl Lab {
    fn new(tag: &str, metrics_port: u16) -> Lab {
        let topo = Topology::new(TopologyConfig { queues: 1 }).expect("topology");
        let dir =
            std::env::temp_dir().join(format!("turnstile-hostile-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("backend.py"), BACKEND_PY).unwrap();
        let o = topo.client.ip.octets();
        let backends = [10, 11, 99]
            .iter()
            .map(|&l| Ipv4Addr::new(o[0], o[1], o[2], l))
            .collect();
        topo.client
            .sh_ok("sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range='1024 60999'")
            .expect("client sysctls");
        Lab {
            topo,
            dir,
            backends,
            procs: Vec::new(),
            sidecar: None,
            metrics: format!("127.0.0.1:{metrics_port}"),
        }
    }

    fn addr(&self, i: usize) -> String {
        format!("{}:{BACKEND_PORT}", self.backends[i])
    }

    /// Gives the client namespace backend `i`'s address and starts it.
    fn start_backend(&mut self, i: usize) {
        let ip = self.backends[i];
        self.topo
            .client
            .sh_ok(&format!("ip addr add {ip}/24 dev {}", self.topo.client.dev))
            .expect("add address");
        let mut child = self
            .topo
            .client
            .command("python3")
            .arg(self.dir.join("backend.py"))
            .args([&ip.to_string(), &BACKEND_PORT.to_string(), &format!("b{i}")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn backend");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        self.procs.push(child);
    }

    fn start_sidecar(&mut self, backends: &[usize]) {
        let list: Vec<String> = backends
            .iter()
            .map(|&i| format!("\"{}\"", self.addr(i)))
            .collect();
        let cfg = format!(
            "interface = \"{}\"\nqueues = 1\nmetrics = \"{}\"\n\n[[listener]]\nport = {LB_PORT}\n\
             balance = \"round-robin\"\nbackends = [{}]\n\n[health]\ninterval_ms = 1000\n",
            self.topo.server.dev,
            self.metrics,
            list.join(", ")
        );
        let path = self.dir.join("lb.toml");
        std::fs::write(&path, cfg).unwrap();
        let stderr = File::create(self.dir.join("sidecar.stderr")).unwrap();
        let mut child = self
            .topo
            .server
            .command(BIN)
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn turnstile run");
        let line = first_line(child.stdout.take().unwrap(), Duration::from_secs(20));
        let guard = ChildGuard(child);
        assert!(
            line.as_deref().is_some_and(|l| l.starts_with("listening ")),
            "no listening line: {line:?}; stderr: {}",
            self.stderr()
        );
        self.sidecar = Some(guard);
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("sidecar.stderr")).unwrap_or_default()
    }

    fn scrape(&self) -> String {
        scrape(&self.topo, &self.metrics)
    }

    fn backend_metric(&self, text: &str, name: &str, i: usize, extra: &str) -> u64 {
        metric(
            text,
            &format!("{name}{{backend=\"{}\"{extra}}}", self.addr(i)),
        )
    }

    /// `n` sequential GETs (or for `secs` seconds) through the sidecar:
    /// prints "ok N errors E p50 X p99 Y max Z" (milliseconds).
    fn clients(&self, secs: f64) -> (u64, u64, f64) {
        let program = format!(
            r#"
import socket, time
LB = ("{}", {LB_PORT})
lat, errors, first = [], 0, None
end = time.time() + {secs}
while time.time() < end:
    t = time.time()
    try:
        s = socket.create_connection(LB, timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: lb\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data or not data.partition(b"\r\n\r\n")[2].endswith(b"\n"):
            c = s.recv(4096)
            if not c: break
            data += c
        s.close()
        assert data.startswith(b"HTTP/1.1 200 OK"), data
        lat.append((time.time() - t) * 1000)
    except Exception as e:
        errors += 1
        first = first or repr(e)
lat.sort()
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else -1
print("ok", len(lat), "errors", errors, "p50 %.2f p99 %.2f max %.2f" % (p(0.5), p(0.99), lat[-1] if lat else -1), "first", first)
"#,
            self.topo.server.ip
        );
        let out = client_python(&self.topo, &program);
        eprintln!("clients: {}", out.trim());
        let w: Vec<&str> = out.split_whitespace().collect();
        (
            w[1].parse().unwrap(),
            w[3].parse().unwrap(),
            w[7].parse().unwrap(),
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.sidecar = None;
        for c in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_backend_without_a_host_never_stalls_the_clients_and_comes_back() {
    if !need_root() {
        return;
    }
    let _serial = serial();
    let mut lab = Lab::new("dead", 9941);
    lab.start_backend(0);
    lab.start_backend(1);
    // Backend 2's address is on-link but no host answers ARP for it.
    lab.start_sidecar(&[0, 1, 2]);
    assert!(
        eventually(Duration::from_secs(20), || {
            lab.backend_metric(&lab.scrape(), "turnstile_backend_up", 2, "") == 0
        }),
        "the dead backend was never marked down: {}",
        lab.stderr()
    );
    let (ok, errors, p99) = lab.clients(10.0);
    let text = lab.scrape();
    assert_eq!(errors, 0, "every request answered");
    assert!(ok >= 100, "the loop ran: {ok}");
    assert!(p99 < 50.0, "p99 {p99} ms");
    assert!(
        lab.backend_metric(
            &text,
            "turnstile_backend_failures_total",
            2,
            ",reason=\"unreachable\""
        ) > 0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "turnstile_connect_failures_total{reason=\"unreachable\"}"
        ) > 0
    );
    assert_eq!(lab.backend_metric(&text, "turnstile_backend_up", 0, ""), 1);

    // A host appears at the address: within the negative cache's backoff
    // and the rise count it is readmitted and served.
    lab.start_backend(2);
    assert!(
        eventually(Duration::from_secs(30), || {
            lab.backend_metric(&lab.scrape(), "turnstile_backend_up", 2, "") == 1
        }),
        "the backend was not readmitted: {}",
        lab.stderr()
    );
    let (_, errors, _) = lab.clients(2.0);
    assert_eq!(errors, 0);
    let text = lab.scrape();
    assert!(lab.backend_metric(&text, "turnstile_backend_connections_total", 2, "") > 0);
}

#[test]
fn a_forged_frame_does_not_redirect_a_backend_and_a_flood_of_addresses_stays_bounded() {
    if !need_root() {
        return;
    }
    let _serial = serial();
    let mut lab = Lab::new("spoof", 9942);
    lab.start_backend(0);
    lab.start_sidecar(&[0]);
    let (_, errors, _) = lab.clients(1.0);
    assert_eq!(errors, 0);
    let rss_before = rss_kb(&lab);

    // Two frames with the backend's address and a foreign MAC: a SYN and a
    // bare ACK to the listener.
    let (srv, dev, backend) = (
        lab.topo.server.ip,
        lab.topo.client.dev.clone(),
        lab.backends[0],
    );
    let server_mac = lab
        .topo
        .server
        .sh_ok(&format!(
            "cat /sys/class/net/{}/address",
            lab.topo.server.dev
        ))
        .unwrap()
        .trim()
        .to_string();
    let forged = format!(
        "{FRAMES_PY}
s = raw('{dev}')
for flags in (0x02, 0x10):
    s.send(frame('02:de:ad:be:ef:01', '{server_mac}', '{backend}', '{srv}', 40001, {LB_PORT}, flags, 1000, 1))
print('sent')
"
    );
    client_python(&lab.topo, &forged);
    std::thread::sleep(Duration::from_millis(200));
    let (ok, errors, _) = lab.clients(3.0);
    assert_eq!(errors, 0, "every request after the forged frames answered");
    assert!(ok > 20);

    // 100,000 SYNs from random addresses of 198.18.0.0/15.
    let flood = format!(
        "{FRAMES_PY}
s = raw('{dev}')
r = random.Random(7)
for i in range(100000):
    a = r.randrange(2, 1 << 17)
    ip = '198.%d.%d.%d' % (18 + (a >> 16), (a >> 8) & 255, a & 255)
    s.send(frame('02:de:ad:be:ef:02', '{server_mac}', ip, '{srv}', r.randrange(1024, 65535), {LB_PORT}, 0x02, r.randrange(1 << 32), 0))
print('sent')
"
    );
    client_python(&lab.topo, &flood);
    std::thread::sleep(Duration::from_millis(500));
    let text = lab.scrape();
    let learned = metric(&text, "turnstile_neighbors{kind=\"learned\"}");
    let resolved = metric(&text, "turnstile_neighbors{kind=\"resolved\"}");
    eprintln!("after the flood: learned {learned} resolved {resolved}");
    assert!(learned < 100, "SYNs taught the table nothing: {learned}");
    assert!(resolved <= 2, "{resolved}");
    let (_, errors, _) = lab.clients(1.0);
    assert_eq!(errors, 0);
    let grown = rss_kb(&lab).saturating_sub(rss_before);
    eprintln!("RSS grew {grown} kB over the flood");
}

fn rss_kb(lab: &Lab) -> u64 {
    let pid = lab.sidecar.as_ref().unwrap().0.id();
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A kernel HTTP server that answers one request and closes first, so the
/// kernel holds each tuple in TIME_WAIT after every connection.
const CLOSER_PY: &str = r#"
import asyncio, sys
ip, port = sys.argv[1], int(sys.argv[2])
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
async def one(reader, writer):
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(RESP)
        await writer.drain()
    except Exception:
        pass
    finally:
        writer.close()
async def main():
    server = await asyncio.start_server(one, ip, port, backlog=4096, reuse_address=True)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"#;

/// (local port, ISN, TSval) of every SYN without ACK in a pcap file, in
/// capture order.
fn syns_in_capture(path: &std::path::Path) -> Vec<(u16, u32, u32)> {
    let bytes = std::fs::read(path).expect("read the capture");
    assert!(bytes.len() >= 24, "no pcap header");
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        let frame = &bytes[at + 16..(at + 16 + len).min(bytes.len())];
        at += 16 + len;
        if let Ok(p) = turnstile::wire::parse_frame(frame) {
            let f = p.tcp.flags;
            if f.contains(turnstile::wire::TcpFlags::SYN)
                && !f.contains(turnstile::wire::TcpFlags::ACK)
            {
                let ts = p.tcp.options.timestamps.map_or(0, |t| t.tsval);
                out.push((p.tcp.src_port, p.tcp.seq, ts));
            }
        }
    }
    out
}

#[test]
fn a_restarted_process_opens_the_same_tuples_above_its_predecessor() {
    if !need_root() {
        return;
    }
    let _serial = serial();
    let lab = Lab::new("restart", 9943);
    let server_ip = lab.topo.client.ip;
    let script = lab.dir.join("closer.py");
    std::fs::write(&script, CLOSER_PY).unwrap();
    let mut server = lab
        .topo
        .client
        .command("python3")
        .arg(&script)
        .args([&server_ip.to_string(), "9000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn server");
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _server = ChildGuard(server);
    let cap = lab.dir.join("syns.pcap");
    let mut dump = lab
        .topo
        .client
        .command("tcpdump")
        .args([
            "-i",
            &lab.topo.client.dev,
            "--immediate-mode",
            "-U",
            "-s",
            "200",
            "-w",
        ])
        .arg(&cap)
        .arg(format!(
            "tcp[13] & 2 != 0 and src host {} and dst port 9000",
            lab.topo.server.ip
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tcpdump");
    // tcpdump says "listening on" once its filter is installed; a fixed
    // sleep was not enough on a loaded machine (the capture missed SYNs).
    let lines = turnstile::testkit::Lines::spawn(dump.stderr.take().unwrap());
    let mut dump = ChildGuard(dump);
    let never = std::sync::atomic::AtomicBool::new(false);
    lines
        .wait_line("tcpdump: listening on", Duration::from_secs(20), &never)
        .unwrap_or_else(|e| panic!("tcpdump did not start: {e:?}: {}", lines.text()));
    let state = lab.dir.join("state");
    let run = |n: u32| {
        let out = lab
            .topo
            .server
            .command(BIN)
            .args(["load", "--iface", &lab.topo.server.dev])
            .args(["--target", &format!("{server_ip}:9000")])
            .args(["--connections", "20", "--concurrency", "1"])
            .args([
                "--local-ports",
                "61000-61019",
                "--queues",
                "1",
                "--timeout-s",
                "30",
            ])
            .arg("--state-dir")
            .arg(&state)
            .stdin(Stdio::null())
            .output()
            .expect("run load");
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!("load {n}: {}", stdout.trim());
        assert!(
            out.status.success(),
            "load {n} failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("\"ok\":20"), "{stdout}");
    };
    run(1);
    // Well within 2MSL. Which side closes first is a race (the server closes
    // after its response, the client once it has the whole body), so the
    // kernel holds TIME_WAIT for some of the 20 tuples and takes a new SYN
    // on those only above the old incarnation (RFC 6191); the capture
    // checks all 20.
    let tw = lab
        .topo
        .client
        .sh_ok("ss -Htan state time-wait | wc -l")
        .unwrap();
    eprintln!("kernel TIME_WAIT entries before the restart: {}", tw.trim());
    run(2);
    // Until the file holds both loads' SYNs: tcpdump delivers packets in
    // blocks, and one stopped 500 ms after the last SYN lost it from an
    // unfinished block (a run under the hog saw one SYN for port 61000),
    // hence --immediate-mode and this wait before SIGINT.
    eventually(Duration::from_secs(10), || {
        syns_in_capture(&cap).len() >= 40
    });
    // SAFETY: kill(2) on our own child: SIGINT makes tcpdump flush and exit.
    unsafe { libc::kill(dump.0.id() as i32, libc::SIGINT) };
    let _ = wait_exit(&mut dump, Duration::from_secs(5));
    let mode = std::fs::metadata(state.join("isn-secret")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    let syns = syns_in_capture(&cap);
    let mut first = std::collections::BTreeMap::new();
    let mut last = std::collections::BTreeMap::new();
    for &(port, seq, ts) in &syns {
        first.entry(port).or_insert((seq, ts));
        last.insert(port, (seq, ts));
    }
    assert_eq!(first.len(), 20, "a SYN per tuple: {syns:?}");
    for (port, (seq1, ts1)) in &first {
        let (seq2, ts2) = last[port];
        // Sequence space comparison (RFC 9293 3.4): after, within 2^31.
        let isn_up = seq2.wrapping_sub(*seq1) as i32 > 0;
        let ts_up = ts2.wrapping_sub(*ts1) as i32 > 0;
        assert!(
            isn_up && ts_up,
            "port {port}: ISN {seq1} -> {seq2}, TSval {ts1} -> {ts2}"
        );
    }
}

#[test]
fn max_connections_is_enforced_counted_and_bounds_memory() {
    if !need_root() {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new(TopologyConfig { queues: 1 }).expect("topology");
    let (_line, pid) = start_serve(
        &mut topo,
        &[
            "--port",
            "7000",
            "--app",
            "echo",
            "--max-connections",
            "300",
            "--metrics",
            "127.0.0.1:9944",
            "--state-dir",
            "/tmp/turnstile-hostile-state",
        ],
    );
    let rss = || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = rss();
    // 900 connections at once, held open; count those that complete, then
    // check that each of them is really served.
    let program = format!(
        r#"
import socket, select, time, errno
socks = []
for i in range(900):
    s = socket.socket(); s.setblocking(False)
    s.connect_ex(("{}", 7000)); socks.append(s)
time.sleep(2.5)
ok = []
for s in socks:
    if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
        try:
            s.getpeername(); ok.append(s)
        except OSError: pass
served = 0
for s in ok:
    s.setblocking(True); s.settimeout(2)
    try:
        s.sendall(b"x")
        if s.recv(1) == b"x": served += 1
    except OSError: pass
print(len(ok), served, flush=True)
time.sleep(0.5)
"#,
        topo.server.ip
    );
    let scraper = {
        let ns = topo.server.netns.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(2800));
            std::process::Command::new("ip")
                .args(["netns", "exec", &ns, "curl", "-s", "--max-time", "5"])
                .arg("http://127.0.0.1:9944/metrics")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        })
    };
    let out = client_python(&topo, &program);
    let during = scraper.join().unwrap();
    let peak = rss();
    let w: Vec<u64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    eprintln!(
        "connected {} served {} RSS {before} -> {peak} kB",
        w[0], w[1]
    );
    assert!(w[0] <= 300, "at most max_connections complete: {}", w[0]);
    assert!(w[0] >= 250, "up to the limit complete: {}", w[0]);
    assert_eq!(w[1], w[0], "every held connection is served");
    let held = metric(&during, "turnstile_connections");
    assert!(held <= 300, "{held}");
    assert!(
        metric(
            &during,
            "turnstile_syn_dropped_total{reason=\"max_connections\"}"
        ) > 0
    );
    // Each connection's storage is two 64 KiB buffers: the limit implies at
    // most ~40 MB on top of what the idle process holds.
    assert!(
        peak.saturating_sub(before) < 300 * 160,
        "RSS grew {} kB",
        peak - before
    );
}
