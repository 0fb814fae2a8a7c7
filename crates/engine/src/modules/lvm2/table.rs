//! The tables of linear and striped LVs, as lvm2 loads them (linear and striped targets,
//! offsets in sectors from the start of each PV), and lvm2's device names. The raid LVs'
//! rows ([`super::raid_lv`]) and activation ([`super::activate`]) build on these.

use std::fmt::Write;

use tessera_block::BlockError;
use tessera_formats::lvm2::vg::{SegmentKind, Stripe};
use tessera_mapper::{escape_arg, MappedDevice, Table};

use super::scan::{Scan, VgState};
use crate::error::{EngineError, Result};

/// The device-mapper name lvm2 gives an LV: `VG-LV`, with '-' inside either name doubled.
pub fn dm_name(vg: &str, lv: &str) -> String {
    format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"))
}

/// The table of a linear or striped `lv` in `state`: one row per segment, devices named
/// by their paths.
pub fn plain_table(scan: &Scan, state: &VgState, lv_name: &str) -> Result<String> {
    let vg = &state.vg;
    let lv = vg.lv(lv_name).ok_or_else(|| EngineError::LvNotFound {
        vg: vg.name.clone(),
        lv: lv_name.into(),
    })?;
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
            areas.push(area_arg(scan, state, lv_name, stripe)?);
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

/// A stripe's device and offset as a table names them: a PV by its path and sectors from
/// its start; lvm2's pvmove LV (a stripe of an LV being moved) by its device name and
/// sectors into it, as lvm2 points the moved LVs at `VG-pvmove0`.
pub fn area_arg(scan: &Scan, state: &VgState, lv_name: &str, stripe: &Stripe) -> Result<String> {
    let vg = &state.vg;
    let extent = vg.extent_size_sectors;
    if vg.lv(&stripe.pv).is_some_and(|l| l.is_pvmove()) {
        let offset = stripe.start_pe * extent;
        return Ok(format!("{} {offset}", dm_name(&vg.name, &stripe.pv)));
    }
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
    Ok(format!("{} {offset}", escape_arg(&scan.pvs[*index].path)))
}

/// Loads a linear or striped LV's table as `device`'s inactive table, its PVs resolved
/// among the scanned ones; the next resume puts it live.
pub fn load_plain(
    scan: &Scan,
    state: &VgState,
    lv_name: &str,
    device: &MappedDevice,
) -> Result<()> {
    let text = plain_table(scan, state, lv_name)?;
    let table = Table::parse(&text).map_err(|source| EngineError::Table {
        device: device.name().to_string(),
        cause: source,
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
