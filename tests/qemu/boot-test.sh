#!/usr/bin/env bash
# Real iPXE clients boot a real Linux kernel through `ipxe-edge serve`, in QEMU (TCG, OVMF):
#   1. Debian trixie's ipxe-amd64.efi, given the gateway's certificate and key at run time,
#      chains to the mTLS boot endpoint, downloads kernel and initrd from presigned URLs of the
#      embedded S3 endpoint, and Linux's /init redeems the one-time secret, then replays it;
#   2. the same with a revoked gateway must not reach Linux;
#   3. a disk image from `ipxe-edge image build` boots the same way;
#   4. automatic fallback: release B's initrd never redeems its secret and reboots; the machine
#      boots again through iPXE, and after two failed boots of B it gets release A, the
#      gateway's last known good release, and reaches Linux on its own;
#   5. per-boot scratch storage used by the booted system with its minted key;
#   6. certificate renewal: a disk-image gateway enrolled for 30 days fetches its renewal through
#      ${renewal_url}, installs it on its own ESP with boot-assets/install-renewal.sh, reboots,
#      and boots on the new certificate.
# The only change to the real iPXE binary is its trust anchor, replaced by the test CA's
# fingerprint (iPXE cannot take a trust anchor from a script).
# Every scenario runs on the iPXE generation IPXE_VERSION names (1.21.1, Debian trixie's; or
# 2.0.0, forky's), printed on each result line. On 2.0.0 also:
#   7. an ECDSA gateway boots end to end (on 1.21.1 its boot is refused, with one log line);
#   8. an asset altered in the store after `release create` is refused by iPXE's digest check
#      (no Linux), while the untouched release boots.
#   9. a gateway whose firmware clock is years off fails its TLS handshake without `ntp` and
#      boots with it, set from an SNTP responder on the host side of the user network (on
#      1.21.1, which has no `ntp`, the script says so and the gateway does not boot).
# The suite runs in a network namespace of its own (iPXE's NTP port is fixed at 123).
# Usage: IPXE_VERSION=2.0.0 tests/qemu/boot-test.sh   (prints "N passed, N failed"; exit 1 on any failure)
set -euo pipefail
cd "$(dirname "$0")/../.."

CACHE="${IPXE_EDGE_QEMU_CACHE:-$HOME/.cache/ipxe-edge-qemu}"
TARGET="${CARGO_TARGET_DIR:-target}"
QEMU_TIMEOUT="${QEMU_TIMEOUT:-150}"
IPXE_VERSION="${IPXE_VERSION:-1.21.1}"
case "$IPXE_VERSION" in 1.21.1 | 2.0.0) ;; *) echo "IPXE_VERSION must be 1.21.1 or 2.0.0"; exit 2 ;; esac
IPXE_EFI="$CACHE/ipxe-$IPXE_VERSION/usr/lib/ipxe/ipxe-amd64.efi"
# shellcheck source=tests/qemu/lib.sh
. tests/qemu/lib.sh
enter_own_netns tests/qemu/boot-test.sh "$@"
BIN="$TARGET/debug/ipxe-edge"
SUITE_LABEL="iPXE $IPXE_VERSION"
make_work ipxe-edge-qemu

# ---------------------------------------------------------------- server
start_serve

# ---------------------------------------------------------------- initramfs
root="$work/initramfs"
initramfs_tree "$root" /bin/busybox "$CACHE/linux/root"
{ echo "$guest_up"; echo "$guest_redeem"; } >"$root/init"
pack_initramfs "$root" "$work/initrd.img"

# Release B's initrd: Linux comes up, never fetches its secret, and reboots (a broken update).
cat >"$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
echo "EDGE-BAD-RELEASE-UP"
sleep 1
reboot -f
INIT
pack_initramfs "$root" "$work/initrd-bad.img"

# ---------------------------------------------------------------- release and gateways
printf 'b2c.minio="ci,https://s3.example,AK%s,SK%s"\n' "$RANDOM" "$RANDOM" >"$work/secrets.txt"
secret_digest=$(sha256sum "$work/secrets.txt" | cut -c1-16)
edge release create qemu-r1 --kernel "$CACHE/linux/vmlinuz" --initrd "$work/initrd.img" \
  --cmdline "console=ttyS0 panic=-1 quiet" >/dev/null 2>&1
edge release create qemu-bad --kernel "$CACHE/linux/vmlinuz" --initrd "$work/initrd-bad.img" \
  --cmdline "console=ttyS0 panic=-1 quiet" >/dev/null 2>&1
edge channel promote stable qemu-r1 >/dev/null
edge channel promote fb qemu-r1 >/dev/null
for gw in qemu-gw revoked-gw image-gw fallback-gw; do
  channel=stable; [ "$gw" = fallback-gw ] && channel=fb
  edge gateway enroll "$gw" --channel "$channel" >/dev/null
  edge gateway set-secrets "$gw" --file "$work/secrets.txt" >/dev/null
done
edge gateway revoke revoked-gw >/dev/null
# Packs an initramfs tree (its /init made executable) into release NAME with the test kernel.
make_release() { # release, initramfs root
  pack_initramfs "$2" "$work/initrd-$1.img"
  edge release create "$1" --kernel "$CACHE/linux/vmlinuz" --initrd "$work/initrd-$1.img" \
    --cmdline "console=ttyS0 panic=-1 quiet" >/dev/null 2>&1
}

# ---------------------------------------------------------------- iPXE with the test CA as anchor
anchor_ipxe "$IPXE_EFI" "$work/ipxe.efi"
cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/vars.fd"

start_script_server
# crosscert points at the guest's own loopback: nothing leaves the machine.
for gw in qemu-gw revoked-gw fallback-gw; do
  edge image script "$gw" --boot-url "$boot_url" --crosscert http://127.0.0.1:9/ --no-ntp >"$work/www/$gw.ipxe"
done

qemu_common=(-machine q35,accel=tcg -m 512 -nographic -no-reboot
  -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd
  -drive "if=pflash,format=raw,unit=1,file=$work/vars.fd"
  -netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile=)

run_kernel_boot() { # gateway, log, timeout, [more QEMU arguments]
  timeout "$3" qemu-system-x86_64 "${qemu_common[@]}" "${@:4}" -kernel "$work/ipxe.efi" -append "$(ipxe_args "$1")" \
    </dev/null >"$2" 2>&1 || true
}

# ---------------------------------------------------------------- 1. boot with the gateway's certificate
start=$(date +%s.%N)
run_kernel_boot qemu-gw "$work/serial-1.log" "$QEMU_TIMEOUT"
marker_time=$(since "$start")
serial=$(tr -d '\r' <"$work/serial-1.log")
fp=$(fingerprint qemu-gw)
check "Linux booted from the served kernel and initrd" 'grep -q "EDGE-LINUX-UP" <<<"$serial"'
# iPXE prints each download's URL without its query; the endpoint refuses anything unsigned,
# so a successful download from it was a presigned one.
# (over HTTPS iPXE may print progress percentages between the URL and "ok")
asset_path=$(grep -o "10.0.2.2:$s3_port/ipxe-edge/assets/sha256/[0-9a-f]*\.\.\..* ok$" <<<"$serial" | head -n 1 | sed 's/\.\.\..*//')
check "iPXE downloaded kernel and initrd from the S3 endpoint" '[ "$(grep -c "10.0.2.2:$s3_port/ipxe-edge/assets/sha256/[0-9a-f]*\.\.\..* ok$" <<<"$serial")" -ge 2 ]'
check "those URLs only work presigned (unsigned: 403)" '[ "$(curl -s --cacert "$data/pki/ca.crt" -o /dev/null -w "%{http_code}" "https://127.0.0.1:$s3_port/${asset_path#*/}")" = 403 ]'
check "the S3 endpoint speaks HTTPS only" '! curl -s -o /dev/null "http://127.0.0.1:$s3_port/${asset_path#*/}"'
check "iPXE fetched kernel and initrd over HTTPS" 'grep -q "https://10.0.2.2:$s3_port/" <<<"$serial"'
check "the secret's digest matches the stored one" 'grep -q "EDGE-SECRET sha256=$secret_digest" <<<"$serial"'
check "the replay was refused with 410" 'grep -q "EDGE-REPLAY status=410" <<<"$serial"'
check "the server identified the gateway by its fingerprint" 'grep "boot script served" "$work/serve.log" | grep -q "\"fingerprint\":\"$fp\".*\"gateway\":\"qemu-gw\""'
check "the server served the secret once" 'grep "secrets served" "$work/serve.log" | grep -q "$fp"'
check "the server logged the replay as a security event" 'grep -q "\"security_event\":\"token_replay\"" "$work/serve.log"'
check "no secret or token in the server log" '! grep -q "AK[0-9]*,SK" "$work/serve.log" && ! grep -q "/secrets/[A-Za-z0-9_-]\{40\}" "$work/serve.log"'
if [ "$IPXE_VERSION" = 2.0.0 ]; then want_check=true; else want_check=false; fi
check "the gateway reported iPXE $IPXE_VERSION; digests checked: $want_check" \
  'grep "boot script served" "$work/serve.log" | grep "\"gateway\":\"qemu-gw\"" | grep "\"ipxe_version\":\"$IPXE_VERSION\"" | grep -q "\"digests_checked\":$want_check"'
echo "time from QEMU start to the secret marker: ${marker_time}s"

# ---------------------------------------------------------------- 2. a revoked gateway does not reach Linux
run_kernel_boot revoked-gw "$work/serial-2.log" 30
rfp=$(fingerprint revoked-gw)
check "a revoked gateway does not reach Linux" '! grep -q "EDGE-LINUX-UP" "$work/serial-2.log" && ! grep -q "Linux version" "$work/serial-2.log"'
check "the server refused the revoked gateway" 'grep "boot refused" "$work/serve.log" | grep -q "$rfp"'

# ---------------------------------------------------------------- 3. a disk image from `ipxe-edge image build`
edge image build image-gw --boot-url "$boot_url" --out "$work/gateway.img" --efi "$work/ipxe.efi" \
  --crosscert http://127.0.0.1:9/ --no-ntp >/dev/null
check "the image is written 0600" '[ "$(stat -c %a "$work/gateway.img")" = 600 ]'
cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/vars.fd"
start=$(date +%s.%N)
timeout "$QEMU_TIMEOUT" qemu-system-x86_64 "${qemu_common[@]}" \
  -drive "if=none,id=d0,format=raw,snapshot=on,file=$work/gateway.img" -device virtio-blk-pci,drive=d0,bootindex=0 \
  </dev/null >"$work/serial-3.log" 2>&1 || true
image_time=$(since "$start")
check "the disk image boots Linux and redeems its secret" 'grep -q "EDGE-SECRET sha256=$secret_digest" "$work/serial-3.log"'
check "the server identified the image's gateway" 'grep "boot script served" "$work/serve.log" | grep -q "\"gateway\":\"image-gw\""'
echo "time from QEMU start (disk image) to poweroff: ${image_time}s"

# ---------------------------------------------------------------- 4. automatic fallback
# Release A (qemu-r1) passes on fallback-gw: a boot and its redemption, from the host.
local_url() { sed -e "s#//10.0.2.2:$boot_port/#//127.0.0.1:$boot_port/#" -e "s#//10.0.2.2:$secrets_port/#//127.0.0.1:$secrets_port/#"; }
fb_script=$(curl -sf --cacert "$data/pki/ca.crt" --cert "$data/pki/gateways/fallback-gw.crt" --key "$data/pki/gateways/fallback-gw.key" \
  "https://127.0.0.1:$boot_port/boot.ipxe?buildarch=x86_64&platform=efi")
fb_secret_url=$(sed -n 's/.*b2c.extra_args_url="\([^"]*\)".*/\1/p' <<<"$fb_script" | local_url)
check "release A reached Linux once on fallback-gw (its secret was redeemed)" '[ "$(curl -s -o /dev/null -w "%{http_code}" "$fb_secret_url")" = 200 ]'
edge channel promote fb qemu-bad >/dev/null
cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/vars.fd"
qemu_reboots=()
for arg in "${qemu_common[@]}"; do [ "$arg" = -no-reboot ] || qemu_reboots+=("$arg"); done
start=$(date +%s.%N)
timeout $((QEMU_TIMEOUT * 3)) qemu-system-x86_64 "${qemu_reboots[@]}" -kernel "$work/ipxe.efi" -append "$(ipxe_args fallback-gw)" \
  </dev/null >"$work/serial-4.log" 2>&1 || true
fallback_time=$(since "$start")
serial=$(tr -d '\r' <"$work/serial-4.log")
check "release B booted twice and rebooted without its secret" '[ "$(grep -c "EDGE-BAD-RELEASE-UP" <<<"$serial")" -eq 2 ]'
check "the third boot got release A and reached Linux on its own" 'grep -q "EDGE-SECRET sha256=$secret_digest" <<<"$serial"'
fbfp=$(fingerprint fallback-gw)
check "the server logged the fallback from B to A" 'grep "\"boot_event\":\"fallback\"" "$work/serve.log" | grep "$fbfp" | grep -q "\"from\":\"qemu-bad\",\"to\":\"qemu-r1\""'
edge gateway history fallback-gw >"$work/history.txt"
check "gateway history shows B's two failures and the fallback to A" \
  '[ "$(grep -c "qemu-bad .*failed (rebooted)" "$work/history.txt")" -eq 2 ] && grep -q "qemu-r1 (for qemu-bad) *fallback *reached_linux" "$work/history.txt"'
# (Each command's whole output is read before grep: `grep -q` leaves at its first match, and the
# CLI, like any other, ends on SIGPIPE when its reader has gone.)
check "gateway status shows the fallback" 'grep -q "fallback: *ON, booting qemu-r1" <<<"$(edge gateway status fallback-gw)"'
echo "time from QEMU start to the fallback's secret (three boots): ${fallback_time}s"
cat "$work/history.txt"

# ---------------------------------------------------------------- 5. per-boot scratch storage
# The seed's secret on scratch-gw; its booted system reads the minted key from the secret and
# uses it with curl's own SigV4 signing over HTTPS to store a file and read it back, and is
# refused in another gateway's space.
scratch_root="$work/initramfs-scratch"
cp -a "$root" "$scratch_root"
# curl and the libraries it links, at their own paths; the deployment CA to trust the endpoint.
for lib in /usr/bin/curl $(ldd /usr/bin/curl | grep -o '/[^ ]*'); do cp --parents -L "$lib" "$scratch_root/"; done
cp "$data/pki/ca.crt" "$scratch_root/ca.crt"
{ echo "$guest_up"; cat <<'INIT'
url=$(sed -n 's/.*b2c.extra_args_url="\([^"]*\)".*/\1/p' /proc/cmdline)
wget -q -O /tmp/secret "$url" || echo "EDGE-SECRET-FAILED"
minio=$(sed -n 's/.*b2c.minio="\([^"]*\)".*/\1/p' /tmp/secret)
endpoint=$(echo "$minio" | cut -d, -f2); id=$(echo "$minio" | cut -d, -f3); key=$(echo "$minio" | cut -d, -f4)
bucket=$(sed -n 's/.*mirror=bbz\/\([^,"]*\).*/\1/p' /tmp/secret)
s3() { /usr/bin/curl -s --cacert /ca.crt --aws-sigv4 aws:amz:us-east-1:s3 --user "$id:$key" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$@"; }
echo "state written by the booted gateway" >/tmp/payload
put=$(s3 -o /dev/null -w '%{http_code}' -T /tmp/payload "$endpoint/$bucket/state/hello.txt")
back=$(s3 "$endpoint/$bucket/state/hello.txt")
echo "EDGE-SCRATCH put=$put back=$back"
other=$(s3 -o /dev/null -w '%{http_code}' "$endpoint/scratch/qemu-gw/state/hello.txt")
echo "EDGE-SCRATCH-OTHER status=$other"
sleep 1
poweroff -f
INIT
} >"$scratch_root/init"
make_release qemu-scratch "$scratch_root"
edge gateway enroll scratch-gw >/dev/null
edge gateway pin scratch-gw qemu-scratch >/dev/null
printf '%s\n' 'b2c.minio="bbz,${s3_endpoint},${s3_access_key_id},${s3_access_key}"' \
  'b2c.volume="perm,mirror=bbz/${s3_bucket_name},pull_on=pipeline_start,push_on=changes,overwrite,delete"' >"$work/scratch-secrets.txt"
edge gateway set-secrets scratch-gw --file "$work/scratch-secrets.txt" >/dev/null
edge image script scratch-gw --boot-url "$boot_url" --crosscert http://127.0.0.1:9/ --no-ntp >"$work/www/scratch-gw.ipxe"
cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/vars.fd"
start=$(date +%s.%N)
run_kernel_boot scratch-gw "$work/serial-5.log" "$QEMU_TIMEOUT"
scratch_time=$(since "$start")
serial=$(tr -d '\r' <"$work/serial-5.log")
check "the booted system stored and read back a file with its minted key" 'grep -q "EDGE-SCRATCH put=200 back=state written by the booted gateway" <<<"$serial"'
check "the minted key is refused in another gateway's space" 'grep -q "EDGE-SCRATCH-OTHER status=403" <<<"$serial"'
check "the file is in scratch-gw's space on the server" '[ "$(cat "$data/s3/scratch/scratch-gw/state/hello.txt")" = "state written by the booted gateway" ]'
scratch_view=$(edge gateway scratch scratch-gw)
check "gateway scratch shows the object and the live key" 'grep -q "1 object(s)" <<<"$scratch_view" && grep -q "key: *IPXESCRATCH" <<<"$scratch_view"'
check "the server minted the key at the redemption" 'grep "scratch key minted" "$work/serve.log" | grep -q "\"gateway\":\"scratch-gw\""'
echo "time from QEMU start to the scratch round trip: ${scratch_time}s"

# ---------------------------------------------------------------- 6. certificate renewal in band
# The booted system redeems its secret; when it holds a renewal URL it installs the renewal on
# the ESP of its own disk (mtools on the unmounted device) and reboots; with none, it powers off.
renew_root="$work/initramfs-renew"
cp -a "$root" "$renew_root"
find "$CACHE"/linux/root/lib/modules/*/kernel -name "virtio_blk.ko" -exec cp {} "$renew_root/lib/modules/" \;
for lib in /usr/bin/mtools $(ldd /usr/bin/mtools | grep -o '/[^ ]*'); do cp --parents -L "$lib" "$renew_root/"; done
for tool in mcopy mmove; do ln -sf mtools "$renew_root/usr/bin/$tool"; done
# mtools converts file names to the FAT code page (850) through glibc's iconv modules.
gconv=/usr/lib/x86_64-linux-gnu/gconv
for f in "$gconv/IBM850.so" "$gconv/gconv-modules" "$gconv/gconv-modules.cache" "$gconv"/gconv-modules.d/*; do
  [ -e "$f" ] && cp --parents -L "$f" "$renew_root/"
done
cp boot-assets/install-renewal.sh "$renew_root/bin/install-renewal"
{ echo "$guest_up"; cat <<'INIT'
export PATH=/bin:/usr/bin
insmod /lib/modules/virtio_blk.ko 2>/dev/null
mount -t devtmpfs dev /dev
url=$(sed -n 's/.*b2c.extra_args_url="\([^"]*\)".*/\1/p' /proc/cmdline)
wget -q -O /tmp/secret "$url" || echo "EDGE-SECRET-FAILED"
renewal=$(sed -n 's/.*renew=\([^ ]*\).*/\1/p' /tmp/secret)
if [ -n "$renewal" ]; then
  if sh /bin/install-renewal --url "$renewal" --device /dev/vda@@1M; then echo "EDGE-RENEWAL-INSTALLED"; else echo "EDGE-RENEWAL-FAILED"; fi
  sleep 1
  reboot -f
fi
echo "EDGE-NO-RENEWAL-PENDING"
sleep 1
poweroff -f
INIT
} >"$renew_root/init"
make_release qemu-renew "$renew_root"
edge gateway enroll renew-gw --days 30 >/dev/null
edge gateway pin renew-gw qemu-renew >/dev/null
printf '%s\n' 'renew=${renewal_url} token=abc' >"$work/renew-secrets.txt"
edge gateway set-secrets renew-gw --file "$work/renew-secrets.txt" >/dev/null
old_fp=$(fingerprint renew-gw)
edge image build renew-gw --boot-url "$boot_url" --out "$work/renew.img" --efi "$work/ipxe.efi" \
  --crosscert http://127.0.0.1:9/ --no-ntp >/dev/null
cp "$work/renew.img" "$work/renew-before.img"
check "gateway list shows renew-gw expiring" 'grep -q "^renew-gw " <<<"$(edge gateway list --expiring-within 60d)"'
edge gateway renew renew-gw --boot-url "$boot_url" --crosscert http://127.0.0.1:9/ --no-ntp >/dev/null
new_fp=$(openssl x509 -in "$data/pki/gateways/renew-gw.crt" -outform DER | sha256sum | cut -d' ' -f1)
cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/vars.fd"
start=$(date +%s.%N)
timeout $((QEMU_TIMEOUT * 2)) qemu-system-x86_64 "${qemu_reboots[@]}" \
  -drive "if=none,id=d0,format=raw,file=$work/renew.img" -device virtio-blk-pci,drive=d0,bootindex=0 \
  </dev/null >"$work/serial-6.log" 2>&1 || true
renew_time=$(since "$start")
serial=$(tr -d '\r' <"$work/serial-6.log")
esp_file() { MTOOLS_SKIP_CHECK=1 mtype -i "$1@@1M" "::/EFI/BOOT/$2"; }
check "the booted gateway installed its renewal and rebooted" 'grep -q "EDGE-RENEWAL-INSTALLED" <<<"$serial" && [ "$(grep -c "EDGE-LINUX-UP" <<<"$serial")" -eq 2 ]'
check "after the reboot nothing was pending any more" 'grep -q "EDGE-NO-RENEWAL-PENDING" <<<"$serial"'
check "the second boot used the new certificate, same gateway and release" \
  'grep "boot script served" "$work/serve.log" | grep "\"fingerprint\":\"$new_fp\"" | grep -q "\"gateway\":\"renew-gw\",\"release\":\"qemu-renew\""'
check "the server logged the first boot with the new certificate" \
  'grep "\"boot_event\":\"cert_renewed\"" "$work/serve.log" | grep "$new_fp" | grep -q "\"renews\":\"$old_fp\""'
check "the ESP holds the new autoexec.ipxe and the old one as a backup" \
  '[ "$(esp_file "$work/renew.img" autoexec.ipxe)" = "$(edge image script renew-gw --boot-url "$boot_url" --crosscert http://127.0.0.1:9/ --no-ntp)" ] && [ "$(esp_file "$work/renew.img" autoexec.ipxe.bak)" = "$(esp_file "$work/renew-before.img" autoexec.ipxe)" ]'
check "the old certificate still boots until retired" \
  '[ "$(curl -s -o /dev/null -w "%{http_code}" --cacert "$data/pki/ca.crt" --cert "$data/pki/gateways/renew-gw.${old_fp}.crt" --key "$data/pki/gateways/renew-gw.${old_fp}.key" "https://127.0.0.1:$boot_port/boot.ipxe")" = 200 ]'
edge gateway revoke-cert renew-gw "$old_fp" >/dev/null
check "once retired it is refused" \
  '[ "$(curl -s -o /dev/null -w "%{http_code}" --cacert "$data/pki/ca.crt" --cert "$data/pki/gateways/renew-gw.${old_fp}.crt" --key "$data/pki/gateways/renew-gw.${old_fp}.key" "https://127.0.0.1:$boot_port/boot.ipxe")" = 403 ]'
check "no key material in the server log" '! grep -q "PRIVATE KEY\|privkey:hex" "$work/serve.log"'
echo "time from QEMU start to the second boot on the renewed certificate: ${renew_time}s"

# ---------------------------------------------------------------- 7. an ECDSA gateway
edge gateway enroll ecdsa-gw --channel stable --key ecdsa-p256 >/dev/null
edge gateway set-secrets ecdsa-gw --file "$work/secrets.txt" >/dev/null
edge image script ecdsa-gw --boot-url "$boot_url" --crosscert http://127.0.0.1:9/ --no-ntp >"$work/www/ecdsa-gw.ipxe"
efp=$(fingerprint ecdsa-gw)
cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/vars.fd"
if [ "$IPXE_VERSION" = 2.0.0 ]; then
  run_kernel_boot ecdsa-gw "$work/serial-7.log" "$QEMU_TIMEOUT"
  check "an ECDSA gateway boots Linux and redeems its secret" 'grep -q "EDGE-SECRET sha256=$secret_digest" "$work/serial-7.log"'
  check "the server identified the ECDSA gateway" 'grep "boot script served" "$work/serve.log" | grep -q "\"fingerprint\":\"$efp\".*\"gateway\":\"ecdsa-gw\""'
else
  run_kernel_boot ecdsa-gw "$work/serial-7.log" 40
  check "an ECDSA gateway does not boot on iPXE before 2.0" '! grep -q "EDGE-LINUX-UP" "$work/serial-7.log"'
  check "the server says why, in one line" 'grep -q "no client certificate" "$work/serve.log"'
fi

# ---------------------------------------------------------------- 8. a swapped asset is refused (iPXE 2.0)
if [ "$IPXE_VERSION" = 2.0.0 ]; then
  # A release of its own (content-addressed: the same bytes would be qemu-r1's asset).
  cp -a "$root" "$work/swap-root"
  { echo "$guest_up"; echo 'sleep 1; poweroff -f'; } >"$work/swap-root/init"
  make_release qemu-swapped "$work/swap-root"
  edge gateway enroll swap-gw --channel stable >/dev/null
  edge gateway pin swap-gw qemu-swapped >/dev/null
  edge gateway set-secrets swap-gw --file "$work/secrets.txt" >/dev/null
  edge image script swap-gw --boot-url "$boot_url" --crosscert http://127.0.0.1:9/ --no-ntp >"$work/www/swap-gw.ipxe"
  swapped=$(edge release show qemu-swapped | python3 -c 'import json,sys; print(json.load(sys.stdin)["arches"]["x86_64"]["initrd"]["key"])')
  # Same size, one byte different: what a tampered bucket or cache would serve.
  python3 - "$data/s3/ipxe-edge/$swapped" <<'PY'
import sys
path = sys.argv[1]
data = bytearray(open(path, "rb").read())
data[len(data) // 2] ^= 0xFF
open(path, "wb").write(data)
PY
  cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/vars.fd"
  run_kernel_boot swap-gw "$work/serial-8.log" 60
  serial=$(tr -d '\r' <"$work/serial-8.log")
  check "iPXE refused the swapped initrd before booting it" 'grep -q "does not match its release" <<<"$serial" && ! grep -q "EDGE-LINUX-UP" <<<"$serial"'
  check "the gateway kept retrying" '[ "$(grep -c "does not match its release" <<<"$serial")" -ge 2 ]'
  check "its secret was never redeemed" '! grep "secrets served" "$work/serve.log" | grep -q "$(fingerprint swap-gw)"'
fi

# ---------------------------------------------------------------- 9. a gateway whose clock is years off
# The firmware clock (QEMU's RTC) is set to 2015, before every certificate here was issued: iPXE
# refuses the server's certificate until `ntp` sets its clock, from the SNTP responder on the
# host side of the user network (10.0.2.2:123 is this namespace's loopback).
python3 tests/qemu/sntp.py 127.0.0.1 123 >"$work/sntp.log" 2>&1 &
edge gateway enroll clock-gw --channel stable >/dev/null
edge gateway set-secrets clock-gw --file "$work/secrets.txt" >/dev/null
edge image script clock-gw --boot-url "$boot_url" --crosscert http://127.0.0.1:9/ --no-ntp >"$work/www/clock-gw-no-ntp.ipxe"
edge image script clock-gw --boot-url "$boot_url" --crosscert http://127.0.0.1:9/ --ntp 10.0.2.2 >"$work/www/clock-gw.ipxe"
cfp=$(fingerprint clock-gw)
run_clock_boot() { # script, log, timeout
  cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/vars.fd"
  run_kernel_boot "$1" "$2" "$3" -rtc base=2015-06-01T12:00:00
}
if [ "$IPXE_VERSION" = 2.0.0 ]; then
  run_clock_boot clock-gw-no-ntp "$work/serial-9a.log" 40
  check "with its clock in 2015 and no ntp, the gateway does not reach Linux" '! grep -q "EDGE-LINUX-UP" "$work/serial-9a.log"'
  check "... and gets no boot script (its TLS handshake fails)" '! grep "boot script served" "$work/serve.log" | grep -q "$cfp"'
  start=$(date +%s.%N)
  run_clock_boot clock-gw "$work/serial-9b.log" "$QEMU_TIMEOUT"
  clock_time=$(since "$start")
  check "the SNTP responder answered the gateway" 'grep -q "^answered 127.0.0.1" "$work/sntp.log"'
  check "with ntp, the same gateway boots Linux and redeems its secret" 'grep -q "EDGE-SECRET sha256=$secret_digest" "$work/serial-9b.log"'
  check "the server identified the gateway once its clock was right" 'grep "boot script served" "$work/serve.log" | grep -q "\"fingerprint\":\"$cfp\".*\"gateway\":\"clock-gw\""'
  echo "time from QEMU start to poweroff, clock set over NTP: ${clock_time}s"
else
  # Debian's 1.21.1 has no `ntp` command: the script says so and the gateway cannot boot until
  # its firmware clock is right (what the docs tell operators of such gateways).
  run_clock_boot clock-gw "$work/serial-9b.log" 40
  check "without an ntp command, the script says the clock was not set" 'grep -q "ipxe-edge: clock not set from 10.0.2.2" "$work/serial-9b.log"'
  check "... and a gateway with its clock in 2015 does not reach Linux" '! grep -q "EDGE-LINUX-UP" "$work/serial-9b.log" && ! grep "boot script served" "$work/serve.log" | grep -q "$cfp"'
fi

if [ "$failed" -gt 0 ]; then
  for f in "$work"/serial-*.log; do echo "== $f"; tail -n 40 "$f"; done
  echo "== server log"; tail -n 30 "$work/serve.log"
fi
echo "whole QEMU test: ${SECONDS}s"
echo "qemu: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
