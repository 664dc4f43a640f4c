//! Memory held by idle connections: buffers come from the shard's chunk pool
//! only while there are bytes to hold, so a connection that holds no data
//! costs its control block alone (it used to cost a 128 KiB buffer pair).

mod common;

use common::*;
use std::process::Stdio;
use std::time::Duration;

/// Resident set of process `pid`, bytes (from /proc, as the kernel counts it).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

const IDLE: usize = 8000;

#[test]
fn eight_thousand_idle_echo_connections_add_about_2_kb_each() {
    if !need_root() {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new(TopologyConfig::default()).expect("topology");
    let (_, pid) = start_serve(&mut topo, &["--port", "7000", "--app", "echo"]);
    let ip = topo.server.ip;
    // Each connection echoes one byte first (so it did hold data once, and
    // gave the chunks back), then stays open and idle.
    let program = format!(
        r#"
import socket, sys
socks = []
for i in range({IDLE}):
    s = socket.create_connection(("{ip}", 7000), timeout=10)
    s.sendall(b"x")
    socks.append(s)
for s in socks:
    assert s.recv(1) == b"x"
print("ready", len(socks), flush=True)
sys.stdin.read()
"#
    );
    let before = rss_bytes(pid);
    let mut child = topo
        .client
        .command("python3")
        .args(["-c", &program])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 client");
    let stdout = child.stdout.take().expect("piped stdout");
    let _guard = ChildGuard(child);
    let line = first_line(stdout, Duration::from_secs(120)).unwrap_or_default();
    assert_eq!(
        line.trim(),
        format!("ready {IDLE}"),
        "client did not hold its connections"
    );
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_bytes(pid);
    let added = after.saturating_sub(before);
    eprintln!(
        "serve --app echo: RSS {} kB -> {} kB with {IDLE} idle connections: {} bytes each",
        before / 1024,
        after / 1024,
        added / IDLE as u64
    );
    // Issue #12 asks for at most 16 MB (2 kB each); measured 16.7 MB (2,140
    // bytes each) on the memory branch and 20.0 MB (2,620 bytes each) on the
    // merged main (2026-12-02; the extra ~0.5 kB per connection is not yet
    // explained), so this guards the regression (a buffer pair per
    // connection was 1,034 MB) at 24 MB rather than claiming the target.
    assert!(
        added <= 24 << 20,
        "{IDLE} idle connections added {} kB of RSS (bound 24 MB)",
        added / 1024
    );
}
