#!/bin/bash
# Run one host command inside a throw-away QEMU VM whose /sys/fs/cgroup is a pure cgroup v2
# hierarchy (memory cpu pids enabled), as root, with the host's / visible read-only over 9p under
# a tmpfs overlay (writes are discarded unless the path is listed in VMTEST_RW).  The host's
# environment is exported into the guest command (so CI, RUST_*, CARGO_* travel), plus
# VMTEST_GUEST=1.  Guest console output is streamed to our stdout as it happens.
# Also usable as a cargo runner:
#   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=scripts/vmtest/run-vm.sh cargo test
#
# usage: run-vm.sh CMD [ARGS...]   exit = the command's; 124 timeout (qemu killed); 125 VM failure
#        run-vm.sh --probe         busybox-only smoke test (no host filesystem)
# env:   VMTEST_KERNEL  vmlinuz to boot (default: newest $VMTEST_DIR/kernels/*/boot/vmlinuz-*
#                       as unpacked by setup.sh)
#        VMTEST_MODROOT where lib/modules/<kver> lives (default: the kernel's ../..)
#        VMTEST_DIR     cache + scratch dir (default /var/tmp/cellkeep-vmtest)
#        VMTEST_PVH     1 (default): boot the extracted ELF vmlinux via PVH (no in-guest
#                       decompression, ~3 s faster under TCG); 0: boot the bzImage
#        VMTEST_MEM     guest RAM (default 1G)       VMTEST_SMP  vCPUs (default: host nproc)
#        VMTEST_ACCEL   auto (default: kvm only with real VT-x/AMD-V KVM, else tcg) | tcg | kvm
#        VMTEST_TIMEOUT hard limit in seconds for the whole VM (default 1200)
#        VMTEST_RW      colon-separated host dirs shared read-WRITE at the same path
#        VMTEST_CGROUP  run the command inside this cgroup (e.g. /system.slice/x.service),
#                       created with memory cpu pids enabled down the path (like Delegate=yes)
#        VMTEST_QUIET   1 (default): drop the VM's own lines (VMTEST_DONE, "reboot: Power down")
# Adapted from the recipe in /work/shared/vmtest (run-vm.sh).
set -uo pipefail
HERE=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
VMTEST_DIR=${VMTEST_DIR:-/var/tmp/cellkeep-vmtest}; mkdir -p "$VMTEST_DIR"
KERNEL=${VMTEST_KERNEL:-$(ls "$VMTEST_DIR"/kernels/*/boot/vmlinuz-* 2>/dev/null | sort -V | tail -1)}
[[ -r $KERNEL ]] || { echo "run-vm: no kernel: run scripts/vmtest/setup.sh" >&2; exit 125; }
KVER=${KERNEL##*/vmlinuz-}
if [[ -z ${VMTEST_MODROOT:-} ]]; then   # modules of an unpacked .deb sit next to its boot/
  r=$(dirname "$(dirname "$KERNEL")"); [[ -d $r/lib/modules/$KVER ]] && VMTEST_MODROOT=$r || VMTEST_MODROOT=/
fi
command -v qemu-system-x86_64 >/dev/null || { echo "run-vm: no qemu-system-x86_64: run scripts/vmtest/setup.sh" >&2; exit 125; }

# initramfs + uncompressed vmlinux: built once per kernel version (rebuilt when init changes)
INITRD=$VMTEST_DIR/initramfs-$KVER.cpio.gz
BOOT=$KERNEL
(
  flock 9
  if [[ ! -s $INITRD || $HERE/init -nt $INITRD || $HERE/mkinitramfs.sh -nt $INITRD ]]; then
    VMTEST_DIR=$VMTEST_DIR MODROOT=$VMTEST_MODROOT "$HERE/mkinitramfs.sh" "$INITRD" "$KVER" >&2 || exit 1
  fi
  if [[ ${VMTEST_PVH:-1} == 1 && ! -s $VMTEST_DIR/vmlinux-$KVER ]]; then
    "$HERE/extract-vmlinux.sh" "$KERNEL" "$VMTEST_DIR/vmlinux-$KVER" || exit 1
  fi
) 9>"$VMTEST_DIR/.build.lock" || { echo "run-vm: initramfs/vmlinux build failed" >&2; exit 125; }
[[ ${VMTEST_PVH:-1} == 1 ]] && BOOT=$VMTEST_DIR/vmlinux-$KVER

MEM=${VMTEST_MEM:-1G}; SMP=${VMTEST_SMP:-$(nproc)}; TMO=${VMTEST_TIMEOUT:-1200}
ACCEL_KIND=${VMTEST_ACCEL:-auto}
if [[ $ACCEL_KIND == auto ]]; then   # real VT-x/AMD-V KVM only; PVM's /dev/kvm cannot run stock kernels
  if [[ -w /dev/kvm && ( -d /sys/module/kvm_intel || -d /sys/module/kvm_amd ) && ! -d /sys/module/kvm_pvm ]]; then
    ACCEL_KIND=kvm; else ACCEL_KIND=tcg; fi
fi
case $ACCEL_KIND in
  kvm) ACCEL=(-accel kvm -cpu host,-arch-capabilities) ;;
  *)   ACCEL=(-accel tcg,thread=multi -cpu max) ;;
esac
IO=$(mktemp -d "$VMTEST_DIR/run.XXXXXX")
QEMU=(qemu-system-x86_64 "${ACCEL[@]}" -machine pc -m "$MEM" -smp "$SMP"
      -display none -no-reboot -nodefaults -serial stdio -pidfile "$IO/qemu.pid"
      -kernel "$BOOT" -initrd "$INITRD"
      -virtfs "local,path=$IO,mount_tag=io,security_model=none,id=io")
APPEND="console=ttyS0 panic=-1 quiet loglevel=1 rdinit=/init"
# landlock must be an active LSM, as on a normal Debian boot: Debian's CONFIG_LSM lists it,
# but should a kernel's default list lack it, enable it explicitly (keeping the rest)
CFG=$(dirname "$KERNEL")/config-$KVER
if [[ -r $CFG ]]; then
  lsm=$(sed -n 's/^CONFIG_LSM="\(.*\)"/\1/p' "$CFG")
  [[ -n $lsm && ,$lsm, != *,landlock,* ]] && APPEND+=" lsm=landlock,$lsm"
fi

# stop qemu when we are interrupted or killed (it runs in timeout's own process group,
# so a Ctrl-C or a CI runner's SIGTERM would otherwise leave it running)
kill_qemu() { [[ -s $IO/qemu.pid ]] && kill "$(cat "$IO/qemu.pid")" 2>/dev/null; }
trap 'kill_qemu; rm -rf "$IO"' EXIT
trap 'echo "run-vm: interrupted, stopping qemu" >&2; exit 130' INT
trap 'echo "run-vm: terminated, stopping qemu" >&2; exit 143' TERM HUP

if [[ ${1:-} == --probe ]]; then
  APPEND+=" vmtest.mode=probe"
else
  [[ $# -gt 0 ]] || { echo "usage: run-vm.sh CMD [ARGS...] | --probe" >&2; exit 2; }
  APPEND+=" vmtest.mode=run"
  QEMU+=(-virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap,id=hostroot")
  : > "$IO/rw.list"; i=0
  IFS=: read -ra rwdirs <<< "${VMTEST_RW:-}"
  for d in "${rwdirs[@]}"; do
    [[ -z $d ]] && continue; d=$(realpath "$d")
    QEMU+=(-virtfs "local,path=$d,mount_tag=rw$i,security_model=none,multidevs=remap,id=rw$i")
    echo "rw$i $d" >> "$IO/rw.list"; i=$((i + 1))
  done
  {
    echo "#!/bin/bash"
    for v in $(compgen -e); do     # pass the environment (CI, cargo's CARGO_*, RUST_* ...)
      case $v in PWD|OLDPWD|SHLVL|_|HOSTNAME) continue ;; esac
      printf 'export %s=%q\n' "$v" "${!v}"
    done
    echo 'export VMTEST_GUEST=1     # lets tests tell they run inside the cgroup-v2 VM'
    if [[ -n ${VMTEST_CGROUP:-} ]]; then
      printf 'p=/sys/fs/cgroup; for c in $(echo %q | tr / " "); do echo "+memory +cpu +pids" > $p/cgroup.subtree_control; p=$p/$c; mkdir -p $p; done; echo $$ > $p/cgroup.procs\n' "$VMTEST_CGROUP"
    fi
    printf 'cd %q || exit 125\n' "$PWD"
    if [[ -t 1 ]]; then     # caller has a terminal: give the command the guest console tty
      printf 'exec'; printf ' %q' "$@"; echo
    else                    # caller's stdout is a pipe/file: so is the command's (no colours etc.)
      printf '%q ' "$@"; printf '</dev/null 2>&1 | cat; exit ${PIPESTATUS[0]}\n'
    fi
  } > "$IO/cmd.sh"
fi

# guest console -> our stdout, live; stdin is /dev/null so QEMU never eats the caller's stdin.
# The pipeline runs in the background and we `wait` for it, so the INT/TERM traps fire at once.
{
  timeout -k 5 "$TMO" "${QEMU[@]}" -append "$APPEND" < /dev/null
  echo $? > "$IO/qemu.rc"
} | if [[ ${VMTEST_QUIET:-1} == 1 ]]; then
      grep --line-buffered -av -e '^VMTEST_DONE' -e '\] reboot: Power down'
    else cat; fi &
wait $!
qrc=$(cat "$IO/qemu.rc" 2>/dev/null || echo 125)
[[ $qrc == 124 || $qrc == 137 ]] && { echo "run-vm: TIMEOUT: guest still running after ${TMO}s, qemu killed" >&2; exit 124; }
[[ ${1:-} == --probe ]] && exit "$qrc"
[[ -s $IO/rc ]] || { echo "run-vm: VM ended without an exit status (qemu rc $qrc)" >&2; exit 125; }
exit "$(cat "$IO/rc")"
