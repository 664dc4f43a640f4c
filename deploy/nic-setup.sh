#!/usr/bin/env bash
# Prepares a NIC for turnstile, or checks it.
#
#   nic-setup.sh IFACE [QUEUES]    configure: queues, offloads, then check
#   nic-setup.sh --check CONFIG    check only, for the interface named in a
#                                  turnstile configuration file
#
# Configure (as root):
#   - receive queues: one turnstile shard per queue; `ethtool -L` sets
#     combined (or rx) channels to QUEUES (default: leave as is);
#   - offloads: GRO and LRO off (XDP sees frames before the kernel would
#     merge them, native XDP refuses LRO, and generic XDP would see merged
#     super-frames); VLAN stripping left alone; rx checksum offload left on
#     (turnstile verifies every checksum itself; the NIC's verdict is
#     unused); on veth, tx checksum offload off, since kernel peers on the
#     same host would otherwise send partial checksums;
#   - ntuple flow steering on where the driver has it (lets operators pin
#     flows to queues; turnstile's port partitioning works without it).
# Check (no changes, exit 1 only on blockers):
#   interface exists and is up, has an IPv4 address, queue count, MTU fits
#   native XDP, whether the driver has native XDP and AF_XDP zero-copy, a
#   program already attached, kernel version, locked-memory limit.
set -euo pipefail

warn() { echo "nic-setup: warning: $*" >&2; }
info() { echo "nic-setup: $*" >&2; }
die() { echo "nic-setup: error: $*" >&2; exit 1; }

# Drivers with native XDP (in-tree, kernel 6.1) and, of those, AF_XDP zero-copy.
NATIVE="i40e ice ixgbe ixgbevf igb igc mlx4_en mlx5_core bnxt_en nfp qede ena virtio_net veth tun thunder_nicvf sfc stmmac dpaa2-eth mvneta mvpp2 enetc fec netsec lan966x_switch tsnep"
ZEROCOPY="i40e ice ixgbe igc igb mlx5_core stmmac enetc dpaa2-eth tsnep"

has_word() { case " $2 " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

check() {
  local ifc=$1 blockers=0
  [ -e "/sys/class/net/$ifc" ] || die "interface $ifc not found (ip link show)"
  local state driver mtu queues
  state=$(cat "/sys/class/net/$ifc/operstate" 2>/dev/null || echo unknown)
  [ "$state" = up ] || [ "$state" = unknown ] || warn "$ifc is $state"
  ip -4 -o addr show dev "$ifc" | grep -q inet || { warn "$ifc has no IPv4 address: turnstile serves the interface's own address"; blockers=1; }
  driver=$(ethtool -i "$ifc" 2>/dev/null | sed -n 's/^driver: //p')
  driver=${driver:-unknown}
  mtu=$(cat "/sys/class/net/$ifc/mtu")
  queues=$(ls -d /sys/class/net/"$ifc"/queues/rx-* 2>/dev/null | wc -l)
  info "$ifc: driver=$driver mtu=$mtu rx_queues=$queues state=$state"
  if has_word "$driver" "$NATIVE"; then
    info "native XDP: supported by $driver (xdp_mode = \"auto\" or \"native\")"
  else
    warn "native XDP: $driver not known to have it; turnstile falls back to generic XDP (slower, copies every frame)"
  fi
  if has_word "$driver" "$ZEROCOPY"; then
    info "AF_XDP zero-copy: supported by $driver"
  else
    info "AF_XDP zero-copy: not with $driver (copy mode works, costs one copy per frame)"
  fi
  if [ "$mtu" -gt 3498 ]; then
    warn "MTU $mtu: most drivers allow native XDP only up to about 3498 bytes (one page per frame)"
  fi
  if ip -d link show dev "$ifc" | grep -qE 'prog/xdp|xdpgeneric|xdpdrv|xdpoffload'; then
    warn "an XDP program is already attached to $ifc: turnstile will fail to attach (detach it: ip link set dev $ifc xdp off)"
    blockers=1
  fi
  if command -v ethtool >/dev/null; then
    local k
    k=$(ethtool -k "$ifc" 2>/dev/null || true)
    echo "$k" | grep -q '^generic-receive-offload: on' && warn "GRO is on: run nic-setup.sh $ifc to turn it off"
    echo "$k" | grep -q '^large-receive-offload: on' && warn "LRO is on: native XDP refuses it"
  fi
  local major minor
  IFS=. read -r major minor _ <<<"$(uname -r)"
  if [ "$major" -lt 5 ] || { [ "$major" -eq 5 ] && [ "$minor" -lt 8 ]; }; then
    warn "kernel $(uname -r): before 5.8 there is no CAP_BPF; run with CAP_SYS_ADMIN"
  fi
  local memlock
  memlock=$(ulimit -l)
  if [ "$memlock" != unlimited ] && [ "$memlock" -lt 65536 ]; then
    warn "locked-memory limit ${memlock} KiB: the UMEM needs more (LimitMEMLOCK=infinity, or CAP_IPC_LOCK)"
  fi
  return $blockers
}

configure() {
  local ifc=$1 want=${2:-}
  [ "$(id -u)" -eq 0 ] || die "configuring needs root (or use --check)"
  [ -e "/sys/class/net/$ifc" ] || die "interface $ifc not found (ip link show)"
  if [ -n "$want" ]; then
    local max_comb max_rx
    max_comb=$(ethtool -l "$ifc" 2>/dev/null | awk '/^Pre-set maximums/{p=1} p && /^Combined:/{print $2; exit}')
    max_rx=$(ethtool -l "$ifc" 2>/dev/null | awk '/^Pre-set maximums/{p=1} p && /^RX:/{print $2; exit}')
    if [ -n "$max_comb" ] && [ "$max_comb" != "n/a" ] && [ "$max_comb" -gt 0 ]; then
      [ "$want" -le "$max_comb" ] || die "$ifc has at most $max_comb combined channels, asked $want"
      ethtool -L "$ifc" combined "$want" 2>/dev/null || warn "ethtool -L $ifc combined $want failed"
    elif [ -n "$max_rx" ] && [ "$max_rx" != "n/a" ] && [ "$max_rx" -gt 0 ]; then
      [ "$want" -le "$max_rx" ] || die "$ifc has at most $max_rx rx channels, asked $want"
      ethtool -L "$ifc" rx "$want" 2>/dev/null || warn "ethtool -L $ifc rx $want failed"
    else
      warn "$ifc does not report channels (ethtool -l); queues stay as they are"
    fi
    info "queues: $(ls -d /sys/class/net/"$ifc"/queues/rx-* | wc -l) receive queues on $ifc"
  fi
  ethtool -K "$ifc" gro off >/dev/null 2>&1 || warn "could not turn GRO off on $ifc"
  ethtool -K "$ifc" lro off >/dev/null 2>&1 || true
  ethtool -K "$ifc" ntuple on >/dev/null 2>&1 || info "ntuple flow steering not available on $ifc (not required)"
  local driver
  driver=$(ethtool -i "$ifc" 2>/dev/null | sed -n 's/^driver: //p')
  if [ "$driver" = veth ]; then
    ethtool -K "$ifc" tx off tso off gso off >/dev/null 2>&1 || warn "could not turn tx offloads off on veth $ifc"
  fi
  check "$ifc"
}

case "${1:-}" in
  -h|--help|"")
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  --check)
    [ -n "${2:-}" ] || die "--check needs a configuration file"
    [ -r "$2" ] || die "cannot read $2"
    ifc=$(sed -n 's/^[[:space:]]*interface[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$2" | head -1)
    [ -n "$ifc" ] || die "$2 names no interface"
    check "$ifc"
    ;;
  *)
    configure "$1" "${2:-}"
    ;;
esac
