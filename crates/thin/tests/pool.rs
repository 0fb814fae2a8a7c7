//! thin-pool and thin tables on image files with the real metadata format: provisioning,
//! reads against a model, snapshots, delete, discard, reopen, and the real thin_check and
//! thin_dump on what was written.

mod common;

use std::collections::HashMap;

use common::*;
use tessera_block::BlockDevice;

const META_BYTES: u64 = 4 << 20;

struct Pool {
    stack: Stack,
    meta: String,
    data: String,
}

fn pool(
    name: &str,
    data_blocks: u64,
    features: &[&str],
) -> (Pool, std::sync::Arc<tessera_mapper::MappedDevice>) {
    let stack = Stack::new();
    let meta = stack.file("meta.img", META_BYTES);
    let data = stack.file("data.img", data_blocks * BLOCK);
    let dev = stack.activate(name, &pool_table(&meta, &data, data_blocks, features));
    (Pool { stack, meta, data }, dev)
}

#[test]
fn provision_read_back_reopen_and_thin_check() {
    let (p, pool_dev) = pool("t1-pool", 256, &[]);
    let s = &p.stack;
    // A blank pool: transaction 0, nothing used, rw, the defaults.
    let w = status_words(&pool_dev);
    assert_eq!(w[0], "0");
    assert_eq!(w[2], "0/256");
    assert_eq!(
        &w[3..8],
        ["-", "rw", "discard_passdown", "queue_if_no_space", "-"]
    );
    assert_eq!(w[8], (META_BYTES / 4096 / 4).min(1024).to_string());
    assert_eq!(
        pool_dev.table().unwrap().to_string().trim(),
        format!(
            "0 {} thin-pool {} {} 128 0 0",
            256 * BLOCK_SECTORS,
            p.meta,
            p.data
        )
    );

    s.message("t1-pool", "create_thin 0").unwrap();
    s.message("t1-pool", "set_transaction_id 0 1").unwrap();
    assert!(
        s.message("t1-pool", "create_thin 0").is_err(),
        "ids are unique"
    );
    assert!(
        s.message("t1-pool", "set_transaction_id 0 2").is_err(),
        "wrong current id"
    );
    let virt = 1024 * BLOCK; // 64 MiB virtual over 16 MiB of data
    let thin = s.activate("t1-thin", &thin_table("t1-pool", 0, virt / SECTOR));
    assert_eq!(status_words(&thin), ["0", "-"]);

    // Partial, whole, and block-crossing writes.
    let mut rng = Rng(1);
    let writes: Vec<(u64, Vec<u8>)> = vec![
        (0, rng.bytes(512)),
        (3 * BLOCK + 4096, rng.bytes(8192)),
        (10 * BLOCK, rng.bytes(BLOCK as usize)),
        (20 * BLOCK - 1024, rng.bytes(3 * 1024)),
        (1000 * BLOCK, rng.bytes(2 * BLOCK as usize + 512)),
    ];
    for (at, data) in &writes {
        thin.write_at(data, *at).unwrap();
    }
    let touched = [0u64, 3, 10, 19, 20, 1000, 1001, 1002];
    let check = |thin: &dyn BlockDevice| {
        for (at, data) in &writes {
            assert_eq!(&read(thin, *at, data.len()), data, "data at {at}");
        }
        // The rest of a provisioned block was zeroed; unprovisioned blocks read zeroes.
        assert_eq!(read(thin, 512, 4096), vec![0; 4096]);
        assert_eq!(read(thin, 3 * BLOCK, 4096), vec![0; 4096]);
        assert_eq!(
            read(thin, 500 * BLOCK, BLOCK as usize),
            vec![0; BLOCK as usize]
        );
    };
    check(&*thin);
    thin.flush().unwrap();
    assert_eq!(data_usage(&pool_dev), (touched.len() as u64, 256));
    assert_eq!(
        status_words(&thin),
        [
            (touched.len() as u64 * BLOCK_SECTORS).to_string(),
            (1003 * BLOCK_SECTORS - 1).to_string()
        ]
    );
    assert_eq!(status_words(&pool_dev)[0], "1");

    // Reopen from disk: same data.
    drop((thin, pool_dev));
    s.remove_all();
    let pool_dev = s.activate("t1-pool", &pool_table(&p.meta, &p.data, 256, &[]));
    let thin = s.activate("t1-thin", &thin_table("t1-pool", 0, virt / SECTOR));
    check(&*thin);
    assert_eq!(data_usage(&pool_dev), (touched.len() as u64, 256));
    drop((thin, pool_dev));
    s.remove_all();

    thin_check(&p.meta);
    let xml = thin_dump(&p.meta);
    assert!(xml.contains("transaction=\"1\""), "{xml}");
    assert!(xml.contains("data_block_size=\"128\""), "{xml}");
    assert!(xml.contains("nr_data_blocks=\"256\""), "{xml}");
    assert_eq!(dumped_mapped_blocks(&xml, 0), touched.len() as u64, "{xml}");
}

#[test]
fn snapshots_share_then_diverge_and_delete_frees() {
    let (p, pool_dev) = pool("t2-pool", 128, &[]);
    let s = &p.stack;
    s.message("t2-pool", "create_thin 1").unwrap();
    let sectors = 64 * BLOCK / SECTOR;
    let origin = s.activate("t2-origin", &thin_table("t2-pool", 1, sectors));
    let before = Rng(2).bytes((16 * BLOCK) as usize);
    origin.write_at(&before, 0).unwrap();
    origin.flush().unwrap();
    assert_eq!(data_usage(&pool_dev).0, 16);

    // lvm2 suspends the origin around create_snap.
    origin.suspend();
    s.message("t2-pool", "create_snap 2 1").unwrap();
    origin.resume().unwrap();
    let snap = s.activate("t2-snap", &thin_table("t2-pool", 2, sectors));
    assert!(read(&*snap, 0, before.len()) == before);
    assert_eq!(data_usage(&pool_dev).0, 16, "a snapshot shares every block");

    // The origin writes blocks 0..4 (partly), the snapshot blocks 8..10 (wholly).
    let o_new = Rng(3).bytes(4096);
    for b in 0..4 {
        origin.write_at(&o_new, b * BLOCK + 8192).unwrap();
    }
    let s_new = Rng(4).bytes((2 * BLOCK) as usize);
    snap.write_at(&s_new, 8 * BLOCK).unwrap();
    // A second write to a block whose sharing is broken already stays in place.
    origin.write_at(&o_new, 8192).unwrap();

    let mut o_model = before.clone();
    for b in 0..4usize {
        let at = b * BLOCK as usize + 8192;
        o_model[at..at + 4096].copy_from_slice(&o_new);
    }
    let mut s_model = before.clone();
    s_model[8 * BLOCK as usize..10 * BLOCK as usize].copy_from_slice(&s_new);
    assert!(read(&*origin, 0, before.len()) == o_model);
    assert!(read(&*snap, 0, before.len()) == s_model);
    assert_eq!(data_usage(&pool_dev).0, 16 + 4 + 2);

    // Delete is refused while the device is open, then frees what only it used.
    assert!(s.message("t2-pool", "delete 2").is_err());
    drop(snap);
    s.remove("t2-snap");
    s.message("t2-pool", "delete 2").unwrap();
    assert_eq!(
        data_usage(&pool_dev).0,
        16 + 4 + 2 - 6,
        "the snapshot's 4 old + 2 own blocks"
    );
    assert!(read(&*origin, 0, before.len()) == o_model);
    drop((origin, pool_dev));
    s.remove_all();
    thin_check(&p.meta);
    let xml = thin_dump(&p.meta);
    assert_eq!(dumped_mapped_blocks(&xml, 1), 16);
    assert!(!xml.contains("dev_id=\"2\""), "{xml}");
}

#[test]
fn discard_unmaps_frees_and_passes_down() {
    let (p, pool_dev) = pool("t3-pool", 64, &[]);
    let s = &p.stack;
    s.message("t3-pool", "create_thin 7").unwrap();
    let thin = s.activate("t3-thin", &thin_table("t3-pool", 7, 64 * BLOCK / SECTOR));
    let data = Rng(5).bytes((10 * BLOCK) as usize);
    thin.write_at(&data, 0).unwrap();
    thin.flush().unwrap();
    assert_eq!(data_usage(&pool_dev).0, 10);

    // Blocks 2..6 whole, with partial edges in blocks 1 and 6, which stay.
    thin.discard(BLOCK + 4096, 6 * BLOCK - 8192).unwrap();
    let mut model = data.clone();
    model[2 * BLOCK as usize..6 * BLOCK as usize].fill(0);
    assert!(read(&*thin, 0, model.len()) == model);
    assert_eq!(data_usage(&pool_dev).0, 6);
    assert_eq!(status_words(&thin)[0], (6 * BLOCK_SECTORS).to_string());

    // Freed blocks are reused after the commit; nothing of the old data shows through.
    let fresh = Rng(6).bytes(4096);
    for b in 20..24 {
        thin.write_at(&fresh, b * BLOCK).unwrap();
        assert_eq!(read(&*thin, b * BLOCK + 4096, 4096), vec![0; 4096]);
    }
    thin.flush().unwrap();
    assert_eq!(data_usage(&pool_dev).0, 10);
    drop((thin, pool_dev));
    s.remove_all();
    thin_check(&p.meta);
    assert_eq!(dumped_mapped_blocks(&thin_dump(&p.meta), 7), 10);
}

#[test]
fn ignore_discard_keeps_mappings() {
    let (p, pool_dev) = pool("t4-pool", 16, &["ignore_discard", "skip_block_zeroing"]);
    let s = &p.stack;
    assert_eq!(&status_words(&pool_dev)[5], "ignore_discard");
    assert_eq!(
        pool_dev.table().unwrap().to_string().trim(),
        format!(
            "0 {} thin-pool {} {} 128 0 2 skip_block_zeroing ignore_discard",
            16 * BLOCK_SECTORS,
            p.meta,
            p.data
        )
    );
    s.message("t4-pool", "create_thin 0").unwrap();
    let thin = s.activate("t4-thin", &thin_table("t4-pool", 0, 16 * BLOCK / SECTOR));
    thin.write_at(&vec![7u8; BLOCK as usize], 0).unwrap();
    thin.discard(0, BLOCK).unwrap();
    assert_eq!(read(&*thin, 0, 512), vec![7u8; 512]);
    assert_eq!(data_usage(&pool_dev).0, 1);
}

#[test]
fn metadata_snapshot_messages() {
    let (p, pool_dev) = pool("t5-pool", 16, &[]);
    let s = &p.stack;
    s.message("t5-pool", "create_thin 0").unwrap();
    s.message("t5-pool", "reserve_metadata_snap").unwrap();
    let held = status_words(&pool_dev)[3].clone();
    assert!(held.parse::<u64>().is_ok(), "held root {held}");
    assert!(
        s.message("t5-pool", "reserve_metadata_snap").is_err(),
        "one at a time"
    );
    s.message("t5-pool", "release_metadata_snap").unwrap();
    assert_eq!(status_words(&pool_dev)[3], "-");
    assert!(s.message("t5-pool", "frobnicate").is_err());
    assert!(s.message("t5-pool", "create_thin 16777216").is_err());
    assert!(s.message("t5-pool", "create_thin").is_err());
    drop(pool_dev);
    s.remove_all();
    thin_check(&p.meta);
}

#[test]
fn table_errors_name_the_problem() {
    let stack = Stack::new();
    let meta = stack.file("meta.img", META_BYTES);
    let data = stack.file("data.img", 16 * BLOCK);
    let bad = |table: &str, what: &str| {
        let e = stack.try_activate("t6-pool", table).unwrap_err();
        assert!(e.contains(what), "{table}: {e}");
    };
    bad(
        &format!("0 2048 thin-pool {meta} {data} 100 0\n"),
        "block size",
    );
    bad(
        &format!("0 2048 thin-pool {meta} {data} 128 0 1 frob\n"),
        "frob",
    );
    bad(
        &format!("0 2048 thin-pool {meta} {data} 128\n"),
        "low water mark",
    );
    bad(
        &format!("0 99999999 thin-pool {meta} {data} 128 0\n"),
        "too small",
    );
    // A thin device of a pool that does not exist, or of an id not created.
    stack.activate("t6-pool", &pool_table(&meta, &data, 16, &[]));
    let e = stack
        .try_activate("t6-thin", &thin_table("t6-pool", 3, 2048))
        .unwrap_err();
    assert!(e.contains("no thin device 3"), "{e}");
    let e = stack
        .try_activate("t6-thin", &thin_table(&data, 0, 2048))
        .unwrap_err();
    assert!(e.contains("not a thin pool"), "{e}");
    // Another pool on the same metadata is refused.
    let e = stack
        .try_activate("t6-other", &pool_table(&meta, &data, 16, &[]))
        .unwrap_err();
    assert!(e.contains("already in use"), "{e}");
}

/// Writers on several threads, each with its own model of its own sectors, interleaved
/// within the same blocks (so first writes to one block race), on two thin devices.
#[test]
fn random_io_from_threads_matches_a_model() {
    const THREADS: u64 = 4;
    const BLOCKS: u64 = 48;
    let (p, pool_dev) = pool("t7-pool", 200, &[]);
    let s = &p.stack;
    s.message("t7-pool", "create_thin 0").unwrap();
    s.message("t7-pool", "create_thin 1").unwrap();
    let sectors = BLOCKS * BLOCK / SECTOR;
    let thins = [
        s.activate("t7-a", &thin_table("t7-pool", 0, sectors)),
        s.activate("t7-b", &thin_table("t7-pool", 1, sectors)),
    ];
    // Thread t owns the 4 KiB pages whose number is t modulo THREADS.
    const PAGE: u64 = 4096;
    let pages = BLOCKS * BLOCK / PAGE;
    let models: Vec<HashMap<(usize, u64), Vec<u8>>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let thins = &thins;
                sc.spawn(move || {
                    let mut rng = Rng(100 + t);
                    let mut model: HashMap<(usize, u64), Vec<u8>> = HashMap::new();
                    for _ in 0..300 {
                        let dev = rng.below(2) as usize;
                        let page = rng.below(pages / THREADS) * THREADS + t;
                        let at = page * PAGE;
                        match rng.below(10) {
                            0..=5 => {
                                let data = rng.bytes(PAGE as usize);
                                thins[dev].write_at(&data, at).unwrap();
                                model.insert((dev, page), data);
                            }
                            6 => thins[dev].flush().unwrap(),
                            _ => {
                                let got = read(&*thins[dev], at, PAGE as usize);
                                let want = model
                                    .get(&(dev, page))
                                    .cloned()
                                    .unwrap_or(vec![0; PAGE as usize]);
                                assert_eq!(got, want, "thread {t} dev {dev} page {page}");
                            }
                        }
                    }
                    model
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut blocks = std::collections::HashSet::new();
    for model in &models {
        for ((dev, page), data) in model {
            assert_eq!(&read(&*thins[*dev], page * PAGE, PAGE as usize), data);
            blocks.insert((*dev, page * PAGE / BLOCK));
        }
    }
    // Racing first writes to one block allocated it once.
    for t in &thins {
        t.flush().unwrap();
    }
    assert_eq!(data_usage(&pool_dev).0, blocks.len() as u64);
    drop((thins, pool_dev));
    s.remove_all();
    thin_check(&p.meta);
    let xml = thin_dump(&p.meta);
    let a = blocks.iter().filter(|(d, _)| *d == 0).count() as u64;
    assert_eq!(dumped_mapped_blocks(&xml, 0), a);
    assert_eq!(dumped_mapped_blocks(&xml, 1), blocks.len() as u64 - a);
}

#[test]
fn pool_device_io_maps_onto_the_data_device() {
    let (p, pool_dev) = pool("t8-pool", 16, &[]);
    pool_dev.write_at(&[9u8; 4096], BLOCK).unwrap();
    let data = std::fs::read(&p.data).unwrap();
    assert_eq!(&data[BLOCK as usize..][..4096], &[9u8; 4096]);
}

/// Reloading the pool table hands the open metadata over: changes not yet committed stay,
/// thin devices keep running, and the metadata is never opened twice.
#[test]
fn reload_hands_the_pool_over() {
    let (p, pool_dev) = pool("t9-pool", 32, &[]);
    let s = &p.stack;
    s.message("t9-pool", "create_thin 0").unwrap();
    let thin = s.activate("t9-thin", &thin_table("t9-pool", 0, 32 * BLOCK / SECTOR));
    let data = Rng(9).bytes((3 * BLOCK) as usize);
    thin.write_at(&data, 0).unwrap();
    // No flush: the mappings are not committed when the table is swapped.
    s.activate(
        "t9-pool",
        &pool_table(&p.meta, &p.data, 32, &["no_discard_passdown"]),
    );
    assert_eq!(&status_words(&pool_dev)[5], "no_discard_passdown");
    assert!(read(&*thin, 0, data.len()) == data);
    thin.write_at(&data[..4096], 10 * BLOCK).unwrap();
    // A reload naming other metadata is refused, and the live table stays.
    let other = s.file("other-meta.img", META_BYTES);
    assert!(s
        .try_activate("t9-pool", &pool_table(&other, &p.data, 32, &[]))
        .is_err());
    assert_eq!(data_usage(&pool_dev), (4, 32));
    // A pool table that shrinks the pool is refused on resume.
    let e = s
        .try_activate("t9-pool", &pool_table(&p.meta, &p.data, 16, &[]))
        .unwrap_err();
    assert!(e.contains("too small"), "{e}");
    drop((thin, pool_dev));
    s.remove_all();

    let pool_dev = s.activate("t9-pool", &pool_table(&p.meta, &p.data, 32, &[]));
    let thin = s.activate("t9-thin", &thin_table("t9-pool", 0, 32 * BLOCK / SECTOR));
    assert!(read(&*thin, 0, data.len()) == data);
    assert_eq!(read(&*thin, 10 * BLOCK, 4096), data[..4096]);
    drop((thin, pool_dev));
    s.remove_all();
    thin_check(&p.meta);
}

/// A metadata device too small for the mappings: the pool goes read-only, what was flushed
/// before is still there, and the metadata passes thin_check.
#[test]
fn full_metadata_makes_the_pool_read_only() {
    // So small the reserve cannot absorb one transaction: an insert fails, the transaction
    // is aborted and needs_check set, as the kernel does.
    fill_metadata("t10", 24, Some("needs_check"));
    // With the kernel's reserve (a tenth) the pool commits and goes read-only before an
    // insert fails, with needs_check clear.
    fill_metadata("t11", 64, Some("-"));
}

fn fill_metadata(name: &str, metadata_blocks: u64, needs_check: impl Into<Option<&'static str>>) {
    let needs_check = needs_check.into();
    let s = Stack::new();
    let meta = s.file("meta.img", metadata_blocks * 4096);
    let blocks = 16384;
    let data = s.file("data.img", blocks * BLOCK);
    let pool_dev = s.activate(
        &format!("{name}-pool"),
        &pool_table(
            &meta,
            &data,
            blocks,
            &["skip_block_zeroing", "error_if_no_space"],
        ),
    );
    for id in 0..4 {
        s.message(&format!("{name}-pool"), &format!("create_thin {id}"))
            .unwrap();
    }
    let thins: Vec<_> = (0..4)
        .map(|id| {
            let table = thin_table(&format!("{name}-pool"), id, blocks * BLOCK_SECTORS);
            s.activate(&format!("{name}-thin{id}"), &table)
        })
        .collect();
    let mut rng = Rng(10);
    let mut flushed: Vec<(usize, u64, u64)> = Vec::new();
    let mut pending = Vec::new();
    let mut failed = None;
    for i in 0..100_000u64 {
        let dev = rng.below(4) as usize;
        let block = rng.below(blocks);
        let stamp = rng.next();
        match thins[dev].write_at(&stamp.to_le_bytes().repeat(64), block * BLOCK) {
            Ok(()) => pending.push((dev, block, stamp)),
            Err(e) => {
                failed = Some((i, e.to_string()));
                break;
            }
        }
        if i % 50 == 49 && thins[dev].flush().is_ok() {
            flushed.append(&mut pending);
        }
    }
    let (at, why) = failed.expect("the metadata filled up");
    let w = status_words(&pool_dev);
    assert_eq!(&w[4], "ro", "after {at} writes ({why}): {w:?}");
    if let Some(needs_check) = needs_check {
        assert_eq!(&w[7], needs_check, "after {at} writes ({why}): {w:?}");
    }
    // Each block holds its last flushed stamp, or a stamp written after it in place (an
    // overwrite of a mapped block survives the abort of the transaction after the flush).
    let mut last = HashMap::new();
    for (dev, block, stamp) in &flushed {
        last.insert((*dev, *block), *stamp);
    }
    for ((dev, block), stamp) in &last {
        let got = u64::from_le_bytes(read(&*thins[*dev], block * BLOCK, 8).try_into().unwrap());
        let later = pending
            .iter()
            .any(|(d, b, s)| (d, b) == (dev, block) && *s == got);
        assert!(got == *stamp || later, "dev {dev} block {block}");
    }
    // Mapped blocks still take writes; messages are refused.
    let (&(dev, block), _) = last.iter().next().unwrap();
    thins[dev].write_at(&[1u8; 512], block * BLOCK).unwrap();
    assert!(s.message(&format!("{name}-pool"), "create_thin 9").is_err());
    drop((thins, pool_dev));
    s.remove_all();
    thin_check(&meta);
}
