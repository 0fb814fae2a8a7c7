//! The label reader over arbitrary first sectors of a device: never panics, and a label it
//! accepts encodes back to the same label.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_block::{BlockDevice, MemoryDevice};
use tessera_formats::lvm2::label::{read_label, PvLabel};

fuzz_target!(|data: &[u8]| {
    // Sparse, so cheap: big enough for the areas of a real PV of up to 64 MiB.
    let dev = MemoryDevice::new("fuzz", (data.len() as u64).max(64 << 20));
    let _ = dev.write_at(data, 0);
    if let Ok(Some(label)) = read_label(&dev) {
        let encoded = label.encode();
        let again = PvLabel::decode(&encoded, label.sector, "fuzz", dev.size_bytes())
            .expect("re-encoded label reads back");
        assert_eq!(again, label);
    }
});
