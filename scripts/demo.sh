#!/usr/bin/env bash
# The README's main command: build cellkeep, start the daemon on a private socket with the
# shipped policies, and walk through the pool over that socket — a one-shot command, a session,
# ps / health / logs / kill, the raw HTTP API with curl — then shut the daemon down cleanly
# (no process, cgroup or socket left). Root only (cells need cgroups and namespaces).
#   env: CELLKEEP_DEMO_DEBUG=1 uses a debug build (faster to build, slower to run)
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
[[ $(id -u) == 0 ]] || { echo "demo.sh must run as root (cells need cgroups and namespaces)" >&2; exit 1; }
# The shipped policies admit the "cellkeep" group (a missing group makes a policy invalid):
# create it as scripts/install.sh does, if this host has none yet.
getent group cellkeep >/dev/null || groupadd --system cellkeep

if [[ ${CELLKEEP_DEMO_DEBUG:-0} == 1 ]]; then
  cargo build --locked -q
  bin=$PWD/target/debug/cellkeep
else
  cargo build --locked --release -q
  bin=$PWD/target/release/cellkeep
fi
work=$(mktemp -d /tmp/cellkeep-demo.XXXXXX)
sock=$work/cellkeep.sock
# Root's cells run under a host uid of their own (never host root) and see the workspace
# through an idmapped mount as its owner: a workspace owned by nobody keeps root's files out
# of the demo's reach.
ws=$work/workspace
mkdir "$ws" && chown nobody: "$ws" && chmod 755 "$work"
export CELLKEEP_SOCKET=$sock
ck() { echo "\$ cellkeep $(printf '%q ' "$@")"; "$bin" "$@"; }

"$bin" daemon --policies policies --cgroup-root cellkeep-demo 2> "$work/daemon.log" &
daemon=$!
cleanup() {
  kill -TERM "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true
  echo "--- daemon log (last lines)"; tail -n 5 "$work/daemon.log" || true
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.05; done
[[ -S $sock ]] || { cat "$work/daemon.log" >&2; exit 1; }

echo "=== the daemon"
ck health
echo
echo "=== a one-shot command: a fresh cell per command; the command is one literal argv element"
ck exec echo 'Hello World; rm -rf /' --cwd "$ws"
echo
echo "=== a session: one long-lived process, replies framed exactly (here: one line each)"
id=$(ck spawn cat --cwd "$ws" | tail -n 1)
echo "$id"
ck send "$id" "first command"
ck send "$id" "second command"
ck ps
ck health "$id"
echo
echo "=== its output, kept in a bounded spool for late readers"
ck logs "$id"
echo
echo "=== the raw API: HTTP/1.1 + JSON on the Unix socket"
echo "\$ curl --unix-socket $sock http://cellkeep/v1/cells/$id/commands -d '{\"command\":\"via curl\"}'"
curl -sS --unix-socket "$sock" "http://cellkeep/v1/cells/$id/commands" -d '{"command":"via curl"}'
echo
echo
echo "=== terminate (SIGTERM, grace, then the whole cgroup is killed); a second time is already_ended"
ck kill "$id"
ck kill "$id" || true
echo
echo "=== clean shutdown: every cell ended, every cgroup and the socket removed"
ck shutdown
wait "$daemon" && echo "daemon exited 0"
[[ -e $sock ]] && echo "socket still there!" || echo "socket removed"
