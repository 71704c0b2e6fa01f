#!/usr/bin/env bash
# A farm's own Secure Boot keys, made with openssl: PK (platform key), KEK (key exchange key)
# and db (the signature database key that signs iPXE and the release kernels), each as
#   NAME.key (PEM private key, 0600), NAME.crt (PEM certificate), NAME.cer (DER, what a
#   firmware's setup screen enrolls from a USB stick)
# and guid.txt, the owner GUID the variables carry. Existing keys in DIR are kept, so running it
# again only adds what is missing (an existing db key can be dropped in as db.key + db.crt).
#
#   scripts/secure-boot-keys.sh DIR [--name NAME] [--ovmf-vars OUT] [--aavmf-vars OUT]
#
# --ovmf-vars / --aavmf-vars write a QEMU variable store (from Debian's OVMF_VARS_4M.fd or
# AAVMF_VARS.fd) with PK, KEK and db enrolled and Secure Boot enabled, no Microsoft keys
# (python3-virt-firmware's virt-fw-vars). Then sign with the db key:
#   sbsign --key DIR/db.key --cert DIR/db.crt --output ipxe-signed.efi ipxe.efi
set -euo pipefail

usage() { echo "usage: $0 DIR [--name NAME] [--ovmf-vars OUT] [--aavmf-vars OUT]" >&2; exit 2; }
[ $# -ge 1 ] || usage
dir=$1
shift
name="ipxe-edge farm" ovmf_out="" aavmf_out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --name) [ $# -ge 2 ] || usage; name=$2; shift 2 ;;
    --ovmf-vars) [ $# -ge 2 ] || usage; ovmf_out=$2; shift 2 ;;
    --aavmf-vars) [ $# -ge 2 ] || usage; aavmf_out=$2; shift 2 ;;
    *) usage ;;
  esac
done
command -v openssl >/dev/null || { echo "openssl is needed" >&2; exit 1; }

mkdir -p "$dir"
chmod 700 "$dir"
umask 077
[ -s "$dir/guid.txt" ] || python3 -c 'import uuid; print(uuid.uuid4())' >"$dir/guid.txt"
guid=$(cat "$dir/guid.txt")
for key in PK KEK db; do
  if [ ! -s "$dir/$key.key" ]; then
    openssl req -new -x509 -newkey rsa:2048 -sha256 -days 3650 -nodes -subj "/CN=$name $key/" \
      -keyout "$dir/$key.key" -out "$dir/$key.crt" 2>/dev/null
    echo "made $key: $dir/$key.crt"
  fi
  [ -s "$dir/$key.crt" ] || { echo "$dir/$key.key has no $dir/$key.crt beside it" >&2; exit 1; }
  openssl x509 -in "$dir/$key.crt" -outform DER -out "$dir/$key.cer"
  chmod 644 "$dir/$key.crt" "$dir/$key.cer"
done

vars() { # template, out
  command -v virt-fw-vars >/dev/null || { echo "virt-fw-vars is needed (apt-get install -t bookworm-backports python3-virt-firmware)" >&2; exit 1; }
  [ -f "$1" ] || { echo "no variable store template $1" >&2; exit 1; }
  virt-fw-vars -i "$1" -o "$2" --set-pk "$guid" "$dir/PK.crt" --add-kek "$guid" "$dir/KEK.crt" \
    --add-db "$guid" "$dir/db.crt" --sb --no-microsoft >/dev/null 2>&1 ||
    { echo "virt-fw-vars could not write $2" >&2; exit 1; }
  chmod 644 "$2"
  echo "wrote $2: PK, KEK and db enrolled, Secure Boot on"
}
[ -z "$ovmf_out" ] || vars /usr/share/OVMF/OVMF_VARS_4M.fd "$ovmf_out"
[ -z "$aavmf_out" ] || vars /usr/share/AAVMF/AAVMF_VARS.fd "$aavmf_out"
