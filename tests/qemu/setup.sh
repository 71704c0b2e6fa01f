#!/usr/bin/env bash
# Installs what the QEMU boot tests need from Debian, once per machine, and caches the files it
# extracts under $IPXE_EDGE_QEMU_CACHE (default ~/.cache/ipxe-edge-qemu):
#   qemu-system-x86 (bookworm-backports, matching the installed qemu-utils), ovmf,
#   busybox-static, cpio; trixie's ipxe (EFI binary with HTTPS); a bookworm linux-image.
set -euo pipefail

CACHE="${IPXE_EDGE_QEMU_CACHE:-$HOME/.cache/ipxe-edge-qemu}"
mkdir -p "$CACHE"
export DEBIAN_FRONTEND=noninteractive

sources=/etc/apt/sources.list.d/ipxe-edge.sources
if [ ! -f "$sources" ]; then
  cat > "$sources" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  # trixie only for `apt-get download ipxe`: never installed from.
  cat > /etc/apt/preferences.d/ipxe-edge-trixie <<PREF
Package: *
Pin: release n=trixie
Pin-Priority: 1
PREF
  apt-get update -qq
fi

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -f /usr/share/OVMF/OVMF_CODE_4M.fd ] || need+=(ovmf)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq || true
  apt-get install -y -qq -t bookworm-backports "${need[@]}" >/dev/null
fi

if [ ! -f "$CACHE/ipxe/usr/lib/ipxe/ipxe-amd64.efi" ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq -t trixie ipxe)
  rm -rf "$CACHE/ipxe"
  dpkg -x "$tmp"/ipxe_*.deb "$CACHE/ipxe"
  rm -rf "$tmp"
fi

if [ ! -f "$CACHE/linux/vmlinuz" ]; then
  pkg=$(apt-cache depends linux-image-amd64 -t bookworm 2>/dev/null | sed -n 's/.*Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n 1)
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq "$pkg")
  rm -rf "$CACHE/linux"
  mkdir -p "$CACHE/linux"
  dpkg -x "$tmp"/linux-image-*.deb "$CACHE/linux/root"
  cp "$CACHE/linux/root"/boot/vmlinuz-* "$CACHE/linux/vmlinuz"
  rm -rf "$tmp"
fi
echo "qemu test assets ready in $CACHE"
