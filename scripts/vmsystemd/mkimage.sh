#!/bin/bash
# Build (once) the systemd lane's guest image: Debian bookworm from the host's Debian mirror with
# debootstrap (minbase + the packages listed in ./packages), systemd as PID 1, no network, a
# unit that runs the lane's guest script from the 9p share, packed into a raw ext4 file.
# Cached in $VMTEST_DIR/systemd-image/<key>/rootfs.ext4, key = hash of this script, ./packages
# and ./lane-units; a changed list or script builds a new image (old ones are removed). The image
# is made read-only (0444): qemu boots it with snapshot=on, so every run starts from it pristine.
# Prints the image's path. Root only; installs debootstrap (apt) when missing.
# usage: mkimage.sh        env: VMTEST_DIR (default /var/tmp/cellkeep-vmtest)
set -euo pipefail
HERE=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
VMTEST_DIR=${VMTEST_DIR:-/var/tmp/cellkeep-vmtest}
log() { echo "vm-systemd: image: $*" >&2; }
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
mkdir -p "$VMTEST_DIR/systemd-image"
key=$(cat "$HERE/mkimage.sh" "$HERE/packages" "$HERE"/lane-units/* | sha256sum | cut -c1-16)
D=$VMTEST_DIR/systemd-image/$key IMG=$D/rootfs.ext4
exec 7>"$VMTEST_DIR/systemd-image/.lock"; flock 7
# stdout carries only the image's path (fd 3); every tool's chatter goes to stderr
exec 3>&1 1>&2
if [[ -s $IMG && -f $D/done ]]; then echo "$IMG" >&3; exit 0; fi

pkgs=$(grep -v '^#' "$HERE/packages" | tr -s ' \n' ',' | sed 's/^,//; s/,$//')
if ! command -v debootstrap >/dev/null; then
  log "installing debootstrap"
  timeout 300 apt-get update -qq
  timeout 600 apt-get install -y -qq --no-install-recommends --no-remove debootstrap >/dev/null
fi
command -v mkfs.ext4 >/dev/null || timeout 600 apt-get install -y -qq --no-install-recommends --no-remove e2fsprogs >/dev/null
HOSTSRC=/etc/apt/sources.list.d/debian.sources
MIRROR=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' "$HOSTSRC" 2>/dev/null || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}

rm -rf "$D.tmp"; mkdir -p "$D.tmp"
R=$D.tmp/root
trap 'rm -rf "$D.tmp"' EXIT
log "debootstrap bookworm (minbase + $pkgs) from $MIRROR — once, ~2-4 min"
t0=$SECONDS
if ! timeout 1800 debootstrap --variant=minbase --include="$pkgs" \
      --keyring=/usr/share/keyrings/debian-archive-keyring.gpg bookworm "$R" "$MIRROR" \
      > "$D.tmp/debootstrap.log" 2>&1; then
  tail -30 "$D.tmp/debootstrap.log" >&2
  log "debootstrap failed (full log above, last 30 lines)"; exit 1
fi
log "debootstrap: $((SECONDS - t0)) s"

# --- configuration: a plain host, plus the lane's runner unit and target
echo cellkeep-lane > "$R/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tcellkeep-lane\n' > "$R/etc/hosts"
# / is mounted read-write by the initramfs; nothing else to mount
printf '# <file system> <mount point> <type> <options> <dump> <pass>\n/dev/vda / ext4 rw,relatime 0 0\n' > "$R/etc/fstab"
printf 'deb %s bookworm main\n' "$MIRROR" > "$R/etc/apt/sources.list"
# an empty machine-id: systemd generates one at each boot (a fresh host each run)
: > "$R/etc/machine-id"; rm -f "$R/var/lib/dbus/machine-id"
install -m 0644 "$HERE"/lane-units/*.service "$HERE"/lane-units/*.target "$R/etc/systemd/system/"
mkdir -p "$R/mnt/lane"
# no getty on the serial console (the lane target does not pull it in anyway)
chroot "$R" systemctl mask serial-getty@ttyS0.service getty@tty1.service >/dev/null 2>&1 || true
chroot "$R" apt-get clean
rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin "$R"/var/log/*.log "$R"/var/log/apt/*
echo "bookworm minbase + $pkgs; built $(date -u +%FT%TZ) by scripts/vmsystemd/mkimage.sh (key $key)" > "$R/etc/cellkeep-lane-image"

size=$(( ($(du -sm "$R" | cut -f1) + 1536) ))   # room for the install and the run's writes
mkfs.ext4 -q -F -L cellkeep-lane -d "$R" "$D.tmp/rootfs.ext4" "${size}M" >/dev/null
chmod 0444 "$D.tmp/rootfs.ext4"
rm -rf "$D"; mkdir -p "$D"
mv "$D.tmp/rootfs.ext4" "$IMG"
cp "$D.tmp/debootstrap.log" "$D/"
dpkg-query --admindir="$R/var/lib/dpkg" -W -f='${Package} ${Version}\n' > "$D/packages.lst"
touch "$D/done"
for old in "$VMTEST_DIR"/systemd-image/*/; do   # images of an older package list or script
  old=${old%/}
  [[ $old == "$D" || $old == *.tmp ]] || { log "removing the outdated image $old"; rm -rf "$old"; }
done
log "built $IMG ($(du -h --apparent-size "$IMG" | cut -f1) sparse, $(du -h "$IMG" | cut -f1) used, $(wc -l < "$D/packages.lst") packages) in $((SECONDS - t0)) s"
echo "$IMG" >&3
