//! From a validated [`Config`] to what the parts of the program run by:
//! the stack's [`StackOptions`] and the proxy's [`ProxySettings`]. The
//! proxy never sees the file's types.

use super::Config;
use crate::app::proxy::settings::{ListenerSettings, ProxySettings};
use crate::runtime::StackOptions;

impl Config {
    /// What the stack needs to run this configuration.
    pub fn stack_options(&self) -> StackOptions {
        let mut opts = StackOptions::new(&self.interface, self.ports());
        opts.active_ports = self.upstream.ports.clone();
        opts.queues = self.queues;
        opts.xdp_mode = self.xdp_mode;
        opts.metrics = self.metrics;
        opts.mss = self.mss;
        opts.zero_copy = self.zero_copy;
        opts.busy_poll = self.busy_poll;
        opts.tcp.congestion = self.congestion;
        opts.tcp.msl = self.upstream.msl;
        opts.tcp.reuse = self.upstream.reuse;
        opts.tcp.reuse_delay = self.upstream.reuse_delay;
        opts.tcp.max_time_wait = self.upstream.max_time_wait;
        opts.tcp.keepalive_active = self.upstream.keepalive;
        opts.tcp.keepalive_ports = self
            .listeners
            .iter()
            .filter_map(|l| Some((l.port, l.keepalive?)))
            .collect();
        opts.tcp.recv_buffer_max = self.buffers.recv_max;
        opts.tcp.send_buffer_max = self.buffers.send_max;
        opts.tcp.buffer_pool_budget = self.buffers.pool;
        opts.grace = self.timeouts.drain;
        opts.max_connections = self.max_connections;
        opts.state_dir = self.state_dir.clone();
        opts.listener_limits = self
            .listeners
            .iter()
            .filter_map(|l| Some((l.port, l.max_connections?)))
            .collect();
        opts.addresses = self
            .listeners
            .iter()
            .filter_map(|l| l.address.map(|a| (a, l.port)))
            .collect();
        opts
    }

    /// What the proxy routes by.
    pub fn proxy_settings(&self) -> ProxySettings {
        ProxySettings {
            listeners: self
                .listeners
                .iter()
                .map(|l| ListenerSettings {
                    port: l.port,
                    balance: l.balance,
                    backends: l.backends.clone(),
                    slow_start: l.slow_start,
                    proxy_protocol: l.proxy_protocol,
                    accept_proxy: l.accept_proxy,
                    retries: l.retries,
                })
                .collect(),
            health: self.health,
            timeouts: self.timeouts,
            maglev_seed: self.maglev_seed,
        }
    }
}
