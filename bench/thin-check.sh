#!/usr/bin/env bash
# dm-thin metadata check time, tessera beside thin_check in one run, on the same files:
#  - "restored": metadata thin_restore writes from generated XML: DEVICES thin devices of
#    MAPPINGS scattered single mappings each, plus a device mapping device 0's blocks again
#    (every data block of device 0 counted twice);
#  - "tessera": metadata tessera's writer builds (examples/thin_build.rs): the same devices,
#    then a real snapshot of device 0 (a shared subtree) with 1% of it rewritten.
# Each check runs REPS times after one warm-up (page cache warm for both tools); the median
# is printed with the tessera/thin_check ratio (lower is better for tessera). Both tools must
# find the metadata clean. Not a test: compare side by side.
#
#   bench/thin-check.sh                          # 4 devices x 300000 mappings, 5 reps
#   DEVICES=8 MAPPINGS=500000 REPS=3 bench/thin-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICES=${DEVICES:-4}
MAPPINGS=${MAPPINGS:-300000}
REPS=${REPS:-5}
DIR=${BENCH_DIR:-target/thin-check-bench}
META_BYTES=$(( (DEVICES + 1) * MAPPINGS * 40 + (64 << 20) ))
mkdir -p "$DIR"
for t in thin_check thin_restore; do
    command -v $t >/dev/null || { echo "$t is not installed (thin-provisioning-tools)" >&2; exit 1; }
done

cargo build -q --release -p tessera-formats --example thin_check --example thin_build
TESSERA_CHECK=target/release/examples/thin_check
TESSERA_BUILD=target/release/examples/thin_build

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Runs "$@" REPS times after a warm-up; prints the median wall time in seconds.
time_it() {
    "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; "$@"; exit 1; }
    for _ in $(seq "$REPS"); do
        local t0; t0=$(now)
        "$@" >/dev/null 2>&1
        echo "$(now) $t0" | awk '{printf "%.4f\n", $1 - $2}'
    done | median
}

compare() {
    local name=$1 img=$2
    local theirs ours
    theirs=$(time_it thin_check "$img")
    ours=$(time_it "$TESSERA_CHECK" "$img" --quiet)
    "$TESSERA_CHECK" "$img" 2>&1 | sed 's/^/    /'
    printf '%-9s thin_check %8.4f s   tessera check %8.4f s   ratio %.3f\n' \
        "$name" "$theirs" "$ours" "$(echo "$ours $theirs" | awk '{print $1 / $2}')"
}

echo "== building metadata: $DEVICES devices x $MAPPINGS mappings"
xml=$DIR/restored.xml
awk -v devs="$DEVICES" -v n="$MAPPINGS" 'BEGIN {
    printf "<superblock uuid=\"\" time=\"1\" transaction=\"1\" data_block_size=\"128\" nr_data_blocks=\"%d\">\n", devs * n + 1000
    for (d = 0; d <= devs; d++) {
        src = (d == devs) ? 0 : d
        printf "  <device dev_id=\"%d\" mapped_blocks=\"%d\" transaction=\"0\" creation_time=\"0\" snap_time=\"1\">\n", d, n
        for (i = 0; i < n; i++) {
            v = (i * 7919) % n
            printf "    <single_mapping origin_block=\"%d\" data_block=\"%d\" time=\"0\"/>\n", v, src * n + i
        }
        print "  </device>"
    }
    print "</superblock>"
}' >"$xml"
rm -f "$DIR/restored.img" "$DIR/tessera.img"
truncate -s "$META_BYTES" "$DIR/restored.img" "$DIR/tessera.img"
thin_restore -q -i "$xml" -o "$DIR/restored.img"
"$TESSERA_BUILD" "$DIR/tessera.img" "$DEVICES" "$MAPPINGS"

echo "== checking (median of $REPS)"
compare restored "$DIR/restored.img"
compare tessera "$DIR/tessera.img"
