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
#   - RSS: every queue in the indirection table, spread evenly (`ethtool -X
#     IFACE equal QUEUES`), and TCP/IPv4 hashed on addresses and ports
#     (`ethtool -N IFACE rx-flow-hash tcp4 sdfn`): turnstile reads the key
#     and table at start and picks active-open ports whose replies hash to
#     the opening shard's queue; passive flows stay on their arrival queue;
#   - ntuple flow steering on where the driver has it (lets operators pin
#     flows to queues; turnstile works without it);
#   - with BUSY_POLL=1 in the environment, for turnstile's --busy-poll-us
#     (busy_poll_us): napi_defer_hard_irqs 2 and gro_flush_timeout 200 us,
#     so interrupts stay off while the shards' own syscalls poll the queues
#     (the pairing the kernel's preferred-busy-polling documentation gives).
# Check (no changes, exit 1 only on blockers):
#   interface exists and is up, has an IPv4 address, queue count, MTU fits
#   one AF_XDP frame (<= 1778), RSS key/table readable (else handoff),
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
  if [ -r "/sys/class/net/$ifc/napi_defer_hard_irqs" ]; then
    info "busy polling: napi_defer_hard_irqs=$(cat "/sys/class/net/$ifc/napi_defer_hard_irqs") gro_flush_timeout=$(cat "/sys/class/net/$ifc/gro_flush_timeout") (BUSY_POLL=1 nic-setup.sh $ifc sets 2 and 200000 for --busy-poll-us)"
  fi
  if [ "$mtu" -gt 1778 ]; then
    warn "MTU $mtu: an AF_XDP frame (2048 bytes less 256 of headroom and 14 of Ethernet) holds at most MTU 1778; turnstile refuses to start (ip link set dev $ifc mtu 1500)"
    blockers=1
  fi
  if ethtool -x "$ifc" >/dev/null 2>&1; then
    local tcp4
    tcp4=$(ethtool -n "$ifc" rx-flow-hash tcp4 2>/dev/null || true)
    if echo "$tcp4" | grep -q 'L4 bytes 0 & 1' && echo "$tcp4" | grep -q 'L4 bytes 2 & 3'; then
      info "RSS: key and indirection table readable, tcp4 hashed with ports: replies of active opens stay on their shard"
    else
      warn "RSS: tcp4 is not hashed on ports: turnstile hands replies off between shards (ethtool -N $ifc rx-flow-hash tcp4 sdfn)"
    fi
  else
    info "RSS: $ifc reports no key/table (veth, some virtual NICs): frames on another shard's queue are handed off; --rss-key/--rss-table state them if known"
  fi
  if ip -d link show dev "$ifc" | grep -qE 'prog/xdp|xdpgeneric|xdpdrv|xdpoffload'; then
    warn "an XDP program is already attached to $ifc: turnstile refuses to start beside it and never detaches it (xdp-loader status $ifc; unload it yourself if it should go)"
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
  if ethtool -x "$ifc" >/dev/null 2>&1; then
    local nq
    nq=$(ls -d /sys/class/net/"$ifc"/queues/rx-* | wc -l)
    ethtool -X "$ifc" equal "$nq" >/dev/null 2>&1 || warn "could not spread the RSS table over $nq queues (ethtool -X $ifc equal $nq)"
    ethtool -N "$ifc" rx-flow-hash tcp4 sdfn >/dev/null 2>&1 || warn "could not hash tcp4 on ports (ethtool -N $ifc rx-flow-hash tcp4 sdfn)"
  fi
  if [ "${BUSY_POLL:-0}" = 1 ]; then
    echo 2 >"/sys/class/net/$ifc/napi_defer_hard_irqs" 2>/dev/null || warn "could not set napi_defer_hard_irqs on $ifc"
    echo 200000 >"/sys/class/net/$ifc/gro_flush_timeout" 2>/dev/null || warn "could not set gro_flush_timeout on $ifc"
    info "busy polling: napi_defer_hard_irqs=2 gro_flush_timeout=200000 on $ifc (run turnstile with --busy-poll-us 50 or busy_poll_us = 50)"
  fi
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
