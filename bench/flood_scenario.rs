//! The `syn-flood` scenario (issue #10): how legitimate clients fare while a
//! SYN flood of rising rate hits the port they connect to, the kernel's own
//! stack (SYN cookies on) against `turnstile serve --app http`. Run only when
//! named: `syn-flood` (the rates of `flood_report::RATES`) or `syn-flood=0,50k,full`;
//! `syn-flood-spoofed[=...]` floods from an address nobody holds.
//!
//! One fresh world per round, rate and contender (contenders alternated),
//! built as tests/synflood.rs builds its one point: a one-queue veth (where
//! turnstile's `--xdp-mode auto` attaches in generic mode; deploy/README.md
//! says why), the server alone in its namespace (turnstile: one shard, which
//! pins itself to core 0; the kernel: `kernel-server`, one thread, so one
//! core's worth of accepting either way); in the other namespace the flooder
//! (`turnstile-bench syn-flood`: bare SYNs from the client's own address,
//! every source port in turn, pinned to the last core; `--pps` or, at full
//! rate, as fast as the interface takes frames) and, once the flood has run
//! LEAD_S, the legitimate clients (`kernel-client`: 4 connections in flight,
//! each connect, GET, check the response byte for byte, close) for the run's
//! duration. The flood outlasts their drain, so every attempt sees it.
//!
//! The source, as in the test: the clients' own address, so the client
//! namespace's kernel answers every SYN-ACK of the flood with a RST, and the
//! kernel server's SYN queue empties as fast as it fills (no cookie needed).
//! `-spoofed`: an unheld address of the /24 (SPOOFED_HOST), which the
//! server's kernel resolves in vain; its half-open connections wait out
//! their SYN-ACK retransmissions, the queue overflows and cookies take over,
//! as in a flood from forged sources.
//!
//! Four in flight, not the bench's `--concurrency`: the legitimate load is
//! meant to be light beside the flood, so what it measures is the flood's
//! cost to a client, not the server's throughput. A SYN of theirs lost costs
//! a 1 s retransmission, which is what p99 shows.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use turnstile::topology::{Topology, TopologyConfig};

use crate::flood_report::{Plan, Point, Rate, Side, markdown, ms, write_plot};
use crate::procs::Proc;
use crate::scenarios::{
    Env, PORT, SERVER_METRICS, Scratch, bench_cmd, sysctls, turnstile_bin, wait_port,
};

const LEGIT_CONCURRENCY: usize = 4;
/// Seconds of flood before the clients start (the flooder's start-up).
const LEAD_S: f64 = 1.5;
const DRAIN_S: f64 = 2.0;
const TIMEOUT_S: f64 = 5.0;
/// The spoofed source: this host number in the topology's /24 (the server
/// is .1, the client .2).
const SPOOFED_HOST: u8 = 200;

/// Whether `turnstile-bench syn-flood ...` is the flooder (hidden
/// subcommand, always given `--src`, `--iface` and `--dst-mac`) rather than
/// this scenario, which takes none of them.
pub fn is_flooder(argv: &[String]) -> bool {
    argv.iter().skip(2).any(|a| {
        ["--src", "--iface", "--dst-mac", "--target"]
            .iter()
            .any(|f| a == f || a.starts_with(&format!("{f}=")))
    })
}

/// Every rate, every contender, `rounds` times; writes OUT/STEM.md,
/// OUT/STEM.json and OUT/STEM.png|svg (STEM: `syn-flood` or
/// `syn-flood-spoofed`), and prints the table.
pub fn run(env: &Env, plan: &Plan, duration: f64, rounds: u32, out: &Path) -> anyhow::Result<()> {
    turnstile_bin(env)?;
    let load0 = crate::sh("cut -d' ' -f1-3 /proc/loadavg");
    let date = crate::sh("date -u +%Y-%m-%dT%H:%M:%SZ");
    let (rates, stem) = (&plan.rates, plan.stem());
    let mut points = Vec::new();
    'all: for round in 1..=rounds {
        for &rate in rates {
            for side in Side::ALL {
                if env.stop.load(Ordering::Relaxed) {
                    break 'all;
                }
                let mut p = Point::new(rate, side, round);
                if let Err(e) = world(env, &mut p, duration, plan.spoofed) {
                    p.error = Some(format!("{e:#}"));
                }
                eprintln!(
                    "{stem} | {} | {} | round {round}: {}",
                    rate.label(),
                    side.name(),
                    match (&p.error, &p.client) {
                        (Some(e), _) => format!("error: {e}"),
                        (None, Some(c)) => format!(
                            "{:.0} SYN/s, ok {} failed {} unfinished {}, p99 {} ms",
                            p.flood_pps,
                            c.ok,
                            c.failed(),
                            c.unfinished,
                            c.latency.map_or("-".into(), |l| ms(l.p99_us))
                        ),
                        _ => "-".into(),
                    }
                );
                points.push(p);
            }
        }
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let listening = points
        .iter()
        .find_map(|p| p.listening.as_deref())
        .map(|l| {
            l.split_whitespace()
                .filter(|w| w.starts_with("mode=") || w.starts_with("zerocopy="))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "did not start".into());
    let mut md = format!(
        "## turnstile-bench {stem}\n\n- Command: `{}`\n- Date: {date}; {} cores ({}), Linux {}; one-queue veth, turnstile AF_XDP {listening}\n\
         - Load average at start {load0}, at end {}; other processes were free to run beside the bench\n\
         - Method: a fresh world per round, rate and contender (contenders alternated); the flooder pinned to core {}, from {}, \
         {LEGIT_CONCURRENCY} legitimate connections in flight from the flooder's namespace for {duration} s, starting {LEAD_S} s into the flood, \
         {rounds} round(s). Failed: refused, reset, timed out ({TIMEOUT_S} s), a wrong response, or still in flight {DRAIN_S} s after the end. \
         Latency: connect to whole response, successes only. SYN/s reached: the flooder's sent/elapsed (median of rounds).\n\n",
        command.replace(
            &*std::env::current_exe()?.to_string_lossy(),
            "turnstile-bench"
        ),
        env.cores,
        crate::sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").trim(),
        crate::sh("uname -r"),
        crate::sh("cut -d' ' -f1-3 /proc/loadavg"),
        env.cores - 1,
        if plan.spoofed {
            "an address of the link nobody holds (no RST answers the SYN-ACKs)"
        } else {
            "the clients' own address (their kernel answers every SYN-ACK with a RST)"
        },
    );
    md.push_str(&markdown(&points, rates));
    md.push_str(&format!("\nPlot: `{stem}.png|svg` (success % and p99 against the SYN rate reached, one line per contender).\n"));
    std::fs::write(out.join(format!("{stem}.md")), &md)?;
    std::fs::write(
        out.join(format!("{stem}.json")),
        serde_json::to_string_pretty(&points)?,
    )?;
    write_plot(out, &points, plan)?;
    println!("{md}");
    Ok(())
}

/// Sleeps `secs`, in steps, unless the run is stopped.
fn pause(env: &Env, secs: f64) {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end && !env.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

const KERNEL_COUNTERS: [&str; 6] = [
    "TcpExtSyncookiesSent",
    "TcpExtSyncookiesRecv",
    "TcpExtSyncookiesFailed",
    "TcpExtListenOverflows",
    "TcpExtListenDrops",
    "TcpExtTCPReqQFullDrop",
];
const TURNSTILE_COUNTERS: [&str; 5] = [
    "turnstile_syn_cookies_sent_total{path=\"xdp\"}",
    "turnstile_syn_cookies_sent_total{path=\"engine\"}",
    "turnstile_syn_cookies_total{result=\"accepted\"}",
    "turnstile_rx_dropped_total{reason=\"ring_full\"}",
    "turnstile_rx_dropped_total{reason=\"no_frame\"}",
];

/// The server's counters now: the namespace's kernel TCP counters (`nstat
/// -asz`: absolute, no history file) or turnstile's metrics.
fn server_counters(topo: &Topology, side: Side) -> BTreeMap<String, u64> {
    let mut c = BTreeMap::new();
    match side {
        Side::Kernel => {
            let text = topo.server.sh_ok("nstat -asz").unwrap_or_default();
            for l in text.lines() {
                let mut f = l.split_whitespace();
                if let (Some(k), Some(Ok(v))) = (f.next(), f.next().map(str::parse))
                    && KERNEL_COUNTERS.contains(&k)
                {
                    c.insert(k.to_string(), v);
                }
            }
        }
        Side::Turnstile => {
            let text = topo
                .server
                .scrape_metrics(SERVER_METRICS.parse().expect("valid"))
                .unwrap_or_default();
            for n in TURNSTILE_COUNTERS {
                if let Some(v) = turnstile::metrics::sample(&text, n) {
                    c.insert(n.to_string(), v);
                }
            }
        }
    }
    c
}

/// One contender at one rate in a fresh world; fills `p`.
fn world(env: &Env, p: &mut Point, duration: f64, spoofed: bool) -> anyhow::Result<()> {
    let topo = Topology::new(TopologyConfig::default()).context("building the namespaces")?;
    let scratch = Scratch::new()?;
    // After `topo`: dropped (killed, reaped) before it is torn down.
    let mut procs: Vec<Proc> = Vec::new();
    let target = SocketAddrV4::new(topo.server.ip, PORT);
    let s = &topo.server;
    match p.side {
        Side::Kernel => {
            // 1 is the kernel's default (cookies once the SYN queue overflows): set it anyway.
            sysctls(s, &[("net.ipv4.tcp_syncookies", "1")])?;
            let mut cmd = bench_cmd(env, s, "kernel-server");
            cmd.args(["--addr", &target.to_string(), "--threads", "1"]);
            let mut server = Proc::spawn("kernel-server", cmd)?;
            server.wait_line("listening", Duration::from_secs(10), &env.stop)?;
            procs.push(server);
        }
        Side::Turnstile => {
            let mut cmd = s.command(turnstile_bin(env)?.to_str().unwrap_or("turnstile"));
            cmd.args(["serve", "--iface", &s.dev, "--port", &PORT.to_string()]);
            cmd.args([
                "--app",
                "http",
                "--queues",
                "1",
                "--metrics",
                SERVER_METRICS,
            ]);
            cmd.args(["--xdp-mode", &env.xdp_mode]);
            // Its own secret file: another turnstile may be running on this machine.
            cmd.arg("--state-dir").arg(scratch.0.join("state"));
            let mut server = Proc::spawn("turnstile serve", cmd)?;
            p.listening =
                Some(server.wait_line("listening", Duration::from_secs(20), &env.stop)?);
            procs.push(server);
        }
    }
    wait_port(
        &topo.client.netns,
        target,
        Duration::from_secs(10),
        &env.stop,
    )?;
    let before = server_counters(&topo, p.side);
    let flood_s = LEAD_S + duration + DRAIN_S + 0.5;
    let mut flood = match p.rate {
        Rate::Off => None,
        Rate::Pps(_) | Rate::Full => {
            let mac = s.sh_ok(&format!("cat /sys/class/net/{}/address", s.dev))?;
            let mut cmd = topo.client.command("taskset");
            cmd.args(["-c", &(env.cores - 1).to_string()])
                .arg(&env.bench)
                .arg("syn-flood");
            let src = if spoofed {
                let o = topo.client.ip.octets();
                std::net::Ipv4Addr::new(o[0], o[1], o[2], SPOOFED_HOST)
            } else {
                topo.client.ip
            };
            cmd.args(["--src", &src.to_string()])
                .args(["--target", &target.to_string()])
                .args(["--duration", &flood_s.to_string()])
                .args(["--iface", &topo.client.dev, "--dst-mac", mac.trim()]);
            if let Rate::Pps(pps) = p.rate {
                cmd.args(["--pps", &pps.to_string()]);
            }
            let mut f = Proc::spawn("syn-flood", cmd)?;
            pause(env, LEAD_S);
            if f.wait_until(Instant::now(), &env.stop, || {}).is_some() {
                anyhow::bail!("the flooder exited early: {}", f.stderr_tail());
            }
            Some(f)
        }
    };
    let mut cmd = bench_cmd(env, &topo.client, "kernel-client");
    cmd.args(["--target", &target.to_string()])
        .args(["--concurrency", &LEGIT_CONCURRENCY.to_string()])
        .args(["--duration", &duration.to_string()])
        .args(["--drain-s", &DRAIN_S.to_string()])
        .args(["--timeout-s", &TIMEOUT_S.to_string(), "--close", "first"]);
    let mut client = Proc::spawn("kernel-client", cmd)?;
    let line = json_report(
        &mut client,
        "kernel-client",
        duration + DRAIN_S + TIMEOUT_S + 10.0,
        env,
    )?;
    p.client = Some(serde_json::from_str(&line).context("kernel-client report")?);
    if let Some(f) = flood.as_mut() {
        let line = json_report(f, "syn-flood", flood_s + 5.0, env)?;
        let v: serde_json::Value = serde_json::from_str(&line).context("syn-flood report")?;
        p.flood_pps = v["pps"].as_f64().unwrap_or(0.0);
        p.flood_sent = v["sent"].as_u64().unwrap_or(0);
    }
    let after = server_counters(&topo, p.side);
    p.server_counters = after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .collect();
    p.cookies_sent = match p.side {
        Side::Kernel => p.server_counters.get("TcpExtSyncookiesSent").copied(),
        Side::Turnstile => Some(
            p.server_counters
                .iter()
                .filter(|(k, _)| k.starts_with("turnstile_syn_cookies_sent_total"))
                .map(|(_, v)| v)
                .sum(),
        ),
    };
    drop(flood);
    for proc in procs.iter_mut().rev() {
        proc.terminate(Duration::from_secs(3));
    }
    drop(procs);
    drop(topo);
    Ok(())
}

/// Waits up to `limit_s` for `proc` to exit (terminating it otherwise) and
/// returns the last JSON line it printed, its report.
fn json_report(proc: &mut Proc, what: &str, limit_s: f64, env: &Env) -> anyhow::Result<String> {
    let limit = Instant::now() + Duration::from_secs_f64(limit_s);
    if proc.wait_until(limit, &env.stop, || {}).is_none() {
        proc.terminate(Duration::from_millis(500));
        anyhow::bail!("{what} did not finish: {}", proc.stderr_tail());
    }
    proc.stdout()
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .map(str::to_string)
        .with_context(|| format!("{what} printed no report: {}", proc.stderr_tail()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flooder_is_told_from_the_scenario() {
        let v = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert!(is_flooder(&v("b syn-flood --src 198.18.0.2 --iface x")));
        assert!(is_flooder(&v("b syn-flood --target=198.18.0.1:80")));
        assert!(!is_flooder(&v("b syn-flood --duration 6 --rounds 1")));
        assert!(!is_flooder(&v("b syn-flood")));
    }
}
