//! The signature probe against filesystems, swap and LUKS made by the real tools on image
//! files, compared with `blkid -p -o export` (TYPE, UUID, LABEL). The tools must be
//! installed (dosfstools, e2fsprogs, util-linux, xfsprogs, btrfs-progs, cryptsetup-bin):
//! these tests fail, not skip, without them.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use tessera_block::{FileDevice, OpenOptions};
use tessera_formats::signature::{probe, Signature};

fn run(tool: &str, args: &[&str]) {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool} ({e}): is its package installed?"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A sparse image file of `mib` MiB in a folder of its own.
fn image(mib: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temporary folder");
    let path = dir.path().join("fs.img");
    File::create(&path)
        .and_then(|f| f.set_len(mib << 20))
        .expect("create image");
    (dir, path)
}

/// `blkid -p -o export`: low-level probing of the file itself, no cache.
fn blkid(path: &Path) -> HashMap<String, String> {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(path)
        .output()
        .expect("cannot run blkid: is util-linux installed?");
    assert!(
        out.status.success(),
        "blkid -p {} found nothing",
        path.display()
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Probes `path` and checks tessera found exactly what blkid found; returns the signature.
fn compare(path: &Path) -> Signature {
    let dev = FileDevice::open(
        path,
        OpenOptions {
            read_only: true,
            ..OpenOptions::default()
        },
    )
    .expect("open image");
    let found = probe(&dev).expect("probe");
    let blkid = blkid(path);
    let field = |k: &str| blkid.get(k).cloned().unwrap_or_default();
    // The primary signature is the one blkid names; LUKS2 also shows its secondary header.
    let primary = found
        .iter()
        .find(|s| s.kind == field("TYPE"))
        .unwrap_or_else(|| panic!("blkid says {blkid:?}, tessera found {found:?}"))
        .clone();
    assert!(
        found.iter().all(|s| s.kind == primary.kind),
        "other signatures besides {}: {found:?}",
        primary.kind
    );
    assert_eq!(primary.uuid, field("UUID"), "{blkid:?}");
    assert_eq!(primary.label, field("LABEL"), "{blkid:?}");
    primary
}

#[test]
fn vfat_of_each_fat_size() {
    for (fat, mib, label) in [
        ("12", 4, "SMALL"),
        ("16", 64, "BOOTPART"),
        ("32", 300, "EFI"),
    ] {
        let (_dir, path) = image(mib);
        let path_str = path.to_str().unwrap();
        run(
            "mkfs.vfat",
            &["-F", fat, "-n", label, "-i", "f03ab858", path_str],
        );
        let s = compare(&path);
        assert_eq!((s.kind, s.uuid.as_str()), ("vfat", "F03A-B858"));
        assert!(s.detail.starts_with(&format!("FAT{fat}")), "{}", s.detail);
        assert_eq!(blkid(&path)["VERSION"], format!("FAT{fat}"));
    }
    // Unlabelled: mkfs.fat writes "NO NAME", which blkid reports as no label.
    let (_dir, path) = image(64);
    run("mkfs.vfat", &[path.to_str().unwrap()]);
    assert_eq!(compare(&path).label, "");
}

#[test]
fn ext4_with_label_and_uuid() {
    let (_dir, path) = image(64);
    let uuid = "4ed422fe-8817-41e9-ad25-67866cffbe8e";
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-L",
            "rootfs",
            "-U",
            uuid,
            path.to_str().unwrap(),
        ],
    );
    let s = compare(&path);
    assert_eq!(
        (s.kind, s.label.as_str(), s.uuid.as_str()),
        ("ext4", "rootfs", uuid)
    );
}

#[test]
fn swap_with_label_and_uuid() {
    let (_dir, path) = image(16);
    let uuid = "56f3c7a7-07f9-4585-b7ae-d30548930f5d";
    run(
        "mkswap",
        &["-L", "swappy", "-U", uuid, path.to_str().unwrap()],
    );
    let s = compare(&path);
    assert_eq!(
        (s.kind, s.label.as_str(), s.uuid.as_str()),
        ("swap", "swappy", uuid)
    );
}

#[test]
fn xfs_with_label() {
    // 300 MiB is mkfs.xfs's smallest filesystem; the image is sparse.
    let (_dir, path) = image(300);
    run("mkfs.xfs", &["-q", "-L", "xlabel", path.to_str().unwrap()]);
    let s = compare(&path);
    assert_eq!((s.kind, s.label.as_str()), ("xfs", "xlabel"));
}

#[test]
fn btrfs_with_label() {
    let (_dir, path) = image(256);
    run(
        "mkfs.btrfs",
        &["-q", "-L", "blabel", path.to_str().unwrap()],
    );
    let s = compare(&path);
    assert_eq!((s.kind, s.label.as_str()), ("btrfs", "blabel"));
}

#[test]
fn luks_both_versions() {
    for version in ["luks1", "luks2"] {
        let (dir, path) = image(32);
        let key = dir.path().join("key");
        std::fs::write(&key, "passphrase").unwrap();
        let mut args = vec!["luksFormat", "--batch-mode", "-q", "--type", version];
        args.extend(["--pbkdf-force-iterations", "1000"]);
        if version == "luks2" {
            args.extend(["--pbkdf", "pbkdf2", "--label", "vault"]);
        }
        args.extend([path.to_str().unwrap(), key.to_str().unwrap()]);
        run("cryptsetup", &args);
        let s = compare(&path);
        assert_eq!(s.kind, "crypto_LUKS");
        assert!(!s.uuid.is_empty());
    }
}
