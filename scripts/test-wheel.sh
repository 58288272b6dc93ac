#!/usr/bin/env bash
# Installs a built x86_64 wheel into a fresh venv and runs it as a user would, from outside the
# source tree and with no Rust toolchain on PATH: the demo and scripts/wheel-smoke.py (engines,
# same bits on each, static + dynamic workflows, state_dict, TorchScript). Then loads the
# extension under every other CPython >= 3.9 found (pyenv or PATH) to check the abi3 tag's promise.
#
#   scripts/test-wheel.sh [WHEEL]     (no WHEEL: builds one with scripts/build-wheels.sh first)
#
# The venv is made with --system-site-packages so it reuses the installed torch (3 GB) and numpy;
# the wheel goes in with `pip install --no-deps`, and the smoke test asserts that ferroquant is
# imported from the venv, not from the source tree or an editable install. Run by .ci/run.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/ferroquant-wheel-test.XXXXXX)
trap 'rm -rf "$work"' EXIT

wheel=${1:-}
if [ -z "$wheel" ]; then
  bash "$top/scripts/build-wheels.sh" --out "$work/dist" x86_64
  wheel=$(ls "$work"/dist/ferroquant-*-cp39-abi3-manylinux_*_x86_64.whl)
fi
wheel=$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel")
echo "== testing $wheel"

python -m venv --system-site-packages "$work/venv"
"$work/venv/bin/python" -m pip install --no-deps --no-index --ignore-installed --quiet "$wheel"
cp "$top/scripts/wheel-smoke.py" "$work/"
mkdir -p "$work/run"

# a user's shell: the venv's python first, system directories, no cargo/rustc/rustup
user_env=(env -u CARGO_HOME -u RUSTUP_HOME -u RUSTC -u CARGO -u PYTHONPATH
          PATH="$work/venv/bin:/usr/local/bin:/usr/bin:/bin")
for tool in cargo rustc rustup maturin; do
  if (cd "$work/run" && "${user_env[@]}" sh -c "command -v $tool" >/dev/null); then
    echo "$tool is on the test PATH; the wheel test needs a machine view without a Rust toolchain" >&2
    exit 1
  fi
done
(cd "$work/run" && "${user_env[@]}" python -m ferroquant demo)
(cd "$work/run" && "${user_env[@]}" python "$work/wheel-smoke.py" "$work/venv")

# abi3: the same extension loads under each other CPython >= 3.9 (no torch needed for this)
so_dir=$(cd "$work/run" && "${user_env[@]}" python -c 'import ferroquant, os; print(os.path.dirname(ferroquant.__file__))')
found=0
for minor in 9 10 11 12 13 14; do
  py=""
  for cand in "$(pyenv root 2>/dev/null)"/versions/3.$minor*/bin/python3.$minor /usr/bin/python3.$minor; do
    if [ -x "$cand" ]; then py=$cand; break; fi
  done
  [ -n "$py" ] || continue
  found=$((found + 1))
  (cd "$work/run" && env -u PYTHONPATH "$py" -I -c '
import importlib.machinery, importlib.util, sys, types
pkg = types.ModuleType("ferroquant"); pkg.__path__ = [sys.argv[1]]; sys.modules["ferroquant"] = pkg
loader = importlib.machinery.ExtensionFileLoader("ferroquant._core", sys.argv[1] + "/_core.abi3.so")
spec = importlib.util.spec_from_loader("ferroquant._core", loader)
core = importlib.util.module_from_spec(spec); loader.exec_module(core)
print(f"abi3: Python {sys.version.split()[0]} loads _core {core.__version__}, engines {core.available_engines()}")
' "$so_dir")
done
echo "abi3 load checked under $found CPython version(s)"
if [ "$found" -lt 2 ]; then
  echo "fewer than two CPython versions >= 3.9 found (pyenv or /usr/bin): the abi3 check needs two" >&2
  exit 1
fi

# baseline CPUs: the extension is compiled for plain x86-64 (its AVX2/VNNI kernels only behind
# run-time checks). Under QEMU user mode, `-cpu qemu64` (SSE2 only) loads it and picks "scalar";
# `-cpu SandyBridge` (AVX, no AVX2/FMA; numpy needs that much) runs scripts/wheel-kernels.py on
# the scalar engine, whose digest must equal this machine's on every engine.
base_py=$(python -c 'import sys; print(sys._base_executable)')
if command -v qemu-x86_64-static >/dev/null; then
  native=$(cd "$work/run" && python "$top/scripts/wheel-kernels.py" "$so_dir")
  (cd "$work/run" && qemu-x86_64-static -cpu qemu64 "$base_py" -I -c '
import importlib.machinery, importlib.util, sys, types
pkg = types.ModuleType("ferroquant"); pkg.__path__ = [sys.argv[1]]; sys.modules["ferroquant"] = pkg
loader = importlib.machinery.ExtensionFileLoader("ferroquant._core", sys.argv[1] + "/_core.abi3.so")
core = importlib.util.module_from_spec(importlib.util.spec_from_loader("ferroquant._core", loader))
loader.exec_module(core)
assert core.available_engines() == ["scalar"], core.available_engines()
print("qemu64 (SSE2 only): _core loads, engines", core.available_engines(), core.choose_qparams_dynamic(-1.0, 3.0, 0, 255))
' "$so_dir")
  # (QEMU's TCG warns about CPUID bits it cannot emulate; everything else on stderr is shown)
  old=$(cd "$work/run" && qemu-x86_64-static -cpu SandyBridge "$base_py" "$top/scripts/wheel-kernels.py" "$so_dir" \
        2> >(grep -v "TCG doesn't support requested feature" >&2))
  printf '%s\n%s\n' "$native" "$old" | python -c '
import json, sys
native, old = (json.loads(line) for line in sys.stdin)
assert list(old["digests"]) == ["scalar"], old
digests = set(native["digests"].values()) | set(old["digests"].values())
assert len(digests) == 1, (native, old)
print("SandyBridge (AVX, no AVX2): the scalar kernels give the digest of", list(native["digests"]), "here")
'
else
  echo "qemu-x86_64-static not installed: baseline-CPU check skipped (apt-get install qemu-user-static)"
fi
echo "== wheel test passed"
