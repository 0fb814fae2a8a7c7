//! The md_superblock fuzz target's check over its seeds (written by mdadm 4.2) and
//! deterministic mutations of them, so every test run exercises the readers' error paths.

use std::path::PathBuf;

use tessera_block::{BlockDevice, MemoryDevice};
use tessera_formats::md::{probe, read_bitmap, write};

const SIZE: u64 = 16 << 20;

/// As fuzz_targets/md_superblock.rs: 4 KiB inputs are a 0.90 superblock, others the start.
fn device(input: &[u8]) -> MemoryDevice {
    let dev = MemoryDevice::new("fuzz", SIZE);
    let at = if input.len() == 4096 { SIZE - 65536 } else { 0 };
    dev.write_at(input, at).unwrap();
    dev
}

#[test]
fn md_probe_never_panics_and_round_trips() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/md_superblock");
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("seed-"))
        .map(|e| std::fs::read(e.path()).unwrap())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 3);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut accepted, mut refused) = (0, 0);
    for seed in &seeds {
        for round in 0..3000 {
            let mut m = seed.clone();
            // Mutations inside the superblocks (and the bitmap header), where they matter.
            let base = if m.len() == 4096 { 0 } else { 4096 };
            let span = if m.len() == 4096 { 4096 } else { 512 };
            for _ in 0..round % 4 {
                let at = base + (next() as usize) % span;
                m[at] ^= 1 << (next() % 8);
            }
            let dev = device(&m);
            match probe(&dev) {
                Ok(Some((version, sb))) => {
                    accepted += 1;
                    let _ = read_bitmap(&dev, version, &sb);
                    let copy = MemoryDevice::new("fuzz", SIZE);
                    write(&copy, version, &sb).unwrap();
                    assert_eq!(probe(&copy).unwrap(), Some((version, sb)));
                }
                Ok(None) => {}
                Err(e) => {
                    assert!(e.to_string().starts_with("fuzz: "), "{e}");
                    refused += 1;
                }
            }
        }
    }
    assert!(
        accepted >= seeds.len() && refused > 0,
        "{accepted} {refused}"
    );
}
