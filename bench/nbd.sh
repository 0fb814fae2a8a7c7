#!/usr/bin/env bash
# Benchmarks tessera's NBD server against nbdkit's file plugin and qemu-nbd, one after the
# other on the same 1 GiB file in one run, with fio's nbd engine (one connection per job):
# 4 KiB random read and random write at QD16, 1 MiB sequential read at QD8, 10 s each.
# All three servers use the page cache. Not a test: absolute figures are noisy, compare the
# columns side by side.
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

cargo build --release -q -p tessera-export --example serve_file
mkdir -p "$DIR"
FILE=$DIR/bench.img
if [ "$(stat -c %s "$FILE" 2>/dev/null || echo 0)" != 1073741824 ]; then
    # Real data, not a sparse file, so reads touch pages.
    dd if=/dev/urandom of="$FILE" bs=1M count=1024 status=none
fi
cat "$FILE" >/dev/null # warm the page cache

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
        --size=1G --runtime="$RUNTIME" --time_based --output-format=json \
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
    stop
}

./target/release/examples/serve_file "$FILE" "$PORT" 2>/dev/null &
pid=$!
bench tessera "nbd://127.0.0.1:$PORT"

nbdkit -f -i 127.0.0.1 -p "$PORT" file "$FILE" &
pid=$!
bench nbdkit "nbd://127.0.0.1:$PORT"

qemu-nbd -f raw -t -b 127.0.0.1 -p "$PORT" -x bench --aio=threads "$FILE" &
pid=$!
bench qemu-nbd "nbd://127.0.0.1:$PORT/bench"

echo
echo "fio nbd engine, 1 GiB file in the page cache, ${RUNTIME} s per job, $(nproc) cores"
awk '
    { iops[$1, $2] = $3; mib[$1, $2] = $4 }
    END {
        printf "%-16s %18s %18s %16s\n", "server", "4k randread QD16", "4k randwrite QD16", "1M seq read QD8"
        n = split("tessera nbdkit qemu-nbd", s, " ")
        for (i = 1; i <= n; i++)
            printf "%-16s %12.1fk IOPS %12.1fk IOPS %10.0f MiB/s\n", s[i],
                iops[s[i], "randread"] / 1000, iops[s[i], "randwrite"] / 1000, mib[s[i], "seqread"]
        printf "%-16s %17.2fx %17.2fx %15.2fx\n", "tessera/nbdkit",
            iops["tessera", "randread"] / iops["nbdkit", "randread"],
            iops["tessera", "randwrite"] / iops["nbdkit", "randwrite"],
            mib["tessera", "seqread"] / mib["nbdkit", "seqread"]
    }' "$RESULTS"
