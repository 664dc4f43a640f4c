//! The sidecar's configuration (`turnstile run --config FILE`): TOML read
//! with serde, then validated. Every error names the file, the line and
//! column, and the problem, on one line:
//!
//! ```text
//! /etc/turnstile.toml:7:12: listener.backends: "10.0.0.300:80" is not an IPv4 address:port (e.g. "10.0.0.5:8080")
//! ```
//!
//! What reloads on SIGHUP and what needs a restart: see [`Config::reload_check`].

use std::net::{SocketAddr, SocketAddrV4};
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::runtime::StackOptions;
use crate::xdp::XdpMode;

/// How a listener picks a backend for a new client connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Each new connection to the next backend in turn.
    RoundRobin,
    /// The backend with the fewest open proxied connections.
    LeastConn,
    /// Maglev consistent hashing of the client's IPv4 address.
    Maglev,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round-robin",
            Balance::LeastConn => "least-conn",
            Balance::Maglev => "maglev",
        }
    }
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Where it was read from (for messages).
    pub file: PathBuf,
    pub interface: String,
    pub queues: Option<u32>,
    pub xdp_mode: XdpMode,
    pub metrics: Option<SocketAddr>,
    pub listeners: Vec<Listener>,
    pub upstream: Upstream,
    pub health: Health,
    pub timeouts: Timeouts,
    /// Seeds the Maglev tables: instances of one fleet share it, so they
    /// send a client to the same backend.
    pub maglev_seed: u64,
    /// After SIGTERM, how long /ready says 503 while new connections are
    /// still served (for routes to converge), before the drain.
    pub announce_grace: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// A virtual IP served instead of the interface's own address (the
    /// kernel need not have it). Several listeners may share one.
    pub address: Option<std::net::Ipv4Addr>,
    pub port: u16,
    pub balance: Balance,
    /// In the order of the file (Maglev's table does not depend on it).
    pub backends: Vec<SocketAddrV4>,
}

/// Connections from the sidecar to backends: local ports and TIME_WAIT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub ports: RangeInclusive<u16>,
    pub msl: Duration,
    pub reuse: bool,
    pub reuse_delay: Duration,
    pub max_time_wait: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    pub interval: Duration,
    /// A check that has not connected after this long failed.
    pub timeout: Duration,
    /// Consecutive failures before a backend is ejected.
    pub fall: u32,
    /// Consecutive successes before an ejected backend is readmitted.
    pub rise: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// An upstream connect not completed after this long is abandoned (and
    /// retried on another backend).
    pub connect: Duration,
    /// A proxied connection with no byte either way for this long is reset
    /// on both legs. `None`: never.
    pub idle: Option<Duration>,
    /// On SIGINT/SIGTERM, how long open connections may take to finish.
    pub drain: Duration,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            // Outside Linux's default ip_local_port_range: nothing to reserve.
            ports: crate::runtime::DEFAULT_ACTIVE_PORTS,
            msl: Duration::from_secs(30),
            reuse: true,
            reuse_delay: Duration::from_secs(1),
            max_time_wait: 262_144,
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Health {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            fall: 3,
            rise: 2,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            idle: Some(Duration::from_secs(300)),
            drain: Duration::from_secs(10),
        }
    }
}

/// Why a configuration was rejected. Displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read the configuration: {err}")]
    Read { file: String, err: std::io::Error },
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
}

impl ConfigError {
    /// The problem without the file position (for tests and logs).
    pub fn message(&self) -> String {
        match self {
            ConfigError::Read { err, .. } => err.to_string(),
            ConfigError::Invalid { message, .. } => message.clone(),
        }
    }
    /// The 1-based line the problem was found on (0 when unknown).
    pub fn line(&self) -> usize {
        match self {
            ConfigError::Read { .. } => 0,
            ConfigError::Invalid { line, .. } => *line,
        }
    }
}

// ---- The file as written (before validation) ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interface: Spanned<String>,
    queues: Option<Spanned<u32>>,
    xdp_mode: Option<Spanned<String>>,
    metrics: Option<Spanned<String>>,
    #[serde(default)]
    listener: Vec<Spanned<RawListener>>,
    upstream: Option<Spanned<RawUpstream>>,
    health: Option<Spanned<RawHealth>>,
    timeouts: Option<Spanned<RawTimeouts>>,
    maglev_seed: Option<u64>,
    announce_grace_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    address: Option<Spanned<String>>,
    port: Spanned<u16>,
    balance: Option<Spanned<Balance>>,
    backends: Spanned<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    ports: Option<Spanned<String>>,
    msl_ms: Option<Spanned<u64>>,
    reuse: Option<bool>,
    reuse_delay_ms: Option<Spanned<u64>>,
    max_time_wait: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    interval_ms: Option<Spanned<u64>>,
    timeout_ms: Option<Spanned<u64>>,
    fall: Option<Spanned<u32>>,
    rise: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    connect_ms: Option<Spanned<u64>>,
    idle_ms: Option<Spanned<u64>>,
    drain_ms: Option<Spanned<u64>>,
}

/// Turns byte spans into file:line:column errors.
struct Source<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn error(&self, span: Option<Range<usize>>, message: impl Into<String>) -> ConfigError {
        let offset = span.map_or(0, |s| s.start.min(self.text.len()));
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        // One line, whatever the parser said.
        let message: String = message.into();
        let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
        ConfigError::Invalid {
            file: self.file.display().to_string(),
            line,
            column,
            message,
        }
    }

    fn at<T>(&self, v: &Spanned<T>, message: impl Into<String>) -> ConfigError {
        self.error(Some(v.span()), message)
    }
}

/// Milliseconds at least `min`, as a duration.
fn millis(
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

/// The dotted key (`listener.port`) whose value is at `offset`, when the
/// line there is `key = value` (arrays spanning lines are followed back to
/// their key).
fn key_at(text: &str, offset: usize) -> Option<String> {
    let mut table = None;
    let mut key = None;
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with('[') {
            table = Some(t.trim_matches(|c| c == '[' || c == ']').trim().to_string());
            key = None;
        } else if let Some((k, _)) = t.split_once('=')
            && !t.starts_with('#')
            && !t.starts_with('"')
            && !k.trim().is_empty()
        {
            key = Some(k.trim().to_string());
        }
        line_start += line.len();
        if line_start > offset {
            break;
        }
    }
    let key = key?;
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key,
    })
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

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
            file: path.display().to_string(),
            err,
        })?;
        Config::parse(&text, path)
    }

    /// Validates `text`; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let src = Source { file, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            // The parser's message does not say which key a bad value
            // belongs to: name it from the text at the error's position.
            let message = match e.span().and_then(|s| key_at(text, s.start)) {
                Some(key)
                    if !e
                        .message()
                        .contains(&format!("`{}`", key.rsplit('.').next().unwrap_or(&key))) =>
                {
                    format!("{key}: {}", e.message())
                }
                _ => e.message().to_string(),
            };
            src.error(e.span(), message)
        })?;

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
            Some(q) if *q.get_ref() == 0 => return Err(src.at(
                q,
                "queues = 0: need at least 1 (or leave it out for every queue of the interface)",
            )),
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
        let metrics = match &raw.metrics {
            None => None,
            Some(m) => Some(m.get_ref().trim().parse::<SocketAddr>().map_err(|_| {
                src.at(
                    m,
                    format!(
                        "metrics = {:?}: not an address:port (e.g. \"127.0.0.1:9900\")",
                        m.get_ref()
                    ),
                )
            })?),
        };

        let defaults = Upstream::default();
        let upstream = match &raw.upstream {
            None => defaults,
            Some(u) => {
                let u = u.get_ref();
                let ports = match &u.ports {
                    None => defaults.ports,
                    Some(p) => parse_port_range(p.get_ref())
                        .map_err(|e| src.at(p, format!("upstream.ports: {e}")))?,
                };
                let max_time_wait = match &u.max_time_wait {
                    None => defaults.max_time_wait,
                    Some(m) if *m.get_ref() == 0 => {
                        return Err(src.at(m, "upstream.max_time_wait = 0: need at least 1 entry"));
                    }
                    Some(m) => usize::try_from(*m.get_ref()).unwrap_or(usize::MAX),
                };
                Upstream {
                    ports,
                    msl: millis(&src, u.msl_ms.as_ref(), "upstream.msl_ms", 1, defaults.msl)?,
                    reuse: u.reuse.unwrap_or(defaults.reuse),
                    reuse_delay: millis(
                        &src,
                        u.reuse_delay_ms.as_ref(),
                        "upstream.reuse_delay_ms",
                        0,
                        defaults.reuse_delay,
                    )?,
                    max_time_wait,
                }
            }
        };

        let defaults = Health::default();
        let health = match &raw.health {
            None => defaults,
            Some(h) => {
                let h = h.get_ref();
                let interval = millis(
                    &src,
                    h.interval_ms.as_ref(),
                    "health.interval_ms",
                    10,
                    defaults.interval,
                )?;
                let timeout = millis(
                    &src,
                    h.timeout_ms.as_ref(),
                    "health.timeout_ms",
                    1,
                    interval,
                )?;
                let count = |v: Option<&Spanned<u32>>, key: &str, default: u32| match v {
                    Some(v) if *v.get_ref() == 0 => {
                        Err(src.at(v, format!("{key} = 0: need at least 1")))
                    }
                    Some(v) => Ok(*v.get_ref()),
                    None => Ok(default),
                };
                Health {
                    interval,
                    timeout,
                    fall: count(h.fall.as_ref(), "health.fall", defaults.fall)?,
                    rise: count(h.rise.as_ref(), "health.rise", defaults.rise)?,
                }
            }
        };

        let defaults = Timeouts::default();
        let timeouts = match &raw.timeouts {
            None => defaults,
            Some(t) => {
                let t = t.get_ref();
                Timeouts {
                    connect: millis(
                        &src,
                        t.connect_ms.as_ref(),
                        "timeouts.connect_ms",
                        1,
                        defaults.connect,
                    )?,
                    idle: match &t.idle_ms {
                        None => defaults.idle,
                        Some(v) if *v.get_ref() == 0 => None,
                        Some(v) => Some(Duration::from_millis(*v.get_ref())),
                    },
                    drain: millis(
                        &src,
                        t.drain_ms.as_ref(),
                        "timeouts.drain_ms",
                        0,
                        defaults.drain,
                    )?,
                }
            }
        };

        if raw.listener.is_empty() {
            return Err(src.error(
                Some(text.len()..text.len()),
                "no [[listener]]: add at least one with a port and backends",
            ));
        }
        let mut listeners: Vec<Listener> = Vec::with_capacity(raw.listener.len());
        for l in &raw.listener {
            let l = l.get_ref();
            let port = *l.port.get_ref();
            if port == 0 {
                return Err(src.at(&l.port, "listener.port = 0: ports are 1-65535"));
            }
            if listeners.iter().any(|o| o.port == port) {
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
            if l.backends.get_ref().is_empty() {
                return Err(src.at(&l.backends, format!("listener.backends: listener {port} has no backends; list at least one \"ip:port\"")));
            }
            let mut backends = Vec::with_capacity(l.backends.get_ref().len());
            for b in l.backends.get_ref() {
                let addr = parse_backend(b.get_ref())
                    .map_err(|e| src.at(b, format!("listener.backends: {e}")))?;
                if backends.contains(&addr) {
                    return Err(src.at(
                        b,
                        format!("listener.backends: {addr} is listed twice for listener {port}"),
                    ));
                }
                backends.push(addr);
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
                    if ip.is_unspecified()
                        || ip.is_broadcast()
                        || ip.is_multicast()
                        || ip.is_loopback()
                    {
                        return Err(src.at(
                            a,
                            format!(
                                "listener.address = {ip}: not a unicast address clients can reach"
                            ),
                        ));
                    }
                    Some(ip)
                }
            };
            listeners.push(Listener {
                address,
                port,
                balance: l
                    .balance
                    .as_ref()
                    .map_or(Balance::RoundRobin, |b| *b.get_ref()),
                backends,
            });
        }

        Ok(Config {
            file: file.to_path_buf(),
            interface,
            queues,
            xdp_mode,
            metrics,
            listeners,
            upstream,
            health,
            timeouts,
            maglev_seed: raw.maglev_seed.unwrap_or(0),
            announce_grace: millis(
                &src,
                raw.announce_grace_ms.as_ref(),
                "announce_grace_ms",
                0,
                Duration::ZERO,
            )?,
        })
    }

    /// The listening ports, in file order.
    pub fn ports(&self) -> Vec<u16> {
        self.listeners.iter().map(|l| l.port).collect()
    }

    /// What the stack needs to run this configuration.
    pub fn stack_options(&self) -> StackOptions {
        let mut opts = StackOptions::new(&self.interface, self.ports());
        opts.active_ports = self.upstream.ports.clone();
        opts.queues = self.queues;
        opts.xdp_mode = self.xdp_mode;
        opts.metrics = self.metrics;
        opts.tcp.msl = self.upstream.msl;
        opts.tcp.reuse = self.upstream.reuse;
        opts.tcp.reuse_delay = self.upstream.reuse_delay;
        opts.tcp.max_time_wait = self.upstream.max_time_wait;
        opts.grace = self.timeouts.drain;
        opts.addresses = self
            .listeners
            .iter()
            .filter_map(|l| l.address.map(|a| (a, l.port)))
            .collect();
        opts
    }

    /// Whether `new` may replace `self` in a running sidecar.
    ///
    /// Reloadable (SIGHUP): each listener's backends and balance, `[health]`,
    /// `[timeouts]`, `maglev_seed` and `announce_grace_ms` (new values apply to new connections and the next
    /// checks). Not reloadable (the datapath is built around them, restart
    /// to change): `interface`, `queues`, `xdp_mode`, `metrics`, the set of
    /// listener ports and everything in `[upstream]`.
    pub fn reload_check(&self, new: &Config) -> Result<(), String> {
        let restart = "restart turnstile to change it; SIGHUP reloads backends, balance, [health] and [timeouts] only";
        if new.interface != self.interface {
            return Err(format!(
                "interface changed ({} -> {}): {restart}",
                self.interface, new.interface
            ));
        }
        if new.queues != self.queues {
            return Err(format!(
                "queues changed ({:?} -> {:?}): {restart}",
                self.queues, new.queues
            ));
        }
        if new.xdp_mode != self.xdp_mode {
            return Err(format!("xdp_mode changed: {restart}"));
        }
        if new.metrics != self.metrics {
            return Err(format!("metrics address changed: {restart}"));
        }
        let (mut old_ports, mut new_ports) = (self.ports(), new.ports());
        old_ports.sort_unstable();
        new_ports.sort_unstable();
        if old_ports != new_ports {
            return Err(format!(
                "listener ports changed ({old_ports:?} -> {new_ports:?}): {restart}"
            ));
        }
        let addresses = |c: &Config| {
            let mut a: Vec<(Option<std::net::Ipv4Addr>, u16)> =
                c.listeners.iter().map(|l| (l.address, l.port)).collect();
            a.sort_unstable();
            a
        };
        if addresses(new) != addresses(self) {
            return Err(format!("a listener address changed: {restart}"));
        }
        if new.upstream != self.upstream {
            return Err(format!("[upstream] changed: {restart}"));
        }
        Ok(())
    }

    /// Every backend of every listener, once, in first-seen order.
    pub fn all_backends(&self) -> Vec<SocketAddrV4> {
        let mut all: Vec<SocketAddrV4> = Vec::new();
        for b in self.listeners.iter().flat_map(|l| &l.backends) {
            if !all.contains(b) {
                all.push(*b);
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(c.listeners[0].backends[1], "10.0.0.6:8080".parse().unwrap());
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
        let c = parse(
            "interface = \"veth0\"\n[[listener]]\nport = 8080\nbackends = [\"10.1.1.1:80\"]\n",
        )
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
}
