//! Two turnstile instances behind an ECMP router, the VIP's routes learned
//! over BGP from bird beside each instance (tests/common/fleet.rs draws
//! the topology). Maglev sends a client address to the same backend
//! whichever instance its flow reaches; SIGTERM on one instance moves new
//! flows to the other without a failed connection, and its established
//! flows, moved by the router to an instance without their state, are
//! reset at once.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::fleet::{BACKEND_PORT, Fleet, METRICS};
use common::lab::CLIENT_PY;
use common::*;

const PORT: u16 = 8080;
const GRACE_MS: u64 = 3000;

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Runs `body` in the hosts namespace with LB (the VIP) and SOURCES
/// (the client addresses) defined.
fn hosts_python(f: &Fleet, body: &str) -> String {
    let out = f
        .hosts
        .command("python3")
        .args(["-c", &program(f, body)])
        .stdin(Stdio::null())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn program(f: &Fleet, body: &str) -> String {
    let sources: Vec<String> = f.clients.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "LB = (\"{}\", {PORT})\nSOURCES = [{}]\n{CLIENT_PY}\n{body}",
        f.vip,
        sources.join(", ")
    )
}

/// Each client address's backend, one new connection per address.
fn backend_per_client(f: &Fleet) -> BTreeMap<String, String> {
    hosts_python(
        f,
        "for src in SOURCES:\n    print(src, get(src=src, timeout=5))\n",
    )
    .lines()
    .filter_map(|l| {
        let (a, b) = l.split_once(' ')?;
        Some((a.to_string(), b.to_string()))
    })
    .collect()
}

fn accepted(inst: &common::fleet::Instance) -> u64 {
    metric(&inst.metrics(), "turnstile_connections_accepted_total")
}

/// The accepted count once it stopped moving: shards publish their counters
/// every 50 ms, so a scrape right after the last connection can miss it (a
/// fresh-clone run under load saw 48 of 50). Two equal reads 150 ms apart,
/// at most 3 s.
fn settled_accepted(inst: &common::fleet::Instance) -> u64 {
    let mut last = accepted(inst);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(150));
        let now = accepted(inst);
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

fn birdc(ctl: &std::path::Path, what: &str) {
    let out = Command::new("birdc")
        .arg("-s")
        .arg(ctl)
        .args(what.split(' '))
        .output()
        .expect("birdc");
    assert!(out.status.success(), "birdc {what}");
}

#[test]
fn two_instances_behind_ecmp_agree_on_backends_and_hand_over_on_sigterm() {
    if !need_root() {
        return;
    }
    if Command::new("bird").arg("--version").output().is_err() {
        panic!("bird2 is needed (apt-get install bird2; deploy/dev-setup.sh installs it)");
    }
    let _serial = serial();
    let mut f = Fleet::new(50);
    for i in 0..3 {
        f.start_backend(i);
    }
    let backends: Vec<String> = f
        .backends
        .iter()
        .map(|b| format!("\"{b}:{BACKEND_PORT}\""))
        .collect();
    for which in ['a', 'b'] {
        let dev = if which == 'a' {
            f.a.host.dev.clone()
        } else {
            f.b.host.dev.clone()
        };
        let cfg = f.write(
            &format!("{which}.toml"),
            &format!(
                "interface = \"{dev}\"\nqueues = 1\nmetrics = \"{METRICS}\"\nmaglev_seed = 42\nannounce_grace_ms = {GRACE_MS}\n\n[[listener]]\naddress = \"{}\"\nport = {PORT}\nbalance = \"maglev\"\nbackends = [{}]\n\n[timeouts]\ndrain_ms = 2000\n",
                f.vip,
                backends.join(", ")
            ),
        );
        f.start_instance(which, &cfg);
    }

    // bird beside each instance (the shipped file, this topology's
    // addresses) and the router's, which merges the two paths.
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/bird/bird.conf"
    ))
    .unwrap();
    let mut router_conf = format!(
        "router id {};\nprotocol device {{}}\nprotocol kernel {{\n\tmerge paths on;\n\tipv4 {{ import none; export all; }};\n}}\n",
        f.router.ip
    );
    let mut ctls = Vec::new();
    for which in ['a', 'b'] {
        let inst = if which == 'a' { &f.a } else { &f.b };
        let (host, ip, router_ip) = (inst.host.clone(), inst.host.ip, inst.router_ip);
        router_conf += &format!(
            "protocol bgp {which} {{\n\tlocal as 65000;\n\tneighbor {ip} as 65001;\n\tpassive on;\n\thold time 3;\n\tkeepalive time 1;\n\tipv4 {{ import all; export none; }};\n}}\n"
        );
        let conf = shipped
            .replace("198.18.0.100/32", &format!("{}/32", f.vip))
            .replace("router id 198.18.0.2;", &format!("router id {ip};"))
            .replace("neighbor 198.18.0.1 ", &format!("neighbor {router_ip} "));
        let ctl = f.start_bird(&host, which.to_string().as_str(), &conf);
        let mut announce = host.command(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/bird/turnstile-announce"
        ));
        announce
            .args([METRICS, "vip", "0.1"])
            .env("BIRD_SOCKET", &ctl);
        f.keep(announce);
        ctls.push(ctl);
    }
    let router = f.router.clone();
    let router_ctl = f.start_bird(&router, "router", &router_conf);
    assert!(
        eventually(Duration::from_secs(40), || f.next_hops() == (true, true)),
        "no ECMP route to the VIP: {}",
        f.vip_route()
    );
    eprintln!("router: {}", f.vip_route().replace('\n', " "));

    // Both tables byte for byte.
    let (ta, tb) = (f.a.get("/maglev"), f.b.get("/maglev"));
    assert!(ta.starts_with(&format!("listener {PORT}\n")), "{ta:.200}");
    assert_eq!(ta.len(), tb.len());
    assert!(ta == tb, "the two instances' Maglev tables differ");

    // Each instance in turn alone: the same backend per client address.
    let mut via = Vec::new();
    for (only, off) in [('a', "b"), ('b', "a")] {
        birdc(&router_ctl, &format!("disable {off}"));
        let want = if only == 'a' {
            (true, false)
        } else {
            (false, true)
        };
        assert!(
            eventually(Duration::from_secs(15), || f.next_hops() == want),
            "forcing {only}: {}",
            f.vip_route()
        );
        let (a0, b0) = (settled_accepted(&f.a), settled_accepted(&f.b));
        let map = backend_per_client(&f);
        let (a1, b1) = (settled_accepted(&f.a), settled_accepted(&f.b));
        assert_eq!(map.len(), 50, "{map:?}");
        if only == 'a' {
            assert!(a1 - a0 >= 50 && b1 == b0, "a {a0}->{a1}, b {b0}->{b1}");
        } else {
            assert!(b1 - b0 >= 50 && a1 == a0, "a {a0}->{a1}, b {b0}->{b1}");
        }
        via.push(map);
        birdc(&router_ctl, &format!("enable {off}"));
        assert!(
            eventually(Duration::from_secs(30), || f.next_hops() == (true, true)),
            "ECMP not restored: {}",
            f.vip_route()
        );
    }
    assert_eq!(via[0], via[1], "a client's backend depends on the instance");
    let spread: std::collections::BTreeSet<&String> = via[0].values().collect();
    assert_eq!(spread.len(), 3, "50 clients over 3 backends: {spread:?}");
    // Both paths at once: the router spreads flows, the backends stay.
    let (a0, b0) = (settled_accepted(&f.a), settled_accepted(&f.b));
    for _ in 0..2 {
        assert_eq!(backend_per_client(&f), via[0]);
    }
    let (a1, b1) = (settled_accepted(&f.a), settled_accepted(&f.b));
    eprintln!(
        "ECMP: {} of 100 new flows via a, {} via b, every client on its backend",
        a1 - a0,
        b1 - b0
    );
    assert!(a1 > a0 && b1 > b0, "one instance took every flow");

    // Established flows before the SIGTERM, kept open.
    let held_py = program(
        &f,
        r#"
socks = []
for i in range(16):
    s = socket.create_connection(LB, timeout=5, source_address=(SOURCES[i], 0))
    s.sendall(REQ)
    read_response(s)
    socks.append(s)
print("open", flush=True)
sys.stdin.readline()
out = []
for s in socks:
    t = time.time()
    s.settimeout(3)
    try:
        s.sendall(REQ)
        read_response(s)
        out.append("ok")
    except ConnectionResetError:
        out.append("reset %.0f" % ((time.time() - t) * 1000))
    except socket.timeout:
        out.append("hang")
    except Exception as e:
        out.append("closed " + type(e).__name__)
print(" | ".join(out), flush=True)
"#,
    );
    let mut held = f
        .hosts
        .command("python3")
        .args(["-c", &held_py])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map(ChildGuard)
        .expect("held flows");
    let mut held_in = held.0.stdin.take().unwrap();
    let mut held_out = BufReader::new(held.0.stdout.take().unwrap());
    let mut line = String::new();
    held_out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "open");

    // New clients under load: a connection every 20 ms for 12 s, rotating
    // over the 50 addresses; each logs its wall-clock time and outcome.
    let load_py = program(
        &f,
        r#"
end = time.time() + 12
i = 0
while time.time() < end:
    t = time.time()
    try:
        get(src=SOURCES[i % len(SOURCES)], timeout=3)
        print("%.3f ok" % t, flush=True)
    except Exception as e:
        print("%.3f fail %s" % (t, type(e).__name__), flush=True)
    i += 1
    time.sleep(0.02)
"#,
    );
    let mut load = f
        .hosts
        .command("python3")
        .args(["-c", &load_py])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map(ChildGuard)
        .expect("load");
    std::thread::sleep(Duration::from_secs(2));

    let a_before = accepted(&f.a);
    let sigterm_at = now_s();
    let start = Instant::now();
    // SAFETY: kill(2) on our own child.
    let pid = f.a.proc.as_ref().unwrap().id() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let mut ready_503_ms = None;
    let mut converged_ms = None;
    while start.elapsed() < Duration::from_secs(15) && converged_ms.is_none() {
        if ready_503_ms.is_none() && f.a.ready() == "503" {
            ready_503_ms = Some(start.elapsed().as_millis());
        }
        if f.next_hops() == (false, true) {
            converged_ms = Some(start.elapsed().as_millis());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let converged_ms =
        converged_ms.unwrap_or_else(|| panic!("A's route was not withdrawn: {}", f.vip_route()));
    let converged_at = sigterm_at + converged_ms as f64 / 1000.0;
    let ready_503_ms = ready_503_ms.expect("/ready never said 503");
    // Still serving in the grace: A answers its metrics and counts.
    let a_in_grace = accepted(&f.a) - a_before;
    assert!(
        (converged_ms as u64) < GRACE_MS,
        "withdrawn after {converged_ms} ms, past the {GRACE_MS} ms grace"
    );

    // A's established flows now reach B: reset at once, never a hang.
    std::thread::sleep(Duration::from_millis(300));
    let rst_b_before = metric(&f.b.metrics(), "turnstile_rst_unknown_flow_total");
    writeln!(held_in, "probe").unwrap();
    held_in.flush().unwrap();
    line.clear();
    held_out.read_line(&mut line).unwrap();
    let outcomes: Vec<&str> = line.trim().split(" | ").collect();
    assert_eq!(outcomes.len(), 16, "{line}");
    assert!(
        !outcomes
            .iter()
            .any(|o| *o == "hang" || o.starts_with("closed")),
        "held flows: {line}"
    );
    let resets: Vec<u64> = outcomes
        .iter()
        .filter_map(|o| o.strip_prefix("reset ")?.parse().ok())
        .collect();
    assert!(
        !resets.is_empty(),
        "no held flow was on A (16 flows): {line}"
    );
    assert!(resets.iter().all(|&ms| ms < 1000), "slow resets: {line}");
    let mut rst_b = 0;
    assert!(
        eventually(Duration::from_secs(3), || {
            rst_b = metric(&f.b.metrics(), "turnstile_rst_unknown_flow_total");
            rst_b >= rst_b_before + resets.len() as u64
        }),
        "B counted {} unknown-flow resets for {} reset flows",
        rst_b - rst_b_before,
        resets.len()
    );

    // The load's log: no failure once the route moved (nor before).
    let out = load.0.wait_with_output_guarded();
    let mut before = (0, 0);
    let mut after = (0, 0);
    let mut failures = Vec::new();
    for l in out.lines() {
        let mut it = l.split(' ');
        let (Some(t), Some(what)) = (it.next(), it.next()) else {
            continue;
        };
        let t: f64 = t.parse().unwrap_or(0.0);
        let bucket = if t >= converged_at {
            &mut after
        } else {
            &mut before
        };
        if what == "ok" {
            bucket.0 += 1;
        } else {
            bucket.1 += 1;
            failures.push(format!("{:.3} {l}", t - sigterm_at));
        }
    }
    eprintln!(
        "SIGTERM to A: /ready 503 after {ready_503_ms} ms, route withdrawn (converged) after {converged_ms} ms; \
         A accepted {a_in_grace} new flows meanwhile; new clients: {} ok / {} failed before convergence, \
         {} ok / {} failed after; held flows: {} of 16 on A reset by B in {:?} ms, the rest kept",
        before.0,
        before.1,
        after.0,
        after.1,
        resets.len(),
        resets
    );
    assert!(
        after.0 >= 50,
        "too few connections after convergence: {after:?}"
    );
    // Before convergence a connection in flight while the route changes
    // may break (its first packets reached A, the rest reach B): plain
    // ECMP's price, reported above, not asserted.
    assert_eq!(after.1, 0, "failed after convergence: {failures:?}");

    // A drains and exits 0 after the grace.
    let mut a = f.a.proc.take().unwrap();
    let exited = eventually(Duration::from_secs(20), || {
        a.try_wait().ok().flatten().is_some()
    });
    assert!(exited, "A did not exit after the grace and the drain");
    assert!(a.wait().unwrap().success(), "A: {}", f.a.stderr());
    drop(held_in);
    drop(held);
    let _ = ctls;
}

/// Reads a child's whole stdout (it ends on its own, bounded by its own
/// clock); the guard still kills it if reading fails.
trait WaitGuarded {
    fn wait_with_output_guarded(&mut self) -> String;
}

impl WaitGuarded for std::process::Child {
    fn wait_with_output_guarded(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut out) = self.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut out, &mut s);
        }
        let _ = self.wait();
        s
    }
}
