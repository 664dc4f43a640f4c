//! Starting and stopping the stack: XDP program, one shard per queue, metrics.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::app::App;
use crate::iface::{Iface, IfaceError};
use crate::metrics::{self, Registry, ShardMetrics};
use crate::ports::{self, Reservation, ReserveError};
use crate::resolver::Resolver;
use crate::rss::{self, RssConfig, RssSteering};
use crate::shard::flow::FlowMap;
use crate::shard::handoff::Exchange;
use crate::shard::neighbors::Neighbors;
use crate::shard::{DRAINING, RUNNING, STOPPED, Shard};
use crate::tcp::{self, Endpoint};
use crate::xdp::{CookieConfig, XdpError, XdpMode, XdpProgram};
use crate::xsk::{XskConfig, XskError, XskSocket};

/// How long the XDP flood mode lasts past the last second that needed it.
const FLOOD_HOLD: Duration = Duration::from_secs(2);

/// Default local ports for active opens: outside Linux's default
/// ip_local_port_range (32768-60999), so the kernel never picks them.
pub const DEFAULT_ACTIVE_PORTS: RangeInclusive<u16> = 61000..=65535;

/// What the stack is asked to run.
#[derive(Clone, Debug)]
pub struct StackOptions {
    pub iface: String,
    /// Ports steered to turnstile for passive opens.
    pub ports: Vec<u16>,
    /// Listening ports served on an address of their own (a virtual IP the
    /// kernel need not have) instead of the interface's: steered by
    /// (address, port), not by port alone.
    pub addresses: Vec<(std::net::Ipv4Addr, u16)>,
    /// Whether the app listens on `ports` (otherwise every SYN is refused).
    pub listen: bool,
    /// Local ports for active opens (steered too), split between shards.
    pub active_ports: RangeInclusive<u16>,
    pub queues: Option<u32>,
    pub xdp_mode: XdpMode,
    pub metrics: Option<SocketAddr>,
    pub tcp: tcp::Config,
    /// How long SIGTERM lets established connections finish.
    pub grace: Duration,
    /// Clamp on the MSS, which otherwise follows the interface MTU (MTU - 40).
    pub mss: Option<u16>,
    /// The NIC's RSS key and indirection table as the operator states them
    /// (`--rss-key`/`--rss-table`); None reads them from the NIC.
    pub rss: Option<RssConfig>,
    /// Where the ISN/timestamp secret is kept across restarts.
    pub state_dir: std::path::PathBuf,
    /// Connections held in full by the whole process at most (split evenly
    /// between the shards); SYNs beyond are dropped and counted.
    pub max_connections: Option<usize>,
    /// Per listening port: its passive connections at most (split too).
    pub listener_limits: Vec<(u16, usize)>,
    /// Zero-copy request and busy polling of the AF_XDP sockets.
    pub zero_copy: crate::xsk::ZeroCopy,
    pub busy_poll: Option<crate::xsk::BusyPoll>,
    /// During a SYN flood, answer SYNs in XDP with the engine's cookies
    /// (needs XDP_TX: on veth, the peer needs GRO or an XDP program).
    pub xdp_syn_cookies: bool,
}

impl StackOptions {
    pub fn new(iface: &str, ports: Vec<u16>) -> Self {
        StackOptions {
            iface: iface.to_string(),
            ports,
            addresses: Vec::new(),
            listen: true,
            active_ports: DEFAULT_ACTIVE_PORTS,
            queues: None,
            xdp_mode: XdpMode::Auto,
            metrics: None,
            tcp: tcp::Config::default(),
            grace: Duration::from_secs(10),
            mss: None,
            rss: None,
            state_dir: crate::state::DEFAULT_STATE_DIR.into(),
            max_connections: None,
            listener_limits: Vec::new(),
            zero_copy: crate::xsk::ZeroCopy::Auto,
            busy_poll: None,
            xdp_syn_cookies: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Iface(#[from] IfaceError),
    #[error(transparent)]
    Xdp(#[from] XdpError),
    #[error(transparent)]
    Xsk(#[from] XskError),
    #[error(transparent)]
    Reserve(#[from] ReserveError),
    #[error(
        "--queues {asked} is more than the {have} receive queues of {iface} (see `ethtool -l {iface}`)"
    )]
    TooManyQueues {
        asked: u32,
        have: u32,
        iface: String,
    },
    #[error(
        "--queues {asked} is fewer than the {have} receive queues of {iface}: RSS would deliver flows to unserved queues, where the kernel resets them; leave --queues out to serve every queue, or lower the NIC's queue count with `ethtool -L {iface} combined {asked}` (veth: `rx {asked} tx {asked}`)"
    )]
    TooFewQueues {
        asked: u32,
        have: u32,
        iface: String,
    },
    #[error(
        "interface {iface} has MTU {mtu}, but an AF_XDP frame holds at most {max} bytes of IP packet (frame {frame} bytes less {headroom} of kernel headroom and 14 of Ethernet header); lower it with `ip link set dev {iface} mtu {max}`"
    )]
    MtuTooLarge {
        iface: String,
        mtu: u32,
        max: u32,
        frame: u32,
        headroom: u32,
    },
    #[error("interface {iface} has MTU {mtu}: TCP over IPv4 needs at least 576 (RFC 791)")]
    MtuTooSmall { iface: String, mtu: u32 },
    #[error("the RSS table names queue {queue}, but {iface} is served with {queues} queues")]
    RssTable {
        queue: u32,
        queues: u32,
        iface: String,
    },
    #[error("--queues must be at least 1")]
    NoQueues,
    #[error("no port given: name at least one TCP port to steer")]
    NoPorts,
    #[error("port 0 cannot be steered: ports are 1-65535")]
    PortZero,
    #[error("the active-open port range {lo}-{hi} has fewer ports than the {shards} shards")]
    ActiveRange { lo: u16, hi: u16, shards: usize },
    #[error("port {0} is both a listening port and in the active-open range")]
    PortClash(u16),
    #[error("cannot serve metrics on {addr}: {err}")]
    Metrics {
        addr: SocketAddr,
        err: std::io::Error,
    },
    #[error("could not start a shard thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

/// A running stack.
pub struct Running<A> {
    pub iface: Iface,
    pub queues: u32,
    pub mode: &'static str,
    pub zerocopy: bool,
    pub registry: Registry,
    control: Arc<AtomicU8>,
    done: Arc<std::sync::atomic::AtomicUsize>,
    shards: Vec<JoinHandle<A>>,
    metrics_thread: Option<JoinHandle<()>>,
    metrics_stop: Arc<std::sync::atomic::AtomicBool>,
    xdp: Option<Arc<XdpProgram>>,
    resolver: Option<Resolver>,
    _reservation: Reservation,
}

impl<A> Running<A> {
    /// The `listening ...` line of the CLI contract.
    pub fn listening_line(&self, ports: &[u16]) -> String {
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        format!(
            "listening iface={} ports={} queues={} mode={} zerocopy={}",
            self.iface.name,
            ports.join(","),
            self.queues,
            self.mode,
            if self.zerocopy { "yes" } else { "no" }
        )
    }

    /// True once every shard's app has finished (apps that finish on their
    /// own, like the load generator) or a shard thread has ended.
    pub fn finished(&self) -> bool {
        self.done.load(Ordering::Relaxed) >= self.shards.len()
            || self.shards.iter().any(JoinHandle::is_finished)
    }

    /// Stops accepting, lets connections finish within the grace period,
    /// then detaches. Returns the apps.
    pub fn drain(self) -> Vec<A> {
        self.control.store(DRAINING, Ordering::Relaxed);
        self.join()
    }

    /// Stops at once. Returns the apps.
    pub fn stop(self) -> Vec<A> {
        self.control.store(STOPPED, Ordering::Relaxed);
        self.join()
    }

    fn join(mut self) -> Vec<A> {
        let apps = self
            .shards
            .drain(..)
            .filter_map(|t| t.join().ok())
            .collect();
        self.resolver = None;
        self.metrics_stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.metrics_thread.take() {
            let _ = t.join();
        }
        // Last: the bpf_link goes with the program, detaching it.
        self.registry.xdp = None;
        self.xdp = None;
        apps
    }
}

pub fn start<A, F>(opts: &StackOptions, mut make_app: F) -> Result<Running<A>, StartError>
where
    A: App + Send + 'static,
    F: FnMut(usize, usize) -> A,
{
    if opts.listen && opts.ports.is_empty() {
        return Err(StartError::NoPorts);
    }
    if opts.ports.contains(&0) || *opts.active_ports.start() == 0 {
        return Err(StartError::PortZero);
    }
    if let Some(p) = opts.ports.iter().find(|p| opts.active_ports.contains(p)) {
        return Err(StartError::PortClash(*p));
    }
    let iface = Iface::lookup(&opts.iface)?;
    let queues = opts.queues.unwrap_or(iface.rx_queues);
    if queues == 0 {
        return Err(StartError::NoQueues);
    }
    if queues > iface.rx_queues {
        return Err(StartError::TooManyQueues {
            asked: queues,
            have: iface.rx_queues,
            iface: iface.name.clone(),
        });
    }
    // Fewer shards than queues is refused rather than served: an AF_XDP
    // socket receives only from the queue it is bound to, and the program
    // cannot redirect to a socket of another queue, so a flow that RSS puts
    // on an unserved queue would reach the kernel and be reset.
    if queues < iface.rx_queues {
        return Err(StartError::TooFewQueues {
            asked: queues,
            have: iface.rx_queues,
            iface: iface.name.clone(),
        });
    }
    let xsk_cfg = XskConfig {
        zero_copy: opts.zero_copy,
        busy_poll: opts.busy_poll,
        ..XskConfig::default()
    };
    let shards_hint = queues as usize;
    let rss = rss_steering(opts, &iface.name, shards_hint)?;
    let shards = queues as usize;
    if opts.active_ports.clone().count() < shards {
        return Err(StartError::ActiveRange {
            lo: *opts.active_ports.start(),
            hi: *opts.active_ports.end(),
            shards,
        });
    }
    let reservation = ports::reserve(&opts.active_ports)?;

    // Attaching first: missing privileges and a driver without the asked XDP
    // mode are the operator's first problem, so they are reported before the
    // MTU or the state directory (the link detaches if a later check fails).
    let xdp = Arc::new(XdpProgram::attach(&iface.name, opts.xdp_mode)?);
    let mss = mss_for(&iface.name, &xsk_cfg, opts.mss)?;
    // Both before anything that sends: a restarted process must key and
    // clock its ISNs and timestamps as its predecessor did.
    crate::shard::clock::init();
    let secret = crate::state::load_or_create_secret(&opts.state_dir)?;
    let mut sockets = Vec::with_capacity(shards);
    for q in 0..queues {
        let sock = XskSocket::open(&iface.name, q, xsk_cfg)?;
        xdp.register_socket(q, sock.fd())?;
        sockets.push(sock);
    }
    let zerocopy = sockets.iter().all(XskSocket::zerocopy);
    let by_port: Vec<u16> = opts
        .ports
        .iter()
        .copied()
        .filter(|p| !opts.addresses.iter().any(|&(_, ap)| ap == *p))
        .collect();
    xdp.choose_ports(&by_port, opts.listen)?;
    for &(addr, port) in &opts.addresses {
        xdp.choose_address(addr, port)?;
    }
    let mut vips: Vec<std::net::Ipv4Addr> = opts.addresses.iter().map(|&(a, _)| a).collect();
    vips.sort_unstable();
    vips.dedup();
    let active: Vec<u16> = opts.active_ports.clone().collect();
    xdp.choose_ports(&active, false)?;
    let cookies = (opts.xdp_syn_cookies && opts.tcp.syn_cookies && opts.listen).then(|| {
        let c = xdp.cookie_state();
        c.configure(&CookieConfig {
            secret,
            epoch_us: crate::shard::clock::epoch_us(),
            mss,
            window: opts.tcp.recv_buffer.min(0xffff) as u16,
            wscale: opts.tcp.effective_window_scale(),
            timestamps: opts.tcp.timestamps,
            sack: opts.tcp.sack_permitted,
            // More SYNs answered per second than every SYN queue together
            // holds: had they reached the engine, its queues would overflow.
            sustain_per_s: (opts.tcp.syn_backlog.saturating_mul(shards)).min(u32::MAX as usize)
                as u32,
            hold: FLOOD_HOLD,
        });
        c
    });

    // Steer once every queue has a socket: frames wait in the rx rings until
    // the shards start, and an app's first SYN (load's on_start) is never
    // answered before its replies are ours.
    xdp.enable(Some(iface.ipv4))?;

    let resolver = Resolver::start(&iface, shards).map_err(StartError::Thread)?;
    let flows = match rss {
        Some(r) => FlowMap::with_rss(shards, opts.active_ports.clone(), r),
        None => FlowMap::new(shards, opts.active_ports.clone()),
    };
    let exchange = Exchange::new(shards);
    let control = Arc::new(AtomicU8::new(RUNNING));
    if let Some(c) = &cookies {
        // Detached: it ends once the shards are told to stop.
        let _ = crate::xdp::tx_check::spawn(
            &iface.name,
            c.clone(),
            control.clone(),
            xdp.tx_failed_flag(),
        );
    }
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let drained = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut registry = Registry::default();
    let mut handles = Vec::new();
    for (id, xsk) in sockets.into_iter().enumerate() {
        let m = Arc::new(ShardMetrics::default());
        registry.shards.push(m.clone());
        let mut cfg = opts.tcp.clone();
        cfg.port_range = flows.port_slice(id);
        cfg.port_filter = flows.port_filter(id);
        cfg.mss = mss;
        if let Some(max) = opts.max_connections {
            cfg.max_connections = share(max, id, shards);
        }
        let listen_limits = opts
            .listener_limits
            .iter()
            .map(|&(port, max)| (port, share(max, id, shards)))
            .collect();
        let shard = Shard {
            id,
            xsk,
            endpoint: Endpoint::new(cfg, secret),
            app: make_app(id, shards),
            ports: if opts.listen {
                opts.ports.clone()
            } else {
                Vec::new()
            },
            local_mac: iface.mac,
            local_ip: iface.ipv4,
            vips: vips.clone(),
            neighbors: Neighbors::new(resolver.link(id)),
            unreachable: Vec::new(),
            listen_limits,
            cookies: cookies.clone(),
            seen_cookies: (0, 0),
            flows: flows.clone(),
            exchange: exchange.clone(),
            metrics: m,
            control: control.clone(),
            grace: opts.grace,
            done: done.clone(),
            drained: drained.clone(),
            core: (!cores.is_empty()).then(|| cores[id % cores.len()]),
        };
        let t = std::thread::Builder::new()
            .name(format!("turnstile-shard-{id}"))
            .spawn(move || shard.run())
            .map_err(StartError::Thread)?;
        handles.push(t);
    }
    let x = xdp.clone();
    registry.xdp = Some(Arc::new(move || x.counters()));
    let metrics_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let metrics_thread = match opts.metrics {
        Some(addr) => Some(
            metrics::serve(addr, registry.clone(), metrics_stop.clone())
                .map_err(|err| StartError::Metrics { addr, err })?,
        ),
        None => None,
    };
    Ok(Running {
        mode: xdp.mode().as_str(),
        iface,
        queues,
        zerocopy,
        registry,
        control,
        done,
        shards: handles,
        metrics_thread,
        metrics_stop,
        xdp: Some(xdp),
        resolver: Some(resolver),
        _reservation: reservation,
    })
}

/// Headroom the kernel keeps at the start of every AF_XDP frame
/// (XDP_PACKET_HEADROOM) before the packet.
const XDP_HEADROOM: u32 = 256;

/// The interface's MTU (sysfs), checked against one AF_XDP frame; returns
/// the MSS to advertise and send with: MTU - 40 (IPv4 and TCP headers
/// without options, RFC 9293 3.7.1), lowered to `clamp` when given.
fn mss_for(iface: &str, xsk: &XskConfig, clamp: Option<u16>) -> Result<u16, StartError> {
    let mtu = crate::iface::mtu(iface).unwrap_or(1500);
    let max = xsk.frame_size - XDP_HEADROOM - 14;
    if mtu > max {
        return Err(StartError::MtuTooLarge {
            iface: iface.to_string(),
            mtu,
            max,
            frame: xsk.frame_size,
            headroom: XDP_HEADROOM,
        });
    }
    if mtu < 576 {
        return Err(StartError::MtuTooSmall {
            iface: iface.to_string(),
            mtu,
        });
    }
    let from_mtu = (mtu - 40) as u16;
    Ok(clamp.map_or(from_mtu, |c| c.min(from_mtu)))
}

/// The NIC's RSS as far as it can be used to keep flows on their queue:
/// the operator's statement, else what the driver reports. One line on
/// stderr says which, or why shards hand frames off instead.
fn rss_steering(
    opts: &StackOptions,
    iface: &str,
    shards: usize,
) -> Result<Option<Arc<RssSteering>>, StartError> {
    let found = match &opts.rss {
        Some(cfg) => Ok(cfg.clone()),
        None => rss::read_nic(iface),
    };
    let cfg = match found {
        Ok(cfg) => cfg,
        Err(why) => {
            if shards > 1 {
                eprintln!(
                    "note: {iface}: RSS unknown ({why}); frames arriving on another shard's queue are handed off"
                );
            }
            return Ok(None);
        }
    };
    if let Some(&queue) = cfg.table.iter().find(|&&q| q as usize >= shards) {
        return Err(StartError::RssTable {
            queue,
            queues: shards as u32,
            iface: iface.to_string(),
        });
    }
    if shards == 1 {
        return Ok(None);
    }
    let Some(steering) = RssSteering::new(&cfg) else {
        return Ok(None);
    };
    let unserved: Vec<String> = (0..shards as u32)
        .filter(|q| !steering.serves(*q))
        .map(|q| q.to_string())
        .collect();
    let tail = if unserved.is_empty() {
        String::new()
    } else {
        format!(
            " (queues {} are in no table entry: their shards open no connections)",
            unserved.join(",")
        )
    };
    eprintln!(
        "note: {iface}: RSS Toeplitz key ({} bytes) and {}-entry table from {}: active-open ports chosen per queue, passive flows kept on their arrival queue{tail}",
        cfg.key.len(),
        cfg.table.len(),
        cfg.source
    );
    Ok(Some(Arc::new(steering)))
}

/// Shard `id`'s part of a process-wide limit: the parts add up to `max`
/// exactly (flows are spread over shards by RSS, so each gets its share).
fn share(max: usize, id: usize, shards: usize) -> usize {
    max / shards + usize::from(id < max % shards)
}

#[cfg(test)]
mod tests {
    #[test]
    fn shares_of_a_limit_add_up_to_it() {
        for (max, shards) in [(10, 3), (1, 2), (0, 4), (1_000_000, 7)] {
            let parts: Vec<usize> = (0..shards).map(|i| super::share(max, i, shards)).collect();
            assert_eq!(parts.iter().sum::<usize>(), max, "{parts:?}");
            assert!(parts.iter().max().unwrap() - parts.iter().min().unwrap() <= 1);
        }
    }
}
