#!/usr/bin/env bash
# Long fuzz run (issue 7, item 4): the cargo-fuzz targets in tests/fuzz, then schemathesis
# against the live daemon's OpenAPI document. Results go in the closing note.
#
#   FUZZ_RUNS=10000000  executions per target (libFuzzer -runs)
#   FUZZ_TARGETS="requests framer policy"
#   FUZZ_JOBS=1         libFuzzer -jobs/-workers per target (2 cores: targets run one at a
#                       time; 2 halves the wall time of one target, -runs is per job)
#   FUZZ_SANITIZER=address|none   (default: address, falling back to none if it cannot build;
#                       none runs ~4x faster: the targets are safe Rust, so the long runs use it)
# Builds always have debug assertions on (-a): integer overflow panics instead of wrapping.
#   SCHEMA_EXAMPLES=200 schemathesis --max-examples per operation; SKIP_SCHEMATHESIS=1 to skip
#   SKIP_FUZZ=1         only the schemathesis part
#
# Toolchain: no nightly can be downloaded here. cargo-fuzz needs -Z flags, so the stable
# toolchain is run with RUSTC_BOOTSTRAP=1; stable ships the ASan runtime
# (librustc-stable_rt.asan.a), so -Zsanitizer=address works. libFuzzer is built from C++ by
# libfuzzer-sys with the system g++ (or clang).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
FUZZ_DIR=tests/fuzz
RUNS=${FUZZ_RUNS:-10000000}
TARGETS=${FUZZ_TARGETS:-"requests framer policy"}
JOBS=${FUZZ_JOBS:-1}
SAN=${FUZZ_SANITIZER:-address}
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
log() { printf '== %s\n' "$*" >&2; }

# --- fuzzing ---------------------------------------------------------------------------
if [ "${SKIP_FUZZ:-0}" != 1 ]; then
  # Only the fuzz build needs the -Z flags (RUSTC_BOOTSTRAP) and cargo-fuzz; the schemathesis
  # part below builds the ordinary daemon (exporting RUSTC_BOOTSTRAP there would rebuild it all).
  export RUSTC_BOOTSTRAP=1
  if ! command -v cargo-fuzz >/dev/null; then
    log "installing cargo-fuzz"
    cargo install --locked cargo-fuzz
  fi
  if ! command -v clang >/dev/null && ! command -v g++ >/dev/null; then
    log "installing g++ (libfuzzer-sys builds libFuzzer from C++)"
    apt-get update -qq && apt-get install -y -qq g++
  fi
  if ! cargo fuzz build --fuzz-dir "$FUZZ_DIR" -O -a -s "$SAN" 2>&1 | tail -3; then
    log "build with sanitizer=$SAN failed; using --sanitizer none"
    SAN=none
    cargo fuzz build --fuzz-dir "$FUZZ_DIR" -O -a -s none 2>&1 | tail -3
  fi
  ABS=$ROOT/$FUZZ_DIR
  BIN=$ABS/target/$TRIPLE/release
  summary=()
  for t in $TARGETS; do
    corpus=$ABS/corpus/$t
    mkdir -p "$corpus" "$ABS/artifacts/$t"
    extra=()
    [ -d "$ABS/seeds/$t" ] && extra+=("$ABS/seeds/$t")
    [ -f "$ABS/$t.dict" ] && extra+=("-dict=$ABS/$t.dict")
    [ "$t" = framer ] && extra+=(-max_len=2048)
    # -runs is per job: split the total between the jobs.
    flags=(-runs=$(( RUNS / JOBS )) -artifact_prefix="$ABS/artifacts/$t/" -print_final_stats=1)
    [ "$JOBS" -gt 1 ] && flags+=(-jobs="$JOBS" -workers="$JOBS")
    log "fuzzing $t: $RUNS runs over $JOBS job(s), sanitizer $SAN"
    start=$(date +%s)
    rc=0
    rm -f "$ABS"/fuzz-*.log
    (cd "$ABS" && "$BIN/$t" "$corpus" "${extra[@]}" "${flags[@]}") >"/tmp/fuzz-$t.log" 2>&1 || rc=$?
    if [ "$JOBS" -gt 1 ]; then
      cat "$ABS"/fuzz-*.log >>"/tmp/fuzz-$t.log" 2>/dev/null || true
      rm -f "$ABS"/fuzz-*.log
    fi
    execs=$(awk '/stat::number_of_executed_units/ {s+=$2} END {print s+0}' "/tmp/fuzz-$t.log")
    secs=$(( $(date +%s) - start ))
    files=$(find "$corpus" -type f | wc -l)
    bytes=$(du -sb "$corpus" | cut -f1)
    crashes=$(find "$ABS/artifacts/$t" -type f | wc -l)
    # libFuzzer's own count (units kept in memory at the end) and what is on disk (REDUCE
    # writes the smaller unit without deleting the larger one, so the directory holds more).
    corp=$(grep -oE 'corp: [0-9]+/[0-9]+[a-zA-Z]*' "/tmp/fuzz-$t.log" | tail -1 | cut -d' ' -f2)
    line="$t: rc=$rc executions=${execs:-?} seconds=$secs corpus=${corp:-?} (libFuzzer units/size) dir=${files} files/${bytes} bytes artifacts=$crashes log=/tmp/fuzz-$t.log"
    echo "$line"
    summary+=("$line")
    if [ "$rc" != 0 ]; then
      grep -m1 -A25 -E "panicked|ERROR: " "/tmp/fuzz-$t.log" || true
    fi
  done
  unset RUSTC_BOOTSTRAP
fi

# --- schemathesis against the live daemon --------------------------------------------
if [ "${SKIP_SCHEMATHESIS:-0}" != 1 ]; then
  VENV=$ROOT/target/fuzz-venv
  [ -x "$VENV/bin/schemathesis" ] || { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q schemathesis; }
  cargo build -q --bin cellkeep
  work=$(mktemp -d /tmp/ck-schema-XXXXXX)
  chmod 755 "$work"
  mkdir -p "$work/policies" "$work/ws"
  cp policies/base.toml "$work/policies/"
  for p in echo:'["/bin/echo"]':oneshot cat:'["/bin/cat"]':session; do
    IFS=: read -r name cmd mode <<<"$p"
    printf 'extends = "base"\n[provider]\nname = "%s"\ncommand = %s\nmode = "%s"\n[limits]\nwall_time = "5s"\nidle_timeout = "5s"\n' \
      "$name" "$cmd" "$mode" >"$work/policies/$name.toml"
  done
  printf 'socket_mode = "0666"\ngrace_secs = 1.0\nshutdown_timeout_secs = 5.0\n' >"$work/cellkeep.toml"
  sock=$work/cellkeep.sock
  cg=ck-schema-$$
  CELLKEEP_LOG=cellkeep=debug target/debug/cellkeep daemon --config "$work/cellkeep.toml" --socket "$sock" --policies "$work/policies" \
    --cgroup-root "$cg" --max-cells 8 >"$work/daemon.log" 2>&1 &
  dpid=$!
  for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
  # schemathesis speaks TCP; a tiny loopback TCP -> Unix socket forwarder.
  port=$("$VENV/bin/python" -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  "$VENV/bin/python" - "$port" "$sock" <<'PY' &
import asyncio, sys
port, path = int(sys.argv[1]), sys.argv[2]
async def pipe(r, w):
    try:
        while (b := await r.read(65536)):
            w.write(b); await w.drain()
    except Exception:
        pass
    finally:
        w.close()
async def handle(cr, cw):
    try:
        ur, uw = await asyncio.open_unix_connection(path)
    except OSError:
        cw.close(); return
    await asyncio.gather(pipe(cr, uw), pipe(ur, cw))
async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", port)
    async with srv: await srv.serve_forever()
asyncio.run(main())
PY
  fpid=$!
  sleep 0.5
  cleanup() { kill "$fpid" 2>/dev/null || true; kill "$dpid" 2>/dev/null || true; wait "$dpid" 2>/dev/null || true; }
  trap cleanup EXIT
  # A live session cell, so the {id} and {name} operations reach real state in pass 2.
  chown 65534:65534 "$work/ws"
  cell=$("$VENV/bin/python" - "$sock" "$work/ws" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
body = json.dumps({"cwd": sys.argv[2]}).encode()
s.sendall(b"POST /v1/providers/cat/session HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
          b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
data = b""
while (b := s.recv(65536)): data += b
print(json.loads(data.split(b"\r\n\r\n", 1)[1])["id"])
PY
) || { echo "could not start a session cell:"; tail -5 "$work/daemon.log"; cell=none; }
  echo "session cell for pass 2: $cell"
  printf '[parameters]\n"path.id" = "%s"\n"path.name" = "cat"\n' "$cell" >"$work/pass2.toml"
  : >"$work/pass1.toml"
  # POST /v1/shutdown is excluded: it stops the daemon (by design), ending the run.
  # Pass 1: every parameter generated. Pass 2: real cell id and provider name in the paths.
  rc=0
  for pass in 1 2; do
    (cd "$work" && "$VENV/bin/schemathesis" --config-file "$work/pass$pass.toml" run "http://127.0.0.1:$port/v1/openapi.json" \
      --url "http://127.0.0.1:$port" \
      -c not_a_server_error --exclude-path /v1/shutdown -n "${SCHEMA_EXAMPLES:-200}" --workers 2 \
      --request-timeout 30 --continue-on-failure --suppress-health-check all \
      --report junit,ndjson --report-dir "$work/report$pass" >"$work/schemathesis$pass.log" 2>&1) || rc=$?
    sed -n '/SUMMARY/,$p' "$work/schemathesis$pass.log"
  done
  echo "schemathesis: rc=$rc logs=$work/schemathesis{1,2}.log reports=$work/report{1,2} daemon log=$work/daemon.log"
  plain() { sed 's/\x1b\[[0-9;]*m//g' "$work/daemon.log"; }
  echo "requests answered (daemon log): $(plain | grep -c ' request method=' || true)"
  echo "by status: $(plain | grep -oE ' status=[0-9]+' | sort | uniq -c | tr '\n' ' ')"
  echo "5xx answers in daemon log: $(plain | grep -cE ' status=5[0-9][0-9]' || true)"
  plain | grep -E ' status=5[0-9][0-9]' | head -20 || true
  kill -0 "$dpid" 2>/dev/null && echo "daemon still running after the run" || echo "DAEMON DIED during the run"
fi
[ "${SKIP_FUZZ:-0}" = 1 ] || printf '%s\n' "${summary[@]}"
