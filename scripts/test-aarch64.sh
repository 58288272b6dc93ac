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

# each run mounts its own tree at its own place, so concurrent runs (two clones) do not mix
S=/src/$$
# armed before the first mount, so an interrupted run leaves no bind mount of the tree behind
cleanup() {
  if mountpoint -q "$R$S"; then umount "$R$S" || umount -l "$R$S"; fi
  rmdir "$R$S" 2>/dev/null || true
  # /proc stays mounted while another run uses the chroot
  if [ -z "$(ls -A "$R/src" 2>/dev/null)" ] && mountpoint -q "$R/proc"; then
    umount "$R/proc" || umount -l "$R/proc"
  fi
}
trap cleanup EXIT
mkdir -p "$R$S"
mount --bind "$top" "$R$S"
mountpoint -q "$R/proc" || mount -t proc proc "$R/proc"
cp /etc/resolv.conf "$R/etc/resolv.conf"
# The host's CA bundle (it may include a proxy's CA) lets cargo in the chroot reach crates.io.
cp /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/ca-certificates.crt"

in_chroot() {
  chroot "$R" env -i PATH=/usr/bin:/bin HOME=/root CARGO_HOME=/root/.cargo \
    CARGO_HTTP_CAINFO=/etc/ssl/certs/ca-certificates.crt ${HTTPS_PROXY:+HTTPS_PROXY=$HTTPS_PROXY} \
    CARGO_TARGET_DIR=$S/target/aarch64-trixie \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    sh -c "cd $S && $1"
}
in_chroot 'rustc --version'
if [ "$mode" = "--check" ]; then
  in_chroot 'cargo check --locked --ignore-rust-version --tests --target aarch64-unknown-linux-gnu -p ferroquant-kernels'
  exit 0
fi
# only the test harness binaries (cargo also reports examples it builds); the list goes next
# to the build, whose folder a fresh clone does not have yet
mkdir -p "$top/target/aarch64-trixie"
in_chroot 'cargo test --locked --ignore-rust-version --no-run --target aarch64-unknown-linux-gnu -p ferroquant-kernels --message-format=json' \
  | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") == "compiler-artifact" and msg.get("profile", {}).get("test") and msg.get("executable"):
        print(msg["executable"].split("/", 3)[3])
' > "$top/target/aarch64-trixie/test-bins.txt"
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
