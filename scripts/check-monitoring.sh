#!/usr/bin/env bash
# The monitoring that ships in infra/monitoring/: Prometheus's own checker and unit tests for the
# alert rules (promtool, from Debian's prometheus package), and every query of the Grafana
# dashboard parsed by the same PromQL parser (as recording rules of a scratch rule file). That
# every metric they name is one `serve` exposes is a unit test of serve's metrics.
set -euo pipefail
cd "$(dirname "$0")/../infra/monitoring"
command -v promtool >/dev/null || { echo "promtool is needed (apt-get install prometheus)" >&2; exit 1; }
promtool check rules ipxe-edge.rules.yml
promtool test rules ipxe-edge.rules.test.yml
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
python3 - grafana-dashboard.json "$scratch/dashboard-queries.yml" <<'PY'
import json, sys
dash = json.load(open(sys.argv[1]))
rules = []
for panel in dash["panels"]:
    targets = panel.get("targets") or sys.exit(f"panel {panel['title']!r} has no query")
    for t in targets:
        expr = t["expr"].replace("$__rate_interval", "5m").replace('"$instance"', '".*"')
        rules.append({"record": f"dashboard:panel{panel['id']}:{t['refId']}", "expr": expr})
ids = [p["id"] for p in dash["panels"]]
if len(ids) != len(set(ids)):
    sys.exit("panel ids repeat")
json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"))
print(f"grafana-dashboard.json: {len(rules)} queries in {len(ids)} panels")
PY
promtool check rules "$scratch/dashboard-queries.yml" >/dev/null
echo "monitoring: rules checked and tested, dashboard queries parse"
