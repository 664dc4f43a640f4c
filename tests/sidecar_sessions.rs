//! A session's bounds through the sidecar against kernel peers
//! (`common::lab`): the `retries` cap, passive health (`passive_fall`),
//! `client_fin_ms` and `max_session_ms`, each counted and in the access log.
//! Needs root.

mod common;

use std::time::Duration;

use common::lab::*;
use common::*;

fn listener_config(lab: &Lab, backends: &[usize], keys: &str, extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|&i| format!("\"{}\"", lab.backend_addr(i)))
        .collect();
    format!(
        "interface = \"{}\"\nqueues = 2\nmetrics = \"{METRICS}\"\n{extra}\n[[listener]]\nport = {LB_PORT}\n{keys}\nbackends = [{}]\n",
        lab.topo.server.dev,
        list.join(", ")
    )
}

#[test]
fn sidecar_retries_cap_resets_the_client_after_that_many_other_backends() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new("retries", 0);
    // alpha and bravo refuse (nothing listens), charlie serves; no health
    // checks within the test, so nothing is ejected.
    lab.start_backend(2, "http");
    let health = "[health]\ninterval_ms = 3600000\n";
    let text = |keys: &str| listener_config(&lab, &[0, 1, 2], keys, "") + health;
    let (capped, default) = (text("retries = 1"), text(""));
    let cfg = lab.write_config("retries.toml", &capped);
    lab.start_sidecar(&cfg);
    let out = lab.python(&format!("{MANY_PY}\nmany(60, 1)\n"));
    let served = counts(&out).get(NAMES[2]).copied().unwrap_or(0);
    let failed = 60 - served;
    // Round-robin: a session that starts at alpha tries bravo and stops.
    assert!(served > 0 && failed > 0, "{out}");
    assert!(out.contains(&format!("errors {failed} ")), "{out}");
    let m = lab.metrics();
    assert_eq!(
        metric(&m, "turnstile_proxy_retries_exhausted_total"),
        failed,
        "{m}"
    );
    // Default (each backend once): every client served.
    std::fs::write(&cfg, default).unwrap();
    let generation = metric(&m, "turnstile_config_generation");
    lab.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(10), || metric(
        &lab.metrics(),
        "turnstile_config_generation"
    ) > generation));
    let out = lab.python(&format!("{MANY_PY}\nmany(60, 1)\n"));
    assert!(out.contains("errors 0"), "{out}");
    assert_eq!(counts(&out).get(NAMES[2]).copied(), Some(60));
    assert_eq!(
        metric(&lab.metrics(), "turnstile_proxy_retries_exhausted_total"),
        failed
    );
    lab.stop_sidecar();
}

#[test]
fn sidecar_passive_fall_ejects_on_failed_client_connects_and_checks_readmit() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new("passive", 0);
    lab.start_backend(0, "http");
    lab.start_backend(1, "http");
    // fall = 1000: the active checks alone would take minutes to eject.
    let health =
        "[health]\ninterval_ms = 300\ntimeout_ms = 300\nfall = 1000\nrise = 2\npassive_fall = 3\n";
    let cfg = lab.write_config(
        "passive.toml",
        &(listener_config(&lab, &[0, 1], "", "") + health),
    );
    lab.start_sidecar(&cfg);
    lab.kill_backend(0);
    // Every client is served (a refusal is retried on bravo); the third
    // failed connect to alpha ejects it.
    let out = lab.python(&format!("{MANY_PY}\nmany(20, 1)\n"));
    assert!(out.contains("errors 0"), "{out}");
    assert_eq!(counts(&out).get(NAMES[1]).copied(), Some(20));
    let m = lab.metrics();
    let alpha = lab.backend_addr(0);
    let passive = |m: &str| {
        metric(
            m,
            &format!("turnstile_backend_passive_ejections_total{{backend=\"{alpha}\"}}"),
        )
    };
    assert_eq!(passive(&m), 1, "{m}");
    assert_eq!(lab.backend_metric("turnstile_backend_up", 0), 0);
    let refused = |m: &str| {
        metric(
            m,
            &format!("turnstile_backend_failures_total{{backend=\"{alpha}\",reason=\"refused\"}}"),
        )
    };
    // Ejected after 3 of the clients' connects: the later ones went
    // straight to bravo (no more refusals from client sessions).
    let retries = metric(&m, "turnstile_proxy_retries_total");
    assert_eq!(retries, 3, "{m}");
    assert!(refused(&m) >= 3);
    // alpha back: two good checks readmit it, and it takes turns again.
    lab.start_backend(0, "http");
    assert!(eventually(Duration::from_secs(20), || lab
        .backend_metric("turnstile_backend_up", 0)
        == 1));
    let out = lab.python(&format!("{MANY_PY}\nmany(20, 1)\n"));
    assert!(out.contains("errors 0"), "{out}");
    assert!(
        counts(&out).get(NAMES[0]).copied().unwrap_or(0) >= 5,
        "{out}"
    );
    assert_eq!(passive(&lab.metrics()), 1);
    lab.stop_sidecar();
}

/// `GET /hold` makes the backend send a head and then hold the body for a
/// minute: a quiet session. With the client's side half-closed it ends at
/// `client_fin_ms`; without, at `max_session_ms`. Each is counted and
/// logged with its reason.
#[test]
fn sidecar_client_fin_and_max_session_end_quiet_sessions_with_their_reason() {
    if !need_root() {
        return;
    }
    let mut lab = Lab::new("bounds", 0);
    lab.start_backend(0, "http");
    let log = lab.dir.join("access.log");
    let timeouts = "[timeouts]\nclient_fin_ms = 1000\nmax_session_ms = 3000\nidle_ms = 60000\n";
    let cfg = lab.write_config(
        "bounds.toml",
        &(listener_config(
            &lab,
            &[0],
            "",
            &format!("access_log = \"{}\"\n", log.display()),
        ) + timeouts),
    );
    lab.start_sidecar(&cfg);
    // Each client: GET /hold, optionally shut its sending side, read the
    // head, then wait for the end: prints how it ended and after how long.
    let out = lab.python(
        r#"
import socket, time
def hold(half_close):
    s = socket.create_connection(LB, timeout=20)
    s.sendall(b"GET /hold HTTP/1.1\r\nHost: lb\r\n\r\n")
    if half_close:
        s.shutdown(socket.SHUT_WR)
    start = time.monotonic()
    data = b""
    try:
        while True:
            c = s.recv(4096)
            if not c:
                kind = "eof"
                break
            data += c
    except ConnectionResetError:
        kind = "reset"
    except socket.timeout:
        kind = "hang"
    print(kind, "%.3f" % (time.monotonic() - start), b"alpha" in data)
    s.close()
hold(True)
hold(False)
"#,
    );
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(lines.len(), 2, "{out}");
    let secs = |l: &Vec<&str>| l[1].parse::<f64>().unwrap();
    // Half-closed and quiet: reset at client_fin_ms (not before; the
    // upper bound is a hang guard).
    assert_eq!((lines[0][0], lines[0][2]), ("reset", "True"), "{out}");
    assert!((0.9..10.0).contains(&secs(&lines[0])), "{out}");
    // Open both ways and quiet: reset at max_session_ms.
    assert_eq!((lines[1][0], lines[1][2]), ("reset", "True"), "{out}");
    assert!((2.9..12.0).contains(&secs(&lines[1])), "{out}");
    let m = lab.metrics();
    let t = |r: &str| {
        metric(
            &m,
            &format!("turnstile_proxy_session_timeouts_total{{reason=\"{r}\"}}"),
        )
    };
    assert_eq!(
        (t("client_fin"), t("max_session"), t("idle")),
        (1, 1, 0),
        "{m}"
    );
    assert!(eventually(Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 2)
    }));
    let ends: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["end"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ends, ["timeout_client_fin", "timeout_max_session"]);
    lab.stop_sidecar();
}
