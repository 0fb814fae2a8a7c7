T=__TESSERA__
mkdir -p /run/mdadm
for i in 0 1 2 3; do
  truncate -s 48M d$i.img
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
examine() { mdadm -E $2 | grep -E "state\[|init state|Online|Failed|Rebuilding|Spare|Consistent|Physical Disks|Virtual Disks" | sed "s/^ */$1|examine|/"; }
in_sync() { grep -q in_sync /sys/block/$(md $1)/md/dev-$2/state 2>/dev/null && [ "$(cat /sys/block/$(md $1)/md/sync_action)" = idle ]; }
sums() { for v in dvol5 dvol1; do echo "$1|$v|sum|$(sha256sum < $(vol $v) | cut -d' ' -f1)"; done; }
check() {
  local m; m=$(md $2)
  echo check > /sys/block/$m/md/sync_action
  sleep 1; mdadm --wait $(vol $2)
  echo "$1|$2|mismatch|$(cat /sys/block/$m/md/mismatch_cnt)"
  echo "$1|$2|degraded|$(cat /sys/block/$m/md/degraded)"
}

# The fourth disk stays a global spare of the container (mdadm's --add to a DDF container
# crashes in this mdadm).
mdadm --create /dev/md/ddf0 -e ddf -n 4 --run /dev/loop0 /dev/loop1 /dev/loop2 /dev/loop3 || exit 1
mdadm --create /dev/md/dvol5 -l 5 -n 3 --size=8M --chunk=64 --assume-clean --run /dev/loop0 /dev/loop1 /dev/loop2 || exit 1
mdadm --create /dev/md/dvol1 -l 1 -n 2 --size=4M --assume-clean --run /dev/loop0 /dev/loop1 || exit 1
sleep 1
cat /proc/mdstat
for v in dvol5 dvol1; do dd if=/dev/urandom of=/dev/md/$v bs=64k oflag=direct status=none; done
sums made
mdadm --stop /dev/md/dvol5 /dev/md/dvol1 && mdadm --stop /dev/md/ddf0 || exit 1
rm -f /dev/md/*
examine made /dev/loop0

echo "== tessera runs them writable"
$T --devices $DEVS activate md/dvol5 md/dvol1 || exit 1
cat /proc/mdstat
for v in dvol5 dvol1; do echo "run|$v|version|$(cat /sys/block/$(md $v)/md/metadata_version | sed -E 's/md[0-9]+/mdN/')"; done
dd if=/dev/urandom of=w1 bs=64k count=16 status=none
for v in dvol5 dvol1; do
  timeout 60 dd if=w1 of=$(vol $v) bs=64k seek=4 oflag=direct status=none; echo "run|$v|write|$?"
done
examine written /dev/loop0
# Idle: the monitor records both virtual disks consistent again (what mdmon leaves; md's
# own array_state is only reported, since it may go active again on a later pass).
consistent() { mdadm -E /dev/loop0 | grep -q "state\[0\] : Optimal, Consistent" && mdadm -E /dev/loop0 | grep -q "state\[1\] : Optimal, Consistent"; }
wait_until 60 idle-consistent consistent
echo "idle|array_state|$(cat /sys/block/$(md dvol5)/md/array_state)"
examine idle /dev/loop0
sums before
# A member of dvol5 only fails (dvol1 is on the first two disks).
cat /proc/mdstat
M=$(for d in /sys/block/$(md dvol5)/md/dev-*; do b=${d##*/dev-}; [ -e /sys/block/$(md dvol1)/md/dev-$b ] || echo $b; done | head -1)
echo "fail|member|$M"
SP=$(for i in 0 1 2 3; do [ -e /sys/block/$(md dvol5)/md/dev-loop$i ] || [ -e /sys/block/$(md dvol1)/md/dev-loop$i ] || echo loop$i; done | head -1)
echo "fail|spare|$SP"
s=$(date +%s%N)
mdadm $(vol dvol5) --fail /dev/$M
wait_until 120 spare-joins test -e /sys/block/$(md dvol5)/md/dev-$SP
wait_until 600 rebuilt in_sync dvol5 $SP
echo "timing|rebuild|$(( ($(date +%s%N) - s) / 1000000 )) ms"
examine rebuilt-running /dev/loop0
sums after
$T --devices $DEVS deactivate md/ddf0 || exit 1
cat /run/tessera/*.log | sed 's/^/monitor|/'
examine stopped /dev/loop0
mdadm --assemble /dev/md/ddf0 /dev/loop0 /dev/loop1 /dev/loop2 /dev/loop3
mdadm -I /dev/md/ddf0
wait_until 60 mdadm-runs test -n "$(vol dvol5)" -a -n "$(vol dvol1)"
cat /proc/mdstat
sums mdadm
for v in dvol5 dvol1; do check mdadm $v; done
mdadm --stop $(vol dvol5) $(vol dvol1); mdadm --stop /dev/md/ddf0
echo lab-done
