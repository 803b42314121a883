#!/bin/bash
# The systemd lane (issue 15): cellkeep deployed the way users deploy it. Boots a Debian bookworm
# guest with systemd 252 as PID 1 on a pure cgroup v2 hierarchy (kernel 6.12 from
# bookworm-backports, QEMU/TCG, no network), installs cellkeep inside with scripts/install.sh
# exactly as a user would, and runs named checks, each printing PASS or FAIL:
#   boot               systemd is PID 1, cgroup v2 only
#   install            install.sh: binary on PATH, group, socket enabled, service started
#   service-active     systemctl status cellkeep: active (running), READY reached
#   socket-activation  service stopped, socket listening: the first connect starts it
#   member-exec        a user in group cellkeep: exec through the socket in their workspace
#   member-session     ... spawn, send, ps; the payload runs as that user
#   non-member-refused a user outside the group is refused
#   delegated-cgroups  cells are cgroups under /system.slice/cellkeep.service/
#   reload-broken      a broken policy: reload rejected, `systemctl reload` non-zero, session lives
#   reload-fixed       a fixed policy: loaded, `systemctl reload` 0, session lives
#   kill9-restart      kill -9 of the daemon: restarted, no process or cgroup of old cells left
#   stop-live-cells    systemctl stop with live cells: clean exit, nothing left
#   uninstall          install.sh --uninstall: files, users, groups, unit files as before
#
# usage: scripts/vm-systemd.sh [--binary PATH] [--timeout SECS] [--checks "NAME..."]
#                              [--setup-only] [--self-test] [--workaround]
#   --binary PATH  the cellkeep binary to install (default: `cargo build --locked`, then
#                  target/debug/cellkeep; CARGO_TARGET_DIR is honoured)
#   --timeout SECS hard limit for the whole guest, boot included (default 900, env
#                  VMSYSTEMD_TIMEOUT); on expiry qemu is killed and the lane exits 124
#   --checks LIST  run only these checks (space- or comma-separated; default: all). Later
#                  checks assume the earlier ones ran (install first)
#   --setup-only   install what is missing, build/cached the image, then stop
#   --self-test    prove the lane cannot pass by accident: a guest whose checks pass (exit 0), one
#                  with a failing check injected (must exit 1), one that hangs (must be killed at
#                  a 60 s limit: exit 124)
#   --workaround   diagnosis only: apply the issue-15 workarounds in the guest (mkdir /work,
#                  RestrictSUIDSGID=no drop-in) right after install, to see the later checks
#
# Exit: 0 every check passed; 1 a check failed; 124 the guest hit the time limit (killed);
# 125 the VM itself failed (no result); 2 usage.
#
# Steps: scripts/vmtest/setup.sh installs qemu etc. and caches the 6.12 kernel (as vm-test.sh);
# scripts/vmsystemd/mkimage.sh builds the guest image once with debootstrap from the host's
# Debian mirror and caches it in $VMTEST_DIR/systemd-image/<hash of the package list and the
# script>/ (rebuilt when they change); the initramfs (scripts/vmsystemd/init) is cached per
# kernel. Each run boots the cached image with snapshot=on (writes go to a throw-away overlay:
# the image stays pristine) and shares a run directory over 9p (tag "lane", /mnt/lane in the
# guest) holding the repository's files (git ls-files), the binary and
# scripts/vmsystemd/guest.sh, which cellkeep-lane.service runs once systemd reached
# cellkeep-lane.target (basic.target + the runner: no getty, no multi-user services). Guest
# output is streamed from the serial console; the result comes back in the share.
# env: VMTEST_DIR (default /var/tmp/cellkeep-vmtest) VMSYSTEMD_MEM (1G) VMSYSTEMD_SMP (nproc)
#      VMSYSTEMD_TIMEOUT LANE_SESSION_USER (alice; root: lifecycle sessions opened by root)
set -euo pipefail
HERE=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
VS=$HERE/vmsystemd VMT=$HERE/vmtest
REPO=$(cd "$HERE/.." && pwd)
export VMTEST_DIR=${VMTEST_DIR:-/var/tmp/cellkeep-vmtest}
TIMEOUT=${VMSYSTEMD_TIMEOUT:-900} BINARY= CHECKS=all SETUP_ONLY=0 SELF_TEST=0 WORKAROUND=0
INJECT=${VMSYSTEMD_INJECT:-}
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --binary) BINARY=${2:?}; shift 2 ;;
    --timeout) TIMEOUT=${2:?}; shift 2 ;;
    --checks) CHECKS=${2:?}; shift 2 ;;
    --setup-only) SETUP_ONLY=1; shift ;;
    --self-test) SELF_TEST=1; shift ;;
    --workaround) WORKAROUND=1; shift ;;
    --inject) INJECT=${2:?}; shift 2 ;;   # fail|hang: used by --self-test
    -h|--help) usage ;;
    *) echo "vm-systemd: unknown argument $1" >&2; usage ;;
  esac
done
[[ $TIMEOUT =~ ^[0-9]+$ ]] || { echo "vm-systemd: --timeout wants seconds" >&2; exit 2; }
[[ -z $INJECT || $INJECT == fail || $INJECT == hang ]] || { echo "vm-systemd: --inject fail|hang" >&2; exit 2; }
CHECKS=${CHECKS//,/ }
[[ $(id -u) == 0 ]] || { echo "vm-systemd: must run as root (apt, debootstrap, qemu)" >&2; exit 2; }
say() { echo "vm-systemd: $*" >&2; }

# ---- self-test: a passing guest, a failing check, a hung guest
if [[ $SELF_TEST == 1 ]]; then
  bad=0
  st() {  # want-rc label args...
    local want=$1 label=$2 rc=0; shift 2
    say "self-test: $label (expect exit $want)"
    "$0" "$@" || rc=$?
    if [[ $rc == "$want" ]]; then say "self-test: $label: OK (exit $rc)"
    else say "self-test: $label: WRONG (exit $rc, wanted $want)"; bad=1; fi
  }
  # no install needed: the boot check alone (systemd PID 1, pure cgroup v2) passes on any branch
  st 0   "passing guest (check boot)" --checks boot --timeout 600 ${BINARY:+--binary "$BINARY"}
  st 1   "a failing check injected after boot" --checks boot --inject fail --timeout 600 ${BINARY:+--binary "$BINARY"}
  st 124 "hung guest (sleeps forever; 60 s limit)" --checks boot --inject hang --timeout 60 ${BINARY:+--binary "$BINARY"}
  [[ $bad == 0 ]] && say "self-test: PASSED" || say "self-test: FAILED"
  exit $bad
fi

# ---- 1. setup (idempotent): qemu + kernel, the guest image, the initramfs, the PVH vmlinux
t0=$SECONDS
KERNEL=$("$VMT/setup.sh" bookworm-backports)
KVER=${KERNEL##*/vmlinuz-}; MODROOT=$(dirname "$(dirname "$KERNEL")")
IMAGE=$("$VS/mkimage.sh" | tail -n 1)
[[ -r $IMAGE ]] || { say "no guest image (scripts/vmsystemd/mkimage.sh failed)"; exit 125; }
ikey=$(cat "$VS/init" "$VS/mkinitramfs.sh" | sha256sum | cut -c1-12)
INITRD=$VMTEST_DIR/systemd-initramfs-$KVER-$ikey.cpio.gz
VMLINUX=$VMTEST_DIR/vmlinux-$KVER
(
  flock 9
  if [[ ! -s $INITRD ]]; then
    rm -f "$VMTEST_DIR"/systemd-initramfs-"$KVER"-*.cpio.gz
    "$VS/mkinitramfs.sh" "$INITRD" "$KVER" "$MODROOT" || exit 1
  fi
  [[ -s $VMLINUX ]] || "$VMT/extract-vmlinux.sh" "$KERNEL" "$VMLINUX" || exit 1
) 9>"$VMTEST_DIR/.build.lock" || { say "initramfs/vmlinux build failed"; exit 125; }
say "setup: $((SECONDS - t0)) s (kernel $KVER, image $IMAGE)"
[[ $SETUP_ONLY == 1 ]] && exit 0

# ---- 2. the binary (only the install check needs it)
if [[ -z $BINARY && $CHECKS != all && " $CHECKS " != *" install "* ]]; then
  BINARY=none
elif [[ -z $BINARY ]]; then
  say "building: cargo build --locked --bin cellkeep (debug)"
  (cd "$REPO" && cargo build --locked --bin cellkeep) || { say "cargo build failed"; exit 1; }
  BINARY=${CARGO_TARGET_DIR:-$REPO/target}/debug/cellkeep
fi
[[ $BINARY == none || -x $BINARY ]] || { say "$BINARY is not an executable"; exit 2; }

# ---- 3. the run directory shared with the guest
RUN=$(mktemp -d "$VMTEST_DIR/systemd-run.XXXXXX")
cleanup() { [[ -s $RUN/qemu.pid ]] && kill "$(cat "$RUN/qemu.pid")" 2>/dev/null; rm -rf "$RUN"; }
trap cleanup EXIT
trap 'say "interrupted, stopping qemu"; exit 130' INT
trap 'say "terminated, stopping qemu"; exit 143' TERM HUP
mkdir -p "$RUN/src" "$RUN/bin"
# the repository as a clone would have it: tracked files plus new unignored ones, as in the tree
if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$REPO" && git ls-files -z -co --exclude-standard \
     | while IFS= read -r -d '' f; do [[ -e $f ]] && printf '%s\0' "$f"; done \
     | tar --null -T - -cf -) | tar -xf - -C "$RUN/src"
else   # not a git checkout (an unpacked tarball): everything but build output
  tar -C "$REPO" --exclude=./target --exclude=./.git -cf - . | tar -xf - -C "$RUN/src"
fi
# without its debug info (a debug build is ~100 MB, ~25 MB stripped): copying and hashing it
# inside the emulated guest is what install.sh spends its time on
if [[ $BINARY != none ]]; then
  strip --strip-debug -o "$RUN/bin/cellkeep" "$BINARY" 2>/dev/null || cp "$BINARY" "$RUN/bin/cellkeep"
fi
cp "$VS/guest.sh" "$RUN/guest.sh"
{
  printf 'LANE_CHECKS=%q\n' "$CHECKS"
  printf 'LANE_INJECT=%q\n' "$INJECT"
  printf 'LANE_WORKAROUND=%q\n' "$WORKAROUND"
  printf 'LANE_SESSION_USER=%q\n' "${LANE_SESSION_USER:-alice}"
} > "$RUN/lane.env"

# ---- 4. boot
MEM=${VMSYSTEMD_MEM:-1G} SMP=${VMSYSTEMD_SMP:-$(nproc)}
APPEND="console=ttyS0 panic=-1 quiet loglevel=1 rdinit=/init systemd.unit=cellkeep-lane.target"
APPEND+=" systemd.unified_cgroup_hierarchy=1 systemd.show_status=error systemd.log_target=console"
APPEND+=" systemd.log_level=warning systemd.log_color=0 systemd.firstboot=no"
CFG=$MODROOT/boot/config-$KVER   # landlock must be an active LSM (as run-vm.sh)
if [[ -r $CFG ]]; then
  lsm=$(sed -n 's/^CONFIG_LSM="\(.*\)"/\1/p' "$CFG")
  [[ -n $lsm && ,$lsm, != *,landlock,* ]] && APPEND+=" lsm=landlock,$lsm"
fi
QEMU=(qemu-system-x86_64 -accel tcg,thread=multi -cpu max -machine pc -m "$MEM" -smp "$SMP"
      -display none -no-reboot -nodefaults -serial stdio -pidfile "$RUN/qemu.pid"
      -kernel "$VMLINUX" -initrd "$INITRD" -append "$APPEND"
      -drive "file=$IMAGE,format=raw,if=virtio,snapshot=on"
      -virtfs "local,path=$RUN,mount_tag=lane,security_model=none,id=lane")
say "booting: kernel $KVER, systemd image $(basename "$(dirname "$IMAGE")"), $MEM RAM, $SMP vCPUs (TCG), limit ${TIMEOUT}s, checks: $CHECKS${INJECT:+, injected: $INJECT}"
t0=$SECONDS
# console → our stdout, live (CRs dropped); qemu in the background so INT/TERM stop it at once
{
  qrc=0; timeout -k 5 "$TIMEOUT" "${QEMU[@]}" < /dev/null || qrc=$?
  echo "$qrc" > "$RUN/qemu.rc"
} | sed -u 's/\r$//' &
wait $! || true
qrc=$(cat "$RUN/qemu.rc" 2>/dev/null || echo 125)
dt=$((SECONDS - t0))
if [[ $qrc == 124 || $qrc == 137 ]]; then
  say "TIMEOUT: the guest was still running after ${TIMEOUT}s, qemu killed"
  [[ -s $RUN/results ]] && { say "checks finished before the hang:"; sed 's/^/  /' "$RUN/results" >&2; }
  exit 124
fi
if [[ ! -s $RUN/rc ]]; then
  say "VM FAILURE: the guest ended without a result (qemu exit $qrc, ${dt}s)"
  exit 125
fi
rc=$(cat "$RUN/rc")
echo "== systemd lane: $(grep -c '^PASS' "$RUN/results" || true) passed, $(grep -c '^FAIL' "$RUN/results" || true) failed, ${dt}s (boot to power-off)"
sed 's/^/  /' "$RUN/results"
[[ $rc == 0 ]] && exit 0
exit 1
