//! The XDP program's SYN-cookie state (`cookie` in bpf/syncookie.h), mapped
//! into this process so the shards turn the flood mode on and see the
//! cookies sent in XDP with plain memory accesses: a shard never makes a
//! system call for it.
//!
//! While a flood lasts the program answers SYNs to listeners itself with a
//! cookie SYN+ACK (XDP_TX), the same cookie the engine would have sent, so
//! only the completing ACKs reach the AF_XDP socket. It starts when a
//! shard's SYN queue overflowed (the engine sent a cookie) and lasts while
//! the program keeps answering more SYNs per second than the SYN queues
//! hold (`sustain`), then `hold` longer.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use libbpf_rs::MapHandle;

use super::XdpError;

// Offsets in `struct cookie_state` (bpf/syncookie.h).
const K0: usize = 0;
const K1: usize = 8;
const EPOCH_US: usize = 16;
const FLOOD_UNTIL_NS: usize = 24;
const WINDOW_START_NS: usize = 32;
const WINDOW_SYNS: usize = 40;
const SENT: usize = 48;
const HOLD_NS: usize = 56;
const SUSTAIN: usize = 64;
const MSS: usize = 68;
const WINDOW: usize = 70;
const WSCALE: usize = 72;
const TIMESTAMPS: usize = 73;
const SACK: usize = 74;
const ENABLED: usize = 75;
const SIZE: usize = 80;

/// What the SYN+ACKs sent in XDP offer: the engine's own choices, so the
/// connection the engine builds from the cookie matches what the peer saw.
#[derive(Clone, Copy, Debug)]
pub struct CookieConfig {
    /// The endpoint secret (ISN, timestamp and cookie key).
    pub secret: [u8; 16],
    /// The engine clock (µs) minus CLOCK_MONOTONIC (µs): bpf_ktime's offset.
    pub epoch_us: u64,
    pub mss: u16,
    /// The window of a SYN+ACK (no scaling applies to it).
    pub window: u16,
    /// Our window-scale shift, offered when the peer offered one.
    pub wscale: u8,
    pub timestamps: bool,
    pub sack: bool,
    /// Answered SYNs per second that keep the flood mode on.
    pub sustain_per_s: u32,
    /// How long the flood mode lasts past its last busy second.
    pub hold: Duration,
}

/// The mapped state; shared by the runtime and every shard.
pub struct CookieState {
    base: *mut u8,
    len: usize,
    /// Keeps the map alive as long as the mapping.
    _map: MapHandle,
}

// SAFETY: the mapping lives as long as this value; every word written after
// `configure` is accessed through atomics (the kernel's side too).
unsafe impl Send for CookieState {}
// SAFETY: as above.
unsafe impl Sync for CookieState {}

fn page_len() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as usize } else { 4096 }
}

impl CookieState {
    pub(super) fn map(map: MapHandle) -> Result<Self, XdpError> {
        let len = SIZE.div_ceil(page_len()) * page_len();
        // SAFETY: a BPF_F_MMAPABLE array of one entry: mapping its first page
        // shared is what the kernel offers it for; the result is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.as_fd().as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(XdpError::Map {
                map: "cookie",
                err: format!("mmap: {}", std::io::Error::last_os_error()),
            });
        }
        Ok(CookieState {
            base: base.cast(),
            len,
            _map: map,
        })
    }

    fn word(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off.is_multiple_of(8) && off + 8 <= SIZE);
        // SAFETY: inside the mapping, 8-byte aligned (the mapping is page
        // aligned), and only ever accessed atomically after configuration.
        unsafe { &*self.base.add(off).cast::<AtomicU64>() }
    }

    /// Fills in the key, the clock and what to offer, and enables the
    /// program's cookies (the flood mode itself starts off).
    pub fn configure(&self, c: &CookieConfig) {
        let k0 = u64::from_le_bytes(c.secret[..8].try_into().unwrap_or([0; 8]));
        let k1 = u64::from_le_bytes(c.secret[8..].try_into().unwrap_or([0; 8]));
        self.word(K0).store(k0, Ordering::Relaxed);
        self.word(K1).store(k1, Ordering::Relaxed);
        self.word(EPOCH_US).store(c.epoch_us, Ordering::Relaxed);
        self.word(FLOOD_UNTIL_NS).store(0, Ordering::Relaxed);
        self.word(HOLD_NS)
            .store(c.hold.as_nanos() as u64, Ordering::Relaxed);
        // The small fields share the word at 64 and 72 (little endian, as
        // the BPF side reads them on this host).
        let mut lo = [0u8; 8];
        lo[SUSTAIN - 64..SUSTAIN - 64 + 4].copy_from_slice(&c.sustain_per_s.to_ne_bytes());
        lo[MSS - 64..MSS - 64 + 2].copy_from_slice(&c.mss.to_ne_bytes());
        lo[WINDOW - 64..WINDOW - 64 + 2].copy_from_slice(&c.window.to_ne_bytes());
        let mut hi = [0u8; 8];
        hi[WSCALE - 72] = c.wscale;
        hi[TIMESTAMPS - 72] = u8::from(c.timestamps);
        hi[SACK - 72] = u8::from(c.sack);
        hi[ENABLED - 72] = 1;
        self.word(64)
            .store(u64::from_ne_bytes(lo), Ordering::Relaxed);
        self.word(72)
            .store(u64::from_ne_bytes(hi), Ordering::Release);
    }

    /// Stops answering SYNs in XDP (the engine's cookies stay).
    pub fn disable(&self) {
        let hi = self.word(72).load(Ordering::Relaxed);
        let mut b = hi.to_ne_bytes();
        b[ENABLED - 72] = 0;
        self.word(72)
            .store(u64::from_ne_bytes(b), Ordering::Release);
    }

    /// Whether the program answers SYNs (configured and not disabled).
    pub fn enabled(&self) -> bool {
        self.word(72).load(Ordering::Relaxed).to_ne_bytes()[ENABLED - 72] != 0
    }

    /// A SYN queue overflowed at `mono_ns` (CLOCK_MONOTONIC): answer SYNs
    /// in XDP from now on, for at least `hold`.
    pub fn flood_started(&self, mono_ns: u64) {
        let hold = self.word(HOLD_NS).load(Ordering::Relaxed);
        self.word(WINDOW_START_NS).store(mono_ns, Ordering::Relaxed);
        self.word(WINDOW_SYNS).store(0, Ordering::Relaxed);
        self.word(FLOOD_UNTIL_NS)
            .fetch_max(mono_ns.saturating_add(hold), Ordering::Relaxed);
    }

    /// Whether SYNs are answered in XDP at `mono_ns`.
    pub fn flooding(&self, mono_ns: u64) -> bool {
        mono_ns < self.word(FLOOD_UNTIL_NS).load(Ordering::Relaxed)
    }

    /// Cookie SYN+ACKs the program has sent since it was loaded.
    #[inline]
    pub fn sent(&self) -> u64 {
        self.word(SENT).load(Ordering::Relaxed)
    }
}

impl Drop for CookieState {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}
