//! RAID metadata of two formats on one disk, as mdadm's bug reports show them: the real
//! mdadm (kernel lab) makes an MD 1.2 raid1, an IMSM container and a DDF container on
//! image files, and a 0.90 raid1 over an LVM2 PV that pvcreate made; the host then puts
//! the IMSM anchor sectors over the MD 1.2 member and over the DDF member, as a disk
//! moved between controllers keeps them. For each, `blkid -p`, `wipefs -n` and
//! `mdadm --examine` are asked, and `tessera show --json` must name both formats, take the
//! one mdadm takes (and say when blkid reports another), and give the command that clears
//! the other. One VM boot.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use common::{lab_script, tessera};
use serde_json::Value;

const LAB: &str = r#"
export IMSM_NO_PLATFORM=1 IMSM_DEVNAME_AS_SERIAL=1
for n in md12-0 md12-1 imsm-0 imsm-1 ddf-0 ddf-1 pv090; do truncate -s 48M $n.img; done
losetup /dev/loop0 md12-0.img && losetup /dev/loop1 md12-1.img || exit 1
losetup /dev/loop2 imsm-0.img && losetup /dev/loop3 imsm-1.img || exit 1
losetup /dev/loop4 ddf-0.img && losetup /dev/loop5 ddf-1.img || exit 1
losetup /dev/loop6 pv090.img || exit 1
mdadm -C /dev/md/r12 -e 1.2 -l 1 -n 2 --size=4M --assume-clean --run /dev/loop0 /dev/loop1 </dev/null >/dev/null 2>&1 || echo md12-failed
mdadm --stop /dev/md/r12 >/dev/null 2>&1
mdadm -C /dev/md/imsm0 -e imsm -n 2 --run /dev/loop2 /dev/loop3 </dev/null >/dev/null 2>&1 || echo imsm-failed
mdadm --stop /dev/md/imsm0 >/dev/null 2>&1
mdadm -C /dev/md/ddf0 -e ddf -n 2 --run /dev/loop4 /dev/loop5 </dev/null >/dev/null 2>&1 || echo ddf-failed
mdadm --stop /dev/md/ddf0 >/dev/null 2>&1
pvcreate -ff -y /dev/loop6 >/dev/null 2>&1 || echo pv-failed
mdadm -C /dev/md/r090 -e 0.90 -l 1 -n 2 --assume-clean --run --force /dev/loop6 missing </dev/null >/dev/null 2>&1 || echo md090-failed
mdadm --stop /dev/md/r090 >/dev/null 2>&1
for i in 0 1 2 3 4 5 6; do losetup -d /dev/loop$i; done
echo conflicts-lab-done
"#;

/// `blkid -p -o export`: exit code and TYPE.
fn blkid_type(path: &Path) -> (i32, Option<String>) {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(path)
        .output()
        .expect("cannot run blkid: is util-linux installed?");
    let ty = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("TYPE=").map(str::to_string));
    (out.status.code().unwrap_or(-1), ty)
}

/// The TYPEs `wipefs -n` lists: every signature, also those blkid's answer hides.
fn wipefs_types(path: &Path) -> Vec<String> {
    let out = Command::new("wipefs")
        .args(["--no-act", "--noheadings", "--output", "TYPE"])
        .arg(path)
        .output()
        .expect("cannot run wipefs: is util-linux installed?");
    let mut types: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    types.sort();
    types
}

/// Which metadata `mdadm --examine` takes on the image, by blkid's name for it.
fn mdadm_takes(path: &Path) -> String {
    let out = Command::new("mdadm")
        .arg("--examine")
        .arg(path)
        .output()
        .expect("cannot run mdadm: is it installed?");
    let text = String::from_utf8_lossy(&out.stdout);
    let magic = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Magic : "))
        .unwrap_or_else(|| panic!("mdadm --examine {}: {text}", path.display()))
        .trim()
        .to_string();
    match magic.as_str() {
        "a92b4efc" => "linux_raid_member".into(),
        "Intel Raid ISM Cfg Sig." => "isw_raid_member".into(),
        "de11de11" => "ddf_raid_member".into(),
        other => panic!("mdadm --examine: magic {other}"),
    }
}

/// Copies the last `bytes` of `from` over the same place of `to`.
fn paste_tail(from: &Path, to: &Path, bytes: u64, skip_last: u64) {
    let size = std::fs::metadata(from).unwrap().len();
    let at = size - bytes - skip_last;
    let mut buf = vec![0u8; bytes as usize];
    File::open(from)
        .unwrap()
        .read_exact_at(&mut buf, at)
        .unwrap();
    File::options()
        .write(true)
        .open(to)
        .unwrap()
        .write_all_at(&buf, at)
        .unwrap();
}

fn disk_node(image: &Path, state: &Path) -> Value {
    let json = tessera(image.to_str().unwrap(), state, &["show", "--json"]);
    let report: Value = serde_json::from_str(&json).unwrap();
    report["devices"][0].clone()
}

fn formats(c: &Value) -> Vec<String> {
    let mut f: Vec<String> = c["formats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["format"].as_str().unwrap().to_string())
        .collect();
    f.sort();
    f
}

#[test]
fn two_raid_formats_on_one_disk_are_named_and_decided_as_mdadm_decides() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let out = lab_script(dir.path(), LAB, 900);
    assert!(out.contains("conflicts-lab-done"), "{out}");
    assert!(!out.contains("-failed"), "{out}");
    let img = |n: &str| dir.path().join(format!("{n}.img"));
    let state = dir.path().join("state");

    // MD 1.2 with IMSM's anchor sectors at its end; DDF with IMSM's second-to-last
    // sector (the DDF anchor in the last one stays).
    paste_tail(&img("imsm-0"), &img("md12-0"), 1024, 0);
    paste_tail(&img("imsm-1"), &img("ddf-0"), 512, 512);

    for (image, both) in [
        ("md12-0", ["isw_raid_member", "linux_raid_member"]),
        ("ddf-0", ["ddf_raid_member", "isw_raid_member"]),
    ] {
        let path = img(image);
        assert_eq!(wipefs_types(&path), both, "{image}: wipefs lists both");
        let (code, blkid) = blkid_type(&path);
        assert_eq!(code, 0, "{image}");
        let mdadm = mdadm_takes(&path);
        let node = disk_node(&path, &state);
        let c = &node["detail"]["conflict"];
        assert_eq!(formats(c), both, "{image}: {node}");
        // tessera takes what mdadm takes, and the format it claims the disk with is it.
        assert_eq!(c["taken"].as_str(), Some(mdadm.as_str()), "{image}: {c}");
        assert_eq!(node["format"].as_str(), Some(mdadm.as_str()), "{image}");
        let why = c["why"].as_str().unwrap();
        assert!(why.contains("mdadm takes"), "{why}");
        // When blkid reports the other, the reason says so.
        let blkid = blkid.expect("blkid names a type");
        if blkid != mdadm {
            assert!(why.contains(&format!("blkid -p reports {blkid}")), "{why}");
        } else {
            assert!(why.contains("blkid -p also reports it"), "{why}");
        }
        let problem = node["problems"][0].as_str().unwrap();
        assert!(
            problem.contains(both[0]) && problem.contains(both[1]) && problem.contains("wipefs"),
            "{problem}"
        );
        // The command given clears the other: afterwards only the taken one is left.
        let clear = c["clear"][0].as_str().unwrap();
        let args: Vec<&str> = clear.split_whitespace().collect();
        assert_eq!(args[0], "wipefs");
        let status = Command::new("wipefs")
            .args(&args[1..])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "{clear}");
        assert_eq!(
            wipefs_types(&path),
            vec![mdadm.clone()],
            "{image} after {clear}"
        );
        let node = disk_node(&path, &state);
        assert_eq!(node["detail"]["conflict"], Value::Null, "{image}: {node}");
    }

    // 0.90 at the end over a PV at the start: blkid and mdadm take the MD member; the PV
    // lies in the array's data area, so it is named as the array's content, not a
    // problem, and the array shows that PV.
    let path = img("pv090");
    assert_eq!(
        wipefs_types(&path),
        ["LVM2_member", "linux_raid_member"],
        "wipefs lists both"
    );
    assert_eq!(blkid_type(&path), (0, Some("linux_raid_member".into())));
    assert_eq!(mdadm_takes(&path), "linux_raid_member");
    let node = disk_node(&path, &state);
    let c = &node["detail"]["conflict"];
    assert_eq!(node["format"], "linux_raid_member");
    assert_eq!(c["taken"], "linux_raid_member");
    assert_eq!(c["array_content"], true);
    assert_eq!(formats(c), ["LVM2_member", "linux_raid_member"]);
    assert!(node["problems"].as_array().unwrap().is_empty(), "{node}");
    let array = &node["children"][0];
    assert!(
        array["summary"].as_str().unwrap().contains("LVM2 PV"),
        "{array}"
    );
}
