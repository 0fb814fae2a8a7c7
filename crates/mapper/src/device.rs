//! A mapped device: a name, a live table serving I/O and an inactive table waiting for
//! resume, with dm's suspend and resume.

use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};

use tessera_block::{check_range, BlockDevice, Result as BlockResult};
use thiserror::Error;

use crate::table::Table;
use crate::target::{Resolver, StatusType, Target, TargetArgs, TargetError, TargetRegistry};
use crate::SECTOR_BYTES;

const SECTOR: usize = SECTOR_BYTES as usize;

/// What can go wrong managing a mapped device; every variant names it.
#[derive(Debug, Error)]
pub enum MapperError {
    #[error("{device}: cannot load a table with no rows")]
    EmptyTable { device: String },
    #[error("{device}: table row {row}: unknown target type {target_type:?} (known: {known})")]
    UnknownTarget {
        device: String,
        row: usize,
        target_type: String,
        known: String,
    },
    #[error("{device}: table row {row} ({target_type} at sector {start}): {source}")]
    Target {
        device: String,
        row: usize,
        target_type: String,
        start: u64,
        #[source]
        source: Box<TargetError>,
    },
    #[error("{device}: has no live table; load one and resume")]
    NoTable { device: String },
    #[error("{device}: sector {sector} is past the end of the device ({size_sectors} sectors)")]
    SectorOutside {
        device: String,
        sector: u64,
        size_sectors: u64,
    },
}

/// A built table: targets ready for I/O.
struct Built {
    rows: Vec<BuiltRow>,
    size_sectors: u64,
    /// The smallest I/O every target takes (crypt's sector_size): requests are cut into
    /// blocks of this size, and a part of one is read, patched and written whole.
    block_bytes: u64,
    logical_block_size: u32,
    physical_block_size: u32,
}

struct BuiltRow {
    start: u64,
    len: u64,
    target_type: String,
    target: Box<dyn Target>,
}

impl Built {
    /// The table of a device that has none: no rows, no sectors.
    fn empty() -> Self {
        Built {
            rows: Vec::new(),
            size_sectors: 0,
            block_bytes: SECTOR_BYTES,
            logical_block_size: 512,
            physical_block_size: 4096,
        }
    }

    fn table(&self, kind: StatusType) -> String {
        self.rows
            .iter()
            .map(|r| {
                let status = r.target.status(kind);
                let sep = if status.is_empty() { "" } else { " " };
                format!("{} {} {}{sep}{status}\n", r.start, r.len, r.target_type)
            })
            .collect()
    }

    fn as_table(&self) -> Option<Table> {
        // Targets print their own parameters; one that printed a line break would make text
        // that is no table, so this is fallible without being expected to fail.
        Table::parse(&self.table(StatusType::Table))
            .ok()
            .filter(|t| !t.is_empty())
    }

    /// The row holding `sector`, which must be inside the table.
    fn row_index(&self, sector: u64) -> usize {
        self.rows.partition_point(|r| r.start + r.len <= sector)
    }

    /// Runs `op` on each row's part of `len` sectors from `sector`: (row, sector relative
    /// to the row, sectors, sectors done before this part).
    fn each_row(
        &self,
        sector: u64,
        len: u64,
        mut op: impl FnMut(&dyn Target, u64, u64, u64) -> BlockResult<()>,
    ) -> BlockResult<()> {
        let mut done = 0;
        let mut index = self.row_index(sector);
        while done < len {
            let Some(row) = self.rows.get(index) else {
                break; // Unreachable after the caller's range check.
            };
            let at = sector + done;
            let n = (row.start + row.len - at).min(len - done);
            op(&*row.target, at - row.start, n, done)?;
            done += n;
            index += 1;
        }
        Ok(())
    }

    fn read(&self, sector: u64, buf: &mut [u8]) -> BlockResult<()> {
        let len = (buf.len() / SECTOR) as u64;
        self.each_row(sector, len, |t, rel, n, done| {
            t.read(rel, &mut buf[byte_range(done, n)])
        })
    }

    fn write(&self, sector: u64, buf: &[u8]) -> BlockResult<()> {
        let len = (buf.len() / SECTOR) as u64;
        self.each_row(sector, len, |t, rel, n, done| {
            t.write(rel, &buf[byte_range(done, n)])
        })
    }
}

/// The byte range in a request of `n` sectors after `done` sectors.
fn byte_range(done: u64, n: u64) -> Range<usize> {
    (done as usize * SECTOR)..((done + n) as usize * SECTOR)
}

/// A piece of a byte request: a run of whole sectors, or part of one sector. `range` is
/// the piece's bytes within the request.
enum Piece {
    Whole {
        sector: u64,
        range: Range<u64>,
    },
    Partial {
        sector: u64,
        within: usize,
        range: Range<u64>,
    },
}

/// `range` as indexes into the request's buffer, whose length is a `usize`.
fn index(range: Range<u64>) -> Range<usize> {
    range.start as usize..range.end as usize
}

/// Splits `len` bytes at `offset` into at most a partial head block, a run of whole blocks
/// and a partial tail block, blocks of `block` bytes (a multiple of the sector). Sectors
/// are the 512-byte sectors where each piece starts.
fn pieces(offset: u64, len: u64, block: u64) -> Vec<Piece> {
    let end = offset + len;
    let mut out = Vec::with_capacity(3);
    let mut pos = offset;
    while pos < end {
        let first = pos / block;
        let within = pos % block;
        let range = |stop: u64| pos - offset..stop - offset;
        if within != 0 || end - pos < block {
            let stop = end.min((first + 1) * block);
            out.push(Piece::Partial {
                sector: first * block / SECTOR_BYTES,
                within: within as usize,
                range: range(stop),
            });
            pos = stop;
        } else {
            let sector = pos / SECTOR_BYTES;
            let stop = end - end % block;
            out.push(Piece::Whole {
                sector,
                range: range(stop),
            });
            pos = stop;
        }
    }
    out
}

/// Admits I/O while resumed; on suspend, holds new I/O and lets in-flight I/O drain.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    suspended: bool,
    in_flight: usize,
}

/// One admitted request; leaving drops the count.
struct Pass<'a>(&'a Gate);

impl Gate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, GateState>) -> MutexGuard<'a, GateState> {
        self.changed
            .wait(guard)
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn enter(&self) -> Pass<'_> {
        let mut s = self.lock();
        while s.suspended {
            s = self.wait(s);
        }
        s.in_flight += 1;
        Pass(self)
    }

    fn close(&self) {
        self.lock().suspended = true;
    }

    fn drain(&self) {
        let mut s = self.lock();
        while s.in_flight > 0 {
            s = self.wait(s);
        }
    }

    fn open(&self) {
        self.lock().suspended = false;
        self.changed.notify_all();
    }

    fn is_closed(&self) -> bool {
        self.lock().suspended
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.in_flight -= 1;
        if s.in_flight == 0 {
            self.0.changed.notify_all();
        }
    }
}

/// Sub-sector writes read, patch and write back a sector; these locks keep two of them on
/// the same sector from losing each other's bytes. As on any disk with 512-byte sectors, a
/// whole-sector write racing a patch of the same sector may be undone by it.
const PATCH_LOCKS: usize = 16;

/// What a partial-sector write puts in the sector.
enum Patch<'a> {
    Data(&'a [u8]),
    Zeroes(usize),
}

/// A device-mapper device in user space. It implements [`BlockDevice`], so the NBD server
/// and FUSE serve it like any device; I/O from many threads runs concurrently, each request
/// on the table that was live when it was admitted.
pub struct MappedDevice {
    name: String,
    registry: Arc<TargetRegistry>,
    /// The live table, cloned per request so I/O never holds this lock.
    live: RwLock<Arc<Built>>,
    inactive: Mutex<Option<Built>>,
    /// Serializes suspend and resume with each other.
    control: Mutex<()>,
    gate: Gate,
    patch: [Mutex<()>; PATCH_LOCKS],
}

impl MappedDevice {
    /// A device with no table, not suspended (I/O fails for want of sectors until a table is
    /// loaded and resumed). Tables are built with `registry`'s target types.
    pub fn new(name: impl Into<String>, registry: Arc<TargetRegistry>) -> Self {
        MappedDevice {
            name: name.into(),
            registry,
            live: RwLock::new(Arc::new(Built::empty())),
            inactive: Mutex::new(None),
            control: Mutex::new(()),
            gate: Gate::default(),
            patch: Default::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Builds `table`'s targets into the inactive slot, replacing any table there. Devices
    /// named in the table are opened through `resolve`. The live table is untouched.
    pub fn load(&self, table: &Table, resolve: Resolver<'_>) -> Result<(), MapperError> {
        if table.is_empty() {
            return Err(MapperError::EmptyTable {
                device: self.name.clone(),
            });
        }
        let mut rows = Vec::with_capacity(table.rows().len());
        for (index, row) in table.rows().iter().enumerate() {
            let ctor =
                self.registry
                    .get(&row.target_type)
                    .ok_or_else(|| MapperError::UnknownTarget {
                        device: self.name.clone(),
                        row: index + 1,
                        target_type: row.target_type.clone(),
                        known: self.registry.names().collect::<Vec<_>>().join(", "),
                    })?;
            let words = row.args();
            let args: Vec<&str> = words.iter().map(String::as_str).collect();
            let target = ctor(&TargetArgs {
                device: &self.name,
                start_sectors: row.start_sectors,
                length_sectors: row.length_sectors,
                args: &args,
                resolve,
            })
            .map_err(|source| MapperError::Target {
                device: self.name.clone(),
                row: index + 1,
                target_type: row.target_type.clone(),
                start: row.start_sectors,
                source: Box::new(source),
            })?;
            rows.push(BuiltRow {
                start: row.start_sectors,
                len: row.length_sectors,
                target_type: row.target_type.clone(),
                target,
            });
        }
        // The device's blocks are as large as the largest of any device under it, as the
        // kernel stacks queue limits.
        let devices: Vec<_> = rows.iter().flat_map(|r| r.target.devices()).collect();
        let block_bytes = rows
            .iter()
            .map(|r| r.target.block_bytes())
            .fold(512, u32::max);
        let built = Built {
            rows,
            size_sectors: table.size_sectors(),
            block_bytes: u64::from(block_bytes),
            logical_block_size: devices
                .iter()
                .map(|d| d.logical_block_size())
                .fold(block_bytes, u32::max),
            physical_block_size: devices
                .iter()
                .map(|d| d.physical_block_size())
                .fold(4096, u32::max),
        };
        *self.inactive_slot() = Some(built);
        Ok(())
    }

    /// Drops the inactive table.
    pub fn clear(&self) {
        self.inactive_slot().take();
    }

    /// Stops admitting I/O and returns once every request in flight has finished. Requests
    /// that arrive while suspended wait for [`resume`](Self::resume), even from the thread
    /// that suspended. Suspending a suspended device does nothing.
    pub fn suspend(&self) {
        let _control = self.control();
        self.suspend_locked();
    }

    fn suspend_locked(&self) {
        if self.gate.is_closed() {
            return;
        }
        self.gate.close();
        let live = self.live();
        live.rows.iter().for_each(|r| r.target.presuspend());
        self.gate.drain();
        live.rows.iter().for_each(|r| r.target.postsuspend());
    }

    /// Makes the inactive table live, if one is loaded, and readmits I/O. Like dm, resuming
    /// a running device with an inactive table suspends it for the swap. If a target refuses
    /// to resume, the device stays suspended with the tables as they were.
    pub fn resume(&self) -> Result<(), MapperError> {
        let _control = self.control();
        let next = self.inactive_slot().take();
        if next.is_some() {
            self.suspend_locked();
        } else if !self.gate.is_closed() {
            return Ok(());
        }
        let current = self.live();
        let resuming = next.as_ref().unwrap_or(&current);
        for (index, row) in resuming.rows.iter().enumerate() {
            if let Err(source) = row.target.preresume() {
                let err = MapperError::Target {
                    device: self.name.clone(),
                    row: index + 1,
                    target_type: row.target_type.clone(),
                    start: row.start,
                    source: Box::new(source),
                };
                *self.inactive_slot() = next;
                return Err(err);
            }
        }
        if let Some(next) = next {
            *self.live.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
        }
        // Nothing is in flight: the old table's targets, and the devices they hold, go now
        // (or when a concurrent status or message call lets go of them).
        drop(current);
        self.live().rows.iter().for_each(|r| r.target.resume());
        self.gate.open();
        Ok(())
    }

    pub fn is_suspended(&self) -> bool {
        self.gate.is_closed()
    }

    /// The live table as its targets print it (`dmsetup table`), or `None` without one.
    pub fn table(&self) -> Option<Table> {
        self.live().as_table()
    }

    /// The inactive table as its targets print it (`dmsetup table --inactive`).
    pub fn inactive_table(&self) -> Option<Table> {
        self.inactive_slot().as_ref().and_then(Built::as_table)
    }

    /// One `<start> <length> <type> <status>` line per live row (`dmsetup status`); empty
    /// without a live table.
    pub fn status(&self) -> String {
        self.live().table(StatusType::Info)
    }

    /// Sends a message to the live target holding `sector` (`dmsetup message`).
    pub fn message(&self, sector: u64, args: &[&str]) -> Result<String, MapperError> {
        let live = self.live();
        if live.rows.is_empty() {
            return Err(MapperError::NoTable {
                device: self.name.clone(),
            });
        }
        if sector >= live.size_sectors {
            return Err(MapperError::SectorOutside {
                device: self.name.clone(),
                sector,
                size_sectors: live.size_sectors,
            });
        }
        let index = live.row_index(sector);
        let row = &live.rows[index];
        row.target
            .message(args)
            .map_err(|source| MapperError::Target {
                device: self.name.clone(),
                row: index + 1,
                target_type: row.target_type.clone(),
                start: row.start,
                source: Box::new(source),
            })
    }

    /// Size of the live table; 0 without one.
    pub fn size_sectors(&self) -> u64 {
        self.live().size_sectors
    }

    fn live(&self) -> Arc<Built> {
        self.live
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn inactive_slot(&self) -> MutexGuard<'_, Option<Built>> {
        self.inactive.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn control(&self) -> MutexGuard<'_, ()> {
        self.control.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a request of `len` bytes at `offset` and returns the table to run it on;
    /// the request holds the pass until it is done.
    fn admit(&self, offset: u64, len: u64) -> BlockResult<(Pass<'_>, Arc<Built>)> {
        let pass = self.gate.enter();
        let live = self.live();
        check_range(&self.name, offset, len, live.size_sectors * SECTOR_BYTES)?;
        Ok((pass, live))
    }

    /// Rewrites part of one block (from `sector`), keeping the rest of it.
    fn patch(&self, live: &Built, sector: u64, within: usize, patch: Patch<'_>) -> BlockResult<()> {
        let _lock = self.patch[(sector % PATCH_LOCKS as u64) as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut block = vec![0u8; live.block_bytes as usize];
        live.read(sector, &mut block)?;
        match patch {
            Patch::Data(data) => block[within..within + data.len()].copy_from_slice(data),
            Patch::Zeroes(n) => block[within..within + n].fill(0),
        }
        live.write(sector, &block)
    }
}

impl std::fmt::Debug for MappedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedDevice")
            .field("name", &self.name)
            .field("size_sectors", &self.size_sectors())
            .field("suspended", &self.is_suspended())
            .finish_non_exhaustive()
    }
}

impl BlockDevice for MappedDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn size_bytes(&self) -> u64 {
        self.size_sectors() * SECTOR_BYTES
    }

    fn logical_block_size(&self) -> u32 {
        self.live().logical_block_size
    }

    fn physical_block_size(&self) -> u32 {
        self.live().physical_block_size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> BlockResult<()> {
        let (_pass, live) = self.admit(offset, buf.len() as u64)?;
        for piece in pieces(offset, buf.len() as u64, live.block_bytes) {
            match piece {
                Piece::Whole { sector, range } => live.read(sector, &mut buf[index(range)])?,
                Piece::Partial {
                    sector,
                    within,
                    range,
                } => {
                    let mut block = vec![0u8; live.block_bytes as usize];
                    live.read(sector, &mut block)?;
                    let dst = &mut buf[index(range)];
                    dst.copy_from_slice(&block[within..within + dst.len()]);
                }
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> BlockResult<()> {
        let (_pass, live) = self.admit(offset, buf.len() as u64)?;
        for piece in pieces(offset, buf.len() as u64, live.block_bytes) {
            match piece {
                Piece::Whole { sector, range } => live.write(sector, &buf[index(range)])?,
                Piece::Partial {
                    sector,
                    within,
                    range,
                } => self.patch(&live, sector, within, Patch::Data(&buf[index(range)]))?,
            }
        }
        Ok(())
    }

    fn flush(&self) -> BlockResult<()> {
        let _pass = self.gate.enter();
        let live = self.live();
        // Flush every row even if one fails, then report the first failure.
        let mut first = Ok(());
        for row in &live.rows {
            if let Err(e) = row.target.flush() {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Discards the whole sectors in the range; partial sectors at its edges are left alone,
    /// which a discard allows.
    fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        let (_pass, live) = self.admit(offset, len)?;
        for piece in pieces(offset, len, live.block_bytes) {
            if let Piece::Whole { sector, range } = piece {
                let n = (range.end - range.start) / SECTOR_BYTES;
                live.each_row(sector, n, |t, rel, n, _| t.discard(rel, n))?;
            }
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> BlockResult<()> {
        let (_pass, live) = self.admit(offset, len)?;
        for piece in pieces(offset, len, live.block_bytes) {
            match piece {
                Piece::Whole { sector, range } => {
                    let n = (range.end - range.start) / SECTOR_BYTES;
                    live.each_row(sector, n, |t, rel, n, _| t.write_zeroes(rel, n))?;
                }
                Piece::Partial {
                    sector,
                    within,
                    range,
                } => {
                    let n = (range.end - range.start) as usize;
                    self.patch(&live, sector, within, Patch::Zeroes(n))?
                }
            }
        }
        Ok(())
    }
}
