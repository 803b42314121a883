#!/usr/bin/env bash
# Benchmarks side by side (root). Every figure is reported as a ratio against a baseline run in
# the same invocation, because this machine's absolute timings drift from run to run.
#   1. spawn: a fully sandboxed /bin/true via `cellkeep run` and via the daemon socket, against
#      bare fork/exec, `unshare -mpfiun` and `bwrap --unshare-all --ro-bind / /` (hyperfine -N)
#   2. session round trip: one short line to a `cat` session, 10 000 times
#   3. one-shot throughput: `echo` commands from 20 concurrent clients
#   4. streaming: a cell writing 1 GiB to stdout read through the socket (NDJSON, and raw
#      bytes with the bytes lost), against a plain pipe
#   5. footprint: daemon RSS with 0, 20 and 1000 idle cells; daemon CPU over 60 s with 20 idle
#   6. scaling: spawn latency with 1000 live cells against 10
#   7. egress proxy: a 100 MiB HTTP download by curl in a cell, through the cell's egress proxy
#      (CONNECT tunnel), against the same curl download direct on the host's loopback
#   8. spawn cost against an earlier build: `cellkeep run /bin/true` of this build against the
#      same of BENCH_BEFORE (a git revision; default b89634d, main before the isolation issue
#      13 added the mount view and the per-cell identity), each with its own shipped base
#      policy (alternating runs, timed around each process). The old build is made once and cached in
#      target/bench-before/<rev>. BENCH_BEFORE=none skips the row.
# Prints one markdown table and writes it to target/bench.md (raw JSON: target/bench/).
# Benchmarks are not tests: nothing fails on a timing.
#   env: BENCH_QUICK=1 for a short smoke run (small counts; figures not meaningful)
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
[[ $(id -u) == 0 ]] || { echo "bench.sh must run as root" >&2; exit 1; }

need=()
command -v hyperfine >/dev/null || need+=(hyperfine)
command -v bwrap >/dev/null || need+=(bubblewrap)
if ((${#need[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

quick=${BENCH_QUICK:-0}
n_spawn=300; n_rtt=10000; tput_secs=10; idle_secs=60; big=1000; stream_bytes=1073741824
egress_bytes=104857600; n_egress=7
if [[ $quick == 1 ]]; then n_spawn=20; n_rtt=500; tput_secs=2; idle_secs=3; big=50; stream_bytes=67108864; egress_bytes=16777216; n_egress=3; fi

cargo build --release --locked -q --bins
before_rev=${BENCH_BEFORE:-b89634d}
if [[ $before_rev != none ]]; then
  before=$PWD/target/bench-before/$before_rev
  if [[ ! -x $before/target/release/cellkeep ]]; then
    echo "== building $before_rev for row 8 (once; cached in $before)"
    rm -rf "$before" && mkdir -p "$before/src"
    git archive "$before_rev" | tar -x -C "$before/src"
    (cd "$before/src" && CARGO_TARGET_DIR=$before/target cargo build --release --locked -q --bin cellkeep)
  fi
fi
bin=$PWD/target/release/cellkeep
bench=$PWD/target/release/cellkeep-bench
out=$PWD/target/bench
rm -rf "$out" && mkdir -p "$out"

work=$(mktemp -d /tmp/cellkeep-bench.XXXXXX)
chmod 755 "$work"
ws=$work/ws && mkdir "$ws" && chown nobody: "$ws"
pol=$work/policies && mkdir "$pol"
cp policies/base.toml "$pol/"
provider() { # name command mode [extra toml]
  printf 'extends = "base"\n[provider]\nname = "%s"\ncommand = %s\nmode = "%s"\n%s\n' "$1" "$2" "$3" "${4:-}" > "$pol/$1.toml"
}
provider true '["/bin/true"]' oneshot
provider echo '["/bin/echo"]' oneshot
provider cat '["/bin/cat"]' session '[session]
framing = "line"'
line='0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde'
# The whole stream is retained (on disk, in the spool dir): a follower that keeps reading
# loses nothing however far behind the cell it falls. Needs that much free disk.
provider stream "[\"/bin/sh\", \"-c\", \"yes $line | head -c $stream_bytes\"]" oneshot "[limits]
output_bytes = \"$((stream_bytes / 1048576 + 1))M\""
# 7: a file server on the host's loopback (sendfile, so the server is not the bottleneck) and a
# proxy cell allowed to reach it as bench.test (mapped to 127.0.0.1 by the daemon's egress_hosts).
head -c "$egress_bytes" /dev/zero > "$work/blob"
python3 -c '
import socket, os, sys, threading
path = sys.argv[1]; size = os.path.getsize(path)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(64); print(s.getsockname()[1], flush=True)
def serve(c):
    c.recv(65536)
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size)
    with open(path, "rb") as f: c.sendfile(f)
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
' "$work/blob" > "$work/blob.port" &
blob_server=$!
for _ in $(seq 100); do [[ -s $work/blob.port ]] && break; sleep 0.05; done
bport=$(cat "$work/blob.port")
provider egress '["/usr/bin/curl", "-sS", "-o", "/dev/null", "-p", "-w", "%{time_total}"]' oneshot "[network]
mode = \"proxy\"
egress = [\"bench.test:$bport\"]"
echo 'egress_hosts = { "bench.test" = "127.0.0.1" }' > "$work/cellkeep.toml"
"$bin" policy check "$pol" >/dev/null

sock=$work/cellkeep.sock
CELLKEEP_LOG=warn "$bin" daemon --config "$work/cellkeep.toml" --socket "$sock" --policies "$pol" --max-cells $((big + 100)) \
  --cgroup-root cellkeep-bench 2> "$work/daemon.log" &
daemon=$!
cleanup() {
  kill -TERM "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true
  kill "$blob_server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 200); do [[ -S $sock ]] && break; sleep 0.05; done
[[ -S $sock ]] || { cat "$work/daemon.log" >&2; exit 1; }
cb() { "$bench" --socket "$sock" --cwd "$ws" "$@"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$daemon/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$daemon/stat"; }

echo "== 1. spawn (hyperfine, $n_spawn runs each)"
hyperfine -N -w 10 -r "$n_spawn" --export-json "$out/spawn.json" \
  -n bare '/bin/true' \
  -n unshare 'unshare -mpfiun /bin/true' \
  -n bwrap 'bwrap --unshare-all --ro-bind / / /bin/true' \
  -n 'cellkeep run' "env CELLKEEP_CGROUP_ROOT=cellkeep-bench-run $bin run --policy $pol/true.toml --cwd $ws" \
  >/dev/null
cb oneshot true --n "$n_spawn" > "$out/socket-spawn.json"

if [[ $before_rev != none ]]; then
  echo "== 8. spawn cost: this build against $before_rev ($n_spawn alternating runs each)"
  polb=$work/policies-before && mkdir "$polb"
  cp "$before/src/policies/base.toml" "$polb/" && cp "$pol/true.toml" "$polb/"
  # Alternating runs (before, after, before, ...), so drift in the machine's load hits both.
  python3 - "$n_spawn" "$out/spawn-before.json" \
    "$before/target/release/cellkeep run --policy $polb/true.toml --cwd $ws" \
    "$bin run --policy $pol/true.toml --cwd $ws" <<'PY'
import json, os, shlex, subprocess, sys, time
n, out, cmds = int(sys.argv[1]), sys.argv[2], {"before": sys.argv[3], "after": sys.argv[4]}
env = dict(os.environ, CELLKEEP_CGROUP_ROOT="cellkeep-bench-before")
times = {k: [] for k in cmds}
for i in range(n + 10):
    for name, cmd in cmds.items():
        t = time.perf_counter()
        subprocess.run(shlex.split(cmd), env=env, check=True, stdout=subprocess.DEVNULL)
        if i >= 10:  # warm-up
            times[name].append(time.perf_counter() - t)
json.dump({"results": [{"command": k, "times": v} for k, v in times.items()]}, open(out, "w"))
PY
  echo "$before_rev" > "$out/spawn-before.rev"
fi

echo "== 2. session round trip ($n_rtt)"
cb rtt cat --n "$n_rtt" > "$out/rtt.json"

echo "== 3. one-shot throughput (20 clients, ${tput_secs}s)"
cb throughput echo --clients 20 --seconds "$tput_secs" > "$out/throughput.json"

echo "== 4. streaming ($stream_bytes bytes)"
cb stream stream > "$out/stream.json"
cb follow stream --expect "$stream_bytes" > "$out/follow.json"
cb pipe "yes $line | head -c $stream_bytes" > "$out/pipe.json"

echo "== 7. egress proxy ($egress_bytes bytes, $n_egress runs each, alternating)"
direct=(); proxied=()
for _ in $(seq "$n_egress"); do
  direct+=("$(curl -sS -o /dev/null -w '%{time_total}' "http://127.0.0.1:$bport/")")
  proxied+=("$(curl -sS --unix-socket "$sock" http://cellkeep/v1/providers/egress/commands \
    -d "{\"command\": \"http://bench.test:$bport/\", \"cwd\": \"$ws\", \"timeout_ms\": 120000}" |
    python3 -c 'import json, sys; r = json.load(sys.stdin); print(r["stdout"].strip() or "nan", end="")')")
done
echo "{\"bytes\": $egress_bytes, \"direct_s\": [$(IFS=,; echo "${direct[*]}")], \"proxy_s\": [$(IFS=,; echo "${proxied[*]}")]}" > "$out/egress.json"

echo "== 5/6. footprint and scaling"
rss0=$(rss_kib)
cb fill cat --count 10 > /dev/null
cb spawn cat --n 100 > "$out/spawn-10.json"
cb fill cat --count 10 > /dev/null
sleep 1
rss20=$(rss_kib)
t0=$(cpu_ticks); sleep "$idle_secs"; t1=$(cpu_ticks)
cb fill cat --count $((big - 20)) > "$out/fill.json"
sleep 1
rssbig=$(rss_kib)
cb spawn cat --n 100 > "$out/spawn-big.json"
t_shut=$(date +%s%N)
kill -TERM "$daemon"; wait "$daemon" || true
t_shut=$(( ($(date +%s%N) - t_shut) / 1000000 ))
echo "{\"rss0_kib\": $rss0, \"rss20_kib\": $rss20, \"rssbig_kib\": $rssbig, \"big\": $big, \"idle_cpu_ticks\": $((t1 - t0)), \"idle_secs\": $idle_secs, \"clk_tck\": $(getconf CLK_TCK), \"shutdown_ms\": $t_shut}" > "$out/footprint.json"

python3 scripts/bench_table.py "$out" | tee target/bench.md
