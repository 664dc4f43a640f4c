//! The load-balancer sidecar (`turnstile run`) against real kernel peers:
//! turnstile in the server namespace, kernel clients and three kernel
//! backends (asyncio servers, each answering with its own name) on extra
//! addresses of the client namespace (`common::lab`). Needs root.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::lab::*;
use common::*;

fn counts(out: &str) -> std::collections::BTreeMap<String, u64> {
    let mut m = std::collections::BTreeMap::new();
    for w in out.split_whitespace() {
        *m.entry(w.to_string()).or_insert(0) += 1;
    }
    m
}

#[test]
fn sidecar_round_robin_spreads_evenly_and_every_client_is_answered() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new("rr", 0);
    for i in 0..3 {
        lab.start_backend(i, "http");
    }
    let cfg = lab.write_config("rr.toml", &lab.config("round-robin", &[0, 1, 2], ""));
    let line = lab.start_sidecar(&cfg);
    assert!(
        line.contains("ports=8080") && line.contains("queues=2"),
        "{line}"
    );

    let ip = lab.topo.server.ip;
    let out = lab
        .topo
        .client
        .sh_ok(&format!("curl -s -i --max-time 5 http://{ip}:{LB_PORT}/"))
        .expect("curl through the sidecar");
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    assert!(NAMES.iter().any(|n| out.trim_end().ends_with(n)), "{out}");

    // 3000 sequential connections, then 3000 concurrent ones (asyncio):
    // every one answered, and round-robin is exact across both shards.
    let out = lab.python(
        r#"
import asyncio
names = [get() for _ in range(3000)]
async def one(sem):
    async with sem:
        r, w = await asyncio.wait_for(asyncio.open_connection(*LB), 5)
        w.write(REQ)
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
        n = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
        body = await asyncio.wait_for(r.readexactly(n), 5)
        w.close()
        return body.decode().strip()
async def main():
    sem = asyncio.Semaphore(100)
    return await asyncio.gather(*[one(sem) for _ in range(3000)], return_exceptions=True)
res = asyncio.run(main())
bad = [r for r in res if not isinstance(r, str)]
print(" ".join(names + [r for r in res if isinstance(r, str)]))
print("errors", len(bad), repr(bad[:3]), file=sys.stderr)
assert not bad, bad[:3]
"#,
    );
    let c = counts(&out);
    assert_eq!(c.values().sum::<u64>(), 6000, "{c:?}");
    for name in NAMES {
        let n = c.get(name).copied().unwrap_or(0);
        assert!((1980..=2020).contains(&n), "round-robin within 1%: {c:?}");
    }
    let text = lab.metrics();
    for i in 0..3 {
        let label = format!("backend=\"{}\"", lab.backend_addr(i));
        assert_eq!(
            metric(&text, &format!("turnstile_backend_up{{{label}}}")),
            1,
            "{text}"
        );
        assert!(
            metric(
                &text,
                &format!("turnstile_backend_connections_total{{{label}}}")
            ) >= 2000
        );
        assert!(
            metric(
                &text,
                &format!("turnstile_backend_bytes_total{{{label},direction=\"from_backend\"}}")
            ) > 0
        );
    }
    assert_eq!(metric(&text, "turnstile_proxy_no_backend_total"), 0);
    lab.stop_sidecar();
}

#[test]
fn sidecar_least_conn_balances_open_connections() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new("lc", 0);
    for i in 0..3 {
        lab.start_backend(i, "http");
    }
    let cfg = lab.write_config("lc.toml", &lab.config("least-conn", &[0, 1, 2], ""));
    lab.start_sidecar(&cfg);
    // Nine held connections opened one at a time: least-conn gives each
    // backend three; a tenth goes to... any, but then the next three fill
    // the others first.
    let out = lab.python(
        r#"
held = []
names = []
for i in range(9):
    s = socket.create_connection(LB, timeout=10)
    s.sendall(b"GET /hold HTTP/1.1\r\nHost: lb\r\n\r\n")
    data = b""
    while not data.endswith(b"\n") or b"\r\n\r\n" not in data:
        data += s.recv(4096)
    names.append(data.split(b"\r\n\r\n")[1].decode().strip())
    held.append(s)
print(" ".join(names))
for s in held: s.close()
"#,
    );
    let c = counts(&out);
    assert_eq!(c.len(), 3, "{c:?}");
    assert!(c.values().all(|&n| n == 3), "least-conn: three each: {c:?}");
}

#[test]
fn sidecar_maglev_keeps_each_client_on_its_backend_and_reload_moves_only_the_removed_ones() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new("maglev", 40);
    for i in 0..3 {
        lab.start_backend(i, "http");
    }
    let cfg = lab.write_config("maglev.toml", &lab.config("maglev", &[0, 1, 2], ""));
    lab.start_sidecar(&cfg);
    let probe = r#"
rows = []
for src in SOURCES:
    seen = {get(src) for _ in range(4)}
    rows.append("%s=%s" % (src, ",".join(sorted(seen))))
print(" ".join(rows))
"#;
    let parse = |out: &str| -> std::collections::BTreeMap<String, String> {
        out.split_whitespace()
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    };
    let before = parse(&lab.python(probe));
    assert_eq!(before.len(), 40);
    for (src, names) in &before {
        assert!(
            !names.contains(','),
            "client {src} reached several backends: {names}"
        );
    }
    let per: Vec<usize> = NAMES
        .iter()
        .map(|n| before.values().filter(|v| v == n).count())
        .collect();
    assert!(
        per.iter().all(|&n| n > 0),
        "40 clients should reach all three backends: {per:?}"
    );

    // A bad file on SIGHUP: rejected, logged, nothing moves.
    std::fs::write(&cfg, lab.config("maglev", &[0, 2], "[health]\nfall = 0\n")).unwrap();
    lab.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(15), || lab
            .stderr()
            .contains("reload rejected")),
        "{}",
        lab.stderr()
    );
    assert!(lab.stderr().contains("health.fall = 0"), "{}", lab.stderr());
    assert_eq!(
        metric(
            &lab.metrics(),
            "turnstile_config_reloads_total{result=\"failed\"}"
        ),
        1
    );
    assert_eq!(
        parse(&lab.python(probe)),
        before,
        "a rejected reload changes nothing"
    );

    // Remove bravo: only bravo's clients move.
    std::fs::write(&cfg, lab.config("maglev", &[0, 2], "")).unwrap();
    lab.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(15), || metric(
        &lab.metrics(),
        "turnstile_config_reloads_total{result=\"ok\"}"
    ) == 1));
    let after = parse(&lab.python(probe));
    for (src, was) in &before {
        let now = &after[src];
        assert!(
            !now.contains(','),
            "client {src} reached several backends: {now}"
        );
        if was == "bravo" {
            assert_ne!(now, "bravo", "{src} must have moved");
        } else {
            assert_eq!(now, was, "client {src} of {was} moved to {now}");
        }
    }
    // After that history (a rejected reload, a removal), the live table is
    // byte for byte what a fresh build of the current file gives.
    let live = lab
        .topo
        .server
        .sh_ok(&format!("curl -s --max-time 5 http://{METRICS}/maglev"))
        .expect("GET /maglev");
    let fresh = std::process::Command::new(BIN)
        .args(["maglev-table", "--config"])
        .arg(&cfg)
        .output()
        .expect("turnstile maglev-table");
    assert!(fresh.status.success());
    assert!(
        live.starts_with("listener 8080\nmaglev size=65537 seed=0 backends=2\n"),
        "{}",
        &live[..live.len().min(200)]
    );
    assert!(
        live.as_bytes() == fresh.stdout.as_slice(),
        "live and fresh tables differ"
    );
    lab.stop_sidecar();
}

#[test]
fn sidecar_killed_backend_is_ejected_its_clients_end_and_it_comes_back() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new("kill", 0);
    for i in 0..3 {
        lab.start_backend(i, "http");
    }
    let health = "[health]\ninterval_ms = 200\ntimeout_ms = 200\nfall = 2\nrise = 2\n";
    let cfg = lab.write_config("kill.toml", &lab.config("round-robin", &[0, 1, 2], health));
    lab.start_sidecar(&cfg);

    // A steady load in the background, counting answers by backend and
    // failures, with a timestamp per answer.
    let log = lab.dir.join("load.log");
    let load = {
        let topo_client = lab.topo.client.clone();
        let program = format!(
            "LB = (\"{}\", {LB_PORT})\nSOURCES = []\n{CLIENT_PY}\n{}",
            lab.topo.server.ip,
            format_args!(
                r#"
import os
out = open("{}", "w", buffering=1)
# One request at a time: "start end answer" or "start end FAIL error".
while not os.path.exists("{}.stop"):
    t = time.time()
    try:
        name = get()
        out.write("%f %f %s\n" % (t, time.time(), name))
    except Exception as e:
        out.write("%f %f FAIL %r\n" % (t, time.time(), e))
    time.sleep(0.005)
"#,
                log.display(),
                log.display()
            )
        );
        std::thread::spawn(move || {
            topo_client
                .command("python3")
                .args(["-c", &program])
                .stdin(Stdio::null())
                .output()
                .expect("load loop")
        })
    };
    std::thread::sleep(Duration::from_secs(2));

    // Hold connections until one is on bravo.
    let holder = lab.dir.join("holder.py");
    std::fs::write(
        &holder,
        format!(
            "LB = (\"{}\", {LB_PORT})\nSOURCES = []\n{CLIENT_PY}\n{}",
            lab.topo.server.ip,
            r#"
import select
socks = []
# Round-robin shares its turns with the background load: open until one
# connection is held on bravo.
while not any(n == "bravo" for n, _ in socks) and len(socks) < 12:
    s = socket.create_connection(LB, timeout=5)
    s.sendall(b"GET /hold HTTP/1.1\r\nHost: lb\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"\n"):
        data += s.recv(4096)
    socks.append((data.split(b"\r\n\r\n")[1].decode().strip(), s))
print(" ".join(n for n, _ in socks), flush=True)
sys.stdin.readline()   # the backend is being killed now
start = time.time()
for name, s in socks:
    if name != "bravo":
        continue
    s.settimeout(15)
    try:
        rest = s.recv(4096)
        print("bravo-end", "close" if rest == b"" else "data:%r" % rest, "%.2f" % (time.time() - start), flush=True)
    except ConnectionResetError:
        print("bravo-end reset %.2f" % (time.time() - start), flush=True)
    except socket.timeout:
        print("bravo-end HANG", flush=True)
"#
        ),
    )
    .unwrap();
    let mut holder_proc = lab
        .topo
        .client
        .command("python3")
        .arg(&holder)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut holder_out = BufReader::new(holder_proc.stdout.take().unwrap());
    let mut held = String::new();
    holder_out.read_line(&mut held).unwrap();
    assert!(
        held.contains("bravo"),
        "one held connection on bravo: {held}"
    );

    let failures_before = metric(
        &lab.metrics(),
        &format!(
            "turnstile_backend_failures_total{{backend=\"{}\",reason=\"refused\"}}",
            lab.backend_addr(1)
        ),
    );
    let killed_at = Instant::now();
    let kill_start = wall_clock();
    lab.kill_backend(1);
    let kill_done = wall_clock();
    use std::io::Write as _;
    holder_proc
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"go\n")
        .unwrap();
    let mut end = String::new();
    holder_out.read_line(&mut end).unwrap();
    let _ = holder_proc.kill();
    let _ = holder_proc.wait();
    assert!(
        end.starts_with("bravo-end close") || end.starts_with("bravo-end reset"),
        "a client of the killed backend sees a close or a reset, never a hang: {end}"
    );

    // Ejected within fall * interval (+ a check's timeout and slack; the
    // bound is generous for a machine under load, the log says how long).
    assert!(
        eventually(Duration::from_secs(15), || lab
            .backend_metric("turnstile_backend_up", 1)
            == 0),
        "bravo not ejected: {}",
        lab.metrics()
    );
    let ejected_after = killed_at.elapsed();
    let ejected = wall_clock();
    assert!(lab.stderr().contains("backend down"), "{}", lab.stderr());
    // From now on no new connection goes to bravo: its failure count stays.
    let refused = metric(
        &lab.metrics(),
        &format!(
            "turnstile_backend_failures_total{{backend=\"{}\",reason=\"refused\"}}",
            lab.backend_addr(1)
        ),
    );
    std::thread::sleep(Duration::from_secs(2));
    let refused_later = metric(
        &lab.metrics(),
        &format!(
            "turnstile_backend_failures_total{{backend=\"{}\",reason=\"refused\"}}",
            lab.backend_addr(1)
        ),
    );
    assert_eq!(
        refused, refused_later,
        "connections still tried on the ejected backend"
    );
    assert!(refused >= failures_before);

    // Back: readmitted after rise successes, and takes connections again.
    lab.start_backend(1, "http");
    assert!(
        eventually(Duration::from_secs(15), || lab
            .backend_metric("turnstile_backend_up", 1)
            == 1),
        "bravo not readmitted: {}",
        lab.metrics()
    );
    let total = lab.backend_metric("turnstile_backend_connections_total", 1);
    assert!(
        eventually(Duration::from_secs(15), || lab
            .backend_metric("turnstile_backend_connections_total", 1)
            > total + 5),
        "bravo takes no connections after readmission"
    );
    assert!(lab.stderr().contains("backend up"), "{}", lab.stderr());

    // Enough requests after the ejection to mean something, however slowly
    // a loaded machine runs them (bounded).
    eventually(Duration::from_secs(60), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        tally_around_kill(&text, kill_start, kill_done, ejected).after_ejection >= 100
    });
    std::fs::write(format!("{}.stop", log.display()), b"").unwrap();
    let out = load.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let tally = tally_around_kill(&text, kill_start, kill_done, ejected);
    // A request in flight on bravo when it died may end in a reset or a
    // close (its bytes were already relayed, so it cannot be retried); one
    // that hung would show as a timeout. Every other request is answered:
    // retries hide a refusing backend from clients, before and after the
    // ejection.
    assert!(
        tally.other_failures.is_empty() && tally.in_flight_hangs.is_empty(),
        "{tally:?}"
    );
    assert!(tally.after_ejection >= 100, "{tally:?}");
    assert!(tally.answered > tally.after_ejection, "{tally:?}");
    eprintln!("ejected after {ejected_after:?}; {tally:?}; {end}");
    lab.stop_sidecar();
}

/// Seconds since the epoch: the Python load loop stamps its requests with
/// `time.time()`, the same clock.
fn wall_clock() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// The load loop's requests, sorted by when they ran relative to the kill of
/// a backend (the `[kill_start, kill_done]` window) and its ejection.
#[derive(Debug, Default)]
struct KillTally {
    answered: u64,
    /// Answered requests that started after the ejection was seen.
    after_ejection: u64,
    /// Requests in flight during the kill that ended in a reset or a close.
    in_flight_ended: Vec<String>,
    /// Requests in flight during the kill that timed out (never allowed).
    in_flight_hangs: Vec<String>,
    /// Any other failure (never allowed).
    other_failures: Vec<String>,
}

fn tally_around_kill(log: &str, kill_start: f64, kill_done: f64, ejected: f64) -> KillTally {
    let mut t = KillTally::default();
    for line in log.lines() {
        let mut w = line.splitn(3, ' ');
        let (Some(start), Some(end), Some(rest)) = (w.next(), w.next(), w.next()) else {
            t.other_failures.push(format!("unparsed: {line}"));
            continue;
        };
        let (start, end): (f64, f64) = (start.parse().unwrap_or(0.0), end.parse().unwrap_or(0.0));
        let at = format!(
            "{:+.3}s..{:+.3}s after the kill: {rest}",
            start - kill_start,
            end - kill_start
        );
        if !rest.starts_with("FAIL") {
            t.answered += 1;
            if start > ejected {
                t.after_ejection += 1;
            }
            continue;
        }
        let in_flight = start < kill_done && end > kill_start;
        let reset_or_close = rest.contains("ConnectionResetError")
            || rest.contains("closed before the head")
            || rest.contains("closed in the body")
            || rest.contains("BrokenPipeError");
        match (in_flight, reset_or_close) {
            (true, true) => t.in_flight_ended.push(at),
            (true, false) if rest.contains("timed out") => t.in_flight_hangs.push(at),
            _ => t.other_failures.push(at),
        }
    }
    t
}

#[test]
fn sidecar_relays_50_mb_each_way_exactly_under_5_percent_loss() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new("loss", 0);
    lab.start_backend(0, "echo");
    let cfg = lab.write_config("loss.toml", &lab.config("round-robin", &[0], ""));
    lab.start_sidecar(&cfg);
    // Both legs pass through the client namespace: drop 5% of TCP segments
    // entering and leaving it.
    lab.topo
        .client
        .sh_ok(
            "nft add table inet loss && \
             nft add chain inet loss in '{ type filter hook input priority 0; }' && \
             nft add chain inet loss out '{ type filter hook output priority 0; }' && \
             nft add rule inet loss in meta l4proto tcp numgen random mod 100 '<' 5 drop && \
             nft add rule inet loss out meta l4proto tcp numgen random mod 100 '<' 5 drop",
        )
        .expect("nftables loss");
    let started = Instant::now();
    let out = lab.python(
        r#"
import hashlib, threading
SIZE = 50 * 1024 * 1024
def block(i):
    return hashlib.sha256(b"%d" % i).digest() * 2048   # 64 KiB, position-dependent
s = socket.create_connection(LB, timeout=120)
sent = hashlib.sha256()
def writer():
    left, i = SIZE, 0
    while left:
        b = block(i)[:left]
        s.sendall(b)
        sent.update(b)
        left -= len(b)
        i += 1
    s.shutdown(socket.SHUT_WR)
t = threading.Thread(target=writer)
t.start()
got = hashlib.sha256()
n = 0
while True:
    c = s.recv(1 << 20)
    if not c:
        break
    got.update(c)
    n += len(c)
t.join()
s.close()
print(n, sent.hexdigest() == got.hexdigest())
"#,
    );
    let elapsed = started.elapsed();
    assert_eq!(
        out.trim(),
        format!("{} True", 50 * 1024 * 1024),
        "byte-exact echo of 50 MB"
    );
    let text = lab.metrics();
    let label = format!("backend=\"{}\"", lab.backend_addr(0));
    assert_eq!(
        metric(
            &text,
            &format!("turnstile_backend_bytes_total{{{label},direction=\"to_backend\"}}")
        ),
        50 * 1024 * 1024
    );
    assert_eq!(
        metric(
            &text,
            &format!("turnstile_backend_bytes_total{{{label},direction=\"from_backend\"}}")
        ),
        50 * 1024 * 1024
    );
    assert!(
        metric(&text, "turnstile_retransmits_total") > 0,
        "loss must have caused retransmissions"
    );
    eprintln!("50 MB each way under 5% loss in {elapsed:?}");
}

#[test]
fn sidecar_propagates_half_close_and_resets_and_resets_clients_without_backends() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new("close", 0);
    lab.start_backend(0, "count");
    lab.start_backend(1, "rst");
    // Listener 8080 -> count, 8081 -> rst, 8082 -> nothing listens (refused).
    let cfg = format!(
        "interface = \"{}\"\nqueues = 2\nmetrics = \"{METRICS}\"\n\
         [[listener]]\nport = 8080\nbackends = [\"{}\"]\n\
         [[listener]]\nport = 8081\nbackends = [\"{}\"]\n\
         [[listener]]\nport = 8082\nbackends = [\"{}:9999\", \"{}:9999\"]\n",
        lab.topo.server.dev,
        lab.backend_addr(0),
        lab.backend_addr(1),
        lab.backends[0],
        lab.backends[2]
    );
    let cfg = lab.write_config("close.toml", &cfg);
    lab.start_sidecar(&cfg);
    let ip = lab.topo.server.ip;
    let out = lab.python(&format!(
        r#"
# Half-close: our FIN reaches the backend after the data; its answer still
# comes back on the half-open connection, then its FIN.
s = socket.create_connection(("{ip}", 8080), timeout=10)
s.sendall(b"x" * 100000)
s.shutdown(socket.SHUT_WR)
data = b""
while True:
    c = s.recv(4096)
    if not c: break
    data += c
s.close()
print(data.decode().strip())
# Backend reset -> client reset.
s = socket.create_connection(("{ip}", 8081), timeout=10)
s.sendall(b"hello")
try:
    r = s.recv(4096)
    print("rst-backend: no reset", r)
except ConnectionResetError:
    print("rst-backend: reset")
s.close()
# No backend accepts -> client reset. The RST follows our SYN-ACK within
# microseconds, so Linux may report it from connect() itself (the socket is
# already closed when the connecting thread runs) or at the first recv.
try:
    s = socket.create_connection(("{ip}", 8082), timeout=10)
except ConnectionResetError:
    print("no-backend: reset")
else:
    try:
        r = s.recv(4096)
        print("no-backend: no reset", r)
    except ConnectionResetError:
        print("no-backend: reset")
    s.close()
"#
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        vec![
            "alpha got 100000",
            "rst-backend: reset",
            "no-backend: reset"
        ],
        "{out}"
    );
    let text = lab.metrics();
    assert!(metric(&text, "turnstile_proxy_no_backend_total") >= 1);
    assert!(
        metric(&text, "turnstile_proxy_retries_total") >= 1,
        "the second dead backend was tried"
    );
    lab.stop_sidecar();
}

#[test]
fn sidecar_churn_100k_short_connections_through_one_backend() {
    // 1,000 upstream ports, MSL 30 s. The reuse delay caps new connections
    // to one backend at ports / reuse_delay per second; 100 ms lifts the
    // cap to 10,000/s, so the run measures the stack, not the cap. Safety
    // does not rest on the delay: reuse still requires timestamps, a newer
    // ISN and a newer timestamp clock (docs/ARCHITECTURE.md, "TIME_WAIT recycling").
    churn(100);
}

#[test]
#[ignore = "bound by the port rate: ~105 s at the default 1 s reuse delay; run with --ignored"]
fn sidecar_churn_100k_at_the_default_reuse_delay() {
    // With the default 1 s delay the cap is 1,000/s against the 833/s this
    // needs: measured 976/s, 102.5 s, zero failures (sessions wait for a
    // port instead of failing), on 2 shared cores.
    churn(1000);
}

fn churn(reuse_delay_ms: u64) {
    if !need_root() {
        return;
    }
    const TOTAL: u64 = 100_000;
    let mut lab = Lab::new(&format!("churn{reuse_delay_ms}"), 0);
    lab.start_backend(0, "http");
    let upstream = format!(
        "[upstream]\nports = \"50000-50999\"\nmsl_ms = 30000\nreuse = true\nreuse_delay_ms = {reuse_delay_ms}\n"
    );
    let cfg = lab.write_config("churn.toml", &lab.config("round-robin", &[0], &upstream));
    lab.start_sidecar(&cfg);

    // Scrape TIME_WAIT once a second while the load runs.
    let done = Arc::new(AtomicBool::new(false));
    let max_tw = Arc::new(AtomicU64::new(0));
    let sampler = {
        let server = lab.topo.server.clone();
        let (done, max_tw) = (done.clone(), max_tw.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Ok(text) = server.scrape_metrics(METRICS.parse().expect("address"))
                    && let Some(tw) = turnstile::metrics::sample(&text, "turnstile_time_wait")
                {
                    max_tw.fetch_max(tw, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    let started = Instant::now();
    let out = lab.python(&format!(
        r#"
import asyncio
TOTAL = {TOTAL}
ok = 0
fails = []
async def one():
    r, w = await asyncio.wait_for(asyncio.open_connection(*LB), 10)
    try:
        w.write(REQ)
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 OK"), head
        body = await asyncio.wait_for(r.readexactly(6), 10)
        assert body == b"alpha\n", body
    finally:
        w.close()   # the client closes first: the sidecar then closes first upstream
async def worker(n):
    global ok
    for _ in range(n):
        try:
            await one()
            ok += 1
        except Exception as e:
            fails.append(repr(e))
async def main():
    per = TOTAL // 50
    await asyncio.gather(*[worker(per) for _ in range(50)])
t = time.time()
asyncio.run(main())
print(ok, len(fails), "%.1f" % (time.time() - t), repr(fails[:3]))
"#
    ));
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let text = lab.metrics();
    let fields: Vec<&str> = out.split_whitespace().collect();
    let recycled = metric(&text, "turnstile_time_wait_recycled_total{side=\"active\"}");
    let tw_max = max_tw.load(Ordering::Relaxed);
    eprintln!(
        "churn: {out} elapsed {elapsed:?} ({:.0}/s), max TIME_WAIT {tw_max}, recycled active {recycled}",
        TOTAL as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(
        fields[0],
        TOTAL.to_string(),
        "every connection answered: {out}"
    );
    assert_eq!(fields[1], "0", "zero failures: {out}");
    // Every TIME_WAIT entry is an upstream tuple: at most one per port of
    // the 1,000-port range towards the one backend.
    assert!(
        tw_max <= 1000,
        "TIME_WAIT bounded by the port range: {tw_max}"
    );
    assert!(
        recycled > TOTAL / 2,
        "TIME_WAIT tuples recycled on active opens: {recycled}"
    );
    // No connection gave up for lack of a port (sessions may wait for one:
    // the engine's no_port counter counts those attempts, not failures).
    let label = format!("backend=\"{}\",reason=\"no_port\"", lab.backend_addr(0));
    assert_eq!(
        metric(
            &text,
            &format!("turnstile_backend_failures_total{{{label}}}")
        ),
        0
    );
    let no_port = metric(
        &text,
        "turnstile_connect_failures_total{reason=\"no_port\"}",
    );
    eprintln!("connect attempts that waited for a port: {no_port}");
    // A hang guard, not a speed claim (speed is bench/'s job): a loaded CI
    // machine (a CPU hog and four builds) took 162 s here.
    assert!(
        elapsed < Duration::from_secs(900),
        "100k connections took {elapsed:?}"
    );
}

fn ready_status(lab: &Lab) -> String {
    lab.topo
        .server
        .sh_ok(&format!(
            "curl -s -o /dev/null -w '%{{http_code}}' --max-time 2 http://{METRICS}/ready"
        ))
        .unwrap_or_default()
}

/// `/ready` follows the backends and SIGTERM; through `announce_grace_ms`
/// new connections are still served, then the sidecar drains and exits.
#[test]
fn sidecar_ready_follows_backends_and_sigterm_serves_through_the_announce_grace() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new("ready", 0);
    lab.start_backend(0, "http");
    lab.start_backend(1, "http");
    let grace_ms = 3000u64;
    let cfg = lab.write_config(
        "ready.toml",
        &format!(
            "announce_grace_ms = {grace_ms}\n{}",
            lab.config(
                "round-robin",
                &[0, 1],
                "[health]\ninterval_ms = 100\nfall = 2\nrise = 1\n"
            )
        ),
    );
    lab.start_sidecar(&cfg);
    assert_eq!(ready_status(&lab), "200");
    let healthz = lab
        .topo
        .server
        .sh_ok(&format!(
            "curl -s -o /dev/null -w '%{{http_code}}' http://{METRICS}/healthz"
        ))
        .unwrap();
    assert_eq!(healthz, "200");

    // Every backend down: 503; one back: 200.
    lab.kill_backend(0);
    lab.kill_backend(1);
    assert!(
        eventually(Duration::from_secs(10), || ready_status(&lab) == "503"),
        "/ready stayed up without backends"
    );
    lab.start_backend(1, "http");
    assert!(
        eventually(Duration::from_secs(10), || ready_status(&lab) == "200"),
        "/ready did not come back with a backend"
    );

    // SIGTERM under a steady stream of new connections.
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let (out, sigterm_at, ready_after_ms, exited_after_ms) = std::thread::scope(|scope| {
        let client = scope.spawn(|| {
            lab.python(
                r#"
end = time.time() + 7.0
while time.time() < end:
    t = time.time()
    try:
        get(timeout=2)
        print("%.3f ok" % t)
    except Exception as e:
        print("%.3f err" % t)
    time.sleep(0.02)
"#,
            )
        });
        std::thread::sleep(Duration::from_secs(1));
        let sigterm_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = Instant::now();
        lab.signal(libc::SIGTERM);
        let mut ready_after = None;
        let mut exited_after = None;
        while start.elapsed() < Duration::from_secs(15) && exited_after.is_none() {
            if ready_after.is_none() && ready_status(&lab) == "503" {
                ready_after = Some(start.elapsed().as_millis() as u64);
            }
            // SAFETY: kill(pid, 0) only checks that our child exists.
            let pid = lab.sidecar_pid();
            let mut status = 0;
            // SAFETY: waitpid on our own child, without blocking.
            if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
                exited_after = Some(start.elapsed().as_millis() as u64);
                assert!(
                    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                    "exit status {status}"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (
            client.join().unwrap(),
            sigterm_at,
            ready_after,
            exited_after,
        )
    });
    // The child was reaped above.
    std::mem::forget(lab.sidecar.take());
    let ready_after_ms = ready_after_ms.expect("/ready never said 503 after SIGTERM");
    let exited_after_ms = exited_after_ms.expect("no exit after SIGTERM");
    assert!(
        ready_after_ms < 1000,
        "/ready took {ready_after_ms} ms to say 503"
    );
    assert!(
        exited_after_ms >= grace_ms,
        "exited {exited_after_ms} ms after SIGTERM, before the {grace_ms} ms grace"
    );
    // Connections started from SIGTERM until 300 ms before the grace ends
    // were all served.
    let mut in_grace = 0;
    for line in out.lines() {
        let (t, r) = line.split_once(' ').unwrap();
        let t: f64 = t.parse().unwrap();
        assert!(t >= t0 - 1.0);
        if t >= sigterm_at && t < sigterm_at + (grace_ms as f64 - 300.0) / 1000.0 {
            assert_eq!(
                r,
                "ok",
                "a new connection at +{:.3} s failed during the grace",
                t - sigterm_at
            );
            in_grace += 1;
        }
    }
    assert!(
        in_grace >= 20,
        "only {in_grace} connections during the grace:\n{out}"
    );
    eprintln!(
        "/ready 503 after {ready_after_ms} ms; {in_grace} new connections served during the grace; exit after {exited_after_ms} ms"
    );
}

/// A listener on a virtual IP the kernel does not have: the client's router
/// (here: a static route in the client namespace) sends to the server's
/// interface address as next hop. The interface's own address is not
/// served on that port. A flow this instance has no state for (an
/// established connection of another instance, here of the previous run)
/// is answered at once with a RST, counted.
#[test]
fn sidecar_serves_a_virtual_ip_and_resets_flows_it_has_no_state_for() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new("vip", 0);
    for i in 0..3 {
        lab.start_backend(i, "http");
    }
    let vip = std::net::Ipv4Addr::new(198, 19, 255, 100);
    lab.topo
        .client
        .sh_ok(&format!("ip route add {vip}/32 via {}", lab.topo.server.ip))
        .expect("route to the VIP");
    let text = lab.config("round-robin", &[0, 1, 2], "").replace(
        "[[listener]]\n",
        &format!("[[listener]]\naddress = \"{vip}\"\n"),
    );
    let cfg = lab.write_config("vip.toml", &text);
    lab.start_sidecar(&cfg);
    let addrs = lab.topo.server.sh_ok("ip -4 addr show").unwrap();
    assert!(
        !addrs.contains(&vip.to_string()),
        "the kernel must not own the VIP: {addrs}"
    );

    let out = lab
        .topo
        .client
        .sh_ok(&format!("curl -s -i --max-time 5 http://{vip}:{LB_PORT}/"))
        .expect("curl to the VIP");
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    assert!(NAMES.iter().any(|n| out.trim_end().ends_with(n)), "{out}");
    // The interface address on the same port is the kernel's (nothing
    // listens there): refused, not proxied.
    let direct = lab
        .topo
        .client
        .sh(&format!(
            "curl -s -o /dev/null -w '%{{http_code}}' --max-time 3 http://{}:{LB_PORT}/",
            lab.topo.server.ip
        ))
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&direct.stdout),
        "000",
        "the interface address must not be served"
    );

    // An established flow, then a new instance without its state.
    let go = lab.dir.join("go");
    let program = format!(
        "LB = (\"{vip}\", {LB_PORT})\nSOURCES = []\n{CLIENT_PY}\n{}",
        format_args!(
            r#"
import os
s = socket.create_connection(LB, timeout=5)
s.sendall(b"GET /hold HTTP/1.1\r\nHost: lb\r\n\r\n")
head = s.recv(4096)
assert head.startswith(b"HTTP/1.1 200 OK"), head
print("open", flush=True)
deadline = time.time() + 30
while not os.path.exists("{go}") and time.time() < deadline:
    time.sleep(0.02)
t = time.time()
s.settimeout(5)
try:
    s.sendall(b"more")
    data = s.recv(4096)
    print("no-reset %r" % data)
except ConnectionResetError:
    print("reset %.3f" % (time.time() - t))
except socket.timeout:
    print("hang")
"#,
            go = go.display()
        )
    );
    let mut py = lab
        .topo
        .client
        .command("python3")
        .args(["-c", &program])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("client python");
    let mut reader = BufReader::new(py.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "open");
    // The instance goes away without a word (SIGKILL: no FIN, no RST) and
    // a new one takes the route.
    let mut old = lab.sidecar.take().unwrap();
    old.kill().unwrap();
    old.wait().unwrap();
    lab.start_sidecar(&cfg);
    std::fs::write(&go, "").unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    let _ = py.wait();
    let secs: f64 = line
        .trim()
        .strip_prefix("reset ")
        .unwrap_or_else(|| panic!("expected an immediate reset, got {line:?}"))
        .parse()
        .unwrap();
    assert!(secs < 1.0, "the reset took {secs} s");
    // The RST is sent (and counted) by the listener's path for a segment
    // with no connection; shards publish their counters every 50 ms, so a
    // scrape right after the client saw the RST can still read 0: wait for
    // the next publication rather than read once.
    let mut last = String::new();
    let seen = Instant::now();
    let counted = eventually(Duration::from_secs(3), || {
        last = lab.metrics();
        metric(&last, "turnstile_rst_unknown_flow_total") >= 1
    });
    assert!(
        counted,
        "the reset was not counted as an unknown flow (rst_sent = {})",
        metric(&last, "turnstile_rst_sent_total")
    );
    eprintln!(
        "unknown flow reset after {:.0} ms, counted in the metrics {} ms after the client saw it",
        secs * 1000.0,
        seen.elapsed().as_millis()
    );
    lab.stop_sidecar();
}

/// deploy/grafana/turnstile.json: valid JSON, and every metric name and
/// grouping label its expressions use is exported by a running sidecar.
#[test]
fn grafana_dashboard_expressions_match_the_exported_metrics() {
    if !need_root() {
        return;
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/turnstile.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("dashboard JSON");
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            exprs.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    assert!(exprs.len() >= 12, "{exprs:?}");

    let mut lab = Lab::new("grafana", 0);
    lab.start_backend(0, "http");
    let cfg = lab.write_config("g.toml", &lab.config("maglev", &[0, 1], ""));
    lab.start_sidecar(&cfg);
    // Some traffic, so that labelled families have their samples.
    let out = lab
        .topo
        .client
        .sh_ok(&format!(
            "curl -s --max-time 5 http://{}:{LB_PORT}/",
            lab.topo.server.ip
        ))
        .unwrap();
    assert!(out.contains("alpha"), "{out}");
    let text = lab.metrics();
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for e in &exprs {
        let names: Vec<&str> = e
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("turnstile_"))
            .collect();
        assert!(!names.is_empty(), "no turnstile metric in {e}");
        for n in &names {
            assert!(
                exported.contains(n),
                "{n} (in {e}) is not exported; have {exported:?}"
            );
        }
        // Grouping labels (other than the scrape's own `instance`) must be
        // labels of those metrics.
        if let Some(by) = e.split("by (").nth(1).and_then(|r| r.split(')').next()) {
            for label in by.split(',').map(str::trim).filter(|l| *l != "instance") {
                let has = text.lines().filter(|l| !l.starts_with('#')).any(|l| {
                    names.iter().any(|n| l.starts_with(&format!("{n}{{")))
                        && l.contains(&format!("{label}=\""))
                });
                assert!(has, "label {label} (in {e}) not found on {names:?}");
            }
        }
    }
    lab.stop_sidecar();
}

/// Children killed on drop (bird, the checker), also when a test panics.
struct Kids(Vec<std::process::Child>);

impl Drop for Kids {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// deploy/bird: bird2 beside the sidecar announces the VIP (through
/// `turnstile-announce`, which follows /ready) to a router (bird2 in the
/// client namespace, installing the route in its kernel). SIGTERM: /ready
/// says 503, the route is withdrawn while the grace still serves new
/// connections.
#[test]
fn sidecar_vip_is_announced_with_bgp_while_ready_and_withdrawn_on_sigterm() {
    if !need_root() {
        return;
    }
    if std::process::Command::new("bird")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("bird2 is needed (apt-get install bird2; deploy/dev-setup.sh installs it)");
    }
    let mut lab = Lab::new("bgp", 0);
    lab.start_backend(0, "http");
    let vip = std::net::Ipv4Addr::new(198, 19, 255, 101);
    let (server, client) = (lab.topo.server.ip, lab.topo.client.ip);
    let grace_ms = 5000u64;
    let text = format!(
        "announce_grace_ms = {grace_ms}\n{}",
        lab.config("round-robin", &[0], "").replace(
            "[[listener]]\n",
            &format!("[[listener]]\naddress = \"{vip}\"\n")
        )
    );
    let cfg = lab.write_config("bgp.toml", &text);
    lab.start_sidecar(&cfg);

    // The instance's bird: the shipped file with this topology's addresses.
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/bird/bird.conf"
    ))
    .unwrap();
    let instance_conf = shipped
        .replace("198.18.0.100/32", &format!("{vip}/32"))
        .replace("router id 198.18.0.2;", &format!("router id {server};"))
        .replace("neighbor 198.18.0.1 ", &format!("neighbor {client} "));
    let router_conf = format!(
        "router id {client};\nprotocol device {{}}\nprotocol kernel {{\n\tmerge paths on;\n\tipv4 {{ import none; export all; }};\n}}\nprotocol bgp a {{\n\tlocal as 65000;\n\tneighbor {server} as 65001;\n\tpassive on;\n\thold time 3;\n\tkeepalive time 1;\n\tipv4 {{ import all; export none; }};\n}}\n"
    );
    let dir = lab.dir.clone();
    std::fs::write(dir.join("instance.conf"), instance_conf).unwrap();
    std::fs::write(dir.join("router.conf"), router_conf).unwrap();
    let bird = |host: &turnstile::topology::Host, name: &str| {
        host.command("bird")
            .args(["-f", "-c"])
            .arg(dir.join(format!("{name}.conf")))
            .arg("-s")
            .arg(dir.join(format!("{name}.ctl")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn bird")
    };
    let mut kids = Kids(vec![
        bird(&lab.topo.client, "router"),
        bird(&lab.topo.server, "instance"),
    ]);
    std::thread::sleep(Duration::from_millis(300));
    kids.0.push(
        lab.topo
            .server
            .command(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/deploy/bird/turnstile-announce"
            ))
            .args([METRICS, "vip", "0.1"])
            .env("BIRD_SOCKET", dir.join("instance.ctl"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn turnstile-announce"),
    );
    let has_route = || {
        lab.topo
            .client
            .sh_ok(&format!("ip route show {vip}/32"))
            .unwrap_or_default()
            .contains(&format!("via {server}"))
    };
    assert!(
        eventually(Duration::from_secs(30), has_route),
        "the router never learned the VIP: {}",
        lab.topo.client.sh_ok("ip route").unwrap_or_default()
    );
    let out = lab
        .topo
        .client
        .sh_ok(&format!("curl -s --max-time 5 http://{vip}:{LB_PORT}/"))
        .unwrap();
    assert_eq!(out.trim(), "alpha");

    // Withdrawn, and still within the grace: the instance must still take
    // new connections, as a router that has not converged yet sends them
    // (a static route stands in for it). The withdrawal can beat the first
    // request through the BGP route on a loaded machine, so this is what
    // proves the grace here.
    let serve_after_withdrawal = || -> u32 {
        let r = lab
            .topo
            .client
            .sh_ok(&format!(
                "ip route replace {vip}/32 via {server}; \
                 curl -s --max-time 2 http://{vip}:{LB_PORT}/; ip route del {vip}/32 via {server} || true"
            ))
            .unwrap_or_default();
        assert_eq!(
            r.trim(),
            "alpha",
            "after the withdrawal, within the grace, a new connection was not served"
        );
        1
    };
    // SIGTERM: withdrawn within the grace, served until then.
    let start = Instant::now();
    lab.signal(libc::SIGTERM);
    let mut withdrawn_ms = None;
    let mut served = 0;
    while start.elapsed() < Duration::from_millis(grace_ms - 500) {
        if withdrawn_ms.is_none() && !has_route() {
            withdrawn_ms = Some(start.elapsed().as_millis() as u64);
            served += serve_after_withdrawal();
        }
        if withdrawn_ms.is_none() {
            let r = lab
                .topo
                .client
                .sh_ok(&format!("curl -s --max-time 2 http://{vip}:{LB_PORT}/"))
                .unwrap_or_default();
            if r.trim() != "alpha" && !has_route() {
                // The route went between the check above and this request
                // (the router then has no path to the VIP): the withdrawal,
                // not a failure of the instance.
                withdrawn_ms = Some(start.elapsed().as_millis() as u64);
                served += serve_after_withdrawal();
                continue;
            }
            assert_eq!(
                r.trim(),
                "alpha",
                "a new connection failed before the withdrawal (the route still there)"
            );
            served += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let withdrawn_ms = withdrawn_ms.expect("the route was not withdrawn within the grace");
    assert!(served >= 1);
    eprintln!(
        "route withdrawn {withdrawn_ms} ms after SIGTERM; {served} connections served meanwhile"
    );
    lab.stop_sidecar();
    drop(kids);
}

/// Many concurrent GETs through the sidecar (asyncio, `conc` at a time);
/// prints the backend names, and the errors on stderr.
const MANY_PY: &str = r#"
import asyncio
async def one(sem, path):
    async with sem:
        r, w = await asyncio.wait_for(asyncio.open_connection(*LB), 30)
        try:
            w.write(b"GET %s HTTP/1.1\r\nHost: lb\r\n\r\n" % path.encode())
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
            n = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
            body = await asyncio.wait_for(r.readexactly(n), 30)
            return body.decode().strip()
        finally:
            w.close()
async def main(total, conc):
    sem = asyncio.Semaphore(conc)
    return await asyncio.gather(*[one(sem, "/") for _ in range(total)], return_exceptions=True)
def many(total, conc):
    res = asyncio.run(main(total, conc))
    bad = [type(r).__name__ for r in res if not isinstance(r, str)]
    print(" ".join(r for r in res if isinstance(r, str)))
    print("errors", len(bad), " ".join(sorted(set(bad))))
"#;

#[test]
fn sidecar_weights_1_2_3_over_30000_round_robin_connections() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new("weights", 0);
    for i in 0..3 {
        lab.start_backend(i, "http");
    }
    let b = |i: usize, w: u32| format!("{{ addr = \"{}\", weight = {w} }}", lab.backend_addr(i));
    let text = format!(
        "interface = \"{}\"\nqueues = 2\nmetrics = \"{METRICS}\"\n\n[[listener]]\nport = {LB_PORT}\nbackends = [{}, {}, {}]\n",
        lab.topo.server.dev,
        b(0, 1),
        b(1, 2),
        b(2, 3)
    );
    let cfg = lab.write_config("weights.toml", &text);
    lab.start_sidecar(&cfg);
    let out = lab.python(&format!("{MANY_PY}\nmany(30000, 100)\n"));
    let c = counts(&out);
    assert!(
        out.contains("errors 0"),
        "{}",
        &out[out.len().saturating_sub(200)..]
    );
    let total: u64 = NAMES.iter().map(|n| c.get(*n).copied().unwrap_or(0)).sum();
    assert_eq!(total, 30_000, "{c:?}");
    for (i, w) in [1u64, 2, 3].into_iter().enumerate() {
        let n = c.get(NAMES[i]).copied().unwrap_or(0);
        let want = 30_000 * w / 6;
        assert!(
            n.abs_diff(want) * 50 <= want,
            "weight {w}: {n} of 30000 (want {want} within 2%): {c:?}"
        );
    }
    lab.stop_sidecar();
}

#[test]
fn sidecar_max_connections_holds_under_200_clients_and_the_queue_times_out_cleanly() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new("maxconn", 0);
    lab.start_backend(0, "slow");
    let (dev, addr) = (lab.topo.server.dev.clone(), lab.backend_addr(0));
    let text = |connect_ms: u64| {
        format!(
            "interface = \"{}\"\nqueues = 2\nmetrics = \"{METRICS}\"\n\n[[listener]]\nport = {LB_PORT}\n\
             backends = [{{ addr = \"{}\", max_connections = 20 }}]\n\n\
             [health]\ninterval_ms = 3600000\n[timeouts]\nconnect_ms = {connect_ms}\n",
            dev, addr
        )
    };
    let cfg = lab.write_config("maxconn.toml", &text(30_000));
    lab.start_sidecar(&cfg);
    // 200 at once, 300 ms each, 20 at a time: about 3 s, every one served.
    let peak = format!(
        "import urllib.request\nprint(\"peak\", urllib.request.urlopen(\"http://{}:{BACKEND_PORT}/peak\", timeout=5).read().decode().strip())\n",
        lab.backends[0]
    );
    let out = lab.python(&format!("{MANY_PY}\nmany(200, 200)\n{peak}"));
    assert!(out.contains("errors 0"), "{out}");
    assert_eq!(counts(&out).get(NAMES[0]).copied(), Some(200), "{out}");
    assert!(
        out.contains("peak 20\n"),
        "the backend held at most 20, and 20: {out}"
    );
    let text1 = lab.metrics();
    assert!(
        metric(&text1, "turnstile_proxy_queued_total") >= 150,
        "{text1}"
    );
    assert_eq!(metric(&text1, "turnstile_proxy_queue_timeouts_total"), 0);

    // A 500 ms queue: 20 served at once, 20 more as those end at 300 ms,
    // the rest reset at 500 ms (a clean RST, counted).
    std::fs::write(&cfg, text(500)).unwrap();
    lab.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    let out = lab.python(&format!("{MANY_PY}\nmany(200, 200)\n{peak}"));
    let served = counts(&out).get(NAMES[0]).copied().unwrap_or(0);
    assert!((20..=60).contains(&served), "{out}");
    let errors = 200 - served;
    assert!(
        out.contains(&format!("errors {errors} ")),
        "every other client failed: {out}"
    );
    assert!(
        !out.contains("TimeoutError"),
        "reset promptly, not left hanging: {out}"
    );
    assert!(out.contains("peak 20\n"), "{out}");
    let text2 = lab.metrics();
    assert_eq!(
        metric(&text2, "turnstile_proxy_queue_timeouts_total"),
        errors,
        "{text2}"
    );
    lab.stop_sidecar();
}
