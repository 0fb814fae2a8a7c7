//! The dmraid_superblock fuzz target's check over its seeds (rmeta superblocks written by
//! the kernel's dm-raid under lvm2 2.03, and one from before the 1.9.0 extension) and
//! deterministic mutations of them, so every test run exercises the reader's error paths.

use std::path::PathBuf;

use tessera_block::MemoryDevice;
use tessera_formats::dmraid::{self, DmRaidSuperblock, BASE_BYTES, BYTES};

#[test]
fn dmraid_superblocks_never_panic_and_round_trip() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/dmraid_superblock");
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("seed-"))
        .map(|e| std::fs::read(e.path()).unwrap())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 6);
    // Every seed is a superblock the kernel wrote (or could have).
    for seed in &seeds {
        let sb = DmRaidSuperblock::decode(seed, "seed").unwrap();
        let covered = if sb.has_v190() { BYTES } else { BASE_BYTES };
        assert_eq!(&sb.encode()[..covered], &seed[..covered]);
    }
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
            for _ in 0..round % 4 {
                let at = (next() as usize) % BYTES;
                m[at] ^= 1 << (next() % 8);
            }
            if round % 7 == 0 {
                m.truncate((next() as usize) % m.len());
            }
            match DmRaidSuperblock::decode(&m, "fuzz") {
                Ok(sb) => {
                    accepted += 1;
                    let covered = if sb.has_v190() { BYTES } else { BASE_BYTES };
                    assert_eq!(&sb.encode()[..covered], &m[..covered]);
                    let dev = MemoryDevice::new("fuzz", 1 << 20);
                    dmraid::write(&dev, &sb).unwrap();
                    assert_eq!(dmraid::read(&dev).unwrap(), sb);
                }
                Err(e) => {
                    assert!(e.to_string().starts_with("fuzz: "), "{e}");
                    refused += 1;
                }
            }
        }
    }
    assert!(accepted > 1000 && refused > 1000, "{accepted} {refused}");
}
