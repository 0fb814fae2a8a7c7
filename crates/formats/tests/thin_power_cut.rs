//! Power cuts during a dm-thin metadata commit: whichever write the power fails at, whole or
//! torn, the metadata left passes thin_check and tessera's check and reads back as exactly
//! the old or the new transaction.

mod thin_common;

use std::sync::Arc;

use tessera_block::{BlockError, FaultDevice, MemoryDevice, PowerDomain, SharedDevice};
use tessera_formats::thin::{check, PoolMetadata, ThinMetadataError};
use thin_common::*;

const META_BYTES: u64 = 4 << 20;

/// The committed state the transaction starts from.
fn base() -> Vec<u8> {
    let dev = Arc::new(MemoryDevice::new("meta", META_BYTES));
    let mut pool = PoolMetadata::format(dev.clone(), 128, 20_000).unwrap();
    for id in [1, 2, 3] {
        pool.create_thin(id).unwrap();
    }
    for v in 0..1500 {
        for id in [1, 2, 3] {
            let b = pool.alloc_data_block().unwrap();
            pool.insert(id, v * 2, b).unwrap();
        }
    }
    pool.commit().unwrap();
    // Scatter the free metadata blocks, so the commit under test writes many runs.
    for round in 0..6u64 {
        pool.create_snap(10 + round as u32, 1 + (round % 3) as u32)
            .unwrap();
        for v in 0..200 {
            let b = pool.alloc_data_block().unwrap();
            pool.insert(1 + (round % 3) as u32, (v * 37 + round * 11) % 3000, b)
                .unwrap();
        }
        pool.commit().unwrap();
        if round % 2 == 1 {
            pool.delete(10 + round as u32 - 1).unwrap();
            pool.commit().unwrap();
        }
    }
    dev.contents()
}

/// The transaction under test: inserts, a snapshot, writes to it, a delete, an unmap.
fn transaction(pool: &mut PoolMetadata) -> Result<(), ThinMetadataError> {
    for v in 0..300 {
        let b = pool.alloc_data_block()?;
        pool.insert(1, v * 7, b)?;
    }
    pool.create_snap(4, 1)?;
    for v in 0..50 {
        let b = pool.alloc_data_block()?;
        pool.insert(4, v * 13, b)?;
    }
    pool.delete(2)?;
    pool.remove_range(3, 100, 900)?;
    pool.set_transaction_id(0, 1)?;
    pool.commit()
}

struct Outcome {
    state: Pool,
    free: (u64, u64),
}

fn outcome_of(dev: SharedDevice) -> Outcome {
    let pool = PoolMetadata::open(dev).unwrap();
    let info = pool.info();
    Outcome {
        state: Pool::read(&pool),
        free: (info.free_data_blocks, info.free_metadata_blocks),
    }
}

fn check_image(contents: &[u8], dir: &std::path::Path, what: &str) {
    let img = dir.join("cut.img");
    std::fs::write(&img, contents).unwrap();
    thin_check_passes(&img);
    let report = check(&open_file(&img), &mut |_, _| {}).unwrap();
    assert!(report.is_clean(), "{what}: {:#?}", report.problems);
}

#[test]
fn every_cut_point_of_a_commit_leaves_the_old_or_the_new_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let base = base();
    let old = outcome_of(Arc::new(MemoryDevice::with_contents("meta", &base)));

    // A run without a cut: how many writes the commit makes, and the new state.
    let inner = Arc::new(MemoryDevice::with_contents("meta", &base));
    let domain = PowerDomain::new();
    let fault: SharedDevice = Arc::new(FaultDevice::new(inner.clone(), domain.clone()));
    let mut pool = PoolMetadata::open(fault).unwrap();
    transaction(&mut pool).unwrap();
    let writes = domain.writes_seen();
    let new = outcome_of(inner.clone());
    assert_ne!(old.state, new.state);
    check_image(&inner.contents(), dir.path(), "uncut");
    assert!(
        writes >= 3,
        "a commit is several writes, then the superblock"
    );

    let (mut saw_old, mut saw_new, mut runs) = (0, 0, 0);
    // Every cut point, whole writes lost and then torn ones under three seeds.
    for torn in [None, Some(1u64), Some(2), Some(3)] {
        for cut in 0..=writes {
            let inner = Arc::new(MemoryDevice::with_contents("meta", &base));
            let domain = PowerDomain::new();
            if let Some(seed) = torn {
                domain.set_torn(seed * 1000 + cut);
            }
            domain.cut_after(cut);
            let fault: SharedDevice = Arc::new(FaultDevice::new(inner.clone(), domain.clone()));
            let mut pool = PoolMetadata::open(fault).unwrap();
            match transaction(&mut pool) {
                Err(ThinMetadataError::Block(BlockError::PowerCut { .. })) => assert!(cut < writes),
                Err(e) => panic!("cut after {cut} writes: {e}"),
                Ok(()) => {
                    assert_eq!(cut, writes);
                    domain.cut_now().unwrap();
                }
            }
            drop(pool);
            let what = format!("cut after {cut} of {writes} writes, torn {torn:?}");
            check_image(&inner.contents(), dir.path(), &what);
            let got = outcome_of(inner.clone());
            if got.state == old.state {
                assert_eq!(got.free, old.free, "{what}");
                saw_old += 1;
            } else {
                assert!(
                    got.state == new.state,
                    "{what}: neither the old nor the new state"
                );
                assert_eq!(got.free, new.free, "{what}");
                saw_new += 1;
            }
            runs += 1;
        }
    }
    eprintln!("{writes} writes in the commit: {} cut points x 4 modes = {runs} runs, {saw_old} old, {saw_new} new", writes + 1);
    assert!(saw_old > 0 && saw_new > 0);
}
