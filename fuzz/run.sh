#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time, each on a copy of its
# committed corpus (fuzz/corpus/<target>/: the tree stays clean), and fails
# on the first crash, leaving the input in fuzz/artifacts/<target>/ (commit
# it to the corpus once fixed: tests/fuzz_corpus.rs replays the corpora on
# stable in `cargo test`). Part of the README's test command; cargo-fuzz is
# installed by deploy/dev-setup.sh.
#
# Deterministic: libFuzzer runs a fixed number of inputs from a fixed seed
# (FUZZ_SEED, default 1): FUZZ_RUNS (default 2,000,000) for parse_frame and
# tcp_options, FUZZ_ENGINE_RUNS (default 120,000, about 40 s) for the
# engine. A time-bounded run gave the gate a random verdict: one CI-length
# run found an engine crash the next did not (that input is kept in
# fuzz/corpus/engine/ once fixed). FUZZ_SECONDS and
# FUZZ_ENGINE_SECONDS only cap the time (a capped run is a prefix of the
# same sequence). Longer or other-seeded exploration is for a developer:
# FUZZ_SEED=$RANDOM FUZZ_ENGINE_RUNS=10000000 bash fuzz/run.sh.
set -euo pipefail
cd "$(dirname "$0")"
small=${FUZZ_SECONDS:-60}
engine=${FUZZ_ENGINE_SECONDS:-120}
seed=${FUZZ_SEED:-1}
small_runs=${FUZZ_RUNS:-2000000}
engine_runs=${FUZZ_ENGINE_RUNS:-120000}
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
  runs=$small_runs
  if [ "$t" = engine ]; then secs=$engine; runs=$engine_runs; fi
  work=$(mktemp -d)
  cp corpus/"$t"/* "$work"/
  start=$(date +%s)
  if cargo "${toolchain[@]}" fuzz run -a "$t" "$work" -- \
      -seed="$seed" -runs="$runs" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$work.log" 2>&1; then
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
