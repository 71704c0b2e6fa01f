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
SB_TIMEOUT="${SB_TIMEOUT:-240}"
# How long a boot that must not reach Linux is watched.
SB_REFUSED_TIMEOUT="${SB_REFUSED_TIMEOUT:-60}"
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

# Boots a gateway in QEMU with UEFI firmware in flash (a fresh copy of its variable store) and
# one NIC on QEMU's user network; the rest of the QEMU command says what it boots from. Sets
# boot_time and serial (the console, without CRs).
run_efi_gateway() { # name, timeout, firmware code, variable store, QEMU command...
  local start
  cp "$4" "$work/vars-$1.fd"
  start=$(date +%s.%N)
  timeout "$2" "${@:5}" -nographic -no-reboot \
    -drive "if=pflash,format=raw,unit=0,readonly=on,file=$3" \
    -drive "if=pflash,format=raw,unit=1,file=$work/vars-$1.fd" \
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile= \
    </dev/null >"$work/serial-$1.log" 2>&1 || true
  boot_time=$(since "$start")
  serial=$(tr -d '\r' <"$work/serial-$1.log")
}

# ---------------------------------------------------------------- arm64 gateway
anchor_ipxe "$IPXE_DIR/ipxe-arm64.efi" "$work/ipxe-arm64.efi"
run_efi_gateway arm64 "$ARM64_TIMEOUT" /usr/share/AAVMF/AAVMF_CODE.fd /usr/share/AAVMF/AAVMF_VARS.fd \
  qemu-system-aarch64 -machine virt -cpu max -m 1024 -kernel "$work/ipxe-arm64.efi" -append "$(ipxe_args arm-gw)"
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
  qemu-system-x86_64 -machine q35,accel=tcg -m 512 -kernel "$work/ipxe-amd64.efi" -append "$(ipxe_args x86-gw)"
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

# ---------------------------------------------------------------- Secure Boot, the farm's own keys
# PK, KEK and db made and enrolled into an OVMF variable store by the operator's script; iPXE
# and the kernel signed with the db key by sbsign (Debian's kernel carries Debian's signature,
# which this firmware does not trust: it is removed and the kernel signed again).
scripts/secure-boot-keys.sh "$work/sb" --ovmf-vars "$work/sb-vars.fd" >/dev/null
sign() { sbsign --key "$work/sb/db.key" --cert "$work/sb/db.crt" --output "$2" "$1" 2>/dev/null; }
check "release create recorded Debian's signature on its kernel" \
  'edge release show multi-r1 | python3 -c "import json,sys; s=json.load(sys.stdin)[\"arches\"][\"x86_64\"][\"kernel_signature\"]; sys.exit(not (s[\"status\"] == \"signed\" and \"Debian\" in s[\"signers\"][0][\"subject\"]))"'
cp "$CACHE/linux/vmlinuz" "$work/vmlinuz-unsigned"
sbattach --remove "$work/vmlinuz-unsigned" >/dev/null
sign "$work/vmlinuz-unsigned" "$work/vmlinuz-signed"
sign "$work/ipxe-amd64.efi" "$work/ipxe-amd64-signed.efi"
# The booted system reads the SecureBoot variable (4 bytes of attributes, then 1 = on) and the
# kernel's lockdown mode before it redeems.
sb_root="$work/root-sb"
cp -a "$work/root-x86_64" "$sb_root"
find "$CACHE"/linux/root/lib/modules/*/kernel -name efivarfs.ko -exec cp {} "$sb_root/lib/modules/" \;
{ echo "$guest_up"; cat <<'INIT'
insmod /lib/modules/efivarfs.ko 2>/dev/null
mount -t efivarfs efivarfs /sys/firmware/efi/efivars
echo "EDGE-SECUREBOOT=$(tail -c 1 /sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c | od -An -tu1 | tr -d ' ')"
mount -t securityfs securityfs /sys/kernel/security
echo "EDGE-LOCKDOWN $(cat /sys/kernel/security/lockdown)"
INIT
echo "$guest_redeem"; } >"$sb_root/init"
pack_initramfs "$sb_root" "$work/initrd-sb.img"
edge release create sb-signed --kernel "$work/vmlinuz-signed" --initrd "$work/initrd-sb.img" --cmdline "$cmdline" >/dev/null 2>&1
edge release create sb-unsigned --kernel "$work/vmlinuz-unsigned" --initrd "$work/initrd-sb.img" --cmdline "$cmdline" >/dev/null 2>&1
err=$(edge channel promote secure sb-unsigned --require-signed "$work/sb/db.crt" 2>&1 || true)
check "a channel requiring the farm's db signature refuses the unsigned kernel, naming it" \
  'grep -q "release sb-unsigned.s x86_64 kernel is unsigned" <<<"$err" && ! edge channel history secure >/dev/null 2>&1'
check "... and takes the kernel signed with the db key" 'edge channel promote secure sb-signed --require-signed "$work/sb/db.crt" >/dev/null'
edge channel promote lab sb-unsigned >/dev/null
for gw in sb-gw sb-unsigned-ipxe-gw sb-unsigned-kernel-gw; do
  channel=secure; [ "$gw" = sb-unsigned-kernel-gw ] && channel=lab
  edge gateway enroll "$gw" --channel "$channel" >/dev/null
  edge gateway set-secrets "$gw" --file "$work/secrets.txt" >/dev/null
done
build_image() { # gateway, iPXE binary
  edge image build "$1" --boot-url "$boot_url" --out "$work/$1.img" --efi "$2" --crosscert http://127.0.0.1:9/ --no-ntp >"$work/$1.build" 2>&1
}
build_image sb-gw "$work/ipxe-amd64-signed.efi"
build_image sb-unsigned-ipxe-gw "$work/ipxe-amd64.efi"
build_image sb-unsigned-kernel-gw "$work/ipxe-amd64-signed.efi"
# OVMF's Secure Boot build: its variables live in SMM-protected flash.
sb_qemu() { # gateway
  echo qemu-system-x86_64 -machine q35,smm=on,accel=tcg -global driver=cfi.pflash01,property=secure,value=on -m 512 \
    -drive "if=none,id=d0,format=raw,snapshot=on,file=$work/$1.img" -device virtio-blk-pci,drive=d0,bootindex=0
}
served() { grep "boot script served" "$work/serve.log" | grep -q "\"gateway\":\"$1\""; }

# 1. signed iPXE, signed kernel
# shellcheck disable=SC2046
run_efi_gateway sb-signed "$SB_TIMEOUT" /usr/share/OVMF/OVMF_CODE_4M.secboot.fd "$work/sb-vars.fd" $(sb_qemu sb-gw)
check "Secure Boot 1: the booted system reads SecureBoot = 1, and its kernel is locked down" \
  'grep -q "EDGE-SECUREBOOT=1" <<<"$serial" && grep -q "EDGE-LOCKDOWN .*\[integrity\]" <<<"$serial"'
check "Secure Boot 1: the signed iPXE fetched its script over mTLS and the signed kernel booted" \
  'served sb-gw && grep -q "assets/sha256/$(kernel_digest "$work/vmlinuz-signed")" <<<"$serial" && grep -q "EDGE-LINUX-UP" <<<"$serial"'
check "Secure Boot 1: the booted system redeemed its secret" 'grep -q "EDGE-SECRET sha256=$secret_digest" <<<"$serial"'
check "image build raised no Secure Boot warning for Debian's iPXE (no bzImage loader of its own)" '! grep -q "warning" "$work/sb-gw.build"'
echo "Secure Boot 1 (signed iPXE and kernel), QEMU start to poweroff (timeout ${SB_TIMEOUT}s): ${boot_time}s; kernel lockdown: $(sed -n 's/^EDGE-LOCKDOWN //p' <<<"$serial")"

# 2. unsigned iPXE
# shellcheck disable=SC2046
run_efi_gateway sb-unsigned-ipxe "$SB_REFUSED_TIMEOUT" /usr/share/OVMF/OVMF_CODE_4M.secboot.fd "$work/sb-vars.fd" $(sb_qemu sb-unsigned-ipxe-gw)
check "Secure Boot 2: the firmware refused the unsigned iPXE image" 'grep -qi "access denied\|security violation" <<<"$serial" && ! grep -q "iPXE initialising" <<<"$serial"'
check "Secure Boot 2: nothing of that gateway reached serve" '! grep -q "$(fingerprint sb-unsigned-ipxe-gw)" "$work/serve.log"'
echo "Secure Boot 2 (unsigned iPXE), $(grep -i -m1 "access denied\|security violation" <<<"$serial" || echo "no refusal printed") (ran ${boot_time}s of ${SB_REFUSED_TIMEOUT}s)"

# 3. signed iPXE, unsigned kernel
# shellcheck disable=SC2046
run_efi_gateway sb-unsigned-kernel "$SB_REFUSED_TIMEOUT" /usr/share/OVMF/OVMF_CODE_4M.secboot.fd "$work/sb-vars.fd" $(sb_qemu sb-unsigned-kernel-gw)
check "Secure Boot 3: the signed iPXE got its boot script" 'served sb-unsigned-kernel-gw'
check "Secure Boot 3: the unsigned kernel did not reach Linux" '! grep -q "EDGE-LINUX-UP\|Linux version" <<<"$serial"'
echo "Secure Boot 3 (signed iPXE, unsigned kernel): Debian's iPXE $IPXE_VERSION said: $(grep -m1 -i "could not boot\|not permitted\|denied\|violation" <<<"$serial" || echo "nothing")"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
