//! DNS discovery: listeners' `backends_dns` names resolved on a thread of
//! their own, off the shards (a lookup waits on the network, which a shard
//! must never do), with hickory on a current-thread tokio runtime that
//! lives on that thread only.
//!
//! - SRV (`_http._tcp.api.internal`): each record names a host and a port
//!   (RFC 2782). The host's A records are taken from the answer's
//!   additional section when the server sent them, else looked up. The
//!   lowest priority present gives the primaries, higher ones backups;
//!   the record's weight is the backend's (0 counts as 1, at most
//!   `MAX_WEIGHT`).
//! - A (`api.internal:8080`): every address of the name, on that port.
//!
//! A name is resolved again when its shortest TTL runs out, never sooner
//! than `[dns] min_ttl_ms` after the last try. A result goes to the
//! control thread, which applies it as a reload would (new backends take
//! new sessions, removed ones drain, established sessions are untouched).
//! A failure (timeout, SERVFAIL, NXDOMAIN, no usable record) keeps the
//! last good set, is counted and logged, and is retried after
//! `min_ttl_ms`.
//!
//! ```text
//! turnstile_dns_resolutions_total{listener,result}  counter  result="ok"|"failed"
//! turnstile_dns_backends{listener}                  gauge    backends in the last good set
//! ```

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, Record};

use crate::app::proxy::settings::{BackendSettings, MAX_WEIGHT};
use crate::config::{Dns, DnsName};
use crate::metrics::{Renderer, text};

/// One lookup waits this long at most (then it is a failure, retried
/// after `min_ttl_ms`).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// A TTL of more than this is re-checked anyway: a record that stays
/// cached for a day would hide a fleet change for a day.
const MAX_TTL: Duration = Duration::from_secs(300);

/// What one listener's name resolved to.
#[derive(Debug)]
pub struct Resolved {
    pub port: u16,
    pub backends: Vec<BackendSettings>,
}

/// Per listener: resolutions and the size of the last good set.
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub backends: AtomicU64,
    /// Whether it has a `backends_dns` now (only those are exported).
    pub active: AtomicBool,
}

/// Counters for every listener port (the set of ports is fixed for the
/// process's life, so the map never changes after start).
#[derive(Debug, Default)]
pub struct DnsStats {
    pub listeners: HashMap<u16, ListenerStats>,
}

impl DnsStats {
    pub fn new(ports: &[u16]) -> Self {
        DnsStats {
            listeners: ports
                .iter()
                .map(|&p| (p, ListenerStats::default()))
                .collect(),
        }
    }
}

pub fn renderer(stats: Arc<DnsStats>) -> Renderer {
    Arc::new(move |out: &mut String| render(out, &stats))
}

fn render(out: &mut String, stats: &DnsStats) {
    let mut ports: Vec<(&u16, &ListenerStats)> = stats
        .listeners
        .iter()
        .filter(|(_, s)| {
            s.active.load(Ordering::Relaxed)
                || s.ok.load(Ordering::Relaxed) + s.failed.load(Ordering::Relaxed) > 0
        })
        .collect();
    if ports.is_empty() {
        return;
    }
    ports.sort_by_key(|(p, _)| **p);
    let name = "turnstile_dns_resolutions_total";
    text::family(
        out,
        name,
        "counter",
        "Resolutions of a listener's backends_dns name, by result.",
    );
    for (port, s) in &ports {
        for (result, c) in [("ok", &s.ok), ("failed", &s.failed)] {
            text::labeled(
                out,
                name,
                format_args!("listener=\"{port}\",result=\"{result}\""),
                c.load(Ordering::Relaxed),
            );
        }
    }
    let name = "turnstile_dns_backends";
    text::family(
        out,
        name,
        "gauge",
        "Backends in the last good DNS answer of a listener's backends_dns.",
    );
    for (port, s) in &ports {
        text::labeled(
            out,
            name,
            format_args!("listener=\"{port}\""),
            s.backends.load(Ordering::Relaxed),
        );
    }
}

/// The running discovery thread. Dropping it stops the thread (at its
/// next wake-up, within one lookup timeout); results still queued are
/// then ignored.
pub struct Discovery {
    pub queries: Vec<(u16, DnsName)>,
    pub dns: Dns,
    results: Receiver<Resolved>,
    _stop: Sender<()>,
}

impl Discovery {
    /// Starts resolving `queries` (listener port, name) at once. `None`
    /// when there is nothing to resolve.
    pub fn start(queries: Vec<(u16, DnsName)>, dns: Dns, stats: Arc<DnsStats>) -> Option<Self> {
        for (port, s) in &stats.listeners {
            s.active
                .store(queries.iter().any(|(p, _)| p == port), Ordering::Relaxed);
        }
        if queries.is_empty() {
            return None;
        }
        let (tx, results) = mpsc::channel();
        let (stop, stopped) = mpsc::channel();
        let worker = Worker {
            queries: queries.clone(),
            dns: dns.clone(),
            stats,
            tx,
            stopped,
        };
        let spawned = std::thread::Builder::new()
            .name("dns".into())
            .spawn(move || worker.run());
        if let Err(e) = spawned {
            tracing::error!("cannot start the DNS discovery thread: {e}");
            return None;
        }
        Some(Discovery {
            queries,
            dns,
            results,
            _stop: stop,
        })
    }

    /// A result not yet applied, if any (never blocks).
    pub fn poll(&self) -> Option<Resolved> {
        self.results.try_recv().ok()
    }
}

struct Worker {
    queries: Vec<(u16, DnsName)>,
    dns: Dns,
    stats: Arc<DnsStats>,
    tx: Sender<Resolved>,
    stopped: Receiver<()>,
}

impl Worker {
    fn run(self) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("DNS discovery: cannot build its runtime: {e}");
                return;
            }
        };
        let resolver = match runtime.block_on(async { build_resolver(&self.dns) }) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("DNS discovery: {e}; backends_dns names are not resolved");
                for (port, _) in &self.queries {
                    self.count(*port, false);
                }
                return;
            }
        };
        let mut due: Vec<Instant> = vec![Instant::now(); self.queries.len()];
        loop {
            let now = Instant::now();
            for (i, (port, name)) in self.queries.iter().enumerate() {
                if due[i] > now {
                    continue;
                }
                // The cache would answer from what an earlier lookup left
                // there (and hide a server that stopped answering): each
                // lookup is asked afresh.
                resolver.clear_cache();
                let outcome = runtime.block_on(async {
                    tokio::time::timeout(LOOKUP_TIMEOUT, resolve(&resolver, name))
                        .await
                        .unwrap_or_else(|_| Err(format!("no answer within {LOOKUP_TIMEOUT:?}")))
                });
                let next = match outcome {
                    Ok((backends, ttl)) => {
                        self.count(*port, true);
                        if let Some(s) = self.stats.listeners.get(port) {
                            s.backends.store(backends.len() as u64, Ordering::Relaxed);
                        }
                        tracing::debug!(listener = port, %name, backends = backends.len(), ?ttl, "resolved");
                        if self
                            .tx
                            .send(Resolved {
                                port: *port,
                                backends,
                            })
                            .is_err()
                        {
                            return;
                        }
                        ttl.clamp(self.dns.min_ttl, MAX_TTL.max(self.dns.min_ttl))
                    }
                    Err(e) => {
                        self.count(*port, false);
                        tracing::warn!(listener = port, %name, "DNS resolution failed, the last good backends stay: {e}");
                        self.dns.min_ttl
                    }
                };
                due[i] = Instant::now() + next;
            }
            let wake = due.iter().min().copied().unwrap_or_else(Instant::now);
            match self
                .stopped
                .recv_timeout(wake.saturating_duration_since(Instant::now()))
            {
                Err(RecvTimeoutError::Timeout) => {}
                // The sidecar dropped its Discovery (reload or stop).
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn count(&self, port: u16, ok: bool) {
        if let Some(s) = self.stats.listeners.get(&port) {
            let c = if ok { &s.ok } else { &s.failed };
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn build_resolver(dns: &Dns) -> Result<TokioResolver, String> {
    let mut builder = match &dns.resolvers {
        None => TokioResolver::builder_tokio()
            .map_err(|e| format!("reading /etc/resolv.conf: {e} (or set [dns] resolvers)"))?,
        Some(servers) => {
            let servers = servers
                .iter()
                .map(|s| {
                    let conn = |mut c: ConnectionConfig| {
                        c.port = s.port();
                        c
                    };
                    NameServerConfig::new(
                        s.ip(),
                        true,
                        vec![conn(ConnectionConfig::udp()), conn(ConnectionConfig::tcp())],
                    )
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        }
    };
    let opts = builder.options_mut();
    opts.timeout = LOOKUP_TIMEOUT;
    opts.attempts = 1;
    builder
        .build()
        .map_err(|e| format!("building the resolver: {e}"))
}

/// One name's backends and how long the answer may be kept.
async fn resolve(
    resolver: &TokioResolver,
    name: &DnsName,
) -> Result<(Vec<BackendSettings>, Duration), String> {
    match name {
        DnsName::A { host, port } => {
            let (ips, ttl) = ipv4(resolver, host).await?;
            let backends = ips
                .into_iter()
                .map(|ip| BackendSettings::new(SocketAddrV4::new(ip, *port)))
                .collect();
            Ok((backends, ttl))
        }
        DnsName::Srv(srv_name) => {
            let lookup = resolver
                .srv_lookup(srv_name.as_str())
                .await
                .map_err(|e| e.to_string())?;
            let mut ttl = u32::MAX;
            let mut records = Vec::new();
            for r in lookup.answers() {
                if let RData::SRV(srv) = &r.data {
                    ttl = ttl.min(r.ttl);
                    records.push(srv.clone());
                }
            }
            let Some(top) = records.iter().map(|s| s.priority).min() else {
                return Err("the answer holds no SRV record".into());
            };
            let mut backends: Vec<BackendSettings> = Vec::new();
            for srv in &records {
                // RFC 2782: a target of "." means the service is decidedly
                // not available at this domain.
                if srv.target.is_root() || srv.port == 0 {
                    continue;
                }
                let mut ips = addresses_in(lookup.additionals(), &srv.target, &mut ttl);
                if ips.is_empty() {
                    let (found, t) = ipv4(resolver, &srv.target.to_ascii()).await?;
                    ttl = ttl.min(t.as_secs().try_into().unwrap_or(u32::MAX));
                    ips = found;
                }
                for ip in ips {
                    let addr = SocketAddrV4::new(ip, srv.port);
                    if backends.iter().any(|b| b.addr == addr) {
                        continue;
                    }
                    let mut b = BackendSettings::new(addr);
                    b.weight = u32::from(srv.weight).clamp(1, MAX_WEIGHT);
                    b.backup = srv.priority != top;
                    backends.push(b);
                }
            }
            if backends.is_empty() {
                return Err("no SRV target resolved to an IPv4 address".into());
            }
            if backends.iter().all(|b| b.backup) {
                // The top priority's targets had no address: the next
                // priority serves.
                for b in &mut backends {
                    b.backup = false;
                }
            }
            Ok((backends, Duration::from_secs(u64::from(ttl))))
        }
    }
}

/// A records of `target` in a response's additional section.
fn addresses_in(
    additionals: &[Record],
    target: &hickory_resolver::proto::rr::Name,
    ttl: &mut u32,
) -> Vec<Ipv4Addr> {
    additionals
        .iter()
        .filter(|r| r.name == *target)
        .filter_map(|r| match &r.data {
            RData::A(a) => {
                *ttl = (*ttl).min(r.ttl);
                Some(a.0)
            }
            _ => None,
        })
        .collect()
}

async fn ipv4(resolver: &TokioResolver, host: &str) -> Result<(Vec<Ipv4Addr>, Duration), String> {
    let lookup = resolver
        .ipv4_lookup(host)
        .await
        .map_err(|e| format!("{host}: {e}"))?;
    let mut ttl = u32::MAX;
    let mut ips = Vec::new();
    for r in lookup.answers() {
        if let RData::A(a) = &r.data {
            ttl = ttl.min(r.ttl);
            if !ips.contains(&a.0) {
                ips.push(a.0);
            }
        }
    }
    if ips.is_empty() {
        return Err(format!("{host}: no A record"));
    }
    Ok((ips, Duration::from_secs(u64::from(ttl))))
}

/// Listeners' names of `config`, for [`Discovery::start`].
pub fn queries(config: &crate::config::Config) -> Vec<(u16, DnsName)> {
    config
        .listeners
        .iter()
        .filter_map(|l| Some((l.port, l.backends_dns.clone()?)))
        .collect()
}
