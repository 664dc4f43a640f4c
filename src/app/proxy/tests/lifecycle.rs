//! A session's life beyond relaying: the PROXY header accepted from a
//! balancer in front (`accept_proxy`), the retries cap, passive health,
//! `client_fin_ms`, `max_session_ms`, and the timers that bound them.

use std::sync::atomic::Ordering;

use super::super::proxy_protocol::{self, ProxyProtocol};
use super::*;

fn stat(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// The bytes the backends (either) have received on their last accepted
/// connection, appended to `got`; the backend, once one has bytes.
fn drain_backends(s: &mut Sim, got: &mut Vec<u8>) -> Option<(Ipv4Addr, ConnId)> {
    let mut found = None;
    for ip in [B1, B2] {
        if let Some(b) = s.accepted(ip) {
            let d = s.read(ip, b);
            if !d.is_empty() {
                got.extend(d);
            }
            if !got.is_empty() {
                found = Some((ip, b));
            }
        }
    }
    found
}

fn header(version: ProxyProtocol, client: &str, dst: &str) -> Vec<u8> {
    let mut buf = [0u8; proxy_protocol::MAX_HEADER];
    let n = proxy_protocol::encode(
        version,
        client.parse().unwrap(),
        dst.parse().unwrap(),
        &mut buf,
    );
    buf[..n].to_vec()
}

#[test]
fn accepted_header_names_the_client_upstream_and_the_bytes_after_it_follow() {
    for (theirs, ours) in [
        (ProxyProtocol::V1, "v2"),
        (ProxyProtocol::V2, "v1"),
        (ProxyProtocol::V2, "off"),
    ] {
        let mut sim = Sim::with_listener(
            "round-robin",
            &format!("accept_proxy = true\nproxy_protocol = \"{ours}\""),
            "",
        );
        sim.listen(B1);
        sim.listen(B2);
        let c = sim.connect_client();
        assert!(sim.run_until(100, |s| s.has_event(C, c, Event::Connected)));
        // The header in two pieces (a slow balancer), the client's bytes
        // right behind its end.
        let h = header(theirs, "203.0.113.7:4242", "198.51.100.1:443");
        let (a, b) = h.split_at(9);
        sim.ep(C).send(c, a).unwrap();
        sim.run(30);
        assert_eq!(sim.host(B1).events.len() + sim.host(B2).events.len(), 0);
        let mut rest = b.to_vec();
        rest.extend_from_slice(b"hello");
        sim.ep(C).send(c, &rest).unwrap();
        let mut got = Vec::new();
        assert!(sim.run_until(300, |s| {
            drain_backends(s, &mut got);
            got.ends_with(b"hello")
        }));
        let want: Vec<u8> = match ours {
            "v1" => b"PROXY TCP4 203.0.113.7 198.51.100.1 4242 443\r\nhello".to_vec(),
            "v2" => {
                let mut w = header(ProxyProtocol::V2, "203.0.113.7:4242", "198.51.100.1:443");
                w.extend_from_slice(b"hello");
                w
            }
            _ => b"hello".to_vec(),
        };
        assert_eq!(got, want, "{theirs:?} in, {ours} out");
        assert_eq!(stat(&sim.shared.stats.headers_accepted), 1);
        // Answers come back to the client unchanged.
        let (bip, bid) = drain_backends(&mut sim, &mut got).unwrap();
        sim.ep(bip).send(bid, b"answer").unwrap();
        let mut answer = Vec::new();
        assert!(sim.run_until(300, |s| {
            answer.extend(s.read(C, c));
            answer == b"answer"
        }));
    }
}

#[test]
fn maglev_hashes_the_client_the_header_names() {
    let mut sim = Sim::with_listener("maglev", "accept_proxy = true", "");
    sim.listen(B1);
    sim.listen(B2);
    let mut seen = [0usize; 2];
    for i in 0..16u8 {
        let client = Ipv4Addr::new(203, 0, 113, i);
        let want = {
            let routes = sim.shared.routes.load();
            let r = routes.route(80).unwrap();
            match r.pick(client, &[], sim.now) {
                super::super::balance::Pick::Backend(i) => r.backends[i].addr,
                other => panic!("{other:?}"),
            }
        };
        let c = sim.connect_client();
        assert!(sim.run_until(100, |s| s.has_event(C, c, Event::Connected)));
        let mut h = header(ProxyProtocol::V2, &format!("{client}:1000"), "10.0.0.2:80");
        h.extend_from_slice(b"x");
        sim.ep(C).send(c, &h).unwrap();
        assert!(sim.run_until(300, |s| {
            s.accepted(B1).is_some() || s.accepted(B2).is_some()
        }));
        let went = if sim.accepted(B1).is_some() { B1 } else { B2 };
        assert_eq!(*want.ip(), went, "client {client}");
        seen[usize::from(went == B2)] += 1;
        sim.ep(C).abort(c).unwrap();
        assert!(sim.run_until(300, |s| s.sessions() == 0));
        // The backend's leg is reset too; then a clean slate.
        sim.run(20);
        sim.host(B1).events.clear();
        sim.host(B2).events.clear();
    }
    // 16 addresses from one kernel client reached both backends.
    assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");
}

#[test]
fn bad_missing_and_slow_headers_are_reset_and_counted() {
    let mut sim = Sim::with_listener(
        "round-robin",
        "accept_proxy = true",
        "[timeouts]\nproxy_header_ms = 300\n",
    );
    sim.listen(B1);
    sim.listen(B2);
    let stats = sim.shared.clone();
    // Not a PROXY header: reset at once.
    let c = sim.connect_client();
    sim.ep(C).send(c, b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(sim.run_until(100, |s| s.has_event(C, c, Event::Reset)));
    assert_eq!(stat(&stats.stats.headers_invalid), 1);
    // IPv6 in a valid v1 line: we cannot carry it, reset.
    let c = sim.connect_client();
    sim.ep(C)
        .send(c, b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n")
        .unwrap();
    assert!(sim.run_until(100, |s| s.has_event(C, c, Event::Reset)));
    assert_eq!(stat(&stats.stats.headers_unsupported), 1);
    // The client closes before the header is whole.
    let c = sim.connect_client();
    sim.ep(C).send(c, b"PROXY TCP4 1.2.").unwrap();
    sim.ep(C).shutdown(c).unwrap();
    assert!(sim.run_until(100, |s| s.has_event(C, c, Event::Reset)));
    assert_eq!(stat(&stats.stats.headers_closed), 1);
    // Nothing, or half a header, within proxy_header_ms: reset at it.
    for first in [&b""[..], b"\r\n\r\n\0\r\nQU"] {
        let c = sim.connect_client();
        assert!(sim.run_until(100, |s| s.has_event(C, c, Event::Connected)));
        let from = sim.now;
        if !first.is_empty() {
            sim.ep(C).send(c, first).unwrap();
        }
        assert!(sim.run_until(2000, |s| s.has_event(C, c, Event::Reset)));
        let after = sim.now.saturating_duration_since(from);
        assert!(
            (Duration::from_millis(250)..Duration::from_millis(400)).contains(&after),
            "reset after {after:?}"
        );
    }
    assert_eq!(stat(&stats.stats.headers_timeout), 2);
    assert_eq!(stat(&stats.stats.headers_accepted), 0);
    // No backend saw any of them.
    assert_eq!(sim.host(B1).events.len() + sim.host(B2).events.len(), 0);
    assert_eq!(sim.sessions(), 0);
}

#[test]
fn retries_cap_the_other_backends_a_session_tries() {
    // B1 refuses, B2 accepts; round-robin sends the first client to B1.
    for (retries, served) in [("retries = 0", false), ("retries = 1", true), ("", true)] {
        let mut sim = Sim::with_listener("round-robin", retries, "");
        sim.listen(B2);
        let c = sim.connect_client();
        sim.ep(C).send(c, b"ping").unwrap_or(0);
        let mut got = Vec::new();
        let done = sim.run_until(500, |s| {
            drain_backends(s, &mut got);
            got == b"ping" || s.has_event(C, c, Event::Reset)
        });
        assert!(done, "{retries}");
        assert_eq!(got == b"ping", served, "{retries}");
        assert_eq!(
            stat(&sim.shared.stats.retries_exhausted),
            u64::from(!served),
            "{retries}"
        );
    }
}

#[test]
fn passive_fall_ejects_on_failed_client_connects_and_checks_readmit() {
    let mut sim = Sim::new(
        "round-robin",
        "interval_ms = 100\nrise = 2\nfall = 1000\npassive_fall = 3\n",
    );
    // B1 refuses everything (its checks fail too, but fall = 1000 keeps
    // the active checks from ejecting it first).
    sim.listen(B2);
    let b1 = sim.shared.routes.load().checked[0].clone();
    let mut clients = 0;
    let start = sim.now;
    assert!(sim.run_until(3000, |s| {
        // A client every 50 ms (each tries B1 first, then B2).
        if b1.is_up() && s.now.saturating_duration_since(start).as_millis() % 50 == 0 {
            s.connect_client();
            clients += 1;
        }
        !b1.is_up()
    }));
    assert_eq!(stat(&b1.passive_ejections), 1);
    assert!(b1.failures(Failure::Refused) >= 3);
    // Up to 3 clients' attempts on B1 (the round-robin alternates and the
    // checks count nothing here); each of those clients was served by B2.
    assert!(clients <= 6, "{clients} clients");
    // B1 comes back: two good checks readmit it.
    sim.listen(B1);
    assert!(sim.run_until(1000, |_| b1.is_up()), "readmitted");
}

#[test]
fn a_half_closed_session_ends_after_client_fin_ms_without_bytes() {
    let mut sim = Sim::new(
        "round-robin",
        "[timeouts]\nclient_fin_ms = 300\nidle_ms = 60000\n",
    );
    sim.listen(B1);
    sim.listen(B2);
    let c = sim.connect_client();
    sim.ep(C).send(c, b"request").unwrap();
    sim.ep(C).shutdown(c).unwrap();
    let mut got = Vec::new();
    let mut backend = None;
    assert!(sim.run_until(300, |s| {
        backend = drain_backends(s, &mut got);
        got == b"request"
    }));
    let (bip, b) = backend.unwrap();
    assert!(sim.run_until(300, |s| s.has_event(bip, b, Event::PeerClosed)));
    // The backend keeps answering for a while: activity holds it open.
    for _ in 0..5 {
        sim.ep(bip).send(b, b"more").unwrap();
        sim.run(150);
    }
    assert!(!sim.has_event(C, c, Event::Reset));
    // Then silence: both legs reset about client_fin_ms later.
    sim.ep(bip).send(b, b"end").unwrap();
    let quiet = sim.now;
    assert!(sim.run_until(2000, |s| s.has_event(C, c, Event::Reset)
        && s.has_event(bip, b, Event::Reset)));
    let after = sim.now.saturating_duration_since(quiet);
    assert!(
        (Duration::from_millis(250)..Duration::from_millis(500)).contains(&after),
        "reset after {after:?}"
    );
    assert_eq!(stat(&sim.shared.stats.client_fin_timeouts), 1);
    assert_eq!(stat(&sim.shared.stats.idle_timeouts), 0);
}

#[test]
fn max_session_ms_ends_a_busy_session() {
    let mut sim = Sim::new("round-robin", "[timeouts]\nmax_session_ms = 500\n");
    sim.listen(B1);
    sim.listen(B2);
    let c = sim.connect_client();
    let start = sim.now;
    // Bytes every 50 ms: never idle.
    let mut got = Vec::new();
    let reset = sim.run_until(3000, |s| {
        if s.now.saturating_duration_since(start).as_millis() % 50 == 0 {
            let _ = s.ep(C).send(c, b"tick");
        }
        drain_backends(s, &mut got);
        s.has_event(C, c, Event::Reset)
    });
    assert!(reset);
    let after = sim.now.saturating_duration_since(start);
    assert!(
        (Duration::from_millis(450)..Duration::from_millis(700)).contains(&after),
        "reset after {after:?}"
    );
    assert!(got.len() >= 4 * 8, "bytes flowed first: {}", got.len());
    assert_eq!(stat(&sim.shared.stats.max_session_timeouts), 1);
    assert!(sim.run_until(100, |s| s.sessions() == 0));
}

#[test]
fn ticks_do_not_visit_sessions_with_nothing_due() {
    let mut sim = Sim::new("round-robin", "[timeouts]\nidle_ms = 60000\n");
    sim.listen(B1);
    sim.listen(B2);
    let mut clients = Vec::new();
    for _ in 0..200 {
        let c = sim.connect_client();
        sim.ep(C).send(c, b"x").unwrap_or(0);
        clients.push(c);
        sim.run(1);
    }
    assert!(sim.run_until(2000, |s| s.sessions() == 200));
    // Past the connect deadlines (2 s): those entries fired early, found
    // nothing due and made way for the idle deadline.
    sim.run(2500);
    // Every session has one live entry at its idle deadline (a minute
    // away); the heap may hold stale entries of earlier deadlines.
    let entries = sim.proxy.timers.len();
    assert!((200..=400).contains(&entries), "{entries} timer entries");
    let first = sim.proxy.timers.peek().unwrap();
    assert!(first.saturating_duration_since(sim.now) > Duration::from_secs(50));
    // A second of ticks pops nothing.
    sim.run(1000);
    assert_eq!(sim.proxy.timers.len(), entries);
    assert_eq!(sim.sessions(), 200);
}

/// Every session arms its connect deadline (300 s here) and ends long
/// before it; the entries it leaves in the timer heap used to stay for those
/// 300 s, so the heap grew with the session rate times the deadline.
#[test]
fn ended_sessions_leave_no_timer_entries_behind() {
    let mut sim = Sim::new(
        "round-robin",
        "[timeouts]\nconnect_ms = 300000\nidle_ms = 300000\n",
    );
    sim.listen(B1);
    sim.listen(B2);
    for i in 0..3000 {
        super::cost::one_session(&mut sim);
        assert!(
            sim.proxy.timers.len() <= 1024 + 2,
            "after {i} sessions: {} entries",
            sim.proxy.timers.len()
        );
    }
}
