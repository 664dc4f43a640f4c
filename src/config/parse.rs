//! Validation: the file's schema to a [`Config`], one function per
//! section, each error at the line of the value it is about.

use std::net::{SocketAddr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::error::Source;
use super::schema::{
    RawBackend, RawBuffers, RawConfig, RawHealth, RawKeepalive, RawListener, RawTimeouts,
    RawUpstream,
};
use super::{
    BackendSettings, Balance, Buffers, Config, ConfigError, Health, Listener, ProxyProtocol,
    Timeouts, Upstream,
};
use crate::app::proxy::settings::MAX_WEIGHT;
use crate::xdp::XdpMode;

pub(super) fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let src = Source { file, text };
    let raw: RawConfig = toml::from_str(text).map_err(|e| src.syntax(&e))?;

    let interface = raw.interface.get_ref().trim().to_string();
    if interface.is_empty() || interface.len() > 15 || interface.contains(['/', ' ']) {
        return Err(src.at(
            &raw.interface,
            format!(
                "interface = {:?}: not an interface name (1-15 characters, see `ip link show`)",
                raw.interface.get_ref()
            ),
        ));
    }
    let queues = match &raw.queues {
        Some(q) if *q.get_ref() == 0 => {
            return Err(src.at(
                q,
                "queues = 0: need at least 1 (or leave it out for every queue of the interface)",
            ));
        }
        Some(q) => Some(*q.get_ref()),
        None => None,
    };
    let xdp_mode = match raw.xdp_mode.as_ref().map(|m| (m, m.get_ref().as_str())) {
        None | Some((_, "auto")) => XdpMode::Auto,
        Some((_, "native")) => XdpMode::Native,
        Some((_, "generic")) => XdpMode::Generic,
        Some((m, other)) => {
            return Err(src.at(
                m,
                format!("xdp_mode = {other:?}: expected \"auto\", \"native\" or \"generic\""),
            ));
        }
    };
    let metrics = raw
        .metrics
        .as_ref()
        .map(|m| socket_addr(&src, m, "metrics", "127.0.0.1:9900"))
        .transpose()?;
    let admin = raw
        .admin
        .as_ref()
        .map(|m| socket_addr(&src, m, "admin", "127.0.0.1:9901"))
        .transpose()?;
    let admin_token = match &raw.admin_token_file {
        None => None,
        Some(_) if admin.is_none() => {
            return Err(src.at(
                raw.admin_token_file.as_ref().expect("matched"),
                "admin_token_file without admin: set admin = \"127.0.0.1:9901\" too (or drop the token file)",
            ));
        }
        Some(f) => {
            let path = resolve(file, f.get_ref());
            let token = std::fs::read_to_string(&path).map_err(|e| {
                src.at(
                    f,
                    format!("admin_token_file = {:?}: cannot read it: {e}", f.get_ref()),
                )
            })?;
            let token = token.trim().to_string();
            if token.is_empty() || token.contains(char::is_whitespace) {
                return Err(src.at(
                    f,
                    format!(
                        "admin_token_file = {:?}: the token must be one word, not empty",
                        f.get_ref()
                    ),
                ));
            }
            Some(token)
        }
    };
    let access_log = match &raw.access_log {
        None => None,
        Some(a) if a.get_ref().trim().is_empty() => {
            return Err(src.at(
                a,
                "access_log = \"\": say \"stderr\" or a file path (or leave it out)",
            ));
        }
        Some(a) if a.get_ref().trim() == "stderr" => Some(super::AccessLog::Stderr),
        Some(a) => Some(super::AccessLog::File(resolve(file, a.get_ref().trim()))),
    };
    let mss = match &raw.mss {
        Some(m) if *m.get_ref() < 88 => {
            return Err(src.at(
                m,
                format!(
                    "mss = {}: need at least 88 (or leave it out to follow the MTU)",
                    m.get_ref()
                ),
            ));
        }
        Some(m) => Some(*m.get_ref()),
        None => None,
    };
    let zero_copy = match raw.zero_copy.as_ref().map(|m| (m, m.get_ref().as_str())) {
        None | Some((_, "auto")) => crate::xsk::ZeroCopy::Auto,
        Some((_, "on")) => crate::xsk::ZeroCopy::On,
        Some((_, "off")) => crate::xsk::ZeroCopy::Off,
        Some((m, other)) => {
            return Err(src.at(
                m,
                format!("zero_copy = {other:?}: expected \"auto\", \"on\" or \"off\""),
            ));
        }
    };
    let congestion = match raw.congestion.as_ref() {
        None => crate::tcp::Congestion::default(),
        Some(c) => c.get_ref().parse().map_err(|_: String| {
            src.at(
                c,
                format!(
                    "congestion = {:?}: expected \"newreno\" or \"bbr\"",
                    c.get_ref()
                ),
            )
        })?,
    };
    if let (None, Some(b)) = (&raw.busy_poll_us, &raw.busy_poll_budget) {
        return Err(src.at(
            b,
            "busy_poll_budget without busy_poll_us: set busy_poll_us to turn busy polling on",
        ));
    }
    let busy_poll = match &raw.busy_poll_us {
        Some(u) if *u.get_ref() > 0 => Some(crate::xsk::BusyPoll {
            usecs: *u.get_ref(),
            budget: match &raw.busy_poll_budget {
                Some(b) if *b.get_ref() == 0 => {
                    return Err(src.at(b, "busy_poll_budget = 0: need at least 1 (default 64)"));
                }
                Some(b) => *b.get_ref(),
                None => 64,
            },
        }),
        _ => None,
    };
    let upstream = match &raw.upstream {
        None => Upstream::default(),
        Some(u) => upstream(&src, u.get_ref())?,
    };
    let health = match &raw.health {
        None => Health::default(),
        Some(h) => health(&src, h.get_ref())?,
    };
    let timeouts = match &raw.timeouts {
        None => Timeouts::default(),
        Some(t) => timeouts(&src, t.get_ref())?,
    };
    let buffers = match &raw.buffers {
        None => Buffers::default(),
        Some(b) => buffers(&src, b.get_ref())?,
    };

    if raw.listener.is_empty() {
        return Err(src.error(
            Some(text.len()..text.len()),
            "no [[listener]]: add at least one with a port and backends",
        ));
    }
    let mut listeners: Vec<Listener> = Vec::with_capacity(raw.listener.len());
    for l in &raw.listener {
        let l = listener(&src, l.get_ref(), &upstream, &listeners)?;
        listeners.push(l);
    }

    Ok(Config {
        file: file.to_path_buf(),
        interface,
        queues,
        xdp_mode,
        metrics,
        mss,
        zero_copy,
        busy_poll,
        congestion,
        listeners,
        upstream,
        health,
        timeouts,
        buffers,
        max_connections: raw.max_connections.as_ref().map(|m| *m.get_ref() as usize),
        state_dir: raw.state_dir.as_ref().map_or_else(
            || crate::state::DEFAULT_STATE_DIR.into(),
            |d| PathBuf::from(d.get_ref()),
        ),
        maglev_seed: raw.maglev_seed.unwrap_or(0),
        announce_grace: millis(
            &src,
            raw.announce_grace_ms.as_ref(),
            "announce_grace_ms",
            0,
            Duration::ZERO,
        )?,
        dns: match &raw.dns {
            None => super::Dns::default(),
            Some(d) => super::dns::section(&src, d.get_ref())?,
        },
        admin,
        admin_token,
        access_log,
    })
}

/// A path from the file: relative ones are taken from the file's directory.
fn resolve(file: &Path, path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    if p.is_absolute() {
        p
    } else {
        file.parent().unwrap_or(Path::new(".")).join(p)
    }
}

fn upstream(src: &Source<'_>, u: &RawUpstream) -> Result<Upstream, ConfigError> {
    let defaults = Upstream::default();
    let ports = match &u.ports {
        None => defaults.ports,
        Some(p) => {
            parse_port_range(p.get_ref()).map_err(|e| src.at(p, format!("upstream.ports: {e}")))?
        }
    };
    let max_time_wait = match &u.max_time_wait {
        None => defaults.max_time_wait,
        Some(m) if *m.get_ref() == 0 => {
            return Err(src.at(m, "upstream.max_time_wait = 0: need at least 1 entry"));
        }
        Some(m) => usize::try_from(*m.get_ref()).unwrap_or(usize::MAX),
    };
    Ok(Upstream {
        ports,
        msl: millis(src, u.msl_ms.as_ref(), "upstream.msl_ms", 1, defaults.msl)?,
        reuse: u.reuse.unwrap_or(defaults.reuse),
        reuse_delay: millis(
            src,
            u.reuse_delay_ms.as_ref(),
            "upstream.reuse_delay_ms",
            0,
            defaults.reuse_delay,
        )?,
        max_time_wait,
        keepalive: u
            .keepalive
            .as_ref()
            .map(|k| keepalive(src, k.get_ref(), "upstream.keepalive"))
            .transpose()?,
    })
}

/// A `keepalive` table. Keys left out take Linux's defaults
/// (tcp_keepalive_time 2 h, _intvl 75 s, _probes 9).
fn keepalive(
    src: &Source<'_>,
    k: &RawKeepalive,
    key: &str,
) -> Result<crate::tcp::Keepalive, ConfigError> {
    let count = match &k.count {
        None => 9,
        Some(c) => u8::try_from(*c.get_ref())
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                src.at(
                    c,
                    format!("{key}.count = {}: need 1 to 255 probes", c.get_ref()),
                )
            })?,
    };
    let ms = |v: Option<&Spanned<u64>>, name: &str, default: u64| {
        let d = millis(
            src,
            v,
            &format!("{key}.{name}"),
            1,
            Duration::from_millis(default),
        )?;
        match v {
            Some(v) if *v.get_ref() > u64::from(u32::MAX) => Err(src.at(
                v,
                format!("{key}.{name} = {}: at most {} ms", v.get_ref(), u32::MAX),
            )),
            _ => Ok(d),
        }
    };
    Ok(crate::tcp::Keepalive {
        idle: ms(k.idle_ms.as_ref(), "idle_ms", 7_200_000)?,
        interval: ms(k.interval_ms.as_ref(), "interval_ms", 75_000)?,
        count,
    })
}

fn health(src: &Source<'_>, h: &RawHealth) -> Result<Health, ConfigError> {
    let defaults = Health::default();
    let interval = millis(
        src,
        h.interval_ms.as_ref(),
        "health.interval_ms",
        10,
        defaults.interval,
    )?;
    // Default: a check may take the whole interval.
    let timeout = millis(src, h.timeout_ms.as_ref(), "health.timeout_ms", 1, interval)?;
    Ok(Health {
        interval,
        timeout,
        fall: at_least_one(src, h.fall.as_ref(), "health.fall", defaults.fall)?,
        rise: at_least_one(src, h.rise.as_ref(), "health.rise", defaults.rise)?,
        // 0 (or absent): passive health off.
        passive_fall: h
            .passive_fall
            .as_ref()
            .map(|v| *v.get_ref())
            .filter(|&n| n > 0),
    })
}

/// `[buffers]`: sizes in kB/MB, each at least 1 unit.
fn buffers(src: &Source<'_>, b: &RawBuffers) -> Result<Buffers, ConfigError> {
    let defaults = Buffers::default();
    let size = |v: Option<&Spanned<u64>>, key: &str, unit: usize, default: usize| match v {
        None => Ok(default),
        Some(v) if *v.get_ref() == 0 => Err(src.at(v, format!("{key} = 0: need at least 1"))),
        Some(v) if *v.get_ref() > (1 << 20) => {
            Err(src.at(v, format!("{key} = {}: at most 1048576", v.get_ref())))
        }
        Some(v) => Ok(*v.get_ref() as usize * unit),
    };
    Ok(Buffers {
        recv_max: size(
            b.recv_max_kb.as_ref(),
            "buffers.recv_max_kb",
            1024,
            defaults.recv_max,
        )?,
        send_max: size(
            b.send_max_kb.as_ref(),
            "buffers.send_max_kb",
            1024,
            defaults.send_max,
        )?,
        pool: size(
            b.pool_mb.as_ref(),
            "buffers.pool_mb",
            1 << 20,
            defaults.pool,
        )?,
    })
}

fn timeouts(src: &Source<'_>, t: &RawTimeouts) -> Result<Timeouts, ConfigError> {
    let defaults = Timeouts::default();
    Ok(Timeouts {
        connect: millis(
            src,
            t.connect_ms.as_ref(),
            "timeouts.connect_ms",
            1,
            defaults.connect,
        )?,
        idle: optional_millis(t.idle_ms.as_ref(), defaults.idle),
        drain: millis(
            src,
            t.drain_ms.as_ref(),
            "timeouts.drain_ms",
            0,
            defaults.drain,
        )?,
        client_fin: optional_millis(t.client_fin_ms.as_ref(), defaults.client_fin),
        max_session: optional_millis(t.max_session_ms.as_ref(), defaults.max_session),
        proxy_header: millis(
            src,
            t.proxy_header_ms.as_ref(),
            "timeouts.proxy_header_ms",
            1,
            defaults.proxy_header,
        )?,
    })
}

/// Milliseconds where 0 means "no bound".
fn optional_millis(v: Option<&Spanned<u64>>, default: Option<Duration>) -> Option<Duration> {
    match v {
        None => default,
        Some(v) if *v.get_ref() == 0 => None,
        Some(v) => Some(Duration::from_millis(*v.get_ref())),
    }
}

/// One `[[listener]]`, checked against the upstream range and the
/// listeners before it.
fn listener(
    src: &Source<'_>,
    l: &RawListener,
    upstream: &Upstream,
    before: &[Listener],
) -> Result<Listener, ConfigError> {
    let port = *l.port.get_ref();
    if port == 0 {
        return Err(src.at(&l.port, "listener.port = 0: ports are 1-65535"));
    }
    if before.iter().any(|o| o.port == port) {
        return Err(src.at(
            &l.port,
            format!("listener.port = {port}: another [[listener]] has this port already"),
        ));
    }
    if upstream.ports.contains(&port) {
        return Err(src.at(
            &l.port,
            format!(
                "listener.port = {port} is inside upstream.ports {}-{}: the two must not overlap",
                upstream.ports.start(),
                upstream.ports.end()
            ),
        ));
    }
    let balance = match &l.balance {
        None => Balance::RoundRobin,
        Some(b) => Balance::from_name(b.get_ref()).ok_or_else(|| {
            src.at(
                b,
                format!(
                    "listener.balance = {:?}: expected \"round-robin\", \"least-conn\" or \"maglev\"",
                    b.get_ref()
                ),
            )
        })?,
    };
    let backends_dns = l
        .backends_dns
        .as_ref()
        .map(|n| super::dns::backends_dns(src, n))
        .transpose()?;
    let no_backends: &[Spanned<RawBackend>] = &[];
    let listed = l.backends.as_ref().map_or(no_backends, |b| b.get_ref());
    if listed.is_empty() && backends_dns.is_none() {
        let what = format!(
            "listener.backends: listener {port} has no backends; list at least one \"ip:port\" (or set backends_dns)"
        );
        return Err(match &l.backends {
            Some(b) => src.at(b, what),
            None => src.at(&l.port, what),
        });
    }
    let mut backends: Vec<BackendSettings> = Vec::with_capacity(listed.len());
    for b in listed {
        let addr = parse_backend(b.get_ref().addr())
            .map_err(|e| src.at(b, format!("listener.backends: {e}")))?;
        if backends.iter().any(|o| o.addr == addr) {
            return Err(src.at(
                b,
                format!("listener.backends: {addr} is listed twice for listener {port}"),
            ));
        }
        let mut backend = BackendSettings::new(addr);
        if let RawBackend::Table(t) = b.get_ref() {
            if let Some(w) = t.weight {
                if w > MAX_WEIGHT {
                    return Err(src.at(
                        b,
                        format!("listener.backends: {addr}: weight = {w}: at most {MAX_WEIGHT} (0 drains it)"),
                    ));
                }
                backend.weight = w;
            }
            if let Some(m) = t.max_connections {
                if m == 0 {
                    return Err(src.at(
                        b,
                        format!("listener.backends: {addr}: max_connections = 0: need at least 1 (use weight = 0 to drain it)"),
                    ));
                }
                backend.max_connections = Some(m);
            }
            backend.backup = t.backup.unwrap_or(false);
        }
        backends.push(backend);
    }
    let address = match &l.address {
        None => None,
        Some(a) => {
            let ip: std::net::Ipv4Addr = a.get_ref().trim().parse().map_err(|_| {
                src.at(
                    a,
                    format!(
                        "listener.address = {:?}: not an IPv4 address (e.g. \"198.18.0.100\")",
                        a.get_ref()
                    ),
                )
            })?;
            if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
                return Err(src.at(
                    a,
                    format!("listener.address = {ip}: not a unicast address clients can reach"),
                ));
            }
            Some(ip)
        }
    };
    // Beside backends_dns, the listed ones may all be backups (DNS names
    // the primaries).
    if let Some(listed) = l.backends.as_ref().filter(|_| backends_dns.is_none())
        && backends.iter().all(|b| b.backup)
    {
        return Err(src.at(
            listed,
            format!("listener.backends: every backend of listener {port} is a backup; make at least one a primary"),
        ));
    }
    let proxy_protocol = match &l.proxy_protocol {
        None => ProxyProtocol::Off,
        Some(v) => ProxyProtocol::from_name(v.get_ref()).ok_or_else(|| {
            src.at(
                v,
                format!(
                    "listener.proxy_protocol = {:?}: expected \"off\", \"v1\" or \"v2\"",
                    v.get_ref()
                ),
            )
        })?,
    };
    let retries = match &l.retries {
        Some(r) if backends_dns.is_none() && *r.get_ref() as usize >= backends.len().max(1) => {
            return Err(src.at(
                r,
                format!(
                    "listener.retries = {}: listener {port} has {} backend(s), so at most {} other(s) to try (or leave it out: each backend once)",
                    r.get_ref(),
                    backends.len(),
                    backends.len().saturating_sub(1)
                ),
            ));
        }
        Some(r) => Some(*r.get_ref()),
        None => None,
    };
    Ok(Listener {
        accept_proxy: l.accept_proxy.unwrap_or(false),
        retries,
        address,
        port,
        balance,
        backends,
        max_connections: l.max_connections.as_ref().map(|m| *m.get_ref() as usize),
        proxy_protocol,
        backends_dns,
        slow_start: millis(
            src,
            l.slow_start_ms.as_ref(),
            "listener.slow_start_ms",
            0,
            Duration::ZERO,
        )?,
        keepalive: l
            .keepalive
            .as_ref()
            .map(|k| keepalive(src, k.get_ref(), "listener.keepalive"))
            .transpose()?,
    })
}

/// Milliseconds at least `min`, as a duration.
pub(super) fn millis(
    src: &Source<'_>,
    v: Option<&Spanned<u64>>,
    key: &str,
    min: u64,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(v) if *v.get_ref() < min => Err(src.at(
            v,
            format!("{key} = {}: must be at least {min}", v.get_ref()),
        )),
        Some(v) => Ok(Duration::from_millis(*v.get_ref())),
    }
}

/// A count that must be at least 1.
fn at_least_one(
    src: &Source<'_>,
    v: Option<&Spanned<u32>>,
    key: &str,
    default: u32,
) -> Result<u32, ConfigError> {
    match v {
        Some(v) if *v.get_ref() == 0 => Err(src.at(v, format!("{key} = 0: need at least 1"))),
        Some(v) => Ok(*v.get_ref()),
        None => Ok(default),
    }
}

/// An `address:port` to listen on.
fn socket_addr(
    src: &Source<'_>,
    v: &Spanned<String>,
    key: &str,
    example: &str,
) -> Result<SocketAddr, ConfigError> {
    v.get_ref().trim().parse::<SocketAddr>().map_err(|_| {
        src.at(
            v,
            format!(
                "{key} = {:?}: not an address:port (e.g. \"{example}\")",
                v.get_ref()
            ),
        )
    })
}

/// Parses "LO-HI" (or a single port).
pub fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|_| format!("{p:?} is not a port (1-65535)"))
    };
    let (lo, hi) = (port(lo)?, port(hi)?);
    if lo == 0 {
        return Err("port 0 cannot be used; ports are 1-65535".into());
    }
    if lo > hi {
        return Err(format!("{lo}-{hi} is empty: write LO-HI with LO <= HI"));
    }
    Ok(lo..=hi)
}

fn parse_backend(s: &str) -> Result<SocketAddrV4, String> {
    let addr: SocketAddrV4 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 address:port (e.g. \"10.0.0.5:8080\")"))?;
    let ip = *addr.ip();
    if addr.port() == 0 {
        return Err(format!(
            "{s:?}: port 0 cannot be connected to; ports are 1-65535"
        ));
    }
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
        return Err(format!("{s:?}: {ip} is not a unicast host address"));
    }
    if ip.is_loopback() {
        return Err(format!(
            "{s:?}: loopback backends are unreachable from the interface turnstile owns; use the host's address on a reachable network"
        ));
    }
    Ok(addr)
}
