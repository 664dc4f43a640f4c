//! Shared helpers for the integration tests: real kernel peers in network
//! namespaces, turnstile started as its own process, metrics scraped over HTTP.
#![allow(dead_code)]

pub mod capture;
pub mod dnsmasq;
pub mod fleet;
pub mod lab;
pub mod peers;
pub mod router;
pub mod xdp_pass;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

pub use turnstile::topology::{Topology, TopologyConfig};

pub const BIN: &str = env!("CARGO_BIN_EXE_turnstile");

/// Integration tests need root (namespaces, XDP, AF_XDP). As root this
/// returns true. Otherwise a test cannot run, and it must not pass as if it
/// had: under `CI=true` (CI sets it) this panics, so the test fails saying
/// it needs root; elsewhere it returns false after a loud skip line written
/// past the harness's output capture, so the run shows which tests did
/// nothing (they still count as `ok` in libtest's summary, which has no
/// skipped state).
pub fn need_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("an integration test")
        .to_string();
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!(
            "{test} needs root (network namespaces, XDP, AF_XDP) and cannot run as uid {}; \
             under CI=true a test that cannot run fails instead of passing",
            // SAFETY: as above.
            unsafe { libc::geteuid() }
        );
    }
    // `eprintln!` would be captured and thrown away for a passing test; a
    // write to the stderr handle is not.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: needs root (network namespaces, XDP, AF_XDP); nothing was tested \
         (CI=true makes this a failure)"
    );
    false
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
    let never = std::sync::atomic::AtomicBool::new(false);
    turnstile::testkit::Lines::spawn(stdout)
        .wait_line("", limit, &never)
        .ok()
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

/// Scrapes the metrics endpoint inside the server namespace (bounded: a
/// few attempts, each with a 5 s timeout, for a machine under load).
pub fn scrape(topo: &Topology, addr: &str) -> String {
    let addr = addr.parse().expect("metrics address");
    let mut last = None;
    for _ in 0..3 {
        match topo.server.scrape_metrics(addr) {
            Ok(text) => return text,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("scrape metrics at {addr}: {last:?}")
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
