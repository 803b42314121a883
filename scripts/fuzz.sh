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
#   SCHEMA_EXAMPLES=200 scripts/schemathesis.sh --max-examples per operation; SKIP_SCHEMATHESIS=1 to skip
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
# The suite's own run (scripts/schemathesis.sh), with more examples per operation.
if [ "${SKIP_SCHEMATHESIS:-0}" != 1 ]; then
  SCHEMA_EXAMPLES=${SCHEMA_EXAMPLES:-200} scripts/schemathesis.sh || log "schemathesis: FAILED"
fi
[ "${SKIP_FUZZ:-0}" = 1 ] || printf '%s\n' "${summary[@]}"
