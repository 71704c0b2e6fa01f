#!/usr/bin/env bash
# Lints the deployment template offline: cfn-lint, and checkov without downloading anything.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="${IPXE_EDGE_TOOLS:-$HOME/.cache/ipxe-edge-tools}"
"$TOOLS/infra-venv/bin/cfn-lint" infra/template.yaml
echo "cfn-lint: infra/template.yaml clean"
"$TOOLS/infra-venv/bin/checkov" -f infra/template.yaml --framework cloudformation --skip-download --compact --quiet

# The systemd unit of `serve`: valid, and hardened (exposure score at most 2.0 of 10; the
# threshold is given in tenths).
command -v systemd-analyze >/dev/null || { apt-get update -qq && apt-get install -y -qq systemd >/dev/null; }
unit_dir=$(mktemp -d)
sed 's|/usr/local/bin/ipxe-edge|/bin/true|' infra/ipxe-edge.service >"$unit_dir/ipxe-edge.service"
systemd-analyze verify "$unit_dir/ipxe-edge.service"
systemd-analyze security --offline=true --threshold=20 "$unit_dir/ipxe-edge.service" | tail -n 1
rm -rf "$unit_dir"
echo "systemd unit: infra/ipxe-edge.service verified"
