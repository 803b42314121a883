#!/usr/bin/env bash
# The long hostile battery (issue 7): the CI suite's escape, abuse, fault and load tests at
# full size, repeated, with the figures the closing note asks for collected in one table.
# Not part of .ci/run (~3 min per round on 2 cores); needs root.
#
#   SOAK_ROUNDS=3          how many times to run the whole battery
#   SOAK_COMMANDS=1000     commands per session in the load test (20 sessions; CI runs 200)
#   SOAK_FLOOD_BYTES=10737418240   the output flood in the abuse test (CI runs 2 GiB)
#   SOAK_FOLLOW_BYTES=1073741824   the stream a half-speed follower must get whole
#                                  (tests/daemon.rs a_slow_follower_loses_nothing; CI: 256 MiB)
#
# Each round runs tests/{escape,abuse,faults,load}.rs with --nocapture, keeps their output in
# target/soak/round-N.log, and after the round checks that nothing is left: no cgroup under
# any ck-test-* root, no process running from a test daemon's temp dirs. The summary (worst
# health latency under abuse, exit reasons, load totals and errors, connections served and
# refused, attempts contained) goes to stdout and target/soak/summary.md. Exit 1 on any
# failure or leak.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
[ "$(id -u)" = 0 ] || { echo "soak.sh: needs root (privileged tests)" >&2; exit 1; }
ROUNDS=${SOAK_ROUNDS:-3}
export LOAD_COMMANDS=${SOAK_COMMANDS:-1000}
export ABUSE_FLOOD_BYTES=${SOAK_FLOOD_BYTES:-10737418240}
export CELLKEEP_FOLLOW_BYTES=${SOAK_FOLLOW_BYTES:-1073741824}
export CI=1 # a test that cannot run fails, never skips
OUT=target/soak
mkdir -p "$OUT"
rm -f "$OUT"/round-*.log
cargo test --locked --no-run --test escape --test abuse --test faults --test load --test daemon 2>&1 | tail -1

leaks() {
  # Cgroup directories left under test roots, and processes still in them.
  local dirs procs
  dirs=$(find /sys/fs/cgroup -mindepth 1 -maxdepth 3 -type d -name 'ck-test-*' 2>/dev/null | wc -l)
  procs=$(find /sys/fs/cgroup -mindepth 3 -path '*ck-test-*' -name cgroup.procs -exec cat {} + 2>/dev/null | wc -l)
  echo "$dirs $procs"
}

read -r dirs0 procs0 < <(leaks)
failed=0
for round in $(seq "$ROUNDS"); do
  log=$OUT/round-$round.log
  : >"$log"
  for t in escape abuse faults load; do
    printf '== round %s: %s\n' "$round" "$t"
    if ! cargo test --locked -q --test "$t" -- --test-threads=1 --nocapture >>"$log" 2>&1; then
      echo "FAILED: $t (round $round; see $log)"
      failed=1
    fi
    r=$(grep -E '^test result' "$log" | tail -1)
    echo "$r"
    echo "RESULT $t $r" >>"$log"
  done
  printf '== round %s: follow\n' "$round"
  if ! cargo test --locked -q --test daemon -- a_slow_follower_loses_nothing --nocapture >>"$log" 2>&1; then
    echo "FAILED: a_slow_follower_loses_nothing (round $round; see $log)"
    failed=1
  fi
  read -r dirs procs < <(leaks)
  if [ "$dirs" -gt "$dirs0" ] || [ "$procs" -gt "$procs0" ]; then
    echo "LEAK after round $round: $((dirs - dirs0)) test cgroups, $((procs - procs0)) processes in them"
    failed=1
  fi
done

# --- summary ------------------------------------------------------------------------------
{
  echo "# soak: $ROUNDS round(s), LOAD_COMMANDS=$LOAD_COMMANDS, ABUSE_FLOOD_BYTES=$ABUSE_FLOOD_BYTES"
  echo
  cat "$OUT"/round-*.log | awk -v rounds="$ROUNDS" '
    /^RESULT / { for (i = 3; i < NF; i++) { if ($(i+1) ~ /^passed/) { p += $i; if ($2 == "escape") esc += $i }
                                            if ($(i+1) ~ /^failed/) f += $i } }
    /^\.*ABUSE-HEALTH/ { for (i = 2; i <= NF; i++) if ($i ~ /^worst=/) { v = substr($i, 7) + 0; if (v > worst) { worst = v; wcase = $2 } } }
    END { printf "- tests: %d passed, %d failed\n- escape attempts contained: %d per round x %d rounds\n- worst health latency under abuse: %.1f ms (%s)\n", p, f, esc / rounds, rounds, worst, wcase }'
  echo
  echo '```'
  # (`cargo test -q` prints a dot per test in front of the next line.)
  sed 's/^\.*//' "$OUT"/round-*.log | grep -E '^(ABUSE-[A-Z]+|load:|conns:|slowloris:|kill9:|mid-request|mid-stream)' || true
  echo '```'
} | tee "$OUT/summary.md"
exit $failed
