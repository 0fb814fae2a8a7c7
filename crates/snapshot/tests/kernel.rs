//! The real peer: the kernel's dm-snapshot in the kernel lab, over the same image files as
//! tessera's targets, both ways. The kernel writes through its snapshot-origin and snapshot
//! and tessera reads both byte-exact (and prints the same status); tessera writes and the
//! kernel's tables over tessera's images read the same bytes.

mod common;

use std::process::Command;

use common::*;
use sha2::{Digest, Sha256};
use tessera_block::BlockDevice;

const MIB: u64 = 1 << 20;
const SECTORS: u64 = 4 * MIB / SECTOR;

const INSIDE: &str = r#"
set -u
cd "$DIR"
run() { "$@" || echo "lab-failed: $*"; }
# 1: the kernel writes.
O=$(losetup -f --show orig1.img); C=$(losetup -f --show cow1.img)
run dmsetup create --noudevsync kbase --table "0 $SECTORS snapshot-origin $O"
run dmsetup create --noudevsync ksnap --table "0 $SECTORS snapshot $O $C P 8"
dmsetup mknodes
head -c 262144 /dev/urandom > p1; head -c 20480 /dev/urandom > p2; head -c 4096 /dev/urandom > p3
run dd if=p1 of=/dev/mapper/kbase bs=4096 seek=100 conv=fsync status=none
run dd if=p2 of=/dev/mapper/ksnap bs=512 seek=3001 conv=fsync status=none
run dd if=p3 of=/dev/mapper/kbase bs=512 seek=3003 conv=fsync status=none
run dd if=p3 of=/dev/mapper/ksnap bs=4096 seek=900 conv=fsync status=none
echo "k-origin $(sha256sum < /dev/mapper/kbase | cut -d' ' -f1)"
echo "k-snap $(sha256sum < /dev/mapper/ksnap | cut -d' ' -f1)"
echo "k-status $(dmsetup status ksnap)"
run dmsetup remove --noudevsync ksnap
run dmsetup remove --noudevsync kbase
losetup -d $O $C
# 2: the kernel reads what tessera wrote.
O=$(losetup -f --show orig2.img); C=$(losetup -f --show cow2.img)
run dmsetup create --noudevsync kbase2 --table "0 $SECTORS snapshot-origin $O"
run dmsetup create --noudevsync ksnap2 --table "0 $SECTORS snapshot $O $C P 8"
dmsetup mknodes
echo "t-origin $(sha256sum < /dev/mapper/kbase2 | cut -d' ' -f1)"
echo "t-snap $(sha256sum < /dev/mapper/ksnap2 | cut -d' ' -f1)"
echo "t-status $(dmsetup status ksnap2)"
run dmsetup remove --noudevsync ksnap2
run dmsetup remove --noudevsync kbase2
losetup -d $O $C
echo snapshot-lab-done
"#;

fn sha(dev: &dyn BlockDevice) -> String {
    Sha256::digest(read_all(dev))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn kernel_and_tessera_read_each_others_snapshots() {
    let img = Images::new();
    let dir = img.dir.path().to_path_buf();
    let resolve = |n: &str| open_file(n);
    // Images for the kernel to write: an origin with data and a zeroed COW device.
    let orig1 = img.file("orig1.img", 4 * MIB);
    let cow1 = img.file("cow1.img", 4 * MIB);
    fill(&*open_file(&orig1).unwrap(), 21);
    // Images tessera writes.
    let orig2 = img.file("orig2.img", 4 * MIB);
    let cow2 = img.file("cow2.img", 4 * MIB);
    let (t_origin, t_snap, t_status) = {
        let base = activate("tbase", &origin_table(&orig2, SECTORS), &resolve);
        fill(&base, 22);
        let snap = activate(
            "tsnap",
            &snapshot_table(&orig2, &cow2, SECTORS, 8),
            &resolve,
        );
        let mut rng = Rng(23);
        for i in 0..60 {
            let len = (1 + rng.below(64)) * SECTOR;
            let at = rng.below(SECTORS - 64) * SECTOR;
            let d = rng.bytes(len as usize);
            if i % 2 == 0 {
                base.write_at(&d, at).unwrap();
            } else {
                snap.write_at(&d, at).unwrap();
            }
        }
        base.flush().unwrap();
        snap.flush().unwrap();
        (sha(&base), sha(&snap), snap.status())
    };

    let script = INSIDE
        .replace("$DIR", &dir.display().to_string())
        .replace("$SECTORS", &SECTORS.to_string());
    std::fs::write(dir.join("inside.sh"), script).unwrap();
    let lab =
        std::env::var("TESSERA_KERNEL_LAB").unwrap_or_else(|_| "/work/shared/kernel-lab".into());
    let out = Command::new(format!("{lab}/vm-run"))
        .args(["-t", "300", "-w"])
        .arg(&dir)
        .arg("--")
        .arg(format!("bash {}/inside.sh", dir.display()))
        .output()
        .expect("kernel lab runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("snapshot-lab-done"), "lab:\n{text}");
    assert!(!text.contains("lab-failed"), "lab:\n{text}");
    let value = |prefix: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .trim()
            .to_string()
    };
    eprintln!(
        "{}",
        text.lines()
            .filter(|l| l.starts_with("k-") || l.starts_with("t-"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The kernel read tessera's snapshot and origin as tessera did.
    assert_eq!(value("t-origin "), t_origin, "origin written by tessera");
    assert_eq!(value("t-snap "), t_snap, "snapshot written by tessera");
    assert_eq!(
        format!(
            "0 {SECTORS} snapshot {}",
            value("t-status 0 8192 snapshot ")
        ),
        t_status.trim_end(),
        "status of tessera's store, as the kernel prints it"
    );

    // tessera reads what the kernel wrote.
    let base = activate("kbase", &origin_table(&orig1, SECTORS), &resolve);
    let snap = activate(
        "ksnap",
        &snapshot_table(&orig1, &cow1, SECTORS, 8),
        &resolve,
    );
    assert_eq!(
        sha(&base),
        value("k-origin "),
        "origin written by the kernel"
    );
    assert_eq!(
        sha(&snap),
        value("k-snap "),
        "snapshot written by the kernel"
    );
    assert_eq!(
        snap.status().trim_end(),
        format!(
            "0 {SECTORS} snapshot {}",
            value("k-status 0 8192 snapshot ")
        ),
        "status of the kernel's store"
    );
}
