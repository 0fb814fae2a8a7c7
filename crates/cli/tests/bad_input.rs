//! Corrupted images: each gets an error that names the device and what is wrong, nothing
//! panics, and listing writes nothing.
//!
//! The images are made by tessera, then damaged byte by byte at the LVM2 layout's offsets
//! (label in sector 1, metadata area header at 4096), with checksums recomputed where the
//! damage is meant to get past them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use tessera_formats::lvm2::crc::checksum;

const META: usize = 1 << 20;
const LABEL: usize = 512;
const MDA: usize = 4096;

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn fix_label_crc(b: &mut [u8]) {
    let crc = checksum(&b[LABEL + 20..LABEL + 512]);
    put_u32(b, LABEL + 16, crc);
}
fn fix_mda_crc(b: &mut [u8]) {
    let crc = checksum(&b[MDA + 4..MDA + 512]);
    put_u32(b, MDA, crc);
}
/// The current metadata text (without its NUL).
fn text(b: &[u8]) -> String {
    let off = u64_at(b, MDA + 40) as usize;
    let size = u64_at(b, MDA + 48) as usize;
    String::from_utf8_lossy(&b[MDA + off..MDA + off + size - 1]).into_owned()
}
/// Replaces the current text in place, with a correct checksum, so only the content is bad.
fn set_text(b: &mut [u8], new: &str) {
    let off = u64_at(b, MDA + 40) as usize;
    let mut bytes = new.as_bytes().to_vec();
    bytes.push(0);
    b[MDA + off..MDA + off + bytes.len()].copy_from_slice(&bytes);
    put_u64(b, MDA + 48, bytes.len() as u64);
    put_u32(b, MDA + 56, checksum(&bytes));
    fix_mda_crc(b);
}
fn edit_text(b: &mut [u8], from: &str, to: &str) {
    let t = text(b);
    assert!(t.contains(from), "text lacks '{from}':\n{t}");
    set_text(b, &t.replacen(from, to, 1));
}

struct Case {
    name: &'static str,
    damage: fn(&mut Vec<u8>),
    /// Words the error must contain (besides the device path).
    expect: &'static [&'static str],
    /// Damage both PVs, so no good copy is left and the VG itself is refused.
    both: bool,
}

const fn case(
    name: &'static str,
    damage: fn(&mut Vec<u8>),
    expect: &'static [&'static str],
    both: bool,
) -> Case {
    Case {
        name,
        damage,
        expect,
        both,
    }
}

fn cases() -> Vec<Case> {
    vec![
        case(
            "label checksum",
            |b| b[LABEL + 40] ^= 0xff,
            &["label", "checksum"],
            false,
        ),
        case(
            "label in the wrong sector",
            |b| {
                put_u64(b, LABEL + 8, 3);
                fix_label_crc(b);
            },
            &["sector"],
            false,
        ),
        case(
            "label of an unknown type",
            |b| {
                b[LABEL + 24..LABEL + 32].copy_from_slice(b"LVM9 001");
                fix_label_crc(b);
            },
            &["LVM9"],
            false,
        ),
        case(
            "label offset",
            |b| {
                put_u32(b, LABEL + 20, 400);
                fix_label_crc(b);
            },
            &["offset"],
            false,
        ),
        case(
            "metadata area past the device end",
            |b| {
                put_u64(b, LABEL + 104, 1 << 40);
                fix_label_crc(b);
            },
            &["metadata area"],
            false,
        ),
        case(
            "device size absurd",
            |b| {
                put_u64(b, LABEL + 64, u64::MAX);
                fix_label_crc(b);
            },
            &["size"],
            false,
        ),
        case(
            "same seqno, different text",
            |b| edit_text(b, "max_lv = 0", "max_lv = 5"),
            &["two different metadata texts carry seqno"],
            false,
        ),
        case(
            "mda header checksum",
            |b| b[MDA + 100] ^= 1,
            &["checksum"],
            false,
        ),
        case(
            "mda header magic",
            |b| {
                b[MDA + 4] = b'X';
                fix_mda_crc(b);
            },
            &["magic"],
            false,
        ),
        case(
            "mda header version",
            |b| {
                put_u32(b, MDA + 20, 9);
                fix_mda_crc(b);
            },
            &["version"],
            false,
        ),
        case(
            "mda header start",
            |b| {
                put_u64(b, MDA + 24, 8192);
                fix_mda_crc(b);
            },
            &["8192"],
            false,
        ),
        case(
            "text location past the area",
            |b| {
                put_u64(b, MDA + 40, 1 << 30);
                fix_mda_crc(b);
            },
            &["metadata area"],
            false,
        ),
        case(
            "text size absurd",
            |b| {
                put_u64(b, MDA + 48, 1 << 40);
                fix_mda_crc(b);
            },
            &["metadata area"],
            false,
        ),
        case(
            "text checksum",
            |b| {
                let off = u64_at(b, MDA + 40) as usize;
                b[MDA + off + 20] ^= 0x20;
            },
            &["checksum"],
            false,
        ),
        case(
            "truncated text",
            |b| {
                let t = text(b);
                set_text(b, &t[..t.len() / 2]);
            },
            &["metadata area", "line"],
            true,
        ),
        case(
            "unbalanced braces",
            |b| edit_text(b, "}\ncontents", "\ncontents"),
            &["unbalanced braces", "never closed"],
            true,
        ),
        case(
            "garbage text",
            |b| set_text(b, "\u{1}\u{2} not = [ lvm2"),
            &["metadata area", "line"],
            true,
        ),
        case(
            "extent size zero",
            |b| edit_text(b, "extent_size = 8192", "extent_size = 0"),
            &["extent_size"],
            true,
        ),
        case(
            "absurd extent count",
            |b| edit_text(b, "pe_count = 15", "pe_count = 9223372036854775807"),
            &["extents"],
            true,
        ),
        case(
            "integer overflow",
            |b| edit_text(b, "seqno = ", "seqno = 99999999999999999999"),
            &["out of range"],
            true,
        ),
        case(
            "segment past the PV end",
            |b| edit_text(b, "stripes = [\"pv0\", 0]", "stripes = [\"pv0\", 14]"),
            &["extents"],
            true,
        ),
        case(
            "overlapping segments",
            |b| edit_text(b, "stripes = [\"pv1\", 0]", "stripes = [\"pv0\", 0]"),
            &["overlap"],
            true,
        ),
        case(
            "unknown PV in a segment",
            |b| edit_text(b, "stripes = [\"pv1\", 0]", "stripes = [\"pv9\", 0]"),
            &["pv9"],
            true,
        ),
        case(
            "segment count mismatch",
            |b| edit_text(b, "segment_count = 1", "segment_count = 4"),
            &["segment_count"],
            true,
        ),
        case(
            "bad VG name",
            |b| edit_text(b, "bad {", "b@d {"),
            &["@"],
            true,
        ),
        case(
            "negative seqno",
            |b| edit_text(b, "seqno = ", "seqno = -"),
            &["negative"],
            true,
        ),
        case(
            "missing id",
            |b| edit_text(b, "id = ", "idx = "),
            &["'id' is missing"],
            true,
        ),
    ]
}

fn read_meta(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()[..META].to_vec()
}
fn write_meta(path: &Path, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(data, 0)
        .unwrap();
}

fn tessera_list(devices: &str, state: &Path, what: &str) -> (i32, String, String) {
    let out = Command::new(common::tessera_path())
        .args(["--devices", devices, "--state-dir"])
        .arg(state)
        .args([what, "list"])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn corrupted_images_get_clear_errors() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let state = dir.path().join("state");
    let imgs: Vec<PathBuf> = (0..2)
        .map(|i| dir.path().join(format!("pv{i}.img")))
        .collect();
    for p in &imgs {
        std::fs::File::create(p).unwrap().set_len(64 << 20).unwrap();
    }
    let devices = format!("{},{}", imgs[0].display(), imgs[1].display());
    let paths: Vec<&str> = imgs.iter().map(|p| p.to_str().unwrap()).collect();
    common::tessera(
        &devices,
        &state,
        &["vg", "create", "bad", paths[0], paths[1]],
    );
    common::tessera(
        &devices,
        &state,
        &["lv", "create", "bad/a", "-l", "15", "--pv", paths[0]],
    );
    common::tessera(
        &devices,
        &state,
        &["lv", "create", "bad/b", "-l", "2", "--pv", paths[1]],
    );
    let good: Vec<Vec<u8>> = imgs.iter().map(|p| read_meta(p)).collect();

    let cases = cases();
    assert!(cases.len() >= 20);
    for case in &cases {
        let targets = if case.both { 2 } else { 1 };
        for (i, img) in imgs.iter().enumerate().take(targets) {
            let mut b = good[i].clone();
            (case.damage)(&mut b);
            write_meta(img, &b);
        }
        let damaged: Vec<Vec<u8>> = imgs.iter().map(|p| read_meta(p)).collect();
        for what in ["pv", "vg", "lv"] {
            let (code, _out, err) = tessera_list(&devices, &state, what);
            assert_ne!(code, 101, "{}: tessera panicked: {err}", case.name);
            assert_eq!(
                code, 1,
                "{}: `{what} list` must fail; stderr: {err}",
                case.name
            );
            assert!(
                err.contains(paths[0]),
                "{}: the error must name {}: {err}",
                case.name,
                paths[0]
            );
            for word in case.expect {
                assert!(
                    err.contains(word),
                    "{}: the error must say '{word}': {err}",
                    case.name
                );
            }
        }
        // A change is refused when no good copy is left, and nothing is written by lists.
        if case.both {
            let out =
                common::tessera_output(&devices, &state, &["lv", "create", "bad/c", "-l", "1"]);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{}: a change must be refused",
                case.name
            );
        }
        let after: Vec<Vec<u8>> = imgs.iter().map(|p| read_meta(p)).collect();
        assert!(
            after == damaged,
            "{}: the damaged images were written to",
            case.name
        );
        for (img, g) in imgs.iter().zip(&good) {
            write_meta(img, g);
        }
    }
    // With the good images back, everything reads cleanly.
    let (code, out, err) = tessera_list(&devices, &state, "lv");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(" a ") && out.contains(" b "), "{out}");
}

#[test]
fn a_missing_pv_is_named_and_blocks_changes() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let state = dir.path().join("state");
    let imgs: Vec<String> = (0..2)
        .map(|i| {
            let p = dir.path().join(format!("m{i}.img"));
            std::fs::File::create(&p)
                .unwrap()
                .set_len(64 << 20)
                .unwrap();
            p.to_string_lossy().into_owned()
        })
        .collect();
    let both = imgs.join(",");
    common::tessera(&both, &state, &["vg", "create", "miss", &imgs[0], &imgs[1]]);
    let (code, _, err) = tessera_list(&imgs[0], &state, "vg");
    assert_eq!(code, 1);
    assert!(err.contains("missing") && err.contains(&imgs[1]), "{err}");
    let out = common::tessera_output(&imgs[0], &state, &["lv", "create", "miss/x", "-l", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing") && err.contains(&imgs[1]), "{err}");
    // An LV on the missing PV keeps it until --force; then the VG is whole again.
    common::tessera(
        &both,
        &state,
        &["lv", "create", "miss/on1", "-l", "2", "--pv", &imgs[1]],
    );
    common::tessera(
        &both,
        &state,
        &["lv", "create", "miss/on0", "-l", "2", "--pv", &imgs[0]],
    );
    let out = common::tessera_output(
        &imgs[0],
        &state,
        &["vg", "reduce", "miss", "--remove-missing"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("on1"));
    common::tessera(
        &imgs[0],
        &state,
        &["vg", "reduce", "miss", "--remove-missing", "--force"],
    );
    let (code, out, err) = tessera_list(&imgs[0], &state, "lv");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("on0") && !out.contains("on1"), "{out}");
    common::tessera(&imgs[0], &state, &["lv", "create", "miss/x", "-l", "1"]);
}

#[test]
fn a_truncated_device_is_named() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let state = dir.path().join("state");
    let img = dir.path().join("t.img").to_string_lossy().into_owned();
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    common::tessera(&img, &state, &["vg", "create", "trunc", &img]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(4096 + 256)
        .unwrap();
    let (code, _, err) = tessera_list(&img, &state, "vg");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&img) && err.contains("does not fit in the device"),
        "{err}"
    );
}

#[test]
fn pv_create_refuses_other_formats_without_force() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let state = dir.path().join("state");
    let img = dir.path().join("fs.img").to_string_lossy().into_owned();
    std::fs::File::create(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F", &img])
        .status()
        .expect("mkfs.ext4 runs");
    assert!(mkfs.success());
    let out = common::tessera_output(&img, &state, &["pv", "create", &img]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&img) && err.contains("ext4") && err.contains("--force"),
        "{err}"
    );
    common::tessera(&img, &state, &["pv", "create", "--force", &img]);
    // The ext4 signature is gone: blkid no longer sees a filesystem.
    let blkid = Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "TYPE", &img])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&blkid.stdout).trim(), "LVM2_member");
    // Names with bad characters are refused before anything is written.
    let out = common::tessera_output(&img, &state, &["vg", "create", "bad/name", &img]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'/'"));
}

#[test]
fn a_bad_name_is_named_once() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let state = dir.path().join("state");
    let img = common::image_files(dir.path(), "d", 1, 32 << 20).remove(0);
    for args in [
        vec!["vg", "create", "b c", &img],
        vec!["lv", "create", "vg0/a b", "-L", "4M"],
        vec!["lv", "rename", "vg0/x", "a b"],
    ] {
        if args[0] == "lv" {
            common::tessera(&img, &state, &["vg", "create", "vg0", &img]);
        }
        let out = common::tessera_output(&img, &state, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let bad = if args[0] == "vg" { "'b c'" } else { "'a b'" };
        assert_eq!(err.matches(bad).count(), 1, "{args:?}: {err}");
        assert!(err.contains("' ' is not allowed"), "{args:?}: {err}");
        if args[0] == "lv" {
            common::tessera(&img, &state, &["vg", "remove", "vg0"]);
        }
    }
}
