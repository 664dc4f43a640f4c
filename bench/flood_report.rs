//! The `syn-flood` scenario's pure half: the rates and plans a scenario
//! name asks for, one measured point, the markdown table and the plot of
//! success and p99 against the SYN rate reached. The runs themselves are
//! bench/flood_scenario.rs.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::kernel_client::ClientReport;
use crate::stats::{self, Latency, Spread};

/// The rates a bare `syn-flood` runs, lowest first: no flood, three paced
/// floods, and the flooder's full rate.
pub const RATES: [Rate; 5] = [
    Rate::Off,
    Rate::Pps(50_000),
    Rate::Pps(100_000),
    Rate::Pps(200_000),
    Rate::Full,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rate {
    /// No flooder at all: the baseline.
    Off,
    /// The flooder's `--pps`.
    Pps(u64),
    /// The flooder without `--pps`.
    Full,
}

impl Rate {
    pub fn label(self) -> String {
        match self {
            Rate::Off => "none".into(),
            Rate::Pps(p) if p % 1000 == 0 => format!("{}k/s", p / 1000),
            Rate::Pps(p) => format!("{p}/s"),
            Rate::Full => "full".into(),
        }
    }

    /// `0` or `off`, `full`, or SYNs per second (`50000`, `50k`, `1.5m`).
    pub fn parse(tok: &str) -> Result<Rate, String> {
        let t = tok.trim().to_ascii_lowercase();
        match t.as_str() {
            "0" | "off" | "none" => return Ok(Rate::Off),
            "full" | "max" => return Ok(Rate::Full),
            _ => {}
        }
        let (num, mult) = match t.strip_suffix('k') {
            Some(n) => (n, 1e3),
            None => t.strip_suffix('m').map_or((t.as_str(), 1.0), |n| (n, 1e6)),
        };
        match num.parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 && v * mult < 1e9 => {
                let p = (v * mult).round() as u64;
                Ok(if p == 0 { Rate::Off } else { Rate::Pps(p) })
            }
            _ => Err(format!(
                "{tok:?} is not a SYN rate (0, full, or SYNs/s such as 50000 or 50k)"
            )),
        }
    }
}

/// What a scenario name asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub rates: Vec<Rate>,
    /// Flood from an address nobody holds, not the clients' own.
    pub spoofed: bool,
}

impl Plan {
    pub fn stem(&self) -> &'static str {
        if self.spoofed {
            "syn-flood-spoofed"
        } else {
            "syn-flood"
        }
    }
}

/// The plan a scenario name selects: None unless it is `syn-flood`,
/// `syn-flood-spoofed`, either with `=LIST` (comma-separated rates, run in
/// the order given).
pub fn parse(name: &str) -> Option<anyhow::Result<Plan>> {
    let (spoofed, rest) = match name.strip_prefix("syn-flood-spoofed") {
        Some(r) => (true, r),
        None => (false, name.strip_prefix("syn-flood")?),
    };
    let plan = |rates| Plan { rates, spoofed };
    if rest.is_empty() {
        return Some(Ok(plan(RATES.to_vec())));
    }
    let list = rest.strip_prefix('=')?;
    let rates: Result<Vec<Rate>, String> = list
        .split(',')
        .filter(|t| !t.trim().is_empty())
        .map(Rate::parse)
        .collect();
    Some(match rates {
        Ok(r) if r.is_empty() => Err(anyhow::anyhow!("{name}: no rates given")),
        Ok(r) => Ok(plan(r)),
        Err(e) => Err(anyhow::anyhow!(e)),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Side {
    Kernel,
    Turnstile,
}

impl Side {
    pub const ALL: [Side; 2] = [Side::Kernel, Side::Turnstile];

    pub fn name(self) -> &'static str {
        match self {
            Side::Kernel => "kernel (SYN cookies)",
            Side::Turnstile => "turnstile serve --app http",
        }
    }
}

/// One contender at one rate once.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Point {
    pub rate: Rate,
    pub side: Side,
    pub round: u32,
    /// SYNs/s the flooder reached over its whole run (its JSON's `pps`).
    pub flood_pps: f64,
    pub flood_sent: u64,
    /// The legitimate clients' report (its histogram included).
    pub client: Option<ClientReport>,
    /// SYN cookies the server sent during the run (kernel:
    /// TcpExtSyncookiesSent; turnstile: both paths).
    pub cookies_sent: Option<u64>,
    /// The server's own counters over the run, for the JSON.
    pub server_counters: BTreeMap<String, u64>,
    pub listening: Option<String>,
    pub error: Option<String>,
}

impl Point {
    pub fn new(rate: Rate, side: Side, round: u32) -> Point {
        Point {
            rate,
            side,
            round,
            flood_pps: 0.0,
            flood_sent: 0,
            client: None,
            cookies_sent: None,
            server_counters: BTreeMap::new(),
            listening: None,
            error: None,
        }
    }
}

/// A contender at a rate over all rounds.
#[derive(Debug, Default)]
struct Agg {
    flood_pps: Option<Spread>,
    ok: u64,
    /// Failed connections, still in flight at the end counted as failed.
    failed: u64,
    failures: BTreeMap<String, u64>,
    latency: Option<Latency>,
    cookies: Option<f64>,
    errors: Vec<String>,
}

impl Agg {
    fn of(points: &[&Point]) -> Agg {
        let mut a = Agg::default();
        let mut hist = stats::new_histogram();
        let mut pps = Vec::new();
        let mut cookies = Vec::new();
        for p in points {
            if let Some(e) = &p.error {
                a.errors.push(e.clone());
                continue;
            }
            pps.push(p.flood_pps);
            cookies.extend(p.cookies_sent.map(|c| c as f64));
            let Some(c) = &p.client else { continue };
            a.ok += c.ok;
            a.failed += c.failed() + c.unfinished;
            for (k, v) in &c.failures {
                *a.failures.entry(k.clone()).or_default() += v;
            }
            if c.unfinished > 0 {
                *a.failures.entry("unfinished".into()).or_default() += c.unfinished;
            }
            if let Ok(h) = stats::decode_histogram(&c.histogram) {
                stats::merge(&mut hist, &h);
            }
        }
        a.flood_pps = Spread::of(&pps);
        a.latency = Latency::of(&hist);
        a.cookies = Spread::of(&cookies).map(|s| s.median);
        a
    }

    fn success_pct(&self) -> Option<f64> {
        let n = self.ok + self.failed;
        (n > 0).then(|| 100.0 * self.ok as f64 / n as f64)
    }
}

fn thousands(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

pub fn ms(us: u64) -> String {
    let v = us as f64 / 1000.0;
    if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

/// The table: one row per rate and contender, rounds pooled (connections
/// summed, latency from the merged histograms, the flood's rate the median
/// of the rounds').
pub fn markdown(points: &[Point], rates: &[Rate]) -> String {
    let mut s = String::from(
        "| SYN rate asked | contender | SYN/s reached | ok | failed | success | p50 ms | p99 ms | SYN cookies sent |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for &rate in rates {
        for side in Side::ALL {
            let v: Vec<&Point> = points
                .iter()
                .filter(|p| p.rate == rate && p.side == side)
                .collect();
            if v.is_empty() {
                continue;
            }
            let a = Agg::of(&v);
            if a.errors.len() == v.len() {
                let e: String = a.errors[0].chars().take(120).collect();
                s.push_str(&format!(
                    "| {} | {} | error: {} | | | | | | |\n",
                    rate.label(),
                    side.name(),
                    e.replace('|', "/")
                ));
                continue;
            }
            let failed = if a.failed == 0 {
                "0".to_string()
            } else {
                format!(
                    "{} ({})",
                    a.failed,
                    crate::report::failures_text(&a.failures)
                )
            };
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                rate.label(),
                side.name(),
                match (rate, a.flood_pps) {
                    (Rate::Off, _) => "0".into(),
                    (_, Some(p)) => thousands(p.median.round() as u64),
                    _ => "-".into(),
                },
                thousands(a.ok),
                failed,
                a.success_pct().map_or("-".into(), |x| format!("{x:.2}%")),
                a.latency.map_or("-".into(), |l| ms(l.p50_us)),
                a.latency.map_or("-".into(), |l| ms(l.p99_us)),
                a.cookies
                    .map_or("-".into(), |c| thousands(c.round() as u64)),
            ));
            if !a.errors.is_empty() {
                s.push_str(&format!(
                    "| | | ({} of {} rounds failed: {}) | | | | | | |\n",
                    a.errors.len(),
                    v.len(),
                    a.errors[0].chars().take(80).collect::<String>()
                ));
            }
        }
    }
    s
}

/// `turnstile-bench report DIR`: the plots again from DIR/syn-flood*.json;
/// how many it found.
pub fn replot(dir: &Path) -> anyhow::Result<usize> {
    let mut n = 0;
    for spoofed in [false, true] {
        let mut plan = Plan {
            rates: Vec::new(),
            spoofed,
        };
        let Ok(text) = std::fs::read_to_string(dir.join(format!("{}.json", plan.stem()))) else {
            continue;
        };
        let points: Vec<Point> = serde_json::from_str(&text)?;
        for p in &points {
            if !plan.rates.contains(&p.rate) {
                plan.rates.push(p.rate);
            }
        }
        write_plot(dir, &points, &plan)?;
        n += 1;
    }
    Ok(n)
}

/// (SYN/s reached, a measure) points of one line.
type Points = Vec<(f64, f64)>;

/// The plot's lines: per contender, (SYN/s reached, success %) and
/// (SYN/s reached, p99 ms), one point per rate, sorted by the rate reached.
fn plot_points(points: &[Point], rates: &[Rate], side: Side) -> (Points, Points) {
    let (mut ok, mut p99) = (Vec::new(), Vec::new());
    for &rate in rates {
        let v: Vec<&Point> = points
            .iter()
            .filter(|p| p.rate == rate && p.side == side && p.error.is_none())
            .collect();
        if v.is_empty() {
            continue;
        }
        let a = Agg::of(&v);
        let x = if rate == Rate::Off {
            0.0
        } else {
            a.flood_pps.map_or(0.0, |s| s.median)
        };
        if let Some(pct) = a.success_pct() {
            ok.push((x, pct));
        }
        if let Some(l) = a.latency {
            p99.push((x, l.p99_us as f64 / 1000.0));
        }
    }
    ok.sort_by(|a, b| a.0.total_cmp(&b.0));
    p99.sort_by(|a, b| a.0.total_cmp(&b.0));
    (ok, p99)
}

pub fn write_plot(out: &Path, points: &[Point], plan: &Plan) -> anyhow::Result<()> {
    let rates = &plan.rates;
    if !crate::plot::init_font() {
        eprintln!("no TrueType font found (apt-get install fonts-dejavu-core): plot skipped");
        return Ok(());
    }
    let (mut ok, mut p99) = (Vec::new(), Vec::new());
    for (i, side) in Side::ALL.into_iter().enumerate() {
        let (a, b) = plot_points(points, rates, side);
        let line = |pts| crate::plot::Line {
            label: Some(side.name().to_string()),
            color: i,
            // Drawn over the kernel's: dashed, so equal values show both.
            dashed: side == Side::Turnstile,
            points: pts,
        };
        ok.push(line(a));
        p99.push(line(b));
    }
    crate::plot::write_xy(
        &out.join(plan.stem()),
        "SYN/s the flooder reached",
        &[
            crate::plot::Panel {
                title: format!(
                    "legitimate clients' success through a SYN flood{}",
                    if plan.spoofed {
                        " (spoofed source)"
                    } else {
                        ""
                    }
                ),
                y_label: "connections that succeeded, %".into(),
                lines: ok,
            },
            crate::plot::Panel {
                title: "their p99 latency (connect to whole response)".into(),
                y_label: "p99, ms".into(),
                lines: p99,
            },
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_lists_parse() {
        let rates = |n: &str| parse(n).unwrap().unwrap().rates;
        assert_eq!(rates("syn-flood"), RATES.to_vec());
        assert!(!parse("syn-flood").unwrap().unwrap().spoofed);
        let s = parse("syn-flood-spoofed=full").unwrap().unwrap();
        assert_eq!(
            (s.rates.clone(), s.spoofed, s.stem()),
            (vec![Rate::Full], true, "syn-flood-spoofed")
        );
        assert_eq!(
            rates("syn-flood=0, 50k,1.5m,120000,full"),
            vec![
                Rate::Off,
                Rate::Pps(50_000),
                Rate::Pps(1_500_000),
                Rate::Pps(120_000),
                Rate::Full
            ]
        );
        assert!(parse("syn-flood=50q").unwrap().is_err());
        assert!(parse("syn-flood=-5").unwrap().is_err());
        assert!(parse("syn-flood=").unwrap().is_err());
        assert!(parse("bulk").is_none());
        assert!(parse("syn-floods").is_none());
        assert!(parse("syn-flood-spoofedx").is_none());
        assert_eq!(Rate::Pps(50_000).label(), "50k/s");
        assert_eq!(Rate::Pps(1_234).label(), "1234/s");
    }

    fn point(rate: Rate, side: Side, round: u32, pps: f64, ok: u64, failed: u64) -> Point {
        let mut h = stats::new_histogram();
        for _ in 0..ok {
            h.record(if side == Side::Kernel { 1_000_000 } else { 100 })
                .unwrap();
        }
        let mut failures = BTreeMap::new();
        if failed > 0 {
            failures.insert("timeout".to_string(), failed);
        }
        let mut p = Point::new(rate, side, round);
        p.flood_pps = pps;
        p.cookies_sent = Some(1234);
        p.client = Some(ClientReport {
            ok,
            failures,
            histogram: stats::encode_histogram(&h),
            ..Default::default()
        });
        p
    }

    #[test]
    fn table_pools_rounds_and_marks_errors() {
        let mut err = Point::new(Rate::Full, Side::Turnstile, 1);
        err.error = Some("turnstile | did not start".into());
        let ps = vec![
            point(Rate::Off, Side::Kernel, 1, 0.0, 1000, 0),
            point(Rate::Off, Side::Turnstile, 1, 0.0, 2000, 0),
            point(Rate::Full, Side::Kernel, 1, 600_000.0, 90, 10),
            point(Rate::Full, Side::Kernel, 2, 700_000.0, 100, 0),
            err,
        ];
        let t = markdown(&ps, &[Rate::Off, Rate::Full]);
        let rows: Vec<&str> = t.lines().collect();
        assert_eq!(rows.len(), 2 + 4, "{t}");
        assert!(
            rows[2].starts_with("| none | kernel (SYN cookies) | 0 | 1,000 | 0 | 100.00% |"),
            "{t}"
        );
        assert!(rows[3].contains("| 0.10 | 0.10 | 1,234 |"), "{t}");
        assert!(
            rows[4].contains("| 650,000 | 190 | 10 (timeout 10) | 95.00% | 1000.4 |"),
            "{t}"
        );
        assert!(rows[5].contains("error: turnstile / did not start"), "{t}");
        let (ok, p99) = plot_points(&ps, &[Rate::Full, Rate::Off], Side::Kernel);
        assert_eq!(ok, vec![(0.0, 100.0), (650_000.0, 95.0)]);
        assert_eq!(p99.len(), 2);
        assert!(
            plot_points(&ps, &[Rate::Full], Side::Turnstile)
                .0
                .is_empty()
        );
    }
}
