//! DDF metadata as mdadm 4.2 wrote it (a container over four disks with a raid5, a
//! two-level raid10 and a raid1 subarray, made in the kernel lab; see
//! crates/cli/tests/ddf_lab.rs), read back, encoded back byte for byte, and damaged copies
//! of it named clearly: a bad anchor CRC, a bad primary header, primary and secondary
//! copies disagreeing, truncated devices, a bad configuration record, a disk the newer
//! records mark failed.
//!
//! The fixture holds the sectors of each disk's last 32 MiB that are not zero (sectors
//! of all ones stored as a flag): `TDDFSEC1`, the disk count (be32), then per disk its
//! size (be64) and sector count (be32), and per sector its LBA (be64), a kind byte (0 all
//! ones, 1 literal) and, for literal sectors, its 512 bytes.

use std::path::{Path, PathBuf};

use tessera_block::{BlockDevice, FileDevice, OpenOptions};
use tessera_formats::ddf::{self, DdfError, Health, HeaderType};

const FIXTURE: &str = "tests/fixtures/ddf/mdadm-4.2-r5-r10-r1.sectors";

/// The four disks as sparse files in `dir`.
fn disks(dir: &Path) -> Vec<PathBuf> {
    let data = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE)).unwrap();
    assert_eq!(&data[..8], b"TDDFSEC1");
    let mut at = 8;
    let mut take = |n: usize| {
        let s = &data[at..at + n];
        at += n;
        s.to_vec()
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
            let bytes = if kind == 0 { vec![0xff; 512] } else { take(512) };
            f.write_all_at(&bytes, lba * 512).unwrap();
        }
        out.push(path);
    }
    out
}

fn open(p: &Path) -> FileDevice {
    FileDevice::open(p, OpenOptions::default()).unwrap()
}

fn read_all(paths: &[PathBuf]) -> Vec<(String, ddf::DdfMetadata)> {
    paths
        .iter()
        .map(|p| {
            let m = ddf::probe(&open(p)).unwrap().expect("a DDF anchor");
            (p.display().to_string(), m)
        })
        .collect()
}

#[test]
fn mdadm_containers_read_as_mdadm_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let paths = disks(dir.path());
    let metas = read_all(&paths);
    for (name, m) in &metas {
        assert!(m.warnings.is_empty(), "{name}: {:?}", m.warnings);
        assert_eq!(m.anchor.revision, "01.02.00");
        assert_eq!(m.active, HeaderType::Primary);
        assert_eq!(m.anchor.header_type, HeaderType::Anchor);
        assert!(m.primary.is_some() && m.secondary.is_some());
        assert!(m.controller.as_ref().unwrap().guid.vendor().starts_with("Linux-MD"));
        assert_eq!(m.phys.entries.len(), 4);
        let names: Vec<String> = m.virt.entries.iter().map(|v| v.name()).collect();
        assert_eq!(names, ["r5", "r10", "r1"]);
        assert!(m.own_entry().unwrap().is_working());
    }
    let containers = ddf::assemble(metas);
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert!(c.left_out.is_empty() && c.problems.is_empty(), "{c:?}");
    let by_name = |n: &str| c.subarrays.iter().find(|s| s.name() == n).unwrap();
    let r5 = by_name("r5");
    assert_eq!(r5.md, Ok((5, 2)), "RAID5 N-continue is md's left-symmetric");
    assert_eq!((r5.slots.len(), r5.chunk_sectors, r5.blocks), (4, 128, 8192));
    assert_eq!(r5.array_blocks, 3 * 8192);
    let r10 = by_name("r10");
    assert_eq!(r10.md, Ok((10, 0x102)), "RAID1 legs spanned: md raid10 n2");
    assert_eq!(r10.slots.len(), 4);
    assert!(r10.slots.iter().all(|s| s.lba_offset == 8192));
    let r1 = by_name("r1");
    assert_eq!(r1.md, Ok((1, 0)));
    assert_eq!((r1.slots.len(), r1.blocks), (2, 6144));
    for s in &c.subarrays {
        assert_eq!(s.health(), Health::Complete, "{}", s.name());
    }
}

#[test]
fn every_record_encodes_back_to_the_bytes_mdadm_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let paths = disks(dir.path());
    for (name, m) in read_all(&paths) {
        assert_eq!(m.anchor.encode(), m.anchor.raw(), "{name}: anchor");
        for h in [&m.primary, &m.secondary].into_iter().flatten() {
            assert_eq!(h.encode(), h.raw(), "{name}: {} header", h.header_type);
        }
        for c in &m.configs {
            assert_eq!(c.encode(), c.raw(), "{name}: config record {}", c.record);
        }
        // Written back whole to a copy, it reads back the same.
        let copy = dir.path().join("copy.img");
        std::fs::copy(&name, &copy).unwrap();
        let dev = open(&copy);
        m.write(&dev).unwrap();
        let again = ddf::probe(&dev).unwrap().unwrap();
        assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&name).unwrap(), "{name}");
        assert_eq!(again.configs, m.configs);
    }
}

/// Flips one byte of `path` at `offset`.
fn flip(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x5a;
    f.write_all_at(&b, offset).unwrap();
}

#[test]
fn a_bad_anchor_crc_is_named_with_its_device_and_sector() {
    let dir = tempfile::tempdir().unwrap();
    let paths = disks(dir.path());
    let size = std::fs::metadata(&paths[0]).unwrap().len();
    flip(&paths[0], size - 512 + 300);
    let err = ddf::probe(&open(&paths[0])).unwrap_err();
    assert!(matches!(err, DdfError::AnchorCrc { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&paths[0].display().to_string()), "{text}");
    assert!(
        text.contains(&format!("anchor at sector {}", size / 512 - 1)) && text.contains("bad CRC"),
        "{text}"
    );
}

#[test]
fn a_damaged_primary_header_falls_back_to_the_secondary_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let paths = disks(dir.path());
    let m = ddf::probe(&open(&paths[1])).unwrap().unwrap();
    flip(&paths[1], m.anchor.primary_lba * 512 + 200);
    let again = ddf::probe(&open(&paths[1])).unwrap().unwrap();
    assert_eq!(again.active, HeaderType::Secondary);
    assert_eq!(again.virt, m.virt);
    let w = again.warnings.join("\n");
    assert!(
        w.contains(&paths[1].display().to_string())
            && w.contains("primary header unusable: bad CRC"),
        "{w}"
    );
    // Both headers damaged: nothing to read, and both reasons given.
    flip(&paths[1], m.anchor.secondary_lba * 512 + 200);
    let err = ddf::probe(&open(&paths[1])).unwrap_err().to_string();
    assert!(
        err.contains("no usable DDF header") && err.matches("bad CRC").count() == 2,
        "{err}"
    );
}

#[test]
fn primary_and_secondary_disagreeing_is_named_and_the_newer_wins() {
    let dir = tempfile::tempdir().unwrap();
    let paths = disks(dir.path());
    let dev = open(&paths[2]);
    let m = ddf::probe(&dev).unwrap().unwrap();
    // The secondary's virtual disk records changed (a name), resealed, at the same sequence.
    let mut changed = m.clone();
    changed.primary = None;
    changed.virt.entries[0].name_bytes[..2].copy_from_slice(b"xx");
    changed.write(&dev).unwrap();
    let again = ddf::probe(&dev).unwrap().unwrap();
    assert_eq!(again.active, HeaderType::Primary);
    assert_eq!(again.virt.entries[0].name(), "r5");
    let w = again.warnings.join("\n");
    assert!(
        w.contains("primary and secondary copies disagree on the virtual disk records"),
        "{w}"
    );
    // One step newer, the secondary wins, and the older primary is named.
    let mut newer = changed.clone();
    let sec = newer.secondary.as_mut().unwrap();
    sec.seq += 1;
    newer.write(&dev).unwrap();
    let again = ddf::probe(&dev).unwrap().unwrap();
    assert_eq!(again.active, HeaderType::Secondary);
    assert_eq!(again.virt.entries[0].name(), "xx");
    let w = again.warnings.join("\n");
    assert!(
        w.contains(&format!(
            "primary header is at sequence {}, the secondary at {}: using the secondary",
            m.seq(),
            m.seq() + 1
        )),
        "{w}"
    );
}

#[test]
fn truncated_devices_are_not_taken_for_ddf_or_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let paths = disks(dir.path());
    // Cut short: the last sector is no anchor any more.
    let size = std::fs::metadata(&paths[0]).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&paths[0]).unwrap();
    f.set_len(size - 1024 * 1024).unwrap();
    assert!(ddf::probe(&open(&paths[0])).unwrap().is_none());
    // The anchor alone on a small device: its copies lie past the end.
    let anchor = {
        let m = ddf::probe(&open(&paths[1])).unwrap().unwrap();
        m.anchor.raw().to_vec()
    };
    let small = dir.path().join("small.img");
    std::fs::write(&small, vec![0u8; 1 << 20]).unwrap();
    let dev = open(&small);
    dev.write_at(&anchor, (1 << 20) - 512).unwrap();
    let err = ddf::probe(&dev).unwrap_err().to_string();
    assert!(
        err.contains(&small.display().to_string())
            && err.contains("primary: sector")
            && err.contains("past the device's end"),
        "{err}"
    );
    // Tiny devices and empty ones read as nothing.
    let tiny = dir.path().join("tiny.img");
    std::fs::write(&tiny, [0u8; 100]).unwrap();
    assert!(ddf::probe(&open(&tiny)).unwrap().is_none());
}

#[test]
fn a_bad_configuration_record_is_named_and_the_other_disks_copies_serve() {
    let dir = tempfile::tempdir().unwrap();
    let paths = disks(dir.path());
    let m = ddf::probe(&open(&paths[0])).unwrap().unwrap();
    let crl = u64::from(m.header().config_record_len);
    let r5 = m
        .configs
        .iter()
        .find(|c| c.guid == m.virt.entries[0].guid)
        .unwrap();
    for lba in [m.anchor.primary_lba, m.anchor.secondary_lba] {
        let conf = lba + u64::from(m.header().sections[3].offset) + r5.record as u64 * crl;
        flip(&paths[0], conf * 512 + 90);
    }
    let again = ddf::probe(&open(&paths[0])).unwrap().unwrap();
    let w = again.warnings.join("\n");
    assert!(
        w.contains(&format!(
            "configuration record {} (primary copy) has a bad CRC",
            r5.record
        ))
            && w.contains(&paths[0].display().to_string()),
        "{w}"
    );
    assert_eq!(again.configs.len(), m.configs.len() - 1);
    let c = ddf::assemble(read_all(&paths)).remove(0);
    let r5 = c.subarrays.iter().find(|s| s.name() == "r5").unwrap();
    assert_eq!(r5.health(), Health::Complete);
}

#[test]
fn a_disk_the_newer_records_mark_failed_is_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let paths = disks(dir.path());
    let gone = ddf::probe(&open(&paths[0])).unwrap().unwrap().disk.refnum;
    // The other three record disk 0 failed, one sequence on, as mdmon would.
    for p in &paths[1..] {
        let dev = open(p);
        let mut m = ddf::probe(&dev).unwrap().unwrap();
        for e in m.phys.entries.iter_mut().filter(|e| e.refnum == gone) {
            e.state = ddf::records::pd_state::FAILED;
        }
        for h in [m.primary.as_mut(), m.secondary.as_mut()].into_iter().flatten() {
            h.seq += 1;
        }
        m.write(&dev).unwrap();
    }
    let c = ddf::assemble(read_all(&paths)).remove(0);
    assert_eq!(c.left_out.len(), 1);
    assert_eq!(c.left_out[0].0, 0);
    assert!(c.left_out[0].1.contains("mark it Failed"), "{:?}", c.left_out);
    assert!(
        c.problems.iter().any(|p| p.contains("behind the container's")),
        "{:?}",
        c.problems
    );
    let r5 = c.subarrays.iter().find(|s| s.name() == "r5").unwrap();
    assert!(matches!(r5.health(), Health::Degraded { .. }));
    let r1 = c.subarrays.iter().find(|s| s.name() == "r1").unwrap();
    let missing: Vec<_> = r1.slots.iter().filter_map(|s| s.missing.clone()).collect();
    // r1 lies on two other disks (or on disk 0): whichever, a missing slot says why.
    for m in missing {
        assert!(m.contains("Failed"), "{m}");
    }
}
