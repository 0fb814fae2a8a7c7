//! dm-thin pool metadata against the real thin-provisioning-tools: metadata thin_restore
//! writes is read by tessera mapping for mapping; metadata tessera writes passes thin_check
//! and thin_dump shows exactly what tessera made.

mod thin_common;

use std::collections::BTreeMap;

use tessera_formats::thin::{DeviceDetails, PoolMetadata};
use thin_common::*;

/// A pool of several devices: single and range mappings, thousands of them (multi-level
/// trees), data blocks shared between two devices.
fn sample_pool() -> Pool {
    let mut rng = Rng(7);
    let mut pool = Pool {
        time: 3,
        transaction: 12,
        data_block_size: 128,
        nr_data_blocks: 100_000,
        devices: BTreeMap::new(),
    };
    let mut next_data = 0u64;
    for (id, count) in [(1u32, 5000u64), (5, 20), (9, 12_000), (70000, 1)] {
        let mut mappings = BTreeMap::new();
        let mut v = 0;
        while (mappings.len() as u64) < count {
            v += 1 + rng.below(3);
            let run = 1 + rng.below(8);
            for i in 0..run {
                if (mappings.len() as u64) < count {
                    mappings.insert(v + i, (next_data, rng.below(4) as u32));
                    next_data += 1;
                }
            }
            v += run;
        }
        let details = DeviceDetails {
            mapped_blocks: mappings.len() as u64,
            transaction_id: id as u64,
            creation_time: 1,
            snapshotted_time: 2,
        };
        pool.devices.insert(id, Device { details, mappings });
    }
    // Device 2 shares the first 3000 blocks of device 1.
    let shared: BTreeMap<_, _> = pool.devices[&1].mappings.iter().take(3000).map(|(&k, &v)| (k, v)).collect();
    let details = DeviceDetails { mapped_blocks: shared.len() as u64, transaction_id: 2, creation_time: 2, snapshotted_time: 2 };
    pool.devices.insert(2, Device { details, mappings: shared });
    pool
}

#[test]
fn tessera_reads_what_thin_restore_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let expected = sample_pool();
    let img = restore(dir.path(), "restored", &expected.to_xml(), 8 << 20);
    thin_check_passes(&img);
    let pool = PoolMetadata::open(open_file(&img)).unwrap();
    assert_eq!(Pool::read(&pool), expected);
    // Lookups agree with the ranges, and `shared` follows the snapshot time.
    for (id, dev) in &expected.devices {
        for (&v, &(b, t)) in dev.mappings.iter().step_by(97) {
            let l = pool.lookup(*id, v).unwrap().unwrap();
            assert_eq!((l.mapping.data_block, l.mapping.time), (b, t));
            assert_eq!(l.shared, t < dev.details.snapshotted_time);
        }
        assert_eq!(pool.lookup(*id, u64::MAX - 1).unwrap(), None);
    }
    let info = pool.info();
    assert_eq!(info.nr_data_blocks, 100_000);
    let used: u64 = expected.devices.values().map(|d| d.mappings.len() as u64).sum::<u64>() - 3000;
    assert_eq!(info.free_data_blocks, 100_000 - used);
    assert_eq!(pool.data_ref_count(expected.devices[&1].mappings.values().next().unwrap().0).unwrap(), 2);
}
