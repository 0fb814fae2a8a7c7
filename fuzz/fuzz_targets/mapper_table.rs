//! Parses arbitrary bytes as a dmsetup table. Whatever parses must print and parse back to
//! the same table, and load into a mapped device with the built-in targets or fail with an
//! error. A table that loads must print (`dmsetup table`) as text that loads again.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tessera_block::{BlockDevice, MemoryDevice, SharedDevice};
use tessera_mapper::{MappedDevice, Table, TargetRegistry};

/// Every name opens a sparse 1 MiB device, so constructors get past device lookup.
fn resolve(name: &str) -> tessera_block::Result<SharedDevice> {
    Ok(Arc::new(MemoryDevice::new(name, 1 << 20)))
}

fn load(table: &Table) -> Option<MappedDevice> {
    let dev = MappedDevice::new("fuzz", Arc::new(TargetRegistry::new()));
    dev.load(table, &resolve).ok()?;
    dev.resume().expect("built-in targets always resume");
    Some(dev)
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(table) = Table::parse(&text) else {
        return;
    };
    let printed = table.to_string();
    assert_eq!(Table::parse(&printed).as_ref(), Ok(&table), "{printed}");
    for row in table.rows() {
        let _ = row.args();
    }
    let Some(dev) = load(&table) else {
        return;
    };
    let live = dev.table().expect("a loaded table prints");
    assert_eq!(live.size_sectors(), table.size_sectors());
    let _ = dev.status();
    assert!(
        load(&live).is_some(),
        "dmsetup table output must load again:\n{live}"
    );
    // Delay rows may hold I/O for minutes; anything else answers at once.
    if table.rows().iter().all(|r| r.target_type != "delay") {
        let mut buf = [0u8; 512];
        let _ = dev.read_at(&mut buf, 0);
        let _ = dev.read_at(&mut buf, dev.size_bytes() - 512);
        let _ = dev.write_at(&buf[..100], 7);
    }
});
