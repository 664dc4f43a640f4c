//! Kernel peers beside the sidecar: nginx as a PROXY-protocol backend and
//! HAProxy as the balancer in front, each started in a namespace of the
//! test's own topology and killed (by its own pid) on drop.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use super::eventually;
use turnstile::topology::Host;

/// nginx (one process, no daemon) answering `GET /` with 200 "nginx" on
/// `ip:port`, reading a PROXY header first (`listen ... proxy_protocol`)
/// and logging `$proxy_protocol_addr:$proxy_protocol_port` per request.
pub struct Nginx {
    child: Child,
    pub log: PathBuf,
}

impl Nginx {
    pub fn start(ns: &Host, dir: &Path, ip: Ipv4Addr, port: u16) -> Nginx {
        let dir = dir.join("nginx");
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("proxy.log");
        let conf = format!(
            r#"
worker_processes 1;
master_process off;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format pp '$proxy_protocol_addr:$proxy_protocol_port';
    access_log {log} pp;
    keepalive_timeout 65;
    client_body_temp_path {dir};
    proxy_temp_path {dir};
    fastcgi_temp_path {dir};
    uwsgi_temp_path {dir};
    scgi_temp_path {dir};
    server {{
        listen {ip}:{port} proxy_protocol reuseport backlog=4096;
        location / {{ return 200 "nginx\n"; }}
    }}
}}
"#,
            dir = dir.display(),
            log = log.display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = ns
            .command("nginx")
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx (apt-get install nginx)");
        let nginx = Nginx { child, log };
        let up = eventually(Duration::from_secs(10), || {
            ns.sh_ok(&format!("ss -Hltn 'sport = :{port}'"))
                .is_ok_and(|o| o.contains(&ip.to_string()))
        });
        assert!(up, "nginx did not listen on {ip}:{port}");
        nginx
    }

    /// The access log's lines (one `addr:port` per request).
    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HAProxy (mode tcp, one thread) on `bind` sending every connection to
/// `server` with a PROXY v2 header (`send-proxy-v2`).
pub struct Haproxy(Child);

impl Haproxy {
    pub fn start(ns: &Host, dir: &Path, bind: (Ipv4Addr, u16), server: (Ipv4Addr, u16)) -> Self {
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n  nbthread 1\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 5s\n  \
                 timeout client 60s\n  timeout server 60s\nfrontend f\n  bind {}:{}\n  \
                 default_backend b\nbackend b\n  server t {}:{} send-proxy-v2\n",
                bind.0, bind.1, server.0, server.1
            ),
        )
        .unwrap();
        Self::run(ns, &cfg, bind.1)
    }

    /// Runs `haproxy -db -f cfg` in `ns` and waits (bounded) until it
    /// listens on `port`; killed on drop.
    pub fn run(ns: &Host, cfg: &Path, port: u16) -> Self {
        let child = ns
            .command("haproxy")
            .args(["-db", "-f"])
            .arg(cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn haproxy (apt-get install haproxy)");
        let h = Haproxy(child);
        let up = eventually(Duration::from_secs(10), || {
            ns.sh_ok(&format!("ss -Hltn 'sport = :{port}'"))
                .is_ok_and(|o| !o.trim().is_empty())
        });
        assert!(up, "haproxy did not listen");
        h
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Python helpers for kernel clients (run through `Lab::python`):
/// `v2(src, sport, dst, dport)` and `v1(...)` build PROXY headers;
/// `run(jobs, conc)` runs `(target, src, prefix)` GETs `conc` at a time,
/// each sending `prefix` (a PROXY header, or nothing) and a GET, reading
/// the response by its Content-Length; prints `ok <own addr:port> <body>`
/// per success, then `errors N <kinds>`. `probe(target, payload, limit)`
/// sends `payload` and waits for the reset: prints `reset|eof|data <secs>`.
pub const PP_PY: &str = r#"
import asyncio, socket, struct, time
SIG = b"\r\n\r\n\x00\r\nQUIT\n"
def v2(src, sport, dst, dport):
    return SIG + bytes([0x21, 0x11]) + struct.pack("!H", 12) + socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
def v1(src, sport, dst, dport):
    return b"PROXY TCP4 %s %s %d %d\r\n" % (src.encode(), dst.encode(), sport, dport)
async def fetch(sem, target, src=None, prefix=b""):
    async with sem:
        r, w = await asyncio.wait_for(asyncio.open_connection(target[0], target[1], local_addr=(src, 0) if src else None), 30)
        try:
            me = "%s:%d" % w.get_extra_info("sockname")[:2]
            w.write(prefix + b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
            assert head.startswith(b"HTTP/1.1 200"), head[:80]
            n = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
            body = await asyncio.wait_for(r.readexactly(n), 30)
            return me, body.decode().strip()
        finally:
            w.close()
def run(jobs, conc):
    async def main():
        sem = asyncio.Semaphore(conc)
        return await asyncio.gather(*[fetch(sem, *j) for j in jobs], return_exceptions=True)
    res = asyncio.run(main())
    for r in res:
        if isinstance(r, tuple):
            print("ok", r[0], r[1])
    bad = [type(r).__name__ for r in res if not isinstance(r, tuple)]
    print("errors", len(bad), " ".join(sorted(set(bad))))
async def probe_one(target, payload, limit):
    r, w = await asyncio.open_connection(*target)
    start = time.monotonic()
    try:
        if payload:
            w.write(payload)
        data = await asyncio.wait_for(r.read(100), limit)
        kind = "data" if data else "eof"
    except ConnectionResetError:
        kind = "reset"
    except asyncio.TimeoutError:
        kind = "hang"
    finally:
        w.close()
    return "%s %.3f" % (kind, time.monotonic() - start)
def probe(target, payloads, limit):
    async def main():
        return await asyncio.gather(*[probe_one(target, p, limit) for p in payloads])
    for line in asyncio.run(main()):
        print(line)
"#;
