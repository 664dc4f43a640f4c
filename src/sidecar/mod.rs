//! The load-balancer sidecar, `turnstile run --config FILE`: the stack with
//! the [`Proxy`] app on every shard, and a control thread (the caller's)
//! that handles signals, reloads and health changes.
//!
//! - SIGHUP re-reads the file. A file that fails validation, or that changes
//!   what cannot change while running (see [`Config::reload_check`]), is
//!   rejected with one logged error and the running configuration stays.
//!   Otherwise a new routing snapshot is published: new backends take new
//!   connections at once; connections to removed backends carry on until
//!   they end (they are not counted against anything and are not checked).
//! - A backend's health changes are seen here within a few milliseconds and
//!   the Maglev tables are rebuilt without (or with) it.
//! - `backends_dns` names are resolved on a thread of their own ([`dns`]);
//!   each new answer is applied like a reload: the listener's backends are
//!   the file's plus the answer's.
//! - SIGINT/SIGTERM: `/ready` answers 503 at once; new connections are
//!   still served for `announce_grace_ms` (while a BGP speaker withdraws
//!   the route and the routers converge); then stop accepting, let
//!   connections finish within `timeouts.drain_ms`, detach, return.

pub mod access_log;
pub mod admin;
pub mod dns;
pub mod metrics;
pub mod overrides;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;

use crate::app::proxy::access::AccessLog;
use crate::app::proxy::pool::{BackendSet, Routes};
use crate::app::proxy::settings::BackendSettings;
use crate::app::proxy::{Proxy, Shared};
use crate::config::Config;
use crate::runtime;
use overrides::{Change, Overrides, Refused};

/// How often the control thread looks at signals and health changes.
const CONTROL_EVERY: Duration = Duration::from_millis(10);

/// Reload outcomes, for metrics.
#[derive(Debug, Default)]
pub struct Reloads {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

/// The running configuration and what was built from it.
pub struct Sidecar {
    /// What runs: the file's configuration with the DNS answers added.
    config: Config,
    /// The file's configuration as read.
    file: Config,
    /// Per listener port: the last good answer for its `backends_dns`.
    dns_sets: BTreeMap<u16, Vec<BackendSettings>>,
    pub backends: Arc<BackendSet>,
    pub shared: Arc<Shared>,
    pub reloads: Arc<Reloads>,
    generation: u64,
    health_seen: u64,
    /// What the runtime API changed (see [`overrides`] for SIGHUP).
    overrides: Overrides,
}

impl Sidecar {
    pub fn new(config: Config) -> Self {
        let backends = Arc::new(BackendSet::default());
        let routes = Routes::build(&config.proxy_settings(), &backends, None, 1);
        let mut shared = Shared::new(routes);
        if config.access_log.is_some() {
            shared = shared.with_access_log(Arc::new(AccessLog::new(access_log::RING)));
        }
        Sidecar {
            file: config.clone(),
            config,
            dns_sets: BTreeMap::new(),
            backends,
            shared: Arc::new(shared),
            reloads: Arc::new(Reloads::default()),
            generation: 1,
            health_seen: 0,
            overrides: Overrides::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Re-reads the configuration file and applies it; on error nothing
    /// changes.
    pub fn reload(&mut self) -> Result<(), String> {
        let result = Config::load(&self.config.file)
            .map_err(|e| e.to_string())
            .and_then(|new| self.apply(new));
        let counter = if result.is_ok() {
            &self.reloads.ok
        } else {
            &self.reloads.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    /// Replaces the running configuration with `new` if it may.
    pub fn apply(&mut self, new: Config) -> Result<(), String> {
        self.file
            .reload_check(&new)
            .map_err(|e| format!("{}: {e}", new.file.display()))?;
        // An answer for a name the listener no longer has is dropped.
        self.dns_sets.retain(|port, _| {
            new.listeners
                .iter()
                .any(|l| l.port == *port && l.backends_dns.is_some())
        });
        self.file = new;
        // API changes survive only where the new file (with the DNS
        // answers) says the same about the backend as when they were made.
        let dropped = self
            .overrides
            .follow_file(&self.effective().proxy_settings());
        if !dropped.is_empty() {
            tracing::warn!(
                backends = dropped.join(" "),
                "the file changed these backends: their runtime API changes are dropped"
            );
        }
        self.rebuild();
        Ok(())
    }

    /// A DNS answer for listener `port`'s `backends_dns`: applied like a
    /// reload when it differs from the last one. Returns whether it did.
    pub fn apply_dns(&mut self, port: u16, backends: Vec<BackendSettings>) -> bool {
        let wanted = self
            .file
            .listeners
            .iter()
            .any(|l| l.port == port && l.backends_dns.is_some());
        if !wanted || self.dns_sets.get(&port) == Some(&backends) {
            return false;
        }
        self.dns_sets.insert(port, backends);
        self.rebuild();
        true
    }

    /// The file's configuration with each listener's DNS answer added
    /// (a backend also listed in the file keeps the file's settings).
    fn effective(&self) -> Config {
        let mut config = self.file.clone();
        for l in &mut config.listeners {
            let Some(found) = self.dns_sets.get(&l.port) else {
                continue;
            };
            for b in found {
                if !l.backends.iter().any(|o| o.addr == b.addr) {
                    l.backends.push(*b);
                }
            }
        }
        config
    }

    /// Publishes what the file and the DNS answers say now; backends no
    /// longer in it drain.
    fn rebuild(&mut self) {
        let config = self.effective();
        self.publish(&config);
        self.backends.retain_configured(&config.all_backends());
        self.config = config;
    }

    /// A runtime API change to backend `addr` of listener `port`: laid over
    /// the file's settings and published like a reload. Returns the
    /// generation that carries it.
    pub fn change(
        &mut self,
        port: u16,
        addr: std::net::SocketAddrV4,
        changes: &[Change],
    ) -> Result<u64, Refused> {
        let file = self.config.proxy_settings();
        for &c in changes {
            self.overrides.set(&file, port, addr, c)?;
        }
        tracing::warn!(listener = port, backend = %addr, ?changes, "runtime API change");
        let config = self.config.clone();
        self.publish(&config);
        Ok(self.generation)
    }

    /// After health changes: rebuilds the Maglev tables if some backend's
    /// state differs from what they were built with.
    pub fn follow_health(&mut self) {
        let seen = self.shared.health_changes.load(Ordering::Acquire);
        if seen == self.health_seen {
            return;
        }
        self.health_seen = seen;
        if self.shared.routes.load().tables_stale() {
            let config = self.config.clone();
            self.publish(&config);
        }
    }

    fn publish(&mut self, config: &Config) {
        let prev = self.shared.routes.load();
        self.generation += 1;
        let mut settings = config.proxy_settings();
        self.overrides.apply(&mut settings);
        let routes = Routes::build(&settings, &self.backends, Some(&prev), self.generation);
        self.shared.routes.store(routes);
    }
}

/// Runs the sidecar until SIGINT/SIGTERM. `ready` gets the `listening ...`
/// line once the stack is up.
pub fn run(path: &Path, ready: impl FnOnce(&str)) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let opts = config.stack_options();
    let mut sidecar = Sidecar::new(config);

    let stop = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())
        .context("installing the SIGHUP handler")?;

    let shared = sidecar.shared.clone();
    let running = runtime::start(&opts, |id, shards| Proxy::new(shared.clone(), id, shards))
        .with_context(|| format!("{}", path.display()))?;
    running.registry.add_renderer(metrics::renderer(
        sidecar.backends.clone(),
        sidecar.shared.clone(),
        sidecar.reloads.clone(),
    ));
    tracing::info!(
        file = %path.display(),
        listeners = sidecar.config().listeners.len(),
        backends = sidecar.config().all_backends().len(),
        "sidecar running"
    );
    let ready_shared = sidecar.shared.clone();
    running.registry.add_page(
        "/ready",
        Arc::new(move || {
            let (ok, why) = ready_shared.readiness();
            (if ok { 200 } else { 503 }, why)
        }),
    );
    let maglev_shared = sidecar.shared.clone();
    running.registry.add_page(
        "/maglev",
        Arc::new(move || (200, maglev_shared.routes.load().maglev_dump())),
    );
    let dns_stats = Arc::new(dns::DnsStats::new(&opts.ports));
    running
        .registry
        .add_renderer(dns::renderer(dns_stats.clone()));
    let mut discovery = dns::Discovery::start(
        dns::queries(sidecar.config()),
        sidecar.config().dns.clone(),
        dns_stats.clone(),
    );
    // The runtime API's requests reach this thread over a channel; the
    // sender stays alive here so the loop below can always wait on it.
    let (api_tx, api_rx) = std::sync::mpsc::channel::<admin::Request>();
    let api_stop = Arc::new(AtomicBool::new(false));
    let api = match sidecar.config().admin {
        None => None,
        Some(addr) => Some(
            admin::serve(
                addr,
                sidecar.config().admin_token.clone(),
                sidecar.shared.clone(),
                api_tx.clone(),
                api_stop.clone(),
            )
            .with_context(|| format!("admin = \"{addr}\": cannot listen there"))?,
        ),
    };
    let log_stop = Arc::new(AtomicBool::new(false));
    let log_thread = match (&sidecar.config().access_log, &sidecar.shared.access) {
        (Some(target), Some(log)) => {
            Some(access_log::start(target, log.clone(), log_stop.clone())?)
        }
        _ => None,
    };
    ready(&running.listening_line(&opts.ports));

    // After SIGTERM: /ready says 503 at once, new connections are still
    // served until the grace ends (routers take a while to withdraw the
    // route), then the drain.
    let mut grace_until: Option<std::time::Instant> = None;
    loop {
        if stop.load(Ordering::Relaxed) && grace_until.is_none() {
            sidecar.shared.accepting.store(false, Ordering::Relaxed);
            let grace = sidecar.config().announce_grace;
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "stopping: /ready is 503, serving through the announce grace"
            );
            grace_until = Some(std::time::Instant::now() + grace);
        }
        if grace_until.is_some_and(|t| std::time::Instant::now() >= t) {
            break;
        }
        if hup.swap(false, Ordering::Relaxed) {
            match sidecar.reload() {
                Ok(()) => tracing::warn!(
                    file = %path.display(),
                    backends = sidecar.config().all_backends().len(),
                    "configuration reloaded"
                ),
                Err(e) => tracing::error!("reload rejected, the running configuration stays: {e}"),
            }
            // New names or resolvers: a new discovery thread (the old one
            // ends on its own; the answers it had given stay until the new
            // one's arrive).
            let queries = dns::queries(sidecar.config());
            let dns_config = &sidecar.config().dns;
            let same = match &discovery {
                Some(d) => d.queries == queries && d.dns == *dns_config,
                None => queries.is_empty(),
            };
            if !same {
                discovery = dns::Discovery::start(queries, dns_config.clone(), dns_stats.clone());
            }
        }
        while let Some(found) = discovery.as_ref().and_then(dns::Discovery::poll) {
            let n = found.backends.len();
            if sidecar.apply_dns(found.port, found.backends) {
                tracing::warn!(
                    listener = found.port,
                    backends = n,
                    "backends from DNS changed"
                );
            }
        }
        sidecar.follow_health();
        if running.finished() {
            anyhow::bail!("every shard stopped unexpectedly");
        }
        // Waits for an API request at most CONTROL_EVERY: a change is
        // published as soon as it arrives.
        if let Ok(req) = api_rx.recv_timeout(CONTROL_EVERY) {
            let result = sidecar.change(req.port, req.addr, &req.change);
            let _ = req.reply.send(result);
        }
    }
    api_stop.store(true, Ordering::Relaxed);
    if let Some(api) = api {
        let _ = api.join();
    }
    drop(api_tx);
    sidecar.shared.draining.store(true, Ordering::Relaxed);
    running.drain();
    // After the drain: the sessions it ended are logged too.
    log_stop.store(true, Ordering::Relaxed);
    if let Some(t) = log_thread {
        let _ = t.join();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(backends: &str, file: &Path) -> Config {
        let text = format!(
            "interface = \"eth0\"\n[[listener]]\nport = 80\nbalance = \"maglev\"\nbackends = [{backends}]\n"
        );
        Config::parse(&text, file).unwrap()
    }

    #[test]
    fn apply_keeps_backends_and_refuses_datapath_changes() {
        let file = Path::new("t.toml");
        let mut s = Sidecar::new(config("\"10.0.0.1:80\", \"10.0.0.2:80\"", file));
        let first = s.shared.routes.load();
        first.routes[0].backends[1].opened();
        s.apply(config("\"10.0.0.1:80\", \"10.0.0.3:80\"", file))
            .unwrap();
        let second = s.shared.routes.load();
        assert!(second.generation > first.generation);
        assert!(Arc::ptr_eq(
            &first.routes[0].backends[0],
            &second.routes[0].backends[0]
        ));
        // The removed backend has a connection open: still known, not configured.
        let all = s.backends.snapshot();
        let removed = all
            .iter()
            .find(|b| b.addr.to_string() == "10.0.0.2:80")
            .unwrap();
        assert!(!removed.is_configured());
        removed.closed();
        s.apply(config("\"10.0.0.1:80\", \"10.0.0.3:80\"", file))
            .unwrap();
        let left: Vec<String> = s
            .backends
            .snapshot()
            .iter()
            .map(|b| {
                format!(
                    "{} {} {}",
                    b.addr,
                    b.is_configured(),
                    b.active.load(Ordering::Relaxed)
                )
            })
            .collect();
        assert_eq!(
            left.len(),
            2,
            "forgotten once its connections ended: {left:?}"
        );
        let generation = s.shared.routes.generation();
        let mut other = config("\"10.0.0.1:80\"", file);
        other.interface = "eth9".into();
        assert!(s.apply(other).unwrap_err().contains("interface"));
        assert_eq!(
            s.shared.routes.generation(),
            generation,
            "nothing published"
        );
    }

    #[test]
    fn reload_from_a_bad_file_keeps_the_running_configuration() {
        let dir = std::env::temp_dir().join(format!("turnstile-sidecar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("reload.toml");
        let good = "interface = \"eth0\"\n[[listener]]\nport = 80\nbackends = [\"10.0.0.1:80\"]\n";
        std::fs::write(&file, good).unwrap();
        let mut s = Sidecar::new(Config::load(&file).unwrap());
        let generation = s.shared.routes.generation();
        std::fs::write(&file, good.replace("10.0.0.1:80", "10.0.0.300:80")).unwrap();
        let e = s.reload().unwrap_err();
        assert!(
            e.contains("reload.toml:4:") && e.contains("10.0.0.300"),
            "{e}"
        );
        assert_eq!(s.shared.routes.generation(), generation);
        assert_eq!(s.reloads.failed.load(Ordering::Relaxed), 1);
        std::fs::write(&file, good.replace("10.0.0.1:80", "10.0.0.2:80")).unwrap();
        s.reload().unwrap();
        assert_eq!(
            s.shared.routes.load().routes[0].backends[0]
                .addr
                .to_string(),
            "10.0.0.2:80"
        );
        assert_eq!(s.reloads.ok.load(Ordering::Relaxed), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn health_changes_rebuild_the_maglev_table() {
        let file = Path::new("t.toml");
        let mut s = Sidecar::new(config(
            "\"10.0.0.1:80\", \"10.0.0.2:80\", \"10.0.0.3:80\"",
            file,
        ));
        let before = s.shared.routes.load();
        assert_eq!(before.routes[0].maglev.as_ref().unwrap().1.len(), 3);
        s.follow_health();
        assert_eq!(
            s.shared.routes.generation(),
            before.generation,
            "nothing changed"
        );
        before.routes[0].backends[1].set_up(false);
        s.shared.health_changes.fetch_add(1, Ordering::Release);
        s.follow_health();
        let after = s.shared.routes.load();
        assert!(after.generation > before.generation);
        assert_eq!(after.routes[0].maglev.as_ref().unwrap().1, vec![0, 2]);
    }

    /// Two instances of a fleet with different pasts (reloads, health
    /// flaps, another order in the file) agree byte for byte on the table
    /// once their inputs agree.
    #[test]
    fn any_reload_history_yields_a_byte_identical_table() {
        let file = Path::new("t.toml");
        let final_list = "\"10.0.0.3:80\", \"10.0.0.1:80\", \"10.0.0.4:80\"";
        let fresh = Sidecar::new(config(final_list, file));
        let want = fresh.shared.routes.load().maglev_dump();
        assert!(want.starts_with("listener 80\nmaglev size=65537 seed=0 backends=3\n"));

        let mut s = Sidecar::new(config("\"10.0.0.1:80\", \"10.0.0.2:80\"", file));
        for list in [
            "\"10.0.0.2:80\"",
            "\"10.0.0.1:80\", \"10.0.0.2:80\", \"10.0.0.3:80\", \"10.0.0.4:80\", \"10.0.0.5:80\"",
            "\"10.0.0.4:80\", \"10.0.0.1:80\", \"10.0.0.3:80\"",
        ] {
            s.apply(config(list, file)).unwrap();
            // A backend goes down and comes back between reloads.
            let routes = s.shared.routes.load();
            routes.routes[0].backends[0].set_up(false);
            s.shared.health_changes.fetch_add(1, Ordering::Release);
            s.follow_health();
            assert_ne!(s.shared.routes.load().maglev_dump(), want);
            routes.routes[0].backends[0].set_up(true);
            s.shared.health_changes.fetch_add(1, Ordering::Release);
            s.follow_health();
        }
        assert_eq!(s.shared.routes.load().maglev_dump(), want);
        let mut again = config(final_list, file);
        again.maglev_seed = 9;
        s.apply(again).unwrap();
        assert_ne!(
            s.shared.routes.load().maglev_dump(),
            want,
            "the seed is an input"
        );
    }

    /// A DNS answer is applied like a reload: new backends join, removed
    /// ones drain (still known while a session uses them), a repeated
    /// answer publishes nothing, and a file reload keeps the answer.
    #[test]
    fn dns_answers_apply_like_a_reload() {
        let file = Path::new("t.toml");
        let text = "interface = \"eth0\"\n[[listener]]\nport = 80\nbalance = \"maglev\"\nbackends = [\"10.0.0.1:80\"]\nbackends_dns = \"_http._tcp.api.internal\"\n";
        let mut s = Sidecar::new(Config::parse(text, file).unwrap());
        let b = |a: &str| BackendSettings::new(a.parse().unwrap());
        let addrs = |s: &Sidecar| -> Vec<String> {
            s.shared.routes.load().routes[0]
                .backends
                .iter()
                .map(|b| b.addr.to_string())
                .collect()
        };
        assert_eq!(addrs(&s), ["10.0.0.1:80"]);
        assert!(s.apply_dns(
            80,
            vec![b("10.0.0.2:80"), b("10.0.0.3:80"), b("10.0.0.1:80")]
        ));
        assert_eq!(addrs(&s), ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
        let generation = s.shared.routes.generation();
        assert!(!s.apply_dns(
            80,
            vec![b("10.0.0.2:80"), b("10.0.0.3:80"), b("10.0.0.1:80")]
        ));
        assert_eq!(s.shared.routes.generation(), generation, "same answer");
        assert!(!s.apply_dns(81, vec![b("10.0.0.9:80")]), "no such listener");
        // A session on .2, then .2 leaves the answer.
        s.shared.routes.load().routes[0].backends[1].opened();
        assert!(s.apply_dns(80, vec![b("10.0.0.3:80")]));
        assert_eq!(addrs(&s), ["10.0.0.1:80", "10.0.0.3:80"]);
        let gone = s
            .backends
            .snapshot()
            .into_iter()
            .find(|b| b.addr.to_string() == "10.0.0.2:80")
            .expect("kept while its session lasts");
        assert!(!gone.is_configured());
        assert_eq!(gone.active.load(Ordering::Relaxed), 1);
        // A reload of the file keeps the answer; one without the name drops it.
        s.apply(Config::parse(&text.replace("10.0.0.1:80", "10.0.0.4:80"), file).unwrap())
            .unwrap();
        assert_eq!(addrs(&s), ["10.0.0.4:80", "10.0.0.3:80"]);
        s.apply(
            Config::parse(
                &text.replace("backends_dns = \"_http._tcp.api.internal\"\n", ""),
                file,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(addrs(&s), ["10.0.0.1:80"]);
        assert!(!s.apply_dns(80, vec![b("10.0.0.3:80")]), "no name any more");
    }

    #[test]
    fn readiness_follows_backends_and_sigterm() {
        let s = Sidecar::new(config(
            "\"10.0.0.1:80\", \"10.0.0.2:80\"",
            Path::new("t.toml"),
        ));
        assert!(s.shared.readiness().0);
        let routes = s.shared.routes.load();
        routes.routes[0].backends[0].set_up(false);
        assert!(s.shared.readiness().0, "one backend still up");
        routes.routes[0].backends[1].set_up(false);
        assert_eq!(s.shared.readiness(), (false, "no backend up\n".into()));
        routes.routes[0].backends[1].set_up(true);
        s.shared.accepting.store(false, Ordering::Relaxed);
        assert_eq!(s.shared.readiness(), (false, "draining\n".into()));
    }
}
