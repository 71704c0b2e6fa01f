#!/usr/bin/env bash
# Gateways on the platforms farms run, booted for real through `ipxe-edge serve` in QEMU (TCG):
#   arm64: one release carries Debian's x86_64 and arm64 kernels, each with an initramfs of its
#     architecture's busybox. An arm64 gateway (qemu-system-aarch64 -M virt, AAVMF, Debian's
#     ipxe-arm64.efi) boots the arm64 kernel over HTTPS with its client certificate and redeems
#     its secret; an x86_64 gateway (OVMF, ipxe-amd64.efi) on the same channel gets the x86_64
#     assets; once the channel holds a release without arm64 assets, the arm64 gateway is
#     answered with the refusal (no x86_64 kernel).
#   Secure Boot (OVMF's Secure Boot build, a variable store holding the farm's own PK, KEK and
#     db, made by scripts/secure-boot-keys.sh): the signed iPXE image boots, loads the signed
#     kernel, and the booted system reads SecureBoot = 1 from efivars and redeems its secret;
#     an unsigned iPXE image is refused by the firmware (nothing reaches `serve`); a release
#     whose kernel is unsigned does not reach Linux.
# Each scenario has its own timeout and prints its time. iPXE is Debian forky's 2.0.0 unless
# IPXE_VERSION says 1.21.1.
# Usage: tests/qemu/platform-test.sh   (prints "N passed, N failed"; exit 1 on any failure)
set -euo pipefail
cd "$(dirname "$0")/../.."

CACHE="${IPXE_EDGE_QEMU_CACHE:-$HOME/.cache/ipxe-edge-qemu}"
TARGET="${CARGO_TARGET_DIR:-target}"
IPXE_VERSION="${IPXE_VERSION:-2.0.0}"
ARM64_TIMEOUT="${ARM64_TIMEOUT:-420}"
X86_TIMEOUT="${X86_TIMEOUT:-180}"
# shellcheck source=tests/qemu/lib.sh
. tests/qemu/lib.sh
enter_own_netns tests/qemu/platform-test.sh "$@"
BIN="$TARGET/debug/ipxe-edge"
IPXE_DIR="$CACHE/ipxe-$IPXE_VERSION/usr/lib/ipxe"
SUITE_LABEL="platforms, iPXE $IPXE_VERSION"
make_work ipxe-edge-platform

start_serve
start_script_server

# ---------------------------------------------------------------- assets of both architectures
for arch in x86_64 arm64; do
  if [ "$arch" = arm64 ]; then busybox="$CACHE/busybox-arm64/bin/busybox" kernel="$CACHE/linux-arm64"; else busybox=/bin/busybox kernel="$CACHE/linux"; fi
  initramfs_tree "$work/root-$arch" "$busybox" "$kernel/root"
  { echo "$guest_up"; echo 'echo "EDGE-MACHINE $(uname -m)"'; echo "$guest_redeem"; } >"$work/root-$arch/init"
  pack_initramfs "$work/root-$arch" "$work/initrd-$arch.img"
done
# One command line for both: each kernel takes the console it has (ttyS0 on x86, the PL011 on
# arm64's virt machine).
cmdline="console=ttyS0 console=ttyAMA0 panic=-1 quiet"
edge release create multi-r1 --arch x86_64 --kernel "$CACHE/linux/vmlinuz" --initrd "$work/initrd-x86_64.img" \
  --arch arm64 --kernel "$CACHE/linux-arm64/vmlinuz" --initrd "$work/initrd-arm64.img" --cmdline "$cmdline" >/dev/null 2>&1
edge release create x86-only --kernel "$CACHE/linux/vmlinuz" --initrd "$work/initrd-x86_64.img" --cmdline "$cmdline" >/dev/null 2>&1
edge channel promote multi multi-r1 >/dev/null
printf 'b2c.minio="ci,https://s3.example,AK%s,SK%s"\n' "$RANDOM" "$RANDOM" >"$work/secrets.txt"
secret_digest=$(sha256sum "$work/secrets.txt" | cut -c1-16)
for gw in arm-gw x86-gw; do
  edge gateway enroll "$gw" --channel multi >/dev/null
  edge gateway set-secrets "$gw" --file "$work/secrets.txt" >/dev/null
  edge image script "$gw" --boot-url "$boot_url" --crosscert http://127.0.0.1:9/ --no-ntp >"$work/www/$gw.ipxe"
done
kernel_digest() { sha256sum "$1" | cut -d' ' -f1; }

# Boots a gateway from its anchored iPXE binary in QEMU with UEFI firmware in flash (a fresh
# copy of its variable store); sets boot_time and serial (the console, without CRs).
run_efi_gateway() { # name, timeout, firmware code, variable store, iPXE binary, gateway, QEMU command...
  local start
  cp "$4" "$work/vars-$1.fd"
  start=$(date +%s.%N)
  timeout "$2" "${@:7}" -nographic -no-reboot \
    -drive "if=pflash,format=raw,unit=0,readonly=on,file=$3" \
    -drive "if=pflash,format=raw,unit=1,file=$work/vars-$1.fd" \
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile= \
    -kernel "$5" -append "$(ipxe_args "$6")" </dev/null >"$work/serial-$1.log" 2>&1 || true
  boot_time=$(since "$start")
  serial=$(tr -d '\r' <"$work/serial-$1.log")
}

# ---------------------------------------------------------------- arm64 gateway
anchor_ipxe "$IPXE_DIR/ipxe-arm64.efi" "$work/ipxe-arm64.efi"
run_efi_gateway arm64 "$ARM64_TIMEOUT" /usr/share/AAVMF/AAVMF_CODE.fd /usr/share/AAVMF/AAVMF_VARS.fd \
  "$work/ipxe-arm64.efi" arm-gw qemu-system-aarch64 -machine virt -cpu max -m 1024
arm_fp=$(fingerprint arm-gw)
check "the arm64 gateway booted Linux on an aarch64 machine" 'grep -q "EDGE-MACHINE aarch64" <<<"$serial"'
check "the arm64 gateway redeemed its secret once (replay: 410)" 'grep -q "EDGE-SECRET sha256=$secret_digest" <<<"$serial" && grep -q "EDGE-REPLAY status=410" <<<"$serial"'
check "serve identified the arm64 gateway by its certificate and served release multi-r1 for arm64" \
  'grep "boot script served" "$work/serve.log" | grep "\"fingerprint\":\"$arm_fp\"" | grep "\"release\":\"multi-r1\"" | grep -q "\"arch\":\"arm64\""'
check "the arm64 gateway downloaded the arm64 kernel" \
  'grep -q "assets/sha256/$(kernel_digest "$CACHE/linux-arm64/vmlinuz")" <<<"$serial"'
echo "arm64 gateway, QEMU start to poweroff (timeout ${ARM64_TIMEOUT}s): ${boot_time}s"

# ---------------------------------------------------------------- x86_64 gateway, same channel
anchor_ipxe "$IPXE_DIR/ipxe-amd64.efi" "$work/ipxe-amd64.efi"
run_efi_gateway x86 "$X86_TIMEOUT" /usr/share/OVMF/OVMF_CODE_4M.fd /usr/share/OVMF/OVMF_VARS_4M.fd \
  "$work/ipxe-amd64.efi" x86-gw qemu-system-x86_64 -machine q35,accel=tcg -m 512
check "the x86_64 gateway on the same channel booted Linux on an x86_64 machine" 'grep -q "EDGE-MACHINE x86_64" <<<"$serial"'
check "the x86_64 gateway downloaded the x86_64 kernel, not the arm64 one" \
  'grep -q "assets/sha256/$(kernel_digest "$CACHE/linux/vmlinuz")" <<<"$serial" && ! grep -q "assets/sha256/$(kernel_digest "$CACHE/linux-arm64/vmlinuz")" <<<"$serial"'
check "the x86_64 gateway redeemed its secret" 'grep -q "EDGE-SECRET sha256=$secret_digest" <<<"$serial"'
echo "x86_64 gateway, QEMU start to poweroff (timeout ${X86_TIMEOUT}s): ${boot_time}s"

# ---------------------------------------------------------------- a release without arm64 assets
edge channel promote multi x86-only >/dev/null
code=$(curl -s -o "$work/refusal.txt" -w "%{http_code}" --cacert "$data/pki/ca.crt" \
  --cert "$data/pki/gateways/arm-gw.crt" --key "$data/pki/gateways/arm-gw.key" \
  "https://127.0.0.1:$boot_port/boot.ipxe?buildarch=arm64&platform=efi")
check "an arm64 boot from a release without arm64 assets is refused (404, named)" \
  '[ "$code" = 404 ] && grep -q "x86-only" "$work/refusal.txt" && grep -q "arm64" "$work/refusal.txt" && ! grep -q "assets/sha256" "$work/refusal.txt"'
check "serve logged the refusal" 'grep "boot refused" "$work/serve.log" | grep "$arm_fp" | grep -q "arm64"'

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
