//! Whether the SYN+ACKs the program sends with XDP_TX leave the interface.
//!
//! On veth they reach the peer only when the peer runs an XDP program of
//! its own (Linux 6.18 kicks the peer's ring only then); otherwise every
//! one is dropped and counted in the driver's `xdp_tx_errors` statistics.
//! A thread of the runtime (never a shard) reads those ethtool counters
//! while the flood mode is on and, if most cookies sent in XDP failed,
//! turns the XDP path off: the shards answer SYNs again, as before.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use super::CookieState;

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSTATS: u32 = 0x1d;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETH_SS_STATS: u32 = 1;
const ETH_GSTRING_LEN: usize = 32;

fn ethtool(fd: libc::c_int, iface: &str, data: *mut u8) -> bool {
    // SAFETY: ifreq is plain data.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr
        .ifr_name
        .iter_mut()
        .zip(iface.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = data.cast();
    // SAFETY: ifr names the interface and points at a command buffer sized
    // for what its command returns.
    unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &mut ifr) == 0 }
}

/// Indices of the driver statistics named `*xdp_tx_errors` (veth: one per
/// receive queue); None when the driver has none.
fn error_indices(fd: libc::c_int, iface: &str) -> Option<(usize, Vec<usize>)> {
    // struct ethtool_sset_info: cmd, reserved, sset_mask (u64), data[1].
    let mut info = [0u8; 20];
    info[0..4].copy_from_slice(&ETHTOOL_GSSET_INFO.to_ne_bytes());
    info[8..16].copy_from_slice(&(1u64 << ETH_SS_STATS).to_ne_bytes());
    if !ethtool(fd, iface, info.as_mut_ptr()) {
        return None;
    }
    let n = u32::from_ne_bytes(info[16..20].try_into().ok()?) as usize;
    if n == 0 || n > 4096 {
        return None;
    }
    // struct ethtool_gstrings: cmd, string_set, len, data[len * 32].
    let mut strings = vec![0u8; 12 + n * ETH_GSTRING_LEN];
    strings[0..4].copy_from_slice(&ETHTOOL_GSTRINGS.to_ne_bytes());
    strings[4..8].copy_from_slice(&ETH_SS_STATS.to_ne_bytes());
    strings[8..12].copy_from_slice(&(n as u32).to_ne_bytes());
    if !ethtool(fd, iface, strings.as_mut_ptr()) {
        return None;
    }
    let idx: Vec<usize> = strings[12..]
        .chunks(ETH_GSTRING_LEN)
        .enumerate()
        .filter(|(_, name)| {
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            name[..end].ends_with(b"xdp_tx_errors")
        })
        .map(|(i, _)| i)
        .collect();
    (!idx.is_empty()).then_some((n, idx))
}

fn read_errors(fd: libc::c_int, iface: &str, n: usize, idx: &[usize]) -> Option<u64> {
    // struct ethtool_stats: cmd, n_stats, data[n] (u64).
    let mut stats = vec![0u8; 8 + n * 8];
    stats[0..4].copy_from_slice(&ETHTOOL_GSTATS.to_ne_bytes());
    stats[4..8].copy_from_slice(&(n as u32).to_ne_bytes());
    if !ethtool(fd, iface, stats.as_mut_ptr()) {
        return None;
    }
    Some(
        idx.iter()
            .filter_map(|&i| stats.get(8 + i * 8..16 + i * 8))
            .filter_map(|b| b.try_into().ok().map(u64::from_ne_bytes))
            .sum(),
    )
}

/// Starts the check for `iface`; `disabled` is set (and the XDP path off)
/// once XDP_TX is seen failing. Returns None when the driver reports no
/// such counter (nothing to watch: XDP_TX is assumed to work, as on NICs).
pub fn spawn(
    iface: &str,
    cookies: Arc<CookieState>,
    control: Arc<AtomicU8>,
    disabled: Arc<AtomicBool>,
) -> Option<std::thread::JoinHandle<()>> {
    // SAFETY: plain socket(2); closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    let Some((n, idx)) = error_indices(fd, iface) else {
        // SAFETY: our fd.
        unsafe { libc::close(fd) };
        return None;
    };
    let iface = iface.to_string();
    std::thread::Builder::new()
        .name("turnstile-xdp-tx-check".into())
        .spawn(move || {
            let mut last = (
                cookies.sent(),
                read_errors(fd, &iface, n, &idx).unwrap_or(0),
            );
            while control.load(Ordering::Relaxed) != crate::shard::STOPPED {
                std::thread::sleep(Duration::from_millis(200));
                let sent = cookies.sent();
                let Some(errors) = read_errors(fd, &iface, n, &idx) else {
                    continue;
                };
                let (ds, de) = (sent.wrapping_sub(last.0), errors.wrapping_sub(last.1));
                last = (sent, errors);
                // Most of a real sample failed: the peer cannot receive them.
                if ds >= 64 && de * 2 > ds {
                    cookies.disable();
                    disabled.store(true, Ordering::Relaxed);
                    tracing::warn!(iface, sent = ds, failed = de, "XDP_TX fails");
                    eprintln!(
                        "warning: {iface}: {de} of {ds} SYN+ACKs sent with XDP_TX failed \
                         (on veth the peer needs an XDP program of its own); \
                         SYN cookies are answered by the shards from now on"
                    );
                    break;
                }
            }
            // SAFETY: our fd, closed once.
            unsafe { libc::close(fd) };
        })
        .ok()
}
