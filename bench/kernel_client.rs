//! The kernel contender's load generator: epoll over non-blocking sockets,
//! `concurrency` connections in flight per thread. Each connection: connect,
//! send one small GET, read the response and compare it byte for byte with
//! the one response both servers send, then close (after the server's FIN
//! in accept-churn, first in connect-churn). Every other ending is counted
//! by kind. Prints one JSON line: a [`ClientReport`].

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddrV4;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use turnstile::app::http::RESPONSE;

use crate::stats::{self, Latency};
use crate::sys::{self, EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, EPOLLRDHUP, Epoll};

/// When the client closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientClose {
    /// After the whole response and the server's FIN (the server closes first).
    AfterServer,
    /// As soon as the whole response is in (the client closes first).
    First,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ClientArgs {
    #[arg(long)]
    pub target: SocketAddrV4,
    /// Connections in flight, split between threads.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Seconds to open connections; in-flight ones then get `--drain-s`.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    #[arg(long, default_value_t = 2.0)]
    pub drain_s: f64,
    #[arg(long, value_enum, default_value = "after-server")]
    pub close: ClientClose,
    /// A connection not done after this many seconds is a timeout.
    #[arg(long, default_value_t = 5.0)]
    pub timeout_s: f64,
}

/// Failure kinds, the same names for every client.
pub const KINDS: [&str; 6] = [
    "no_port",
    "refused",
    "reset",
    "timeout",
    "bad_response",
    "other",
];

/// What one client run counted; also what the harness reads back.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClientReport {
    pub ok: u64,
    /// By kind (see [`KINDS`]).
    pub failures: BTreeMap<String, u64>,
    /// Good connections finished in each second since the start.
    pub ok_per_s: Vec<u64>,
    pub failed_per_s: Vec<u64>,
    pub elapsed_s: f64,
    /// Still in flight when the drain time ran out (not failures).
    pub unfinished: u64,
    pub latency: Option<Latency>,
    /// Hex V2 hdrhistogram of connect-to-response latency, microseconds.
    pub histogram: String,
    pub last_error: Option<String>,
}

impl ClientReport {
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
}

fn kind_of(errno: i32) -> &'static str {
    match errno {
        libc::EADDRNOTAVAIL | libc::EADDRINUSE => "no_port",
        libc::ECONNREFUSED => "refused",
        libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED => "reset",
        libc::ETIMEDOUT => "timeout",
        _ => "other",
    }
}

fn errno_text(e: i32) -> String {
    std::io::Error::from_raw_os_error(e).to_string()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Free,
    Connecting,
    Reading,
}

#[derive(Clone, Copy)]
struct Slot {
    fd: RawFd,
    phase: Phase,
    started: Instant,
    /// Bytes of RESPONSE received and matched so far.
    got: usize,
    /// Connect to complete response, once complete.
    latency_us: u64,
}

/// What one thread counted.
struct Tally {
    ok: u64,
    failures: BTreeMap<String, u64>,
    ok_per_s: Vec<u64>,
    failed_per_s: Vec<u64>,
    hist: Histogram<u64>,
    unfinished: u64,
    last_error: Option<String>,
    start: Instant,
}

impl Tally {
    fn second(&self, now: Instant) -> usize {
        now.saturating_duration_since(self.start).as_secs() as usize
    }

    fn bump(v: &mut Vec<u64>, i: usize) {
        if v.len() <= i {
            v.resize(i + 1, 0);
        }
        v[i] += 1;
    }

    fn fail(&mut self, kind: &str, why: String) {
        *self.failures.entry(kind.to_string()).or_default() += 1;
        let i = self.second(Instant::now());
        Self::bump(&mut self.failed_per_s, i);
        self.last_error = Some(why);
    }

    fn good(&mut self, latency_us: u64, now: Instant) {
        self.ok += 1;
        let i = self.second(now);
        Self::bump(&mut self.ok_per_s, i);
        self.hist.saturating_record(latency_us.max(1));
    }
}

/// Where a response stands after more bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    Partial(usize),
    Complete,
    Bad,
}

/// Compares `bytes`, arriving at offset `got`, with the expected response.
pub fn check_response(expected: &[u8], got: usize, bytes: &[u8]) -> Check {
    let end = got + bytes.len();
    if end > expected.len() || expected[got..end] != *bytes {
        Check::Bad
    } else if end == expected.len() {
        Check::Complete
    } else {
        Check::Partial(end)
    }
}

pub fn run(args: ClientArgs) -> anyhow::Result<()> {
    let threads = args.threads.max(1);
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let mut a = args.clone();
            a.concurrency =
                args.concurrency / threads + usize::from(i < args.concurrency % threads);
            std::thread::spawn(move || drive(&a, start))
        })
        .collect();
    let mut report = ClientReport::default();
    let mut hist = stats::new_histogram();
    for h in handles {
        let t = h
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        report.ok += t.ok;
        for (k, v) in t.failures {
            *report.failures.entry(k).or_default() += v;
        }
        add_series(&mut report.ok_per_s, &t.ok_per_s);
        add_series(&mut report.failed_per_s, &t.failed_per_s);
        stats::merge(&mut hist, &t.hist);
        report.unfinished += t.unfinished;
        if t.last_error.is_some() {
            report.last_error = t.last_error;
        }
    }
    report.elapsed_s = start.elapsed().as_secs_f64();
    // Seconds past the opening window are the drain: not a rate.
    let secs = args.duration.ceil() as usize;
    report.ok_per_s.resize(secs.max(report.ok_per_s.len()), 0);
    report.failed_per_s.resize(report.ok_per_s.len(), 0);
    report.latency = Latency::of(&hist);
    report.histogram = stats::encode_histogram(&hist);
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &report)?;
    writeln!(out)?;
    Ok(())
}

pub fn add_series(into: &mut Vec<u64>, from: &[u64]) {
    if into.len() < from.len() {
        into.resize(from.len(), 0);
    }
    for (a, b) in into.iter_mut().zip(from) {
        *a += b;
    }
}

fn drive(args: &ClientArgs, start: Instant) -> anyhow::Result<Tally> {
    let ep = Epoll::new()?;
    let conc = args.concurrency.max(1);
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nUser-Agent: turnstile-bench\r\n\r\n",
        args.target
    )
    .into_bytes();
    let target = sys::sockaddr(args.target);
    let open_until = start + Duration::from_secs_f64(args.duration);
    let give_up = open_until + Duration::from_secs_f64(args.drain_s);
    let timeout = Duration::from_secs_f64(args.timeout_s);
    let mut slots = vec![
        Slot {
            fd: -1,
            phase: Phase::Free,
            started: start,
            got: 0,
            latency_us: 0,
        };
        conc
    ];
    let mut free: Vec<usize> = (0..conc).rev().collect();
    let mut t = Tally {
        ok: 0,
        failures: BTreeMap::new(),
        ok_per_s: Vec::new(),
        failed_per_s: Vec::new(),
        hist: stats::new_histogram(),
        unfinished: 0,
        last_error: None,
        start,
    };
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; conc.max(16)];
    let mut buf = vec![0u8; 4096];
    let mut last_sweep = Instant::now();
    loop {
        let now = Instant::now();
        let opening = now < open_until;
        let mut open_failed = false;
        if opening {
            // At most one attempt per free slot per turn of the loop.
            for _ in 0..free.len() {
                let Some(i) = free.pop() else { break };
                match open(&ep, &target, i) {
                    Ok(fd) => {
                        slots[i] = Slot {
                            fd,
                            phase: Phase::Connecting,
                            started: Instant::now(),
                            got: 0,
                            latency_us: 0,
                        };
                    }
                    Err(e) => {
                        t.fail(kind_of(e), format!("connect: {}", errno_text(e)));
                        free.push(i);
                        open_failed = true;
                        break;
                    }
                }
            }
        }
        let in_flight = conc - free.len();
        if !opening && (in_flight == 0 || now >= give_up) {
            t.unfinished = in_flight as u64;
            for s in slots.iter().filter(|s| s.phase != Phase::Free) {
                sys::close(s.fd);
            }
            break;
        }
        // A failed connect() (no port) is retried after 1 ms, not in a spin.
        let wait_ms = if open_failed { 1 } else { 50 };
        let n = ep.wait(&mut events, wait_ms);
        for ev in &events[..n] {
            let i = ev.u64 as usize;
            let flags = ev.events;
            if slots[i].phase == Phase::Free {
                continue;
            }
            if step(
                &ep,
                i,
                &mut slots[i],
                flags,
                &request,
                &mut buf,
                args.close,
                &mut t,
            ) {
                sys::close(slots[i].fd);
                slots[i].phase = Phase::Free;
                free.push(i);
            }
        }
        let now = Instant::now();
        if now.duration_since(last_sweep) >= Duration::from_millis(100) {
            last_sweep = now;
            for (i, s) in slots.iter_mut().enumerate() {
                if s.phase != Phase::Free && now.duration_since(s.started) > timeout {
                    t.fail("timeout", format!("no complete response in {:?}", timeout));
                    sys::close(s.fd);
                    s.phase = Phase::Free;
                    free.push(i);
                }
            }
        }
    }
    Ok(t)
}

fn open(ep: &Epoll, target: &libc::sockaddr_in, token: usize) -> Result<RawFd, i32> {
    let fd = sys::tcp_socket().map_err(|e| e.raw_os_error().unwrap_or(0))?;
    // SAFETY: target is a live sockaddr_in of the size passed.
    let rc = unsafe {
        libc::connect(
            fd,
            (target as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        let e = sys::errno();
        if e != libc::EINPROGRESS {
            sys::close(fd);
            return Err(e);
        }
    }
    if let Err(e) = ep.add(fd, EPOLLOUT | EPOLLIN | EPOLLRDHUP, token as u64) {
        sys::close(fd);
        return Err(e.raw_os_error().unwrap_or(0));
    }
    Ok(fd)
}

/// Advances one connection; true when it is finished (to be closed).
#[allow(clippy::too_many_arguments)]
fn step(
    ep: &Epoll,
    token: usize,
    s: &mut Slot,
    flags: u32,
    request: &[u8],
    buf: &mut [u8],
    close: ClientClose,
    t: &mut Tally,
) -> bool {
    if s.phase == Phase::Connecting {
        if flags & (EPOLLOUT | EPOLLERR | EPOLLHUP) == 0 {
            return false;
        }
        let err = sys::so_error(s.fd);
        if err != 0 {
            t.fail(kind_of(err), format!("connect: {}", errno_text(err)));
            return true;
        }
        match sys::send(s.fd, request) {
            Ok(n) if n == request.len() => {}
            Ok(_) => {
                t.fail("other", "short write of the request".into());
                return true;
            }
            Err(e) => {
                t.fail(kind_of(e), format!("send: {}", errno_text(e)));
                return true;
            }
        }
        s.phase = Phase::Reading;
        if let Err(e) = ep.modify(s.fd, EPOLLIN | EPOLLRDHUP, token as u64) {
            t.fail("other", format!("epoll: {e}"));
            return true;
        }
        if flags & (EPOLLIN | EPOLLRDHUP) == 0 {
            return false;
        }
    }
    loop {
        match sys::read(s.fd, buf) {
            Ok(0) => {
                if s.got == RESPONSE.len() {
                    // The whole response, then the server's FIN.
                    t.good(s.latency_us, Instant::now());
                } else {
                    t.fail(
                        "bad_response",
                        format!("short response: {} of {} bytes", s.got, RESPONSE.len()),
                    );
                }
                return true;
            }
            Ok(n) => match check_response(RESPONSE, s.got, &buf[..n]) {
                Check::Partial(got) => s.got = got,
                Check::Complete => {
                    let now = Instant::now();
                    s.got = RESPONSE.len();
                    s.latency_us = now.saturating_duration_since(s.started).as_micros() as u64;
                    if close == ClientClose::First {
                        t.good(s.latency_us, now);
                        return true;
                    }
                }
                Check::Bad => {
                    t.fail(
                        "bad_response",
                        "response differs from the expected bytes".into(),
                    );
                    return true;
                }
            },
            Err(e) if e == libc::EAGAIN => return false,
            Err(e) if e == libc::EINTR => continue,
            Err(e) => {
                t.fail(kind_of(e), format!("read: {}", errno_text(e)));
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_checked_byte_for_byte_across_reads() {
        let r = b"HTTP/1.1 200 OK\r\n\r\nok";
        assert_eq!(check_response(r, 0, &r[..5]), Check::Partial(5));
        assert_eq!(check_response(r, 5, &r[5..]), Check::Complete);
        assert_eq!(check_response(r, 0, r), Check::Complete);
        assert_eq!(check_response(r, 0, b"HTTP/1.1 500"), Check::Bad);
        let mut long = r.to_vec();
        long.push(b'!');
        assert_eq!(check_response(r, 0, &long), Check::Bad);
        assert_eq!(check_response(r, 5, b"X"), Check::Bad);
    }

    #[test]
    fn errnos_map_to_kinds() {
        assert_eq!(kind_of(libc::EADDRNOTAVAIL), "no_port");
        assert_eq!(kind_of(libc::ECONNREFUSED), "refused");
        assert_eq!(kind_of(libc::ECONNRESET), "reset");
        assert_eq!(kind_of(libc::ETIMEDOUT), "timeout");
        assert_eq!(kind_of(libc::EIO), "other");
        assert!(KINDS.contains(&kind_of(libc::EPIPE)));
    }

    #[test]
    fn report_round_trips_through_json() {
        let mut r = ClientReport {
            ok: 3,
            ..Default::default()
        };
        r.failures.insert("no_port".into(), 2);
        r.ok_per_s = vec![1, 2];
        let back: ClientReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!((back.ok, back.failed(), back.ok_per_s), (3, 2, vec![1, 2]));
    }
}
