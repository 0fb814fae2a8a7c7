export IMSM_NO_PLATFORM=1 IMSM_DEVNAME_AS_SERIAL=1
T=__TESSERA__
mkdir -p /run/mdadm
for i in 0 1 2 3; do
  truncate -s 40M d$i.img
  [ -e /dev/loop$i ] || mknod /dev/loop$i b 7 $i
  losetup /dev/loop$i d$i.img || exit 1
done
DEVS=/dev/loop0,/dev/loop1,/dev/loop2,/dev/loop3
vol() { ls -d /dev/md/$1 /dev/md/$1_* 2>/dev/null | head -1; }
md() { basename $(readlink -f $(vol $1)); }
# wait_until SECONDS WHAT COMMAND...: polls for a state to be reached; a bound, not a window.
wait_until() {
  local limit=$1 what=$2; shift 2
  local end=$(( $(date +%s) + limit ))
  until "$@"; do
    if [ $(date +%s) -ge $end ]; then echo "timeout|$what"; return 1; fi
    sleep 0.2
  done
}
examine() { mdadm -E $2 | grep -E "^\[|Map State|Migrate State|Checkpoint|Dirty State|Failed disk|Slots|Serial|State :|Disk..|Family" | sed "s/^ */$1|examine|/"; }
has_member() { [ -e /sys/block/$(md vol5)/md/dev-$1 ]; }
rebuild_recorded_end() {
  mdadm -E $1 | grep -q "Map State : normal" && mdadm -E $1 | grep -q "Migrate State : idle"
}
# "UNITS (SECTORS-A-UNIT)" of the rebuild's checkpoint as mdadm reads it.
checkpoint() { mdadm -E $1 | awk '/Checkpoint :/{print $3, $4; exit}'; }
checkpoint_moved() { c=$(checkpoint $1); [ -n "$c" ] && [ "${c%% *}" -gt 0 ]; }
mdadm_check() {
  local who=$1 m; m=$(md vol5)
  echo "$who|sum|$(sha256sum < $(vol vol5) | cut -d' ' -f1)"
  echo check > /sys/block/$m/md/sync_action
  sleep 1; mdadm --wait $(vol vol5)
  echo "$who|mismatch|$(cat /sys/block/$m/md/mismatch_cnt)"
  echo "$who|degraded|$(cat /sys/block/$m/md/degraded)"
  echo "$who|mdstat|$(grep -A1 "^$m :" /proc/mdstat | tr '\n' ' ')"
}

mdadm --create /dev/md/imsm0 -e imsm -n 3 --run /dev/loop0 /dev/loop1 /dev/loop2 || exit 1
mdadm --create /dev/md/vol5 -l 5 -n 3 --size=16M --chunk=64 --run /dev/md/imsm0 || exit 1
mdadm --wait /dev/md/vol5
mdadm --add /dev/md/imsm0 /dev/loop3 || exit 1
sleep 1
dd if=/dev/urandom of=/dev/md/vol5 bs=64k oflag=direct status=none
echo "made|sum|$(sha256sum < /dev/md/vol5 | cut -d' ' -f1)"
mdadm --stop /dev/md/vol5 && mdadm --stop /dev/md/imsm0 || exit 1
rm -f /dev/md/*
examine made /dev/loop3

echo "== one: a member fails, the monitor rebuilds onto the spare"
$T --devices $DEVS activate md/vol5 || exit 1
dd if=/dev/urandom of=w1 bs=64k count=32 status=none
dd if=w1 of=/dev/md/vol5 bs=64k seek=8 oflag=direct status=none; echo "one|write|$?"
echo "one|sum-before|$(sha256sum < /dev/md/vol5 | cut -d' ' -f1)"
s=$(date +%s%N)
mdadm /dev/md/vol5 --fail /dev/loop1
wait_until 120 one-spare-joins has_member loop3
wait_until 600 one-rebuild-recorded rebuild_recorded_end /dev/loop0
echo "timing|one-rebuild|$(( ($(date +%s%N) - s) / 1000000 )) ms"
cat /proc/mdstat
echo "one|sum-after|$(sha256sum < /dev/md/vol5 | cut -d' ' -f1)"
$T --devices $DEVS deactivate md/imsm0 || exit 1
cat /run/tessera/*.log | sed 's/^/monitor-one|/'
examine one /dev/loop0
mdadm --assemble /dev/md/imsm0 /dev/loop0 /dev/loop2 /dev/loop3 || exit 1
mdadm -I /dev/md/imsm0
wait_until 60 one-mdadm-runs test -n "$(vol vol5)"
mdadm_check one-mdadm
# loop1 comes back as a new spare, as an administrator would add a replacement.
mdadm --zero-superblock /dev/loop1
mdadm --add /dev/md/imsm0 /dev/loop1 || exit 1
sleep 2
examine one-added /dev/loop1
mdadm --stop $(vol vol5) && mdadm --stop /dev/md/imsm0 || exit 1
rm -f /dev/md/*

# A monitor killed mid-rebuild and the volume re-assembled by tessera is not covered yet:
# the re-assembly refused to start the volume (slots missing) in the lab; mdadm continued
# the rebuild from tessera's records.
echo lab-done
