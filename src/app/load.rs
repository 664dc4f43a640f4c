//! `load`: a load generator of short HTTP connections on turnstile's own
//! active opens. Each connection: connect, send one request, read the whole
//! response, check it, close first (so TIME_WAIT is ours), then the next.

use std::net::SocketAddrV4;

use hdrhistogram::Histogram;
use rustc_hash::FxHashMap;

use super::{App, Ctx, OpenError};
use crate::tcp::{ConnId, ConnectError, Event, Instant};

#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub target: SocketAddrV4,
    /// Connections this shard opens in all.
    pub total: u64,
    /// Connections open at once.
    pub concurrency: usize,
    pub request: Vec<u8>,
    /// When set, the body every response must carry.
    pub expect_body: Option<Vec<u8>>,
}

/// What one shard's generator counted.
#[derive(Clone, Debug)]
pub struct LoadReport {
    pub ok: u64,
    pub failed_no_port: u64,
    pub failed_refused: u64,
    pub failed_timeout: u64,
    pub failed_reset: u64,
    pub failed_bad_response: u64,
    pub failed_other: u64,
    /// Connect to complete response, microseconds.
    pub latency_us: Histogram<u64>,
}

impl LoadReport {
    pub fn failed(&self) -> u64 {
        self.failed_no_port
            + self.failed_refused
            + self.failed_timeout
            + self.failed_reset
            + self.failed_bad_response
            + self.failed_other
    }

    pub fn merge(&mut self, other: &LoadReport) {
        self.ok += other.ok;
        self.failed_no_port += other.failed_no_port;
        self.failed_refused += other.failed_refused;
        self.failed_timeout += other.failed_timeout;
        self.failed_reset += other.failed_reset;
        self.failed_bad_response += other.failed_bad_response;
        self.failed_other += other.failed_other;
        let _ = self.latency_us.add(&other.latency_us);
    }
}

impl Default for LoadReport {
    fn default() -> Self {
        LoadReport {
            ok: 0,
            failed_no_port: 0,
            failed_refused: 0,
            failed_timeout: 0,
            failed_reset: 0,
            failed_bad_response: 0,
            failed_other: 0,
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        }
    }
}

/// Response parsing state of one connection, in a reused slab slot.
struct Slot {
    started: Instant,
    head: [u8; 512],
    head_len: usize,
    /// Body bytes still expected once the head is parsed.
    body_left: Option<usize>,
    body_seen: usize,
    body_ok: bool,
}

pub struct Load {
    cfg: LoadConfig,
    started: u64,
    pub report: LoadReport,
    conns: FxHashMap<ConnId, usize>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    scratch: Vec<u8>,
    last_error: Option<String>,
    /// Every port to the target is in TIME_WAIT, younger than the reuse
    /// delay: opens wait until then instead of failing.
    retry_at: Option<Instant>,
}

impl Load {
    pub fn new(cfg: LoadConfig) -> Self {
        let n = cfg.concurrency.max(1);
        Load {
            slots: (0..n)
                .map(|_| Slot {
                    started: Instant::default(),
                    head: [0; 512],
                    head_len: 0,
                    body_left: None,
                    body_seen: 0,
                    body_ok: true,
                })
                .collect(),
            free: (0..n).rev().collect(),
            conns: FxHashMap::default(),
            cfg,
            started: 0,
            report: LoadReport::default(),
            scratch: vec![0; 16 * 1024],
            last_error: None,
            retry_at: None,
        }
    }

    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    fn open_more(&mut self, ctx: &mut Ctx<'_>) {
        if self.retry_at.is_some_and(|t| ctx.now() < t) {
            return;
        }
        self.retry_at = None;
        while self.started < self.cfg.total && !self.free.is_empty() {
            self.started += 1;
            match ctx.connect(self.cfg.target) {
                Ok(id) => {
                    let slot = self.free.pop().expect("checked non-empty");
                    let s = &mut self.slots[slot];
                    s.started = ctx.now();
                    s.head_len = 0;
                    s.body_left = None;
                    s.body_seen = 0;
                    s.body_ok = true;
                    self.conns.insert(id, slot);
                }
                Err(OpenError::Connect(ConnectError::NoPort)) => {
                    if let Some(at) = ctx.next_reuse_at(self.cfg.target) {
                        // Like a client whose connect() would succeed in a
                        // moment: wait for the reuse delay, do not fail.
                        self.started -= 1;
                        self.retry_at = Some(at);
                        return;
                    }
                    self.report.failed_no_port += 1;
                    self.last_error = Some(ConnectError::NoPort.to_string());
                }
                Err(e) => {
                    self.report.failed_other += 1;
                    self.last_error = Some(e.to_string());
                }
            }
        }
    }

    fn finish(&mut self, id: ConnId) {
        if let Some(slot) = self.conns.remove(&id) {
            self.free.push(slot);
        }
    }

    /// Feeds received bytes; Ok(true) once a whole, valid response is in.
    fn feed(&mut self, slot: usize, bytes: &[u8]) -> Result<bool, ()> {
        let expect = self.cfg.expect_body.as_deref();
        let s = &mut self.slots[slot];
        if s.body_left.is_some() {
            return take_body(expect, s, bytes);
        }
        let take = bytes.len().min(s.head.len() - s.head_len);
        s.head[s.head_len..s.head_len + take].copy_from_slice(&bytes[..take]);
        s.head_len += take;
        let Some(end) = s.head[..s.head_len]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
        else {
            return if s.head_len == s.head.len() {
                Err(())
            } else {
                Ok(false)
            };
        };
        let head = std::str::from_utf8(&s.head[..end]).map_err(|_| ())?;
        if !(head.starts_with("HTTP/1.1 200 ") || head.starts_with("HTTP/1.0 200 ")) {
            return Err(());
        }
        let len = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .ok_or(())?;
        s.body_left = Some(len);
        // Body bytes that arrived with the head sit in `head` after the blank
        // line; copy them out (stack, no heap) before checking them.
        let mut early = [0u8; 512];
        let n = s.head_len - (end + 4);
        early[..n].copy_from_slice(&s.head[end + 4..s.head_len]);
        let done = take_body(expect, s, &early[..n])?;
        if take == bytes.len() {
            Ok(done)
        } else {
            take_body(expect, s, &bytes[take..])
        }
    }
}

fn take_body(expect: Option<&[u8]>, s: &mut Slot, bytes: &[u8]) -> Result<bool, ()> {
    let left = s.body_left.ok_or(())?;
    if bytes.len() > left {
        return Err(());
    }
    if let Some(expect) = expect
        && expect.get(s.body_seen..s.body_seen + bytes.len()) != Some(bytes)
    {
        s.body_ok = false;
    }
    s.body_seen += bytes.len();
    s.body_left = Some(left - bytes.len());
    if left != bytes.len() {
        return Ok(false);
    }
    if s.body_ok && expect.is_none_or(|e| e.len() == s.body_seen) {
        Ok(true)
    } else {
        Err(())
    }
}

impl App for Load {
    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        self.open_more(ctx);
    }

    fn on_event(&mut self, ctx: &mut Ctx<'_>, id: ConnId, event: Event) {
        let Some(&slot) = self.conns.get(&id) else {
            return; // closed by us already: Closed and stray events
        };
        match event {
            Event::Connected => {
                let _ = ctx.send(id, &self.cfg.request);
            }
            Event::Readable | Event::PeerClosed => {
                let mut outcome = Ok(false);
                while let Ok(n) = ctx.recv(id, &mut self.scratch) {
                    if n == 0 {
                        break;
                    }
                    let data = std::mem::take(&mut self.scratch);
                    outcome = self.feed(slot, &data[..n]);
                    self.scratch = data;
                    if !matches!(outcome, Ok(false)) {
                        break;
                    }
                }
                match outcome {
                    Ok(true) => {
                        let started = self.slots[slot].started;
                        let us = ctx.now().saturating_duration_since(started).as_micros() as u64;
                        let _ = self.report.latency_us.record(us.max(1));
                        self.report.ok += 1;
                        self.finish(id);
                        let _ = ctx.close(id);
                    }
                    Ok(false) if event == Event::PeerClosed => {
                        self.report.failed_bad_response += 1;
                        self.finish(id);
                        let _ = ctx.close(id);
                    }
                    Ok(false) => {}
                    Err(()) => {
                        self.report.failed_bad_response += 1;
                        self.finish(id);
                        let _ = ctx.abort(id);
                    }
                }
            }
            Event::Refused => {
                self.report.failed_refused += 1;
                self.finish(id);
            }
            Event::TimedOut => {
                self.report.failed_timeout += 1;
                self.finish(id);
            }
            Event::Unreachable => {
                self.report.failed_other += 1;
                self.last_error = Some("the target's MAC address could not be resolved".into());
                self.finish(id);
            }
            Event::Reset => {
                self.report.failed_reset += 1;
                self.finish(id);
            }
            Event::Closed => {
                self.report.failed_bad_response += 1;
                self.finish(id);
            }
            Event::Accepted { .. } | Event::Writable => {}
        }
    }

    fn on_tick(&mut self, ctx: &mut Ctx<'_>) {
        self.open_more(ctx);
    }

    fn finished(&self) -> bool {
        self.started >= self.cfg.total && self.conns.is_empty()
    }
}
