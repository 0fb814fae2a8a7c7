//! lvm2's raid LVs, made by the real lvm2 and kernel in the kernel lab (raid1, raid4,
//! raid5_ls, raid5_rs, raid6_zr, raid10, synced and filled with random data, and a 3-leg
//! raid1 whose third leg failed under a write): tessera reads the VG as lvm2 wrote it,
//! builds the tables lvm2 loads, and `tessera serve --read-only` exports each raid LV with
//! the kernel's bytes, also with a PV gone, and refuses the LVs that lose too much.

mod common;

use std::io::Read;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use tessera_block::{FileDevice, OpenOptions};
use tessera_formats::lvm2::config::{self, Node, Style};
use tessera_formats::lvm2::label::read_label;
use tessera_formats::lvm2::mda::{read_mda_header, read_text};
use tessera_formats::lvm2::vg::VolumeGroup;

/// One line of the generator's `lvs` file.
#[derive(Debug, Clone)]
struct Reference {
    name: String,
    segtype: String,
    bytes: u64,
    sha256: String,
}

/// The fixtures, built once per version of the generator script (lvm_raid.sh) and shared
/// by the tests; a lock keeps concurrent test processes from building them twice.
fn fixtures() -> (PathBuf, Vec<Reference>) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/lvm_raid.sh");
    let text = std::fs::read(&script).unwrap();
    let hash = text.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("lvm-raid-{hash:016x}"));
    std::fs::create_dir_all(&dir).unwrap();
    let lock = std::fs::File::create(dir.join(".lock")).unwrap();
    // SAFETY: flock on a descriptor this function owns; released when `lock` drops.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    if !dir.join("done").exists() {
        let out = Command::new("bash")
            .arg(&script)
            .arg(&dir)
            .output()
            .expect("run lvm_raid.sh");
        let log = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && log.contains("lvm-raid-done"),
            "lvm_raid.sh failed:\n{log}"
        );
        std::fs::write(dir.join("done"), "").unwrap();
    }
    let refs = std::fs::read_to_string(dir.join("lvs"))
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Reference {
                name: f[0].into(),
                segtype: f[1].into(),
                bytes: f[2].parse().unwrap(),
                sha256: f[3].into(),
            }
        })
        .collect();
    (dir, refs)
}

fn pv(dir: &Path, i: usize) -> String {
    dir.join(format!("pv{i}.img"))
        .to_string_lossy()
        .into_owned()
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn tessera(devices: &[String], state: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(common::tessera_path());
    for d in devices {
        cmd.args(["--devices", d]);
    }
    cmd.arg("--state-dir").arg(state).args(args);
    cmd.output().unwrap()
}

/// `tessera serve --read-only` over `devices`: the export names it lists, what it said on
/// standard error while starting, and what nbdcopy reads from each of `lvs`.
struct Served {
    exports: Vec<String>,
    warnings: String,
    reads: Vec<(String, Result<Vec<u8>, String>)>,
}

fn serve_and_read(devices: &[String], lvs: &[&str]) -> Served {
    let state = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut cmd = Command::new(common::tessera_path());
    for d in devices {
        cmd.args(["--devices", d]);
    }
    let mut child = cmd
        .arg("--state-dir")
        .arg(state.path())
        .args(["serve", "--read-only", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut err = child.stderr.take().unwrap();
    let guard = Kill(child);
    // The daemon warns before it prints its address; the list of exports follows it.
    let mut first = String::new();
    std::io::BufRead::read_line(&mut out, &mut first).unwrap();
    let mut exports = Vec::new();
    let count = first_count(&first);
    let mut line = String::new();
    while exports.len() < count {
        line.clear();
        if std::io::BufRead::read_line(&mut out, &mut line).unwrap() == 0 {
            break;
        }
        if let Some(name) = line.strip_prefix("  ") {
            exports.push(name.trim().to_string());
        }
    }
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let addr = first
        .split_whitespace()
        .find(|w| w.starts_with("nbd://"))
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .trim_end_matches("/VG/LV")
        .to_string();
    let reads = lvs
        .iter()
        .map(|lv| {
            let copy = Command::new("nbdcopy")
                .arg(format!("{addr}/lr/{lv}"))
                .arg("-")
                .output()
                .unwrap();
            let result = if copy.status.success() {
                Ok(copy.stdout)
            } else {
                Err(String::from_utf8_lossy(&copy.stderr).into_owned())
            };
            (lv.to_string(), result)
        })
        .collect();
    drop(guard);
    let mut warnings = String::new();
    let _ = err.read_to_string(&mut warnings);
    Served {
        exports,
        warnings,
        reads,
    }
}

/// "serving 7 volume(s) on ..." -> 7.
fn first_count(first: &str) -> usize {
    first
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Checks each read against the kernel's bytes; returns the failures.
fn compare(refs: &[Reference], served: &Served) -> Vec<String> {
    let mut failures = Vec::new();
    for (lv, read) in &served.reads {
        let r = refs.iter().find(|r| &r.name == lv).unwrap();
        match read {
            Err(e) => failures.push(format!("{lv}: {e}")),
            Ok(bytes) if bytes.len() as u64 != r.bytes => failures.push(format!(
                "{lv}: {} bytes, the kernel's {}",
                bytes.len(),
                r.bytes
            )),
            Ok(bytes) if sha256_hex(bytes) != r.sha256 => {
                failures.push(format!("{lv}: other bytes than the kernel read"))
            }
            Ok(_) => {}
        }
    }
    failures
}

/// The VG's newest metadata text as lvm2 stored it on `path`.
fn metadata_text(path: &str) -> String {
    let dev = FileDevice::open(
        path,
        OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let label = read_label(&dev).unwrap().unwrap();
    let header = read_mda_header(&dev, label.metadata_areas[0].offset).unwrap();
    let text = read_text(&dev, &header, &header.raw_locns[0]).unwrap();
    String::from_utf8(text)
        .unwrap()
        .trim_end_matches('\0')
        .to_string()
}

/// tessera reads lvm2's raid LVs with their types and sub-LVs, writes the VG back with every
/// key of every LV as lvm2 wrote it, and builds the `raid` rows lvm2 loaded into the kernel.
#[test]
fn raid_lvs_read_as_lvm2_wrote_them() {
    let (dir, refs) = fixtures();
    assert_eq!(refs.len(), 7, "the generator's LVs");
    let devices = vec![dir.join("pv*.img").to_string_lossy().into_owned()];
    let state = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();

    // lv list: the raid LVs with their types; the sub-LVs only with --all... as lvm2 hides
    // them, and then in brackets.
    let out = tessera(
        &devices,
        state.path(),
        &[
            "lv",
            "list",
            "--json",
            "-o",
            "lv_name,segtype,stripes,devices",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = common::report_rows(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(rows.len(), refs.len(), "{rows:?}");
    for r in &refs {
        let row = rows
            .iter()
            .find(|row| row["lv_name"] == r.name.as_str())
            .unwrap_or_else(|| panic!("{} not listed: {rows:?}", r.name));
        assert_eq!(row["segtype"], r.segtype.as_str(), "{}", r.name);
        assert!(
            row["devices"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{}_rimage_0(0)", r.name)),
            "{row:?}"
        );
    }

    // The text round trip: the logical_volumes section tessera writes holds exactly what
    // lvm2's held, key for key and in order.
    let text = metadata_text(&pv(&dir, 1));
    let (vg, info) = VolumeGroup::from_text(text.as_bytes()).unwrap();
    assert_eq!(vg.lvs.iter().filter(|l| l.raid().is_some()).count(), 7);
    let lvs_of = |text: &str| {
        let root = config::parse(text.as_bytes()).unwrap();
        let (_, vg) = root.sections().next().unwrap();
        match vg.get("logical_volumes") {
            Some(Node::Section(s)) => s.clone(),
            other => panic!("no logical_volumes: {other:?}"),
        }
    };
    for style in [Style::Disk, Style::File] {
        let written = vg.to_text(&info, style);
        assert_eq!(lvs_of(&written), lvs_of(&text), "{style:?}");
    }

    // The tables: lvm2's `raid` rows up to the devices, which tessera names, not numbers.
    for r in &refs {
        let kernel = std::fs::read_to_string(dir.join(format!("{}.table", r.name))).unwrap();
        let out = tessera(
            &devices,
            state.path(),
            &["lv", "table", &format!("lr/{}", r.name)],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ours = String::from_utf8_lossy(&out.stdout).into_owned();
        let head = |t: &str| -> Vec<String> {
            let words: Vec<String> = t.split_whitespace().map(str::to_string).collect();
            let nparams: usize = words[4].parse().unwrap();
            words[..6 + nparams].to_vec()
        };
        assert_eq!(
            head(&ours),
            head(&kernel),
            "{}: ours {ours} kernel {kernel}",
            r.name
        );
        if r.name == "r1f" {
            // Its third leg is marked failed by the other legs' superblocks.
            assert!(ours.trim_end().ends_with("- lr-r1f_rimage_1 - -"), "{ours}");
        } else {
            assert!(!ours.contains("- -"), "{ours}");
        }
    }
}

/// `tessera serve --read-only` over all five PVs exports every raid LV (not the sub-LVs),
/// and nbdcopy reads the kernel's bytes from each; r1f's stale leg is left out.
#[test]
fn raid_lvs_are_served_byte_exact() {
    let (dir, refs) = fixtures();
    let names: Vec<&str> = refs.iter().map(|r| r.name.as_str()).collect();
    let served = serve_and_read(
        &[dir.join("pv*.img").to_string_lossy().into_owned()],
        &names,
    );
    let mut want: Vec<String> = names.iter().map(|n| format!("lr/{n}")).collect();
    want.sort();
    assert_eq!(served.exports, want, "{}", served.warnings);
    let failures = compare(&refs, &served);
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        served.warnings
    );
    assert!(
        served
            .warnings
            .contains("lr/r1f: running degraded without image 2: r1f_rimage_2 is marked failed"),
        "{}",
        served.warnings
    );
}

/// With pv0 gone every raid LV has lost an image and still serves the kernel's bytes
/// (degraded); with pv0 and pv1 gone only raid6 survives, and the rest are refused naming
/// the images they lost.
#[test]
fn raid_lvs_serve_degraded_and_refuse_what_they_cannot_survive() {
    let (dir, refs) = fixtures();
    let names: Vec<&str> = refs.iter().map(|r| r.name.as_str()).collect();
    let without_pv0: Vec<String> = (1..5).map(|i| pv(&dir, i)).collect();
    let served = serve_and_read(&without_pv0, &names);
    assert_eq!(served.exports.len(), refs.len(), "{}", served.warnings);
    let failures = compare(&refs, &served);
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        served.warnings
    );
    for r in &refs {
        assert!(
            served.warnings.contains(&format!(
                "lr/{0}: running degraded without image 0: {0}_rimage_0 is on missing PV pv0",
                r.name
            )),
            "{}: {}",
            r.name,
            served.warnings
        );
    }

    // r1f keeps its third leg, whose own superblock is all that is left: nothing on the
    // PVs present says it failed, so it runs on it (as the kernel would) and shows the
    // bytes from before the failure.
    let without_two: Vec<String> = (2..5).map(|i| pv(&dir, i)).collect();
    let served = serve_and_read(&without_two, &["r6"]);
    assert_eq!(served.exports, ["lr/r1f", "lr/r6"], "{}", served.warnings);
    let failures = compare(&refs, &served);
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        served.warnings
    );
    for r in refs.iter().filter(|r| r.name != "r6" && r.name != "r1f") {
        let line = served
            .warnings
            .lines()
            .find(|l| l.contains(&format!("skipping lr/{}:", r.name)))
            .unwrap_or_else(|| panic!("{} not refused: {}", r.name, served.warnings));
        assert!(
            line.contains("cannot be assembled")
                && line.contains(&format!(
                    "image 0: {}_rimage_0 is on missing PV pv0",
                    r.name
                )),
            "{line}"
        );
    }
}

/// The JSON of `lv list --all` shows the hidden sub-LVs in brackets, as lvm2's `lvs -a`.
#[test]
fn hidden_sub_lvs_are_listed_only_with_all() {
    let (dir, _) = fixtures();
    let state = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let devices = vec![dir.join("pv*.img").to_string_lossy().into_owned()];
    let out = tessera(
        &devices,
        state.path(),
        &["lv", "list", "--all", "--json", "-o", "lv_name,lv_attr"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = common::report_rows(&String::from_utf8_lossy(&out.stdout));
    let attr = |name: &str| -> Value {
        rows.iter()
            .find(|r| r["lv_name"] == name)
            .unwrap_or_else(|| panic!("{name}: {rows:?}"))["lv_attr"]
            .clone()
    };
    assert_eq!(
        attr("[r5ls_rimage_1]").as_str().unwrap().chars().next(),
        Some('i')
    );
    assert_eq!(
        attr("[r5ls_rmeta_1]").as_str().unwrap().chars().next(),
        Some('i')
    );
    assert_eq!(attr("r5ls").as_str().unwrap().chars().next(), Some('r'));
    // 7 raid LVs, 2+3+3+4+5+4+3 images, each with a data and a metadata sub-LV.
    assert_eq!(rows.len(), 7 + 2 * 24);
}
