//! The targets' own logic on an in-memory metadata stand-in and memory devices: racing
//! first writes, sharing broken once, group and periodic commits, out of data space
//! (error, queue, grow, timeout), out of metadata space, discard passdown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_block::{BlockDevice, MemoryDevice, Result as BlockResult, SharedDevice};
use tessera_mapper::Target;

use crate::metadata::memory::{MemoryMetadata, MAPPINGS_PER_BLOCK};
use crate::metadata::Metadata;
use crate::pool::{Binding, Features, Mode, Pool};
use crate::thin_target::for_test;

const BLOCK_SECTORS: u32 = 128;
const BB: u64 = 128 * 512;

/// A data device that counts flushes (each slow, as a disk's) and logs discards.
struct Data {
    inner: MemoryDevice,
    flushes: AtomicU64,
    discards: Mutex<Vec<(u64, u64)>>,
}

impl Data {
    fn new(name: &str, blocks: u64) -> Arc<Data> {
        Arc::new(Data {
            inner: MemoryDevice::new(name, blocks * BB),
            flushes: AtomicU64::new(0),
            discards: Mutex::new(Vec::new()),
        })
    }
}

impl BlockDevice for Data {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> BlockResult<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> BlockResult<()> {
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> BlockResult<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(3));
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        self.discards.lock().unwrap().push((offset, len));
        self.inner.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> BlockResult<()> {
        self.inner.write_zeroes(offset, len)
    }
}

fn features() -> Features {
    Features::default()
}

fn make_pool(
    name: &str,
    data: &Arc<Data>,
    blocks: u64,
    meta_blocks: u64,
    f: Features,
) -> Arc<Pool> {
    let meta_dev: SharedDevice = Arc::new(MemoryDevice::new(
        format!("{name}-meta"),
        meta_blocks * 4096,
    ));
    let meta = MemoryMetadata::new(name, BLOCK_SECTORS, blocks, meta_blocks);
    Pool::new(
        name,
        meta_dev,
        Box::new(meta),
        BLOCK_SECTORS,
        Binding {
            features: f,
            data: data.clone(),
            low_water_blocks: 0,
        },
    )
}

fn create(pool: &Pool, id: u32) {
    pool.change("create", |m: &mut dyn Metadata| m.create_thin(id))
        .unwrap();
}

fn used(pool: &Pool) -> u64 {
    let i = pool.info();
    i.nr_data_blocks - i.free_data_blocks
}

fn read(t: &dyn Target, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    t.read(offset / 512, &mut buf).unwrap();
    buf
}

fn rng_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn racing_first_writes_allocate_once() {
    let data = Data::new("race-data", 64);
    let pool = make_pool("race", &data, 64, 1000, features());
    create(&pool, 0);
    let thin = for_test("race-thin", pool.clone(), 0, None);
    // 8 threads each write their own 4 KiB page of the same 8 blocks, all at once.
    let barrier = std::sync::Barrier::new(8);
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let (thin, barrier) = (&thin, &barrier);
            s.spawn(move || {
                barrier.wait();
                for b in 0..8u64 {
                    let page = rng_bytes(t * 100 + b, 4096);
                    thin.write((b * BB + t * 4096) / 512, &page).unwrap();
                }
            });
        }
    });
    assert_eq!(used(&pool), 8);
    for b in 0..8u64 {
        for t in 0..8u64 {
            assert_eq!(
                read(&*thin, b * BB + t * 4096, 4096),
                rng_bytes(t * 100 + b, 4096)
            );
        }
        // The rest of each block was zeroed at provisioning.
        assert_eq!(read(&*thin, b * BB + 8 * 4096, 4096), vec![0; 4096]);
    }
}

#[test]
fn sharing_is_broken_once_and_the_other_device_keeps_its_data() {
    let data = Data::new("share-data", 64);
    let pool = make_pool("share", &data, 64, 1000, features());
    create(&pool, 0);
    let origin = for_test("share-o", pool.clone(), 0, None);
    let before = rng_bytes(1, (4 * BB) as usize);
    origin.write(0, &before).unwrap();
    pool.change("snap", |m: &mut dyn Metadata| m.create_snap(1, 0))
        .unwrap();
    let snap = for_test("share-s", pool.clone(), 1, None);
    assert_eq!(used(&pool), 4);
    // Racing writers to one shared block copy it once.
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let origin = &origin;
            s.spawn(move || origin.write(t * 8, &[t as u8 + 1; 512]).unwrap());
        }
    });
    assert_eq!(used(&pool), 5);
    let mut model = before.clone();
    for t in 0..4usize {
        model[t * 4096..t * 4096 + 512].fill(t as u8 + 1);
    }
    assert_eq!(read(&*origin, 0, model.len()), model);
    assert_eq!(read(&*snap, 0, before.len()), before);
}

#[test]
fn concurrent_flushes_share_commits_and_changes_commit_every_second() {
    let data = Data::new("gc-data", 256);
    let pool = make_pool("gc", &data, 256, 1000, features());
    create(&pool, 0);
    let thin = for_test("gc-thin", pool.clone(), 0, None);
    let before = data.flushes.load(Ordering::SeqCst);
    std::thread::scope(|s| {
        for t in 0..16u64 {
            let thin = &thin;
            s.spawn(move || {
                for r in 0..4u64 {
                    thin.write(((r * 16 + t) * BB) / 512, &[1u8; 512]).unwrap();
                    thin.flush().unwrap();
                }
            });
        }
    });
    let flushes = data.flushes.load(Ordering::SeqCst) - before;
    assert!(flushes < 64, "64 flushes took {flushes} commits");
    assert_eq!(used(&pool), 64);

    // A change with no flush is committed within about a second.
    thin.write((100 * BB) / 512, &[2u8; 512]).unwrap();
    let before = data.flushes.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1600));
    assert!(
        data.flushes.load(Ordering::SeqCst) > before,
        "no periodic commit"
    );
}

#[test]
fn error_if_no_space_fails_and_keeps_what_was_written() {
    let data = Data::new("eins-data", 4);
    let f = Features {
        error_if_no_space: true,
        ..features()
    };
    let pool = make_pool("eins", &data, 4, 1000, f);
    create(&pool, 0);
    let thin = for_test("eins-thin", pool.clone(), 0, None);
    let all = rng_bytes(2, (4 * BB) as usize);
    thin.write(0, &all).unwrap();
    assert!(thin.write((4 * BB) / 512, &[1; 512]).is_err());
    assert_eq!(pool.mode(), Mode::OutOfDataSpace);
    thin.write(0, &[9; 512]).unwrap();
    thin.flush().unwrap();
    let mut model = all;
    model[..512].fill(9);
    assert_eq!(read(&*thin, 0, model.len()), model);
}

#[test]
fn blocks_freed_by_a_discard_come_back_after_a_commit() {
    let data = Data::new("reuse-data", 4);
    let f = Features {
        error_if_no_space: true,
        ..features()
    };
    let pool = make_pool("reuse", &data, 4, 1000, f);
    create(&pool, 0);
    let thin = for_test("reuse-thin", pool.clone(), 0, None);
    thin.write(0, &vec![1; (4 * BB) as usize]).unwrap();
    thin.discard(0, 2 * BB / 512).unwrap();
    assert_eq!(
        *data.discards.lock().unwrap(),
        [(0, 2 * BB)],
        "passdown of the freed run"
    );
    // No space until a commit returns the freed blocks; the allocator commits by itself.
    thin.write((10 * BB) / 512, &[3; 512]).unwrap();
    assert_eq!(read(&*thin, 10 * BB, 512), vec![3; 512]);
    assert_eq!(read(&*thin, 10 * BB + 512, 512), vec![0; 512]);
    assert_eq!(read(&*thin, 0, 512), vec![0; 512]);
}

#[test]
fn queued_writes_wait_for_growth() {
    let data = Data::new("queue-data", 2);
    let pool = make_pool("queue", &data, 2, 1000, features());
    create(&pool, 0);
    let thin = for_test("queue-thin", pool.clone(), 0, None);
    thin.write(0, &vec![1; (2 * BB) as usize]).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let thin = &thin;
        s.spawn(move || {
            tx.send(thin.write((5 * BB) / 512, &[7; 512]).is_ok())
                .unwrap()
        });
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        assert_eq!(pool.mode(), Mode::OutOfDataSpace);
        let bigger = Data::new("queue-data", 8);
        bigger.inner.write_at(&data.inner.contents(), 0).unwrap();
        pool.bind(&Binding {
            features: features(),
            data: bigger,
            low_water_blocks: 0,
        });
        pool.grow(8).unwrap();
        pool.resumed();
        assert!(rx.recv_timeout(Duration::from_secs(5)).unwrap());
    });
    assert_eq!(pool.mode(), Mode::Write);
    assert_eq!(read(&*thin, 5 * BB, 512), vec![7; 512]);
    assert_eq!(read(&*thin, 0, 512), vec![1; 512]);
}

#[test]
fn out_of_metadata_space_goes_read_only_and_keeps_data() {
    // 40 metadata blocks: 8 fixed, a reserve of 4, so 28 blocks of mappings.
    let data = Data::new("ooms-data", 1024);
    let pool = make_pool("ooms", &data, 1024, 40, features());
    create(&pool, 0);
    let thin = for_test("ooms-thin", pool.clone(), 0, None);
    let mut written = 0u64;
    while written < 1024 {
        let r = thin.write(
            (written * BB) / 512,
            &(written as u32).to_le_bytes().repeat(128),
        );
        if r.is_err() {
            break;
        }
        written += 1;
    }
    assert!(
        (28 * MAPPINGS_PER_BLOCK - 1..1024).contains(&written),
        "{written}"
    );
    assert_eq!(pool.mode(), Mode::OutOfMetadataSpace);
    assert!(!pool.info().needs_check);
    // Everything written before is readable and committed; mapped blocks still take writes.
    for b in 0..written {
        assert_eq!(read(&*thin, b * BB, 4), (b as u32).to_le_bytes());
    }
    thin.write(0, &[5; 512]).unwrap();
    assert_eq!(read(&*thin, 0, 512), vec![5; 512]);
    assert!(thin.write((1023 * BB) / 512, &[5; 512]).is_err());
}

#[test]
fn external_origin_fills_unmapped_blocks() {
    let data = Data::new("ext-data", 16);
    let pool = make_pool("ext", &data, 16, 1000, features());
    create(&pool, 0);
    let origin_bytes = rng_bytes(5, (2 * BB + 4096) as usize);
    let origin: SharedDevice = Arc::new(MemoryDevice::with_contents("ext-origin", &origin_bytes));
    let thin = for_test("ext-thin", pool.clone(), 0, Some(origin));
    assert_eq!(read(&*thin, 0, origin_bytes.len()), origin_bytes);
    assert_eq!(
        read(&*thin, 3 * BB, 512),
        vec![0; 512],
        "past the origin's end"
    );
    thin.write(8, &[4; 512]).unwrap();
    let mut model = origin_bytes.clone();
    model[4096..4608].fill(4);
    assert_eq!(read(&*thin, 0, model.len()), model);
    assert_eq!(used(&pool), 1);
}
