//! Reference MD arrays built by the real mdadm and kernel in the kernel lab (every level and
//! layout md has, all superblock versions, chunks from 4K to 512K, 2 to 8 members, a stale
//! member): tessera groups their members, names them, and describes them as mdadm does.

mod common;

use std::collections::HashMap;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// One line of the generator's `arrays` file.
#[derive(Debug, Clone)]
pub struct Reference {
    pub name: String,
    pub level: String,
    pub layout: String,
    pub chunk_kib: Option<u64>,
    pub metadata: String,
    pub members: usize,
    pub bytes: u64,
    pub sha256: String,
}

/// The fixtures, built once per version of the generator script and shared by the tests
/// (a lock keeps concurrent test processes from building them twice).
pub fn fixtures() -> (PathBuf, Vec<Reference>) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/md_arrays.sh");
    let text = std::fs::read(&script).unwrap();
    // FNV-1a of the script: a changed generator builds afresh.
    let hash = text.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("md-arrays-{hash:016x}"));
    std::fs::create_dir_all(&dir).unwrap();
    let lock = std::fs::File::create(dir.join(".lock")).unwrap();
    // SAFETY: flock on a descriptor this function owns; released when `lock` drops.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    if !dir.join("done").exists() {
        let out = Command::new("bash")
            .arg(&script)
            .arg(&dir)
            .output()
            .expect("run md_arrays.sh");
        let log = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && log.contains("md-arrays-done"),
            "md_arrays.sh failed:\n{log}"
        );
        std::fs::write(dir.join("done"), "").unwrap();
    }
    let list = std::fs::read_to_string(dir.join("arrays")).unwrap();
    let refs = list
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Reference {
                name: f[0].into(),
                level: f[1].into(),
                layout: f[2].into(),
                chunk_kib: f[3].parse().ok(),
                metadata: f[4].into(),
                members: f[5].parse().unwrap(),
                bytes: f[6].parse().unwrap(),
                sha256: f[7].into(),
            }
        })
        .collect();
    (dir, refs)
}

fn tessera_json(dir: &Path, args: &[&str]) -> Value {
    let out = Command::new(common::tessera_path())
        .arg("--devices")
        .arg(dir.join("*.img"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `Key : value` lines of `mdadm --detail`.
fn mdadm_detail(dir: &Path, name: &str) -> HashMap<String, String> {
    std::fs::read_to_string(dir.join(format!("{name}.detail")))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(" : "))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn every_reference_array_is_assembled_and_described_as_mdadm_does() {
    let (dir, refs) = fixtures();
    assert_eq!(refs.len(), 33, "the generator's arrays");
    let list = tessera_json(&dir, &["md", "list", "--json"]);
    let arrays = list["arrays"].as_array().unwrap();
    assert_eq!(arrays.len(), refs.len(), "one array per reference");
    for r in &refs {
        let detail = mdadm_detail(&dir, &r.name);
        // 0.90's detail adds "(local to host ...)".
        let uuid = detail["UUID"]
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        let uuid = &uuid;
        let a = arrays
            .iter()
            .find(|a| a["uuid"] == uuid.as_str())
            .unwrap_or_else(|| panic!("{}: no array with UUID {uuid}", r.name));
        // 0.90 arrays have no name and go by UUID.
        let want_name = if r.metadata == "0.90" { uuid } else { &r.name };
        assert_eq!(a["name"], want_name.as_str(), "{}", r.name);
        assert_eq!(a["metadata"], r.metadata.as_str(), "{}", r.name);
        assert_eq!(a["level"], detail["Raid Level"].as_str(), "{}", r.name);
        assert_eq!(a["raid_disks"], r.members, "{}", r.name);
        assert_eq!(
            a["size_bytes"], r.bytes,
            "{}: the kernel's array size",
            r.name
        );
        assert_eq!(
            a["raid_disks"].to_string(),
            detail["Raid Devices"],
            "{}",
            r.name
        );
        // mdadm prints no layout for raid4 and "-unknown-" for raid0's.
        if let Some(layout) = detail.get("Layout").filter(|_| r.level != "0") {
            assert_eq!(a["layout"], layout.as_str(), "{}", r.name);
        }
        if let Some(chunk) = detail.get("Chunk Size") {
            assert_eq!(
                format!("{}K", a["chunk_bytes"].as_u64().unwrap() / 1024),
                *chunk,
                "{}",
                r.name
            );
        }
        let members = a["members"].as_array().unwrap();
        if r.name == "stale" {
            // Member 2 failed and was removed; its superblock still says active, with the
            // events count of before: left out as stale, the array degraded.
            assert_eq!(
                a["health"]["degraded"]["missing_slots"],
                serde_json::json!([2])
            );
            let out = &a["left_out"].as_array().unwrap()[0];
            assert!(out["device"].as_str().unwrap().ends_with("stale-2.img"));
            assert!(
                out["reason"].as_str().unwrap().starts_with("stale"),
                "{out}"
            );
            assert!(out["events"].as_u64() < a["events"].as_u64());
        } else {
            assert_eq!(a["health"], "complete", "{}: {a}", r.name);
            assert!(a["left_out"].as_array().unwrap().is_empty());
            // Slot i is the member mdadm made as device i.
            for (i, m) in members.iter().enumerate() {
                let want = format!("{}-{i}.img", r.name);
                assert!(
                    m["device"].as_str().unwrap().ends_with(&want),
                    "{}: slot {i} is {m}",
                    r.name
                );
            }
        }
    }

    // detail and examine on one member agree with the list.
    let d = tessera_json(&dir, &["md", "detail", "r6-nc-7", "--json"]);
    assert_eq!(d["layout"], "ddf-N-continue");
    assert_eq!(d["raid_disks"], 7);
    let e = tessera_json(
        &dir,
        &[
            "md",
            "examine",
            dir.join("r10-f2-3-1.img").to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(e["layout"], "far=2");
    assert_eq!(e["role"], "active 1");
    assert_eq!(e["metadata"], "1.0");
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `tessera serve --read-only` over the reference members: every array is exported (the
/// stale one degraded, as read-only serving starts it by itself) as md/NAME, or md/UUID for
/// 0.90 arrays, and nbdcopy reads the kernel's bytes from each.
#[test]
fn every_reference_array_is_served_byte_exact() {
    let (dir, refs) = fixtures();
    let state = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut child = Command::new(common::tessera_path())
        .arg("--devices")
        .arg(dir.join("*.img"))
        .arg("--state-dir")
        .arg(state.path())
        .args(["serve", "--read-only", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
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
    let _guard = Kill(child);
    let mut first = String::new();
    std::io::BufRead::read_line(&mut out, &mut first).unwrap();
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    assert!(
        first.starts_with(&format!("serving {} volume(s)", refs.len())),
        "{first}"
    );
    let addr = first
        .split_whitespace()
        .find(|w| w.starts_with("nbd://"))
        .unwrap()
        .trim_end_matches("/VG/LV")
        .to_string();
    let mut failures = Vec::new();
    for r in &refs {
        let detail = mdadm_detail(&dir, &r.name);
        let uuid = detail["UUID"]
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        let export = if r.metadata == "0.90" {
            uuid
        } else {
            r.name.clone()
        };
        let copy = Command::new("nbdcopy")
            .arg(format!("{addr}/md/{export}"))
            .arg("-")
            .output()
            .unwrap();
        if !copy.status.success() {
            failures.push(format!(
                "{}: {}",
                r.name,
                String::from_utf8_lossy(&copy.stderr)
            ));
            continue;
        }
        if copy.stdout.len() as u64 != r.bytes {
            failures.push(format!(
                "{}: {} bytes, the kernel's {}",
                r.name,
                copy.stdout.len(),
                r.bytes
            ));
        } else if sha256_hex(&copy.stdout) != r.sha256 {
            failures.push(format!("{}: other bytes than the kernel read", r.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {}:\n{}",
        failures.len(),
        refs.len(),
        failures.join("\n")
    );
}

/// Every member of every redundant reference array taken away in turn (every pair for
/// raid6): what the rest rebuilds is byte-exact.
#[test]
fn every_loss_the_redundancy_covers_rebuilds_byte_exact() {
    use tessera_block::BlockDevice;
    let (dir, refs) = fixtures();
    let engine = tessera_engine::Engine::new(
        dir.join("state"),
        vec![dir.join("*.img").to_string_lossy().into_owned()],
    );
    let scan = engine.md_scan(false).unwrap();
    let mut registry = tessera_mapper::TargetRegistry::new();
    tessera_raid::register(&mut registry);
    let registry = std::sync::Arc::new(registry);
    let mut checked = 0;
    let mut failures = Vec::new();
    for r in refs.iter().filter(|r| r.level != "0" && r.name != "stale") {
        let detail = mdadm_detail(&dir, &r.name);
        let uuid = detail["UUID"]
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        let whole = scan.array(&uuid).expect("assembled");
        let n = whole.slots.len();
        let mut losses: Vec<Vec<usize>> = (0..n).map(|i| vec![i]).collect();
        if r.level == "6" {
            for a in 0..n {
                for b in a + 1..n {
                    losses.push(vec![a, b]);
                }
            }
        }
        for lost in losses {
            let mut array = whole.clone();
            for &i in &lost {
                array.slots[i] = None;
            }
            // raid10 survives only some pairs; single losses always.
            if matches!(array.health(), tessera_engine::md::Health::Failed { .. }) {
                continue;
            }
            let dev = match array.activate(&r.name, registry.clone(), None) {
                Ok(d) => d,
                Err(e) => {
                    failures.push(format!("{} without {lost:?}: {e}", r.name));
                    continue;
                }
            };
            let mut data = vec![0u8; dev.size_bytes() as usize];
            dev.read_at(&mut data, 0).unwrap();
            checked += 1;
            if sha256_hex(&data) != r.sha256 {
                failures.push(format!("{} without {lost:?}: other bytes", r.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // 21 raid6 pair-and-single sets, the rest single losses.
    assert!(checked > 200, "{checked} degraded reads checked");
}

/// Damaged members: a superblock with a bad checksum, a truncated member and a member of
/// another array among them. Each is named with what is wrong, the array is listed as
/// degraded, and nothing is written.
#[test]
fn damaged_members_are_named_and_the_rest_is_assembled() {
    let (dir, _) = fixtures();
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let t = tmp.path();
    for i in 0..4 {
        std::fs::copy(
            dir.join(format!("r5-la-4-{i}.img")),
            t.join(format!("a-{i}.img")),
        )
        .unwrap();
    }
    std::fs::copy(dir.join("r5-ra-4-0.img"), t.join("other.img")).unwrap();
    // Member 1: one byte of its 1.2 superblock (at 4 KiB) changed.
    let mut m1 = std::fs::read(t.join("a-1.img")).unwrap();
    m1[4096 + 100] ^= 0x55;
    std::fs::write(t.join("a-1.img"), &m1).unwrap();
    // Member 3: cut to 2 KiB, before its superblock.
    std::fs::File::options()
        .write(true)
        .open(t.join("a-3.img"))
        .unwrap()
        .set_len(2048)
        .unwrap();
    let before: Vec<Vec<u8>> = (0..4)
        .map(|i| std::fs::read(t.join(format!("a-{i}.img"))).unwrap())
        .collect();
    let out = Command::new(common::tessera_path())
        .arg("--devices")
        .arg(t.join("*.img"))
        .args(["md", "list", "--json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "problems make the exit status 1"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("a-1.img: MD 1.2 superblock has checksum"),
        "{err}"
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let arrays = json["arrays"].as_array().unwrap();
    // r5-la-4 with members 0 and 2 (one short of running), and the other array's member.
    assert_eq!(arrays.len(), 2, "{json}");
    let a = arrays.iter().find(|a| a["name"] == "r5-la-4").unwrap();
    assert_eq!(
        a["health"]["failed"]["missing_slots"],
        serde_json::json!([1, 3]),
        "{a}"
    );
    let b = arrays.iter().find(|a| a["name"] == "r5-ra-4").unwrap();
    assert_eq!(
        b["members"][0]["device"].as_str().unwrap(),
        t.join("other.img").to_str().unwrap()
    );
    for (i, old) in before.iter().enumerate() {
        assert!(
            &std::fs::read(t.join(format!("a-{i}.img"))).unwrap() == old,
            "a-{i}.img changed"
        );
    }
}
