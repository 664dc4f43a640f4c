//! The scenarios, their contenders, and one run of one contender: fresh
//! namespaces, processes started inside them, sampled every second, stopped,
//! reaped and torn down (drop guards, also on error or Ctrl-C).

use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use turnstile::topology::{Host, Topology, TopologyConfig};

use crate::configs::{haproxy_config, nginx_config, turnstile_run_config};
use crate::kernel_client::{ClientClose, ClientReport};
use crate::netns::{NsSample, Sampler};
use crate::procs::{Proc, Usage, tree_usage};
use crate::report::{RunResult, Wire};
use crate::samples::{counter_deltas, from_turnstile_load, per_second, tw_series};
use crate::stats::Spread;

pub const PORT: u16 = 80;
pub const BACKEND_PORT: u16 = 8080;
const FLOOD_PORT: u16 = 9;
pub const SERVER_METRICS: &str = "127.0.0.1:9900";
const CLIENT_METRICS: &str = "127.0.0.1:9901";
/// turnstile's active-open ports in the bench: as many as the kernel's
/// default ephemeral range (32768-60999, 28,232 ports) but outside it, so no
/// port is reserved away from the namespace's kernel.
pub const TURNSTILE_PORTS: &str = "1024-29255";
/// Reuse delay for TIME_WAIT tuples: the same 10 ms as the tuned kernel's
/// net.ipv4.tcp_tw_reuse_delay.
pub const TURNSTILE_REUSE_DELAY_MS: &str = "10";
const BODY: &str = "turnstile\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    WireLimit,
    AcceptChurn,
    ConnectChurn,
    ProxyChurn,
}

impl Scenario {
    pub const ALL: [Scenario; 4] = [
        Scenario::WireLimit,
        Scenario::AcceptChurn,
        Scenario::ConnectChurn,
        Scenario::ProxyChurn,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::WireLimit => "wire-limit",
            Scenario::AcceptChurn => "accept-churn",
            Scenario::ConnectChurn => "connect-churn",
            Scenario::ProxyChurn => "proxy-churn",
        }
    }

    pub fn parse(s: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|x| x.name() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    KernelCloseFirst,
    KernelAfterPeer,
    TurnstileHttp,
    /// `turnstile serve` with no app: every SYN answered with a RST.
    TurnstileRst,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    Kernel(ClientClose),
    TurnstileLoad,
    SynFlood,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proxy {
    Haproxy,
    NginxStream,
    TurnstileRun,
}

#[derive(Clone, Debug)]
pub struct Contender {
    pub name: String,
    /// With a proxy this is the backend, in the client namespace.
    pub server: Server,
    pub proxy: Option<Proxy>,
    pub client: Client,
    pub server_sysctls: Vec<(&'static str, &'static str)>,
    pub client_sysctls: Vec<(&'static str, &'static str)>,
}

impl Contender {
    pub fn needs_turnstile(&self) -> bool {
        matches!(self.server, Server::TurnstileHttp | Server::TurnstileRst)
            || self.client == Client::TurnstileLoad
            || self.proxy == Some(Proxy::TurnstileRun)
    }
}

pub const TW_TUNED: [(&str, &str); 2] = [
    ("net.ipv4.tcp_tw_reuse", "1"),
    ("net.ipv4.tcp_tw_reuse_delay", "10"),
];

pub fn contenders(s: Scenario) -> Vec<Contender> {
    let c = |name: &str, server, client| Contender {
        name: name.to_string(),
        server,
        proxy: None,
        client,
        server_sysctls: Vec::new(),
        client_sysctls: Vec::new(),
    };
    let after = Client::Kernel(ClientClose::AfterServer);
    let first = Client::Kernel(ClientClose::First);
    match s {
        Scenario::WireLimit => vec![c(
            "turnstile (1 queue)",
            Server::TurnstileRst,
            Client::SynFlood,
        )],
        Scenario::AcceptChurn => vec![
            c("kernel -> kernel", Server::KernelCloseFirst, after),
            c("kernel -> turnstile", Server::TurnstileHttp, after),
            c(
                "turnstile -> kernel",
                Server::KernelCloseFirst,
                Client::TurnstileLoad,
            ),
            c(
                "turnstile -> turnstile",
                Server::TurnstileHttp,
                Client::TurnstileLoad,
            ),
        ],
        Scenario::ConnectChurn => {
            let mut reuse = c("kernel tw_reuse=1", Server::KernelAfterPeer, first);
            reuse.client_sysctls = vec![("net.ipv4.tcp_tw_reuse", "1")];
            let mut tuned = c(
                "kernel tw_reuse=1 delay=10ms",
                Server::KernelAfterPeer,
                first,
            );
            tuned.client_sysctls = TW_TUNED.to_vec();
            vec![
                c("kernel defaults", Server::KernelAfterPeer, first),
                reuse,
                tuned,
                c(
                    "turnstile load",
                    Server::KernelAfterPeer,
                    Client::TurnstileLoad,
                ),
            ]
        }
        Scenario::ProxyChurn => [
            ("haproxy", Proxy::Haproxy),
            ("nginx stream", Proxy::NginxStream),
            ("turnstile run", Proxy::TurnstileRun),
        ]
        .into_iter()
        .map(|(name, p)| Contender {
            name: name.to_string(),
            server: Server::KernelAfterPeer,
            proxy: Some(p),
            client: first,
            // Both kernels tuned (docs/BENCHMARKS.md, "Proxy churn"): neither the clients' ports nor
            // a kernel proxy's upstream ports are what is measured.
            server_sysctls: if p == Proxy::TurnstileRun {
                Vec::new()
            } else {
                TW_TUNED.to_vec()
            },
            client_sysctls: TW_TUNED.to_vec(),
        })
        .collect(),
    }
}

/// What every run shares.
pub struct Env {
    pub bench: PathBuf,
    pub turnstile: Option<PathBuf>,
    pub cores: usize,
    pub queues: u32,
    pub concurrency: usize,
    /// turnstile's `--xdp-mode` / `xdp_mode`.
    pub xdp_mode: String,
    pub stop: Arc<AtomicBool>,
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new() -> anyhow::Result<Scratch> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "turnstile-bench-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p)?;
        Ok(Scratch(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Runs one contender once. Errors are recorded in the result, never fatal.
pub fn run_one(
    env: &Env,
    scenario: Scenario,
    c: &Contender,
    round: u32,
    duration: f64,
    tick: &mut dyn FnMut(f64),
) -> RunResult {
    let mut r = RunResult {
        scenario: scenario.name().to_string(),
        contender: c.name.clone(),
        round,
        duration_s: duration,
        started_utc: utc_now(),
        ..Default::default()
    };
    if let Err(e) = execute(env, scenario, c, duration, &mut r, tick) {
        r.error = Some(format!("{e:#}"));
    }
    if env.stop.load(Ordering::Relaxed) {
        r.notes.push("interrupted".into());
    }
    r
}

pub fn sysctls(h: &Host, list: &[(&str, &str)]) -> anyhow::Result<()> {
    for (k, v) in list {
        h.sh_ok(&format!("sysctl -qw {k}={v}"))?;
    }
    Ok(())
}

pub fn turnstile_bin(env: &Env) -> anyhow::Result<&PathBuf> {
    env.turnstile
        .as_ref()
        .context("the turnstile binary was not found (build it with `cargo build --release`)")
}

pub fn bench_cmd(env: &Env, h: &Host, sub: &str) -> Command {
    let mut cmd = h.command(env.bench.to_str().unwrap_or("turnstile-bench"));
    cmd.arg(sub);
    cmd
}

fn start_server(
    env: &Env,
    s: Server,
    h: &Host,
    addr: SocketAddrV4,
    r: &mut RunResult,
) -> anyhow::Result<Proc> {
    let mut p = match s {
        Server::KernelCloseFirst | Server::KernelAfterPeer => {
            let mut cmd = bench_cmd(env, h, "kernel-server");
            cmd.args([
                "--addr",
                &addr.to_string(),
                "--threads",
                &env.cores.to_string(),
            ]);
            cmd.args([
                "--close",
                if s == Server::KernelCloseFirst {
                    "first"
                } else {
                    "after-peer"
                },
            ]);
            Proc::spawn("kernel-server", cmd)?
        }
        Server::TurnstileHttp | Server::TurnstileRst => {
            let mut cmd = h.command(turnstile_bin(env)?.to_str().unwrap_or("turnstile"));
            let queues = if s == Server::TurnstileRst {
                1
            } else {
                env.queues
            };
            cmd.args([
                "serve",
                "--iface",
                &h.dev,
                "--port",
                &addr.port().to_string(),
            ]);
            cmd.args(["--queues", &queues.to_string(), "--metrics", SERVER_METRICS]);
            cmd.args(["--xdp-mode", &env.xdp_mode]);
            if s == Server::TurnstileHttp {
                cmd.args(["--app", "http"]);
            }
            Proc::spawn("turnstile serve", cmd)?
        }
    };
    let line = p.wait_line("listening", Duration::from_secs(20), &env.stop)?;
    if line.contains("zerocopy=") {
        r.listening.push(line);
    }
    Ok(p)
}

/// Waits until `addr` accepts a TCP connection from inside `netns`.
pub fn wait_port(
    netns: &str,
    addr: SocketAddrV4,
    timeout: Duration,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let ns = netns.to_string();
    let deadline = Instant::now() + timeout;
    let ok = std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<bool> {
            turnstile::topology::enter_netns(&ns)?;
            while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                if std::net::TcpStream::connect_timeout(
                    &SocketAddr::V4(addr),
                    Duration::from_millis(200),
                )
                .is_ok()
                {
                    return Ok(true);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(false)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("probe thread panicked"))?
    })?;
    anyhow::ensure!(ok, "{addr} did not accept connections within {timeout:?}");
    Ok(())
}

fn start_proxy(
    env: &Env,
    p: Proxy,
    h: &Host,
    listen: SocketAddrV4,
    backend: SocketAddrV4,
    dir: &std::path::Path,
    r: &mut RunResult,
) -> anyhow::Result<Proc> {
    match p {
        Proxy::Haproxy => {
            let cfg = dir.join("haproxy.cfg");
            std::fs::write(&cfg, haproxy_config(listen, backend, env.cores))?;
            let mut cmd = h.command("haproxy");
            cmd.arg("-db").arg("-f").arg(&cfg);
            let mut proc = Proc::spawn("haproxy", cmd)?;
            if let Err(e) = wait_port(&h.netns, listen, Duration::from_secs(10), &env.stop) {
                proc.terminate(Duration::from_millis(200));
                anyhow::bail!("{e}: {}", proc.stderr_tail());
            }
            Ok(proc)
        }
        Proxy::NginxStream => {
            let module = "/usr/lib/nginx/modules/ngx_stream_module.so";
            anyhow::ensure!(
                std::path::Path::new(module).exists(),
                "nginx has no stream module here: apt-get install libnginx-mod-stream"
            );
            let cfg = dir.join("nginx.conf");
            std::fs::write(&cfg, nginx_config(module, listen, backend, env.cores, dir))?;
            let mut cmd = h.command("nginx");
            cmd.arg("-c")
                .arg(&cfg)
                .arg("-p")
                .arg(dir)
                .arg("-e")
                .arg(dir.join("error.log"));
            let mut proc = Proc::spawn("nginx", cmd)?;
            if let Err(e) = wait_port(&h.netns, listen, Duration::from_secs(10), &env.stop) {
                proc.terminate(Duration::from_millis(200));
                let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                anyhow::bail!("{e}: {} {}", proc.stderr_tail(), log.trim());
            }
            Ok(proc)
        }
        Proxy::TurnstileRun => {
            let cfg = dir.join("turnstile.toml");
            std::fs::write(
                &cfg,
                turnstile_run_config(&h.dev, env.queues, &env.xdp_mode, listen.port(), backend),
            )?;
            let mut cmd = h.command(turnstile_bin(env)?.to_str().unwrap_or("turnstile"));
            cmd.arg("run").arg("--config").arg(&cfg);
            let mut proc = Proc::spawn("turnstile run", cmd)?;
            let line = proc.wait_line("listening", Duration::from_secs(20), &env.stop)?;
            r.listening.push(line);
            Ok(proc)
        }
    }
}

const METRIC_NAMES: [&str; 18] = [
    "turnstile_time_wait",
    "turnstile_connections_accepted_total",
    "turnstile_connections_opened_total",
    "turnstile_rx_packets_total",
    "turnstile_tx_packets_total",
    "turnstile_connect_failures_total{reason=\"no_port\"}",
    "turnstile_time_wait_recycled_total{side=\"active\"}",
    "turnstile_rx_dropped_total{reason=\"ring_full\"}",
    "turnstile_rx_dropped_total{reason=\"no_frame\"}",
    "turnstile_rx_dropped_total{reason=\"tcp\"}",
    "turnstile_tx_dropped_total{reason=\"no_frame\"}",
    "turnstile_retransmits_total",
    "turnstile_handoff_total",
    "turnstile_handoff_dropped_total",
    "turnstile_rst_sent_total",
    "turnstile_time_wait_recycled_total{side=\"passive\"}",
    "turnstile_connect_failures_total{reason=\"timeout\"}",
    "turnstile_time_wait_expired_total",
];

fn execute(
    env: &Env,
    scenario: Scenario,
    c: &Contender,
    duration: f64,
    r: &mut RunResult,
    tick: &mut dyn FnMut(f64),
) -> anyhow::Result<()> {
    if c.needs_turnstile() {
        turnstile_bin(env)?;
    }
    // wire-limit: one queue, so every frame reaches the one shard measured.
    let queues = if scenario == Scenario::WireLimit {
        1
    } else {
        env.queues
    };
    let topo = Topology::new(TopologyConfig { queues }).context("building the namespaces")?;
    let scratch = Scratch::new()?;
    // Declared after `topo`: dropped (killed, reaped) before it is torn down.
    let mut side: Vec<(String, Proc)> = Vec::new();
    sysctls(&topo.server, &c.server_sysctls)?;
    sysctls(&topo.client, &c.client_sysctls)?;
    let (sip, cip) = (topo.server.ip, topo.client.ip);
    let port = if scenario == Scenario::WireLimit {
        FLOOD_PORT
    } else {
        PORT
    };
    let target = SocketAddrV4::new(sip, port);
    match c.proxy {
        None => {
            let p = start_server(env, c.server, &topo.server, target, r)?;
            side.push(("server".into(), p));
        }
        Some(proxy) => {
            let backend = SocketAddrV4::new(cip, BACKEND_PORT);
            let b = start_server(env, c.server, &topo.client, backend, r)?;
            side.push(("backend".into(), b));
            let p = start_proxy(env, proxy, &topo.server, target, backend, &scratch.0, r)?;
            side.push(("proxy".into(), p));
        }
    }
    let server_turnstile = matches!(c.server, Server::TurnstileHttp | Server::TurnstileRst)
        || c.proxy == Some(Proxy::TurnstileRun);
    let metric_names: Vec<String> = METRIC_NAMES.iter().map(|s| s.to_string()).collect();
    let t0 = Instant::now();
    let server_sampler = Sampler::start(
        &topo.server.netns,
        t0,
        server_turnstile.then(|| SERVER_METRICS.parse().expect("valid")),
        metric_names.clone(),
    )?;
    let client_sampler = Sampler::start(
        &topo.client.netns,
        t0,
        (c.client == Client::TurnstileLoad).then(|| CLIENT_METRICS.parse().expect("valid")),
        metric_names,
    )?;
    let before: Vec<Usage> = side.iter().map(|(_, p)| tree_usage(p.pid)).collect();
    let dur = format!("{duration}");
    let mut client = match c.client {
        Client::Kernel(close) => {
            let mut cmd = bench_cmd(env, &topo.client, "kernel-client");
            cmd.args(["--target", &target.to_string(), "--duration", &dur]);
            cmd.args(["--concurrency", &env.concurrency.to_string()]);
            cmd.args([
                "--close",
                if close == ClientClose::First {
                    "first"
                } else {
                    "after-server"
                },
            ]);
            Proc::spawn("kernel-client", cmd)?
        }
        Client::TurnstileLoad => {
            let mut cmd = topo
                .client
                .command(turnstile_bin(env)?.to_str().unwrap_or("turnstile"));
            cmd.args([
                "load",
                "--iface",
                &topo.client.dev,
                "--target",
                &target.to_string(),
                "--xdp-mode",
                &env.xdp_mode,
            ]);
            cmd.args([
                "--connections",
                "1000000000000",
                "--concurrency",
                &env.concurrency.to_string(),
            ]);
            cmd.args([
                "--local-ports",
                TURNSTILE_PORTS,
                "--reuse-delay-ms",
                TURNSTILE_REUSE_DELAY_MS,
            ]);
            cmd.args(["--expect-body", BODY, "--queues", &env.queues.to_string()]);
            cmd.args([
                "--metrics",
                CLIENT_METRICS,
                "--timeout-s",
                &format!("{}", duration.ceil() as u64 + 30),
            ]);
            Proc::spawn("turnstile load", cmd)?
        }
        Client::SynFlood => {
            // The sender on the last core; turnstile's single shard pins itself to core 0.
            let mut cmd = topo.client.command("taskset");
            cmd.args([
                "-c",
                &(env.cores - 1).to_string(),
                env.bench.to_str().unwrap_or(""),
            ]);
            cmd.args([
                "syn-flood",
                "--src",
                &cip.to_string(),
                "--target",
                &target.to_string(),
                "--duration",
                &dur,
            ]);
            let mac = topo
                .server
                .sh_ok(&format!("cat /sys/class/net/{}/address", topo.server.dev))?;
            cmd.args(["--iface", &topo.client.dev, "--dst-mac", mac.trim()]);
            Proc::spawn("syn-flood", cmd)?
        }
    };
    // The load generator without a duration of its own gets SIGINT at the end.
    let end = t0 + Duration::from_secs_f64(duration);
    let mut exit;
    if c.client == Client::TurnstileLoad {
        exit = client.wait_until(end, &env.stop, || tick(t0.elapsed().as_secs_f64()));
        if exit.is_none() {
            client.signal(libc::SIGINT);
            exit = client.wait_until(Instant::now() + Duration::from_secs(5), &env.stop, || {
                tick(t0.elapsed().as_secs_f64())
            });
        }
    } else {
        // Its own duration, a drain of 2 s, and slack for a loaded machine.
        exit = client.wait_until(end + Duration::from_secs(20), &env.stop, || {
            tick(t0.elapsed().as_secs_f64())
        });
    }
    let elapsed = t0.elapsed().as_secs_f64();
    for ((role, p), b) in side.iter().zip(&before) {
        let a = tree_usage(p.pid);
        r.usage.insert(
            role.clone(),
            Usage {
                cpu_s: (a.cpu_s - b.cpu_s).max(0.0),
                peak_rss_kb: a.peak_rss_kb,
            },
        );
    }
    let server_samples = server_sampler.finish();
    let client_samples = client_sampler.finish();
    if env.stop.load(Ordering::Relaxed) {
        anyhow::bail!("interrupted");
    }
    let Some(exit) = exit else {
        client.terminate(Duration::from_millis(500));
        anyhow::bail!(
            "{} had not exited {:.0} s after the start of a {duration} s run: {}",
            client.name,
            elapsed,
            client.stderr_tail()
        );
    };
    r.usage.insert("client".into(), exit.usage);
    let out = client.stdout();
    let json_line = out.lines().rev().find(|l| l.trim_start().starts_with('{'));
    match c.client {
        Client::Kernel(_) => {
            let line = json_line.with_context(|| {
                format!("kernel-client printed no report: {}", client.stderr_tail())
            })?;
            let rep: ClientReport = serde_json::from_str(line).context("kernel-client report")?;
            let secs = duration.floor() as usize;
            r.ok_per_s = rep.ok_per_s.iter().take(secs).map(|&v| v as f64).collect();
            r.rate_source = "kernel client: good connections per 1 s".into();
            r.client = Some(rep);
        }
        Client::TurnstileLoad => {
            let line = json_line.with_context(|| {
                format!(
                    "turnstile load printed no report (exit {:?}): {}",
                    exit.code,
                    client.stderr_tail()
                )
            })?;
            let rep = from_turnstile_load(line)?;
            r.ok_per_s = per_second(
                &client_samples,
                "turnstile_connections_opened_total",
                duration,
            );
            r.rate_source = "turnstile load: connections opened per 1 s (turnstile_connections_opened_total); ok total from its report".into();
            r.client = Some(rep);
        }
        Client::SynFlood => {
            let line = json_line.with_context(|| {
                format!("syn-flood printed no report: {}", client.stderr_tail())
            })?;
            let v: serde_json::Value = serde_json::from_str(line)?;
            let rx = per_second(&server_samples, "turnstile_rx_packets_total", duration);
            let tx = per_second(&server_samples, "turnstile_tx_packets_total", duration);
            let total: Vec<f64> = rx.iter().zip(&tx).map(|(a, b)| a + b).collect();
            // The first second includes the sender's start: leave it out.
            let skip = |v: &[f64]| Spread::of(v.get(1..).filter(|s| !s.is_empty()).unwrap_or(v));
            let lost: Vec<f64> = ["ring_full", "no_frame"]
                .iter()
                .map(|k| {
                    per_second(
                        &server_samples,
                        &format!("turnstile_rx_dropped_total{{reason=\"{k}\"}}"),
                        duration,
                    )
                })
                .fold(vec![0.0; rx.len()], |acc, v| {
                    acc.iter()
                        .zip(v.iter().chain(std::iter::repeat(&0.0)))
                        .map(|(a, b)| a + b)
                        .collect()
                });
            r.wire = Some(Wire {
                sent_pps: v["pps"].as_f64().unwrap_or(0.0),
                dropped_pps: skip(&lost),
                rx_pps: skip(&rx),
                tx_pps: skip(&tx),
                total_pps: skip(&total),
            });
            r.rate_source = "turnstile rx+tx frames per 1 s".into();
        }
    }
    r.tw_server = tw_series(&server_samples);
    r.tw_client = tw_series(&client_samples);
    // Frames through turnstile per connection, where turnstile serves.
    if matches!(c.server, Server::TurnstileHttp) {
        let first = server_samples.first();
        let last = server_samples.last();
        if let (Some(a), Some(b)) = (first, last) {
            let g = |s: &NsSample, n: &str| s.metrics.get(n).copied().unwrap_or(0) as f64;
            let frames = g(b, "turnstile_rx_packets_total") + g(b, "turnstile_tx_packets_total")
                - g(a, "turnstile_rx_packets_total")
                - g(a, "turnstile_tx_packets_total");
            let conns = g(b, "turnstile_connections_accepted_total")
                - g(a, "turnstile_connections_accepted_total");
            if conns > 0.0 {
                r.frames_per_conn = Some(frames / conns);
            }
        }
    }
    r.turnstile_server = counter_deltas(&server_samples);
    r.turnstile_client = counter_deltas(&client_samples);
    r.server_samples = server_samples;
    r.client_samples = client_samples;
    for (_, p) in side.iter_mut().rev() {
        p.terminate(Duration::from_secs(3));
    }
    if let Some(code) = exit.code
        && code != 0
        && !matches!(c.client, Client::TurnstileLoad)
    {
        r.notes.push(format!(
            "{} exited with {code}: {}",
            client.name,
            client.stderr_tail()
        ));
    }
    drop(side);
    drop(topo);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_has_contenders_and_names_parse() {
        for s in Scenario::ALL {
            assert!(!contenders(s).is_empty());
            assert_eq!(Scenario::parse(s.name()), Some(s));
        }
        assert!(
            contenders(Scenario::AcceptChurn)
                .iter()
                .filter(|c| c.needs_turnstile())
                .count()
                == 3
        );
    }
}
