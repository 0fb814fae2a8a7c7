//! The metadata-area readers over arbitrary bytes: a header at 4096 (or 0 for short
//! inputs), then every text it points at. Never panics, never allocates past the device.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_block::{BlockDevice, MemoryDevice};
use tessera_formats::lvm2::mda::{next_text_offset, read_mda_header, read_text};

fuzz_target!(|data: &[u8]| {
    let dev = MemoryDevice::new("fuzz", (data.len() as u64).max(1 << 20));
    let _ = dev.write_at(data, 0);
    for start in [4096u64, 0] {
        if let Ok(header) = read_mda_header(&dev, start) {
            for locn in &header.raw_locns {
                let _ = read_text(&dev, &header, locn);
            }
            let _ = next_text_offset("fuzz", &header, 1000);
        }
    }
});
