#!/usr/bin/env bash
# Instruction counts (callgrind) for one whole short connection and for 1 MiB
# moved between two engines, frames built and parsed as a shard does.
# Deterministic on a given build: judge engine changes by these, not by timings.
# Usage: bash bench/callgrind.sh [CONNECTIONS]   (needs valgrind: apt-get install valgrind)
# CALLGRIND_BIN=path measures an already built example (e.g. a copy of an older build).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000}
bin=${CALLGRIND_BIN:-target/release/examples/callgrind}
[ -n "${CALLGRIND_BIN:-}" ] || cargo build --release --example callgrind >&2
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
count() { # mode args... -> total Ir inside measured_*
    valgrind --tool=callgrind --callgrind-out-file="$out/cg" --toggle-collect='*measured_*' \
        "$bin" "$@" >/dev/null 2>"$out/log"
    awk '/^summary:/ {print $2}' "$out/cg"
}
short=$(count short "$n")
bulk=$(count bulk)
printf 'instructions per short connection (both engines, frames built+parsed): %d\n' $((short / n))
printf 'instructions per MiB moved between two engines:                       %d\n' "$bulk"
