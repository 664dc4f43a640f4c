//! Path MTU discovery against a real router (issue #11): the kernel client
//! sits behind a router namespace whose link to it has a 1280-byte MTU, and
//! advertises MSS 1460 (its route's `advmss`), as a host behind a tunnel
//! does. turnstile's full-size echo segments cannot cross that link: the
//! router answers each with ICMP "fragmentation needed" (RFC 1191), which
//! the XDP program steers to the shard, and the connection's MSS falls.
//! With that ICMP filtered (a PMTU black hole) only `--mss` gets the bytes
//! through. Needs root.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const PORT: u16 = 7000;
const METRICS: &str = "127.0.0.1:9951";
const BYTES: usize = 10 << 20;

/// A third namespace behind the topology's client namespace, which becomes
/// the router: `router dev (1280) <-> client dev (1280)`.
struct Behind {
    netns: String,
    ip: String,
}

impl Drop for Behind {
    fn drop(&mut self) {
        turnstile::topology::remove_netns(&self.netns);
    }
}

fn sh(netns: &str, line: &str) {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "sh", "-c", line])
        .output()
        .expect("ip netns exec");
    assert!(
        out.status.success(),
        "`{line}` in {netns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds the router and the host behind it; returns the host.
fn route_through_narrow_link(topo: &Topology) -> Behind {
    let tag = format!("{:x}", std::process::id() & 0xfffff);
    let third = topo.server.ip.octets()[2];
    let behind = Behind {
        netns: format!("ts-{tag}-{third}-far"),
        ip: format!("198.19.{third}.2"),
    };
    let (r_dev, c_dev) = (format!("tp{tag}{third}r"), format!("tp{tag}{third}c"));
    let router = &topo.client.netns;
    let run = |args: &[&str]| {
        let out = Command::new(args[0])
            .args(&args[1..])
            .output()
            .expect("spawn");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["ip", "netns", "add", &behind.netns]);
    run(&[
        "ip", "link", "add", &r_dev, "type", "veth", "peer", "name", &c_dev,
    ]);
    run(&["ip", "link", "set", &r_dev, "netns", router]);
    run(&["ip", "link", "set", &c_dev, "netns", &behind.netns]);
    let server_net = format!("198.18.{third}.0/24");
    sh(
        router,
        &format!(
            "sysctl -qw net.ipv4.ip_forward=1 && ip addr add 198.19.{third}.1/24 dev {r_dev} && \
             ip link set {r_dev} mtu 1280 up && \
             ethtool -K {r_dev} tx off tso off gso off gro off >/dev/null 2>&1; true"
        ),
    );
    sh(
        &behind.netns,
        &format!(
            "ip link set lo up && ip addr add {}/24 dev {c_dev} && ip link set {c_dev} mtu 1280 up && \
             ethtool -K {c_dev} tx off tso off gso off gro off >/dev/null 2>&1; \
             ip route add {server_net} via 198.19.{third}.1 advmss 1460",
            behind.ip
        ),
    );
    sh(
        &topo.server.netns,
        &format!("ip route add 198.19.{third}.0/24 via {}", topo.client.ip),
    );
    behind
}

/// Echoes `BYTES` through turnstile from behind the router; the client's
/// report line (`ok <bytes>` or what went wrong), within `limit`.
fn echo(topo: &Topology, behind: &Behind, limit: Duration) -> String {
    let program = format!(
        r#"
import socket, threading, hashlib, os, sys
data = os.urandom({BYTES})
s = socket.create_connection(("{ip}", {PORT}), timeout={t})
def send():
    s.sendall(data)
threading.Thread(target=send, daemon=True).start()
got = bytearray()
try:
    while len(got) < len(data):
        b = s.recv(1 << 16)
        if not b:
            break
        got += b
except Exception as e:
    print("error", type(e).__name__, len(got), flush=True)
    sys.exit(0)
print("ok" if bytes(got) == data else "mismatch", len(got), flush=True)
"#,
        ip = topo.server.ip,
        t = limit.as_secs()
    );
    let out = Command::new("timeout")
        .arg(format!("{}", limit.as_secs() + 10))
        .args([
            "ip",
            "netns",
            "exec",
            &behind.netns,
            "python3",
            "-c",
            &program,
        ])
        .output()
        .expect("python3 client");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn icmp_from_a_narrow_link_lowers_the_mss_and_the_echo_completes() {
    if !need_root() {
        return;
    }
    let _serial = serial();
    let mut topo = Topology::new(TopologyConfig::default()).expect("topology");
    let behind = route_through_narrow_link(&topo);
    start_serve(
        &mut topo,
        &[
            "--port",
            &PORT.to_string(),
            "--app",
            "echo",
            "--metrics",
            METRICS,
        ],
    );
    let report = echo(&topo, &behind, Duration::from_secs(60));
    let text = scrape(&topo, METRICS);
    let lowered = metric(
        &text,
        "turnstile_icmp_frag_needed_total{result=\"lowered\"}",
    );
    let stale = metric(
        &text,
        "turnstile_icmp_frag_needed_total{result=\"not_in_flight\"}",
    );
    eprintln!(
        "echo through a 1280-byte link: {report}; MSS lowered {lowered}, not in flight {stale}"
    );
    assert_eq!(
        report,
        format!("ok {BYTES}"),
        "the echo through the narrow link"
    );
    assert!(lowered >= 1, "no connection's MSS fell:\n{text}");
}

#[test]
fn without_icmp_the_path_is_a_black_hole_that_only_the_mss_clamp_crosses() {
    if !need_root() {
        return;
    }
    let _serial = serial();
    let topo = Topology::new(TopologyConfig::default()).expect("topology");
    let behind = route_through_narrow_link(&topo);
    // The router sends no "fragmentation needed" (a filtering firewall).
    topo.client
        .sh_ok(
            "nft add table ip pmtu && \
             nft add chain ip pmtu out '{ type filter hook output priority 0; }' && \
             nft add rule ip pmtu out icmp type destination-unreachable drop",
        )
        .expect("nft");
    let unclamped = spawn_serve_owned(
        &topo,
        &[
            "--port",
            &PORT.to_string(),
            "--app",
            "echo",
            "--metrics",
            METRICS,
        ],
    );
    let blackholed = echo(&topo, &behind, Duration::from_secs(6));
    assert!(
        !blackholed.starts_with("ok"),
        "full-size segments crossed a 1280-byte link without ICMP: {blackholed}"
    );
    drop(unclamped);
    assert!(
        eventually(Duration::from_secs(10), || !xdp_attached(&topo)),
        "the killed turnstile's XDP program stayed"
    );
    let _clamped = spawn_serve_owned(
        &topo,
        &[
            "--port",
            &PORT.to_string(),
            "--app",
            "echo",
            "--mss",
            "1240",
            "--metrics",
            METRICS,
        ],
    );
    let clamped = echo(&topo, &behind, Duration::from_secs(60));
    eprintln!("black hole: {blackholed}; with --mss 1240: {clamped}");
    assert_eq!(clamped, format!("ok {BYTES}"), "the clamped echo");
}
