//! Origins and their snapshots, shared by every target that names them, and the locks that
//! keep a chunk's copy-out, merge and I/O from overlapping.
//!
//! # Locking
//!
//! Every origin has one set of byte-range locks over the origin's address space. A chunk of
//! a snapshot (of any chunk size) covers one range; a write to the origin locks its range
//! widened to whole chunks of the largest chunk size of any snapshot of the origin, so it
//! covers every snapshot chunk it touches. Reads of a snapshot chunk take the range shared;
//! whatever changes which device holds a chunk's data (copy-out, a snapshot write, a merge
//! step, an origin write) takes it exclusive, and holds it until the exception is committed
//! and the data written. A thread holds one range at a time, so there is no lock order to
//! break. Each snapshot's exception store has its own mutex, taken inside a range lock and
//! never held while waiting for one.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};

use tessera_block::{BlockError, Result as BlockResult, SharedDevice};
use tessera_formats::snapshot::SnapshotStoreError;

use crate::exceptions::Exceptions;

const SECTOR_BYTES: u64 = 512;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Shared/exclusive locks over byte ranges.
#[derive(Default)]
pub(crate) struct RangeLocks {
    held: Mutex<Vec<Held>>,
    cv: Condvar,
    next_id: AtomicU64,
}

struct Held {
    id: u64,
    start: u64,
    end: u64,
    exclusive: bool,
}

pub(crate) struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    id: u64,
}

impl RangeLocks {
    pub fn lock(&self, start: u64, end: u64, exclusive: bool) -> RangeGuard<'_> {
        let mut held = lock(&self.held);
        loop {
            let conflict = held
                .iter()
                .any(|h| h.start < end && start < h.end && (exclusive || h.exclusive));
            if !conflict {
                break;
            }
            held = self.cv.wait(held).unwrap_or_else(PoisonError::into_inner);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        held.push(Held {
            id,
            start,
            end,
            exclusive,
        });
        RangeGuard { locks: self, id }
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut held = lock(&self.locks.held);
        held.retain(|h| h.id != self.id);
        drop(held);
        self.locks.cv.notify_all();
    }
}

/// One origin device and the snapshots registered on it.
pub(crate) struct Origin {
    pub dev: SharedDevice,
    pub locks: RangeLocks,
    snaps: Mutex<Vec<Arc<Snap>>>,
}

fn origins() -> &'static Mutex<HashMap<String, Weak<Origin>>> {
    static ORIGINS: OnceLock<Mutex<HashMap<String, Weak<Origin>>>> = OnceLock::new();
    ORIGINS.get_or_init(Default::default)
}

/// The origin that `dev` (by name) is, shared with every target naming it.
pub(crate) fn origin_for(dev: &SharedDevice) -> Arc<Origin> {
    let mut all = lock(origins());
    all.retain(|_, w| w.strong_count() > 0);
    if let Some(o) = all.get(dev.name()).and_then(Weak::upgrade) {
        return o;
    }
    let o = Arc::new(Origin {
        dev: dev.clone(),
        locks: RangeLocks::default(),
        snaps: Mutex::new(Vec::new()),
    });
    all.insert(dev.name().to_string(), Arc::downgrade(&o));
    o
}

/// A target's hold on a snapshot registered with its origin; the snapshot leaves the origin
/// when the last hold goes.
pub(crate) struct Registration {
    pub origin: Arc<Origin>,
    pub snap: Arc<Snap>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut snaps = lock(&self.origin.snaps);
        if self.snap.users.fetch_sub(1, Ordering::AcqRel) == 1 {
            snaps.retain(|s| !Arc::ptr_eq(s, &self.snap));
        }
    }
}

impl Origin {
    /// Registers the snapshot on COW device `cow_key`, or joins the one registered already
    /// (taking over its exceptions, as dm's handover), making it with `make` otherwise.
    pub fn register<E>(
        self: &Arc<Self>,
        cow_key: &str,
        make: impl FnOnce() -> Result<Snap, E>,
    ) -> Result<Registration, E> {
        let mut snaps = lock(&self.snaps);
        let snap = match snaps.iter().find(|s| s.cow_key == cow_key) {
            Some(s) => s.clone(),
            None => {
                let s = Arc::new(make()?);
                snaps.push(s.clone());
                s
            }
        };
        snap.users.fetch_add(1, Ordering::AcqRel);
        Ok(Registration {
            origin: self.clone(),
            snap,
        })
    }

    pub fn snapshots(&self) -> Vec<Arc<Snap>> {
        lock(&self.snaps).clone()
    }

    fn max_chunk_bytes(&self) -> u64 {
        lock(&self.snaps)
            .iter()
            .map(|s| s.chunk_bytes)
            .fold(SECTOR_BYTES, u64::max)
    }

    /// Locks `[offset, offset + len)` widened to whole chunks of every snapshot.
    pub fn lock_chunks(&self, offset: u64, len: u64, exclusive: bool) -> RangeGuard<'_> {
        loop {
            let g = self.max_chunk_bytes();
            let start = offset / g * g;
            let end = (offset + len).div_ceil(g).saturating_mul(g);
            let guard = self.locks.lock(start, end, exclusive);
            if self.max_chunk_bytes() <= g {
                return guard;
            }
        }
    }

    /// Copies the chunks under `[offset, offset + len)` out to every valid snapshot that has
    /// no copy yet, except merging ones. The caller holds the range (see `lock_chunks`). A
    /// snapshot that cannot take its copy is invalidated and the origin goes on, as dm's.
    pub fn copy_out_locked(&self, offset: u64, len: u64) {
        for snap in self.snapshots() {
            if snap.is_merging() || !snap.is_valid() {
                continue;
            }
            let cs = snap.chunk_bytes;
            for chunk in offset / cs..(offset + len).div_ceil(cs) {
                if let Err(e) = snap.copy_out(&self.dev, chunk, None) {
                    snap.invalidate(&e.to_string());
                    break;
                }
            }
        }
    }

    /// A write to the origin, copy-outs first.
    pub fn write(&self, offset: u64, buf: &[u8]) -> BlockResult<()> {
        let _g = self.lock_chunks(offset, buf.len() as u64, true);
        self.copy_out_locked(offset, buf.len() as u64);
        self.dev.write_at(buf, offset)
    }

    /// A discard or write-zeroes of the origin, copy-outs first.
    pub fn zero_or_discard(&self, offset: u64, len: u64, discard: bool) -> BlockResult<()> {
        let _g = self.lock_chunks(offset, len, true);
        self.copy_out_locked(offset, len);
        if discard {
            self.dev.discard(offset, len)
        } else {
            self.dev.write_zeroes(offset, len)
        }
    }
}

/// A snapshot: its COW device and exceptions, shared by the targets that use it.
pub(crate) struct Snap {
    pub cow_key: String,
    pub cow: SharedDevice,
    pub chunk_sectors: u64,
    pub chunk_bytes: u64,
    /// `P`, `PO` or `N`, for the table line.
    pub store_type: String,
    pub ex: Mutex<Exceptions>,
    valid: AtomicBool,
    /// How many `snapshot-merge` targets hold this snapshot; merging while above 0.
    pub merging: AtomicUsize,
    pub merge_failed: Mutex<Option<String>>,
    /// Held through a merge step, so two merge targets over one store take turns.
    pub merge_step: Mutex<()>,
    pub why_invalid: Mutex<Option<String>>,
    users: AtomicUsize,
}

/// Why a chunk could not be copied out.
#[derive(Debug)]
pub(crate) enum CopyError {
    Store(SnapshotStoreError),
    Io(BlockError),
}

impl std::fmt::Display for CopyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CopyError::Store(e) => e.fmt(f),
            CopyError::Io(e) => e.fmt(f),
        }
    }
}

impl From<SnapshotStoreError> for CopyError {
    fn from(e: SnapshotStoreError) -> Self {
        match e {
            SnapshotStoreError::Block(b) => CopyError::Io(b),
            e => CopyError::Store(e),
        }
    }
}

impl From<BlockError> for CopyError {
    fn from(e: BlockError) -> Self {
        CopyError::Io(e)
    }
}

impl Snap {
    pub fn new(
        cow_key: String,
        cow: SharedDevice,
        chunk_sectors: u64,
        store_type: String,
        ex: Exceptions,
    ) -> Snap {
        let valid = ex.is_valid();
        Snap {
            cow_key,
            cow,
            chunk_sectors,
            chunk_bytes: chunk_sectors * SECTOR_BYTES,
            store_type,
            ex: Mutex::new(ex),
            valid: AtomicBool::new(valid),
            merging: AtomicUsize::new(0),
            merge_failed: Mutex::new(None),
            merge_step: Mutex::new(()),
            why_invalid: Mutex::new(None),
            users: AtomicUsize::new(0),
        }
    }

    pub fn is_merging(&self) -> bool {
        self.merging.load(Ordering::Acquire) > 0
    }

    pub fn is_valid(&self) -> bool {
        self.valid.load(Ordering::Acquire)
    }

    pub fn invalidate(&self, why: &str) {
        let mut ex = lock(&self.ex);
        if self.valid.swap(false, Ordering::AcqRel) {
            lock(&self.why_invalid).get_or_insert_with(|| why.to_string());
            ex.invalidate();
        }
    }

    pub fn lookup(&self, old: u64) -> Option<u64> {
        lock(&self.ex).lookup(old)
    }

    /// Byte offset of COW chunk `chunk`.
    pub fn cow_offset(&self, chunk: u64) -> u64 {
        chunk * self.chunk_bytes
    }

    /// Gives origin chunk `chunk` a COW copy if it has none and returns where it is: the
    /// origin's data (or, for a whole-chunk write, `whole`, the new data) written to a new
    /// COW chunk, then the exception committed durably. The caller holds the chunk's range
    /// exclusively. Fails (without invalidating) when the snapshot is invalid or the copy
    /// cannot be made.
    pub fn copy_out(
        &self,
        origin: &SharedDevice,
        chunk: u64,
        whole: Option<&[u8]>,
    ) -> Result<u64, CopyError> {
        let new = {
            let mut ex = lock(&self.ex);
            if let Some(new) = ex.lookup(chunk) {
                return Ok(new);
            }
            ex.allocate()?
        };
        match whole {
            Some(data) => self.cow.write_at(data, self.cow_offset(new))?,
            None => {
                let mut buf = vec![0u8; self.chunk_bytes as usize];
                read_clipped(origin, &mut buf, chunk * self.chunk_bytes)?;
                self.cow.write_at(&buf, self.cow_offset(new))?;
            }
        }
        lock(&self.ex).commit(chunk, new)?;
        Ok(new)
    }
}

/// Reads `buf.len()` bytes from `offset`, as zeroes past the device's end (the last chunk
/// of an origin that is not a whole number of chunks).
pub(crate) fn read_clipped(dev: &SharedDevice, buf: &mut [u8], offset: u64) -> BlockResult<()> {
    let size = dev.size_bytes();
    let have = size.saturating_sub(offset).min(buf.len() as u64) as usize;
    buf[have..].fill(0);
    if have > 0 {
        dev.read_at(&mut buf[..have], offset)?;
    }
    Ok(())
}

/// Writes what fits of `buf` at `offset`, dropping bytes past the device's end.
pub(crate) fn write_clipped(dev: &SharedDevice, buf: &[u8], offset: u64) -> BlockResult<()> {
    let size = dev.size_bytes();
    let have = size.saturating_sub(offset).min(buf.len() as u64) as usize;
    if have > 0 {
        dev.write_at(&buf[..have], offset)?;
    }
    Ok(())
}

/// An I/O error of a mapped device, for failures that are not a device's own.
pub(crate) fn io_error(device: &str, offset: u64, len: u64, what: impl Into<String>) -> BlockError {
    BlockError::Io {
        device: device.to_string(),
        offset,
        len,
        source: io::Error::other(what.into()),
    }
}
