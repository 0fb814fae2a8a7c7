//! dm-thin pool metadata opened from fuzzed blocks (superblock first): opening, the pool's
//! info and device list never panic, and metadata that opens reports counts inside its own
//! space maps.
#![no_main]

#[path = "thin_common.rs"]
mod thin_common;

use libfuzzer_sys::fuzz_target;
use tessera_formats::thin::PoolMetadata;

fuzz_target!(|data: &[u8]| {
    let Some(dev) = thin_common::device_from(data) else {
        return;
    };
    let Ok(pool) = PoolMetadata::open(dev) else {
        return;
    };
    let info = pool.info();
    assert!(info.free_data_blocks <= info.nr_data_blocks);
    assert!(info.free_metadata_blocks <= info.nr_metadata_blocks);
    if let Ok(devices) = pool.devices() {
        for (id, details) in devices {
            assert_eq!(pool.device_details(id).unwrap(), Some(details));
            let _ = pool.highest_mapped_block(id);
        }
    }
});
