//! The MD superblock probe over arbitrary device contents: never panics, a superblock it
//! accepts is written back by tessera to a device where it reads back the same, and so is
//! an accepted bitmap header, and an accepted bad-block log (re-encoded, it decodes the same).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_block::{BlockDevice, MemoryDevice};
use tessera_formats::md::{badblocks, probe, read_bitmap, write, BitmapSuper, MdSuperblock};

fuzz_target!(|data: &[u8]| {
    // The input is the start of the device; a 0.90 seed (4 KiB) is placed where 0.90 lives.
    let size = 16u64 << 20;
    let dev = MemoryDevice::new("fuzz", size);
    if data.len() == 4096 {
        let _ = dev.write_at(data, size - 65536);
    } else {
        let _ = dev.write_at(&data[..data.len().min(1 << 20)], 0);
    }
    if let Ok(Some((version, sb))) = probe(&dev) {
        if let Ok(Some(bm)) = read_bitmap(&dev, version, &sb) {
            // An accepted bitmap header encodes to bytes that decode to it again.
            let again = BitmapSuper::decode(&bm.encode(), "fuzz", bm.offset);
            assert_eq!(again.as_ref().ok(), Some(&bm));
        }
        if let MdSuperblock::V1(s) = &sb {
            if let Ok(Some(table)) = badblocks::read(&dev, s) {
                let bytes = badblocks::encode(&table.entries(), s.bblog_shift, 8)
                    .expect("an accepted log fits a page");
                let again = badblocks::decode(&bytes, s.bblog_shift, "fuzz", 0).unwrap();
                assert_eq!(again.entries(), table.entries());
            }
        }
        let copy = MemoryDevice::new("fuzz", size);
        write(&copy, version, &sb).expect("an accepted superblock is written");
        assert_eq!(probe(&copy).unwrap(), Some((version, sb)));
    }
});
