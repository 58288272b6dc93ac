#!/usr/bin/env bash
# Runs the aarch64 wheel's own extension under QEMU user mode and checks its kernels give the same
# bits as the x86-64 ones: scripts/wheel-kernels.py (quantize, dynamic/static Linear, conv 3x3 /
# 1x1 / strided / depthwise / grouped / 1-D / 3-D, fused add, LUT, pooling, fake quantization;
# 1 and 2 threads) on
#   qemu-aarch64 -cpu max          (engines neon_dotprod, neon, scalar)
#   qemu-aarch64 -cpu cortex-a72   (engines neon, scalar)
# and natively on x86-64 with the x86-64 wheel (or the installed ferroquant): one digest for all.
#
#   scripts/test-wheel-aarch64.sh AARCH64_WHEEL [X86_64_WHEEL]
#
# The aarch64 Python is Debian trixie's python3.13 (arm64 .debs unpacked next to the chroot of
# scripts/aarch64-env.sh, cached) with numpy's manylinux aarch64 wheel from PyPI; no torch.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 1 ] || { echo "usage: $0 AARCH64_WHEEL [X86_64_WHEEL]" >&2; exit 2; }
abspath() { echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; }
aarch64_wheel=$(abspath "$1")
x86_wheel=${2:+$(abspath "$2")}
R=$("$top/scripts/aarch64-env.sh")
A=$R/opt/arm64-root          # the unpacked arm64 Python (a QEMU -L prefix)
SITE=$R/opt/arm64-site       # numpy for it
work=$(mktemp -d /tmp/ferroquant-wheel-aarch64.XXXXXX)
trap 'rm -rf "$work"' EXIT

if [ ! -x "$A/usr/bin/python3.13" ]; then
  cp /etc/resolv.conf "$R/etc/resolv.conf"
  rm -rf "$R/opt/arm64-debs" "$A"; mkdir -p "$R/opt/arm64-debs" "$A"
  chroot "$R" env -i PATH=/usr/bin:/bin HOME=/root sh -c 'cd /opt/arm64-debs && apt-get update -qq &&
    apt-get download python3.13-minimal:arm64 libpython3.13-minimal:arm64 libpython3.13-stdlib:arm64 \
      libc6:arm64 zlib1g:arm64 libexpat1:arm64 libffi8:arm64 libbz2-1.0:arm64 liblzma5:arm64 \
      libcrypt1:arm64 libgcc-s1:arm64 libstdc++6:arm64' >&2
  for deb in "$R"/opt/arm64-debs/*.deb; do dpkg-deb -x "$deb" "$A"; done
  ln -sfn usr/lib "$A/lib"; ln -sfn usr/bin "$A/bin"   # merged /usr
fi
if [ ! -d "$SITE/numpy" ]; then
  rm -rf "$SITE"; mkdir -p "$SITE"
  pip download --quiet --only-binary=:all: --platform manylinux2014_aarch64 --python-version 3.13 \
    --no-deps numpy -d "$work/np"
  (cd "$SITE" && python -m zipfile -e "$work"/np/numpy-*.whl .)
fi

mkdir -p "$work/aarch64" "$work/x86_64"
(cd "$work/aarch64" && python -m zipfile -e "$aarch64_wheel" .)
if [ -n "$x86_wheel" ]; then
  (cd "$work/x86_64" && python -m zipfile -e "$x86_wheel" .)
  x86_pkg=$work/x86_64/ferroquant
else
  x86_pkg=$(python -c 'import ferroquant, os; print(os.path.dirname(ferroquant.__file__))')
fi

results=()
echo "== x86_64 ($x86_pkg)"
results+=("$(python "$top/scripts/wheel-kernels.py" "$x86_pkg")")
echo "${results[-1]}"
for cpu in max cortex-a72; do
  echo "== qemu-aarch64 -cpu $cpu"
  start=$(date +%s)
  results+=("$(cd "$work" && qemu-aarch64-static -cpu "$cpu" -L "$A" "$A/usr/bin/python3.13" -I -c \
    'import sys; sys.path.insert(0, sys.argv[1]); sys.argv = sys.argv[1:]; sys.argv[0] = sys.argv[2]
exec(compile(open(sys.argv[0]).read(), sys.argv[0], "exec"))' \
    "$SITE" "$work/aarch64/ferroquant" "$top/scripts/wheel-kernels.py")")
  echo "${results[-1]}   ($(( $(date +%s) - start )) s)"
done

printf '%s\n' "${results[@]}" | python -c '
import json, sys
runs = [json.loads(line) for line in sys.stdin if line.strip()]
machines = {r["machine"] for r in runs}
engines = {(r["machine"], e) for r in runs for e in r["digests"]}
want = {("aarch64", "neon_dotprod"), ("aarch64", "neon"), ("aarch64", "scalar"), ("x86_64", "scalar")}
assert machines == {"x86_64", "aarch64"}, machines
assert want <= engines, f"engines missing: {sorted(want - engines)}"
digests = {d for r in runs for d in r["digests"].values()}
if len(digests) != 1:
    sys.exit(f"kernels differ between engines or architectures: {runs}")
print(f"aarch64 wheel: {len(engines)} (machine, engine) pairs, one digest {digests.pop()[:16]}...: bit-identical")
'
