#!/usr/bin/env bash
# Builds reference lvm2 raid LVs with the real lvm2 and kernel in the kernel lab, into DIR:
#   DIR/pv<i>.img   the five PVs (40 MiB each) of VG "lr"
#   DIR/lvs         one line per raid LV: NAME SEGTYPE BYTES SHA256 (of the LV's bytes as the
#                   kernel reads them, after the last write)
#   DIR/lr.vg       vgcfgbackup of the VG; DIR/<lv>.table the kernel's table of each LV
# The LVs: raid1 (2 legs), raid4, raid5_ls, raid5_rs, raid6_zr, raid10, each synced, then
# filled with random data; and "r1f", a 3-leg raid1 whose leg 2 failed under a write (its
# rmeta still says all is well, the other legs' superblocks mark it failed; the VG metadata
# does not know), so leg 2 holds stale data.
#   lvm_raid.sh DIR            runs itself inside the lab (vm-run -w DIR)
#   lvm_raid.sh --inside DIR   the part that runs in the VM
set -euo pipefail
lab=${TESSERA_KERNEL_LAB:-/work/shared/kernel-lab}

if [ "${1:-}" != --inside ]; then
  dir=${1:?usage: lvm_raid.sh DIR}
  [ -x "$lab/vm-run" ] || { echo "lvm_raid.sh: kernel lab missing: $lab/vm-run" >&2; exit 2; }
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  cp "$0" "$dir/lvm_raid.sh"
  exec "$lab/vm-run" -t 1200 -w "$dir" -- "bash $dir/lvm_raid.sh --inside $dir"
fi

dir=$2
cd "$dir"
mkdir -p /tmp/lvmconf
cat > /tmp/lvmconf/lvm.conf <<'C'
devices { obtain_device_list_from_udev = 0 external_device_info_source = "none" }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
global { use_lvmpolld = 0 }
C
export LVM_SYSTEM_DIR=/tmp/lvmconf LVM_SUPPRESS_FD_WARNINGS=1
: > lvs
devs=()
for i in 0 1 2 3 4; do
  rm -f "pv$i.img"; truncate -s 40M "pv$i.img"
  devs+=("$(losetup -f --show "pv$i.img")")
done
pvcreate -q "${devs[@]}"
vgcreate -q -s 1M lr "${devs[@]}"
mk() { # name type args...
  local name=$1 type=$2; shift 2
  lvcreate -q -y -Wn --type "$type" -n "$name" "$@" lr
}
mk r1 raid1 -m 1 -L 8M
mk r4 raid4 -i 2 -I 64k -L 8M
mk r5ls raid5_ls -i 2 -I 16k -L 6M
mk r5rs raid5_rs -i 3 -I 128k -L 6M
mk r6 raid6_zr -i 3 -I 32k -L 6M
mk r10 raid10 -i 2 -m 1 -I 64k -L 8M
mk r1f raid1 -m 2 -L 4M
dmsetup mknodes
names="r1 r4 r5ls r5rs r6 r10 r1f"
for lv in $names; do
  for _ in $(seq 600); do
    pct=$(lvs --noheadings -o sync_percent "lr/$lv" | tr -d ' ')
    [ "$pct" = 100.00 ] && break
    sleep 1
  done
  [ "$pct" = 100.00 ] || { echo "lr/$lv did not sync: $pct"; exit 1; }
done
lvs -a -o +raid_sync_action,sync_percent,devices lr
for lv in $names; do
  dd if=/dev/urandom of="/dev/mapper/lr-$lv" bs=64k oflag=direct status=none 2>/dev/null || true
done
# Leg 2 of r1f fails under the next write: md marks it faulty in the other legs' superblocks.
leg=lr-r1f_rimage_2
sz=$(blockdev --getsz "/dev/mapper/$leg")
dmsetup suspend "$leg"
dmsetup load "$leg" --table "0 $sz error"
dmsetup resume "$leg"
dd if=/dev/urandom of=/dev/mapper/lr-r1f bs=64k count=16 oflag=direct status=none
sleep 1
dmsetup status lr-r1f
for lv in $names; do
  bytes=$(blockdev --getsize64 "/dev/mapper/lr-$lv")
  sha=$(sha256sum < "/dev/mapper/lr-$lv" | cut -d' ' -f1)
  type=$(lvs --noheadings -o segtype "lr/$lv" | tr -d ' ')
  echo "$lv $type $bytes $sha" >> lvs
  dmsetup table "lr-$lv" > "$lv.table"
done
vgcfgbackup -q -f lr.vg lr
vgchange -q -an lr || { dmsetup remove_all; }
dmsetup ls
for d in "${devs[@]}"; do losetup -d "$d"; done
sync
cat lvs
echo lvm-raid-done
