#!/usr/bin/env bash
# Builds reference MD members with the real mdadm in the kernel lab, into DIR:
#   DIR/<set>-<n>.img   16 MiB members of array set <set>
#   DIR/sets            one line per set: "<set> <metadata> <members>"
# Sets: v090, v10, v11, v12 (RAID5, 3 members, 64 KiB chunk), bitmap (1.2 with an internal
# bitmap) and spare (1.2 RAID5 of 3 members plus a spare).
#   md_fixtures.sh DIR            runs itself inside the lab (vm-run -w DIR)
#   md_fixtures.sh --inside DIR   the part that runs in the VM
set -euo pipefail
lab=${TESSERA_KERNEL_LAB:-/work/shared/kernel-lab}

if [ "${1:-}" != --inside ]; then
  dir=${1:?usage: md_fixtures.sh DIR}
  [ -x "$lab/vm-run" ] || { echo "md_fixtures.sh: kernel lab missing: $lab/vm-run" >&2; exit 2; }
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  # The guest sees only DIR and the host's paths outside /tmp; the checkout may be in /tmp,
  # so the script runs from a copy in DIR.
  cp "$0" "$dir/md_fixtures.sh"
  exec "$lab/vm-run" -t 500 -w "$dir" -- "bash $dir/md_fixtures.sh --inside $dir"
fi

dir=$2
cd "$dir"
: > sets
loopn=0
make_set() { # name metadata members spares extra-args...
  local name=$1 meta=$2 n=$3 spares=$4; shift 4
  local devs=() i
  for ((i = 0; i < n + spares; i++)); do
    rm -f "$name-$i.img"; truncate -s 16M "$name-$i.img"
    losetup "/dev/loop$loopn" "$name-$i.img"
    devs+=("/dev/loop$loopn"); loopn=$((loopn + 1))
  done
  local extra=()
  [ "$spares" -gt 0 ] && extra+=(--spare-devices="$spares")
  [ "$meta" != 0.90 ] && extra+=(--homehost=labhost --name="$name")
  mdadm --create /dev/md0 --run --assume-clean --metadata="$meta" --level=5 \
    --raid-devices="$n" --chunk=64 "${extra[@]}" "$@" "${devs[@]}"
  # Some writes, so that the event counts are not all 1.
  dd if=/dev/urandom of=/dev/md0 bs=64k count=4 oflag=direct status=none
  mdadm --detail /dev/md0 > "$name.detail"
  mdadm --stop /dev/md0
  for d in "${devs[@]}"; do losetup -d "$d"; done
  echo "$name $meta $((n + spares))" >> sets
}
make_set v090 0.90 3 0
make_set v10 1.0 3 0
make_set v11 1.1 3 0
make_set v12 1.2 3 0
make_set bitmap 1.2 3 0 --bitmap=internal
make_set spare 1.2 3 1
sync
echo md-fixtures-done
