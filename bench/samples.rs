//! What a run's samples say: counter growth, per-second series, TIME_WAIT
//! series, and `turnstile load`'s report line read as a client report.

use std::collections::BTreeMap;

use anyhow::Context;

use crate::kernel_client::{ClientReport, KINDS};
use crate::netns::NsSample;

/// How much each turnstile counter grew over the run (gauges: last value).
pub fn counter_deltas(samples: &[NsSample]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return out;
    };
    for (k, v) in &last.metrics {
        let gauge = !k.contains("_total");
        let base = if gauge {
            0
        } else {
            first.metrics.get(k).copied().unwrap_or(0)
        };
        out.insert(k.clone(), v.saturating_sub(base));
    }
    out
}

/// Kernel TIME_WAIT plus turnstile's own gauge, per sample.
pub fn tw_series(samples: &[NsSample]) -> Vec<u64> {
    samples
        .iter()
        .map(|s| s.tw_kernel + s.metrics.get("turnstile_time_wait").copied().unwrap_or(0))
        .collect()
}

/// Per-second increases of a counter over the run's first `duration` seconds.
pub fn per_second(samples: &[NsSample], name: &str, duration: f64) -> Vec<f64> {
    let secs = duration.floor() as usize;
    let v: Vec<Option<u64>> = samples
        .iter()
        .map(|s| s.metrics.get(name).copied())
        .collect();
    v.windows(2)
        .take(secs)
        .map(|w| match (w[0], w[1]) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64,
            // Not up yet at the start of this second: count from 0.
            (None, Some(b)) => b as f64,
            _ => 0.0,
        })
        .collect()
}

/// `turnstile load`'s one JSON line as a [`ClientReport`] (percentiles only).
pub fn from_turnstile_load(line: &str) -> anyhow::Result<ClientReport> {
    let v: serde_json::Value = serde_json::from_str(line).context("turnstile load report")?;
    let mut rep = ClientReport {
        ok: v["ok"]
            .as_u64()
            .context("no `ok` in turnstile load report")?,
        elapsed_s: v["elapsed_s"].as_f64().unwrap_or(0.0),
        last_error: v["last_error"].as_str().map(str::to_string),
        ..Default::default()
    };
    for k in KINDS {
        rep.failures
            .insert(k.to_string(), v["failures"][k].as_u64().unwrap_or(0));
    }
    let l = &v["latency_us"];
    if rep.ok > 0 {
        rep.latency = Some(crate::stats::Latency {
            p50_us: l["p50"].as_u64().unwrap_or(0),
            p99_us: l["p99"].as_u64().unwrap_or(0),
            p999_us: l["p999"].as_u64().unwrap_or(0),
            max_us: l["p999"].as_u64().unwrap_or(0),
            count: rep.ok,
        });
    }
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turnstile_load_line_is_read() {
        let line = r#"{"connections":100,"ok":90,"failed":10,"failures":{"no_port":7,"refused":0,"timeout":1,"reset":2,"bad_response":0,"other":0},"elapsed_s":1.5,"rate_per_s":60.0,"latency_us":{"p50":80,"p99":900,"p999":1500},"interrupted":true,"last_error":"no port"}"#;
        let r = from_turnstile_load(line).unwrap();
        assert_eq!((r.ok, r.failed(), r.failures["no_port"]), (90, 10, 7));
        assert_eq!(r.latency.unwrap().p99_us, 900);
        assert!(from_turnstile_load("{}").is_err());
    }

    #[test]
    fn counter_deltas_per_second() {
        let s = |m: Option<u64>| NsSample {
            metrics: m.map(|v| [("c".to_string(), v)].into()).unwrap_or_default(),
            ..Default::default()
        };
        let v = [s(None), s(Some(5)), s(Some(15)), s(Some(15)), s(Some(40))];
        assert_eq!(per_second(&v, "c", 3.0), vec![5.0, 10.0, 0.0]);
        assert_eq!(per_second(&v, "c", 10.0).len(), 4);
    }

    #[test]
    fn counters_grow_gauges_stay() {
        let s = |tw: u64, acc: u64| NsSample {
            metrics: [
                ("turnstile_time_wait".to_string(), tw),
                ("turnstile_connections_accepted_total".to_string(), acc),
            ]
            .into(),
            ..Default::default()
        };
        let d = counter_deltas(&[s(5, 100), s(9, 150), s(7, 400)]);
        assert_eq!(d["turnstile_time_wait"], 7);
        assert_eq!(d["turnstile_connections_accepted_total"], 300);
        assert!(counter_deltas(&[]).is_empty());
    }
}
