//! `tessera serve --ublk` in the kernel lab (6.12, ublk_drv), one VM boot: a linear LV on
//! image files tessera made and an MD raid5 tessera made appear as /dev/ublkbN; ext4 is made,
//! mounted and filled through them; the server is killed with SIGKILL while the file systems
//! stay mounted and a new server reattaches the same devices (user recovery); the files read
//! back with the same sha256 and fsck finds the file systems clean. fio then runs through
//! ublk and through the kernel NBD client on tessera's NBD export of the same LV, and the
//! ratio of their IOPS is printed (the lab's CPU is emulated: only the ratio means anything).

mod common;

use common::lab_line;

const LAB_SCRIPT: &str = r#"set -eu
cd "$DIR"
ip link set lo up 2>/dev/null || true
[ -e /dev/ublk-control ] || { echo "NO-UBLK-CONTROL"; exit 1; }
mkdir -p /run/ublksrvd
DEVS=pv-0.img,pv-1.img,r5-0.img,r5-1.img,r5-2.img,r5-3.img
# The control socket lives in the guest's own /tmp: the shared folder cannot hold sockets.
start() {
  "$TESSERA" --devices $DEVS --state-dir /tmp/tessera-state serve --ublk --listen 127.0.0.1:10809 > serve$1.log 2>&1 &
  pid=$!
  for _ in $(seq 1200); do
    grep -q '^control socket' serve$1.log && break
    kill -0 $pid 2>/dev/null || { echo "SERVE-DIED $1"; cat serve$1.log; exit 1; }
    sleep 0.1
  done
  grep -q '^control socket' serve$1.log || { echo "SERVE-NOT-READY $1"; cat serve$1.log; exit 1; }
  sed "s/^/SERVE$1 /" serve$1.log
}
# The /dev/ublkbN that serve run $2 printed for volume $1.
dev_of() { awk -v v="$1" '$1 == "ublk" && $3 == v { print $2 }' serve$2.log; }
wait_block() {
  for _ in $(seq 600); do [ -b "$1" ] && return 0; sleep 0.1; done
  echo "NO-BLOCK-DEVICE $1"; exit 1
}
start 1
i=0
for v in vg0/lv md/r5; do
  d=$(dev_of $v 1)
  [ -n "$d" ] || { echo "NO-UBLK-LINE $v"; exit 1; }
  wait_block "$d"
  echo "DEV $v $d"
  mkfs.ext4 -q -F "$d"
  mkdir -p /tmp/mnt$i
  mount "$d" /tmp/mnt$i
  for f in a b c; do head -c 3M /dev/urandom > /tmp/mnt$i/$f; done
  mkdir /tmp/mnt$i/dir && head -c 700k /dev/urandom > /tmp/mnt$i/dir/small
  (cd /tmp/mnt$i && sha256sum a b c dir/small) > /tmp/sums$i
  i=$((i + 1))
done
sync
kill -9 $pid
wait $pid 2>/dev/null || true
for v in vg0/lv md/r5; do
  [ -b "$(dev_of $v 1)" ] && echo "KEPT $v $(dev_of $v 1)"
done
start 2
i=0
for v in vg0/lv md/r5; do
  d=$(dev_of $v 2)
  echo "AFTER $v $d $(grep -c "^ublk $d $v (reattached)$" serve2.log)"
  wait_block "$d"
  # Read the files from the device, not from the page cache filled before the kill.
  echo 3 > /proc/sys/vm/drop_caches
  if (cd /tmp/mnt$i && sha256sum -c --quiet /tmp/sums$i); then echo "SUMS-OK $v"; else echo "SUMS-BAD $v"; fi
  umount /tmp/mnt$i
  if fsck.ext4 -fn "$d" > /tmp/fsck$i 2>&1; then echo "FSCK-CLEAN $v"; else echo "FSCK-DIRTY $v"; cat /tmp/fsck$i; fi
  mount "$d" /tmp/mnt$i
  if (cd /tmp/mnt$i && sha256sum -c --quiet /tmp/sums$i); then echo "REMOUNT-SUMS-OK $v"; fi
  umount /tmp/mnt$i
  i=$((i + 1))
done
# fio through ublk and through the kernel NBD client on the same LV, same run.
L=$(dev_of vg0/lv 2)
nbd-client 127.0.0.1 10809 /dev/nbd0 -N vg0/lv -b 4096 >/dev/null
wait_block /dev/nbd0
run_fio() {
  fio --name=bench --filename="$1" --direct=1 --ioengine=libaio --rw=randrw --bs=4k \
    --iodepth=16 --size=64M --runtime=10 --time_based --output-format=terse --terse-version=3 \
    | awk -F';' '{ printf "%d\n", $8 + $49 }'
}
echo "FIO-UBLK $(run_fio "$L")"
echo "FIO-NBD $(run_fio /dev/nbd0)"
nbd-client -d /dev/nbd0 >/dev/null 2>&1 || true
echo LAB-DONE
"#;

#[test]
fn ublk_devices_survive_a_killed_server() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let state = d.join("state");
    // A linear LV spanning two PVs, and a raid5 of four members, all made by tessera.
    let pvs = common::image_files(d, "pv", 2, 64 << 20);
    common::tessera(
        &pvs.join(","),
        &state,
        &["vg", "create", "vg0", &pvs[0], &pvs[1]],
    );
    common::tessera(
        &pvs.join(","),
        &state,
        &["lv", "create", "vg0/lv", "-l", "24"],
    );
    let members = common::image_files(d, "r5", 4, 24 << 20);
    let mut args = vec!["md", "create", "r5", "--level", "5", "--chunk", "64k"];
    args.extend(members.iter().map(String::as_str));
    common::tessera(&members.join(","), &state, &args);

    // A copy in the lab's working directory: the VM sees the host's files, but not its /tmp,
    // where a checkout (and its target directory) may live.
    let tessera = d.join("tessera");
    std::fs::copy(common::tessera_path(), &tessera).unwrap();
    let script = format!(
        "DIR={}\nTESSERA={}\n{LAB_SCRIPT}",
        d.display(),
        tessera.display()
    );
    let path = d.join("inside.sh");
    std::fs::write(&path, script).unwrap();
    let lab =
        std::env::var("TESSERA_KERNEL_LAB").unwrap_or_else(|_| "/work/shared/kernel-lab".into());
    let started = std::time::Instant::now();
    let out = std::process::Command::new(format!("{lab}/vm-run"))
        .args(["-k", "6.12", "-t", "900", "-w"])
        .arg(d)
        .arg("--")
        .arg(format!("bash {}", path.display()))
        .output()
        .expect("the kernel lab runs");
    let out =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    eprintln!("{out}");
    eprintln!("lab took {:.0?}", started.elapsed());
    assert!(out.contains("LAB-DONE"), "the lab did not finish:\n{out}");

    for volume in ["vg0/lv", "md/r5"] {
        let device = lab_line(&out, &format!("DEV {volume} ")).to_string();
        assert!(device.starts_with("/dev/ublkb"), "{volume}: {device}");
        // The kernel kept the device while no server ran, the new server reattached that
        // same device, and the file system came through whole.
        assert_eq!(lab_line(&out, &format!("KEPT {volume} ")), device);
        assert_eq!(
            lab_line(&out, &format!("AFTER {volume} ")),
            format!("{device} 1"),
            "{volume} was not reattached to {device}"
        );
        for check in ["SUMS-OK", "FSCK-CLEAN", "REMOUNT-SUMS-OK"] {
            assert!(
                out.lines().any(|l| l == format!("{check} {volume}")),
                "{volume}: no {check}:\n{out}"
            );
        }
    }
    let ublk: u64 = lab_line(&out, "FIO-UBLK ").parse().unwrap();
    let nbd: u64 = lab_line(&out, "FIO-NBD ").parse().unwrap();
    assert!(
        ublk > 0 && nbd > 0,
        "fio did no I/O: ublk {ublk}, nbd {nbd}"
    );
    eprintln!(
        "fio 4k randrw QD16, IOPS: ublk {ublk}, kernel NBD client {nbd}, ublk/nbd = {:.2}",
        ublk as f64 / nbd as f64
    );
}
