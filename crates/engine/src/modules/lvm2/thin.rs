//! Thin provisioning as lvm2 keeps it: the verbs (`lv create --type thin-pool`, `--thin`,
//! thin snapshots, removal, pool growth), the pool's transaction kept in step with the VG
//! metadata, and the devices lvm2 loads for a pool and its thin LVs.
//!
//! In the metadata a pool is three LVs: the pool LV (one `thin-pool` segment) and its
//! hidden `POOL_tmeta` (the pool metadata, dm-thin's format) and `POOL_tdata` (the data
//! blocks); a VG with pools keeps one hidden `lvolN_pmspare` as large as the largest
//! `_tmeta`, for repairs. A thin LV has one `thin` segment naming its pool and its device
//! id in the pool's metadata.
//!
//! Every change to a pool's thin devices is one transaction, as lvm2 makes it: the VG is
//! written with the pool's `transaction_id` raised by one and the change queued as a
//! message; then the pool's metadata is changed (`create_thin`, `create_snap`, `delete`,
//! then `set_transaction_id`); then the VG is written without the message. A crash in
//! between is settled at the next change: a pool one transaction behind gets the queued
//! messages replayed, a pool already at the VG's transaction just loses them from the VG.
//! The pool is changed through [`PoolChanger`]: offline on the `_tmeta` extents
//! ([`OfflinePool`]), or through a live `thin-pool` target's messages.

use std::sync::Arc;

use tessera_block::SharedDevice;
use tessera_formats::lvm2::id::Id;
use tessera_formats::lvm2::vg::{
    check_new_lv_name, LogicalVolume, Segment, SegmentKind, ThinDiscards, ThinMessage,
    ThinPoolSegment, ThinSegment, VolumeGroup, THIN_MAX_CHUNK_SECTORS, THIN_MIN_CHUNK_SECTORS,
};
use tessera_formats::thin::{DeviceDetails, PoolInfo, PoolMetadata, ThinMetadataError};
use tessera_mapper::{MappedDevice, TargetRegistry};

use super::alloc;
use super::scan::{Scan, VgState};
use super::snapshot::{layer_uuid, StackDevice};
use super::table::{dm_name, load_plain, plain_table};
use crate::engine::{now, Engine};
use crate::error::{EngineError, Result};
use crate::units::{Sign, SizeArg};

/// lvm2's default chunk (its "generic" policy): 64 KiB.
pub const DEFAULT_CHUNK_SECTORS: u64 = 128;
/// The smallest pool metadata lvm2 makes: 2 MiB.
pub const MIN_METADATA_SECTORS: u64 = 2 * 2048;
/// The largest pool metadata lvm2 uses without cropping: 255 bitmaps of 16320 blocks of
/// 4 KiB, in sectors (about 15.8 GiB).
pub const MAX_METADATA_SECTORS: u64 = 2 * 255 * 16_320 * 4;
/// Above this estimate lvm2 doubles its default chunk: 128 MiB.
pub const OPTIMAL_METADATA_SECTORS: u64 = 128 * 2048;
/// The largest pool metadata spare lvm2 keeps: 16 GiB.
pub const MAX_PMSPARE_SECTORS: u64 = 2 * 16 * 1024 * 1024;

/// Metadata sectors lvm2 estimates for `data_sectors` of data in chunks of `chunk`
/// sectors: 64 bytes per chunk.
pub fn estimate_metadata_sectors(data_sectors: u64, chunk: u64) -> u64 {
    data_sectors / (chunk * (512 / 64))
}

/// The chunk lvm2 picks for `data_sectors` of data when the metadata size is given:
/// 64 bytes of metadata per chunk, rounded up to a power of two (or to 1 MiB multiples
/// past 1 MiB), within the kernel's range.
pub fn estimate_chunk_sectors(data_sectors: u64, metadata_sectors: u64) -> u64 {
    let chunk = data_sectors / (metadata_sectors.max(1) * (512 / 64));
    if chunk <= 1 {
        return THIN_MIN_CHUNK_SECTORS;
    }
    // 1 MiB - 1 sector: lvm2's alignment for large chunks.
    const BIG: u64 = 2 * 1024 - 1;
    let chunk = if chunk > BIG {
        (chunk + BIG) & !BIG
    } else {
        chunk.next_power_of_two()
    };
    chunk.clamp(THIN_MIN_CHUNK_SECTORS, THIN_MAX_CHUNK_SECTORS)
}

/// The most data a pool with `chunk`-sector chunks addresses, in sectors.
pub fn max_data_sectors(chunk: u64) -> u64 {
    MAX_METADATA_SECTORS * chunk * 512 / 64
}

/// What `lv create --type thin-pool` takes.
#[derive(Debug, Clone)]
pub struct PoolCreateOptions {
    /// The data size (lvm2's -L/-l).
    pub size: SizeArg,
    /// The chunk, bytes (lvm2's -c); lvm2's choice when None.
    pub chunk_bytes: Option<u64>,
    /// The metadata size, bytes (lvm2's --poolmetadatasize); lvm2's estimate when None.
    pub metadata_bytes: Option<u64>,
    /// Zero new blocks before first use (lvm2's -Z, default yes).
    pub zero: bool,
    pub discards: ThinDiscards,
    /// PV paths to allocate from; all of the VG's when empty.
    pub pvs: Vec<String>,
}

impl Default for PoolCreateOptions {
    fn default() -> Self {
        PoolCreateOptions {
            size: SizeArg {
                sign: None,
                amount: crate::units::Amount::Extents(0),
            },
            chunk_bytes: None,
            metadata_bytes: None,
            zero: true,
            discards: ThinDiscards::Passdown,
            pvs: Vec::new(),
        }
    }
}

/// What a thin verb did, with lvm2's warnings for the user.
#[derive(Debug, Clone, Default)]
pub struct ThinOutcome {
    /// The LVs made or removed, by name.
    pub lvs: Vec<String>,
    /// Notes as lvm2 prints them (chunk size chosen, overprovisioning), without "WARNING: ".
    pub warnings: Vec<String>,
    pub notes: Vec<String>,
}

/// A pool whose thin devices are changed: offline on its metadata LV, or a live
/// `thin-pool` target. Messages use the kernel's syntax (`create_thin 1`,
/// `create_snap 2 1`, `delete 1`, `set_transaction_id 3 4`).
pub trait PoolChanger {
    /// The pool's state as of its last commit.
    fn info(&mut self) -> Result<PoolInfo>;
    /// Sends `messages` in order. Offline they land in one metadata transaction; a live
    /// target commits after each, as the kernel does.
    fn send(&mut self, messages: &[String]) -> Result<()>;
    /// The pool's data LV grew to `nr_data_blocks` blocks (a live target sees it on its
    /// next table load).
    fn grow_data(&mut self, nr_data_blocks: u64) -> Result<()>;
    /// The pool's metadata LV grew.
    fn grow_metadata(&mut self) -> Result<()>;
}

/// Opens a [`PoolChanger`] for pool `pool` of `state`.
pub trait PoolOpener {
    fn open(&mut self, scan: &Scan, state: &VgState, pool: &str) -> Result<Box<dyn PoolChanger>>;
}

/// The pools a running daemon serves: a change to one goes to its live `thin-pool` target
/// (as lvm2 messages the kernel's), never to its metadata behind the target's back. See
/// [`Engine::set_live_pools`].
pub trait LivePools: Send + Sync {
    /// The live pool `pool` of VG `vg`, if it is served.
    fn open(&self, vg: &str, pool: &str) -> Option<Box<dyn PoolChanger>>;
}

/// Opens a pool as the engine's verbs change it: live when a daemon serves it, else
/// offline on its metadata LV.
pub struct EngineOpener {
    live: Option<Arc<dyn LivePools>>,
}

impl PoolOpener for EngineOpener {
    fn open(&mut self, scan: &Scan, state: &VgState, pool: &str) -> Result<Box<dyn PoolChanger>> {
        if let Some(changer) = self
            .live
            .as_ref()
            .and_then(|l| l.open(&state.vg.name, pool))
        {
            return Ok(changer);
        }
        Offline.open(scan, state, pool)
    }
}

/// The live pools an engine was given, as a service (see [`Engine::provide`]).
struct LivePoolsService(Arc<dyn LivePools>);

impl Engine {
    /// Has this engine's thin verbs change the pools `live` serves through their targets.
    pub fn set_live_pools(&self, live: Arc<dyn LivePools>) {
        self.provide(Arc::new(LivePoolsService(live)));
    }

    /// How this engine's verbs open pools: live ones through their targets.
    pub(crate) fn pool_opener(&self) -> EngineOpener {
        EngineOpener {
            live: self.service::<LivePoolsService>().map(|s| s.0.clone()),
        }
    }
}

/// The pool's metadata opened on its `_tmeta` LV's extents.
pub struct OfflinePool {
    name: String,
    meta: PoolMetadata,
}

/// Opens pools offline.
pub struct Offline;

impl PoolOpener for Offline {
    fn open(&mut self, scan: &Scan, state: &VgState, pool: &str) -> Result<Box<dyn PoolChanger>> {
        Ok(Box::new(OfflinePool::open(scan, state, pool)?))
    }
}

fn pool_error(vg: &str, pool: &str, e: ThinMetadataError) -> EngineError {
    EngineError::DeviceUnusable {
        device: format!("thin pool {vg}/{pool}"),
        why: e.to_string(),
    }
}

/// A linear/striped LV as a device over the scanned PVs (for reading and writing its
/// bytes directly, as the pool's metadata).
pub fn lv_device(scan: &Scan, state: &VgState, lv: &str) -> Result<SharedDevice> {
    let device = MappedDevice::new(dm_name(&state.vg.name, lv), Arc::new(TargetRegistry::new()));
    load_plain(scan, state, lv, &device)?;
    device.resume()?;
    Ok(Arc::new(device))
}

fn pool_segment<'a>(vg: &'a VolumeGroup, pool: &str) -> Result<&'a ThinPoolSegment> {
    let lv = vg.lv(pool).ok_or_else(|| EngineError::LvNotFound {
        vg: vg.name.clone(),
        lv: pool.into(),
    })?;
    lv.thin_pool().ok_or_else(|| EngineError::Refused {
        vg: vg.name.clone(),
        why: format!("LV '{pool}' is not a thin pool"),
    })
}

impl OfflinePool {
    pub fn open(scan: &Scan, state: &VgState, pool: &str) -> Result<OfflinePool> {
        let seg = pool_segment(&state.vg, pool)?;
        let device = lv_device(scan, state, &seg.metadata)?;
        let meta = PoolMetadata::open(device).map_err(|e| pool_error(&state.vg.name, pool, e))?;
        Ok(OfflinePool {
            name: format!("{}/{pool}", state.vg.name),
            meta,
        })
    }

    fn err(&self, e: ThinMetadataError) -> EngineError {
        EngineError::DeviceUnusable {
            device: format!("thin pool {}", self.name),
            why: e.to_string(),
        }
    }

    fn apply(&mut self, message: &str) -> std::result::Result<(), EngineError> {
        let words: Vec<&str> = message.split_whitespace().collect();
        let bad = || {
            EngineError::BadArgument(format!(
                "thin pool {}: message '{message}' is not one tessera knows",
                self.name
            ))
        };
        let num = |i: usize| -> std::result::Result<u64, EngineError> {
            words
                .get(i)
                .and_then(|w| w.parse::<u64>().ok())
                .ok_or_else(bad)
        };
        let id = |i: usize| -> std::result::Result<u32, EngineError> {
            u32::try_from(num(i)?).map_err(|_| bad())
        };
        let r = match words.first().copied() {
            Some("create_thin") if words.len() == 2 => self.meta.create_thin(id(1)?),
            Some("create_snap") if words.len() == 3 => self.meta.create_snap(id(1)?, id(2)?),
            Some("delete") if words.len() == 2 => self.meta.delete(id(1)?),
            Some("set_transaction_id") if words.len() == 3 => {
                self.meta.set_transaction_id(num(1)?, num(2)?)
            }
            Some("reserve_metadata_snap") if words.len() == 1 => self.meta.reserve_metadata_snap(),
            Some("release_metadata_snap") if words.len() == 1 => self.meta.release_metadata_snap(),
            _ => return Err(bad()),
        };
        r.map_err(|e| self.err(e))
    }

    /// The thin devices in the pool's metadata.
    pub fn devices(&self) -> Result<Vec<(u32, DeviceDetails)>> {
        self.meta.devices().map_err(|e| self.err(e))
    }
}

impl PoolChanger for OfflinePool {
    fn info(&mut self) -> Result<PoolInfo> {
        Ok(self.meta.info())
    }

    fn send(&mut self, messages: &[String]) -> Result<()> {
        for m in messages {
            if let Err(e) = self.apply(m) {
                // Nothing of a failed batch lands.
                let _ = self.meta.abort();
                return Err(e);
            }
        }
        self.meta.commit().map_err(|e| self.err(e))
    }

    fn grow_data(&mut self, nr_data_blocks: u64) -> Result<()> {
        if nr_data_blocks <= self.meta.info().nr_data_blocks {
            return Ok(());
        }
        let r = self
            .meta
            .resize_data(nr_data_blocks)
            .and_then(|()| self.meta.commit());
        r.map_err(|e| self.err(e))
    }

    fn grow_metadata(&mut self) -> Result<()> {
        let r = self
            .meta
            .resize_metadata()
            .and_then(|()| self.meta.commit());
        r.map_err(|e| self.err(e))
    }
}

/// The kernel messages that carry out pool `pool`'s queued messages, then the
/// transaction id step from `from` to the pool's.
pub fn pool_messages(vg: &VolumeGroup, pool: &str, from: u64) -> Result<Vec<String>> {
    let seg = pool_segment(vg, pool)?;
    let mut out = Vec::new();
    for m in &seg.messages {
        match m {
            ThinMessage::Create(lv) => {
                let thin = vg.lv(lv).and_then(|l| l.thin()).ok_or_else(|| {
                    EngineError::Refused {
                        vg: vg.name.clone(),
                        why: format!(
                            "pool '{pool}' queues the creation of '{lv}', which is not a thin LV"
                        ),
                    }
                })?;
                let origin = thin
                    .origin
                    .as_deref()
                    .and_then(|o| vg.lv(o))
                    .and_then(|o| o.thin());
                match origin {
                    Some(o) => out.push(format!("create_snap {} {}", thin.device_id, o.device_id)),
                    None => out.push(format!("create_thin {}", thin.device_id)),
                }
            }
            ThinMessage::Delete(id) => out.push(format!("delete {id}")),
        }
    }
    if !out.is_empty() {
        out.push(format!("set_transaction_id {from} {}", seg.transaction_id));
    }
    Ok(out)
}

/// How full pool `pool` is, from its metadata: the pool's info and its thin devices.
pub fn pool_usage(
    scan: &Scan,
    state: &VgState,
    pool: &str,
) -> Result<(PoolInfo, Vec<(u32, DeviceDetails)>)> {
    let mut p = OfflinePool::open(scan, state, pool)?;
    let devices = p.devices()?;
    Ok((p.info()?, devices))
}

/// The pool LV that LV `lv` belongs to (itself, its pool, or the pool whose hidden LV it
/// is); None outside any pool.
pub fn pool_of<'a>(vg: &'a VolumeGroup, lv: &str) -> Option<&'a str> {
    vg.pool_of(lv).map(|l| l.name.as_str())
}

/// The features lvm2 writes on a pool's table, in libdevmapper's order.
fn pool_features(pool: &LogicalVolume, seg: &ThinPoolSegment) -> Vec<&'static str> {
    let mut f = Vec::new();
    if !seg.zeroes() {
        f.push("skip_block_zeroing");
    }
    match seg.discards() {
        ThinDiscards::Ignore => f.push("ignore_discard"),
        ThinDiscards::NoPassdown => f.push("no_discard_passdown"),
        ThinDiscards::Passdown => {}
    }
    if error_when_full(pool) {
        f.push("error_if_no_space");
    }
    f
}

/// lvm2's flag for a pool whose writes fail when it is full instead of waiting for it to
/// grow (`lvchange --errorwhenfull y`, `error_if_no_space` in the pool's table).
pub const ERROR_WHEN_FULL: &str = "ERROR_WHEN_FULL";

/// Whether pool `pool` fails writes when it is full (else they wait, the kernel's
/// default, up to its no-space timeout).
pub fn error_when_full(pool: &LogicalVolume) -> bool {
    pool.flags.iter().any(|f| f == ERROR_WHEN_FULL)
}

/// The devices lvm2 loads for pool `pool` and its thin LVs `thins` (active ones; none for
/// the pool alone), in the order they must be made: `VG-POOL_tmeta` and `VG-POOL_tdata`
/// (their extents), the `thin-pool` device over them, then each thin LV
/// (`thin VG-POOL-tpool ID`). A pool never used (transaction 0) is itself the `thin-pool`
/// device (`VG-POOL`, uuid `...-tpool`); a used one is `VG-POOL-tpool` with the pool LV's
/// own `VG-POOL` a `linear` over it, as lvm2 loads them.
pub fn pool_stack_devices(
    scan: &Scan,
    state: &VgState,
    pool: &str,
    thins: &[&str],
    with_pool_lv: bool,
) -> Result<Vec<StackDevice>> {
    let vg = &state.vg;
    let not_found = |lv: &str| EngineError::LvNotFound {
        vg: vg.name.clone(),
        lv: lv.into(),
    };
    let p = vg.lv(pool).ok_or_else(|| not_found(pool))?;
    let seg = pool_segment(vg, pool)?;
    let meta = vg
        .lv(&seg.metadata)
        .ok_or_else(|| not_found(&seg.metadata))?;
    let data = vg.lv(&seg.data).ok_or_else(|| not_found(&seg.data))?;
    let meta_name = dm_name(&vg.name, &meta.name);
    let data_name = dm_name(&vg.name, &data.name);
    let mut out = vec![
        StackDevice {
            name: meta_name.clone(),
            uuid: layer_uuid(vg, meta, "-tmeta"),
            table: plain_table(scan, state, &meta.name)?,
            lv: None,
        },
        StackDevice {
            name: data_name.clone(),
            uuid: layer_uuid(vg, data, "-tdata"),
            table: plain_table(scan, state, &data.name)?,
            lv: None,
        },
    ];
    let size = p.extent_count() * vg.extent_size_sectors;
    let features = pool_features(p, seg);
    let mut pool_table = format!(
        "0 {size} thin-pool {meta_name} {data_name} {} 0 {}",
        seg.chunk_size_sectors,
        features.len()
    );
    for f in &features {
        pool_table.push(' ');
        pool_table.push_str(f);
    }
    pool_table.push('\n');
    let fresh = seg.transaction_id == 0;
    let tpool = if fresh {
        dm_name(&vg.name, pool)
    } else {
        format!("{}-tpool", dm_name(&vg.name, pool))
    };
    out.push(StackDevice {
        name: tpool.clone(),
        uuid: layer_uuid(vg, p, "-tpool"),
        table: pool_table,
        lv: fresh.then(|| pool.to_string()),
    });
    if !fresh && with_pool_lv {
        out.push(StackDevice {
            name: dm_name(&vg.name, pool),
            uuid: layer_uuid(vg, p, "-pool"),
            table: format!("0 {size} linear {tpool} 0\n"),
            // lvm2 makes no /dev/VG/POOL for a used pool: it is used through its thin LVs.
            lv: None,
        });
    }
    for t in thins {
        let l = vg.lv(t).ok_or_else(|| not_found(t))?;
        let thin = l.thin().ok_or_else(|| EngineError::Refused {
            vg: vg.name.clone(),
            why: format!("LV '{t}' is not a thin LV"),
        })?;
        if thin.pool != pool {
            return Err(EngineError::Refused {
                vg: vg.name.clone(),
                why: format!("thin LV '{t}' is in pool '{}', not '{pool}'", thin.pool),
            });
        }
        let tsize = l.extent_count() * vg.extent_size_sectors;
        out.push(StackDevice {
            name: dm_name(&vg.name, t),
            uuid: layer_uuid(vg, l, ""),
            table: format!("0 {tsize} thin {tpool} {}\n", thin.device_id),
            lv: Some(t.to_string()),
        });
    }
    Ok(out)
}

/// Whether activating thin LV `lv` by default skips it (lvm2's ACTIVATION_SKIP, set on
/// thin snapshots): `lvchange -ay` and `vgchange -ay` leave it unless told to ignore it.
pub fn skips_activation(vg: &VolumeGroup, lv: &str) -> bool {
    vg.lv(lv).is_some_and(|l| l.activation_skip())
}

/// A size as lvm2 prints it in messages: two decimals in the largest binary unit, with
/// '<' where the figure is rounded up.
pub fn display_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut unit = 1024f64;
    let mut name = UNITS[0];
    for (i, u) in UNITS.iter().enumerate().skip(1) {
        let size = 1024f64.powi(i as i32 + 1);
        if bytes as f64 >= size {
            unit = size;
            name = u;
        }
    }
    let exact = bytes as f64 / unit;
    let shown = two_places(exact);
    let rounded_up = shown.parse::<f64>().is_ok_and(|v| v > exact);
    format!("{}{shown} {name}", if rounded_up { "<" } else { "" })
}

/// lvm2's warnings when the thin LVs of pool `pool` may outgrow it (and the other pools,
/// and the VG's free space); none when they fit.
pub fn overprovisioning(vg: &VolumeGroup, pool: &str) -> Vec<String> {
    let ext = vg.extent_size_bytes();
    let size = |l: &LogicalVolume| l.extent_count() * ext;
    let thin_sum = |p: &str| -> u64 { vg.thin_lvs_of(p).iter().map(|l| size(l)).sum() };
    let Some(this) = vg.lv(pool) else {
        return Vec::new();
    };
    let mut pools = size(this);
    let mut thins = thin_sum(pool);
    if thins <= pools {
        return Vec::new();
    }
    let mut more_pools = false;
    for p in vg.thin_pools() {
        if p.name != pool {
            more_pools = true;
            pools += size(p);
            thins += thin_sum(&p.name);
        }
    }
    if thins <= pools {
        return Vec::new();
    }
    let vg_size = vg.pe_total() * ext;
    let vg_free = vg.pe_free_total() * ext;
    let (txt, sz) = if vg_size < thins {
        (" and the size of whole volume group", vg_size)
    } else if vg_free < thins {
        (
            if vg_free == 0 {
                ""
            } else {
                " and the amount of free space in volume group"
            },
            vg_free,
        )
    } else {
        // No autoextension is set up (lvm2's threshold stays at 100).
        ("", pools)
    };
    let target = if more_pools {
        "s".to_string()
    } else {
        format!(" {}/{pool}", vg.name)
    };
    let limit = if sz > 0 {
        display_size(sz)
    } else {
        "no free space in volume group".into()
    };
    vec![
        format!(
            "Sum of all thin volume sizes ({}) exceeds the size of thin pool{target}{txt} ({limit}).",
            display_size(thins)
        ),
        "You have not turned on protection against thin pools running out of space.".into(),
        "Set activation/thin_pool_autoextend_threshold below 100 to trigger automatic extension of thin pools before they get full.".into(),
    ]
}

fn refuse(vg: &str, why: String) -> EngineError {
    EngineError::Refused { vg: vg.into(), why }
}

fn new_lv(engine: &Engine, name: &str, visible: bool, segments: Vec<Segment>) -> LogicalVolume {
    let mut status = vec!["READ".to_string(), "WRITE".to_string()];
    if visible {
        status.push("VISIBLE".into());
    }
    LogicalVolume {
        name: name.to_string(),
        id: Id::random(),
        status,
        flags: Vec::new(),
        creation_time: Some(now()),
        creation_host: Some(engine.hostname.clone()),
        extra: Vec::new(),
        segments,
    }
}

/// The extents of the VG's largest pool metadata LV.
fn largest_metadata(vg: &VolumeGroup) -> u64 {
    vg.thin_pools()
        .iter()
        .filter_map(|p| p.thin_pool())
        .filter_map(|s| vg.lv(&s.metadata))
        .map(|m| m.extent_count())
        .max()
        .unwrap_or(0)
}

/// Makes or grows the VG's pool metadata spare to `want` extents (at most 16 GiB), as lvm2
/// does whenever a pool is made or its metadata grows.
fn grow_pmspare(
    engine: &Engine,
    vg: &mut VolumeGroup,
    want: u64,
    allowed: Option<&[String]>,
) -> Result<()> {
    let want = want.min(MAX_PMSPARE_SECTORS.div_ceil(vg.extent_size_sectors));
    if want == 0 {
        return Ok(());
    }
    match vg
        .pmspare()
        .map(|l| (l.name.clone(), l.extent_count(), l.segments.clone()))
    {
        Some((_, have, _)) if have >= want => Ok(()),
        Some((name, have, mut segments)) => {
            alloc::extend_linear(vg, &mut segments, want - have, allowed)
                .map_err(|e| alloc::no_space(vg, e))?;
            if let Some(l) = vg.lv_mut(&name) {
                l.segments = segments;
            }
            Ok(())
        }
        None => {
            let mut segments = Vec::new();
            alloc::extend_linear(vg, &mut segments, want, allowed)
                .map_err(|e| alloc::no_space(vg, e))?;
            let name = format!("{}_pmspare", vg.next_lvol_name());
            let lv = new_lv(engine, &name, false, segments);
            vg.insert_lv(lv);
            Ok(())
        }
    }
}

/// Writes zeros over the first `bytes` of LV `lv` (its extents, as laid out in `vg`,
/// which need not be committed yet).
fn zero_lv_start(
    scan: &Scan,
    state: &VgState,
    vg: &VolumeGroup,
    lv: &str,
    bytes: u64,
) -> Result<()> {
    let mut tmp = state.clone();
    tmp.vg = vg.clone();
    let device = lv_device(scan, &tmp, lv)?;
    let len = bytes.min(device.size_bytes());
    device.write_zeroes(0, len)?;
    device.flush()?;
    Ok(())
}

/// The pool parameters lvm2 settles on for `data_extents` of data: (chunk sectors,
/// metadata extents, notes, warnings).
fn pool_params(
    vg: &VolumeGroup,
    data_extents: u64,
    chunk_bytes: Option<u64>,
    metadata_bytes: Option<u64>,
    zero: bool,
) -> Result<(u64, u64, Vec<String>, Vec<String>)> {
    let extent = vg.extent_size_sectors;
    let data_sectors = data_extents * extent;
    let mut warnings = Vec::new();
    let mut notes = Vec::new();
    let mut chunk = match chunk_bytes {
        Some(b) => {
            if b % 512 != 0 {
                return Err(EngineError::BadArgument(format!(
                    "chunk size {b} bytes is not a whole number of sectors"
                )));
            }
            let c = b / 512;
            if !(THIN_MIN_CHUNK_SECTORS..=THIN_MAX_CHUNK_SECTORS).contains(&c)
                || c % THIN_MIN_CHUNK_SECTORS != 0
            {
                return Err(EngineError::BadArgument(format!(
                    "thin pool chunk size {b} bytes: must be a multiple of 64 KiB from 64 KiB to 1 GiB"
                )));
            }
            Some(c)
        }
        None => None,
    };
    let mut meta_sectors = match metadata_bytes {
        None => {
            let c = chunk.unwrap_or(DEFAULT_CHUNK_SECTORS);
            let mut m = estimate_metadata_sectors(data_sectors, c);
            if chunk.is_none() {
                // lvm2 takes bigger chunks rather than more than 128 MiB of metadata.
                let mut c = c;
                while m > OPTIMAL_METADATA_SECTORS && c < THIN_MAX_CHUNK_SECTORS {
                    c <<= 1;
                    m >>= 1;
                }
                chunk = Some(c);
            } else if m > MAX_METADATA_SECTORS {
                warnings.push(format!(
                    "Chunk size is too small for pool, suggested minimum is {} KiB.",
                    estimate_chunk_sectors(data_sectors, MAX_METADATA_SECTORS) / 2
                ));
            }
            m.div_ceil(extent) * extent
        }
        Some(b) => {
            let m = b.div_ceil(extent * 512) * extent;
            let estimate = estimate_chunk_sectors(data_sectors, m);
            match chunk {
                None => chunk = Some(estimate),
                Some(c) if c < estimate => warnings.push(format!(
                    "Chunk size is smaller then suggested minimum size {} KiB.",
                    estimate / 2
                )),
                Some(_) => {}
            }
            m
        }
    };
    let chunk = chunk.unwrap_or(DEFAULT_CHUNK_SECTORS);
    let max_meta = MAX_METADATA_SECTORS.div_ceil(extent) * extent;
    let min_meta = MIN_METADATA_SECTORS.div_ceil(extent) * extent;
    meta_sectors = meta_sectors.clamp(min_meta, max_meta);
    let max_data = max_data_sectors(chunk);
    if max_data / extent < data_extents {
        return Err(EngineError::BadArgument(format!(
            "a chunk of {} KiB cannot address more than {} GiB of thin pool data; take a bigger chunk",
            chunk / 2,
            max_data / 2 / 1024 / 1024
        )));
    }
    if chunk > data_sectors {
        return Err(EngineError::BadArgument(format!(
            "a thin pool's data ({} KiB) cannot be smaller than its chunk ({} KiB)",
            data_sectors / 2,
            chunk / 2
        )));
    }
    notes.push(format!(
        "Thin pool volume with chunk size {} can address at most {} of data.",
        display_size(chunk * 512),
        display_size(max_data * 512)
    ));
    if zero && chunk >= 1024 {
        warnings.push(format!(
            "Pool zeroing and {} KiB large chunk size slows down thin provisioning.",
            chunk / 2
        ));
    }
    Ok((chunk, meta_sectors / extent, notes, warnings))
}

/// Allocates `extents` linear extents, preferring PVs other than those of `avoid` (lvm2
/// puts a pool's metadata apart from its data where it can).
fn alloc_apart(
    vg: &VolumeGroup,
    extents: u64,
    allowed: Option<&[String]>,
    avoid: &[Segment],
) -> Result<Vec<Segment>> {
    let used: Vec<String> = avoid
        .iter()
        .filter_map(|s| match &s.kind {
            SegmentKind::Striped { stripes, .. } => Some(stripes.iter().map(|s| s.pv.clone())),
            _ => None,
        })
        .flatten()
        .collect();
    let others: Vec<String> = vg
        .pvs
        .iter()
        .filter(|p| !used.contains(&p.key) && allowed.is_none_or(|a| a.contains(&p.key)))
        .map(|p| p.key.clone())
        .collect();
    let mut segments = Vec::new();
    if !others.is_empty() && alloc::extend_linear(vg, &mut segments, extents, Some(&others)).is_ok()
    {
        return Ok(segments);
    }
    segments.clear();
    alloc::extend_linear(vg, &mut segments, extents, allowed)
        .map_err(|e| alloc::no_space(vg, e))?;
    Ok(segments)
}

fn with_segments(vg: &VolumeGroup, lv: LogicalVolume) -> VolumeGroup {
    let mut v = vg.clone();
    v.lvs.push(lv);
    v
}

/// Renames LV `old` to `new` in `vg` if it is a pool or a thin LV, as lvm2 does: a pool's
/// `_tmeta` and `_tdata` follow its name, and every segment naming either LV follows.
/// Returns false for any other LV; refuses a pool's hidden LVs and the spare.
pub(crate) fn rename_in_pool(vg: &mut VolumeGroup, old: &str, new: &str) -> Result<bool> {
    let vg_name = vg.name.clone();
    let Some(lv) = vg.lv(old) else {
        return Ok(false);
    };
    if vg.pool_of_metadata(old).is_some() || vg.pool_of_data(old).is_some() || vg.is_pmspare(lv) {
        return Err(refuse(
            &vg_name,
            format!("LV '{old}' is internal to thin provisioning; rename its pool instead"),
        ));
    }
    let mut renames = vec![(old.to_string(), new.to_string())];
    if let Some(p) = lv.thin_pool() {
        renames.push((p.metadata.clone(), format!("{new}_tmeta")));
        renames.push((p.data.clone(), format!("{new}_tdata")));
    } else if lv.thin().is_none() {
        return Ok(false);
    }
    for (_, to) in &renames {
        if vg.lv(to).is_some() {
            return Err(EngineError::LvExists {
                vg: vg_name.clone(),
                lv: to.clone(),
            });
        }
    }
    let renamed = |name: &mut String| {
        if let Some((_, to)) = renames.iter().find(|(from, _)| from == name) {
            *name = to.clone();
        }
    };
    for l in &mut vg.lvs {
        renamed(&mut l.name);
        for seg in &mut l.segments {
            match &mut seg.kind {
                SegmentKind::ThinPool(p) => {
                    renamed(&mut p.metadata);
                    renamed(&mut p.data);
                    for m in &mut p.messages {
                        if let ThinMessage::Create(n) = m {
                            renamed(n);
                        }
                    }
                }
                SegmentKind::Thin(t) => {
                    renamed(&mut t.pool);
                    for n in [&mut t.origin, &mut t.merge, &mut t.external_origin]
                        .into_iter()
                        .flatten()
                    {
                        renamed(n);
                    }
                }
                _ => {}
            }
        }
    }
    Ok(true)
}

impl Engine {
    /// Makes thin pool `pool` (lvm2's `lvcreate --type thin-pool`): `POOL_tdata` of the
    /// size asked, `POOL_tmeta` as lvm2 sizes it (or as asked), the VG's `lvolN_pmspare`
    /// made or grown to match, fresh pool metadata written on `_tmeta`'s extents, then one
    /// commit: a crash before it leaves free extents, after it a whole pool.
    pub fn lv_thin_pool_create(
        &self,
        vg_name: &str,
        pool: &str,
        opts: &PoolCreateOptions,
    ) -> Result<ThinOutcome> {
        check_new_lv_name(&format!("new thin pool in VG '{vg_name}'"), pool)?;
        if opts.size.sign.is_some() {
            return Err(EngineError::BadArgument(
                "a new pool's size cannot be relative (+/-)".into(),
            ));
        }
        let _lock = self.lock_vg(vg_name)?;
        let scan = self.scan_with(true)?;
        let state = Self::vg_for_change(&scan, vg_name)?;
        let mut vg = state.vg.clone();
        for name in [
            pool.to_string(),
            format!("{pool}_tmeta"),
            format!("{pool}_tdata"),
        ] {
            if vg.lv(&name).is_some() {
                return Err(EngineError::LvExists {
                    vg: vg_name.into(),
                    lv: name,
                });
            }
        }
        if vg.max_lv > 0
            && vg.lvs.iter().filter(|l| vg.lv_is_visible(l)).count() as u64 >= vg.max_lv
        {
            return Err(refuse(
                vg_name,
                format!("it already holds its maximum of {} LVs", vg.max_lv),
            ));
        }
        let allowed = Self::allowed_keys(&scan, &vg, &opts.pvs)?;
        let data_extents = alloc::extents_for(&vg, opts.size.amount, allowed.as_deref());
        if data_extents == 0 {
            return Err(EngineError::BadArgument(
                "the pool would have no data extents; give a size of at least one extent".into(),
            ));
        }
        let (chunk, meta_extents, notes, warnings) = pool_params(
            &vg,
            data_extents,
            opts.chunk_bytes,
            opts.metadata_bytes,
            opts.zero,
        )?;
        let need = data_extents + meta_extents;
        if vg.pe_free_total() < need {
            return Err(EngineError::NoSpace {
                vg: vg_name.into(),
                need,
                free: vg.pe_free_total(),
                detail: format!(
                    " ({data_extents} for the pool's data, {meta_extents} for its metadata)"
                ),
            });
        }
        // As lvm2: the spare first (as large as the largest metadata LV, this pool's
        // counted), then the data, then the metadata apart from it.
        let tmeta_name = format!("{pool}_tmeta");
        let tdata_name = format!("{pool}_tdata");
        let want = largest_metadata(&vg).max(meta_extents);
        grow_pmspare(self, &mut vg, want, allowed.as_deref())?;
        let mut data_segments = Vec::new();
        alloc::extend_linear(&vg, &mut data_segments, data_extents, allowed.as_deref())
            .map_err(|e| alloc::no_space(&vg, e))?;
        let tdata = new_lv(self, &tdata_name, false, data_segments.clone());
        let meta_segments = alloc_apart(
            &with_segments(&vg, tdata.clone()),
            meta_extents,
            allowed.as_deref(),
            &data_segments,
        )?;
        let tmeta = new_lv(self, &tmeta_name, false, meta_segments);
        let pool_lv = new_lv(
            self,
            pool,
            true,
            vec![Segment {
                start_extent: 0,
                extent_count: data_extents,
                kind: SegmentKind::ThinPool(ThinPoolSegment {
                    metadata: tmeta_name.clone(),
                    data: tdata_name.clone(),
                    transaction_id: 0,
                    chunk_size_sectors: chunk,
                    discards: Some(opts.discards),
                    zero_new_blocks: opts.zero.then_some(1),
                    crop_metadata: None,
                    messages: Vec::new(),
                    extra: Vec::new(),
                }),
            }],
        );
        vg.insert_lv(pool_lv);
        vg.lvs.push(tmeta);
        vg.lvs.push(tdata);
        vg.validate()?;
        // Fresh metadata on the new _tmeta's extents (free until the commit), its start
        // zeroed first as lvm2 wipes it.
        let mut tmp = state.clone();
        tmp.vg = vg.clone();
        zero_lv_start(&scan, state, &vg, &tmeta_name, 4096)?;
        if let Some(spare) = vg.pmspare().map(|l| l.name.clone()) {
            if state.vg.lv(&spare).is_none() {
                zero_lv_start(&scan, state, &vg, &spare, 4096)?;
            }
        }
        let device = lv_device(&scan, &tmp, &tmeta_name)?;
        let nr_blocks = data_extents * vg.extent_size_sectors / chunk;
        PoolMetadata::format(device, chunk as u32, nr_blocks)
            .map_err(|e| pool_error(vg_name, pool, e))?;
        self.commit(&scan, Some(state), vg, &[])?;
        Ok(ThinOutcome {
            lvs: vec![pool.to_string()],
            warnings,
            notes,
        })
    }

    /// Carries out pool `pool`'s queued messages if it is one transaction behind the VG,
    /// and drops them from the VG once the pool has them (lvm2's way to finish a change
    /// cut short). The VG lock must be held.
    fn settle_pool_locked(
        &self,
        vg_name: &str,
        pool: &str,
        opener: &mut dyn PoolOpener,
    ) -> Result<()> {
        let scan = self.scan_with(true)?;
        let state = Self::vg_for_change(&scan, vg_name)?;
        let seg = pool_segment(&state.vg, pool)?;
        if seg.messages.is_empty() {
            return Ok(());
        }
        let want = seg.transaction_id;
        let mut changer = opener.open(&scan, state, pool)?;
        let have = changer.info()?.transaction_id;
        if have + 1 == want {
            let messages = pool_messages(&state.vg, pool, have)?;
            changer.send(&messages)?;
        } else if have != want {
            return Err(refuse(
                vg_name,
                format!(
                    "thin pool '{pool}' is at transaction {have} but the VG expects {want} \
                     (or {} with its queued messages); repair it with lvm2's lvconvert --repair",
                    want - 1
                ),
            ));
        }
        drop(changer);
        let mut vg = state.vg.clone();
        if let Some(p) = vg.lv_mut(pool).and_then(|l| l.thin_pool_mut()) {
            p.messages.clear();
        }
        self.commit(&scan, Some(state), vg, &[])?;
        Ok(())
    }

    /// Checks that pool `pool`'s metadata is at the VG's transaction (settling queued
    /// messages first).
    fn check_pool_locked(
        &self,
        vg_name: &str,
        pool: &str,
        opener: &mut dyn PoolOpener,
    ) -> Result<()> {
        self.settle_pool_locked(vg_name, pool, opener)?;
        let scan = self.scan_with(true)?;
        let state = Self::vg_for_change(&scan, vg_name)?;
        let want = pool_segment(&state.vg, pool)?.transaction_id;
        let have = opener.open(&scan, state, pool)?.info()?.transaction_id;
        if have != want {
            return Err(refuse(
                vg_name,
                format!(
                    "thin pool '{pool}' is at transaction {have} but the VG expects {want}; \
                     repair it with lvm2's lvconvert --repair"
                ),
            ));
        }
        Ok(())
    }

    /// Settles the queued messages of pool `pool` (see the module's description).
    pub fn thin_pool_settle(&self, vg_name: &str, pool: &str) -> Result<()> {
        let _lock = self.lock_vg(vg_name)?;
        self.settle_pool_locked(vg_name, pool, &mut self.pool_opener())
    }

    /// The pools of VG `vg` (every VG when None) that carry queued messages: a change cut
    /// short between its commits, to settle before the pool is loaded.
    pub fn unsettled_pools(&self, vg: Option<&str>) -> Result<Vec<(String, String)>> {
        let scan = self.scan()?;
        Ok(scan
            .vgs
            .values()
            .filter(|s| vg.is_none_or(|v| v == s.vg.name))
            .flat_map(|s| {
                s.vg.lvs
                    .iter()
                    .filter(|l| l.thin_pool().is_some_and(|p| !p.messages.is_empty()))
                    .map(|l| (s.vg.name.clone(), l.name.clone()))
            })
            .collect())
    }

    /// Makes thin LV `name` of virtual size `size` in pool `pool` (lvm2's
    /// `lvcreate -V SIZE -T VG/POOL -n NAME`).
    pub fn lv_thin_create(
        &self,
        vg_name: &str,
        name: &str,
        pool: &str,
        size: SizeArg,
    ) -> Result<ThinOutcome> {
        self.lv_thin_create_with(vg_name, name, pool, size, &mut self.pool_opener())
    }

    pub fn lv_thin_create_with(
        &self,
        vg_name: &str,
        name: &str,
        pool: &str,
        size: SizeArg,
        opener: &mut dyn PoolOpener,
    ) -> Result<ThinOutcome> {
        check_new_lv_name(&format!("new thin LV in VG '{vg_name}'"), name)?;
        if size.sign.is_some() {
            return Err(EngineError::BadArgument(
                "a thin LV's size cannot be relative (+/-)".into(),
            ));
        }
        let _lock = self.lock_vg(vg_name)?;
        self.check_pool_locked(vg_name, pool, opener)?;
        let scan = self.scan_with(true)?;
        let state = Self::vg_for_change(&scan, vg_name)?;
        let mut vg = state.vg.clone();
        if vg.lv(name).is_some() {
            return Err(EngineError::LvExists {
                vg: vg_name.into(),
                lv: name.into(),
            });
        }
        let extents = match size.amount {
            crate::units::Amount::Bytes(b) => b.div_ceil(vg.extent_size_bytes()),
            crate::units::Amount::Extents(n) => n,
            crate::units::Amount::Percent(..) => {
                return Err(EngineError::BadArgument(
                    "a thin LV's virtual size is a size (-V 1G), not a percentage".into(),
                ))
            }
        };
        if extents == 0 {
            return Err(EngineError::BadArgument(
                "a thin LV needs a virtual size of at least one extent".into(),
            ));
        }
        let lv = self.add_thin(&mut vg, name, pool, extents, None)?;
        let mut out = ThinOutcome {
            lvs: vec![lv],
            ..Default::default()
        };
        out.warnings.extend(overprovisioning(&vg, pool));
        self.commit(&scan, Some(state), vg, &[])?;
        drop(scan);
        self.settle_pool_locked(vg_name, pool, opener)?;
        Ok(out)
    }

    /// Adds thin LV `name` to `vg` in `pool` with the pool's transaction raised and the
    /// creation queued; returns its name.
    fn add_thin(
        &self,
        vg: &mut VolumeGroup,
        name: &str,
        pool: &str,
        extents: u64,
        origin: Option<&str>,
    ) -> Result<String> {
        let vg_name = vg.name.clone();
        let seg = pool_segment(vg, pool)?.clone();
        if !seg.messages.is_empty() {
            return Err(refuse(
                &vg_name,
                format!("thin pool '{pool}' has queued messages; settle it first"),
            ));
        }
        let device_id = vg.next_thin_device_id(pool).ok_or_else(|| {
            refuse(
                &vg_name,
                format!("thin pool '{pool}' has no free device id left"),
            )
        })?;
        let mut lv = new_lv(
            self,
            name,
            true,
            vec![Segment {
                start_extent: 0,
                extent_count: extents,
                kind: SegmentKind::Thin(ThinSegment {
                    pool: pool.to_string(),
                    transaction_id: seg.transaction_id,
                    device_id,
                    origin: origin.map(str::to_string),
                    merge: None,
                    external_origin: None,
                    extra: Vec::new(),
                }),
            }],
        );
        if origin.is_some() {
            // lvm2 skips thin snapshots in ordinary activation.
            lv.flags.push("ACTIVATION_SKIP".into());
        }
        vg.insert_lv(lv);
        let p = vg
            .lv_mut(pool)
            .and_then(|l| l.thin_pool_mut())
            .expect("checked above");
        p.transaction_id += 1;
        p.messages.push(ThinMessage::Create(name.to_string()));
        Ok(name.to_string())
    }

    /// Makes thin snapshot `name` of thin LV `origin` (lvm2's `lvcreate -s VG/THIN -n NAME`
    /// without a size): a thin LV of the origin's size sharing all its blocks, skipped by
    /// ordinary activation as lvm2 marks it.
    pub fn lv_thin_snapshot(&self, vg_name: &str, name: &str, origin: &str) -> Result<ThinOutcome> {
        self.lv_thin_snapshot_with(vg_name, name, origin, &mut self.pool_opener())
    }

    pub fn lv_thin_snapshot_with(
        &self,
        vg_name: &str,
        name: &str,
        origin: &str,
        opener: &mut dyn PoolOpener,
    ) -> Result<ThinOutcome> {
        check_new_lv_name(&format!("new thin snapshot in VG '{vg_name}'"), name)?;
        let pool = {
            let scan = self.scan()?;
            let state = scan
                .vg(vg_name)
                .ok_or_else(|| EngineError::VgNotFound(vg_name.into()))?;
            let o = state.vg.lv(origin).ok_or_else(|| EngineError::LvNotFound {
                vg: vg_name.into(),
                lv: origin.into(),
            })?;
            match o.thin() {
                Some(t) => t.pool.clone(),
                None => {
                    return Err(refuse(
                        vg_name,
                        format!("LV '{origin}' is not a thin LV; a snapshot without a size is a thin snapshot"),
                    ))
                }
            }
        };
        let _lock = self.lock_vg(vg_name)?;
        self.check_pool_locked(vg_name, &pool, opener)?;
        let scan = self.scan_with(true)?;
        let state = Self::vg_for_change(&scan, vg_name)?;
        let mut vg = state.vg.clone();
        if vg.lv(name).is_some() {
            return Err(EngineError::LvExists {
                vg: vg_name.into(),
                lv: name.into(),
            });
        }
        let extents =
            vg.lv(origin)
                .map(|l| l.extent_count())
                .ok_or_else(|| EngineError::LvNotFound {
                    vg: vg_name.into(),
                    lv: origin.into(),
                })?;
        self.add_thin(&mut vg, name, &pool, extents, Some(origin))?;
        let mut out = ThinOutcome {
            lvs: vec![name.to_string()],
            ..Default::default()
        };
        out.warnings.extend(overprovisioning(&vg, &pool));
        self.commit(&scan, Some(state), vg, &[])?;
        drop(scan);
        self.settle_pool_locked(vg_name, &pool, opener)?;
        Ok(out)
    }

    /// Removes LV `lv` of a pool: a thin LV (its device deleted from the pool; its thin
    /// snapshots keep their blocks and lose their origin), or a pool with its `_tmeta`,
    /// `_tdata` and (the last pool) the VG's spare; a pool with thin LVs only with
    /// `force`, which removes them with it. Returns the names removed.
    pub fn lv_thin_remove(&self, vg_name: &str, lv: &str, force: bool) -> Result<Vec<String>> {
        let _lock = self.lock_vg(vg_name)?;
        self.thin_remove_locked(vg_name, lv, force, &mut self.pool_opener())
    }

    pub(crate) fn thin_remove_locked(
        &self,
        vg_name: &str,
        lv: &str,
        force: bool,
        opener: &mut dyn PoolOpener,
    ) -> Result<Vec<String>> {
        let scan = self.scan_with(true)?;
        let state = Self::vg_for_change(&scan, vg_name)?;
        let vg0 = &state.vg;
        let l = vg0.lv(lv).ok_or_else(|| EngineError::LvNotFound {
            vg: vg_name.into(),
            lv: lv.into(),
        })?;
        if let Some(p) = vg0.pool_of_metadata(lv).or_else(|| vg0.pool_of_data(lv)) {
            return Err(refuse(
                vg_name,
                format!(
                    "LV '{lv}' is part of thin pool '{}'; remove the pool instead",
                    p.name
                ),
            ));
        }
        if vg0.is_pmspare(l) {
            return Err(refuse(
                vg_name,
                format!("LV '{lv}' is the VG's pool metadata spare; it goes with the last pool"),
            ));
        }
        if l.thin_pool().is_some() {
            let thins: Vec<String> = vg0.thin_lvs_of(lv).iter().map(|t| t.name.clone()).collect();
            if !thins.is_empty() && !force {
                return Err(refuse(
                    vg_name,
                    format!(
                        "thin pool '{lv}' holds thin LV(s) {}; remove them first, or use --force to remove them with it",
                        thins.join(", ")
                    ),
                ));
            }
            let seg = l.thin_pool().expect("a pool").clone();
            let mut gone = thins;
            gone.push(lv.to_string());
            gone.push(seg.metadata.clone());
            gone.push(seg.data.clone());
            let mut vg = vg0.clone();
            vg.lvs.retain(|x| !gone.contains(&x.name));
            if vg.thin_pools().is_empty() {
                if let Some(spare) = vg.pmspare().map(|s| s.name.clone()) {
                    vg.lvs.retain(|x| x.name != spare);
                    gone.push(spare);
                }
            }
            self.commit(&scan, Some(state), vg, &[])?;
            return Ok(gone);
        }
        let Some(thin) = l.thin().cloned() else {
            return Err(refuse(vg_name, format!("LV '{lv}' is not in a thin pool")));
        };
        drop(scan);
        self.check_pool_locked(vg_name, &thin.pool, opener)?;
        let scan = self.scan_with(true)?;
        let state = Self::vg_for_change(&scan, vg_name)?;
        let mut vg = state.vg.clone();
        vg.lvs.retain(|x| x.name != lv);
        for other in &mut vg.lvs {
            if let Some(t) = other.thin_mut() {
                if t.origin.as_deref() == Some(lv) {
                    t.origin = None;
                }
                if t.merge.as_deref() == Some(lv) {
                    t.merge = None;
                }
            }
        }
        let p = vg
            .lv_mut(&thin.pool)
            .and_then(|x| x.thin_pool_mut())
            .ok_or_else(|| refuse(vg_name, format!("thin pool '{}' vanished", thin.pool)))?;
        p.transaction_id += 1;
        p.messages.push(ThinMessage::Delete(thin.device_id));
        self.commit(&scan, Some(state), vg, &[])?;
        drop(scan);
        self.settle_pool_locked(vg_name, &thin.pool, opener)?;
        Ok(vec![lv.to_string()])
    }

    /// Sets what pool `pool` does when it runs out of data space (lvm2's `lvchange
    /// --errorwhenfull y|n`): fail the writes that need a new block, or hold them until
    /// the pool grows. A served pool takes it on its next table load.
    pub fn lv_thin_pool_when_full(&self, vg_name: &str, pool: &str, error: bool) -> Result<()> {
        let _lock = self.lock_vg(vg_name)?;
        let scan = self.scan_with(true)?;
        let state = Self::vg_for_change(&scan, vg_name)?;
        let mut vg = state.vg.clone();
        pool_segment(&vg, pool)?;
        let lv = vg.lv_mut(pool).expect("a pool's segment was found");
        if error_when_full(lv) == error {
            return Ok(());
        }
        lv.flags.retain(|f| f != ERROR_WHEN_FULL);
        if error {
            lv.flags.push(ERROR_WHEN_FULL.to_string());
        }
        self.commit(&scan, Some(state), vg, &[]).map(|_| ())
    }

    /// Grows pool `pool`'s data to `size` (absolute or `+`), its data space map with it.
    pub fn lv_thin_pool_extend(
        &self,
        vg_name: &str,
        pool: &str,
        size: SizeArg,
        pvs: &[String],
    ) -> Result<LogicalVolume> {
        let _lock = self.lock_vg(vg_name)?;
        self.thin_pool_extend_locked(vg_name, pool, size, pvs, &mut self.pool_opener())
    }

    pub(crate) fn thin_pool_extend_locked(
        &self,
        vg_name: &str,
        pool: &str,
        size: SizeArg,
        pvs: &[String],
        opener: &mut dyn PoolOpener,
    ) -> Result<LogicalVolume> {
        let scan = self.scan_with(true)?;
        let state = Self::vg_for_change(&scan, vg_name)?;
        let mut vg = state.vg.clone();
        let seg = pool_segment(&vg, pool)?.clone();
        let current = vg.lv(pool).map_or(0, |l| l.extent_count());
        let allowed = Self::allowed_keys(&scan, &vg, pvs)?;
        let amount = alloc::extents_for(&vg, size.amount, allowed.as_deref());
        let target = match size.sign {
            None => amount,
            Some(Sign::Plus) => current.saturating_add(amount),
            Some(Sign::Minus) => {
                return Err(EngineError::BadArgument(
                    "a thin pool's data cannot shrink".into(),
                ))
            }
        };
        if target <= current {
            return Err(EngineError::BadArgument(format!(
                "thin pool '{vg_name}/{pool}' already has {current} extents of data; the new size must be larger"
            )));
        }
        let max = max_data_sectors(seg.chunk_size_sectors) / vg.extent_size_sectors;
        if target > max {
            return Err(EngineError::BadArgument(format!(
                "thin pool '{vg_name}/{pool}' with chunks of {} KiB addresses at most {max} extents",
                seg.chunk_size_sectors / 2
            )));
        }
        let mut segments = vg
            .lv(&seg.data)
            .map(|l| l.segments.clone())
            .unwrap_or_default();
        alloc::extend_linear(&vg, &mut segments, target - current, allowed.as_deref())
            .map_err(|e| alloc::no_space(&vg, e))?;
        if let Some(d) = vg.lv_mut(&seg.data) {
            d.segments = segments;
        }
        let p = vg.lv_mut(pool).expect("found above");
        p.segments[0].extent_count = target;
        let result = p.clone();
        // The VG first: a pool whose data LV is larger than its space map grows it at the
        // next activation, in the kernel and here.
        let extent = vg.extent_size_sectors;
        self.commit(&scan, Some(state), vg, &[])?;
        drop(scan);
        let scan = self.scan_with(true)?;
        let state = Self::vg_for_change(&scan, vg_name)?;
        let mut changer = opener.open(&scan, state, pool)?;
        changer.grow_data(target * extent / seg.chunk_size_sectors)?;
        Ok(result)
    }

    /// Grows pool `pool`'s metadata LV to `size` (absolute or `+`; lvm2's
    /// `lvextend --poolmetadatasize`), its metadata space map with it, and the VG's spare
    /// to match.
    pub fn lv_thin_pool_extend_metadata(
        &self,
        vg_name: &str,
        pool: &str,
        size: SizeArg,
        pvs: &[String],
    ) -> Result<LogicalVolume> {
        let _lock = self.lock_vg(vg_name)?;
        let scan = self.scan_with(true)?;
        let state = Self::vg_for_change(&scan, vg_name)?;
        let mut vg = state.vg.clone();
        let seg = pool_segment(&vg, pool)?.clone();
        let meta = vg
            .lv(&seg.metadata)
            .cloned()
            .ok_or_else(|| EngineError::LvNotFound {
                vg: vg_name.into(),
                lv: seg.metadata.clone(),
            })?;
        let current = meta.extent_count();
        let allowed = Self::allowed_keys(&scan, &vg, pvs)?;
        let amount = alloc::extents_for(&vg, size.amount, allowed.as_deref());
        let target = match size.sign {
            None => amount,
            Some(Sign::Plus) => current.saturating_add(amount),
            Some(Sign::Minus) => {
                return Err(EngineError::BadArgument(
                    "a thin pool's metadata cannot shrink".into(),
                ))
            }
        };
        let max = MAX_METADATA_SECTORS.div_ceil(vg.extent_size_sectors);
        let target = target.min(max);
        if target <= current {
            return Err(EngineError::BadArgument(format!(
                "the metadata of thin pool '{vg_name}/{pool}' already has {current} extents (at most {max} are used); the new size must be larger"
            )));
        }
        let mut segments = meta.segments.clone();
        alloc::extend_linear(&vg, &mut segments, target - current, allowed.as_deref())
            .map_err(|e| alloc::no_space(&vg, e))?;
        let m = vg.lv_mut(&seg.metadata).expect("found above");
        m.segments = segments;
        let result = m.clone();
        let want = largest_metadata(&vg);
        grow_pmspare(self, &mut vg, want, allowed.as_deref())?;
        self.commit(&scan, Some(state), vg, &[])?;
        drop(scan);
        let scan = self.scan_with(true)?;
        let state = Self::vg_for_change(&scan, vg_name)?;
        let mut changer = self.pool_opener().open(&scan, state, pool)?;
        changer.grow_metadata()?;
        Ok(result)
    }
}

/// Checks pool `pool`'s metadata as `thin_check` does ([`tessera_formats::thin::check`]:
/// checksums, btrees, mappings inside the pool, both space maps' counts, each device's
/// details), and that it is at the transaction the VG expects (a mismatch is the second
/// value). Reads only. `progress` gets (metadata blocks read, blocks in use).
pub fn check_pool(
    scan: &Scan,
    state: &VgState,
    pool: &str,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(tessera_formats::thin::CheckReport, Option<String>)> {
    let seg = pool_segment(&state.vg, pool)?;
    let device = lv_device(scan, state, &seg.metadata)?;
    let err = |e: ThinMetadataError| pool_error(&state.vg.name, pool, e);
    let report = tessera_formats::thin::check(&device, progress).map_err(err)?;
    let mut mismatch = None;
    if let Ok(meta) = PoolMetadata::open(device) {
        let have = meta.info().transaction_id;
        let want = seg.transaction_id;
        let queued = !seg.messages.is_empty();
        if have != want && !(queued && have + 1 == want) {
            mismatch = Some(format!(
                "{}/{pool}: the pool's metadata is at transaction {have}, the VG expects {want}",
                state.vg.name
            ));
        }
    }
    Ok((report, mismatch))
}

/// The used metadata blocks as the kernel's `thin-pool` status reports them (and lvs's
/// Meta% shows): the allocated blocks plus the reserve dm-thin keeps back for its own
/// commits, a tenth of the metadata up to 4096 blocks.
pub fn metadata_used_as_reported(info: &PoolInfo) -> u64 {
    let total = info.nr_metadata_blocks;
    let reserve = (total / 10).min(4096);
    total - info.free_metadata_blocks.min(total).saturating_sub(reserve)
}

/// A percentage as lvs shows it: lvm2's fixed-point percent (truncated to millionths of
/// a percent), never 0.00 when something is used nor 100.00 when something is free, two
/// decimals.
pub fn percent(used: u64, total: u64) -> String {
    const P100: i64 = 100_000_000;
    const R: i64 = 10_000;
    let p: i64 = if total == 0 || used == total {
        P100
    } else if used == 0 {
        0
    } else {
        match (P100 as f64 * (used as f64 / total as f64)) as i64 {
            P100 => P100 - 1,
            0 => 1,
            p => p,
        }
    };
    let f = if p < R && p > 0 {
        0.01f32
    } else if p > P100 - R && p < P100 {
        (P100 - R) as f32 / 1_000_000f32
    } else {
        p as f32 / 1_000_000f32
    };
    two_places(f64::from(f))
}

/// `printf("%.2f")`: the exact binary value rounded to two places, ties to even.
fn two_places(x: f64) -> String {
    let scaled = x * 100.0;
    let floor = scaled.floor();
    let frac = scaled - floor;
    let cents = if frac > 0.5 || (frac == 0.5 && (floor as i64) % 2 == 1) {
        floor as i64 + 1
    } else {
        floor as i64
    };
    format!("{}.{:02}", cents / 100, cents % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What lvm2 2.03 chose in the kernel lab for pools of these sizes in a VG of 4 MiB
    /// extents, without -c or --poolmetadatasize: (data, chunk, metadata), bytes.
    #[test]
    fn default_chunk_and_metadata_are_lvm2s() {
        let text = include_str!("../../../../formats/src/lvm2/testdata/thin_vg.txt");
        let mut vg = VolumeGroup::from_text(text.as_bytes()).unwrap().0;
        vg.extent_size_sectors = 8192;
        const M: u64 = 1 << 20;
        for (data, chunk, meta) in [
            (100 * M, 64 << 10, 4 * M),
            (1 << 30, 64 << 10, 4 * M),
            (10 << 30, 64 << 10, 12 * M),
            (100 << 30, 64 << 10, 100 * M),
            (1 << 40, 512 << 10, 128 * M),
            (2 << 40, 1 << 20, 128 * M),
        ] {
            let extents = data / (4 * M);
            let (c, m, notes, _) = pool_params(&vg, extents, None, None, false).unwrap();
            assert_eq!((c * 512, m * 4 * M), (chunk, meta), "{data}");
            assert!(notes[0].contains("can address at most"), "{notes:?}");
        }
        // 64 KiB chunks address <15.88 TiB: 16 TiB of data needs bigger ones.
        let err = pool_params(&vg, (16 << 40) / (4 * M), Some(64 << 10), None, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot address more than"), "{err}");
    }

    #[test]
    fn sizes_as_lvm2_estimates_them() {
        // 16 MiB at 64 KiB: 32 sectors, then lvm2's minimum of 2 MiB.
        assert_eq!(estimate_metadata_sectors(32768, 128), 32);
        // 1 TiB at 64 KiB: 256 MiB of metadata, so lvm2 doubles the chunk.
        assert_eq!(estimate_metadata_sectors(1 << 31, 128), 1 << 21);
        assert_eq!(estimate_chunk_sectors(1 << 31, MAX_METADATA_SECTORS), 128);
        assert_eq!(estimate_chunk_sectors(32768, 4096), 128);
        // The most 64 KiB chunks address: about 15.88 TiB.
        assert_eq!(max_data_sectors(128) / 2 / 1024 / 1024, 16_256);
        assert_eq!(percent(72, 256), "28.12");
        // The kernel's status of a 2 MiB pool metadata with 12 blocks allocated: 63/512.
        let info = PoolInfo {
            transaction_id: 3,
            time: 0,
            data_block_sectors: 128,
            nr_data_blocks: 256,
            free_data_blocks: 182,
            nr_metadata_blocks: 512,
            free_metadata_blocks: 500,
            metadata_snap: None,
            needs_check: false,
        };
        assert_eq!(metadata_used_as_reported(&info), 63);
        assert_eq!(percent(63, 512), "12.30");
        assert_eq!(display_size(max_data_sectors(128) * 512), "<15.88 TiB");
        assert_eq!(display_size(max_data_sectors(512) * 512), "63.50 TiB");
        assert_eq!(display_size(64 << 10), "64.00 KiB");
        assert_eq!(display_size(96 << 20), "96.00 MiB");
        assert_eq!(percent(62, 512), "12.11");
        assert_eq!(percent(64, 512), "12.50");
        assert_eq!(percent(0, 512), "0.00");
        assert_eq!(percent(1, 1_000_000), "0.01");
        assert_eq!(percent(999_999, 1_000_000), "99.99");
        assert_eq!(percent(1, 1), "100.00");
    }
}
