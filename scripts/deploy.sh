#!/usr/bin/env bash
# Deploys ipxe-edge to AWS: token key in SSM, Lambda build, the SAM stack, the CA and its
# truststore, then the mutual-TLS boot domain. Interactive parts (choosing names, the ACM
# certificate, DNS) are in the README's "Deploy to AWS".
#
# Usage: scripts/deploy.sh --stack NAME --region REGION [--domain boot.example.org
#          --certificate-arn ARN] [--arm64] [--alarm-email ADDR] [--ssm-parameter NAME]
#          [--data DIR] [--dry-run]
# --dry-run prints every AWS call it would make and changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

stack="" region="" domain="" cert_arn="" arch="x86_64" alarm_email="" dry_run=0
ssm_parameter="/ipxe-edge/token-keys" data="./ipxe-edge-data"
while [ $# -gt 0 ]; do
  case "$1" in
    --stack) stack="$2"; shift 2 ;;
    --region) region="$2"; shift 2 ;;
    --domain) domain="$2"; shift 2 ;;
    --certificate-arn) cert_arn="$2"; shift 2 ;;
    --arm64) arch="arm64"; shift ;;
    --alarm-email) alarm_email="$2"; shift 2 ;;
    --ssm-parameter) ssm_parameter="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "deploy: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$stack" ] || { echo "deploy: --stack is required" >&2; exit 2; }
[ -n "$region" ] || { echo "deploy: --region is required" >&2; exit 2; }
if [ -n "$domain" ] && [ -z "$cert_arn" ]; then
  echo "deploy: --domain needs --certificate-arn (an RSA ACM certificate in $region)" >&2; exit 2
fi
case "$stack" in *[!A-Za-z0-9-]*) echo "deploy: invalid stack name $stack" >&2; exit 2 ;; esac

export AWS_REGION="$region"

# Runs a command, or prints it in a dry run. Arguments are printed shell-quoted.
run() {
  if [ "$dry_run" = 1 ]; then
    printf 'would run:'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

# Reads a value from AWS (or a placeholder in a dry run).
query() {
  local placeholder="$1"; shift
  if [ "$dry_run" = 1 ]; then
    { printf 'would run:'; printf ' %q' "$@"; printf '\n'; } >&2
    echo "$placeholder"
  else
    "$@"
  fi
}

sam_params=(ParameterKey=Architecture,ParameterValue="$arch" ParameterKey=TokenKeysParameterName,ParameterValue="$ssm_parameter")
[ -n "$alarm_email" ] && sam_params+=(ParameterKey=AlarmEmail,ParameterValue="$alarm_email")

echo "== 1. token key (SSM SecureString $ssm_parameter)"
if [ "$dry_run" = 1 ]; then
  echo "would run: aws ssm get-parameter --name $ssm_parameter --query Parameter.Name"
  echo "would run: aws ssm put-parameter --name $ssm_parameter --type SecureString --cli-input-json file://<0600 temporary file holding a fresh 32-byte key, not shown>"
elif ! aws ssm get-parameter --name "$ssm_parameter" --query Parameter.Name --output text >/dev/null 2>&1; then
  tmp=$(mktemp); chmod 600 "$tmp"
  key="k1:$(head -c 32 /dev/urandom | basenc --base64url | tr -d '=')"
  printf '{"Name":"%s","Type":"SecureString","Value":"%s"}' "$ssm_parameter" "$key" > "$tmp"
  unset key
  aws ssm put-parameter --cli-input-json "file://$tmp" >/dev/null
  rm -f "$tmp"
  echo "created $ssm_parameter"
else
  echo "$ssm_parameter exists; keeping it"
fi

echo "== 2. build"
run sam build --template infra/template.yaml --beta-features --build-dir .aws-sam/build

echo "== 3. stack (bucket, table, functions, APIs)"
run sam deploy --template-file .aws-sam/build/template.yaml --stack-name "$stack" --region "$region" \
  --resolve-s3 --capabilities CAPABILITY_IAM --no-fail-on-empty-changeset --parameter-overrides "${sam_params[@]}"
bucket=$(query "<BucketName output>" aws cloudformation describe-stacks --stack-name "$stack" --query "Stacks[0].Outputs[?OutputKey=='BucketName'].OutputValue" --output text)

echo "== 4. CA and truststore (s3://$bucket/pki/truststore.pem)"
if [ "$dry_run" = 1 ] || [ ! -f "$data/pki/ca.crt" ]; then
  run cargo run --release -q -p ipxe-edge -- --data "$data" --bucket "$bucket" ca init
else
  run cargo run --release -q -p ipxe-edge -- --data "$data" --bucket "$bucket" ca trust "$data/pki/ca.crt"
fi
version=$(query "<truststore version>" aws s3api head-object --bucket "$bucket" --key pki/truststore.pem --query VersionId --output text)

if [ -n "$domain" ]; then
  echo "== 5. mutual-TLS domain $domain"
  run sam deploy --template-file .aws-sam/build/template.yaml --stack-name "$stack" --region "$region" \
    --resolve-s3 --capabilities CAPABILITY_IAM --no-fail-on-empty-changeset --parameter-overrides "${sam_params[@]}" \
    ParameterKey=BootDomainName,ParameterValue="$domain" ParameterKey=BootCertificateArn,ParameterValue="$cert_arn" \
    ParameterKey=TruststoreVersion,ParameterValue="$version"
  target=$(query "<BootDomainTarget output>" aws cloudformation describe-stacks --stack-name "$stack" --query "Stacks[0].Outputs[?OutputKey=='BootDomainTarget'].OutputValue" --output text)
  echo "next: point a CNAME for $domain at $target, enroll a gateway, then:"
  echo "  curl --cert GW.crt --key GW.key https://$domain/boot.ipxe"
else
  echo "no --domain given: rerun with --domain and --certificate-arn to open the boot endpoint"
fi
