#!/usr/bin/env bash
# Thread scaling and engine coverage on a bigger x86 machine (run by hand; not part of CI).
# Usage: scripts/many-core-check.sh DIR   where DIR holds release builds made elsewhere:
#   scaling (cargo build --release --example scaling), kernels_vs_reference and unit_tests
#   (the kernels crate's release test binaries), peak (the peak bench), and a ferroquant wheel.
# Prints the CPU, runs the kernel tests on every engine that CPU has, the peak table, the GEMM
# thread-scaling table, and bench_ops / bench_models against torch at 1 and all threads.
set -uo pipefail
D=${1:?directory with the binaries}
cd "$(dirname "$0")/.."
echo "== CPU"; lscpu | grep -E "Model name|^CPU\(s\)|Thread|Core|Socket|L2|L3"
lscpu | grep -o -w -E "avx512_vnni|avx_vnni|amx_int8|avx512f" | sort -u | tr '\n' ' '; echo
N=$(nproc)
echo "== kernel tests (every engine this CPU has)"
"$D/unit_tests" -q 2>&1 | tail -2
"$D/kernels_vs_reference" --nocapture engines_order 2>&1 | grep engines
"$D/kernels_vs_reference" -q 2>&1 | tail -2
echo "== peak"; "$D/peak"
echo "== GEMM thread scaling"; "$D/scaling" "$N"
echo "== Python"
python3 -m pip install -q --no-deps --no-index --target /tmp/fqsite "$D"/ferroquant-*.whl && export PYTHONPATH=/tmp/fqsite
python3 -c "import ferroquant as fq, torch; print('ferroquant', fq.__version__, fq.backends.supported_engines, 'torch', torch.__version__)"
for t in 1 "$N"; do
  python3 benches/bench_ops.py --quick --threads "$t"
  python3 benches/bench_models.py --threads "$t"
done
echo "== mixed model on ferroquant's own pool instead of torch's OpenMP team (for comparison)"
FERROQUANT_THREADS=own python3 benches/bench_models.py --threads "$N"
