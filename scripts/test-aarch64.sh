#!/usr/bin/env bash
# Cross-compiles ferroquant-kernels for aarch64 with Debian trixie's rustc 1.85 (in a cached
# chroot, scripts/aarch64-env.sh) and runs its tests under QEMU user mode:
#   -cpu max        -> neon_dotprod path (plus neon and scalar)
#   -cpu cortex-a72 -> neon path (no dot product)
# Usage: scripts/test-aarch64.sh          build + run the tests on both CPU models
#        scripts/test-aarch64.sh --check  only `cargo check --locked --tests` for aarch64
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
R=$("$top/scripts/aarch64-env.sh")
mode=${1:-test}

mkdir -p "$R/src"
mountpoint -q "$R/src" || mount --bind "$top" "$R/src"
mountpoint -q "$R/proc" || mount -t proc proc "$R/proc"
cleanup() { umount "$R/src" 2>/dev/null || true; umount "$R/proc" 2>/dev/null || true; }
trap cleanup EXIT
cp /etc/resolv.conf "$R/etc/resolv.conf"
# The host's CA bundle (it may include a proxy's CA) lets cargo in the chroot reach crates.io.
cp /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/ca-certificates.crt"

in_chroot() {
  chroot "$R" env -i PATH=/usr/bin:/bin HOME=/root CARGO_HOME=/root/.cargo \
    CARGO_HTTP_CAINFO=/etc/ssl/certs/ca-certificates.crt ${HTTPS_PROXY:+HTTPS_PROXY=$HTTPS_PROXY} \
    CARGO_TARGET_DIR=/src/target/aarch64-trixie \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    sh -c "cd /src && $1"
}
in_chroot 'rustc --version'
if [ "$mode" = "--check" ]; then
  in_chroot 'cargo check --locked --ignore-rust-version --tests --target aarch64-unknown-linux-gnu -p ferroquant-kernels'
  exit 0
fi
in_chroot 'cargo test --locked --ignore-rust-version --no-run --target aarch64-unknown-linux-gnu -p ferroquant-kernels --message-format=json' \
  | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | sed 's#^/src/##' > "$top/target/aarch64-trixie/test-bins.txt"
status=0
for spec in max:neon_dotprod,neon,scalar cortex-a72:neon,scalar; do
  cpu=${spec%%:*}; export FERROQUANT_EXPECT_ENGINES=${spec#*:}
  while read -r bin; do
    [ -n "$bin" ] || continue
    echo "== qemu-aarch64 -cpu $cpu $(basename "$bin") (expects engines $FERROQUANT_EXPECT_ENGINES)"
    start=$(date +%s)
    if ! qemu-aarch64-static -cpu "$cpu" -L "$R/usr/aarch64-linux-gnu" "$top/$bin" --test-threads 2; then
      status=1
    fi
    echo "   ($(( $(date +%s) - start )) s)"
  done < "$top/target/aarch64-trixie/test-bins.txt"
done
exit $status
