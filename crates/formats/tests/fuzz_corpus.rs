//! The fuzz targets' checks, run over their seed corpora and deterministic mutations of
//! them, so every test run exercises the parsers' error paths (cargo-fuzz explores further:
//! see fuzz/).

use std::path::PathBuf;

use tessera_block::{BlockDevice, MemoryDevice};
use tessera_formats::lvm2::config::{self, Style};
use tessera_formats::lvm2::label::{read_label, PvLabel};
use tessera_formats::lvm2::mda::{next_text_offset, read_mda_header, read_text};
use tessera_formats::lvm2::vg::VolumeGroup;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("seed-"))
        .map(|e| std::fs::read(e.path()).unwrap())
        .collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds.sort();
    seeds
}

/// Each seed, then mutations: flipped bits, cut tails, repeated and dropped bytes.
fn inputs(target: &str, per_seed: usize) -> Vec<Vec<u8>> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = Vec::new();
    for seed in corpus(target) {
        out.push(seed.clone());
        for _ in 0..per_seed {
            let mut m = seed.clone();
            for _ in 0..1 + next() % 4 {
                if m.is_empty() {
                    break;
                }
                let at = (next() as usize) % m.len();
                match next() % 4 {
                    0 => m[at] ^= 1 << (next() % 8),
                    1 => m.truncate(at.max(1)),
                    2 => m.insert(at, m[at]),
                    _ => {
                        m.remove(at);
                    }
                }
            }
            out.push(m);
        }
    }
    out
}

#[test]
fn text_parser_round_trips_what_it_accepts() {
    let mut accepted = 0;
    for input in inputs("lvm2_text", 2000) {
        if let Ok(tree) = config::parse(&input) {
            accepted += 1;
            for style in [Style::Disk, Style::File] {
                assert_eq!(
                    config::parse(config::print(&tree, style).as_bytes()).unwrap(),
                    tree
                );
            }
        }
    }
    assert!(accepted > 0);
}

#[test]
fn vg_model_round_trips_what_it_accepts() {
    let mut accepted = 0;
    for input in inputs("lvm2_vg", 3000) {
        if let Ok((vg, info)) = VolumeGroup::from_text(&input) {
            accepted += 1;
            for style in [Style::Disk, Style::File] {
                let (again, _) =
                    VolumeGroup::from_text(vg.to_text(&info, style).as_bytes()).unwrap();
                assert_eq!(again, vg);
            }
        }
    }
    // The unmutated seeds (one of them written by lvm2 2.03.16) are accepted.
    assert!(accepted >= 2);
}

#[test]
fn label_reader_never_panics_and_round_trips() {
    let mut accepted = 0;
    for input in inputs("lvm2_label", 3000) {
        let dev = MemoryDevice::new("fuzz", (input.len() as u64).max(2048) + (1 << 20));
        dev.write_at(&input, 0).unwrap();
        if let Ok(Some(label)) = read_label(&dev) {
            accepted += 1;
            let again =
                PvLabel::decode(&label.encode(), label.sector, "fuzz", dev.size_bytes()).unwrap();
            assert_eq!(again, label);
        }
    }
    assert!(accepted > 0);
}

#[test]
fn mda_readers_never_panic() {
    let mut texts = 0;
    for input in inputs("lvm2_mda", 3000) {
        let dev = MemoryDevice::new("fuzz", (input.len() as u64).max(1 << 20));
        dev.write_at(&input, 0).unwrap();
        for start in [4096u64, 0] {
            if let Ok(header) = read_mda_header(&dev, start) {
                for locn in &header.raw_locns {
                    if read_text(&dev, &header, locn).is_ok() {
                        texts += 1;
                    }
                }
                let _ = next_text_offset("fuzz", &header, 1000);
            }
        }
    }
    assert!(texts > 0);
}
