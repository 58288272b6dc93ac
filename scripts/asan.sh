#!/usr/bin/env bash
# The kernels crate's tests (unit, property and engine-equivalence tests) under AddressSanitizer,
# on stable Rust through RUSTC_BOOTSTRAP=1 (-Zsanitizer is nightly-only; used for this check
# only). Built in its own target dir (target/asan) so it never invalidates the normal build.
#
#   bash scripts/asan.sh            # every test of ferroquant-kernels, PROPTEST_CASES=1024
#   bash scripts/asan.sh --smoke    # fewer proptest cases and the slowest tests skipped (< 3 min)
#   bash scripts/asan.sh -- ARGS    # extra arguments for the test binaries (e.g. a test name)
#
# Tests run with opt-level 1 (ASan on opt-level 0 SIMD code is needlessly slow) and debug
# assertions + overflow checks on, as in the dev profile.
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

HOST=x86_64-unknown-linux-gnu
if [ "$(uname -m)" != x86_64 ]; then
  echo "asan.sh: x86_64 Linux only (the sanitizer target is $HOST)" >&2
  exit 2
fi

export RUSTC_BOOTSTRAP=1
# --target keeps build scripts and proc macros uninstrumented; doc tests get the same flags.
export RUSTFLAGS="-Zsanitizer=address -Cforce-frame-pointers"
export RUSTDOCFLAGS="$RUSTFLAGS"
export CARGO_PROFILE_DEV_OPT_LEVEL=1
export CARGO_PROFILE_DEV_DEBUG=1
unset CARGO_BUILD_TARGET
# allocator_may_return_null: a failed huge allocation returns NULL, so the kernels' try_vec
# reports OutOfMemory instead of ASan aborting (that is what the tests check); leaks are errors.
export ASAN_OPTIONS="${ASAN_OPTIONS:-allocator_may_return_null=1:detect_leaks=1:detect_stack_use_after_return=1}"

TEST_ARGS=()
if [ "$SMOKE" = 0 ]; then
  # more cases for the proptests that use the default config (kernels_vs_reference's
  # random_shapes_all_engines fixes its own count)
  export PROPTEST_CASES=${PROPTEST_CASES:-1024}
else
  export PROPTEST_CASES=${PROPTEST_CASES:-16}
  # the largest shapes (thousands of K, threads) are the slowest under ASan; the fuzz targets
  # cover threading and tile edges at small sizes
  TEST_ARGS+=(--skip larger_shapes_split_across_threads --skip worst_case_)
fi

echo "=== build (target/asan, ASan)"
t0=$(date +%s)
cargo test --locked -p ferroquant-kernels --target "$HOST" --target-dir target/asan --no-run
echo "=== build took $(( $(date +%s) - t0 )) s"
t0=$(date +%s)
if [ "$SMOKE" = 1 ]; then
  echo "=== cargo test -p ferroquant-kernels under ASan (smoke: PROPTEST_CASES=$PROPTEST_CASES, slow tests skipped)"
else
  echo "=== cargo test -p ferroquant-kernels under ASan"
fi
cargo test --locked -p ferroquant-kernels --target "$HOST" --target-dir target/asan -- \
  ${TEST_ARGS[@]+"${TEST_ARGS[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
echo "=== tests took $(( $(date +%s) - t0 )) s"
