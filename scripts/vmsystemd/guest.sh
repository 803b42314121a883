#!/bin/bash
# The systemd lane's checks, run inside the guest by cellkeep-lane.service (root, systemd as
# PID 1, pure cgroup v2, no network). The host put on the 9p share /mnt/lane:
#   src/          the repository's files (git ls-files), copied to /root/cellkeep like a clone
#   bin/cellkeep  the binary to install (install.sh --binary)
#   lane.env      LANE_CHECKS (space-separated names, "all" = every check), LANE_INJECT (fail|hang),
#                 LANE_WORKAROUND (1: the issue-15 workarounds, diagnosis only), LANE_SESSION_USER
# and gets back: /mnt/lane/results (one "PASS name" / "FAIL name: why" line per check) and
# /mnt/lane/rc (0 = every check passed, 1 = one failed). Output goes to the serial console.
# No check depends on timing: every wait is a poll with a generous limit.
set -uo pipefail
stty -onlcr -echo </dev/ttyS0 2>/dev/null
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C SYSTEMD_COLORS=0 SYSTEMD_PAGER=
LANE=/mnt/lane
LANE_CHECKS=all LANE_INJECT= LANE_WORKAROUND=0 LANE_SESSION_USER=alice
# shellcheck disable=SC1091
[[ -r $LANE/lane.env ]] && . "$LANE/lane.env"
RES=$LANE/results
: > "$RES"
rm -f "$LANE/rc"
T0=$(cut -d' ' -f1 /proc/uptime)
SRC=/root/cellkeep
ST=/run/lane; mkdir -p "$ST"
CG=/sys/fs/cgroup/system.slice/cellkeep.service
TMO=60   # per client call / per wait: generous for TCG, only a hang reaches it

# ---------- helpers
failed=0 why=
note() { echo "    $*"; }
bad() { why=${why:+$why; }$*; echo "    ✗ $*"; }
ok() { echo "    ✓ $*"; }
# run and show a command (indented), return its status
show() {
  local rc=0 out
  out=$("$@" 2>&1) || rc=$?
  echo "    \$ $* → exit $rc"
  [[ -n $out ]] && printf '%s\n' "$out" | sed 's/^/      /' | head -n 60
  return $rc
}
# capture: out=$(cap CMD...) with the combined output also printed
ck() { timeout "$TMO" cellkeep "$@"; }
as() { local u=$1; shift; timeout "$TMO" runuser -u "$u" -- "$@"; }
# poll COND (a shell expression) every 0.5 s up to SECS
waitfor() { local secs=$1; shift; local end=$((SECONDS + secs)); until eval "$*"; do ((SECONDS >= end)) && return 1; sleep 0.5; done; }
prop() { systemctl show -p "$2" --value "$1"; }
journal_tail() { echo "    --- journalctl -u cellkeep (last ${1:-25} lines)"; journalctl -u cellkeep --no-pager -n "${1:-25}" -o short-monotonic 2>&1 | sed 's/^/      /'; }
daemon_up() { [[ $(prop cellkeep.service ActiveState) == active ]]; }
need_daemon() {
  daemon_up && return 0
  bad "not run: cellkeep.service is $(prop cellkeep.service ActiveState)/$(prop cellkeep.service SubState), not active"
  return 1
}
# every pid in the daemon's delegated subtree except the daemon's own
cell_pids() { local m; m=$(prop cellkeep.service MainPID); cat "$CG"/cellkeep/*/cgroup.procs "$CG"/cellkeep/*/*/cgroup.procs 2>/dev/null | grep -vx "$m" | sort -u; }
cell_cgroups() { find "$CG/cellkeep" -mindepth 1 -type d 2>/dev/null | sort; }
cgroups_gone() { local c; for c in $cgs; do [[ -d $c ]] && return 1; done; return 0; }
# pid + start time, so a reused pid is not mistaken for a survivor
pid_stamp() { local p; for p in "$@"; do [[ -r /proc/$p/stat ]] && echo "$p $(awk '{print $22}' "/proc/$p/stat")"; done; }
alive_of() { local p s; while read -r p s; do [[ -r /proc/$p/stat && $(awk '{print $22}' "/proc/$p/stat") == "$s" ]] && echo "$p"; done; }

run_check() {   # name description
  local name=$1 desc=$2
  if [[ $LANE_CHECKS != all && " $LANE_CHECKS " != *" $name "* ]]; then return 0; fi
  echo
  echo "=== CHECK $name — $desc   [t=$(cut -d' ' -f1 /proc/uptime)s]"
  why=
  local rc=0
  "check_$name" || rc=$?
  if [[ $rc == 0 && -z $why ]]; then
    echo "--- PASS $name"; echo "PASS $name" >> "$RES"
  else
    [[ -z $why ]] && why="exit $rc"
    echo "--- FAIL $name: $why"; echo "FAIL $name: $why" >> "$RES"; failed=1
    [[ $name != boot && $name != injected-* && $why != 'not run:'* ]] && journal_tail 12
  fi
}

# ---------- checks
check_boot() {
  local comm fs v1 st
  comm=$(cat /proc/1/comm); fs=$(stat -f -c %T /sys/fs/cgroup)
  v1=$(awk '$3 == "cgroup"' /proc/mounts | wc -l)
  note "kernel $(uname -r); PID 1 = $comm ($(systemctl --version | head -1)); $(cat /etc/cellkeep-lane-image 2>/dev/null)"
  note "/sys/fs/cgroup: $fs, v1 hierarchies mounted: $v1, root controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
  waitfor "$TMO" '[[ $(systemctl is-system-running 2>&1) != starting ]]' || true
  st=$(systemctl is-system-running 2>&1); note "system state: $st; booted in $T0 s"
  # README (host open-file table): systemd as PID 1 raises fs.file-max at boot.
  note "fs.file-max: $(cat /proc/sys/fs/file-max) (systemd raises it at boot; 9223372036854775807 expected)"
  [[ $comm == systemd ]] || bad "PID 1 is $comm, not systemd"
  [[ $fs == cgroup2fs && $v1 == 0 ]] || bad "not a pure cgroup v2 host"
  [[ $st == running || $st == degraded ]] || bad "systemd is $st"
  [[ $st == degraded ]] && systemctl --failed --no-legend | sed 's/^/      failed unit: /'
  return 0
}

check_injected-fail() { bad "deliberately failing check (--inject fail: the lane must exit 1)"; }

prepare() {   # users, a clone of the repository, the 'before' snapshot
  id alice >/dev/null 2>&1 || useradd -m -s /bin/bash alice
  id bob >/dev/null 2>&1 || useradd -m -s /bin/bash bob
  local t=$SECONDS
  rm -rf "$SRC"; cp -a "$LANE/src" "$SRC"
  snapshot > "$ST/before"
  note "prepared: users alice and bob, $SRC, the 'before' snapshot ($((SECONDS - t)) s)"
}

# The image as files (modes, owners, symlink targets; contents under /etc /usr/local /opt /srv
# /home), /run's top level, users and groups: what install.sh --uninstall must restore.
snapshot() {
  find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp \
      -o -path /var/tmp -o -path /var/log -o -path /var/cache -o -path /var/lib/systemd \
      -o -path /mnt -o -path /root -o -path /etc/machine-id \) -prune -o -printf '%M %u:%g %p %l\n' | sort
  find /etc /usr/local /opt /srv /home -xdev -type f \
      ! -name 'passwd-' ! -name 'group-' ! -name 'shadow-' ! -name 'gshadow-' ! -name '.pwd.lock' \
      ! -path /etc/machine-id -print0 2>/dev/null | sort -z | xargs -0r sha256sum
  find /run -maxdepth 1 ! -name lane | sort
  getent passwd | sort; getent group | sort
  # unit files and their enablement are files and symlinks under /etc and /usr/local, listed above
  # (systemctl list-unit-files would say the same, at ~15 s under emulation)
}

check_install() {
  local rc=0 t
  prepare
  echo "    \$ cd $SRC && scripts/install.sh --binary $LANE/bin/cellkeep"
  t=$SECONDS
  (cd "$SRC" && timeout 600 scripts/install.sh --binary "$LANE/bin/cellkeep") 2>&1 \
    | while IFS= read -r l; do printf '      [%3ss] %s\n' $((SECONDS - t)) "$l"; done | tee "$ST/install.out"
  rc=${PIPESTATUS[0]}
  note "install.sh exit $rc after $((SECONDS - t)) s"
  ((rc == 0)) || bad "install.sh exited $rc"
  [[ $(command -v cellkeep) == /usr/local/bin/cellkeep ]] || bad "cellkeep is not on PATH as /usr/local/bin/cellkeep"
  getent group cellkeep >/dev/null || bad "no group cellkeep"
  [[ -S /run/cellkeep/cellkeep.sock ]] && note "socket: $(stat -c '%A %U:%G %n' /run/cellkeep/cellkeep.sock)" \
    || bad "no socket /run/cellkeep/cellkeep.sock"
  [[ $(systemctl is-enabled cellkeep.socket 2>&1) == enabled ]] || bad "cellkeep.socket is not enabled"
  if [[ $LANE_WORKAROUND == 1 ]]; then
    note "LANE_WORKAROUND=1: applying the issue-15 workarounds (mkdir /work, RestrictSUIDSGID=no) — diagnosis only"
    mkdir -p /work; mkdir -p /etc/systemd/system/cellkeep.service.d
    printf '[Service]\nRestrictSUIDSGID=no\n' > /etc/systemd/system/cellkeep.service.d/lane-workaround.conf
    systemctl daemon-reload; systemctl reset-failed cellkeep.service; systemctl restart cellkeep.service
  fi
  # Where workspaces go: the path install.sh names on a line about workspaces; else the user's
  # home when the shipped cat policy admits /home; else its first workdir root.
  local parent roots
  parent=$(grep -i 'workspace' "$ST/install.out" | grep -o '/[^ :;,)"'"'"']*' | while read -r p; do [[ -d $p && $p != /usr/* && $p != /etc/* ]] && echo "$p"; done | head -1)
  roots=$(cellkeep policy show cat --dir /etc/cellkeep/policies 2>/dev/null | sed -n 's/^roots = \[\(.*\)\]/\1/p' | tr -d '",')
  note "workdir roots of the installed cat policy: ${roots:-?}; install.sh names for workspaces: ${parent:-nothing}"
  if [[ -n $parent ]]; then echo "$parent" > "$ST/ws_parent"
  elif [[ " $roots " == *" /home "* ]]; then echo /home > "$ST/ws_parent"
  else echo "${roots%% *}" > "$ST/ws_parent"; fi
  return 0
}

# WORKSPACE of user $1: $parent/$user/proj (home: ~/proj), made by the user where they can,
# else by root and handed to them; recorded so the lane removes it before --uninstall.
workspace() {
  local u=$1 parent ws
  parent=$(cat "$ST/ws_parent" 2>/dev/null); [[ -n $parent ]] || parent=/home
  # root's cells run as nobody: root's workspace sits beside the users', not in /root (0700)
  if [[ $parent == /home && $u != root ]]; then ws=$(getent passwd "$u" | cut -d: -f6)/proj
  elif [[ $u == root ]]; then ws=$parent/lane-root/proj
  else ws=$parent/$u/proj; fi
  if [[ ! -d $ws ]]; then
    if [[ $u != root ]] && runuser -u "$u" -- mkdir -p "$ws" 2>/dev/null; then :
    else mkdir -p "$ws"; [[ $u != root ]] && chown -R "$u:" "$(dirname "$ws")"; fi
    if [[ $parent != /home || $u == root ]]; then echo "$(dirname "$ws")"; else echo "$ws"; fi >> "$ST/created"
  fi
  echo "$ws"
}

check_service-active() {
  local a s t n
  waitfor "$TMO" '[[ $(prop cellkeep.service ActiveState) != activating ]]'
  a=$(prop cellkeep.service ActiveState); s=$(prop cellkeep.service SubState)
  t=$(prop cellkeep.service Type); n=$(prop cellkeep.service NRestarts)
  show systemctl status --no-pager -n 5 cellkeep.service || bad "systemctl status cellkeep exits non-zero"
  note "Type=$t ActiveState=$a SubState=$s NRestarts=$n StatusText=\"$(prop cellkeep.service StatusText)\""
  [[ $a == active && $s == running ]] || bad "cellkeep.service is $a/$s, not active/running"
  [[ $t == notify* ]] || bad "Type=$t: readiness is not reported to systemd"
  # Type=notify: systemd moves the unit to active only on READY=1
  [[ $a == active && $t == notify* ]] && ok "READY=1 received (Type=$t unit is active)"
  [[ $n == 0 ]] || bad "the service restarted $n times"
  n=$(journalctl -u cellkeep.service -o cat --no-pager 2>/dev/null | grep -c .)
  ((n > 0)) && ok "journalctl -u cellkeep: $n lines" || bad "journalctl -u cellkeep shows nothing"
  return 0
}

check_socket-activation() {
  systemctl stop cellkeep.service
  local a sa inv1 inv2 rc=0
  a=$(prop cellkeep.service ActiveState); sa=$(prop cellkeep.socket ActiveState)/$(prop cellkeep.socket SubState)
  inv1=$(prop cellkeep.service InvocationID)
  note "after systemctl stop cellkeep.service: service $a, socket $sa"
  [[ $a == inactive || $a == failed ]] || bad "service still $a after stop"
  [[ $sa == active/listening ]] || { bad "socket is $sa, not listening"; return 1; }
  echo "    \$ cellkeep health   # first connect"
  ck health > "$ST/health.out" 2>&1 || rc=$?
  sed 's/^/      /' "$ST/health.out" | head -20
  ((rc == 0)) || bad "the first client (cellkeep health) failed: exit $rc${rc:+ (124 = no answer in ${TMO}s)}"
  waitfor 30 '[[ $(prop cellkeep.service ActiveState) == active ]]' || true
  a=$(prop cellkeep.service ActiveState); inv2=$(prop cellkeep.service InvocationID)
  note "service after the connect: $a/$(prop cellkeep.service SubState), triggered by $(prop cellkeep.service TriggeredBy)"
  [[ $a == active ]] || bad "the connect did not leave cellkeep.service active (it is $a)"
  [[ -n $inv2 && $inv2 != "$inv1" ]] || bad "no new start of cellkeep.service after the connect"
  [[ $a == active && $(prop cellkeep.service Type) == notify* ]] && ok "started on demand and READY again"
  return 0
}

check_member-exec() {
  getent group cellkeep >/dev/null && usermod -aG cellkeep alice
  need_daemon || return 1
  local ws out rc=0
  ws=$(workspace alice); note "alice (groups: $(id -Gn alice)), workspace $ws"
  out=$(cd "$ws" && as alice cellkeep exec echo 'hello from alice' 2>&1) || rc=$?
  printf '%s\n' "$out" | sed 's/^/      /' | head -20
  ((rc == 0)) || bad "cellkeep exec echo (as alice, cwd $ws) exited $rc"
  [[ $out == *'hello from alice'* ]] || bad "exec did not echo the command back"
  return 0
}

check_member-session() {
  need_daemon || return 1
  local ws id out rc=0 pid
  ws=$(workspace alice)
  id=$(cd "$ws" && as alice cellkeep spawn cat 2>&1) || rc=$?
  note "cellkeep spawn cat (as alice, cwd $ws) → exit $rc: $id"
  ((rc == 0)) || { bad "spawn failed: $id"; return 1; }
  echo "$id" > "$ST/alice_session"
  out=$(as alice cellkeep send "$id" 'ping from alice' 2>&1) || rc=$?
  note "cellkeep send $id 'ping from alice' → exit $rc: $out"
  [[ $rc == 0 && $out == *'ping from alice'* ]] || bad "send did not get the line back"
  out=$(as alice cellkeep ps 2>&1) || rc=$?
  printf '%s\n' "$out" | sed 's/^/      /'
  [[ $rc == 0 && $out == *"$id"* ]] || bad "cellkeep ps (as alice) does not list $id"
  # the payload (cat) in the cell's cgroup is alice inside its user namespace and, on the host,
  # a uid of the cell's own from cell_id_range (its workspace is alice's and idmapped: the
  # budgets the kernel keys by host uid are not alice's processes'; README, Identity)
  pid=$(for p in $(cat "$CG/cellkeep/$id/cgroup.procs" "$CG/cellkeep/$id"/*/cgroup.procs 2>/dev/null); do
          [[ $(cat "/proc/$p/comm" 2>/dev/null) == cat ]] && echo "$p"; done | head -1)
  local host_uid map alice_uid
  alice_uid=$(id -u alice)
  host_uid=${pid:+$(awk '/^Uid:/ {print $2}' "/proc/$pid/status" 2>/dev/null)}
  map=${pid:+$(awk '{print $1, $2; exit}' "/proc/$pid/uid_map" 2>/dev/null)}
  note "API pid: $(as alice cellkeep get "$id" --json 2>/dev/null | grep -o '"pid": *[0-9]*' | grep -o '[0-9]*$'); cat in ${CG#/sys/fs/cgroup}/cellkeep/$id: ${pid:-none}, host uid ${host_uid:-?}, uid_map ${map:-?}"
  if [[ -n $pid && $host_uid -ge 1900000000 && $host_uid -lt 1900065536 && $map == "$alice_uid $host_uid" ]]; then
    ok "the payload is alice inside, under a host uid of its own ($host_uid)"
  else
    bad "the session's payload (cat) is not alice inside a uid of its own"
  fi
  # what the cell writes in alice's workspace is alice's
  rc=0
  out=$(cd "$ws" && as alice cellkeep spawn sandbox -- /bin/sh -c 'id -u > made-by-cell' 2>&1) || rc=$?
  waitfor 20 '[[ -s $ws/made-by-cell ]]' || true
  note "cellkeep spawn sandbox -- sh -c 'id -u > made-by-cell' → exit $rc: $out; the file: $(cat "$ws/made-by-cell" 2>&1), owner $(stat -c %U "$ws/made-by-cell" 2>&1)"
  [[ $(cat "$ws/made-by-cell" 2>/dev/null) == "$alice_uid" && $(stat -c %U "$ws/made-by-cell" 2>/dev/null) == alice ]] \
    && ok "the cell is alice inside; its file is alice's" || bad "the cell's identity or its file's owner is not alice's"
  return 0
}

check_non-member-refused() {
  local out rc=0 ws
  ws=/home/bob/proj; runuser -u bob -- mkdir -p "$ws"
  note "bob: groups $(id -Gn bob)"
  out=$(cd "$ws" && as bob cellkeep ps 2>&1) || rc=$?
  note "cellkeep ps (as bob) → exit $rc: $out"
  ((rc != 0)) || bad "bob's cellkeep ps succeeded"
  rc=0; out=$(cd "$ws" && as bob cellkeep exec echo 'bob was here' 2>&1) || rc=$?
  note "cellkeep exec echo (as bob) → exit $rc: $out"
  ((rc != 0)) || bad "bob's exec succeeded"
  [[ $out == *'bob was here'* ]] && bad "bob's command ran"
  [[ $rc == 124 ]] && bad "bob's client hung instead of being refused"
  if daemon_up; then
    [[ $(ck ps --all --json 2>/dev/null) == *"\"owner_uid\":$(id -u bob)"* ]] && bad "a cell of bob's exists"
  fi
  rm -rf "$ws"
  return 0
}

# A live session for the lifecycle checks: alice's (default) or root's (LANE_SESSION_USER=root)
live_session() {
  local u=$LANE_SESSION_USER ws id
  ws=$(workspace "$u")
  if [[ $u == root ]]; then id=$(cd "$ws" && ck spawn cat 2>&1); else id=$(cd "$ws" && as "$u" cellkeep spawn cat 2>&1); fi || {
    echo "spawn failed: $id" >&2; return 1; }
  echo "$id"
}
say_in() { local id=$1 msg=$2 out; if [[ $LANE_SESSION_USER == root ]]; then out=$(ck send "$id" "$msg" 2>&1); else out=$(as "$LANE_SESSION_USER" cellkeep send "$id" "$msg" 2>&1); fi
  [[ $out == *"$msg"* ]] || { echo "      send $id: $out"; return 1; }; }

check_delegated-cgroups() {
  need_daemon || return 1
  local id main mcg pids p c n=0
  id=$(live_session 2>&1) || { bad "$id"; return 1; }
  echo "$id" > "$ST/session1"
  main=$(prop cellkeep.service MainPID); mcg=$(cut -d: -f3 "/proc/$main/cgroup")
  note "Delegate=$(prop cellkeep.service Delegate) (controllers: $(prop cellkeep.service DelegateControllers)); daemon pid $main in $mcg"
  note "$CG/cgroup.subtree_control: $(cat "$CG/cgroup.subtree_control" 2>/dev/null)"
  [[ $(prop cellkeep.service Delegate) == yes ]] || bad "cellkeep.service is not Delegate=yes"
  [[ $mcg == /system.slice/cellkeep.service* ]] || bad "the daemon is in $mcg"
  # the session's payload, by the pid the API reports, and every process of the session's user
  # (the lane's own clients have exited): all in a cgroup beneath the service's, none in the
  # daemon's own
  p=$(ck get "$id" --json 2>/dev/null | grep -o '"pid": *[0-9]*' | grep -o '[0-9]*$')
  [[ -n $p ]] || bad "cellkeep get $id reports no pid"
  pids=$( { echo "$p"; [[ $LANE_SESSION_USER != root ]] && pgrep -u "$LANE_SESSION_USER"; } | sort -un)
  for p in $pids; do
    c=$(cut -d: -f3 "/proc/$p/cgroup" 2>/dev/null) || continue; n=$((n + 1))
    note "process $p ($(cat "/proc/$p/comm"), $(ps -o user= -p "$p")): $c"
    [[ $c == /system.slice/cellkeep.service/* && $c != "$mcg" ]] || bad "process $p of the session is in $c"
  done
  [[ -n $(cell_pids) ]] || bad "no process in $CG/cellkeep/*"
  for c in $(cell_cgroups); do
    [[ -f $c/memory.max ]] && note "${c#/sys/fs/cgroup}: memory.max $(cat "$c/memory.max"), pids.max $(cat "$c/pids.max" 2>/dev/null)"
  done
  ((n > 0)) && ok "$n session process(es), all in cell cgroups under /system.slice/cellkeep.service/"
  return 0
}

# README's first commands as root would run them from a login shell: `cellkeep run` and a
# `cellkeep daemon` started by hand, in a cgroup they share with the shell (a session scope;
# here a scope made by systemd-run holding a shell and a sleep). cgroup v2 cannot delegate
# from such a cgroup: cellkeep moves into a scope of its own. With that step refused
# (CELLKEEP_OWN_SCOPE=1), it says why and touches nothing in the session's cgroup.
check_login-scope() {
  local ws out rc=0 sc=/sys/fs/cgroup/system.slice/lane-login.scope left
  ws=$(workspace root)
  cat > "$ST/login.sh" <<EOS
set -u
# (the sleep's stdio is not the caller's pipe, and it is killed by its own pid: the check's output ends with the script)
sleep 600 </dev/null >/dev/null 2>&1 & s=\$!; trap 'kill \$s 2>/dev/null' EXIT
echo "login scope: \$(cut -d: -f3 /proc/self/cgroup)"
timeout $TMO cellkeep run --policy /etc/cellkeep/policies/sandbox.toml --cwd $ws -- /bin/echo ran in a cell
echo "run exit \$?"
CELLKEEP_OWN_SCOPE=1 timeout $TMO cellkeep run --policy /etc/cellkeep/policies/sandbox.toml --cwd $ws -- /bin/true
echo "refused run exit \$?"
ls $sc | grep -qx supervisor && echo "a supervisor leaf in the login scope"
cellkeep daemon --socket $ST/login.sock --policies /etc/cellkeep/policies --cgroup-root lane-login 2> $ST/login-daemon.log &
d=\$!
for _ in \$(seq 120); do [[ -S $ST/login.sock ]] && break; sleep 0.5; done
echo "daemon pid \$d in \$(cut -d: -f3 /proc/\$d/cgroup)"
(cd $ws && timeout $TMO cellkeep --socket $ST/login.sock exec echo 'exec through a daemon started by hand')
echo "exec exit \$?"
kill -TERM \$d; wait \$d; echo "daemon exit \$?"
EOS
  out=$(timeout 300 systemd-run --scope --quiet --unit=lane-login -- bash "$ST/login.sh" 2>&1) || rc=$?
  printf '%s\n' "$out" | sed 's/^/      /' | head -40
  [[ $out == *'ran in a cell'* && $out == *'run exit 0'* ]] || bad "cellkeep run from a login scope did not run its command"
  [[ $out == *'refused run exit 125'* && $out == *'also holds processes'* ]] \
    || bad "with its own scope refused, run did not exit 125 naming the shared cgroup"
  [[ $out == *'a supervisor leaf in the login scope'* ]] && bad "cellkeep made a cgroup in the login scope"
  [[ $out == *'exec through a daemon started by hand'* && $out == *'daemon exit 0'* ]] \
    || { bad "a daemon started by hand from a login scope did not serve an exec and exit 0"; sed 's/^/      log: /' "$ST/login-daemon.log" | tail -8; }
  [[ $out == *'daemon pid '*' in /system.slice/cellkeep-daemon-'*'.scope'* ]] || bad "the daemon is not in a scope of its own"
  waitfor 30 '[[ -z $(systemctl list-units --all --no-legend "cellkeep-run-*" "cellkeep-daemon-*" "lane-login.scope") ]]' || true
  left=$(systemctl list-units --all --no-legend 'cellkeep-run-*' 'cellkeep-daemon-*' 'lane-login.scope'; find /sys/fs/cgroup -name 'lane-login*' -o -name 'cellkeep-run-*' -o -name 'cellkeep-daemon-*')
  [[ -z $left ]] || bad "left behind: $left"
  return 0
}

lane_policy() {   # a valid provider "lane-reload" admitting the session user, or garbage
  if [[ $1 == broken ]]; then
    printf '# written by the systemd lane: not a policy\nextends = "base"\n[provider\nname = "lane-broken"\n' \
      > /etc/cellkeep/policies/lane-reload.toml
  else
    local uid; uid=$(id -u "$LANE_SESSION_USER")
    printf '# written by the systemd lane\nextends = "base"\n\n[provider]\nname = "lane-reload"\ncommand = ["/bin/echo"]\nmode = "oneshot"\n\n[access]\nuids = [0, %s]\ngroups = ["cellkeep"]\n' \
      "$uid" > /etc/cellkeep/policies/lane-reload.toml
  fi
}

check_reload-broken() {
  need_daemon || return 1
  local id main rc=0 out
  id=$(cat "$ST/session1" 2>/dev/null) || true
  [[ -n $id ]] || { id=$(live_session 2>&1) || { bad "$id"; return 1; }; echo "$id" > "$ST/session1"; }
  main=$(prop cellkeep.service MainPID)
  lane_policy broken
  note "wrote a broken /etc/cellkeep/policies/lane-reload.toml"
  show timeout "$TMO" systemctl reload cellkeep || rc=$?
  ((rc != 0)) && ok "systemctl reload cellkeep exits $rc" || bad "systemctl reload cellkeep exits 0 although the policy set is broken"
  waitfor 30 '[[ $(prop cellkeep.service SubState) == running ]]' || true
  daemon_up || bad "cellkeep.service is $(prop cellkeep.service ActiveState) after the rejected reload"
  [[ $(prop cellkeep.service MainPID) == "$main" ]] || bad "the daemon was restarted (pid $main → $(prop cellkeep.service MainPID))"
  say_in "$id" 'after the broken reload' && ok "session $id still answers" || bad "session $id did not survive the rejected reload"
  out=$(cd "$(workspace "$LANE_SESSION_USER")" && ck exec lane-reload x 2>&1) && bad "the broken provider serves: $out"
  journalctl -u cellkeep --no-pager -n 200 | grep -i 'lane-reload' | tail -3 | sed 's/^/      journal: /'
  return 0
}

check_reload-fixed() {
  need_daemon || return 1
  local id rc=0 out ws
  id=$(cat "$ST/session1" 2>/dev/null) || true
  lane_policy good
  note "wrote a valid /etc/cellkeep/policies/lane-reload.toml (provider lane-reload)"
  show timeout "$TMO" systemctl reload cellkeep || rc=$?
  ((rc == 0)) || bad "systemctl reload cellkeep exited $rc for a valid policy set"
  waitfor 30 '[[ $(prop cellkeep.service SubState) == running ]]' || true
  ws=$(workspace "$LANE_SESSION_USER")
  if [[ $LANE_SESSION_USER == root ]]; then out=$(cd "$ws" && ck exec lane-reload 'reloaded' 2>&1) || rc=$?
  else out=$(cd "$ws" && as "$LANE_SESSION_USER" cellkeep exec lane-reload 'reloaded' 2>&1) || rc=$?; fi
  note "cellkeep exec lane-reload reloaded → exit $rc: $out"
  [[ $rc == 0 && $out == *reloaded* ]] || bad "the new provider lane-reload does not serve after the reload"
  if [[ -n $id ]]; then
    say_in "$id" 'after the good reload' && ok "session $id still answers" || bad "session $id did not survive the reload"
  else bad "no live session to check"; fi
  rm -f /etc/cellkeep/policies/lane-reload.toml
  timeout "$TMO" systemctl reload cellkeep || bad "reload after removing the lane's policy exited non-zero"
  return 0
}

check_kill9-restart() {
  need_daemon || return 1
  local id2 main n old cgs left p
  id2=$(live_session 2>&1) || { bad "$id2"; return 1; }
  main=$(prop cellkeep.service MainPID); n=$(prop cellkeep.service NRestarts)
  cell_pids > "$ST/k9.pids"; old=$(pid_stamp $(cat "$ST/k9.pids")); cgs=$(cell_cgroups)
  note "daemon pid $main, cells: $(tr '\n' ' ' < "$ST/k9.pids")"
  note "cell cgroups: $(echo $cgs | sed "s#$CG/##g")"
  [[ -n $old ]] || bad "no live cell to leave behind"
  kill -9 "$main"; note "kill -9 $main"
  if waitfor 120 '[[ $(prop cellkeep.service ActiveState) == active && $(prop cellkeep.service MainPID) != "$main" && $(prop cellkeep.service MainPID) != 0 ]]'; then
    ok "restarted by systemd: new pid $(prop cellkeep.service MainPID), NRestarts $n → $(prop cellkeep.service NRestarts)"
  else
    bad "cellkeep.service not active again with a new pid within 120 s ($(prop cellkeep.service ActiveState)/$(prop cellkeep.service SubState))"
  fi
  if ! waitfor 60 '[[ -z $(alive_of <<< "$old") ]]'; then
    for p in $(alive_of <<< "$old"); do bad "old cell process $p ($(cat /proc/$p/comm 2>/dev/null)) still alive in $(cut -d: -f3 /proc/$p/cgroup 2>/dev/null)"; done
  else ok "no process of the old cells left"; fi
  waitfor 60 cgroups_gone || true
  for c in $cgs; do [[ -d $c ]] && bad "old cell cgroup ${c#/sys/fs/cgroup} still exists"; done
  daemon_up && { show ck ps --all || bad "cellkeep ps fails after the restart"; }
  daemon_up && [[ $(ck ps --json 2>/dev/null) == *"$id2"* ]] && bad "the old session $id2 is still listed as running"
  return 0
}

check_stop-live-cells() {
  need_daemon || return 1
  local id pids old main t0 rc=0 r c s left
  id=$(live_session 2>&1) || { bad "$id"; return 1; }
  live_session >/dev/null || true
  main=$(prop cellkeep.service MainPID)
  old=$(pid_stamp $(cell_pids)); note "daemon $main; live cells' processes: $(cut -d' ' -f1 <<< "$old" | tr '\n' ' ')"
  [[ -n $old ]] || bad "no live cell before the stop"
  t0=$SECONDS
  timeout 120 systemctl stop cellkeep.service || rc=$?
  r=$(prop cellkeep.service Result); c=$(prop cellkeep.service ExecMainCode); s=$(prop cellkeep.service ExecMainStatus)
  note "systemctl stop → exit $rc after $((SECONDS - t0)) s; Result=$r ExecMainCode=$c ExecMainStatus=$s ActiveState=$(prop cellkeep.service ActiveState)"
  ((rc == 0)) || bad "systemctl stop exited $rc"
  [[ $r == success ]] || bad "the unit's result is $r (not a clean exit)"
  [[ $c == 1 && $s == 0 ]] || bad "the daemon did not exit 0 by itself (code $c status $s; 2 = killed)"
  [[ $(prop cellkeep.service ActiveState) == inactive ]] || bad "cellkeep.service is $(prop cellkeep.service ActiveState)"
  # (polled, though systemd has normally removed both by the time stop returns)
  waitfor 30 '[[ -z $(alive_of <<< "$old") && ! -d $CG ]]' || true
  left=$(alive_of <<< "$old"); [[ -z $left ]] || bad "processes left: $left"
  [[ -d $CG ]] && bad "the unit's cgroup $CG is still there: $(find "$CG" -name cgroup.procs -exec cat {} + | tr '\n' ' ')"
  [[ -z $left && ! -d $CG ]] && ok "no process and no cgroup left"
  return 0
}

check_uninstall() {
  local rc=0 d
  # the lane's own traces first: alice leaves the group (a group in use is kept by design),
  # workspaces the lane made outside the users' homes, the workaround
  gpasswd -d alice cellkeep >/dev/null 2>&1 || true
  [[ -f $ST/created ]] && sort -u "$ST/created" | while read -r d; do rm -rf "$d"; done
  rm -f /etc/cellkeep/policies/lane-reload.toml
  if [[ $LANE_WORKAROUND == 1 ]]; then rm -rf /etc/systemd/system/cellkeep.service.d /work; fi
  echo "    \$ cd $SRC && scripts/install.sh --uninstall"
  (cd "$SRC" && timeout 300 scripts/install.sh --uninstall) > "$ST/uninstall.out" 2>&1 || rc=$?
  sed 's/^/      /' "$ST/uninstall.out"
  ((rc == 0)) || bad "install.sh --uninstall exited $rc"
  # the unit's runtime traces
  waitfor 30 '[[ ! -d $CG ]] && ! pgrep -x cellkeep >/dev/null' || true
  [[ $(prop cellkeep.service ActiveState) == inactive ]] || bad "cellkeep.service is $(prop cellkeep.service ActiveState)"
  [[ $(prop cellkeep.socket ActiveState) == inactive ]] || bad "cellkeep.socket is $(prop cellkeep.socket ActiveState)"
  [[ -d $CG ]] && bad "$CG is still there"
  pgrep -a -x cellkeep | sed 's/^/      left: /'; pgrep -x cellkeep >/dev/null && bad "a cellkeep process is still running"
  snapshot > "$ST/after"
  if diff -u "$ST/before" "$ST/after" > "$ST/diff"; then ok "files, users, groups and unit files as before the install"
  else sed 's/^/      /' "$ST/diff" | head -60; bad "the image differs after --uninstall ($(grep -c '^[-+][^-+]' "$ST/diff") lines)"; fi
  return 0
}

# ---------- the lane
echo "=== systemd lane: guest up after ${T0}s; checks: $LANE_CHECKS${LANE_INJECT:+; injected: $LANE_INJECT}${LANE_WORKAROUND:+; workaround=$LANE_WORKAROUND}"
run_check boot "systemd is PID 1 on a pure cgroup v2 hierarchy"
[[ $LANE_INJECT == fail ]] && { LANE_CHECKS="$LANE_CHECKS injected-fail"; run_check injected-fail "a check that fails on purpose (self-test)"; }
if [[ $LANE_INJECT == hang ]]; then echo "=== injected hang (self-test): sleeping forever"; sleep infinity; fi
run_check install "scripts/install.sh as a user runs it: binary, units, group, socket enabled, service started"
run_check service-active "systemctl status cellkeep: active (running), READY reached (Type=notify)"
run_check socket-activation "service stopped, socket listening: the first connect starts the daemon"
run_check member-exec "a user in group cellkeep: cellkeep exec through the socket in their own workspace"
run_check member-session "a user in group cellkeep: spawn, send, ps; the payload is that user inside, under a uid of its own"
run_check non-member-refused "a user outside group cellkeep is refused"
run_check delegated-cgroups "cells are cgroups under /system.slice/cellkeep.service (Delegate=yes)"
run_check login-scope "cellkeep run and a daemon started by hand from a login session's cgroup (README's first commands)"
run_check reload-broken "reload with a broken policy: rejected, systemctl reload exits non-zero, the session lives"
run_check reload-fixed "reload with a fixed policy: loaded, exits 0, the session lives"
run_check kill9-restart "kill -9 of the daemon: systemd restarts it, no process or cgroup of the old cells left"
run_check stop-live-cells "systemctl stop with live cells: clean exit, nothing left"
run_check uninstall "install.sh --uninstall leaves the image as it was"

echo
echo "=== systemd lane results (guest uptime $(cut -d' ' -f1 /proc/uptime)s):"
sed 's/^/    /' "$RES"
echo "$failed" > "$LANE/rc"
sync
exit 0
