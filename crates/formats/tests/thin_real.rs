//! dm-thin pool metadata against the real thin-provisioning-tools: metadata thin_restore
//! writes is read by tessera mapping for mapping; metadata tessera writes passes thin_check
//! and thin_dump shows exactly what tessera made.

mod thin_common;

use std::collections::BTreeMap;

use tessera_formats::thin::{check, DeviceDetails, PoolMetadata, ThinMetadataError};
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
    let shared: BTreeMap<_, _> = pool.devices[&1]
        .mappings
        .iter()
        .take(3000)
        .map(|(&k, &v)| (k, v))
        .collect();
    let details = DeviceDetails {
        mapped_blocks: shared.len() as u64,
        transaction_id: 2,
        creation_time: 2,
        snapshotted_time: 2,
    };
    pool.devices.insert(
        2,
        Device {
            details,
            mappings: shared,
        },
    );
    pool
}

fn tessera_check_passes(img: &std::path::Path) {
    let report = check(&open_file(img), &mut |_, _| {}).unwrap();
    assert!(
        report.is_clean(),
        "tessera's check of {}: {:#?}",
        img.display(),
        report.problems
    );
}

#[test]
fn tessera_reads_what_thin_restore_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let expected = sample_pool();
    let img = restore(dir.path(), "restored", &expected.to_xml(), 8 << 20);
    thin_check_passes(&img);
    tessera_check_passes(&img);
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
    let used: u64 = expected
        .devices
        .values()
        .map(|d| d.mappings.len() as u64)
        .sum::<u64>()
        - 3000;
    assert_eq!(info.free_data_blocks, 100_000 - used);
    assert_eq!(
        pool.data_ref_count(expected.devices[&1].mappings.values().next().unwrap().0)
            .unwrap(),
        2
    );
}

/// Applies the same changes to tessera's metadata and to a model of what thin_dump should
/// show.
struct Driver {
    pool: PoolMetadata,
    model: Pool,
}

impl Driver {
    fn new(pool: PoolMetadata) -> Driver {
        let model = Pool::read(&pool);
        Driver { pool, model }
    }

    fn create_thin(&mut self, id: u32) {
        self.pool.create_thin(id).unwrap();
        let info = self.pool.info();
        let details = DeviceDetails {
            mapped_blocks: 0,
            transaction_id: info.transaction_id,
            creation_time: info.time,
            snapshotted_time: info.time,
        };
        self.model.devices.insert(
            id,
            Device {
                details,
                mappings: BTreeMap::new(),
            },
        );
    }

    fn create_snap(&mut self, id: u32, origin: u32) {
        self.pool.create_snap(id, origin).unwrap();
        self.model.time += 1;
        let time = self.model.time;
        let o = self.model.devices.get_mut(&origin).unwrap();
        o.details.snapshotted_time = time;
        let mut snap = o.clone();
        snap.details.creation_time = time;
        snap.details.transaction_id = self.model.transaction;
        self.model.devices.insert(id, snap);
    }

    fn map(&mut self, id: u32, v: u64) -> u64 {
        let b = self.pool.alloc_data_block().unwrap();
        self.pool.insert(id, v, b).unwrap();
        let dev = self.model.devices.get_mut(&id).unwrap();
        if dev.mappings.insert(v, (b, self.model.time)).is_none() {
            dev.details.mapped_blocks += 1;
        }
        b
    }

    fn unmap(&mut self, id: u32, begin: u64, end: u64) {
        self.pool.remove_range(id, begin, end).unwrap();
        let dev = self.model.devices.get_mut(&id).unwrap();
        let gone: Vec<u64> = dev.mappings.range(begin..end).map(|(&k, _)| k).collect();
        for k in gone {
            dev.mappings.remove(&k);
            dev.details.mapped_blocks -= 1;
        }
    }

    fn delete(&mut self, id: u32) {
        self.pool.delete(id).unwrap();
        self.model.devices.remove(&id);
    }

    fn set_transaction_id(&mut self, new: u64) {
        self.pool
            .set_transaction_id(self.model.transaction, new)
            .unwrap();
        self.model.transaction = new;
    }

    /// Commits, then checks: tessera's view equals the model, thin_check passes, thin_dump
    /// shows the model, and every data block's count equals the mappings that hold it.
    fn commit_and_verify(&mut self, img: &std::path::Path) {
        self.pool.commit().unwrap();
        assert_eq!(Pool::read(&self.pool), self.model, "tessera's view");
        thin_check_passes(img);
        assert_eq!(thin_dump(img, &[]), self.model, "thin_dump's view");
        let reopened = PoolMetadata::open(open_file(img)).unwrap();
        assert_eq!(Pool::read(&reopened), self.model, "reopened");
        tessera_check_passes(img);
    }
}

#[test]
fn metadata_tessera_writes_passes_thin_check_and_dumps_as_made() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("meta.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let pool = PoolMetadata::format(open_file(&img), 128, 50_000).unwrap();
    thin_check_passes(&img);
    let mut d = Driver::new(pool);
    d.commit_and_verify(&img);

    let mut rng = Rng(11);
    d.create_thin(1);
    d.create_thin(2);
    for v in 0..3000 {
        d.map(1, v * 3);
    }
    for _ in 0..500 {
        let v = rng.below(20_000);
        d.map(2, v);
    }
    d.set_transaction_id(1);
    assert_eq!(d.pool.highest_mapped_block(1).unwrap(), Some(2999 * 3));
    assert_eq!(
        d.pool.device_details(1).unwrap().unwrap().mapped_blocks,
        3000
    );
    assert_eq!(d.pool.device_details(99).unwrap(), None);
    let spare = d.pool.alloc_data_block().unwrap();
    d.pool.free_data_block(spare).unwrap();
    assert_eq!(d.pool.data_ref_count(spare).unwrap(), 0);
    d.commit_and_verify(&img);

    // A snapshot shares device 1's tree; writes to either break the sharing.
    d.create_snap(3, 1);
    for _ in 0..300 {
        let v = rng.below(3000) * 3;
        d.map(1, v);
        let v = rng.below(3000) * 3;
        d.map(3, v);
    }
    d.commit_and_verify(&img);

    d.create_snap(4, 3);
    d.unmap(3, 1000, 4000);
    d.unmap(1, 0, 600);
    d.delete(2);
    d.create_thin(7);
    for v in 0..2000 {
        d.map(7, v);
    }
    d.pool.resize_data(70_000).unwrap();
    d.model.nr_data_blocks = 70_000;
    d.set_transaction_id(2);
    d.commit_and_verify(&img);

    d.delete(1);
    d.delete(3);
    d.unmap(7, 0, 2000);
    d.commit_and_verify(&img);
    d.delete(4);
    d.delete(7);
    d.commit_and_verify(&img);
    let info = d.pool.info();
    assert_eq!(
        info.free_data_blocks, info.nr_data_blocks,
        "every data block is free again"
    );
}

#[test]
fn tessera_continues_on_metadata_thin_restore_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let img = restore(dir.path(), "restored", &sample_pool().to_xml(), 8 << 20);
    let mut d = Driver::new(PoolMetadata::open(open_file(&img)).unwrap());
    assert_eq!(d.model, sample_pool());
    let mut rng = Rng(5);
    // Device 2 shares data blocks with device 1: unmapping them leaves device 1's intact.
    d.unmap(2, 0, 2000);
    d.create_snap(10, 9);
    for _ in 0..2000 {
        let v = rng.below(40_000);
        d.map(9, v);
    }
    d.delete(5);
    d.create_thin(11);
    for v in 0..700 {
        d.map(11, v * 5);
    }
    d.set_transaction_id(13);
    d.commit_and_verify(&img);
    d.delete(1);
    d.unmap(10, 0, u64::MAX);
    d.commit_and_verify(&img);
}

#[test]
fn a_held_metadata_snapshot_shows_the_old_state_to_thin_dump() {
    let dir = tempfile::tempdir().unwrap();
    let img = restore(dir.path(), "restored", &sample_pool().to_xml(), 8 << 20);
    let mut d = Driver::new(PoolMetadata::open(open_file(&img)).unwrap());
    d.create_thin(20);
    for v in 0..100 {
        d.map(20, v);
    }
    d.pool.reserve_metadata_snap().unwrap();
    let held = d.model.clone();
    assert!(
        d.pool.reserve_metadata_snap().is_err(),
        "one held root at a time"
    );
    d.delete(9);
    d.unmap(1, 0, 10_000);
    for v in 0..500 {
        d.map(20, v);
    }
    d.commit_and_verify(&img);
    let snap_block = d.pool.info().metadata_snap.unwrap();
    let mut seen = thin_dump(&img, &["-m"]);
    // The held copy has no space maps, so thin_dump shows no data blocks for it.
    assert_eq!(seen.nr_data_blocks, 0);
    seen.nr_data_blocks = held.nr_data_blocks;
    assert_eq!(
        seen, held,
        "thin_dump -m shows the state when the snapshot was taken"
    );
    // Still there after reopening; released, its blocks go back to the space maps.
    let mut d = Driver {
        pool: PoolMetadata::open(open_file(&img)).unwrap(),
        model: d.model,
    };
    assert_eq!(d.pool.info().metadata_snap, Some(snap_block));
    let free_before = d.pool.info().free_metadata_blocks;
    d.pool.release_metadata_snap().unwrap();
    d.commit_and_verify(&img);
    assert_eq!(d.pool.info().metadata_snap, None);
    assert!(d.pool.info().free_metadata_blocks > free_before);
}

#[test]
fn abort_drops_the_open_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let img = restore(dir.path(), "restored", &sample_pool().to_xml(), 8 << 20);
    let mut pool = PoolMetadata::open(open_file(&img)).unwrap();
    let before = Pool::read(&pool);
    let info = pool.info();
    pool.create_snap(30, 1).unwrap();
    pool.delete(9).unwrap();
    let b = pool.alloc_data_block().unwrap();
    pool.insert(1, 3, b).unwrap();
    pool.abort().unwrap();
    assert_eq!(Pool::read(&pool), before);
    assert_eq!(pool.info(), info);
    pool.set_needs_check().unwrap();
    thin_check_passes(&img);
    let reopened = PoolMetadata::open(open_file(&img)).unwrap();
    assert!(reopened.info().needs_check);
    assert_eq!(Pool::read(&reopened), before);
}

#[test]
fn lookups_from_many_threads_agree() {
    let dir = tempfile::tempdir().unwrap();
    let expected = sample_pool();
    let img = restore(dir.path(), "restored", &expected.to_xml(), 8 << 20);
    // A small cache, so threads keep evicting and re-reading blocks.
    let pool = PoolMetadata::open_with_cache(open_file(&img), 64).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (pool, expected) = (&pool, &expected);
            s.spawn(move || {
                for (id, dev) in &expected.devices {
                    for (&v, &(b, _)) in dev.mappings.iter().skip(t as usize).step_by(7) {
                        assert_eq!(pool.lookup(*id, v).unwrap().unwrap().mapping.data_block, b);
                    }
                }
            });
        }
    });
}

#[test]
fn many_snapshots_overflow_both_space_maps_reference_counts() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("meta.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let mut d = Driver::new(PoolMetadata::format(open_file(&img), 256, 40_000).unwrap());
    d.create_thin(1);
    for v in 0..1200 {
        d.map(1, v);
    }
    d.commit_and_verify(&img);
    // Five snapshots of device 1 share its root (a metadata count of 6); writing to each copies
    // the leaves it touches, giving their data blocks counts of 3 and more.
    for s in 2..7 {
        d.create_snap(s, 1);
    }
    d.commit_and_verify(&img);
    let first = d.model.devices[&1].mappings[&0].0;
    for s in 2..7 {
        for v in [0, 300, 900] {
            d.map(s, v + s as u64);
        }
    }
    d.commit_and_verify(&img);
    assert!(
        d.pool.data_ref_count(first).unwrap() >= 3,
        "shared data block counts overflow"
    );
    for s in 2..7 {
        d.delete(s);
    }
    d.commit_and_verify(&img);
    assert_eq!(d.pool.data_ref_count(first).unwrap(), 1);
}

#[test]
fn running_out_of_space_is_reported_and_recoverable() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("meta.img");
    // 24 metadata blocks hold only a few thousand mappings.
    std::fs::File::create(&img)
        .unwrap()
        .set_len(24 * 4096)
        .unwrap();
    let mut pool = PoolMetadata::format(open_file(&img), 128, 100).unwrap();
    pool.create_thin(1).unwrap();
    for v in 0..100 {
        let b = pool.alloc_data_block().unwrap();
        pool.insert(1, v, b).unwrap();
    }
    assert!(matches!(
        pool.alloc_data_block(),
        Err(ThinMetadataError::NoDataSpace { .. })
    ));
    pool.commit().unwrap();
    thin_check_passes(&img);
    // Blocks freed in the open transaction stay unavailable until it commits.
    pool.remove_range(1, 0, 10).unwrap();
    assert!(matches!(
        pool.alloc_data_block(),
        Err(ThinMetadataError::NoDataSpace { .. })
    ));
    pool.commit().unwrap();
    assert!(pool.alloc_data_block().unwrap() < 10);
    pool.resize_data(1_000_000).unwrap();
    let err = (|| -> Result<(), ThinMetadataError> {
        for v in 0..100_000 {
            let b = pool.alloc_data_block()?;
            pool.insert(1, 1000 + v * 2, b)?;
        }
        pool.commit()
    })()
    .unwrap_err();
    assert!(
        matches!(err, ThinMetadataError::NoMetadataSpace { .. }),
        "{err}"
    );
    pool.abort().unwrap();
    assert_eq!(pool.info().nr_data_blocks, 100);
    thin_check_passes(&img);
    tessera_check_passes(&img);
    // The metadata device grows; the pool takes the space.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let mut d = Driver::new(PoolMetadata::open(open_file(&img)).unwrap());
    d.pool.resize_metadata().unwrap();
    d.pool.resize_data(100_000).unwrap();
    d.model.nr_data_blocks = 100_000;
    for v in 0..5000 {
        d.map(1, 1000 + v * 2);
    }
    d.commit_and_verify(&img);
    assert_eq!(d.pool.info().nr_metadata_blocks, 1024);
}

#[test]
fn a_pool_with_a_multi_level_data_space_map_index() {
    // 3 million data blocks: 184 bitmaps, more than one index leaf holds.
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("meta.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let mut d = Driver::new(PoolMetadata::format(open_file(&img), 128, 3_000_000).unwrap());
    d.create_thin(1);
    for v in 0..500 {
        d.map(1, v);
    }
    d.commit_and_verify(&img);
    d.pool.resize_data(3_100_000).unwrap();
    d.model.nr_data_blocks = 3_100_000;
    d.commit_and_verify(&img);
}
