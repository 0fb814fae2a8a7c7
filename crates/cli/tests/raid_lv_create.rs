//! Raid LVs that `tessera lv create --type raid*` makes are lvm2's own: tessera serves them
//! and fills them with random data over NBD, then in the kernel lab the real lvm2 activates
//! the VG, the kernel's dm-raid syncs each (its first activation of new metadata sub-LVs),
//! the bytes at /dev/VG/LV equal what was written, and `lvs -o +raid_sync_action,
//! raid_mismatch_count` is idle with 0 mismatches, also after lvm2's own `check`.
//!
//! Before the lab, one PV is lost: `tessera lv repair` moves the images it held to other
//! PVs and rebuilds them, the VG drops the PV, tessera serves the same bytes again, and the
//! lab's lvm2 activates the repaired VG over the PVs that are left.

mod common;

use std::process::Command;

use sha2::{Digest, Sha256};

use common::{run_ok, serve};

/// (LV, lv create arguments, size)
const LVS: &[(&str, &[&str], &str)] = &[
    ("r1", &["--type", "raid1", "-m", "1"], "4M"),
    ("r1x3", &["--type", "raid1", "-m", "2"], "4M"),
    ("r4", &["--type", "raid4", "-i", "2", "-I", "64k"], "4M"),
    ("r5", &["--type", "raid5", "-i", "2", "-I", "32k"], "4M"),
    (
        "r5rs",
        &["--type", "raid5_rs", "-i", "3", "-I", "16k"],
        "4M",
    ),
    ("r6", &["--type", "raid6", "-i", "3", "-I", "64k"], "4M"),
    (
        "r10",
        &["--type", "raid10", "-i", "2", "-m", "1", "-I", "64k"],
        "8M",
    ),
];

const INSIDE: &str = r#"set -u
cd "$(dirname "$0")"
mkdir -p /tmp/lvmconf
cat > /tmp/lvmconf/lvm.conf <<'C'
devices { obtain_device_list_from_udev = 0 external_device_info_source = "none" }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
global { use_lvmpolld = 0 }
C
export LVM_SYSTEM_DIR=/tmp/lvmconf LVM_SUPPRESS_FD_WARNINGS=1
devs=()
for f in pv-*.img; do devs+=("$(losetup -f --show "$f")"); done
vgchange -q -ay rc || { echo "vgchange-failed"; exit 1; }
dmsetup mknodes
lvs -a -o +segtype,devices rc
wait_idle() {
  for _ in $(seq 600); do
    pct=$(lvs --noheadings -o sync_percent "rc/$1" | tr -d ' ')
    act=$(lvs --noheadings -o raid_sync_action "rc/$1" | tr -d ' ')
    [ "$pct" = 100.00 ] && [ "$act" = idle ] && return 0
    sleep 0.5
  done
  echo "rc/$1 never went idle: $pct $act"
}
while read -r lv; do
  wait_idle "$lv"
  sha=$(sha256sum < "/dev/mapper/rc-$lv" | cut -d' ' -f1)
  first=$(lvs --noheadings -o raid_sync_action,raid_mismatch_count "rc/$lv" | xargs | tr ' ' ,)
  lvchange -q --syncaction check "rc/$lv"
  sleep 0.5
  wait_idle "$lv"
  after=$(lvs --noheadings -o raid_sync_action,raid_mismatch_count "rc/$lv" | xargs | tr ' ' ,)
  echo "lv $lv $sha $first $after"
done < list
vgchange -q -an rc
for d in "${devs[@]}"; do losetup -d "$d"; done
echo raid-create-done
"#;

#[test]
fn raid_lvs_tessera_creates_are_activated_by_lvm2_byte_exact_and_clean() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let state = d.join("state");
    let pvs = common::image_files(d, "pv", 6, 64 << 20);
    let devices = d.join("pv-*.img").display().to_string();
    let tessera = |args: &[&str]| common::tessera(&devices, &state, args);
    let mut create = vec!["vg", "create", "rc", "-s", "1M"];
    create.extend(pvs.iter().map(String::as_str));
    tessera(&create);
    for (lv, args, size) in LVS {
        let name = format!("rc/{lv}");
        let mut a = vec!["lv", "create", name.as_str(), "-L", size];
        a.extend_from_slice(args);
        tessera(&a);
    }

    // Fill each through tessera's raid target over NBD.
    let served = serve(&devices, &state, &[]);
    let mut shas = Vec::new();
    for (i, (lv, _, _)) in LVS.iter().enumerate() {
        let size: u64 = run_ok(
            Command::new("nbdinfo")
                .arg("--size")
                .arg(format!("{}/rc/{lv}", served.addr)),
        )
        .trim()
        .parse()
        .unwrap();
        let data: Vec<u8> = (0..size)
            .map(|k| ((k * 2_654_435_761 + i as u64 * 97) >> 13) as u8)
            .collect();
        let file = d.join(format!("{lv}.data"));
        std::fs::write(&file, &data).unwrap();
        run_ok(
            Command::new("nbdcopy")
                .arg(&file)
                .arg(format!("{}/rc/{lv}", served.addr)),
        );
        let back = d.join(format!("{lv}.back"));
        run_ok(
            Command::new("nbdcopy")
                .arg(format!("{}/rc/{lv}", served.addr))
                .arg(&back),
        );
        assert!(
            std::fs::read(&back).unwrap() == data,
            "{lv}: read back through tessera"
        );
        shas.push(format!("{:x}", Sha256::digest(&data)));
        std::fs::remove_file(&back).unwrap();
        std::fs::remove_file(&file).unwrap();
    }
    drop(served);

    // PV 0 is lost; the raid LVs with images there are repaired onto the others.
    std::fs::rename(d.join("pv-0.img"), d.join("lost.img")).unwrap();
    let repair = tessera(&["lv", "repair", "rc"]);
    eprintln!("{repair}");
    assert!(repair.contains("repaired"), "{repair}");
    let moved = repair.lines().filter(|l| l.contains("rebuilt")).count();
    assert!(moved >= 2, "images on pv0 were moved: {repair}");
    let served = serve(&devices, &state, &[]);
    for ((lv, _, _), sha) in LVS.iter().zip(&shas) {
        let back = d.join(format!("{lv}.back"));
        run_ok(
            Command::new("nbdcopy")
                .arg(format!("{}/rc/{lv}", served.addr))
                .arg(&back),
        );
        let got = format!("{:x}", Sha256::digest(std::fs::read(&back).unwrap()));
        assert_eq!(&got, sha, "{lv}: the same bytes after the repair");
        std::fs::remove_file(&back).unwrap();
    }
    drop(served);

    let list: String = LVS.iter().map(|(lv, _, _)| format!("{lv}\n")).collect();
    std::fs::write(d.join("list"), list).unwrap();
    let text = common::lab_script(d, INSIDE, 600);
    assert!(text.contains("raid-create-done"), "lab:\n{text}");
    for ((lv, _, _), sha) in LVS.iter().zip(&shas) {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("lv {lv} ")))
            .unwrap_or_else(|| panic!("{lv}: no result in\n{text}"));
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            f[2], sha,
            "{lv}: the kernel reads what tessera wrote\n{text}"
        );
        assert_eq!(f[3], "idle,0", "{lv}: after the first sync\n{text}");
        assert_eq!(f[4], "idle,0", "{lv}: after lvm2's check\n{text}");
        eprintln!("{line}");
    }
}
