//! Facts about a local network interface: index, IPv4 address, MAC, queues.

use std::net::Ipv4Addr;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    #[error("interface {0:?} not found (check `ip link show`)")]
    NotFound(String),
    #[error("interface {0:?} has no IPv4 address (add one with `ip addr add`)")]
    NoIpv4(String),
    #[error("interface {0:?} has no readable MAC address")]
    NoMac(String),
}

/// What a shard needs to know about the interface it serves.
#[derive(Clone, Debug)]
pub struct Iface {
    pub name: String,
    pub index: u32,
    pub ipv4: Ipv4Addr,
    pub mac: [u8; 6],
    pub rx_queues: u32,
}

impl Iface {
    pub fn lookup(name: &str) -> Result<Self, IfaceError> {
        let sys = Path::new("/sys/class/net").join(name);
        if name.is_empty() || name.contains('/') || !sys.exists() {
            return Err(IfaceError::NotFound(name.to_string()));
        }
        let index = std::fs::read_to_string(sys.join("ifindex"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| IfaceError::NotFound(name.to_string()))?;
        let mac = std::fs::read_to_string(sys.join("address"))
            .ok()
            .and_then(|s| parse_mac(s.trim()))
            .ok_or_else(|| IfaceError::NoMac(name.to_string()))?;
        let rx_queues = rx_queues(name);
        let ipv4 = ipv4_of(name).ok_or_else(|| IfaceError::NoIpv4(name.to_string()))?;
        Ok(Iface {
            name: name.to_string(),
            index,
            ipv4,
            mac,
            rx_queues,
        })
    }
}

/// How many receive queues the interface has (sysfs `queues/rx-*`), at
/// least 1.
pub fn rx_queues(name: &str) -> u32 {
    if name.is_empty() || name.contains('/') {
        return 1;
    }
    std::fs::read_dir(Path::new("/sys/class/net").join(name).join("queues"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count() as u32
        })
        .unwrap_or(1)
        .max(1)
}

/// The interface's MTU, from sysfs.
pub fn mtu(name: &str) -> Option<u32> {
    if name.is_empty() || name.contains('/') {
        return None;
    }
    std::fs::read_to_string(Path::new("/sys/class/net").join(name).join("mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The interface's driver as `ethtool -i` names it (ETHTOOL_GDRVINFO):
/// "veth", "mlx5_core", ... None where the ioctl fails (no such interface,
/// or one without ethtool support such as lo).
pub fn driver(name: &str) -> Option<String> {
    const ETHTOOL_GDRVINFO: u32 = 0x03;
    // struct ethtool_drvinfo: cmd, then driver[32] and seven more fields,
    // 196 bytes in all; only `driver` is read.
    let mut info = [0u8; 196];
    info[..4].copy_from_slice(&ETHTOOL_GDRVINFO.to_ne_bytes());
    ethtool(name, info.as_mut_ptr().cast()).ok()?;
    let field = &info[4..36];
    let len = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let d = std::str::from_utf8(&field[..len]).ok()?;
    (!d.is_empty()).then(|| d.to_string())
}

// linux/sockios.h
const SIOCETHTOOL: libc::c_ulong = 0x8946;

/// One SIOCETHTOOL request on `iface`; `data` points to the command buffer,
/// sized by the caller for its command (linux/ethtool.h).
pub(crate) fn ethtool(iface: &str, data: *mut libc::c_void) -> std::io::Result<()> {
    if iface.is_empty() || iface.len() > 15 {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    // SAFETY: a plain datagram socket, closed when `sock` drops.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just created and nothing else owns it.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(iface.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = data as *mut libc::c_char;
    // SAFETY: SIOCETHTOOL reads and writes the command buffer `data` points
    // to, which the caller sized for the command.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            SIOCETHTOOL as _,
            &mut ifr,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The first IPv4 address of `name`, from getifaddrs(3).
fn ipv4_of(name: &str) -> Option<Ipv4Addr> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur walks the list getifaddrs returned, until NULL.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let ifname = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: ifa_addr is non-null and points to a sockaddr.
        let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
        if ifname.to_bytes() == name.as_bytes() && family == libc::AF_INET {
            // SAFETY: AF_INET addresses are sockaddr_in.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            found = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            break;
        }
    }
    // SAFETY: head came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_macs() {
        assert_eq!(
            parse_mac("02:00:5e:10:00:ff"),
            Some([2, 0, 0x5e, 0x10, 0, 0xff])
        );
        assert_eq!(parse_mac("02:00:5e:10:00"), None);
        assert_eq!(parse_mac("02:00:5e:10:00:ff:01"), None);
        assert_eq!(parse_mac("zz:00:5e:10:00:ff"), None);
    }

    #[test]
    fn loopback_is_found_and_missing_is_named() {
        let lo = Iface::lookup("lo").expect("lo exists");
        assert_eq!(lo.ipv4, Ipv4Addr::LOCALHOST);
        let err = Iface::lookup("no-such-if0").unwrap_err();
        assert!(err.to_string().contains("no-such-if0"));
        assert_eq!(driver("no-such-if0"), None);
        assert_eq!(driver(""), None);
        assert_eq!(driver("a-name-far-too-long"), None);
    }
}
