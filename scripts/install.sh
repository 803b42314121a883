#!/usr/bin/env bash
# Install cellkeep on this host (as root), or remove it again.
#
#   scripts/install.sh                 build (cargo build --release --locked) and install
#   scripts/install.sh --uninstall     remove what an earlier install put here
#
# What goes where (PREFIX defaults to /usr/local):
#   PREFIX/bin/cellkeep                                   the binary
#   UNITDIR/cellkeep.{service,socket}                     units (ExecStart= points at PREFIX/bin)
#   UNITDIR/cellkeep.service.d/10-notify-reload.conf      only on systemd >= 253: Type=notify-reload
#   SYSUSERSDIR/cellkeep.conf                             the "cellkeep" group (may use the socket)
#   TMPFILESDIR/cellkeep.conf                             /run/cellkeep
#   PREFIX/share/doc/cellkeep/README.md
#   PREFIX/share/cellkeep/install.manifest                what this script installed or created
#   /etc/cellkeep/cellkeep.toml                           default daemon config  } yours once
#   /etc/cellkeep/policies/*.toml                         the shipped policies   } you edit them
# UNITDIR, SYSUSERSDIR, TMPFILESDIR are PREFIX/lib/{systemd/system,sysusers.d,tmpfiles.d} for
# the prefixes systemd reads (/usr/local, /usr); under any other PREFIX (systemd never looks in
# /opt/x/lib) they are /etc/systemd/system, /etc/sysusers.d and /etc/tmpfiles.d.
# then: the group (systemd-sysusers, else groupadd), /run/cellkeep (systemd-tmpfiles, else
# mkdir), the workspace directory /srv/cellkeep (mode 1771 root:cellkeep: each member of the
# group makes /srv/cellkeep/$USER there; the shipped policies' workdir roots include /srv and
# /home), and, when systemd is the init system: daemon-reload, enable --now cellkeep.socket,
# enable cellkeep.service.
#
# Idempotent: a second run changes nothing that is already in place. Files under /etc (config,
# and the units, sysusers and tmpfiles entries of a non-/usr PREFIX) are replaced only while
# still exactly as an earlier run installed them: an edited one, or one no manifest lists (the
# admin's), is kept and the new version lands beside it as *.new; --uninstall keeps them too.
# --uninstall removes exactly what the manifest lists: files still as installed, directories it
# created (if empty), /run/cellkeep/ids (cells' id leases), /run/cellkeep if it created it, and
# the group if it created it and no user is a member (a group in use is kept, with a message).
#
# Units elsewhere in systemd's search path: cellkeep.service or .socket masked (a link to
# /dev/null in /etc/systemd/system or /run/systemd/system) is installed but not enabled or
# started, and stays masked (the install says how to unmask); a /etc/systemd/system/cellkeep.*
# no manifest lists (`systemctl edit --full`) is the admin's override: kept, it wins over the
# installed unit. A unit another install.sh install lists (another PREFIX) makes the install
# refuse, naming the --uninstall --prefix that removes it.
#
# A failed install (an error, Ctrl-C, SIGTERM) undoes what that run created (files,
# directories, the group, /run/cellkeep, /srv/cellkeep; a unit it enabled is disabled, one it
# started is stopped, one already enabled or running is left so) and says so; a
# file it replaced rather than created (an upgrade) stays replaced and listed. The manifest is
# rewritten as each thing is created, so a run killed outright (SIGKILL, power loss) still
# leaves one listing what it made: --uninstall removes that, and a re-run takes it as its own.
#
# Options:
#   --prefix DIR     install under DIR instead of /usr/local (--uninstall needs the same DIR)
#   --destdir DIR    stage into DIR (also: DESTDIR=DIR); host changes (group, /run, systemctl)
#                    are skipped, so no root is needed — used by .ci/run to verify the units
#   --binary PATH    install this binary instead of building one
#   --no-start       do not enable/start the units
#   --uninstall      remove the installation
#
# For scripts/test-install.sh only: CELLKEEP_INSTALL_TEST_FAULT=fail makes an install fail
# (exit 1, rolled back) after its last host change (the group, /run, /srv, systemctl), before
# the manifest's final write; =kill makes it SIGKILL itself there instead (no rollback).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
repo=$PWD

prefix=/usr/local destdir=${DESTDIR:-} binary= uninstall=0 start=1
while (($#)); do
  case $1 in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --destdir) destdir=${2:?--destdir needs a directory}; shift 2 ;;
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --no-start) start=0; shift ;;
    --uninstall) uninstall=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
while [[ $prefix == ?*/ ]]; do prefix=${prefix%/}; done
# It goes into unit files (ExecStart=) and the manifest's space-separated lines.
[[ $prefix =~ ^(/[A-Za-z0-9._+-]+)+$ ]] || {
  echo "install.sh: --prefix must be an absolute directory other than / (letters, digits, ._+- between slashes): $prefix" >&2
  exit 2
}
case ${CELLKEEP_INSTALL_TEST_FAULT:-} in
  ''|fail|kill) ;;
  *) echo "install.sh: CELLKEEP_INSTALL_TEST_FAULT must be fail or kill" >&2; exit 2 ;;
esac
if [[ -z $destdir && $(id -u) != 0 ]]; then
  echo "install.sh: must run as root (or stage with --destdir DIR)" >&2
  exit 1
fi
destdir=${destdir%/}

say() { printf '  %-9s %s\n' "$1" "$2"; }
skip() { printf '  %-9s %s\n' skipped "$*"; }
# A systemd system instance is running (sd_booted(3)), and we act on the real root.
systemd_up() { [[ -z $destdir && -d /run/systemd/system ]]; }

bindir=$prefix/bin docdir=$prefix/share/doc/cellkeep sharedir=$prefix/share/cellkeep
case $prefix in
  # Where systemd, systemd-sysusers and systemd-tmpfiles look (besides /etc and /run).
  /usr/local|/usr)
    unitdir=$prefix/lib/systemd/system sysusersdir=$prefix/lib/sysusers.d tmpfilesdir=$prefix/lib/tmpfiles.d ;;
  *) unitdir=/etc/systemd/system sysusersdir=/etc/sysusers.d tmpfilesdir=/etc/tmpfiles.d ;;
esac
confdir=/etc/cellkeep
manifest=$destdir$sharedir/install.manifest
group=cellkeep rundir=/run/cellkeep wsdir=/srv/cellkeep

# Manifest lines: "file SHA256 PATH", "conf SHA256 PATH", "new - PATH", "dir PATH",
# "group NAME", "rundir PATH" (paths without DESTDIR). Entries for things created by an earlier
# run are carried over. $saved is the manifest as this run found it.
declare -a entries=()
# What this run created, to undo if it fails: "rm PATH", "rmdir PATH", "group NAME",
# "rundir PATH", "disable UNIT", "stop UNIT" (paths without DESTDIR).
declare -a undo=()
installing=0
# A line's identity: its path for file/conf/new, else its kind and name (in REPLY).
key_of() {
  local k=${1%% *} r=${1#* }
  case $k in file|conf|new) REPLY="path ${r#* }" ;; *) REPLY="$k $r" ;; esac
}
# The manifest: this run's entries, and with "merge" the earlier manifest's other lines (what
# an earlier run made that this one has not come to yet). Replaced atomically; not written
# before its directory exists (the first thing an install makes).
write_manifest() {
  local e
  local -A have=()
  [[ -d ${manifest%/*} ]] || return 0
  {
    for e in "${entries[@]}"; do key_of "$e"; have[$REPLY]=1; printf '%s\n' "$e"; done
    if [[ ${1:-} == merge ]]; then
      while IFS= read -r e; do
        key_of "$e"
        if [[ -n $e && -z ${have[$REPLY]:-} ]]; then printf '%s\n' "$e"; fi
      done <"$saved"
    fi
  } >"$manifest.tmp"
  mv -f "$manifest.tmp" "$manifest"
}
# Each entry is on disk before what it names is made.
record() { entries+=("$*"); write_manifest merge; }
forget() {
  local e out=()
  for e in "${entries[@]}"; do key_of "$e"; if [[ $REPLY != "$1" ]]; then out+=("$e"); fi; done
  entries=("${out[@]}")
}
was_recorded() { grep -qxF -- "$*" "$saved"; }
sha() { sha256sum "$1" | cut -d' ' -f1; }
# A masked unit (or sysusers/tmpfiles entry): a link to /dev/null, or an empty file.
is_mask() { [[ -L $1 && $(readlink -f "$1") == /dev/null ]] || [[ -f $1 && ! -L $1 && ! -s $1 ]]; }
# Whether an install.sh install's manifest lists the unit file PATH; its prefix in REPLY: the
# one the unit's ExecStart= names (a unit in /etc), or the one whose lib/ holds it.
owner_of() {
  local f=$1 listed=$1 p=
  case $f in
    /etc/*) p=$(sed -n 's#^ExecStart=\(/[^ ]*\)/bin/cellkeep\( .*\)\{0,1\}$#\1#; T; p; q' "$f" 2>/dev/null) ;;
    /usr/local/lib/*) p=/usr/local ;;
    /usr/lib/*) p=/usr ;;
    /lib/*) p=/usr listed=/usr$f ;;
  esac
  REPLY=$p
  [[ -n $p && -f $p/share/cellkeep/install.manifest ]] &&
    awk -v f="$listed" '($1 == "file" || $1 == "conf") && $3 == f { x = 1 } END { exit !x }' \
      "$p/share/cellkeep/install.manifest"
}

# mkdir -p that remembers each directory it creates (so --uninstall can remove them).
ensure_dir() {
  local d=$1 missing=()
  while [[ $d != / && ! -d $destdir$d ]]; do missing=("$d" "${missing[@]}"); d=$(dirname "$d"); done
  for d in "${missing[@]}"; do
    undo+=("rmdir $d")
    record dir "$d"
    mkdir -m 0755 "$destdir$d"
  done
}

# Install SRC as DST (mode MODE) atomically; PATH is DST without DESTDIR. A file this run
# creates (none was there) is undone if the install fails.
copy_in() {
  local src=$1 path=$2 mode=$3 dst=$destdir$2
  if [[ ! -e $dst ]]; then undo+=("rm $path"); fi
  undo+=("rm $path.tmp-install")
  install -m "$mode" "$src" "$dst.tmp-install"
  mv -f "$dst.tmp-install" "$dst"
}

# Install SRC as PATH (mode MODE); a program/unit file is replaced when it differs. Under /etc
# (units, sysusers, tmpfiles of a non-/usr prefix) it is config: put_conf.
put_file() {
  local src=$1 path=$2 mode=$3 dst=$destdir$2
  case $path in /etc/*) put_conf "$src" "$path" "$mode"; return ;; esac
  ensure_dir "$(dirname "$path")"
  record file "$(sha "$src")" "$path"
  if [[ -f $dst ]] && cmp -s "$src" "$dst"; then
    say unchanged "$path"
  else
    copy_in "$src" "$path" "$mode"
    say installed "$path"
  fi
}

# Install a config file (mode MODE, default 0644): only when absent, or still exactly as an
# earlier run installed it (the hash its manifest line has: "conf", or "file" from an older
# install). Anything else there is kept and the shipped version goes beside it as PATH.new: an
# edited file, a link (a mask: -> /dev/null), or a file no manifest lists (the admin's, which is
# never recorded, so --uninstall leaves it).
put_conf() {
  local src=$1 path=$2 mode=${3:-0644} dst=$destdir$2 old why
  ensure_dir "$(dirname "$path")"
  old=$(awk -v p="$path" '($1 == "conf" || $1 == "file") && $3 == p { print $2 }' "$saved")
  if [[ ! -e $dst && ! -L $dst ]]; then
    # Recorded before it exists, so that a rollback (or --uninstall after a kill) removes it.
    record conf "$(sha "$src")" "$path"
    copy_in "$src" "$path" "$mode"
    say installed "$path"
  elif [[ -f $dst && ! -L $dst ]] && cmp -s "$src" "$dst"; then
    if [[ -n $old ]]; then
      record conf "$(sha "$dst")" "$path"
      say unchanged "$path"
    else
      say present "$path (not installed by this script: left as it is, also by --uninstall)"
    fi
  elif [[ -n $old && -f $dst && ! -L $dst && $(sha "$dst") == "$old" ]]; then
    # Recorded once replaced: until then the manifest keeps the old contents' hash.
    copy_in "$src" "$path" "$mode"
    record conf "$(sha "$src")" "$path"
    say installed "$path"
  else
    if [[ -n $old ]]; then record conf "$old" "$path"; fi
    if is_mask "$dst"; then
      why="masked: a link to /dev/null or empty; kept so"
    elif [[ -z $old ]]; then
      why="not installed by this script: yours, kept; it is what is used"
    else
      why="edited by you"
    fi
    record new - "$path.new"
    if [[ ! -e $dst.new ]]; then undo+=("rm $path.new"); fi
    install -m "$mode" "$src" "$dst.new"
    say kept "$path ($why; the shipped version is $path.new)"
  fi
}

# The unit with this install's paths (the repo's unit names /usr/local/bin/cellkeep).
unit_file() {
  local out=$1 name=$2
  sed "s#/usr/local/bin/cellkeep#$bindir/cellkeep#g; s#/usr/local/share/doc/cellkeep#$docdir#g" \
    "systemd/$name" >"$out"
}

# A failed install: undo what this run created, newest first, and say so; the manifest stays
# only if it still lists something (what an earlier run installed, a file this run replaced
# rather than created, something that could not be removed).
rollback() {
  local rc=$1 i kind p e keep=0
  set +e
  trap '' INT TERM HUP
  echo "install.sh: the install failed (exit $rc); undoing what this run created" >&2
  for ((i = ${#undo[@]} - 1; i >= 0; i--)); do
    kind=${undo[i]%% *} p=${undo[i]#* }
    case $kind in
      stop)
        systemctl stop "$p" 2>/dev/null
        say stopped "$p" ;;
      disable)
        systemctl disable "$p" 2>/dev/null
        say disabled "$p" ;;
      rm)
        if [[ -e $destdir$p || -L $destdir$p ]]; then
          rm -f "$destdir$p" || continue
          [[ $p == *.tmp-install ]] || say removed "$p"
        fi
        forget "path $p" ;;
      rundir)
        if [[ -d $p ]]; then
          if ! rmdir "$p" 2>/dev/null; then say kept "$p (not empty)"; continue; fi
          say removed "$p"
        fi
        forget "rundir $p" ;;
      group)
        if getent group "$p" >/dev/null; then
          if [[ -n $(getent group "$p" | cut -d: -f4) ]] || ! groupdel "$p"; then say kept "group $p"; continue; fi
          say removed "group $p"
        fi
        forget "group $p" ;;
    esac
  done
  if systemd_up; then systemctl daemon-reload; fi
  if [[ -s $saved ]]; then keep=1; fi
  for e in "${entries[@]}"; do if [[ $e != dir\ * ]]; then keep=1; fi; done
  if ((keep)); then write_manifest merge; else rm -f "$manifest" "$manifest.tmp"; fi
  for ((i = ${#undo[@]} - 1; i >= 0; i--)); do
    kind=${undo[i]%% *} p=${undo[i]#* }
    [[ $kind == rmdir ]] || continue
    if rmdir "$destdir$p" 2>/dev/null; then
      say removed "$p/"
    elif [[ -d $destdir$p ]]; then
      say kept "$p/ (not empty)"; continue
    fi
    forget "dir $p"
  done
  if ((keep)); then
    write_manifest merge
    echo "install.sh: rolled back what this run created; $sharedir/install.manifest lists what is still installed (--uninstall removes it)" >&2
  else
    echo "install.sh: rolled back: nothing this run created is left" >&2
  fi
}

do_install() {
  local t0=$SECONDS
  if [[ -n $destdir ]]; then mkdir -p "$destdir"; fi
  if [[ -z $binary ]]; then
    # Under sudo, build as the user who asked (their rustup toolchain, their target/ stays
    # theirs), through a login shell for their PATH; as plain root, with root's cargo.
    local builder=(bash -c)
    if [[ -n ${SUDO_USER:-} && $SUDO_USER != root ]]; then builder=(runuser -u "$SUDO_USER" -- bash -lc); fi
    if ! "${builder[@]}" 'command -v cargo' >/dev/null; then
      echo "install.sh: no cargo for ${SUDO_USER:-root}: install Rust >= $(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)" \
        "(rustup.rs), or build first and pass --binary target/release/cellkeep" >&2
      return 1
    fi
    echo "building (cargo build --release --locked, as ${SUDO_USER:-root})"
    "${builder[@]}" 'cargo build --release --locked'
    binary=target/release/cellkeep
  fi
  [[ -x $binary ]] || { echo "install.sh: $binary is not an executable" >&2; return 1; }
  # The units elsewhere in systemd's search path (see the header): masks, another install's
  # unit (it would shadow this one or be shadowed by it), an admin's override in /etc.
  local d f u
  local -a masked=()
  if [[ -z $destdir ]]; then
    for u in cellkeep.service cellkeep.socket; do
      for f in /etc/systemd/system/$u /run/systemd/system/$u; do
        if is_mask "$f"; then masked+=("$f"); fi
      done
    done
    for d in /etc/systemd/system /usr/local/lib/systemd/system /usr/lib/systemd/system /lib/systemd/system; do
      f=$d/cellkeep.service
      if [[ ! -e $f && ! -L $f ]] || is_mask "$f"; then continue; fi
      if owner_of "$f"; then
        [[ $REPLY != "$prefix" ]] || continue
        echo "install.sh: the cellkeep install with --prefix $REPLY has its unit at $f (it would shadow" \
          "this one or be shadowed by it); remove it first: scripts/install.sh --uninstall --prefix $REPLY" >&2
        return 1
      fi
      if [[ $f -ef $unitdir/cellkeep.service || $d == /etc/systemd/system ]]; then continue; fi
      echo "install.sh: $f is not from scripts/install.sh (no install.manifest lists it; a package?); remove it first" >&2
      return 1
    done
    if [[ $unitdir != /etc/systemd/system ]]; then
      for u in cellkeep.service cellkeep.socket; do
        f=/etc/systemd/system/$u
        if [[ -e $f || -L $f ]] && ! is_mask "$f" && [[ ! $f -ef $unitdir/$u ]]; then
          say override "$f is yours (no manifest lists it): kept, and it wins over $unitdir/$u; to use the installed one: rm $f && systemctl daemon-reload"
        fi
      done
    fi
    for f in "${masked[@]}"; do
      u=${f##*/}
      if [[ $f == /run/* ]]; then u="--runtime $u"; fi
      say masked "$f (-> /dev/null): it stays masked, not enabled or started; to use it: systemctl unmask $u, then run this install again"
    done
  fi
  echo "installing into ${destdir:-/} (prefix $prefix)"
  # From here on a failure undoes what this run created (rollback, from the EXIT trap). The
  # manifest's directory comes first, so that every later step is recorded as it happens.
  installing=1
  ensure_dir "$sharedir"
  write_manifest merge
  put_file "$binary" "$bindir/cellkeep" 0755
  for u in cellkeep.service cellkeep.socket; do
    unit_file "$tmp/$u" "$u"
    put_file "$tmp/$u" "$unitdir/$u" 0644
  done
  # Type=notify-reload where systemd knows it (>= 253); 252 (Debian 12) keeps Type=notify.
  local sdver
  sdver=$(systemctl --version 2>/dev/null | awk 'NR == 1 { print $2 + 0 }')
  if [[ -n $sdver ]] && ((sdver >= 253)); then
    put_file systemd/cellkeep-notify-reload.conf "$unitdir/cellkeep.service.d/10-notify-reload.conf" 0644
  else
    skip "Type=notify-reload drop-in (systemd ${sdver:-not found} < 253: the unit's Type=notify is used)"
  fi
  put_file systemd/cellkeep.sysusers "$sysusersdir/cellkeep.conf" 0644
  put_file systemd/cellkeep.tmpfiles "$tmpfilesdir/cellkeep.conf" 0644
  put_file README.md "$docdir/README.md" 0644
  put_conf systemd/cellkeep.toml "$confdir/cellkeep.toml"
  for p in policies/*.toml; do
    put_conf "$p" "$confdir/policies/$(basename "$p")"
  done

  if [[ -n $destdir ]]; then
    skip "group $group, $rundir, systemctl (staged into $destdir)"
  else
    if getent group "$group" >/dev/null; then
      say present "group $group"
      if was_recorded group "$group"; then record group "$group"; fi
    else
      undo+=("group $group")
      record group "$group"
      if command -v systemd-sysusers >/dev/null; then
        systemd-sysusers "$sysusersdir/cellkeep.conf"
      else
        groupadd --system "$group"
      fi
      say created "group $group"
    fi
    if [[ -d $rundir ]]; then
      say present "$rundir"
      if was_recorded rundir "$rundir"; then record rundir "$rundir"; fi
      # Made before by something else (a `cellkeep run` or the demo, as root): the socket in it
      # must stay reachable for the group, so its mode is set as the tmpfiles line says.
      if [[ $(stat -c %a "$rundir") != 755 ]]; then
        chmod 0755 "$rundir"
        say fixed "$rundir mode 0755 (the socket's group must reach it)"
      fi
    else
      undo+=("rundir $rundir")
      record rundir "$rundir"
      if command -v systemd-tmpfiles >/dev/null; then
        systemd-tmpfiles --create "$tmpfilesdir/cellkeep.conf"
      else
        mkdir -m 0755 "$rundir"
      fi
      say created "$rundir"
    fi
    # Workspaces: group members create their own directory here; sticky, so none can remove
    # another's; others may only traverse (a cell runs as its caller with the caller's own gid).
    if [[ -d $wsdir ]]; then
      say present "$wsdir"
      if was_recorded dir "$wsdir"; then record dir "$wsdir"; fi
    else
      undo+=("rmdir $wsdir")
      record dir "$wsdir"
      mkdir -m 1771 "$wsdir"
      chgrp "$group" "$wsdir"
      chmod 1771 "$wsdir"
      say created "$wsdir (workspaces: mkdir $wsdir/\$USER as a member of $group)"
    fi
    if systemd_up; then
      systemctl daemon-reload
      say done "systemctl daemon-reload"
      if ((${#masked[@]})); then
        skip "enable/start (masked: systemctl unmask, then run this install again)"
      elif ((start)); then
        # A failure undoes only what this run does: a unit enabled before stays enabled, a
        # daemon already running (a --no-start install started by hand) keeps running. The
        # service Requires= the socket: the socket is stopped only if neither was active.
        for u in cellkeep.socket cellkeep.service; do
          systemctl is-enabled --quiet "$u" 2>/dev/null || undo+=("disable $u")
        done
        if ! systemctl is-active --quiet cellkeep.service 2>/dev/null; then
          systemctl is-active --quiet cellkeep.socket 2>/dev/null || undo+=("stop cellkeep.socket")
          undo+=("stop cellkeep.service")
        fi
        systemctl enable --now cellkeep.socket
        systemctl enable cellkeep.service
        systemctl start cellkeep.service
        say started "cellkeep.socket, cellkeep.service (a running daemon keeps its binary: systemctl restart cellkeep ends every cell)"
      else
        skip "enable/start (--no-start)"
      fi
    else
      skip "systemctl daemon-reload/enable/start: systemd is not the init system here (PID 1 is $(ps -p 1 -o comm=)); run the daemon by hand: $bindir/cellkeep daemon --config $confdir/cellkeep.toml"
    fi
  fi
  case ${CELLKEEP_INSTALL_TEST_FAULT:-} in
    fail) echo "install.sh: CELLKEEP_INSTALL_TEST_FAULT=fail: failing here (a test)" >&2; return 1 ;;
    kill) echo "install.sh: CELLKEEP_INSTALL_TEST_FAULT=kill: SIGKILL here (a test)" >&2; kill -KILL $$ ;;
  esac
  # What an earlier run installed and this one no longer ships (a policy dropped upstream, a
  # unit renamed): a file goes; a config file goes unless edited (then it is kept, and stays
  # in the manifest); a stale `*.new` beside a config goes.
  local kind a b
  while read -r kind a b; do
    [[ $kind == file || $kind == conf || $kind == new ]] || continue
    if printf '%s\n' "${entries[@]}" | awk -v p="$b" '$NF == p { found = 1 } END { exit !found }'; then continue; fi
    if [[ $kind == conf && -f $destdir$b && $(sha "$destdir$b") != "$a" ]]; then
      say kept "$b (no longer shipped; edited by you)"
      record conf "$a" "$b"
    elif [[ -e $destdir$b ]]; then
      rm -f "$destdir$b" && say removed "$b (no longer shipped)"
    fi
  done <"$saved"
  # Directories created by an earlier run stay ours.
  while read -r kind path; do
    if [[ $kind == dir ]] && ! printf '%s\n' "${entries[@]}" | grep -qxF "dir $path"; then
      record dir "$path"
    fi
  done <"$saved"
  write_manifest
  installing=0
  echo "done in $((SECONDS - t0)) s; manifest: $sharedir/install.manifest"
  cat <<EOT

Next steps
  users:       sudo usermod -aG $group NAME   (then log in again); members may use the socket
               and the shipped providers (echo, cat, sandbox, the agents)
  workspaces:  under $wsdir/NAME/ (mkdir -p $wsdir/\$USER/proj) or the user's home (~/proj);
               a cell runs as its caller and writes there with the caller's uid
  client:      $bindir/cellkeep (on PATH as cellkeep), socket /run/cellkeep/cellkeep.sock
  logs:        journalctl -u cellkeep       status: systemctl status cellkeep; cellkeep health
  policies:    /etc/cellkeep/policies; after editing: sudo systemctl reload cellkeep
               (fails, keeping the previous set, when a policy cannot load)
EOT
}

do_uninstall() {
  if [[ ! -f $manifest ]]; then
    echo "nothing to uninstall: no manifest at $manifest"
    return 0
  fi
  echo "uninstalling from ${destdir:-/} (prefix $prefix)"
  if systemd_up; then
    systemctl disable --now cellkeep.service cellkeep.socket 2>/dev/null || true
    say stopped "cellkeep.service, cellkeep.socket (every cell ended)"
  elif [[ -z $destdir ]]; then
    skip "systemctl disable/stop: systemd is not the init system here"
  fi
  local kind a b
  while read -r kind a b; do
    case $kind in
      file|conf)
        rm -f "$destdir$b.tmp-install"
        # Under /etc (an older install recorded units there as "file"), an edited one stays.
        if [[ ( $kind == conf || $b == /etc/* ) && ( -L $destdir$b ||
          ( -f $destdir$b && $(sha "$destdir$b") != "$a" ) ) ]]; then
          say kept "$b (edited since install)"
        else
          rm -f "$destdir$b" && say removed "$b"
        fi
        ;;
      new)
        rm -f "$destdir$b" && say removed "$b" ;;
    esac
  done <"$manifest"
  rm -f "$manifest" "$manifest.tmp"
  if [[ -z $destdir ]] && systemd_up; then
    systemctl daemon-reload
    say done "systemctl daemon-reload"
  fi
  # The service's state: the cells' output spool (systemd's StateDirectory=cellkeep/spool,
  # transient files of ended cells; the service is stopped, so none is in use), then the
  # /var/lib/cellkeep systemd created for it, if nothing else is in there.
  local state=$destdir/var/lib/cellkeep
  if [[ -d $state/spool ]]; then
    rm -rf "$state/spool" && say removed "/var/lib/cellkeep/spool/"
  fi
  if [[ -d $state ]]; then
    rmdir "$state" 2>/dev/null && say removed "/var/lib/cellkeep/" || say kept "/var/lib/cellkeep (not empty)"
  fi
  # The cells' host-id lease files (/run/cellkeep/ids, made by the daemon and `cellkeep run`;
  # the service is stopped, so no lease is held).
  if [[ -z $destdir && -d $rundir/ids ]]; then
    rm -rf "$rundir/ids" && say removed "$rundir/ids/"
  fi
    # Host state: /run/cellkeep and the group, only if an install created them.
  if grep -qxF "rundir $rundir" "$saved"; then
    rmdir "$rundir" 2>/dev/null && say removed "$rundir" || say kept "$rundir (not empty)"
  fi
  if grep -qxF "group $group" "$saved"; then
    local members
    members=$(getent group "$group" | cut -d: -f4)
    if [[ -n $members ]]; then
      say kept "group $group (members: $members; remove it with: groupdel $group)"
    elif getent passwd | awk -F: -v g="$(getent group "$group" | cut -d: -f3)" '$4 == g { f = 1 } END { exit !f }'; then
      say kept "group $group (a user's primary group)"
    elif getent group "$group" >/dev/null; then
      groupdel "$group" && say removed "group $group"
    fi
  fi
  # Directories this script created, deepest first, if empty.
  grep '^dir ' "$saved" | cut -d' ' -f2- | sort -r | while read -r d; do
    if rmdir "$destdir$d" 2>/dev/null; then
      say removed "$d/"
    elif [[ $d == "$wsdir" ]]; then
      say kept "$wsdir (users' workspaces are in it)"
    fi
  done
}

tmp=$(mktemp -d)
on_exit() {
  if ((installing && $1 != 0)); then rollback "$1"; fi
  rm -rf "$tmp"
}
trap 'on_exit $?' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
saved=$tmp/manifest
if [[ -f $manifest ]]; then cp "$manifest" "$saved"; else : >"$saved"; fi
if ((uninstall)); then
  do_uninstall
else
  do_install
fi
