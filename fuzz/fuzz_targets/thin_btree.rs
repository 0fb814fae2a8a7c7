//! dm-thin mapping and details trees from fuzzed blocks: lookups, range walks and the
//! highest mapped block never panic and agree with each other; changing and committing such
//! metadata never panics.
#![no_main]

#[path = "thin_common.rs"]
mod thin_common;

use libfuzzer_sys::fuzz_target;
use tessera_formats::thin::PoolMetadata;

fuzz_target!(|data: &[u8]| {
    let Some(dev) = thin_common::device_from(data) else {
        return;
    };
    let Ok(mut pool) = PoolMetadata::open(dev.clone()) else {
        return;
    };
    let Ok(devices) = pool.devices() else {
        return;
    };
    for &(id, _) in devices.iter().take(8) {
        if let Ok(all) = pool.mappings(id, 0, u64::MAX) {
            assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "mappings in order");
            for &(v, m) in all.iter().take(64) {
                let found = pool.lookup(id, v).expect("a walked mapping looks up");
                assert_eq!(found.map(|l| l.mapping), Some(m));
            }
            if let Ok(highest) = pool.highest_mapped_block(id) {
                assert_eq!(highest, all.last().map(|e| e.0));
            }
        }
        let _ = pool.lookup(id, 0);
        let _ = pool.lookup(id, u64::MAX);
    }
    // Change it: each step may fail on damage, after which the transaction is abandoned.
    let mut changed = || -> Result<(), tessera_formats::thin::ThinMetadataError> {
        pool.create_thin(1000)?;
        for v in 0..40 {
            let b = pool.alloc_data_block()?;
            pool.insert(1000, v * 3, b)?;
        }
        if let Some(&(id, _)) = devices.first() {
            pool.create_snap(1001, id)?;
            pool.remove_range(id, 0, 100)?;
            let b = pool.alloc_data_block()?;
            pool.insert(1001, 1, b)?;
            pool.delete(id)?;
        }
        pool.commit()
    };
    // Metadata whose space maps call live blocks free gets them overwritten (the kernel too
    // trusts its space maps), so what reopens is only read, not asserted on; thin_space_map
    // asserts on metadata that checks clean.
    if changed().is_ok() {
        if let Ok(again) = PoolMetadata::open(dev) {
            let _ = again.mappings(1000, 0, u64::MAX);
        }
    }
});
