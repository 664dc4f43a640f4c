//! Chores shared by the integration tests, the benchmark harness and
//! `turnstile demo`, kept here so there is one copy of each: scraping the
//! Prometheus endpoint, and waiting for a child's readiness line. (Joining a
//! namespace is [`crate::topology::enter_netns`].)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `GET /metrics` over plain HTTP/1.0 from the calling thread's namespace;
/// returns the body (Prometheus text). `timeout` bounds the connect and each
/// read.
pub fn scrape(addr: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: turnstile\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let Some((head, body)) = resp.split_once("\r\n\r\n") else {
        return Err(std::io::Error::other(format!(
            "no HTTP response from {addr}: {resp:?}"
        )));
    };
    if !head.starts_with("HTTP/1.") || head.split(' ').nth(1).is_none_or(|c| c != "200") {
        return Err(std::io::Error::other(format!(
            "{addr}/metrics answered {:?}",
            head.lines().next().unwrap_or("")
        )));
    }
    Ok(body.to_string())
}

/// Why [`Lines::wait_line`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("it exited (closed its output) before printing a `{0}` line")]
    Exited(String),
    #[error("no `{prefix}` line within {limit:?}")]
    Timeout { prefix: String, limit: Duration },
    #[error("stopped while waiting for a `{0}` line")]
    Stopped(String),
}

/// A child's output read line by line on a thread of its own, so the child
/// never blocks on a full pipe; lines are kept (up to 256 KiB) and handed to
/// [`Lines::wait_line`].
pub struct Lines {
    rx: Receiver<String>,
    kept: Arc<Mutex<String>>,
}

const KEEP: usize = 256 * 1024;

impl Lines {
    pub fn spawn(out: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = channel();
        let kept = Arc::new(Mutex::new(String::new()));
        let keep = kept.clone();
        std::thread::spawn(move || {
            // Keep reading after the receiver is gone: the pipe must drain.
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                {
                    let mut k = keep.lock().unwrap_or_else(|e| e.into_inner());
                    if k.len() < KEEP {
                        k.push_str(&line);
                        k.push('\n');
                    }
                }
                let _ = tx.send(line);
            }
        });
        Lines { rx, kept }
    }

    /// Waits, at most `limit`, for a line starting with `prefix` (a readiness
    /// line; `""` takes the first line), or until `stop` is set.
    pub fn wait_line(
        &self,
        prefix: &str,
        limit: Duration,
        stop: &AtomicBool,
    ) -> Result<String, WaitError> {
        let deadline = Instant::now() + limit;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Err(WaitError::Stopped(prefix.into()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WaitError::Timeout {
                    prefix: prefix.into(),
                    limit,
                });
            }
            match self.rx.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(WaitError::Exited(prefix.into()));
                }
            }
        }
    }

    /// Everything read so far (up to 256 KiB).
    pub fn text(&self) -> String {
        self.kept.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn scrape_returns_the_body_and_rejects_errors() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            for resp in [
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nturnstile_time_wait 7\n",
                "HTTP/1.0 404 Not Found\r\n\r\n",
            ] {
                let (mut s, _) = l.accept().unwrap();
                let mut req = [0u8; 256];
                let _ = s.read(&mut req);
                s.write_all(resp.as_bytes()).unwrap();
            }
        });
        let body = scrape(addr, Duration::from_secs(5)).unwrap();
        assert_eq!(body, "turnstile_time_wait 7\n");
        let err = scrape(addr, Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("404"), "{err}");
        t.join().unwrap();
    }

    #[test]
    fn wait_line_finds_the_prefix_or_says_why_not() {
        let never = AtomicBool::new(false);
        let lines = Lines::spawn(&b"starting\nlistening on 1\nmore\n"[..]);
        assert_eq!(
            lines
                .wait_line("listening", Duration::from_secs(5), &never)
                .unwrap(),
            "listening on 1"
        );
        assert!(matches!(
            lines.wait_line("ready", Duration::from_secs(5), &never),
            Err(WaitError::Exited(_))
        ));
        assert!(lines.text().contains("starting\n"));

        let (r, _w) = std::io::pipe().unwrap();
        let silent = Lines::spawn(r);
        assert!(matches!(
            silent.wait_line("x", Duration::from_millis(100), &never),
            Err(WaitError::Timeout { .. })
        ));
        let stop = AtomicBool::new(true);
        assert!(matches!(
            silent.wait_line("x", Duration::from_secs(5), &stop),
            Err(WaitError::Stopped(_))
        ));
    }
}
