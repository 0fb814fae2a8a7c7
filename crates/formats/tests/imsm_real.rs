//! IMSM metadata as the real mdadm writes it (the last 4 KiB of a 32 MiB member of a
//! container made in the kernel lab by `mdadm --create -e imsm`, with a raid5 volume
//! "vol5" and a raid0 volume "vol0"), read back field by field, and damaged copies of it
//! named clearly: a bad checksum, an mpb_size reaching past the disk, a map naming a
//! disk that is not in the table.

use tessera_block::{BlockDevice, MemoryDevice};
use tessera_formats::imsm::{self, read, write, ImsmError};

const TAIL: &[u8] = include_bytes!("imsm_fixtures/loop0-tail.bin");
const DISK: u64 = 32 << 20;

fn member(name: &str, size: u64, tail: &[u8]) -> MemoryDevice {
    let dev = MemoryDevice::new(name, size);
    let at = size.saturating_sub(tail.len() as u64);
    let skip = tail.len() - (size - at) as usize;
    dev.write_at(&tail[skip..], at).unwrap();
    dev
}

/// The MPB's bytes inside the tail: 760 bytes, in two sectors, the anchor (second-to-last
/// sector) first.
fn mpb_bytes(tail: &[u8]) -> Vec<u8> {
    let n = tail.len();
    let mut b = tail[n - 1024..n - 512].to_vec();
    b.extend_from_slice(&tail[n - 1536..n - 1024]);
    b
}

/// The tail with `mpb` put back where it came from, its checksum made right when `fix`.
fn with_mpb(mut mpb: Vec<u8>, fix: bool) -> Vec<u8> {
    if fix {
        let size = u32::from_le_bytes(mpb[0x24..0x28].try_into().unwrap()) as usize;
        let size = size.min(mpb.len());
        let sum = imsm::checksum(&mpb[..size]);
        mpb[0x20..0x24].copy_from_slice(&sum.to_le_bytes());
    }
    let mut tail = TAIL.to_vec();
    let n = tail.len();
    tail[n - 1024..n - 512].copy_from_slice(&mpb[..512]);
    tail[n - 1536..n - 1024].copy_from_slice(&mpb[512..1024]);
    tail
}

#[test]
fn mdadm_metadata_reads_field_by_field() {
    let dev = member("loop0", DISK, TAIL);
    let mpb = read(&dev).unwrap().expect("an IMSM member");
    assert_eq!(mpb.version_string(), "1.3.00");
    assert_eq!(mpb.mpb_size, 760);
    assert_eq!(mpb.family_num, 0xba10_da3b);
    assert_eq!(mpb.generation_num, 14);
    let serials: Vec<String> = mpb.disks.iter().map(|d| d.serial_string()).collect();
    assert_eq!(
        serials,
        ["/dev/loop0", "/dev/loop3", "/dev/loop1", "/dev/loop2"]
    );
    assert!(mpb
        .disks
        .iter()
        .all(|d| d.is_configured() && !d.is_failed()));
    let names: Vec<String> = mpb.devs.iter().map(|d| d.name()).collect();
    assert_eq!(names, ["vol5", "vol0"]);
    // As mdadm -E prints them: raid5, 24 MiB, 9 MiB per member, 128 stripes of 64 KiB;
    // raid0 at sector 24576, 56 MiB, 15 MiB per member, 448 stripes of 32 KiB.
    let (r5, r0) = (&mpb.devs[0], &mpb.devs[1]);
    assert_eq!((r5.size, r0.size), (49152, 114688));
    let m5 = &r5.maps[0];
    assert_eq!(
        (
            m5.level(),
            m5.num_members,
            m5.pba_of_lba0,
            m5.blocks_per_member
        ),
        (5, 4, 0, 18432)
    );
    assert_eq!((m5.num_data_stripes, m5.blocks_per_strip), (128, 128));
    let m0 = &r0.maps[0];
    assert_eq!(
        (
            m0.level(),
            m0.pba_of_lba0,
            m0.blocks_per_member,
            m0.num_data_stripes
        ),
        (0, 24576, 30720, 448)
    );
    assert_eq!(m0.blocks_per_strip, 64);
    assert!(!r5.is_migrating() && !r5.is_dirty() && m5.map_state == imsm::MAP_NORMAL);
    // Written back by tessera, the bytes are mdadm's.
    let copy = MemoryDevice::new("copy", DISK);
    write(&copy, &mpb).unwrap();
    let mut back = vec![0u8; 1536];
    copy.read_at(&mut back, DISK - 1536).unwrap();
    assert_eq!(mpb_bytes(&back)[..760], mpb_bytes(TAIL)[..760]);
    assert_eq!(read(&copy).unwrap().unwrap(), mpb);
}

#[test]
fn a_bad_checksum_is_named() {
    let mut b = mpb_bytes(TAIL);
    b[0xE0] ^= 0x20; // a disk's serial
    let dev = member("/dev/sdb", DISK, &with_mpb(b, false));
    let e = read(&dev).unwrap_err();
    assert!(
        matches!(
            e,
            ImsmError::Checksum {
                stored: 0x59fc_8f74,
                ..
            }
        ),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.starts_with("/dev/sdb: IMSM metadata checksum 0x59fc8f74 does not match"),
        "{text}"
    );
}

#[test]
fn an_mpb_size_past_the_disk_is_named() {
    // Two sectors of MPB on a device of two sectors: the second would lie before it.
    let tail = &TAIL[TAIL.len() - 1024..];
    let dev = member("/dev/sdc", 1024, tail);
    let text = read(&dev).unwrap_err().to_string();
    assert!(
        text.starts_with("/dev/sdc: IMSM metadata: mpb_size: 760 bytes"),
        "{text}"
    );
    assert!(text.contains("past the start of the device"), "{text}");
    // A size larger than the metadata area at the end of any disk.
    let mut b = mpb_bytes(TAIL);
    b[0x24..0x28].copy_from_slice(&(64u32 << 20).to_le_bytes());
    let dev = member("/dev/sdc", DISK, &with_mpb(b, false));
    let text = read(&dev).unwrap_err().to_string();
    assert!(
        text.contains("mpb_size: 67108864 bytes, more than"),
        "{text}"
    );
}

#[test]
fn a_map_naming_a_disk_not_in_the_table_is_named() {
    let mut b = mpb_bytes(TAIL);
    // vol5's map 0: after the header (0xD8), 4 disks (48 each) and the volume's 112
    // bytes; its disk_ord_tbl at 48. Slot 2 names disk 9 of 4.
    let table = 0xD8 + 4 * 48 + 112 + 48;
    b[table + 8..table + 12].copy_from_slice(&9u32.to_le_bytes());
    let dev = member("/dev/sdd", DISK, &with_mpb(b, true));
    let text = read(&dev).unwrap_err().to_string();
    assert_eq!(
        text,
        "/dev/sdd: IMSM metadata: volume 0 (vol5) map 0 slot 2: names disk 9, but the disk table has 4 disks"
    );
}

#[test]
fn every_truncation_and_byte_flip_is_an_answer_not_a_panic() {
    let b = mpb_bytes(TAIL);
    for i in 0..760 {
        for bit in [0x01u8, 0x80] {
            let mut bad = b.clone();
            bad[i] ^= bit;
            let dev = member("x", 1 << 20, &with_mpb(bad, true));
            let _ = read(&dev);
        }
    }
    for size in [0u64, 511, 512, 1023, 1024, 1536, 4096] {
        let tail = &TAIL[TAIL.len() - (size as usize).min(TAIL.len())..];
        let _ = read(&member("x", size, tail));
    }
}
