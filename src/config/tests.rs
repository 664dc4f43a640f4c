//! Validation tests: every mistake is named with its line.

use std::path::Path;
use std::time::Duration;

use super::*;

const GOOD: &str = r#"
interface = "eth0"
queues = 2
metrics = "127.0.0.1:9900"

[[listener]]
port = 80
balance = "maglev"
backends = ["10.0.0.5:8080", "10.0.0.6:8080"]

[[listener]]
port = 443
backends = ["10.0.0.7:8443"]

[upstream]
ports = "40000-40999"
msl_ms = 30000
reuse_delay_ms = 1000
reuse = true
max_time_wait = 262144

[health]
interval_ms = 1000
fall = 3
rise = 2
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("t.toml"))
}

fn err(text: &str) -> ConfigError {
    match parse(text) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(e) => e,
    }
}

fn good_with(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from}");
    GOOD.replacen(from, to, 1)
}

#[test]
fn the_contract_example_parses() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.interface, "eth0");
    assert_eq!(c.queues, Some(2));
    assert_eq!(c.metrics, Some("127.0.0.1:9900".parse().unwrap()));
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.listeners[0].balance, Balance::Maglev);
    assert_eq!(c.listeners[1].balance, Balance::RoundRobin);
    assert_eq!(
        c.listeners[0].backends[1].addr,
        "10.0.0.6:8080".parse().unwrap()
    );
    assert_eq!(c.upstream.ports, 40000..=40999);
    assert_eq!(c.health.fall, 3);
    assert_eq!(c.health.timeout, Duration::from_secs(1));
    let opts = c.stack_options();
    assert_eq!(opts.ports, vec![80, 443]);
    assert_eq!(opts.active_ports, 40000..=40999);
    assert_eq!(opts.tcp.msl, Duration::from_secs(30));
    assert_eq!(opts.tcp.reuse_delay, Duration::from_secs(1));
    assert_eq!(opts.tcp.max_time_wait, 262_144);
    assert_eq!(c.all_backends().len(), 3);
}

#[test]
fn minimal_file_takes_defaults() {
    let c =
        parse("interface = \"veth0\"\n[[listener]]\nport = 8080\nbackends = [\"10.1.1.1:80\"]\n")
            .unwrap();
    assert_eq!(c.queues, None);
    assert_eq!(c.upstream, Upstream::default());
    assert_eq!(c.health, Health::default());
    assert_eq!(c.timeouts, Timeouts::default());
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let e = err(&good_with("rise = 2", "rise = 2\nrice = 3"));
    assert!(e.message().contains("rice"), "{e}");
    assert_eq!(e.line(), 26, "{e}");
    let e = err(&good_with("port = 443", "port = 443\nweight = 3"));
    assert!(e.message().contains("weight"), "{e}");
    assert_eq!(e.line(), 13, "{e}");
    let e = err(&good_with("queues = 2", "queues = 2\n[extra]\nx = 1"));
    assert!(e.message().contains("extra"), "{e}");
}

#[test]
fn bad_backend_address_is_named_with_its_line() {
    for bad in [
        "10.0.0.300:80",
        "10.0.0.5",
        "10.0.0.5:0",
        "0.0.0.0:80",
        "127.0.0.1:80",
        "host:80",
        "224.0.0.1:80",
    ] {
        let e = err(&good_with("10.0.0.6:8080", bad));
        assert!(e.message().contains(bad), "{bad}: {e}");
        assert_eq!(e.line(), 9, "{e}");
        assert!(e.to_string().starts_with("t.toml:9:"), "{e}");
    }
    let e = err(&good_with("\"10.0.0.6:8080\"", "\"10.0.0.5:8080\""));
    assert!(e.message().contains("twice"), "{e}");
}

#[test]
fn ports_out_of_range_are_rejected() {
    let e = err(&good_with("port = 443", "port = 70000"));
    assert_eq!(e.line(), 12, "{e}");
    assert!(
        e.message().contains("70000") || e.message().contains("u16"),
        "{e}"
    );
    let e = err(&good_with("port = 443", "port = 0"));
    assert!(e.message().contains("listener.port = 0"), "{e}");
    for bad in ["40000-39999", "0-10", "40000-70000", "abc"] {
        let e = err(&good_with("40000-40999", bad));
        assert!(e.message().starts_with("upstream.ports"), "{bad}: {e}");
        assert_eq!(e.line(), 16, "{e}");
    }
}

#[test]
fn listener_inside_the_upstream_range_is_rejected() {
    let e = err(&good_with("port = 443", "port = 40500"));
    assert!(
        e.message().contains("40500") && e.message().contains("upstream.ports"),
        "{e}"
    );
    assert_eq!(e.line(), 12, "{e}");
}

#[test]
fn no_backends_and_no_listener_are_rejected() {
    let e = err(&good_with("[\"10.0.0.7:8443\"]", "[]"));
    assert!(e.message().contains("no backends"), "{e}");
    assert_eq!(e.line(), 13);
    let e = err("interface = \"eth0\"\n");
    assert!(e.message().contains("no [[listener]]"), "{e}");
    let e = err(&good_with("backends = [\"10.0.0.7:8443\"]", ""));
    assert!(e.message().contains("backends"), "{e}");
}

#[test]
fn other_mistakes_are_named() {
    let cases = [
        ("balance = \"maglev\"", "balance = \"random\"", "random"),
        ("queues = 2", "queues = 0", "queues = 0"),
        ("queues = 2", "queues = -1", "queues"),
        ("127.0.0.1:9900", "localhost", "metrics"),
        ("fall = 3", "fall = 0", "health.fall"),
        (
            "interval_ms = 1000",
            "interval_ms = 1",
            "health.interval_ms",
        ),
        ("msl_ms = 30000", "msl_ms = 0", "upstream.msl_ms"),
        (
            "max_time_wait = 262144",
            "max_time_wait = 0",
            "max_time_wait",
        ),
        ("interface = \"eth0\"", "interface = \"\"", "interface"),
        ("interface = \"eth0\"", "", "interface"),
        ("port = 443", "port = 80", "another [[listener]]"),
        ("port = 443", "port = \"443\"", "port"),
        ("reuse = true", "reuse = 1", "reuse"),
        ("queues = 2", "queues = 2\nqueues = 3", "queues"),
        ("[health]", "[health", "table header"),
    ];
    for (from, to, needle) in cases {
        let e = err(&good_with(from, to));
        let text = e.to_string();
        assert!(text.contains(needle), "{to}: {text}");
        assert!(!text.contains('\n'), "one line: {text:?}");
        assert!(e.line() >= 1, "{text}");
    }
}

#[test]
fn reload_allows_backends_and_refuses_datapath_changes() {
    let old = parse(GOOD).unwrap();
    let new = parse(&good_with(
        "\"10.0.0.6:8080\"",
        "\"10.0.0.6:8080\", \"10.0.0.9:80\"",
    ))
    .unwrap();
    assert!(old.reload_check(&new).is_ok());
    let new = parse(&good_with("maglev", "least-conn")).unwrap();
    assert!(old.reload_check(&new).is_ok());
    let new = parse(&good_with("fall = 3", "fall = 5")).unwrap();
    assert!(old.reload_check(&new).is_ok());
    for (from, to, needle) in [
        ("port = 443", "port = 444", "listener ports"),
        ("40000-40999", "41000-41999", "[upstream]"),
        ("interface = \"eth0\"", "interface = \"eth1\"", "interface"),
        ("queues = 2", "queues = 1", "queues"),
    ] {
        let new = parse(&good_with(from, to)).unwrap();
        let e = old.reload_check(&new).unwrap_err();
        assert!(e.contains(needle), "{e}");
    }
}

#[test]
fn port_ranges_parse() {
    assert_eq!(parse_port_range("40000-40999"), Ok(40000..=40999));
    assert_eq!(parse_port_range("5000"), Ok(5000..=5000));
    assert_eq!(parse_port_range(" 1 - 2 "), Ok(1..=2));
    assert!(parse_port_range("2-1").is_err());
    assert!(parse_port_range("0-1").is_err());
    assert!(parse_port_range("1-65536").is_err());
}

#[test]
fn fleet_keys_virtual_ip_seed_and_announce_grace() {
    let text = "interface = \"eth0\"\nmaglev_seed = 7\nannounce_grace_ms = 2500\n[[listener]]\naddress = \"198.18.0.100\"\nport = 80\nbackends = [\"10.0.0.5:8080\"]\n[[listener]]\nport = 81\nbackends = [\"10.0.0.5:8080\"]\n";
    let c = Config::parse(text, Path::new("f.toml")).unwrap();
    assert_eq!(c.maglev_seed, 7);
    assert_eq!(c.announce_grace, Duration::from_millis(2500));
    assert_eq!(
        c.listeners[0].address,
        Some("198.18.0.100".parse().unwrap())
    );
    assert_eq!(c.listeners[1].address, None);
    assert_eq!(
        c.stack_options().addresses,
        vec![("198.18.0.100".parse().unwrap(), 80)]
    );
    assert_eq!(c.proxy_settings().maglev_seed, 7);
    let moved = Config::parse(
        &text.replace("198.18.0.100", "198.18.0.101"),
        Path::new("f.toml"),
    )
    .unwrap();
    assert!(c.reload_check(&moved).unwrap_err().contains("address"));
    let reseeded = Config::parse(
        &text.replace("maglev_seed = 7", "maglev_seed = 8"),
        Path::new("f.toml"),
    )
    .unwrap();
    assert!(c.reload_check(&reseeded).is_ok());
    let e = Config::parse(
        &text.replace("198.18.0.100", "198.18.0.300"),
        Path::new("f.toml"),
    )
    .unwrap_err();
    assert_eq!(e.line(), 5, "{e}");
    assert!(e.message().contains("listener.address"), "{e}");
    let e = Config::parse(
        &text.replace("198.18.0.100", "127.0.0.1"),
        Path::new("f.toml"),
    )
    .unwrap_err();
    assert!(e.message().contains("not a unicast address"), "{e}");
}

#[test]
fn backends_as_strings_or_tables() {
    let c = parse(&good_with(
        "backends = [\"10.0.0.7:8443\"]",
        "slow_start_ms = 30000\nbackends = [\"10.0.0.7:8443\",\n  { addr = \"10.0.0.8:8443\", weight = 3, max_connections = 500 },\n  { addr = \"10.0.0.9:8443\", backup = true }]",
    ))
    .unwrap();
    let l = &c.listeners[1];
    assert_eq!(l.slow_start, Duration::from_secs(30));
    assert_eq!(
        l.backends[0],
        BackendSettings::new("10.0.0.7:8443".parse().unwrap())
    );
    assert_eq!(
        (l.backends[1].weight, l.backends[1].max_connections),
        (3, Some(500))
    );
    assert!(l.backends[2].backup && l.backends[2].weight == 1);
    let p = c.proxy_settings();
    assert_eq!(p.listeners[1].backends, l.backends);
    for (to, needle, line) in [
        ("{ addr = \"10.0.0.8:1\", wieght = 3 }", "wieght", 13),
        ("{ addr = \"10.0.0.8:1\", weight = 300 }", "at most 256", 13),
        (
            "{ addr = \"10.0.0.8:1\", max_connections = 0 }",
            "max_connections = 0",
            13,
        ),
        ("{ addr = \"10.0.0.300:1\" }", "10.0.0.300", 13),
        ("{ weight = 2 }", "addr", 13),
        (
            "{ addr = \"10.0.0.8:1\", backup = true }",
            "every backend",
            13,
        ),
        ("5", "ip:port", 13),
    ] {
        let e = err(&good_with("[\"10.0.0.7:8443\"]", &format!("[{to}]")));
        assert!(e.message().contains(needle), "{to}: {e}");
        assert_eq!(e.line(), line, "{to}: {e}");
    }
}

#[test]
fn backends_from_dns_srv_or_a_records() {
    let text = "interface = \"eth0\"\n[dns]\nresolvers = [\"198.18.0.53:5353\", \"198.18.0.54\"]\nmin_ttl_ms = 250\n[[listener]]\nport = 80\nbackends_dns = \"_http._tcp.api.internal\"\n[[listener]]\nport = 81\nbackends = [{ addr = \"10.0.0.5:8080\", backup = true }]\nbackends_dns = \"api.internal:8080\"\n";
    let c = Config::parse(text, Path::new("d.toml")).unwrap();
    assert_eq!(
        c.listeners[0].backends_dns,
        Some(DnsName::Srv("_http._tcp.api.internal".into()))
    );
    assert!(c.listeners[0].backends.is_empty());
    assert_eq!(
        c.listeners[1].backends_dns,
        Some(DnsName::A {
            host: "api.internal".into(),
            port: 8080
        })
    );
    assert_eq!(c.listeners[1].backends.len(), 1, "beside backends");
    assert_eq!(
        c.dns.resolvers,
        Some(vec![
            "198.18.0.53:5353".parse().unwrap(),
            "198.18.0.54:53".parse().unwrap()
        ])
    );
    assert_eq!(c.dns.min_ttl, Duration::from_millis(250));
    let plain = parse(GOOD).unwrap();
    assert_eq!(plain.dns, Dns::default());
    assert_eq!(plain.dns.resolvers, None, "default: /etc/resolv.conf");
    // Names and resolvers are reloadable.
    let other = Config::parse(
        &text.replace("api.internal:8080", "web.internal:80"),
        Path::new("d.toml"),
    )
    .unwrap();
    assert!(c.reload_check(&other).is_ok());

    for (from, to, needle, line) in [
        (
            "\"_http._tcp.api.internal\"",
            "\"api.internal\"",
            "neither an SRV name",
            7,
        ),
        ("\"api.internal:8080\"", "\"api.internal:0\"", "1-65535", 11),
        (
            "\"_http._tcp.api.internal\"",
            "\"_http._tcp.api..internal\"",
            "not a DNS label",
            7,
        ),
        (
            "\"_http._tcp.api.internal\"",
            "\"_http._tcp.api internal\"",
            "letters, digits",
            7,
        ),
        ("\"198.18.0.54\"", "\"dns.example\"", "dns.resolvers", 3),
        ("min_ttl_ms = 250", "min_ttl_ms = 0", "dns.min_ttl_ms", 4),
        ("[dns]", "[dns]\ntimeout = 1", "timeout", 3),
    ] {
        let e = Config::parse(&text.replace(from, to), Path::new("d.toml")).unwrap_err();
        assert!(e.message().contains(needle), "{to}: {e}");
        assert_eq!(e.line(), line, "{to}: {e}");
    }
    let e = Config::parse(
        "interface = \"eth0\"\n[[listener]]\nport = 80\n",
        Path::new("d.toml"),
    )
    .unwrap_err();
    assert!(e.message().contains("or set backends_dns"), "{e}");
    assert_eq!(e.line(), 3, "{e}");
}

#[test]
fn admin_and_its_token_file() {
    let dir = std::env::temp_dir().join(format!("turnstile-admin-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), " s3cret \n").unwrap();
    let file = dir.join("t.toml");
    let with = |extra: &str| Config::parse(&format!("{extra}\n{GOOD}"), &file);
    let c = with("admin = \"127.0.0.1:9901\"\nadmin_token_file = \"token\"").unwrap();
    assert_eq!(c.admin, Some("127.0.0.1:9901".parse().unwrap()));
    assert_eq!(c.admin_token.as_deref(), Some("s3cret"));
    let e = with("admin_token_file = \"token\"")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("t.toml:1:") && e.contains("without admin"),
        "{e}"
    );
    let e = with("admin = \"127.0.0.1:9901\"\nadmin_token_file = \"missing\"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("t.toml:2:") && e.contains("cannot read"), "{e}");
    let e = with("admin = \"localhost\"").unwrap_err().to_string();
    assert!(e.contains("admin") && e.contains("127.0.0.1:9901"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn accept_proxy_retries_passive_fall_and_the_session_timeouts() {
    let text = good_with(
        "port = 443\n",
        "port = 443\naccept_proxy = true\nretries = 0\n",
    )
    .replacen(
        "[[listener]]\nport = 80\n",
        "[[listener]]\nport = 80\nretries = 1\n",
        1,
    ) + "passive_fall = 5\n[timeouts]\nclient_fin_ms = 30000\nmax_session_ms = 0\nproxy_header_ms = 800\n";
    let c = parse(&text).unwrap();
    let (l80, l443) = (&c.listeners[0], &c.listeners[1]);
    assert_eq!((l80.accept_proxy, l80.retries), (false, Some(1)));
    assert_eq!((l443.accept_proxy, l443.retries), (true, Some(0)));
    assert_eq!(c.health.passive_fall, Some(5));
    assert_eq!(c.timeouts.client_fin, Some(Duration::from_secs(30)));
    assert_eq!(c.timeouts.max_session, None);
    assert_eq!(c.timeouts.proxy_header, Duration::from_millis(800));
    let p = c.proxy_settings();
    assert!(p.listeners[1].accept_proxy);
    assert_eq!(p.listeners[0].retries, Some(1));
    // Defaults: off, each backend once, no bounds, 5 s for the header.
    let d = parse(GOOD).unwrap();
    assert_eq!(
        (d.listeners[0].accept_proxy, d.listeners[0].retries),
        (false, None)
    );
    assert_eq!(d.health.passive_fall, None);
    assert_eq!(
        (
            d.timeouts.client_fin,
            d.timeouts.max_session,
            d.timeouts.proxy_header
        ),
        (None, None, Duration::from_secs(5))
    );
    // Reloadable: they are routing, not datapath.
    assert!(d.reload_check(&c).is_ok());
    // Mistakes, named at their line.
    let e = err(&good_with("port = 443\n", "port = 443\nretries = 1\n"));
    assert!(
        e.message().contains("listener.retries = 1")
            && e.message().contains("1 backend(s), so at most 0"),
        "{e}"
    );
    assert_eq!(e.line(), 13, "{e}");
    let e = err(&good_with(
        "port = 443\n",
        "port = 443\naccept_proxy = \"yes\"\n",
    ));
    assert!(e.message().contains("accept_proxy"), "{e}");
    let e = err(&(GOOD.to_string() + "[timeouts]\nproxy_header_ms = 0\n"));
    assert!(
        e.message()
            .contains("timeouts.proxy_header_ms = 0: must be at least 1"),
        "{e}"
    );
}

#[test]
fn keepalive_per_listener_and_upstream() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.listeners[0].keepalive, None, "off by default");
    assert_eq!(c.upstream.keepalive, None);
    let text = good_with(
        "port = 443\n",
        "port = 443\nkeepalive = { idle_ms = 60000, interval_ms = 5000, count = 4 }\n",
    )
    .replacen(
        "max_time_wait = 262144\n",
        "max_time_wait = 262144\nkeepalive = { idle_ms = 30000 }\n",
        1,
    );
    let c = parse(&text).unwrap();
    let k = crate::tcp::Keepalive {
        idle: Duration::from_secs(60),
        interval: Duration::from_secs(5),
        count: 4,
    };
    assert_eq!(c.listeners[1].keepalive, Some(k));
    assert_eq!(c.listeners[0].keepalive, None);
    // Left-out keys take Linux's defaults (75 s, 9 probes).
    let up = c.upstream.keepalive.unwrap();
    assert_eq!(
        (up.idle, up.interval, up.count),
        (Duration::from_secs(30), Duration::from_secs(75), 9)
    );
    let opts = c.stack_options();
    assert_eq!(opts.tcp.keepalive_ports, vec![(443, k)]);
    assert_eq!(opts.tcp.keepalive_active, Some(up));
    assert_eq!(opts.tcp.keepalive, None);
    // Changing a listener's keepalive needs a restart (the engine holds it).
    let before = parse(GOOD).unwrap();
    assert!(before.reload_check(&c).unwrap_err().contains("keepalive"));
}

#[test]
fn bad_keepalive_is_named_with_its_line() {
    let e = err(&good_with(
        "port = 443\n",
        "port = 443\nkeepalive = { idle_ms = 1000, count = 0 }\n",
    ))
    .to_string();
    assert!(e.contains("listener.keepalive.count = 0"), "{e}");
    assert!(e.contains("t.toml:13:"), "{e}");
    let e = err(&good_with(
        "port = 443\n",
        "port = 443\nkeepalive = { idle_ms = 0 }\n",
    ))
    .to_string();
    assert!(e.contains("listener.keepalive.idle_ms = 0"), "{e}");
    let e = err(&good_with(
        "port = 443\n",
        "port = 443\nkeepalive = { idle = 5 }\n",
    ))
    .to_string();
    assert!(e.contains("idle"), "{e}");
}

#[test]
fn serve_keepalive_flag_form() {
    let k = crate::tcp::Keepalive::parse("60000, 10000,5").unwrap();
    assert_eq!(
        (k.idle, k.interval, k.count),
        (Duration::from_secs(60), Duration::from_secs(10), 5)
    );
    for bad in [
        "60000,10000",
        "0,1,1",
        "1,1,0",
        "1,1,256",
        "a,1,1",
        "1,1,1,1",
    ] {
        assert!(crate::tcp::Keepalive::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn buffers_section_sets_the_memory_bounds() {
    let base = "interface = \"veth0\"\n[[listener]]\nport = 8080\nbackends = [\"10.1.1.1:80\"]\n";
    let c = parse(base).unwrap();
    assert_eq!(c.buffers, Buffers::default());
    assert_eq!(c.stack_options().tcp.recv_buffer_max, 6 << 20);
    let c = parse(&format!(
        "{base}[buffers]\nrecv_max_kb = 64\nsend_max_kb = 128\npool_mb = 32\n"
    ))
    .unwrap();
    let tcp = c.stack_options().tcp;
    assert_eq!(
        (
            tcp.recv_buffer_max,
            tcp.send_buffer_max,
            tcp.buffer_pool_budget
        ),
        (64 << 10, 128 << 10, 32 << 20)
    );
    let e = parse(&format!("{base}[buffers]\npool_mb = 0\n")).unwrap_err();
    assert!(e.message().starts_with("buffers.pool_mb = 0"), "{e}");
    assert_eq!(e.line(), 6, "{e}");
    // Not reloadable.
    let old = parse(base).unwrap();
    let new = parse(&format!("{base}[buffers]\nrecv_max_kb = 64\n")).unwrap();
    assert!(old.reload_check(&new).unwrap_err().contains("[buffers]"));
}

#[test]
fn congestion_selects_the_controller_and_needs_a_restart() {
    let base = "interface = \"veth0\"\n[[listener]]\nport = 8080\nbackends = [\"10.1.1.1:80\"]\n";
    let c = parse(base).unwrap();
    assert_eq!(
        c.stack_options().tcp.congestion,
        crate::tcp::Congestion::NewReno
    );
    let bbr = parse(&format!("congestion = \"bbr\"\n{base}")).unwrap();
    assert_eq!(
        bbr.stack_options().tcp.congestion,
        crate::tcp::Congestion::Bbr
    );
    let e = parse(&format!("congestion = \"cubic\"\n{base}")).unwrap_err();
    assert!(e.message().contains("congestion = \"cubic\""), "{e}");
    assert!(e.message().contains("\"newreno\" or \"bbr\""), "{e}");
    assert_eq!(e.line(), 1, "{e}");
    assert!(
        c.reload_check(&bbr)
            .unwrap_err()
            .contains("congestion changed (newreno -> bbr)")
    );
}
