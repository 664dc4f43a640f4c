//! What a SIGHUP may change in a running sidecar.

use super::Config;

impl Config {
    /// Whether `new` may replace `self` in a running sidecar.
    ///
    /// Reloadable (SIGHUP): each listener's backends, `backends_dns`, balance, `proxy_protocol`,
    /// `accept_proxy`, `retries` and `slow_start_ms`, `[dns]`, `[health]`,
    /// `[timeouts]`, `maglev_seed` and `announce_grace_ms` (new values apply to new connections and the next
    /// checks). Not reloadable (the datapath is built around them, restart
    /// to change): `interface`, `queues`, `xdp_mode`, `zero_copy`, `busy_poll_us`, `congestion`,
    /// `busy_poll_budget`, `metrics`, `admin`, `admin_token_file` (its
    /// contents too), `access_log`, the set of
    /// listener ports, each listener's `keepalive` and everything in `[upstream]`
    /// and `[buffers]`.
    pub fn reload_check(&self, new: &Config) -> Result<(), String> {
        let restart = "restart turnstile to change it; SIGHUP reloads each listener's backends, \
                       backends_dns, balance, proxy_protocol, accept_proxy, retries and \
                       slow_start_ms, [dns], [health], [timeouts], maglev_seed and \
                       announce_grace_ms only";
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
        if new.zero_copy != self.zero_copy || new.busy_poll != self.busy_poll {
            return Err(format!("zero_copy or busy polling changed: {restart}"));
        }
        if new.congestion != self.congestion {
            return Err(format!(
                "congestion changed ({} -> {}): {restart}",
                self.congestion.name(),
                new.congestion.name()
            ));
        }
        if new.metrics != self.metrics {
            return Err(format!("metrics address changed: {restart}"));
        }
        if new.admin != self.admin || new.admin_token != self.admin_token {
            return Err(format!("admin or admin_token_file changed: {restart}"));
        }
        if new.access_log != self.access_log {
            return Err(format!("access_log changed: {restart}"));
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
        let keepalives = |c: &Config| {
            let mut k: Vec<_> = c.listeners.iter().map(|l| (l.port, l.keepalive)).collect();
            k.sort_unstable_by_key(|&(p, _)| p);
            k
        };
        if keepalives(new) != keepalives(self) {
            return Err(format!("a listener's keepalive changed: {restart}"));
        }
        if new.buffers != self.buffers {
            return Err(format!("[buffers] changed: {restart}"));
        }
        if new.upstream != self.upstream {
            return Err(format!("[upstream] changed: {restart}"));
        }
        Ok(())
    }
}
