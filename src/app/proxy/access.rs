//! The access log's shard side: one fixed-size record per finished session
//! pushed into the shard's own bounded ring (a lock-free `ArrayQueue`, no
//! allocation, never waits); when the ring is full the record is dropped
//! and counted. A logging thread (`sidecar::access_log`) drains every ring
//! and writes the JSON lines.

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam::queue::ArrayQueue;

/// How a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Both legs closed in order (FINs both ways).
    Closed,
    /// The client reset its leg (or its leg timed out in the engine).
    ClientReset,
    /// The backend reset its leg after bytes were relayed.
    BackendReset,
    /// Reset by us for inactivity (`idle_ms`).
    Timeout,
    /// No backend could be connected (or none had a slot in time, or
    /// `retries` other backends failed too).
    NoBackend,
    /// Reset by us: half-closed and inactive for `client_fin_ms`.
    ClientFinTimeout,
    /// Reset by us at `max_session_ms`.
    MaxSession,
    /// `accept_proxy`: no valid PROXY header in time.
    BadProxyHeader,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::ClientReset => "reset_by_client",
            End::BackendReset => "reset_by_backend",
            End::Timeout => "timeout",
            End::NoBackend => "no_backend",
            End::ClientFinTimeout => "timeout_client_fin",
            End::MaxSession => "timeout_max_session",
            End::BadProxyHeader => "bad_proxy_header",
        }
    }
}

/// One finished session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// When it ended, microseconds since the Unix epoch (the shard clock).
    pub end_us: u64,
    pub duration_us: u64,
    pub client: SocketAddrV4,
    pub listener: u16,
    /// The last backend tried (none when none was).
    pub backend: Option<SocketAddrV4>,
    /// Bytes relayed client -> backend and backend -> client.
    pub bytes_to_backend: u64,
    pub bytes_from_backend: u64,
    pub end: End,
}

impl Record {
    /// The JSON line (without the newline).
    pub fn json(&self) -> String {
        let secs = self.end_us / 1_000_000;
        let backend = match self.backend {
            Some(b) => format!("\"{b}\""),
            None => "null".into(),
        };
        format!(
            "{{\"time\":\"{}.{:06}Z\",\"client\":\"{}\",\"listener\":{},\"backend\":{},\"bytes_to_backend\":{},\"bytes_from_backend\":{},\"duration_ms\":{}.{:03},\"end\":\"{}\"}}",
            rfc3339(secs),
            self.end_us % 1_000_000,
            self.client,
            self.listener,
            backend,
            self.bytes_to_backend,
            self.bytes_from_backend,
            self.duration_us / 1000,
            self.duration_us % 1000,
            self.end.as_str()
        )
    }
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) for Unix seconds (the civil-from-days
/// algorithm of H. Hinnant's date library; no time crate for one format).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Every shard's ring and the counters.
pub struct AccessLog {
    capacity: usize,
    rings: Mutex<Vec<Arc<ArrayQueue<Record>>>>,
    /// Records taken by the logging thread (written).
    pub written: AtomicU64,
    /// Records dropped because their shard's ring was full.
    pub dropped: AtomicU64,
}

impl AccessLog {
    /// Rings of `capacity` records per shard.
    pub fn new(capacity: usize) -> Self {
        AccessLog {
            capacity: capacity.max(1),
            rings: Mutex::new(Vec::new()),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// A shard's ring (at its start; never on the fast path).
    pub fn ring(self: &Arc<Self>) -> Ring {
        let q = Arc::new(ArrayQueue::new(self.capacity));
        self.rings.lock().expect("rings lock").push(q.clone());
        Ring {
            q,
            log: self.clone(),
        }
    }

    /// Takes every record queued now, shard by shard (the logging thread).
    pub fn drain(&self, mut f: impl FnMut(Record)) {
        let rings = self.rings.lock().expect("rings lock").clone();
        for q in rings {
            while let Some(r) = q.pop() {
                self.written.fetch_add(1, Ordering::Relaxed);
                f(r);
            }
        }
    }
}

/// One shard's end of the log.
pub struct Ring {
    q: Arc<ArrayQueue<Record>>,
    log: Arc<AccessLog>,
}

impl Ring {
    /// Queues `r`; a full ring drops it (counted) rather than wait.
    #[inline]
    pub fn push(&self, r: Record) {
        if self.q.push(r).is_err() {
            self.log.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: u64) -> Record {
        Record {
            end_us: 1_764_639_000_123_456 + i,
            duration_us: 1_500,
            client: "198.18.0.2:40000".parse().unwrap(),
            listener: 80,
            backend: Some("198.18.0.10:9000".parse().unwrap()),
            bytes_to_backend: 10,
            bytes_from_backend: 20,
            end: End::Closed,
        }
    }

    #[test]
    fn a_full_ring_drops_and_counts_and_the_rest_is_drained() {
        let log = Arc::new(AccessLog::new(4));
        let (a, b) = (log.ring(), log.ring());
        for i in 0..10 {
            a.push(record(i));
        }
        b.push(record(100));
        assert_eq!(log.dropped.load(Ordering::Relaxed), 6);
        let mut got = Vec::new();
        log.drain(|r| got.push(r.end_us - 1_764_639_000_123_456));
        assert_eq!(got, vec![0, 1, 2, 3, 100]);
        assert_eq!(log.written.load(Ordering::Relaxed), 5);
        // Room again once drained.
        a.push(record(7));
        assert_eq!(log.dropped.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn lines_are_json_with_every_field() {
        let line = record(0).json();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "2025-12-02T01:30:00.123456Z");
        assert_eq!(v["client"], "198.18.0.2:40000");
        assert_eq!(v["listener"], 80);
        assert_eq!(v["backend"], "198.18.0.10:9000");
        assert_eq!(v["bytes_to_backend"], 10);
        assert_eq!(v["bytes_from_backend"], 20);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["end"], "closed");
        let none = Record {
            backend: None,
            end: End::NoBackend,
            ..record(0)
        };
        let v: serde_json::Value = serde_json::from_str(&none.json()).unwrap();
        assert!(v["backend"].is_null());
        assert_eq!(v["end"], "no_backend");
    }
}
