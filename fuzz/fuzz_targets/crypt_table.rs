//! The crypt target from arbitrary input: a `crypt` table row over a 1 MiB memory device
//! either loads or is refused with an error, never a panic; a loaded one reads back what is
//! written through it, at any offset and length (sub-sector I/O on 4096-byte crypt sectors
//! included), and its status line loads again as the same table.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tessera_block::{BlockDevice, MemoryDevice, SharedDevice};
use tessera_mapper::{MappedDevice, Table, TargetRegistry};

fn registry() -> Arc<TargetRegistry> {
    let mut registry = TargetRegistry::new();
    tessera_crypt::register(&mut registry).expect("a fresh registry takes crypt");
    Arc::new(registry)
}

fuzz_target!(|data: &[u8]| {
    let memory: SharedDevice = Arc::new(MemoryDevice::new("mem", 1 << 20));
    let resolve = |_: &str| -> tessera_block::Result<SharedDevice> { Ok(memory.clone()) };
    let (head, rest) = data.split_at(data.len().min(4));
    let text = format!("0 {}", String::from_utf8_lossy(rest));
    let Ok(table) = Table::parse(&text) else {
        return;
    };
    if table.rows().len() != 1 || table.rows()[0].target_type != "crypt" {
        return;
    }
    let dev = MappedDevice::new("fuzz", registry());
    if dev.load(&table, &resolve).is_err() {
        return;
    }
    dev.resume().expect("a loaded crypt table resumes");
    let size = dev.size_bytes();
    if size == 0 {
        return;
    }
    // An offset and length from the input's first bytes: any alignment.
    let offset = u64::from(u16::from_le_bytes([head.first().copied().unwrap_or(0), head.get(1).copied().unwrap_or(0)])) % size;
    let len = (u64::from(u16::from_le_bytes([head.get(2).copied().unwrap_or(1), head.get(3).copied().unwrap_or(0)])) % 9000).clamp(1, size - offset) as usize;
    let pattern: Vec<u8> = (0..len).map(|i| (i * 7 + data.len()) as u8).collect();
    if dev.write_at(&pattern, offset).is_ok() {
        let mut back = vec![0u8; len];
        dev.read_at(&mut back, offset).expect("reads what it wrote");
        assert_eq!(back, pattern);
    }
    if let Some(again) = dev.table() {
        let copy = MappedDevice::new("again", registry());
        copy.load(&again, &resolve).expect("its own table loads again");
    }
});
