//! The sidecar (`turnstile run`) as a fleet member sees it: `/ready`
//! through SIGTERM and the announce grace, a virtual IP, the Grafana
//! dashboard's metrics, and BGP announcement with bird2 (`common::lab`).
//! Needs root.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::lab::*;
use common::*;

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
