#!/usr/bin/env bash
# Builds (once, cached) a Debian trixie chroot with rustc 1.85 and the arm64 std library,
# used to cross-compile ferroquant-kernels for aarch64 (see docs/kernels.md).
# Idempotent: re-running on a ready chroot does nothing. Prints the chroot path on stdout.
set -euo pipefail
R=${FERROQUANT_TRIXIE:-$HOME/.cache/ferroquant-trixie}
if [ -f "$R/.ferroquant-ready" ]; then echo "$R"; exit 0; fi
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}" >&2
fi
# never delete through a mount (a bind-mounted source tree of an interrupted run, say)
if [ -d "$R" ] && findmnt -rn -o TARGET | grep -q "^$R/"; then
  echo "$R has mounts inside (findmnt | grep $R): unmount them before rebuilding the chroot" >&2
  exit 1
fi
rm -rf --one-file-system "$R"; mkdir -p "$(dirname "$R")"
debootstrap --variant=minbase trixie "$R" http://deb.debian.org/debian >&2
cp /etc/resolv.conf "$R/etc/"
mount -t proc proc "$R/proc"
trap 'umount "$R/proc" 2>/dev/null || true' EXIT
chroot "$R" sh -c 'dpkg --add-architecture arm64 && apt-get update &&
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends rustc cargo libc6-dev \
    libstd-rust-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross ca-certificates' >&2
touch "$R/.ferroquant-ready"
echo "$R"
