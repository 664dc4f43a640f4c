//! `http`: reads one request up to the blank line, answers 200 with a short
//! body and `Connection: close`, and closes first (so TIME_WAIT is ours).

use rustc_hash::FxHashMap;

use super::{App, Ctx};
use crate::tcp::{ConnId, Event};

/// The whole response, built once.
pub const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10\r\nConnection: close\r\n\r\nturnstile\n";

/// Largest request head accepted before the connection is reset.
const MAX_HEAD: usize = 16 * 1024;

#[derive(Default)]
pub struct Http {
    /// Per connection: bytes of "\r\n\r\n" matched so far and head length.
    /// The request itself is never stored.
    heads: FxHashMap<ConnId, (u8, usize)>,
    scratch: Vec<u8>,
}

/// Advances a match of "\r\n\r\n" over `bytes`; returns the new state and
/// whether the blank line was reached.
pub fn scan_head(mut matched: u8, bytes: &[u8]) -> (u8, bool) {
    const END: &[u8; 4] = b"\r\n\r\n";
    for &b in bytes {
        matched = if b == END[matched as usize] {
            matched + 1
        } else if b == b'\r' {
            1
        } else {
            0
        };
        if matched == 4 {
            return (4, true);
        }
    }
    (matched, false)
}

impl App for Http {
    fn on_event(&mut self, ctx: &mut Ctx<'_>, id: ConnId, event: Event) {
        if self.scratch.is_empty() {
            self.scratch = vec![0; 4096];
        }
        match event {
            Event::Accepted { .. } => {
                self.heads.insert(id, (0, 0));
            }
            Event::Readable | Event::PeerClosed => {
                let Some(&(mut matched, mut len)) = self.heads.get(&id) else {
                    // Answered already: drain whatever else arrives.
                    while matches!(ctx.recv(id, &mut self.scratch), Ok(n) if n > 0) {}
                    return;
                };
                let mut done = false;
                while let Ok(n) = ctx.recv(id, &mut self.scratch) {
                    if n == 0 {
                        break;
                    }
                    len += n;
                    let (m, end) = scan_head(matched, &self.scratch[..n]);
                    matched = m;
                    if end {
                        done = true;
                        break;
                    }
                }
                if done {
                    self.heads.remove(&id);
                    let _ = ctx.send(id, RESPONSE);
                    let _ = ctx.close(id);
                } else if len > MAX_HEAD || event == Event::PeerClosed {
                    self.heads.remove(&id);
                    let _ = ctx.abort(id);
                } else {
                    self.heads.insert(id, (matched, len));
                }
            }
            Event::Closed | Event::Reset | Event::TimedOut => {
                self.heads.remove(&id);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_blank_line_across_reads() {
        let (m, end) = scan_head(0, b"GET / HTTP/1.1\r\nHost: x\r");
        assert!(!end);
        let (_, end) = scan_head(m, b"\n\r\n");
        assert!(end);
        assert!(!scan_head(0, b"GET / HTTP/1.1\r\n\r").1);
        assert!(scan_head(0, b"\r\r\n\r\n").1);
    }

    #[test]
    fn response_length_matches_its_header() {
        let text = std::str::from_utf8(RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert!(head.starts_with("HTTP/1.1 200 OK"));
    }
}
