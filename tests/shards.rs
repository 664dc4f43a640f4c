//! The engine on the wire: turnstile serving and connecting through real
//! Linux kernel peers in network namespaces, with two queues (two shards)
//! unless a test says otherwise. Needs root.

mod common;

use std::time::Duration;

use common::*;

const HTTP_PORT: u16 = 8080;
const ECHO_PORT: u16 = 7007;
const BODY: &str = "turnstile\n";

fn two_queues() -> Topology {
    Topology::new(TopologyConfig { queues: 2 }).expect("topology")
}

#[test]
fn http_answers_curl_python_and_20k_short_connections() {
    if !need_root() {
        return;
    }
    let _serial = serial();
    let mut topo = two_queues();
    let (line, _) = start_serve(
        &mut topo,
        &[
            "--port",
            "8080",
            "--app",
            "http",
            "--msl-ms",
            "1500",
            "--metrics",
            "127.0.0.1:9911",
        ],
    );
    assert!(line.contains("queues=2"), "{line}");
    let ip = topo.server.ip;

    let out = topo
        .client
        .sh_ok(&format!(
            "curl -s -i --http1.1 --max-time 5 http://{ip}:8080/"
        ))
        .expect("curl");
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    assert!(out.contains("Connection: close"), "{out}");
    assert!(out.ends_with(BODY), "{out:?}");

    let out = client_python(
        &topo,
        &format!(
            r#"
import socket, asyncio, collections
IP, PORT = "{ip}", 8080
REQ = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
def check(resp):
    head, _, body = resp.partition(b"\r\n\r\n")
    return head.startswith(b"HTTP/1.1 200 OK") and body == b"turnstile\n"
bad = collections.Counter()
for i in range(10000):
    try:
        s = socket.create_connection((IP, PORT), timeout=5)
        s.sendall(REQ)
        chunks = []
        while True:
            c = s.recv(4096)
            if not c: break
            chunks.append(c)
        s.close()
        if not check(b"".join(chunks)): bad["bad response"] += 1
    except Exception as e:
        bad[repr(e)] += 1
async def one(sem):
    async with sem:
        r, w = await asyncio.wait_for(asyncio.open_connection(IP, PORT), 5)
        w.write(REQ)
        data = await asyncio.wait_for(r.read(), 5)
        w.close()
        return check(data)
async def main():
    sem = asyncio.Semaphore(200)
    res = await asyncio.gather(*[one(sem) for _ in range(10000)], return_exceptions=True)
    return collections.Counter(repr(r) for r in res if r is not True)
bad_conc = asyncio.run(main())
print(sum(bad.values()), sum(bad_conc.values()), dict(bad), dict(bad_conc))
"#
        ),
    );
    assert!(
        out.starts_with("0 0 "),
        "sequential and concurrent errors: {out}"
    );

    // We closed first, so the TIME_WAIT entries are ours, and they go after 2MSL.
    // Shards publish their counters every 50 ms: allow for that.
    let mut text = String::new();
    assert!(
        eventually(Duration::from_secs(15), || {
            text = scrape(&topo, "127.0.0.1:9911");
            metric(&text, "turnstile_connections_accepted_total") >= 20_001
        }),
        "{text}"
    );
    let tw = metric(&text, "turnstile_time_wait");
    assert!(tw > 0, "TIME_WAIT entries must be reported: {text}");
    let mut last = String::new();
    assert!(
        eventually(Duration::from_secs(20), || {
            last = scrape(&topo, "127.0.0.1:9911");
            metric(&last, "turnstile_time_wait") == 0
        }),
        "TIME_WAIT must expire after 2MSL (3 s): {last}"
    );
    assert!(metric(&last, "turnstile_time_wait_expired_total") >= tw);
    let _ = metric(&last, "turnstile_handoff_total"); // reported (value depends on RSS)
}

#[test]
fn echo_survives_five_percent_loss_both_ways() {
    if !need_root() {
        return;
    }
    let _serial = serial();
    let mut topo = two_queues();
    start_serve(
        &mut topo,
        &[
            "--port",
            "7007",
            "--app",
            "echo",
            "--metrics",
            "127.0.0.1:9912",
        ],
    );
    topo.client
        .sh_ok(
            "nft add table inet loss && \
             nft add chain inet loss in '{ type filter hook input priority 0; }' && \
             nft add chain inet loss out '{ type filter hook output priority 0; }' && \
             nft add rule inet loss in meta l4proto tcp numgen random mod 100 '<' 5 drop && \
             nft add rule inet loss out meta l4proto tcp numgen random mod 100 '<' 5 drop",
        )
        .expect("nftables loss");
    let ip = topo.server.ip;
    let out = client_python(
        &topo,
        &format!(
            r#"
import socket, threading, os, hashlib
SIZE = 10 * 1024 * 1024
results = []
def client(i):
    data = os.urandom(SIZE)
    s = socket.create_connection(("{ip}", {ECHO_PORT}), timeout=120)
    got = hashlib.sha256(); n = [0]
    def reader():
        while True:
            c = s.recv(1 << 16)
            if not c: break
            got.update(c); n[0] += len(c)
    t = threading.Thread(target=reader); t.start()
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    t.join(300)
    s.close()
    results.append(n[0] == SIZE and got.digest() == hashlib.sha256(data).digest())
ts = [threading.Thread(target=client, args=(i,)) for i in range(20)]
[t.start() for t in ts]; [t.join(400) for t in ts]
print(sum(results), len(results))
"#
        ),
    );
    assert_eq!(
        out.trim(),
        "20 20",
        "every client gets its 10 MB back byte-exact"
    );
    let text = scrape(&topo, "127.0.0.1:9912");
    assert!(metric(&text, "turnstile_retransmits_total") > 0, "{text}");
}

#[test]
fn half_close_still_receives_the_echo() {
    if !need_root() {
        return;
    }
    let _serial = serial();
    let mut topo = two_queues();
    start_serve(&mut topo, &["--port", "7007", "--app", "echo"]);
    let ip = topo.server.ip;
    let out = client_python(
        &topo,
        &format!(
            r#"
import socket, os
data = os.urandom(300000)
s = socket.create_connection(("{ip}", {ECHO_PORT}), timeout=10)
s.sendall(data)
s.shutdown(socket.SHUT_WR)
got = bytearray()
while True:
    c = s.recv(65536)
    if not c: break
    got += c
print(len(got), bytes(got) == data)
"#
        ),
    );
    assert_eq!(out.trim(), "300000 True");
}

#[test]
fn passive_time_wait_is_recycled_for_a_newer_syn() {
    if !need_root() {
        return;
    }
    let _serial = serial();
    let mut topo = two_queues();
    start_serve(
        &mut topo,
        &[
            "--port",
            "8080",
            "--app",
            "http",
            "--metrics",
            "127.0.0.1:9913",
        ],
    );
    let ip = topo.server.ip;
    let out = client_python(
        &topo,
        &format!(
            r#"
import socket, time
ok = 0
for i in range(5):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 45678))
    s.settimeout(5)
    s.connect(("{ip}", {HTTP_PORT}))
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while True:
        c = s.recv(4096)
        if not c: break
        data += c
    s.close()
    if data.endswith(b"turnstile\n"): ok += 1
    time.sleep(0.05)
print(ok)
"#
        ),
    );
    assert_eq!(
        out.trim(),
        "5",
        "every reconnect from the same port is answered"
    );
    let mut text = String::new();
    assert!(
        eventually(Duration::from_secs(15), || {
            text = scrape(&topo, "127.0.0.1:9913");
            metric(
                &text,
                "turnstile_time_wait_recycled_total{side=\"passive\"}",
            ) >= 4
        }),
        "four reconnects found our TIME_WAIT entry and recycled it: {text}"
    );
}

/// nginx in the client namespace: the kernel HTTP server for active opens.
fn start_nginx(topo: &mut Topology) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{}-nginx", topo.client.netns));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = format!(
        r#"
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    client_body_temp_path {dir};
    proxy_temp_path {dir};
    fastcgi_temp_path {dir};
    uwsgi_temp_path {dir};
    scgi_temp_path {dir};
    server {{
        listen {ip}:8081 reuseport backlog=4096;
        location / {{ return 200 "backend\n"; }}
    }}
}}
"#,
        dir = dir.display(),
        ip = topo.client.ip
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let conf_path = dir.join("nginx.conf");
    topo.spawn_client(
        "nginx",
        &[
            "-c",
            conf_path.to_str().unwrap(),
            "-e",
            dir.join("error.log").to_str().unwrap(),
        ],
    )
    .expect("nginx");
    let ip = topo.client.ip;
    assert!(
        eventually(Duration::from_secs(10), || topo
            .client
            .sh(&format!("curl -s --max-time 1 http://{ip}:8081/"))
            .map(|o| o.stdout == b"backend\n")
            .unwrap_or(false)),
        "nginx must come up"
    );
    dir
}

fn run_load(topo: &Topology, extra: &[&str]) -> (bool, serde_json::Value) {
    let target = format!("{}:8081", topo.client.ip);
    let out = topo
        .server
        .command(BIN)
        .args([
            "load",
            "--iface",
            &topo.server.dev,
            "--target",
            &target,
            "--expect-body",
            "backend\n",
        ])
        .args(extra)
        .output()
        .expect("turnstile load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}"))
        .unwrap_or_else(|e| {
            panic!(
                "no JSON summary ({e}): {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    (out.status.success(), json)
}

/// The kernel peer's TCP counters (all of them, zeros included) since the
/// last `nstat -n`.
fn kernel_counters(topo: &Topology) -> std::collections::BTreeMap<String, u64> {
    let out = topo.client.sh_ok("nstat -az").unwrap_or_default();
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let k = w.next()?;
            let v = w.next()?.parse().ok()?;
            Some((k.to_string(), v))
        })
        .collect()
}

#[test]
fn active_opens_recycle_time_wait_through_a_small_port_range() {
    if !need_root() {
        return;
    }
    let _serial = serial();
    let mut topo = two_queues();
    let dir = start_nginx(&mut topo);
    // Both veth ends: the client end sees every segment either way; the
    // server end shows what the kernel there saw (AF_XDP bypasses its taps).
    let mut cap = capture::Capture::start(
        "active-recycle",
        &[&topo.client, &topo.server],
        "tcp port 8081",
    );
    topo.client.sh_ok("nstat -n").ok(); // reset the kernel's counters
    let (ok, json) = run_load(
        &topo,
        &[
            "--connections",
            "20000",
            "--concurrency",
            "64",
            "--local-ports",
            "40000-40999",
            "--msl-ms",
            "30000",
            "--metrics",
            "127.0.0.1:9914",
        ],
    );
    let counters = kernel_counters(&topo);
    let get = |k: &str| counters.get(k).copied().unwrap_or(0);
    let (rsts, resets) = (get("TcpOutRsts"), get("TcpEstabResets"));
    let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
    // The one RST the kernel may send here: when our ACK of its FIN is late
    // (our shard starved of CPU past the kernel's RTO), the kernel
    // retransmits the FIN; we then ACK the FIN and, from TIME_WAIT, ACK the
    // retransmission again (RFC 9293 3.10.7.4: TIME-WAIT acknowledges a
    // retransmitted FIN). The first ACK closes the kernel's socket, so the
    // second reaches no connection and is answered with a RST (RFC 9293
    // 3.10.7.1), which TIME_WAIT ignores (RFC 1337). Every other kernel RST
    // is a failure.
    let allowed = if rsts > 0 {
        cap.stop();
        let client = format!("{}.8081", topo.client.ip);
        let segs = capture::read_segments(&cap.files()[0]);
        classify_kernel_resets(&segs, &client)
    } else {
        Ok(0)
    };
    let exact = matches!(allowed, Ok(n) if n == rsts);
    if !ok || json["failed"] != 0 || !exact || resets != 0 || log.contains("reset by peer") {
        let files = cap.keep();
        let nonzero: Vec<_> = counters.iter().filter(|(_, v)| **v > 0).collect();
        panic!(
            "load {json}\nkernel peer: TcpOutRsts {rsts} TcpEstabResets {resets}\n\
             RSTs answering a duplicate ACK of a retransmitted FIN: {allowed:?}\n\
             nonzero counters: {nonzero:?}\nnginx log: {log}\ncaptures kept: {files:?}\n\
             resets with the flow's preceding segments:\n{}",
            cap.resets_with_context(12, 5)
        );
    }
    assert_eq!(json["ok"], 20000, "{json}");
    if rsts > 0 {
        eprintln!("{rsts} kernel RSTs, each answering our second ACK of a retransmitted FIN");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Counts the kernel's RSTs (from `kernel`, `ip.port`) that answer our
/// duplicate ACK of its retransmitted FIN: in the same incarnation of the
/// tuple (since its last SYN) the kernel sent the same FIN at least twice,
/// we ACKed it (ack = FIN + 1) at least twice, and the RST carries that
/// sequence number. Any other kernel RST is an error naming it.
fn classify_kernel_resets(segs: &[capture::Seg], kernel: &str) -> Result<u64, String> {
    let mut allowed = 0;
    for (i, r) in segs.iter().enumerate() {
        if r.src != kernel || !r.has('R') {
            continue;
        }
        let ours = &r.dst;
        let flow: Vec<&capture::Seg> = segs[..i]
            .iter()
            .filter(|s| (&s.src == ours && s.dst == kernel) || (s.src == kernel && &s.dst == ours))
            .collect();
        let since_syn = flow
            .iter()
            .rposition(|s| s.has('S') && &s.src == ours)
            .map_or(&flow[..], |k| &flow[k..]);
        let fins: Vec<u32> = since_syn
            .iter()
            .filter(|s| s.src == kernel && s.has('F'))
            .filter_map(|s| s.seq)
            .collect();
        let ok = r.seq.is_some_and(|seq| {
            let fin = seq.wrapping_sub(1);
            let fin_sent = fins.iter().filter(|&&f| f == fin).count();
            let acked = since_syn
                .iter()
                .filter(|s| &s.src == ours && !s.has('R') && s.ack == Some(seq))
                .count();
            fin_sent >= 2 && acked >= 2
        });
        if !ok {
            let context: Vec<&str> = since_syn.iter().map(|s| s.line.as_str()).collect();
            return Err(format!(
                "unexpected kernel RST: {}\nafter:\n{}",
                r.line,
                context.join("\n")
            ));
        }
        allowed += 1;
    }
    Ok(allowed)
}

#[test]
fn kernel_reset_of_a_duplicate_ack_is_told_apart_from_others() {
    // The capture of the starved-shard case (SIGSTOP of `turnstile load`
    // for 600 ms): the kernel's FIN, its retransmission, our two ACKs, its RST.
    let k = "198.19.77.2.8081";
    let lines = [
        "1.0 IP 198.19.77.1.40354 > 198.19.77.2.8081: Flags [S], seq 3201304337, win 65535, length 0",
        "1.1 IP 198.19.77.2.8081 > 198.19.77.1.40354: Flags [S.], seq 2722237822, ack 3201304338, win 65160, length 0",
        "1.2 IP 198.19.77.1.40354 > 198.19.77.2.8081: Flags [F.], seq 3201304408, ack 2722237978, win 512, length 0",
        "1.3 IP 198.19.77.2.8081 > 198.19.77.1.40354: Flags [F.], seq 2722237978, ack 3201304409, win 64, length 0",
        "1.6 IP 198.19.77.2.8081 > 198.19.77.1.40354: Flags [F.], seq 2722237978, ack 3201304409, win 64, length 0",
        "1.9 IP 198.19.77.1.40354 > 198.19.77.2.8081: Flags [.], ack 2722237979, win 512, length 0",
        "1.9 IP 198.19.77.1.40354 > 198.19.77.2.8081: Flags [.], ack 2722237979, win 512, length 0",
        "1.9 IP 198.19.77.2.8081 > 198.19.77.1.40354: Flags [R], seq 2722237979, win 0, length 0",
    ];
    let segs: Vec<_> = lines.iter().filter_map(|l| capture::parse_seg(l)).collect();
    assert_eq!(segs.len(), lines.len());
    assert_eq!(classify_kernel_resets(&segs, k), Ok(1));
    // Without the retransmitted FIN the same RST is not explained.
    let mut one_fin = segs.clone();
    one_fin.remove(4);
    assert!(classify_kernel_resets(&one_fin, k).is_err());
    // A RST to our SYN (a refused reuse) never is.
    let refused = vec![
        segs[0].clone(),
        capture::parse_seg(
            "1.1 IP 198.19.77.2.8081 > 198.19.77.1.40354: Flags [R.], seq 0, ack 3201304338, win 0, length 0",
        )
        .unwrap(),
    ];
    assert!(classify_kernel_resets(&refused, k).is_err());
}

#[test]
fn active_opens_without_reuse_fail_with_no_port() {
    if !need_root() {
        return;
    }
    let _serial = serial();
    let mut topo = two_queues();
    let dir = start_nginx(&mut topo);
    let (ok, json) = run_load(
        &topo,
        &[
            "--connections",
            "3000",
            "--concurrency",
            "32",
            "--local-ports",
            "40000-40999",
            "--msl-ms",
            "30000",
            "--no-reuse",
        ],
    );
    assert!(
        !ok,
        "without reuse 3,000 connections cannot fit 1,000 ports: {json}"
    );
    let no_port = json["failures"]["no_port"].as_u64().unwrap();
    assert!(no_port >= 1000, "{json}");
    assert!(json["ok"].as_u64().unwrap() >= 990, "{json}");
    let err = json["last_error"].as_str().unwrap_or("");
    assert!(err.contains("no free local port"), "a clear error: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_drains_established_connections_then_exits_zero() {
    if !need_root() {
        return;
    }
    let _serial = serial();
    let topo = two_queues();
    let mut child = spawn_serve_owned(&topo, &["--port", "7007", "--app", "echo"]);
    let pid = child.0.id();
    let ip = topo.server.ip;
    let out = client_python(
        &topo,
        &format!(
            r#"
import socket, os, time
s = socket.create_connection(("{ip}", {ECHO_PORT}), timeout=5)
s.sendall(b"before ")
assert s.recv(100) == b"before "
os.kill({pid}, 15)
time.sleep(0.3)
# Draining: the established connection still works...
s.sendall(b"after")
got = s.recv(100)
# ...while a new one is refused.
n = socket.socket(); n.settimeout(2)
try:
    n.connect(("{ip}", {ECHO_PORT})); refused = False
except ConnectionRefusedError:
    refused = True
s.shutdown(socket.SHUT_WR)
rest = s.recv(100)
print(got.decode(), refused, rest == b"")
"#
        ),
    );
    assert_eq!(out.trim(), "after True True");
    let status = wait_exit(&mut child, Duration::from_secs(8))
        .expect("exits once its last connection is gone");
    assert!(status.success(), "{status:?}");
    assert!(!xdp_attached(&topo));
}
