//! Whole-device FAT12/16/32, exFAT and NTFS made by the real mkfs tools, and DOS partition
//! tables made by sfdisk (one with a FAT filesystem in its first partition), each compared
//! field by field with `blkid -p -o export` on the same image: TYPE, UUID, LABEL,
//! LABEL_FATBOOT, VERSION, and whether there is a partition table (PTTYPE). The tools
//! must be installed (dosfstools, exfatprogs, ntfs-3g, fdisk, util-linux): these tests
//! fail, not skip, without them.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tessera_block::{BlockDevice, FileDevice, OpenOptions, SliceDevice};
use tessera_formats::partition::{read_table, Scheme};
use tessera_formats::signature::{probe, Signature};

fn run(tool: &str, args: &[&str], stdin: Option<&str>) {
    let mut cmd = Command::new(tool);
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {tool} ({e}): is its package installed?"));
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn image(mib: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temporary folder");
    let path = dir.path().join("disk.img");
    File::create(&path)
        .and_then(|f| f.set_len(mib << 20))
        .expect("create image");
    (dir, path)
}

/// `blkid -p -o export [extra] IMAGE`; an empty map when blkid finds nothing.
fn blkid(path: &Path, extra: &[&str]) -> HashMap<String, String> {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .args(extra)
        .arg(path)
        .output()
        .expect("cannot run blkid: is util-linux installed?");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), unescape(v)))
        .collect()
}

/// A value of `-o export` as it was: blkid puts a backslash before shell-special
/// characters (a space in a label).
fn unescape(v: &str) -> String {
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    out
}

/// libblkid's version as (major, minor).
fn blkid_version() -> (u32, u32) {
    let out = Command::new("blkid").arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let v = text
        .split("libblkid ")
        .nth(1)
        .and_then(|t| t.split(',').next())
        .unwrap_or_else(|| panic!("blkid --version: {text}"));
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn open(path: &Path) -> FileDevice {
    FileDevice::open(
        path,
        OpenOptions {
            read_only: true,
            ..OpenOptions::default()
        },
    )
    .expect("open image")
}

fn table_of(dev: &dyn BlockDevice) -> Option<tessera_formats::partition::PartitionTable> {
    let reader = |lba: u64, count: u64| -> Option<Vec<u8>> {
        let mut buf = vec![0u8; (count * 512) as usize];
        dev.read_at(&mut buf, lba * 512).ok()?;
        Some(buf)
    };
    read_table("disk.img", dev.size_bytes() / 512, &reader).expect("read_table")
}

/// Checks tessera names the whole-device filesystem on `path` as blkid does, field by
/// field, and finds no partition table there; returns tessera's signature.
fn same_filesystem(dev: &dyn BlockDevice, blkid: &HashMap<String, String>) -> Signature {
    let field = |k: &str| blkid.get(k).cloned().unwrap_or_default();
    let found = probe(dev).expect("probe");
    assert_eq!(
        found.len(),
        1,
        "blkid says {blkid:?}, tessera found {found:?}"
    );
    let s = found[0].clone();
    assert_eq!(s.kind, field("TYPE"), "{blkid:?}");
    assert_eq!(s.uuid, field("UUID"), "{blkid:?}");
    assert_eq!(s.label, field("LABEL"), "{blkid:?}");
    let version = field("VERSION");
    if s.kind != "ntfs" {
        assert!(s.detail.starts_with(&version), "{} vs {version}", s.detail);
    }
    let boot_label = field("LABEL_FATBOOT");
    if boot_label.is_empty() || boot_label == s.label {
        assert!(!s.detail.contains("boot sector label"), "{}", s.detail);
    } else {
        assert!(
            s.detail
                .contains(&format!("boot sector label '{boot_label}'")),
            "{} vs {boot_label}",
            s.detail
        );
    }
    assert!(table_of(dev).is_none(), "a filesystem read as a table");
    s
}

#[test]
fn fat_of_each_size_on_the_whole_device() {
    for (fat, mib, label) in [
        ("12", 8, "SMALL"),
        ("16", 64, "BOOT16"),
        ("32", 300, "EFI32"),
    ] {
        let (_dir, path) = image(mib);
        let p = path.to_str().unwrap();
        run(
            "mkfs.vfat",
            &["-F", fat, "-n", label, "-i", "0a1b2c3d", p],
            None,
        );
        let b = blkid(&path, &[]);
        assert_eq!(
            (
                b["TYPE"].as_str(),
                b["VERSION"].as_str(),
                b["UUID"].as_str()
            ),
            ("vfat", format!("FAT{fat}").as_str(), "0A1B-2C3D")
        );
        assert!(!b.contains_key("PTTYPE"), "{b:?}");
        let s = same_filesystem(&open(&path), &b);
        assert_eq!(s.label, label);
    }
    // Unlabelled: no LABEL and no LABEL_FATBOOT ("NO NAME").
    let (_dir, path) = image(64);
    run("mkfs.vfat", &["-F", "16", path.to_str().unwrap()], None);
    let b = blkid(&path, &[]);
    assert!(!b.contains_key("LABEL") && !b.contains_key("LABEL_FATBOOT"));
    assert_eq!(same_filesystem(&open(&path), &b).label, "");
}

#[test]
fn fat_label_of_the_root_directory_wins_over_the_boot_sector() {
    // As a system that renames only the root directory's entry leaves it: blkid's LABEL is
    // the directory entry, LABEL_FATBOOT the boot sector's copy.
    for (fat, label_at) in [("16", 0x2b_u64), ("32", 0x47)] {
        let (_dir, path) = image(300);
        let p = path.to_str().unwrap();
        run("mkfs.vfat", &["-F", fat, "-n", "NEWNAME", p], None);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all_at(b"OLDNAME    ", label_at)
            .unwrap();
        let b = blkid(&path, &[]);
        assert_eq!(
            (b["LABEL"].as_str(), b["LABEL_FATBOOT"].as_str()),
            ("NEWNAME", "OLDNAME"),
            "FAT{fat}"
        );
        let s = same_filesystem(&open(&path), &b);
        assert_eq!(s.label, "NEWNAME");
    }
}

#[test]
fn exfat_on_the_whole_device() {
    let (_dir, path) = image(64);
    run(
        "mkfs.exfat",
        &["-L", "usbstick", path.to_str().unwrap()],
        None,
    );
    let b = blkid(&path, &[]);
    assert_eq!(b["TYPE"], "exfat");
    let s = same_filesystem(&open(&path), &b);
    assert_eq!(
        (s.label.as_str(), s.detail.split(',').next()),
        ("usbstick", Some("1.0"))
    );
    // libblkid before 2.39 also took exFAT's boot sector for an empty DOS table; 2.39
    // ignores it (util-linux commit 8a0f04e61, "libblkid: dos: ignore exfat superblocks"),
    // as tessera does.
    if blkid_version() >= (2, 39) {
        assert!(!b.contains_key("PTTYPE"), "{b:?}");
    } else {
        assert_eq!(b.get("PTTYPE").map(String::as_str), Some("dos"), "{b:?}");
    }
}

#[test]
fn ntfs_on_the_whole_device() {
    let (_dir, path) = image(32);
    run(
        "mkfs.ntfs",
        &[
            "-F",
            "-f",
            "-q",
            "-L",
            "Windows Data",
            path.to_str().unwrap(),
        ],
        None,
    );
    let b = blkid(&path, &[]);
    assert_eq!(b["TYPE"], "ntfs");
    assert!(!b.contains_key("PTTYPE"), "{b:?}");
    let s = same_filesystem(&open(&path), &b);
    assert_eq!(s.label, "Windows Data");
    assert_eq!(s.uuid.len(), 16, "{}", s.uuid);
}

#[test]
fn partitioned_disks_stay_partition_tables() {
    let (_dir, path) = image(64);
    let p = path.to_str().unwrap();
    run(
        "sfdisk",
        &["-q", p],
        Some("label: dos\n2048,65536,c\n,,83\n"),
    );
    // FAT16 in the first partition, made there by mkfs.vfat itself.
    run(
        "mkfs.vfat",
        &["-F", "16", "-n", "INSIDE", "--offset", "2048", p, "32768"],
        None,
    );
    let b = blkid(&path, &[]);
    assert_eq!(b.get("PTTYPE").map(String::as_str), Some("dos"), "{b:?}");
    assert!(!b.contains_key("TYPE"), "{b:?}");
    let dev = open(&path);
    let found = probe(&dev).unwrap();
    assert_eq!(
        found.iter().map(|s| s.kind).collect::<Vec<_>>(),
        vec!["dos"],
        "{found:?}"
    );
    let table = table_of(&dev).expect("a table");
    assert_eq!(table.scheme, Scheme::Mbr);
    assert_eq!(table.partitions.len(), 2);
    // The partition holds what blkid finds at its offset.
    let first = &table.partitions[0];
    let offset = (first.start_sector * 512).to_string();
    let size = (first.sectors * 512).to_string();
    let inner = blkid(&path, &["-O", &offset, "-S", &size]);
    let shared: tessera_block::SharedDevice = std::sync::Arc::new(open(&path));
    let slice = SliceDevice::new(
        "disk.img1",
        shared,
        first.start_sector * 512,
        first.sectors * 512,
    )
    .unwrap();
    let s = same_filesystem(&slice, &inner);
    assert_eq!((s.kind, s.label.as_str()), ("vfat", "INSIDE"));

    // Boot code that starts with a jump, as GRUB's does, does not make the MBR a FAT
    // boot sector: its BPB bytes are no FAT's.
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(&[0xeb, 0x63, 0x90], 0)
        .unwrap();
    let b = blkid(&path, &[]);
    assert_eq!(b.get("PTTYPE").map(String::as_str), Some("dos"), "{b:?}");
    assert_eq!(probe(&open(&path)).unwrap()[0].kind, "dos");
    assert_eq!(table_of(&open(&path)).unwrap().partitions.len(), 2);

    // An MBR without partitions is still a DOS table to blkid, and so to tessera's
    // signatures (there are no partitions to read).
    let (_dir2, empty) = image(16);
    run(
        "sfdisk",
        &["-q", empty.to_str().unwrap()],
        Some("label: dos\n"),
    );
    let b = blkid(&empty, &[]);
    assert_eq!(b.get("PTTYPE").map(String::as_str), Some("dos"), "{b:?}");
    let found = probe(&open(&empty)).unwrap();
    assert_eq!(
        found.iter().map(|s| s.kind).collect::<Vec<_>>(),
        vec!["dos"]
    );
    assert!(table_of(&open(&empty)).is_none());
}
