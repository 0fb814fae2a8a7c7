#!/usr/bin/env bash
# Metadata operations, tessera beside lvm2 in one run, on identical VGs of N loop-device PVs:
#   - 100 x LV create (lvm2: lvcreate --driverloaded n -an -Zn); both write and flush every
#     metadata copy on every PV before returning;
#   - PV and VG lists (pvs / vgs) over the same PVs.
# Prints the times and tessera/lvm2 ratios (lower is better for tessera). Root needed for
# loop devices. Usage: bench/lvm-metadata.sh [PVS=64] [LVS=100] [LIST_RUNS=20]
set -euo pipefail
PVS=${1:-64}; LVS=${2:-100}; RUNS=${3:-20}
cd "$(dirname "$0")/.."
cargo build --release -q -p tessera-cli
TESSERA=$PWD/target/release/tessera
export LVM_SUPPRESS_FD_WARNINGS=1
work=$(mktemp -d /var/tmp/tessera-bench.XXXXXX)
loops_a=(); loops_b=()
cleanup() {
    vgremove -f --devices "$(IFS=,; echo "${loops_a[*]}")" bench_lvm >/dev/null 2>&1 || true
    for l in "${loops_a[@]}" "${loops_b[@]}"; do losetup -d "$l" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
for i in $(seq 0 $((PVS - 1))); do
    truncate -s 64M "$work/a$i.img" "$work/b$i.img"
    loops_a+=("$(losetup -f --show "$work/a$i.img")")
    loops_b+=("$(losetup -f --show "$work/b$i.img")")
done
DA=$(IFS=,; echo "${loops_a[*]}"); DB=$(IFS=,; echo "${loops_b[*]}")
vgcreate -q --devices "$DA" bench_lvm "${loops_a[@]}" >/dev/null 2>&1
"$TESSERA" --devices "$DB" --state-dir "$work/state" vg create bench_tes "${loops_b[@]}" >/dev/null

now() { date +%s.%N; }
elapsed() { echo "$2 - $1" | bc -l; }

t0=$(now)
for i in $(seq 1 "$LVS"); do
    lvcreate -q --devices "$DA" --driverloaded n -an -Zn -Wn -L 4M -n "lv$i" bench_lvm >/dev/null 2>&1
done
t1=$(now)
for i in $(seq 1 "$LVS"); do
    "$TESSERA" --devices "$DB" --state-dir "$work/state" lv create "bench_tes/lv$i" -L 4M >/dev/null
done
t2=$(now)
lvm_create=$(elapsed "$t0" "$t1"); tes_create=$(elapsed "$t1" "$t2")

t0=$(now); for _ in $(seq 1 "$RUNS"); do pvs --devices "$DA" >/dev/null 2>&1; done; t1=$(now)
for _ in $(seq 1 "$RUNS"); do "$TESSERA" --devices "$DB" --state-dir "$work/state" pv list >/dev/null; done; t2=$(now)
lvm_pvs=$(elapsed "$t0" "$t1"); tes_pvs=$(elapsed "$t1" "$t2")
t0=$(now); for _ in $(seq 1 "$RUNS"); do vgs --devices "$DA" >/dev/null 2>&1; done; t1=$(now)
for _ in $(seq 1 "$RUNS"); do "$TESSERA" --devices "$DB" --state-dir "$work/state" vg list >/dev/null; done; t2=$(now)
lvm_vgs=$(elapsed "$t0" "$t1"); tes_vgs=$(elapsed "$t1" "$t2")

# Both VGs must now hold the same number of LVs.
n_lvm=$(lvs --devices "$DA" --noheadings -o lv_name 2>/dev/null | wc -l)
n_tes=$("$TESSERA" --devices "$DB" --state-dir "$work/state" lv list --noheadings | wc -l)
[ "$n_lvm" = "$LVS" ] && [ "$n_tes" = "$LVS" ] || { echo "LV counts differ: lvm2 $n_lvm, tessera $n_tes" >&2; exit 1; }
# lvm2 accepts the VG tessera wrote.
vgck --devices "$DB" bench_tes >/dev/null 2>&1 || { echo "vgck refused tessera's VG" >&2; exit 1; }

printf '%-34s %12s %12s %10s\n' "operation ($PVS PVs)" "lvm2 (s)" "tessera (s)" "ratio"
row() { printf '%-34s %12.3f %12.3f %10.3f\n' "$1" "$2" "$3" "$(echo "$3 / $2" | bc -l)"; }
row "$LVS x lv create" "$lvm_create" "$tes_create"
row "$RUNS x pv list / pvs" "$lvm_pvs" "$tes_pvs"
row "$RUNS x vg list / vgs" "$lvm_vgs" "$tes_vgs"
