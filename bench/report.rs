//! What a run records (one JSON file each), how rounds of one contender are
//! summed up, and the Markdown table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::kernel_client::ClientReport;
use crate::netns::NsSample;
use crate::procs::Usage;
use crate::stats::{self, Latency, Spread};

/// wire-limit's own figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Wire {
    pub sent_pps: f64,
    /// Frames per second into and out of turnstile's AF_XDP sockets (1 s intervals).
    pub rx_pps: Option<Spread>,
    pub tx_pps: Option<Spread>,
    pub total_pps: Option<Spread>,
    /// Frames the kernel could not hand to AF_XDP (rx ring full, no fill frame).
    pub dropped_pps: Option<Spread>,
}

/// One run: one contender, one round, fresh namespaces.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunResult {
    pub scenario: String,
    pub contender: String,
    pub round: u32,
    pub duration_s: f64,
    pub started_utc: String,
    pub error: Option<String>,
    pub notes: Vec<String>,
    /// The client's own report (kernel client; turnstile load converted).
    pub client: Option<ClientReport>,
    /// Good connections per 1 s interval, and where that series comes from.
    pub ok_per_s: Vec<f64>,
    pub rate_source: String,
    /// TIME_WAIT per second on each side: kernel sockets plus turnstile's gauge.
    pub tw_server: Vec<u64>,
    pub tw_client: Vec<u64>,
    /// CPU seconds within the run and peak RSS, by role (server, client, proxy, backend).
    pub usage: BTreeMap<String, Usage>,
    pub wire: Option<Wire>,
    /// turnstile's `listening ...` lines (mode, zerocopy).
    pub listening: Vec<String>,
    pub server_samples: Vec<NsSample>,
    pub client_samples: Vec<NsSample>,
    /// turnstile's counters over the run (increase; gauges: last value), per side.
    pub turnstile_server: BTreeMap<String, u64>,
    pub turnstile_client: BTreeMap<String, u64>,
    /// Frames through turnstile per accepted connection, when measured.
    pub frames_per_conn: Option<f64>,
}

/// Several rounds of one contender in one scenario.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Summary {
    pub scenario: String,
    pub contender: String,
    pub rounds: usize,
    pub errors: Vec<String>,
    pub ok: u64,
    pub failures: BTreeMap<String, u64>,
    pub rate: Option<Spread>,
    pub latency: Option<Latency>,
    /// "merged" histograms, or "worst round" when a client gave only percentiles.
    pub latency_method: String,
    pub tw_server_max: u64,
    pub tw_client_max: u64,
    pub cpu_s_per_1k: BTreeMap<String, f64>,
    pub peak_rss_mb: BTreeMap<String, f64>,
    pub wire: Option<Wire>,
    pub frames_per_conn: Option<f64>,
    /// Median rate as a fraction of the wire-limit ceiling.
    pub of_ceiling: Option<f64>,
}

/// Sums up the rounds of one (scenario, contender).
pub fn summarize(runs: &[&RunResult]) -> Summary {
    let mut s = Summary {
        scenario: runs.first().map(|r| r.scenario.clone()).unwrap_or_default(),
        contender: runs
            .first()
            .map(|r| r.contender.clone())
            .unwrap_or_default(),
        rounds: runs.len(),
        ..Default::default()
    };
    let mut rates = Vec::new();
    let mut hist = stats::new_histogram();
    let mut merged_all = true;
    let mut worst: Option<Latency> = None;
    let mut cpu: BTreeMap<String, f64> = BTreeMap::new();
    let mut frames = Vec::new();
    for r in runs {
        if let Some(e) = &r.error {
            s.errors.push(format!("round {}: {e}", r.round));
        }
        if let Some(c) = &r.client {
            s.ok += c.ok;
            for (k, v) in &c.failures {
                *s.failures.entry(k.clone()).or_default() += v;
            }
            match stats::decode_histogram(&c.histogram) {
                Ok(h) => stats::merge(&mut hist, &h),
                Err(_) => merged_all = false,
            }
            if let Some(l) = c.latency {
                let w = worst.get_or_insert(l);
                w.p50_us = w.p50_us.max(l.p50_us);
                w.p99_us = w.p99_us.max(l.p99_us);
                w.p999_us = w.p999_us.max(l.p999_us);
                w.max_us = w.max_us.max(l.max_us);
            }
        }
        rates.extend(r.ok_per_s.iter().copied());
        s.tw_server_max = s
            .tw_server_max
            .max(r.tw_server.iter().copied().max().unwrap_or(0));
        s.tw_client_max = s
            .tw_client_max
            .max(r.tw_client.iter().copied().max().unwrap_or(0));
        for (role, u) in &r.usage {
            *cpu.entry(role.clone()).or_default() += u.cpu_s;
            let mb = u.peak_rss_kb as f64 / 1024.0;
            let e = s.peak_rss_mb.entry(role.clone()).or_default();
            *e = e.max(mb);
        }
        if let Some(w) = &r.wire {
            s.wire = Some(w.clone());
        }
        frames.extend(r.frames_per_conn);
    }
    s.rate = Spread::of(&rates);
    if merged_all && !hist.is_empty() {
        s.latency = Latency::of(&hist);
        s.latency_method = "merged histograms".into();
    } else {
        s.latency = worst;
        s.latency_method = "worst round's percentiles".into();
    }
    if s.ok > 0 {
        for (role, c) in cpu {
            s.cpu_s_per_1k.insert(role, c / (s.ok as f64 / 1000.0));
        }
    }
    s.frames_per_conn = Spread::of(&frames).map(|f| f.median);
    s
}

/// The ceiling in connections/s: frames one core moves per second over the
/// frames one short connection needs.
pub fn ceiling(wire: &Summary, frames_per_conn: f64) -> Option<f64> {
    let pps = wire.wire.as_ref()?.total_pps?.median;
    (frames_per_conn > 0.0).then(|| pps / frames_per_conn)
}

/// Whether the shard or the sender set the wire-limit figure: frames lost
/// before AF_XDP (more than 1% of those received) mean the shard was full.
pub fn limited_by(w: &Wire) -> &'static str {
    match (w.rx_pps, w.dropped_pps) {
        (Some(rx), Some(lost)) if lost.median > 0.01 * rx.median => "the shard (frames lost)",
        (Some(_), _) => "the sender: a lower bound",
        _ => "-",
    }
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn roles(m: &BTreeMap<String, f64>, fmt: impl Fn(f64) -> String) -> String {
    if m.is_empty() {
        return "-".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k} {}", fmt(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn failures_text(f: &BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = f
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    if parts.is_empty() {
        "0".into()
    } else {
        parts.join(", ")
    }
}

/// One Markdown table per scenario.
pub fn markdown(summaries: &[Summary], ceiling_cps: Option<f64>) -> String {
    let mut out = String::new();
    let mut scenarios: Vec<&str> = Vec::new();
    for s in summaries {
        if !scenarios.contains(&s.scenario.as_str()) {
            scenarios.push(&s.scenario);
        }
    }
    for sc in scenarios {
        let _ = writeln!(out, "### {sc}\n");
        if sc == "wire-limit" {
            let _ = writeln!(
                out,
                "| contender | sent pps | rx pps (median, p10-p90) | tx pps | frames/s total | lost before AF_XDP /s | limited by | ceiling conn/s |\n|---|---|---|---|---|---|---|---|"
            );
            for s in summaries.iter().filter(|s| s.scenario == sc) {
                let w = s.wire.clone().unwrap_or_default();
                let sp = |x: Option<Spread>| {
                    x.map(|x| format!("{:.0} ({:.0}-{:.0})", x.median, x.p10, x.p90))
                        .unwrap_or_else(|| "-".into())
                };
                let _ = writeln!(
                    out,
                    "| {} | {:.0} | {} | {} | {} | {} | {} | {} |",
                    s.contender,
                    w.sent_pps,
                    sp(w.rx_pps),
                    sp(w.tx_pps),
                    sp(w.total_pps),
                    sp(w.dropped_pps),
                    limited_by(&w),
                    ceiling_cps
                        .map(|c| format!("{c:.0}"))
                        .unwrap_or_else(|| "-".into())
                );
                for e in &s.errors {
                    let _ = writeln!(out, "| | error: {} | | | | | | |", e.replace('|', "/"));
                }
            }
            out.push('\n');
            continue;
        }
        let _ = writeln!(
            out,
            "| contender | conn/s median (p10-p90) | of ceiling | ok | failures | latency ms p50 / p99 / p99.9 | TIME_WAIT max server / client | CPU s per 1k conns | peak RSS MB |\n|---|---|---|---|---|---|---|---|---|"
        );
        for s in summaries.iter().filter(|s| s.scenario == sc) {
            let rate = s
                .rate
                .map(|r| format!("{:.0} ({:.0}-{:.0})", r.median, r.p10, r.p90))
                .unwrap_or_else(|| "-".into());
            let frac = match (s.rate, ceiling_cps) {
                (Some(r), Some(c)) if c > 0.0 => format!("{:.0}%", 100.0 * r.median / c),
                _ => "-".into(),
            };
            let lat = s
                .latency
                .map(|l| format!("{} / {} / {}", ms(l.p50_us), ms(l.p99_us), ms(l.p999_us)))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} / {} | {} | {} |",
                s.contender,
                rate,
                frac,
                s.ok,
                failures_text(&s.failures),
                lat,
                s.tw_server_max,
                s.tw_client_max,
                roles(&s.cpu_s_per_1k, |v| format!("{v:.3}")),
                roles(&s.peak_rss_mb, |v| format!("{v:.1}")),
            );
            for e in &s.errors {
                let _ = writeln!(out, "| | error: {} | | | | | | | |", e.replace('|', "/"));
            }
        }
        out.push('\n');
    }
    out
}

fn find<'a>(s: &'a [Summary], scenario: &str, contender: &str) -> Option<&'a Summary> {
    s.iter()
        .find(|x| x.scenario == scenario && x.contender == contender)
}

fn median(s: Option<&Summary>) -> Option<f64> {
    s?.rate.map(|r| r.median)
}

/// The targets, each with the figures it was judged on.
pub fn targets(s: &[Summary], runs: &[RunResult], ceiling_cps: Option<f64>) -> String {
    let mut out = String::from("### Targets\n\n| target | figures | met |\n|---|---|---|\n");
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "not measured",
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let x = |r: Option<f64>| r.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "-".into());
    let tt = median(find(s, "accept-churn", "turnstile -> turnstile"));
    let kk = median(find(s, "accept-churn", "kernel -> kernel"));
    let r = ratio(tt, kk);
    out.push_str(&format!(
        "| accept-churn turnstile->turnstile >= 3x kernel->kernel | {:.0} vs {:.0} conn/s: {} | {} |\n",
        tt.unwrap_or(0.0),
        kk.unwrap_or(0.0),
        x(r),
        verdict(r.map(|r| r >= 3.0))
    ));
    let frac = ratio(tt, ceiling_cps);
    out.push_str(&format!(
        "| accept-churn >= 50% of the wire-limit ceiling | {:.0} of {:.0} conn/s: {} | {} |\n",
        tt.unwrap_or(0.0),
        ceiling_cps.unwrap_or(0.0),
        frac.map(|f| format!("{:.0}%", f * 100.0))
            .unwrap_or_else(|| "-".into()),
        verdict(frac.map(|f| f >= 0.5))
    ));
    // Sustained: no failure, and the last third of the run at >= 80% of the first third.
    let load = find(s, "connect-churn", "turnstile load");
    let series: Vec<f64> = runs
        .iter()
        .filter(|r| r.scenario == "connect-churn" && r.contender == "turnstile load")
        .flat_map(|r| r.ok_per_s.iter().copied())
        .collect();
    let third = series.len() / 3;
    let sustained = (third > 0).then(|| {
        let head = Spread::of(&series[..third]).map_or(0.0, |x| x.median);
        let tail = Spread::of(&series[series.len() - third..]).map_or(0.0, |x| x.median);
        (head, tail)
    });
    let horizon = runs
        .iter()
        .filter(|r| r.scenario == "connect-churn")
        .map(|r| r.duration_s)
        .fold(0.0, f64::max);
    let defaults = find(s, "connect-churn", "kernel defaults");
    out.push_str(&format!(
        "| connect-churn: turnstile sustains its rate over the horizon with zero failures | {:.0} s run; first third {:.0}/s, last third {:.0}/s; failures {}; kernel defaults: {} ok, {} | {} |\n",
        horizon,
        sustained.map_or(0.0, |s| s.0),
        sustained.map_or(0.0, |s| s.1),
        load.map_or("-".into(), |l| failures_text(&l.failures)),
        defaults.map_or(0, |d| d.ok),
        defaults.map_or("-".into(), |d| failures_text(&d.failures)),
        if horizon < 90.0 {
            "not measured (needs --full: >= 90 s)"
        } else {
            verdict(load.zip(sustained).map(|(l, (h, t))| {
                l.failures.values().sum::<u64>() == 0 && t >= 0.8 * h
            }))
        }
    ));
    let reuse = median(find(s, "connect-churn", "kernel tw_reuse=1"));
    let r = ratio(median(load), reuse);
    out.push_str(&format!(
        "| connect-churn turnstile >= 5x kernel with tcp_tw_reuse=1 | {:.0} vs {:.0} conn/s: {} (vs tw_reuse_delay=10ms: {}) | {} |\n",
        median(load).unwrap_or(0.0),
        reuse.unwrap_or(0.0),
        x(r),
        x(ratio(median(load), median(find(s, "connect-churn", "kernel tw_reuse=1 delay=10ms")))),
        verdict(r.map(|r| r >= 5.0))
    ));
    let run = find(s, "proxy-churn", "turnstile run");
    let ha = find(s, "proxy-churn", "haproxy");
    let r = ratio(median(run), median(ha));
    let p99 = |x: Option<&Summary>| x.and_then(|x| x.latency).map(|l| l.p99_us);
    out.push_str(&format!(
        "| proxy-churn turnstile run >= 2x HAProxy with a lower p99 | {:.0} vs {:.0} conn/s: {}; p99 {} vs {} ms | {} |\n",
        median(run).unwrap_or(0.0),
        median(ha).unwrap_or(0.0),
        x(r),
        p99(run).map_or("-".into(), |v| format!("{:.2}", v as f64 / 1000.0)),
        p99(ha).map_or("-".into(), |v| format!("{:.2}", v as f64 / 1000.0)),
        verdict(r.zip(p99(run).zip(p99(ha))).map(|(r, (a, b))| r >= 2.0 && a < b))
    ));
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(ok: u64, rates: &[f64], lat_us: u64) -> RunResult {
        let mut h = stats::new_histogram();
        for _ in 0..ok {
            h.record(lat_us).unwrap();
        }
        let mut c = ClientReport {
            ok,
            histogram: stats::encode_histogram(&h),
            latency: Latency::of(&h),
            ..Default::default()
        };
        c.failures.insert("no_port".into(), 1);
        let mut usage = BTreeMap::new();
        usage.insert(
            "client".to_string(),
            Usage {
                cpu_s: 1.0,
                peak_rss_kb: 2048,
            },
        );
        RunResult {
            scenario: "accept-churn".into(),
            contender: "kernel -> kernel".into(),
            client: Some(c),
            ok_per_s: rates.to_vec(),
            tw_server: vec![1, 5, 3],
            usage,
            ..Default::default()
        }
    }

    #[test]
    fn rounds_pool_rates_merge_latency_and_sum_failures() {
        let a = run(1000, &[10.0, 20.0], 100);
        let b = run(1000, &[30.0], 300);
        let s = summarize(&[&a, &b]);
        assert_eq!(s.ok, 2000);
        assert_eq!(s.failures["no_port"], 2);
        assert_eq!(s.rate.unwrap().median, 20.0);
        assert_eq!(s.latency_method, "merged histograms");
        let l = s.latency.unwrap();
        assert!(
            l.p50_us >= 100 && l.p50_us <= 101 && l.p99_us >= 299,
            "{l:?}"
        );
        assert_eq!(s.tw_server_max, 5);
        assert!((s.cpu_s_per_1k["client"] - 1.0).abs() < 1e-9);
        assert_eq!(s.peak_rss_mb["client"], 2.0);
        let md = markdown(&[s], Some(40.0));
        assert!(
            md.contains("| kernel -> kernel | 20 (12-28) | 50% | 2000 | no_port 2 |"),
            "{md}"
        );
    }

    #[test]
    fn percentiles_only_fall_back_to_the_worst_round() {
        let mut a = run(10, &[1.0], 100);
        a.client.as_mut().unwrap().histogram.clear();
        let b = run(10, &[1.0], 500);
        let s = summarize(&[&a, &b]);
        assert_eq!(s.latency_method, "worst round's percentiles");
        assert!(s.latency.unwrap().p50_us >= 500);
    }

    #[test]
    fn targets_are_judged_on_medians() {
        let mk = |sc: &str, c: &str, rate: f64| Summary {
            scenario: sc.into(),
            contender: c.into(),
            rate: Spread::of(&[rate]),
            ..Default::default()
        };
        let s = vec![
            mk("accept-churn", "turnstile -> turnstile", 300.0),
            mk("accept-churn", "kernel -> kernel", 100.0),
            mk("connect-churn", "turnstile load", 40.0),
            mk("connect-churn", "kernel tw_reuse=1", 10.0),
        ];
        let runs = vec![RunResult {
            scenario: "connect-churn".into(),
            contender: "turnstile load".into(),
            duration_s: 100.0,
            ok_per_s: vec![40.0; 100],
            ..Default::default()
        }];
        let t = targets(&s, &runs, Some(1000.0));
        assert!(t.contains("300 vs 100 conn/s: 3.00x | yes |"), "{t}");
        assert!(t.contains("300 of 1000 conn/s: 30% | **no** |"), "{t}");
        assert!(t.contains("40 vs 10 conn/s: 4.00x"), "{t}");
        assert!(
            t.contains("first third 40/s, last third 40/s; failures 0"),
            "{t}"
        );
        assert!(t.contains("| not measured |"), "{t}");
    }

    #[test]
    fn ceiling_from_wire_limit() {
        let w = Summary {
            wire: Some(Wire {
                total_pps: Spread::of(&[800_000.0]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(ceiling(&w, 8.0), Some(100_000.0));
        assert_eq!(ceiling(&Summary::default(), 8.0), None);
        let mut w = Wire {
            rx_pps: Spread::of(&[1000.0]),
            dropped_pps: Spread::of(&[500.0]),
            ..Default::default()
        };
        assert_eq!(limited_by(&w), "the shard (frames lost)");
        w.dropped_pps = Spread::of(&[0.0]);
        assert_eq!(limited_by(&w), "the sender: a lower bound");
    }
}
