//! The three targets: table lines, I/O, status, the merge worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tessera_block::{Result as BlockResult, SharedDevice};
use tessera_formats::snapshot::{check_chunk_sectors, Store, DEFAULT_CHUNK_SECTORS};
use tessera_mapper::{escape_arg, StatusType, Target, TargetArgs, TargetError, SECTOR_BYTES};

use crate::exceptions::{Exceptions, Transient};
use crate::origin::{
    io_error, lock, origin_for, read_clipped, write_clipped, Origin, Registration, Snap,
};

/// The most a merge step copies back at once; a run longer than this is merged from its
/// end in several steps.
const MERGE_STEP_BYTES: u64 = 1 << 20;

/// The pieces of `[offset, offset + len)` in chunks of `cs` bytes: (chunk, offset within
/// the chunk, offset within the request, length).
fn pieces(offset: u64, len: u64, cs: u64) -> impl Iterator<Item = (u64, u64, usize, usize)> {
    let end = offset + len;
    let mut at = offset;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let chunk = at / cs;
        let within = at % cs;
        let n = (cs - within).min(end - at);
        let item = (chunk, within, (at - offset) as usize, n as usize);
        at += n;
        Some(item)
    })
}

fn byte_offset(sector: u64) -> u64 {
    sector * SECTOR_BYTES
}

// ---------------------------------------------------------------------------------------
// snapshot-origin

struct OriginTarget {
    name: String,
    origin: Arc<Origin>,
}

pub(crate) fn construct_origin(args: &TargetArgs<'_>) -> Result<Box<dyn Target>, TargetError> {
    let mut r = args.reader();
    let name = r.next("origin")?;
    r.finish()?;
    let dev = args.open(name, 0, args.length_sectors)?;
    Ok(Box::new(OriginTarget {
        name: name.to_string(),
        origin: origin_for(&dev),
    }))
}

impl Target for OriginTarget {
    fn read(&self, sector: u64, buf: &mut [u8]) -> BlockResult<()> {
        self.origin.dev.read_at(buf, byte_offset(sector))
    }

    fn write(&self, sector: u64, buf: &[u8]) -> BlockResult<()> {
        self.origin.write(byte_offset(sector), buf)
    }

    fn flush(&self) -> BlockResult<()> {
        self.origin.dev.flush()
    }

    fn discard(&self, sector: u64, len_sectors: u64) -> BlockResult<()> {
        self.origin
            .zero_or_discard(byte_offset(sector), byte_offset(len_sectors), true)
    }

    fn write_zeroes(&self, sector: u64, len_sectors: u64) -> BlockResult<()> {
        self.origin
            .zero_or_discard(byte_offset(sector), byte_offset(len_sectors), false)
    }

    fn status(&self, kind: StatusType) -> String {
        match kind {
            StatusType::Info => String::new(),
            StatusType::Table => escape_arg(&self.name),
        }
    }

    fn devices(&self) -> Vec<SharedDevice> {
        vec![self.origin.dev.clone()]
    }
}

// ---------------------------------------------------------------------------------------
// Table lines of snapshot and snapshot-merge

struct SnapArgs {
    origin: String,
    cow: String,
    store_type: String,
    chunk_sectors: u32,
    features: Vec<String>,
}

fn parse_snap_args(args: &TargetArgs<'_>, merge: bool) -> Result<SnapArgs, TargetError> {
    let mut r = args.reader();
    let origin = r.next("origin")?.to_string();
    let cow = r.next("COW device")?.to_string();
    let store_type = r.next("persistent?")?.to_string();
    let chunk_sectors: u32 = r.number("chunk size")?;
    match store_type.as_str() {
        "P" | "p" => {}
        "PO" | "Po" | "pO" | "po" | "N" | "n" if !merge => {}
        other => {
            return Err(TargetError::Invalid(if merge {
                format!("store type {other:?}: snapshot-merge needs a persistent store (P)")
            } else {
                format!("store type {other:?} is not P, PO or N")
            }))
        }
    }
    let store_type = store_type.to_ascii_uppercase();
    if chunk_sectors != 0 {
        check_chunk_sectors(&cow, chunk_sectors)
            .map_err(|e| TargetError::Invalid(e.to_string()))?;
    }
    let mut features = Vec::new();
    if r.remaining() > 0 && !merge {
        let n: usize = r.number("#feature args")?;
        for _ in 0..n {
            let f = r.next("feature")?;
            match f {
                "discard_zeroes_cow" | "discard_passdown_origin" => features.push(f.to_string()),
                other => return Err(TargetError::Invalid(format!("unknown feature {other:?}"))),
            }
        }
        if features.iter().any(|f| f == "discard_passdown_origin")
            && !features.iter().any(|f| f == "discard_zeroes_cow")
        {
            return Err(TargetError::Invalid(
                "discard_passdown_origin needs discard_zeroes_cow".into(),
            ));
        }
    }
    r.finish()?;
    Ok(SnapArgs {
        origin,
        cow,
        store_type,
        chunk_sectors,
        features,
    })
}

/// Registers the snapshot of `a` with its origin, opening (or creating) its store unless a
/// live target already holds it.
fn register_snap(
    args: &TargetArgs<'_>,
    a: &SnapArgs,
) -> Result<(SharedDevice, Registration), TargetError> {
    let origin_dev = args.open(&a.origin, 0, args.length_sectors)?;
    let cow = args.open(&a.cow, 0, 0)?;
    let origin = origin_for(&origin_dev);
    let reg = origin.register(cow.name(), || -> Result<Snap, TargetError> {
        let fail = |e: tessera_formats::snapshot::SnapshotStoreError| {
            TargetError::Invalid(format!("COW device {:?}: {e}", a.cow))
        };
        let (ex, chunk) = if a.store_type == "N" {
            let chunk = if a.chunk_sectors == 0 {
                DEFAULT_CHUNK_SECTORS
            } else {
                a.chunk_sectors
            };
            let t = Transient {
                device: cow.name().to_string(),
                map: Default::default(),
                chunk_sectors: u64::from(chunk),
                next_free_sectors: 0,
                total_sectors: cow.size_bytes() / SECTOR_BYTES,
                valid: true,
            };
            (Exceptions::Transient(t), chunk)
        } else {
            let store = match Store::open(cow.clone()).map_err(fail)? {
                Some(s) => s,
                None => {
                    let chunk = if a.chunk_sectors == 0 {
                        DEFAULT_CHUNK_SECTORS
                    } else {
                        a.chunk_sectors
                    };
                    Store::create(cow.clone(), chunk).map_err(fail)?
                }
            };
            let chunk = store.chunk_sectors();
            (Exceptions::Persistent(store), chunk)
        };
        Ok(Snap::new(
            cow.name().to_string(),
            cow.clone(),
            u64::from(chunk),
            a.store_type.clone(),
            ex,
        ))
    })?;
    Ok((origin_dev, reg))
}

fn snap_table(a: &SnapArgs, snap: &Snap) -> String {
    let mut s = format!(
        "{} {} {} {}",
        escape_arg(&a.origin),
        escape_arg(&a.cow),
        snap.store_type,
        snap.chunk_sectors
    );
    if !a.features.is_empty() {
        s.push_str(&format!(" {} {}", a.features.len(), a.features.join(" ")));
    }
    s
}

fn snap_info(snap: &Snap) -> String {
    if !snap.is_valid() {
        return "Invalid".into();
    }
    if lock(&snap.merge_failed).is_some() {
        return "Merge failed".into();
    }
    lock(&snap.ex).usage().to_string()
}

// ---------------------------------------------------------------------------------------
// snapshot

struct SnapshotTarget {
    mapped: String,
    row_start: u64,
    args: SnapArgs,
    origin_dev: SharedDevice,
    reg: Registration,
}

pub(crate) fn construct_snapshot(args: &TargetArgs<'_>) -> Result<Box<dyn Target>, TargetError> {
    let a = parse_snap_args(args, false)?;
    let (origin_dev, reg) = register_snap(args, &a)?;
    Ok(Box::new(SnapshotTarget {
        mapped: args.device.to_string(),
        row_start: args.start_sectors,
        args: a,
        origin_dev,
        reg,
    }))
}

impl SnapshotTarget {
    fn refuse(&self, offset: u64, len: u64) -> BlockResult<()> {
        let snap = &self.reg.snap;
        let at = byte_offset(self.row_start) + offset;
        if !snap.is_valid() {
            return Err(io_error(&self.mapped, at, len, "the snapshot is invalid"));
        }
        if snap.is_merging() {
            return Err(io_error(
                &self.mapped,
                at,
                len,
                "the snapshot is being merged",
            ));
        }
        Ok(())
    }

    /// Writes `data` (or zeroes, for `None`) at `offset`, chunk by chunk.
    fn write_pieces(&self, offset: u64, len: u64, data: Option<&[u8]>) -> BlockResult<()> {
        let cs = self.reg.snap.chunk_bytes;
        let zeroes = match data {
            Some(_) => Vec::new(),
            None => vec![0u8; cs.min(len) as usize],
        };
        for (chunk, within, at, n) in pieces(offset, len, cs) {
            let piece = match data {
                Some(d) => &d[at..at + n],
                None => &zeroes[..n],
            };
            self.write_chunk(chunk, within, piece, offset + at as u64)?;
        }
        Ok(())
    }

    fn write_chunk(&self, chunk: u64, within: u64, piece: &[u8], at: u64) -> BlockResult<()> {
        let snap = &self.reg.snap;
        let cs = snap.chunk_bytes;
        let _g = self
            .reg
            .origin
            .locks
            .lock(chunk * cs, (chunk + 1) * cs, true);
        self.refuse(at, piece.len() as u64)?;
        if let Some(new) = snap.lookup(chunk) {
            return snap.cow.write_at(piece, snap.cow_offset(new) + within);
        }
        let whole = within == 0 && piece.len() as u64 == cs;
        match snap.copy_out(&self.origin_dev, chunk, whole.then_some(piece)) {
            Ok(new) if !whole => snap.cow.write_at(piece, snap.cow_offset(new) + within),
            Ok(_) => Ok(()),
            Err(e) => {
                let why = e.to_string();
                snap.invalidate(&why);
                Err(io_error(
                    &self.mapped,
                    byte_offset(self.row_start) + at,
                    piece.len() as u64,
                    format!("snapshot invalidated: {why}"),
                ))
            }
        }
    }
}

impl Target for SnapshotTarget {
    fn read(&self, sector: u64, buf: &mut [u8]) -> BlockResult<()> {
        let snap = &self.reg.snap;
        let cs = snap.chunk_bytes;
        let offset = byte_offset(sector);
        for (chunk, within, at, n) in pieces(offset, buf.len() as u64, cs) {
            let _g = self
                .reg
                .origin
                .locks
                .lock(chunk * cs, (chunk + 1) * cs, false);
            self.refuse(offset + at as u64, n as u64)?;
            let piece = &mut buf[at..at + n];
            match snap.lookup(chunk) {
                Some(new) => snap.cow.read_at(piece, snap.cow_offset(new) + within)?,
                None => read_clipped(&self.origin_dev, piece, offset + at as u64)?,
            }
        }
        Ok(())
    }

    fn write(&self, sector: u64, buf: &[u8]) -> BlockResult<()> {
        self.write_pieces(byte_offset(sector), buf.len() as u64, Some(buf))
    }

    fn flush(&self) -> BlockResult<()> {
        self.reg.snap.cow.flush()?;
        self.origin_dev.flush()
    }

    /// Discards are taken and dropped: a snapshot's chunks keep what they hold.
    fn discard(&self, sector: u64, len_sectors: u64) -> BlockResult<()> {
        self.refuse(byte_offset(sector), byte_offset(len_sectors))
    }

    fn write_zeroes(&self, sector: u64, len_sectors: u64) -> BlockResult<()> {
        self.write_pieces(byte_offset(sector), byte_offset(len_sectors), None)
    }

    fn status(&self, kind: StatusType) -> String {
        match kind {
            StatusType::Info => snap_info(&self.reg.snap),
            StatusType::Table => snap_table(&self.args, &self.reg.snap),
        }
    }

    fn devices(&self) -> Vec<SharedDevice> {
        vec![self.origin_dev.clone(), self.reg.snap.cow.clone()]
    }
}

// ---------------------------------------------------------------------------------------
// snapshot-merge

struct MergeTarget {
    args: SnapArgs,
    reg: Registration,
    worker: Mutex<Option<Worker>>,
    done: Arc<AtomicBool>,
}

struct Worker {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

pub(crate) fn construct_merge(args: &TargetArgs<'_>) -> Result<Box<dyn Target>, TargetError> {
    let a = parse_snap_args(args, true)?;
    let (_origin_dev, reg) = register_snap(args, &a)?;
    if reg.snap.store_type != "P" && reg.snap.store_type != "PO" {
        return Err(TargetError::Invalid(
            "snapshot-merge needs a persistent store (P)".into(),
        ));
    }
    reg.snap.merging.fetch_add(1, Ordering::AcqRel);
    Ok(Box::new(MergeTarget {
        args: a,
        reg,
        worker: Mutex::new(None),
        done: Arc::new(AtomicBool::new(false)),
    }))
}

/// Merges the last run of exceptions (or its last [`MERGE_STEP_BYTES`]); false when none
/// is left.
fn merge_step(origin: &Origin, snap: &Snap) -> Result<bool, String> {
    let _turn = lock(&snap.merge_step);
    let prepared = {
        let _io = lock(&snap.store_io);
        lock(&snap.ex).prepare_merge()
    };
    let Some(run) = prepared.map_err(|e| e.to_string())? else {
        return Ok(false);
    };
    let cs = snap.chunk_bytes;
    let k = run.count.min((MERGE_STEP_BYTES / cs).max(1));
    let old = run.old_chunk + (run.count - k);
    let new = run.new_chunk + (run.count - k);
    let len = k * cs;
    let mut buf = vec![0u8; len as usize];
    if let Some(offset) = old.checked_mul(cs).filter(|o| o.checked_add(len).is_some()) {
        let _g = origin.lock_chunks(offset, len, true);
        // Other snapshots of the origin keep the data being overwritten.
        origin.copy_out_locked(offset, len);
        snap.cow
            .read_at(&mut buf, snap.cow_offset(new))
            .map_err(|e| e.to_string())?;
        write_clipped(&origin.dev, &buf, offset).map_err(|e| e.to_string())?;
        origin.dev.flush().map_err(|e| e.to_string())?;
        snap.commit_merge(k).map_err(|e| e.to_string())?;
    } else {
        // An origin chunk no device can hold: nothing to copy back.
        snap.commit_merge(k).map_err(|e| e.to_string())?;
    }
    Ok(true)
}

impl MergeTarget {
    fn start(&self) {
        let snap = &self.reg.snap;
        let mut w = lock(&self.worker);
        if w.is_some()
            || self.done.load(Ordering::Acquire)
            || !snap.is_valid()
            || lock(&snap.merge_failed).is_some()
        {
            return;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (origin, snap) = (self.reg.origin.clone(), self.reg.snap.clone());
        let (stop2, done) = (stop.clone(), self.done.clone());
        let handle = std::thread::Builder::new()
            .name("snapshot-merge".into())
            .spawn(move || {
                while !stop2.load(Ordering::Acquire) {
                    match merge_step(&origin, &snap) {
                        Ok(true) => {}
                        Ok(false) => {
                            done.store(true, Ordering::Release);
                            break;
                        }
                        Err(e) => {
                            *lock(&snap.merge_failed) = Some(e);
                            break;
                        }
                    }
                }
            });
        if let Ok(handle) = handle {
            *w = Some(Worker { stop, handle });
        }
    }

    fn stop(&self) {
        if let Some(w) = lock(&self.worker).take() {
            w.stop.store(true, Ordering::Release);
            let _ = w.handle.join();
        }
    }
}

impl Drop for MergeTarget {
    fn drop(&mut self) {
        self.stop();
        self.reg.snap.merging.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Target for MergeTarget {
    fn read(&self, sector: u64, buf: &mut [u8]) -> BlockResult<()> {
        let (origin, snap) = (&self.reg.origin, &self.reg.snap);
        let offset = byte_offset(sector);
        let _g = origin.lock_chunks(offset, buf.len() as u64, false);
        for (chunk, within, at, n) in pieces(offset, buf.len() as u64, snap.chunk_bytes) {
            let piece = &mut buf[at..at + n];
            match snap.lookup(chunk) {
                Some(new) => snap.cow.read_at(piece, snap.cow_offset(new) + within)?,
                None => origin.dev.read_at(piece, offset + at as u64)?,
            }
        }
        Ok(())
    }

    fn write(&self, sector: u64, buf: &[u8]) -> BlockResult<()> {
        let (origin, snap) = (&self.reg.origin, &self.reg.snap);
        let offset = byte_offset(sector);
        let _g = origin.lock_chunks(offset, buf.len() as u64, true);
        for (chunk, within, at, n) in pieces(offset, buf.len() as u64, snap.chunk_bytes) {
            let piece = &buf[at..at + n];
            match snap.lookup(chunk) {
                // Not merged yet: the COW chunk is the origin's data until it is.
                Some(new) => snap.cow.write_at(piece, snap.cow_offset(new) + within)?,
                None => {
                    origin.copy_out_locked(offset + at as u64, n as u64);
                    origin.dev.write_at(piece, offset + at as u64)?;
                }
            }
        }
        Ok(())
    }

    fn flush(&self) -> BlockResult<()> {
        self.reg.snap.cow.flush()?;
        self.reg.origin.dev.flush()
    }

    fn discard(&self, _sector: u64, _len_sectors: u64) -> BlockResult<()> {
        Ok(())
    }

    fn write_zeroes(&self, sector: u64, len_sectors: u64) -> BlockResult<()> {
        let zeroes = vec![0u8; byte_offset(len_sectors) as usize];
        self.write(sector, &zeroes)
    }

    fn status(&self, kind: StatusType) -> String {
        match kind {
            StatusType::Info => snap_info(&self.reg.snap),
            StatusType::Table => snap_table(&self.args, &self.reg.snap),
        }
    }

    fn message(&self, args: &[&str]) -> Result<String, TargetError> {
        match args {
            ["progress"] => {
                let snap = &self.reg.snap;
                let left = lock(&snap.ex).len();
                let state = if let Some(e) = lock(&snap.merge_failed).as_ref() {
                    format!("failed: {e}")
                } else if !snap.is_valid() {
                    "invalid".into()
                } else if self.done.load(Ordering::Acquire) {
                    "done".into()
                } else if lock(&self.worker).is_some() {
                    "running".into()
                } else {
                    "stopped".into()
                };
                Ok(format!("{left} {state}"))
            }
            _ => Err(TargetError::Message(format!(
                "unknown message {:?}; snapshot-merge takes \"progress\"",
                args.join(" ")
            ))),
        }
    }

    fn devices(&self) -> Vec<SharedDevice> {
        vec![self.reg.origin.dev.clone(), self.reg.snap.cow.clone()]
    }

    fn presuspend(&self) {
        self.stop();
    }

    fn postsuspend(&self) {
        self.stop();
    }

    fn resume(&self) {
        self.start();
    }
}
