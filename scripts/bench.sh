#!/usr/bin/env bash
# Benchmarks side by side (root). Every figure is reported as a ratio against a baseline run in
# the same invocation, because this machine's absolute timings drift from run to run.
#   1. spawn: a fully sandboxed /bin/true via `cellkeep run` and via the daemon socket (a cell
#      built per request, and a pre-built one: `[pool] prewarm`), against bare fork/exec,
#      `unshare -mpfiun` and `bwrap --unshare-all --ro-bind / /` (hyperfine -N)
#   2. session round trip: one short line to a `cat` session, 10 000 times
#   3. one-shot throughput: `echo` commands from 20 concurrent clients
#   4. streaming: a cell writing 1 GiB to stdout read through the socket (NDJSON, and raw
#      bytes with the bytes lost), against a plain pipe
#   5. footprint: daemon RSS with 0, 20 and 1000 idle cells; daemon CPU over 60 s with 20 idle
#   6. scaling: spawn latency with 1000 live cells against 10
#   7. egress proxy: a 100 MiB HTTP download by curl in a proxy cell, through the cell's egress
#      proxy (CONNECT tunnel) from a server on the host's loopback, against the same curl in the
#      same cell downloading the same file directly from a server on the cell's own loopback
#      (started in the cell's network namespace with nsenter): alternating, in one cell, so the
#      two differ only by the proxy (cgroup limits, seccomp, Landlock and the namespace's TCP
#      settings apply to both). The same download by curl on the host is recorded for context,
#      and the pair is run again at 100 MB/s (curl --limit-rate on both: a fast network link).
#   8. spawn cost against an earlier build: `cellkeep run /bin/true` of this build against the
#      same of BENCH_BEFORE (a git revision; default b89634d, main before the isolation issue
#      13 added the mount view and the per-cell identity), each with its own shipped base
#      policy (alternating runs, timed around each process). The old build is made once and cached in
#      target/bench-before/<rev>. BENCH_BEFORE=none skips the row.
# Prints one markdown table and writes it to target/bench.md (raw JSON: target/bench/).
# Benchmarks are not tests: nothing fails on a timing.
#   env: BENCH_QUICK=1 for a short smoke run (small counts; figures not meaningful)
#        BENCH_ONLY=7 runs row 7 alone (prints its line of the table; for iterating on the proxy)
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
[[ $(id -u) == 0 ]] || { echo "bench.sh must run as root" >&2; exit 1; }

need=()
[[ -n ${BENCH_ONLY:-} ]] || command -v hyperfine >/dev/null || need+=(hyperfine)
[[ -n ${BENCH_ONLY:-} ]] || command -v bwrap >/dev/null || need+=(bubblewrap)
if ((${#need[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The shipped base policy grants the "cellkeep" group (scripts/install.sh creates it; a policy
# naming a missing group is invalid).
getent group cellkeep >/dev/null || groupadd --system cellkeep

quick=${BENCH_QUICK:-0}
only=${BENCH_ONLY:-}
[[ -z $only || $only == 7 ]] || { echo "BENCH_ONLY: only 7 is supported" >&2; exit 1; }
n_spawn=300; n_rtt=10000; tput_secs=10; idle_secs=60; big=1000; stream_bytes=1073741824
egress_bytes=104857600; n_egress=41; n_egress_rate=7
if [[ $quick == 1 ]]; then n_spawn=20; n_rtt=500; tput_secs=2; idle_secs=3; big=50; stream_bytes=67108864; egress_bytes=16777216; n_egress=3; n_egress_rate=1; fi

cargo build --release --locked -q --bins
before_rev=${BENCH_BEFORE:-b89634d}
[[ -z $only ]] || before_rev=none
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
provider truewarm '["/bin/true"]' oneshot '[pool]
prewarm = 2'
provider echo '["/bin/echo"]' oneshot
provider cat '["/bin/cat"]' session '[session]
framing = "line"'
line='0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde'
# The whole stream is retained (on disk, in the spool dir): a follower that keeps reading
# loses nothing however far behind the cell it falls. Needs that much free disk.
provider stream "[\"/bin/sh\", \"-c\", \"yes $line | head -c $stream_bytes\"]" oneshot "[limits]
output_bytes = \"$((stream_bytes / 1048576 + 1))M\""
# 7: a file server (sendfile, so the server is not the bottleneck) on the host's loopback, reached
# through the proxy as bench.test (mapped to 127.0.0.1 by the daemon's egress_hosts), and the same
# server started again in the cell's network namespace for the direct downloads. The cell waits
# for that server's port in its cwd, then alternates direct and proxied downloads (curl's own
# time_total: the cell's start is not in it; CONNECT, the proxy's lookup and connect are).
head -c "$egress_bytes" /dev/zero > "$work/blob"
blob_py='
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
'
python3 -c "$blob_py" "$work/blob" > "$work/blob.port" &
blob_server=$!
cell_server=
for _ in $(seq 100); do [[ -s $work/blob.port ]] && break; sleep 0.05; done
bport=$(cat "$work/blob.port")
# Then the same at 100 MB/s (curl --limit-rate: a fast network link instead of loopback).
egress_sh='while [ ! -s egress.port ]; do sleep 0.05; done; p=$(cat egress.port)
get() { r=$1; shift; [ "$r" = 0 ] || set -- --limit-rate "$r" "$@"; /usr/bin/curl -sS -o /dev/null "$@"; }
i=0; while [ $i -lt $0 ]; do i=$((i + 1))
  get 0 --noproxy "*" -w "direct %{time_total}\n" http://127.0.0.1:$p/
  get 0 -p -x http://127.0.0.1:3128 -w "proxy %{time_total}\n" http://bench.test:'"$bport"'/
done
i=0; while [ $i -lt '"$n_egress_rate"' ]; do i=$((i + 1))
  get 100M --noproxy "*" -w "direct_rate %{time_total}\n" http://127.0.0.1:$p/
  get 100M -p -x http://127.0.0.1:3128 -w "proxy_rate %{time_total}\n" http://bench.test:'"$bport"'/
done'
provider egress "[\"/bin/sh\", \"-c\", $(python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$egress_sh")]" oneshot "[network]
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
  kill "$blob_server" $cell_server 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 200); do [[ -S $sock ]] && break; sleep 0.05; done
[[ -S $sock ]] || { cat "$work/daemon.log" >&2; exit 1; }
cb() { "$bench" --socket "$sock" --cwd "$ws" "$@"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$daemon/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$daemon/stat"; }

if [[ -z $only ]]; then
echo "== 1. spawn (hyperfine, $n_spawn runs each)"
hyperfine -N -w 10 -r "$n_spawn" --export-json "$out/spawn.json" \
  -n bare '/bin/true' \
  -n unshare 'unshare -mpfiun /bin/true' \
  -n bwrap 'bwrap --unshare-all --ro-bind / / /bin/true' \
  -n 'cellkeep run' "env CELLKEEP_CGROUP_ROOT=cellkeep-bench-run $bin run --policy $pol/true.toml --cwd $ws" \
  >/dev/null
cb oneshot true --n "$n_spawn" > "$out/socket-spawn.json"
# The same with pre-built cells ([pool] prewarm = 2), 30 ms apart (outside the timing) so the
# refill keeps up: what a request costs when a cell is waiting for it.
cb oneshot truewarm --n "$n_spawn" --gap-ms 30 > "$out/warm-spawn.json"

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
fi

echo "== 7. egress proxy ($egress_bytes bytes, $n_egress runs each, alternating, in one cell)"
host=()
for _ in $(seq "$n_egress"); do host+=("$(curl -sS -o /dev/null -w '%{time_total}' "http://127.0.0.1:$bport/")"); done
curl -sS --unix-socket "$sock" http://cellkeep/v1/providers/egress/commands \
  -d "{\"command\": \"$n_egress\", \"cwd\": \"$ws\", \"timeout_ms\": 300000}" > "$work/egress.out" &
egress_req=$!
cell_pid=
for _ in $(seq 200); do
  cell_pid=$(pgrep -n -f '^/bin/sh -c while \[ ! -s egress.port \]' || true)
  [[ -n $cell_pid ]] && break; sleep 0.05
done
[[ -n $cell_pid ]] || { echo "row 7: the cell did not start" >&2; exit 1; }
nsenter -t "$cell_pid" -n python3 -c "$blob_py" "$work/blob" > "$work/cell-blob.port" &
cell_server=$!
for _ in $(seq 100); do [[ -s $work/cell-blob.port ]] && break; sleep 0.05; done
cp "$work/cell-blob.port" "$ws/egress.port"
wait "$egress_req"
kill "$cell_server" 2>/dev/null || true
python3 - "$work/egress.out" "$egress_bytes" "$(uptime)" "${host[*]}" > "$out/egress.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
runs = [line.split() for line in r["stdout"].splitlines()]
series = lambda k: [float(t) for name, t in runs if name == k]
print(json.dumps({"bytes": int(sys.argv[2]), "direct_s": series("direct"), "proxy_s": series("proxy"),
                  "direct_rate_s": series("direct_rate"), "proxy_rate_s": series("proxy_rate"),
                  "host_direct_s": [float(t) for t in sys.argv[4].split()], "uptime": sys.argv[3].strip()}))
PY

if [[ -n $only ]]; then
  python3 scripts/bench_table.py --only egress "$out"
  exit 0
fi

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
