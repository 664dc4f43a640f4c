//! DNS discovery against dnsmasq in the client namespace: a listener whose
//! backends come only from SRV records (`backends_dns`), re-resolved at the
//! records' TTL, applied like a reload, and kept when the server stops
//! answering.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::dnsmasq::{self, Dnsmasq, SrvRecord};
use common::lab::*;
use common::*;

const SRV: &str = "_http._tcp.api.internal";

fn record(lab: &Lab, i: usize) -> SrvRecord {
    SrvRecord {
        host: format!("{}.api.internal", NAMES[i]),
        ip: lab.backends[i],
        port: BACKEND_PORT,
        priority: 0,
        weight: 1,
    }
}

/// The backend names `n` new connections reach.
fn names_seen(lab: &Lab, n: usize) -> BTreeSet<String> {
    let out = lab.python(&format!(
        "for _ in range({n}):\n    try:\n        print(get(timeout=3))\n    except Exception as e:\n        print('error', type(e).__name__)\n"
    ));
    out.lines().map(str::to_string).collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn dns_metric(lab: &Lab, name: &str, labels: &str) -> u64 {
    metric(
        &lab.metrics(),
        &format!("{name}{{listener=\"{LB_PORT}\"{labels}}}"),
    )
}

#[test]
fn backends_follow_srv_records_and_survive_a_dead_resolver() {
    if !need_root() {
        return;
    }
    if !dnsmasq::available() {
        panic!("dnsmasq is not installed: run deploy/dev-setup.sh");
    }
    let _serial = serial();
    let mut lab = Lab::new("dns", 0);
    for i in 0..3 {
        lab.start_backend(i, "http");
    }
    let o = lab.topo.client.ip.octets();
    let dns_ip = Ipv4Addr::new(o[0], o[1], o[2], 53);
    lab.topo
        .client
        .sh_ok(&format!(
            "ip addr add {dns_ip}/24 dev {}",
            lab.topo.client.dev
        ))
        .expect("resolver address");
    let ttl = 1;
    let mut server = Dnsmasq::start(
        &lab.topo.client,
        dns_ip,
        SRV,
        ttl,
        &[record(&lab, 0), record(&lab, 1)],
    );
    let text = lab
        .config(
            "round-robin",
            &[],
            &format!("[dns]\nresolvers = [\"{dns_ip}:53\"]\nmin_ttl_ms = 500\n"),
        )
        .replace(
            "[[listener]]\n",
            &format!("[[listener]]\nbackends_dns = \"{SRV}\"\n"),
        );
    let cfg = lab.write_config("dns.toml", &text);
    lab.start_sidecar(&cfg);

    // The first answer: alpha and bravo.
    assert!(
        eventually(Duration::from_secs(15), || {
            dns_metric(&lab, "turnstile_dns_backends", "") == 2
        }),
        "no DNS answer applied; stderr: {}",
        lab.stderr()
    );
    assert_eq!(names_seen(&lab, 6), set(&["alpha", "bravo"]));

    // An established session (keep-alive: same backend for its life).
    let program = format!(
        "LB = (\"{}\", {LB_PORT})\nSOURCES = []\n{CLIENT_PY}\n{}",
        lab.topo.server.ip,
        r#"
s = socket.create_connection(LB, timeout=5)
for line in sys.stdin:
    s.sendall(REQ)
    print(read_response(s), flush=True)
"#
    );
    let mut held = lab
        .topo
        .client
        .command("python3")
        .args(["-c", &program])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map(ChildGuard)
        .expect("held session");
    let mut to_held = held.0.stdin.take().unwrap();
    let mut from_held = BufReader::new(held.0.stdout.take().unwrap());
    let mut ask = || {
        writeln!(to_held, "again").unwrap();
        to_held.flush().unwrap();
        let mut line = String::new();
        from_held.read_line(&mut line).unwrap();
        line.trim().to_string()
    };
    let first = ask();
    let (kept, removed) = match first.as_str() {
        "alpha" => (1, 0),
        "bravo" => (0, 1),
        other => panic!("held session reached {other:?}"),
    };

    // The held session's backend leaves the records, charlie joins.
    let changed_at = Instant::now();
    server.set_records(&[record(&lab, kept), record(&lab, 2)]);
    let want = set(&[NAMES[kept], "charlie"]);
    let mut seen = BTreeSet::new();
    let moved = eventually(Duration::from_secs(10), || {
        seen = names_seen(&lab, 4);
        seen == want
    });
    let took = changed_at.elapsed();
    assert!(
        moved,
        "new sessions reach {seen:?}, want {want:?}; stderr: {}",
        lab.stderr()
    );
    eprintln!(
        "record change applied within {} ms (TTL {ttl} s, min_ttl_ms 500)",
        took.as_millis()
    );
    assert!(
        took < Duration::from_secs(ttl as u64 + 5),
        "{took:?} for a {ttl} s TTL"
    );
    // Not touched: the held session still talks to the removed backend.
    assert_eq!(ask(), NAMES[removed], "the established session moved");
    let text = lab.metrics();
    assert!(
        text.contains(&format!(
            "turnstile_backend_connections{{backend=\"{}\"}} 1",
            lab.backend_addr(removed)
        )),
        "the removed backend still has its session:\n{text}"
    );

    // The resolver dies: the last set stays, the failures are counted.
    let failed_before = dns_metric(
        &lab,
        "turnstile_dns_resolutions_total",
        ",result=\"failed\"",
    );
    let ok_before = dns_metric(&lab, "turnstile_dns_resolutions_total", ",result=\"ok\"");
    assert!(ok_before >= 2, "{ok_before} good resolutions");
    server.stop();
    assert!(
        eventually(Duration::from_secs(15), || dns_metric(
            &lab,
            "turnstile_dns_resolutions_total",
            ",result=\"failed\""
        ) >= failed_before + 2),
        "failures not counted; stderr: {}",
        lab.stderr()
    );
    assert_eq!(names_seen(&lab, 4), want, "the last good set stays");
    assert_eq!(dns_metric(&lab, "turnstile_dns_backends", ""), 2);
    assert!(
        lab.stderr().contains("DNS resolution failed"),
        "the failure is logged"
    );
    assert_eq!(ask(), NAMES[removed]);
    drop(to_held);
    drop(held);
    lab.stop_sidecar();
}
