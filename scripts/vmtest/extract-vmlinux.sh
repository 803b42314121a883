#!/bin/bash
# Adapted from the recipe in /work/shared/vmtest; run-vm.sh calls it once per kernel version.
# Extract the uncompressed ELF vmlinux from a bzImage (like the kernel's scripts/extract-vmlinux).
# QEMU boots such an ELF directly through its PVH entry point (CONFIG_PVH=y in Debian kernels),
# which skips the in-guest decompressor: ~3 s saved per boot under TCG.
# usage: extract-vmlinux.sh /boot/vmlinuz-X OUT
set -uo pipefail
img=$1 out=$2 tmp=$2.tmp.$$
try() {  # $1 = magic (grep -P syntax), rest = decompressor
  local magic=$1; shift
  for off in $(LC_ALL=C grep -obUaP "$magic" "$img" | cut -d: -f1); do
    tail -c +$((off + 1)) "$img" | "$@" > "$tmp" 2>/dev/null
    if [[ $(head -c 4 "$tmp" | od -An -c | tr -d ' ') == '177ELF' ]]; then mv "$tmp" "$out"; return 0; fi
  done
  rm -f "$tmp"; return 1
}
try '\xfd7zXZ\x00' xz -dcq || try '\x28\xb5\x2f\xfd' zstd -dcq || try '\x1f\x8b\x08' gzip -dcq \
  || { echo "extract-vmlinux: no xz/zstd/gzip payload found in $img" >&2; exit 1; }
