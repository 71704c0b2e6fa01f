# Shared by the QEMU suites (boot-test.sh, platform-test.sh); sourced, never run, from the
# repository's root. Each suite sets CACHE and BIN, and names what its result lines carry in
# SUITE_LABEL.
# shellcheck shell=bash

# Run first: outside a network namespace of its own, prepares the QEMU cache and the binary
# and runs the suite again inside one, where every listener (serve, the script server, an SNTP
# responder on iPXE's fixed port 123) is on that namespace's loopback only.
enter_own_netns() { # suite script, its arguments
  if [ -z "${IPXE_EDGE_QEMU_NETNS:-}" ]; then
    tests/qemu/setup.sh >/dev/null
    cargo build -q -p ipxe-edge
    exec unshare --map-root-user --net env IPXE_EDGE_QEMU_NETNS=1 "$PWD/$1" "${@:2}"
  fi
  ip link set lo up
}

# The suite's work folder, $work, and its removal (with every background job) on exit; kept
# and named when KEEP_WORK is set.
make_work() { # name prefix
  work=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  trap cleanup EXIT
}
cleanup() {
  # shellcheck disable=SC2046
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  if [ -n "${KEEP_WORK:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi
}

passed=0 failed=0
pass() { passed=$((passed + 1)); echo "ok [$SUITE_LABEL]: $1"; }
fail() { failed=$((failed + 1)); echo "FAIL [$SUITE_LABEL]: $1"; }
check() { if eval "$2"; then pass "$1"; else fail "$1"; fi; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
# Seconds since a `date +%s.%N` stamp, one decimal.
since() { python3 -c "print(f'{$(date +%s.%N) - $1:.1f}')"; }

# Starts `ipxe-edge serve` on this namespace's loopback with its data in $work/data, seen by the
# guests as 10.0.2.2; sets data, boot_port, secrets_port, s3_port, serve_pid and boot_url.
start_serve() {
  boot_port=$(free_port) secrets_port=$(free_port) s3_port=$(free_port)
  data="$work/data"
  "$BIN" serve --data "$data" --listen "127.0.0.1:$boot_port" --secrets-listen "127.0.0.1:$secrets_port" \
    --s3-listen "127.0.0.1:$s3_port" --public-host 10.0.2.2 --secrets-http >"$work/serve.out" 2>"$work/serve.log" &
  serve_pid=$!
  for _ in $(seq 1 100); do grep -q "curl --cert" "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
  grep -q "curl --cert" "$work/serve.out" || { cat "$work/serve.out" "$work/serve.log"; echo "serve did not start"; exit 1; }
  boot_url="https://10.0.2.2:$boot_port/boot.ipxe"
}
edge() { "$BIN" --data "$data" "$@"; }
fingerprint() { edge gateway show "$1" | sed -n 's/^  "fingerprint": "\([0-9a-f]*\)".*/\1/p'; }

# The network modules a test system loads, in order (virtio itself may be built in).
GUEST_MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net)

# An initramfs tree at $1 with busybox $2 and the network modules of the unpacked kernel
# package under $3 (its lib/modules), /init not yet written.
initramfs_tree() { # root, busybox, kernel package root
  mkdir -p "$1"/{bin,proc,sys,dev,tmp,lib/modules}
  cp "$2" "$1/bin/busybox"
  local m
  for m in "${GUEST_MODULES[@]}"; do
    find "$3"/lib/modules/*/kernel -name "$m.ko" -exec cp {} "$1/lib/modules/" \;
  done
}

# What every booted test system does first: network up, then a marker on the console.
guest_up=$(cat <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
for m in ${GUEST_MODULES[*]}; do
  insmod /lib/modules/\$m.ko 2>/dev/null
done
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
echo "EDGE-LINUX-UP"
INIT
)
# What a booted test system does last: redeem the secret of its command line, print its
# digest, try it again (410 expected), power off.
guest_redeem=$(cat <<'INIT'
url=$(sed -n 's/.*b2c.extra_args_url="\([^"]*\)".*/\1/p' /proc/cmdline)
[ -n "$url" ] || echo "EDGE-NO-SECRETS-URL"
if wget -q -O /tmp/secret "$url" 2>/tmp/err; then
  echo "EDGE-SECRET sha256=$(sha256sum /tmp/secret | cut -c1-16)"
else
  echo "EDGE-SECRET-FAILED"; cat /tmp/err
fi
status=$(wget -S -O /tmp/again "$url" 2>&1 | sed -n 's/.*HTTP\/1.1 \([0-9]*\).*/\1/p' | head -n 1)
echo "EDGE-REPLAY status=$status"
sleep 1
poweroff -f
INIT
)

# Packs an initramfs tree (its /init made executable) into a gzip'd newc archive.
pack_initramfs() { # root, out
  chmod +x "$1/init"
  (cd "$1" && find . | cpio -o -H newc --quiet | gzip -1) >"$2"
}

# A copy of a Debian iPXE EFI binary whose built-in trust anchor is the deployment's CA. The
# only change made to the real binary: iPXE cannot take a trust anchor from a script.
anchor_ipxe() { # iPXE EFI binary, out
  local ca_fp
  ca_fp=$(openssl x509 -in "$data/pki/ca.crt" -outform DER | sha256sum | cut -d' ' -f1)
  python3 - "$1" "$2" "$ca_fp" <<'PY'
import sys
src, dst, fp = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
root = bytes.fromhex("9faf717b7f8ca2f93c256c79f8ac5591895d66d1ff3bee6397a70d29c65eed1a")
data = open(src, "rb").read()
assert data.count(root) == 1, "iPXE's built-in root fingerprint not found exactly once"
open(dst, "wb").write(data.replace(root, fp))
PY
}

# A loopback HTTP server handing iPXE its start script (too long for a command line) from
# $work/www; sets http_port.
start_script_server() {
  http_port=$(free_port)
  mkdir -p "$work/www"
  python3 -m http.server "$http_port" --bind 127.0.0.1 --directory "$work/www" >/dev/null 2>&1 &
}

# iPXE's command line: static address on QEMU's user network, then the gateway's start script.
ipxe_args() { # gateway
  echo "ipxe.efi set net0/ip 10.0.2.15 && set net0/netmask 255.255.255.0 && set net0/gateway 10.0.2.2 && ifopen net0 && chain http://10.0.2.2:$http_port/$1.ipxe"
}
