#!/bin/bash
# Idempotent setup for the cgroup-v2 test VM (root, Debian bookworm host).
#  1. apt-installs qemu-system-x86, busybox-static, xz-utils, zstd, cpio, kmod — only the
#     ones that are missing (no apt-get update when nothing is missing), never removing an
#     installed package (QEMU comes from bookworm-backports when the host's qemu-utils is 10.x).
#  2. downloads the newest Debian kernel .deb of SUITE from the host's own Debian mirror with a
#     private apt state (the host's sources.list and dpkg database stay untouched) and unpacks
#     it into $VMTEST_DIR/kernels/SUITE (NOT installed: nothing in /boot, no initramfs-tools).
#     A kernel already unpacked there is reused without any network access; VMTEST_REFRESH=1
#     re-resolves the newest version.
#  3. prints one line: the path of the kernel image (vmlinuz) to boot.
# usage: setup.sh [bookworm|bookworm-backports]
#        bookworm = 6.1 (landlock ABI 2), bookworm-backports = 6.12 (landlock ABI 6)
# env:   VMTEST_DIR (default /var/tmp/cellkeep-vmtest)   VMTEST_REFRESH=1
# Adapted from the recipe in /work/shared/vmtest (setup.sh).
set -euo pipefail
SUITE=${1:-bookworm-backports}
case $SUITE in bookworm|bookworm-backports) ;; *) echo "setup.sh: unknown suite $SUITE" >&2; exit 2 ;; esac
VMTEST_DIR=${VMTEST_DIR:-/var/tmp/cellkeep-vmtest}; mkdir -p "$VMTEST_DIR"
log() { echo "vm-setup: $*" >&2; }
export DEBIAN_FRONTEND=noninteractive

# serialise concurrent setups (two CI jobs, or both kernels at once) on one lock
exec 8>"$VMTEST_DIR/.setup.lock"; flock 8

# 1. host packages, only the missing ones
need=()
for p in qemu-system-x86 busybox-static xz-utils zstd cpio kmod; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || need+=("$p")
done
HOSTSRC=/etc/apt/sources.list.d/debian.sources
[[ -r $HOSTSRC ]] || { echo "setup.sh: no $HOSTSRC to take the Debian mirror from" >&2; exit 1; }
URI=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' "$HOSTSRC")
if ((${#need[@]})); then
  log "installing ${need[*]}"
  timeout 300 apt-get update -qq
  # --no-remove: never trade an installed package for ours.  These hosts carry qemu-utils from
  # bookworm-backports (10.x), which Breaks bookworm's qemu-system-common 7.2; then take QEMU
  # from bookworm-backports too (host sources + a backports stanza, private lists/cache; the
  # host's sources.list stays as it is), keeping qemu-utils at its installed version.
  if ! timeout 900 apt-get install -y -qq --no-install-recommends --no-remove "${need[@]}" >/dev/null 2>"$VMTEST_DIR/apt-install.err"; then
    log "bookworm's QEMU does not fit next to the installed packages; using bookworm-backports"
    B=$VMTEST_DIR/apt/host+backports; mkdir -p "$B/etc" "$B/lists/partial" "$B/cache/archives/partial"
    cp "$HOSTSRC" "$B/etc/host.sources"
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$URI" > "$B/etc/backports.sources"
    BO=(-o Dir::Etc::sourcelist=/dev/null -o "Dir::Etc::sourceparts=$B/etc" -o "Dir::State::Lists=$B/lists"
        -o "Dir::Cache=$B/cache" -o APT::Sandbox::User=root)
    timeout 300 apt-get "${BO[@]}" update -qq
    timeout 900 apt-get "${BO[@]}" install -y -qq --no-install-recommends --no-remove \
      -t bookworm-backports "${need[@]}" >/dev/null \
      || { cat "$VMTEST_DIR/apt-install.err" >&2; echo "setup.sh: apt-get install failed" >&2; exit 1; }
    rm -rf "$B/cache/archives/"*.deb
  fi
fi

# 2. the kernel, cached per suite
K=$VMTEST_DIR/kernels/$SUITE
if [[ ${VMTEST_REFRESH:-0} != 1 && -s $K/KVER ]]; then
  KVER=$(cat "$K/KVER")
  if [[ -r $K/boot/vmlinuz-$KVER && -d $K/lib/modules/$KVER ]]; then
    echo "$K/boot/vmlinuz-$KVER"; exit 0
  fi
fi
# private apt state for the download; sources = the host's Debian mirror, pointed at SUITE
A=$VMTEST_DIR/apt/$SUITE; mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/etc" "$A/debs"
if [[ $SUITE == bookworm ]]; then SUITES="bookworm bookworm-updates"; else SUITES=$SUITE; fi
printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
  "$URI" "$SUITES" > "$A/etc/k.sources"
if [[ $SUITE == bookworm ]]; then   # the security archive carries the newest 6.1 kernel
  printf '\n' >> "$A/etc/k.sources"
  awk 'BEGIN{RS="";ORS="\n\n"} /security/' "$HOSTSRC" >> "$A/etc/k.sources"
fi
: > "$A/status"   # resolve against an empty dpkg status: the newest kernel, whatever is installed
APTO=(-o Dir::Etc::sourcelist=/dev/null -o "Dir::Etc::sourceparts=$A/etc" -o "Dir::State::Lists=$A/lists"
      -o "Dir::Cache=$A/cache" -o "Dir::State::status=$A/status" -o Debug::NoLocking=1
      -o APT::Sandbox::User=root)
log "resolving the $SUITE kernel"
timeout 300 apt-get "${APTO[@]}" update -qq
PKG=$(apt-cache "${APTO[@]}" depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[[ -n $PKG ]] || { echo "setup.sh: could not resolve linux-image-amd64 in $SUITE" >&2; exit 1; }
KVER=${PKG#linux-image-}
if [[ ! -r $K/boot/vmlinuz-$KVER ]]; then
  log "downloading $PKG"
  (cd "$A/debs" && rm -f ./*.deb && timeout 900 apt-get "${APTO[@]}" download "$PKG" >/dev/null)
  rm -rf "$K.tmp"; mkdir -p "$K.tmp"
  dpkg-deb -x "$A/debs/${PKG}"_*.deb "$K.tmp"
  depmod -b "$K.tmp" "$KVER"
  rm -rf "$K"; mv "$K.tmp" "$K"
  rm -f "$A/debs/"*.deb   # ~100 MB; the unpacked tree is what we keep
fi
echo "$KVER" > "$K/KVER"
echo "$K/boot/vmlinuz-$KVER"
