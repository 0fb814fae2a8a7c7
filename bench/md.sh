#!/usr/bin/env bash
# fio's nbd engine through `tessera serve` on MD arrays that tessera makes over 4 image files
# (raid0 and raid5, 64 KiB chunks, 256 MiB members) beside a linear LV on one image file, in
# one run: 4 KiB random read and random write at QD16, 1 MiB sequential read at QD8. The
# arrays' members are filled first so reads touch data. Not a test: compare side by side.
#
#   bench/md.sh                  # needs fio, libnbd-bin, jq
#   RUNTIME=30 bench/md.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RUNTIME=${RUNTIME:-10}
DIR=${BENCH_DIR:-target/md-bench}
PORT=${PORT:-10851}
for tool in fio nbdinfo nbdcopy jq; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
cargo build --release -q -p tessera-cli
T=$PWD/target/release/tessera
rm -rf "$DIR"
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
STATE=$DIR/state
for set in r0 r5; do
    for i in 0 1 2 3; do truncate -s 256M "$DIR/$set-$i.img"; done
done
truncate -s 1G "$DIR/lv.img"
"$T" --state-dir "$STATE" md create r0 --level 0 --chunk 64k "$DIR"/r0-{0,1,2,3}.img >/dev/null
"$T" --state-dir "$STATE" md create r5 --level 5 --chunk 64k "$DIR"/r5-{0,1,2,3}.img >/dev/null
"$T" --devices "$DIR/lv.img" --state-dir "$STATE" vg create bench "$DIR/lv.img" >/dev/null
"$T" --devices "$DIR/lv.img" --state-dir "$STATE" lv create bench/lin -L 600M >/dev/null

"$T" --devices "$DIR/*.img" --state-dir "$STATE" serve --listen "127.0.0.1:$PORT" >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do nbdinfo --size "nbd://127.0.0.1:$PORT/md/r5" >/dev/null 2>&1 && break; sleep 0.1; done
# Fill what the reads will touch (raid5 parity written as it goes).
for e in md/r0 md/r5 bench/lin; do
    fio --name=fill --ioengine=nbd --uri="nbd://127.0.0.1:$PORT/$e" --rw=write --bs=1M \
        --iodepth=8 --size=600M --output=/dev/null >/dev/null
done

run_fio() { # job uri -> "IOPS MiB/s"
    local rw bs qd dir
    case $1 in
        randread) rw=randread bs=4k qd=16 dir=read ;;
        randwrite) rw=randwrite bs=4k qd=16 dir=write ;;
        seqread) rw=read bs=1M qd=8 dir=read ;;
    esac
    fio --name="$1" --ioengine=nbd --uri="$2" --rw=$rw --bs=$bs --iodepth=$qd --size=600M \
        --runtime="$RUNTIME" --time_based --output-format=json --output="$DIR/$1.json" >/dev/null
    jq -r ".jobs[0].$dir | \"\(.iops) \(.bw / 1024)\"" "$DIR/$1.json"
}
RESULTS=$DIR/results.txt
: >"$RESULTS"
for e in bench/lin md/r0 md/r5; do
    for job in randread randwrite seqread; do
        echo "$e $job $(run_fio "$job" "nbd://127.0.0.1:$PORT/$e")" >>"$RESULTS"
    done
done
echo
echo "fio nbd engine through tessera serve, ${RUNTIME} s per job, $(nproc) cores, page cache"
awk '
    { iops[$1, $2] = $3; mib[$1, $2] = $4 }
    END {
        printf "%-28s %18s %18s %16s\n", "export", "4k randread QD16", "4k randwrite QD16", "1M seq read QD8"
        n = split("bench/lin md/r0 md/r5", s, " ")
        for (i = 1; i <= n; i++)
            printf "%-28s %12.1fk IOPS %12.1fk IOPS %10.0f MiB/s\n", s[i],
                iops[s[i], "randread"] / 1000, iops[s[i], "randwrite"] / 1000, mib[s[i], "seqread"]
        for (i = 2; i <= n; i++)
            printf "%-28s %17.2fx %17.2fx %15.2fx\n", s[i] " / linear LV",
                iops[s[i], "randread"] / iops["bench/lin", "randread"],
                iops[s[i], "randwrite"] / iops["bench/lin", "randwrite"],
                mib[s[i], "seqread"] / mib["bench/lin", "seqread"]
    }' "$RESULTS"

# Sync work on r6s (raid6 over 4 x 256 MiB members plus a spare), beside fio's sequential
# rate on the same kind of member file: a member is failed and the spare rebuilt, then a
# full resync and a check run, each with md's maximum rate lifted (the array is idle).
for i in 0 1 2 3 4; do truncate -s 256M "$DIR/r6s-$i.img"; done
kill $pid 2>/dev/null || true
wait $pid 2>/dev/null || true
"$T" --state-dir "$STATE" md create r6s --level 6 --chunk 64k -x "$DIR/r6s-4.img" \
    "$DIR"/r6s-{0,1,2,3}.img >/dev/null
"$T" --devices "$DIR/*.img" --state-dir "$STATE" serve --listen "127.0.0.1:$PORT" >/dev/null 2>&1 &
pid=$!
for _ in $(seq 100); do nbdinfo --size "nbd://127.0.0.1:$PORT/md/r6s" >/dev/null 2>&1 && break; sleep 0.1; done
fio --name=fill --ioengine=nbd --uri="nbd://127.0.0.1:$PORT/md/r6s" --rw=write --bs=1M \
    --iodepth=8 --size=500M --output=/dev/null >/dev/null
C=(--state-dir "$STATE")
"$T" "${C[@]}" md speed r6s 10000000 10000000
last() { # wait for the action to finish; print its MiB/s
    local r
    for _ in $(seq 3000); do
        r=$("$T" "${C[@]}" dm message md-r6s 0 report)
        if grep -q "last_action=$1" <<<"$r" && grep -q last_complete=true <<<"$r" \
            && "$T" "${C[@]}" dm status md-r6s | grep -q ' idle '; then
            awk -F= '/^last_sectors=/ { s = $2 } /^last_millis=/ { ms = $2 }
                END { printf "%.0f", s / 2048 / (ms / 1000) }' <<<"$r"
            return
        fi
        sleep 0.1
    done
    echo "?"
}
"$T" "${C[@]}" md fail r6s "$DIR/r6s-1.img" >/dev/null
recover=$(last recover)
"$T" "${C[@]}" dm message md-r6s 0 resync >/dev/null
resync=$(last resync)
"$T" "${C[@]}" dm message md-r6s 0 check >/dev/null
check=$(last check)
kill $pid 2>/dev/null || true
wait $pid 2>/dev/null || true
truncate -s 256M "$DIR/seq.img"
seqw=$(fio --name=w --filename="$DIR/seq.img" --rw=write --bs=1M --size=256M --output-format=json \
    | jq -r '.jobs[0].write.bw / 1024 | floor')
seqr=$(fio --name=r --filename="$DIR/seq.img" --rw=read --bs=1M --size=256M --output-format=json \
    | jq -r '.jobs[0].read.bw / 1024 | floor')
echo
echo "raid6 sync work (MiB/s of member sectors) beside fio 1M sequential on a 256 MiB member file"
printf "%-10s %8s %10s %10s\n" "" "MiB/s" "/ fio write" "/ fio read"
for row in "recover $recover" "resync $resync" "check $check"; do
    set -- $row
    awk -v n="$1" -v v="$2" -v w="$seqw" -v r="$seqr" \
        'BEGIN { printf "%-10s %8s %10.2fx %10.2fx\n", n, v, v / w, v / r }'
done
printf "%-10s %8s   %8s\n" "fio" "$seqw w" "$seqr r"
