#!/usr/bin/env bash
# Builds ferroquant's abi3 wheels (cp39-abi3: one wheel for every CPython >= 3.9) and checks them
# with scripts/check-wheel.py (tags, contents, ELF machine, newest glibc symbol <= the tag's).
#
#   scripts/build-wheels.sh [--out DIR] [x86_64] [aarch64]     (default: x86_64 only, into dist/)
#
# x86_64:  maturin + zig (`pip install ziglang`) link against glibc 2.28's symbol set, so the
#          wheel is manylinux_2_28_x86_64 whatever the build machine's glibc. Compiled for the
#          baseline x86-64 CPU (RUSTFLAGS must not name a target CPU); the AVX2, AVX-VNNI and
#          AVX-512 VNNI kernels are all inside and one is picked at run time.
# aarch64: maturin + zig inside the Debian trixie chroot of scripts/aarch64-env.sh (rustc 1.85,
#          arm64 std); abi3 needs no aarch64 Python. zig links against glibc 2.28's symbols
#          (trixie's own aarch64 glibc, 2.41, would pull in GLIBC_2.33/2.34 ones).
#          manylinux_2_28_aarch64. Its extension is then run under QEMU by
#          scripts/test-wheel-aarch64.sh (same kernel bits as x86-64).
#          Not run in CI (the chroot needs root and a few minutes the first time); its kernels are
#          tested under QEMU by scripts/test-aarch64.sh.
# See docs/building.md.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out=$top/dist
arches=()
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=$(mkdir -p "$2" && cd "$2" && pwd); shift 2 ;;
    x86_64|aarch64) arches+=("$1"); shift ;;
    *) echo "usage: $0 [--out DIR] [x86_64] [aarch64]" >&2; exit 2 ;;
  esac
done
[ ${#arches[@]} -gt 0 ] || arches=(x86_64)
mkdir -p "$out"
POLICY=manylinux_2_28

if [[ "${RUSTFLAGS:-} ${CARGO_ENCODED_RUSTFLAGS:-}" == *target-cpu* ]]; then
  echo "RUSTFLAGS names a target CPU; a wheel must run on any x86-64 (unset it)" >&2; exit 2
fi

build_x86_64() {
  # both come with `pip install '.[test]'`; installed here if a bare machine lacks them
  python -c 'import ziglang' 2>/dev/null || pip install 'ziglang>=0.13,<0.18'
  python -m maturin --version >/dev/null 2>&1 || pip install 'maturin>=1.5,<2'
  rm -f "$out"/ferroquant-*-manylinux*_x86_64.whl
  (cd "$top" && python -m maturin build --release --strip --locked --zig --compatibility "$POLICY" \
     --target x86_64-unknown-linux-gnu --out "$out")
  python "$top/scripts/check-wheel.py" "$out"/ferroquant-*-cp39-abi3-${POLICY}_x86_64.whl \
    --arch x86_64 --glibc 2.28
}

build_aarch64() {
  # global: the EXIT trap uses them
  R=$("$top/scripts/aarch64-env.sh")
  # the wheel builder in the chroot: Python (no aarch64 one is needed for abi3) and maturin
  if [ ! -x "$R/opt/wheel-venv/bin/maturin" ] || [ ! -d "$R/opt/wheel-venv/lib/python3.13/site-packages/ziglang" ]; then
    cp /etc/resolv.conf "$R/etc/resolv.conf"
    chroot "$R" env -i PATH=/usr/bin:/bin HOME=/root sh -c \
      'apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv' >&2
    cp /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/ca-certificates.crt"
    chroot "$R" env -i PATH=/usr/bin:/bin HOME=/root PIP_CERT=/etc/ssl/certs/ca-certificates.crt sh -c \
      'python3 -m venv /opt/wheel-venv && /opt/wheel-venv/bin/pip install "maturin==1.16.0" "ziglang>=0.13,<0.18"' >&2
  fi
  S=/src/wheel-$$
  # the cleanup is armed before the first mount: a bind mount of the source tree left behind would
  # expose it to anything that later deletes the chroot
  cleanup_aarch64() {
    local m
    for m in "$R$S" "$R/out-$$"; do
      if mountpoint -q "$m"; then umount "$m" || umount -l "$m"; fi
      rmdir "$m" 2>/dev/null || true
    done
    # /proc stays mounted while another build or test (scripts/test-aarch64.sh) uses the chroot
    if [ -z "$(ls -A "$R/src" 2>/dev/null)" ] && mountpoint -q "$R/proc"; then
      umount "$R/proc" || umount -l "$R/proc"
    fi
  }
  trap cleanup_aarch64 EXIT
  mkdir -p "$R$S" "$R/out-$$"
  mount --bind "$top" "$R$S"
  mount --bind "$out" "$R/out-$$"
  mountpoint -q "$R/proc" || mount -t proc proc "$R/proc"
  cp /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/ca-certificates.crt"
  rm -f "$out"/ferroquant-*-manylinux*_aarch64.whl
  # rustc 1.85 (trixie) is older than the bindings' declared rust-version: --ignore-rust-version,
  # as scripts/test-aarch64.sh does for the kernels; the aarch64 build is checked with 1.85 in CI
  chroot "$R" env -i PATH=/opt/wheel-venv/bin:/usr/bin:/bin HOME=/root CARGO_HOME=/root/.cargo \
    CARGO_HTTP_CAINFO=/etc/ssl/certs/ca-certificates.crt \
    CARGO_TARGET_DIR="$S/target/aarch64-wheel" \
    sh -c "cd $S && maturin build --release --strip --locked --ignore-rust-version --zig \
      --target aarch64-unknown-linux-gnu --compatibility $POLICY --auditwheel check --out /out-$$"
  python "$top/scripts/check-wheel.py" "$out"/ferroquant-*-cp39-abi3-${POLICY}_aarch64.whl \
    --arch aarch64 --glibc 2.28
  # its own extension under QEMU (neon_dotprod, neon, scalar): same bits as the x86-64 kernels
  local x86=()
  if ls "$out"/ferroquant-*-cp39-abi3-${POLICY}_x86_64.whl >/dev/null 2>&1; then
    x86=("$out"/ferroquant-*-cp39-abi3-${POLICY}_x86_64.whl)
  fi
  bash "$top/scripts/test-wheel-aarch64.sh" "$out"/ferroquant-*-cp39-abi3-${POLICY}_aarch64.whl "${x86[@]}"
}

for a in "${arches[@]}"; do
  echo "== building the $a wheel"
  "build_$a"
done
ls -l "$out"
