//! The set's background work, one thread per running set, as md's sync thread and its
//! safe-mode timer: recovery onto a member taking over a slot (checkpointed in the records,
//! so a restart resumes), resync after an unclean stop (only the dirty bitmap regions when
//! there is a bitmap), `check` and `repair`, and marking the set clean once writes stop.
//!
//! Work goes a unit at a time under the unit's row locks: a row of the members (raid1,
//! raid4/5/6) or an array chunk (raid10, whose sync sectors are array sectors as in md).
//! Between units it gives way to client I/O down to the minimum rate, and never exceeds the
//! maximum (KiB/s of sync sectors, md's `speed_limit_min`/`speed_limit_max`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tessera_block::Result as BlockResult;

use crate::layout::Level;
use crate::set::{compute_parity, lock, Core, View, IN_SYNC, SECTOR};

/// md's safe-mode delay: how long after the last write the set is marked clean.
pub const SAFE_MODE_DELAY: Duration = Duration::from_millis(200);
/// How often recovery records how far it got.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// md's defaults, KiB/s.
pub const DEFAULT_MIN_RATE: u64 = 1_000;
pub const DEFAULT_MAX_RATE: u64 = 200_000;
/// A unit compared in pieces of this size: md counts mismatches per 4 KiB page.
const PAGE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Idle,
    Frozen,
    Resync,
    Recover,
    Check,
    Repair,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Idle => "idle",
            Action::Frozen => "frozen",
            Action::Resync => "resync",
            Action::Recover => "recover",
            Action::Check => "check",
            Action::Repair => "repair",
        }
    }
}

/// How the last piece of work ended, for status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    pub action: Action,
    /// Sync sectors covered.
    pub sectors: u64,
    pub mismatches: u64,
    pub millis: u64,
    /// Whether it ran to the end (an interrupted one resumes or is asked for again).
    pub complete: bool,
}

pub(crate) struct SyncState {
    pub stop: bool,
    pub frozen: bool,
    pub requested: Option<Action>,
    pub action: Action,
    /// Progress of the current action, in sync sectors.
    pub pos: u64,
    pub total: u64,
    /// Mismatched sectors found by the current (or last) check, repair or resync.
    pub mismatches: u64,
    /// Units still to resync, when a bitmap says which; `None` means all of them.
    pub resync_units: Option<Vec<(u64, u64)>>,
    pub last: Option<Finished>,
    pub min_rate: u64,
    pub max_rate: u64,
}

pub(crate) struct Sync {
    pub state: Mutex<SyncState>,
    pub wake: Condvar,
}

impl Sync {
    pub(crate) fn new() -> Self {
        Sync {
            state: Mutex::new(SyncState {
                stop: false,
                frozen: false,
                requested: None,
                action: Action::Idle,
                pos: 0,
                total: 0,
                mismatches: 0,
                resync_units: None,
                last: None,
                min_rate: DEFAULT_MIN_RATE,
                max_rate: DEFAULT_MAX_RATE,
            }),
            wake: Condvar::new(),
        }
    }

    pub(crate) fn poke(&self) {
        self.wake.notify_all();
    }

    fn should_stop(&self, action: Action) -> bool {
        let st = lock(&self.state);
        st.stop
            || st.frozen
            || (matches!(action, Action::Check | Action::Repair)
                && st.requested == Some(Action::Idle))
    }
}

/// The worker's loop; returns when asked to stop.
pub(crate) fn run(core: Arc<Core>, sync: Arc<Sync>) {
    loop {
        {
            let st = lock(&sync.state);
            if st.stop {
                return;
            }
        }
        safe_mode_tick(&core, false);
        match next_action(&core, &sync) {
            Some(action) => {
                if let Err(e) = run_action(&core, &sync, action) {
                    tracing::error!("raid set: {} stopped: {e}", action.name());
                    // Do not spin on a set that cannot do the work; wait to be poked.
                    let st = lock(&sync.state);
                    let _ = sync.wake.wait_timeout(st, Duration::from_secs(1));
                }
            }
            None => {
                let st = lock(&sync.state);
                if !st.stop {
                    let _ = sync
                        .wake
                        .wait_timeout(st, Duration::from_millis(50))
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
    }
}

fn next_action(core: &Core, sync: &Sync) -> Option<Action> {
    if core.failed.load(Ordering::SeqCst) {
        return None;
    }
    let mut st = lock(&sync.state);
    if st.frozen || st.stop {
        return None;
    }
    let v = core.view();
    if recovering(&v).is_some() && core.level() != Level::Raid0 {
        return Some(Action::Recover);
    }
    let whole = (0..v.devs.len()).all(|m| v.devs[m].is_some() && v.synced[m] == IN_SYNC);
    if core.needs_resync.load(Ordering::SeqCst) && whole && core.level() != Level::Raid0 {
        return Some(Action::Resync);
    }
    match st.requested.take() {
        Some(a @ (Action::Check | Action::Repair)) if whole => Some(a),
        Some(a @ (Action::Check | Action::Repair)) => {
            tracing::warn!("raid set: {} refused: the set is degraded", a.name());
            None
        }
        _ => None,
    }
}

fn recovering(v: &View) -> Option<usize> {
    (0..v.devs.len()).find(|&m| v.devs[m].is_some() && v.synced[m] != IN_SYNC)
}

/// Marks the set clean if no write has come for the safe-mode delay (`now`: at once, for a
/// set being suspended or stopped).
pub(crate) fn safe_mode_tick(core: &Core, now: bool) {
    if core.metadata.is_none() || !core.dirty.load(Ordering::SeqCst) {
        return;
    }
    let idle_for = core
        .now_ms()
        .saturating_sub(core.last_write_ms.load(Ordering::SeqCst));
    if !now
        && (core.in_flight.load(Ordering::SeqCst) != 0
            || idle_for < SAFE_MODE_DELAY.as_millis() as u64)
    {
        return;
    }
    let seq = core.write_seq.load(Ordering::SeqCst);
    // Completed writes must be durable before the records say the set is consistent.
    if core.flush().is_err() {
        return;
    }
    let spares = lock(&core.state);
    core.dirty.store(false, Ordering::SeqCst);
    if core.in_flight.load(Ordering::SeqCst) != 0 || core.write_seq.load(Ordering::SeqCst) != seq {
        core.dirty.store(true, Ordering::SeqCst);
        return;
    }
    lock(&core.marked).clear();
    core.record(&core.view(), &spares);
}

/// Paces the work: above the minimum rate it waits while clients do I/O, and it never goes
/// above the maximum.
struct Pace {
    mark: Instant,
    sectors: u64,
}

impl Pace {
    fn new() -> Self {
        Pace {
            mark: Instant::now(),
            sectors: 0,
        }
    }

    fn step(&mut self, core: &Core, sync: &Sync, sectors: u64) {
        self.sectors += sectors;
        loop {
            let (min, max) = {
                let st = lock(&sync.state);
                if st.stop {
                    return;
                }
                (st.min_rate, st.max_rate)
            };
            let secs = self.mark.elapsed().as_secs_f64().max(1e-3);
            let rate = self.sectors as f64 * SECTOR as f64 / 1024.0 / secs;
            let busy = core
                .now_ms()
                .saturating_sub(core.last_io_ms.load(Ordering::Relaxed))
                < 500;
            if rate <= min as f64 || (rate <= max as f64 && !busy) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.mark.elapsed() > Duration::from_secs(3) {
            *self = Pace::new();
        }
    }
}

fn run_action(core: &Core, sync: &Sync, action: Action) -> BlockResult<()> {
    let started = Instant::now();
    let (done, mismatches, complete) = match action {
        Action::Recover => recover(core, sync)?,
        _ => scrub(core, sync, action)?,
    };
    // What resync and repair wrote is durable once the action ends.
    core.flush()?;
    let mut st = lock(&sync.state);
    st.action = Action::Idle;
    st.last = Some(Finished {
        action,
        sectors: done,
        mismatches,
        millis: started.elapsed().as_millis() as u64,
        complete,
    });
    if complete {
        tracing::info!(
            "raid set: {} finished: {done} sectors, {mismatches} mismatched, {:.1} s",
            action.name(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Rebuilds the first recovering member, row by row from where it got to.
fn recover(core: &Core, sync: &Sync) -> BlockResult<(u64, u64, bool)> {
    let v = core.view();
    let Some(m) = recovering(&v) else {
        return Ok((0, 0, true));
    };
    let dev = v.devs[m].clone().expect("recovering members are present");
    let chunk = core.chunk_sectors;
    let total = core.member_sectors;
    let first = v.synced[m] / chunk;
    {
        let mut st = lock(&sync.state);
        st.action = Action::Recover;
        st.total = total;
        st.pos = first * chunk;
        st.mismatches = 0;
    }
    let mut pace = Pace::new();
    let mut checkpoint = Instant::now();
    let mut done = 0;
    let rows = total.div_ceil(chunk);
    for row in first..rows {
        if sync.should_stop(Action::Recover) {
            core.flush()?;
            let spares = lock(&core.state);
            core.record(&core.view(), &spares);
            return Ok((done, 0, false));
        }
        core.recover_row(m, row)?;
        let end = ((row + 1) * chunk).min(total);
        {
            let spares = lock(&core.state);
            let current = core.view();
            if !current.devs[m]
                .as_ref()
                .is_some_and(|d| Arc::ptr_eq(d, &dev))
            {
                // The member failed while being rebuilt; recovery starts over for whatever
                // took its place.
                return Ok((done, 0, false));
            }
            let mut next = (*current).clone();
            next.synced[m] = if end >= total { IN_SYNC } else { end };
            core.set_view(next.clone());
            if end >= total || checkpoint.elapsed() >= CHECKPOINT_EVERY {
                // The rebuilt rows must be durable before the records say so.
                drop(spares);
                core.flush()?;
                let spares = lock(&core.state);
                core.record(&core.view(), &spares);
                checkpoint = Instant::now();
            }
        }
        done += end - row * chunk;
        lock(&sync.state).pos = end;
        pace.step(core, sync, end - row * chunk);
    }
    Ok((done, 0, true))
}

/// Resync, check or repair: every unit (or, for a resync with a bitmap, the units of the
/// dirty regions), comparing redundancy with data and writing it anew where asked.
fn scrub(core: &Core, sync: &Sync, action: Action) -> BlockResult<(u64, u64, bool)> {
    let unit = core.chunk_sectors;
    let total = core.sync_sectors();
    let units = total.div_ceil(unit);
    let ranges = {
        let mut st = lock(&sync.state);
        st.action = action;
        st.total = total;
        st.pos = 0;
        st.mismatches = 0;
        match (action, &st.resync_units) {
            (Action::Resync, Some(r)) => r.clone(),
            _ => vec![(0, units)],
        }
    };
    let write = action != Action::Check;
    let mut pace = Pace::new();
    let mut done = 0;
    let mut mismatches = 0;
    for (lo, hi) in ranges {
        for u in lo..hi.min(units) {
            if sync.should_stop(action) {
                return Ok((done, mismatches, false));
            }
            let found = core.scrub_unit(u, write)?;
            mismatches += found;
            let sectors = unit.min(total - u * unit);
            done += sectors;
            {
                let mut st = lock(&sync.state);
                st.pos = u * unit + sectors;
                st.mismatches = mismatches;
            }
            pace.step(core, sync, sectors);
        }
    }
    if action == Action::Resync {
        core.flush()?;
        lock(&sync.state).resync_units = None;
        let spares = lock(&core.state);
        core.needs_resync.store(false, Ordering::SeqCst);
        core.record(&core.view(), &spares);
    }
    Ok((done, mismatches, true))
}

impl Core {
    /// md's sync size: member sectors for raid1/4/5/6, array sectors for raid10.
    pub(crate) fn sync_sectors(&self) -> u64 {
        match self.level() {
            Level::Raid10 => self.geo.array_sectors(),
            Level::Raid0 => 0,
            _ => self.member_sectors,
        }
    }

    /// Rebuilds row `row` of the member in slot `m` from the others.
    fn recover_row(&self, m: usize, row: u64) -> BlockResult<()> {
        let chunk = self.chunk_sectors;
        let start = row * chunk;
        let n = chunk.min(self.member_sectors - start);
        match self.level() {
            Level::Raid4 | Level::Raid5 | Level::Raid6 => {
                let info = self.geo.stripe_of(row * self.geo.data_sectors_per_stripe());
                let _rows = self.rows.lock(vec![info.stripe]);
                let v = self.view();
                let mut rows = self.read_rows(&v, &info, 0, n)?;
                self.rebuild(&info, &mut rows)?;
                self.write_recovered(&v, m, rows[m].as_deref().expect("rebuilt"), start)
            }
            Level::Raid1 => {
                let _rows = self.rows.lock(vec![row]);
                let v = self.view();
                let source = (0..v.devs.len()).find(|&s| s != m && v.readable(s, start, n));
                self.copy_to(&v, source, m, start, start, n)
            }
            Level::Raid10 => {
                let Some(virt) = self.geo.raid10_virtual(m, start) else {
                    return Ok(());
                };
                if virt >= self.geo.array_sectors() {
                    return Ok(());
                }
                let copies = self.geo.data_location(virt);
                let _rows = self
                    .rows
                    .lock(copies.iter().map(|(_, ms)| self.row_of(*ms)).collect());
                let v = self.view();
                let source = copies
                    .iter()
                    .find(|(s, ms)| *s != m && v.readable(*s, *ms, n))
                    .copied();
                let mine = copies
                    .iter()
                    .find(|(c, _)| *c == m)
                    .map_or(start, |(_, ms)| *ms);
                match source {
                    Some((s, ms)) => self.copy_to(&v, Some(s), m, ms, mine, n),
                    None => self.copy_to(&v, None, m, 0, mine, n),
                }
            }
            Level::Raid0 => Ok(()),
        }
    }

    fn copy_to(
        &self,
        v: &View,
        source: Option<usize>,
        m: usize,
        from: u64,
        to: u64,
        n: u64,
    ) -> BlockResult<()> {
        let Some(s) = source else {
            return Err(tessera_block::BlockError::Io {
                device: v.names[m].clone().unwrap_or_default(),
                offset: to * SECTOR,
                len: n * SECTOR,
                source: std::io::Error::other("no member in sync holds this chunk"),
            });
        };
        let dev = v.devs[s].as_ref().expect("readable");
        let mut buf = vec![0u8; (n * SECTOR) as usize];
        if let Err(e) = dev.read_at(&mut buf, self.at(from)) {
            self.fail(s, dev, e)?;
            return self.copy_to(v, None, m, from, to, n);
        }
        self.write_recovered(v, m, &buf, to)
    }

    fn write_recovered(
        &self,
        v: &View,
        m: usize,
        buf: &[u8],
        member_sector: u64,
    ) -> BlockResult<()> {
        self.write_to(v, m, buf, member_sector, true)
    }

    /// Compares one unit's redundancy with its data; with `write`, makes it agree (parity
    /// recomputed from data, copies from the first). Returns the mismatched sectors, counted
    /// per 4 KiB as md does.
    fn scrub_unit(&self, unit: u64, write: bool) -> BlockResult<u64> {
        let chunk = self.chunk_sectors;
        match self.level() {
            Level::Raid4 | Level::Raid5 | Level::Raid6 => {
                let info = self
                    .geo
                    .stripe_of(unit * self.geo.data_sectors_per_stripe());
                let _rows = self.rows.lock(vec![info.stripe]);
                let v = self.view();
                let mut rows = self.read_rows(&v, &info, 0, chunk)?;
                let missing: Vec<usize> = (0..rows.len()).filter(|&m| rows[m].is_none()).collect();
                if !missing.is_empty() {
                    // Members whole here but with recorded bad blocks: a repair or resync
                    // rewrites their part from the others, which clears the records.
                    let ms = info.member_sector;
                    if !write || !missing.iter().all(|&m| v.whole_at(m, ms, chunk)) {
                        return Ok(0);
                    }
                    self.rebuild(&info, &mut rows)?;
                    for m in missing {
                        let row = rows[m].as_deref().expect("rebuilt");
                        self.write_to(&v, m, row, ms, true)?;
                    }
                    return Ok(0);
                }
                let len = (chunk * SECTOR) as usize;
                let (p, q) = compute_parity(&info, &rows, len);
                let mut found = 0;
                let mut fix = |member: usize, want: &[u8]| -> BlockResult<()> {
                    let have = rows[member].as_deref().expect("read");
                    let bad = pages_differing(have, want);
                    found += bad * (PAGE as u64 / SECTOR);
                    if write && bad > 0 {
                        self.write_to(&v, member, want, info.member_sector, true)?;
                    }
                    Ok(())
                };
                fix(info.p, &p)?;
                if let (Some(qi), Some(q)) = (info.q, q) {
                    fix(qi, &q)?;
                }
                Ok(found)
            }
            Level::Raid1 | Level::Raid10 => {
                let start = unit * chunk;
                let (copies, n) = if self.level() == Level::Raid1 {
                    let n = chunk.min(self.member_sectors - start);
                    (
                        (0..self.geo.raid_disks())
                            .map(|m| (m, start))
                            .collect::<Vec<_>>(),
                        n,
                    )
                } else {
                    (self.geo.data_location(start), chunk)
                };
                let _rows = self
                    .rows
                    .lock(copies.iter().map(|(_, ms)| self.row_of(*ms)).collect());
                let v = self.view();
                let mut first: Option<Vec<u8>> = None;
                let mut found = 0;
                let mut recorded_bad = Vec::new();
                for (m, ms) in copies {
                    if !v.readable(m, ms, n) {
                        if v.whole_at(m, ms, n) {
                            recorded_bad.push((m, ms));
                        }
                        continue;
                    }
                    let dev = v.devs[m].as_ref().expect("readable");
                    let mut buf = vec![0u8; (n * SECTOR) as usize];
                    if let Err(e) = dev.read_at(&mut buf, self.at(ms)) {
                        self.fail(m, dev, e)?;
                        continue;
                    }
                    match &first {
                        None => first = Some(buf),
                        Some(good) => {
                            let bad = pages_differing(&buf, good);
                            found = found.max(bad * (PAGE as u64 / SECTOR));
                            if write && bad > 0 {
                                self.write_to(&v, m, good, ms, true)?;
                            }
                        }
                    }
                }
                // Copies with recorded bad blocks: a repair or resync rewrites them from a
                // good one, which clears the records.
                if let (true, Some(good)) = (write, &first) {
                    for (m, ms) in recorded_bad {
                        self.write_to(&v, m, good, ms, true)?;
                    }
                }
                Ok(found)
            }
            Level::Raid0 => Ok(0),
        }
    }
}

fn pages_differing(a: &[u8], b: &[u8]) -> u64 {
    a.chunks(PAGE)
        .zip(b.chunks(PAGE))
        .filter(|(x, y)| x != y)
        .count() as u64
}
