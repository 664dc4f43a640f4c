//! A kernel host behind a router, for wire loss in both directions.
//!
//! The topology's client namespace becomes a router and a third namespace
//! (`far`) behind it holds the kernel peer: `turnstile <-> router <-> far`.
//! Loss is made by nftables in the router's `forward` hook, which is on the
//! wire for both ends: neither sender's own stack sees the drop. (A drop in
//! a kernel sender's own output hook, or its qdisc, is reported back to its
//! TCP, which resends at once: not loss. turnstile's XDP program takes its
//! frames before netfilter in its own namespace, so its side has no hook at
//! all; this kernel has no netem.)

use std::net::Ipv4Addr;
use std::process::Command;

use turnstile::topology::{Host, Topology};

/// The far host; its namespace (and the router's extra veth, which lives in
/// the topology's client namespace) go on drop.
pub struct Far {
    pub host: Host,
}

impl Drop for Far {
    fn drop(&mut self) {
        turnstile::topology::remove_netns(&self.host.netns);
    }
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds the far host behind `topo.client` (now a router): 198.19.T.0/24
/// on the far link, where T is the topology's own third octet, so the names
/// and addresses are as unique as the topology's.
pub fn far_host(topo: &Topology) -> Far {
    let tag = format!("{:x}", std::process::id() & 0xfffff);
    let third = topo.server.ip.octets()[2];
    let far = Far {
        host: Host {
            netns: format!("ts-{tag}-{third}-lfar"),
            dev: format!("tl{tag}{third}f"),
            ip: Ipv4Addr::new(198, 19, third, 2),
        },
    };
    let r_dev = format!("tl{tag}{third}r");
    let router = &topo.client;
    run(&["ip", "netns", "add", &far.host.netns]);
    run(&[
        "ip",
        "link",
        "add",
        &r_dev,
        "type",
        "veth",
        "peer",
        "name",
        &far.host.dev,
    ]);
    run(&["ip", "link", "set", &r_dev, "netns", &router.netns]);
    run(&["ip", "link", "set", &far.host.dev, "netns", &far.host.netns]);
    // Offloads off as on the topology's own pair: the kernel would leave TCP
    // checksums to an offload veth never performs, and GSO would hand whole
    // super-frames to the loss rule (one drop = dozens of segments).
    router
        .sh_ok(&format!(
            "sysctl -qw net.ipv4.ip_forward=1 && ip addr add 198.19.{third}.1/24 dev {r_dev} && \
             ip link set {r_dev} up && \
             (ethtool -K {r_dev} tx off tso off gso off gro off >/dev/null 2>&1; true)"
        ))
        .expect("router");
    far.host
        .sh_ok(&format!(
            "ip link set lo up && ip addr add {}/24 dev {d} && ip link set {d} up && \
             (ethtool -K {d} tx off tso off gso off gro off >/dev/null 2>&1; true) && \
             ip route add default via 198.19.{third}.1",
            far.host.ip,
            d = far.host.dev
        ))
        .expect("far host");
    topo.server
        .sh_ok(&format!(
            "ip route add 198.19.{third}.0/24 via {}",
            topo.client.ip
        ))
        .expect("route to the far host");
    far
}

/// The router's loss table: `percent` of the TCP segments forwarded in each
/// direction between `a` and `b` are dropped (`numgen random`, independent
/// per segment), counted per direction.
pub fn lose_both_ways(router: &Host, table: &str, a: Ipv4Addr, b: Ipv4Addr, percent: u32) {
    let _ = router.sh(&format!("nft delete table inet {table}"));
    router
        .sh_ok(&format!(
            "nft add table inet {table} && \
             nft add chain inet {table} relay '{{ type filter hook forward priority 0; }}' && \
             nft add rule inet {table} relay ip saddr {a} ip daddr {b} meta l4proto tcp \
               numgen random mod 100 '<' {percent} counter drop && \
             nft add rule inet {table} relay ip saddr {b} ip daddr {a} meta l4proto tcp \
               numgen random mod 100 '<' {percent} counter drop"
        ))
        .expect("nftables loss");
}

/// The packet counts of the rules of `table`'s `relay` chain, in order.
pub fn dropped(router: &Host, table: &str) -> Vec<u64> {
    let out = router
        .sh_ok(&format!("nft list chain inet {table} relay"))
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let p = w.iter().position(|&x| x == "packets")?;
            w.get(p + 1)?.parse().ok()
        })
        .collect()
}
