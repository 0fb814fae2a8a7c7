#!/usr/bin/env bash
# What thick (dm-snapshot) snapshots cost an origin's writes: fio's nbd engine, 4 KiB random
# writes at QD16 into a 256 MiB origin LV that `tessera serve` exports, with 0, 1, 4 and 10
# snapshots of it (4 KiB chunks, each copy-on-write store origin + 8 MiB, so none fills up).
# Two phases for each count, in one run:
#   first touch  every block written once (random map, fixed seed), until done or RUNTIME s:
#                each write first copies its chunk out to every snapshot;
#   re-touch     the same blocks again (same seed, same number of writes), repeated until
#                RUNTIME s of writes (or 4 x RUNTIME s of rounds): the chunks are already
#                copied out.
# The snapshots are made afresh for each count (the daemon stopped around the metadata
# changes); the counts are run in turn REPEATS times, and the median IOPS and the median of
# each repetition's ratio to no snapshots are printed, so one noisy run does not decide.
# After the phases every snapshot must still read back the origin as it was before them
# (sha256 through NBD) and not be invalidated (Data% 100). Not a test: compare within a run.
#
#   bench/snapshot.sh            # needs fio, libnbd-bin (nbdinfo, nbdcopy), jq
#   RUNTIME=10 REPEATS=5 COUNTS="0 1 2 4 10" bench/snapshot.sh   # COUNTS must start with 0
set -euo pipefail
cd "$(dirname "$0")/.."

RUNTIME=${RUNTIME:-5}
REPEATS=${REPEATS:-3}
COUNTS=${COUNTS:-0 1 4 10}
DIR=${BENCH_DIR:-target/snapshot-bench}
PORT=${PORT:-10870}
ORIGIN_MIB=256
COW_MIB=$((ORIGIN_MIB + 8))
SEED=20261206
for tool in fio nbdinfo nbdcopy jq sha256sum; do
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
start() {
    # The binary itself in the background (not through a shell function), so that $! is its pid.
    "$T" --devices "$IMG" --state-dir "$STATE" serve --listen "127.0.0.1:$PORT" \
        >>"$DIR/serve.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        nbdinfo --size "$URI/bench/origin" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "tessera serve did not come up (see $DIR/serve.log)" >&2
    exit 1
}

# A fresh VG each run: 3 GiB sparse image, the origin filled once with real data.
rm -rf "$STATE" "$IMG" "$DIR"/*.json "$DIR/serve.log"
truncate -s 3G "$IMG"
tess vg create bench "$IMG" >/dev/null
tess lv create bench/origin -L "${ORIGIN_MIB}M" >/dev/null
start
fio --name=fill --ioengine=nbd --uri="$URI/bench/origin" --rw=write --bs=1M --iodepth=8 \
    --size="${ORIGIN_MIB}M" >/dev/null
stop

# fio JOB [EXTRA...] -> prints "IOS SECONDS" of 4 KiB random writes into the origin.
run_fio() {
    local name=$1
    shift
    fio --name="$name" --ioengine=nbd --uri="$URI/bench/origin" --rw=randwrite --bs=4k \
        --iodepth=16 --size="${ORIGIN_MIB}M" --randseed=$SEED --output-format=json \
        --output="$DIR/$name.json" "$@" >/dev/null
    jq -r '.jobs[0] | "\(.write.total_ios) \(.job_runtime / 1000)"' "$DIR/$name.json"
}

RESULTS=$DIR/results.txt
: >"$RESULTS"
for rep in $(seq "$REPEATS"); do
    for n in $COUNTS; do
        snaps=()
        for i in $(seq 0 $((n - 1))); do
            [ "$n" -gt 0 ] || break
            tess lv create --snapshot bench/origin -n "snap$i" -L "${COW_MIB}M" >/dev/null
            snaps+=("snap$i")
        done
        start
        before=$(nbdcopy "$URI/bench/origin" - | sha256sum | cut -d' ' -f1)

        # First touch: every write is to a block not written since the snapshots were made.
        read -r first_ios first_s < <(run_fio "first-$n" --runtime="$RUNTIME")
        # Re-touch: the same seed and number of writes hit the same blocks, in the same order.
        # Few blocks make short rounds: stop after RUNTIME s of writes or 4 x RUNTIME s of rounds.
        touch_ios=0 touch_s=0 rounds=0 until=$((SECONDS + 4 * RUNTIME))
        while [ "$SECONDS" -lt "$until" ] &&
            awk -v s="$touch_s" -v r="$RUNTIME" 'BEGIN { exit !(s < r) }'; do
            read -r ios s < <(run_fio "retouch-$n" --number_ios="$first_ios")
            touch_ios=$((touch_ios + ios))
            touch_s=$(awk -v a="$touch_s" -v b="$s" 'BEGIN { print a + b }')
            rounds=$((rounds + 1))
        done

        # Every snapshot still holds the origin as it was, and none is invalidated.
        for s in "${snaps[@]}"; do
            got=$(nbdcopy "$URI/bench/$s" - | sha256sum | cut -d' ' -f1)
            if [ "$got" != "$before" ]; then
                echo "bench/$s does not read back the origin as it was before the writes" >&2
                exit 1
            fi
        done
        stop
        if [ "$n" -gt 0 ]; then
            tess lv list bench -o lv_name,lv_attr,data_percent --noheadings --separator , \
                >"$DIR/lvs-$n.txt"
            # An invalidated snapshot reads Data% 100.00, as in lvm2.
            if awk -F, '$3 != "" && $3 + 0 >= 100 { bad = 1 } END { exit !bad }' \
                "$DIR/lvs-$n.txt"; then
                echo "a snapshot was invalidated with $n snapshots:" >&2
                cat "$DIR/lvs-$n.txt" >&2
                exit 1
            fi
        fi
        echo "$rep $n $first_ios $first_s $touch_ios $touch_s $rounds" >>"$RESULTS"
        for s in "${snaps[@]}"; do tess lv remove "bench/$s" >/dev/null; done
    done
done

median() {
    sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
# col N FIELD -> one value per repetition: first or retouch IOPS, or its ratio to no snapshots.
col() {
    awk -v n="$1" -v f="$2" '
        { fi[$1, $2] = $3 / $4; ri[$1, $2] = $5 / $6 }
        $2 == n { reps[$1] = 1 }
        END {
            for (r in reps) {
                if (f == "first") print fi[r, n]
                if (f == "retouch") print ri[r, n]
                if (f == "first_ratio") print fi[r, n] / fi[r, 0]
                if (f == "retouch_ratio") print ri[r, n] / ri[r, 0]
            }
        }' "$RESULTS" | median
}

echo "fio nbd engine, 4k randwrite QD16 into a ${ORIGIN_MIB} MiB origin, 4 KiB chunks," \
    "up to ${RUNTIME} s per phase, $REPEATS repetitions, $(nproc) cores; medians"
printf '%-10s %16s %9s %16s %9s\n' snapshots "first touch" "/ none" re-touch "/ none"
for n in $COUNTS; do
    printf '%-10s %11.1fk IOPS %8.2fx %11.1fk IOPS %8.2fx\n' "$n" \
        "$(col "$n" first | awk '{ print $1 / 1000 }')" "$(col "$n" first_ratio)" \
        "$(col "$n" retouch | awk '{ print $1 / 1000 }')" "$(col "$n" retouch_ratio)"
done
echo "(per repetition: rep, snapshots, first-touch writes and s, re-touch writes, s and rounds"
echo " in $RESULTS)"
