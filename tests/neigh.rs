//! Next-hop resolution against the real kernel tables of a network
//! namespace: on-link, through a gateway, nobody answering, no route, our own
//! address and a route through another interface. Needs root.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::*;
use turnstile::iface::{Iface, parse_mac};
use turnstile::neigh::{NeighError, NeighborResolver};
use turnstile::topology::Host;

/// Long enough for an ARP round trip over veth, many times over.
const RESOLVE: Duration = Duration::from_secs(2);

/// The MAC of `host`'s veth end, read inside its namespace.
fn mac_of(host: &Host) -> [u8; 6] {
    let text = host
        .sh_ok(&format!("cat /sys/class/net/{}/address", host.dev))
        .expect("read MAC");
    parse_mac(text.trim()).expect("a MAC in sysfs")
}

/// Runs `resolve(dst, timeout)` inside `host`'s namespace. Netlink sockets
/// belong to the namespace of the thread that opens them, so a fresh thread
/// enters the namespace with setns(2) first and lives there until it ends.
fn resolve_in(host: &Host, dst: Ipv4Addr, timeout: Duration) -> Result<[u8; 6], NeighError> {
    let host = host.clone();
    let mac = mac_of(&host);
    std::thread::spawn(move || {
        enter_netns(&host.netns);
        // Built by hand: Iface::lookup reads /sys, which still shows the
        // root namespace's devices to this thread.
        let dev = std::ffi::CString::new(host.dev.clone()).unwrap();
        // SAFETY: if_nametoindex reads a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(dev.as_ptr()) };
        assert_ne!(index, 0, "{} not found in {}", host.dev, host.netns);
        let iface = Iface {
            name: host.dev.clone(),
            index,
            ipv4: host.ip,
            mac,
            rx_queues: 1,
        };
        let mut resolver = NeighborResolver::new(&iface)?;
        resolver.resolve(dst, timeout)
    })
    .join()
    .expect("resolver thread panicked")
}

fn enter_netns(name: &str) {
    turnstile::topology::enter_netns(name).expect("enter the namespace");
}

/// The address `n` on the hosts' /24.
fn on_subnet(host: &Host, n: u8) -> Ipv4Addr {
    let [a, b, c, _] = host.ip.octets();
    Ipv4Addr::new(a, b, c, n)
}

#[test]
fn on_link_neighbour_is_resolved_from_an_empty_table() {
    if !need_root() {
        return;
    }
    let topo = Topology::new(TopologyConfig::default()).expect("topology");
    let (s, c) = (&topo.server, &topo.client);
    s.sh_ok(&format!("ip neigh flush dev {}", s.dev)).unwrap();
    let before = s.sh_ok(&format!("ip -4 neigh show dev {}", s.dev)).unwrap();
    assert_eq!(before.trim(), "", "table not empty after flush");

    let mac = resolve_in(s, c.ip, RESOLVE).expect("resolve the client");
    assert_eq!(mac, mac_of(c));
    // The kernel learnt it too, so the next lookup is a plain read.
    let after = s.sh_ok(&format!("ip -4 neigh show dev {}", s.dev)).unwrap();
    assert!(after.contains(&c.ip.to_string()), "{after}");
    assert_eq!(resolve_in(s, c.ip, RESOLVE).unwrap(), mac_of(c));
}

#[test]
fn gateway_route_resolves_to_the_gateway_mac() {
    if !need_root() {
        return;
    }
    let topo = Topology::new(TopologyConfig::default()).expect("topology");
    let (s, c) = (&topo.server, &topo.client);
    s.sh_ok(&format!("ip route add 198.19.77.0/24 via {}", c.ip))
        .unwrap();
    s.sh_ok(&format!("ip neigh flush dev {}", s.dev)).unwrap();

    let mac = resolve_in(s, Ipv4Addr::new(198, 19, 77, 5), RESOLVE).expect("resolve");
    assert_eq!(mac, mac_of(c));
}

#[test]
fn silent_address_is_unresolved_within_the_timeout() {
    if !need_root() {
        return;
    }
    let topo = Topology::new(TopologyConfig::default()).expect("topology");
    let s = &topo.server;
    let silent = on_subnet(s, 99);

    let start = Instant::now();
    let err = resolve_in(s, silent, Duration::from_millis(300)).unwrap_err();
    let took = start.elapsed();
    assert!(
        matches!(&err, NeighError::Unresolved { ip, iface } if *ip == silent && *iface == s.dev),
        "{err:?}"
    );
    assert!(err.to_string().contains("ip neigh show"), "{err}");
    // 300 ms of polling, plus the thread and two `ip` commands around it.
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[test]
fn destination_without_route_is_no_route() {
    if !need_root() {
        return;
    }
    let topo = Topology::new(TopologyConfig::default()).expect("topology");
    let s = &topo.server;
    let routes = s.sh_ok("ip -4 route show default").unwrap();
    assert_eq!(routes.trim(), "", "the namespace has a default route");

    let far = Ipv4Addr::new(203, 0, 113, 1);
    let err = resolve_in(s, far, RESOLVE).unwrap_err();
    assert!(
        matches!(err, NeighError::NoRoute(ip) if ip == far),
        "{err:?}"
    );
}

#[test]
fn own_and_loopback_addresses_are_refused() {
    if !need_root() {
        return;
    }
    let topo = Topology::new(TopologyConfig::default()).expect("topology");
    let s = &topo.server;
    for ip in [s.ip, Ipv4Addr::LOCALHOST] {
        let err = resolve_in(s, ip, RESOLVE).unwrap_err();
        assert!(
            matches!(err, NeighError::Local(got) if got == ip),
            "{err:?}"
        );
    }
}

#[test]
fn route_through_another_interface_is_refused() {
    if !need_root() {
        return;
    }
    let topo = Topology::new(TopologyConfig::default()).expect("topology");
    let s = &topo.server;
    // A second interface inside the server namespace only, with its own
    // subnet; names are per namespace, so these cannot collide.
    s.sh_ok(
        "ip link add other0 type veth peer name other1 && \
         ip addr add 198.19.88.1/24 dev other0 && \
         ip link set other0 up && ip link set other1 up",
    )
    .unwrap();

    let err = resolve_in(s, Ipv4Addr::new(198, 19, 88, 7), RESOLVE).unwrap_err();
    assert!(
        matches!(&err, NeighError::WrongInterface { via, iface, .. }
            if via == "other0" && *iface == s.dev),
        "{err:?}"
    );
}
