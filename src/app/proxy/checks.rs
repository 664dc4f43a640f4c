//! Active health checks: each shard checks its share of the backends with
//! TCP connects; results drive each backend's [`HealthState`] and flip its
//! shared `up` flag.

use std::net::SocketAddrV4;
use std::sync::atomic::Ordering;

use super::health::{HealthState, Transition};
use super::pool::{Backend, Failure};
use super::settings::Health;
use super::{Proxy, Shared};
use crate::app::{Ctx, OpenError};
use crate::tcp::{ConnId, ConnectError, Event, Instant};

/// One backend's checks, on the shard that checks it.
pub(super) struct Probe {
    state: HealthState,
    next_at: Instant,
    /// The check in flight and its deadline.
    pending: Option<(ConnId, Instant)>,
}

impl Proxy {
    pub(super) fn check_health(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now();
        let routes = self.routes.clone();
        let draining = self.shared.draining.load(Ordering::Relaxed);
        // Forget backends no longer ours to check.
        // Linear in the backends: the snapshot indexes them by address.
        self.probes.retain(|addr, probe| {
            let mine = routes
                .checked_index
                .get(addr)
                .is_some_and(|&i| i % self.shards == self.shard);
            if !mine && let Some((id, _)) = probe.pending {
                let _ = ctx.abort(id);
                self.probe_ids.remove(&id);
            }
            mine
        });
        let h = routes.health;
        for (i, backend) in routes.checked.iter().enumerate() {
            if i % self.shards != self.shard {
                continue;
            }
            let probe = self.probes.entry(backend.addr).or_insert_with(|| Probe {
                state: HealthState::new(backend.is_up()),
                // Spread the first checks over the interval.
                next_at: now.saturating_add(h.interval.mul_f64((i as f64 * 0.37).fract())),
                pending: None,
            });
            // Passive health (another shard's client sessions) or the API
            // may have changed the backend behind this state machine: it
            // follows, so `rise` good checks readmit a passively ejected
            // backend.
            if probe.state.is_up() != backend.is_up() {
                probe.state = HealthState::new(backend.is_up());
            }
            if let Some((id, deadline)) = probe.pending {
                if now >= deadline {
                    let _ = ctx.abort(id);
                    self.probe_ids.remove(&id);
                    probe.pending = None;
                    record(
                        &self.shared,
                        h,
                        backend,
                        probe,
                        false,
                        "check timed out",
                        now,
                    );
                }
                continue;
            }
            if draining || now < probe.next_at {
                continue;
            }
            probe.next_at = now.saturating_add(h.interval);
            match ctx.connect(backend.addr) {
                Ok(id) => {
                    probe.pending = Some((id, now.saturating_add(h.timeout)));
                    self.probe_ids.insert(id, backend.addr);
                }
                // Our port range is busy: says nothing about the backend.
                Err(OpenError::Connect(ConnectError::NoPort | ConnectError::TupleInUse)) => {}
                Err(e) => {
                    if matches!(e, OpenError::Neighbor { .. }) {
                        backend.failed(Failure::Unreachable);
                    }
                    let why = e.to_string();
                    record(&self.shared, h, backend, probe, false, &why, now);
                }
            }
        }
    }

    pub(super) fn on_probe(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: ConnId,
        addr: SocketAddrV4,
        event: Event,
    ) {
        let ok = match event {
            Event::Connected => true,
            Event::Refused | Event::Reset | Event::TimedOut | Event::Closed => false,
            // Counted with the backend's failures too: a health check that
            // finds no next hop is the first sign of a dead host.
            Event::Unreachable => {
                if let Some(&i) = self.routes.checked_index.get(&addr) {
                    self.routes.checked[i].failed(Failure::Unreachable);
                }
                false
            }
            _ => return,
        };
        self.probe_ids.remove(&id);
        if ok {
            // Done with it: an orderly close (the TIME_WAIT is ours and
            // recycled like any other).
            let _ = ctx.close(id);
        }
        let Some(backend) = self
            .routes
            .checked_index
            .get(&addr)
            .map(|&i| self.routes.checked[i].clone())
        else {
            return;
        };
        let Some(probe) = self.probes.get_mut(&addr) else {
            return;
        };
        if probe.pending.is_some_and(|(p, _)| p == id) {
            probe.pending = None;
            let why = format!("{event:?}").to_lowercase();
            let now = ctx.now();
            record(
                &self.shared,
                self.routes.health,
                &backend,
                probe,
                ok,
                &why,
                now,
            );
        }
    }
}

/// Feeds one check result to a backend's state machine; on a transition,
/// flips its shared flag and logs one line.
fn record(
    shared: &Shared,
    h: Health,
    backend: &Backend,
    probe: &mut Probe,
    ok: bool,
    why: &str,
    now: Instant,
) {
    let counter = if ok {
        &backend.checks_ok
    } else {
        &backend.checks_failed
    };
    Backend::add(counter, 1);
    if probe.state.is_up() != backend.is_up() {
        probe.state = HealthState::new(backend.is_up());
    }
    match probe.state.record(ok, h.fall, h.rise) {
        Some(Transition::Down) => {
            backend.set_up(false);
            shared.health_changes.fetch_add(1, Ordering::Release);
            tracing::warn!(backend = %backend.addr, fall = h.fall, last = why, "backend down: ejected");
        }
        Some(Transition::Up) => {
            // Slow start ramps from here.
            backend.came_up(now);
            backend.set_up(true);
            shared.health_changes.fetch_add(1, Ordering::Release);
            tracing::warn!(backend = %backend.addr, rise = h.rise, "backend up: readmitted");
        }
        None => {}
    }
}
