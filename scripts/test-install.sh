#!/usr/bin/env bash
# Acceptance 3 of issue 5 on this host (root): install.sh, install.sh again (must change
# nothing), install.sh --uninstall; then the host must be as it was: the same files under
# /usr/local and /etc, the same /run and /srv entries, the same users and groups. Extra arguments
# go to every install (e.g. --binary target/debug/cellkeep to skip the release build).
# Before that, failed installs: one that really fails part-way (a file where
# /etc/cellkeep/policies must go) and one failed on purpose after its last host change
# (CELLKEEP_INSTALL_TEST_FAULT=fail, a hook of install.sh for this test only) must each leave the
# host as it was; one killed outright there (CELLKEEP_INSTALL_TEST_FAULT=kill: no rollback) must
# leave a manifest that --uninstall, and a re-run, take as theirs. Also a staged --prefix /opt/...
# install: its units go where systemd reads them.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
[[ $(id -u) == 0 ]] || { echo "test-install.sh: must run as root" >&2; exit 1; }
fail() { echo "test-install.sh: FAILED: $*" >&2; exit 1; }
[[ ! -e /usr/local/share/cellkeep/install.manifest && ! -e /etc/cellkeep ]] \
  || fail "cellkeep is installed here (or /etc/cellkeep is left over): uninstall it first"
work=$(mktemp -d)
snapshot() {
  find /usr/local /etc -xdev 2>/dev/null | sort
  find /run /srv -maxdepth 1 2>/dev/null | sort
  getent passwd | sort
  getent group | sort
}
# /run/cellkeep made before by someone else (a root `cellkeep run` or the demo once made it 0700,
# locking the socket's group out): the install sets it to 0755 as its tmpfiles line says.
rundir_mode=
if [[ -d /run/cellkeep ]]; then rundir_mode=$(stat -c %a /run/cellkeep); else mkdir /run/cellkeep; fi
chmod 0700 /run/cellkeep
obstacle=
cleanup() {
  if [[ -n $rundir_mode ]]; then chmod "$rundir_mode" /run/cellkeep; else rm -rf /run/cellkeep; fi
  if [[ -n $obstacle ]]; then rm -f /etc/cellkeep/policies; rmdir /etc/cellkeep 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
snapshot >"$work/before"
same_host() { # same_host WHAT: the host must be as in $work/before
  snapshot >"$work/now"
  diff -u "$work/before" "$work/now" || fail "the host differs $1"
}

# A failed install leaves nothing behind: a real failure part-way (the binary, units and
# cellkeep.toml are in place when /etc/cellkeep/policies cannot be made) ...
mkdir /etc/cellkeep && : >/etc/cellkeep/policies && obstacle=1
snapshot >"$work/before"
if scripts/install.sh --no-start "$@" >"$work/failed" 2>&1; then
  cat "$work/failed"; fail "install.sh succeeded with a file in the way of /etc/cellkeep/policies"
fi
sed 's/^/    | /' "$work/failed"
same_host "after an install that failed part-way"
scripts/install.sh --uninstall >/dev/null
same_host "after --uninstall of an install that failed part-way"
rm /etc/cellkeep/policies && rmdir /etc/cellkeep && obstacle=
snapshot >"$work/before"
# ... and one failed after its last host change (group, /run/cellkeep, /srv/cellkeep, units).
if CELLKEEP_INSTALL_TEST_FAULT=fail scripts/install.sh --no-start "$@" >"$work/failed" 2>&1; then
  cat "$work/failed"; fail "CELLKEEP_INSTALL_TEST_FAULT=fail: install.sh succeeded"
fi
grep -q 'rolled back' "$work/failed" || { cat "$work/failed"; fail "a failed install did not say it rolled back"; }
same_host "after an install that failed after its host changes (rolled back)"
# Killed there (no trap runs): the manifest written so far lists what it made; --uninstall
# removes that, and a re-run (the round trip below) owns it (/srv/cellkeep is not "present").
killed() {
  local rc=0
  TMPDIR=$work CELLKEEP_INSTALL_TEST_FAULT=kill scripts/install.sh --no-start "$@" >"$work/killed" 2>&1 || rc=$?
  ((rc == 137)) || { cat "$work/killed"; fail "CELLKEEP_INSTALL_TEST_FAULT=kill: exit $rc (want 137)"; }
  [[ -s /usr/local/share/cellkeep/install.manifest ]] || fail "a killed install left no manifest"
}
killed "$@"
scripts/install.sh --uninstall >/dev/null
same_host "after --uninstall of a killed install"
killed "$@"

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
# --prefix outside /usr/local and /usr: the binary there, the units, sysusers.d and tmpfiles.d
# entries where systemd reads them (it never looks in /opt/ck/lib), ExecStart= at the binary.
pfx=$work/prefix
scripts/install.sh --destdir "$pfx" --prefix /opt/ck --binary /usr/local/bin/cellkeep >/dev/null
[[ -x $pfx/opt/ck/bin/cellkeep ]] || fail "--prefix /opt/ck: no /opt/ck/bin/cellkeep"
for f in /etc/systemd/system/cellkeep.service /etc/systemd/system/cellkeep.socket \
  /etc/sysusers.d/cellkeep.conf /etc/tmpfiles.d/cellkeep.conf; do
  [[ -f $pfx$f ]] || fail "--prefix /opt/ck: no $f (systemd does not read /opt/ck/lib)"
done
grep -qx 'ExecStart=/opt/ck/bin/cellkeep daemon --config /etc/cellkeep/cellkeep.toml' "$pfx/etc/systemd/system/cellkeep.service" \
  || fail "--prefix /opt/ck: ExecStart= does not name /opt/ck/bin/cellkeep"
[[ ! -e $pfx/opt/ck/lib ]] || fail "--prefix /opt/ck: files under /opt/ck/lib, where systemd never looks"
scripts/install.sh --destdir "$pfx" --prefix /opt/ck --uninstall >/dev/null
left=$(find "$pfx" -mindepth 1 -not -type d)
[[ -z $left ]] || fail "after the staged --prefix uninstall, left: $left"
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
same_host "after --uninstall"
echo "install.sh round trip: clean (failed, killed and whole installs; first install $((t1 - t0)) s, whole round trip $((SECONDS - t0)) s)"
