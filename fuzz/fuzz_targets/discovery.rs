//! Discovery over arbitrary device contents: every format module (partition tables and the
//! partitions inside, MD, LVM2 labels and metadata, LUKS, filesystem signatures), the arrays
//! and VGs put together from what they find, and each LV's contents. Nothing may panic;
//! whatever is found must lie inside the device.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tessera_block::{BlockDevice, MemoryDevice};
use tessera_engine::discover::discover;

fuzz_target!(|data: &[u8]| {
    let dev = Arc::new(MemoryDevice::with_contents("fuzz", data));
    let size = dev.size_bytes();
    let report = discover(
        &vec![("fuzz".to_string(), dev)],
        Vec::new(),
        &tessera_engine::modules::registry(),
    );
    for (_, node) in report.walk() {
        if node.kind == "partition" {
            assert!(node.size_bytes <= size, "a partition larger than its disk");
        }
    }
});
