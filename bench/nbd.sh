#!/usr/bin/env bash
# Benchmarks `tessera serve` against nbdkit's file plugin and qemu-nbd in one run, with fio's
# nbd engine (one connection per job): 4 KiB random read and random write at QD16, 1 MiB
# sequential read at QD8. tessera serves a linear LV on one 1 GiB image file and a 2-way
# striped LV on two more; nbdkit and qemu-nbd serve the linear LV's image file itself. All
# use the page cache. Then the daemon's resident memory while it serves 100 LVs to 8
# clients. Not a test: absolute figures are noisy, compare the columns side by side.
#
#   bench/nbd.sh                 # needs fio, nbdkit, qemu-utils, libnbd-bin, jq, awk
#   RUNTIME=30 bench/nbd.sh      # longer runs
set -euo pipefail
cd "$(dirname "$0")/.."

RUNTIME=${RUNTIME:-10}
DIR=${BENCH_DIR:-target/nbd-bench}
PORT=${PORT:-10850}
for tool in fio nbdkit qemu-nbd nbdinfo jq; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done

cargo build --release -q -p tessera-cli
T=$PWD/target/release/tessera
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
for img in a b c; do
    FILE=$DIR/$img.img
    if [ "$(stat -c %s "$FILE" 2>/dev/null || echo 0)" != 1073741824 ]; then
        # Real data, not a sparse file, so reads touch pages.
        dd if=/dev/urandom of="$FILE" bs=1M count=1024 status=none
    fi
done
DEVICES=$DIR/a.img,$DIR/b.img,$DIR/c.img
STATE=$DIR/state
tess() { "$T" --devices "$DEVICES" --state-dir "$STATE" "$@"; }
if ! tess lv list bench >/dev/null 2>&1; then
    rm -rf "$STATE"
    tess vg create bench --force "$DIR/a.img" "$DIR/b.img" "$DIR/c.img" >/dev/null
    tess lv create bench/lin -L 1020M --pv "$DIR/a.img" >/dev/null
    tess lv create bench/st -L 2040M -i 2 -I 64k --pv "$DIR/b.img" --pv "$DIR/c.img" >/dev/null
fi
cat "$DIR"/*.img >/dev/null # warm the page cache

pid=
stop() {
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    pid=
}
trap stop EXIT

wait_for() {
    for _ in $(seq 100); do
        nbdinfo --size "$1" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "server at $1 did not come up" >&2
    exit 1
}

# fio JOB URI -> prints "IOPS MiB/s" for the job's direction.
run_fio() {
    local name=$1 uri=$2 rw bs qd dir
    case $name in
        randread) rw=randread bs=4k qd=16 dir=read ;;
        randwrite) rw=randwrite bs=4k qd=16 dir=write ;;
        seqread) rw=read bs=1M qd=8 dir=read ;;
    esac
    fio --name="$name" --ioengine=nbd --uri="$uri" --rw=$rw --bs=$bs --iodepth=$qd \
        --size=1000M --runtime="$RUNTIME" --time_based --output-format=json \
        --output="$DIR/$name.json" >/dev/null
    jq -r ".jobs[0].$dir | \"\(.iops) \(.bw / 1024)\"" "$DIR/$name.json"
}

RESULTS=$DIR/results.txt
: >"$RESULTS"
bench() {
    local server=$1 uri=$2
    wait_for "$uri"
    for job in randread randwrite seqread; do
        echo "$server $job $(run_fio "$job" "$uri")" >>"$RESULTS"
    done
}

"$T" --devices "$DEVICES" --state-dir "$STATE" serve --listen "127.0.0.1:$PORT" >/dev/null 2>&1 &
pid=$!
bench tessera-linear "nbd://127.0.0.1:$PORT/bench/lin"
bench tessera-striped "nbd://127.0.0.1:$PORT/bench/st"
stop

nbdkit -f -i 127.0.0.1 -p "$PORT" file "$DIR/a.img" &
pid=$!
bench nbdkit "nbd://127.0.0.1:$PORT"
stop

qemu-nbd -f raw -t -b 127.0.0.1 -p "$PORT" -x bench --aio=threads "$DIR/a.img" &
pid=$!
bench qemu-nbd "nbd://127.0.0.1:$PORT/bench"
stop

# Memory: 100 LVs served, 8 clients reading 8 of them at once.
MANY=$DIR/many.img
MSTATE=$DIR/many-state
many() { "$T" --devices "$MANY" --state-dir "$MSTATE" "$@"; }
if ! many lv list many 2>/dev/null | grep -q lv99; then
    rm -rf "$MSTATE" "$MANY"
    truncate -s 1G "$MANY"
    many vg create many "$MANY" >/dev/null
    for i in $(seq 0 99); do many lv create "many/lv$i" -L 8M >/dev/null; done
fi
"$T" --devices "$MANY" --state-dir "$MSTATE" serve --listen "127.0.0.1:$PORT" >/dev/null 2>&1 &
pid=$!
wait_for "nbd://127.0.0.1:$PORT/many/lv0"
jobs=()
for i in $(seq 0 7); do
    jobs+=(--name="c$i" --uri="nbd://127.0.0.1:$PORT/many/lv$((i * 12))")
done
fio --ioengine=nbd --rw=randrw --bs=4k --iodepth=16 --size=8M --runtime=5 --time_based \
    --output-format=json --output="$DIR/many.json" "${jobs[@]}" >/dev/null &
fio_pid=$!
peak=0
while kill -0 "$fio_pid" 2>/dev/null; do
    rss=$(awk '/VmRSS/ { print $2 }' "/proc/$pid/status")
    [ "$rss" -gt "$peak" ] && peak=$rss
    sleep 0.2
done
wait "$fio_pid"
hwm=$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status")
clients=$(jq '[.jobs[] | select(.error == 0)] | length' "$DIR/many.json")
stop

echo
echo "fio nbd engine, 1 GiB image files in the page cache, ${RUNTIME} s per job, $(nproc) cores"
awk '
    { iops[$1, $2] = $3; mib[$1, $2] = $4 }
    END {
        printf "%-26s %18s %18s %16s\n", "server", "4k randread QD16", "4k randwrite QD16", "1M seq read QD8"
        n = split("tessera-linear tessera-striped nbdkit qemu-nbd", s, " ")
        for (i = 1; i <= n; i++)
            printf "%-26s %12.1fk IOPS %12.1fk IOPS %10.0f MiB/s\n", s[i],
                iops[s[i], "randread"] / 1000, iops[s[i], "randwrite"] / 1000, mib[s[i], "seqread"]
        n = split("tessera-linear tessera-striped", t, " ")
        for (i = 1; i <= n; i++)
            printf "%-26s %17.2fx %17.2fx %15.2fx\n", t[i] "/nbdkit",
                iops[t[i], "randread"] / iops["nbdkit", "randread"],
                iops[t[i], "randwrite"] / iops["nbdkit", "randwrite"],
                mib[t[i], "seqread"] / mib["nbdkit", "seqread"]
        printf "%-26s %17.2fx %17.2fx %15.2fx\n", "tessera-linear/qemu-nbd",
            iops["tessera-linear", "randread"] / iops["qemu-nbd", "randread"],
            iops["tessera-linear", "randwrite"] / iops["qemu-nbd", "randwrite"],
            mib["tessera-linear", "seqread"] / mib["qemu-nbd", "seqread"]
    }' "$RESULTS"
echo
echo "tessera serve with 100 LVs, 8 clients (4k randrw QD16, 5 s, $clients finished without error):"
echo "  resident memory peak $((peak / 1024)) MiB sampled, VmHWM $((hwm / 1024)) MiB"
