//! The VIA record (last sector) over arbitrary contents and disk sizes: never panics, answers the same twice,
//! and a member it accepts is consistent (its place inside its set, its vendor's set name).
//! Input: two bytes of disk size in sectors, a flag byte, then the record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_block::{BlockDevice, MemoryDevice};
use tessera_formats::ataraid::{via, Vendor};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let sectors = u64::from(u16::from_le_bytes([data[0], data[1]])) % 4096;
    let flags = data[2];
    let record = &data[3..data.len().min(3 + 512)];
    let dev = MemoryDevice::new("fuzz", sectors * 512);
    if let Some(s) = sectors.checked_sub(1) {
        let _ = dev.write_at(record, s * 512);
    }
    let first = via::probe(&dev);
    let again = via::probe(&dev);
    match (&first, &again) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => {
            assert_eq!(a.to_string(), b.to_string());
            assert!(a.to_string().contains("fuzz"), "{a}");
        }
        _ => panic!("two reads disagree"),
    }
    if let Ok(Some(m)) = first {
        assert_eq!(m.vendor, Vendor::Via);
        assert!(m.set_name.starts_with("via_"), "{}", m.set_name);
        assert!(m.index < m.member_count, "{m:?}");
        assert!(m.data_sectors > 0, "{m:?}");
        assert!(m.metadata_offset < sectors, "{m:?}");
    }
    let _ = flags;
});
