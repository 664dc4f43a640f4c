//! Starting and stopping the stack: XDP program, one shard per queue, metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use crate::iface::{Iface, IfaceError};
use crate::metrics::{self, Registry, ShardMetrics};
use crate::shard::Shard;
use crate::xdp::{XdpError, XdpMode, XdpProgram};
use crate::xsk::{XskConfig, XskError, XskSocket};

/// What `turnstile serve` was asked to do.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub iface: String,
    pub ports: Vec<u16>,
    pub queues: Option<u32>,
    pub xdp_mode: XdpMode,
    pub metrics: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Iface(#[from] IfaceError),
    #[error(transparent)]
    Xdp(#[from] XdpError),
    #[error(transparent)]
    Xsk(#[from] XskError),
    #[error(
        "--queues {asked} is more than the {have} receive queues of {iface} (see `ethtool -l {iface}`)"
    )]
    TooManyQueues {
        asked: u32,
        have: u32,
        iface: String,
    },
    #[error("--queues must be at least 1")]
    NoQueues,
    #[error("no --port given: name at least one TCP port to steer")]
    NoPorts,
    #[error("port 0 cannot be steered: ports are 1-65535")]
    PortZero,
    #[error("cannot serve metrics on {addr}: {err}")]
    Metrics {
        addr: SocketAddr,
        err: std::io::Error,
    },
    #[error("could not start a shard thread: {0}")]
    Thread(std::io::Error),
}

/// A running stack. [`Running::stop`] drains the shards and detaches XDP.
pub struct Running {
    pub iface: Iface,
    pub queues: u32,
    pub mode: &'static str,
    pub zerocopy: bool,
    pub registry: Registry,
    stop: Arc<AtomicBool>,
    shards: Vec<JoinHandle<()>>,
    metrics_thread: Option<JoinHandle<()>>,
    xdp: Option<Arc<XdpProgram>>,
}

impl Running {
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

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.shards.drain(..) {
            let _ = t.join();
        }
        if let Some(t) = self.metrics_thread.take() {
            let _ = t.join();
        }
        // Last: the bpf_link goes with the program, detaching it.
        self.registry.xdp = None;
        self.xdp = None;
    }
}

pub fn start(opts: &ServeOptions) -> Result<Running, StartError> {
    if opts.ports.is_empty() {
        return Err(StartError::NoPorts);
    }
    if opts.ports.contains(&0) {
        return Err(StartError::PortZero);
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
    let xdp = Arc::new(XdpProgram::attach(&iface.name, opts.xdp_mode)?);
    let mut sockets = Vec::with_capacity(queues as usize);
    for q in 0..queues {
        let sock = XskSocket::open(&iface.name, q, XskConfig::default())?;
        xdp.register_socket(q, sock.fd())?;
        sockets.push(sock);
    }
    let zerocopy = sockets.iter().all(XskSocket::zerocopy);
    xdp.choose_ports(&opts.ports)?;

    let stop = Arc::new(AtomicBool::new(false));
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut registry = Registry::default();
    let mut shards = Vec::new();
    for (id, xsk) in sockets.into_iter().enumerate() {
        let m = Arc::new(ShardMetrics::default());
        registry.shards.push(m.clone());
        let shard = Shard {
            id,
            xsk,
            local_mac: iface.mac,
            local_ip: iface.ipv4,
            metrics: m,
            stop: stop.clone(),
            core: (!cores.is_empty()).then(|| cores[id % cores.len()]),
        };
        let t = std::thread::Builder::new()
            .name(format!("turnstile-shard-{id}"))
            .spawn(move || shard.run())
            .map_err(StartError::Thread)?;
        shards.push(t);
    }
    let x = xdp.clone();
    registry.xdp = Some(Arc::new(move || x.counters()));
    let metrics_thread = match opts.metrics {
        Some(addr) => Some(
            metrics::serve(addr, registry.clone(), stop.clone())
                .map_err(|err| StartError::Metrics { addr, err })?,
        ),
        None => None,
    };
    // Steer only now that every queue has a socket behind it.
    xdp.enable(Some(iface.ipv4))?;
    Ok(Running {
        mode: xdp.mode().as_str(),
        iface,
        queues,
        zerocopy,
        registry,
        stop,
        shards,
        metrics_thread,
        xdp: Some(xdp),
    })
}
