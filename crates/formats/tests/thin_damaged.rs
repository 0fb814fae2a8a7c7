//! Damaged dm-thin metadata: every kind of damage gives an error naming the device and the
//! block, never a panic, and the check reports the block; thin_check agrees it is damaged.

mod thin_common;

use std::path::{Path, PathBuf};

use tessera_formats::thin::{check, PoolMetadata, ThinMetadataError};
use thin_common::*;

const BLOCK: u64 = 4096;
const NODE_SALT: u32 = 121_107;

fn read_block(img: &Path, b: u64) -> Vec<u8> {
    let data = std::fs::read(img).unwrap();
    data[(b * BLOCK) as usize..((b + 1) * BLOCK) as usize].to_vec()
}

fn write_block(img: &Path, b: u64, block: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(block, b * BLOCK).unwrap();
}

fn reseal_node(block: &mut [u8]) {
    let csum = crc32c::crc32c(&block[4..]) ^ 0xffff_ffff ^ NODE_SALT;
    block[..4].copy_from_slice(&csum.to_le_bytes());
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Node fields: (is_leaf, nr_entries, max_entries, value_size).
fn header(node: &[u8]) -> (bool, usize, usize, usize) {
    let f = |at: usize| u32::from_le_bytes(node[at..at + 4].try_into().unwrap()) as usize;
    (f(4) == 2, f(16), f(20), f(24))
}

fn value_at(node: &[u8], i: usize) -> usize {
    let (_, _, max, vs) = header(node);
    32 + 8 * max + vs * i
}

/// Metadata with one big device (an internal root, many leaves) and a small one.
fn image(dir: &Path) -> (PathBuf, Pool) {
    let mut pool = Pool {
        time: 1,
        transaction: 1,
        data_block_size: 128,
        nr_data_blocks: 50_000,
        ..Default::default()
    };
    let mut big = Device::default();
    for v in 0..20_000u64 {
        big.mappings.insert(v * 2, (v, 0));
    }
    big.details.mapped_blocks = 20_000;
    let mut small = Device::default();
    small.mappings.insert(7, (30_000, 0));
    small.details.mapped_blocks = 1;
    pool.devices.insert(1, big);
    pool.devices.insert(2, small);
    (restore(dir, "damaged", &pool.to_xml(), 8 << 20), pool)
}

/// The root of device 1's mapping tree (the top level is one leaf here).
fn device_root(img: &Path, dev: u64) -> u64 {
    let sb = read_block(img, 0);
    let top = read_block(img, le64(&sb, 320));
    let (leaf, n, _, _) = header(&top);
    assert!(leaf);
    let i = (0..n).find(|&i| le64(&top, 32 + 8 * i) == dev).unwrap();
    le64(&top, value_at(&top, i))
}

/// Asserts the error names the image and `block`, and that both checks fail naming it.
fn assert_names(err: ThinMetadataError, img: &Path, block: u64) {
    let msg = err.to_string();
    assert!(
        msg.contains(&img.display().to_string()),
        "names the device: {msg}"
    );
    assert!(
        msg.contains(&format!("block {block}")),
        "names block {block}: {msg}"
    );
}

fn assert_check_names(img: &Path, block: u64) {
    let report = check(&open_file(img), &mut |_, _| {}).unwrap();
    assert!(!report.is_clean());
    assert!(
        report.problems.iter().any(|p| p.block == Some(block)),
        "the check names block {block}: {:#?}",
        report.problems
    );
    let out = tool("thin_check").arg(img).output().unwrap();
    assert!(
        !out.status.success(),
        "thin_check agrees the metadata is damaged"
    );
}

#[test]
fn bad_checksum_names_the_block() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = image(dir.path());
    let root = device_root(&img, 1);
    let internal = read_block(&img, root);
    assert!(
        !header(&internal).0,
        "device 1's tree is more than one leaf"
    );
    let leaf = le64(&internal, value_at(&internal, 0));
    let mut block = read_block(&img, leaf);
    block[100] ^= 0xff;
    write_block(&img, leaf, &block);

    let pool = PoolMetadata::open(open_file(&img)).unwrap();
    let err = pool.lookup(1, 0).unwrap_err();
    assert!(matches!(err, ThinMetadataError::BadChecksum { block, .. } if block == leaf));
    assert_names(err, &img, leaf);
    assert_names(pool.mappings(1, 0, u64::MAX).unwrap_err(), &img, leaf);
    // Elsewhere the pool still reads.
    assert_eq!(
        pool.lookup(2, 7).unwrap().unwrap().mapping.data_block,
        30_000
    );
    assert_check_names(&img, leaf);
}

#[test]
fn wrong_magic_is_not_thin_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = image(dir.path());
    let mut sb = read_block(&img, 0);
    sb[32] ^= 1;
    write_block(&img, 0, &sb);
    let err = PoolMetadata::open(open_file(&img)).err().unwrap();
    assert!(matches!(err, ThinMetadataError::BadMagic { .. }), "{err}");
    assert!(err.to_string().contains(&img.display().to_string()));
    assert_check_names(&img, 0);
}

#[test]
fn keys_out_of_order_name_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = image(dir.path());
    let root = device_root(&img, 1);
    let internal = read_block(&img, root);
    let leaf = le64(&internal, value_at(&internal, 1));
    let mut block = read_block(&img, leaf);
    // Swap keys 3 and 4.
    let (k3, k4) = (
        block[32 + 24..32 + 32].to_vec(),
        block[32 + 32..32 + 40].to_vec(),
    );
    block[32 + 24..32 + 32].copy_from_slice(&k4);
    block[32 + 32..32 + 40].copy_from_slice(&k3);
    reseal_node(&mut block);
    write_block(&img, leaf, &block);
    let pool = PoolMetadata::open(open_file(&img)).unwrap();
    let first_key = le64(&block, 32);
    let err = pool.lookup(1, first_key).unwrap_err();
    assert!(err.to_string().contains("out of order"), "{err}");
    assert_names(err, &img, leaf);
    assert_check_names(&img, leaf);
}

#[test]
fn a_child_past_the_device_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = image(dir.path());
    let root = device_root(&img, 1);
    let mut internal = read_block(&img, root);
    let at = value_at(&internal, 0);
    let wild = 1u64 << 40;
    internal[at..at + 8].copy_from_slice(&wild.to_le_bytes());
    reseal_node(&mut internal);
    write_block(&img, root, &internal);
    let pool = PoolMetadata::open(open_file(&img)).unwrap();
    let err = pool.lookup(1, 0).unwrap_err();
    assert!(err.to_string().contains("past the end"), "{err}");
    assert_names(err, &img, wild);
    assert!(pool.mappings(1, 0, u64::MAX).is_err());
    assert_check_names(&img, root);
}

#[test]
fn a_truncated_device_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = image(dir.path());
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.set_len(1 << 20).unwrap();
    let err = PoolMetadata::open(open_file(&img)).err().unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains(&img.display().to_string()) && msg.contains("truncated"),
        "{msg}"
    );
    let report = check(&open_file(&img), &mut |_, _| {}).unwrap();
    assert!(
        report.problems.iter().any(|p| p.what.contains("truncated")),
        "{:#?}",
        report.problems
    );
    // Cut inside the superblock itself.
    f.set_len(100).unwrap();
    let err = PoolMetadata::open(open_file(&img)).err().unwrap();
    assert!(err.to_string().contains("block 0"), "{err}");
    assert!(!check(&open_file(&img), &mut |_, _| {}).unwrap().is_clean());
}

#[test]
fn a_loop_in_the_tree_is_found_not_followed_forever() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = image(dir.path());
    let root = device_root(&img, 1);
    let mut internal = read_block(&img, root);
    // The last child points back at the root.
    let n = header(&internal).1;
    let at = value_at(&internal, n - 1);
    internal[at..at + 8].copy_from_slice(&root.to_le_bytes());
    reseal_node(&mut internal);
    write_block(&img, root, &internal);
    let pool = PoolMetadata::open(open_file(&img)).unwrap();
    let err = pool.lookup(1, 39_998).unwrap_err();
    assert!(err.to_string().contains("loop"), "{err}");
    assert_names(err, &img, root);
    assert!(pool.mappings(1, 0, u64::MAX).is_err());
    assert!(pool.highest_mapped_block(1).is_err());
    assert_check_names(&img, root);
}

#[test]
fn changing_damaged_metadata_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = image(dir.path());
    let root = device_root(&img, 1);
    let internal = read_block(&img, root);
    let leaf = le64(&internal, value_at(&internal, 0));
    let mut block = read_block(&img, leaf);
    block[200] ^= 1;
    write_block(&img, leaf, &block);
    let mut pool = PoolMetadata::open(open_file(&img)).unwrap();
    let b = pool.alloc_data_block().unwrap();
    assert_names(pool.insert(1, 0, b).unwrap_err(), &img, leaf);
    // A failed change leaves the transaction half done: abort goes back to the last commit.
    pool.abort().unwrap();
    assert_names(pool.delete(1).unwrap_err(), &img, leaf);
    pool.abort().unwrap();
    assert_names(pool.remove_range(1, 0, 10).unwrap_err(), &img, leaf);
}

#[test]
fn the_check_reports_every_damaged_block_and_wrong_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = image(dir.path());
    // Two damaged leaves: both are reported.
    let root = device_root(&img, 1);
    let internal = read_block(&img, root);
    let leaves: Vec<u64> = (0..3)
        .map(|i| le64(&internal, value_at(&internal, i)))
        .collect();
    for &leaf in &leaves[1..] {
        let mut block = read_block(&img, leaf);
        block[64] ^= 0x5a;
        write_block(&img, leaf, &block);
    }
    // The data space map counts data block 0 (in the first, sound leaf) twice; one mapping
    // holds it.
    let sb = read_block(&img, 0);
    let index_root = le64(&sb, 64 + 16);
    let index = read_block(&img, index_root);
    assert!(header(&index).0);
    let bitmap_block = le64(&index, value_at(&index, 0));
    let mut bitmap = read_block(&img, bitmap_block);
    let word = u64::from_le_bytes(bitmap[16..24].try_into().unwrap());
    assert_eq!(word & 3, 2, "count 1 is stored as 2 (the bits are swapped)");
    let word = (word & !3) | 1;
    bitmap[16..24].copy_from_slice(&word.to_le_bytes());
    let csum = crc32c::crc32c(&bitmap[4..]) ^ 0xffff_ffff ^ 240_779;
    bitmap[..4].copy_from_slice(&csum.to_le_bytes());
    write_block(&img, bitmap_block, &bitmap);

    let mut calls = Vec::new();
    let report = check(&open_file(&img), &mut |done, total| {
        calls.push((done, total))
    })
    .unwrap();
    let named = |b: u64| report.problems.iter().any(|p| p.block == Some(b));
    assert!(
        named(leaves[1]) && named(leaves[2]),
        "{:#?}",
        report.problems
    );
    assert!(!named(leaves[0]));
    assert!(
        report.problems.iter().any(|p| p
            .what
            .contains("data block 0: the space map counts 2 references, 1 were found")),
        "{:#?}",
        report.problems
    );
    // The damaged leaves' mappings are missing from device 1's count too.
    assert!(report
        .problems
        .iter()
        .any(|p| p.what.contains("thin device 1 has")));
    assert!(
        calls.windows(2).all(|w| w[0].0 <= w[1].0) && !calls.is_empty(),
        "progress goes forward"
    );
    let out = tool("thin_check").arg(&img).output().unwrap();
    assert!(!out.status.success());
}
