#!/usr/bin/env bash
# Builds reference MD arrays with the real mdadm and kernel in the kernel lab, into DIR:
#   DIR/<name>-<i>.img     the members (4 MiB each, zeroed, then the whole array written
#                          with random data through /dev/md0)
#   DIR/<name>.detail      mdadm --detail while it ran
#   DIR/arrays             one line per array: NAME LEVEL LAYOUT CHUNK_KIB METADATA MEMBERS
#                          ARRAY_BYTES SHA256 (of the array's bytes as the kernel reads them)
# Every level and layout md has (raid0, raid1, raid4, raid5 in all six layouts, raid6 in
# eleven, raid10 near/far/offset), metadata 0.90/1.0/1.1/1.2, chunks 4K to 512K, 2 to 8
# members; and "stale": a raid5 that lost a member, whose superblock still says active,
# and was written to afterwards.
#   md_arrays.sh DIR            runs itself inside the lab (vm-run -w DIR)
#   md_arrays.sh --inside DIR   the part that runs in the VM
set -euo pipefail
lab=${TESSERA_KERNEL_LAB:-/work/shared/kernel-lab}

if [ "${1:-}" != --inside ]; then
  dir=${1:?usage: md_arrays.sh DIR}
  [ -x "$lab/vm-run" ] || { echo "md_arrays.sh: kernel lab missing: $lab/vm-run" >&2; exit 2; }
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  # The guest sees DIR and the host's paths outside /tmp; run from a copy in DIR.
  cp "$0" "$dir/md_arrays.sh"
  exec "$lab/vm-run" -t 900 -w "$dir" -- "bash $dir/md_arrays.sh --inside $dir"
fi

dir=$2
cd "$dir"
: > arrays
devs=()
attach() { # name count
  local i
  devs=()
  for ((i = 0; i < $2; i++)); do
    rm -f "$1-$i.img"; truncate -s 4M "$1-$i.img"
    devs+=("$(losetup -f --show "$1-$i.img")")
  done
}
detach() {
  local d
  for d in "${devs[@]}"; do losetup -d "$d"; done
}
record() { # name level layout chunk meta n
  local bytes sha
  bytes=$(blockdev --getsize64 /dev/md0)
  sha=$(sha256sum < /dev/md0 | cut -d' ' -f1)
  echo "$1 $2 $3 $4 $5 $6 $bytes $sha" >> arrays
}
make_array() { # name level layout chunk_kib metadata members
  local name=$1 level=$2 layout=$3 chunk=$4 meta=$5 n=$6
  attach "$name" "$n"
  local args=(--run --assume-clean --metadata="$meta" --level="$level" --raid-devices="$n")
  [ "$layout" != - ] && args+=(--layout="$layout")
  [ "$chunk" != - ] && args+=(--chunk="$chunk")
  [ "$meta" != 0.90 ] && args+=(--homehost=lab --name="$name")
  mdadm --create /dev/md0 "${args[@]}" "${devs[@]}" 2>&1 | tail -3
  # Zeroed members with --assume-clean are consistent; writing the whole array through md
  # makes every stripe's parity md's own.
  dd if=/dev/urandom of=/dev/md0 bs=64k oflag=direct status=none 2>/dev/null || true
  mdadm --detail /dev/md0 > "$name.detail"
  record "$name" "$level" "$layout" "$chunk" "$meta" "$n"
  mdadm --stop /dev/md0 >/dev/null 2>&1
  detach
}

make_array r0-4k-2 0 - 4 1.2 2
make_array r0-64k-3 0 - 64 1.1 3
make_array r0-512k-4 0 - 512 1.0 4
make_array r1-2 1 - - 1.2 2
make_array r1-3 1 - - 1.1 3
make_array r4-64k-3 4 - 64 1.2 3
make_array r4-16k-5 4 - 16 0.90 5
make_array r5-la-4 5 left-asymmetric 32 1.2 4
make_array r5-ra-4 5 right-asymmetric 16 1.1 4
make_array r5-ls-3 5 left-symmetric 64 1.0 3
make_array r5-ls-8 5 left-symmetric 8 1.2 8
make_array r5-rs-5 5 right-symmetric 128 0.90 5
make_array r5-pf-3 5 parity-first 64 1.2 3
make_array r5-pl-4 5 parity-last 32 1.2 4
make_array r6-ls-4 6 left-symmetric 64 1.2 4
make_array r6-la-5 6 left-asymmetric 32 1.2 5
make_array r6-ra-6 6 right-asymmetric 16 1.0 6
make_array r6-rs-5 6 right-symmetric 4 0.90 5
make_array r6-pf-4 6 parity-first 64 1.2 4
make_array r6-pl-5 6 parity-last 64 1.1 5
make_array r6-zr-6 6 ddf-zero-restart 64 1.2 6
make_array r6-nr-5 6 ddf-N-restart 32 1.2 5
make_array r6-nc-7 6 ddf-N-continue 64 1.2 7
make_array r6-ls6-5 6 left-symmetric-6 64 1.2 5
make_array r6-ra6-4 6 right-asymmetric-6 128 1.2 4
make_array r10-n2-4 10 n2 64 1.2 4
make_array r10-n2-3 10 n2 32 1.2 3
make_array r10-n3-5 10 n3 16 1.1 5
make_array r10-f2-4 10 f2 64 1.2 4
make_array r10-f2-3 10 f2 512 1.0 3
make_array r10-o2-4 10 o2 64 1.2 4
make_array r10-o3-5 10 o3 8 0.90 5

# A raid5 that lost member 2 (failed and removed: its own superblock still says active, with
# an older event count), then written to again.
attach stale 4
mdadm --create /dev/md0 --run --assume-clean --metadata=1.2 --level=5 --raid-devices=4 \
  --chunk=64 --homehost=lab --name=stale "${devs[@]}" 2>/dev/null
dd if=/dev/urandom of=/dev/md0 bs=64k oflag=direct status=none 2>/dev/null || true
mdadm /dev/md0 --fail "${devs[2]}" >/dev/null 2>&1
mdadm /dev/md0 --remove "${devs[2]}" >/dev/null 2>&1
dd if=/dev/urandom of=/dev/md0 bs=64k count=16 oflag=direct status=none
mdadm --detail /dev/md0 > stale.detail
record stale 5 left-symmetric 64 1.2 4
mdadm --stop /dev/md0 >/dev/null 2>&1
detach
sync
echo md-arrays-done
