//! Keeping the kernel off the local ports turnstile uses for active opens.
//!
//! The XDP program steers replies to those ports to AF_XDP, so a kernel
//! socket that picked one as its ephemeral port would never see its replies.
//! When the range overlaps the kernel's `ip_local_port_range`, it is added to
//! `ip_local_reserved_ports` for as long as turnstile runs (and restored on
//! drop). A range outside `ip_local_port_range` (the default 61000-65535 is)
//! needs nothing.

use std::ops::RangeInclusive;

const RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const RESERVED: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot reserve local ports {lo}-{hi} from the kernel ({path}: {err}); choose a range outside ip_local_port_range or run as root"
)]
pub struct ReserveError {
    lo: u16,
    hi: u16,
    path: &'static str,
    err: std::io::Error,
}

/// Restores `ip_local_reserved_ports` on drop.
#[derive(Debug)]
pub struct Reservation {
    previous: Option<String>,
}

fn kernel_range() -> Option<RangeInclusive<u16>> {
    let text = std::fs::read_to_string(RANGE).ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<u16>().ok());
    Some(it.next()??..=it.next()??)
}

pub fn reserve(range: &RangeInclusive<u16>) -> Result<Reservation, ReserveError> {
    let overlaps =
        kernel_range().is_some_and(|k| range.start() <= k.end() && k.start() <= range.end());
    if !overlaps {
        return Ok(Reservation { previous: None });
    }
    let err = |path, err| ReserveError {
        lo: *range.start(),
        hi: *range.end(),
        path,
        err,
    };
    let previous = std::fs::read_to_string(RESERVED).map_err(|e| err(RESERVED, e))?;
    let previous = previous.trim().to_string();
    let ours = format!("{}-{}", range.start(), range.end());
    let value = if previous.is_empty() {
        ours
    } else {
        format!("{previous},{ours}")
    };
    std::fs::write(RESERVED, value).map_err(|e| err(RESERVED, e))?;
    Ok(Reservation {
        previous: Some(previous),
    })
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(prev) = &self.previous {
            let _ = std::fs::write(RESERVED, if prev.is_empty() { "\n" } else { prev });
        }
    }
}
