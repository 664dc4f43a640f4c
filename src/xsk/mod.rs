//! One AF_XDP socket per receive queue, each with its own UMEM and frame pool.
//!
//! Frames are split in two pools at start: half sit in the fill ring for the
//! kernel to receive into, half are free for transmission. A received frame
//! goes straight back to the fill ring once the shard is done with it; a sent
//! frame comes back through the completion ring to the free pool. Nothing is
//! allocated after `open`.

use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};

use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

/// Sizes of one socket's UMEM and rings.
#[derive(Clone, Copy, Debug)]
pub struct XskConfig {
    /// Frames in the UMEM; half for receive, half for transmit.
    pub frame_count: u32,
    /// Bytes per frame (a power of two, 2048 or 4096).
    pub frame_size: u32,
    /// Entries in each ring (a power of two).
    pub ring_size: u32,
    /// Frames handled per batch.
    pub batch: usize,
    /// What to ask the driver for (`--zero-copy`).
    pub zero_copy: ZeroCopy,
    /// Preferred busy polling (`--busy-poll-us`), off when None.
    pub busy_poll: Option<BusyPoll>,
}

/// Whether the socket asks the driver for zero-copy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ZeroCopy {
    /// Bind without a mode flag: the kernel uses zero-copy where the driver
    /// has it and copy mode otherwise, silently (the start line says which).
    #[default]
    Auto,
    /// Ask for zero-copy; a driver that refuses it gets copy mode, with a
    /// warning naming the queue and the kernel's answer.
    On,
    /// Copy mode even where the driver could do zero-copy.
    Off,
}

/// Preferred busy polling (kernel 5.11+): the shard's own syscalls run the
/// driver's NAPI loop instead of interrupts and softirqs doing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusyPoll {
    /// SO_BUSY_POLL: how long one syscall may spin for packets, microseconds.
    pub usecs: u32,
    /// SO_BUSY_POLL_BUDGET: packets one NAPI poll may process.
    pub budget: u32,
}

impl Default for XskConfig {
    fn default() -> Self {
        XskConfig {
            frame_count: 8192,
            frame_size: 2048,
            ring_size: 4096,
            batch: 64,
            zero_copy: ZeroCopy::Auto,
            busy_poll: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum XskError {
    #[error("bad AF_XDP configuration: {0}")]
    Config(String),
    #[error(
        "creating the UMEM for queue {queue} failed: {err}; it needs locked memory: run as root or with CAP_IPC_LOCK (or raise `ulimit -l`)"
    )]
    Umem { queue: u32, err: String },
    #[error(
        "creating the AF_XDP socket on {iface} queue {queue} failed: {err}; check that the queue exists (`ethtool -l {iface}`) and that you have CAP_NET_RAW"
    )]
    Socket {
        iface: String,
        queue: u32,
        err: String,
    },
}

/// Counters of one socket, owned by its shard thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct XskStats {
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// Bytes of received and sent frames: in copy mode, each was copied by
    /// the kernel between its skb and the UMEM.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// A frame to send found no free UMEM frame and was dropped.
    pub tx_no_frame: u64,
    /// sendto(2) calls that kicked the kernel to transmit.
    pub tx_kicks: u64,
}

/// What [`XskSocket::send_with`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    Queued,
    /// The writer had nothing to send.
    Nothing,
    /// No transmit frame was free; the writer was not called.
    NoFrame,
}

pub struct XskSocket {
    umem: Umem,
    queue: u32,
    zerocopy: bool,
    fd: RawFd,
    tx: TxQueue,
    rx: RxQueue,
    fill: FillQueue,
    comp: CompQueue,
    /// Transmit frames not in flight.
    free: Vec<FrameDesc>,
    /// Frames written but not yet on the tx ring.
    tx_pending: Vec<FrameDesc>,
    /// Scratch slots the rx and completion rings consume into.
    scratch: Vec<FrameDesc>,
    /// Received frames whose return to the fill ring had no room.
    fill_backlog: Vec<FrameDesc>,
    batch: usize,
    /// Busy polling: every empty receive pass and every flush makes the
    /// syscall that runs the driver's poll loop (as the kernel's xdpsock
    /// sample does), not only when the kernel asks for a wakeup.
    busy_poll: bool,
    /// Frames were put on the tx ring that the kernel may not have taken
    /// yet (the last kick was cut short, or none was made since).
    tx_unkicked: bool,
    stats: XskStats,
}

/// sendto calls per flush at most: 16 x 32 descriptors in copy mode.
const MAX_KICKS: usize = 16;

// SAFETY: every ring and the UMEM are owned by this value and used by one
// thread at a time (the shard that owns it); xsk-rs's handles are Send except
// for the Umem's reference-counted pointer, which is never cloned outside.
unsafe impl Send for XskSocket {}

impl XskSocket {
    /// Creates the UMEM and the socket on `iface` queue `queue` and fills the
    /// fill ring. The socket is bound with need_wakeup; zero-copy is used when
    /// the driver supports it, copy mode otherwise.
    pub fn open(iface: &str, queue: u32, cfg: XskConfig) -> Result<Self, XskError> {
        let mode = match cfg.zero_copy {
            ZeroCopy::Auto => BindFlags::XDP_USE_NEED_WAKEUP,
            ZeroCopy::On => BindFlags::XDP_USE_NEED_WAKEUP | BindFlags::XDP_ZEROCOPY,
            ZeroCopy::Off => BindFlags::XDP_USE_NEED_WAKEUP | BindFlags::XDP_COPY,
        };
        let bound = match bind(iface, queue, &cfg, mode) {
            Err(BindError::Socket(e)) if cfg.zero_copy == ZeroCopy::On => {
                // A refused zero-copy bind leaves the UMEM's rings set up on
                // its fd, so the copy-mode retry starts from a fresh UMEM.
                tracing::warn!(
                    "zero-copy requested on {iface} queue {queue} but the driver refused it ({e}): \
                     falling back to copy mode (every frame is copied by the kernel)"
                );
                bind(
                    iface,
                    queue,
                    &cfg,
                    BindFlags::XDP_USE_NEED_WAKEUP | BindFlags::XDP_COPY,
                )
            }
            other => other,
        };
        let (umem, mut frames, (tx, rx, rings)) = bound.map_err(|e| e.into_xsk(iface, queue))?;
        let sock_err = |e: &dyn std::fmt::Display| XskError::Socket {
            iface: iface.to_string(),
            queue,
            err: e.to_string(),
        };
        let (mut fill, comp) = rings.ok_or_else(|| sock_err(&"no fill/completion ring"))?;
        let fd = rx.fd().as_raw_fd();
        if let Some(bp) = cfg.busy_poll {
            set_busy_poll(fd, bp).map_err(|e| {
                sock_err(&format!(
                    "setting busy polling ({} us, budget {}): {e}",
                    bp.usecs, bp.budget
                ))
            })?;
        }

        let free = frames.split_off(frames.len() / 2);
        // SAFETY: these frames belong to this UMEM and are in no other ring.
        let filled = unsafe { fill.produce(&frames) };
        if filled != frames.len() {
            return Err(XskError::Config(format!(
                "fill ring took {filled} of {} frames: ring_size must be >= frame_count / 2",
                frames.len()
            )));
        }
        let scratch = frames; // reused as consume slots from now on
        Ok(XskSocket {
            zerocopy: query_zerocopy(fd),
            umem,
            queue,
            fd,
            tx,
            rx,
            fill,
            comp,
            tx_pending: Vec::with_capacity(free.len()),
            free,
            fill_backlog: Vec::with_capacity(scratch.len()),
            scratch,
            batch: cfg.batch.max(1),
            busy_poll: cfg.busy_poll.is_some(),
            tx_unkicked: false,
            stats: XskStats::default(),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    pub fn queue(&self) -> u32 {
        self.queue
    }

    pub fn zerocopy(&self) -> bool {
        self.zerocopy
    }

    pub fn stats(&self) -> XskStats {
        self.stats
    }

    /// Receives up to one batch and hands each frame to `on_frame`; the frames
    /// go back to the fill ring afterwards. Returns how many were received.
    pub fn recv_batch(&mut self, mut on_frame: impl FnMut(&[u8])) -> usize {
        self.refill();
        let n = self.batch.min(self.scratch.len());
        // SAFETY: the slots are overwritten with descriptors of this UMEM.
        let got = unsafe { self.rx.consume(&mut self.scratch[..n]) };
        for desc in &self.scratch[..got] {
            // SAFETY: the kernel handed this frame to us; nobody else touches it
            // until it goes back to the fill ring below.
            let data = unsafe { self.umem.data(desc) };
            self.stats.rx_bytes += data.contents().len() as u64;
            on_frame(data.contents());
        }
        if got == 0 && self.busy_poll {
            // SAFETY: a non-blocking recvfrom with no buffer on our own
            // socket: it only runs the busy-poll loop.
            unsafe {
                libc::recvfrom(
                    self.fd,
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
        }
        if got > 0 {
            self.stats.rx_frames += got as u64;
            // SAFETY: frames of this UMEM that we no longer read.
            let put = unsafe { self.fill.produce(&self.scratch[..got]) };
            if put < got {
                self.fill_backlog.extend_from_slice(&self.scratch[..got]);
            }
        }
        got
    }

    /// Returns frames that found the fill ring full on an earlier pass.
    fn refill(&mut self) {
        if !self.fill_backlog.is_empty() {
            // SAFETY: frames of this UMEM that are in no ring.
            let put = unsafe { self.fill.produce(&self.fill_backlog) };
            if put > 0 {
                self.fill_backlog.clear();
            }
        }
        if self.fill.needs_wakeup() {
            let _ = self.fill.wakeup(self.rx.fd_mut(), 0);
        }
    }

    /// Writes one frame with `write` (given the whole frame buffer, it returns
    /// the frame length, or None to send nothing) and queues it for the next
    /// [`XskSocket::flush`]. `write` is not called when no frame is free, so a
    /// caller can leave what it meant to send where it was.
    pub fn send_with(&mut self, write: impl FnOnce(&mut [u8]) -> Option<usize>) -> SendOutcome {
        if self.free.is_empty() {
            self.reclaim();
        }
        let Some(mut desc) = self.free.pop() else {
            self.stats.tx_no_frame += 1;
            return SendOutcome::NoFrame;
        };
        // SAFETY: a free frame of this UMEM: in no ring, so ours alone.
        let mut data = unsafe { self.umem.data_mut(&mut desc) };
        let cap = data.cursor().buf_len();
        // Expose the whole frame without zeroing it: the writer fills it.
        data.cursor().set_pos(cap);
        match write(data.contents_mut()) {
            Some(len) if len > 0 && len <= cap => {
                data.cursor().set_pos(len);
                self.stats.tx_bytes += len as u64;
                self.tx_pending.push(desc);
                if self.tx_pending.len() >= self.batch {
                    self.flush();
                }
                SendOutcome::Queued
            }
            _ => {
                self.free.push(desc);
                SendOutcome::Nothing
            }
        }
    }

    /// Puts queued frames on the tx ring and kicks the kernel (copy mode
    /// moves TX only on a syscall, so this is done once per batch).
    pub fn flush(&mut self) {
        self.reclaim();
        if !self.tx_pending.is_empty() {
            // SAFETY: frames of this UMEM, written above, in no other ring.
            let sent = unsafe { self.tx.produce(&self.tx_pending) };
            if sent > 0 {
                self.stats.tx_frames += sent as u64;
                self.tx_pending.drain(..sent);
                self.tx_unkicked = true;
            }
        }
        if self.tx_unkicked && (self.busy_poll || self.tx.needs_wakeup()) {
            self.kick();
        }
    }

    /// The sendto that makes the kernel take our tx ring. In copy mode one
    /// call moves at most `TX_BATCH_SIZE` (32) descriptors
    /// (`__xsk_generic_xmit` in net/xdp/xsk.c) and answers EAGAIN when more
    /// are left, so it is repeated, bounded; what is still left is kicked on
    /// the next flush even if nothing new was queued (before, frames beyond
    /// the first 32 of a flush sat in the ring until the next frame was sent
    /// or the shard slept in poll(2), which also drives copy-mode TX).
    fn kick(&mut self) {
        for _ in 0..MAX_KICKS {
            self.stats.tx_kicks += 1;
            // SAFETY: a non-blocking sendto with no buffer on our own
            // socket: it only asks the kernel to process the tx ring.
            let rc = unsafe {
                libc::sendto(
                    self.fd,
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if rc >= 0 {
                self.tx_unkicked = false;
                return;
            }
            match std::io::Error::last_os_error().raw_os_error() {
                // More descriptors left than one call takes.
                Some(libc::EAGAIN) => continue,
                // The kernel is busy with this ring (EBUSY) or out of skbs
                // (ENOBUFS): try again on the next flush.
                Some(libc::EBUSY) | Some(libc::ENOBUFS) => return,
                // ENETDOWN and the like: nothing a retry fixes now.
                _ => {
                    self.tx_unkicked = false;
                    return;
                }
            }
        }
    }

    /// Whether frames are waiting for the next flush.
    pub fn has_pending(&self) -> bool {
        !self.tx_pending.is_empty()
    }

    /// Moves completed transmit frames back to the free pool.
    fn reclaim(&mut self) {
        let n = self.scratch.len();
        // SAFETY: completion descriptors are frames of this UMEM we sent.
        let done = unsafe { self.comp.consume(&mut self.scratch[..n]) };
        self.free.extend_from_slice(&self.scratch[..done]);
    }

    /// Sleeps until a frame arrives or `timeout_ms` passes.
    pub fn wait(&mut self, timeout_ms: i32) {
        let _ = self.rx.poll(timeout_ms);
    }
}

type Bound = (
    Umem,
    Vec<FrameDesc>,
    (TxQueue, RxQueue, Option<(FillQueue, CompQueue)>),
);

enum BindError {
    Config(String),
    Umem(String),
    Socket(String),
}

impl BindError {
    fn into_xsk(self, iface: &str, queue: u32) -> XskError {
        match self {
            BindError::Config(e) => XskError::Config(e),
            BindError::Umem(err) => XskError::Umem { queue, err },
            BindError::Socket(err) => XskError::Socket {
                iface: iface.to_string(),
                queue,
                err,
            },
        }
    }
}

/// A fresh UMEM and a socket bound to `queue` with `flags`.
fn bind(iface: &str, queue: u32, cfg: &XskConfig, flags: BindFlags) -> Result<Bound, BindError> {
    let bad = |e: &dyn std::fmt::Display| BindError::Config(e.to_string());
    let ring = QueueSize::new(cfg.ring_size).map_err(|e| bad(&e))?;
    let umem_cfg = UmemConfig::builder()
        .frame_size(FrameSize::new(cfg.frame_size).map_err(|e| bad(&e))?)
        .fill_queue_size(ring)
        .comp_queue_size(ring)
        .build()
        .map_err(|e| bad(&e))?;
    let count = NonZeroU32::new(cfg.frame_count).ok_or_else(|| bad(&"frame_count is 0"))?;
    let (umem, frames) = Umem::new(umem_cfg, count, false).map_err(|e| {
        BindError::Umem(format!(
            "{e}: {}",
            std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_default()
        ))
    })?;
    let sock_cfg = SocketConfig::builder()
        .rx_queue_size(ring)
        .tx_queue_size(ring)
        .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
        .bind_flags(flags)
        .build();
    let if_name: Interface = iface.parse().map_err(|_| bad(&"interface name"))?;
    // A process that just died (SIGKILL) leaves its socket on the queue
    // until the kernel's deferred release runs: EBUSY for a moment. A
    // restart right after a crash should work, so wait that out, bounded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // SAFETY: a fresh UMEM, bound once, with libxdp's own program load inhibited.
        match unsafe { Socket::new(sock_cfg, &umem, &if_name, queue) } {
            Ok(sock) => return Ok((umem, frames, sock)),
            Err(e) => {
                let source = std::error::Error::source(&e);
                let os = source
                    .and_then(|s| s.downcast_ref::<std::io::Error>())
                    .and_then(std::io::Error::raw_os_error);
                if os == Some(libc::EBUSY) && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    continue;
                }
                let detail = source.map(|s| s.to_string()).unwrap_or_default();
                return Err(BindError::Socket(format!("{e} {detail}")));
            }
        }
    }
}

/// SO_PREFER_BUSY_POLL, SO_BUSY_POLL and SO_BUSY_POLL_BUDGET on `fd`.
fn set_busy_poll(fd: RawFd, bp: BusyPoll) -> std::io::Result<()> {
    // Values from include/uapi/asm-generic/socket.h (libc lacks the last two).
    const SO_BUSY_POLL: libc::c_int = 46;
    const SO_PREFER_BUSY_POLL: libc::c_int = 69;
    const SO_BUSY_POLL_BUDGET: libc::c_int = 70;
    for (opt, value) in [
        (SO_PREFER_BUSY_POLL, 1u32),
        (SO_BUSY_POLL, bp.usecs),
        (SO_BUSY_POLL_BUDGET, bp.budget),
    ] {
        let v = value as libc::c_int;
        // SAFETY: an int option of the right size on our own socket.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Asks the kernel whether the bind ended in zero-copy mode.
fn query_zerocopy(fd: RawFd) -> bool {
    const SOL_XDP: libc::c_int = 283;
    const XDP_OPTIONS: libc::c_int = 8;
    const XDP_OPTIONS_ZEROCOPY: u32 = 1;
    let mut flags: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: flags and len are valid for the kernel to write.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            SOL_XDP,
            XDP_OPTIONS,
            (&mut flags as *mut u32).cast(),
            &mut len,
        )
    };
    rc == 0 && flags & XDP_OPTIONS_ZEROCOPY != 0
}

impl XskSocket {
    /// The kernel's drop counters for this socket.
    pub fn xdp_statistics(&self) -> std::io::Result<xsk_rs::socket::XdpStatistics> {
        self.rx.fd().xdp_statistics()
    }
}
