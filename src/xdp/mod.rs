//! Loads the steering program, attaches it through a bpf_link, and fills its
//! maps: the chosen ports, the local address and the per-queue AF_XDP sockets.

mod flood;
mod skel;
#[cfg(test)]
mod tests;
pub mod tx_check;

pub use flood::{CookieConfig, CookieState};

use std::ffi::CString;
use std::mem::MaybeUninit;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle, libbpf_sys};

use skel::TurnstileSkelBuilder;

/// Number of XSKMAP slots (receive queues) the program can steer to.
pub const MAX_QUEUES: u32 = 64;

/// How the operator asked for the program to be attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic where the driver
    /// refuses; generic on a one-queue veth (see `generic_is_better`).
    Auto,
    Native,
    Generic,
}

/// The mode the kernel actually accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    Native,
    Generic,
}

impl AttachedMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachedMode::Native => "native",
            AttachedMode::Generic => "generic",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("interface {0:?} not found (check `ip link show`)")]
    NoInterface(String),
    #[error(
        "permission denied loading the XDP program: run as root or grant CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_NET_RAW and CAP_IPC_LOCK"
    )]
    Permission,
    #[error("loading the XDP program failed: {0}")]
    Load(String),
    #[error(
        "interface {iface:?} does not support {mode} XDP ({err}); try --xdp-mode generic, or auto to fall back"
    )]
    Unsupported {
        iface: String,
        mode: &'static str,
        err: std::io::Error,
    },
    #[error(
        "interface {iface:?} already has an XDP program attached{occupant}; turnstile never detaches another program: {choices}"
    )]
    Busy {
        iface: String,
        /// ` (id N "name", native mode)` when it could be read.
        occupant: String,
        choices: String,
    },
    #[error("updating the XDP map {map} failed: {err}")]
    Map { map: &'static str, err: String },
}

/// Counters kept per CPU by the program, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpCounters {
    pub redirected: u64,
    pub passed: u64,
    pub malformed: u64,
    /// Matched a chosen port but arrived on a queue without a socket.
    pub no_socket: u64,
    /// SYNs answered in XDP with a cookie SYN+ACK (flood mode).
    pub syn_cookies: u64,
    /// RSTs answering a cookie SYN+ACK sent in XDP, dropped there (flood
    /// mode): the forged sources' owners refusing our SYN+ACKs.
    pub cookie_rsts: u64,
    /// The flood mode is on: SYNs to listeners are answered in XDP.
    pub flooding: bool,
    /// XDP_TX was seen failing and the XDP path is off (see `tx_check`).
    pub xdp_tx_failed: bool,
}

/// The attached program. Dropping it closes the bpf_link, which detaches the
/// program; the kernel does the same if the process dies, SIGKILL included.
pub struct XdpProgram {
    _link: OwnedFd,
    mode: AttachedMode,
    xsks: MapHandle,
    chosen_ports: MapHandle,
    vips: MapHandle,
    steer: MapHandle,
    counters: MapHandle,
    cookie: Arc<CookieState>,
    tx_failed: Arc<std::sync::atomic::AtomicBool>,
}

/// The program loaded but not attached, with the handles of its maps.
pub(crate) struct Loaded {
    pub(crate) prog: OwnedFd,
    pub(crate) xsks: MapHandle,
    pub(crate) chosen_ports: MapHandle,
    pub(crate) vips: MapHandle,
    pub(crate) steer: MapHandle,
    pub(crate) counters: MapHandle,
    pub(crate) cookie: MapHandle,
}

fn load_error(e: libbpf_rs::Error) -> XdpError {
    if is_permission(&e) {
        XdpError::Permission
    } else {
        XdpError::Load(e.to_string())
    }
}

/// Opens and loads the program (the verifier runs here); attaches nothing.
pub(crate) fn load() -> Result<Loaded, XdpError> {
    silence_libbpf();
    let mut storage = MaybeUninit::uninit();
    let open = TurnstileSkelBuilder::default()
        .open(&mut storage)
        .map_err(load_error)?;
    let skel = open.load().map_err(load_error)?;
    // The fds are duplicated: the skeleton itself can go.
    let prog = skel
        .progs
        .turnstile_steer
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| XdpError::Load(e.to_string()))?;
    Ok(Loaded {
        prog,
        xsks: map_handle(&skel.maps.xsks, "xsks")?,
        chosen_ports: map_handle(&skel.maps.chosen_ports, "chosen_ports")?,
        vips: map_handle(&skel.maps.vips, "vips")?,
        steer: map_handle(&skel.maps.steer, "steer")?,
        counters: map_handle(&skel.maps.counters, "counters")?,
        cookie: map_handle(&skel.maps.cookie, "cookie")?,
    })
}

/// Looks up an interface index, with the error the operator needs.
pub fn ifindex(iface: &str) -> Result<u32, XdpError> {
    let name = CString::new(iface).map_err(|_| XdpError::NoInterface(iface.to_string()))?;
    // SAFETY: name is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if idx == 0 {
        return Err(XdpError::NoInterface(iface.to_string()));
    }
    Ok(idx)
}

fn map_handle(map: &libbpf_rs::MapMut<'_>, name: &'static str) -> Result<MapHandle, XdpError> {
    MapHandle::try_from(map).map_err(|e| XdpError::Map {
        map: name,
        err: e.to_string(),
    })
}

fn is_permission(err: &libbpf_rs::Error) -> bool {
    matches!(err.kind(), libbpf_rs::ErrorKind::PermissionDenied)
        || err.to_string().contains("Operation not permitted")
}

/// Whether `auto` should attach in generic mode although the driver takes
/// native XDP: a veth end with one receive queue (what containers and pods
/// get). Native XDP on veth receives through one 256-slot ring per queue
/// that any local sender shares, and a flood that keeps it full starves
/// every other sender (deploy/README.md has the figures); its XDP_TX also
/// reaches the peer only when the peer runs an XDP program, which turns
/// the XDP SYN-cookie path off. Generic mode has neither problem. It is
/// not chosen on a multi-queue veth: there generic XDP sees every frame on
/// queue 0 (veth records no receive queue on the skb), so one shard would
/// receive for all of them, where native mode spreads them.
fn generic_is_better(iface: &str) -> bool {
    crate::iface::rx_queues(iface) == 1 && crate::iface::driver(iface).as_deref() == Some("veth")
}

impl XdpProgram {
    /// Loads the program and attaches it to `iface` in the requested mode.
    /// Steering stays disabled until [`XdpProgram::enable`] is called, so no
    /// packet is redirected before the sockets exist.
    pub fn attach(iface: &str, mode: XdpMode) -> Result<Self, XdpError> {
        let idx = ifindex(iface)?;
        silence_libbpf();
        // Checked first, so the operator hears what is there (and what to
        // do) whatever mode was asked for; nothing here ever detaches it.
        if let Some(o) = occupant(idx) {
            return Err(busy(iface, Some(o)));
        }
        let loaded = load()?;
        let prog_fd = loaded.prog.as_raw_fd();
        let (link, attached) = match mode {
            XdpMode::Native => (
                link_create(prog_fd, idx, iface, AttachedMode::Native)?,
                AttachedMode::Native,
            ),
            XdpMode::Generic => (
                link_create(prog_fd, idx, iface, AttachedMode::Generic)?,
                AttachedMode::Generic,
            ),
            XdpMode::Auto if generic_is_better(iface) => {
                // The `listening` line reports the mode; stderr stays for
                // what the operator must act on.
                tracing::info!(
                    iface,
                    "a one-queue veth: generic XDP (--xdp-mode native to override)"
                );
                (
                    link_create(prog_fd, idx, iface, AttachedMode::Generic)?,
                    AttachedMode::Generic,
                )
            }
            XdpMode::Auto => match link_create(prog_fd, idx, iface, AttachedMode::Native) {
                Ok(l) => (l, AttachedMode::Native),
                Err(XdpError::Unsupported { err, .. }) => {
                    tracing::warn!(iface, %err, "native XDP refused by the driver; falling back to generic mode");
                    eprintln!("note: {iface}: native XDP refused ({err}); using generic mode");
                    (
                        link_create(prog_fd, idx, iface, AttachedMode::Generic)?,
                        AttachedMode::Generic,
                    )
                }
                Err(e) => return Err(e),
            },
        };
        // The maps are kept through their own fds; the link keeps the
        // program alive.
        Ok(XdpProgram {
            _link: link,
            mode: attached,
            xsks: loaded.xsks,
            chosen_ports: loaded.chosen_ports,
            vips: loaded.vips,
            steer: loaded.steer,
            counters: loaded.counters,
            cookie: Arc::new(CookieState::map(loaded.cookie)?),
            tx_failed: Arc::default(),
        })
    }

    /// Set once XDP_TX was seen failing (the XDP cookie path is then off).
    pub fn tx_failed_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.tx_failed.clone()
    }

    /// The program's SYN-cookie state, for the shards (flood mode).
    pub fn cookie_state(&self) -> Arc<CookieState> {
        self.cookie.clone()
    }

    pub fn mode(&self) -> AttachedMode {
        self.mode
    }

    /// Marks `ports` as steered to AF_XDP; `listen`: they are listeners'
    /// (their SYNs may be answered in XDP during a flood), not only the
    /// local ports of active opens.
    pub fn choose_ports(&self, ports: &[u16], listen: bool) -> Result<(), XdpError> {
        choose_ports(&self.chosen_ports, ports, listen)
    }

    /// Steers (address, port) to AF_XDP whatever the local address: a
    /// listener on a virtual IP.
    pub fn choose_address(&self, addr: Ipv4Addr, port: u16) -> Result<(), XdpError> {
        let mut key = [0u8; 8];
        key[..4].copy_from_slice(&addr.octets());
        key[4..].copy_from_slice(&u32::from(port).to_ne_bytes());
        self.vips
            .update(&key, &[1u8], MapFlags::ANY)
            .map_err(|e| XdpError::Map {
                map: "vips",
                err: e.to_string(),
            })
    }

    /// Registers the AF_XDP socket of receive queue `queue`.
    pub fn register_socket(&self, queue: u32, fd: RawFd) -> Result<(), XdpError> {
        let key = queue.to_ne_bytes();
        let val = (fd as u32).to_ne_bytes();
        self.xsks
            .update(&key, &val, MapFlags::ANY)
            .map_err(|e| XdpError::Map {
                map: "xsks",
                err: e.to_string(),
            })
    }

    /// Starts steering; `local_ip` restricts it to one destination address.
    pub fn enable(&self, local_ip: Option<Ipv4Addr>) -> Result<(), XdpError> {
        let ip = local_ip
            .map(|ip| u32::from_ne_bytes(ip.octets()))
            .unwrap_or(0);
        let mut val = [0u8; 8];
        val[..4].copy_from_slice(&ip.to_ne_bytes());
        val[4..].copy_from_slice(&1u32.to_ne_bytes());
        self.steer
            .update(&0u32.to_ne_bytes(), &val, MapFlags::ANY)
            .map_err(|e| XdpError::Map {
                map: "steer",
                err: e.to_string(),
            })
    }

    /// Sums the per-CPU counters.
    pub fn counters(&self) -> XdpCounters {
        let read = |idx: u32| -> u64 {
            match self
                .counters
                .lookup_percpu(&idx.to_ne_bytes(), MapFlags::ANY)
            {
                Ok(Some(per_cpu)) => per_cpu
                    .iter()
                    .filter_map(|v| v.get(..8))
                    .map(|b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
                    .sum(),
                _ => 0,
            }
        };
        XdpCounters {
            redirected: read(0),
            passed: read(1),
            malformed: read(2),
            no_socket: read(3),
            syn_cookies: read(4),
            cookie_rsts: read(5),
            flooding: self.cookie.enabled()
                && self.cookie.flooding(crate::shard::clock::monotonic_ns()),
            xdp_tx_failed: self.tx_failed.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// A listener's port in `chosen_ports` (bpf/turnstile.bpf.c `LISTENER`).
const LISTENER: u8 = 2;

pub(crate) fn choose_ports(map: &MapHandle, ports: &[u16], listen: bool) -> Result<(), XdpError> {
    let val = if listen { LISTENER } else { 1 };
    for &port in ports {
        let key = u32::from(port).to_ne_bytes();
        // A port both listened on and used for active opens stays a listener's.
        if !listen
            && let Ok(Some(v)) = map.lookup(&key, MapFlags::ANY)
            && v.first() == Some(&LISTENER)
        {
            continue;
        }
        map.update(&key, &[val], MapFlags::ANY)
            .map_err(|e| XdpError::Map {
                map: "chosen_ports",
                err: e.to_string(),
            })?;
    }
    Ok(())
}

fn link_create(
    prog_fd: RawFd,
    ifindex: u32,
    iface: &str,
    mode: AttachedMode,
) -> Result<OwnedFd, XdpError> {
    // XDP_FLAGS_DRV_MODE = 4, XDP_FLAGS_SKB_MODE = 2 (linux/if_link.h).
    let flags = match mode {
        AttachedMode::Native => 4,
        AttachedMode::Generic => 2,
    };
    // SAFETY: bpf_link_create_opts is plain data; zeroed is its documented default.
    let mut opts: libbpf_sys::bpf_link_create_opts = unsafe { std::mem::zeroed() };
    opts.sz = std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _;
    opts.flags = flags;
    // SAFETY: prog_fd is a loaded XDP program; opts lives across the call.
    let fd =
        unsafe { libbpf_sys::bpf_link_create(prog_fd, ifindex as i32, libbpf_sys::BPF_XDP, &opts) };
    if fd < 0 {
        let err = std::io::Error::from_raw_os_error(-fd);
        return Err(match -fd {
            libc::EBUSY | libc::EEXIST => busy(iface, occupant(ifindex)),
            libc::EPERM | libc::EACCES => XdpError::Permission,
            _ => XdpError::Unsupported {
                iface: iface.to_string(),
                mode: mode.as_str(),
                err,
            },
        });
    }
    // SAFETY: bpf_link_create returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An XDP program found on an interface before ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Occupant {
    pub id: u32,
    pub name: String,
    pub mode: &'static str,
}

/// The XDP program attached to `ifindex`, if any (netlink query; the name
/// from the program's info, empty when it cannot be read).
pub fn occupant(ifindex: u32) -> Option<Occupant> {
    // SAFETY: plain data; zeroed is the documented default.
    let mut opts: libbpf_sys::bpf_xdp_query_opts = unsafe { std::mem::zeroed() };
    opts.sz = std::mem::size_of::<libbpf_sys::bpf_xdp_query_opts>() as _;
    // SAFETY: opts lives across the call and is sized.
    if unsafe { libbpf_sys::bpf_xdp_query(ifindex as i32, 0, &mut opts) } != 0 {
        return None;
    }
    // XDP_ATTACHED_DRV = 1, SKB = 2, HW = 3, MULTI = 4 (linux/if_link.h).
    let (id, mode) = match opts.attach_mode {
        1 => (opts.drv_prog_id, "native"),
        2 => (opts.skb_prog_id, "generic"),
        3 => (opts.hw_prog_id, "offloaded"),
        4 => (opts.drv_prog_id.max(opts.skb_prog_id), "several modes"),
        _ => return None,
    };
    let id = if id == 0 { opts.prog_id } else { id };
    if id == 0 {
        return None;
    }
    Some(Occupant {
        id,
        name: prog_name(id).unwrap_or_default(),
        mode,
    })
}

fn prog_name(id: u32) -> Option<String> {
    // SAFETY: returns a new fd or a negative error.
    let fd = unsafe { libbpf_sys::bpf_prog_get_fd_by_id(id) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is new and owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: plain data.
    let mut info: libbpf_sys::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: info and len live across the call; len is info's size.
    if unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) } != 0 {
        return None;
    }
    let bytes: Vec<u8> = info
        .name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Whether this kernel loads BPF_PROG_TYPE_EXT (freplace) programs, which
/// libxdp's multiprog dispatcher needs to chain programs on one interface.
pub fn dispatcher_supported() -> bool {
    // SAFETY: a probe with no options; returns 1, 0 or a negative error.
    unsafe {
        libbpf_sys::libbpf_probe_bpf_prog_type(libbpf_sys::BPF_PROG_TYPE_EXT, std::ptr::null()) == 1
    }
}

fn busy(iface: &str, o: Option<Occupant>) -> XdpError {
    let occupant = match &o {
        Some(o) if o.name.is_empty() => format!(" (id {}, {} mode)", o.id, o.mode),
        Some(o) => format!(" (id {} {:?}, {} mode)", o.id, o.name, o.mode),
        None => String::new(),
    };
    let dispatcher = o.as_ref().is_some_and(|o| o.name == "xdp_dispatcher");
    let unload = format!(
        "unload it (`xdp-loader unload {iface} --all` for libxdp programs, `ip link set dev {iface} xdp off` otherwise) or serve another interface"
    );
    let choices = if dispatcher_supported() {
        format!(
            "{} turnstile attaches alone through a bpf_link and does not join libxdp's dispatcher: {unload}",
            if dispatcher { "it is libxdp's dispatcher;" } else { "" }
        )
        .trim_start()
        .to_string()
    } else {
        format!(
            "this kernel refuses freplace (BPF_PROG_TYPE_EXT), so libxdp's dispatcher cannot chain programs here: {unload}"
        )
    };
    XdpError::Busy {
        iface: iface.to_string(),
        occupant,
        choices,
    }
}

/// libbpf prints its own multi-line diagnostics to stderr; route them to
/// tracing at debug level so the operator sees one clear line from us.
fn silence_libbpf() {
    libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Debug, |_level, msg| {
        tracing::debug!(target: "libbpf", "{}", msg.trim_end());
    })));
}
