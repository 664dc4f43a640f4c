//! The sidecar's runtime API (`admin`) against real kernel peers: drain a
//! backend with weight 0 while 50 long-lived sessions are open on it, see
//! the change in `GET /api/backends` and in where new sessions go, the
//! bearer token, and what SIGHUP does to an API change. Needs root.

mod common;

use common::lab::*;
use common::*;

const ADMIN_PORT: u16 = 9901;
const TOKEN: &str = "t0ken-for-the-test";

/// In the client namespace: `api(method, path, body, token)` returns
/// (status, parsed JSON); `session()` opens a connection and sends one
/// request, returning the socket and whom it reached (alpha echoes, bravo
/// answers with its name).
const API_PY: &str = r#"
import json, socket, time, os
def api(method, path, body=None, token=TOKEN):
    s = socket.create_connection(ADMIN, timeout=5)
    data = b"" if body is None else json.dumps(body).encode()
    auth = b"Authorization: Bearer %s\r\n" % token.encode() if token else b""
    s.sendall(b"%s %s HTTP/1.1\r\nHost: t\r\n%sContent-Length: %d\r\n\r\n%s" % (method.encode(), path.encode(), auth, len(data), data))
    resp = b""
    while True:
        c = s.recv(65536)
        if not c:
            break
        resp += c
    s.close()
    head, _, body = resp.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)

def whom(s):
    # alpha echoes the request back; bravo answers HTTP with its name.
    data = b""
    while len(data) < len(REQ):
        c = s.recv(4096)
        if not c:
            raise RuntimeError("closed: %r" % data)
        data += c
        if data.startswith(b"HTTP/1.1 200") and data.endswith(b"bravo\n"):
            return "bravo"
    return "alpha" if data == REQ else "other:%r" % data

def session():
    s = socket.create_connection(LB, timeout=5)
    s.sendall(REQ)
    return s, whom(s)

def backend(doc, port, addr):
    for l in doc["listeners"]:
        if l["port"] == port:
            for b in l["backends"]:
                if b["addr"] == addr:
                    return b
    raise KeyError(addr)
"#;

#[test]
fn sidecar_admin_api_drains_a_backend_with_50_sessions_open_and_needs_its_token() {
    if !need_root() {
        return;
    }
    let _serial = serial();
    let mut lab = Lab::new("admin", 0);
    lab.start_backend(0, "echo");
    lab.start_backend(1, "http");
    let token_file = lab.write_config("token", &format!("{TOKEN}\n"));
    let admin = format!("{}:{ADMIN_PORT}", lab.topo.server.ip);
    let body = |alpha_weight: u32| {
        format!(
            "admin = \"{admin}\"\nadmin_token_file = \"{}\"\n{}",
            token_file.display(),
            lab.config("round-robin", &[0, 1], "[health]\ninterval_ms = 200\n")
                .replace(
                    &format!("\"{}\"", lab.backend_addr(0)),
                    &format!(
                        "{{ addr = \"{}\", weight = {alpha_weight} }}",
                        lab.backend_addr(0)
                    )
                )
        )
    };
    let (first, edited) = (body(1), body(2));
    let cfg = lab.write_config("admin.toml", &first);
    lab.start_sidecar(&cfg);
    let (alpha, bravo) = (lab.backend_addr(0), lab.backend_addr(1));
    let go = lab.dir.join("go");
    let done = lab.dir.join("done");
    let prelude = format!(
        "ADMIN = (\"{}\", {ADMIN_PORT})\nTOKEN = \"{TOKEN}\"\nALPHA = \"{alpha}\"\nBRAVO = \"{bravo}\"\nP = {LB_PORT}\nGO = \"{}\"\nDONE = \"{}\"\n{API_PY}",
        lab.topo.server.ip,
        go.display(),
        done.display()
    );
    let program = prelude
        + r#"
# The token: none or a wrong one is 401.
print("noauth", api("GET", "/api/backends", token=None)[0])
print("badauth", api("GET", "/api/backends", token="nope")[0])
st, doc = api("GET", "/api/backends")
print("get", st, backend(doc, P, ALPHA)["state"], backend(doc, P, ALPHA)["weight"])
print("notfound", api("POST", "/api/backends/%d/198.18.9.9:1" % P, {"weight": 1})[0])
print("badbody", api("POST", "/api/backends/%d/%s" % (P, ALPHA), {"weight": "x"})[0])

# 50 long-lived sessions on alpha (round-robin alternates: bravo's closed).
held = []
for _ in range(400):
    if len(held) == 50:
        break
    s, w = session()
    if w == "alpha":
        held.append(s)
    else:
        s.close()
print("held", len(held))

# Weight 0 through the API: no new session goes to alpha from then on.
t0 = time.time()
st, r = api("POST", "/api/backends/%d/%s" % (P, ALPHA), {"weight": 0})
post_ms = (time.time() - t0) * 1000
print("post", st, r["applied"], r["backend"]["weight"], r["backend"]["state"], "%.1f" % post_ms, r["applied_us"])
st, doc = api("GET", "/api/backends")
print("after", backend(doc, P, ALPHA)["weight"], backend(doc, P, ALPHA)["state"], backend(doc, P, ALPHA)["active"])
new = {}
for _ in range(200):
    s, w = session()
    new[w] = new.get(w, 0) + 1
    s.close()
print("new", sorted(new.items()))

# The 50 are still relayed, then complete cleanly (EOF after our FIN).
ok = 0
for s in held:
    s.sendall(REQ)
    if whom(s) == "alpha":
        s.shutdown(socket.SHUT_WR)
        if s.recv(10) == b"":
            ok += 1
    s.close()
print("completed", ok)

# State drain / ready: the same within the answer's time.
api("POST", "/api/backends/%d/%s" % (P, ALPHA), {"weight": 1})
st, r = api("POST", "/api/backends/%d/%s" % (P, BRAVO), {"state": "drain"})
print("drain", st, r["applied"], r["backend"]["state"])
new = {}
for _ in range(50):
    s, w = session()
    new[w] = new.get(w, 0) + 1
    s.close()
print("drained", sorted(new.items()))
st, r = api("POST", "/api/backends/%d/%s" % (P, BRAVO), {"state": "maint"})
print("maint", st, r["backend"]["state"])
st, r = api("POST", "/api/backends/%d/%s" % (P, BRAVO), {"state": "ready"})
new = {}
for _ in range(50):
    s, w = session()
    new[w] = new.get(w, 0) + 1
    s.close()
print("ready", st, r["backend"]["state"], sorted(new.items()))

# SIGHUP: an API change survives a reload that leaves the backend alone;
# the file wins where it changed the backend.
api("POST", "/api/backends/%d/%s" % (P, ALPHA), {"weight": 0})
open(GO, "w").write("1")
for _ in range(200):
    if os.path.exists(DONE):
        break
    time.sleep(0.05)
st, doc = api("GET", "/api/backends")
print("hup-same", backend(doc, P, ALPHA)["weight"])
open(GO, "w").write("2")
for _ in range(200):
    if open(DONE).read() == "2":
        break
    time.sleep(0.05)
st, doc = api("GET", "/api/backends")
print("hup-edited", backend(doc, P, ALPHA)["weight"])
"#;
    let out = std::thread::scope(|scope| {
        let client = scope.spawn(|| lab.python(&program));
        // The driver for the two reloads: the same file, then alpha edited.
        let start = std::time::Instant::now();
        while !go.exists() && start.elapsed() < std::time::Duration::from_secs(60) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        lab.signal(libc::SIGHUP);
        std::thread::sleep(std::time::Duration::from_millis(300));
        std::fs::write(&done, "1").unwrap();
        while std::fs::read_to_string(&go).unwrap_or_default() != "2"
            && start.elapsed() < std::time::Duration::from_secs(60)
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::fs::write(&cfg, &edited).unwrap();
        lab.signal(libc::SIGHUP);
        std::thread::sleep(std::time::Duration::from_millis(300));
        std::fs::write(&done, "2").unwrap();
        client.join().unwrap()
    });
    let line = |key: &str| -> String {
        out.lines()
            .find(|l| l.starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key} line in:\n{out}\n{}", lab.stderr()))
            .to_string()
    };
    assert_eq!(line("noauth"), "noauth 401", "{out}");
    assert_eq!(line("badauth"), "badauth 401", "{out}");
    assert_eq!(line("get"), "get 200 up 1", "{out}");
    assert_eq!(line("notfound"), "notfound 404", "{out}");
    assert_eq!(line("badbody"), "badbody 400", "{out}");
    assert_eq!(line("held"), "held 50", "{out}");
    let post_line = line("post");
    let post: Vec<&str> = post_line.split(' ').collect();
    assert_eq!(&post[..5], ["post", "200", "True", "0", "drain"], "{out}");
    let post_ms: f64 = post[5].parse().unwrap();
    // The answer comes once every shard runs with the change.
    assert!(
        post_ms < 100.0,
        "in effect everywhere after {post_ms} ms: {out}"
    );
    assert_eq!(line("after"), "after 0 drain 50", "{out}");
    assert_eq!(line("new"), "new [('bravo', 200)]", "{out}");
    assert_eq!(line("completed"), "completed 50", "{out}");
    assert_eq!(line("drain"), "drain 200 True drain", "{out}");
    assert_eq!(line("drained"), "drained [('alpha', 50)]", "{out}");
    assert_eq!(line("maint"), "maint 200 maint", "{out}");
    assert!(
        line("ready").starts_with("ready 200 up [('alpha', 2"),
        "{out}"
    );
    assert!(line("ready").contains("('bravo', 2"), "{out}");
    assert_eq!(line("hup-same"), "hup-same 0", "{out}");
    assert_eq!(line("hup-edited"), "hup-edited 2", "{out}");
    eprintln!("{out}");
    assert!(
        eventually(std::time::Duration::from_secs(5), || lab
            .backend_metric("turnstile_backend_connections", 0)
            == 0),
        "the 50 ended"
    );
    lab.stop_sidecar();
}

/// One JSON line per finished session, its fields checked against what
/// each client did: orderly sessions of known sizes, client resets, and a
/// listener whose only backend is down.
#[test]
fn sidecar_access_log_has_one_line_per_session_with_what_the_client_did() {
    if !need_root() {
        return;
    }
    let _serial = serial();
    let mut lab = Lab::new("access", 0);
    lab.start_backend(0, "echo");
    let log = lab.dir.join("access.log");
    let text = format!(
        "access_log = \"{}\"\n{}",
        log.display(),
        lab.config(
            "round-robin",
            &[0],
            &format!(
                "[[listener]]\nport = {}\nbackends = [\"{}\"]\n",
                LB_PORT + 1,
                lab.backend_addr(2)
            )
        )
    );
    let cfg = lab.write_config("access.toml", &text);
    lab.start_sidecar(&cfg);
    let out = lab.python(
        r#"
import struct
def echo_session(n, reset=False):
    s = socket.create_connection(LB, timeout=5)
    port = s.getsockname()[1]
    data = b"x" * n
    s.sendall(data)
    got = b""
    while len(got) < n:
        c = s.recv(65536)
        if not c:
            raise RuntimeError("short echo")
        got += c
    if reset:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        return port
    s.shutdown(socket.SHUT_WR)
    assert s.recv(10) == b""
    s.close()
    return port
for k in range(1, 21):
    print("ok", echo_session(k * 1000), k * 1000)
for k in range(1, 6):
    print("rst", echo_session(k * 10, reset=True), k * 10)
s = socket.create_connection((LB[0], LB[1] + 1), timeout=5)
port = s.getsockname()[1]
try:
    s.recv(10)
except ConnectionResetError:
    pass
s.close()
print("nb", port, 0)
"#,
    );
    // Every session has ended on the sidecar before its line is checked.
    assert!(
        eventually(std::time::Duration::from_secs(5), || {
            metric(
                &lab.metrics(),
                "turnstile_access_log_lines_total{result=\"written\"}",
            ) >= 26
        }),
        "{}",
        lab.metrics()
    );
    let m = lab.metrics();
    assert_eq!(
        metric(&m, "turnstile_access_log_lines_total{result=\"written\"}"),
        26
    );
    assert_eq!(
        metric(&m, "turnstile_access_log_lines_total{result=\"dropped\"}"),
        0
    );
    lab.stop_sidecar();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 26, "{text}");
    let client_ip = lab.topo.client.ip.to_string();
    for l in out.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        let (kind, port, n) = (f[0], f[1], f[2].parse::<u64>().unwrap());
        let client = format!("{client_ip}:{port}");
        let line = lines
            .iter()
            .find(|v| v["client"] == client.as_str())
            .unwrap_or_else(|| panic!("no line for {client}: {text}"));
        let (end, listener, backend) = match kind {
            "ok" => ("closed", LB_PORT, lab.backend_addr(0)),
            "rst" => ("reset_by_client", LB_PORT, lab.backend_addr(0)),
            _ => ("no_backend", LB_PORT + 1, lab.backend_addr(2)),
        };
        assert_eq!(line["end"], end, "{line}");
        assert_eq!(line["listener"], listener, "{line}");
        assert_eq!(line["backend"], backend.as_str(), "{line}");
        assert_eq!(line["bytes_to_backend"], n, "{line}");
        assert_eq!(line["bytes_from_backend"], n, "{line}");
        assert!(line["duration_ms"].as_f64().unwrap() < 5000.0, "{line}");
        assert!(line["time"].as_str().unwrap().ends_with('Z'), "{line}");
    }
}
