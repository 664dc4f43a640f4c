#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time, each on a copy of its
# committed corpus (fuzz/corpus/<target>/: the tree stays clean), and fails
# on the first crash, leaving the input in fuzz/artifacts/<target>/ (commit
# it to the corpus once fixed: tests/fuzz_corpus.rs replays the corpora on
# stable in `cargo test`). Part of the README's test command; cargo-fuzz is
# installed by deploy/dev-setup.sh.
#
# Time: FUZZ_SECONDS (default 15) for parse_frame and tcp_options, which
# exhaust their coverage in seconds, and FUZZ_ENGINE_SECONDS (default 50)
# for the engine; plus the build (about 1-2 minutes from scratch).
set -euo pipefail
cd "$(dirname "$0")"
small=${FUZZ_SECONDS:-15}
engine=${FUZZ_ENGINE_SECONDS:-50}
command -v cargo-fuzz >/dev/null || { echo "fuzz: cargo-fuzz not found (bash deploy/dev-setup.sh installs it)" >&2; exit 1; }
# libFuzzer's instrumentation needs unstable rustc flags: nightly when the
# machine has it, else the stable toolchain with RUSTC_BOOTSTRAP=1.
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
  toolchain=()
fi
cargo "${toolchain[@]}" fuzz build -a
passed=0
failed=0
for t in parse_frame tcp_options engine; do
  secs=$small
  [ "$t" = engine ] && secs=$engine
  work=$(mktemp -d)
  cp corpus/"$t"/* "$work"/
  start=$(date +%s)
  if cargo "${toolchain[@]}" fuzz run -a "$t" "$work" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$work.log" 2>&1; then
    passed=$((passed + 1))
    echo "fuzz: $t: no crash in $(( $(date +%s) - start )) s, $(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work.log" | grep -o '[0-9]*$') runs"
  else
    failed=$((failed + 1))
    tail -n 60 "$work.log"
    echo "fuzz: $t: CRASH (input in fuzz/artifacts/$t/)"
  fi
  rm -rf "$work" "$work.log"
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
