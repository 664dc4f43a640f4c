//! wire-limit's sender: bare TCP SYNs as whole Ethernet frames on an
//! AF_PACKET socket that bypasses the qdisc (sendmmsg batches; no routing,
//! no IP layer), each from another source port, at a server with no listener
//! behind the port, so every SYN costs the server one frame in and one RST
//! out.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::Context;

#[derive(clap::Args, Debug)]
pub struct FloodArgs {
    #[arg(long)]
    pub src: Ipv4Addr,
    #[arg(long)]
    pub target: SocketAddrV4,
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// The interface to send on (its own MAC is the source).
    #[arg(long)]
    pub iface: String,
    /// The server's MAC, aa:bb:cc:dd:ee:ff.
    #[arg(long, value_parser = parse_mac)]
    pub dst_mac: [u8; 6],
    /// SYNs per second at most (paced per batch of 64); default: as fast as
    /// the socket takes them. Lets floods of one rate be offered to the
    /// kernel and to turnstile alike.
    #[arg(long)]
    pub pps: Option<u64>,
}

pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.trim().split(':').collect();
    if parts.len() != 6 {
        return Err(format!("{s:?} is not a MAC address"));
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).map_err(|_| format!("{s:?} is not a MAC address"))?;
    }
    Ok(mac)
}

/// The 16-bit one's complement sum of `data`, folded (not complemented).
fn sum16(mut acc: u32, data: &[u8]) -> u32 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        acc += u32::from(w);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// An IPv4 + TCP SYN (40 bytes) with both checksums filled in.
pub fn syn(src: Ipv4Addr, sport: u16, dst: SocketAddrV4, seq: u32) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    let ip = fold(sum16(0, &p[..20]));
    p[10..12].copy_from_slice(&ip.to_be_bytes());
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dst.port().to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02; // SYN
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.ip().octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    let c = fold(sum16(sum16(0, &pseudo), &p[20..]));
    p[36..38].copy_from_slice(&c.to_be_bytes());
    p
}

pub fn run(args: FloodArgs) -> anyhow::Result<()> {
    let src_mac = parse_mac(
        &std::fs::read_to_string(format!("/sys/class/net/{}/address", args.iface))
            .with_context(|| format!("MAC of {}", args.iface))?,
    )
    .map_err(anyhow::Error::msg)?;
    let ifindex = {
        let name = std::ffi::CString::new(args.iface.clone())?;
        // SAFETY: a valid NUL-terminated name.
        unsafe { libc::if_nametoindex(name.as_ptr()) }
    };
    anyhow::ensure!(ifindex != 0, "no interface {}", args.iface);
    let proto = (libc::ETH_P_IP as u16).to_be();
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    anyhow::ensure!(
        fd >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // Straight to the driver: no qdisc in the way of the rate.
    let _ = crate::sys::set_int_opt(fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1);
    // SAFETY: sockaddr_ll is plain data.
    let mut dst: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    dst.sll_family = libc::AF_PACKET as u16;
    dst.sll_protocol = proto;
    dst.sll_ifindex = ifindex as i32;
    dst.sll_halen = 6;
    dst.sll_addr[..6].copy_from_slice(&args.dst_mac);
    const BATCH: usize = 64;
    let mut pkts = [[0u8; 54]; BATCH];
    for p in pkts.iter_mut() {
        p[0..6].copy_from_slice(&args.dst_mac);
        p[6..12].copy_from_slice(&src_mac);
        p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    }
    let mut iov: Vec<libc::iovec> = Vec::with_capacity(BATCH);
    for p in pkts.iter_mut() {
        iov.push(libc::iovec {
            iov_base: p.as_mut_ptr().cast(),
            iov_len: p.len(),
        });
    }
    // SAFETY: mmsghdr is plain data; every pointer is filled below.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_name = (&mut dst as *mut libc::sockaddr_ll).cast();
        m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.duration);
    let mut sent: u64 = 0;
    let mut errors: u64 = 0;
    // Batches the interface cut short: sendmmsg stops at the first frame
    // refused (ENOBUFS: a veth whose peer's ring is full refuses instead of
    // queueing), so the rate above counts only frames the interface took.
    let mut short: u64 = 0;
    let mut n: u32 = 0;
    while Instant::now() < end {
        for p in pkts.iter_mut() {
            n = n.wrapping_add(1);
            let sport = 1024 + (n % 64000) as u16;
            p[14..].copy_from_slice(&syn(
                args.src,
                sport,
                args.target,
                n.wrapping_mul(2_654_435_761),
            ));
        }
        // SAFETY: msgs point at live packets, iovecs and the address.
        let rc = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), BATCH as u32, 0) };
        if rc < 0 {
            errors += 1;
            if errors > 1_000_000 {
                anyhow::bail!("sendmmsg: {}", std::io::Error::last_os_error());
            }
        } else {
            sent += rc as u64;
            short += u64::from((rc as usize) < BATCH);
        }
        if let Some(pps) = args.pps.filter(|&p| p > 0) {
            // Where the schedule says we should be after `sent` SYNs.
            let due = start + Duration::from_secs_f64(sent as f64 / pps as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    crate::sys::close(fd);
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(
        &mut out,
        &serde_json::json!({"sent": sent, "elapsed_s": elapsed, "pps": sent as f64 / elapsed, "send_errors": errors, "short_batches": short}),
    )
    .context("stdout")?;
    writeln!(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_checksums_verify() {
        let dst = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 1), 9);
        let p = syn(Ipv4Addr::new(198, 18, 1, 2), 40000, dst, 12345);
        // A header with its checksum in place sums to 0xffff (folds to 0).
        assert_eq!(fold(sum16(0, &p[..20])), 0);
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&p[12..16]);
        pseudo[4..8].copy_from_slice(&p[16..20]);
        pseudo[9] = 6;
        pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
        assert_eq!(fold(sum16(sum16(0, &pseudo), &p[20..])), 0);
        assert_eq!(p[33], 0x02);
    }

    #[test]
    fn macs_parse() {
        assert_eq!(
            parse_mac("02:0a:ff:00:01:9c\n"),
            Ok([2, 10, 255, 0, 1, 0x9c])
        );
        assert!(parse_mac("02:0a:ff").is_err());
        assert!(parse_mac("zz:0a:ff:00:01:9c").is_err());
    }
}
