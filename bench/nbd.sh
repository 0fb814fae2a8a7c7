#!/usr/bin/env bash
# Benchmarks `tessera serve` against nbdkit's file plugin and qemu-nbd with fio's nbd engine
# (one connection per fio job). tessera serves a linear LV on one 1 GiB image file and a 2-way
# striped LV on two more; nbdkit (offset filter) and qemu-nbd (raw offset and size) serve the
# linear LV's extents of its image file, the same bytes, so their writes leave the metadata
# alone. All use the page cache. The servers run side by side and take turns, workload by workload
# (tessera-linear, tessera-striped, nbdkit, qemu-nbd, tessera-linear, ...), for ROUNDS rounds;
# each round gives a ratio tessera/nbdkit and tessera/qemu-nbd per workload, and the table
# shows the median of those ratios with their range, so one noisy run (the machine is shared)
# does not decide. Then the daemon's resident memory while it serves 100 LVs to 8 clients.
#
#   bench/nbd.sh                          # needs fio, nbdkit, qemu-utils, libnbd-bin, jq, awk
#   RUNTIME=3 ROUNDS=5 bench/nbd.sh       # a short run
#   WORKLOADS="randread randwrite" bench/nbd.sh
#   MEMORY=0 bench/nbd.sh                 # skip the 100-LV memory figure
#   TESSERA=path/to/tessera bench/nbd.sh  # that binary instead of building one
#
# Workloads: randread, randwrite (4 KiB, QD16), seqread (1 MiB, QD8), randread-qd1,
# randwrite-qd1 (4 KiB, QD1: latency), randread-4jobs, randwrite-4jobs (4 KiB, 4 jobs at QD16).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNTIME=${RUNTIME:-10}
ROUNDS=${ROUNDS:-5}
MEMORY=${MEMORY:-1}
WORKLOADS=${WORKLOADS:-randread randwrite seqread randread-qd1 randwrite-qd1 randread-4jobs randwrite-4jobs}
DIR=${BENCH_DIR:-target/nbd-bench}
PORT=${PORT:-10850}
for tool in fio nbdkit qemu-nbd nbdinfo jq awk; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done

if [ -n "${TESSERA:-}" ]; then
    T=$(realpath "$TESSERA") # a tessera binary built beforehand
else
    cargo build --release -q -p tessera-cli
    T=$PWD/target/release/tessera
fi
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
# Made anew when absent or damaged (a PV missing).
if ! listed=$(tess lv list bench 2>&1) || grep -q missing <<<"$listed"; then
    rm -rf "$STATE"
    for img in a b c; do dd if=/dev/zero of="$DIR/$img.img" bs=1M count=1 conv=notrunc status=none; done
    tess vg create bench --force "$DIR/a.img" "$DIR/b.img" "$DIR/c.img" >/dev/null
    tess lv create bench/lin -L 1020M --pv "$DIR/a.img" >/dev/null
    tess lv create bench/st -L 2040M -i 2 -I 64k --pv "$DIR/b.img" --pv "$DIR/c.img" >/dev/null
fi
cat "$DIR"/*.img >/dev/null # warm the page cache
# Where bench/lin lies in a.img: from the first extent, its size.
LIN_OFFSET=$(tess pv list -o pv_name,pe_start --units b --nosuffix --noheadings |
    awk -v f="$DIR/a.img" '$1 == f { print $2 }')
LIN_BYTES=$(tess lv list bench -o lv_name,lv_size --units b --nosuffix --noheadings |
    awk '$1 == "lin" { print $2 }')
[ -n "$LIN_OFFSET" ] && [ -n "$LIN_BYTES" ] || { echo "cannot find bench/lin in a.img" >&2; exit 1; }

pids=()
stop() {
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    pids=()
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

# All three servers at once, each on its own port, so that the turns need no restarts.
"$T" --devices "$DEVICES" --state-dir "$STATE" serve --listen "127.0.0.1:$PORT" >/dev/null 2>&1 &
pids+=($!)
nbdkit -f -i 127.0.0.1 -p "$((PORT + 1))" --filter=offset file "$DIR/a.img" \
    offset="$LIN_OFFSET" range="$LIN_BYTES" &
pids+=($!)
qemu-nbd -t -b 127.0.0.1 -p "$((PORT + 2))" -x bench --aio=threads --image-opts \
    "driver=raw,offset=$LIN_OFFSET,size=$LIN_BYTES,file.driver=file,file.filename=$DIR/a.img" &
pids+=($!)
declare -A URI=(
    [tessera-linear]="nbd://127.0.0.1:$PORT/bench/lin"
    [tessera-striped]="nbd://127.0.0.1:$PORT/bench/st"
    [nbdkit]="nbd://127.0.0.1:$((PORT + 1))"
    [qemu-nbd]="nbd://127.0.0.1:$((PORT + 2))/bench"
)
SERVERS="tessera-linear tessera-striped nbdkit qemu-nbd"
for s in $SERVERS; do wait_for "${URI[$s]}"; done

# fio WORKLOAD URI -> prints "IOPS MiB/s" for the workload's direction, summed over its jobs.
run_fio() {
    local name=$1 uri=$2 rw bs qd jobs=1 dir
    case $name in
        randread) rw=randread bs=4k qd=16 dir=read ;;
        randwrite) rw=randwrite bs=4k qd=16 dir=write ;;
        seqread) rw=read bs=1M qd=8 dir=read ;;
        randread-qd1) rw=randread bs=4k qd=1 dir=read ;;
        randwrite-qd1) rw=randwrite bs=4k qd=1 dir=write ;;
        randread-4jobs) rw=randread bs=4k qd=16 jobs=4 dir=read ;;
        randwrite-4jobs) rw=randwrite bs=4k qd=16 jobs=4 dir=write ;;
        *) echo "unknown workload $name" >&2; exit 1 ;;
    esac
    fio --name="$name" --ioengine=nbd --uri="$uri" --rw=$rw --bs=$bs --iodepth=$qd \
        --numjobs=$jobs --group_reporting --size=1000M --runtime="$RUNTIME" --time_based \
        --output-format=json --output="$DIR/fio.json" >/dev/null
    jq -r ".jobs[0].$dir | \"\(.iops) \(.bw / 1024)\"" "$DIR/fio.json"
}

RESULTS=$DIR/results.txt
: >"$RESULTS"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq "$ROUNDS"); do
    for w in $WORKLOADS; do
        for s in $SERVERS; do
            echo "$round $w $s $(run_fio "$w" "${URI[$s]}")" >>"$RESULTS"
        done
    done
    echo "round $round of $ROUNDS done (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
stop

echo
echo "fio nbd engine, 1 GiB image files in the page cache, ${RUNTIME} s per run, $ROUNDS rounds" \
    "interleaved, $(nproc) cores, load average $load_start at the start, $load_end at the end"
echo "figures: median over the rounds; ratios: median of the per-round ratios [lowest-highest]"
awk -v workloads="$WORKLOADS" '
    function median(a, n,    i, j, t) {
        for (i = 2; i <= n; i++)
            for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    # The figure that matters: MiB/s for sequential reads, IOPS for the rest.
    { v[$1, $2, $3] = ($2 == "seqread") ? $5 : $4; if ($1 > rounds) rounds = $1 }
    END {
        nw = split(workloads, w, " ")
        ns = split("tessera-linear tessera-striped nbdkit qemu-nbd", s, " ")
        printf "%-16s", "workload"
        for (i = 1; i <= ns; i++) printf " %15s", s[i]
        printf " %21s %21s %21s\n", "linear/nbdkit", "striped/nbdkit", "linear/qemu-nbd"
        for (k = 1; k <= nw; k++) {
            unit = (w[k] == "seqread") ? "MiB/s" : "kIOPS"
            printf "%-16s", w[k]
            for (i = 1; i <= ns; i++) {
                for (r = 1; r <= rounds; r++) a[r] = v[r, w[k], s[i]]
                m = median(a, rounds)
                if (unit == "kIOPS") printf " %9.1f %5s", m / 1000, unit
                else printf " %9.0f %5s", m, unit
            }
            split("tessera-linear/nbdkit tessera-striped/nbdkit tessera-linear/qemu-nbd", p, " ")
            for (q = 1; q <= 3; q++) {
                split(p[q], ab, "/")
                lo = 1e18; hi = 0
                for (r = 1; r <= rounds; r++) {
                    a[r] = v[r, w[k], ab[1]] / v[r, w[k], ab[2]]
                    if (a[r] < lo) lo = a[r]
                    if (a[r] > hi) hi = a[r]
                }
                printf "  %5.2fx [%5.2f-%5.2f]", median(a, rounds), lo, hi
            }
            printf "\n"
        }
    }' "$RESULTS"

[ "$MEMORY" = 0 ] && exit 0
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
pids+=("$pid")
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
echo "tessera serve with 100 LVs, 8 clients (4k randrw QD16, 5 s, $clients finished without error):"
echo "  resident memory peak $((peak / 1024)) MiB sampled, VmHWM $((hwm / 1024)) MiB"
