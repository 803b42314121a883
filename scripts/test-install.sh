#!/usr/bin/env bash
# Acceptance 3 of issue 5 on this host (root): install.sh, install.sh again (must change
# nothing), install.sh --uninstall; then the host must be as it was: the same files under
# /usr/local and /etc, the same /run entries, the same users and groups. Extra arguments go to
# both installs (e.g. --binary target/debug/cellkeep to skip the release build).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
[[ $(id -u) == 0 ]] || { echo "test-install.sh: must run as root" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
snapshot() {
  find /usr/local /etc -xdev 2>/dev/null | sort
  find /run -maxdepth 1 | sort
  getent passwd | sort
  getent group | sort
}
fail() { echo "test-install.sh: FAILED: $*" >&2; exit 1; }
snapshot >"$work/before"
t0=$SECONDS
scripts/install.sh --no-start "$@" | tee "$work/first"
t1=$SECONDS
scripts/install.sh --no-start "$@" | tee "$work/second"
if grep -E '^  (installed|created|kept) ' "$work/second"; then fail "the second install changed something"; fi
[[ -x /usr/local/bin/cellkeep ]] || fail "no /usr/local/bin/cellkeep"
getent group cellkeep >/dev/null || fail "no cellkeep group"
/usr/local/bin/cellkeep policy check /etc/cellkeep/policies || fail "installed policies do not check"
scripts/install.sh --uninstall | tee "$work/third"
snapshot >"$work/after"
diff -u "$work/before" "$work/after" || fail "the host differs after --uninstall"
echo "install.sh round trip: clean (first install $((t1 - t0)) s, whole round trip $((SECONDS - t0)) s)"
