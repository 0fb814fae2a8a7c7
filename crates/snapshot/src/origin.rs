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
//! never held while waiting for one, nor through I/O of a copy-out's commit.
//!
//! # Group commit
//!
//! A copy-out allocates its COW chunk (under the store's mutex), copies the chunk there, then
//! queues its exception in the snapshot's pending list and waits, still holding its range, so
//! neither a read nor a write of that chunk sees it before the exception is durable. One of
//! the waiters commits: it stages every pending exception that fits the current area, writes
//! the area once (the next area zeroed first when it fills, a flush before the area write so
//! every queued copy is durable, a flush after) and wakes the others, as dm-snapshot's
//! `persistent_commit_exception` completes every exception pending while a commit was in
//! flight with one area write. Commits (and merge steps, which change the areas too) take
//! `store_io` in turn; staging and finishing take the store's mutex only briefly.

use std::collections::{HashMap, VecDeque};
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
    ///
    /// Every chunk is copied and its exception queued first, then the commits are waited
    /// for, so the copy-outs of one write to several snapshots (or chunks) go in concurrent
    /// group commits rather than one after the other.
    pub fn copy_out_locked(&self, offset: u64, len: u64) {
        let mut queued = Vec::new();
        for snap in self.snapshots() {
            if snap.is_merging() || !snap.is_valid() {
                continue;
            }
            let cs = snap.chunk_bytes;
            for chunk in offset / cs..(offset + len).div_ceil(cs) {
                match snap.copy_out_queued(&self.dev, chunk, None) {
                    Ok((_, Some(ticket))) => queued.push((snap.clone(), ticket)),
                    Ok((_, None)) => {}
                    Err(e) => {
                        snap.invalidate(&e.to_string());
                        break;
                    }
                }
            }
        }
        for (snap, ticket) in queued {
            if let Err(e) = snap.wait_commit(ticket) {
                snap.invalidate(&e.to_string());
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
    /// Exceptions copied out and waiting for a commit (persistent stores only).
    group: Mutex<Group>,
    group_cv: Condvar,
    /// Held while the store's areas change on disk: a group commit, a merge step's
    /// `prepare_merge` or `commit_merge`.
    pub store_io: Mutex<()>,
}

/// The pending exceptions of a snapshot. Exceptions are numbered in the order they were
/// queued and committed in that order, so those numbered below `done` are settled.
#[derive(Default)]
struct Group {
    /// `(old_chunk, new_chunk)`; the first one is number `done`.
    pending: VecDeque<(u64, u64)>,
    next: u64,
    done: u64,
    /// A waiter is committing.
    committing: bool,
    /// Commits that failed, until each of their waiters has read why.
    failed: Vec<Failed>,
}

struct Failed {
    /// The exceptions numbered `[from, to)`.
    from: u64,
    to: u64,
    why: String,
    /// Waiters yet to be told.
    unread: usize,
}

/// Why a chunk could not be copied out.
#[derive(Debug)]
pub(crate) enum CopyError {
    Store(SnapshotStoreError),
    Io(BlockError),
    /// A group commit that failed, as its committer reported it.
    Commit(String),
}

impl std::fmt::Display for CopyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CopyError::Store(e) => e.fmt(f),
            CopyError::Io(e) => e.fmt(f),
            CopyError::Commit(e) => f.write_str(e),
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
            group: Mutex::new(Group::default()),
            group_cv: Condvar::new(),
            store_io: Mutex::new(()),
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
    /// COW chunk, then the exception committed durably (in a group commit with the other
    /// copy-outs pending then). The caller holds the chunk's range exclusively. Fails (without invalidating) when the snapshot is invalid or the copy
    /// cannot be made.
    pub fn copy_out(
        &self,
        origin: &SharedDevice,
        chunk: u64,
        whole: Option<&[u8]>,
    ) -> Result<u64, CopyError> {
        let (new, ticket) = self.copy_out_queued(origin, chunk, whole)?;
        if let Some(ticket) = ticket {
            self.wait_commit(ticket)?;
        }
        Ok(new)
    }

    /// [`Snap::copy_out`] up to the commit: the chunk copied and its exception queued, with
    /// the ticket to wait for (`None` when there is nothing to wait for: the chunk had its
    /// copy already, or the store is transient). The caller holds the chunk's range until
    /// it has waited.
    pub fn copy_out_queued(
        &self,
        origin: &SharedDevice,
        chunk: u64,
        whole: Option<&[u8]>,
    ) -> Result<(u64, Option<u64>), CopyError> {
        let new = {
            let mut ex = lock(&self.ex);
            if let Some(new) = ex.lookup(chunk) {
                return Ok((new, None));
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
        Ok((new, self.queue(chunk, new)?))
    }

    /// Drops the last `count` committed exceptions (see `Store::commit_merge`), in turn with
    /// group commits.
    pub fn commit_merge(&self, count: u64) -> Result<(), SnapshotStoreError> {
        let _io = lock(&self.store_io);
        lock(&self.ex).commit_merge(count)
    }

    /// Commits exception `old` -> `new` whose data is written: a transient store's at once
    /// (`None`), a persistent store's queued for the next group commit, with the ticket to
    /// pass to [`Snap::wait_commit`].
    fn queue(&self, old: u64, new: u64) -> Result<Option<u64>, CopyError> {
        {
            let mut ex = lock(&self.ex);
            if let Exceptions::Transient(_) = &*ex {
                ex.commit(old, new)?;
                return Ok(None);
            }
        }
        let mut g = lock(&self.group);
        let ticket = g.next;
        g.next += 1;
        g.pending.push_back((old, new));
        Ok(Some(ticket))
    }

    /// Waits until the exception queued with `me` is durable (committing it, and every
    /// other one pending, when no commit is in flight), or its commit failed.
    pub fn wait_commit(&self, me: u64) -> Result<(), CopyError> {
        let mut g = lock(&self.group);
        loop {
            if me < g.done {
                let Some(i) = g.failed.iter().position(|f| (f.from..f.to).contains(&me)) else {
                    return Ok(());
                };
                let why = g.failed[i].why.clone();
                g.failed[i].unread -= 1;
                if g.failed[i].unread == 0 {
                    g.failed.swap_remove(i);
                }
                return Err(CopyError::Commit(why));
            }
            if g.committing {
                g = self
                    .group_cv
                    .wait(g)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            g.committing = true;
            let batch: Vec<(u64, u64)> = g.pending.iter().copied().collect();
            let first = g.done;
            drop(g);
            let (settled, failure) = self.commit_group(&batch);
            g = lock(&self.group);
            g.pending.drain(..settled);
            g.done = first + settled as u64;
            if let Some((from, to, why)) = failure {
                g.failed.push(Failed {
                    from: first + from as u64,
                    to: first + to as u64,
                    why,
                    unread: to - from,
                });
            }
            g.committing = false;
            self.group_cv.notify_all();
        }
    }

    /// One group commit of (a prefix of) `batch`: returns how many of its exceptions are
    /// settled (committed or failed) and the range of those that failed, with why.
    fn commit_group(&self, batch: &[(u64, u64)]) -> (usize, Option<(usize, usize, String)>) {
        let _io = lock(&self.store_io);
        let (staged, refused) = match &mut *lock(&self.ex) {
            Exceptions::Persistent(s) => s.stage_exceptions(batch),
            Exceptions::Transient(_) => unreachable!("transient stores commit at once"),
        };
        let n = staged.len();
        let write = staged.write();
        {
            let mut ex = lock(&self.ex);
            let Exceptions::Persistent(s) = &mut *ex else {
                unreachable!("transient stores commit at once")
            };
            match &write {
                Ok(()) => s.finish_commit(staged),
                Err(_) => s.abandon_commit(staged),
            }
        }
        match (write, refused) {
            (Err(e), _) => (n, Some((0, n, e.to_string()))),
            (Ok(()), Some(e)) => (n + 1, Some((n, n + 1, e.to_string()))),
            (Ok(()), None) => (n, None),
        }
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
