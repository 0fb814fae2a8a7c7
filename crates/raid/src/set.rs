//! A running raid set: its members and their states, the I/O paths over them, and what
//! happens when a member fails.
//!
//! Each slot holds a device or nothing, and how far the device is in sync: all of it, or
//! (while it is being rebuilt) the sectors below a mark. A read may go to a member only
//! where it is in sync; writes go to every member present, so that what recovery has
//! passed stays in sync. I/O takes a snapshot of the slots ([`View`]) and works on it: a
//! member that fails meanwhile is dropped from the next snapshot, and a stale snapshot
//! only ever sends I/O to a device that has just failed, which fails again harmlessly.
//!
//! A member that returns an I/O error is marked faulty and recorded so (the metadata's
//! `record`), and the I/O goes on without it while redundancy lasts; a spare, if there is
//! one, takes its slot and recovery starts. A read error on a redundant set is answered
//! from the other members, and the good data is written back over the bad sectors, as md
//! does; only if that write fails too is the member failed.
//!
//! A member that keeps a bad-block log (md's, through the metadata) is not failed for a
//! write error while the log has room: the write is retried in blocks, the blocks that fail
//! are recorded in its log (md's narrow_write_error and rdev_set_badblocks), and the data
//! there lives on in the redundancy. Reads never go to a recorded range; once a write error
//! has been seen on the member, writes skip recorded ranges too; a write that does reach a
//! recorded range and succeeds (recovery, repair, a read error fixed) clears it (md's
//! rdev_clear_badblocks).
//!
//! Writes, recovery, resync and scrub lock the rows they touch (a row is one chunk of every
//! member, at the same member sector), so that a rebuilt row never overwrites a newer write
//! and two writers to one parity stripe never mix their parity updates.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Instant;

use tessera_block::badblocks::BadBlocks;
use tessera_block::{BlockError, Result as BlockResult, SharedDevice};

use crate::layout::{Geometry, Level, StripeInfo};
use crate::metadata::{MemberRecord, MemberRole, SetMetadata, SetRecord};
use crate::parity;

pub(crate) const SECTOR: u64 = 512;
/// `synced` of a member that is wholly in sync.
pub(crate) const IN_SYNC: u64 = u64::MAX;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Rows being written, rebuilt or checked.
#[derive(Default)]
pub(crate) struct RowLocks {
    held: Mutex<HashSet<u64>>,
    released: Condvar,
}

pub(crate) struct RowGuard<'a> {
    locks: &'a RowLocks,
    rows: Vec<u64>,
}

impl RowLocks {
    /// Locks every row in `rows`, in ascending order so that two lockers never deadlock.
    pub(crate) fn lock(&self, mut rows: Vec<u64>) -> RowGuard<'_> {
        rows.sort_unstable();
        rows.dedup();
        let mut held = lock(&self.held);
        for &row in &rows {
            while held.contains(&row) {
                held = self
                    .released
                    .wait(held)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            held.insert(row);
        }
        RowGuard { locks: self, rows }
    }
}

impl Drop for RowGuard<'_> {
    fn drop(&mut self) {
        let mut held = lock(&self.locks.held);
        for row in &self.rows {
            held.remove(row);
        }
        self.locks.released.notify_all();
    }
}

/// A member's bad-block table, in sectors of the whole device.
pub(crate) struct MemberBad {
    pub table: Mutex<BadBlocks>,
    /// Where the set's data starts on the device, in sectors.
    pub base: u64,
    /// A write error was seen on the member while the set ran: writes skip bad ranges.
    pub write_error_seen: AtomicBool,
}

impl MemberBad {
    pub(crate) fn new(table: BadBlocks, base: u64) -> Arc<MemberBad> {
        Arc::new(MemberBad {
            table: Mutex::new(table),
            base,
            write_error_seen: AtomicBool::new(false),
        })
    }

    /// Whether any of `len` member sectors from `member_sector` is recorded bad.
    pub(crate) fn hits(&self, member_sector: u64, len: u64) -> bool {
        lock(&self.table)
            .check(self.base + member_sector, len)
            .is_some()
    }
}

/// The slots as one I/O sees them.
#[derive(Clone)]
pub(crate) struct View {
    pub devs: Vec<Option<SharedDevice>>,
    pub names: Vec<Option<String>>,
    /// Member sectors in sync from the start ([`IN_SYNC`]: all).
    pub synced: Vec<u64>,
    /// Bad-block tables of members that keep a log.
    pub bad: Vec<Option<Arc<MemberBad>>>,
}

impl View {
    /// Whether member `m` holds good data for the range: present, in sync there, and no
    /// sector of it recorded bad.
    pub(crate) fn readable(&self, m: usize, member_sector: u64, len: u64) -> bool {
        self.devs[m].is_some()
            && member_sector.saturating_add(len) <= self.synced[m]
            && !self.bad[m]
                .as_ref()
                .is_some_and(|b| b.hits(member_sector, len))
    }

    /// Present and in sync there, whatever its bad blocks.
    pub(crate) fn whole_at(&self, m: usize, member_sector: u64, len: u64) -> bool {
        self.devs[m].is_some() && member_sector.saturating_add(len) <= self.synced[m]
    }

    fn in_sync(&self, m: usize) -> bool {
        self.devs[m].is_some() && self.synced[m] == IN_SYNC
    }

    fn without(&self, m: usize) -> View {
        let mut v = self.clone();
        v.devs[m] = None;
        v
    }
}

/// What the set keeps beside the slots.
#[derive(Default)]
pub(crate) struct Spares {
    pub spares: VecDeque<(String, SharedDevice)>,
    pub faulty: Vec<String>,
}

/// Whether an I/O must start over on a fresh view (a member failed under it).
pub(crate) enum Step {
    Done,
    Retry,
    /// A member failed to read a row the write needs: go round again with the row
    /// rebuilt from the others and written back over it, as md fixes a read error.
    Unreadable(usize),
}

pub(crate) struct Core {
    pub geo: Geometry,
    pub chunk_sectors: u64,
    pub data_offset: u64,
    /// Sectors of each member the set uses.
    pub member_sectors: u64,
    pub view: RwLock<Arc<View>>,
    /// Serialises changes of the slots and of the records.
    pub state: Mutex<Spares>,
    pub rows: RowLocks,
    pub metadata: Option<Arc<dyn SetMetadata>>,
    /// More members lost than the level survives: every I/O fails.
    pub failed: AtomicBool,
    // Safe mode: dirty before the first write, clean once writes have stopped.
    pub in_flight: AtomicUsize,
    /// Writes begun, ever: a clean record is void if one began while it was being made.
    pub write_seq: AtomicU64,
    pub dirty: AtomicBool,
    /// The redundancy is not known to be consistent until a resync finishes.
    pub needs_resync: AtomicBool,
    pub epoch: Instant,
    pub last_write_ms: AtomicU64,
    pub last_io_ms: AtomicU64,
    pub region_sectors: Option<u64>,
    pub marked: Mutex<HashSet<u64>>,
    pub corrected_reads: AtomicU64,
    pub member_failures: AtomicU64,
}

impl Core {
    pub(crate) fn view(&self) -> Arc<View> {
        self.view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_view(&self, v: View) {
        *self.view.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(v);
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(crate) fn level(&self) -> Level {
        self.geo.level()
    }

    pub(crate) fn is_parity_level(&self) -> bool {
        matches!(self.level(), Level::Raid4 | Level::Raid5 | Level::Raid6)
    }

    pub(crate) fn at(&self, member_sector: u64) -> u64 {
        (self.data_offset + member_sector) * SECTOR
    }

    pub(crate) fn row_of(&self, member_sector: u64) -> u64 {
        member_sector / self.chunk_sectors
    }

    fn missing(&self, what: &str) -> BlockError {
        BlockError::Io {
            device: what.to_string(),
            offset: 0,
            len: 0,
            source: std::io::Error::other("the raid set has lost more members than it survives"),
        }
    }

    /// The state to record now.
    pub(crate) fn record_now(&self, v: &View, spares: &Spares) -> SetRecord {
        let clean = !self.dirty.load(Ordering::SeqCst) && !self.needs_resync.load(Ordering::SeqCst);
        let mut members = Vec::new();
        for (slot, name) in v.names.iter().enumerate() {
            if let (Some(name), Some(_)) = (name, &v.devs[slot]) {
                let role = if v.synced[slot] == IN_SYNC {
                    MemberRole::InSync(slot)
                } else {
                    MemberRole::Recovering {
                        slot,
                        done: v.synced[slot],
                    }
                };
                members.push(MemberRecord {
                    device: name.clone(),
                    role,
                });
            }
        }
        for (name, _) in &spares.spares {
            members.push(MemberRecord {
                device: name.clone(),
                role: MemberRole::Spare,
            });
        }
        for name in &spares.faulty {
            members.push(MemberRecord {
                device: name.clone(),
                role: MemberRole::Faulty,
            });
        }
        SetRecord { clean, members }
    }

    /// Writes the records, if the set has any. A failure to record is logged: the set goes
    /// on, as md does when a superblock write fails on a member it has just failed.
    pub(crate) fn record(&self, v: &View, spares: &Spares) {
        if let Some(meta) = &self.metadata {
            if let Err(e) = meta.record(&self.record_now(v, spares)) {
                tracing::error!("raid set: recording its state failed: {e}");
            }
        }
    }

    /// Whether every chunk still has a member in sync holding it (or its parity).
    fn survives(&self, v: &View) -> bool {
        let n = v.devs.len();
        let lost = (0..n).filter(|&m| !v.in_sync(m)).count();
        match self.level() {
            Level::Raid0 => lost == 0,
            Level::Raid1 => lost < n,
            Level::Raid4 | Level::Raid5 | Level::Raid6 => lost <= self.level().parity_members(),
            Level::Raid10 => (0..n as u64).all(|c| {
                self.geo
                    .data_location(c * self.chunk_sectors)
                    .iter()
                    .any(|(m, _)| v.in_sync(*m))
            }),
        }
    }

    /// Marks the member in slot `m` faulty after `error`, if `dev` is still the one there.
    /// Takes a spare into the slot when there is one. Fails with `error` if the set cannot
    /// go on without the member.
    pub(crate) fn fail(&self, m: usize, dev: &SharedDevice, error: BlockError) -> BlockResult<()> {
        let mut spares = lock(&self.state);
        let current = self.view();
        let still_there = current.devs[m]
            .as_ref()
            .is_some_and(|d| Arc::ptr_eq(d, dev));
        if still_there {
            let name = current.names[m].clone().unwrap_or_default();
            tracing::warn!("raid set: member {name} (slot {m}) failed: {error}");
            let mut v = (*current).clone();
            v.devs[m] = None;
            v.names[m] = None;
            v.synced[m] = 0;
            v.bad[m] = None;
            spares.faulty.push(name);
            self.member_failures.fetch_add(1, Ordering::Relaxed);
            if !self.survives(&v) {
                self.failed.store(true, Ordering::SeqCst);
                self.set_view(v.clone());
                self.record(&v, &spares);
                return Err(error);
            }
            self.record(&v, &spares);
            if let Some((spare_name, spare)) = spares.spares.pop_front() {
                tracing::warn!("raid set: spare {spare_name} takes slot {m}; recovery starts");
                v.bad[m] = self.member_bad(&spare_name);
                v.devs[m] = Some(spare);
                v.names[m] = Some(spare_name);
                v.synced[m] = 0;
                self.record(&v, &spares);
            }
            self.set_view(v);
        }
        if self.failed.load(Ordering::SeqCst) {
            return Err(error);
        }
        Ok(())
    }

    /// Fails a member by name, as `mdadm --fail` does.
    pub(crate) fn fail_by_name(&self, name: &str) -> Result<(), String> {
        let v = self.view();
        let Some(m) = v.names.iter().position(|n| n.as_deref() == Some(name)) else {
            return Err(format!("{name} is not an active member of the set"));
        };
        let dev = v.devs[m].clone().expect("named slots have devices");
        let mut trial = (*v).clone();
        trial.devs[m] = None;
        if !self.survives(&trial) {
            return Err(format!(
                "failing {name} would lose data: the set has no redundancy left for it"
            ));
        }
        self.fail(
            m,
            &dev,
            BlockError::Io {
                device: name.to_string(),
                offset: 0,
                len: 0,
                source: std::io::Error::other("failed on request"),
            },
        )
        .map_err(|e| e.to_string())
    }

    /// Writes to member `m`; a failure the bad-block log cannot take fails the member and
    /// is an error only if the set cannot go on.
    fn write_member(&self, v: &View, m: usize, buf: &[u8], member_sector: u64) -> BlockResult<()> {
        self.write_to(v, m, buf, member_sector, false)
    }

    /// The bad-block table of `device`, if the records keep a log for it.
    pub(crate) fn member_bad(&self, device: &str) -> Option<Arc<MemberBad>> {
        let table = self.metadata.as_ref()?.bad_blocks(device)?;
        Some(MemberBad::new(table, self.data_offset))
    }

    /// Writes `buf` to member `m` at `member_sector`. Unless `rewrite` (recovery, repair, a
    /// read error being fixed), ranges recorded bad are skipped once a write error has
    /// been seen on the member. A successful write clears what it covered from the log;
    /// a failed one records the failing blocks there, or fails the member if it cannot.
    pub(crate) fn write_to(
        &self,
        v: &View,
        m: usize,
        buf: &[u8],
        member_sector: u64,
        rewrite: bool,
    ) -> BlockResult<()> {
        let Some(dev) = &v.devs[m] else {
            return Ok(());
        };
        let len = buf.len() as u64 / SECTOR;
        let bad = v.bad[m].as_ref();
        if let Some(b) = bad.filter(|b| !rewrite && b.write_error_seen.load(Ordering::SeqCst)) {
            // Write around the recorded ranges: the data there lives in the redundancy.
            let skip: Vec<(u64, u64)> = {
                let t = lock(&b.table);
                t.entries()
                    .iter()
                    .map(|e| (e.start.saturating_sub(b.base), e.len))
                    .filter(|&(s, n)| s < member_sector + len && s + n > member_sector)
                    .collect()
            };
            if !skip.is_empty() {
                let mut at = member_sector;
                let end = member_sector + len;
                let mut pieces = Vec::new();
                for (s, n) in skip {
                    if s > at {
                        pieces.push((at, s.min(end)));
                    }
                    at = at.max(s + n);
                }
                if at < end {
                    pieces.push((at, end));
                }
                for (s, e) in pieces {
                    let from = ((s - member_sector) * SECTOR) as usize;
                    let to = ((e - member_sector) * SECTOR) as usize;
                    self.write_to(v, m, &buf[from..to], s, true)?;
                }
                return Ok(());
            }
        }
        match dev.write_at(buf, self.at(member_sector)) {
            Ok(()) => {
                if let Some(b) = bad {
                    self.made_good(v, m, b, member_sector, len);
                }
                Ok(())
            }
            Err(e) => match bad {
                Some(b) if self.narrow_write_error(v, m, dev, b, buf, member_sector) => Ok(()),
                _ => self.fail(m, dev, e),
            },
        }
    }

    /// Clears a range written successfully from the member's log (md's "made good").
    fn made_good(&self, v: &View, m: usize, b: &MemberBad, member_sector: u64, len: u64) {
        let mut t = lock(&b.table);
        if t.check(b.base + member_sector, len).is_none() {
            return;
        }
        let before = t.clone();
        if !t.clear(b.base + member_sector, len) {
            return;
        }
        let name = v.names[m].clone().unwrap_or_default();
        let recorded = self
            .metadata
            .as_ref()
            .map(|meta| meta.record_bad_blocks(&name, &t));
        match recorded {
            Some(Ok(())) => tracing::info!(
                "raid set: {name}: sectors {} to {} rewritten; cleared from its bad-block log",
                b.base + member_sector,
                b.base + member_sector + len - 1
            ),
            // The log still names the range: keep it bad here too.
            _ => *t = before,
        }
    }

    /// md's narrow_write_error: retries a failed write block by block and records the
    /// blocks that fail in the member's log. False if the member must fail instead: its
    /// log is full or cannot be written.
    fn narrow_write_error(
        &self,
        v: &View,
        m: usize,
        dev: &SharedDevice,
        b: &MemberBad,
        buf: &[u8],
        member_sector: u64,
    ) -> bool {
        let Some(meta) = &self.metadata else {
            return false;
        };
        b.write_error_seen.store(true, Ordering::SeqCst);
        let name = v.names[m].clone().unwrap_or_default();
        let mut t = lock(&b.table);
        let block = 1u64 << t.shift();
        let start = b.base + member_sector;
        let end = start + buf.len() as u64 / SECTOR;
        let mut failed: Vec<(u64, u64)> = Vec::new();
        let mut s = start;
        while s < end {
            let e = ((s / block + 1) * block).min(end);
            let from = ((s - start) * SECTOR) as usize;
            let to = ((e - start) * SECTOR) as usize;
            if dev.write_at(&buf[from..to], s * SECTOR).is_err() {
                match failed.last_mut() {
                    Some(l) if l.0 + l.1 == s => l.1 += e - s,
                    _ => failed.push((s, e - s)),
                }
            }
            s = e;
        }
        let before = t.clone();
        for &(s, n) in &failed {
            if !t.set(s, n, false) {
                tracing::warn!(
                    "raid set: {name}: its bad-block log is full ({} entries); the member fails",
                    t.capacity()
                );
                *t = before;
                return false;
            }
        }
        if failed.is_empty() {
            return true;
        }
        // What reaches the log is acknowledged, and merged with its neighbours as such.
        let mut durable = t.clone();
        durable.ack_all();
        match meta.record_bad_blocks(&name, &durable) {
            Ok(()) => {
                *t = durable;
                for (s, n) in failed {
                    tracing::warn!(
                        "raid set: {name}: write error at sectors {s} to {}; recorded in its \
                         bad-block log",
                        s + n - 1
                    );
                }
                true
            }
            Err(e) => {
                tracing::warn!("raid set: {name}: recording bad blocks failed: {e}");
                *t = before;
                false
            }
        }
    }

    /// Bad-block entries per member, for the report.
    pub(crate) fn bad_block_counts(&self) -> Vec<(String, usize)> {
        let v = self.view();
        (0..v.devs.len())
            .filter_map(|m| {
                let b = v.bad[m].as_ref()?;
                Some((v.names[m].clone()?, lock(&b.table).count()))
            })
            .collect()
    }

    /// Called before a write: marks the set dirty and the write's bitmap regions, both
    /// durably, if they are not yet.
    pub(crate) fn begin_write(&self, sector: u64, len: u64) -> BlockResult<WriteGuard<'_>> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.write_seq.fetch_add(1, Ordering::SeqCst);
        let guard = WriteGuard { core: self };
        if self.failed.load(Ordering::SeqCst) {
            return Err(self.missing("raid set"));
        }
        if self.metadata.is_none() {
            return Ok(guard);
        }
        if !self.dirty.load(Ordering::SeqCst) {
            let spares = lock(&self.state);
            if !self.dirty.load(Ordering::SeqCst) {
                self.dirty.store(true, Ordering::SeqCst);
                self.record(&self.view(), &spares);
            }
        }
        if let (Some(region), Some(meta)) = (self.region_sectors, &self.metadata) {
            let (lo, hi) = self.sync_span(sector, len);
            let wanted: Vec<u64> = (lo / region..=(hi - 1) / region).collect();
            let mut marked = lock(&self.marked);
            let new: Vec<u64> = wanted.into_iter().filter(|r| !marked.contains(r)).collect();
            if !new.is_empty() {
                meta.mark_regions(&new).map_err(|e| BlockError::Io {
                    device: "raid set".into(),
                    offset: 0,
                    len: 0,
                    source: std::io::Error::other(format!("write-intent bitmap: {e}")),
                })?;
                marked.extend(new);
            }
        }
        Ok(guard)
    }

    /// The sync sectors (member sectors for raid1/4/5/6, array sectors for raid10) that a
    /// write of `len` array sectors at `sector` touches.
    pub(crate) fn sync_span(&self, sector: u64, len: u64) -> (u64, u64) {
        match self.level() {
            Level::Raid4 | Level::Raid5 | Level::Raid6 => {
                let per = self.geo.data_sectors_per_stripe();
                let first = sector / per;
                let last = (sector + len.max(1) - 1) / per;
                (first * self.chunk_sectors, (last + 1) * self.chunk_sectors)
            }
            _ => (sector, sector + len.max(1)),
        }
    }

    /// Splits `len` sectors from `sector` at chunk boundaries: (sector, sectors, byte index).
    fn pieces(&self, sector: u64, len: u64) -> Vec<(u64, u64, usize)> {
        let mut out = Vec::new();
        let mut s = sector;
        let end = sector + len;
        while s < end {
            let in_chunk = self.chunk_sectors - s % self.chunk_sectors;
            let n = in_chunk.min(end - s);
            out.push((s, n, ((s - sector) * SECTOR) as usize));
            s += n;
        }
        out
    }

    fn copy_rows(&self, copies: &[(usize, u64)]) -> Vec<u64> {
        copies.iter().map(|(_, ms)| self.row_of(*ms)).collect()
    }

    // --- mirrored levels (raid0, raid1, raid10) ---

    pub(crate) fn read_mirrored(&self, sector: u64, buf: &mut [u8]) -> BlockResult<()> {
        let v = self.view();
        for (s, n, at) in self.pieces(sector, buf.len() as u64 / SECTOR) {
            let piece = &mut buf[at..at + (n * SECTOR) as usize];
            let copies = self.geo.data_location(s);
            let mut readable: Vec<(usize, u64)> = copies
                .iter()
                .copied()
                .filter(|(m, ms)| v.readable(*m, *ms, n))
                .collect();
            // Spread reads over the copies, one chunk to each in turn; while a resync is
            // due, read the copy it copies from, so that reads agree with each other.
            if !self.needs_resync.load(Ordering::Relaxed) && !readable.is_empty() {
                let turn = (s / self.chunk_sectors) as usize % readable.len();
                readable.rotate_left(turn);
            }
            let mut bad = Vec::new();
            let mut done = false;
            let mut last_err = None;
            for (m, ms) in readable {
                let dev = v.devs[m].as_ref().expect("readable");
                match dev.read_at(piece, self.at(ms)) {
                    Ok(()) => {
                        done = true;
                        break;
                    }
                    Err(e) => {
                        bad.push((m, ms, dev.clone()));
                        last_err = Some(e);
                    }
                }
            }
            if !done {
                for (m, _, dev) in &bad {
                    let _ = self.fail(*m, dev, self.missing("member"));
                }
                return Err(last_err.unwrap_or_else(|| self.missing("raid set")));
            }
            if !bad.is_empty() {
                self.fix_mirrored(s, n, &bad, piece);
            }
        }
        Ok(())
    }

    /// Writes good data back over copies that failed to read.
    fn fix_mirrored(&self, s: u64, n: u64, bad: &[(usize, u64, SharedDevice)], good: &[u8]) {
        let copies = self.geo.data_location(s);
        let _rows = self.rows.lock(self.copy_rows(&copies));
        // Read the good copy again under the lock: a write may have landed since.
        let v = self.view();
        let mut data = good.to_vec();
        if let Some((m, ms)) = copies
            .iter()
            .copied()
            .find(|(m, ms)| v.readable(*m, *ms, n) && !bad.iter().any(|b| b.0 == *m))
        {
            if v.devs[m]
                .as_ref()
                .expect("readable")
                .read_at(&mut data, self.at(ms))
                .is_err()
            {
                return;
            }
        }
        for (m, ms, dev) in bad {
            if !v.devs[*m].as_ref().is_some_and(|d| Arc::ptr_eq(d, dev)) {
                continue;
            }
            let failures = self.member_failures.load(Ordering::SeqCst);
            if self.write_to(&v, *m, &data, *ms, true).is_ok()
                && self.member_failures.load(Ordering::SeqCst) == failures
            {
                self.corrected_reads.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(
                    "raid set: read error on {} at sector {ms} corrected from a copy",
                    dev.name()
                );
            }
        }
    }

    pub(crate) fn write_mirrored(&self, sector: u64, buf: &[u8]) -> BlockResult<()> {
        for (s, n, at) in self.pieces(sector, buf.len() as u64 / SECTOR) {
            let piece = &buf[at..at + (n * SECTOR) as usize];
            let copies = self.geo.data_location(s);
            let _rows = self.rows.lock(self.copy_rows(&copies));
            let v = self.view();
            for &(m, ms) in &copies {
                self.write_member(&v, m, piece, ms)?;
            }
            let v = self.view();
            if !copies.iter().any(|(m, _)| v.devs[*m].is_some()) {
                return Err(self.missing("raid set"));
            }
        }
        Ok(())
    }

    /// Discard or write-zeroes on every copy (mirrored levels only).
    pub(crate) fn pass_down(&self, sector: u64, len: u64, zeroes: bool) -> BlockResult<()> {
        for (s, n, _) in self.pieces(sector, len) {
            let copies = self.geo.data_location(s);
            let _rows = self.rows.lock(self.copy_rows(&copies));
            let v = self.view();
            for (m, ms) in copies {
                if let Some(dev) = &v.devs[m] {
                    let r = if zeroes {
                        dev.write_zeroes(self.at(ms), n * SECTOR)
                    } else {
                        dev.discard(self.at(ms), n * SECTOR)
                    };
                    if let Err(e) = r {
                        self.fail(m, dev, e)?;
                    }
                }
            }
        }
        Ok(())
    }

    // --- parity levels (raid4, raid5, raid6) ---

    /// Reads rows `[lo, lo + len)` (sectors within the chunk) of every member of a stripe
    /// that is in sync there, `None` for the others. A member that fails to read is failed.
    pub(crate) fn read_rows(
        &self,
        v: &View,
        info: &StripeInfo,
        lo: u64,
        len: u64,
    ) -> BlockResult<Vec<Option<Vec<u8>>>> {
        let mut rows = Vec::with_capacity(v.devs.len());
        for m in 0..v.devs.len() {
            let ms = info.member_sector + lo;
            if !v.readable(m, ms, len) {
                rows.push(None);
                continue;
            }
            let dev = v.devs[m].as_ref().expect("readable");
            let mut b = vec![0u8; (len * SECTOR) as usize];
            match dev.read_at(&mut b, self.at(ms)) {
                Ok(()) => rows.push(Some(b)),
                Err(e) => {
                    self.fail(m, dev, e)?;
                    rows.push(None);
                }
            }
        }
        Ok(rows)
    }

    /// Fills in the missing rows from the others (data, P and Q alike).
    pub(crate) fn rebuild(
        &self,
        info: &StripeInfo,
        rows: &mut [Option<Vec<u8>>],
    ) -> BlockResult<()> {
        let missing: Vec<usize> = (0..rows.len()).filter(|&m| rows[m].is_none()).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let len = rows.iter().flatten().next().map_or(0, Vec::len);
        let data_missing: Vec<usize> = info
            .data
            .iter()
            .enumerate()
            .filter(|(_, m)| rows[**m].is_none())
            .map(|(i, _)| i)
            .collect();
        let p_missing = rows[info.p].is_none();
        let q_missing = info.q.is_some_and(|q| rows[q].is_none());
        match (data_missing.as_slice(), p_missing) {
            ([], _) => {}
            ([i], false) => {
                let mut out = rows[info.p].clone().expect("P present");
                for (j, m) in info.data.iter().enumerate() {
                    if j != *i {
                        parity::xor_into(&mut out, rows[*m].as_deref().expect("present"));
                    }
                }
                rows[info.data[*i]] = Some(out);
            }
            ([i], true) => {
                let q = info
                    .q
                    .and_then(|q| rows[q].clone())
                    .ok_or_else(|| self.missing("raid set"))?;
                let data = syndrome_order(info, rows);
                let mut out = vec![0u8; len];
                parity::recover_one_from_q(&data, syndrome_index(info, *i), &q, &mut out);
                rows[info.data[*i]] = Some(out);
            }
            ([a, b], false) if info.q.is_some() && !q_missing => {
                let p = rows[info.p].clone().expect("P present");
                let q = rows[info.q.expect("raid6")].clone().expect("Q present");
                let data = syndrome_order(info, rows);
                let (mut oa, mut ob) = (vec![0u8; len], vec![0u8; len]);
                parity::recover_two(
                    &data,
                    syndrome_index(info, *a),
                    syndrome_index(info, *b),
                    &p,
                    &q,
                    &mut oa,
                    &mut ob,
                );
                rows[info.data[*a]] = Some(oa);
                rows[info.data[*b]] = Some(ob);
            }
            _ => return Err(self.missing("raid set")),
        }
        if p_missing || q_missing {
            let (p, q) = compute_parity(info, rows, len);
            if p_missing {
                rows[info.p] = Some(p);
            }
            if let (true, Some(qi), Some(q)) = (q_missing, info.q, q) {
                rows[qi] = Some(q);
            }
        }
        Ok(())
    }

    pub(crate) fn read_parity_level(&self, sector: u64, buf: &mut [u8]) -> BlockResult<()> {
        for (s, n, at) in self.pieces(sector, buf.len() as u64 / SECTOR) {
            let piece = &mut buf[at..at + (n * SECTOR) as usize];
            let info = self.geo.stripe_of(s);
            let i = ((s / self.chunk_sectors) % info.data.len() as u64) as usize;
            let off = s % self.chunk_sectors;
            let member = info.data[i];
            let ms = info.member_sector + off;
            let v = self.view();
            let mut bad = None;
            if v.readable(member, ms, n) {
                let dev = v.devs[member].as_ref().expect("readable");
                match dev.read_at(piece, self.at(ms)) {
                    Ok(()) => continue,
                    Err(_) => bad = Some(dev.clone()),
                }
            }
            let _stripe = self.rows.lock(vec![info.stripe]);
            let v = self.view();
            let view = if bad.is_some() {
                v.without(member)
            } else {
                (*v).clone()
            };
            let mut rows = self.read_rows(&view, &info, off, n)?;
            self.rebuild(&info, &mut rows)?;
            piece.copy_from_slice(rows[member].as_deref().expect("rebuilt"));
            if let Some(dev) = bad {
                // Answered from parity; write the data back over the bad sectors.
                if v.devs[member]
                    .as_ref()
                    .is_some_and(|d| Arc::ptr_eq(d, &dev))
                {
                    let failures = self.member_failures.load(Ordering::SeqCst);
                    self.write_to(&v, member, piece, ms, true)?;
                    if self.member_failures.load(Ordering::SeqCst) == failures {
                        self.corrected_reads.fetch_add(n, Ordering::Relaxed);
                        tracing::warn!(
                            "raid set: read error on {} at sector {ms} corrected from parity",
                            dev.name()
                        );
                    }
                }
            }
        }
        Ok(())
    }

    pub(crate) fn write_parity_level(&self, sector: u64, buf: &[u8]) -> BlockResult<()> {
        let pieces = self.pieces(sector, buf.len() as u64 / SECTOR);
        let mut k = 0;
        while k < pieces.len() {
            let info = self.geo.stripe_of(pieces[k].0);
            let mut group = vec![pieces[k]];
            k += 1;
            while k < pieces.len() && self.geo.stripe_of(pieces[k].0).stripe == info.stripe {
                group.push(pieces[k]);
                k += 1;
            }
            let _stripe = self.rows.lock(vec![info.stripe]);
            // A member failing under the write sends it round again, degraded; one that
            // only failed a read goes round with its rows rebuilt and rewritten.
            let mut tries = 0;
            let mut unreadable = Vec::new();
            loop {
                let v = self.view();
                match self.write_stripe(&v, &info, &group, buf, &unreadable)? {
                    Step::Done => break,
                    Step::Unreadable(m) if !unreadable.contains(&m) => unreadable.push(m),
                    _ if tries < v.devs.len() => tries += 1,
                    _ => return Err(self.missing("raid set")),
                }
            }
        }
        Ok(())
    }

    /// A read of member `m` failed during a write: rebuild its rows from the others if
    /// the stripe still has the redundancy for it (then the member stays, and the rewrite
    /// fixes the sectors or records them in its bad-block log), else fail it.
    fn read_failed(
        &self,
        v: &View,
        info: &StripeInfo,
        unreadable: &[usize],
        m: usize,
        range: (u64, u64),
        error: BlockError,
    ) -> BlockResult<Step> {
        let redundancy = 1 + usize::from(info.q.is_some());
        let missing = (0..v.devs.len())
            .filter(|&k| {
                k != m
                    && (unreadable.contains(&k)
                        || !v.readable(k, info.member_sector + range.0, range.1))
            })
            .count();
        if missing < redundancy {
            return Ok(Step::Unreadable(m));
        }
        let dev = v.devs[m].as_ref().expect("read from");
        self.fail(m, dev, error)?;
        Ok(Step::Retry)
    }

    /// Writes the pieces of one stripe and its new parity. Members in `unreadable` failed
    /// to read rows of this stripe: their rows are rebuilt and written back.
    fn write_stripe(
        &self,
        v: &View,
        info: &StripeInfo,
        group: &[(u64, u64, usize)],
        buf: &[u8],
        unreadable: &[usize],
    ) -> BlockResult<Step> {
        let ndata = info.data.len() as u64;
        let touched: Vec<(usize, u64, u64, usize)> = group
            .iter()
            .map(|&(s, n, at)| {
                (
                    ((s / self.chunk_sectors) % ndata) as usize,
                    s % self.chunk_sectors,
                    n,
                    at,
                )
            })
            .collect();
        let lo = touched.iter().map(|t| t.1).min().unwrap_or(0);
        let hi = touched.iter().map(|t| t.1 + t.2).max().unwrap_or(0);
        let degraded = !unreadable.is_empty()
            || (0..v.devs.len()).any(|m| !v.readable(m, info.member_sector + lo, hi - lo));
        if !degraded && info.q.is_none() && touched.len() * 2 < info.data.len() {
            return self.read_modify_write(v, info, &touched, buf);
        }
        // Reconstruct-write over rows [lo, hi): the new data laid over the rest of the
        // stripe's rows, parity computed anew. Whole stripes are taken as they come, with no
        // reads; otherwise only the data rows the write does not cover are read (all rows,
        // with the missing ones rebuilt, when degraded).
        let mut rows = if degraded {
            let before = self.member_failures.load(Ordering::SeqCst);
            let read_view = unreadable
                .iter()
                .fold(v.clone(), |view, &m| view.without(m));
            let mut rows = self.read_rows(&read_view, info, lo, hi - lo)?;
            if self.member_failures.load(Ordering::SeqCst) != before {
                return Ok(Step::Retry);
            }
            self.rebuild(info, &mut rows)?;
            rows
        } else {
            let len = ((hi - lo) * SECTOR) as usize;
            let mut rows: Vec<Option<Vec<u8>>> = vec![None; v.devs.len()];
            for (i, &m) in info.data.iter().enumerate() {
                let covered = touched
                    .iter()
                    .any(|t| t.0 == i && t.1 <= lo && t.1 + t.2 >= hi);
                let mut row = vec![0u8; len];
                if !covered {
                    let dev = v.devs[m].as_ref().expect("not degraded");
                    if let Err(e) = dev.read_at(&mut row, self.at(info.member_sector + lo)) {
                        return self.read_failed(v, info, unreadable, m, (lo, hi - lo), e);
                    }
                }
                rows[m] = Some(row);
            }
            rows
        };
        for &(i, off, n, at) in &touched {
            let row = rows[info.data[i]].as_mut().expect("rebuilt");
            let from = ((off - lo) * SECTOR) as usize;
            row[from..from + (n * SECTOR) as usize]
                .copy_from_slice(&buf[at..at + (n * SECTOR) as usize]);
        }
        let (p, q) = compute_parity(info, &rows, ((hi - lo) * SECTOR) as usize);
        for &(i, off, n, at) in &touched {
            if unreadable.contains(&info.data[i]) {
                continue;
            }
            self.write_member(
                v,
                info.data[i],
                &buf[at..at + (n * SECTOR) as usize],
                info.member_sector + off,
            )?;
        }
        // The rows that failed to read, whole: rewritten, or recorded bad if they fail.
        for &m in unreadable {
            if m == info.p || Some(m) == info.q {
                continue;
            }
            if let Some(row) = rows[m].as_ref() {
                self.write_to(v, m, row, info.member_sector + lo, true)?;
            }
        }
        self.write_member(v, info.p, &p, info.member_sector + lo)?;
        if let (Some(qi), Some(q)) = (info.q, q) {
            self.write_member(v, qi, &q, info.member_sector + lo)?;
        }
        Ok(Step::Done)
    }

    /// raid4/5 with every member in sync and few chunks touched: new P = old P ^ old data ^
    /// new data, reading only what changes.
    fn read_modify_write(
        &self,
        v: &View,
        info: &StripeInfo,
        touched: &[(usize, u64, u64, usize)],
        buf: &[u8],
    ) -> BlockResult<Step> {
        let pdev = v.devs[info.p].as_ref().expect("not degraded");
        for &(i, off, n, at) in touched {
            let bytes = (n * SECTOR) as usize;
            let m = info.data[i];
            let dev = v.devs[m].as_ref().expect("not degraded");
            let ms = info.member_sector + off;
            let mut old = vec![0u8; bytes];
            if let Err(e) = dev.read_at(&mut old, self.at(ms)) {
                return self.read_failed(v, info, &[], m, (off, n), e);
            }
            let mut p = vec![0u8; bytes];
            if let Err(e) = pdev.read_at(&mut p, self.at(ms)) {
                return self.read_failed(v, info, &[], info.p, (off, n), e);
            }
            let new = &buf[at..at + bytes];
            parity::xor_into(&mut p, &old);
            parity::xor_into(&mut p, new);
            self.write_member(v, m, new, ms)?;
            self.write_member(v, info.p, &p, ms)?;
        }
        Ok(Step::Done)
    }

    pub(crate) fn flush(&self) -> BlockResult<()> {
        let v = self.view();
        for (m, dev) in v.devs.iter().enumerate() {
            if let Some(dev) = dev {
                if let Err(e) = dev.flush() {
                    self.fail(m, dev, e)?;
                }
            }
        }
        if self.failed.load(Ordering::SeqCst) {
            return Err(self.missing("raid set"));
        }
        Ok(())
    }
}

/// Ends a write: the set may go clean once none is in flight.
pub(crate) struct WriteGuard<'a> {
    core: &'a Core,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        let now = self.core.now_ms();
        self.core.last_write_ms.store(now, Ordering::SeqCst);
        self.core.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The data rows in the order of the Q syndrome's coefficients.
pub(crate) fn syndrome_order<'a>(
    info: &StripeInfo,
    rows: &'a [Option<Vec<u8>>],
) -> Vec<Option<&'a [u8]>> {
    info.syndrome
        .iter()
        .map(|slot| slot.and_then(|m| rows[m].as_deref()))
        .collect()
}

/// Where data index `i` of the stripe sits in the syndrome.
fn syndrome_index(info: &StripeInfo, i: usize) -> usize {
    let member = info.data[i];
    info.syndrome
        .iter()
        .position(|s| *s == Some(member))
        .expect("every data member is in the syndrome")
}

/// P (and Q for raid6) of a stripe's whole data rows.
pub(crate) fn compute_parity(
    info: &StripeInfo,
    rows: &[Option<Vec<u8>>],
    len: usize,
) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut p = vec![0u8; len];
    match info.q {
        None => {
            let data: Vec<&[u8]> = info
                .data
                .iter()
                .map(|m| rows[*m].as_deref().expect("whole"))
                .collect();
            parity::xor_blocks(&mut p, &data);
            (p, None)
        }
        Some(_) => {
            let zero = vec![0u8; len];
            let data: Vec<&[u8]> = info
                .syndrome
                .iter()
                .map(|slot| slot.and_then(|m| rows[m].as_deref()).unwrap_or(&zero))
                .collect();
            let mut q = vec![0u8; len];
            parity::gen_pq(&data, &mut p, &mut q);
            (p, Some(q))
        }
    }
}
