#!/usr/bin/env bash
# Installs what tessera's tests need on a fresh Debian machine (run as root) and runs every
# test. The tests use the real lvm2 on loop devices: nothing is skipped for a missing tool.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in lvm2 e2fsprogs util-linux; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
for tool in lvm losetup cargo-nextest; do
    command -v "$tool" >/dev/null || { echo "missing $tool after install" >&2; exit 1; }
done

export LVM_SUPPRESS_FD_WARNINGS=1
cargo build --workspace --all-targets
cargo nextest run --workspace --no-fail-fast
cargo test --workspace --doc
