//! A pool: its open metadata, its mode, the data device its live table names, and the
//! commit, allocation and out-of-space logic shared by the `thin-pool` target and every
//! `thin` target on it. Pools are found by the name of the mapped device whose table holds
//! the `thin-pool` row, in a process-wide registry.
//!
//! # Locking
//!
//! - `meta` (a read/write lock over the pool's [`tessera_formats::thin::PoolMetadata`]): lookups take it shared, changes
//!   exclusive; nobody waits for anything else while holding it.
//! - A block's cell (see [`crate::prison`]) is held by whoever changes that block's
//!   mapping: provisioning, breaking sharing, discarding.
//! - Reads and writes of already mapped blocks take no cell. Instead they hold `io_epoch`
//!   shared from their lookup until their data I/O is done. A data block freed by a
//!   discard or a delete may be reused only after the next commit, and a commit that
//!   follows frees first takes `io_epoch` exclusive once, so every I/O that could still be
//!   using a freed block's old mapping has finished before the block can be handed out.
//! - `free_lock` is held by whatever frees data blocks (through the discard passdown) and
//!   by a commit, so no block is freed between a commit's wait for `io_epoch` and the
//!   commit itself, and no passdown discard reaches a block already handed out again.
//!
//! # Group commit
//!
//! Commits run in numbered rounds; a flush waits for the first round that starts after it
//! arrived, and whichever waiter finds no round running runs the next one, so flushes that
//! arrive while a commit is under way share the next commit. A background thread commits
//! once a second when anything changed, as the kernel's periodic commit does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{
    Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, RwLockReadGuard,
    RwLockWriteGuard, Weak,
};
use std::time::{Duration, Instant};

use tessera_block::{BlockError, SharedDevice};
use tessera_formats::thin::{
    Lookup, PoolInfo, ThinMetadataError, MAX_METADATA_BLOCKS, METADATA_BLOCK_BYTES,
};

use crate::metadata::Metadata;

use crate::prison::Prison;

pub(crate) const SECTOR_BYTES: u64 = 512;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn io_error(device: &str, offset: u64, len: u64, what: impl Into<String>) -> BlockError {
    BlockError::Io {
        device: device.to_string(),
        offset,
        len,
        source: std::io::Error::other(what.into()),
    }
}

/// How long a write that needs a new data block waits for the pool to grow before it fails
/// (the kernel's `no_space_timeout`, 60 seconds by default), in milliseconds; 0 waits for ever.
static NO_SPACE_TIMEOUT_MS: AtomicU64 = AtomicU64::new(60_000);

/// Sets how long writes wait for data space on a pool that queues when it is full (neither
/// `error_if_no_space` nor timed out yet). `Duration::ZERO` waits for ever. Process-wide,
/// as the kernel's module parameter.
pub fn set_no_space_timeout(timeout: Duration) {
    NO_SPACE_TIMEOUT_MS.store(timeout.as_millis() as u64, Ordering::Relaxed);
}

fn no_space_timeout() -> Option<Duration> {
    match NO_SPACE_TIMEOUT_MS.load(Ordering::Relaxed) {
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    }
}

/// How often changed metadata is committed without a flush asking for it.
const COMMIT_PERIOD: Duration = Duration::from_secs(1);

/// The pool's mode, ordered as the kernel's: the higher, the less the pool does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Mode {
    Write = 0,
    OutOfDataSpace = 1,
    OutOfMetadataSpace = 2,
    ReadOnly = 3,
    Fail = 4,
}

impl Mode {
    fn from_u8(v: u8) -> Mode {
        match v {
            0 => Mode::Write,
            1 => Mode::OutOfDataSpace,
            2 => Mode::OutOfMetadataSpace,
            3 => Mode::ReadOnly,
            _ => Mode::Fail,
        }
    }

    /// The metadata may not change (status `ro`).
    pub fn is_read_only(self) -> bool {
        matches!(self, Mode::OutOfMetadataSpace | Mode::ReadOnly)
    }
}

/// The feature arguments of a `thin-pool` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Features {
    pub zero_new_blocks: bool,
    pub discard_enabled: bool,
    pub discard_passdown: bool,
    pub read_only: bool,
    pub error_if_no_space: bool,
}

impl Default for Features {
    fn default() -> Self {
        Features {
            zero_new_blocks: true,
            discard_enabled: true,
            discard_passdown: true,
            read_only: false,
            error_if_no_space: false,
        }
    }
}

/// What the live `thin-pool` table sets (the kernel's `bind_control_target`).
#[derive(Clone)]
pub(crate) struct Binding {
    pub features: Features,
    pub data: SharedDevice,
    pub low_water_blocks: u64,
}

struct Bound {
    features: Features,
    low_water_blocks: u64,
    low_water_triggered: bool,
    /// When the pool last ran out of data space, for the no-space timeout.
    out_of_space_since: Option<Instant>,
}

#[derive(Default)]
struct Rounds {
    started: u64,
    finished: u64,
    running: bool,
    /// The first round that failed and why; every later round fails too, the pool having
    /// gone read-only or failed.
    failed: Option<(u64, String)>,
}

/// Why a thin I/O could not get a data block.
#[derive(Debug)]
pub(crate) enum AllocError {
    /// Out of data space with `error_if_no_space` (or the wait timed out).
    NoSpace(String),
    /// The pool cannot change its metadata (read-only, failed, or the metadata failed now).
    Metadata(String),
}

impl std::fmt::Display for AllocError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AllocError::NoSpace(s) | AllocError::Metadata(s) => f.write_str(s),
        }
    }
}

pub(crate) struct Pool {
    /// The mapped device whose table holds the `thin-pool` row.
    pub name: String,
    /// The metadata device's name, which a reloaded table must name again.
    pub metadata_key: String,
    pub metadata_dev: SharedDevice,
    pub block_sectors: u32,
    pub block_bytes: u64,
    meta: RwLock<Box<dyn Metadata>>,
    mode: AtomicU8,
    bound: Mutex<Bound>,
    /// Signalled when data space may have appeared or the no-space policy changed.
    space: Condvar,
    data: RwLock<SharedDevice>,
    /// Metadata changed since the last commit.
    dirty: AtomicBool,
    /// Data blocks were freed since the last commit.
    freed: AtomicBool,
    /// A change reached the metadata reserve; commit before going on.
    metadata_low: AtomicBool,
    /// Changes were dropped by an abort: flushes fail from then on, as acknowledged writes
    /// were lost.
    aborted_with_changes: AtomicBool,
    free_lock: Mutex<()>,
    pub io_epoch: RwLock<()>,
    rounds: Mutex<Rounds>,
    round_done: Condvar,
    pub prison: Prison,
    /// Open `thin` targets per device id; an open device cannot be deleted.
    open_thins: Mutex<HashMap<u32, usize>>,
    worker: Arc<WorkerStop>,
}

#[derive(Default)]
struct WorkerStop {
    stop: Mutex<bool>,
    cv: Condvar,
}

// ---------------------------------------------------------------------------------------
// The registry

struct Entry {
    metadata_key: String,
    pool: Weak<Pool>,
}

#[derive(Default)]
struct Registry {
    pools: Mutex<HashMap<String, Entry>>,
    /// Signalled when a dropped pool has left the registry.
    left: Condvar,
}

fn registry() -> &'static Registry {
    static POOLS: OnceLock<Registry> = OnceLock::new();
    POOLS.get_or_init(Registry::default)
}

/// The live pool of mapped device `name`, if it has one.
pub(crate) fn find_pool(name: &str) -> Option<Arc<Pool>> {
    lock(&registry().pools)
        .get(name)
        .and_then(|e| e.pool.upgrade())
}

/// What a `thin-pool` constructor found.
pub(crate) enum Found {
    /// The pool of this mapped device, open already (a table reload hands it over).
    Existing(Arc<Pool>),
    /// A pool made now by `make`.
    New(Arc<Pool>),
}

/// The pool of mapped device `device` over metadata device `metadata_key`: the live one,
/// or one made by `make`. Refuses a metadata device held by another pool, or a reload
/// naming different metadata. Waits for a pool being dropped to finish its last commit
/// before its metadata is opened again.
pub(crate) fn pool_for(
    device: &str,
    metadata_key: &str,
    make: impl FnOnce() -> Result<Arc<Pool>, String>,
) -> Result<Found, String> {
    let reg = registry();
    let mut pools = lock(&reg.pools);
    loop {
        let mut dying = false;
        if let Some(e) = pools.get(device) {
            match e.pool.upgrade() {
                Some(p) if p.metadata_key == metadata_key => return Ok(Found::Existing(p)),
                Some(p) => {
                    return Err(format!(
                        "the live pool {device:?} uses metadata device {:?}; a table cannot switch it to {metadata_key:?}",
                        p.metadata_key
                    ))
                }
                None => dying = true,
            }
        }
        for (name, e) in pools.iter() {
            if e.metadata_key == metadata_key && name != device {
                if e.pool.strong_count() > 0 {
                    return Err(format!(
                        "metadata device {metadata_key:?} is already in use by pool {name:?}"
                    ));
                }
                dying = true;
            }
        }
        if !dying {
            break;
        }
        pools = reg.left.wait(pools).unwrap_or_else(PoisonError::into_inner);
    }
    let pool = make()?;
    pools.insert(
        device.to_string(),
        Entry {
            metadata_key: metadata_key.to_string(),
            pool: Arc::downgrade(&pool),
        },
    );
    Ok(Found::New(pool))
}

// ---------------------------------------------------------------------------------------

/// The kernel's metadata reserve: the last blocks of the metadata space kept for the
/// commit that switches the pool to read-only when the rest is used up.
fn metadata_reserve(nr_metadata_blocks: u64) -> u64 {
    (nr_metadata_blocks / 10).min(4096)
}

/// Free metadata blocks as the kernel counts them: less the reserve.
pub(crate) fn free_metadata_blocks(info: &PoolInfo) -> u64 {
    info.free_metadata_blocks
        .saturating_sub(metadata_reserve(info.nr_metadata_blocks))
}

/// The metadata device's size in metadata blocks, as much as the format can use.
pub(crate) fn metadata_dev_blocks(dev: &SharedDevice) -> u64 {
    (dev.size_bytes() / METADATA_BLOCK_BYTES as u64).min(MAX_METADATA_BLOCKS)
}

/// Errors that say something about the metadata itself (as opposed to a refused request,
/// such as an id in use), after which the kernel aborts the transaction.
fn is_metadata_failure(e: &ThinMetadataError) -> bool {
    matches!(
        e,
        ThinMetadataError::Block(_)
            | ThinMetadataError::BadChecksum { .. }
            | ThinMetadataError::Corrupt { .. }
            | ThinMetadataError::BadMagic { .. }
            | ThinMetadataError::NoMetadataSpace { .. }
    )
}

impl Pool {
    pub fn new(
        name: &str,
        metadata_dev: SharedDevice,
        meta: Box<dyn Metadata>,
        block_sectors: u32,
        binding: Binding,
    ) -> Arc<Pool> {
        let needs_check = meta.info().needs_check;
        let pool = Arc::new(Pool {
            name: name.to_string(),
            metadata_key: metadata_dev.name().to_string(),
            metadata_dev,
            block_sectors,
            block_bytes: u64::from(block_sectors) * SECTOR_BYTES,
            meta: RwLock::new(meta),
            mode: AtomicU8::new(Mode::Write as u8),
            bound: Mutex::new(Bound {
                features: binding.features,
                low_water_blocks: binding.low_water_blocks,
                low_water_triggered: false,
                out_of_space_since: None,
            }),
            space: Condvar::new(),
            data: RwLock::new(binding.data),
            dirty: AtomicBool::new(false),
            freed: AtomicBool::new(false),
            metadata_low: AtomicBool::new(false),
            aborted_with_changes: AtomicBool::new(false),
            free_lock: Mutex::new(()),
            io_epoch: RwLock::new(()),
            rounds: Mutex::new(Rounds::default()),
            round_done: Condvar::new(),
            prison: Prison::new(),
            open_thins: Mutex::new(HashMap::new()),
            worker: Arc::new(WorkerStop::default()),
        });
        if binding.features.read_only {
            pool.set_mode(Mode::ReadOnly);
        } else if needs_check {
            tracing::error!(
                "{}: the metadata needs checking (needs_check is set); the pool stays read-only until repaired",
                pool.name
            );
            pool.set_mode(Mode::ReadOnly);
        }
        pool.start_worker();
        pool
    }

    fn start_worker(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let stop = self.worker.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("thin-commit {}", self.name))
            .spawn(move || loop {
                {
                    let stopped = lock(&stop.stop);
                    if *stopped {
                        return;
                    }
                    let (stopped, _) = stop
                        .cv
                        .wait_timeout(stopped, COMMIT_PERIOD)
                        .unwrap_or_else(PoisonError::into_inner);
                    if *stopped {
                        return;
                    }
                }
                let Some(pool) = weak.upgrade() else { return };
                if pool.dirty.load(Ordering::Acquire) && pool.mode() <= Mode::OutOfDataSpace {
                    if let Err(e) = pool.commit() {
                        tracing::error!("{}: periodic commit failed: {e}", pool.name);
                    }
                }
            });
        if let Err(e) = spawned {
            // Flushes still commit; only the periodic commit is missing.
            tracing::error!(
                "{}: cannot start the periodic commit thread: {e}",
                self.name
            );
        }
    }

    pub fn mode(&self) -> Mode {
        Mode::from_u8(self.mode.load(Ordering::Acquire))
    }

    /// Changes the mode as the kernel's `set_pool_mode`: never out of fail mode, and not
    /// back to write mode while the metadata needs checking.
    pub fn set_mode(&self, mut new: Mode) {
        let old = self.mode();
        if old == Mode::Fail {
            return;
        }
        if new == Mode::Write && self.meta_read().info().needs_check {
            tracing::error!(
                "{}: unable to switch the pool to write mode until its metadata is repaired",
                self.name
            );
            new = Mode::ReadOnly;
        }
        if old != new {
            self.mode.store(new as u8, Ordering::Release);
            match new {
                Mode::Write => tracing::info!("{}: switching the pool to write mode", self.name),
                Mode::OutOfDataSpace => {
                    tracing::error!(
                        "{}: switching the pool to out-of-data-space mode",
                        self.name
                    )
                }
                Mode::OutOfMetadataSpace => tracing::error!(
                    "{}: switching the pool to out-of-metadata-space (read-only) mode",
                    self.name
                ),
                Mode::ReadOnly => {
                    tracing::error!("{}: switching the pool to read-only mode", self.name)
                }
                Mode::Fail => tracing::error!("{}: switching the pool to failure mode", self.name),
            }
            let mut b = lock(&self.bound);
            b.out_of_space_since = (new == Mode::OutOfDataSpace).then(Instant::now);
            drop(b);
            self.space.notify_all();
        }
    }

    pub fn meta_read(&self) -> RwLockReadGuard<'_, Box<dyn Metadata>> {
        self.meta.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn meta_write(&self) -> RwLockWriteGuard<'_, Box<dyn Metadata>> {
        self.meta.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn data(&self) -> SharedDevice {
        self.data
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn features(&self) -> Features {
        lock(&self.bound).features
    }

    pub fn info(&self) -> PoolInfo {
        self.meta_read().info()
    }

    pub fn lookup(&self, dev_id: u32, vblock: u64) -> Result<Option<Lookup>, ThinMetadataError> {
        self.meta_read().lookup(dev_id, vblock)
    }

    /// Makes `binding` the pool's (the live table changed) and sets the mode it asks for.
    pub fn bind(&self, binding: &Binding) {
        *self.data.write().unwrap_or_else(PoisonError::into_inner) = binding.data.clone();
        {
            let mut b = lock(&self.bound);
            b.features = binding.features;
            b.low_water_blocks = binding.low_water_blocks;
        }
        self.set_mode(if binding.features.read_only {
            Mode::ReadOnly
        } else {
            Mode::Write
        });
        self.space.notify_all();
    }

    /// A change to the metadata. A failure of the metadata itself aborts the transaction
    /// and makes the pool read-only, as the kernel's `metadata_operation_failed`.
    pub fn change<T>(
        &self,
        what: &str,
        op: impl FnOnce(&mut dyn Metadata) -> Result<T, ThinMetadataError>,
    ) -> Result<T, ThinMetadataError> {
        if self.mode() > Mode::OutOfDataSpace {
            return Err(ThinMetadataError::Refused {
                device: self.name.clone(),
                why: format!("cannot {what}: the pool is {}", self.mode_words()),
            });
        }
        let (result, low) = {
            let mut meta = self.meta_write();
            let result = op(&mut **meta);
            if result.is_ok() {
                self.dirty.store(true, Ordering::Release);
            }
            // The kernel commits once the free blocks outside its reserve are gone; tessera
            // also keeps back what the commit itself needs, so that commit cannot fail.
            (
                result,
                free_metadata_blocks(&meta.info()) <= meta.metadata_blocks_to_commit(),
            )
        };
        match &result {
            Err(e) if is_metadata_failure(e) => self.metadata_failed(what, e),
            Ok(_) if low => self.metadata_low.store(true, Ordering::Release),
            _ => {}
        }
        result
    }

    /// Commits if the last changes reached the metadata reserve: the commit makes the pool
    /// read-only with everything done so far durable. Called with no lock held.
    fn commit_if_metadata_low(&self) {
        if self.metadata_low.swap(false, Ordering::AcqRel) {
            let _ = self.commit();
        }
    }

    fn mode_words(&self) -> &'static str {
        match self.mode() {
            Mode::Write => "writable",
            Mode::OutOfDataSpace => "out of data space",
            Mode::OutOfMetadataSpace => "out of metadata space",
            Mode::ReadOnly => "read-only",
            Mode::Fail => "failed",
        }
    }

    /// The kernel's `metadata_operation_failed`: abort the transaction, set needs_check,
    /// go read-only (or fail if even that fails).
    fn metadata_failed(&self, what: &str, e: &ThinMetadataError) {
        tracing::error!("{}: metadata operation {what} failed: {e}", self.name);
        tracing::error!("{}: aborting the current metadata transaction", self.name);
        {
            let mut meta = self.meta_write();
            if self.dirty.swap(false, Ordering::AcqRel) {
                self.aborted_with_changes.store(true, Ordering::Release);
            }
            if let Err(e) = meta.abort() {
                tracing::error!(
                    "{}: failed to abort the metadata transaction: {e}",
                    self.name
                );
                drop(meta);
                self.set_mode(Mode::Fail);
                return;
            }
            if let Err(e) = meta.set_needs_check() {
                tracing::error!(
                    "{}: failed to set needs_check in the metadata: {e}",
                    self.name
                );
                drop(meta);
                self.set_mode(Mode::Fail);
                return;
            }
        }
        self.set_mode(Mode::ReadOnly);
    }

    /// Maps `vblock` of `dev_id` to a block just allocated, or (`replacing`) to a new copy
    /// of a shared block, which may drop the old block's last reference.
    pub fn insert(
        &self,
        dev_id: u32,
        vblock: u64,
        data_block: u64,
        replacing: bool,
    ) -> Result<(), ThinMetadataError> {
        {
            let _frees = replacing.then(|| lock(&self.free_lock));
            self.change("insert a mapping", |m| m.insert(dev_id, vblock, data_block))?;
            if replacing {
                self.freed.store(true, Ordering::Release);
            }
        }
        self.commit_if_metadata_low();
        Ok(())
    }

    /// Passes on the result of writing a block just allocated; if the write failed, the
    /// block goes back to the free space rather than staying allocated and unmapped.
    pub fn release_if_failed(
        &self,
        data_block: u64,
        written: Result<(), BlockError>,
    ) -> Result<(), BlockError> {
        if written.is_err() {
            if let Err(e) = self.change("free a data block", |m| m.free_data_block(data_block)) {
                tracing::error!("{}: cannot free data block {data_block}: {e}", self.name);
            }
        }
        written
    }

    /// Unmaps `[begin, end)` of `dev_id` and passes the freed data blocks' ranges down to
    /// the data device if `passdown`, before any of them can be reused.
    pub fn unmap(
        &self,
        dev_id: u32,
        begin: u64,
        end: u64,
        passdown: bool,
    ) -> Result<(), ThinMetadataError> {
        let result = self.unmap_locked(dev_id, begin, end, passdown);
        self.commit_if_metadata_low();
        result
    }

    fn unmap_locked(
        &self,
        dev_id: u32,
        begin: u64,
        end: u64,
        passdown: bool,
    ) -> Result<(), ThinMetadataError> {
        let _frees = lock(&self.free_lock);
        let mut freed = self.change("remove mappings", |m| m.remove_range(dev_id, begin, end))?;
        if freed.is_empty() {
            return Ok(());
        }
        self.freed.store(true, Ordering::Release);
        if passdown {
            freed.sort_unstable();
            let data = self.data();
            let mut i = 0;
            while i < freed.len() {
                let mut j = i + 1;
                while j < freed.len() && freed[j] == freed[j - 1] + 1 {
                    j += 1;
                }
                let (offset, len) = (
                    freed[i] * self.block_bytes,
                    (j - i) as u64 * self.block_bytes,
                );
                // A failed passdown loses nothing: the blocks are free either way.
                if let Err(e) = data.discard(offset, len) {
                    tracing::warn!("{}: discard passdown failed: {e}", self.name);
                }
                i = j;
            }
        }
        Ok(())
    }

    /// The `delete` message: refused while a thin target has the device open.
    pub fn delete(&self, dev_id: u32) -> Result<(), String> {
        if lock(&self.open_thins).get(&dev_id).copied().unwrap_or(0) > 0 {
            return Err(format!(
                "thin device {dev_id} is open; deactivate it before deleting it"
            ));
        }
        {
            let _frees = lock(&self.free_lock);
            self.change("delete a thin device", |m| m.delete(dev_id))
                .map_err(|e| e.to_string())?;
            self.freed.store(true, Ordering::Release);
        }
        self.commit_if_metadata_low();
        Ok(())
    }

    /// Counts a thin target's hold on `dev_id`.
    pub fn open_thin(&self, dev_id: u32) {
        *lock(&self.open_thins).entry(dev_id).or_default() += 1;
    }

    pub fn close_thin(&self, dev_id: u32) {
        let mut open = lock(&self.open_thins);
        if let Some(n) = open.get_mut(&dev_id) {
            *n -= 1;
            if *n == 0 {
                open.remove(&dev_id);
            }
        }
    }

    /// A data block for a thin write: waits while the pool is out of data space and queues
    /// (until it grows, or the no-space timeout), fails with `error_if_no_space`.
    pub fn alloc_data_block(&self) -> Result<u64, AllocError> {
        let mut committed_for_space = false;
        loop {
            match self.mode() {
                Mode::Write => {}
                Mode::OutOfDataSpace => {
                    self.wait_for_space()?;
                    committed_for_space = false;
                    continue;
                }
                _ => {
                    return Err(AllocError::Metadata(format!(
                        "{}: cannot provision a block: the pool is {}",
                        self.name,
                        self.mode_words()
                    )))
                }
            }
            match self.change("allocate a data block", |m| m.alloc_data_block()) {
                Ok(block) => {
                    self.commit_if_metadata_low();
                    self.check_low_water();
                    return Ok(block);
                }
                Err(ThinMetadataError::NoDataSpace { .. }) if !committed_for_space => {
                    // Blocks freed in this transaction come back with a commit.
                    committed_for_space = true;
                    self.commit().map_err(AllocError::Metadata)?;
                }
                Err(ThinMetadataError::NoDataSpace { .. }) => {
                    self.set_mode(Mode::OutOfDataSpace);
                }
                Err(ThinMetadataError::Refused { why, .. }) => {
                    // The mode changed under us; look again.
                    if self.mode() > Mode::OutOfDataSpace {
                        return Err(AllocError::Metadata(format!("{}: {why}", self.name)));
                    }
                }
                Err(e) => return Err(AllocError::Metadata(e.to_string())),
            }
        }
    }

    /// Waits while the pool is out of data space; errors if the pool errors instead or the
    /// no-space timeout passes (which, as in the kernel, switches the pool to
    /// error_if_no_space).
    fn wait_for_space(&self) -> Result<(), AllocError> {
        let mut b = lock(&self.bound);
        loop {
            if self.mode() != Mode::OutOfDataSpace {
                return Ok(());
            }
            let no_space =
                || AllocError::NoSpace(format!("{}: the pool is out of data space", self.name));
            if b.features.error_if_no_space {
                return Err(no_space());
            }
            match no_space_timeout() {
                None => b = self.space.wait(b).unwrap_or_else(PoisonError::into_inner),
                Some(timeout) => {
                    let since = *b.out_of_space_since.get_or_insert_with(Instant::now);
                    let now = Instant::now();
                    if now >= since + timeout {
                        tracing::error!(
                            "{}: no data space for {timeout:?}; switching to error_if_no_space",
                            self.name
                        );
                        b.features.error_if_no_space = true;
                        self.space.notify_all();
                        return Err(no_space());
                    }
                    b = self
                        .space
                        .wait_timeout(b, since + timeout - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
    }

    fn check_low_water(&self) {
        let info = self.info();
        let free = info.free_data_blocks;
        let mut b = lock(&self.bound);
        if free <= b.low_water_blocks && !b.low_water_triggered {
            b.low_water_triggered = true;
            tracing::warn!(
                "{}: reached the low water mark for the data device ({free} free blocks)",
                self.name
            );
        }
    }

    /// Commits, sharing the commit with concurrent callers. Also makes completed writes to
    /// the data device durable.
    pub fn commit(&self) -> Result<(), String> {
        let mut r = lock(&self.rounds);
        let need = r.started + 1;
        loop {
            if r.finished >= need {
                return match &r.failed {
                    Some((round, why)) if *round <= need => Err(why.clone()),
                    _ => Ok(()),
                };
            }
            if r.running {
                r = self
                    .round_done
                    .wait(r)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            r.running = true;
            r.started += 1;
            let round = r.started;
            drop(r);
            let result = self.commit_now();
            r = lock(&self.rounds);
            r.running = false;
            r.finished = round;
            if let Err(why) = result {
                if r.failed.is_none() {
                    r.failed = Some((round, why));
                }
            }
            self.round_done.notify_all();
        }
    }

    fn commit_now(&self) -> Result<(), String> {
        let data = self.data();
        let flush_data = || data.flush().map_err(|e| e.to_string());
        if self.mode() > Mode::OutOfDataSpace {
            // The metadata cannot change; completed data writes still become durable.
            return flush_data();
        }
        let _frees = lock(&self.free_lock);
        if self.freed.swap(false, Ordering::AcqRel) {
            // Every I/O that may still use a freed block's old mapping finishes first.
            drop(
                self.io_epoch
                    .write()
                    .unwrap_or_else(PoisonError::into_inner),
            );
        }
        let mut meta = self.meta_write();
        // The data device first, so no committed mapping names a block whose contents
        // are not durable (the kernel's pre-commit callback).
        flush_data()?;
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        if let Err(e) = meta.commit() {
            drop(meta);
            let why = format!("{}: metadata commit failed: {e}", self.name);
            self.metadata_failed("commit", &e);
            return Err(why);
        }
        let out_of_metadata = free_metadata_blocks(&meta.info()) == 0;
        drop(meta);
        if out_of_metadata {
            tracing::error!("{}: no free metadata blocks", self.name);
            self.set_mode(Mode::OutOfMetadataSpace);
        }
        Ok(())
    }

    /// Flushes for a thin device: fails once changes were aborted, as those writes are lost.
    pub fn flush(&self) -> Result<(), String> {
        if self.aborted_with_changes.load(Ordering::Acquire) {
            return Err(format!(
                "{}: metadata changes were aborted after a metadata failure; recent writes are lost",
                self.name
            ));
        }
        self.commit()
    }

    /// What a pool table's resume does after binding: grow the data space map to the
    /// table's length (`nr_data_blocks`) and the metadata space map to the metadata
    /// device, refuse a smaller pool, and let queued writers retry.
    pub fn grow(&self, nr_data_blocks: u64) -> Result<(), String> {
        let info = self.info();
        let mut need_commit = false;
        if nr_data_blocks < info.nr_data_blocks {
            return Err(format!(
                "pool target ({nr_data_blocks} blocks) too small: expected {}",
                info.nr_data_blocks
            ));
        }
        let meta_blocks = metadata_dev_blocks(&self.metadata_dev);
        if meta_blocks < info.nr_metadata_blocks {
            return Err(format!(
                "metadata device ({meta_blocks} blocks) too small: expected {}",
                info.nr_metadata_blocks
            ));
        }
        let can_change = |pool: &Pool, what: &str| {
            if info.needs_check {
                tracing::error!("{}: unable to grow the {what} until repaired", pool.name);
                false
            } else if pool.mode() > Mode::OutOfDataSpace {
                tracing::warn!(
                    "{}: not growing the {what}: the pool is {}",
                    pool.name,
                    pool.mode_words()
                );
                false
            } else {
                true
            }
        };
        if meta_blocks > info.nr_metadata_blocks {
            if self.mode() == Mode::OutOfMetadataSpace && !info.needs_check {
                self.set_mode(Mode::Write);
            }
            if can_change(self, "metadata device") {
                tracing::info!(
                    "{}: growing the metadata device from {} to {meta_blocks} blocks",
                    self.name,
                    info.nr_metadata_blocks
                );
                self.change("grow the metadata space", |m| m.resize_metadata())
                    .map_err(|e| e.to_string())?;
                need_commit = true;
            }
        }
        if nr_data_blocks > info.nr_data_blocks && can_change(self, "data device") {
            tracing::info!(
                "{}: growing the data device from {} to {nr_data_blocks} blocks",
                self.name,
                info.nr_data_blocks
            );
            self.change("grow the data space", |m| m.resize_data(nr_data_blocks))
                .map_err(|e| e.to_string())?;
            need_commit = true;
            if self.mode() == Mode::OutOfDataSpace {
                self.set_mode(Mode::Write);
            }
        }
        if need_commit {
            let _ = self.commit();
        }
        Ok(())
    }

    /// A pool table resumed: the low water mark may trigger again, and writers queued for
    /// space retry (the kernel requeues them on resume).
    pub fn resumed(&self) {
        lock(&self.bound).low_water_triggered = false;
        if self.mode() == Mode::OutOfDataSpace {
            self.set_mode(Mode::Write);
        }
        self.space.notify_all();
    }

    pub fn has_device(&self, dev_id: u32) -> Result<bool, ThinMetadataError> {
        Ok(self
            .meta_read()
            .devices()?
            .iter()
            .any(|(id, _)| *id == dev_id))
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        {
            *lock(&self.worker.stop) = true;
            self.worker.cv.notify_all();
        }
        // The last table using the pool is gone: what changed becomes durable, as the
        // kernel commits when a pool is suspended and destroyed.
        if self.dirty.load(Ordering::Acquire) && self.mode() <= Mode::OutOfDataSpace {
            if let Err(e) = self.commit() {
                tracing::error!("{}: final commit failed: {e}", self.name);
            }
        }
        let reg = registry();
        let mut pools = lock(&reg.pools);
        let me: *const Pool = self;
        if pools
            .get(&self.name)
            .is_some_and(|e| std::ptr::eq(e.pool.as_ptr(), me))
        {
            pools.remove(&self.name);
        }
        drop(pools);
        reg.left.notify_all();
    }
}
