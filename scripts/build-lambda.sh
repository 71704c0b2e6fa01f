#!/usr/bin/env bash
# Builds the boot and redeem functions as Lambda zips (provided.al2023, x86_64 by default) and
# checks that the binaries need no glibc newer than Amazon Linux 2023's.
# Usage: scripts/build-lambda.sh [--arm64]   (arm64 needs: rustup target add aarch64-unknown-linux-gnu)
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="${IPXE_EDGE_TOOLS:-$HOME/.cache/ipxe-edge-tools}"
MAX_GLIBC="2.34"
# Cold starts grow with the zip: keep each at or under 6 MiB.
MAX_ZIP_BYTES=$((6 * 1024 * 1024))
export PATH="$TOOLS/venv/bin:$PATH"

cargo lambda build --release --output-format zip -p boot -p redeem "$@"

target="${CARGO_TARGET_DIR:-target}"
status=0
for fn in boot redeem; do
  zip="$target/lambda/$fn/bootstrap.zip"
  dir=$(mktemp -d)
  unzip -q -o "$zip" -d "$dir"
  need=$(objdump -T "$dir/bootstrap" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n 1)
  size=$(stat -c %s "$zip")
  if [ "$(printf '%s\n%s\n' "$need" "$MAX_GLIBC" | sort -V | tail -n 1)" != "$MAX_GLIBC" ]; then
    echo "lambda: $fn needs glibc $need, newer than Amazon Linux 2023's $MAX_GLIBC" >&2
    status=1
  fi
  if [ "$size" -gt "$MAX_ZIP_BYTES" ]; then
    echo "lambda: $fn zip is $size bytes, over the $MAX_ZIP_BYTES-byte budget" >&2
    status=1
  fi
  printf 'lambda: %-7s %s  %7d bytes zipped, %8d bytes unzipped, needs glibc %s (max %s)\n' \
    "$fn" "$zip" "$size" "$(stat -c %s "$dir/bootstrap")" "$need" "$MAX_GLIBC"
  rm -rf "$dir"
done
exit $status
