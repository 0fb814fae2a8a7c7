//! The `raid` target: an MD array run in user space, in dm-raid's table syntax,
//!
//! `raid <raid_type> <#params> <chunk_size> [data_offset <sectors>] [raid10_copies <n>]
//!  [raid10_format near|far|offset] [rebuild <slot>]... [min_recovery_rate <KiB/s>]
//!  [max_recovery_rate <KiB/s>] [spare <dev>]... [sync|nosync] <#devs> <meta_dev> <dev>...`
//!
//! with `-` for a missing device (and for the metadata devices: an MD array's records are
//! its superblocks, which the engine keeps through [`SetMetadata`]). Types are dm-raid's
//! (raid0, raid1, raid10, raid4 = parity on the first member, raid5_la/ra/ls/rs/n,
//! raid6_zr/nr/nc/n_6/la_6/ra_6/ls_6/rs_6/0_6) plus the md raid6 layouts dm-raid has no name
//! for (raid6_la/ra/ls/rs/0/n, and raid5_0 for parity-first raid5), so every array mdadm
//! makes can be described. As dm-raid does, the per-member data size is derived from the
//! row's length. `spare` is tessera's: a device that takes the slot of a member that fails.
//!
//! Status is dm-raid's (`<type> <#devs> <health A/a/D> <synced>/<total> <sync_action>
//! <mismatch_cnt> <data_offset> -`), and so are the sync messages (`check`, `repair`,
//! `idle`, `frozen`, `resync`, `recover`); see [`Raid::message`] for tessera's own.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use tessera_block::{Result as BlockResult, SharedDevice};
use tessera_mapper::{escape_arg, StatusType, Target, TargetArgs, TargetError};

use crate::layout::{Geometry, Level};
use crate::metadata::SetMetadata;
use crate::set::{lock, Core, MemberBad, Spares, View, IN_SYNC};
use crate::sync::{self, Action, Sync};

/// dm-raid's type names (and tessera's additions) as md levels and layouts.
fn raid_type(name: &str) -> Option<(Level, u32)> {
    Some(match name {
        "raid0" => (Level::Raid0, 0),
        "raid1" => (Level::Raid1, 0),
        "raid10" => (Level::Raid10, 0x102),
        "raid4" | "raid5_0" => (Level::Raid5, 4),
        "raid5_la" => (Level::Raid5, 0),
        "raid5_ra" => (Level::Raid5, 1),
        "raid5_ls" => (Level::Raid5, 2),
        "raid5_rs" => (Level::Raid5, 3),
        "raid5_n" => (Level::Raid5, 5),
        "raid6_la" => (Level::Raid6, 0),
        "raid6_ra" => (Level::Raid6, 1),
        "raid6_ls" => (Level::Raid6, 2),
        "raid6_rs" => (Level::Raid6, 3),
        "raid6_0" => (Level::Raid6, 4),
        "raid6_n" | "raid6_n_6" => (Level::Raid6, 5),
        "raid6_zr" => (Level::Raid6, 8),
        "raid6_nr" => (Level::Raid6, 9),
        "raid6_nc" => (Level::Raid6, 10),
        "raid6_la_6" => (Level::Raid6, 16),
        "raid6_ra_6" => (Level::Raid6, 17),
        "raid6_ls_6" => (Level::Raid6, 18),
        "raid6_rs_6" => (Level::Raid6, 19),
        "raid6_0_6" => (Level::Raid6, 20),
        _ => return None,
    })
}

/// The dm-raid type name for an md level and layout (md's level 4 is raid5 with parity on
/// the last member), for building tables from superblocks.
pub fn type_name(level: i32, layout: u32) -> Option<&'static str> {
    Some(match (level, layout) {
        (0, _) => "raid0",
        (1, _) => "raid1",
        (10, _) => "raid10",
        (4, _) => "raid5_n",
        (5, 0) => "raid5_la",
        (5, 1) => "raid5_ra",
        (5, 2) => "raid5_ls",
        (5, 3) => "raid5_rs",
        (5, 4) => "raid5_0",
        (5, 5) => "raid5_n",
        (6, 0) => "raid6_la",
        (6, 1) => "raid6_ra",
        (6, 2) => "raid6_ls",
        (6, 3) => "raid6_rs",
        (6, 4) => "raid6_0",
        (6, 5) => "raid6_n_6",
        (6, 8) => "raid6_zr",
        (6, 9) => "raid6_nr",
        (6, 10) => "raid6_nc",
        (6, 16) => "raid6_la_6",
        (6, 17) => "raid6_ra_6",
        (6, 18) => "raid6_ls_6",
        (6, 19) => "raid6_rs_6",
        (6, 20) => "raid6_0_6",
        _ => return None,
    })
}

/// md's raid10 layout word from dm-raid's copies and format.
fn raid10_layout(copies: u32, format: &str) -> Option<u32> {
    Some(match format {
        "near" => copies | (1 << 8),
        "far" => 1 | (copies << 8),
        "offset" => 1 | (copies << 8) | (1 << 16),
        _ => return None,
    })
}

/// Builds the target from its table row; registered as `raid`.
pub fn construct(args: &TargetArgs<'_>) -> Result<Box<dyn Target>, TargetError> {
    construct_with(args, None)
}

/// Builds the target with `metadata` keeping its records (md superblocks for MD arrays).
pub fn construct_with(
    args: &TargetArgs<'_>,
    metadata: Option<Arc<dyn SetMetadata>>,
) -> Result<Box<dyn Target>, TargetError> {
    let mut r = args.reader();
    let type_name = r.next("raid_type")?;
    let (level, mut layout) = raid_type(type_name)
        .ok_or_else(|| TargetError::Invalid(format!("unknown raid type {type_name:?}")))?;
    let nparams: usize = r.number("#raid_params")?;
    if nparams == 0 {
        return Err(TargetError::Missing("chunk_size"));
    }
    let chunk_sectors: u64 = r.number("chunk_size")?;
    if chunk_sectors == 0 && level != Level::Raid1 {
        return Err(TargetError::Invalid(
            "chunk_size 0: only raid1 has no chunks".into(),
        ));
    }
    let mut params = vec![chunk_sectors.to_string()];
    let mut data_offset = 0u64;
    let mut copies = 2u32;
    let mut format = "near".to_string();
    let mut rebuild = Vec::new();
    let mut spare_names = Vec::new();
    let (mut min_rate, mut max_rate) = (None, None);
    let mut left = nparams - 1;
    while left > 0 {
        let key = r.next("raid_param")?;
        params.push(key.to_string());
        left -= 1;
        match key {
            "sync" | "nosync" => continue,
            "data_offset" | "raid10_copies" | "raid10_format" | "region_size" | "stripe_cache"
            | "min_recovery_rate" | "max_recovery_rate" | "rebuild" | "write_mostly"
            | "max_write_behind" | "daemon_sleep" | "spare" => {}
            other => {
                return Err(TargetError::Invalid(format!(
                    "unknown raid parameter {other:?}"
                )))
            }
        }
        if left == 0 {
            return Err(TargetError::Missing("raid parameter value"));
        }
        let value = r.next("raid parameter value")?;
        params.push(value.to_string());
        left -= 1;
        match key {
            "data_offset" => data_offset = parse(value, "data_offset")?,
            "raid10_copies" => copies = parse(value, "raid10_copies")?,
            "raid10_format" => format = value.to_string(),
            "rebuild" => rebuild.push(parse::<usize>(value, "rebuild")?),
            "min_recovery_rate" => min_rate = Some(parse(value, "min_recovery_rate")?),
            "max_recovery_rate" => max_rate = Some(parse(value, "max_recovery_rate")?),
            "spare" => spare_names.push(value.to_string()),
            _ => {}
        }
    }
    if level == Level::Raid10 {
        layout = raid10_layout(copies, &format).ok_or_else(|| {
            TargetError::Invalid(format!("raid10_format {format:?}: near, far or offset"))
        })?;
    }
    let ndevs: usize = r.number("#raid_devs")?;
    if ndevs == 0 || ndevs > 256 {
        return Err(TargetError::Invalid(format!(
            "{ndevs} devices: a raid set has 1 to 256"
        )));
    }
    let mut names = Vec::with_capacity(ndevs);
    let mut devices: Vec<Option<SharedDevice>> = Vec::with_capacity(ndevs);
    for _ in 0..ndevs {
        let meta = r.next("meta_dev")?;
        if meta != "-" {
            return Err(TargetError::Unsupported(format!(
                "metadata device {meta:?} (give '-')"
            )));
        }
        names.push(r.next("data_dev")?.to_string());
    }
    r.finish()?;

    // raid1 has no chunks; I/O is still split into pieces of this size to spread reads.
    let chunk_sectors = if level == Level::Raid1 {
        chunk_sectors.max(128)
    } else {
        chunk_sectors
    };
    let member_sectors = member_sectors(
        level,
        layout,
        ndevs as u64,
        chunk_sectors,
        args.length_sectors,
    )
    .ok_or_else(|| {
        TargetError::Invalid("the raid set's size does not divide among its members".into())
    })?;
    let geo = Geometry::new(
        level,
        layout,
        chunk_sectors,
        ndevs,
        &vec![member_sectors; ndevs],
    )
    .map_err(|e| TargetError::Invalid(e.to_string()))?;
    if geo.array_sectors() < args.length_sectors {
        return Err(TargetError::Invalid(format!(
            "the row is {} sectors, the raid set holds {}",
            args.length_sectors,
            geo.array_sectors()
        )));
    }
    for name in &names {
        devices.push(if name == "-" {
            None
        } else {
            Some(args.open(name, data_offset, member_sectors)?)
        });
    }
    let mut spares = VecDeque::new();
    for name in spare_names {
        let dev = args.open(&name, data_offset, member_sectors)?;
        spares.push_back((name, dev));
    }
    let mut synced: Vec<u64> = devices
        .iter()
        .map(|d| if d.is_some() { IN_SYNC } else { 0 })
        .collect();
    for &slot in &rebuild {
        if slot >= ndevs {
            return Err(TargetError::Invalid(format!(
                "rebuild {slot}: the set has slots 0 to {}",
                ndevs - 1
            )));
        }
        synced[slot] = 0;
    }
    let bad = names
        .iter()
        .zip(&devices)
        .map(|(n, d)| {
            d.as_ref()?;
            let table = metadata.as_ref()?.bad_blocks(n)?;
            Some(MemberBad::new(table, data_offset))
        })
        .collect();
    let view = View {
        bad,
        names: names
            .iter()
            .zip(&devices)
            .map(|(n, d)| d.as_ref().map(|_| n.clone()))
            .collect(),
        devs: devices,
        synced,
    };
    let in_sync = (0..ndevs).filter(|&m| view.synced[m] == IN_SYNC).count();
    let tolerated = match level {
        Level::Raid0 => 0,
        Level::Raid1 => ndevs - 1,
        Level::Raid4 | Level::Raid5 => 1,
        Level::Raid6 => 2,
        Level::Raid10 => ndevs - 1,
    };
    if ndevs - in_sync > tolerated {
        return Err(TargetError::Invalid(format!(
            "{} of {ndevs} devices missing or to rebuild; {type_name} survives {tolerated}",
            ndevs - in_sync
        )));
    }
    let region_sectors = metadata.as_ref().and_then(|m| m.bitmap_region_sectors());
    let core = Arc::new(Core {
        geo,
        chunk_sectors,
        data_offset,
        member_sectors,
        view: RwLock::new(Arc::new(view)),
        state: Mutex::new(Spares {
            spares,
            faulty: Vec::new(),
        }),
        rows: Default::default(),
        metadata,
        failed: AtomicBool::new(false),
        in_flight: AtomicUsize::new(0),
        write_seq: AtomicU64::new(0),
        dirty: AtomicBool::new(false),
        needs_resync: AtomicBool::new(false),
        epoch: Instant::now(),
        last_write_ms: AtomicU64::new(0),
        last_io_ms: AtomicU64::new(0),
        region_sectors,
        marked: Mutex::new(HashSet::new()),
        corrected_reads: AtomicU64::new(0),
        member_failures: AtomicU64::new(0),
    });
    let sync = Arc::new(Sync::new());
    {
        let mut st = lock(&sync.state);
        if let Some(min) = min_rate {
            st.min_rate = min;
        }
        if let Some(max) = max_rate {
            st.max_rate = max;
        }
    }
    Ok(Box::new(Raid {
        type_name: type_name.to_string(),
        params,
        names,
        core,
        sync,
        worker: Mutex::new(None),
    }))
}
fn parse<T: std::str::FromStr>(value: &str, what: &'static str) -> Result<T, TargetError> {
    value.parse().map_err(|_| TargetError::BadNumber {
        what,
        value: value.to_string(),
    })
}

/// The data sectors each member contributes to a row of `len` sectors, as dm-raid derives
/// them.
fn member_sectors(level: Level, layout: u32, n: u64, chunk: u64, len: u64) -> Option<u64> {
    let per = match level {
        Level::Raid0 => len.div_ceil(n),
        Level::Raid1 => len,
        Level::Raid4 | Level::Raid5 => len.div_ceil(n.checked_sub(1).filter(|&d| d > 0)?),
        Level::Raid6 => len.div_ceil(n.checked_sub(2).filter(|&d| d > 0)?),
        Level::Raid10 => {
            let near = u64::from(layout & 0xff).max(1);
            let far = u64::from((layout >> 8) & 0xff).max(1);
            len.checked_mul(near * far)?.div_ceil(n)
        }
    };
    // Whole chunks, as md sizes members.
    per.checked_next_multiple_of(chunk.max(1))
}

/// The `raid` target: table parsing and status here; the set's I/O in [`crate::set`], its
/// background work in [`crate::sync`].
pub struct Raid {
    type_name: String,
    params: Vec<String>,
    /// The data devices as the table names them.
    names: Vec<String>,
    core: Arc<Core>,
    sync: Arc<Sync>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Raid {
    /// Starts the background work, after reading what the last run left.
    fn start(&self) {
        if let Some(meta) = &self.core.metadata {
            let start = meta.start();
            let spares = lock(&self.core.state);
            let mut v = (*self.core.view()).clone();
            for &(slot, done) in &start.recovering {
                if slot < v.devs.len() && v.devs[slot].is_some() {
                    // Restart at a whole row.
                    v.synced[slot] = done / self.core.chunk_sectors * self.core.chunk_sectors;
                }
            }
            self.core.set_view(v);
            drop(spares);
            if start.dirty {
                self.core.needs_resync.store(true, Ordering::SeqCst);
                let units = start.dirty_regions.as_ref().and_then(|regions| {
                    let region = self.core.region_sectors?;
                    let chunk = self.core.chunk_sectors;
                    Some(
                        regions
                            .iter()
                            .map(|r| (r * region / chunk, ((r + 1) * region).div_ceil(chunk)))
                            .collect::<Vec<_>>(),
                    )
                });
                lock(&self.sync.state).resync_units = units;
            }
        }
        let mut worker = lock(&self.worker);
        if worker.is_none() {
            lock(&self.sync.state).stop = false;
            let (core, sync) = (self.core.clone(), self.sync.clone());
            *worker = Some(
                std::thread::Builder::new()
                    .name("raid-sync".into())
                    .spawn(move || sync::run(core, sync))
                    .expect("spawning the raid set's sync thread"),
            );
        }
    }

    /// Stops the background work and marks the set clean: nothing is in flight.
    fn stop(&self) {
        lock(&self.sync.state).stop = true;
        self.sync.poke();
        if let Some(handle) = lock(&self.worker).take() {
            let _ = handle.join();
        }
        sync::safe_mode_tick(&self.core, true);
    }

    fn health(&self) -> String {
        let v = self.core.view();
        (0..v.devs.len())
            .map(|m| match (&v.devs[m], v.synced[m]) {
                (None, _) => 'D',
                (Some(_), IN_SYNC) => 'A',
                (Some(_), _) => 'a',
            })
            .collect()
    }
}

impl Drop for Raid {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Target for Raid {
    fn read(&self, sector: u64, buf: &mut [u8]) -> BlockResult<()> {
        let core = &self.core;
        core.last_io_ms.store(core.now_ms(), Ordering::Relaxed);
        match core.level() {
            Level::Raid0 | Level::Raid1 | Level::Raid10 => core.read_mirrored(sector, buf),
            _ => core.read_parity_level(sector, buf),
        }
    }

    fn write(&self, sector: u64, buf: &[u8]) -> BlockResult<()> {
        let core = &self.core;
        core.last_io_ms.store(core.now_ms(), Ordering::Relaxed);
        let _write = core.begin_write(sector, buf.len() as u64 / 512)?;
        match core.level() {
            Level::Raid0 | Level::Raid1 | Level::Raid10 => core.write_mirrored(sector, buf),
            _ => core.write_parity_level(sector, buf),
        }
    }

    fn flush(&self) -> BlockResult<()> {
        self.core.flush()
    }

    fn discard(&self, sector: u64, len_sectors: u64) -> BlockResult<()> {
        // Parity levels keep their parity consistent by not discarding at all (a discard
        // may leave any data behind); the others pass it to every copy.
        if self.core.is_parity_level() {
            return Ok(());
        }
        let _write = self.core.begin_write(sector, len_sectors)?;
        self.core.pass_down(sector, len_sectors, false)
    }

    fn write_zeroes(&self, sector: u64, len_sectors: u64) -> BlockResult<()> {
        let core = &self.core;
        let _write = core.begin_write(sector, len_sectors)?;
        if !core.is_parity_level() {
            return core.pass_down(sector, len_sectors, true);
        }
        // Through the write path, so parity follows; 1 MiB at a time.
        let step = 2048;
        let zeros = vec![0u8; (step.min(len_sectors) * 512) as usize];
        let mut s = sector;
        let end = sector + len_sectors;
        while s < end {
            let n = step.min(end - s);
            core.write_parity_level(s, &zeros[..(n * 512) as usize])?;
            s += n;
        }
        Ok(())
    }

    fn status(&self, kind: StatusType) -> String {
        match kind {
            StatusType::Info => {
                // dm-raid's: <type> <#devs> <health> <synced>/<total> <sync_action>
                // <mismatch_cnt> <data_offset> <journal>.
                let st = lock(&self.sync.state);
                let total = self.core.sync_sectors();
                let done = match st.action {
                    Action::Idle | Action::Frozen => {
                        if self.core.needs_resync.load(Ordering::SeqCst) {
                            0
                        } else {
                            total
                        }
                    }
                    _ => st.pos,
                };
                let action = if st.frozen { Action::Frozen } else { st.action };
                let mismatches = match (st.action, st.last) {
                    (Action::Check | Action::Repair | Action::Resync, _) => st.mismatches,
                    (_, Some(last)) => last.mismatches,
                    _ => 0,
                };
                format!(
                    "{} {} {} {done}/{total} {} {mismatches} {} -",
                    self.type_name,
                    self.names.len(),
                    self.health(),
                    action.name(),
                    self.core.data_offset,
                )
            }
            StatusType::Table => {
                let devs: Vec<String> = self
                    .names
                    .iter()
                    .map(|n| format!("- {}", escape_arg(n)))
                    .collect();
                format!(
                    "{} {} {} {} {}",
                    self.type_name,
                    self.params.len(),
                    self.params.join(" "),
                    self.names.len(),
                    devs.join(" ")
                )
            }
        }
    }

    /// dm-raid's sync actions (`check`, `repair`, `idle`, `frozen`, `resync`, `recover`),
    /// and tessera's: `fail <device>`, `speed <min KiB/s> <max KiB/s>`, `report` (the last
    /// finished action and the counters, one `key=value` each).
    fn message(&self, args: &[&str]) -> Result<String, TargetError> {
        let refuse = |why: String| Err(TargetError::Message(why));
        match args {
            ["check"] | ["repair"] => {
                if self.core.level() == Level::Raid0 {
                    return refuse("raid0 has no redundancy to check".into());
                }
                let mut st = lock(&self.sync.state);
                st.frozen = false;
                st.requested = Some(if args[0] == "check" {
                    Action::Check
                } else {
                    Action::Repair
                });
            }
            ["idle"] => {
                let mut st = lock(&self.sync.state);
                st.frozen = false;
                if matches!(st.action, Action::Check | Action::Repair) {
                    st.requested = Some(Action::Idle);
                }
            }
            ["frozen"] => lock(&self.sync.state).frozen = true,
            ["resync"] => {
                self.core.needs_resync.store(true, Ordering::SeqCst);
                let mut st = lock(&self.sync.state);
                st.frozen = false;
                st.resync_units = None;
            }
            ["recover"] => lock(&self.sync.state).frozen = false,
            ["fail", device] => self
                .core
                .fail_by_name(device)
                .map_err(TargetError::Message)?,
            ["speed", min, max] => {
                let min: u64 = parse(min, "min KiB/s")?;
                let max: u64 = parse(max, "max KiB/s")?;
                if min > max {
                    return refuse(format!("minimum {min} KiB/s is above maximum {max}"));
                }
                let mut st = lock(&self.sync.state);
                st.min_rate = min;
                st.max_rate = max;
            }
            ["report"] => {
                let st = lock(&self.sync.state);
                let mut out = format!(
                    "action={}\nmin_rate={}\nmax_rate={}\ncorrected_read_sectors={}\nmember_failures={}\n",
                    st.action.name(),
                    st.min_rate,
                    st.max_rate,
                    self.core.corrected_reads.load(Ordering::Relaxed),
                    self.core.member_failures.load(Ordering::Relaxed),
                );
                if let Some(last) = st.last {
                    out.push_str(&format!(
                        "last_action={}\nlast_sectors={}\nlast_mismatches={}\nlast_millis={}\nlast_complete={}\n",
                        last.action.name(),
                        last.sectors,
                        last.mismatches,
                        last.millis,
                        last.complete
                    ));
                }
                for (name, entries) in self.core.bad_block_counts() {
                    out.push_str(&format!("bad_blocks={name} {entries}\n"));
                }
                let spares = lock(&self.core.state);
                for (name, _) in &spares.spares {
                    out.push_str(&format!("spare={name}\n"));
                }
                for name in &spares.faulty {
                    out.push_str(&format!("faulty={name}\n"));
                }
                return Ok(out);
            }
            _ => {
                return refuse(format!(
                    "unknown message {:?}: check, repair, idle, frozen, resync, recover, \
                     fail <device>, speed <min> <max>, report",
                    args.join(" ")
                ))
            }
        }
        self.sync.poke();
        Ok(String::new())
    }

    fn devices(&self) -> Vec<SharedDevice> {
        let v = self.core.view();
        let mut out: Vec<SharedDevice> = v.devs.iter().flatten().cloned().collect();
        out.extend(lock(&self.core.state).spares.iter().map(|(_, d)| d.clone()));
        out
    }

    fn postsuspend(&self) {
        self.stop();
    }

    fn resume(&self) {
        self.start();
    }
}
