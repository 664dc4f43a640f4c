//! What the runtime API changed: a weight or a state per (listener port,
//! backend), laid over the file's settings each time a routing snapshot is
//! built (at the API call, on SIGHUP, on a health change).
//!
//! SIGHUP: the file wins where it changed. An override survives a reload
//! only while the file still says, for that listener and backend, exactly
//! what it said when the override was made (same weight, limit, backup
//! role); a backend the file changed or removed loses its override (and
//! the reload logs which). So `weight = 0` through the API stays across
//! unrelated reloads, and editing that backend's line in the file takes
//! it back.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use crate::app::proxy::settings::{BackendSettings, BackendState, MAX_WEIGHT, ProxySettings};

/// One change asked for through the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Weight(u32),
    State(BackendState),
}

/// Why a change was refused (the API answers with the status).
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// No such listener, or the backend is not one of its backends.
    NotFound(String),
    /// A value out of range.
    Invalid(String),
}

#[derive(Clone, Copy, Debug)]
struct Override {
    /// The file's settings for it when the override was made.
    base: BackendSettings,
    weight: Option<u32>,
    state: Option<BackendState>,
}

#[derive(Debug, Default)]
pub struct Overrides {
    by_backend: BTreeMap<(u16, SocketAddrV4), Override>,
}

impl Overrides {
    /// Records `change` for `addr` of listener `port`; `file` is what the
    /// file says (without overrides).
    pub fn set(
        &mut self,
        file: &ProxySettings,
        port: u16,
        addr: SocketAddrV4,
        change: Change,
    ) -> Result<(), Refused> {
        let listener = file
            .listeners
            .iter()
            .find(|l| l.port == port)
            .ok_or_else(|| Refused::NotFound(format!("no listener on port {port}")))?;
        let base = *listener
            .backends
            .iter()
            .find(|b| b.addr == addr)
            .ok_or_else(|| {
                Refused::NotFound(format!("{addr} is not a backend of listener {port}"))
            })?;
        if let Change::Weight(w) = change
            && w > MAX_WEIGHT
        {
            return Err(Refused::Invalid(format!(
                "weight {w}: expected 0 to {MAX_WEIGHT}"
            )));
        }
        let entry = self.by_backend.entry((port, addr)).or_insert(Override {
            base,
            weight: None,
            state: None,
        });
        entry.base = base;
        match change {
            Change::Weight(w) => entry.weight = (w != base.weight).then_some(w),
            Change::State(s) => entry.state = (s != base.state).then_some(s),
        }
        if entry.weight.is_none() && entry.state.is_none() {
            // Back to what the file says: nothing to remember.
            self.by_backend.remove(&(port, addr));
        }
        Ok(())
    }

    /// Lays the overrides over `settings` (the file's).
    pub fn apply(&self, settings: &mut ProxySettings) {
        if self.by_backend.is_empty() {
            return;
        }
        for l in &mut settings.listeners {
            for b in &mut l.backends {
                if let Some(o) = self.by_backend.get(&(l.port, b.addr)) {
                    if let Some(w) = o.weight {
                        b.weight = w;
                    }
                    if let Some(s) = o.state {
                        b.state = s;
                    }
                }
            }
        }
    }

    /// After a reload to `file`: forgets the overrides of backends the
    /// file changed or removed (the file wins there). Returns them, as
    /// "port/addr", for the log.
    pub fn follow_file(&mut self, file: &ProxySettings) -> Vec<String> {
        let mut dropped = Vec::new();
        self.by_backend.retain(|&(port, addr), o| {
            let now = file
                .listeners
                .iter()
                .find(|l| l.port == port)
                .and_then(|l| l.backends.iter().find(|b| b.addr == addr));
            let keep = now.is_some_and(|b| *b == o.base);
            if !keep {
                dropped.push(format!("{port}/{addr}"));
            }
            keep
        });
        dropped
    }

    pub fn len(&self) -> usize {
        self.by_backend.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_backend.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn file(backends: &str) -> ProxySettings {
        let text =
            format!("interface = \"eth0\"\n[[listener]]\nport = 80\nbackends = [{backends}]\n");
        Config::parse(&text, Path::new("t.toml"))
            .unwrap()
            .proxy_settings()
    }

    fn a(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn overrides_apply_and_refuse_what_is_not_there() {
        let f = file("\"10.0.0.1:80\", { addr = \"10.0.0.2:80\", weight = 3 }");
        let mut o = Overrides::default();
        o.set(&f, 80, a("10.0.0.2:80"), Change::Weight(0)).unwrap();
        o.set(&f, 80, a("10.0.0.1:80"), Change::State(BackendState::Maint))
            .unwrap();
        let mut s = f.clone();
        o.apply(&mut s);
        assert_eq!(s.listeners[0].backends[1].weight, 0);
        assert_eq!(s.listeners[0].backends[0].state, BackendState::Maint);
        assert!(matches!(
            o.set(&f, 81, a("10.0.0.1:80"), Change::Weight(1)),
            Err(Refused::NotFound(_))
        ));
        assert!(matches!(
            o.set(&f, 80, a("10.0.0.9:80"), Change::Weight(1)),
            Err(Refused::NotFound(_))
        ));
        assert!(matches!(
            o.set(&f, 80, a("10.0.0.1:80"), Change::Weight(MAX_WEIGHT + 1)),
            Err(Refused::Invalid(_))
        ));
        // Setting back what the file says forgets the override.
        o.set(&f, 80, a("10.0.0.2:80"), Change::Weight(3)).unwrap();
        o.set(&f, 80, a("10.0.0.1:80"), Change::State(BackendState::Ready))
            .unwrap();
        assert!(o.is_empty());
    }

    #[test]
    fn on_reload_the_file_wins_where_it_changed() {
        let f = file("\"10.0.0.1:80\", \"10.0.0.2:80\", \"10.0.0.3:80\"");
        let mut o = Overrides::default();
        for b in ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"] {
            o.set(&f, 80, a(b), Change::Weight(0)).unwrap();
        }
        // .1 unchanged, .2 edited in the file, .3 removed.
        let g = file("\"10.0.0.1:80\", { addr = \"10.0.0.2:80\", weight = 2 }");
        let dropped = o.follow_file(&g);
        assert_eq!(dropped, vec!["80/10.0.0.2:80", "80/10.0.0.3:80"]);
        let mut s = g.clone();
        o.apply(&mut s);
        assert_eq!(s.listeners[0].backends[0].weight, 0, "kept");
        assert_eq!(s.listeners[0].backends[1].weight, 2, "the file's");
        assert_eq!(o.len(), 1);
    }
}
