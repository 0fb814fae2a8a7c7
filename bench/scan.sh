#!/usr/bin/env bash
# Discovery of N loop devices, tessera beside lvm2 and blkid in one run: the devices carry a
# VG over N PVs with 4 LVs, so every tool has labels and metadata to read. (Whole devices:
# a machine without udev gets no nodes for loop partitions, so lvm2 could not see PVs there.)
#   - lvm2:     pvs (reads every label and metadata area);
#   - blkid:    blkid -p on every device (low-level probe of each, no cache);
#   - tessera:  tessera scan (every format module on every device and partition, the VG put
#               together, each LV's contents probed).
# Each is run RUNS times; prints the mean time per run and tessera's ratio to each. Root is
# needed for loop devices. Usage: bench/scan.sh [N=64] [RUNS=10]
set -euo pipefail
N=${1:-64}; RUNS=${2:-10}
cd "$(dirname "$0")/.."
cargo build --release -q -p tessera-cli
TESSERA=$PWD/target/release/tessera
export LVM_SUPPRESS_FD_WARNINGS=1
work=$(mktemp -d /var/tmp/tessera-scan.XXXXXX)
loops=()
cleanup() {
    vgremove -f --devices "$(IFS=,; echo "${pvs[*]:-}")" bench_scan >/dev/null 2>&1 || true
    for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
pvs=()
for i in $(seq 0 $((N - 1))); do
    truncate -s 32M "$work/d$i.img"
    l=$(losetup -f --show "$work/d$i.img"); loops+=("$l"); pvs+=("$l")
done
DEVS=$(IFS=,; echo "${loops[*]}")
PVLIST=$DEVS
vgcreate -q --devices "$PVLIST" bench_scan "${pvs[@]}" >/dev/null 2>&1
for i in 1 2 3 4; do
    lvcreate -q --devices "$PVLIST" --driverloaded n -an -Zn -Wn -L 8M -n "lv$i" bench_scan >/dev/null 2>&1
done

now() { date +%s.%N; }
mean() { echo "($2 - $1) / $RUNS" | bc -l; }
# Warm the page cache the same way for all three.
pvs --devices "$PVLIST" >/dev/null 2>&1; blkid -p "${loops[@]}" >/dev/null 2>&1 || true
"$TESSERA" --devices "$DEVS" --state-dir "$work/state" scan > "$work/scan.txt"

t0=$(now); for _ in $(seq "$RUNS"); do pvs --devices "$PVLIST" >/dev/null 2>&1; done; t1=$(now)
for _ in $(seq "$RUNS"); do blkid -p "${loops[@]}" >/dev/null 2>&1 || true; done; t2=$(now)
for _ in $(seq "$RUNS"); do "$TESSERA" --devices "$DEVS" --state-dir "$work/state" scan >/dev/null; done; t3=$(now)
lvm=$(mean "$t0" "$t1"); blk=$(mean "$t1" "$t2"); tes=$(mean "$t2" "$t3")

# tessera must have found what lvm2 knows: every PV in the VG, and the VG whole.
found=$(grep -c "LVM2_member" "$work/scan.txt" || true)
[ "$found" = "$N" ] || { echo "tessera scan found $found of $N PVs" >&2; cat "$work/scan.txt" >&2; exit 1; }
grep -q "^bench_scan .*complete" "$work/scan.txt" || { echo "tessera scan did not find bench_scan whole" >&2; exit 1; }

printf '%-40s %12s\n' "discovery of $N loop devices" "s per run"
printf '%-40s %12.4f\n' "lvm2 pvs" "$lvm" "blkid -p (every device)" "$blk" "tessera scan" "$tes"
printf '%-40s %12.3f\n' "tessera / lvm2" "$(echo "$tes / $lvm" | bc -l)" "tessera / blkid" "$(echo "$tes / $blk" | bc -l)"
