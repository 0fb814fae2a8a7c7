//! Activation in user space: the device-mapper table that maps an LV onto its PVs, in
//! dmsetup's syntax, as lvm2 would load it, loaded into a mapped device whose I/O goes to
//! the PVs. Linear and striped LVs get their rows from [`super::table`]; raid LVs a `raid`
//! row over mapped devices of their images (see [`super::raid_lv`]).

use std::sync::Arc;

use tessera_mapper::{MappedDevice, TargetRegistry};

use super::bbr;
use super::raid_lv;
use super::scan::{Scan, VgState};
use super::snapshot::userspace_refusal;
pub use super::snapshot::{cow_usage, layer_uuid, stack_devices, stack_origin, StackDevice};
pub use super::table::dm_name;
use super::table::{load_plain, plain_table};
pub use super::thin::pool_stack_devices;
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
    if let Some(g) = bbr::geometry(&state.vg, lv)? {
        let raw = format!("{}{}", dm_name(&state.vg.name, lv_name), bbr::RAW_SUFFIX);
        return Ok(bbr::bbr_row(&raw, &g));
    }
    if lv.thin_pool().is_some() || lv.thin().is_some() {
        // The device users know by this LV's name in the pool's stack.
        let name = dm_name(&state.vg.name, lv_name);
        return lv_devices(scan, state, lv_name)?
            .into_iter()
            .find(|d| d.name == name)
            .map(|d| d.table)
            .ok_or_else(|| EngineError::LvNotFound {
                vg: state.vg.name.clone(),
                lv: lv_name.into(),
            });
    }
    if let Some(origin) = stack_origin(&state.vg, lv_name) {
        // The device users know by this LV's name: the origin's top, or the snapshot's
        // (a snapshotN LV is shown as its snapshot), other devices named by their names.
        let cow = match lv.snapshot() {
            Some(s) => s.cow.as_str(),
            None => lv_name,
        };
        let name = dm_name(&state.vg.name, cow);
        return stack_devices(scan, state, origin)?
            .into_iter()
            .find(|d| d.name == name)
            .map(|d| d.table)
            .ok_or_else(|| EngineError::LvNotFound {
                vg: state.vg.name.clone(),
                lv: lv_name.into(),
            });
    }
    plain_table(scan, state, lv_name)
}

/// Every device lvm2 loads for LV `lv_name`, in the order they are made, each with its
/// name, uuid and table: the LV's own one, or the whole stack of the origin it belongs to
/// when it is an origin or a snapshot (see [`stack_devices`]).
pub fn lv_devices(scan: &Scan, state: &VgState, lv_name: &str) -> Result<Vec<StackDevice>> {
    if let Some(origin) = stack_origin(&state.vg, lv_name) {
        return stack_devices(scan, state, origin);
    }
    // A pool with its layers; a thin LV with its pool's layers, as lvm2 activates them.
    if let Some(l) = state.vg.lv(lv_name) {
        if l.thin_pool().is_some() {
            return pool_stack_devices(scan, state, lv_name, &[], true);
        }
        if let Some(t) = l.thin() {
            return pool_stack_devices(scan, state, &t.pool, &[lv_name], false);
        }
    }
    let lv = state
        .vg
        .lv(lv_name)
        .ok_or_else(|| EngineError::LvNotFound {
            vg: state.vg.name.clone(),
            lv: lv_name.into(),
        })?;
    if let Some(g) = bbr::geometry(&state.vg, lv)? {
        return bbr::stack(scan, state, lv_name, &g);
    }
    if !super::pvmove::pvmoves_under(&state.vg, lv_name).is_empty() {
        return super::pvmove::pvmove_devices(scan, state, lv_name);
    }
    Ok(vec![StackDevice {
        name: dm_name(&state.vg.name, lv_name),
        uuid: layer_uuid(&state.vg, lv, ""),
        table: lv_table(scan, state, lv_name)?,
        lv: Some(lv_name.to_string()),
    }])
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
    if let Some(why) =
        userspace_refusal(&state.vg, lv_name).or_else(|| thin_refusal(state, lv_name))
    {
        return Err(EngineError::Refused {
            vg: state.vg.name.clone(),
            why,
        });
    }
    if let Some(device) = bbr::activate(scan, state, lv_name, registry.clone())? {
        return Ok((device, Vec::new()));
    }
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
    if let Some(why) =
        userspace_refusal(&state.vg, lv_name).or_else(|| thin_refusal(state, lv_name))
    {
        return Err(EngineError::Refused {
            vg: state.vg.name.clone(),
            why,
        });
    }
    if state.vg.lv(lv_name).is_some_and(bbr::is_bbr) {
        return Err(EngineError::Refused {
            vg: state.vg.name.clone(),
            why: format!(
                "LV '{lv_name}' is a BBR LV: it is activated whole with its bbr device, not reloaded"
            ),
        });
    }
    if state.vg.lv(lv_name).is_some_and(|lv| lv.raid().is_some()) {
        let registry = Arc::new(TargetRegistry::new());
        raid_lv::load_raid_lv(scan, state, lv_name, device, registry, false)?;
        return Ok(());
    }
    load_plain(scan, state, lv_name, device)
}

/// Why a thin pool or thin LV is not mapped as one device: it is a stack of several
/// ([`lv_devices`]), built whole where it is served or activated.
fn thin_refusal(state: &VgState, lv: &str) -> Option<String> {
    let l = state.vg.lv(lv)?;
    let what = if l.thin_pool().is_some() {
        "a thin pool"
    } else if l.thin().is_some() {
        "a thin LV"
    } else {
        return None;
    };
    Some(format!(
        "LV '{lv}' is {what}: its pool's devices are a stack (tessera lv table {}/{lv}); \
         activate it in the kernel with tessera activate {}/{lv}",
        state.vg.name, state.vg.name
    ))
}
