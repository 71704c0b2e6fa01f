#!/usr/bin/env bash
# Lints the deployment template offline: cfn-lint, and checkov without downloading anything.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="${IPXE_EDGE_TOOLS:-$HOME/.cache/ipxe-edge-tools}"
"$TOOLS/infra-venv/bin/cfn-lint" infra/template.yaml
echo "cfn-lint: infra/template.yaml clean"
"$TOOLS/infra-venv/bin/checkov" -f infra/template.yaml --framework cloudformation --skip-download --compact --quiet
