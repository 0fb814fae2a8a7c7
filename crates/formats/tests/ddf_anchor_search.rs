//! The DDF anchor where controllers that do not follow the specification put it: mdadm
//! (`PROBING ddf_extended`) then takes the first header magic in the last 32 MiB, in
//! 4-byte steps, as the anchor, whichever copy it is, and fails on a bad CRC there.
//! `ddf::probe_extended` must find what mdadm finds.
//!
//! The disks are mdadm 4.2's container (the fixture of ddf_real.rs) and layouts built from
//! it as the format describes them: the anchor sector erased (the first magic is then the
//! secondary header, 32 MiB from the end), the whole structure moved 1 MiB away from the
//! end with the tail padded with all ones (as PERC controllers leave it; the first magic
//! is then the primary header), a stray magic off a sector boundary, a damaged header.
//! The host's mdadm 4.2 reads only the last sector: it must see the plain container and
//! nothing on the others, as `ddf::probe` does.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tessera_block::{FileDevice, OpenOptions};
use tessera_formats::ddf::{self, records, DdfError, DdfMetadata, HeaderType};

const FIXTURE: &str = "tests/fixtures/ddf/mdadm-4.2-r5-r10-r1.sectors";
const SECTOR: u64 = 512;
const MAGIC: [u8; 4] = [0xde, 0x11, 0xde, 0x11];

/// One disk of the fixture: its size and its non-zero sectors (LBA, bytes).
struct Disk {
    size: u64,
    sectors: Vec<(u64, Vec<u8>)>,
}

fn fixture_disks() -> Vec<Disk> {
    let data = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE)).unwrap();
    assert_eq!(&data[..8], b"TDDFSEC1");
    let mut at = 8;
    let mut take = |n: usize| {
        let s = data[at..at + n].to_vec();
        at += n;
        s
    };
    let count = u32::from_be_bytes(take(4).try_into().unwrap());
    (0..count)
        .map(|_| {
            let size = u64::from_be_bytes(take(8).try_into().unwrap());
            let n = u32::from_be_bytes(take(4).try_into().unwrap());
            let sectors = (0..n)
                .map(|_| {
                    let lba = u64::from_be_bytes(take(8).try_into().unwrap());
                    let bytes = if take(1)[0] == 0 {
                        vec![0xff; 512]
                    } else {
                        take(512)
                    };
                    (lba, bytes)
                })
                .collect();
            Disk { size, sectors }
        })
        .collect()
}

fn write_image(path: &Path, disk: &Disk) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(disk.size).unwrap();
    for (lba, bytes) in &disk.sectors {
        f.write_all_at(bytes, lba * SECTOR).unwrap();
    }
}

fn open(p: &Path) -> FileDevice {
    FileDevice::open(p, OpenOptions::default()).unwrap()
}

fn is_header(bytes: &[u8]) -> bool {
    bytes[..4] == MAGIC
}

/// The host's mdadm --examine: whether it found DDF metadata (it prints the container's
/// GUID; its exit status is 0 either way), and what it printed.
fn mdadm_examine(path: &Path) -> (bool, String) {
    let out = Command::new("mdadm")
        .args(["--examine", "--metadata=ddf"])
        .arg(path)
        .output()
        .expect("mdadm must be installed (Debian package mdadm)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (text.contains("Container GUID"), text)
}

/// What a disk's metadata says, apart from where it was found.
fn contents(m: &DdfMetadata) -> String {
    format!(
        "{:?} {:?} {:?} {:?} {:?} seq {}",
        m.container_guid(),
        m.phys,
        m.virt,
        m.configs,
        m.disk,
        m.seq()
    )
}

struct Case {
    _dir: tempfile::TempDir,
    plain: PathBuf,
    plain_meta: DdfMetadata,
}

fn plain_disk() -> (Case, Disk) {
    let dir = tempfile::tempdir().unwrap();
    let disk = fixture_disks().remove(0);
    let plain = dir.path().join("plain.img");
    write_image(&plain, &disk);
    let plain_meta = ddf::probe(&open(&plain))
        .unwrap()
        .expect("the plain anchor");
    assert_eq!(plain_meta.anchor_lba, disk.size / SECTOR - 1);
    let case = Case {
        _dir: dir,
        plain,
        plain_meta,
    };
    (case, disk)
}

#[test]
fn the_plain_container_is_found_by_both_and_by_mdadm() {
    let (case, _) = plain_disk();
    let (found, text) = mdadm_examine(&case.plain);
    assert!(found, "mdadm --examine: {text}");
    assert!(text.contains("Container GUID"), "{text}");
    let m = ddf::probe_extended(&open(&case.plain)).unwrap().unwrap();
    assert_eq!(m.anchor_lba, case.plain_meta.anchor_lba);
    assert_eq!(contents(&m), contents(&case.plain_meta));
}

#[test]
fn an_erased_anchor_is_found_at_the_secondary_header_as_mdadm_finds_it() {
    let (case, mut disk) = plain_disk();
    let last = disk.size / SECTOR - 1;
    disk.sectors.retain(|(lba, _)| *lba != last);
    let path = case._dir.path().join("erased.img");
    write_image(&path, &disk);

    assert!(ddf::probe(&open(&path)).unwrap().is_none());
    let (found, text) = mdadm_examine(&path);
    assert!(!found, "mdadm 4.2 reads only the last sector, yet: {text}");

    let m = ddf::probe_extended(&open(&path))
        .unwrap()
        .expect("found by the search");
    // The first magic 32 MiB from the end is mdadm's secondary header.
    let secondary_lba = (disk.size - ddf::SEARCH_BYTES) / SECTOR;
    assert_eq!(m.anchor_lba, secondary_lba);
    assert_eq!(m.anchor.header_type, HeaderType::Secondary);
    assert_eq!(m.active, HeaderType::Primary);
    assert_eq!(contents(&m), contents(&case.plain_meta));
}

/// The structure moved `shift` sectors towards the start, every header's LBAs changed
/// and resealed, the freed tail all ones.
fn moved(disk: &Disk, shift: u64) -> Disk {
    let be64 = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
    let sectors = disk
        .sectors
        .iter()
        .map(|(lba, bytes)| {
            let mut bytes = bytes.clone();
            if is_header(&bytes) {
                let (p, s) = (be64(&bytes, 96), be64(&bytes, 104));
                bytes[96..104].copy_from_slice(&(p - shift).to_be_bytes());
                bytes[104..112].copy_from_slice(&(s - shift).to_be_bytes());
                records::seal(&mut bytes);
            }
            (lba - shift, bytes)
        })
        .chain((disk.size / SECTOR - shift..disk.size / SECTOR).map(|lba| (lba, vec![0xff; 512])))
        .collect();
    Disk {
        size: disk.size,
        sectors,
    }
}

#[test]
fn a_structure_short_of_the_end_is_found_at_its_first_header_as_mdadm_finds_it() {
    let (case, disk) = plain_disk();
    let shift = 2048;
    let vendor = moved(&disk, shift);
    let path = case._dir.path().join("vendor.img");
    write_image(&path, &vendor);

    assert!(ddf::probe(&open(&path)).unwrap().is_none());
    let (found, text) = mdadm_examine(&path);
    assert!(!found, "mdadm 4.2 reads only the last sector, yet: {text}");

    // The secondary header now lies before the searched region: the first magic in it
    // is the primary header's.
    let m = ddf::probe_extended(&open(&path))
        .unwrap()
        .expect("found by the search");
    let primary_lba = case.plain_meta.anchor.primary_lba - shift;
    assert_eq!(m.anchor_lba, primary_lba);
    assert_eq!(m.anchor.header_type, HeaderType::Primary);
    assert_eq!(m.primary.as_ref().unwrap().primary_lba, primary_lba);
    assert_eq!(contents(&m), contents(&case.plain_meta));
    // The real anchor, further on, is not the one taken: mdadm stops at the first magic.
    let anchor_at = vendor
        .sectors
        .iter()
        .find(|(_, b)| is_header(b) && b[112] == 0)
        .map(|(lba, _)| *lba)
        .unwrap();
    assert_eq!(anchor_at, disk.size / SECTOR - 1 - shift);
}

#[test]
fn a_magic_off_a_sector_boundary_is_named_not_read() {
    let (case, disk) = plain_disk();
    // The moved layout leaves the region's first sector empty: a stray magic 8 bytes into
    // it comes before every header.
    let path = case._dir.path().join("stray.img");
    write_image(&path, &moved(&disk, 2048));
    let first = (disk.size - ddf::SEARCH_BYTES) / SECTOR;
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&MAGIC, first * SECTOR + 8).unwrap();
    drop(f);

    let err = ddf::probe_extended(&open(&path)).unwrap_err();
    match &err {
        DdfError::Misaligned { device, offset } => {
            assert_eq!(*offset, first * SECTOR + 8);
            assert!(device.ends_with("stray.img"), "{err}");
        }
        other => panic!("expected the misaligned magic named, got: {other}"),
    }
    assert!(
        err.to_string().contains("not at a sector boundary"),
        "{err}"
    );
}

#[test]
fn a_damaged_first_header_fails_as_mdadms_bad_crc_on_anchor() {
    let (case, mut disk) = plain_disk();
    let last = disk.size / SECTOR - 1;
    disk.sectors.retain(|(lba, _)| *lba != last);
    let first = (disk.size - ddf::SEARCH_BYTES) / SECTOR;
    for (lba, bytes) in &mut disk.sectors {
        if *lba == first {
            bytes[200] ^= 0x55;
        }
    }
    let path = case._dir.path().join("damaged.img");
    write_image(&path, &disk);
    // The primary further on is intact, but mdadm does not search past the first magic.
    match ddf::probe_extended(&open(&path)) {
        Err(DdfError::AnchorCrc { lba, .. }) => assert_eq!(lba, first),
        other => panic!("expected a bad CRC at sector {first}, got {other:?}"),
    }
}

#[test]
fn small_devices_and_devices_without_magic_are_not_ddf() {
    let dir = tempfile::tempdir().unwrap();
    // 32 MiB exactly: mdadm's lower bound, not searched even with a header in it.
    let small = dir.path().join("small.img");
    let f = std::fs::File::create(&small).unwrap();
    f.set_len(ddf::SEARCH_BYTES).unwrap();
    f.write_all_at(&MAGIC, 4096).unwrap();
    assert!(ddf::probe_extended(&open(&small)).unwrap().is_none());
    let empty = dir.path().join("empty.img");
    std::fs::File::create(&empty)
        .unwrap()
        .set_len(ddf::SEARCH_BYTES + (1 << 20))
        .unwrap();
    assert!(ddf::probe_extended(&open(&empty)).unwrap().is_none());
}
