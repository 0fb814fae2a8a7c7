//! Crash safety of the metadata commit, tested by cutting the power at every write.
//!
//! A VG of 3 PVs (image files) is changed through fault-injecting devices that share one
//! power domain. The change is replayed with a cut after 0, 1, 2, ... writes, once with
//! clean cuts (unflushed writes lost) and with torn writes (each 512-byte sector of an
//! unflushed write lands or not). After every cut, tessera and the real lvm2 (on loop
//! devices over the same images) must both read the old VG or the new one, and agree.

use std::process::Command;
use std::sync::Arc;

use serde_json::Value;
use tessera_block::{BlockDevice, FaultDevice, FileDevice, OpenOptions, PowerDomain, SharedDevice};
use tessera_engine::units::parse_size;
use tessera_engine::Engine;
use tessera_engine::{LvCreateOptions, PvCreateOptions};
use tessera_formats::lvm2::vg::VolumeGroup;

struct Images {
    dir: tempfile::TempDir,
    paths: Vec<String>,
    loops: Vec<String>,
}

impl Images {
    fn new(count: usize) -> Images {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let paths: Vec<String> = (0..count)
            .map(|i| {
                let p = dir.path().join(format!("pv{i}.img"));
                std::fs::File::create(&p)
                    .unwrap()
                    .set_len(64 << 20)
                    .unwrap();
                p.to_string_lossy().into_owned()
            })
            .collect();
        let loops = paths
            .iter()
            .map(|p| {
                let out = Command::new("losetup")
                    .args(["-f", "--show", p])
                    .output()
                    .expect("losetup runs");
                assert!(
                    out.status.success(),
                    "losetup: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            })
            .collect();
        Images { dir, paths, loops }
    }

    fn files(&self) -> Vec<(String, SharedDevice)> {
        self.paths
            .iter()
            .map(|p| {
                (
                    p.clone(),
                    Arc::new(FileDevice::open(p, OpenOptions::default()).unwrap()) as SharedDevice,
                )
            })
            .collect()
    }

    /// The images behind fault-injecting devices that share `domain`.
    fn faulty(&self, domain: &Arc<PowerDomain>) -> Vec<(String, SharedDevice)> {
        self.files()
            .into_iter()
            .map(|(p, d)| {
                (
                    p,
                    Arc::new(FaultDevice::new(d, domain.clone())) as SharedDevice,
                )
            })
            .collect()
    }

    fn engine(&self, devices: Vec<(String, SharedDevice)>) -> Engine {
        Engine::with_devices(self.dir.path().join("state"), devices)
    }

    /// The metadata region (everything before the first extent) of every image.
    fn save(&self, bytes: usize) -> Vec<Vec<u8>> {
        self.paths
            .iter()
            .map(|p| std::fs::read(p).unwrap()[..bytes].to_vec())
            .collect()
    }

    fn restore(&self, saved: &[Vec<u8>]) {
        for (p, data) in self.paths.iter().zip(saved) {
            let dev = FileDevice::open(p, OpenOptions::default()).unwrap();
            dev.write_at(data, 0).unwrap();
            dev.flush().unwrap();
        }
    }

    /// (VG name, seqno, sorted LV names) as lvm2 reads it.
    fn lvm2_view(&self) -> Vec<(String, u64, Vec<String>)> {
        let devices = self.loops.join(",");
        let out = Command::new("lvm")
            .args([
                "lvs",
                "--devices",
                &devices,
                "-a",
                "-o",
                "vg_name,vg_seqno,lv_name",
                "--reportformat",
                "json",
            ])
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .output()
            .expect("lvm runs");
        let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "lvs output ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let mut by_vg: std::collections::BTreeMap<String, (u64, Vec<String>)> = Default::default();
        for row in json["report"][0]["lv"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let e = by_vg
                .entry(row["vg_name"].as_str().unwrap().to_string())
                .or_default();
            e.0 = row["vg_seqno"].as_str().unwrap().parse().unwrap();
            e.1.push(row["lv_name"].as_str().unwrap().to_string());
        }
        let vgs = Command::new("lvm")
            .args([
                "vgs",
                "--devices",
                &devices,
                "-o",
                "vg_name,vg_seqno",
                "--reportformat",
                "json",
            ])
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .output()
            .unwrap();
        let json: Value = serde_json::from_slice(&vgs.stdout).unwrap();
        for row in json["report"][0]["vg"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let e = by_vg
                .entry(row["vg_name"].as_str().unwrap().to_string())
                .or_default();
            e.0 = row["vg_seqno"].as_str().unwrap().parse().unwrap();
        }
        by_vg
            .into_iter()
            .map(|(name, (seq, mut lvs))| {
                lvs.sort();
                (name, seq, lvs)
            })
            .collect()
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        for l in &self.loops {
            let _ = Command::new("losetup").args(["-d", l]).status();
        }
    }
}

fn view(vg: &VolumeGroup) -> (String, u64, Vec<String>) {
    let mut lvs: Vec<String> = vg.lvs.iter().map(|l| l.name.clone()).collect();
    lvs.sort();
    (vg.name.clone(), vg.seqno, lvs)
}

fn striped(size: &str, stripes: u32) -> LvCreateOptions {
    LvCreateOptions {
        size: parse_size(size).unwrap(),
        stripes: Some(stripes),
        stripe_size_bytes: None,
        pvs: vec![],
        segtype: None,
        mirrors: None,
        region_size_bytes: None,
    }
}

type Change = fn(&Engine) -> Result<(), tessera_engine::EngineError>;

/// Replays `change` with a cut at every write, clean and torn; returns the cut points run.
fn replay(images: &Images, vg_name: &str, change: Change, metadata_bytes: usize) -> usize {
    let saved = images.save(metadata_bytes);
    let old = images.engine(images.files()).scan().unwrap();
    let old_vg = old.vg(vg_name).expect("VG before the change").vg.clone();
    assert!(old.problems.is_empty(), "{:?}", old.problems);

    // A run without a cut counts the writes and gives the new VG.
    let domain = PowerDomain::new();
    let faulty = images.faulty(&domain);
    change(&images.engine(faulty)).expect("change without a cut");
    let writes = domain.writes_seen();
    assert!(
        writes >= 6,
        "a commit to 3 PVs writes at least 6 times, saw {writes}"
    );
    let new_scan = images.engine(images.files()).scan().unwrap();
    let new_view = new_scan
        .vgs
        .values()
        .map(|s| view(&s.vg))
        .next()
        .expect("VG after the change");
    let old_view = view(&old_vg);
    assert_ne!(old_view, new_view);

    let mut runs = 0;
    let mut outcomes = [0usize; 2];
    let mut split_names = 0;
    for torn_seed in [None, Some(1u64), Some(2), Some(3), Some(4)] {
        for cut in 0..=writes {
            images.restore(&saved);
            let domain = PowerDomain::new();
            if let Some(seed) = torn_seed {
                domain.set_torn(seed);
            }
            domain.cut_after(cut);
            let faulty = images.faulty(&domain);
            let result = change(&images.engine(faulty));
            if cut < writes {
                assert!(
                    result.is_err(),
                    "cut after {cut} of {writes} writes must fail the change"
                );
            }
            let _ = domain.cut_now();

            let scan = images.engine(images.files()).scan().unwrap();
            let seen: Vec<_> = scan.vgs.values().map(|s| view(&s.vg)).collect();
            assert_eq!(
                seen.len(),
                1,
                "cut {cut} (torn {torn_seed:?}): one VG expected, found {seen:?}; problems {:?}",
                scan.problems
            );
            let got = &seen[0];
            let is_old = *got == old_view;
            assert!(is_old || *got == new_view, "cut {cut} (torn {torn_seed:?}): tessera reads {got:?}, neither old {old_view:?} nor new {new_view:?}");
            assert!(
                scan.vgs.values().all(|s| s.missing.is_empty()),
                "cut {cut}: a PV went missing"
            );
            outcomes[usize::from(!is_old)] += 1;

            let lvm = images.lvm2_view();
            assert!(
                lvm == vec![old_view.clone()] || lvm == vec![new_view.clone()],
                "cut {cut} (torn {torn_seed:?}): lvm2 reads {lvm:?}, neither old nor new"
            );
            // A rename cut between headers leaves PVs whose copies carry different names;
            // lvm2 then goes by name and keeps the old one, tessera by seqno and takes the
            // new one. Both are whole VGs, and the next commit rewrites every copy.
            if lvm[0].0 == got.0 || old_view.0 == new_view.0 {
                assert_eq!(
                    lvm,
                    vec![got.clone()],
                    "cut {cut} (torn {torn_seed:?}): lvm2 and tessera disagree"
                );
            } else {
                split_names += 1;
            }
            runs += 1;
        }
    }
    images.restore(&saved);
    // Both outcomes must occur: the early cuts keep the old VG, the late ones the new.
    assert!(
        outcomes[0] > 0 && outcomes[1] > 0,
        "outcomes old/new: {outcomes:?}"
    );
    eprintln!(
        "{vg_name}: {runs} cut points over {writes} writes (old {} / new {}; rename half-landed {split_names})",
        outcomes[0], outcomes[1]
    );
    runs
}

#[test]
fn every_write_of_a_commit_can_be_cut() {
    let images = Images::new(3);
    let engine = images.engine(images.files());
    engine.vg_create("pc", &images.paths, None, false).unwrap();
    engine.lv_create("pc", "base", &striped("12M", 3)).unwrap();

    let mut total = 0;
    total += replay(
        &images,
        "pc",
        |e| e.lv_create("pc", "new", &striped("24M", 3)).map(|_| ()),
        1 << 20,
    );
    // Land the LV for good, then cut a rename and a removal.
    images
        .engine(images.files())
        .lv_create("pc", "new", &striped("24M", 3))
        .unwrap();
    total += replay(&images, "pc", |e| e.lv_remove("pc", "base"), 1 << 20);
    total += replay(
        &images,
        "pc",
        |e| e.vg_rename("pc", "pc2").map(|_| ()),
        1 << 20,
    );
    eprintln!("power cuts run: {total}");
    assert!(total >= 3 * 5 * 7);
}

#[test]
fn cuts_while_the_text_wraps_around_a_small_metadata_area() {
    let images = Images::new(3);
    let engine = images.engine(images.files());
    // 60 KiB metadata areas: a few commits fill them, and the copy under test wraps.
    let opts = PvCreateOptions {
        force: false,
        pe_start_bytes: Some(64 << 10),
    };
    engine.pv_create(&images.paths, &opts).unwrap();
    engine
        .vg_create("wrap", &images.paths, None, false)
        .unwrap();
    let mut wrapped = false;
    let wraps = |engine: &Engine| {
        let scan = engine.scan().unwrap();
        let header = scan.pvs[0].mdas[0].header.clone().unwrap();
        let locn = header.raw_locns[0];
        locn.offset + locn.size > header.size
    };
    for i in 0..200 {
        // Names of varying length make texts of varying size, so one lands across the end.
        let name = format!("l{i}{}", "x".repeat(i % 37));
        engine.lv_create("wrap", &name, &striped("12M", 3)).unwrap();
        if wraps(&engine) {
            wrapped = true;
            break;
        }
        engine.lv_remove("wrap", &name).unwrap();
        if wraps(&engine) {
            wrapped = true;
            break;
        }
    }
    assert!(
        wrapped,
        "the current text never wrapped around the metadata area"
    );
    let runs = replay(
        &images,
        "wrap",
        |e| e.lv_create("wrap", "after", &striped("12M", 3)).map(|_| ()),
        64 << 10,
    );
    assert!(runs >= 5 * 7);
}
