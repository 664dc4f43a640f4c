//! Measurements for callgrind (ignored tests; instruction counts, not
//! timings): what a tick costs against open sessions, and what the access
//! log costs a session when its ring is full. docs/ARCHITECTURE.md has the
//! figures and the commands.

use std::sync::Arc;

use super::*;

/// `on_tick` with `TICK_SESSIONS` open sessions (default 1,000), for an
/// instruction count (docs/ARCHITECTURE.md, "Proxy sessions"):
///
/// ```text
/// valgrind --tool=callgrind --toggle-collect='*measured_on_ticks*' \
///   target/ci/deps/turnstile-HASH --ignored --exact \
///   app::proxy::tests::cost::on_tick_cost_with_open_sessions
/// ```
///
/// The sessions are connected and idle with a 300 s idle deadline armed,
/// as a session between two requests is; their legs are ids the engine
/// does not know (nothing is due, so no tick touches them, which is the
/// point). 1,000 ticks 1 ms apart are measured.
#[test]
#[ignore = "a measurement for callgrind; see the doc comment"]
fn on_tick_cost_with_open_sessions() {
    let n: u32 = std::env::var("TICK_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut sim = Sim::new("round-robin", "[timeouts]\nidle_ms = 300000\n");
    let now = sim.now;
    for i in 0..n {
        let id = |k: u32| ConnId {
            index: k * 4_000_000 + i,
            generation: 7,
        };
        let tuple = crate::tcp::FourTuple {
            local: LB,
            remote: SocketAddrV4::new(C, (i % 60_000) as u16 + 1024),
        };
        let mut s = super::super::Session::new(id(0), tuple, 80, i + 1, None, now);
        s.upstream = Some(id(1));
        s.connected = true;
        let sid = sim.proxy.sessions.len() as u32;
        sim.proxy.sessions.push(Some(s));
        sim.proxy
            .legs
            .insert(id(0), (sid, super::super::Leg::Client));
        sim.proxy
            .legs
            .insert(id(1), (sid, super::super::Leg::Upstream));
        sim.proxy.arm(sid);
    }
    let ticks = measured_on_ticks(&mut sim, 1000);
    assert_eq!(ticks, 1000);
    assert_eq!(sim.proxy.sessions.len(), n as usize);
    assert_eq!(sim.proxy.timers.len(), n as usize);
    println!("{n} sessions: 1000 ticks");
}

#[inline(never)]
fn measured_on_ticks(sim: &mut Sim, ticks: u32) -> u32 {
    let Sim {
        hosts,
        proxy,
        hop,
        now,
        ..
    } = sim;
    let mut done = 0;
    for _ in 0..ticks {
        let mut ctx = Ctx {
            ep: &mut hosts[0].ep,
            now: *now,
            local_ip: P,
            shard: 0,
            next_hop: hop,
        };
        proxy.on_tick(&mut ctx);
        *now = now.saturating_add(Duration::from_millis(1));
        done += 1;
    }
    std::hint::black_box(done)
}

/// One whole proxied session: the client connects and sends 100 bytes,
/// the backend answers 100 and closes, the client closes; until the proxy
/// has forgotten it.
pub(super) fn one_session(sim: &mut Sim) {
    let c = sim.connect_client();
    let mut sent = false;
    let mut served = false;
    let mut closed = false;
    for _ in 0..3000 {
        sim.step();
        if !sent && sim.has_event(C, c, Event::Connected) {
            sim.ep(C).send(c, &[7u8; 100]).unwrap();
            sent = true;
        }
        if sent && !served {
            for ip in [B1, B2] {
                if let Some(b) = sim.accepted(ip)
                    && sim.read(ip, b).len() == 100
                {
                    sim.ep(ip).send(b, &[9u8; 100]).unwrap();
                    sim.ep(ip).close(b).unwrap();
                    served = true;
                }
            }
        }
        if served && !closed && sim.has_event(C, c, Event::PeerClosed) {
            assert_eq!(sim.read(C, c).len(), 100);
            sim.ep(C).close(c).unwrap();
            closed = true;
        }
        if closed && sim.sessions() == 0 {
            for h in &mut sim.hosts[1..] {
                h.events.clear();
            }
            return;
        }
    }
    panic!("the session did not complete");
}

#[inline(never)]
fn measured_sessions(sim: &mut Sim, n: u32) {
    for _ in 0..n {
        one_session(sim);
    }
}

/// 200 whole sessions (both engines, the wire and the proxy) with the
/// access log `ACCESS_LOG=off|full|room` (default off): `full` is a
/// one-record ring filled before and never drained (every session's line
/// is dropped and counted), `room` a ring that never fills.
///
/// ```text
/// ACCESS_LOG=full valgrind --tool=callgrind --toggle-collect='*measured_sessions*' \
///   target/ci/deps/turnstile-HASH --ignored --exact \
///   app::proxy::tests::cost::access_log_cost_per_session
/// ```
#[test]
#[ignore = "a measurement for callgrind; see the doc comment"]
fn access_log_cost_per_session() {
    let mode = std::env::var("ACCESS_LOG").unwrap_or_else(|_| "off".into());
    let mut sim = Sim::new("round-robin", "");
    sim.listen(B1);
    sim.listen(B2);
    let log = match mode.as_str() {
        "off" => None,
        "full" => Some(Arc::new(super::super::access::AccessLog::new(1))),
        "room" => Some(Arc::new(super::super::access::AccessLog::new(1024))),
        other => panic!("ACCESS_LOG={other}: off, full or room"),
    };
    let routes = sim.shared.routes.load();
    let settings = Config::parse(
        &format!(
            "interface = \"eth0\"\n[[listener]]\nport = 80\n\
             backends = [\"{B1}:{BACKEND_PORT}\", \"{B2}:{BACKEND_PORT}\"]\n\
             [health]\ninterval_ms = 3600000\n"
        ),
        Path::new("sim.toml"),
    )
    .unwrap()
    .proxy_settings();
    let mut shared = Shared::new(Routes::build(
        &settings,
        &super::super::pool::BackendSet::default(),
        Some(&routes),
        routes.generation + 1,
    ));
    if let Some(log) = &log {
        shared = shared.with_access_log(log.clone());
    }
    let shared = Arc::new(shared);
    sim.proxy = Proxy::new(shared.clone(), 0, 1);
    sim.shared = shared;
    // Warm up (and, for `full`, fill the one-record ring).
    one_session(&mut sim);
    measured_sessions(&mut sim, 200);
    if let Some(log) = &log {
        let dropped = log.dropped.load(std::sync::atomic::Ordering::Relaxed);
        match mode.as_str() {
            "full" => assert_eq!(dropped, 200, "every measured line dropped"),
            _ => assert_eq!(dropped, 0),
        }
    }
    println!("access log {mode}: 200 sessions");
}
