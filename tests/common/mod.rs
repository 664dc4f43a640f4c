//! Shared helpers for the integration tests: real kernel peers in network
//! namespaces, turnstile started as its own process, metrics scraped over HTTP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use turnstile::topology::{Topology, TopologyConfig};

pub const BIN: &str = env!("CARGO_BIN_EXE_turnstile");

/// Integration tests need root (namespaces, XDP, AF_XDP). CI runs as root;
/// elsewhere they say why they did nothing.
pub fn need_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: integration tests need root");
    }
    root
}

/// Starts `turnstile serve` in the server namespace and waits (bounded) for
/// its `listening` line. Returns the line and the pid.
pub fn start_serve(topo: &mut Topology, args: &[&str]) -> (String, u32) {
    let mut cmd = topo.server.command(BIN);
    cmd.arg("serve")
        .args(["--iface", &topo.server.dev])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn turnstile");
    let pid = child.id();
    let line = wait_listening(&mut child);
    topo.adopt(child);
    (line, pid)
}

/// The first line `stdout` prints, within `limit`; the rest is drained in the
/// background so the child never blocks on a full pipe.
pub fn first_line(stdout: std::process::ChildStdout, limit: Duration) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        let mut sink = String::new();
        while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    rx.recv_timeout(limit).ok()
}

fn wait_listening(child: &mut Child) -> String {
    let stdout = child.stdout.take().expect("piped stdout");
    match first_line(stdout, Duration::from_secs(20)) {
        Some(line) if line.starts_with("listening ") => line.trim().to_string(),
        other => {
            let _ = child.kill();
            let _ = child.wait();
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
            }
            panic!("turnstile did not print its listening line: {other:?}; stderr: {stderr}");
        }
    }
}

/// Scrapes the metrics endpoint inside the server namespace.
pub fn scrape(topo: &Topology, addr: &str) -> String {
    topo.server
        .sh_ok(&format!("curl -s --max-time 5 http://{addr}/metrics"))
        .expect("scrape metrics")
}

pub fn metric(text: &str, name: &str) -> u64 {
    turnstile::metrics::sample(text, name)
        .unwrap_or_else(|| panic!("metric {name} missing in:\n{text}"))
}

/// Sum of every sample of `name` whatever its labels.
pub fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

/// Runs a Python program in the client namespace; returns stdout, panics
/// with stderr when it fails.
pub fn client_python(topo: &Topology, program: &str) -> String {
    let out = topo
        .client
        .command("python3")
        .args(["-c", program])
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "client python failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `check` until it holds or `limit` passes.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

/// Whether any XDP program is attached to the server's interface.
pub fn xdp_attached(topo: &Topology) -> bool {
    let out = topo
        .server
        .sh_ok(&format!("ip -d link show dev {}", topo.server.dev))
        .unwrap_or_default();
    out.contains("prog/xdp") || out.contains(" xdp") || out.contains("xdpgeneric")
}

/// Kills the child on drop (a test that panics leaves nothing running).
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Serialises the heavy tests of one test binary: on two shared cores,
/// running them side by side measures the machine, not the stack.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts `turnstile serve` like [`start_serve`] but hands the process to
/// the caller (to signal it and watch it exit); killed on drop.
pub fn spawn_serve_owned(topo: &Topology, args: &[&str]) -> ChildGuard {
    let mut cmd = topo.server.command(BIN);
    cmd.arg("serve")
        .args(["--iface", &topo.server.dev])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn turnstile");
    wait_listening(&mut child);
    ChildGuard(child)
}

/// Waits (bounded) for the child to exit.
pub fn wait_exit(child: &mut ChildGuard, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(status)) = child.0.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}
