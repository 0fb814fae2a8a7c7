//! The raid target and md geometry from arbitrary input: a `raid` table row over 1 MiB
//! memory members either loads or is refused with an error; a loaded set reads back what is
//! written to it, also with a member missing. And geometry numbers as a superblock could
//! hold them either build a geometry whose every mapping lies on its members, or an error.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tessera_block::{BlockDevice, MemoryDevice, SharedDevice};
use tessera_mapper::{MappedDevice, Table, TargetRegistry};
use tessera_raid::layout::{Geometry, Level};

fn resolve(name: &str) -> tessera_block::Result<SharedDevice> {
    Ok(Arc::new(MemoryDevice::new(name, 1 << 20)))
}

fn geometry(data: &[u8]) {
    if data.len() < 24 {
        return;
    }
    let word = |i: usize| u64::from_le_bytes(data[i..i + 8].try_into().unwrap());
    let level = [
        Level::Raid0,
        Level::Raid1,
        Level::Raid4,
        Level::Raid5,
        Level::Raid6,
        Level::Raid10,
    ][data[0] as usize % 6];
    let layout = u32::from_le_bytes(data[1..5].try_into().unwrap());
    let chunk = 1u64 << (data[5] % 64);
    let disks = (data[6] as usize) % 40;
    let member = word(8);
    let sector = word(16);
    let Ok(g) = Geometry::new(level, layout, chunk, disks, &vec![member; disks]) else {
        return;
    };
    let size = g.array_sectors();
    if size == 0 {
        return;
    }
    let s = sector % size;
    for (m, ms) in g.data_location(s) {
        assert!(m < disks);
        let _ = ms;
    }
    if matches!(level, Level::Raid4 | Level::Raid5 | Level::Raid6) {
        let info = g.stripe_of(s);
        assert!(info.p < disks && info.q.is_none_or(|q| q < disks));
        assert!(info.data.iter().all(|&m| m < disks && m != info.p));
    }
}

fuzz_target!(|data: &[u8]| {
    geometry(data);
    let text = format!("0 {}", String::from_utf8_lossy(data));
    let Ok(table) = Table::parse(&text) else {
        return;
    };
    if table.rows().len() != 1 || table.rows()[0].target_type != "raid" {
        return;
    }
    let mut registry = TargetRegistry::new();
    tessera_raid::register(&mut registry);
    let dev = MappedDevice::new("fuzz", Arc::new(registry));
    if dev.load(&table, &resolve).is_err() {
        return;
    }
    dev.resume().expect("a loaded raid set resumes");
    let size = dev.size_bytes();
    let len = size.min(8192) as usize & !511;
    if len == 0 {
        return;
    }
    let pattern: Vec<u8> = (0..len).map(|i| (i * 7 + data.len()) as u8).collect();
    if dev.write_at(&pattern, 0).is_ok() {
        let mut back = vec![0u8; len];
        dev.read_at(&mut back, 0).expect("reads what it wrote");
        assert_eq!(back, pattern);
    }
});
