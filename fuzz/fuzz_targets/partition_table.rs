//! The MBR and GPT readers over arbitrary disk contents: never panic, and what they accept
//! lies inside the disk without overlapping the tables.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_formats::partition::read_table;

fuzz_target!(|data: &[u8]| {
    // The first byte sizes the disk; the rest is its start, repeated at its end so the
    // backup GPT is reachable too.
    let Some((&size, body)) = data.split_first() else {
        return;
    };
    let sectors = 64 + u64::from(size) * 8;
    let read = |lba: u64, count: u64| -> Option<Vec<u8>> {
        if lba.checked_add(count)? > sectors || count > 1 << 16 {
            return None;
        }
        let mut out = vec![0u8; (count * 512) as usize];
        for (i, b) in out.iter_mut().enumerate() {
            let at = (lba * 512) as usize + i;
            let from_end = (sectors * 512) as usize - 1 - at;
            *b = *body.get(at).or_else(|| body.get(from_end)).unwrap_or(&0);
        }
        Some(out)
    };
    if let Ok(Some(table)) = read_table("fuzz", sectors, &read) {
        for p in &table.partitions {
            assert!(p.sectors > 0);
            assert!(p.start_sector > 0 && p.start_sector + p.sectors <= sectors);
        }
    }
});
