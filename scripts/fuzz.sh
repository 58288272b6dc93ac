#!/usr/bin/env bash
# Fuzzes ferroquant-kernels with libFuzzer + AddressSanitizer (the crate rust/fuzz, its own
# workspace). Builds without cargo-fuzz, with the flags cargo-fuzz uses, on stable Rust through
# RUSTC_BOOTSTRAP=1 (sanitizers and -Cpasses=sancov-module are nightly-only flags; nothing else
# in the project uses RUSTC_BOOTSTRAP).
#
#   bash scripts/fuzz.sh                 # long run: 200,000 executions per target (1.2 M in total)
#   bash scripts/fuzz.sh --smoke         # ~8,000 executions per target (a couple of minutes)
#   bash scripts/fuzz.sh --runs N        # N executions per target
#   bash scripts/fuzz.sh --targets "gemm conv" [--max-time S] [--build-only]
#
# Corpora persist in rust/fuzz/corpus/<target>/ and grow run after run; crash inputs are kept
# in rust/fuzz/artifacts/<target>/ (crash-*, oom-*, timeout-*), logs in rust/fuzz/target/logs/.
# Exits non-zero if any target crashed (every target still runs). Replay an artifact with
#   rust/fuzz/target/x86_64-unknown-linux-gnu/release/<target> <artifact>
# or without sanitizers (stable, no RUSTC_BOOTSTRAP):
#   FUZZ_REPLAY_DIR=rust/fuzz/artifacts cargo test --release --manifest-path rust/fuzz/Cargo.toml
# See rust/fuzz/README.md for what each target checks.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
FUZZ=$ROOT/rust/fuzz

RUNS=200000
MAX_TIME=0
TARGETS="pack gemm conv requantize quantize elementwise recurrent"
BUILD_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) RUNS=8000 ;;
    --runs) RUNS=$2; shift ;;
    --max-time) MAX_TIME=$2; shift ;;
    --targets) TARGETS=$2; shift ;;
    --build-only) BUILD_ONLY=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

HOST=x86_64-unknown-linux-gnu
if [ "$(uname -m)" != x86_64 ]; then
  echo "fuzz.sh: x86_64 Linux only (the sanitizer target is $HOST)" >&2
  exit 2
fi
for tool in cc c++; do
  command -v "$tool" >/dev/null || { echo "fuzz.sh: needs a C/C++ compiler ($tool) for libFuzzer" >&2; exit 2; }
done

# What cargo-fuzz passes (cargo fuzz build -O with debug assertions): SanitizerCoverage with
# inline 8-bit counters, PC table and comparison tracing, AddressSanitizer, `--cfg fuzzing`.
# Debug assertions and overflow checks come from rust/fuzz's [profile.release].
export RUSTC_BOOTSTRAP=1
export RUSTFLAGS="-Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
--cfg fuzzing -Zsanitizer=address -Cforce-frame-pointers"
unset RUSTDOCFLAGS CARGO_BUILD_TARGET

echo "=== build (rust/fuzz, release + debug assertions + overflow checks, ASan, sancov)"
t0=$(date +%s)
cargo build --manifest-path "$FUZZ/Cargo.toml" --release --target "$HOST" --bins
echo "=== build took $(( $(date +%s) - t0 )) s"
[ "$BUILD_ONLY" = 1 ] && exit 0
unset RUSTFLAGS RUSTC_BOOTSTRAP

BIN=$FUZZ/target/$HOST/release
mkdir -p "$FUZZ/target/logs"
# allocator_may_return_null: a failed allocation returns NULL (the kernels report
# OutOfMemory) instead of ASan aborting; a real leak or overflow is still an error.
export ASAN_OPTIONS="${ASAN_OPTIONS:-allocator_may_return_null=1:detect_leaks=1:abort_on_error=0}"

status=0
summary=""
total_runs=0
for t in $TARGETS; do
  corpus=$FUZZ/corpus/$t
  artifacts=$FUZZ/artifacts/$t
  log=$FUZZ/target/logs/$t.log
  mkdir -p "$corpus" "$artifacts"
  args=(-runs="$RUNS" -artifact_prefix="$artifacts/" -print_final_stats=1 -timeout=60
        -rss_limit_mb=4096 -max_len=4096)
  [ "$MAX_TIME" != 0 ] && args+=(-max_total_time="$MAX_TIME")
  echo "=== $t: ${RUNS} runs (corpus $(find "$corpus" -type f | wc -l) inputs)"
  start=$(date +%s.%N)
  set +e
  "$BIN/$t" "${args[@]}" "$corpus" >"$log" 2>&1
  rc=$?
  set -e
  secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  seed=$(grep -o 'Seed: [0-9]*' "$log" | head -1 | grep -o '[0-9]*$')
  execs=${execs:-?}
  if [ "$rc" = 0 ]; then
    result=ok
  else
    result="CRASH (exit $rc)"
    status=1
    echo "--- $t failed (full log: $log):"
    grep -A3 -E 'panicked at|ERROR: AddressSanitizer|ERROR: libFuzzer' "$log" | head -12
    grep -E '^SUMMARY|Test unit written' "$log" | head -4
    ls -1 "$artifacts" | sed 's/^/    artifact: /'
  fi
  [ "$execs" != "?" ] && total_runs=$((total_runs + execs))
  rate=$(awk -v e="$execs" -v s="$secs" 'BEGIN { if (e == "?" || s <= 0) print "?"; else printf "%.0f", e / s }')
  line=$(printf '%-11s %10s execs %8s s %7s exec/s  seed %-11s %s' "$t" "$execs" "$secs" "$rate" \
    "${seed:-?}" "$result")
  echo "$line"
  summary+="$line"$'\n'
done
echo
echo "=== fuzz summary ($(grep -ho 'ferroquant-fuzz: engines .*' "$FUZZ/target/logs/"*.log 2>/dev/null | head -1 | cut -d' ' -f2- || true))"
printf '%s' "$summary"
echo "total: $total_runs executions"
exit $status
