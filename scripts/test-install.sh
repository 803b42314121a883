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
# Units and /etc files not ours: a masked cellkeep.service (-> /dev/null) and an admin's
# /etc/systemd/system/cellkeep.service (systemctl edit --full) are kept and installs go through;
# another install's unit (--prefix /opt/ck-test) is refused naming its --uninstall --prefix; a
# staged --prefix install keeps the admin's /etc unit, sysusers and tmpfiles files (*.new beside
# them) and its --uninstall leaves them. Under a stand-in systemd (a private /run/systemd/system
# and a systemctl on PATH that logs its calls; needs /run/systemd and unshare) a failed install
# undoes only the enable/start it did. An upgrade failing while it replaces an unedited policy
# leaves the manifest with that file's old hash, so a retry replaces it.
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
obstacle= ours_not= other=
cleanup() {
  if [[ -n $other ]]; then scripts/install.sh --uninstall --prefix /opt/ck-test >/dev/null || true; fi
  if [[ -n $ours_not ]]; then rm -f "$ours_not"; fi
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

# Units elsewhere in systemd's search path. An admin's full copy in /etc (systemctl edit --full)
# is an override, not another install: kept, never recorded, left by --uninstall.
[[ -d /etc/systemd/system ]] || fail "no /etc/systemd/system here"
ours_not=/etc/systemd/system/cellkeep.service
sed 's/^Description=.*/Description=cellkeep (an admin override)/' systemd/cellkeep.service >"$ours_not"
cp "$ours_not" "$work/override"
snapshot >"$work/before"
scripts/install.sh --no-start "$@" >"$work/over" 2>&1 || { cat "$work/over"; fail "install.sh refused an admin's $ours_not"; }
grep -q "^  override  $ours_not " "$work/over" || { cat "$work/over"; fail "the install did not say $ours_not overrides it"; }
! grep -q " $ours_not\$" /usr/local/share/cellkeep/install.manifest || fail "the manifest lists the admin's $ours_not"
scripts/install.sh --uninstall >/dev/null
cmp -s "$ours_not" "$work/override" || fail "install and --uninstall changed the admin's $ours_not"
same_host "after install and --uninstall beside an admin's $ours_not"
rm "$ours_not"
# A stand-in systemd: a private /run/systemd/system (sd_booted) and a systemctl that logs.
stand_in=0
if [[ -d /run/systemd ]] && unshare -m --propagation private true 2>/dev/null; then stand_in=1; fi
mkdir "$work/bin"
cat >"$work/bin/systemctl" <<'EOF'
#!/bin/bash
echo "$*" >>"$FAKE_SYSTEMCTL_LOG"
case $1 in
  --version) echo "systemd 252 (a stand-in)" ;;
  is-enabled) [[ " $FAKE_ENABLED " == *" ${!#} "* ]] ;;
  is-active) [[ " $FAKE_ACTIVE " == *" ${!#} "* ]] ;;
esac
EOF
chmod +x "$work/bin/systemctl"
under_systemd() { # under_systemd ENABLED ACTIVE ARGS...: install.sh ARGS, those units enabled/active
  local enabled=$1 active=$2; shift 2
  : >"$work/systemctl.log"
  FAKE_ENABLED=$enabled FAKE_ACTIVE=$active FAKE_SYSTEMCTL_LOG=$work/systemctl.log PATH=$work/bin:$PATH \
    unshare -m --propagation private bash -c \
    'mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/system && exec "$@"' - scripts/install.sh "$@"
}
# A masked unit (systemctl mask cellkeep): the install goes through, enables and starts
# nothing, says how to unmask; the mask stays, also through --uninstall.
ln -s /dev/null "$ours_not"
snapshot >"$work/before"
if ((stand_in)); then
  under_systemd "" "" "$@" >"$work/masked" 2>&1 || { cat "$work/masked"; fail "install.sh refused a masked cellkeep.service"; }
  if grep -E '^(enable|start) ' "$work/systemctl.log"; then fail "the install enabled/started a masked unit"; fi
else
  scripts/install.sh --no-start "$@" >"$work/masked" 2>&1 || { cat "$work/masked"; fail "install.sh refused a masked cellkeep.service"; }
fi
grep -q 'systemctl unmask cellkeep.service' "$work/masked" || { cat "$work/masked"; fail "no 'systemctl unmask cellkeep.service' advice"; }
scripts/install.sh --uninstall >/dev/null
[[ $(readlink "$ours_not") == /dev/null ]] || fail "install and --uninstall removed the mask $ours_not"
same_host "after install and --uninstall with cellkeep.service masked"
rm "$ours_not" && ours_not=
snapshot >"$work/before"
# Another install's unit (--prefix /opt/ck-test: in /etc/systemd/system) is refused, with the
# command that removes it.
other=1
scripts/install.sh --no-start --prefix /opt/ck-test "$@" >/dev/null
if scripts/install.sh --no-start "$@" >"$work/other" 2>&1; then cat "$work/other"; fail "installed beside the --prefix /opt/ck-test install"; fi
grep -qF 'scripts/install.sh --uninstall --prefix /opt/ck-test' "$work/other" || { cat "$work/other"; fail "no exact --uninstall --prefix advice"; }
scripts/install.sh --uninstall --prefix /opt/ck-test >/dev/null && other=
[[ ! -e /opt/ck-test ]] || fail "--uninstall --prefix /opt/ck-test left /opt/ck-test"
same_host "after --prefix /opt/ck-test install, refused install, --uninstall"
# A failed install undoes only the enable/start it did itself: a --no-start install started by
# hand (active, not enabled) keeps running; units enabled before stay enabled.
undone() { # undone ENABLED ACTIVE WANT ARGS...: the rollback's stop/disable calls are WANT
  local enabled=$1 active=$2 want=$3 got; shift 3
  if CELLKEEP_INSTALL_TEST_FAULT=fail under_systemd "$enabled" "$active" "$@" >"$work/failed" 2>&1; then
    cat "$work/failed"; fail "CELLKEEP_INSTALL_TEST_FAULT=fail under systemd: install.sh succeeded"
  fi
  grep -qx 'enable --now cellkeep.socket' "$work/systemctl.log" || { cat "$work/failed"; fail "no systemctl enable --now cellkeep.socket"; }
  got=$(grep -E '^(stop|disable) ' "$work/systemctl.log" | paste -sd, -) || true
  [[ $got == "$want" ]] || fail "a failed install (enabled: '$enabled', active: '$active') rolled back with '$got' (want '$want')"
  same_host "after a failed install under systemd (enabled: '$enabled', active: '$active')"
}
if ((stand_in)); then
  undone "" "cellkeep.socket cellkeep.service" "disable cellkeep.service,disable cellkeep.socket" "$@"
  undone "cellkeep.socket cellkeep.service" "" "stop cellkeep.service,stop cellkeep.socket" "$@"
  undone "" "" "stop cellkeep.service,stop cellkeep.socket,disable cellkeep.service,disable cellkeep.socket" "$@"
else
  echo "test-install.sh: no /run/systemd or no unshare here: the systemctl steps are not tested"
fi
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
# Under /etc nothing the manifest does not list is replaced or removed: the admin's unit,
# sysusers and tmpfiles files and a masked socket stay as they are (*.new beside them), are not
# recorded, and are all that is left after --uninstall.
pfx=$work/prefix-admin
mkdir -p "$pfx/etc/systemd/system" "$pfx/etc/sysusers.d" "$pfx/etc/tmpfiles.d"
for f in /etc/systemd/system/cellkeep.service /etc/sysusers.d/cellkeep.conf /etc/tmpfiles.d/cellkeep.conf; do
  echo "# the admin's" >"$pfx$f"
done
ln -s /dev/null "$pfx/etc/systemd/system/cellkeep.socket"
admins() { find "$pfx" -mindepth 1 -not -type d -printf '%P %l\n' | sort; (cd "$pfx" && find . -type f -exec sha256sum {} + | sort); }
admins >"$work/admins"
scripts/install.sh --destdir "$pfx" --prefix /opt/ck --binary /usr/local/bin/cellkeep >"$work/admin-install"
for f in /etc/systemd/system/cellkeep.service /etc/systemd/system/cellkeep.socket /etc/sysusers.d/cellkeep.conf /etc/tmpfiles.d/cellkeep.conf; do
  [[ -f $pfx$f.new ]] || fail "--prefix /opt/ck beside the admin's $f: no $f.new"
  ! grep -qE "^(file|conf) [^ ]+ $f\$" "$pfx/opt/ck/share/cellkeep/install.manifest" || fail "--prefix /opt/ck: the manifest lists the admin's $f"
done
scripts/install.sh --destdir "$pfx" --prefix /opt/ck --uninstall >/dev/null
diff -u "$work/admins" <(admins) || fail "--prefix /opt/ck install and --uninstall changed the admin's /etc files (or left files)"
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
# An upgrade that fails while replacing an unedited policy (`install` fails for it) leaves the
# manifest with the hash of what is on disk, so a retry replaces it (not "edited by you").
stage=$work/upgrade-fail
"$repo/scripts/install.sh" --destdir "$stage" --binary /usr/local/bin/cellkeep >/dev/null
echo "# another upstream change" >>"$repo/policies/echo.toml"
mkdir "$work/failbin"
cat >"$work/failbin/install" <<EOF
#!/bin/bash
if [[ \${!#} == */echo.toml.tmp-install ]]; then echo "install: failing for \${!#} (a test)" >&2; exit 1; fi
exec $(command -v install) "\$@"
EOF
chmod +x "$work/failbin/install"
if PATH=$work/failbin:$PATH "$repo/scripts/install.sh" --destdir "$stage" --binary /usr/local/bin/cellkeep >"$work/failed" 2>&1; then
  cat "$work/failed"; fail "an upgrade whose copy of echo.toml failed succeeded"
fi
f=/etc/cellkeep/policies/echo.toml
[[ $(awk -v f="$f" '$1 == "conf" && $3 == f { print $2 }' "$stage/usr/local/share/cellkeep/install.manifest") == $(sha256sum <"$stage$f" | cut -d' ' -f1) ]] \
  || fail "after an upgrade failed replacing $f, the manifest's hash is not that of its contents"
"$repo/scripts/install.sh" --destdir "$stage" --binary /usr/local/bin/cellkeep >/dev/null
cmp -s "$repo/policies/echo.toml" "$stage$f" && [[ ! -e $stage$f.new ]] || fail "the retried upgrade did not replace the unedited $f"
"$repo/scripts/install.sh" --destdir "$stage" --uninstall >/dev/null
left=$(find "$stage" -not -type d)
[[ -z $left ]] || fail "after the staged uninstall, left: $left"
scripts/install.sh --uninstall | tee "$work/third"
same_host "after --uninstall"
echo "install.sh round trip: clean (failed, killed and whole installs; first install $((t1 - t0)) s, whole round trip $((SECONDS - t0)) s)"
