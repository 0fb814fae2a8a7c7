#!/usr/bin/env bash
# An encrypted volume's cost on the data path: fio's nbd engine through a LUKS2 volume
# (aes-xts-plain64, 512-bit key, 512- and 4096-byte sectors) that `tessera luks open` serves,
# beside the same kind of LV unencrypted, in one `tessera serve` and one run. Pairs are
# interleaved (plain, encrypted, plain, encrypted...) and the median of the pairwise ratios
# is printed, so one noisy run does not decide. 4 KiB random read and write at QD16, 1 MiB
# sequential read at QD8, one connection. Not a test: compare side by side.
#
#   bench/luks.sh                # needs fio, libnbd-bin (nbdinfo), jq
#   RUNTIME=10 PAIRS=5 bench/luks.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RUNTIME=${RUNTIME:-5}
PAIRS=${PAIRS:-3}
DIR=${BENCH_DIR:-target/luks-bench}
PORT=${PORT:-10860}
for tool in fio nbdinfo jq; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done

cargo build --release -q -p tessera-cli
T=$PWD/target/release/tessera
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
IMG=$DIR/disk.img
STATE=$DIR/state
KEY=$DIR/key
tess() { "$T" --devices "$IMG" --state-dir "$STATE" "$@"; }
if ! tess lv list bench 2>/dev/null | grep -q enc4k; then
    rm -rf "$STATE" "$IMG"
    truncate -s 2G "$IMG"
    printf 'bench passphrase' >"$KEY"
    tess vg create bench "$IMG" >/dev/null
    tess lv create bench/plain -L 512M >/dev/null
    tess lv create bench/enc -L 528M >/dev/null
    tess lv create bench/enc4k -L 528M >/dev/null
    # Small KDF costs: the benchmark measures the data path, not unlocking.
    tess luks format bench/enc --key-file "$KEY" --pbkdf pbkdf2 --pbkdf-force-iterations 1000 >/dev/null
    tess luks format bench/enc4k --key-file "$KEY" --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
        --sector-size 4096 >/dev/null
fi

pid=
stop() {
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    pid=
}
trap stop EXIT
# The binary itself in the background (not through a shell function), so that $! is its pid.
"$T" --devices "$IMG" --state-dir "$STATE" serve --listen "127.0.0.1:$PORT" >/dev/null 2>&1 &
pid=$!
for _ in $(seq 100); do
    nbdinfo --size "nbd://127.0.0.1:$PORT/bench/plain" >/dev/null 2>&1 && break
    sleep 0.1
done
tess luks open bench/enc crypt512 --key-file "$KEY" >/dev/null
tess luks open bench/enc4k crypt4k --key-file "$KEY" >/dev/null
# Fill each volume once, so reads decrypt written data.
for export in bench/plain crypt512 crypt4k; do
    fio --name=fill --ioengine=nbd --uri="nbd://127.0.0.1:$PORT/$export" --rw=write --bs=1M \
        --iodepth=8 --size=512M >/dev/null
done

# fio JOB EXPORT -> prints IOPS (4k jobs) or MiB/s (the 1M job).
run_fio() {
    local name=$1 export=$2 rw bs qd dir
    case $name in
        randread) rw=randread bs=4k qd=16 dir=read ;;
        randwrite) rw=randwrite bs=4k qd=16 dir=write ;;
        seqread) rw=read bs=1M qd=8 dir=read ;;
    esac
    fio --name="$name" --ioengine=nbd --uri="nbd://127.0.0.1:$PORT/$export" --rw=$rw --bs=$bs \
        --iodepth=$qd --size=500M --runtime="$RUNTIME" --time_based --output-format=json \
        --output="$DIR/$name.json" >/dev/null
    if [ "$name" = seqread ]; then
        jq -r ".jobs[0].$dir.bw / 1024" "$DIR/$name.json"
    else
        jq -r ".jobs[0].$dir.iops" "$DIR/$name.json"
    fi
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "fio nbd engine, ${RUNTIME} s per job, $PAIRS interleaved pairs, $(nproc) cores; median of pairwise ratios"
printf '%-12s %-10s %14s %14s %8s\n' volume job plain encrypted ratio
for crypt in crypt512 crypt4k; do
    for job in randread randwrite seqread; do
        ratios=() plain=() enc=()
        for _ in $(seq "$PAIRS"); do
            p=$(run_fio "$job" bench/plain)
            e=$(run_fio "$job" "$crypt")
            plain+=("$p") enc+=("$e")
            ratios+=("$(awk -v e="$e" -v p="$p" 'BEGIN { print e / p }')")
        done
        unit=IOPS
        [ "$job" = seqread ] && unit=MiB/s
        printf '%-12s %-10s %9.0f %-5s %8.0f %-5s %7.2fx\n' "$crypt" "$job" \
            "$(printf '%s\n' "${plain[@]}" | median)" "$unit" \
            "$(printf '%s\n' "${enc[@]}" | median)" "$unit" \
            "$(printf '%s\n' "${ratios[@]}" | median)"
    done
done
