#!/usr/bin/env bash
# schemathesis over the daemon's generated OpenAPI document (issue 19, acceptance 3): a real
# daemon on a temporary socket, policy directory and cgroup root; every operation but
# POST /v1/shutdown (it stops the daemon by design) fuzzed from the document; the run fails on
# any server error (5xx), whether schemathesis saw it or only the daemon's log did, if the
# daemon dies, or if an answer does not match the document (its schema, a status or content
# type it does not list). Root only (cells need cgroups and namespaces). About a minute here.
#
#   scripts/schemathesis.sh            run (installs schemathesis into the venv if missing)
#   scripts/schemathesis.sh --install  only create the venv and install schemathesis
#
#   env: CELLKEEP_VENV=/var/tmp/cellkeep-venv   the Python venv (kept between runs)
#        SCHEMA_EXAMPLES=25                      examples per operation and pass
#        SCHEMA_CHECKS=...                       schemathesis checks (default: no 5xx, and answers
#                                                conform to the document)
#        CI                                      set: a missing schemathesis fails the run; unset:
#                                                it is skipped with the reason printed
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
VENV=${CELLKEEP_VENV:-/var/tmp/cellkeep-venv}
ST=$VENV/bin/schemathesis
# A pinned major version: the command-line options below are schemathesis 4's.
SPEC='schemathesis>=4,<5'

install() {
  [[ -x $ST ]] && return 0
  python3 -m venv "$VENV" && "$VENV/bin/pip" install -q --disable-pip-version-check "$SPEC"
}

if [[ ${1:-} == --install ]]; then
  install
  "$ST" --version
  exit 0
fi
if ! install >/tmp/cellkeep-schemathesis-install.log 2>&1; then
  if [[ -n ${CI:-} ]]; then
    echo "schemathesis could not be installed into $VENV (see below); CI requires it" >&2
    tail -5 /tmp/cellkeep-schemathesis-install.log >&2
    exit 1
  fi
  echo "SKIP: schemathesis is not installed and could not be (no python3 venv or no network: $(tail -1 /tmp/cellkeep-schemathesis-install.log)); CI runs it"
  exit 0
fi
[[ $(id -u) == 0 ]] || { echo "schemathesis.sh must run as root (cells need cgroups and namespaces)" >&2; exit 1; }
getent group cellkeep >/dev/null || groupadd --system cellkeep

cargo build --locked -q --bin cellkeep
work=$(mktemp -d /tmp/ck-schema-XXXXXX)
chmod 755 "$work"
mkdir -p "$work/policies" "$work/ws"
chown 65534:65534 "$work/ws"
cp policies/base.toml "$work/policies/"
for p in echo:'["/bin/echo"]':oneshot cat:'["/bin/cat"]':session; do
  IFS=: read -r name cmd mode <<<"$p"
  printf 'extends = "base"\n[provider]\nname = "%s"\ncommand = %s\nmode = "%s"\n[limits]\nwall_time = "5s"\nidle_timeout = "5s"\n' \
    "$name" "$cmd" "$mode" >"$work/policies/$name.toml"
done
printf 'socket_mode = "0666"\ngrace_secs = 1.0\nshutdown_timeout_secs = 5.0\n' >"$work/cellkeep.toml"
sock=$work/cellkeep.sock
CELLKEEP_LOG=cellkeep=debug NO_COLOR=1 target/debug/cellkeep daemon --config "$work/cellkeep.toml" --socket "$sock" \
  --policies "$work/policies" --cgroup-root "ck-schema-$$" --max-cells 8 >"$work/daemon.log" 2>&1 &
dpid=$!
fpid=
cleanup() {
  [[ -n $fpid ]] && kill "$fpid" 2>/dev/null
  kill -TERM "$dpid" 2>/dev/null && wait "$dpid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.1; done
[[ -S $sock ]] || { echo "the daemon did not start:" >&2; tail -20 "$work/daemon.log" >&2; exit 1; }

# schemathesis speaks TCP: a tiny loopback TCP -> Unix socket relay.
port=$("$VENV/bin/python" -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
"$VENV/bin/python" - "$port" "$sock" <<'PY' &
import asyncio, sys
port, path = int(sys.argv[1]), sys.argv[2]
async def pipe(r, w):
    try:
        while (b := await r.read(65536)):
            w.write(b)
            await w.drain()
    except Exception:
        pass
    finally:
        w.close()
async def handle(cr, cw):
    try:
        ur, uw = await asyncio.open_unix_connection(path)
    except OSError:
        cw.close()
        return
    await asyncio.gather(pipe(cr, uw), pipe(ur, cw))
async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", port)
    async with srv:
        await srv.serve_forever()
asyncio.run(main())
PY
fpid=$!
for _ in $(seq 50); do
  "$VENV/bin/python" -c "import socket,sys;socket.create_connection(('127.0.0.1',$port),1)" 2>/dev/null && break
  sleep 0.1
done

# A live session cell, so the {id} and {name} operations of pass 2 reach real state.
cell=$("$VENV/bin/python" - "$sock" "$work/ws" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
body = json.dumps({"cwd": sys.argv[2]}).encode()
s.sendall(b"POST /v1/providers/cat/session HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
          b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
data = b""
while (b := s.recv(65536)):
    data += b
print(json.loads(data.split(b"\r\n\r\n", 1)[1])["id"])
PY
) || { echo "could not start a session cell:" >&2; tail -5 "$work/daemon.log" >&2; exit 1; }
: >"$work/pass1.toml"
printf '[parameters]\n"path.id" = "%s"\n"path.name" = "cat"\n' "$cell" >"$work/pass2.toml"

checks=${SCHEMA_CHECKS:-not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance}
# Pass 1: every parameter generated. Pass 2: a real cell id and provider name in the paths.
rc=0
for pass in 1 2; do
  prc=0
  (cd "$work" && timeout 300 "$ST" --config-file "$work/pass$pass.toml" run "http://127.0.0.1:$port/v1/openapi.json" \
    --url "http://127.0.0.1:$port" --checks "$checks" --exclude-path /v1/shutdown \
    --max-examples "${SCHEMA_EXAMPLES:-25}" --workers 2 --request-timeout 30 --continue-on-failure \
    --suppress-health-check all --seed 19 --no-color >"$work/schemathesis$pass.log" 2>&1) || prc=$?
  echo "--- pass $pass (rc=$prc)"
  sed -n '/SUMMARY/,$p' "$work/schemathesis$pass.log"
  if ((prc != 0)); then
    grep -B2 -A16 -E "Server error|FAILURES|ERRORS|Network Error" "$work/schemathesis$pass.log" | head -60 || true
    # A check that failed fails the run. A request that ended in a network error alone (a
    # pooled keep-alive connection closed between requests, through the relay) is not a server
    # error: server errors are also counted from the daemon's own log below, and a daemon that
    # died fails the run there.
    if grep -qE "[0-9]+ failed" "$work/schemathesis$pass.log" \
      || ! grep -qE "^  🚫 Network Error: [0-9]+$" "$work/schemathesis$pass.log" \
      || awk '/^Errors:/{e=1; next} e && /^$/{e=0} e' "$work/schemathesis$pass.log" | grep -vq "Network Error"; then
      rc=1
    else
      echo "(pass $pass: network errors only — connections, not answers; not a failure)"
    fi
  fi
done

plain() { sed 's/\x1b\[[0-9;]*m//g' "$work/daemon.log"; }
fivexx=$(plain | grep -acE 'status=5[0-9][0-9]' || true)
echo "daemon: $(plain | grep -aoE ' status=[0-9]+' | sort | uniq -c | tr -s ' \n' ' ')(answers by status); 5xx: $fivexx"
if ((fivexx > 0)); then
  plain | grep -aE 'status=5[0-9][0-9]' | head -20
  rc=1
fi
if ! kill -0 "$dpid" 2>/dev/null; then
  echo "the daemon died during the run:" >&2
  tail -20 "$work/daemon.log" >&2
  rc=1
fi
if ((rc == 0)); then
  echo "schemathesis: 0 server errors; every answer matches the document"
else
  echo "schemathesis: FAILED (a server error, an answer the document does not describe, or the daemon died)" >&2
fi
exit "$rc"
