//! The runtime API on `admin` (HTTP/1.1, JSON, one request per connection):
//!
//! ```text
//! GET  /api/backends                             every listener's backends
//! POST /api/backends/{listener_port}/{ip:port}   {"weight": N} and/or {"state": "ready"|"drain"|"maint"}
//! ```
//!
//! With `admin_token_file`, every request needs `Authorization: Bearer
//! <token>` (else 401). A POST is handed to the control thread, which lays
//! it over the file's settings and publishes a new routing snapshot, the
//! same way a reload does; shards pick it up on their next pass (they never
//! wait on this thread, nor it on them: it only reads their published
//! generation). The answer comes once every shard runs with the change, or
//! after a second with `"applied": false`.
//!
//! Hand-written like the metrics endpoint: a request line, two headers and
//! a small JSON body do not justify an HTTP server crate in the build.

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Sender, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::overrides::{Change, Refused};
use crate::app::proxy::Shared;
use crate::app::proxy::pool::{Failure, Route};
use crate::app::proxy::settings::BackendState;

/// Requests larger than this are refused (413).
const MAX_REQUEST: usize = 16 * 1024;
/// How long a POST waits for every shard to run with its change.
const APPLY_WAIT: Duration = Duration::from_secs(1);

/// A change for the control thread; it answers with the generation that
/// carries it.
pub struct Request {
    pub port: u16,
    pub addr: SocketAddrV4,
    pub change: Vec<Change>,
    pub reply: SyncSender<Result<u64, Refused>>,
}

/// Serves the API on `addr` from its own thread until `stop`.
pub fn serve(
    addr: SocketAddr,
    token: Option<String>,
    shared: Arc<Shared>,
    control: Sender<Request>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("turnstile-admin".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        handle(stream, token.as_deref(), &shared, &control);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => tracing::warn!(%e, "admin accept failed"),
                }
            }
        })
}

/// An answer: status and JSON body.
type Answer = (u16, Value);

fn error(status: u16, message: impl Into<String>) -> Answer {
    (status, json!({ "error": message.into() }))
}

fn handle(mut stream: TcpStream, token: Option<&str>, shared: &Shared, control: &Sender<Request>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let (status, body) = match read_request(&mut stream) {
        Ok(req) => answer(&req, token, shared, control),
        Err(a) => a,
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        _ => "Internal Server Error",
    };
    let body = format!("{body}\n");
    let auth = if status == 401 {
        "WWW-Authenticate: Bearer\r\n"
    } else {
        ""
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// A parsed request.
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub body: Vec<u8>,
}

fn read_request(stream: &mut impl Read) -> Result<HttpRequest, Answer> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > MAX_REQUEST {
            return Err(error(413, "request head too large"));
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return Err(error(400, "incomplete request")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let (method, path) = (
        first.next().unwrap_or("").to_string(),
        first.next().unwrap_or("").to_string(),
    );
    let mut length = 0usize;
    let mut authorization = None;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            length = v.parse().map_err(|_| error(400, "bad Content-Length"))?;
        } else if k.eq_ignore_ascii_case("authorization") {
            authorization = Some(v.to_string());
        }
    }
    if length > MAX_REQUEST {
        return Err(error(413, "body too large"));
    }
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return Err(error(400, "incomplete body")),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(length);
    Ok(HttpRequest {
        method,
        path,
        authorization,
        body,
    })
}

/// Whether `header` carries `token` ("Bearer <token>"); compared in
/// constant time so the answer's timing says nothing about the token.
fn authorized(header: Option<&str>, token: &str) -> bool {
    let Some(h) = header else {
        return false;
    };
    let Some((scheme, given)) = h.split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

pub fn answer(
    req: &HttpRequest,
    token: Option<&str>,
    shared: &Shared,
    control: &Sender<Request>,
) -> Answer {
    if let Some(t) = token
        && !authorized(req.authorization.as_deref(), t)
    {
        return error(401, "missing or wrong bearer token");
    }
    let path = req.path.split('?').next().unwrap_or("");
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method.as_str(), parts.as_slice()) {
        ("GET", ["api", "backends"]) => (200, backends(shared)),
        (_, ["api", "backends"]) => error(405, "GET /api/backends"),
        ("POST", ["api", "backends", port, addr]) => post(req, port, addr, shared, control),
        (_, ["api", "backends", _, _]) => {
            error(405, "POST /api/backends/{listener_port}/{ip:port}")
        }
        _ => error(
            404,
            "try GET /api/backends or POST /api/backends/{listener_port}/{ip:port}",
        ),
    }
}

fn post(
    req: &HttpRequest,
    port: &str,
    addr: &str,
    shared: &Shared,
    control: &Sender<Request>,
) -> Answer {
    let Ok(port) = port.parse::<u16>() else {
        return error(404, format!("{port:?} is not a listener port"));
    };
    let Ok(addr) = addr.parse::<SocketAddrV4>() else {
        return error(404, format!("{addr:?} is not a backend ip:port"));
    };
    let changes = match parse_changes(&req.body) {
        Ok(c) => c,
        Err(e) => return error(400, e),
    };
    let (reply, answer) = sync_channel(1);
    let sent = control.send(Request {
        port,
        addr,
        change: changes,
        reply,
    });
    if sent.is_err() {
        return error(500, "the control thread is gone (stopping?)");
    }
    let generation = match answer.recv_timeout(APPLY_WAIT) {
        Ok(Ok(g)) => g,
        Ok(Err(Refused::NotFound(e))) => return error(404, e),
        Ok(Err(Refused::Invalid(e))) => return error(400, e),
        Err(_) => return error(500, "the control thread did not answer"),
    };
    // Every shard runs with it once each has loaded this generation (or a
    // later one). Shards load it on their next pass (well under a
    // millisecond when busy, at most one poll(2) timeout when idle).
    let start = Instant::now();
    let applied = loop {
        if shared.oldest_seen().is_none_or(|g| g >= generation) {
            break true;
        }
        if start.elapsed() >= APPLY_WAIT {
            break false;
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    let routes = shared.routes.load();
    let entry = routes
        .route(port)
        .and_then(|r| {
            let i = r.backends.iter().position(|b| b.addr == addr)?;
            Some(backend_json(r, i))
        })
        .unwrap_or(Value::Null);
    (
        200,
        json!({
            "listener": port,
            "backend": entry,
            "generation": generation,
            "applied": applied,
            "applied_us": start.elapsed().as_micros() as u64,
        }),
    )
}

/// `{"weight": N}` and/or `{"state": "ready"|"drain"|"maint"}`.
fn parse_changes(body: &[u8]) -> Result<Vec<Change>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let Some(obj) = v.as_object() else {
        return Err(
            "body: expected an object like {\"weight\": 3} or {\"state\": \"drain\"}".into(),
        );
    };
    let mut changes = Vec::new();
    for (k, v) in obj {
        match k.as_str() {
            "weight" => {
                let w = v
                    .as_u64()
                    .and_then(|w| u32::try_from(w).ok())
                    .ok_or_else(|| format!("weight: expected a whole number, got {v}"))?;
                changes.push(Change::Weight(w));
            }
            "state" => {
                let s = v
                    .as_str()
                    .and_then(BackendState::from_name)
                    .ok_or_else(|| {
                        format!("state: expected \"ready\", \"drain\" or \"maint\", got {v}")
                    })?;
                changes.push(Change::State(s));
            }
            other => return Err(format!("unknown key {other:?}: expected weight or state")),
        }
    }
    if changes.is_empty() {
        return Err("body: give weight or state".into());
    }
    Ok(changes)
}

/// What a backend is doing for this listener: maint and drain as the API
/// set them (weight 0 is a drain too), else up or down by its health.
pub fn state_name(r: &Route, i: usize) -> &'static str {
    match r.settings[i].state {
        BackendState::Maint => "maint",
        BackendState::Drain => "drain",
        BackendState::Ready if r.settings[i].weight == 0 => "drain",
        BackendState::Ready if r.backends[i].is_up() => "up",
        BackendState::Ready => "down",
    }
}

fn backend_json(r: &Route, i: usize) -> Value {
    let b = &r.backends[i];
    let s = &r.settings[i];
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let failures: u64 = Failure::ALL.iter().map(|&f| b.failures(f)).sum();
    json!({
        "addr": b.addr.to_string(),
        "weight": s.weight,
        "state": state_name(r, i),
        "healthy": b.is_up(),
        "backup": s.backup,
        "max_connections": s.max_connections,
        "active": load(&b.active),
        "totals": {
            "sessions": load(&b.connections),
            "failures": failures,
            "bytes_to_backend": load(&b.bytes_to),
            "bytes_from_backend": load(&b.bytes_from),
            "checks_ok": load(&b.checks_ok),
            "checks_failed": load(&b.checks_failed),
        },
    })
}

/// `GET /api/backends`.
pub fn backends(shared: &Shared) -> Value {
    let routes = shared.routes.load();
    let listeners: Vec<Value> = routes
        .routes
        .iter()
        .map(|r| {
            json!({
                "port": r.port,
                "balance": r.balance.as_str(),
                "backends": (0..r.backends.len()).map(|i| backend_json(r, i)).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "generation": routes.generation, "listeners": listeners })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_checked_exactly() {
        assert!(authorized(Some("Bearer s3cret"), "s3cret"));
        assert!(authorized(Some("bearer s3cret"), "s3cret"));
        assert!(!authorized(Some("Bearer s3cre"), "s3cret"));
        assert!(!authorized(Some("Bearer s3crett"), "s3cret"));
        assert!(!authorized(Some("Basic s3cret"), "s3cret"));
        assert!(!authorized(None, "s3cret"));
    }

    #[test]
    fn bodies_parse_or_say_why_not() {
        assert_eq!(
            parse_changes(br#"{"weight": 0}"#).unwrap(),
            vec![Change::Weight(0)]
        );
        assert_eq!(
            parse_changes(br#"{"state": "drain"}"#).unwrap(),
            vec![Change::State(BackendState::Drain)]
        );
        assert!(
            parse_changes(br#"{"state": "gone"}"#)
                .unwrap_err()
                .contains("state")
        );
        assert!(
            parse_changes(br#"{"weight": -1}"#)
                .unwrap_err()
                .contains("weight")
        );
        assert!(
            parse_changes(br#"{"colour": 1}"#)
                .unwrap_err()
                .contains("colour")
        );
        assert!(parse_changes(b"{}").is_err());
        assert!(parse_changes(b"weight=1").is_err());
    }

    #[test]
    fn requests_are_read_with_their_body() {
        let raw = b"POST /api/backends/80/10.0.0.1:80 HTTP/1.1\r\nHost: x\r\nauthorization: Bearer t\r\nContent-Length: 13\r\n\r\n{\"weight\": 2}";
        let req = read_request(&mut &raw[..]).unwrap_or_else(|_| panic!("parsed"));
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/api/backends/80/10.0.0.1:80");
        assert_eq!(req.authorization.as_deref(), Some("Bearer t"));
        assert_eq!(req.body, br#"{"weight": 2}"#);
        let short = b"POST / HTTP/1.1\r\nContent-Length: 20\r\n\r\n{}";
        assert_eq!(read_request(&mut &short[..]).err().unwrap().0, 400);
    }
}
