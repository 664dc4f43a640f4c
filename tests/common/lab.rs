//! The sidecar tests' world (`Lab`): a topology, three kernel backends
//! (asyncio servers, each answering with its own name) on extra addresses of
//! the client namespace, and `turnstile run` in the server namespace.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use super::{BIN, Topology, TopologyConfig, client_python, first_line, metric, scrape};

pub const LB_PORT: u16 = 8080;
pub const BACKEND_PORT: u16 = 9000;
pub const METRICS: &str = "127.0.0.1:9930";
pub const NAMES: [&str; 3] = ["alpha", "bravo", "charlie"];

/// The backends: asyncio servers (faster than http.server) with modes:
/// `http` answers `GET /` with its name (Content-Length, keep-alive: the
/// client closes first); `GET /hold` sends the head and its name, then holds
/// the rest of the body for a minute; `echo` returns every byte; `count`
/// reads to EOF, then answers with the byte count and closes; `rst` reads
/// once, then resets; `slow` answers after 300 ms and `GET /peak` tells the
/// most connections it held at once.
pub const BACKEND_PY: &str = r#"
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
pub struct Lab {
    pub topo: Topology,
    pub dir: PathBuf,
    /// Backend addresses in the client namespace.
    pub backends: Vec<Ipv4Addr>,
    /// Extra client source addresses.
    pub sources: Vec<Ipv4Addr>,
    pub backend_procs: Vec<Option<Child>>,
    pub sidecar: Option<Child>,
    pub stderr_path: PathBuf,
}

impl Lab {
    pub fn new(tag: &str, sources: usize) -> Lab {
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

    pub fn backend_addr(&self, i: usize) -> String {
        format!("{}:{BACKEND_PORT}", self.backends[i])
    }

    pub fn start_backend(&mut self, i: usize, mode: &str) {
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
        let never = AtomicBool::new(false);
        let ready = turnstile::testkit::Lines::spawn(child.stdout.take().unwrap()).wait_line(
            "ready",
            Duration::from_secs(30),
            &never,
        );
        if let Err(e) = ready {
            let _ = child.kill();
            let _ = child.wait();
            panic!("backend {i} did not start: {e}");
        }
        self.backend_procs[i] = Some(child);
    }

    pub fn kill_backend(&mut self, i: usize) {
        if let Some(mut c) = self.backend_procs[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn write_config(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A configuration for `backends` (indices) with `balance`; `extra` is
    /// appended (sections).
    pub fn config(&self, balance: &str, backends: &[usize], extra: &str) -> String {
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
    pub fn start_sidecar(&mut self, config: &PathBuf) -> String {
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

    pub fn sidecar_pid(&self) -> i32 {
        self.sidecar.as_ref().expect("sidecar running").id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(self.sidecar_pid(), sig) }, 0);
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        scrape(&self.topo, METRICS)
    }

    pub fn backend_metric(&self, name: &str, i: usize) -> u64 {
        let text = self.metrics();
        metric(
            &text,
            &format!("{name}{{backend=\"{}\"}}", self.backend_addr(i)),
        )
    }

    /// Runs a Python program in the client namespace with LB=(ip, port) and
    /// SOURCES (client addresses) defined; returns stdout.
    pub fn python(&self, body: &str) -> String {
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
    pub fn stop_sidecar(&mut self) {
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
pub const CLIENT_PY: &str = r#"
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

/// How often each word occurs in `out` (backend names in a client's output).
pub fn counts(out: &str) -> std::collections::BTreeMap<String, u64> {
    let mut m = std::collections::BTreeMap::new();
    for w in out.split_whitespace() {
        *m.entry(w.to_string()).or_insert(0) += 1;
    }
    m
}

/// Many concurrent GETs through the sidecar (asyncio, `conc` at a time);
/// prints the backend names, and the errors on stderr.
pub const MANY_PY: &str = r#"
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
