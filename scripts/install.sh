#!/usr/bin/env bash
# Install cellkeep on this host (as root), or remove it again.
#
#   scripts/install.sh                 build (cargo build --release --locked) and install
#   scripts/install.sh --uninstall     remove what an earlier install put here
#
# What goes where (PREFIX defaults to /usr/local):
#   PREFIX/bin/cellkeep                                   the binary
#   PREFIX/lib/systemd/system/cellkeep.{service,socket}   units (ExecStart= points at PREFIX/bin)
#   PREFIX/lib/systemd/system/cellkeep.service.d/10-notify-reload.conf
#                                                         only on systemd >= 253: Type=notify-reload
#   PREFIX/lib/sysusers.d/cellkeep.conf                   the "cellkeep" group (may use the socket)
#   PREFIX/lib/tmpfiles.d/cellkeep.conf                   /run/cellkeep
#   PREFIX/share/doc/cellkeep/README.md
#   PREFIX/share/cellkeep/install.manifest                what this script installed or created
#   /etc/cellkeep/cellkeep.toml                           default daemon config  } yours once
#   /etc/cellkeep/policies/*.toml                         the shipped policies   } you edit them
# then: the group (systemd-sysusers, else groupadd), /run/cellkeep (systemd-tmpfiles, else
# mkdir), the workspace directory /srv/cellkeep (mode 1771 root:cellkeep: each member of the
# group makes /srv/cellkeep/$USER there; the shipped policies' workdir roots include /srv and
# /home), and, when systemd is the init system: daemon-reload, enable --now cellkeep.socket,
# enable cellkeep.service.
#
# Idempotent: a second run changes nothing that is already in place. Files under /etc are
# config: an edited one is never overwritten (the new version lands beside it as *.new) and is
# kept by --uninstall. --uninstall removes exactly what the manifest lists: files still as
# installed, directories it created (if empty), /run/cellkeep/ids (cells' id leases),
# /run/cellkeep if it created it, and the group if
# it created it and no user is a member (a group in use is kept, with a message).
#
# Options:
#   --prefix DIR     install under DIR instead of /usr/local
#   --destdir DIR    stage into DIR (also: DESTDIR=DIR); host changes (group, /run, systemctl)
#                    are skipped, so no root is needed — used by .ci/run to verify the units
#   --binary PATH    install this binary instead of building one
#   --no-start       do not enable/start the units
#   --uninstall      remove the installation
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
[[ $prefix == /* ]] || { echo "install.sh: --prefix must be absolute" >&2; exit 2; }
if [[ -z $destdir && $(id -u) != 0 ]]; then
  echo "install.sh: must run as root (or stage with --destdir DIR)" >&2
  exit 1
fi
destdir=${destdir%/}

say() { printf '  %-9s %s\n' "$1" "$2"; }
skip() { printf '  %-9s %s\n' skipped "$*"; }
# A systemd system instance is running (sd_booted(3)), and we act on the real root.
systemd_up() { [[ -z $destdir && -d /run/systemd/system ]]; }

bindir=$prefix/bin unitdir=$prefix/lib/systemd/system
sysusersdir=$prefix/lib/sysusers.d tmpfilesdir=$prefix/lib/tmpfiles.d
docdir=$prefix/share/doc/cellkeep sharedir=$prefix/share/cellkeep
confdir=/etc/cellkeep
manifest=$destdir$sharedir/install.manifest
group=cellkeep rundir=/run/cellkeep wsdir=/srv/cellkeep

# Manifest lines: "file SHA256 PATH", "conf SHA256 PATH", "dir PATH", "group NAME", "rundir PATH"
# (paths without DESTDIR). Entries for things created by an earlier run are carried over.
declare -a entries=()
record() { entries+=("$*"); }
old_entries() { [[ -f $manifest ]] && cat "$manifest" || true; }
was_recorded() { old_entries | grep -qxF -- "$*"; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

# mkdir -p that remembers each directory it creates (so --uninstall can remove them).
ensure_dir() {
  local d=$1 missing=()
  while [[ $d != / && ! -d $destdir$d ]]; do missing=("$d" "${missing[@]}"); d=$(dirname "$d"); done
  for d in "${missing[@]}"; do
    mkdir -m 0755 "$destdir$d"
    record dir "$d"
  done
}

# Install SRC as PATH (mode MODE) atomically; a program/unit file is replaced when it differs.
put_file() {
  local src=$1 path=$2 mode=$3 dst=$destdir$2
  ensure_dir "$(dirname "$path")"
  if [[ -f $dst ]] && cmp -s "$src" "$dst"; then
    say unchanged "$path"
  else
    install -m "$mode" "$src" "$dst.tmp-install" && mv -f "$dst.tmp-install" "$dst"
    say installed "$path"
  fi
  record file "$(sha "$dst")" "$path"
}

# Install a config file: only when absent, or still exactly as an earlier run installed it.
put_conf() {
  local src=$1 path=$2 dst=$destdir$2 old
  ensure_dir "$(dirname "$path")"
  old=$(old_entries | awk -v p="$path" '$1 == "conf" && $3 == p { print $2 }')
  if [[ -f $dst ]] && cmp -s "$src" "$dst"; then
    say unchanged "$path"
  elif [[ ! -f $dst || ( -n $old && $(sha "$dst") == "$old" ) ]]; then
    install -m 0644 "$src" "$dst.tmp-install" && mv -f "$dst.tmp-install" "$dst"
    say installed "$path"
  else
    install -m 0644 "$src" "$dst.new"
    say kept "$path (edited by you; the shipped version is $path.new)"
    if [[ -n $old ]]; then record conf "$old" "$path"; fi
    record new - "$path.new"
    return
  fi
  record conf "$(sha "$dst")" "$path"
}

# The unit with this install's paths (the repo's unit names /usr/local/bin/cellkeep).
unit_file() {
  local out=$1 name=$2
  sed "s#/usr/local/bin/cellkeep#$bindir/cellkeep#g; s#/usr/local/share/doc/cellkeep#$docdir#g" \
    "systemd/$name" >"$out"
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
  echo "installing into ${destdir:-/} (prefix $prefix)"
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
      if command -v systemd-sysusers >/dev/null; then
        systemd-sysusers "$sysusersdir/cellkeep.conf"
      else
        groupadd --system "$group"
      fi
      say created "group $group"
      record group "$group"
    fi
    if [[ -d $rundir ]]; then
      say present "$rundir"
      if was_recorded rundir "$rundir"; then record rundir "$rundir"; fi
      # Made before by something else (a `cellkeep run` or the demo, as root): the socket in it
      # must stay reachable for the group, so its mode is set as the tmpfiles line says.
      if [[ $(stat -c %a "$rundir") != 755 ]]; then
        chmod 0755 "$rundir" && say fixed "$rundir mode 0755 (the socket's group must reach it)"
      fi
    else
      if command -v systemd-tmpfiles >/dev/null; then
        systemd-tmpfiles --create "$tmpfilesdir/cellkeep.conf"
      else
        mkdir -m 0755 "$rundir"
      fi
      say created "$rundir"
      record rundir "$rundir"
    fi
    # Workspaces: group members create their own directory here; sticky, so none can remove
    # another's; others may only traverse (a cell runs as its caller with the caller's own gid).
    if [[ -d $wsdir ]]; then
      say present "$wsdir"
      if was_recorded dir "$wsdir"; then record dir "$wsdir"; fi
    else
      mkdir -m 1771 "$wsdir" && chgrp "$group" "$wsdir" && chmod 1771 "$wsdir"
      say created "$wsdir (workspaces: mkdir $wsdir/\$USER as a member of $group)"
      record dir "$wsdir"
    fi
    if systemd_up; then
      systemctl daemon-reload
      say done "systemctl daemon-reload"
      if ((start)); then
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
  done < <(old_entries)
  # Directories created by an earlier run stay ours.
  while read -r kind path; do
    if [[ $kind == dir ]] && ! printf '%s\n' "${entries[@]}" | grep -qxF "dir $path"; then
      record dir "$path"
    fi
  done < <(old_entries)
  ensure_dir "$sharedir"
  printf '%s\n' "${entries[@]}" >"$manifest.tmp" && mv -f "$manifest.tmp" "$manifest"
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
      file)
        rm -f "$destdir$b" && say removed "$b" ;;
      conf)
        if [[ -f $destdir$b && $(sha "$destdir$b") != "$a" ]]; then
          say kept "$b (edited since install)"
        else
          rm -f "$destdir$b" && say removed "$b"
        fi
        ;;
      new)
        rm -f "$destdir$b" && say removed "$b" ;;
    esac
  done <"$manifest"
  rm -f "$manifest"
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
trap 'rm -rf "$tmp"' EXIT
saved=$tmp/manifest
if ((uninstall)); then
  if [[ -f $manifest ]]; then cp "$manifest" "$saved"; else : >"$saved"; fi
  do_uninstall
else
  do_install
fi
