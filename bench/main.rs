//! `turnstile-bench`: connections/sec and TIME_WAIT, turnstile against the
//! kernel, HAProxy and nginx, side by side on a namespace/veth topology built
//! afresh for every run. See `turnstile-bench --help` and bench/results/.
//!
//! Contenders run inside the namespaces; the kernel ones are this binary
//! itself, re-executed with a hidden subcommand (`kernel-server`,
//! `kernel-client`, `syn-flood`).

mod bulk;
mod configs;
mod flood_report;
mod flood_scenario;
mod kernel_client;
mod kernel_server;
mod netns;
mod plot;
mod procs;
mod report;
mod samples;
mod scenarios;
mod stats;
mod syn_flood;
mod sys;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use report::{RunResult, Summary};
use scenarios::{Contender, Env, Scenario};

#[derive(Parser, Debug)]
#[command(
    name = "turnstile-bench",
    about = "Short-connection churn: turnstile vs the kernel, HAProxy and nginx, in fresh namespaces",
    after_help = "Scenarios: wire-limit, accept-churn, connect-churn, proxy-churn (default: all, in that order);\n\
                  bulk (iperf3 1 stream, -R, -P 8, redis-benchmark -k 0 and ab through HAProxy and turnstile run\n\
                  at equal cores; bulk-iperf / bulk-short for either half), only when named.\n\
                  syn-flood (legitimate clients through SYN floods of rising rate, kernel vs turnstile;\n\
                  syn-flood=0,50k,full for other rates; syn-flood-spoofed from a forged source), only when named.\n\
                  Default run: 5 s per run, 2 rounds alternated (A B A B), connect-churn 15 s once; under 3 minutes.\n\
                  --full: 15 s per run, 3 rounds, connect-churn 100 s (past the kernel's 60 s TIME_WAIT)."
)]
struct Cli {
    /// Scenarios to run.
    scenarios: Vec<String>,
    /// Seconds per run (connect-churn: at least 15, or 100 with --full).
    #[arg(long)]
    duration: Option<f64>,
    /// Output directory (default: ./turnstile-bench-<UTC time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The long horizon.
    #[arg(long)]
    full: bool,
    /// Rounds per contender, alternated between contenders.
    #[arg(long)]
    rounds: Option<u32>,
    /// Client connections in flight, the same for every contender.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// The turnstile binary (default: beside this one).
    #[arg(long)]
    turnstile: Option<PathBuf>,
    /// turnstile's `--xdp-mode` (auto, native, generic), for every turnstile
    /// the run starts.
    #[arg(long, default_value = "auto", value_parser = ["auto", "native", "generic"])]
    xdp_mode: String,
}

#[derive(Parser)]
struct ServerCli {
    #[command(flatten)]
    args: kernel_server::ServerArgs,
}

#[derive(Parser)]
struct ClientCli {
    #[command(flatten)]
    args: kernel_client::ClientArgs,
}

/// `turnstile-bench report DIR`: summary, table and plots again from DIR/runs.
#[derive(Parser)]
struct ReportCli {
    dir: PathBuf,
}

fn rereport(dir: &Path) -> anyhow::Result<()> {
    if flood_report::replot(dir)? > 0 && !dir.join("summary.json").exists() {
        return Ok(());
    }
    let mut results: Vec<RunResult> = Vec::new();
    for e in
        std::fs::read_dir(dir.join("runs")).with_context(|| format!("{}/runs", dir.display()))?
    {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "json") {
            let text = std::fs::read_to_string(&p)?;
            results.push(serde_json::from_str(&text).with_context(|| format!("{}", p.display()))?);
        }
    }
    // Scenario order, then start time, then round.
    let order = |r: &RunResult| {
        Scenario::ALL
            .iter()
            .position(|s| s.name() == r.scenario)
            .unwrap_or(9)
    };
    results.sort_by(|a, b| {
        (order(a), &a.started_utc, a.round).cmp(&(order(b), &b.started_utc, b.round))
    });
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in &results {
        let k = (r.scenario.clone(), r.contender.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let old: serde_json::Value = std::fs::read_to_string(dir.join("summary.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let info = RunInfo {
        command: old["command"]
            .as_str()
            .unwrap_or("turnstile-bench")
            .to_string(),
        date_utc: old["machine"]["date_utc"].as_str().map(str::to_string),
        concurrency: old["concurrency"].as_u64().unwrap_or(64) as usize,
        elapsed: old["elapsed_s"].as_f64().unwrap_or(0.0),
        interrupted: old["interrupted"].as_bool().unwrap_or(false),
    };
    write_outputs(dir, &info, &keys, &results)
}

#[derive(Parser)]
struct FloodCli {
    #[command(flatten)]
    args: syn_flood::FloodArgs,
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    // Hidden subcommands: the contenders this binary plays inside a namespace.
    let hidden = match argv.get(1).map(String::as_str) {
        Some("kernel-server") => Some(kernel_server::run(ServerCli::parse_from(&argv[1..]).args)),
        Some("kernel-client") => Some(kernel_client::run(ClientCli::parse_from(&argv[1..]).args)),
        Some("syn-flood") if flood_scenario::is_flooder(&argv) => {
            Some(syn_flood::run(FloodCli::parse_from(&argv[1..]).args))
        }
        Some("report") => Some(rereport(&ReportCli::parse_from(&argv[1..]).dir)),
        _ => None,
    };
    if let Some(result) = hidden {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    match bench(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Planned {
    scenario: Scenario,
    contender: Contender,
    round: u32,
    duration: f64,
}

fn sh(line: &str) -> String {
    std::process::Command::new("sh")
        .args(["-c", line])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn bench(cli: Cli) -> anyhow::Result<ExitCode> {
    // SAFETY: geteuid has no preconditions.
    anyhow::ensure!(
        unsafe { libc::geteuid() } == 0,
        "turnstile-bench needs root (network namespaces, XDP, AF_XDP)"
    );
    let mut workloads: Vec<bulk::Workload> = Vec::new();
    let mut floods = Vec::new();
    let named: Vec<&String> = cli
        .scenarios
        .iter()
        .filter(|s| flood_report::parse(s).map(|r| floods.push(r)).is_none())
        .filter(|s| match bulk::parse(s) {
            Some(w) => {
                for x in w {
                    if !workloads.contains(&x) {
                        workloads.push(x);
                    }
                }
                false
            }
            None => true,
        })
        .collect();
    let floods: Vec<flood_report::Plan> = floods.into_iter().collect::<anyhow::Result<_>>()?;
    if !workloads.is_empty() {
        bulk::check_tools()?;
    }
    let scenarios: Vec<Scenario> = if cli.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        named
            .iter()
            .map(|s| {
                Scenario::parse(s).with_context(|| {
                    format!("unknown scenario {s:?}: wire-limit, accept-churn, connect-churn, proxy-churn, bulk or syn-flood")
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let bench = std::env::current_exe().context("locating this binary")?;
    let turnstile = cli
        .turnstile
        .clone()
        .or_else(|| bench.parent().map(|d| d.join("turnstile")))
        .filter(|p| p.exists());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let env = Env {
        bench,
        turnstile,
        cores,
        queues: cores as u32,
        concurrency: cli.concurrency,
        xdp_mode: cli.xdp_mode.clone(),
        stop: stop.clone(),
    };
    let duration = cli.duration.unwrap_or(if cli.full { 15.0 } else { 5.0 });
    let rounds = cli.rounds.unwrap_or(if cli.full { 3 } else { 2 }).max(1);
    let churn = if cli.full {
        duration.max(100.0)
    } else {
        duration.max(15.0)
    };
    let mut plan = Vec::new();
    for &s in &scenarios {
        let (d, n) = match s {
            // The horizon is what connect-churn is about: one long run each.
            Scenario::ConnectChurn => (churn, cli.rounds.unwrap_or(1).max(1)),
            Scenario::WireLimit => (duration, 1),
            _ => (duration, rounds),
        };
        for round in 1..=n {
            for c in scenarios::contenders(s) {
                plan.push(Planned {
                    scenario: s,
                    contender: c,
                    round,
                    duration: d,
                });
            }
        }
    }
    let out = cli.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!("turnstile-bench-{}", sh("date -u +%Y%m%dT%H%M%SZ")))
    });
    std::fs::create_dir_all(out.join("runs"))
        .with_context(|| format!("creating {}", out.display()))?;

    const OVERHEAD_S: f64 = 3.0;
    let total: f64 = plan.iter().map(|p| p.duration + OVERHEAD_S).sum();
    let pb = ProgressBar::new(total.ceil() as u64);
    pb.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] ~{pos}/{len} s  {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let started = Instant::now();
    let mut done_s = 0.0;
    let mut results: Vec<RunResult> = Vec::new();
    for p in &plan {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let label = format!(
            "{} | {} | round {}",
            p.scenario.name(),
            p.contender.name,
            p.round
        );
        pb.set_message(label.clone());
        let r = if p.contender.needs_turnstile() && env.turnstile.is_none() {
            RunResult {
                scenario: p.scenario.name().into(),
                contender: p.contender.name.clone(),
                round: p.round,
                error: Some(
                    "skipped: no turnstile binary beside turnstile-bench (cargo build --release)"
                        .into(),
                ),
                ..Default::default()
            }
        } else {
            let mut tick = |t: f64| {
                pb.set_position((done_s + t.min(p.duration)) as u64);
            };
            scenarios::run_one(
                &env,
                p.scenario,
                &p.contender,
                p.round,
                p.duration,
                &mut tick,
            )
        };
        done_s += p.duration + OVERHEAD_S;
        pb.set_position(done_s as u64);
        let name = format!(
            "{}-{}-r{}.json",
            p.scenario.name(),
            slug(&p.contender.name),
            p.round
        );
        std::fs::write(
            out.join("runs").join(name),
            serde_json::to_string_pretty(&r)?,
        )?;
        if let Some(e) = &r.error {
            pb.println(format!("{label}: {e}"));
        } else if let Some(c) = &r.client {
            pb.println(format!(
                "{label}: ok {} failed {} ({})",
                c.ok,
                c.failed(),
                report::failures_text(&c.failures)
            ));
        }
        results.push(r);
    }
    pb.finish_and_clear();
    if !workloads.is_empty() {
        run_bulk(&env, &workloads, &cli, &out)?;
    }
    for plan in floods.iter().filter(|_| !stop.load(Ordering::Relaxed)) {
        let d = cli.duration.unwrap_or(if cli.full { 15.0 } else { 6.0 });
        flood_scenario::run(&env, plan, d, rounds, &out)?;
    }
    let interrupted = stop.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let mut keys: Vec<(String, String)> = Vec::new();
    for p in &plan {
        let k = (p.scenario.name().to_string(), p.contender.name.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let info = RunInfo {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        date_utc: None,
        concurrency: cli.concurrency,
        elapsed,
        interrupted,
    };
    if !plan.is_empty() {
        write_outputs(&out, &info, &keys, &results)?;
    }
    eprintln!("results in {} ({elapsed:.0} s)", out.display());
    Ok(if interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

/// The bulk scenario: every contender once per round (A B A B), its table
/// printed and written to OUT/bulk.md, every measurement to OUT/bulk.json.
fn run_bulk(env: &Env, workloads: &[bulk::Workload], cli: &Cli, out: &Path) -> anyhow::Result<()> {
    let duration = cli.duration.unwrap_or(if cli.full { 15.0 } else { 8.0 });
    let rounds = cli.rounds.unwrap_or(if cli.full { 3 } else { 2 }).max(1);
    let date = sh("date -u +%Y-%m-%dT%H:%M:%SZ");
    let load = format!(
        "loadavg at start {}; {}",
        sh("cut -d' ' -f1-3 /proc/loadavg"),
        if sh("pgrep -x yes").is_empty() {
            "no `yes` CPU hog running"
        } else {
            "a `yes` CPU hog running"
        }
    );
    let mut all = Vec::new();
    for round in 1..=rounds {
        for proxy in bulk::contenders() {
            if env.stop.load(Ordering::Relaxed) {
                break;
            }
            let got = bulk::run_world(env, proxy, round, workloads, duration, &mut |m| {
                eprintln!(
                    "bulk | {} | {} | round {}: {}",
                    m.workload,
                    m.contender,
                    m.round,
                    match (&m.value, &m.error) {
                        (Some(v), _) => format!("{v:.1}"),
                        (None, Some(e)) => format!("error: {e}"),
                        _ => "-".into(),
                    }
                )
            });
            for m in got.iter().filter(|m| m.workload == "setup") {
                eprintln!("bulk | {} | round {round}: {:?}", m.contender, m.error);
            }
            all.extend(got);
        }
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut md = format!(
        "## turnstile-bench bulk\n\n- Command: `{}`\n- Date: {date}; {} cores ({}), Linux {}; {} s per workload, {rounds} rounds, \
         contenders alternated; concurrency {} (redis-benchmark -c, ab -c); HAProxy `nbthread {q}`, turnstile `queues = {q}` on a {q}-queue veth\n\
         - Load: {}\n\n",
        command.replace(
            &*std::env::current_exe()?.to_string_lossy(),
            "turnstile-bench"
        ),
        env.cores,
        sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").trim(),
        sh("uname -r"),
        duration,
        env.concurrency,
        load,
        q = env.queues,
    );
    md.push_str(&bulk::markdown(&all, workloads));
    std::fs::write(out.join("bulk.md"), &md)?;
    std::fs::write(out.join("bulk.json"), serde_json::to_string_pretty(&all)?)?;
    println!("{md}");
    Ok(())
}

fn slug(s: &str) -> String {
    let mut out = String::new();
    for ch in s.chars() {
        if ch.is_ascii_alphanumeric() || ch == '.' || ch == '=' {
            out.push(ch.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

/// Frames one short connection needs through the server when it could not
/// be measured: SYN, ACK, request, FIN in; SYN-ACK, response, FIN, last ACK out.
const NOMINAL_FRAMES_PER_CONN: f64 = 8.0;

/// What the summary says about how the run was made.
struct RunInfo {
    command: String,
    /// When re-reporting: the original run's date.
    date_utc: Option<String>,
    concurrency: usize,
    elapsed: f64,
    interrupted: bool,
}

fn write_outputs(
    out: &Path,
    info: &RunInfo,
    keys: &[(String, String)],
    results: &[RunResult],
) -> anyhow::Result<()> {
    let (elapsed, interrupted) = (info.elapsed, info.interrupted);
    // Summaries in plan order, one per (scenario, contender).
    let mut summaries: Vec<Summary> = keys
        .iter()
        .filter_map(|(s, c)| {
            let runs: Vec<&RunResult> = results
                .iter()
                .filter(|r| &r.scenario == s && &r.contender == c)
                .collect();
            (!runs.is_empty()).then(|| report::summarize(&runs))
        })
        .collect();
    let measured_frames = summaries
        .iter()
        .filter(|s| s.scenario == "accept-churn")
        .filter_map(|s| s.frames_per_conn)
        .fold(None, |a: Option<f64>, f| Some(a.map_or(f, |a| a.min(f))));
    let frames = measured_frames.unwrap_or(NOMINAL_FRAMES_PER_CONN);
    let ceiling = summaries
        .iter()
        .find(|s| s.scenario == "wire-limit")
        .and_then(|w| report::ceiling(w, frames));
    for s in &mut summaries {
        if s.scenario != "wire-limit" {
            s.of_ceiling = match (s.rate, ceiling) {
                (Some(r), Some(c)) => Some(r.median / c),
                _ => None,
            };
        }
    }
    // "mode=native zerocopy=no" from turnstile's listening line.
    let listening = results
        .iter()
        .flat_map(|r| r.listening.iter())
        .next()
        .map(|l| {
            l.split_whitespace()
                .filter(|w| w.starts_with("mode=") || w.starts_with("zerocopy="))
                .collect::<Vec<_>>()
                .join(" ")
        });
    let machine = serde_json::json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        "kernel": sh("uname -r"),
        "link": "veth pair between two network namespaces, TX checksum/TSO/GSO/GRO off",
        "turnstile_listening": listening,
        "date_utc": info.date_utc.clone().unwrap_or_else(|| sh("date -u +%Y-%m-%dT%H:%M:%SZ")),
        "haproxy": sh("haproxy -v 2>/dev/null | head -1"),
        "nginx": sh("nginx -v 2>&1"),
    });
    let command = info.command.clone();
    let summary_json = serde_json::json!({
        "command": command,
        "concurrency": info.concurrency,
        "machine": machine,
        "elapsed_s": elapsed,
        "interrupted": interrupted,
        "frames_per_conn": frames,
        "frames_per_conn_measured": measured_frames.is_some(),
        "ceiling_conn_per_s": ceiling,
        "summaries": summaries,
    });
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary_json)?,
    )?;

    let mut md = String::new();
    md.push_str("## turnstile-bench results\n\n");
    md.push_str(&format!(
        "- Command: `{}`\n",
        command.replace(
            &*std::env::current_exe()?.to_string_lossy(),
            "turnstile-bench"
        )
    ));
    md.push_str(&format!(
        "- Machine: {} cores ({}), Linux {}, {}; turnstile AF_XDP: {}\n",
        machine["cores"],
        machine["cpu"].as_str().unwrap_or("?"),
        machine["kernel"].as_str().unwrap_or("?"),
        machine["link"].as_str().unwrap_or("?"),
        listening.as_deref().unwrap_or("did not run"),
    ));
    md.push_str(&format!(
        "- Date: {}; total {elapsed:.0} s{}\n",
        machine["date_utc"].as_str().unwrap_or("?"),
        if interrupted {
            " (INTERRUPTED: partial results)"
        } else {
            ""
        }
    ));
    md.push_str(&format!(
        "- Method: fresh namespaces per run; contenders alternated (A B A B), {} client connections in flight for every contender; \
         every response compared byte for byte with the one both servers send (`HTTP/1.1 200 OK`, body `turnstile\\n`), anything else is a failure. \
         Pinning: none; every process may use every core (client and server share them), except turnstile's shard threads, which pin themselves \
         (shard i on core i), and wire-limit's SYN sender, pinned to the last core.\n",
        info.concurrency
    ));
    md.push_str(&format!(
        "- conn/s: median of 1 s intervals over all rounds (p10-p90). \"of ceiling\": that median over the wire-limit ceiling = AF_XDP frames/s of one core / {frames:.1} frames per connection ({}).\n",
        if measured_frames.is_some() { "measured in accept-churn with turnstile serving" } else { "nominal: not measured in this run" }
    ));
    md.push_str("- TIME_WAIT: kernel sockets (sockstat of the namespace) plus turnstile's `turnstile_time_wait`, sampled each second, maximum shown. CPU: seconds of user+system time of each role's processes within the run, per 1,000 good connections.\n\n");
    md.push_str(&report::markdown(&summaries, ceiling));
    md.push_str(&report::targets(&summaries, results, ceiling));
    md.push_str("Plots: `<scenario>-rate.png|svg` (good connections per second) and `<scenario>-time-wait.png|svg` (TIME_WAIT per side), one line per contender and round.\n");
    std::fs::write(out.join("summary.md"), &md)?;

    if plot::init_font() {
        for sc in Scenario::ALL {
            let runs: Vec<&RunResult> =
                results.iter().filter(|r| r.scenario == sc.name()).collect();
            if runs.is_empty() || sc == Scenario::WireLimit {
                continue;
            }
            let mut names: Vec<&str> = Vec::new();
            for r in &runs {
                if !names.contains(&r.contender.as_str()) {
                    names.push(&r.contender);
                }
            }
            let line = |r: &RunResult,
                        pts: Vec<(f64, f64)>,
                        dashed: bool,
                        labelled: &mut Vec<String>,
                        tag: &str| {
                let label = format!("{}{tag}", r.contender);
                let first = !labelled.contains(&label);
                if first {
                    labelled.push(label.clone());
                }
                plot::Line {
                    label: first.then_some(label),
                    color: names.iter().position(|n| *n == r.contender).unwrap_or(0),
                    dashed,
                    points: pts,
                }
            };
            let mut labelled = Vec::new();
            let rate: Vec<plot::Line> = runs
                .iter()
                .map(|r| {
                    let pts = r
                        .ok_per_s
                        .iter()
                        .enumerate()
                        .map(|(i, v)| (i as f64 + 1.0, *v))
                        .collect();
                    line(r, pts, false, &mut labelled, "")
                })
                .collect();
            let mut labelled = Vec::new();
            let series = |v: &[u64]| {
                v.iter()
                    .enumerate()
                    .map(|(i, x)| (i as f64, *x as f64))
                    .collect::<Vec<_>>()
            };
            let tw_s: Vec<plot::Line> = runs
                .iter()
                .map(|r| line(r, series(&r.tw_server), false, &mut labelled, ""))
                .collect();
            let mut labelled = Vec::new();
            let tw_c: Vec<plot::Line> = runs
                .iter()
                .map(|r| line(r, series(&r.tw_client), true, &mut labelled, ""))
                .collect();
            let name = sc.name();
            plot::write(
                &out.join(format!("{name}-rate")),
                &[plot::Panel {
                    title: format!("{name}: good connections per second"),
                    y_label: "connections/s".into(),
                    lines: rate,
                }],
            )?;
            let server_side = if sc == Scenario::ProxyChurn {
                "proxy's namespace"
            } else {
                "server side"
            };
            plot::write(
                &out.join(format!("{name}-time-wait")),
                &[
                    plot::Panel {
                        title: format!("{name}: TIME_WAIT, {server_side}"),
                        y_label: "entries".into(),
                        lines: tw_s,
                    },
                    plot::Panel {
                        title: format!("{name}: TIME_WAIT, client side"),
                        y_label: "entries".into(),
                        lines: tw_c,
                    },
                ],
            )?;
        }
    } else {
        eprintln!("no TrueType font found (apt-get install fonts-dejavu-core): plots skipped");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_file_names() {
        assert_eq!(slug("kernel -> turnstile"), "kernel-turnstile");
        assert_eq!(
            slug("kernel tw_reuse=1 delay=10ms"),
            "kernel-tw-reuse=1-delay=10ms"
        );
    }

    #[test]
    fn cli_parses_scenarios_and_flags() {
        let c = Cli::parse_from([
            "turnstile-bench",
            "accept-churn",
            "--duration",
            "3",
            "--full",
        ]);
        assert_eq!(c.scenarios, vec!["accept-churn"]);
        assert_eq!((c.duration, c.full), (Some(3.0), true));
    }
}

/// End to end through real namespaces (root, release build of both binaries):
/// `cargo test --profile ci --bin turnstile-bench -- --ignored`.
#[cfg(test)]
mod smoke {
    use super::*;

    fn env() -> Option<Env> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return None;
        }
        // target/<profile>/deps/turnstile_bench-HASH -> target/<profile>/turnstile-bench
        let dir = std::env::current_exe()
            .ok()?
            .parent()?
            .parent()?
            .to_path_buf();
        let bench = dir.join("turnstile-bench");
        if !bench.exists() {
            eprintln!("skipped: build {} first", bench.display());
            return None;
        }
        Some(Env {
            bench,
            turnstile: Some(dir.join("turnstile")).filter(|p| p.exists()),
            cores: 2,
            queues: 2,
            concurrency: 16,
            xdp_mode: "auto".into(),
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    #[test]
    #[ignore = "root, namespaces, a few seconds"]
    fn kernel_to_kernel_accept_churn_and_clean_up() {
        let Some(env) = env() else { return };
        let before = sh("ip netns list | grep -c '^ts-' || true");
        let c = scenarios::contenders(Scenario::AcceptChurn).remove(0);
        let r = scenarios::run_one(&env, Scenario::AcceptChurn, &c, 1, 2.0, &mut |_| {});
        assert!(r.error.is_none(), "{:?}", r.error);
        let client = r.client.as_ref().unwrap();
        assert!(client.ok > 100, "{client:?}");
        assert_eq!(client.failed(), 0, "{client:?}");
        assert!(
            r.tw_server.iter().any(|&t| t > 0),
            "server closes first: {:?}",
            r.tw_server
        );
        assert_eq!(r.ok_per_s.len(), 2);
        assert!(r.usage.contains_key("server") && r.usage.contains_key("client"));
        assert_eq!(sh("ip netns list | grep -c '^ts-' || true"), before);
    }
}
