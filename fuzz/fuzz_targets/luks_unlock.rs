//! Full LUKS metadata and unlocking over arbitrary device contents: read_metadata, dump and
//! unlock (every key slot, then each slot by number) never panic, and KDF costs stay within
//! `KdfLimits::fuzzing()`. Each input is also tried with its LUKS2 checksums made right, so
//! mutations reach the JSON and the key slots instead of stopping at the checksum.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use tessera_block::{BlockDevice, MemoryDevice};
use tessera_cipher::KdfLimits;
use tessera_formats::luks::{dump, read_metadata, unlock, LuksMetadata, UnlockOptions};

const HEADER_SIZES: [u64; 9] = [
    0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000,
];

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut fixed = data.to_vec();
    if fix_checksums(&mut fixed) {
        check(&fixed);
    }
});

fn check(data: &[u8]) {
    let dev = MemoryDevice::new("fuzz", data.len() as u64);
    dev.write_at(data, 0).unwrap();
    let Ok(meta) = read_metadata(&dev) else {
        return;
    };
    let text = dump(&meta);
    assert!(text.starts_with("LUKS header information"));
    let version = meta.version();
    match &meta {
        LuksMetadata::Luks1(m) => assert!(m.key_bytes > 0 && m.key_bytes <= 1024),
        LuksMetadata::Luks2(m) => {
            assert!(HEADER_SIZES.contains(&m.hdr_size));
            assert!(m.keyslots.keys().all(|&k| k < 32));
        }
    }
    let limits = KdfLimits::fuzzing();
    let mut slots = meta.active_keyslots();
    slots.insert(0, u32::MAX);
    slots.truncate(4);
    for slot in slots {
        let opts = UnlockOptions {
            key_slot: (slot != u32::MAX).then_some(slot),
            limits,
        };
        if let Ok(u) = unlock(&dev, b"fuzz", &opts) {
            assert!(!u.volume_key.is_empty());
            assert!(u.key_slot < if version == 1 { 8 } else { 32 });
        }
    }
}

/// Writes the right sha256 into each LUKS2 copy whose size field is sound.
fn fix_checksums(data: &mut [u8]) -> bool {
    let mut fixed = false;
    let mut at = 0usize;
    for _ in 0..2 {
        let Some(size) = data.get(at + 8..at + 16) else {
            break;
        };
        let hdr_size = u64::from_be_bytes(size.try_into().unwrap());
        let magic = &data[at..at + 6];
        if (magic != b"LUKS\xba\xbe" && magic != b"SKUL\xba\xbe")
            || !HEADER_SIZES.contains(&hdr_size)
            || ((data.len() - at) as u64) < hdr_size
        {
            break;
        }
        let whole = &mut data[at..at + hdr_size as usize];
        whole[448..512].fill(0);
        let sum = Sha256::digest(&*whole);
        whole[448..480].copy_from_slice(&sum);
        fixed = true;
        at += hdr_size as usize;
    }
    fixed
}
