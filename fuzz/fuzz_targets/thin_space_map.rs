//! dm-thin space maps from fuzzed blocks: the check never panics; metadata it finds clean
//! opens, and after tessera changes and commits it, is still clean.
#![no_main]

#[path = "thin_common.rs"]
mod thin_common;

use libfuzzer_sys::fuzz_target;
use tessera_block::SharedDevice;
use tessera_formats::thin::{check, PoolMetadata};

fuzz_target!(|data: &[u8]| {
    let Some(dev) = thin_common::device_from(data) else {
        return;
    };
    let dev: SharedDevice = dev;
    let Ok(report) = check(&dev, &mut |_, _| {}) else {
        return;
    };
    let opened = PoolMetadata::open(dev.clone());
    if !report.is_clean() {
        return;
    }
    let mut pool = opened.expect("metadata the check finds clean opens");
    for (id, details) in pool.devices().unwrap() {
        let n = pool.mappings(id, 0, u64::MAX).unwrap().len() as u64;
        assert_eq!(n, details.mapped_blocks, "the check compared mapped_blocks");
        for (_, m) in pool.mappings(id, 0, u64::MAX).unwrap() {
            assert!(pool.data_ref_count(m.data_block).unwrap() >= 1);
        }
    }
    let info = pool.info();
    let _ = pool.resize_data(info.nr_data_blocks + 17_000);
    let mut changed = || -> Result<(), tessera_formats::thin::ThinMetadataError> {
        pool.create_thin(77)?;
        for v in 0..30 {
            let b = pool.alloc_data_block()?;
            pool.insert(77, v, b)?;
        }
        pool.remove_range(77, 5, 10)?;
        pool.commit()
    };
    if changed().is_ok() {
        let after = check(&dev, &mut |_, _| {}).unwrap();
        assert!(after.is_clean(), "{:?}", after.problems);
    }
});
