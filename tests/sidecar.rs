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
