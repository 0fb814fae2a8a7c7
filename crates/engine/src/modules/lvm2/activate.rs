//! Activation in user space: the device-mapper table that maps an LV onto its PVs, in
//! dmsetup's syntax, as lvm2 would load it, loaded into a mapped device whose I/O goes to
//! the PVs. Linear and striped LVs get their rows from [`super::table`]; raid LVs a `raid`
//! row over mapped devices of their images (see [`super::raid_lv`]).

use std::sync::Arc;

use tessera_mapper::{MappedDevice, TargetRegistry};

use super::raid_lv;
use super::scan::{Scan, VgState};
pub use super::table::dm_name;
use super::table::{load_plain, plain_table};
use crate::error::{EngineError, Result};

/// The table of `lv` in `state`: one row per segment, devices named by their paths; for a
/// raid LV its `raid` row, images named by their dm names (`VG-LV_rimage_N`).
pub fn lv_table(scan: &Scan, state: &VgState, lv_name: &str) -> Result<String> {
    let lv = state
        .vg
        .lv(lv_name)
        .ok_or_else(|| EngineError::LvNotFound {
            vg: state.vg.name.clone(),
            lv: lv_name.into(),
        })?;
    if lv.raid().is_some() {
        return Ok(raid_lv::raid_plan(scan, state, lv_name)?.table);
    }
    plain_table(scan, state, lv_name)
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
    load_plain(scan, state, lv_name, device)
}
