//! The PROXY protocol through the sidecar against kernel peers: sent to an
//! nginx backend (`listen ... proxy_protocol`), accepted from HAProxy in
//! front (`send-proxy-v2`), and bad or slow headers reset within
//! `proxy_header_ms` and counted. nginx and HAProxy run in the client
//! namespace beside the kernel clients (`common::peers`). Needs root.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::lab::*;
use common::peers::{Haproxy, Nginx, PP_PY};
use common::*;

/// The `ok <addr:port> <body>` lines of `run` and its error count.
fn oks(out: &str) -> (Vec<(String, String)>, u64) {
    let ok = out
        .lines()
        .filter_map(|l| l.strip_prefix("ok "))
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let errors = out
        .lines()
        .find_map(|l| l.strip_prefix("errors "))
        .and_then(|l| l.split(' ').next()?.parse().ok())
        .unwrap_or(u64::MAX);
    (ok, errors)
}

fn config(lab: &Lab, listener_keys: &str, extra: &str) -> String {
    format!(
        "interface = \"{}\"\nqueues = 2\nmetrics = \"{METRICS}\"\n{extra}\n[[listener]]\nport = {LB_PORT}\n{listener_keys}\nbackends = [\"{}\"]\n",
        lab.topo.server.dev,
        lab.backend_addr(0)
    )
}

/// Polls nginx's log until it has `want` lines (bounded).
fn logged(nginx: &Nginx, want: usize) -> Vec<String> {
    let complete = eventually(Duration::from_secs(30), || nginx.lines().len() >= want);
    let lines = nginx.lines();
    assert!(complete, "nginx logged {} of {want}", lines.len());
    lines
}

#[test]
fn nginx_logs_each_kernel_clients_own_address_and_port_with_v1_and_v2() {
    if !need_root() {
        return;
    }
    let _serial = serial();
    let mut lab = Lab::new("ppsend", 4);
    let nginx = Nginx::start(&lab.topo.client, &lab.dir, lab.backends[0], BACKEND_PORT);
    let mut seen = 0;
    for version in ["v1", "v2"] {
        let cfg = lab.write_config(
            &format!("pp-{version}.toml"),
            &config(&lab, &format!("proxy_protocol = \"{version}\""), ""),
        );
        lab.start_sidecar(&cfg);
        // 1,000 connections from five client addresses, 50 at a time.
        let out = lab.python(&format!(
            "{PP_PY}\nsrcs = SOURCES + [None]\nrun([(LB, srcs[i % len(srcs)]) for i in range(1000)], 50)\n"
        ));
        let (ok, errors) = oks(&out);
        assert_eq!(
            errors,
            0,
            "{version}: {}",
            &out[out.len().saturating_sub(300)..]
        );
        assert_eq!(ok.len(), 1000);
        assert!(ok.iter().all(|(_, body)| body == "nginx"));
        let lines = logged(&nginx, seen + 1000);
        let got: BTreeSet<&str> = lines[seen..].iter().map(String::as_str).collect();
        let want: BTreeSet<&str> = ok.iter().map(|(me, _)| me.as_str()).collect();
        assert_eq!(want.len(), 1000, "distinct client address:port pairs");
        assert_eq!(
            got, want,
            "{version}: nginx's $proxy_protocol_addr:$proxy_protocol_port is each client's own"
        );
        seen += 1000;
        lab.stop_sidecar();
    }
}

#[test]
fn behind_haproxy_send_proxy_v2_the_original_client_reaches_the_backend() {
    if !need_root() {
        return;
    }
    let _serial = serial();
    let mut lab = Lab::new("ppaccept", 3);
    let nginx = Nginx::start(&lab.topo.client, &lab.dir, lab.backends[0], BACKEND_PORT);
    // HAProxy is the balancer in front: kernel clients connect to it, it
    // connects to turnstile with a v2 header naming them.
    let front = (lab.backends[2], 7000);
    let _haproxy = Haproxy::start(
        &lab.topo.client,
        &lab.dir,
        front,
        (lab.topo.server.ip, LB_PORT),
    );
    let log = lab.dir.join("access.log");
    let cfg = lab.write_config(
        "accept.toml",
        &config(
            &lab,
            "accept_proxy = true\nproxy_protocol = \"v1\"",
            &format!("access_log = \"{}\"\n", log.display()),
        ),
    );
    lab.start_sidecar(&cfg);
    let out = lab.python(&format!(
        "{PP_PY}\nsrcs = SOURCES + [None]\nrun([((\"{}\", {}), srcs[i % len(srcs)]) for i in range(500)], 25)\n",
        front.0, front.1
    ));
    let (ok, errors) = oks(&out);
    assert_eq!(errors, 0, "{}", &out[out.len().saturating_sub(300)..]);
    assert_eq!(ok.len(), 500);
    let want: BTreeSet<String> = ok.iter().map(|(me, _)| me.clone()).collect();
    let lines = logged(&nginx, 500);
    let got: BTreeSet<String> = lines.into_iter().collect();
    assert_eq!(got, want, "nginx sees the clients HAProxy saw, not HAProxy");
    let text = lab.metrics();
    assert_eq!(
        metric(&text, "turnstile_proxy_headers_total{result=\"accepted\"}"),
        500,
        "{text}"
    );
    // The access log names the same clients.
    let complete = eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 500)
    });
    assert!(complete);
    let logged_clients: BTreeSet<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["client"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(logged_clients, want);
    lab.stop_sidecar();
}

#[test]
fn garbage_and_slow_headers_are_reset_at_the_deadline_and_counted() {
    if !need_root() {
        return;
    }
    let _serial = serial();
    let mut lab = Lab::new("ppbad", 0);
    let nginx = Nginx::start(&lab.topo.client, &lab.dir, lab.backends[0], BACKEND_PORT);
    let cfg = lab.write_config(
        "bad.toml",
        &(config(&lab, "accept_proxy = true\nproxy_protocol = \"v2\"", "")
            + "[timeouts]\nproxy_header_ms = 1000\n"),
    );
    lab.start_sidecar(&cfg);
    // 20 not-a-header, 10 silent, 10 half a v2 signature, 10 half a v1 line.
    let out = lab.python(&format!(
        "{PP_PY}\nprobe(LB, [b\"GET / HTTP/1.1\\r\\n\\r\\n\"] * 10 + [b\"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\\r\\n\"] * 10 + [b\"\"] * 10 + [SIG[:7]] * 10 + [b\"PROXY TCP4 1.2\"] * 10, 15)\n"
    ));
    let lines: Vec<(&str, f64)> = out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, t)| (k, t.parse().unwrap()))
        .collect();
    assert_eq!(lines.len(), 50, "{out}");
    for (i, (kind, secs)) in lines.iter().enumerate() {
        assert_eq!(*kind, "reset", "probe {i}: {out}");
        if i >= 20 {
            // Not before the deadline; the bound is a hang guard.
            assert!(
                (0.9..10.0).contains(secs),
                "slow probe {i} reset after {secs} s: {out}"
            );
        }
    }
    // A valid header from a kernel client: its address is the client's.
    let out = lab.python(&format!(
        "{PP_PY}\nrun([(LB, None, v1(\"203.0.113.9\", 5555, \"198.18.0.1\", {LB_PORT}))], 1)\n"
    ));
    assert_eq!(oks(&out).1, 0, "{out}");
    assert_eq!(logged(&nginx, 1), vec!["203.0.113.9:5555".to_string()]);
    let text = lab.metrics();
    let h = |r: &str| {
        metric(
            &text,
            &format!("turnstile_proxy_headers_total{{result=\"{r}\"}}"),
        )
    };
    assert_eq!(
        (h("invalid"), h("timeout"), h("accepted")),
        (20, 30, 1),
        "{text}"
    );
    lab.stop_sidecar();
}
