#!/usr/bin/env bash
# The Lambda functions ship only what they run: neither the embedded S3 endpoint (s3s,
# s3s-fs), nor certificate issuance (rcgen, ipxe-edge-pki, its openssl helper), nor the CLI's
# crates may be linked into the boot or redeem binaries.
set -euo pipefail
cd "$(dirname "$0")/.."

forbidden='^(s3s|s3s-fs|rcgen|ipxe-edge-pki|ipxe-edge|clap|indicatif|gpt|fatfs) '
status=0
for fn in boot redeem; do
  deps=$(cargo tree --locked -p "$fn" -e normal,build --prefix none --no-dedupe | sort -u)
  found=$(grep -E "$forbidden" <<<"$deps" || true)
  if [ -n "$found" ]; then
    echo "function-deps: $fn links crates it must not ship:" >&2
    echo "$found" >&2
    status=1
  else
    echo "function-deps: $fn: $(wc -l <<<"$deps") crates, none of s3s, s3s-fs, rcgen, ipxe-edge-pki, CLI crates"
  fi
done
exit $status
