#!/bin/bash
# Adapted from the recipe in /work/shared/vmtest; used by run-vm.sh (built once per kernel).
# Build a tiny busybox initramfs for the cgroup-v2 test VM.
# usage: mkinitramfs.sh OUT.cpio.gz [KVER] [--add /path/to/dyn-binary[:/dest/in/guest]]...
# env:   MODROOT=/dir  take modules from /dir/lib/modules/KVER (a kernel .deb unpacked with
#        dpkg-deb -x + depmod -b /dir KVER) instead of /lib/modules/KVER
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(realpath -m "$1"); shift
MODROOT=${MODROOT:-/}
KVER=$(ls "$MODROOT/lib/modules" | sort -V | tail -1)
if [[ $# -gt 0 && $1 != --* ]]; then KVER=$1; shift; fi
mkdir -p "${VMTEST_DIR:-/var/tmp/cellkeep-vmtest}"; STAGE=$(mktemp -d "${VMTEST_DIR:-/var/tmp/cellkeep-vmtest}/initramfs.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE"/{bin,sbin,dev,proc,sys,tmp,host,io,lib/modules,etc}
cp /bin/busybox "$STAGE/bin/busybox"            # from busybox-static (no libs needed)
cp "$HERE/init" "$STAGE/init"; chmod 755 "$STAGE/init"
# virtio-pci + 9p + overlay (+ veth, for the egress tests' host elsewhere) are modules (=m) in Debian's kernels: copy them (and their
# dependencies) in load order as printed by modprobe --show-depends; built-ins are skipped
: > "$STAGE/modules.order"
for want in virtio_pci 9pnet_virtio 9p overlay veth; do
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
# optional dynamically linked binaries: copy them plus every library ldd names
while [[ $# -gt 0 ]]; do
  case $1 in
    --add) src=${2%%:*}; dst=${2#*:}; [[ $dst == "$2" ]] && dst=/$(basename "$src"); shift 2
      mkdir -p "$STAGE$(dirname "$dst")"; cp -L "$src" "$STAGE$dst"
      for lib in $(ldd "$src" 2>/dev/null | grep -oE '/[^ ]+' ); do
        mkdir -p "$STAGE$(dirname "$lib")"; cp -Ln "$lib" "$STAGE$lib"
      done ;;
    *) echo "unknown arg $1" >&2; exit 2 ;;
  esac
done
(cd "$STAGE" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 > "$OUT"
echo "initramfs: $OUT ($(du -h "$OUT" | cut -f1), kernel $KVER, modules: $(tr '\n' ' ' < "$STAGE/modules.order"))"
