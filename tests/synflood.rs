//! A SYN flood at the flooder's full rate against `turnstile serve --app
//! http` with its default `--xdp-mode auto` on a one-queue veth (auto
//! attaches in generic mode there: deploy/README.md says why),
//! legitimate kernel clients in the flooder's own namespace, and the
//! kernel's stack (SYN cookies on) offered a flood of the same rate beside
//! it. Needs root.
//!
//! The flood is `turnstile-bench syn-flood` (bare SYNs from the client's
//! address, every source port in turn, pinned to the last core); the
//! clients are `turnstile-bench kernel-client` (4 connections in flight,
//! each: connect, GET, check the response, close). A SYN of theirs lost
//! costs a 1 s retransmission, so the p99 bound holds only if almost none
//! is lost at the flood's rate. The kernel's row shows the rate its flood
//! reached: paced at turnstile's, the flooder fell short of it there
//! (101-125k SYN/s where turnstile's reached 150-188k).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const BENCH: &str = env!("CARGO_BIN_EXE_turnstile-bench");
const PORT: u16 = 8080;
const METRICS: &str = "127.0.0.1:9941";
const FLOOD_S: f64 = 10.0;
const CLIENT_S: f64 = 6.0;

struct Run {
    pps: f64,
    ok: u64,
    failed: u64,
    p99_ms: f64,
    max_ms: f64,
}

impl Run {
    fn success(&self) -> f64 {
        self.ok as f64 / (self.ok + self.failed).max(1) as f64
    }
}

fn last_core() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()) - 1
}

fn spawn_flood(topo: &Topology, pps: Option<u64>) -> Child {
    let mac = topo
        .server
        .sh_ok(&format!("cat /sys/class/net/{}/address", topo.server.dev))
        .expect("server MAC");
    let mut cmd = topo.client.command("taskset");
    cmd.args(["-c", &last_core().to_string(), BENCH, "syn-flood"])
        .args(["--src", &topo.client.ip.to_string()])
        .args(["--target", &format!("{}:{PORT}", topo.server.ip)])
        .args(["--duration", &FLOOD_S.to_string()])
        .args(["--iface", &topo.client.dev, "--dst-mac", mac.trim()]);
    if let Some(p) = pps {
        cmd.args(["--pps", &p.to_string()]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn syn-flood")
}

fn json_line(out: &std::process::Output, what: &str) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "{what} printed no report: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{what} report {line:?}: {e}"))
}

/// Where frames are lost, read before and after a run: both veth ends'
/// per-queue ring and XDP counters (`ethtool -S`), their device drops, and
/// the client's TCP counters (SYN retransmissions, RSTs sent).
type Counters = std::collections::BTreeMap<String, u64>;

fn counters(topo: &Topology) -> Counters {
    let mut c = Counters::new();
    for (side, host) in [("server", &topo.server), ("client", &topo.client)] {
        if let Ok(text) = host.sh_ok(&format!("ethtool -S {}", host.dev)) {
            for l in text.lines() {
                if let Some((k, v)) = l.trim().split_once(": ")
                    && k != "peer_ifindex"
                    && let Ok(v) = v.trim().parse()
                {
                    c.insert(format!("{side} {k}"), v);
                }
            }
        }
        for (k, file) in [("rx_dropped", "rx_dropped"), ("tx_dropped", "tx_dropped")] {
            if let Ok(v) = host.sh_ok(&format!(
                "cat /sys/class/net/{}/statistics/{file}",
                host.dev
            )) && let Ok(v) = v.trim().parse()
            {
                c.insert(format!("{side} dev_{k}"), v);
            }
        }
    }
    if let Ok(text) = topo.client.sh_ok("nstat -az") {
        for l in text.lines() {
            let mut f = l.split_whitespace();
            if let (Some(k), Some(v)) = (f.next(), f.next())
                && [
                    "TcpOutRsts",
                    "TcpExtTCPSynRetrans",
                    "TcpRetransSegs",
                    "TcpAttemptFails",
                    "TcpActiveOpens",
                    "TcpExtTCPChallengeACK",
                    "TcpExtTCPACKSkippedSynRecv",
                ]
                .contains(&k)
                && let Ok(v) = v.parse()
            {
                c.insert(format!("client {k}"), v);
            }
        }
    }
    c
}

fn delta(before: &Counters, after: &Counters) -> String {
    after
        .iter()
        .filter_map(|(k, &v)| {
            let d = v.saturating_sub(before.get(k).copied().unwrap_or(0));
            (d > 0).then(|| format!("{k} +{d}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Floods, and runs the clients once the flood is under way.
fn measure(topo: &Topology, pps: Option<u64>) -> Run {
    let before = counters(topo);
    let flood = ChildGuard(spawn_flood(topo, pps));
    std::thread::sleep(Duration::from_millis(1500));
    let client: Command = {
        let mut c = topo.client.command(BENCH);
        c.args(["kernel-client", "--target"])
            .arg(format!("{}:{PORT}", topo.server.ip))
            .args(["--concurrency", "4", "--duration", &CLIENT_S.to_string()])
            .args(["--timeout-s", "5", "--close", "first"]);
        c
    };
    let mut client = client;
    let out = client.output().expect("run kernel-client");
    let rep = json_line(&out, "kernel-client");
    let mut flood = flood;
    let flood_out = {
        let child = std::mem::replace(
            &mut flood.0,
            Command::new("true").spawn().expect("spawn true"),
        );
        child.wait_with_output().expect("wait for syn-flood")
    };
    let f = json_line(&flood_out, "syn-flood");
    {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "flood {f}\ncounters over the run: {}",
            delta(&before, &counters(topo))
        );
    }
    let failed: u64 = rep["failures"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum());
    let lat = &rep["latency"];
    Run {
        pps: f["pps"].as_f64().unwrap_or(0.0),
        ok: rep["ok"].as_u64().unwrap_or(0),
        // Still in flight at the end counts against success here.
        failed: failed + rep["unfinished"].as_u64().unwrap_or(0),
        p99_ms: lat["p99_us"].as_f64().unwrap_or(f64::INFINITY) / 1000.0,
        max_ms: lat["max_us"].as_f64().unwrap_or(f64::INFINITY) / 1000.0,
    }
}

#[test]
fn legitimate_clients_are_served_through_a_full_rate_syn_flood() {
    if !need_root() {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new(TopologyConfig::default()).expect("topology");
    // XDP_TX on veth reaches the peer only if it runs an XDP program.
    // No --xdp-mode: `auto` must choose generic (skb) mode on this
    // one-queue veth. A veth end with a native XDP program (ours, or an
    // XDP_PASS on the client that native XDP_TX would need) takes every
    // frame sent to it through one 256-slot ring per queue, which a flooder
    // on the same host keeps full, so a legitimate SYN or request finds no
    // slot (measured: the client veth's tx_dropped +2.05 M in 10 s, 16 of
    // 98 captured connections lost their SYN). Without a native program
    // frames queue per CPU (the kernel's backlog) and generic XDP_TX needs
    // nothing of the peer.
    let state = format!("/tmp/{}-state", topo.server.netns);
    let serve = {
        let mut cmd = topo.server.command(BIN);
        cmd.arg("serve")
            .args(["--iface", &topo.server.dev, "--port", &PORT.to_string()])
            .args(["--app", "http", "--queues", "1", "--metrics", METRICS])
            .args(["--state-dir", &state])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn turnstile");
        let line = first_line(
            child.stdout.take().expect("stdout"),
            Duration::from_secs(20),
        );
        assert!(
            line.as_deref().is_some_and(|l| l.starts_with("listening ")),
            "turnstile did not start: {line:?}"
        );
        assert!(
            line.as_deref().is_some_and(|l| l.contains("mode=generic")),
            "auto must attach in generic mode on a one-queue veth: {line:?}"
        );
        ChildGuard(child)
    };
    let ts = measure(&topo, None);
    let text = scrape(&topo, METRICS);
    let xdp = metric(&text, "turnstile_syn_cookies_sent_total{path=\"xdp\"}");
    let engine = metric(&text, "turnstile_syn_cookies_sent_total{path=\"engine\"}");
    let accepted = metric(&text, "turnstile_syn_cookies_total{result=\"accepted\"}");
    let rsts = metric(
        &text,
        "turnstile_xdp_packets_total{action=\"cookie_rst_dropped\"}",
    );
    let no_frame = metric(&text, "turnstile_rx_dropped_total{reason=\"no_frame\"}")
        + metric(&text, "turnstile_rx_dropped_total{reason=\"ring_full\"}");
    drop(serve);
    {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "turnstile: {:.0} SYN/s, {} ok, {} failed, p99 {:.1} ms",
            ts.pps,
            ts.ok,
            ts.failed,
            ts.p99_ms
        );
    }

    // The kernel, SYN cookies on (its default), the same flood rate.
    topo.server
        .sh_ok("sysctl -qw net.ipv4.tcp_syncookies=1")
        .expect("sysctl");
    let addr = format!("{}:{PORT}", topo.server.ip);
    topo.spawn_server(BENCH, &["kernel-server", "--addr", &addr])
        .expect("kernel-server");
    assert!(
        eventually(Duration::from_secs(10), || topo
            .client
            .sh(&format!(
                "curl -s -o /dev/null --max-time 2 http://{}:{PORT}/",
                topo.server.ip
            ))
            .is_ok_and(|o| o.status.success())),
        "the kernel server never listened"
    );
    let kernel = measure(&topo, Some(ts.pps as u64));

    let row = |name: &str, r: &Run| {
        format!(
            "{name:<22} {:>9.0} SYN/s  {:>5} ok {:>3} failed  {:>6.2}%  p99 {:>7.1} ms  max {:>7.1} ms",
            r.pps,
            r.ok,
            r.failed,
            100.0 * r.success(),
            r.p99_ms,
            r.max_ms
        )
    };
    let report = format!(
        "{}\n{}\nturnstile cookies: xdp {xdp}, engine {engine}, accepted {accepted}; their RSTs dropped in XDP {rsts}; frames lost at the socket {no_frame}",
        row("turnstile (full rate)", &ts),
        row("kernel (equal --pps)", &kernel)
    );
    {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "{report}");
    }
    assert!(
        ts.pps > 10_000.0,
        "the flood was not a flood (machine too busy?):\n{report}"
    );
    assert!(xdp > 0, "the flood was not answered in XDP:\n{report}");
    assert!(
        ts.success() >= 0.99,
        "legitimate clients through the flood:\n{report}"
    );
    assert!(ts.p99_ms < 100.0, "p99 through the flood:\n{report}");
}
