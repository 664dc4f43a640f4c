//! The `bulk` scenario: bytes and short connections through a proxy at equal
//! cores, the proxies alternated in one run (A B A B).
//!
//! One world per contender and round: a fresh namespace pair with
//! `env.queues` queues per veth end; in the client namespace the backends
//! (`iperf3 -s`, `redis-server`, the bench's own HTTP server closing first)
//! and the clients; in the server namespace the proxy, either HAProxy 2.6
//! (`nbthread` = queues, not pinned) or `turnstile run` (`queues` = queues,
//! shard i pinned to core i). The workloads, in this order:
//!
//! - `iperf3 1 stream`, `iperf3 reverse` (`-R`: the backend sends),
//!   `iperf3 8 streams` (`-P 8`): Mbit/s the receiver counted
//!   (`end.sum_received`).
//! - `redis-benchmark -k 0` (a new connection per request, GET, `-c`
//!   concurrency) and `ab` (HTTP/1.0, a connection per request, `-c`
//!   concurrency, time-limited): requests per second.
//!
//! Beside each figure: CPU seconds of the proxy's process, how busy the
//! whole machine was (all cores, from /proc/stat) and, for turnstile, its
//! handoff and retransmission counters, so a figure says where the time went.
//! `BULK_ONLY=haproxy|turnstile` runs one contender (for profiling).

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use turnstile::topology::{Host, Topology, TopologyConfig};

use crate::configs::{haproxy_proxies, turnstile_run_listeners};
use crate::procs::{Proc, tree_usage};
use crate::scenarios::{Env, Scratch, TW_TUNED, bench_cmd, sysctls, turnstile_bin, wait_port};

/// Proxy ports (outside turnstile's upstream range) and backend ports.
const IPERF_LISTEN: u16 = 30201;
const REDIS_LISTEN: u16 = 30379;
const HTTP_LISTEN: u16 = 80;
const IPERF_BACKEND: u16 = 5201;
const REDIS_BACKEND: u16 = 6379;
const HTTP_BACKEND: u16 = 8080;
const METRICS: &str = "127.0.0.1:9900";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Workload {
    Stream1,
    Reverse,
    Streams8,
    RedisK0,
    Ab,
}

impl Workload {
    pub const ALL: [Workload; 5] = [
        Workload::Stream1,
        Workload::Reverse,
        Workload::Streams8,
        Workload::RedisK0,
        Workload::Ab,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Stream1 => "iperf3 1 stream",
            Workload::Reverse => "iperf3 reverse (-R)",
            Workload::Streams8 => "iperf3 8 streams (-P 8)",
            Workload::RedisK0 => "redis-benchmark -k 0 (GET)",
            Workload::Ab => "ab (HTTP/1.0, no keep-alive)",
        }
    }

    pub fn unit(self) -> &'static str {
        if self.is_iperf() { "Mbit/s" } else { "req/s" }
    }

    fn is_iperf(self) -> bool {
        matches!(
            self,
            Workload::Stream1 | Workload::Reverse | Workload::Streams8
        )
    }
}

/// Which workloads a scenario name selects: `bulk` (all), `bulk-iperf`,
/// `bulk-short`.
pub fn parse(name: &str) -> Option<Vec<Workload>> {
    match name {
        "bulk" => Some(Workload::ALL.to_vec()),
        "bulk-iperf" => Some(Workload::ALL[..3].to_vec()),
        "bulk-short" => Some(Workload::ALL[3..].to_vec()),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BulkProxy {
    Haproxy,
    TurnstileRun,
}

impl BulkProxy {
    pub fn name(self) -> &'static str {
        match self {
            BulkProxy::Haproxy => "haproxy",
            BulkProxy::TurnstileRun => "turnstile run",
        }
    }
}

/// One workload through one proxy once.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Measurement {
    pub workload: String,
    pub contender: String,
    pub round: u32,
    /// Mbit/s (iperf3) or requests/s.
    pub value: Option<f64>,
    pub wall_s: f64,
    /// CPU seconds of the proxy's processes during the workload.
    pub proxy_cpu_s: f64,
    /// Busy cores on average over the workload, whole machine (/proc/stat).
    pub machine_busy_cores: f64,
    /// Of which in softirq.
    pub machine_softirq_cores: f64,
    /// Failed requests (short clients) or retransmits counted by iperf3.
    pub client_errors: u64,
    /// turnstile counters over the workload.
    pub handoff: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub retransmits: u64,
    pub error: Option<String>,
}

/// (busy, softirq) jiffies of all cores from /proc/stat's `cpu` line.
pub fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7)?;
    Some((busy, *v.get(6)?))
}

fn machine_jiffies() -> (u64, u64) {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| parse_proc_stat(&t))
        .unwrap_or((0, 0))
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Mbit/s the receiver counted, and the sender's retransmits, from
/// `iperf3 -J`.
pub fn parse_iperf3(json: &str) -> anyhow::Result<(f64, u64)> {
    let v: serde_json::Value = serde_json::from_str(json).context("iperf3 -J output")?;
    if let Some(e) = v["error"].as_str() {
        anyhow::bail!("iperf3: {e}");
    }
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no end.sum_received.bits_per_second in iperf3 output")?;
    let retrans = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    Ok((bps / 1e6, retrans))
}

/// Requests/s of the GET test from `redis-benchmark --csv`.
pub fn parse_redis_csv(out: &str) -> anyhow::Result<f64> {
    out.lines()
        .find_map(|l| {
            let mut f = l.split(',').map(|x| x.trim().trim_matches('"'));
            (f.next()? == "GET").then(|| f.next()?.parse::<f64>().ok())?
        })
        .with_context(|| format!("no GET line in redis-benchmark output: {out:?}"))
}

/// (requests/s, failed requests) from ab's report.
pub fn parse_ab(out: &str) -> anyhow::Result<(f64, u64)> {
    let field = |key: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_string)
    };
    let rps = field("Requests per second:")
        .and_then(|x| x.parse().ok())
        .with_context(|| format!("no 'Requests per second' in ab output: {out:?}"))?;
    let failed = field("Failed requests:")
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    Ok((rps, failed))
}

/// The tools the scenario runs; a missing one is named with its package.
pub fn check_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = [
        ("iperf3", "iperf3"),
        ("redis-server", "redis-server"),
        ("redis-benchmark", "redis-tools"),
        ("ab", "apache2-utils"),
        ("haproxy", "haproxy"),
    ]
    .iter()
    .filter(|(bin, _)| {
        !std::process::Command::new("sh")
            .args(["-c", &format!("command -v {bin} >/dev/null")])
            .status()
            .is_ok_and(|s| s.success())
    })
    .map(|(_, pkg)| *pkg)
    .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "the bulk scenario needs: apt-get install {}",
        missing.join(" ")
    );
    Ok(())
}

/// The contenders in run order, alternated per round (A B, then B A would
/// favour neither; the bench's other scenarios use A B A B, and so does this).
pub fn contenders() -> Vec<BulkProxy> {
    let all = [BulkProxy::Haproxy, BulkProxy::TurnstileRun];
    match std::env::var("BULK_ONLY").as_deref() {
        Ok("haproxy") => vec![BulkProxy::Haproxy],
        Ok("turnstile") => vec![BulkProxy::TurnstileRun],
        _ => all.to_vec(),
    }
}

/// Every workload of `workloads` through `proxy` in one fresh world.
pub fn run_world(
    env: &Env,
    proxy: BulkProxy,
    round: u32,
    workloads: &[Workload],
    duration: f64,
    log: &mut dyn FnMut(&Measurement),
) -> Vec<Measurement> {
    match world(env, proxy, round, workloads, duration, log) {
        Ok(v) => v,
        Err(e) => vec![Measurement {
            workload: "setup".into(),
            contender: proxy.name().into(),
            round,
            error: Some(format!("{e:#}")),
            ..Default::default()
        }],
    }
}

fn world(
    env: &Env,
    proxy: BulkProxy,
    round: u32,
    workloads: &[Workload],
    duration: f64,
    log: &mut dyn FnMut(&Measurement),
) -> anyhow::Result<Vec<Measurement>> {
    let topo =
        Topology::new(TopologyConfig { queues: env.queues }).context("building the namespaces")?;
    let scratch = Scratch::new()?;
    // After `topo`: dropped (killed, reaped) before it is torn down.
    let mut procs: Vec<Proc> = Vec::new();
    let (sip, cip) = (topo.server.ip, topo.client.ip);
    // Short connections from the client side: as in proxy-churn, neither the
    // clients' ports nor a kernel proxy's upstream ports are what is measured.
    sysctls(&topo.client, &TW_TUNED)?;
    topo.client
        .sh_ok("sysctl -qw net.ipv4.ip_local_port_range='1024 60999'")?;
    if proxy == BulkProxy::Haproxy {
        sysctls(&topo.server, &TW_TUNED)?;
    }
    let c = &topo.client;
    let mut iperf = c.command("iperf3");
    iperf.args([
        "-s",
        "-B",
        &cip.to_string(),
        "-p",
        &IPERF_BACKEND.to_string(),
    ]);
    procs.push(Proc::spawn("iperf3 -s", iperf)?);
    let mut redis = c.command("redis-server");
    redis.args([
        "--bind",
        &cip.to_string(),
        "--port",
        &REDIS_BACKEND.to_string(),
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        "--daemonize",
        "no",
        "--dir",
    ]);
    redis.arg(&scratch.0);
    procs.push(Proc::spawn("redis-server", redis)?);
    let mut http = bench_cmd(env, c, "kernel-server");
    let http_backend = SocketAddrV4::new(cip, HTTP_BACKEND);
    http.args([
        "--addr",
        &http_backend.to_string(),
        "--threads",
        &env.cores.to_string(),
        "--close",
        "first",
    ]);
    let mut p = Proc::spawn("kernel-server", http)?;
    p.wait_line("listening", Duration::from_secs(10), &env.stop)?;
    procs.push(p);
    let iperf_backend = SocketAddrV4::new(cip, IPERF_BACKEND);
    let redis_backend = SocketAddrV4::new(cip, REDIS_BACKEND);
    for b in [iperf_backend, redis_backend] {
        wait_port(&c.netns, b, Duration::from_secs(10), &env.stop)?;
    }
    let listens = [
        (SocketAddrV4::new(sip, IPERF_LISTEN), iperf_backend),
        (SocketAddrV4::new(sip, REDIS_LISTEN), redis_backend),
        (SocketAddrV4::new(sip, HTTP_LISTEN), http_backend),
    ];
    let s = &topo.server;
    let proxy_proc = match proxy {
        BulkProxy::Haproxy => {
            let cfg = scratch.0.join("haproxy.cfg");
            std::fs::write(&cfg, haproxy_proxies(&listens, env.queues as usize, 60))?;
            let mut cmd = s.command("haproxy");
            cmd.arg("-db").arg("-f").arg(&cfg);
            Proc::spawn("haproxy", cmd)?
        }
        BulkProxy::TurnstileRun => {
            let cfg = scratch.0.join("turnstile.toml");
            let l: Vec<(u16, SocketAddrV4)> = listens.iter().map(|(l, b)| (l.port(), *b)).collect();
            std::fs::write(
                &cfg,
                turnstile_run_listeners(&s.dev, env.queues, &env.xdp_mode, METRICS, &l),
            )?;
            let mut cmd = s.command(turnstile_bin(env)?.to_str().unwrap_or("turnstile"));
            cmd.arg("run").arg("--config").arg(&cfg);
            let mut p = Proc::spawn("turnstile run", cmd)?;
            p.wait_line("listening", Duration::from_secs(20), &env.stop)?;
            p
        }
    };
    let pid = proxy_proc.pid;
    procs.push(proxy_proc);
    // From the client side: the server namespace's own kernel would answer
    // a local connect itself, never through the veth turnstile listens on.
    for (l, _) in &listens {
        wait_port(&c.netns, *l, Duration::from_secs(10), &env.stop)?;
    }
    let mut out = Vec::new();
    for &w in workloads {
        if env.stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let m = measure(env, &topo, proxy, pid, round, w, duration, &listens);
        log(&m);
        out.push(m);
    }
    for p in procs.iter_mut().rev() {
        p.terminate(Duration::from_secs(3));
    }
    drop(procs);
    drop(topo);
    Ok(out)
}

fn turnstile_counters(s: &Host) -> [u64; 4] {
    let text = s
        .scrape_metrics(METRICS.parse().expect("valid"))
        .unwrap_or_default();
    [
        "turnstile_handoff_total",
        "turnstile_rx_packets_total",
        "turnstile_tx_packets_total",
        "turnstile_retransmits_total",
    ]
    .map(|n| turnstile::metrics::sample(&text, n).unwrap_or(0))
}

#[allow(clippy::too_many_arguments)]
fn measure(
    env: &Env,
    topo: &Topology,
    proxy: BulkProxy,
    pid: i32,
    round: u32,
    w: Workload,
    duration: f64,
    listens: &[(SocketAddrV4, SocketAddrV4); 3],
) -> Measurement {
    let mut m = Measurement {
        workload: w.name().into(),
        contender: proxy.name().into(),
        round,
        ..Default::default()
    };
    let ours = proxy == BulkProxy::TurnstileRun;
    let c0 = if ours {
        turnstile_counters(&topo.server)
    } else {
        [0; 4]
    };
    let u0 = tree_usage(pid);
    let j0 = machine_jiffies();
    let t0 = Instant::now();
    let r = client(env, &topo.client, w, duration, listens);
    m.wall_s = t0.elapsed().as_secs_f64();
    let j1 = machine_jiffies();
    m.proxy_cpu_s = (tree_usage(pid).cpu_s - u0.cpu_s).max(0.0);
    let per = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / clk_tck() / m.wall_s.max(1e-3);
    m.machine_busy_cores = per(j0.0, j1.0);
    m.machine_softirq_cores = per(j0.1, j1.1);
    if ours {
        let c1 = turnstile_counters(&topo.server);
        [m.handoff, m.rx_packets, m.tx_packets, m.retransmits] =
            [0, 1, 2, 3].map(|i| c1[i].saturating_sub(c0[i]));
    }
    match r {
        Ok((v, errors)) => {
            m.value = Some(v);
            m.client_errors = errors;
        }
        Err(e) => m.error = Some(format!("{e:#}")),
    }
    m
}

/// Runs one client to completion: (figure, errors).
fn client(
    env: &Env,
    c: &Host,
    w: Workload,
    duration: f64,
    listens: &[(SocketAddrV4, SocketAddrV4); 3],
) -> anyhow::Result<(f64, u64)> {
    let secs = format!("{}", duration.ceil().max(1.0) as u64);
    let conc = env.concurrency.to_string();
    let (iperf, redis, http) = (listens[0].0, listens[1].0, listens[2].0);
    let mut cmd;
    match w {
        Workload::Stream1 | Workload::Reverse | Workload::Streams8 => {
            cmd = c.command("iperf3");
            cmd.args([
                "-c",
                &iperf.ip().to_string(),
                "-p",
                &iperf.port().to_string(),
            ]);
            cmd.args(["-t", &secs, "-J"]);
            match w {
                Workload::Reverse => {
                    cmd.arg("-R");
                }
                Workload::Streams8 => {
                    cmd.args(["-P", "8"]);
                }
                _ => {}
            }
        }
        Workload::RedisK0 => {
            // About `duration` seconds at ~10-20k connections/s.
            let n = (duration * 12_000.0).max(1000.0) as u64;
            cmd = c.command("redis-benchmark");
            cmd.args([
                "-h",
                &redis.ip().to_string(),
                "-p",
                &redis.port().to_string(),
            ]);
            cmd.args(["-k", "0", "-c", &conc, "-n", &n.to_string(), "-t", "get"]);
            cmd.arg("--csv");
        }
        Workload::Ab => {
            cmd = c.command("ab");
            cmd.args(["-q", "-r", "-c", &conc, "-t", &secs, "-n", "100000000"]);
            cmd.arg(format!("http://{http}/"));
        }
    }
    let mut p = Proc::spawn(w.name(), cmd)?;
    let limit = Instant::now() + Duration::from_secs_f64(duration * 4.0 + 30.0);
    let exit = p.wait_until(limit, &env.stop, || {});
    let Some(exit) = exit else {
        p.terminate(Duration::from_secs(1));
        anyhow::bail!("{} did not finish: {}", w.name(), p.stderr_tail());
    };
    let out = p.stdout();
    // iperf3 -J reports its errors in the JSON, with a non-zero exit.
    if exit.code != Some(0) && !w.is_iperf() {
        anyhow::bail!(
            "{} exited {:?}: {} {}",
            w.name(),
            exit.code,
            p.stderr_tail(),
            out.chars()
                .rev()
                .take(300)
                .collect::<String>()
                .chars()
                .rev()
                .collect::<String>()
        );
    }
    match w {
        Workload::Stream1 | Workload::Reverse | Workload::Streams8 => parse_iperf3(&out),
        Workload::RedisK0 => parse_redis_csv(&out).map(|v| (v, 0)),
        Workload::Ab => parse_ab(&out),
    }
}

/// The table: per workload, each contender's median over rounds and each
/// round's value, and turnstile / HAProxy (ratio of medians, and the range of
/// the per-round ratios).
pub fn markdown(ms: &[Measurement], workloads: &[Workload]) -> String {
    let mut s = String::from(
        "| workload | contender | median | rounds | ratio to haproxy (of medians; per round) | proxy CPU s | machine busy cores (softirq) | handoffs / rx frames |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for w in workloads {
        let of = |c: BulkProxy| -> Vec<&Measurement> {
            ms.iter()
                .filter(|m| m.workload == w.name() && m.contender == c.name())
                .collect()
        };
        let med = |v: &[&Measurement]| {
            let x: Vec<f64> = v.iter().filter_map(|m| m.value).collect();
            crate::stats::Spread::of(&x).map(|s| s.median)
        };
        let h = of(BulkProxy::Haproxy);
        let hm = med(&h);
        for c in [BulkProxy::Haproxy, BulkProxy::TurnstileRun] {
            let v = of(c);
            if v.is_empty() {
                continue;
            }
            let rounds: Vec<String> = v
                .iter()
                .map(|m| match (&m.value, &m.error) {
                    (Some(x), _) => format!("{x:.0}"),
                    (None, Some(e)) => format!("error: {}", e.chars().take(80).collect::<String>()),
                    _ => "-".into(),
                })
                .collect();
            let cm = med(&v);
            let ratio = if c == BulkProxy::Haproxy {
                String::new()
            } else {
                let per: Vec<String> = v
                    .iter()
                    .filter_map(|m| {
                        let hv = h.iter().find(|x| x.round == m.round)?.value?;
                        Some(format!("{:.2}", m.value? / hv))
                    })
                    .collect();
                match (cm, hm) {
                    (Some(a), Some(b)) if b > 0.0 => {
                        format!("**{:.2}x** ({})", a / b, per.join(", "))
                    }
                    _ => "-".into(),
                }
            };
            let avg =
                |f: fn(&Measurement) -> f64| v.iter().map(|m| f(m)).sum::<f64>() / v.len() as f64;
            let frames: u64 = v.iter().map(|m| m.rx_packets).sum();
            let handoff: u64 = v.iter().map(|m| m.handoff).sum();
            s.push_str(&format!(
                "| {} | {} | {} {} | {} | {} | {:.1} | {:.2} ({:.2}) | {} |\n",
                w.name(),
                c.name(),
                cm.map_or("-".into(), |x| format!("{x:.0}")),
                w.unit(),
                rounds.join(", "),
                ratio,
                avg(|m| m.proxy_cpu_s),
                avg(|m| m.machine_busy_cores),
                avg(|m| m.machine_softirq_cores),
                if c == BulkProxy::TurnstileRun && frames > 0 {
                    format!("{:.0}%", 100.0 * handoff as f64 / frames as f64)
                } else {
                    String::new()
                },
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::TURNSTILE_PORTS;

    #[test]
    fn iperf3_json_is_read() {
        let j = r#"{"start":{},"end":{"sum_sent":{"bits_per_second":2.5e9,"retransmits":7},"sum_received":{"bits_per_second":2.4e9}}}"#;
        assert_eq!(parse_iperf3(j).unwrap(), (2400.0, 7));
        let e = r#"{"start":{},"end":{},"error":"unable to connect to server"}"#;
        assert!(
            parse_iperf3(e)
                .unwrap_err()
                .to_string()
                .contains("unable to connect")
        );
        assert!(parse_iperf3("not json").is_err());
    }

    #[test]
    fn redis_csv_is_read() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\"\n\"GET\",\"12345.68\",\"2.1\"\n";
        assert_eq!(parse_redis_csv(out).unwrap(), 12345.68);
        assert!(parse_redis_csv("\"SET\",\"1\"\n").is_err());
    }

    #[test]
    fn ab_report_is_read() {
        let out = "Complete requests:      1000\nFailed requests:        3\n   (Connect: 0, Receive: 0, Length: 3, Exceptions: 0)\nRequests per second:    8123.45 [#/sec] (mean)\n";
        assert_eq!(parse_ab(out).unwrap(), (8123.45, 3));
        assert!(parse_ab("apr_socket_connect(): Connection refused").is_err());
    }

    #[test]
    fn proc_stat_busy_and_softirq() {
        let t = "cpu  100 5 50 1000 7 3 20 1 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(parse_proc_stat(t), Some((100 + 5 + 50 + 3 + 20 + 1, 20)));
        assert_eq!(parse_proc_stat("intr 1"), None);
    }

    #[test]
    fn names_select_workloads_and_configs_parse() {
        assert_eq!(parse("bulk").unwrap().len(), 5);
        assert_eq!(parse("bulk-iperf").unwrap()[2], Workload::Streams8);
        assert_eq!(
            parse("bulk-short").unwrap(),
            vec![Workload::RedisK0, Workload::Ab]
        );
        assert!(parse("bulky").is_none());
        let l: SocketAddrV4 = "198.18.7.1:30201".parse().unwrap();
        let b: SocketAddrV4 = "198.18.7.2:5201".parse().unwrap();
        let h = haproxy_proxies(&[(l, b), (l, b)], 2, 60);
        assert!(
            h.contains("nbthread 2")
                && h.contains("frontend f1")
                && h.contains("server s1 198.18.7.2:5201")
        );
        let t = turnstile_run_listeners("eth9", 2, "generic", METRICS, &[(30201, b), (80, b)]);
        let v: toml::Value = toml::from_str(&t).unwrap();
        assert_eq!(v["queues"].as_integer(), Some(2));
        assert_eq!(v["listener"][1]["port"].as_integer(), Some(80));
        assert_eq!(v["upstream"]["ports"].as_str(), Some(TURNSTILE_PORTS));
        let p = TURNSTILE_PORTS
            .split('-')
            .map(|x| x.parse::<u16>().unwrap())
            .collect::<Vec<_>>();
        assert!(
            [IPERF_LISTEN, REDIS_LISTEN, HTTP_LISTEN]
                .iter()
                .all(|x| *x < p[0] || *x > p[1]),
            "listener ports lie outside the upstream range"
        );
    }

    #[test]
    fn table_has_ratios() {
        let m = |c: BulkProxy, r, v| Measurement {
            workload: Workload::Stream1.name().into(),
            contender: c.name().into(),
            round: r,
            value: Some(v),
            ..Default::default()
        };
        let ms = vec![
            m(BulkProxy::Haproxy, 1, 1000.0),
            m(BulkProxy::TurnstileRun, 1, 500.0),
            m(BulkProxy::Haproxy, 2, 2000.0),
            m(BulkProxy::TurnstileRun, 2, 2000.0),
        ];
        let t = markdown(&ms, &[Workload::Stream1]);
        assert!(t.contains("**0.83x** (0.50, 1.00)"), "{t}");
    }
}
