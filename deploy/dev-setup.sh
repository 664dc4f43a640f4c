#!/usr/bin/env bash
# Installs what building and testing turnstile needs on Debian 12 (run as root),
# and mounts bpffs. Idempotent: a second run only checks.
set -euo pipefail

pkgs=(clang llvm m4 libelf-dev zlib1g-dev pkg-config libbpf-dev linux-libc-dev make
      iproute2 ethtool nftables iputils-ping tcpdump curl python3 nginx-light libnginx-mod-stream haproxy
      procps util-linux fonts-dejavu-core valgrind xdp-tools bird2 dnsmasq)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "dev-setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts the services it installs; the tests run their own.
  systemctl disable --now nginx haproxy bird dnsmasq >/dev/null 2>&1 || true
  pkill -x nginx 2>/dev/null || true
  pkill -x haproxy 2>/dev/null || true
fi
if ! mount | grep -q ' /sys/fs/bpf '; then
  mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true
fi
command -v cargo >/dev/null || { echo "dev-setup: cargo not found: install Rust (rustup) first" >&2; exit 1; }
# The fuzz step of the test command (fuzz/run.sh). --locked: the versions
# its release was tested with (about 80 s to build on two loaded cores).
command -v cargo-fuzz >/dev/null || cargo install --locked --quiet cargo-fuzz@0.13.2
