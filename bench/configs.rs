//! The contenders' configuration files: HAProxy's and nginx's stream
//! proxies and `turnstile run`'s, as the scenarios (proxy-churn, bulk) write
//! them.

use std::net::SocketAddrV4;

use crate::scenarios::{SERVER_METRICS, TURNSTILE_PORTS, TURNSTILE_REUSE_DELAY_MS};

/// HAProxy in TCP mode, one frontend and backend per `(listen, backend)`
/// pair; `timeout_s` for the client and server sides.
pub fn haproxy_proxies(
    listens: &[(SocketAddrV4, SocketAddrV4)],
    threads: usize,
    timeout_s: u32,
) -> String {
    // maxconn 8000: the file-descriptor hard limit here is 20,000
    // (docs/BENCHMARKS.md, "File descriptors").
    let mut s = format!(
        "global\n    nbthread {threads}\n    maxconn 8000\n\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client {timeout_s}s\n    timeout server {timeout_s}s\n    maxconn 8000\n"
    );
    for (i, (l, b)) in listens.iter().enumerate() {
        s.push_str(&format!(
            "\nfrontend f{i}\n    bind {l}\n    default_backend b{i}\n\nbackend b{i}\n    server s{i} {b}\n"
        ));
    }
    s
}

pub fn haproxy_config(listen: SocketAddrV4, backend: SocketAddrV4, threads: usize) -> String {
    haproxy_proxies(&[(listen, backend)], threads, 30)
}

pub fn nginx_config(
    module: &str,
    listen: SocketAddrV4,
    backend: SocketAddrV4,
    workers: usize,
    dir: &std::path::Path,
) -> String {
    format!(
        "load_module {module};\n\
         daemon off;\nmaster_process on;\nworker_processes {workers};\nworker_rlimit_nofile 20000;\n\
         pid {pid};\nerror_log {log} warn;\n\
         events {{ worker_connections 8000; multi_accept on; }}\n\
         stream {{\n    upstream be {{ server {backend}; }}\n\
         \x20   server {{ listen {listen} reuseport backlog=4096; proxy_pass be; proxy_connect_timeout 5s; proxy_timeout 30s; }}\n}}\n",
        pid = dir.join("nginx.pid").display(),
        log = dir.join("error.log").display(),
    )
}

/// `turnstile run` with one round-robin listener per `(port, backend)`
/// pair, metrics on `metrics`.
pub fn turnstile_run_listeners(
    iface: &str,
    queues: u32,
    xdp_mode: &str,
    metrics: &str,
    listens: &[(u16, SocketAddrV4)],
) -> String {
    let mut s = format!(
        "interface = \"{iface}\"\nqueues = {queues}\nxdp_mode = \"{xdp_mode}\"\nmetrics = \"{metrics}\"\n"
    );
    for (port, b) in listens {
        s.push_str(&format!(
            "\n[[listener]]\nport = {port}\nbalance = \"round-robin\"\nbackends = [\"{b}\"]\n"
        ));
    }
    s.push_str(&format!(
        "\n[upstream]\nports = \"{TURNSTILE_PORTS}\"\nreuse = true\nreuse_delay_ms = {TURNSTILE_REUSE_DELAY_MS}\n"
    ));
    s
}

pub fn turnstile_run_config(
    iface: &str,
    queues: u32,
    xdp_mode: &str,
    port: u16,
    backend: SocketAddrV4,
) -> String {
    turnstile_run_listeners(iface, queues, xdp_mode, SERVER_METRICS, &[(port, backend)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::{BACKEND_PORT, PORT};

    /// Addresses for tests.
    fn example_addrs() -> (SocketAddrV4, SocketAddrV4) {
        use std::net::Ipv4Addr;
        (
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 7, 1), PORT),
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 7, 2), BACKEND_PORT),
        )
    }

    #[test]
    fn configs_name_what_they_must() {
        let (l, b) = example_addrs();
        let h = haproxy_config(l, b, 2);
        assert!(h.contains("nbthread 2") && h.contains("maxconn 8000") && h.contains("mode tcp"));
        assert!(h.contains("bind 198.18.7.1:80") && h.contains("server s0 198.18.7.2:8080"));
        let n = nginx_config("/m.so", l, b, 2, std::path::Path::new("/tmp/x"));
        assert!(n.contains("load_module /m.so;") && n.contains("listen 198.18.7.1:80 reuseport"));
        assert!(n.contains("server 198.18.7.2:8080;") && n.contains("worker_processes 2;"));
        let t = turnstile_run_config("eth9", 2, "generic", 80, b);
        let v: toml::Value = toml::from_str(&t).unwrap();
        assert_eq!(v["interface"].as_str(), Some("eth9"));
        assert_eq!(v["xdp_mode"].as_str(), Some("generic"));
        assert_eq!(
            v["listener"][0]["backends"][0].as_str(),
            Some("198.18.7.2:8080")
        );
        assert_eq!(v["upstream"]["ports"].as_str(), Some(TURNSTILE_PORTS));
    }
}
