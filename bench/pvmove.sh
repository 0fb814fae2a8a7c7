#!/usr/bin/env bash
# Benchmarks `tessera pv move` online, through a running `tessera serve`. A VG over three image
# files (SIZE_MIB each, random data) holds a linear LV on the first. In one run:
#   1. the members' sequential read rate: fio (psync, 1 MiB, buffered as tessera reads them) on
#      the first and second image files, the median of ROUNDS reads of each;
#   2. the move's throughput with no client I/O: `tessera pv move` of the first PV to the
#      second, unthrottled (--max-rate 0), the LV served; its rate as a ratio of (1);
#   3. fio's write latency on the served LV (4 KiB random writes at QD1 for RUNTIME s): once
#      without a move, then during the move back (paced so it outlasts fio: md's minimum rate
#      set to what moves the LV in 1.5 x RUNTIME, since md gives way to client I/O down to
#      it); p50, p99 and max beside each other.
#
#   bench/pvmove.sh                          # needs fio, nbdinfo, jq, awk
#   SIZE_MIB=256 RUNTIME=10 ROUNDS=3 bench/pvmove.sh
#   TESSERA=path/to/tessera bench/pvmove.sh  # that binary instead of building one
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MIB=${SIZE_MIB:-512}
RUNTIME=${RUNTIME:-10}
ROUNDS=${ROUNDS:-3}
DIR=${BENCH_DIR:-target/pvmove-bench}
PORT=${PORT:-10870}
for tool in fio nbdinfo jq awk; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done

if [ -n "${TESSERA:-}" ]; then
    T=$(realpath "$TESSERA")
else
    cargo build --release -q -p tessera-cli
    T=$PWD/target/release/tessera
fi
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
rm -rf "$DIR/state"
for img in a b c; do
    dd if=/dev/urandom of="$DIR/$img.img" bs=1M count="$SIZE_MIB" status=none
done
DEVICES=$DIR/a.img,$DIR/b.img,$DIR/c.img
STATE=$DIR/state
tess() { "$T" --devices "$DEVICES" --state-dir "$STATE" "$@"; }
tess vg create bench --force "$DIR/a.img" "$DIR/b.img" "$DIR/c.img" >/dev/null
LV_MIB=$((SIZE_MIB - 8))
tess lv create bench/lin -L "${LV_MIB}M" --pv "$DIR/a.img" >/dev/null
cat "$DIR"/*.img >/dev/null # the page cache holds them, as it would for the move

pids=()
stop() {
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    pids=()
}
trap stop EXIT

median() { sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# 1. The members' sequential read rate, MiB/s.
read_rate() {
    fio --name=seq --ioengine=psync --rw=read --bs=1M --filename="$1" --size="${LV_MIB}M" \
        --output-format=json --output="$DIR/seq.json" >/dev/null
    jq -r '.jobs[0].read.bw / 1024' "$DIR/seq.json"
}
MEMBER=$(for _ in $(seq "$ROUNDS"); do read_rate "$DIR/a.img"; read_rate "$DIR/b.img"; done | median)

"$T" --devices "$DEVICES" --state-dir "$STATE" serve --listen "127.0.0.1:$PORT" >"$DIR/serve.log" 2>&1 &
pids+=($!)
URI=nbd://127.0.0.1:$PORT/bench/lin
for _ in $(seq 100); do nbdinfo --size "$URI" >/dev/null 2>&1 && break; sleep 0.1; done

# The seconds a move took, from its report line ("... online (..., N.N s).").
move_seconds() { sed -n 's/.*, \([0-9.]*\) s)\.$/\1/p'; }

# 2. Unthrottled, no client I/O.
out=$(tess pv move "$DIR/a.img" "$DIR/b.img" --max-rate 0 2>&1)
grep -q online <<<"$out" || { echo "the move did not run online: $out" >&2; exit 1; }
SECS=$(move_seconds <<<"$out")
MOVE=$(awk -v m="$LV_MIB" -v s="$SECS" 'BEGIN { printf "%.1f", m / s }')

# 3. Write latency at QD1, without and during a move.
lat() {
    fio --name=lat --ioengine=nbd --uri="$URI" --rw=randwrite --bs=4k --iodepth=1 \
        --size="${LV_MIB}M" --runtime="$RUNTIME" --time_based --output-format=json \
        --output="$DIR/lat.json" >/dev/null
    jq -r '.jobs[0].write | "\(.clat_ns.percentile["50.000000"] / 1000) \(.clat_ns.percentile["99.000000"] / 1000) \(.clat_ns.max / 1000) \(.iops)"' "$DIR/lat.json"
}
QUIET=$(lat)
PACED=$((LV_MIB * 1024 * 2 / (RUNTIME * 3)))
tess pv move "$DIR/b.img" "$DIR/a.img" --min-rate "$PACED" --max-rate "$PACED" >"$DIR/move2.out" 2>&1 &
mover=$!
sleep 0.5
MOVING=$(lat)
wait "$mover" || { echo "the second move failed: $(cat "$DIR/move2.out")" >&2; exit 1; }
grep -q online "$DIR/move2.out" || { echo "the second move did not run online" >&2; exit 1; }
SECS2=$(move_seconds <"$DIR/move2.out")
stop

echo
echo "tessera pv move online, linear LV of $LV_MIB MiB, image files of $SIZE_MIB MiB in the page" \
    "cache, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf "members' sequential read (fio psync 1 MiB, median of %d): %8.1f MiB/s\n" "$((ROUNDS * 2))" "$MEMBER"
printf "move, no client I/O, unthrottled:          %8.1f MiB/s (%s s), %.2f of the members' rate\n" \
    "$MOVE" "$SECS" "$(awk -v a="$MOVE" -v b="$MEMBER" 'BEGIN { print a / b }')"
echo "fio 4 KiB random writes at QD1 on the served LV, ${RUNTIME} s:"
printf "%-34s %10s %10s %12s %8s\n" "" "p50 us" "p99 us" "max us" "IOPS"
read -r a b c d <<<"$QUIET"
printf "%-34s %10.0f %10.0f %12.0f %8.0f\n" "without a move" "$a" "$b" "$c" "$d"
read -r a b c d <<<"$MOVING"
printf "%-34s %10.0f %10.0f %12.0f %8.0f\n" "during a move paced to $PACED KiB/s" "$a" "$b" "$c" "$d"
echo "(the paced move took $SECS2 s)"
