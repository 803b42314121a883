#!/bin/bash
# Run the crate's test binaries (the privileged integration tests) inside a small QEMU VM with a
# pure cgroup v2 hierarchy (memory, cpu, pids enabled) — the host is hybrid (v1 controllers), so
# this is where the cgroup v2 backend is tested for real.  Root only.
#
# usage: scripts/vm-test.sh [--kernel bookworm|bookworm-backports|both] [--timeout SECS]
#                           [--crate DIR] [--setup-only] [--self-test]
#                           [-- [cargo test selection args] [-- test harness args]]
#   --kernel     which Debian kernel(s) to boot (default both, one after the other):
#                bookworm-backports = 6.12, landlock ABI 6; bookworm = 6.1, landlock ABI 2
#   --timeout    hard limit per kernel, boot included (default 1200 s, env VMTEST_TIMEOUT);
#                on expiry qemu is killed and the run counts as failed (exit 124)
#   --crate DIR  crate to test (default: this repository; env VMTEST_CRATE)
#   --setup-only install qemu/busybox and download the kernels, then stop
#   --release    run the tests against the release build of the crate's binaries: each debug
#                binary a test runs (CARGO_BIN_EXE_*) is bind-mounted over by its release build
#                inside the guest — what scripts/install.sh ships, and ~3x cheaper per process
#                under TCG emulation than the debug build (the host suite covers the debug build)
#   --self-test  check the harness itself with tiny generated crates: a passing run (the vmprobe
#                crate in scripts/vmtest/vmprobe), a failing test (must exit 1) and a hung test
#                (must be killed at a 30 s limit: exit 124); default kernel for it: backports
#   cargo args default to `--tests` (every test binary), harness args to `--show-output`;
#   e.g. `scripts/vm-test.sh -- --test cgroup -- --nocapture`
#
# Steps: scripts/vmtest/setup.sh installs what is missing (apt: qemu-system-x86 busybox-static
# xz-utils zstd cpio kmod) and caches the kernels in $VMTEST_DIR (default
# /var/tmp/cellkeep-vmtest); `cargo test --no-run` builds the binaries on the host (honours
# CARGO_TARGET_DIR); each kernel then boots once and runs every binary in turn, output streamed
# live.  Inside the guest: CI as on the host (privileged tests that cannot run fail instead of
# skipping when it is set), VMTEST_GUEST=1, CELLKEEP_EXPECT_CGROUP=v2, VMTEST_SUITE=<kernel suite>.
# Exit: 0 all passed on every kernel; 124 a kernel's run hit the time limit; 1 a test failed;
# 125 the VM itself failed; 2 usage.
# env: VMTEST_DIR VMTEST_MEM (1G) VMTEST_SMP (nproc) VMTEST_TIMEOUT — see scripts/vmtest/run-vm.sh
set -euo pipefail
HERE=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
VMT=$HERE/vmtest
REPO=$(cd "$HERE/.." && pwd)
export VMTEST_DIR=${VMTEST_DIR:-/var/tmp/cellkeep-vmtest}
KERNELS=both; TIMEOUT=${VMTEST_TIMEOUT:-1200}; CRATE=${VMTEST_CRATE:-$REPO}
SETUP_ONLY=0; SELF_TEST=0; RELEASE=0; cargo_args=(); harness_args=()
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --kernel) KERNELS=${2:?}; shift 2 ;;
    --kernel=*) KERNELS=${1#*=}; shift ;;
    --timeout) TIMEOUT=${2:?}; shift 2 ;;
    --timeout=*) TIMEOUT=${1#*=}; shift ;;
    --crate|--manifest-path) CRATE=${2:?}; shift 2 ;;
    --setup-only) SETUP_ONLY=1; shift ;;
    --self-test) SELF_TEST=1; shift ;;
    --release) RELEASE=1; shift ;;
    -h|--help) usage ;;
    --) shift
        while [[ $# -gt 0 ]]; do
          if [[ $1 == -- ]]; then shift; harness_args=("$@"); shift $#; break; fi
          cargo_args+=("$1"); shift
        done ;;
    *) echo "vm-test: unknown argument $1" >&2; usage ;;
  esac
done
case $KERNELS in
  both) SUITES=(bookworm-backports bookworm) ;;
  bookworm|bookworm-backports) SUITES=("$KERNELS") ;;
  *) echo "vm-test: --kernel must be bookworm, bookworm-backports or both" >&2; exit 2 ;;
esac
[[ $TIMEOUT =~ ^[0-9]+$ ]] || { echo "vm-test: --timeout wants seconds" >&2; exit 2; }
[[ $CRATE == *Cargo.toml ]] && CRATE=$(dirname "$CRATE")
CRATE=$(cd "$CRATE" && pwd)
[[ $(id -u) == 0 ]] || { echo "vm-test: must run as root (apt, cgroups in the guest)" >&2; exit 2; }
say() { echo "vm-test: $*" >&2; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b - a}'; }

# ---- self-test: the harness must pass a passing crate, fail a failing one, kill a hung one
if [[ $SELF_TEST == 1 ]]; then
  [[ $KERNELS == both ]] && KERNELS=bookworm-backports
  ST=$(mktemp -d /tmp/vm-test-selftest.XXXXXX); trap 'rm -rf "$ST"' EXIT
  export CARGO_TARGET_DIR=$ST/target
  cp -r "$VMT/vmprobe" "$ST/vmprobe"
  mkdir -p "$ST/hang/src" "$ST/hang/tests"
  printf '[package]\nname = "vmhang"\nversion = "0.1.0"\nedition = "2021"\n' > "$ST/hang/Cargo.toml"
  : > "$ST/hang/src/lib.rs"
  printf '#[test]\nfn hangs_forever() {\n    eprintln!("vmhang: sleeping forever");\n    loop { std::thread::sleep(std::time::Duration::from_secs(3600)); }\n}\n' > "$ST/hang/tests/hang.rs"
  bad=0
  check() {  # want-rc label args...
    local want=$1 label=$2 rc=0; shift 2
    say "self-test: $label (expect exit $want)"
    "$0" --kernel "$KERNELS" "$@" || rc=$?
    if [[ $rc == "$want" ]]; then say "self-test: $label: OK (exit $rc)"
    else say "self-test: $label: WRONG (exit $rc, wanted $want)"; bad=1; fi
  }
  check 0   "passing crate (vmprobe: cgroup v2 controllers, OOM kill, pids, cpu.max, landlock, seccomp)" \
            --crate "$ST/vmprobe" --timeout 300
  VMPROBE_FAIL=1 check 1 "failing test (VMPROBE_FAIL=1 makes vmprobe's fails_when_asked fail)" \
            --crate "$ST/vmprobe" --timeout 300
  check 124 "hung test (sleeps forever; 30 s limit)" --crate "$ST/hang" --timeout 30
  [[ $bad == 0 ]] && say "self-test: PASSED" || say "self-test: FAILED"
  exit $bad
fi

# ---- 1. setup (idempotent: installs only what is missing, kernels cached in $VMTEST_DIR)
t0=$(now)
declare -A KERNEL
for s in "${SUITES[@]}"; do KERNEL[$s]=$("$VMT/setup.sh" "$s"); done
say "setup: $(secs "$t0" "$(now)") s (${SUITES[*]}; cache $VMTEST_DIR)"
[[ $SETUP_ONLY == 1 ]] && exit 0

# ---- 2. build the test binaries on the host
((${#cargo_args[@]})) || cargo_args=(--tests)
# --show-output: the tests' own stderr (e.g. "cgroup backend: v2 ...") is printed for passing tests too
((${#harness_args[@]})) || harness_args=(--show-output)
t0=$(now)
WORK=$(mktemp -d "$VMTEST_DIR/suite.XXXXXX"); trap 'rm -rf "$WORK"' EXIT
say "building test binaries: (cd $CRATE && cargo test --no-run ${cargo_args[*]})"
# one JSON line per artifact; test executables carry "test":true in their profile
(cd "$CRATE" && cargo test --no-run --message-format=json-render-diagnostics "${cargo_args[@]}") \
  > "$WORK/cargo.json" || { say "cargo test --no-run failed"; exit 1; }
grep '"reason":"compiler-artifact"' "$WORK/cargo.json" | grep '"profile":{[^}]*"test":true' \
  | sed -n 's/.*"manifest_path":"\([^"]*\)".*"executable":"\([^"]*\)".*/\1 \2/p' > "$WORK/list"
[[ -s $WORK/list ]] || { say "no test executables found"; exit 1; }
# the crate's own binaries the tests run: "debug-path release-path" per binary (--release)
: > "$WORK/bins"
if [[ $RELEASE == 1 ]]; then
  (cd "$CRATE" && cargo build --release --locked --bins --message-format=json-render-diagnostics) \
    > "$WORK/cargo-release.json" || { say "cargo build --release failed"; exit 1; }
  bins() { grep '"reason":"compiler-artifact"' "$1" | grep '"kind":\["bin"\]' | grep '"test":false' \
    | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | sort; }
  join -j1 <(bins "$WORK/cargo.json" | awk -F/ '{print $NF, $0}' | sort) \
           <(bins "$WORK/cargo-release.json" | awk -F/ '{print $NF, $0}' | sort) \
    | awk '{print $2, $3}' > "$WORK/bins"
  [[ -s $WORK/bins ]] || { say "--release: no binaries of the crate found"; exit 1; }
fi
say "build: $(secs "$t0" "$(now)") s, $(wc -l < "$WORK/list") test binaries"
# vmprobe's main prints the guest's landlock ABI / seccomp / cgroup2 facts in the header
PROBE=$VMTEST_DIR/vmprobe-target/debug/vmprobe
CARGO_TARGET_DIR=$VMTEST_DIR/vmprobe-target cargo build -q --offline --locked \
  --manifest-path "$VMT/vmprobe/Cargo.toml" --bin vmprobe 2>/dev/null || PROBE=

# ---- 3. the script the guest runs: every binary in turn, a failure does not stop the rest
{
  # RUSTC_BOOTSTRAP lets the stable test harness take `-Z unstable-options --report-time`
  # (per-test durations; scripts/test.sh passes it)
  echo 'export VMTEST_GUEST=1 CELLKEEP_EXPECT_CGROUP=v2 RUSTC_BOOTSTRAP=1'
  echo 'echo "== vm: [$VMTEST_SUITE] kernel $(uname -r), booted in $(cut -d" " -f1 /proc/uptime) s; /sys/fs/cgroup: $(stat -f -c %T /sys/fs/cgroup) [$(cat /sys/fs/cgroup/cgroup.subtree_control)]; LSMs: $(cat /sys/kernel/security/lsm 2>/dev/null); CI=${CI-<unset>}"'
  [[ -x $PROBE ]] && printf 'echo "== vm: $(%q)"\n' "$PROBE"   # landlock ABI, seccomp, cgroup2 magic
  # --release: the tests' CARGO_BIN_EXE_* paths run the release build; the debug build stays at
  # /tmp/vmtest-debug-<name> (CELLKEEP_DEBUG_BIN for cellkeep) for the few tests that need its
  # test hooks (tests/harness: Builder::debug_build)
  while read -r debug release; do
    name=${debug##*/}
    printf 'touch /tmp/vmtest-debug-%s && mount --bind %q /tmp/vmtest-debug-%s\n' "$name" "$debug" "$name"
    [[ $name == cellkeep ]] && echo "export CELLKEEP_DEBUG_BIN=/tmp/vmtest-debug-cellkeep"
    printf 'mount --bind %q %q && echo "== vm: %s is the release build"\n' "$release" "$debug" "$name"
  done < "$WORK/bins"
  echo 'rc=0; failed=()'
  while read -r manifest exe; do
    dir=$(dirname "$manifest")
    printf 'echo "     Running (vm) %q"\n' "${exe#$CRATE/}"
    printf '(cd %q && CARGO_MANIFEST_DIR=%q %q' "$dir" "$dir" "$exe"
    printf ' %q' "${harness_args[@]}"
    printf ') || { rc=1; failed+=(%q); }\n' "${exe##*/}"
  done < "$WORK/list"
  echo '[ $rc = 0 ] || echo "== vm: FAILED: ${failed[*]}"'
  echo 'exit $rc'
} > "$WORK/suite.sh"

# ---- 4. one boot per kernel; output streamed as it happens
final=0; summary=()
for s in "${SUITES[@]}"; do
  k=${KERNEL[$s]}; kver=${k##*/vmlinuz-}
  say "=== $s: kernel $kver, ${VMTEST_MEM:-1G} RAM, ${VMTEST_SMP:-$(nproc)} vCPUs (TCG), limit ${TIMEOUT}s"
  t0=$(now); rc=0
  (cd "$CRATE" && VMTEST_SUITE=$s VMTEST_KERNEL=$k VMTEST_TIMEOUT=$TIMEOUT VMTEST_MEM=${VMTEST_MEM:-1G} \
     "$VMT/run-vm.sh" bash "$WORK/suite.sh") || rc=$?
  dt=$(secs "$t0" "$(now)")
  case $rc in
    0)   verdict=PASS ;;
    124) verdict="TIMEOUT (qemu killed after ${TIMEOUT}s)" ;;
    125) verdict="VM FAILURE (no exit status from the guest)" ;;
    *)   verdict="FAIL (exit $rc)" ;;
  esac
  line="vm-test: $s ($kver): $verdict in ${dt}s"
  echo "$line"; summary+=("$line")
  if [[ $rc == 124 ]]; then final=124
  elif [[ $rc != 0 && $final == 0 ]]; then final=$rc; fi
done
((${#SUITES[@]} > 1)) && printf '%s\n' "== summary" "${summary[@]}"
exit $final
