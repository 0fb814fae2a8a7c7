#!/usr/bin/env bash
# Installs what tessera's tests need on a fresh Debian machine (run as root) and runs every
# test. The tests use the real lvm2 on loop devices: nothing is skipped for a missing tool.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in lvm2 mdadm e2fsprogs util-linux libnbd-bin fio fuse3 nbd-client cryptsetup-bin dosfstools xfsprogs btrfs-progs fdisk thin-provisioning-tools exfatprogs ntfs-3g dmraid sanlock lvm2-lockd nbdkit iproute2 libclang-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The kernel lab (a VM with a stock kernel that has device-mapper) for the activation tests.
# bookworm's qemu-system-x86 needs bookworm's qemu-utils; a newer backported qemu-utils on the
# machine blocks it, so both come from bookworm.
KERNEL_LAB=${TESSERA_KERNEL_LAB:-/work/shared/kernel-lab}
if ! command -v qemu-system-x86_64 >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --allow-downgrades \
        qemu-system-x86/bookworm qemu-utils/bookworm >/dev/null
fi
bash "$KERNEL_LAB/install"
export TESSERA_KERNEL_LAB=$KERNEL_LAB

for tool in lvm mdadm losetup nbdinfo nbdcopy nbdfuse fusermount3 nbd-client mkfs.ext4 fsck.ext4 fio qemu-io cargo-nextest qemu-system-x86_64 cryptsetup mkfs.vfat mkfs.xfs mkfs.btrfs mkswap blkid sfdisk thin_check thin_dump thin_restore mkfs.exfat mkfs.ntfs dmraid sanlock lvmlockd nbdkit qemu-nbd ip; do
    command -v "$tool" >/dev/null || { echo "missing $tool after install" >&2; exit 1; }
done

export LVM_SUPPRESS_FD_WARNINGS=1
# The ublk front end is a feature (libublk's bindings are generated with libclang); the tests
# build it in.
FEATURES=(--features tessera-cli/ublk)
cargo build --workspace --all-targets "${FEATURES[@]}"
# The static binary the boot test runs alone in the lab (glibc's static libraries come with
# libc6-dev, which rustc needs anyway).
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -q \
    --target x86_64-unknown-linux-gnu -p tessera-cli
export TESSERA_STATIC_BIN=$PWD/target/x86_64-unknown-linux-gnu/release/tessera
cargo nextest run --workspace --no-fail-fast "${FEATURES[@]}"
cargo test --workspace --doc "${FEATURES[@]}"

# The fuzz targets, briefly and deterministically (fixed seed, bounded runs) from their seed
# corpora; longer campaigns: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET`.
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
(
    cd fuzz
    for target in $(RUSTC_BOOTSTRAP=1 cargo fuzz list); do
        work=$(mktemp -d)
        cp corpus/"$target"/seed-* "$work"/ 2>/dev/null || true
        RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "$work" -- -seed=1 -runs=100000 >"$work.log" 2>&1 \
            || { tail -40 "$work.log"; echo "fuzz target $target failed" >&2; exit 1; }
        echo "fuzz $target: $(grep -o 'Done [0-9]* runs' "$work.log")"
        rm -rf "$work" "$work.log"
    done
)
