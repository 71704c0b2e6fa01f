#!/usr/bin/env bash
# Checks scripts/deploy.sh --dry-run: it names every AWS call, changes nothing and never prints
# the token key.
set -uo pipefail
cd "$(dirname "$0")/.."
passed=0 failed=0
check() {
  if printf '%s' "$out" | grep -qE -- "$2"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL: $1"; fi
}
out=$(scripts/deploy.sh --dry-run --stack ipxe-edge-ci --region eu-west-1 --domain boot.example.org \
  --certificate-arn arn:aws:acm:eu-west-1:123456789012:certificate/abc --data /nonexistent 2>&1)
status=$?
[ $status -eq 0 ] && passed=$((passed + 1)) || { failed=$((failed + 1)); echo "FAIL: dry run exited $status"; }
check "reads the SSM parameter" "would run: aws ssm get-parameter --name /ipxe-edge/token-keys"
check "creates the key without showing it" "put-parameter .*SecureString.*not shown"
check "builds with SAM" "would run: sam build --template infra/template.yaml"
check "deploys the stack" "would run: sam deploy .*--stack-name ipxe-edge-ci .*CAPABILITY_IAM"
check "creates the CA against the bucket" "ca init"
check "reads the truststore version" "head-object --bucket .*--key pki/truststore.pem"
check "deploys the mTLS domain" "BootDomainName.{0,2}ParameterValue=boot.example.org"
check "passes the truststore version" "TruststoreVersion.{0,2}ParameterValue="
check "prints the check" "curl --cert"
if printf '%s' "$out" | grep -qE 'k1:[A-Za-z0-9_-]{20,}'; then failed=$((failed + 1)); echo "FAIL: a key was printed"; else passed=$((passed + 1)); fi
scripts/deploy.sh --dry-run --region eu-west-1 >/dev/null 2>&1 && { failed=$((failed + 1)); echo "FAIL: missing --stack accepted"; } || passed=$((passed + 1))
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
