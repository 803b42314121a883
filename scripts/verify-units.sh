#!/usr/bin/env bash
# systemd-analyze verify on the shipped units exactly as scripts/install.sh installs them
# (issue 5, acceptance 2). The units name /usr/local/bin/cellkeep, which verify requires to
# exist: so stage an install into a temp root and verify copies whose ExecStart= points at
# the staged binary. Any message about a cellkeep unit fails the check.
#   scripts/verify-units.sh [BINARY]     (default: target/debug/cellkeep, built when missing)
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
bin=${1:-target/debug/cellkeep}
[[ -x $bin ]] || cargo build --locked
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
scripts/install.sh --destdir "$stage/root" --binary "$bin" >/dev/null
mkdir "$stage/units"
for u in cellkeep.service cellkeep.socket; do
  sed "s#/usr/local/bin/cellkeep#$stage/root/usr/local/bin/cellkeep#" \
    "$stage/root/usr/local/lib/systemd/system/$u" >"$stage/units/$u"
done
rc=0
out=$(systemd-analyze verify "$stage/units/cellkeep.service" "$stage/units/cellkeep.socket" 2>&1) || rc=$?
mine=$(grep -i cellkeep <<<"$out" || true)
if ((rc != 0)) || [[ -n $mine ]]; then
  printf '%s\n' "$out"
  echo "systemd-analyze verify: FAILED (exit $rc)" >&2
  exit 1
fi
[[ -z $out ]] || printf 'not about cellkeep, ignored:\n%s\n' "$out"
echo "systemd-analyze verify: cellkeep.service and cellkeep.socket are clean ($(systemctl --version | head -1))"
