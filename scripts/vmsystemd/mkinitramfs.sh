#!/bin/bash
# Build the systemd lane's initramfs: busybox-static + the modules the guest needs to reach its
# root (virtio_blk, ext4, 9p over virtio; overlay and autofs4 for systemd and the daemon) + ./init.
# usage: mkinitramfs.sh OUT.cpio.gz KVER MODROOT     (modules from MODROOT/lib/modules/KVER)
set -euo pipefail
HERE=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
OUT=$(realpath -m "$1") KVER=$2 MODROOT=$3
STAGE=$(mktemp -d "$(dirname "$OUT")/initramfs.XXXXXX"); trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE"/{bin,sbin,dev,proc,sys,newroot,lib/modules}
cp /bin/busybox "$STAGE/bin/busybox"
cp "$HERE/init" "$STAGE/init"; chmod 755 "$STAGE/init"
: > "$STAGE/modules.order"
for want in virtio_pci virtio_blk ext4 9pnet_virtio 9p overlay autofs4; do
  modprobe -d "$MODROOT" -S "$KVER" --show-depends "$want" 2>/dev/null | awk '$1 == "insmod" {print $2}'
done | awk '!seen[$0]++' | while read -r f; do
  m=$(basename "$f"); m=${m%%.ko*}
  case $f in
    *.ko.xz)  xz -dc "$f"    > "$STAGE/lib/modules/$m.ko" ;;
    *.ko.zst) zstd -qdc "$f" > "$STAGE/lib/modules/$m.ko" ;;
    *.ko.gz)  gzip -dc "$f"  > "$STAGE/lib/modules/$m.ko" ;;
    *)        cp "$f" "$STAGE/lib/modules/$m.ko" ;;
  esac
  echo "$m.ko" >> "$STAGE/modules.order"
done
(cd "$STAGE" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 > "$OUT.tmp"
mv -f "$OUT.tmp" "$OUT"
echo "vm-systemd: initramfs $OUT ($(du -h "$OUT" | cut -f1); modules: $(tr '\n' ' ' < "$STAGE/modules.order"))" >&2
