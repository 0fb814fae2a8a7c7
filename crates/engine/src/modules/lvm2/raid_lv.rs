//! lvm2's raid LVs in user space: the `raid` row of a raid LV, over mapped devices of its
//! data sub-LVs (`LV_rimage_N`). The metadata sub-LVs (`LV_rmeta_N`) are read, not mapped:
//! their dm-raid superblocks say which images failed and where data starts in each image.
//!
//! An image is left out (`-` in the row, the set degraded) when a PV under its data sub-LV is
//! missing, when the newest superblock marks it failed, or when its own superblock is older
//! than the newest (it missed writes). More left out than the level survives is refused.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use tessera_block::{BlockDevice, BlockError, SharedDevice};
use tessera_formats::dmraid::{self, DmRaidSuperblock};
use tessera_formats::lvm2::vg::{LogicalVolume, RaidLevel, RaidSegment};
use tessera_mapper::{escape_arg, MappedDevice, Table, TargetRegistry};

use super::scan::{Scan, VgState};
use super::table::{dm_name, load_plain};
use crate::error::{EngineError, Result};

/// How a raid LV is put together from what the scan found.
#[derive(Debug, Clone, PartialEq)]
pub struct RaidPlan {
    /// The LV's table: one `raid` row, the data devices named by their dm names.
    pub table: String,
    /// Per slot: the data sub-LV the row uses, or None where the slot is `-`.
    pub images: Vec<Option<String>>,
    /// The slots left out, each with why.
    pub left_out: Vec<(usize, String)>,
    /// What was noticed but does not stop activation (unreadable metadata sub-LVs).
    pub notes: Vec<String>,
}

impl RaidPlan {
    pub fn is_degraded(&self) -> bool {
        !self.left_out.is_empty()
    }

    /// "image 1 (r5_rimage_1): its PV pv1 is missing; ..." for messages.
    pub fn describe_left_out(&self) -> String {
        self.left_out
            .iter()
            .map(|(slot, why)| format!("image {slot}: {why}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn refused(state: &VgState, why: String) -> EngineError {
    EngineError::Refused {
        vg: state.vg.name.clone(),
        why,
    }
}

/// PV keys under a plain sub-LV that the scan did not find.
fn missing_pvs(state: &VgState, lv: &LogicalVolume) -> Vec<String> {
    let keys = state.vg.pv_keys();
    let mut out: Vec<String> = lv
        .segments
        .iter()
        .flat_map(|s| s.pv_areas(&keys))
        .map(|a| a.pv)
        .filter(|pv| !state.present.contains_key(pv))
        .collect();
    out.dedup();
    out
}

/// A plain sub-LV as a live mapped device over the scanned PVs.
fn map_sub_lv(
    scan: &Scan,
    state: &VgState,
    name: &str,
    registry: Arc<TargetRegistry>,
) -> Result<Arc<MappedDevice>> {
    let device = MappedDevice::new(dm_name(&state.vg.name, name), registry);
    load_plain(scan, state, name, &device)?;
    device.resume()?;
    Ok(Arc::new(device))
}

/// The superblock on metadata sub-LV `name`: Ok(None) if it was never written.
fn read_superblock(
    scan: &Scan,
    state: &VgState,
    name: &str,
) -> Result<Option<DmRaidSuperblock>, String> {
    let device = map_sub_lv(scan, state, name, Arc::new(TargetRegistry::new()))
        .map_err(|e| e.to_string())?;
    match dmraid::read(device.as_ref() as &dyn BlockDevice) {
        Ok(sb) => Ok(Some(sb)),
        Err(e) if e.is_blank() => Ok(None),
        Err(e) => Err(format!("{}/{name}: {e}", state.vg.name)),
    }
}

/// Whether a raid10 (near layout, `copies` copies, `n` images) with `missing` slots still
/// holds a copy of every chunk: chunk k's copies are on slots (k*copies + j) mod n.
fn raid10_survives(n: usize, copies: usize, missing: &[usize]) -> bool {
    let copies = copies.clamp(1, n.max(1));
    (0..n).all(|k| (0..copies).any(|j| !missing.contains(&((k * copies + j) % n))))
}

fn survives(raid: &RaidSegment, missing: &[usize]) -> bool {
    let n = raid.images.len();
    match raid.level {
        RaidLevel::Raid10 => raid10_survives(n, raid.copies(), missing),
        RaidLevel::Raid1 => missing.len() < n,
        _ => missing.len() <= raid.tolerated(),
    }
}

/// The plan for raid LV `lv_name`: which images serve and the `raid` row over them.
pub fn raid_plan(scan: &Scan, state: &VgState, lv_name: &str) -> Result<RaidPlan> {
    let vg = &state.vg;
    let lv = vg.lv(lv_name).ok_or_else(|| EngineError::LvNotFound {
        vg: vg.name.clone(),
        lv: lv_name.into(),
    })?;
    let raid = lv
        .raid()
        .ok_or_else(|| refused(state, format!("LV '{lv_name}' is not a raid LV")))?;
    if lv.segments.len() != 1 {
        return Err(refused(
            state,
            format!(
                "raid LV '{lv_name}' has {} segments; tessera activates raid LVs of one",
                lv.segments.len()
            ),
        ));
    }
    let len = lv.segments[0].extent_count * vg.extent_size_sectors;
    let n = raid.images.len();
    let mut left_out: Vec<(usize, String)> = Vec::new();
    let mut notes = Vec::new();
    let mut supers: Vec<Option<DmRaidSuperblock>> = vec![None; n];
    for (slot, image) in raid.images.iter().enumerate() {
        let sub = |name: &str| {
            vg.lv(name).ok_or_else(|| {
                refused(
                    state,
                    format!(
                        "raid LV '{lv_name}' names sub-LV '{name}', which the VG does not have"
                    ),
                )
            })
        };
        let data = sub(&image.data)?;
        if !data.is_plain() {
            return Err(refused(
                state,
                format!(
                    "raid LV '{lv_name}': image {slot} ({}) is not linear or striped",
                    image.data
                ),
            ));
        }
        let missing = missing_pvs(state, data);
        if !missing.is_empty() {
            left_out.push((
                slot,
                format!("{} is on missing PV {}", image.data, missing.join(", ")),
            ));
        }
        if let Some(meta) = &image.meta {
            let meta_lv = sub(meta)?;
            if meta_lv.is_plain() && missing_pvs(state, meta_lv).is_empty() {
                match read_superblock(scan, state, meta) {
                    Ok(sb) => supers[slot] = sb,
                    Err(e) => notes.push(e),
                }
            }
        }
    }
    // The newest superblock speaks for the set, as the kernel takes it.
    let newest = supers.iter().flatten().max_by_key(|sb| sb.events).cloned();
    let mut data_offset = 0;
    if let Some(newest) = &newest {
        if newest.is_reshaping() {
            return Err(refused(
                state,
                format!(
                    "raid LV '{lv_name}' is in the middle of a reshape; let lvm2 finish it first"
                ),
            ));
        }
        if newest.num_devices as usize != n {
            notes.push(format!(
                "the metadata sub-LVs record {} images, the VG {n}",
                newest.num_devices
            ));
        }
        data_offset = newest.data_offset;
        for (slot, own) in supers.iter().enumerate() {
            if left_out.iter().any(|(s, _)| *s == slot) {
                continue;
            }
            if newest.is_failed(slot) {
                left_out.push((
                    slot,
                    format!(
                        "{} is marked failed in the raid superblocks",
                        raid.images[slot].data
                    ),
                ));
            } else if let Some(own) = own {
                if own.events < newest.events {
                    left_out.push((
                        slot,
                        format!(
                            "{} is stale (superblock events {} of {})",
                            raid.images[slot].data, own.events, newest.events
                        ),
                    ));
                } else if own.array_position as usize != slot {
                    left_out.push((
                        slot,
                        format!(
                            "{} records array position {}, not {slot}",
                            raid.images[slot].data, own.array_position
                        ),
                    ));
                }
            }
        }
    }
    left_out.sort();
    let missing: Vec<usize> = left_out.iter().map(|(s, _)| *s).collect();
    if !survives(raid, &missing) {
        let why = left_out
            .iter()
            .map(|(slot, why)| format!("image {slot}: {why}"))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(refused(
            state,
            format!(
                "raid LV '{lv_name}' ({}) cannot be assembled: {} of {n} images are unusable and it survives {} ({why})",
                raid.segtype,
                missing.len(),
                raid.tolerated()
            ),
        ));
    }

    let mut params = vec![raid.stripe_size_sectors.to_string()];
    if raid.region_size_sectors > 0 {
        params.push("region_size".into());
        params.push(raid.region_size_sectors.to_string());
    }
    if data_offset > 0 {
        params.push("data_offset".into());
        params.push(data_offset.to_string());
    }
    if raid.level == RaidLevel::Raid10 {
        // lvm2's raid10 is near copies, dm-raid's default format.
        params.push("raid10_copies".into());
        params.push(raid.copies().to_string());
    }
    let images: Vec<Option<String>> = raid
        .images
        .iter()
        .enumerate()
        .map(|(slot, image)| (!missing.contains(&slot)).then(|| image.data.clone()))
        .collect();
    let mut table = String::new();
    let _ = write!(
        table,
        "0 {len} raid {} {} {} {n}",
        raid.dm_type(),
        params.len(),
        params.join(" ")
    );
    for image in &images {
        match image {
            Some(name) => {
                let _ = write!(table, " - {}", escape_arg(&dm_name(&vg.name, name)));
            }
            None => table.push_str(" - -"),
        }
    }
    table.push('\n');
    Ok(RaidPlan {
        table,
        images,
        left_out,
        notes,
    })
}

/// Loads raid LV `lv_name` as `device`'s inactive table: its images mapped as devices of
/// their own, which the raid set holds. A degraded set is refused unless `allow_degraded`.
pub fn load_raid_lv(
    scan: &Scan,
    state: &VgState,
    lv_name: &str,
    device: &MappedDevice,
    registry: Arc<TargetRegistry>,
    allow_degraded: bool,
) -> Result<RaidPlan> {
    let plan = raid_plan(scan, state, lv_name)?;
    if plan.is_degraded() && !allow_degraded {
        return Err(refused(
            state,
            format!(
                "raid LV '{lv_name}' is degraded ({}); it is served degraded read-only only",
                plan.describe_left_out()
            ),
        ));
    }
    let mut subs: HashMap<String, SharedDevice> = HashMap::new();
    for name in plan.images.iter().flatten() {
        let sub = map_sub_lv(scan, state, name, registry.clone())?;
        subs.insert(sub.name().to_string(), sub);
    }
    let table = Table::parse(&plan.table).map_err(|source| EngineError::Table {
        device: device.name().to_string(),
        cause: source,
    })?;
    let resolve = |name: &str| {
        subs.get(name).cloned().ok_or_else(|| BlockError::Open {
            device: name.to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "not an image of this raid LV",
            ),
        })
    };
    device.load(&table, &resolve)?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raid10_survival_follows_the_near_layout() {
        // 4 images, 2 copies: pairs (0,1) and (2,3).
        assert!(raid10_survives(4, 2, &[]));
        assert!(raid10_survives(4, 2, &[0]));
        assert!(raid10_survives(4, 2, &[0, 2]));
        assert!(!raid10_survives(4, 2, &[0, 1]));
        // 3 images, 2 copies: chunk k on (2k, 2k+1) mod 3, so any two lose a chunk.
        assert!(raid10_survives(3, 2, &[1]));
        assert!(!raid10_survives(3, 2, &[0, 2]));
        assert!(!raid10_survives(3, 2, &[1, 2]));
        // 6 images, 3 copies: (0,1,2) and (3,4,5).
        assert!(raid10_survives(6, 3, &[0, 1, 3, 4]));
        assert!(!raid10_survives(6, 3, &[3, 4, 5]));
    }
}

/// How a rebuild of raid images went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    /// Sectors written to each rebuilt image.
    pub sectors: u64,
    pub millis: u64,
}

/// Rebuilds the data sub-LVs of slots `slots` of raid LV `lv_name` from the other images,
/// in user space (the `raid` row with dm-raid's `rebuild` parameters), and returns once
/// every image is in sync and flushed. The images rebuilt must be mapped onto their new
/// extents in `state.vg` already.
pub fn rebuild_images(
    scan: &Scan,
    state: &VgState,
    lv_name: &str,
    slots: &[usize],
) -> Result<Rebuilt> {
    let lv = state
        .vg
        .lv(lv_name)
        .ok_or_else(|| EngineError::LvNotFound {
            vg: state.vg.name.clone(),
            lv: lv_name.into(),
        })?;
    let raid = lv
        .raid()
        .ok_or_else(|| refused(state, format!("LV '{lv_name}' is not a raid LV")))?
        .clone();
    let plan = raid_plan(scan, state, lv_name)?;
    let mut tokens: Vec<String> = plan.table.split_whitespace().map(str::to_string).collect();
    let nparams: usize = tokens[4].parse().expect("raid_plan writes the count");
    let devs = 6 + nparams;
    for &slot in slots {
        let image = raid
            .images
            .get(slot)
            .ok_or_else(|| refused(state, format!("raid LV '{lv_name}' has no image {slot}")))?;
        tokens[devs + 2 * slot + 1] = escape_arg(&dm_name(&state.vg.name, &image.data));
    }
    let mut extra = Vec::new();
    for &slot in slots {
        extra.push("rebuild".to_string());
        extra.push(slot.to_string());
    }
    tokens[4] = (nparams + extra.len()).to_string();
    tokens.splice(5 + nparams..5 + nparams, extra);
    let text = tokens.join(" ") + "\n";

    let mut registry = TargetRegistry::new();
    tessera_raid::register(&mut registry);
    let registry = Arc::new(registry);
    let mut subs: HashMap<String, SharedDevice> = HashMap::new();
    for (slot, image) in raid.images.iter().enumerate() {
        if plan.images[slot].is_some() || slots.contains(&slot) {
            let sub = map_sub_lv(scan, state, &image.data, registry.clone())?;
            subs.insert(sub.name().to_string(), sub);
        }
    }
    let device = MappedDevice::new(dm_name(&state.vg.name, lv_name), registry);
    let table = Table::parse(&text).map_err(|source| EngineError::Table {
        device: device.name().to_string(),
        cause: source,
    })?;
    let resolve = |name: &str| {
        subs.get(name).cloned().ok_or_else(|| BlockError::Open {
            device: name.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not an image"),
        })
    };
    device.load(&table, &resolve)?;
    device.resume()?;
    let _ = device.message(0, &["speed", "1000000000", "1000000000"]);
    let started = std::time::Instant::now();
    let mut idle_since: Option<std::time::Instant> = None;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(50));
        // "<start> <len> raid <type> <#devs> <health> <done>/<total> <action> ..."
        let status = device.status();
        let f: Vec<&str> = status.split_whitespace().collect();
        let (health, action) = (
            f.get(5).copied().unwrap_or(""),
            f.get(7).copied().unwrap_or(""),
        );
        if health.contains('D') {
            return Err(refused(
                state,
                format!("rebuilding raid LV '{lv_name}' failed: an image failed ({status})"),
            ));
        }
        if !health.contains('a') && action == "idle" {
            break;
        }
        if action == "idle" {
            let since = *idle_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() > std::time::Duration::from_secs(5) {
                return Err(refused(
                    state,
                    format!("rebuilding raid LV '{lv_name}' stopped: {status}"),
                ));
            }
        } else {
            idle_since = None;
        }
    }
    let report = device.message(0, &["report"]).unwrap_or_default();
    let sectors = report
        .lines()
        .find_map(|l| l.strip_prefix("last_sectors="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    device.flush()?;
    Ok(Rebuilt {
        sectors,
        millis: started.elapsed().as_millis() as u64,
    })
}
