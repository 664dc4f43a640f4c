//! TCP keepalive (RFC 1122 4.2.3.6) against kernel peers. The sidecar
//! (`turnstile run`) between a kernel client and a kernel echo backend
//! (`common::lab`): with keepalive on the client leg, a client that
//! silently disappears (nftables drops everything between it and the proxy,
//! in its namespace) is detected within idle + interval x count and the
//! proxy resets the backend leg; the same on the upstream leg for a backend
//! that disappears. `turnstile serve` with keepalive off sends nothing on
//! an idle connection (counted by nftables in the client's namespace); with
//! `--keepalive` it probes and resets. Needs root.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::lab::*;
use common::*;

/// Keepalive used throughout: idle 1 s, probes every 300 ms, 3 of them.
const IDLE_MS: u64 = 1000;
const INTERVAL_MS: u64 = 300;
const COUNT: u64 = 3;
/// The earliest a vanished peer can be declared gone: it was last heard
/// just before it vanished.
const DEADLINE: Duration = Duration::from_millis(IDLE_MS + INTERVAL_MS * COUNT);
/// Slack for a loaded machine (the shard's clock, the test's polling).
const SLACK: Duration = Duration::from_secs(5);

/// A kernel client that connects to `LB`, checks one echo and then holds
/// the connection open without a byte either way; prints `up <local port>`.
const HOLD_PY: &str = r#"
import socket, sys, time
s = socket.create_connection(LB, timeout=10)
s.sendall(b"hello")
got = b""
while len(got) < 5:
    c = s.recv(5 - len(got))
    if not c:
        raise SystemExit("closed")
    got += c
assert got == b"hello", got
print("up", s.getsockname()[1], flush=True)
s.settimeout(None)
try:
    # Hold until killed; report what ends it (a reset the proxy sent).
    data = s.recv(1)
    print("end", "eof" if not data else "data", flush=True)
except ConnectionResetError:
    print("end reset", flush=True)
"#;

/// Starts the holding client in the client namespace; returns it (killed
/// on drop) and its reader of stdout lines.
fn hold(lab: &Lab, target: &str) -> (ChildGuard, turnstile::testkit::Lines) {
    let program = format!("LB = {target}\n{HOLD_PY}");
    let mut child = lab
        .topo
        .client
        .command("python3")
        .args(["-c", &program])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn client");
    let lines = turnstile::testkit::Lines::spawn(child.stdout.take().unwrap());
    (ChildGuard(child), lines)
}

fn wait_line(lines: &turnstile::testkit::Lines, prefix: &str, limit: Duration) -> String {
    let never = std::sync::atomic::AtomicBool::new(false);
    lines
        .wait_line(prefix, limit, &never)
        .unwrap_or_else(|e| panic!("no {prefix:?} line: {e}"))
}

/// Silently drop everything between `addr` (in the client namespace) and
/// `proxy`, both ways, in the client namespace: `addr` has vanished. One
/// `nft -f` transaction: both directions go at once, in one short command
/// (five separate `nft` runs took long enough on a loaded machine that the
/// proxy's probes went unanswered before the test's clock started).
fn vanish(lab: &Lab, table: &str, addr: std::net::Ipv4Addr) {
    let proxy = lab.topo.server.ip;
    lab.topo
        .client
        .sh_ok(&format!(
            "nft -f - <<'EOF'\n\
             table inet {table} {{\n\
               chain in {{ type filter hook input priority 0; ip saddr {proxy} ip daddr {addr} counter drop; }}\n\
               chain out {{ type filter hook output priority 0; ip saddr {addr} ip daddr {proxy} counter drop; }}\n\
             }}\n\
             EOF"
        ))
        .expect("nftables drop");
}

/// Segments from the proxy that `vanish`'s input rule dropped so far.
fn dropped_in(lab: &Lab, table: &str) -> u64 {
    let text = lab
        .topo
        .client
        .sh_ok(&format!("nft list chain inet {table} in"))
        .expect("nft list");
    text.split("counter packets ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {text:?}"))
}

/// Established kernel connections in the client namespace matching `filter` (ss syntax).
fn established(lab: &Lab, filter: &str) -> usize {
    lab.topo
        .client
        .sh_ok(&format!("ss -Htn state established '{filter}'"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

fn keepalive_table() -> String {
    format!("keepalive = {{ idle_ms = {IDLE_MS}, interval_ms = {INTERVAL_MS}, count = {COUNT} }}")
}

/// Polls until `gone` holds; returns how long after `since` it first held.
fn detected_after(since: Instant, mut gone: impl FnMut() -> bool) -> Duration {
    let limit = DEADLINE + SLACK + Duration::from_secs(30);
    assert!(
        eventually(limit, &mut gone),
        "not detected within {limit:?}"
    );
    since.elapsed()
}

#[test]
fn client_leg_keepalive_detects_a_vanished_client_and_resets_the_backend_leg() {
    if !need_root() {
        return;
    }
    let _serial = serial();
    let mut lab = Lab::new("kacli", 0);
    lab.start_backend(0, "echo");
    let cfg = lab.config("round-robin", &[0], "").replace(
        "backends = [",
        &format!("{}\nbackends = [", keepalive_table()),
    );
    let cfg = lab.write_config("kacli.toml", &cfg);
    lab.start_sidecar(&cfg);
    let target = format!("(\"{}\", {LB_PORT})", lab.topo.server.ip);
    let (_client, lines) = hold(&lab, &target);
    wait_line(&lines, "up", Duration::from_secs(20));
    let backend_leg = format!("( sport = :{BACKEND_PORT} )");
    assert_eq!(
        established(&lab, &backend_leg),
        1,
        "the proxied backend leg"
    );
    // The client answers probes while it is there: two idle periods pass
    // and the session lives.
    std::thread::sleep(Duration::from_millis(2 * (IDLE_MS + INTERVAL_MS)));
    let text = lab.metrics();
    assert!(metric(&text, "turnstile_keepalive_probes_total") >= 1);
    assert_eq!(metric(&text, "turnstile_keepalive_timeouts_total"), 0);
    assert_eq!(
        established(&lab, &backend_leg),
        1,
        "a live client keeps its session"
    );

    let probes_before = metric(&text, "turnstile_keepalive_probes_total");
    // The clock starts before the drop: `took` can only overstate the time
    // to detection, which the upper bound below may then only fail on.
    let since = Instant::now();
    vanish(&lab, "kacli", lab.topo.client.ip);
    let took = detected_after(since, || established(&lab, &backend_leg) == 0);
    let unanswered = dropped_in(&lab, "kacli");
    assert!(eventually(Duration::from_secs(10), || metric(
        &lab.metrics(),
        "turnstile_keepalive_timeouts_total"
    ) == 1));
    let text = lab.metrics();
    let probes = metric(&text, "turnstile_keepalive_probes_total") - probes_before;
    eprintln!(
        "vanished client detected, backend leg reset after {took:?} \
         (idle {IDLE_MS} ms + {COUNT} x {INTERVAL_MS} ms = {DEADLINE:?}); {probes} probes, \
         {unanswered} dropped on the way to the client before the reset"
    );
    assert_eq!(metric(&text, "turnstile_keepalive_timeouts_total"), 1);
    assert!(metric(&text, "turnstile_proxy_resets_propagated_total") >= 1);
    // Never declared gone early: the proxy gave up only after `count`
    // probes went unanswered (counted where they were dropped, so a slow
    // `nft` on a loaded machine does not blur it as a clock would).
    assert!(
        unanswered >= COUNT,
        "declared gone after {unanswered} unanswered probes (count {COUNT})"
    );
    assert!(took <= DEADLINE + SLACK, "{took:?}");
    // Answered probes may fall between the metrics read and the drop.
    assert!(probes >= COUNT, "{probes} probes");
}

#[test]
fn upstream_keepalive_detects_a_vanished_backend_and_resets_the_client_leg() {
    if !need_root() {
        return;
    }
    let _serial = serial();
    let mut lab = Lab::new("kaup", 0);
    lab.start_backend(0, "echo");
    let cfg = lab.config(
        "round-robin",
        &[0],
        &format!("[upstream]\n{}\n", keepalive_table()),
    );
    let cfg = lab.write_config("kaup.toml", &cfg);
    lab.start_sidecar(&cfg);
    let target = format!("(\"{}\", {LB_PORT})", lab.topo.server.ip);
    let (_client, lines) = hold(&lab, &target);
    wait_line(&lines, "up", Duration::from_secs(20));
    let since = Instant::now();
    vanish(&lab, "kaup", lab.backends[0]);
    let end = wait_line(&lines, "end", DEADLINE + SLACK + Duration::from_secs(30));
    let took = since.elapsed();
    eprintln!("vanished backend detected, client reset after {took:?} ({DEADLINE:?})");
    assert_eq!(end.trim(), "end reset", "the client leg was reset");
    // Shards publish their counters periodically: poll.
    assert!(
        eventually(Duration::from_secs(10), || metric(
            &lab.metrics(),
            "turnstile_keepalive_timeouts_total"
        ) == 1),
        "keepalive timeouts counted: {}",
        lab.metrics()
    );
    assert!(took <= DEADLINE + SLACK, "{took:?}");
}

/// nftables counter of TCP segments from `proxy` into the client namespace.
fn count_from(lab: &Lab, table: &str) -> u64 {
    let out = lab
        .topo
        .client
        .sh_ok(&format!("nft list chain inet {table} in"))
        .unwrap_or_default();
    out.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {out}"))
}

fn count_rule(lab: &Lab, table: &str) {
    let proxy = lab.topo.server.ip;
    lab.topo
        .client
        .sh_ok(&format!(
            "nft add table inet {table} && \
             nft add chain inet {table} in '{{ type filter hook input priority 0; }}' && \
             nft add rule inet {table} in ip saddr {proxy} meta l4proto tcp counter"
        ))
        .expect("nftables counter");
}

const SERVE_METRICS: &str = "127.0.0.1:9931";

/// `serve --app echo` without `--keepalive`: an idle connection sees not one
/// segment from turnstile over several would-be keepalive periods. With
/// `--keepalive`, it is probed, and reset once the client vanishes.
#[test]
fn serve_keepalive_off_sends_nothing_and_on_probes_and_resets() {
    if !need_root() {
        return;
    }
    let _serial = serial();
    // Lab for its topology and helpers; no sidecar in this test.
    let lab = Lab::new("kaserve", 0);
    let serve = |args: &[&str]| -> ChildGuard {
        let port = LB_PORT.to_string();
        let mut all = vec!["--port", &port, "--app", "echo", "--metrics", SERVE_METRICS];
        all.extend_from_slice(args);
        spawn_serve_owned(&lab.topo, &all)
    };
    let off = serve(&[]);
    let target = format!("(\"{}\", {LB_PORT})", lab.topo.server.ip);
    let (client, lines) = hold(&lab, &target);
    wait_line(&lines, "up", Duration::from_secs(20));
    count_rule(&lab, "kaoff");
    std::thread::sleep(DEADLINE * 3);
    assert_eq!(count_from(&lab, "kaoff"), 0, "keepalive off: nothing sent");
    assert_eq!(established(&lab, &format!("( dport = :{LB_PORT} )")), 1);
    let text = scrape(&lab.topo, SERVE_METRICS);
    assert_eq!(metric(&text, "turnstile_keepalive_probes_total"), 0);
    drop(client);
    drop(off);
    lab.topo
        .client
        .sh_ok("nft delete table inet kaoff")
        .unwrap();

    let spec = format!("{IDLE_MS},{INTERVAL_MS},{COUNT}");
    let _on = serve(&["--keepalive", &spec]);
    let (_client, lines) = hold(&lab, &target);
    wait_line(&lines, "up", Duration::from_secs(20));
    count_rule(&lab, "kaon");
    std::thread::sleep(Duration::from_millis(2 * IDLE_MS + INTERVAL_MS));
    assert!(count_from(&lab, "kaon") >= 1, "keepalive on: probed");
    assert_eq!(established(&lab, &format!("( dport = :{LB_PORT} )")), 1);
    let since = Instant::now();
    vanish(&lab, "kaongone", lab.topo.client.ip);
    let took = detected_after(since, || {
        metric(
            &scrape(&lab.topo, SERVE_METRICS),
            "turnstile_keepalive_timeouts_total",
        ) == 1
    });
    eprintln!("serve: vanished client reset after {took:?} ({DEADLINE:?})");
    assert!(took <= DEADLINE + SLACK, "{took:?}");
}
