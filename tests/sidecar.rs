//! The load-balancer sidecar (`turnstile run`) against real kernel peers:
//! turnstile in the server namespace, kernel clients and three kernel
//! backends (asyncio servers, each answering with its own name) on extra
//! addresses of the client namespace. Needs root; run with --release.

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;

const LB_PORT: u16 = 8080;
const BACKEND_PORT: u16 = 9000;
const METRICS: &str = "127.0.0.1:9930";
const NAMES: [&str; 3] = ["alpha", "bravo", "charlie"];

/// The backends: asyncio servers (faster than http.server) with modes:
/// `http` answers `GET /` with its name (Content-Length, keep-alive: the
/// client closes first); `GET /hold` sends the head and its name, then holds
/// the rest of the body for a minute; `echo` returns every byte; `count`
/// reads to EOF, then answers with the byte count and closes; `rst` reads
/// once, then resets; `slow` answers after 300 ms and `GET /peak` tells the
/// most connections it held at once.
const BACKEND_PY: &str = r#"
import asyncio, socket, struct, sys
ip, port, name, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
BODY = (name + "\n").encode()
RESP = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)

async def http(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"GET /hold"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY) + 100, BODY))
                await writer.drain()
                await asyncio.sleep(60)
                writer.write(b"x" * 100)
            else:
                writer.write(RESP)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()

async def echo(reader, writer):
    try:
        while True:
            data = await reader.read(256 * 1024)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()

async def count(reader, writer):
    n = 0
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            n += len(data)
        writer.write(b"%s got %d\n" % (name.encode(), n))
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()

async def rst(reader, writer):
    await reader.read(100)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()

CUR = [0, 0]
async def slow(reader, writer):
    # Counts connections open at once: GET /peak answers the highest so far
    # (and is not counted); anything else is answered after 300 ms.
    counted = False
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"GET /peak"):
            body = b"%d\n" % CUR[1]
        else:
            counted = True
            CUR[0] += 1
            CUR[1] = max(CUR[1], CUR[0])
            await asyncio.sleep(0.3)
            body = BODY
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        if counted:
            CUR[0] -= 1
        writer.close()

async def main():
    server = await asyncio.start_server(globals()[mode], ip, port, backlog=4096, reuse_address=True)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"#;

/// One test's world: the topology, its backends, the sidecar.
struct Lab {
    topo: Topology,
    dir: PathBuf,
    /// Backend addresses in the client namespace.
    backends: Vec<Ipv4Addr>,
    /// Extra client source addresses.
    sources: Vec<Ipv4Addr>,
    backend_procs: Vec<Option<Child>>,
    sidecar: Option<Child>,
    stderr_path: PathBuf,
}

impl Lab {
    fn new(tag: &str, sources: usize) -> Lab {
        let topo = Topology::new(TopologyConfig { queues: 2 }).expect("topology");
        let dir =
            std::env::temp_dir().join(format!("turnstile-sidecar-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("backend.py"), BACKEND_PY).unwrap();
        let o = topo.client.ip.octets();
        let at = |last: u8| Ipv4Addr::new(o[0], o[1], o[2], last);
        let backends: Vec<Ipv4Addr> = (0..3).map(|i| at(10 + i)).collect();
        let sources: Vec<Ipv4Addr> = (0..sources).map(|i| at(100 + i as u8)).collect();
        for ip in backends.iter().chain(&sources) {
            topo.client
                .sh_ok(&format!("ip addr add {ip}/24 dev {}", topo.client.dev))
                .expect("add address");
        }
        // Many short connections from the kernel client: it closes first, so
        // its TIME_WAIT piles up; let it reuse safely and use every port.
        topo.client
            .sh_ok("sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range='1024 60999'")
            .expect("client sysctls");
        let stderr_path = dir.join("sidecar.stderr");
        Lab {
            topo,
            dir,
            backends,
            sources,
            backend_procs: vec![None, None, None],
            sidecar: None,
            stderr_path,
        }
    }

    fn backend_addr(&self, i: usize) -> String {
        format!("{}:{BACKEND_PORT}", self.backends[i])
    }

    fn start_backend(&mut self, i: usize, mode: &str) {
        let script = self.dir.join("backend.py");
        let mut child = self
            .topo
            .client
            .command("python3")
            .arg(&script)
            .args([
                &self.backends[i].to_string(),
                &BACKEND_PORT.to_string(),
                NAMES[i],
                mode,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn backend");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "backend {i} did not start");
        self.backend_procs[i] = Some(child);
    }

    fn kill_backend(&mut self, i: usize) {
        if let Some(mut c) = self.backend_procs[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn write_config(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A configuration for `backends` (indices) with `balance`; `extra` is
    /// appended (sections).
    fn config(&self, balance: &str, backends: &[usize], extra: &str) -> String {
        let list: Vec<String> = backends
            .iter()
            .map(|&i| format!("\"{}\"", self.backend_addr(i)))
            .collect();
        format!(
            "interface = \"{}\"\nqueues = 2\nmetrics = \"{METRICS}\"\n\n[[listener]]\nport = {LB_PORT}\nbalance = \"{balance}\"\nbackends = [{}]\n\n{extra}",
            self.topo.server.dev,
            list.join(", ")
        )
    }

    /// Starts `turnstile run` and waits for its listening line.
    fn start_sidecar(&mut self, config: &PathBuf) -> String {
        let stderr = File::create(&self.stderr_path).unwrap();
        let mut child = self
            .topo
            .server
            .command(BIN)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn turnstile run");
        let stdout = child.stdout.take().unwrap();
        let line = first_line(stdout, Duration::from_secs(20)).unwrap_or_default();
        if !line.starts_with("listening ") {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no listening line: {line:?}; stderr: {}", self.stderr());
        }
        self.sidecar = Some(child);
        line.trim().to_string()
    }

    fn sidecar_pid(&self) -> i32 {
        self.sidecar.as_ref().expect("sidecar running").id() as i32
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(self.sidecar_pid(), sig) }, 0);
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn metrics(&self) -> String {
        scrape(&self.topo, METRICS)
    }

    fn backend_metric(&self, name: &str, i: usize) -> u64 {
        let text = self.metrics();
        metric(
            &text,
            &format!("{name}{{backend=\"{}\"}}", self.backend_addr(i)),
        )
    }

    /// Runs a Python program in the client namespace with LB=(ip, port) and
    /// SOURCES (client addresses) defined; returns stdout.
    fn python(&self, body: &str) -> String {
        let sources: Vec<String> = self.sources.iter().map(|s| format!("\"{s}\"")).collect();
        let program = format!(
            "LB = (\"{}\", {LB_PORT})\nSOURCES = [{}]\n{}",
            self.topo.server.ip,
            sources.join(", "),
            CLIENT_PY
        ) + body;
        client_python(&self.topo, &program)
    }

    /// SIGTERM: the sidecar drains and exits 0.
    fn stop_sidecar(&mut self) {
        self.signal(libc::SIGTERM);
        let mut child = self.sidecar.take().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "exit status {status}; stderr: {}",
                    self.stderr()
                );
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.sidecar.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for i in 0..3 {
            self.kill_backend(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // The topology (namespaces, anything left inside) goes with `topo`.
    }
}

/// Client helpers: `get(src=None, path="/")` returns the backend's name
/// (raises on anything but a whole 200 response).
const CLIENT_PY: &str = r#"
import socket, time, sys
REQ = b"GET / HTTP/1.1\r\nHost: lb\r\n\r\n"
def read_response(s):
    data = b""
    while b"\r\n\r\n" not in data:
        c = s.recv(4096)
        if not c:
            raise RuntimeError("closed before the head: %r" % data)
        data += c
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK"), head
    n = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(body) < n:
        c = s.recv(4096)
        if not c:
            raise RuntimeError("closed in the body")
        body += c
    return body.decode().strip()
def get(src=None, path="/", timeout=5):
    s = socket.create_connection(LB, timeout=timeout, source_address=(src, 0) if src else None)
    try:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: lb\r\n\r\n" % path.encode())
        return read_response(s)
    finally:
        s.close()
"#;

fn counts(out: &str) -> std::collections::BTreeMap<String, u64> {
    let mut m = std::collections::BTreeMap::new();
    for w in out.split_whitespace() {
        *m.entry(w.to_string()).or_insert(0) += 1;
    }
    m
}

#[test]
fn sidecar_round_robin_spreads_evenly_and_every_client_is_answered() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new("rr", 0);
    for i in 0..3 {
        lab.start_backend(i, "http");
    }
    let cfg = lab.write_config("rr.toml", &lab.config("round-robin", &[0, 1, 2], ""));
    let line = lab.start_sidecar(&cfg);
    assert!(
        line.contains("ports=8080") && line.contains("queues=2"),
        "{line}"
    );

    let ip = lab.topo.server.ip;
    let out = lab
        .topo
        .client
        .sh_ok(&format!("curl -s -i --max-time 5 http://{ip}:{LB_PORT}/"))
        .expect("curl through the sidecar");
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    assert!(NAMES.iter().any(|n| out.trim_end().ends_with(n)), "{out}");

    // 3000 sequential connections, then 3000 concurrent ones (asyncio):
    // every one answered, and round-robin is exact across both shards.
    let out = lab.python(
        r#"
import asyncio
names = [get() for _ in range(3000)]
async def one(sem):
    async with sem:
        r, w = await asyncio.wait_for(asyncio.open_connection(*LB), 5)
        w.write(REQ)
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
        n = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
        body = await asyncio.wait_for(r.readexactly(n), 5)
        w.close()
        return body.decode().strip()
async def main():
    sem = asyncio.Semaphore(100)
    return await asyncio.gather(*[one(sem) for _ in range(3000)], return_exceptions=True)
res = asyncio.run(main())
bad = [r for r in res if not isinstance(r, str)]
print(" ".join(names + [r for r in res if isinstance(r, str)]))
print("errors", len(bad), repr(bad[:3]), file=sys.stderr)
assert not bad, bad[:3]
"#,
    );
    let c = counts(&out);
    assert_eq!(c.values().sum::<u64>(), 6000, "{c:?}");
    for name in NAMES {
        let n = c.get(name).copied().unwrap_or(0);
        assert!((1980..=2020).contains(&n), "round-robin within 1%: {c:?}");
    }
    let text = lab.metrics();
    for i in 0..3 {
        let label = format!("backend=\"{}\"", lab.backend_addr(i));
        assert_eq!(
            metric(&text, &format!("turnstile_backend_up{{{label}}}")),
            1,
            "{text}"
        );
        assert!(
            metric(
                &text,
                &format!("turnstile_backend_connections_total{{{label}}}")
            ) >= 2000
        );
        assert!(
            metric(
                &text,
                &format!("turnstile_backend_bytes_total{{{label},direction=\"from_backend\"}}")
            ) > 0
        );
    }
    assert_eq!(metric(&text, "turnstile_proxy_no_backend_total"), 0);
    lab.stop_sidecar();
}

#[test]
fn sidecar_least_conn_balances_open_connections() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new("lc", 0);
    for i in 0..3 {
        lab.start_backend(i, "http");
    }
    let cfg = lab.write_config("lc.toml", &lab.config("least-conn", &[0, 1, 2], ""));
    lab.start_sidecar(&cfg);
    // Nine held connections opened one at a time: least-conn gives each
    // backend three; a tenth goes to... any, but then the next three fill
    // the others first.
    let out = lab.python(
        r#"
held = []
names = []
for i in range(9):
    s = socket.create_connection(LB, timeout=10)
    s.sendall(b"GET /hold HTTP/1.1\r\nHost: lb\r\n\r\n")
    data = b""
    while not data.endswith(b"\n") or b"\r\n\r\n" not in data:
        data += s.recv(4096)
    names.append(data.split(b"\r\n\r\n")[1].decode().strip())
    held.append(s)
print(" ".join(names))
for s in held: s.close()
"#,
    );
    let c = counts(&out);
    assert_eq!(c.len(), 3, "{c:?}");
    assert!(c.values().all(|&n| n == 3), "least-conn: three each: {c:?}");
}

#[test]
fn sidecar_maglev_keeps_each_client_on_its_backend_and_reload_moves_only_the_removed_ones() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new("maglev", 40);
    for i in 0..3 {
        lab.start_backend(i, "http");
    }
    let cfg = lab.write_config("maglev.toml", &lab.config("maglev", &[0, 1, 2], ""));
    lab.start_sidecar(&cfg);
    let probe = r#"
rows = []
for src in SOURCES:
    seen = {get(src) for _ in range(4)}
    rows.append("%s=%s" % (src, ",".join(sorted(seen))))
print(" ".join(rows))
"#;
    let parse = |out: &str| -> std::collections::BTreeMap<String, String> {
        out.split_whitespace()
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    };
    let before = parse(&lab.python(probe));
    assert_eq!(before.len(), 40);
    for (src, names) in &before {
        assert!(
            !names.contains(','),
            "client {src} reached several backends: {names}"
        );
    }
    let per: Vec<usize> = NAMES
        .iter()
        .map(|n| before.values().filter(|v| v == n).count())
        .collect();
    assert!(
        per.iter().all(|&n| n > 0),
        "40 clients should reach all three backends: {per:?}"
    );

    // A bad file on SIGHUP: rejected, logged, nothing moves.
    std::fs::write(&cfg, lab.config("maglev", &[0, 2], "[health]\nfall = 0\n")).unwrap();
    lab.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(5), || lab
            .stderr()
            .contains("reload rejected")),
        "{}",
        lab.stderr()
    );
    assert!(lab.stderr().contains("health.fall = 0"), "{}", lab.stderr());
    assert_eq!(
        metric(
            &lab.metrics(),
            "turnstile_config_reloads_total{result=\"failed\"}"
        ),
        1
    );
    assert_eq!(
        parse(&lab.python(probe)),
        before,
        "a rejected reload changes nothing"
    );

    // Remove bravo: only bravo's clients move.
    std::fs::write(&cfg, lab.config("maglev", &[0, 2], "")).unwrap();
    lab.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(5), || metric(
        &lab.metrics(),
        "turnstile_config_reloads_total{result=\"ok\"}"
    ) == 1));
    let after = parse(&lab.python(probe));
    for (src, was) in &before {
        let now = &after[src];
        assert!(
            !now.contains(','),
            "client {src} reached several backends: {now}"
        );
        if was == "bravo" {
            assert_ne!(now, "bravo", "{src} must have moved");
        } else {
            assert_eq!(now, was, "client {src} of {was} moved to {now}");
        }
    }
    lab.stop_sidecar();
}

#[test]
fn sidecar_killed_backend_is_ejected_its_clients_end_and_it_comes_back() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new("kill", 0);
    for i in 0..3 {
        lab.start_backend(i, "http");
    }
    let health = "[health]\ninterval_ms = 200\ntimeout_ms = 200\nfall = 2\nrise = 2\n";
    let cfg = lab.write_config("kill.toml", &lab.config("round-robin", &[0, 1, 2], health));
    lab.start_sidecar(&cfg);

    // A steady load in the background, counting answers by backend and
    // failures, with a timestamp per answer.
    let log = lab.dir.join("load.log");
    let load = {
        let topo_client = lab.topo.client.clone();
        let program = format!(
            "LB = (\"{}\", {LB_PORT})\nSOURCES = []\n{CLIENT_PY}\n{}",
            lab.topo.server.ip,
            format_args!(
                r#"
import os
out = open("{}", "w", buffering=1)
while not os.path.exists("{}.stop"):
    t = time.time()
    try:
        out.write("%f %s\n" % (t, get()))
    except Exception as e:
        out.write("%f FAIL %r\n" % (t, e))
    time.sleep(0.005)
"#,
                log.display(),
                log.display()
            )
        );
        std::thread::spawn(move || {
            topo_client
                .command("python3")
                .args(["-c", &program])
                .stdin(Stdio::null())
                .output()
                .expect("load loop")
        })
    };
    std::thread::sleep(Duration::from_secs(2));

    // Hold connections until one is on bravo.
    let holder = lab.dir.join("holder.py");
    std::fs::write(
        &holder,
        format!(
            "LB = (\"{}\", {LB_PORT})\nSOURCES = []\n{CLIENT_PY}\n{}",
            lab.topo.server.ip,
            r#"
import select
socks = []
# Round-robin shares its turns with the background load: open until one
# connection is held on bravo.
while not any(n == "bravo" for n, _ in socks) and len(socks) < 12:
    s = socket.create_connection(LB, timeout=5)
    s.sendall(b"GET /hold HTTP/1.1\r\nHost: lb\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"\n"):
        data += s.recv(4096)
    socks.append((data.split(b"\r\n\r\n")[1].decode().strip(), s))
print(" ".join(n for n, _ in socks), flush=True)
sys.stdin.readline()   # the backend is being killed now
start = time.time()
for name, s in socks:
    if name != "bravo":
        continue
    s.settimeout(15)
    try:
        rest = s.recv(4096)
        print("bravo-end", "close" if rest == b"" else "data:%r" % rest, "%.2f" % (time.time() - start), flush=True)
    except ConnectionResetError:
        print("bravo-end reset %.2f" % (time.time() - start), flush=True)
    except socket.timeout:
        print("bravo-end HANG", flush=True)
"#
        ),
    )
    .unwrap();
    let mut holder_proc = lab
        .topo
        .client
        .command("python3")
        .arg(&holder)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut holder_out = BufReader::new(holder_proc.stdout.take().unwrap());
    let mut held = String::new();
    holder_out.read_line(&mut held).unwrap();
    assert!(
        held.contains("bravo"),
        "one held connection on bravo: {held}"
    );

    let failures_before = metric(
        &lab.metrics(),
        &format!(
            "turnstile_backend_failures_total{{backend=\"{}\",reason=\"refused\"}}",
            lab.backend_addr(1)
        ),
    );
    let killed_at = Instant::now();
    lab.kill_backend(1);
    use std::io::Write as _;
    holder_proc
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"go\n")
        .unwrap();
    let mut end = String::new();
    holder_out.read_line(&mut end).unwrap();
    let _ = holder_proc.kill();
    let _ = holder_proc.wait();
    assert!(
        end.starts_with("bravo-end close") || end.starts_with("bravo-end reset"),
        "a client of the killed backend sees a close or a reset, never a hang: {end}"
    );

    // Ejected within fall * interval (+ a check's timeout and slack).
    assert!(
        eventually(Duration::from_secs(3), || lab
            .backend_metric("turnstile_backend_up", 1)
            == 0),
        "bravo not ejected: {}",
        lab.metrics()
    );
    let ejected_after = killed_at.elapsed();
    assert!(lab.stderr().contains("backend down"), "{}", lab.stderr());
    // From now on no new connection goes to bravo: its failure count stays.
    let refused = metric(
        &lab.metrics(),
        &format!(
            "turnstile_backend_failures_total{{backend=\"{}\",reason=\"refused\"}}",
            lab.backend_addr(1)
        ),
    );
    std::thread::sleep(Duration::from_secs(2));
    let refused_later = metric(
        &lab.metrics(),
        &format!(
            "turnstile_backend_failures_total{{backend=\"{}\",reason=\"refused\"}}",
            lab.backend_addr(1)
        ),
    );
    assert_eq!(
        refused, refused_later,
        "connections still tried on the ejected backend"
    );
    assert!(refused >= failures_before);

    // Back: readmitted after rise successes, and takes connections again.
    lab.start_backend(1, "http");
    assert!(
        eventually(Duration::from_secs(3), || lab
            .backend_metric("turnstile_backend_up", 1)
            == 1),
        "bravo not readmitted: {}",
        lab.metrics()
    );
    let total = lab.backend_metric("turnstile_backend_connections_total", 1);
    assert!(
        eventually(Duration::from_secs(3), || lab
            .backend_metric("turnstile_backend_connections_total", 1)
            > total + 5),
        "bravo takes no connections after readmission"
    );
    assert!(lab.stderr().contains("backend up"), "{}", lab.stderr());

    std::fs::write(format!("{}.stop", log.display()), b"").unwrap();
    let out = load.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let fails: Vec<&str> = text.lines().filter(|l| l.contains("FAIL")).collect();
    let answered = text.lines().count() - fails.len();
    // Retries hide the dead backend from clients: every request answered.
    assert!(
        fails.is_empty(),
        "{} of {} failed: {:?}",
        fails.len(),
        text.lines().count(),
        &fails[..fails.len().min(5)]
    );
    assert!(answered > 200, "{answered}");
    eprintln!("ejected after {ejected_after:?}; {answered} requests answered; {end}");
    lab.stop_sidecar();
}

#[test]
fn sidecar_relays_50_mb_each_way_exactly_under_5_percent_loss() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new("loss", 0);
    lab.start_backend(0, "echo");
    let cfg = lab.write_config("loss.toml", &lab.config("round-robin", &[0], ""));
    lab.start_sidecar(&cfg);
    // Both legs pass through the client namespace: drop 5% of TCP segments
    // entering and leaving it.
    lab.topo
        .client
        .sh_ok(
            "nft add table inet loss && \
             nft add chain inet loss in '{ type filter hook input priority 0; }' && \
             nft add chain inet loss out '{ type filter hook output priority 0; }' && \
             nft add rule inet loss in meta l4proto tcp numgen random mod 100 '<' 5 drop && \
             nft add rule inet loss out meta l4proto tcp numgen random mod 100 '<' 5 drop",
        )
        .expect("nftables loss");
    let started = Instant::now();
    let out = lab.python(
        r#"
import hashlib, threading
SIZE = 50 * 1024 * 1024
def block(i):
    return hashlib.sha256(b"%d" % i).digest() * 2048   # 64 KiB, position-dependent
s = socket.create_connection(LB, timeout=120)
sent = hashlib.sha256()
def writer():
    left, i = SIZE, 0
    while left:
        b = block(i)[:left]
        s.sendall(b)
        sent.update(b)
        left -= len(b)
        i += 1
    s.shutdown(socket.SHUT_WR)
t = threading.Thread(target=writer)
t.start()
got = hashlib.sha256()
n = 0
while True:
    c = s.recv(1 << 20)
    if not c:
        break
    got.update(c)
    n += len(c)
t.join()
s.close()
print(n, sent.hexdigest() == got.hexdigest())
"#,
    );
    let elapsed = started.elapsed();
    assert_eq!(
        out.trim(),
        format!("{} True", 50 * 1024 * 1024),
        "byte-exact echo of 50 MB"
    );
    let text = lab.metrics();
    let label = format!("backend=\"{}\"", lab.backend_addr(0));
    assert_eq!(
        metric(
            &text,
            &format!("turnstile_backend_bytes_total{{{label},direction=\"to_backend\"}}")
        ),
        50 * 1024 * 1024
    );
    assert_eq!(
        metric(
            &text,
            &format!("turnstile_backend_bytes_total{{{label},direction=\"from_backend\"}}")
        ),
        50 * 1024 * 1024
    );
    assert!(
        metric(&text, "turnstile_retransmits_total") > 0,
        "loss must have caused retransmissions"
    );
    eprintln!("50 MB each way under 5% loss in {elapsed:?}");
}

#[test]
fn sidecar_propagates_half_close_and_resets_and_resets_clients_without_backends() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new("close", 0);
    lab.start_backend(0, "count");
    lab.start_backend(1, "rst");
    // Listener 8080 -> count, 8081 -> rst, 8082 -> nothing listens (refused).
    let cfg = format!(
        "interface = \"{}\"\nqueues = 2\nmetrics = \"{METRICS}\"\n\
         [[listener]]\nport = 8080\nbackends = [\"{}\"]\n\
         [[listener]]\nport = 8081\nbackends = [\"{}\"]\n\
         [[listener]]\nport = 8082\nbackends = [\"{}:9999\", \"{}:9999\"]\n",
        lab.topo.server.dev,
        lab.backend_addr(0),
        lab.backend_addr(1),
        lab.backends[0],
        lab.backends[2]
    );
    let cfg = lab.write_config("close.toml", &cfg);
    lab.start_sidecar(&cfg);
    let ip = lab.topo.server.ip;
    let out = lab.python(&format!(
        r#"
# Half-close: our FIN reaches the backend after the data; its answer still
# comes back on the half-open connection, then its FIN.
s = socket.create_connection(("{ip}", 8080), timeout=10)
s.sendall(b"x" * 100000)
s.shutdown(socket.SHUT_WR)
data = b""
while True:
    c = s.recv(4096)
    if not c: break
    data += c
s.close()
print(data.decode().strip())
# Backend reset -> client reset.
s = socket.create_connection(("{ip}", 8081), timeout=10)
s.sendall(b"hello")
try:
    r = s.recv(4096)
    print("rst-backend: no reset", r)
except ConnectionResetError:
    print("rst-backend: reset")
s.close()
# No backend accepts -> client reset.
s = socket.create_connection(("{ip}", 8082), timeout=10)
try:
    r = s.recv(4096)
    print("no-backend: no reset", r)
except ConnectionResetError:
    print("no-backend: reset")
s.close()
"#
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        vec![
            "alpha got 100000",
            "rst-backend: reset",
            "no-backend: reset"
        ],
        "{out}"
    );
    let text = lab.metrics();
    assert!(metric(&text, "turnstile_proxy_no_backend_total") >= 1);
    assert!(
        metric(&text, "turnstile_proxy_retries_total") >= 1,
        "the second dead backend was tried"
    );
    lab.stop_sidecar();
}

#[test]
fn sidecar_churn_100k_short_connections_through_one_backend() {
    // 1,000 upstream ports, MSL 30 s. The reuse delay caps new connections
    // to one backend at ports / reuse_delay per second; 100 ms lifts the
    // cap to 10,000/s, so the run measures the stack, not the cap. Safety
    // does not rest on the delay: reuse still requires timestamps, a newer
    // ISN and a newer timestamp clock (ARCHITECTURE.md).
    churn(100);
}

#[test]
#[ignore = "bound by the port rate: ~105 s at the default 1 s reuse delay; run with --ignored"]
fn sidecar_churn_100k_at_the_default_reuse_delay() {
    // With the default 1 s delay the cap is 1,000/s against the 833/s this
    // needs: measured 976/s, 102.5 s, zero failures (sessions wait for a
    // port instead of failing), on 2 shared cores.
    churn(1000);
}

fn churn(reuse_delay_ms: u64) {
    if !need_root() {
        return;
    }
    const TOTAL: u64 = 100_000;
    let mut lab = Lab::new(&format!("churn{reuse_delay_ms}"), 0);
    lab.start_backend(0, "http");
    let upstream = format!(
        "[upstream]\nports = \"50000-50999\"\nmsl_ms = 30000\nreuse = true\nreuse_delay_ms = {reuse_delay_ms}\n"
    );
    let cfg = lab.write_config("churn.toml", &lab.config("round-robin", &[0], &upstream));
    lab.start_sidecar(&cfg);

    // Scrape TIME_WAIT once a second while the load runs.
    let done = Arc::new(AtomicBool::new(false));
    let max_tw = Arc::new(AtomicU64::new(0));
    let sampler = {
        let server = lab.topo.server.clone();
        let (done, max_tw) = (done.clone(), max_tw.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Ok(text) =
                    server.sh_ok(&format!("curl -s --max-time 2 http://{METRICS}/metrics"))
                    && let Some(tw) = turnstile::metrics::sample(&text, "turnstile_time_wait")
                {
                    max_tw.fetch_max(tw, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    let started = Instant::now();
    let out = lab.python(&format!(
        r#"
import asyncio
TOTAL = {TOTAL}
ok = 0
fails = []
async def one():
    r, w = await asyncio.wait_for(asyncio.open_connection(*LB), 10)
    try:
        w.write(REQ)
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 OK"), head
        body = await asyncio.wait_for(r.readexactly(6), 10)
        assert body == b"alpha\n", body
    finally:
        w.close()   # the client closes first: the sidecar then closes first upstream
async def worker(n):
    global ok
    for _ in range(n):
        try:
            await one()
            ok += 1
        except Exception as e:
            fails.append(repr(e))
async def main():
    per = TOTAL // 50
    await asyncio.gather(*[worker(per) for _ in range(50)])
t = time.time()
asyncio.run(main())
print(ok, len(fails), "%.1f" % (time.time() - t), repr(fails[:3]))
"#
    ));
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let text = lab.metrics();
    let fields: Vec<&str> = out.split_whitespace().collect();
    let recycled = metric(&text, "turnstile_time_wait_recycled_total{side=\"active\"}");
    let tw_max = max_tw.load(Ordering::Relaxed);
    eprintln!(
        "churn: {out} elapsed {elapsed:?} ({:.0}/s), max TIME_WAIT {tw_max}, recycled active {recycled}",
        TOTAL as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(
        fields[0],
        TOTAL.to_string(),
        "every connection answered: {out}"
    );
    assert_eq!(fields[1], "0", "zero failures: {out}");
    // Every TIME_WAIT entry is an upstream tuple: at most one per port of
    // the 1,000-port range towards the one backend.
    assert!(
        tw_max <= 1000,
        "TIME_WAIT bounded by the port range: {tw_max}"
    );
    assert!(
        recycled > TOTAL / 2,
        "TIME_WAIT tuples recycled on active opens: {recycled}"
    );
    // No connection gave up for lack of a port (sessions may wait for one:
    // the engine's no_port counter counts those attempts, not failures).
    let label = format!("backend=\"{}\",reason=\"no_port\"", lab.backend_addr(0));
    assert_eq!(
        metric(
            &text,
            &format!("turnstile_backend_failures_total{{{label}}}")
        ),
        0
    );
    let no_port = metric(
        &text,
        "turnstile_connect_failures_total{reason=\"no_port\"}",
    );
    eprintln!("connect attempts that waited for a port: {no_port}");
    assert!(
        elapsed < Duration::from_secs(120),
        "100k connections took {elapsed:?}"
    );
}

/// Many concurrent GETs through the sidecar (asyncio, `conc` at a time);
/// prints the backend names, and the errors on stderr.
const MANY_PY: &str = r#"
import asyncio
async def one(sem, path):
    async with sem:
        r, w = await asyncio.wait_for(asyncio.open_connection(*LB), 30)
        try:
            w.write(b"GET %s HTTP/1.1\r\nHost: lb\r\n\r\n" % path.encode())
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
            n = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
            body = await asyncio.wait_for(r.readexactly(n), 30)
            return body.decode().strip()
        finally:
            w.close()
async def main(total, conc):
    sem = asyncio.Semaphore(conc)
    return await asyncio.gather(*[one(sem, "/") for _ in range(total)], return_exceptions=True)
def many(total, conc):
    res = asyncio.run(main(total, conc))
    bad = [type(r).__name__ for r in res if not isinstance(r, str)]
    print(" ".join(r for r in res if isinstance(r, str)))
    print("errors", len(bad), " ".join(sorted(set(bad))))
"#;

#[test]
fn sidecar_weights_1_2_3_over_30000_round_robin_connections() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new("weights", 0);
    for i in 0..3 {
        lab.start_backend(i, "http");
    }
    let b = |i: usize, w: u32| format!("{{ addr = \"{}\", weight = {w} }}", lab.backend_addr(i));
    let text = format!(
        "interface = \"{}\"\nqueues = 2\nmetrics = \"{METRICS}\"\n\n[[listener]]\nport = {LB_PORT}\nbackends = [{}, {}, {}]\n",
        lab.topo.server.dev,
        b(0, 1),
        b(1, 2),
        b(2, 3)
    );
    let cfg = lab.write_config("weights.toml", &text);
    lab.start_sidecar(&cfg);
    let out = lab.python(&format!("{MANY_PY}\nmany(30000, 100)\n"));
    let c = counts(&out);
    assert!(
        out.contains("errors 0"),
        "{}",
        &out[out.len().saturating_sub(200)..]
    );
    let total: u64 = NAMES.iter().map(|n| c.get(*n).copied().unwrap_or(0)).sum();
    assert_eq!(total, 30_000, "{c:?}");
    for (i, w) in [1u64, 2, 3].into_iter().enumerate() {
        let n = c.get(NAMES[i]).copied().unwrap_or(0);
        let want = 30_000 * w / 6;
        assert!(
            n.abs_diff(want) * 50 <= want,
            "weight {w}: {n} of 30000 (want {want} within 2%): {c:?}"
        );
    }
    lab.stop_sidecar();
}

#[test]
fn sidecar_max_connections_holds_under_200_clients_and_the_queue_times_out_cleanly() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new("maxconn", 0);
    lab.start_backend(0, "slow");
    let (dev, addr) = (lab.topo.server.dev.clone(), lab.backend_addr(0));
    let text = |connect_ms: u64| {
        format!(
            "interface = \"{}\"\nqueues = 2\nmetrics = \"{METRICS}\"\n\n[[listener]]\nport = {LB_PORT}\n\
             backends = [{{ addr = \"{}\", max_connections = 20 }}]\n\n\
             [health]\ninterval_ms = 3600000\n[timeouts]\nconnect_ms = {connect_ms}\n",
            dev, addr
        )
    };
    let cfg = lab.write_config("maxconn.toml", &text(30_000));
    lab.start_sidecar(&cfg);
    // 200 at once, 300 ms each, 20 at a time: about 3 s, every one served.
    let peak = format!(
        "import urllib.request\nprint(\"peak\", urllib.request.urlopen(\"http://{}:{BACKEND_PORT}/peak\", timeout=5).read().decode().strip())\n",
        lab.backends[0]
    );
    let out = lab.python(&format!("{MANY_PY}\nmany(200, 200)\n{peak}"));
    assert!(out.contains("errors 0"), "{out}");
    assert_eq!(counts(&out).get(NAMES[0]).copied(), Some(200), "{out}");
    assert!(
        out.contains("peak 20\n"),
        "the backend held at most 20, and 20: {out}"
    );
    let text1 = lab.metrics();
    assert!(
        metric(&text1, "turnstile_proxy_queued_total") >= 150,
        "{text1}"
    );
    assert_eq!(metric(&text1, "turnstile_proxy_queue_timeouts_total"), 0);

    // A 500 ms queue: 20 served at once, 20 more as those end at 300 ms,
    // the rest reset at 500 ms (a clean RST, counted).
    std::fs::write(&cfg, text(500)).unwrap();
    lab.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    let out = lab.python(&format!("{MANY_PY}\nmany(200, 200)\n{peak}"));
    let served = counts(&out).get(NAMES[0]).copied().unwrap_or(0);
    assert!((20..=60).contains(&served), "{out}");
    let errors = 200 - served;
    assert!(
        out.contains(&format!("errors {errors} ")),
        "every other client failed: {out}"
    );
    assert!(
        !out.contains("TimeoutError"),
        "reset promptly, not left hanging: {out}"
    );
    assert!(out.contains("peak 20\n"), "{out}");
    let text2 = lab.metrics();
    assert_eq!(
        metric(&text2, "turnstile_proxy_queue_timeouts_total"),
        errors,
        "{text2}"
    );
    lab.stop_sidecar();
}
