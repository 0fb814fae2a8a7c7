//! Inputs the thin fuzz targets found, replayed on every test run (cargo-fuzz replays them
//! only when asked).

#[path = "../../../fuzz/fuzz_targets/thin_common.rs"]
mod fuzz_input;

use tessera_block::SharedDevice;
use tessera_formats::thin::{check, PoolMetadata, ThinMetadataError};

fn regression(name: &str) -> SharedDevice {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions")
        .join(name);
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    fuzz_input::device_from(&data).expect("a device")
}

/// Metadata whose superblock time (0x1000_0000 and up) is wider than the 24 bits a mapping
/// keeps it in: or-ed under the block number, it changed the blocks new mappings recorded
/// (608 read back as 624). The check names it, and tessera refuses to map rather than
/// write a wrong block number.
#[test]
fn a_pool_time_past_24_bits_is_named_and_never_written_into_a_mapping() {
    let dev = regression("thin_space_map-resize-data");
    let report = check(&dev, &mut |_, _| {}).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.block == Some(0) && p.what.contains("past the 24 bits")),
        "{:?}",
        report.problems
    );
    let mut pool = PoolMetadata::open(dev.clone()).unwrap();
    assert!(pool.info().time > 0x00ff_ffff);
    let before = pool.info().nr_data_blocks;
    pool.resize_data(before + 17_000).unwrap();
    pool.create_thin(77).unwrap();
    let b = pool.alloc_data_block().unwrap();
    match pool.insert(77, 0, b) {
        Err(ThinMetadataError::Invalid { device, why }) => {
            assert_eq!(device, "fuzz");
            assert!(why.contains("time"), "{why}");
        }
        other => panic!("a mapping was written with a 32-bit time: {other:?}"),
    }
    assert!(pool.mappings(77, 0, u64::MAX).unwrap().is_empty());
}
