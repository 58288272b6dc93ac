#!/usr/bin/env bash
# The README's test command (after `pip install '.[test]'`): every test of the project.
#   1. Rust: the workspace's unit, property and kernel-equivalence tests (x86 engines here)
#   2. Python: the pytest suite against torch 2.13 (torch.ao is the numerics reference)
#   3. aarch64: the kernels crate cross-compiled with rustc 1.85 and run under QEMU
#      (-cpu max: neon_dotprod path; -cpu cortex-a72: neon path)
# Fails if any stage fails. Set FERROQUANT_SKIP_AARCH64=1 to skip stage 3 (e.g. without root).
set -euo pipefail
cd "$(dirname "$0")/.."
stage() { echo; echo "=== $1"; STAGE_START=$(date +%s); }
done_stage() { echo "=== $1 took $(( $(date +%s) - STAGE_START )) s"; }

stage "cargo test (workspace)"
cargo test --locked --workspace --exclude ferroquant-py
done_stage "cargo test"

stage "pytest"
python -m pytest -q tests
done_stage "pytest"

if [ "${FERROQUANT_SKIP_AARCH64:-0}" != "1" ]; then
  stage "aarch64 kernels under QEMU"
  bash scripts/test-aarch64.sh
  done_stage "aarch64"
fi
