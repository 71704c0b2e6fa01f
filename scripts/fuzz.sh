#!/usr/bin/env bash
# Runs a fuzz target (or all of them) for a number of seconds and prints how many inputs it
# executed without a crash.
# Usage: scripts/fuzz.sh TARGET|all SECONDS
#   targets: cert_chain token render boot_query valve_template serve_front s3_location pe_signature
# Seeds live in fuzz/seeds/TARGET (committed); the growing corpus in fuzz/corpus/TARGET (not).
# A crash stops the run, leaves the input in fuzz/artifacts/TARGET and exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="${IPXE_EDGE_TOOLS:-$HOME/.cache/ipxe-edge-tools}"
export PATH="$TOOLS/bin:$PATH"
FUZZ_TARGET_DIR="${IPXE_EDGE_FUZZ_TARGET_DIR:-$HOME/.cache/ipxe-edge-fuzz-target}"
TARGETS=(cert_chain token render boot_query valve_template serve_front s3_location pe_signature)

target="${1:?usage: scripts/fuzz.sh TARGET|all SECONDS}"
seconds="${2:?usage: scripts/fuzz.sh TARGET|all SECONDS}"
if [ "$target" = all ]; then
  selected=("${TARGETS[@]}")
else
  selected=("$target")
fi

cd fuzz
# Sanitizers off: the code under test is safe Rust; panics and failed oracles are what we hunt,
# and uninstrumented memory runs several times more inputs per second.
build_target=()
[ "$target" = all ] || build_target=("$target")
cargo +nightly fuzz build --sanitizer none --target-dir "$FUZZ_TARGET_DIR" "${build_target[@]}"
for t in "${selected[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log=$(mktemp)
  if ! cargo +nightly fuzz run --sanitizer none --target-dir "$FUZZ_TARGET_DIR" "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"$log" 2>&1; then
    grep -E "panicked|Failing input|crash-|ERROR" "$log" >&2 || true
    tail -n 20 "$log" >&2
    echo "fuzz: $t crashed; the input is in fuzz/artifacts/$t/" >&2
    rm -f "$log"
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1)
  echo "fuzz: $t: ${runs:-?} executions in ${seconds} s, no crash"
  rm -f "$log"
done
