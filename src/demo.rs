//! `turnstile demo`: a self-contained churn run on this machine.
//!
//! Builds two namespaces joined by veth, starts `turnstile serve --app http`
//! in one, drives it from the other with kernel TCP clients for about ten
//! seconds, prints connections/sec and both sides' TIME_WAIT counts, and
//! tears everything down (also on Ctrl-C or a failure).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use turnstile::metrics;
use turnstile::topology::{Host, Topology, TopologyConfig};

const PORT: u16 = 8080;
const METRICS: &str = "127.0.0.1:9900";
const CLIENT_THREADS: usize = 8;
const SECONDS: u64 = 10;
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: demo\r\n\r\n";

pub fn run() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("turnstile demo builds network namespaces and attaches XDP: run it as root");
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, interrupted.clone())?;
    }
    let mut topo =
        Topology::new(TopologyConfig { queues: 2 }).context("building the demo topology")?;
    println!(
        "topology: {} ({}/{}) <-veth-> {} ({}/{}), 2 queues",
        topo.server.netns,
        topo.server.dev,
        topo.server.ip,
        topo.client.netns,
        topo.client.dev,
        topo.client.ip
    );
    let exe = std::env::current_exe().context("locating the turnstile binary")?;
    let mut cmd = topo
        .server
        .command(exe.to_str().context("binary path is not UTF-8")?);
    cmd.args([
        "serve",
        "--iface",
        &topo.server.dev,
        "--port",
        &PORT.to_string(),
        "--app",
        "http",
        "--msl-ms",
        "5000",
        "--metrics",
        METRICS,
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    let mut child = cmd.spawn().context("starting turnstile serve")?;
    let stdout = child.stdout.take().context("serve stdout")?;
    let child = topo.adopt(child);
    let never = AtomicBool::new(false);
    let Ok(line) = turnstile::testkit::Lines::spawn(stdout).wait_line(
        "listening ",
        Duration::from_secs(20),
        &never,
    ) else {
        let _ = child.kill();
        bail!("turnstile serve did not start (see its error above)");
    };
    println!("serve: {}", line.trim());

    let server = SocketAddr::from((topo.server.ip, PORT));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..CLIENT_THREADS {
        let (client, ok, failed, stop) = (
            topo.client.clone(),
            ok.clone(),
            failed.clone(),
            stop.clone(),
        );
        clients.push(std::thread::spawn(move || {
            client_loop(&client, server, &ok, &failed, &stop)
        }));
    }
    println!(
        "driving it with {CLIENT_THREADS} kernel client threads for {SECONDS} s (HTTP/1.1, turnstile closes first, MSL 5 s)"
    );
    println!("  t   conn/s   ok-total   failed   turnstile TIME_WAIT   kernel client TIME_WAIT");
    let start = Instant::now();
    let mut last = 0;
    for t in 1..=SECONDS {
        std::thread::sleep(
            Duration::from_secs(1)
                .saturating_sub(start.elapsed().saturating_sub(Duration::from_secs(t - 1))),
        );
        if interrupted.load(Ordering::Relaxed) {
            break;
        }
        let now = ok.load(Ordering::Relaxed);
        let ours = scrape_time_wait(&topo.server)
            .map(|v| v.to_string())
            .unwrap_or_else(|e| format!("? ({e})"));
        let kernel = kernel_time_wait(&topo.client);
        println!(
            "{t:3} {:8} {now:10} {:8} {ours:>21} {kernel:>25}",
            now - last,
            failed.load(Ordering::Relaxed)
        );
        last = now;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let secs = start.elapsed().as_secs_f64();
    let total = ok.load(Ordering::Relaxed);
    println!(
        "done: {total} connections in {secs:.1} s = {:.0} connections/s, {} failed; every response checked",
        total as f64 / secs,
        failed.load(Ordering::Relaxed)
    );
    println!("tearing down (namespaces, veth, XDP program)");
    drop(topo);
    Ok(())
}

fn client_loop(
    host: &Host,
    server: SocketAddr,
    ok: &AtomicU64,
    failed: &AtomicU64,
    stop: &AtomicBool,
) {
    if host.enter().is_err() {
        failed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        let good = (|| -> std::io::Result<bool> {
            let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(REQUEST)?;
            let mut n = 0;
            loop {
                let r = s.read(&mut buf[n..])?;
                if r == 0 {
                    break;
                }
                n += r;
                if n == buf.len() {
                    return Ok(false);
                }
            }
            Ok(&buf[..n] == turnstile::app::http::RESPONSE)
        })();
        match good {
            Ok(true) => ok.fetch_add(1, Ordering::Relaxed),
            _ => failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

fn scrape_time_wait(server: &Host) -> anyhow::Result<u64> {
    let out = server.scrape_metrics(METRICS.parse()?)?;
    metrics::sample(&out, "turnstile_time_wait").context("no turnstile_time_wait")
}

fn kernel_time_wait(client: &Host) -> String {
    client
        .sh_ok("ss -Htan state time-wait | wc -l")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}
