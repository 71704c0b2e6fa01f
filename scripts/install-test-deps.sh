#!/usr/bin/env bash
# Installs the pinned protocol servers and build tools the test suite drives:
#   - s3s-fs (S3-compatible server that verifies SigV4 presigned URLs and expiry)
#   - moto[server] (DynamoDB-compatible server with conditional writes and TTL)
#   - cargo-lambda + ziglang (Lambda packaging)
#   - cfn-lint + checkov (template linters)
#   - cargo-deny (licences, bans, sources) and cargo-fuzz (fuzz targets, nightly)
#   - mdbook (the book under docs/; without its live-reload server)
# Everything lands under $IPXE_EDGE_TOOLS (default ~/.cache/ipxe-edge-tools) and is
# reused on the next run when the pinned version is already there.
set -euo pipefail

TOOLS="${IPXE_EDGE_TOOLS:-$HOME/.cache/ipxe-edge-tools}"
S3S_FS_VERSION=0.14.1
MOTO_VERSION=5.2.5
CARGO_LAMBDA_VERSION=1.9.2
ZIGLANG_VERSION=0.13.0.post1
CFN_LINT_VERSION=1.58.0
CHECKOV_VERSION=3.3.30
CARGO_DENY_VERSION=0.20.2
CARGO_FUZZ_VERSION=0.13.2
MDBOOK_VERSION=0.4.52

mkdir -p "$TOOLS"

# The tools run for seconds per CI run: build them at opt-level 1 without LTO, which takes a
# fraction of a fully optimised build's time on a cold machine.
export CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_LTO=false \
  CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_DEBUG=false

if [ ! -x "$TOOLS/bin/s3s-fs" ] || [ "$(cat "$TOOLS/.s3s-fs-version" 2>/dev/null)" != "$S3S_FS_VERSION" ]; then
  echo "installing s3s-fs $S3S_FS_VERSION"
  cargo install "s3s-fs@$S3S_FS_VERSION" --features binary --locked --root "$TOOLS" --quiet
  echo "$S3S_FS_VERSION" > "$TOOLS/.s3s-fs-version"
fi

if [ ! -x "$TOOLS/bin/mdbook" ] || [ "$(cat "$TOOLS/.mdbook-version" 2>/dev/null)" != "$MDBOOK_VERSION" ]; then
  echo "installing mdbook $MDBOOK_VERSION"
  cargo install "mdbook@$MDBOOK_VERSION" --no-default-features --locked --root "$TOOLS" --quiet
  echo "$MDBOOK_VERSION" > "$TOOLS/.mdbook-version"
fi

for tool in cargo-deny cargo-fuzz; do
  version_var="$(echo "$tool" | tr 'a-z-' 'A-Z_')_VERSION"
  version="${!version_var}"
  if [ ! -x "$TOOLS/bin/$tool" ] || [ "$(cat "$TOOLS/.$tool-version" 2>/dev/null)" != "$version" ]; then
    echo "installing $tool $version"
    cargo install "$tool@$version" --locked --root "$TOOLS" --quiet
    echo "$version" > "$TOOLS/.$tool-version"
  fi
done

want_py="moto[server]==$MOTO_VERSION cargo-lambda==$CARGO_LAMBDA_VERSION ziglang==$ZIGLANG_VERSION"
if [ ! -x "$TOOLS/venv/bin/python" ]; then
  python3 -m venv "$TOOLS/venv"
fi
if [ "$(cat "$TOOLS/.venv-spec" 2>/dev/null)" != "$want_py" ]; then
  echo "installing $want_py"
  "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check $want_py
  echo "$want_py" > "$TOOLS/.venv-spec"
fi

# Template linters live in their own venv: checkov pins many libraries of its own.
want_infra="cfn-lint==$CFN_LINT_VERSION checkov==$CHECKOV_VERSION"
if [ ! -x "$TOOLS/infra-venv/bin/python" ]; then
  python3 -m venv "$TOOLS/infra-venv"
fi
if [ "$(cat "$TOOLS/.infra-venv-spec" 2>/dev/null)" != "$want_infra" ]; then
  echo "installing $want_infra"
  "$TOOLS/infra-venv/bin/pip" install --quiet --disable-pip-version-check $want_infra
  echo "$want_infra" > "$TOOLS/.infra-venv-spec"
fi

# openssl for the v1-certificate tests; pebble (the ACME test CA, with pebble-challtestsrv as
# its DNS) for the ACME tests; mtools for the renewal installer's tests on a FAT image; sbsigntool
# to sign the PE images of the kernel-signature tests.
debs=()
command -v openssl >/dev/null 2>&1 || debs+=(openssl)
command -v mmove >/dev/null 2>&1 || debs+=(mtools)
command -v pebble-challtestsrv >/dev/null 2>&1 || debs+=(pebble)
command -v sbsign >/dev/null 2>&1 || debs+=(sbsigntool)
# promtool (Prometheus's rule checker and rule unit tests) for scripts/check-monitoring.sh.
command -v promtool >/dev/null 2>&1 || debs+=(prometheus)
if [ ${#debs[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${debs[@]}" >/dev/null
fi
echo "test tools ready in $TOOLS"
