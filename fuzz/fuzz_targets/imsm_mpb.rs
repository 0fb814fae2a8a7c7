//! The IMSM MPB reader over arbitrary metadata: never panics, and an MPB it accepts is
//! written back by tessera where it reads back the same.
//!
//! The input is the MPB as mdadm lays it out: its first 512 bytes the anchor (the
//! second-to-last sector), the rest the sectors before it. An input of odd length has its
//! last byte dropped and its checksum made right, so mutations reach past the checksum.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_block::{BlockDevice, MemoryDevice};
use tessera_formats::imsm::{checksum, read, write};

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
        assert_eq!(read(&copy).unwrap(), Some(m));
    }
});
