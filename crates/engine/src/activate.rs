//! Activation in user space: the device-mapper table that maps an LV onto its PVs, in
//! dmsetup's syntax, as lvm2 would load it (linear and striped targets, offsets in sectors
//! from the start of each PV), loaded into a mapped device whose I/O goes to the PVs.
//! Raid LVs get a `raid` row over mapped devices of their images (see [`crate::raid_lv`]).

use std::fmt::Write;
use std::sync::Arc;

use tessera_block::BlockError;
use tessera_mapper::{escape_arg, MappedDevice, Table, TargetRegistry};

use tessera_formats::lvm2::vg::SegmentKind;

use crate::error::{EngineError, Result};
use crate::raid_lv;
use crate::scan::{Scan, VgState};

/// The table of `lv` in `state`: one row per segment, devices named by their paths; for a
/// raid LV its `raid` row, images named by their dm names (`VG-LV_rimage_N`).
pub fn lv_table(scan: &Scan, state: &VgState, lv_name: &str) -> Result<String> {
    let vg = &state.vg;
    let lv = vg.lv(lv_name).ok_or_else(|| EngineError::LvNotFound {
        vg: vg.name.clone(),
        lv: lv_name.into(),
    })?;
    if lv.raid().is_some() {
        return Ok(raid_lv::raid_plan(scan, state, lv_name)?.table);
    }
    let extent = vg.extent_size_sectors;
    let mut table = String::new();
    for seg in &lv.segments {
        let start = seg.start_extent * extent;
        let len = seg.extent_count * extent;
        let SegmentKind::Striped {
            stripe_size_sectors,
            stripes,
        } = &seg.kind
        else {
            return Err(EngineError::Refused {
                vg: vg.name.clone(),
                why: format!(
                    "LV '{lv_name}' has a segment of type {}, which tessera cannot activate yet",
                    seg.type_name()
                ),
            });
        };
        let mut areas = Vec::new();
        for stripe in stripes {
            let pv = vg.pv(&stripe.pv).ok_or_else(|| EngineError::Refused {
                vg: vg.name.clone(),
                why: format!(
                    "LV '{lv_name}' names PV {}, which the VG does not have",
                    stripe.pv
                ),
            })?;
            let index = state
                .present
                .get(&stripe.pv)
                .ok_or_else(|| EngineError::VgPartial {
                    vg: vg.name.clone(),
                    count: state.missing.len(),
                    list: format!("{} ({}), which LV '{lv_name}' uses", stripe.pv, pv.device),
                })?;
            let offset = pv.pe_start_sectors + stripe.start_pe * extent;
            areas.push(format!("{} {offset}", escape_arg(&scan.pvs[*index].path)));
        }
        if areas.len() == 1 {
            let _ = writeln!(table, "{start} {len} linear {}", areas[0]);
        } else {
            let _ = writeln!(
                table,
                "{start} {len} striped {} {stripe_size_sectors} {}",
                areas.len(),
                areas.join(" ")
            );
        }
    }
    Ok(table)
}

/// The device-mapper name lvm2 gives an LV: `VG-LV`, with '-' inside either name doubled.
pub fn dm_name(vg: &str, lv: &str) -> String {
    format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"))
}

/// Activates an LV in user space: a live mapped device over the scanned PVs. A raid LV
/// that would run degraded is refused.
pub fn activate_lv(
    scan: &Scan,
    state: &VgState,
    lv_name: &str,
    registry: Arc<TargetRegistry>,
) -> Result<MappedDevice> {
    Ok(activate_lv_with(scan, state, lv_name, registry, false)?.0)
}

/// As [`activate_lv`], a raid LV running degraded if `allow_degraded` (and its level
/// survives what is missing); returns a line for each image left out.
pub fn activate_lv_with(
    scan: &Scan,
    state: &VgState,
    lv_name: &str,
    registry: Arc<TargetRegistry>,
    allow_degraded: bool,
) -> Result<(MappedDevice, Vec<String>)> {
    let device = MappedDevice::new(dm_name(&state.vg.name, lv_name), registry.clone());
    let is_raid = state.vg.lv(lv_name).is_some_and(|lv| lv.raid().is_some());
    let mut notes = Vec::new();
    if is_raid {
        let plan = raid_lv::load_raid_lv(scan, state, lv_name, &device, registry, allow_degraded)?;
        notes.extend(plan.notes);
        notes.extend(
            plan.left_out
                .iter()
                .map(|(slot, why)| format!("running degraded without image {slot}: {why}")),
        );
    } else {
        load_lv(scan, state, lv_name, &device)?;
    }
    device.resume()?;
    Ok((device, notes))
}

/// Loads the LV's table as `device`'s inactive table, its PVs resolved among the scanned
/// ones; the next resume puts it live. This is how an active LV follows a resize. A raid
/// LV is loaded whole (not degraded).
pub fn load_lv(scan: &Scan, state: &VgState, lv_name: &str, device: &MappedDevice) -> Result<()> {
    if state.vg.lv(lv_name).is_some_and(|lv| lv.raid().is_some()) {
        let registry = Arc::new(TargetRegistry::new());
        raid_lv::load_raid_lv(scan, state, lv_name, device, registry, false)?;
        return Ok(());
    }
    let text = lv_table(scan, state, lv_name)?;
    let table = Table::parse(&text).map_err(|source| EngineError::Table {
        device: device.name().to_string(),
        source,
    })?;
    let resolve = |path: &str| {
        scan.pvs
            .iter()
            .find(|p| p.path == path)
            .map(|p| p.device.clone())
            .ok_or_else(|| BlockError::Open {
                device: path.to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not among the scanned PVs",
                ),
            })
    };
    device.load(&table, &resolve)?;
    Ok(())
}
