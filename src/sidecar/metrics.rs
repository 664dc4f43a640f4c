//! The sidecar's metrics, appended to the stack's exposition: per backend
//! (`backend="ip:port"`) health, connections, failures and bytes; proxy
//! totals; configuration reloads.
//!
//! ```text
//! turnstile_backend_up{backend}                              gauge   1 up, 0 ejected
//! turnstile_backend_connections{backend}                     gauge   proxied connections open now
//! turnstile_backend_connections_total{backend}               counter proxied connections established
//! turnstile_backend_failures_total{backend,reason}           counter refused|timeout|reset|no_port|unreachable
//! turnstile_backend_bytes_total{backend,direction}           counter to_backend|from_backend
//! turnstile_backend_health_checks_total{backend,result}      counter ok|failed
//! turnstile_backend_passive_ejections_total{backend}         counter ejected by passive_fall
//! turnstile_proxy_sessions_total, turnstile_proxy_retries_total, turnstile_proxy_no_backend_total,
//! turnstile_proxy_idle_timeouts_total, turnstile_proxy_resets_propagated_total,
//! turnstile_proxy_queued_total, turnstile_proxy_queue_timeouts_total,
//! turnstile_proxy_retries_exhausted_total                                      counters
//! turnstile_proxy_session_timeouts_total{reason}             counter idle|client_fin|max_session
//! turnstile_proxy_headers_total{result}                      counter accept_proxy: accepted|invalid|unsupported|timeout|closed
//! turnstile_config_reloads_total{result}                     counter ok|failed
//! turnstile_config_generation                                gauge   routing snapshots published
//! turnstile_access_log_lines_total{result}                   counter written|dropped (ring full)
//! ```
//!
//! A backend removed by a reload is shown while it still has connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Reloads;
use crate::app::proxy::Shared;
use crate::app::proxy::pool::{Backend, BackendSet, Failure};
use crate::metrics::{Renderer, text};

pub fn renderer(backends: Arc<BackendSet>, shared: Arc<Shared>, reloads: Arc<Reloads>) -> Renderer {
    Arc::new(move |out: &mut String| {
        let shown: Vec<Arc<Backend>> = backends
            .snapshot()
            .into_iter()
            .filter(|b| b.is_configured() || b.active.load(Ordering::Relaxed) > 0)
            .collect();
        render(out, &shown, &shared, &reloads);
    })
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    text::family(out, name, kind, help);
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

pub fn render(out: &mut String, backends: &[Arc<Backend>], shared: &Shared, reloads: &Reloads) {
    let per_backend =
        |out: &mut String, name: &str, kind: &str, help: &str, value: &dyn Fn(&Backend) -> u64| {
            family(out, name, kind, help);
            for b in backends {
                text::labeled(out, name, format_args!("backend=\"{}\"", b.addr), value(b));
            }
        };
    per_backend(
        out,
        "turnstile_backend_up",
        "gauge",
        "1 when the backend takes new connections, 0 when health checks ejected it.",
        &|b| u64::from(b.is_up()),
    );
    per_backend(
        out,
        "turnstile_backend_connections",
        "gauge",
        "Proxied connections open to the backend.",
        &|b| load(&b.active),
    );
    per_backend(
        out,
        "turnstile_backend_connections_total",
        "counter",
        "Proxied connections established to the backend.",
        &|b| load(&b.connections),
    );

    let name = "turnstile_backend_failures_total";
    family(
        out,
        name,
        "counter",
        "Upstream connections to the backend that failed, by reason.",
    );
    for b in backends {
        for f in Failure::ALL {
            text::labeled(
                out,
                name,
                format_args!("backend=\"{}\",reason=\"{}\"", b.addr, f.label()),
                b.failures(f),
            );
        }
    }
    let name = "turnstile_backend_bytes_total";
    family(
        out,
        name,
        "counter",
        "Bytes relayed to and from the backend.",
    );
    for b in backends {
        text::labeled(
            out,
            name,
            format_args!("backend=\"{}\",direction=\"to_backend\"", b.addr),
            load(&b.bytes_to),
        );
        text::labeled(
            out,
            name,
            format_args!("backend=\"{}\",direction=\"from_backend\"", b.addr),
            load(&b.bytes_from),
        );
    }
    let name = "turnstile_backend_health_checks_total";
    family(
        out,
        name,
        "counter",
        "Health checks of the backend, by result.",
    );
    for b in backends {
        text::labeled(
            out,
            name,
            format_args!("backend=\"{}\",result=\"ok\"", b.addr),
            load(&b.checks_ok),
        );
        text::labeled(
            out,
            name,
            format_args!("backend=\"{}\",result=\"failed\"", b.addr),
            load(&b.checks_failed),
        );
    }

    per_backend(
        out,
        "turnstile_backend_passive_ejections_total",
        "counter",
        "Times passive health (passive_fall failed connects on client sessions in a row) ejected the backend.",
        &|b| load(&b.passive_ejections),
    );

    let s = &shared.stats;
    for (name, help, c) in [
        (
            "turnstile_proxy_sessions_total",
            "Client connections accepted by the proxy.",
            &s.sessions,
        ),
        (
            "turnstile_proxy_retries_total",
            "Upstream attempts on another backend after a refusal, timeout or early reset.",
            &s.retries,
        ),
        (
            "turnstile_proxy_no_backend_total",
            "Clients reset because no backend could be connected.",
            &s.no_backend,
        ),
        (
            "turnstile_proxy_idle_timeouts_total",
            "Proxied connections reset for inactivity.",
            &s.idle_timeouts,
        ),
        (
            "turnstile_proxy_resets_propagated_total",
            "Resets or timeouts on one leg turned into an abort of the other.",
            &s.resets_propagated,
        ),
        (
            "turnstile_proxy_queued_total",
            "Clients that waited for a backend below its max_connections.",
            &s.queued,
        ),
        (
            "turnstile_proxy_queue_timeouts_total",
            "Queued clients reset after connect_ms without a backend slot (or at once: queue full).",
            &s.queue_timeouts,
        ),
        (
            "turnstile_proxy_retries_exhausted_total",
            "Clients reset because the listener's retries other backends failed too.",
            &s.retries_exhausted,
        ),
    ] {
        family(out, name, "counter", help);
        text::sample(out, name, load(c));
    }
    let name = "turnstile_proxy_session_timeouts_total";
    family(
        out,
        name,
        "counter",
        "Sessions reset on both legs by a timeout, by which: idle_ms, client_fin_ms (half-closed), max_session_ms.",
    );
    for (reason, c) in [
        ("idle", &s.idle_timeouts),
        ("client_fin", &s.client_fin_timeouts),
        ("max_session", &s.max_session_timeouts),
    ] {
        text::labeled(out, name, format_args!("reason=\"{reason}\""), load(c));
    }
    let name = "turnstile_proxy_headers_total";
    family(
        out,
        name,
        "counter",
        "PROXY headers on accept_proxy listeners: accepted, or the client reset because the header was invalid, unsupported (IPv6, UNIX), not complete within proxy_header_ms (timeout), or missing when the client closed.",
    );
    for (result, c) in [
        ("accepted", &s.headers_accepted),
        ("invalid", &s.headers_invalid),
        ("unsupported", &s.headers_unsupported),
        ("timeout", &s.headers_timeout),
        ("closed", &s.headers_closed),
    ] {
        text::labeled(out, name, format_args!("result=\"{result}\""), load(c));
    }
    let name = "turnstile_config_reloads_total";
    family(
        out,
        name,
        "counter",
        "SIGHUP reloads, by result (a failed one keeps the running configuration).",
    );
    text::labeled(out, name, "result=\"ok\"", load(&reloads.ok));
    text::labeled(out, name, "result=\"failed\"", load(&reloads.failed));
    let name = "turnstile_config_generation";
    family(
        out,
        name,
        "gauge",
        "Routing snapshots published (reloads and health changes).",
    );
    text::sample(out, name, shared.routes.generation());
    if let Some(log) = &shared.access {
        let name = "turnstile_access_log_lines_total";
        family(
            out,
            name,
            "counter",
            "Access log lines written, and dropped because a shard's ring was full.",
        );
        text::labeled(out, name, "result=\"written\"", load(&log.written));
        text::labeled(out, name, "result=\"dropped\"", load(&log.dropped));
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::metrics::{Registry, sample};
    use crate::sidecar::Sidecar;

    #[test]
    fn backends_appear_in_the_stack_exposition() {
        let text = "interface = \"eth0\"\n[[listener]]\nport = 80\nbackends = [\"10.0.0.1:80\", \"10.0.0.2:80\"]\n";
        let mut s = Sidecar::new(Config::parse(text, Path::new("t.toml")).unwrap());
        let reg = Registry::default();
        reg.add_renderer(renderer(
            s.backends.clone(),
            s.shared.clone(),
            s.reloads.clone(),
        ));
        let routes = s.shared.routes.load();
        let (a, b) = (&routes.routes[0].backends[0], &routes.routes[0].backends[1]);
        a.opened();
        Backend::add(&a.bytes_to, 10);
        b.set_up(false);
        b.failed(Failure::Refused);
        let out = reg.render();
        assert_eq!(
            sample(&out, "turnstile_backend_up{backend=\"10.0.0.1:80\"}"),
            Some(1)
        );
        assert_eq!(
            sample(&out, "turnstile_backend_up{backend=\"10.0.0.2:80\"}"),
            Some(0)
        );
        assert_eq!(
            sample(
                &out,
                "turnstile_backend_connections{backend=\"10.0.0.1:80\"}"
            ),
            Some(1)
        );
        assert_eq!(
            sample(
                &out,
                "turnstile_backend_connections_total{backend=\"10.0.0.1:80\"}"
            ),
            Some(1)
        );
        assert_eq!(
            sample(
                &out,
                "turnstile_backend_bytes_total{backend=\"10.0.0.1:80\",direction=\"to_backend\"}"
            ),
            Some(10)
        );
        assert_eq!(
            sample(
                &out,
                "turnstile_backend_failures_total{backend=\"10.0.0.2:80\",reason=\"refused\"}"
            ),
            Some(1)
        );
        assert_eq!(
            sample(&out, "turnstile_config_reloads_total{result=\"failed\"}"),
            Some(0)
        );
        assert!(
            out.contains("turnstile_time_wait "),
            "the stack's own families stay"
        );
        // Removed by a reload: shown while its connection lasts, then gone.
        let text2 = text
            .replace(", \"10.0.0.1:80\"", "")
            .replace("\"10.0.0.1:80\", ", "");
        s.apply(Config::parse(&text2, Path::new("t.toml")).unwrap())
            .unwrap();
        let out = reg.render();
        assert_eq!(
            sample(&out, "turnstile_backend_up{backend=\"10.0.0.1:80\"}"),
            Some(1)
        );
        a.closed();
        let out = reg.render();
        assert_eq!(
            sample(&out, "turnstile_backend_up{backend=\"10.0.0.1:80\"}"),
            None
        );
        assert_eq!(
            sample(&out, "turnstile_backend_up{backend=\"10.0.0.2:80\"}"),
            Some(0)
        );
    }
}
