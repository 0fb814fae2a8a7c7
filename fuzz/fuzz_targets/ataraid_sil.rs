//! The Silicon Image Medley record (four copies at the end of the disk) over arbitrary contents and disk sizes: never panics, answers the same twice,
//! and a member it accepts is consistent (its place inside its set, its vendor's set name).
//! Input: two bytes of disk size in sectors, a flag byte, then the record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_block::{BlockDevice, MemoryDevice};
use tessera_formats::ataraid::{sil, Vendor};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let sectors = u64::from(u16::from_le_bytes([data[0], data[1]])) % 4096;
    let flags = data[2];
    let record = &data[3..data.len().min(3 + 512)];
    let dev = MemoryDevice::new("fuzz", sectors * 512);
    // The record, copied into each of the four copies whose flag bit is set.
    for area in 0..4u64 {
        if flags & (1 << area) != 0 {
            if let Some(s) = sectors.checked_sub(1 + area * 512) {
                let _ = dev.write_at(record, s * 512);
            }
        }
    }
    let first = sil::probe(&dev);
    let again = sil::probe(&dev);
    match (&first, &again) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => {
            assert_eq!(a.to_string(), b.to_string());
            assert!(a.to_string().contains("fuzz"), "{a}");
        }
        _ => panic!("two reads disagree"),
    }
    if let Ok(Some(m)) = first {
        assert_eq!(m.vendor, Vendor::Sil);
        assert!(m.set_name.starts_with("sil_"), "{}", m.set_name);
        assert!(m.index < m.member_count, "{m:?}");
        assert!(m.data_sectors > 0, "{m:?}");
        assert!(m.metadata_offset < sectors, "{m:?}");
    }
    let _ = flags;
});
