//! The ddf_header fuzz target's check over its seed (mdadm 4.2's metadata, moved to the
//! end of a 2 MiB device) and deterministic mutations of it in the anchor, the headers
//! and the sections, so every test run exercises the reader's error paths.

use std::path::PathBuf;

use tessera_block::{BlockDevice, MemoryDevice};
use tessera_formats::ddf::{assemble, probe};

const SIZE: u64 = 2 << 20;

/// As fuzz_targets/ddf_header.rs.
fn check(data: &[u8]) -> bool {
    let data = &data[data.len().saturating_sub(SIZE as usize)..];
    let dev = MemoryDevice::new("fuzz", SIZE);
    dev.write_at(data, SIZE - data.len() as u64).unwrap();
    let Ok(Some(m)) = probe(&dev) else {
        return false;
    };
    let copy = MemoryDevice::with_contents("fuzz", &dev.contents());
    if m.write(&copy).is_err() {
        return true;
    }
    let again = probe(&copy).unwrap().unwrap();
    assert_eq!(again.virt, m.virt);
    assert_eq!(again.phys, m.phys);
    assert_eq!(again.configs, m.configs);
    for c in assemble(vec![("a".into(), m.clone()), ("b".into(), again)]) {
        for s in &c.subarrays {
            let _ = (s.health(), s.name(), s.level_name());
        }
    }
    true
}

#[test]
fn ddf_probe_never_panics_and_round_trips() {
    let seed = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus/ddf_header/seed-mdadm-4.2-disk0"),
    )
    .unwrap();
    assert!(check(&seed), "the seed reads");
    let n = seed.len();
    // Where it matters: the anchor, and the first sectors of each copy (header, controller,
    // physical and virtual disk records, the first configuration records).
    let regions = [(n - 512, 512), (0, 512 * 40), (n / 2 - 512, 512 * 40)];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut accepted = 0;
    for round in 0..1500 {
        let mut m = seed.clone();
        let (base, span) = regions[round % 3];
        for _ in 0..1 + round % 3 {
            let at = base + (next() as usize) % span;
            m[at] ^= 1 << (next() % 8);
        }
        if check(&m) {
            accepted += 1;
        }
    }
    // Most flips land on a CRC-covered byte whose copy is intact: still read.
    assert!(accepted > 100, "{accepted}");
}
