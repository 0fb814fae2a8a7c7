//! The BBR table reader over arbitrary devices: never panics; a table it accepts names only
//! replacements in the pool and bad sectors in the data area, takes one more relocation and
//! reads it back after reopening.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tessera_block::{MemoryDevice, SharedDevice};
use tessera_formats::bbr::{BbrStore, Geometry, TableSector, TABLE_SECTOR_BYTES};

fuzz_target!(|data: &[u8]| {
    if let Ok(sector) =
        <&[u8; TABLE_SECTOR_BYTES]>::try_from(data.get(..TABLE_SECTOR_BYTES).unwrap_or(&[]))
    {
        if let Ok(s) = TableSector::decode(sector) {
            assert_eq!(TableSector::decode(&s.encode()).unwrap().entries, s.entries);
        }
    }
    // The first byte picks a pool size; the device is the input padded to 64 sectors.
    let pool = 1 + u64::from(*data.first().unwrap_or(&0) % 40);
    let mut bytes = data.to_vec();
    bytes.resize(bytes.len().max(64 * 512).div_ceil(512) * 512, 0);
    let sectors = bytes.len() as u64 / 512;
    let Some(g) = Geometry::inside(0, sectors, pool) else {
        return;
    };
    let dev: SharedDevice = Arc::new(MemoryDevice::with_contents("fuzz", &bytes));
    let Ok((mut store, _)) = BbrStore::open(dev.clone(), g, true) else {
        return;
    };
    for e in store.relocations() {
        assert!(e.bad < g.data_start + g.data_sectors);
        assert!((g.pool_start..g.pool_start + g.pool_sectors).contains(&e.replacement));
    }
    let before = store.used();
    if store.commit(g.data_sectors - 1).is_ok() {
        let (again, report) = BbrStore::open(dev, g, true).unwrap();
        assert!(report.copy1_rewritten.is_empty() && report.copy2_rewritten.is_empty());
        assert_eq!(again.used(), before + 1);
        assert!(again
            .relocations()
            .iter()
            .any(|e| e.bad == g.data_sectors - 1));
    }
});
