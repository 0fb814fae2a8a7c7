//! The IMSM MPB reader over arbitrary metadata: never panics, and an MPB it accepts is
//! written back by tessera where it reads back the same. On an accepted MPB, the records
//! of a rebuild (a member failed, a spare taking its slot, a checkpoint, the end) never
//! panic either, and what they leave reads back the same.
//!
//! The input is the MPB as mdadm lays it out: its first 512 bytes the anchor (the
//! second-to-last sector), the rest the sectors before it. An input of odd length has its
//! last byte dropped and its checksum made right, so mutations reach past the checksum.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_block::{BlockDevice, MemoryDevice};
use tessera_formats::imsm::{checksum, read, write, Disk, Mpb, SpareDisk, SPARE_DISK};

const SIZE: u64 = 4 << 20;

fuzz_target!(|data: &[u8]| {
    let mut mpb = data[..data.len().min(64 << 10)].to_vec();
    if mpb.len() % 2 == 1 {
        mpb.pop();
        if mpb.len() >= 0x28 {
            let size = u32::from_le_bytes(mpb[0x24..0x28].try_into().unwrap()) as usize;
            let sum = checksum(&mpb[..size.min(mpb.len())]);
            mpb[0x20..0x24].copy_from_slice(&sum.to_le_bytes());
        }
    }
    mpb.resize(mpb.len().div_ceil(512).max(1) * 512, 0);
    let dev = MemoryDevice::new("fuzz", SIZE);
    let anchor = SIZE - 1024;
    let _ = dev.write_at(&mpb[..512], anchor);
    let _ = dev.write_at(&mpb[512..], anchor - (mpb.len() as u64 - 512));
    if let Ok(Some(m)) = read(&dev) {
        let copy = MemoryDevice::new("fuzz", SIZE);
        write(&copy, &m).expect("an accepted MPB is written");
        assert_eq!(read(&copy).unwrap(), Some(m.clone()));
        rebuild(m, data.len());
    }
});

/// A rebuild recorded on `m`: the first volume's slot picked by `seed` loses its member and
/// a new spare takes it (refused for a volume already migrating), a checkpoint, the end.
fn rebuild(mut m: Mpb, seed: usize) {
    if m.devs.is_empty() {
        return;
    }
    let slot = seed % m.devs[0].maps[0].disk_ord_tbl.len().max(1);
    if let Some(idx) = m.devs[0].maps[0].disk_index(slot) {
        m.mark_failed(idx as usize);
    }
    let spare = SpareDisk::New(Disk::new("/dev/fuzz-spare", 1 << 20, SPARE_DISK));
    if m.activate_spare(0, slot, spare, seed as u32).is_ok() {
        assert!(m.devs[0].is_rebuilding());
        m.rebuild_checkpoint(0, seed as u64 * 977);
        let _ = m.devs[0].rebuild_done_sectors();
    }
    let dev = MemoryDevice::new("fuzz", SIZE);
    if write(&dev, &m).is_ok() {
        let back = read(&dev).unwrap().expect("an MPB written reads back");
        assert_eq!((back.disks, back.devs), (m.disks.clone(), m.devs.clone()));
    }
    m.end_rebuild(0);
    let dev = MemoryDevice::new("fuzz", SIZE);
    if write(&dev, &m).is_ok() {
        let back = read(&dev).unwrap().expect("an MPB written reads back");
        assert_eq!((back.disks, back.devs), (m.disks.clone(), m.devs.clone()));
    }
}
