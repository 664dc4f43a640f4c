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
}

impl Default for XskConfig {
    fn default() -> Self {
        XskConfig {
            frame_count: 8192,
            frame_size: 2048,
            ring_size: 4096,
            batch: 64,
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
    /// A frame to send found no free UMEM frame and was dropped.
    pub tx_no_frame: u64,
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
    stats: XskStats,
}

// SAFETY: every ring and the UMEM are owned by this value and used by one
// thread at a time (the shard that owns it); xsk-rs's handles are Send except
// for the Umem's reference-counted pointer, which is never cloned outside.
unsafe impl Send for XskSocket {}

impl XskSocket {
    /// Creates the UMEM and the socket on `iface` queue `queue` and fills the
    /// fill ring. The socket is bound with need_wakeup; zero-copy is used when
    /// the driver supports it, copy mode otherwise.
    pub fn open(iface: &str, queue: u32, cfg: XskConfig) -> Result<Self, XskError> {
        let bad = |e: &dyn std::fmt::Display| XskError::Config(e.to_string());
        let ring = QueueSize::new(cfg.ring_size).map_err(|e| bad(&e))?;
        let umem_cfg = UmemConfig::builder()
            .frame_size(FrameSize::new(cfg.frame_size).map_err(|e| bad(&e))?)
            .fill_queue_size(ring)
            .comp_queue_size(ring)
            .build()
            .map_err(|e| bad(&e))?;
        let count = NonZeroU32::new(cfg.frame_count).ok_or_else(|| bad(&"frame_count is 0"))?;
        let (umem, mut frames) = Umem::new(umem_cfg, count, false).map_err(|e| XskError::Umem {
            queue,
            err: format!(
                "{e}: {}",
                std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            ),
        })?;
        let sock_cfg = SocketConfig::builder()
            .rx_queue_size(ring)
            .tx_queue_size(ring)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(BindFlags::XDP_USE_NEED_WAKEUP)
            .build();
        let if_name: Interface = iface.parse().map_err(|_| bad(&"interface name"))?;
        let sock_err = |e: &dyn std::fmt::Display| XskError::Socket {
            iface: iface.to_string(),
            queue,
            err: e.to_string(),
        };
        // A process that just died (SIGKILL) leaves its socket on the queue
        // until the kernel's deferred release runs: EBUSY for a moment. A
        // restart right after a crash should work, so wait that out, bounded.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let (tx, rx, rings) = loop {
            // SAFETY: a fresh UMEM, bound once, with libxdp's own program load inhibited.
            match unsafe { Socket::new(sock_cfg, &umem, &if_name, queue) } {
                Ok(ok) => break ok,
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
                    return Err(sock_err(&format!("{e} {detail}")));
                }
            }
        };
        let (mut fill, comp) = rings.ok_or_else(|| sock_err(&"no fill/completion ring"))?;
        let fd = rx.fd().as_raw_fd();

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
            on_frame(data.contents());
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
        if self.tx_pending.is_empty() {
            return;
        }
        // SAFETY: frames of this UMEM, written above, in no other ring.
        let sent = unsafe { self.tx.produce(&self.tx_pending) };
        if sent > 0 {
            self.stats.tx_frames += sent as u64;
            self.tx_pending.drain(..sent);
        }
        if self.tx.needs_wakeup() {
            let _ = self.tx.wakeup();
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
