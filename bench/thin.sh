#!/usr/bin/env bash
# What thin provisioning costs, in one run:
#  1. fio's nbd engine, 4 KiB random writes at QD16 through `tessera serve`, side by side:
#       linear     a plain linear LV (the baseline);
#       allocate   a fresh thin LV: every write provisions its block first (64 KiB chunks,
#                  zeroing the rest of the block, as lvm2's default pool does);
#       rewrite    the same thin LV again, every block mapped already.
#     Each is run REPEATS times in turn (linear, allocate, rewrite; the thin LV made afresh
#     for each repetition); the medians of the IOPS and of each repetition's ratio to linear
#     are printed.
#  2. 100 thin snapshots of one thin LV made one after another, tessera beside lvm2, both in
#     the kernel lab's VM in the same run (each on its own loop-device VG; lvm2 through the
#     kernel's thin-pool with udev off), as seconds and the tessera/lvm2 ratio.
# Not a test: compare within a run.
#
#   bench/thin.sh                      # needs fio, libnbd-bin (nbdinfo), jq, the kernel lab
#   RUNTIME=10 REPEATS=5 SNAPSHOTS=100 bench/thin.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RUNTIME=${RUNTIME:-5}
REPEATS=${REPEATS:-3}
SNAPSHOTS=${SNAPSHOTS:-100}
DIR=${BENCH_DIR:-target/thin-bench}
PORT=${PORT:-10871}
LAB=${TESSERA_KERNEL_LAB:-/work/shared/kernel-lab}
SIZE_MIB=512
for tool in fio nbdinfo jq; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done

cargo build --release -q -p tessera-cli
T=$PWD/target/release/tessera
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
IMG=$DIR/disk.img
STATE=$DIR/state
URI=nbd://127.0.0.1:$PORT
tess() { "$T" --devices "$IMG" --state-dir "$STATE" "$@"; }

pid=
stop() {
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    pid=
}
trap stop EXIT
start() { # export to wait for
    "$T" --devices "$IMG" --state-dir "$STATE" serve --listen "127.0.0.1:$PORT" \
        >>"$DIR/serve.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        nbdinfo --size "$URI/$1" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "tessera serve did not come up (see $DIR/serve.log)" >&2
    exit 1
}

# fio JOB EXPORT -> prints the IOPS of 4 KiB random writes, RUNTIME s or the whole LV once.
run_fio() {
    fio --name="$1" --ioengine=nbd --uri="$URI/$2" --rw=randwrite --bs=4k --iodepth=16 \
        --size="${SIZE_MIB}M" --runtime="$RUNTIME" --randseed=20261206 --output-format=json \
        --output="$DIR/$1.json" >/dev/null
    jq -r '.jobs[0].write.iops' "$DIR/$1.json"
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

rm -rf "$STATE" "$IMG" "$DIR"/*.json "$DIR/serve.log"
truncate -s 4G "$IMG"
tess vg create bench "$IMG" >/dev/null
tess lv create bench/linear -L "${SIZE_MIB}M" >/dev/null
tess lv create --type thin-pool -L 1600M bench/pool >/dev/null
RESULTS=$DIR/results.txt
: >"$RESULTS"
for rep in $(seq "$REPEATS"); do
    tess lv remove bench/thin >/dev/null 2>&1 || true
    tess lv create --thin -V "${SIZE_MIB}M" -n thin bench/pool >/dev/null
    start bench/thin
    linear=$(run_fio "linear-$rep" bench/linear)
    allocate=$(run_fio "allocate-$rep" bench/thin)
    rewrite=$(run_fio "rewrite-$rep" bench/thin)
    stop
    echo "$rep $linear $allocate $rewrite" | tee -a "$RESULTS" |
        awk '{printf "  repetition %d: linear %.0f, allocate %.0f, rewrite %.0f IOPS\n", $1, $2, $3, $4}'
done
echo "4 KiB random writes, QD16, through tessera serve (median of $REPEATS):"
for col in 2 3 4; do
    name=$(echo "linear allocate rewrite" | cut -d' ' -f$((col - 1)))
    iops=$(awk -v c=$col '{print $c}' "$RESULTS" | median)
    ratio=$(awk -v c=$col '{print $c / $2}' "$RESULTS" | median)
    printf '  %-9s %8.0f IOPS   %.2fx linear\n' "$name" "$iops" "$ratio"
done
tess thin check bench/pool >/dev/null

# 2. Snapshots, both tools in the same VM.
LABDIR=$DIR/lab
rm -rf "$LABDIR"
mkdir -p "$LABDIR"
truncate -s 1G "$LABDIR/lvm.img" "$LABDIR/tessera.img"
cat >"$LABDIR/inside.sh" <<EOF
set -eu
cd "\$(dirname "\$0")"
mkdir -p /tmp/lvmconf
cat > /tmp/lvmconf/lvm.conf <<'C'
devices { obtain_device_list_from_udev = 0 external_device_info_source = "none" }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
global { use_lvmpolld = 0 }
C
export LVM_SYSTEM_DIR=/tmp/lvmconf LVM_SUPPRESS_FD_WARNINGS=1
dev=\$(losetup -f --show lvm.img)
pvcreate -q "\$dev"
vgcreate -q lvmvg "\$dev"
lvcreate -q --type thin-pool -L 512M -n pool lvmvg
lvcreate -q -V 256M -T lvmvg/pool -n thin
t0=\$(date +%s.%N)
for i in \$(seq $SNAPSHOTS); do lvcreate -q -s lvmvg/thin -n snap\$i >/dev/null; done
t1=\$(date +%s.%N)
echo "lvm2 \$(echo "\$t1 \$t0" | awk '{print \$1 - \$2}')"
vgchange -q -an lvmvg
losetup -d "\$dev"
T="$T --devices \$PWD/tessera.img --state-dir /tmp/tstate"
\$T vg create tvg \$PWD/tessera.img >/dev/null
\$T lv create --type thin-pool -L 512M tvg/pool >/dev/null
\$T lv create --thin -V 256M -n thin tvg/pool >/dev/null
t0=\$(date +%s.%N)
for i in \$(seq $SNAPSHOTS); do \$T lv create --snapshot tvg/thin -n snap\$i >/dev/null; done
t1=\$(date +%s.%N)
echo "tessera \$(echo "\$t1 \$t0" | awk '{print \$1 - \$2}')"
\$T thin check tvg/pool >/dev/null && echo "tessera-check-ok"
EOF
out=$("$LAB/vm-run" -t 900 -w "$LABDIR" -- "bash $LABDIR/inside.sh" 2>&1)
lvm=$(echo "$out" | awk '$1 == "lvm2" {print $2}')
ours=$(echo "$out" | awk '$1 == "tessera" {print $2}')
if [ -z "$lvm" ] || [ -z "$ours" ] || ! echo "$out" | grep -q tessera-check-ok; then
    echo "the lab run failed:" >&2
    echo "$out" >&2
    exit 1
fi
echo "$SNAPSHOTS thin snapshots made one by one, in the kernel lab's VM (emulated):"
printf '  lvm2 %.1f s   tessera %.1f s   ratio %.2f\n' "$lvm" "$ours" "$(echo "$ours $lvm" | awk '{print $1 / $2}')"
