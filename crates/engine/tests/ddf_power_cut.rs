//! Crash safety of the DDF records a writable virtual disk keeps, tested by cutting the
//! power at every write.
//!
//! The container mdadm 4.2 made (four disks; raid5, two-level raid10 and raid1 virtual
//! disks; the fixture of crates/formats/tests/ddf_real.rs) sits behind fault-injecting
//! devices sharing one power domain. The raid5's records go through the states a run
//! gives them: written to (not consistent), a member failed (degraded, the disk failed),
//! stopped (consistent). The run is replayed with the power cut after 0, 1, 2, ... writes,
//! with clean cuts (unflushed writes lost) and torn ones (each sector of an unflushed write
//! lands or not). After every cut the disks must read, and the container they make must be
//! the one before the change being written or the one after it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tessera_block::{FaultDevice, FileDevice, OpenOptions, PowerDomain, SharedDevice};
use tessera_engine::modules::ddf::records::{ContainerRecords, VolumeRecords};
use tessera_formats::ddf::{self, Container};
use tessera_raid::metadata::{MemberRecord, MemberRole, SetMetadata, SetRecord};

const FIXTURE: &str = "../formats/tests/fixtures/ddf/mdadm-4.2-r5-r10-r1.sectors";

/// The fixture's disks as sparse files in `dir` (its format: see ddf_real.rs).
fn disks(dir: &Path) -> Vec<PathBuf> {
    let data = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE)).unwrap();
    assert_eq!(&data[..8], b"TDDFSEC1");
    let mut at = 8;
    let mut take = |n: usize| {
        let s = data[at..at + n].to_vec();
        at += n;
        s
    };
    let count = u32::from_be_bytes(take(4).try_into().unwrap());
    let mut out = Vec::new();
    for i in 0..count {
        let size = u64::from_be_bytes(take(8).try_into().unwrap());
        let sectors = u32::from_be_bytes(take(4).try_into().unwrap());
        let path = dir.join(format!("d{i}.img"));
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(size).unwrap();
        use std::os::unix::fs::FileExt;
        for _ in 0..sectors {
            let lba = u64::from_be_bytes(take(8).try_into().unwrap());
            let kind = take(1)[0];
            let bytes = if kind == 0 {
                vec![0xff; 512]
            } else {
                take(512)
            };
            f.write_all_at(&bytes, lba * 512).unwrap();
        }
        out.push(path);
    }
    out
}

fn file(p: &Path) -> SharedDevice {
    Arc::new(FileDevice::open(p, OpenOptions::default()).unwrap())
}

/// The container on `devices` (named by `paths`); panics naming what cannot be read.
fn container(paths: &[PathBuf], devices: &[SharedDevice]) -> Container {
    let read = paths
        .iter()
        .zip(devices)
        .map(|(p, d)| {
            let m = ddf::probe(d.as_ref())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                .unwrap_or_else(|| panic!("{}: no DDF anchor", p.display()));
            (p.display().to_string(), m)
        })
        .collect();
    let mut all = ddf::assemble(read);
    assert_eq!(all.len(), 1);
    all.remove(0)
}

/// What the records say, in short: the sequence, each virtual disk's state bytes and
/// members, each physical disk's state.
fn summary(c: &Container) -> String {
    let top = &c.disks[c.newest].1;
    let mut s = format!("seq {}", c.seq);
    for sub in &c.subarrays {
        s.push_str(&format!(
            "; {} {:02x}/{:02x} cfg {} {:?}",
            sub.name(),
            sub.entry.state,
            sub.entry.init_state,
            sub.seqnum,
            sub.slots.iter().map(|sl| sl.refnum).collect::<Vec<_>>()
        ));
    }
    for e in &top.phys.entries {
        s.push_str(&format!(
            "; pd {:08x} {:04x}/{:04x}",
            e.refnum, e.state, e.kind
        ));
    }
    s
}

/// The records of the raid5's run, in order: writes begin; the member in slot 1 fails;
/// writes stop.
fn run_records(c: &Container) -> Vec<SetRecord> {
    let r5 = c.subarrays.iter().find(|s| s.name() == "r5").unwrap();
    let whole: Vec<MemberRecord> = r5
        .slots
        .iter()
        .enumerate()
        .map(|(i, sl)| MemberRecord {
            device: c.disks[sl.disk.unwrap()].0.clone(),
            role: MemberRole::InSync(i),
        })
        .collect();
    let mut failed = whole.clone();
    failed[1].role = MemberRole::Faulty;
    vec![
        SetRecord {
            clean: false,
            members: whole,
        },
        SetRecord {
            clean: false,
            members: failed.clone(),
        },
        SetRecord {
            clean: true,
            members: failed,
        },
    ]
}

/// Runs the records over `devices`; how many were written before one failed.
fn replay(paths: &[PathBuf], devices: &[SharedDevice]) -> usize {
    let c = container(paths, devices);
    let r5 = c.subarrays.iter().find(|s| s.name() == "r5").unwrap().index;
    let shared = ContainerRecords::new(&c, devices);
    let records = VolumeRecords::new(shared, r5, Vec::new());
    assert!(!records.start().dirty, "mdadm left the raid5 consistent");
    let mut done = 0;
    for r in run_records(&c) {
        if records.record(&r).is_err() {
            break;
        }
        done += 1;
    }
    done
}

#[test]
fn every_power_cut_leaves_the_records_before_or_after_the_change() {
    // The states the run goes through, read back after each record.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let paths = disks(dir.path());
    let files: Vec<SharedDevice> = paths.iter().map(|p| file(p)).collect();
    let mut states = vec![summary(&container(&paths, &files))];
    {
        let c = container(&paths, &files);
        let r5 = c.subarrays.iter().find(|s| s.name() == "r5").unwrap().index;
        let records = VolumeRecords::new(ContainerRecords::new(&c, &files), r5, Vec::new());
        for r in run_records(&c) {
            records.record(&r).unwrap();
            states.push(summary(&container(&paths, &files)));
        }
    }
    // Each record changed what the disks say.
    for w in states.windows(2) {
        assert_ne!(w[0], w[1]);
    }
    let c = container(&paths, &files);
    let r5 = c.subarrays.iter().find(|s| s.name() == "r5").unwrap();
    assert_eq!(
        r5.entry.state_words(),
        "degraded, consistent",
        "{}",
        states[3]
    );
    assert_eq!(c.left_out.len(), 1, "one disk is failed: {:?}", c.left_out);
    assert!(r5.slots[1].disk.is_none());

    let mut cuts = 0;
    for torn in [None, Some(7u64)] {
        for n in 0.. {
            let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
            let paths = disks(dir.path());
            let domain = PowerDomain::new();
            if let Some(seed) = torn {
                domain.set_torn(seed);
            }
            let devices: Vec<SharedDevice> = paths
                .iter()
                .map(|p| Arc::new(FaultDevice::new(file(p), domain.clone())) as SharedDevice)
                .collect();
            domain.cut_after(n);
            let done = replay(&paths, &devices);
            if !domain.is_cut() {
                assert_eq!(done, 3);
                break;
            }
            cuts += 1;
            let files: Vec<SharedDevice> = paths.iter().map(|p| file(p)).collect();
            let now = summary(&container(&paths, &files));
            assert!(
                now == states[done] || now == states[done + 1],
                "cut after {n} writes (torn {torn:?}) while writing record {done}: read\n{now}\nnot\n{}\nor\n{}",
                states[done],
                states[done + 1]
            );
        }
    }
    // Three records over four disks, each disk two copies of seven writes and the anchor.
    assert!(cuts > 100, "only {cuts} cuts");
}
