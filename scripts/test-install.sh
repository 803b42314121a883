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
# /run/cellkeep made before by someone else (a root `cellkeep run` or the demo once made it 0700,
# locking the socket's group out): the install sets it to 0755 as its tmpfiles line says.
rundir_mode=
if [[ -d /run/cellkeep ]]; then rundir_mode=$(stat -c %a /run/cellkeep); else mkdir /run/cellkeep; fi
chmod 0700 /run/cellkeep
restore_rundir() {
  if [[ -n $rundir_mode ]]; then chmod "$rundir_mode" /run/cellkeep; else rm -rf /run/cellkeep; fi
}
trap 'restore_rundir; rm -rf "$work"' EXIT
snapshot >"$work/before"
t0=$SECONDS
scripts/install.sh --no-start "$@" | tee "$work/first"
t1=$SECONDS
scripts/install.sh --no-start "$@" | tee "$work/second"
if grep -E '^  (installed|created|kept) ' "$work/second"; then fail "the second install changed something"; fi
[[ -x /usr/local/bin/cellkeep ]] || fail "no /usr/local/bin/cellkeep"
getent group cellkeep >/dev/null || fail "no cellkeep group"
/usr/local/bin/cellkeep policy check /etc/cellkeep/policies || fail "installed policies do not check"
[[ $(stat -c %a /run/cellkeep) == 755 ]] || fail "/run/cellkeep is $(stat -c %a /run/cellkeep) after install (want 755)"
# A staged install and uninstall (--destdir) leave the real host alone: its cells' id leases
# under /run/cellkeep/ids included.
mkdir -p /run/cellkeep/ids && touch /run/cellkeep/ids/ck-install-test-marker
scripts/install.sh --destdir "$work/stage" --binary /usr/local/bin/cellkeep >/dev/null
scripts/install.sh --destdir "$work/stage" --uninstall >/dev/null
[[ -e /run/cellkeep/ids/ck-install-test-marker ]] || fail "a staged uninstall removed the host's /run/cellkeep/ids"
rm -f /run/cellkeep/ids/ck-install-test-marker
# An upgrade drops what the new version no longer ships: a policy removed upstream goes (it
# would otherwise still be served), a stale `*.toml.new` goes; an edited one stays.
repo=$work/repo stage=$work/upgrade
mkdir -p "$repo/scripts" && cp -r policies systemd README.md Cargo.toml "$repo/" && cp scripts/install.sh "$repo/scripts/"
cp policies/echo.toml "$repo/policies/dropped.toml" && cp policies/echo.toml "$repo/policies/edited.toml"
"$repo/scripts/install.sh" --destdir "$stage" --binary /usr/local/bin/cellkeep >/dev/null
echo "# edited" >>"$stage/etc/cellkeep/policies/edited.toml"
echo "# a local change" >>"$stage/etc/cellkeep/policies/echo.toml"
echo "# upstream change" >>"$repo/policies/echo.toml"
"$repo/scripts/install.sh" --destdir "$stage" --binary /usr/local/bin/cellkeep >/dev/null
[[ -e $stage/etc/cellkeep/policies/echo.toml.new ]] || fail "no echo.toml.new beside an edited policy"
git -C . show HEAD:policies/echo.toml >"$repo/policies/echo.toml" 2>/dev/null || cp policies/echo.toml "$repo/policies/echo.toml"
rm "$repo/policies/dropped.toml" "$repo/policies/edited.toml"
sed -i '$d' "$stage/etc/cellkeep/policies/echo.toml"
"$repo/scripts/install.sh" --destdir "$stage" --binary /usr/local/bin/cellkeep >/dev/null
[[ ! -e $stage/etc/cellkeep/policies/dropped.toml ]] || fail "a policy no longer shipped survived an upgrade"
[[ ! -e $stage/etc/cellkeep/policies/echo.toml.new ]] || fail "a stale echo.toml.new survived an upgrade"
[[ -e $stage/etc/cellkeep/policies/edited.toml ]] || fail "an edited policy no longer shipped was removed"
"$repo/scripts/install.sh" --destdir "$stage" --uninstall >/dev/null
left=$(find "$stage" -type f | sed "s#^$stage##")
[[ $left == /etc/cellkeep/policies/edited.toml ]] || fail "after the staged uninstall, left: $left"
scripts/install.sh --uninstall | tee "$work/third"
snapshot >"$work/after"
diff -u "$work/before" "$work/after" || fail "the host differs after --uninstall"
echo "install.sh round trip: clean (first install $((t1 - t0)) s, whole round trip $((SECONDS - t0)) s)"
