#!/usr/bin/env bash
# Installs what the QEMU boot tests need from Debian, once per machine, and caches the files it
# extracts under $IPXE_EDGE_QEMU_CACHE (default ~/.cache/ipxe-edge-qemu):
#   qemu-system-x86 (bookworm-backports, matching the installed qemu-utils), ovmf,
#   busybox-static, cpio; both iPXE generations the suite boots, each pinned by version:
#   trixie's 1.21.1 (HTTPS, RSA only) and forky's 2.0.0 (ECDSA, sha256sum, ntp); a bookworm
#   linux-image; for the platform suite qemu-system-arm and qemu-efi-aarch64 (AAVMF),
#   sbsigntool and python3-virt-firmware (Secure Boot variable stores), and bookworm's arm64
#   linux-image and busybox-static (`dpkg --add-architecture arm64`, downloaded, never installed).
set -euo pipefail

CACHE="${IPXE_EDGE_QEMU_CACHE:-$HOME/.cache/ipxe-edge-qemu}"
mkdir -p "$CACHE"
export DEBIAN_FRONTEND=noninteractive

updated=""
sources=/etc/apt/sources.list.d/ipxe-edge.sources
if [ ! -f "$sources" ]; then
  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' >"$sources"
  updated=1
fi
# A newer Debian suite apt downloads single packages from (`apt-get download ipxe=…`), pinned to
# priority 1 so that nothing is ever installed from it.
download_only_suite() { # suite
  local file="/etc/apt/sources.list.d/ipxe-edge-$1.sources"
  # Machines set up earlier list trixie in the file above already.
  if [ -f "$file" ] || grep -qs "Suites: $1\$" "$sources"; then return 0; fi
  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$1" >"$file"
  printf 'Package: *\nPin: release n=%s\nPin-Priority: 1\n' "$1" >"/etc/apt/preferences.d/ipxe-edge-$1"
  updated=1
}
download_only_suite trixie
download_only_suite forky
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
  updated=1
fi
if [ -n "$updated" ]; then apt-get update -qq; fi

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -f /usr/share/OVMF/OVMF_CODE_4M.fd ] || need+=(ovmf)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v qemu-system-aarch64 >/dev/null || need+=(qemu-system-arm)
[ -f /usr/share/AAVMF/AAVMF_CODE.fd ] || need+=(qemu-efi-aarch64)
command -v sbsign >/dev/null || need+=(sbsigntool)
command -v virt-fw-vars >/dev/null || need+=(python3-virt-firmware)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq || true
  apt-get install -y -qq -t bookworm-backports "${need[@]}" >/dev/null
fi

# The iPXE packages, by the version the suite is run with (IPXE_VERSION): unpacked into
# $CACHE/ipxe-<version>, never installed.
for pinned in "1.21.1=1.21.1+git20250501.dad20602+dfsg-1" "2.0.0=2.0.0+dfsg-5"; do
  short=${pinned%%=*} version=${pinned#*=}
  if [ ! -f "$CACHE/ipxe-$short/usr/lib/ipxe/ipxe-amd64.efi" ]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -qq "ipxe=$version")
    rm -rf "$CACHE/ipxe-$short"
    dpkg -x "$tmp"/ipxe_*.deb "$CACHE/ipxe-$short"
    rm -rf "$tmp"
  fi
done

# Bookworm's current kernel of an architecture (its linux-image-<version>-<arch> package),
# unpacked into $CACHE/<dir>/root, its image copied to $CACHE/<dir>/vmlinuz.
kernel_of() { # debian arch, dir
  local pkg tmp
  [ -f "$CACHE/$2/vmlinuz" ] && return 0
  pkg=$(apt-cache depends "linux-image-$1:$1" -t bookworm 2>/dev/null | sed -n "s/.*Depends: \(linux-image-[0-9].*-$1\)\(:$1\)\?\$/\1/p" | head -n 1)
  [ -n "$pkg" ] || { echo "no bookworm linux-image for $1" >&2; return 1; }
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq "$pkg:$1")
  rm -rf "${CACHE:?}/$2"
  mkdir -p "$CACHE/$2"
  dpkg -x "$tmp"/linux-image-*.deb "$CACHE/$2/root"
  cp "$CACHE/$2/root"/boot/vmlinuz-* "$CACHE/$2/vmlinuz"
  rm -rf "$tmp"
}
kernel_of amd64 linux
kernel_of arm64 linux-arm64
if [ ! -x "$CACHE/busybox-arm64/bin/busybox" ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq busybox-static:arm64)
  rm -rf "$CACHE/busybox-arm64"
  dpkg -x "$tmp"/busybox-static_*.deb "$CACHE/busybox-arm64"
  rm -rf "$tmp"
fi
echo "qemu test assets ready in $CACHE"
