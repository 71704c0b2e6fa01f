#!/bin/sh
# Installs a gateway's renewed autoexec.ipxe on its EFI system partition, for the gateway's
# booted system to run once it has fetched ${renewal_url} from its secrets.
#
#   install-renewal.sh (--url URL | --file FILE) (--esp DIR | --device DEVICE) [--path PATH]
#
#   --url URL      fetch the renewal (the one-time ${renewal_url}; curl or wget). Fetched once:
#                  a failed install leaves the old identity in place, which keeps booting.
#   --file FILE    a renewal fetched already
#   --esp DIR      the ESP, mounted (e.g. /boot/efi)
#   --device DEV   the ESP's block device or a disk image, not mounted, through mtools
#                  (a disk image takes mtools' offset syntax: disk.img@@1M)
#   --path PATH    the script inside the ESP [EFI/BOOT/autoexec.ipxe]
#
# The new script is checked (an iPXE script with a certificate and a key), written beside the
# old one and flushed to disk, the old one is copied to PATH.bak, then the new one is renamed
# over it and read back. Exit status 0 only when the ESP holds the new script.
set -eu

url= file= esp= device= path=EFI/BOOT/autoexec.ipxe
die() { echo "install-renewal: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --url) url=${2:?}; shift 2 ;;
    --file) file=${2:?}; shift 2 ;;
    --esp) esp=${2:?}; shift 2 ;;
    --device) device=${2:?}; shift 2 ;;
    --path) path=${2:?}; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[ -n "$url$file" ] && [ -z "$url" -o -z "$file" ] || die "give one of --url and --file"
[ -n "$esp$device" ] && [ -z "$esp" -o -z "$device" ] || die "give one of --esp and --device"
case "$path" in /*|*..*|'') die "--path must be relative to the ESP" ;; esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
new="$tmp/new"
if [ -n "$url" ]; then
  if command -v curl >/dev/null 2>&1; then
    curl -fsS --retry 3 -o "$new" "$url" || die "renewal not fetched (curl $?)"
  else
    wget -q -O "$new" "$url" || die "renewal not fetched (wget $?)"
  fi
else
  cp "$file" "$new" || die "cannot read $file"
fi

# What iPXE will run at the next boot: refuse anything that is not a renewed identity.
[ "$(head -c 6 "$new")" = "#!ipxe" ] || die "not an iPXE script; nothing installed"
grep -q '^set cert:hex [0-9a-f:]*$' "$new" && grep -q '^set privkey:hex [0-9a-f:]*$' "$new" \
  || die "the script holds no certificate and key; nothing installed"
[ "$(wc -c <"$new")" -le 65536 ] || die "the script is larger than 64 KiB; nothing installed"

flush() { sync "$@" 2>/dev/null || sync; }

if [ -n "$esp" ]; then
  target="$esp/$path"
  [ -d "$(dirname "$target")" ] || die "$(dirname "$target") does not exist: is the ESP mounted?"
  cp "$new" "$target.new"
  flush "$target.new"
  if [ -f "$target" ]; then
    cp "$target" "$target.bak.new" && flush "$target.bak.new" && mv -f "$target.bak.new" "$target.bak"
  fi
  mv -f "$target.new" "$target"
  flush "$(dirname "$target")"
  cmp -s "$new" "$target" || die "$target does not read back as the renewal"
else
  command -v mcopy >/dev/null 2>&1 || die "--device needs mtools (mcopy, mmove)"
  export MTOOLS_SKIP_CHECK=1
  m="::/$path"
  mcopy -o -i "$device" "$new" "$m.new" || die "cannot write $m.new on $device"
  flush
  if mcopy -n -i "$device" "$m" "$tmp/old" 2>/dev/null; then
    mcopy -o -i "$device" "$tmp/old" "$m.bak" || die "cannot keep $m.bak on $device"
  fi
  # One directory-entry update: the ESP holds the old script or the new one, never neither.
  mmove -D o -i "$device" "$m.new" "$m" || die "cannot rename $m.new on $device"
  flush
  mcopy -n -i "$device" "$m" "$tmp/check" && cmp -s "$new" "$tmp/check" || die "$m does not read back as the renewal"
fi
echo "install-renewal: installed the renewed identity as $path; the next boot uses it"
