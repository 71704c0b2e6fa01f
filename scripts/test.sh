#!/usr/bin/env bash
# The full test suite: installs the pinned test servers if needed, builds the Lambda zips,
# starts the servers on loopback, runs every test of the workspace (the shipped zips included) (server-backed ones included: here a missing server fails
# instead of skipping), checks that the Lambda functions link nothing they do not run, lints the
# deployment template, checks and unit-tests the alert rules and dashboard (promtool), checks the
# deploy script's dry run, boots real iPXE clients in QEMU
# (x86_64 and arm64, with and without Secure Boot),
# and stops the servers whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
scripts/build-lambda.sh
export IPXE_EDGE_LAMBDA_DIR="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/lambda"
state=$(mktemp -d "${TMPDIR:-/tmp}/ipxe-edge-test.XXXXXX")
trap 'scripts/test-servers.sh stop "$state"; rm -rf "$state"' EXIT
scripts/test-servers.sh start "$state"
# shellcheck disable=SC1091
. "$state/env"
# Every test's temporary files go under the state folder, removed on exit with the servers.
export TMPDIR="$state/tmp"
mkdir -p "$TMPDIR"
export IPXE_EDGE_REQUIRE_TEST_SERVERS=1
cargo test --workspace --locked "$@"
scripts/check-function-deps.sh
scripts/lint-infra.sh
scripts/check-monitoring.sh
scripts/test-deploy.sh
# Both iPXE generations gateways run, Debian trixie's 1.21.1 and forky's 2.0.0, side by side with
# the platform suite (arm64 gateways, Secure Boot): each QEMU emulates on one core, and each
# suite has a network namespace of its own.
tests/qemu/setup.sh >/dev/null
cargo build -q -p ipxe-edge
declare -A qemu_pid
suites=(1.21.1 2.0.0 platforms)
for suite in "${suites[@]}"; do
  if [ "$suite" = platforms ]; then
    tests/qemu/platform-test.sh >"$state/qemu-$suite.log" 2>&1 &
  else
    IPXE_VERSION=$suite tests/qemu/boot-test.sh >"$state/qemu-$suite.log" 2>&1 &
  fi
  qemu_pid[$suite]=$!
done
qemu_failed=0
for suite in "${suites[@]}"; do
  wait "${qemu_pid[$suite]}" || qemu_failed=1
  echo "== QEMU suite: $suite"
  cat "$state/qemu-$suite.log"
done
[ "$qemu_failed" -eq 0 ]
