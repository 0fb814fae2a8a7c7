//! The MD superblock readers and writer against members made by the real mdadm: the kernel
//! lab builds one RAID5 set per metadata version (plus an internal bitmap and a spare) with
//! tests/md_fixtures.sh, then each member is read by tessera and compared with what the
//! host's `mdadm --examine` says, and rewritten by tessera and examined again.
//! Fails, never skips, without the kernel lab or mdadm.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use tessera_block::{BlockDevice, FileDevice, OpenOptions};
use tessera_formats::md::{
    format_uuid, probe, read_bitmap, write, ArrayState, MdSuperblock, MdVersion, Role,
};

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn examine(img: &Path) -> String {
    run(Command::new("mdadm").arg("--examine").arg(img))
}

fn export(img: &Path) -> HashMap<String, String> {
    run(Command::new("mdadm")
        .args(["--examine", "--export"])
        .arg(img))
    .lines()
    .filter_map(|l| l.split_once('='))
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The value of `Key : value` in mdadm's --examine text.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .filter_map(|l| l.split_once(" : "))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
}

fn level_name(level: i32) -> String {
    match level {
        -1 => "linear".into(),
        l => format!("raid{l}"),
    }
}

fn open(path: &Path, read_only: bool) -> FileDevice {
    let options = OpenOptions {
        read_only,
        ..Default::default()
    };
    FileDevice::open(path, options).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Builds the fixtures in the kernel lab (about 25 s).
fn build_fixtures(dir: &Path) {
    let lab =
        std::env::var("TESSERA_KERNEL_LAB").unwrap_or_else(|_| "/work/shared/kernel-lab".into());
    assert!(
        Path::new(&lab).join("vm-run").exists(),
        "the kernel lab is missing: {lab}/vm-run (see /work/shared/kernel-lab/README.md)"
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/md_fixtures.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(dir)
        .output()
        .expect("run md_fixtures.sh");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("md-fixtures-done"),
        "md_fixtures.sh failed:\n{text}"
    );
}

/// Checks one member against mdadm; returns the superblock read.
fn check_member(img: &Path, want_version: MdVersion) -> (MdVersion, MdSuperblock) {
    let dev = open(img, true);
    let (version, sb) = probe(&dev)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("{}: no MD superblock found", img.display()));
    assert_eq!(version, want_version, "{}", img.display());
    let exp = export(img);
    let text = examine(img);
    let ctx = format!("{}:\n{text}", img.display());
    assert_eq!(exp["MD_LEVEL"], level_name(sb.level()), "{ctx}");
    assert_eq!(exp["MD_DEVICES"], sb.raid_disks().to_string(), "{ctx}");
    assert_eq!(exp["MD_UUID"], sb.uuid_string(), "{ctx}");
    assert_eq!(exp["MD_EVENTS"], sb.events().to_string(), "{ctx}");
    assert_eq!(
        field(&text, "Events"),
        Some(&*sb.events().to_string()),
        "{ctx}"
    );
    assert_eq!(
        field(&text, "Chunk Size"),
        Some(&*format!("{}K", sb.chunk_bytes() / 1024)),
        "{ctx}"
    );
    assert_eq!(field(&text, "Layout"), Some("left-symmetric"), "{ctx}");
    assert_eq!(sb.layout(), 2);
    assert_eq!(field(&text, "State"), Some("clean"), "{ctx}");
    assert_eq!(sb.state(), ArrayState::Clean);
    let csum = field(&text, "Checksum").unwrap();
    assert!(csum.ends_with(" - correct"), "{ctx}");
    match &sb {
        MdSuperblock::V1(s) => {
            assert_eq!(exp.get("MD_NAME"), Some(&sb.name()), "{ctx}");
            assert_eq!(exp["MD_DEV_UUID"], format_uuid(&s.device_uuid), "{ctx}");
            assert_eq!(
                exp["MD_UPDATE_TIME"],
                (s.utime & 0xff_ffff_ffff).to_string(),
                "{ctx}"
            );
            assert_eq!(
                csum,
                format!("{:x} - correct", le_csum(&s.encode())),
                "{ctx}"
            );
            let role = match sb.role() {
                Role::Active(n) => format!("Active device {n}"),
                Role::Spare => "spare".into(),
                r => panic!("unexpected role {r:?}"),
            };
            assert_eq!(field(&text, "Device Role"), Some(&*role), "{ctx}");
            let sectors = |key| field(&text, key).map(|v| v.trim_end_matches(" sectors"));
            // mdadm leaves the line out when the data starts at sector 0 (1.0).
            let data_offset = sectors("Data Offset").unwrap_or("0");
            assert_eq!(data_offset, s.data_offset.to_string(), "{ctx}");
            assert_eq!(sectors("Super Offset"), Some(&*s.super_offset.to_string()));
            let avail = field(&text, "Avail Dev Size").unwrap();
            assert!(
                avail.starts_with(&format!("{} sectors", s.data_size)),
                "{ctx}"
            );
        }
        MdSuperblock::V0(s) => {
            assert!(!exp.contains_key("MD_NAME"));
            // mdadm 4.2 exports the creation time of a 0.90 superblock under this name.
            assert_eq!(exp["MD_UPDATE_TIME"], s.ctime.to_string(), "{ctx}");
            assert_eq!(csum, format!("{:x} - correct", s.encode_csum()), "{ctx}");
            // "this     0       7        0        0      active sync   /dev/loop0"
            let this: Vec<&str> = text
                .lines()
                .find(|l| l.starts_with("this"))
                .unwrap()
                .split_whitespace()
                .collect();
            assert_eq!(sb.role(), Role::Active(this[4].parse().unwrap()), "{ctx}");
            let used = field(&text, "Used Dev Size").unwrap();
            assert!(used.starts_with(&format!("{} ", s.size)), "{ctx}");
        }
    }
    // The bitmap header, where mdadm says it is.
    let bitmap = read_bitmap(&dev, version, &sb).unwrap_or_else(|e| panic!("{e}"));
    match field(&text, "Internal Bitmap") {
        Some(v) => {
            let bm = bitmap.expect("a bitmap header");
            let MdSuperblock::V1(s) = &sb else {
                unreachable!()
            };
            assert_eq!(v, format!("{} sectors from superblock", s.bitmap_offset));
            assert_eq!(bm.offset, (s.super_offset + s.bitmap_offset as u64) * 512);
            assert!(bm.is_current(sb.events()), "{bm:?}");
            assert_eq!(bm.sync_size, s.size);
            assert!(bm.chunksize >= 512 && bm.daemon_sleep > 0, "{bm:?}");
            // Written back, the header is mdadm's bytes exactly.
            let mut raw = [0u8; tessera_formats::md::bitmap::BYTES];
            dev.read_at(&mut raw, bm.offset).unwrap();
            assert_eq!(bm.encode(), raw, "{ctx}: bitmap header re-encoded");
        }
        None => assert_eq!(bitmap, None),
    }
    (version, sb)
}

fn le_csum(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[216], b[217], b[218], b[219]])
}

trait Csum0 {
    fn encode_csum(&self) -> u32;
}
impl Csum0 for tessera_formats::md::Superblock0 {
    fn encode_csum(&self) -> u32 {
        let b = self.encode();
        u32::from_ne_bytes([b[152], b[153], b[154], b[155]])
    }
}

/// Rewrites the superblock of a copy of `img`: unchanged, the copy must equal the original
/// byte for byte; with events + 1, mdadm must still find a correct checksum.
fn check_writer(img: &Path, version: MdVersion, sb: &MdSuperblock, scratch: &Path) {
    std::fs::copy(img, scratch).unwrap();
    let dev = open(scratch, false);
    write(&dev, version, sb).unwrap_or_else(|e| panic!("{e}"));
    dev.flush().unwrap();
    assert!(
        std::fs::read(img).unwrap() == std::fs::read(scratch).unwrap(),
        "{}: tessera's rewrite of the {version} superblock differs from mdadm's",
        img.display()
    );
    let before = examine(img);
    let after = examine(scratch);
    let strip = |t: &str| t.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(strip(&before), strip(&after));

    let mut bumped = sb.clone();
    match &mut bumped {
        MdSuperblock::V0(s) => s.events += 1,
        MdSuperblock::V1(s) => s.events += 1,
    }
    write(&dev, version, &bumped).unwrap();
    dev.flush().unwrap();
    let after = examine(scratch);
    assert_eq!(
        field(&after, "Events"),
        Some(&*(sb.events() + 1).to_string()),
        "{after}"
    );
    assert!(
        field(&after, "Checksum").unwrap().ends_with(" - correct"),
        "{after}"
    );
    assert_eq!(probe(&dev).unwrap(), Some((version, bumped)));
    std::fs::remove_file(scratch).unwrap();
}

#[test]
fn reads_and_writes_what_mdadm_made() {
    let version = run(Command::new("mdadm").arg("--version"));
    eprintln!("host {version}");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    build_fixtures(dir.path());
    let sets = std::fs::read_to_string(dir.path().join("sets")).unwrap();
    let mut seen = Vec::new();
    for line in sets.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (name, members): (&str, usize) = (f[0], f[2].parse().unwrap());
        let want = match f[1] {
            "0.90" => MdVersion::V0_90,
            "1.0" => MdVersion::V1_0,
            "1.1" => MdVersion::V1_1,
            "1.2" => MdVersion::V1_2,
            m => panic!("unknown metadata {m}"),
        };
        let mut uuids = Vec::new();
        let mut roles = Vec::new();
        for i in 0..members {
            let img = dir.path().join(format!("{name}-{i}.img"));
            let (version, sb) = check_member(&img, want);
            uuids.push(sb.array_uuid());
            roles.push(sb.role());
            check_writer(&img, version, &sb, &dir.path().join("scratch.img"));
        }
        // One array; mdadm gives slots in the order of the devices, spares last.
        assert!(uuids.iter().all(|u| *u == uuids[0]), "{name}");
        let mut want_roles: Vec<Role> = (0..3).map(Role::Active).collect();
        want_roles.resize(members, Role::Spare);
        assert_eq!(roles, want_roles, "{name}");
        seen.push(name.to_string());
    }
    assert_eq!(seen, ["v090", "v10", "v11", "v12", "bitmap", "spare"]);
}
