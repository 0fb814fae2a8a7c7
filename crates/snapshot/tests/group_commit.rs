//! Concurrent first writes to different chunks share their exceptions' commits (one area
//! write for every exception pending at the time), and each is still durable before its
//! write is acknowledged.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::*;
use tessera_block::{BlockDevice, BlockError, MemoryDevice, Result as BlockResult, SharedDevice};
use tessera_formats::snapshot::Store;

const ORIGIN_BYTES: u64 = 1 << 20;
const COW_BYTES: u64 = 2 << 20;
const WRITERS: u64 = 16;
const ROUNDS: u64 = 4;

/// A COW device that counts writes of metadata areas and whose flushes are slow, as a disk's
/// are, so that copy-outs pile up behind a commit in flight.
struct Counting {
    inner: Arc<MemoryDevice>,
    chunk_bytes: u64,
    area_writes: AtomicU64,
    flushes: AtomicU64,
}

impl BlockDevice for Counting {
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
        let cb = self.chunk_bytes;
        let per_area = cb / 16 + 1;
        if buf.len() as u64 == cb && offset % cb == 0 && (offset / cb) % per_area == 1 {
            self.area_writes.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> BlockResult<()> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(5));
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        self.inner.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> BlockResult<()> {
        self.inner.write_zeroes(offset, len)
    }
}

#[test]
fn concurrent_first_writes_share_commits() {
    // 4 KiB chunks: all in area 0; 512-byte chunks: 32 exceptions an area, so commits stop
    // at each area's end and the next area goes on.
    share_commits(8);
    share_commits(1);
}

fn share_commits(chunk_sectors: u32) {
    let chunk_bytes = u64::from(chunk_sectors) * SECTOR;
    let (on, cn) = (
        format!("gc-origin-{chunk_sectors}"),
        format!("gc-cow-{chunk_sectors}"),
    );
    let before = Rng(9).bytes(ORIGIN_BYTES as usize);
    let origin = Arc::new(MemoryDevice::with_contents(&on, &before));
    let cow = Arc::new(Counting {
        inner: Arc::new(MemoryDevice::new(&cn, COW_BYTES)),
        chunk_bytes,
        area_writes: AtomicU64::new(0),
        flushes: AtomicU64::new(0),
    });
    let devs: HashMap<String, SharedDevice> = HashMap::from([
        (on.clone(), origin.clone() as SharedDevice),
        (cn.clone(), cow.clone() as SharedDevice),
    ]);
    let resolve = |n: &str| {
        devs.get(n).cloned().ok_or_else(|| BlockError::Open {
            device: n.to_string(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
    };
    let sectors = ORIGIN_BYTES / SECTOR;
    let o = activate("gc-o", &origin_table(&on, sectors), &resolve);
    let s = activate(
        "gc-s",
        &snapshot_table(&on, &cn, sectors, chunk_sectors),
        &resolve,
    );
    let area_writes_before = cow.area_writes.load(Ordering::Relaxed);

    // Each writer writes its own chunks, every one first touched: each needs an exception.
    let barrier = Barrier::new(WRITERS as usize);
    std::thread::scope(|sc| {
        for t in 0..WRITERS {
            let (o, s, barrier) = (&o, &s, &barrier);
            sc.spawn(move || {
                barrier.wait();
                for r in 0..ROUNDS {
                    let chunk = r * WRITERS + t;
                    let at = chunk * chunk_bytes;
                    if t % 4 == 3 {
                        s.write_at(&[t as u8 + 1; 512], at).unwrap();
                    } else {
                        o.write_at(&[t as u8 + 1; 512], at).unwrap();
                    }
                }
            });
        }
    });
    let commits = cow.area_writes.load(Ordering::Relaxed) - area_writes_before;
    let exceptions = WRITERS * ROUNDS;
    eprintln!(
        "{chunk_sectors}-sector chunks: {exceptions} first writes, {commits} area writes, {} flushes",
        cow.flushes.load(Ordering::Relaxed)
    );
    assert!(commits >= 1);
    assert!(
        commits < exceptions / 2,
        "{exceptions} concurrent copy-outs took {commits} commits"
    );

    // The snapshot holds the origin as it was but for its own writes, and so does the store
    // on disk, reopened.
    let mut model = before.clone();
    let mut origin_model = before.clone();
    for t in 0..WRITERS {
        for r in 0..ROUNDS {
            let at = ((r * WRITERS + t) * chunk_bytes) as usize;
            let m = if t % 4 == 3 {
                &mut model
            } else {
                &mut origin_model
            };
            m[at..at + 512].fill(t as u8 + 1);
        }
    }
    assert!(read_all(&s) == model, "the snapshot");
    assert!(read_all(&o) == origin_model, "the origin");
    drop((o, s));
    let store = Store::open(cow.inner.clone()).unwrap().expect("a store");
    assert_eq!(store.len() as u64, exceptions);
}
