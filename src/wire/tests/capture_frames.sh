#!/bin/bash
# Capture a real Linux TCP exchange on a veth pair between two netns.
set -u
WORK=${WORK:-/tmp/tswire-capture}; mkdir -p "$WORK"
# Prints the pcap as text; the hex constants in captured.rs came from it.
A=tswire-cli; B=tswire-srv
cleanup() {
  [ -n "${SRV:-}" ] && kill $SRV 2>/dev/null
  [ -n "${TD:-}" ] && kill $TD 2>/dev/null
  ip netns del $A 2>/dev/null; ip netns del $B 2>/dev/null
}
trap cleanup EXIT
ip netns add $A && ip netns add $B || exit 1
ip link add tsw-cli0 netns $A type veth peer name tsw-srv0 netns $B || exit 1
ip -n $A addr add 198.18.77.1/24 dev tsw-cli0
ip -n $B addr add 198.18.77.2/24 dev tsw-srv0
ip -n $A link set tsw-cli0 up; ip -n $A link set lo up
ip -n $B link set tsw-srv0 up; ip -n $B link set lo up
# tx checksum offload off: frames on the wire carry full checksums.
ip netns exec $A ethtool -K tsw-cli0 tx off >/dev/null
ip netns exec $B ethtool -K tsw-srv0 tx off >/dev/null
mkdir -p ${WORK:-/tmp/tswire-capture}/www && echo "hello from turnstile capture" > ${WORK:-/tmp/tswire-capture}/www/index.html
ip netns exec $B python3 -m http.server 8080 --bind 198.18.77.2 --directory ${WORK:-/tmp/tswire-capture}/www >${WORK:-/tmp/tswire-capture}/srv.log 2>&1 &
SRV=$!
ip netns exec $B tcpdump -i tsw-srv0 -U -w ${WORK:-/tmp/tswire-capture}/http.pcap tcp >${WORK:-/tmp/tswire-capture}/td.log 2>&1 &
TD=$!
sleep 1.5
ip netns exec $A curl -s http://198.18.77.2:8080/index.html
# A RST: connect to a closed port.
ip netns exec $A curl -s --max-time 1 http://198.18.77.2:8081/ ; echo "rc=$?"
sleep 1
kill $TD; wait $TD 2>/dev/null; TD=
tcpdump -r "$WORK/http.pcap" -nn -v -xx
uname -r; ip netns exec $A sysctl net.ipv4.tcp_timestamps net.ipv4.tcp_sack net.ipv4.tcp_window_scaling
