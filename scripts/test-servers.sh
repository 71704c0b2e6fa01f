#!/usr/bin/env bash
# Starts (or stops) the protocol servers the integration tests talk to, on free loopback ports:
#   s3s-fs  - S3-compatible, verifies SigV4 signatures and presigned URL expiry
#   moto    - DynamoDB-compatible, with conditional writes and TTL
# Usage: scripts/test-servers.sh start STATE_DIR   (writes STATE_DIR/env to source)
#        scripts/test-servers.sh stop STATE_DIR
set -euo pipefail

TOOLS="${IPXE_EDGE_TOOLS:-$HOME/.cache/ipxe-edge-tools}"
cmd="${1:?usage: test-servers.sh start|stop STATE_DIR}"
state="${2:?usage: test-servers.sh start|stop STATE_DIR}"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_http() {
  local url="$1" name="$2"
  for _ in $(seq 1 100); do
    if curl -s -o /dev/null "$url"; then return 0; fi
    sleep 0.1
  done
  echo "test-servers: $name did not start; its log:" >&2
  cat "$state/$name.log" >&2 || true
  return 1
}

case "$cmd" in
  start)
    mkdir -p "$state/s3-root"
    access_key="ipxeedgetest"
    secret_key="ipxeedgetestsecret$RANDOM$RANDOM"
    s3_port=$(free_port)
    "$TOOLS/bin/s3s-fs" --host 127.0.0.1 --port "$s3_port" --access-key "$access_key" --secret-key "$secret_key" \
      "$state/s3-root" >"$state/s3s-fs.log" 2>&1 &
    echo $! >"$state/s3s-fs.pid"
    ddb_port=$(free_port)
    AWS_ACCESS_KEY_ID="$access_key" AWS_SECRET_ACCESS_KEY="$secret_key" \
      "$TOOLS/venv/bin/moto_server" -H 127.0.0.1 -p "$ddb_port" >"$state/moto.log" 2>&1 &
    echo $! >"$state/moto.pid"
    wait_http "http://127.0.0.1:$s3_port/" s3s-fs
    wait_http "http://127.0.0.1:$ddb_port/" moto
    cat >"$state/env" <<ENV
export IPXE_EDGE_TEST_S3_ENDPOINT=http://127.0.0.1:$s3_port
export IPXE_EDGE_TEST_DYNAMODB_ENDPOINT=http://127.0.0.1:$ddb_port
export IPXE_EDGE_TEST_ACCESS_KEY=$access_key
export IPXE_EDGE_TEST_SECRET_KEY=$secret_key
ENV
    echo "test servers: s3s-fs on 127.0.0.1:$s3_port, moto (DynamoDB) on 127.0.0.1:$ddb_port"
    ;;
  stop)
    for name in s3s-fs moto; do
      if [ -f "$state/$name.pid" ]; then
        kill "$(cat "$state/$name.pid")" 2>/dev/null || true
        rm -f "$state/$name.pid"
      fi
    done
    ;;
  *)
    echo "usage: test-servers.sh start|stop STATE_DIR" >&2
    exit 2
    ;;
esac
