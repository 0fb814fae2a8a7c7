//! The LUKS1/LUKS2 header decoder over arbitrary device starts: never panics, the device
//! reader agrees with the pure parser, and what it accepts is plausible. Each input is also
//! tried with its LUKS2 checksum made right, so mutations reach the JSON metadata instead of
//! stopping at the checksum.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use tessera_block::{BlockDevice, MemoryDevice};
use tessera_formats::luks::{parse, read_header};

const HEADER_SIZES: [u64; 9] = [
    0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000,
];

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut fixed = data.to_vec();
    if fix_primary_checksum(&mut fixed) {
        check(&fixed);
    }
});

fn check(data: &[u8]) {
    let parsed = parse("fuzz", data);
    let dev = MemoryDevice::new("fuzz", data.len() as u64);
    dev.write_at(data, 0).unwrap();
    let read = read_header(&dev);
    match (&parsed, &read) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("parse {parsed:?} but read_header {read:?}"),
    }
    if let Ok(Some(h)) = parsed {
        match h.version {
            1 => assert_eq!(&data[..6], b"LUKS\xba\xbe"),
            2 => {
                assert!(HEADER_SIZES.contains(&h.header_bytes));
                assert!(h.active_keyslots.windows(2).all(|w| w[0] < w[1]));
                assert!(h.active_keyslots.iter().all(|&s| s < 32));
                // Without a warning the primary copy was the one used.
                if h.warning.is_none() {
                    assert_eq!(&data[..6], b"LUKS\xba\xbe");
                }
            }
            v => panic!("version {v} accepted"),
        }
        assert!(h.key_bytes <= 1024);
    }
}

/// Writes the right sha256 into a LUKS2 primary header whose size field is sound.
fn fix_primary_checksum(data: &mut [u8]) -> bool {
    let Some(size) = data.get(8..16) else {
        return false;
    };
    let hdr_size = u64::from_be_bytes(size.try_into().unwrap());
    if &data[..6] != b"LUKS\xba\xbe"
        || !HEADER_SIZES.contains(&hdr_size)
        || (data.len() as u64) < hdr_size
    {
        return false;
    }
    let whole = &mut data[..hdr_size as usize];
    whole[448..512].fill(0);
    let sum = Sha256::digest(&*whole);
    whole[448..480].copy_from_slice(&sum);
    true
}
