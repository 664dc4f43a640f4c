//! Sampling a namespace once a second from a thread that has joined it
//! (`turnstile::topology::enter_netns`: setns affects only the calling thread): the kernel's TIME_WAIT count from
//! /proc/thread-self/net/sockstat, and chosen turnstile metrics scraped over
//! the namespace's own loopback. No process is spawned per sample.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// One sample of one namespace.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NsSample {
    /// Seconds since the run's start.
    pub t: f64,
    /// Kernel sockets in TIME_WAIT in this namespace.
    pub tw_kernel: u64,
    /// Selected turnstile metrics (absent when not scraped or unreachable).
    pub metrics: BTreeMap<String, u64>,
}

/// The `tw` field of /proc/net/sockstat's TCP line.
pub fn parse_sockstat_tw(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    while let Some(k) = it.next() {
        if k == "tw" {
            return it.next()?.parse().ok();
        }
    }
    None
}

/// Counts TIME-WAIT lines in `ss -tan` output (the cross-check of sockstat
/// in the ignored smoke test).
#[cfg(test)]
pub fn parse_ss_time_wait(text: &str) -> u64 {
    text.lines()
        .filter(|l| l.split_whitespace().next() == Some("TIME-WAIT"))
        .count() as u64
}

pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<NsSample>>>,
}

impl Sampler {
    /// Samples `netns` at t = 0, 1, 2 ... s after `t0` until stopped.
    pub fn start(
        netns: &str,
        t0: Instant,
        metrics: Option<SocketAddr>,
        names: Vec<String>,
    ) -> anyhow::Result<Sampler> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let ns = netns.to_string();
        let s = stop.clone();
        let handle = std::thread::Builder::new()
            .name(format!("sample-{netns}"))
            .spawn(move || {
                if let Err(e) = turnstile::topology::enter_netns(&ns) {
                    let _ = tx.send(Err(anyhow::Error::from(e)));
                    return Vec::new();
                }
                let _ = tx.send(Ok(()));
                let mut out = Vec::new();
                let mut k = 0u32;
                while !s.load(Ordering::Relaxed) {
                    let at = t0 + Duration::from_secs(k.into());
                    let now = Instant::now();
                    if now < at {
                        std::thread::sleep((at - now).min(Duration::from_millis(50)));
                        continue;
                    }
                    let mut sample = NsSample {
                        t: t0.elapsed().as_secs_f64(),
                        ..Default::default()
                    };
                    sample.tw_kernel = std::fs::read_to_string("/proc/thread-self/net/sockstat")
                        .ok()
                        .and_then(|t| parse_sockstat_tw(&t))
                        .unwrap_or(0);
                    if let Some(text) = metrics.and_then(|a| {
                        turnstile::testkit::scrape(a, Duration::from_millis(500)).ok()
                    }) {
                        for n in &names {
                            if let Some(v) = turnstile::metrics::sample(&text, n) {
                                sample.metrics.insert(n.clone(), v);
                            }
                        }
                    }
                    out.push(sample);
                    k += 1;
                }
                out
            })?;
        rx.recv().context("sampler thread")??;
        Ok(Sampler {
            stop,
            handle: Some(handle),
        })
    }

    pub fn finish(mut self) -> Vec<NsSample> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockstat_tw() {
        let t =
            "sockets: used 140\nTCP: inuse 5 orphan 0 tw 14023 alloc 9 mem 1\nUDP: inuse 0 mem 0\n";
        assert_eq!(parse_sockstat_tw(t), Some(14023));
        assert_eq!(parse_sockstat_tw("UDP: inuse 0\n"), None);
        assert_eq!(parse_sockstat_tw("TCP: inuse 5 tw\n"), None);
    }

    #[test]
    fn ss_time_wait_lines() {
        let t = "State      Recv-Q Send-Q Local Address:Port Peer Address:Port\n\
                 TIME-WAIT  0      0      198.18.7.2:40000  198.18.7.1:80\n\
                 ESTAB      0      0      198.18.7.2:40002  198.18.7.1:80\n\
                 TIME-WAIT  0      0      198.18.7.2:40004  198.18.7.1:80\n";
        assert_eq!(parse_ss_time_wait(t), 2);
        assert_eq!(parse_ss_time_wait(""), 0);
    }
}
