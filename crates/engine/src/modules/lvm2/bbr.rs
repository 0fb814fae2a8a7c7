//! BBR LVs: linear or striped LVs that keep a pool of replacement sectors and a relocation
//! table at their end, served through the `bbr` target (see `tessera_bbr`).
//!
//! # How lvm2 carries them
//!
//! A BBR LV is, to lvm2, a plain linear (or striped) LV with the tag
//! `tessera_bbr:v1:data=D:table=T:pool=P` (the layout inside the LV, in sectors: data, table
//! copy 1, pool, table copy 2) and lvm2's `ACTIVATION_SKIP` flag. Tried with lvm2 2.03: an
//! unknown segment type (`type = "bbr"`) is kept by `vgcfgbackup` and listed by `lvs`, but
//! lvm2 then refuses every change to the whole VG ("Cannot change VG with unknown segments
//! in it"), so tessera does not write one. A tag is kept by every lvm2 command, and the
//! skip flag keeps `vgchange -ay` from activating the LV as a plain linear device, which
//! would read relocated sectors from the bad sectors themselves (`lvchange -ay -K` still
//! can, knowingly). lvm2 may move (pvmove) or extend such an LV safely: the layout is
//! relative to the LV's start and the data does not grow; reducing it past the pool is
//! refused when tessera next opens it.
//!
//! User space serves it as two devices: `VG-LV-bbr`, the LV's extents as lvm2 maps them,
//! and `VG-LV`, a `bbr` row over it. The kernel has no `bbr` target (dm-bbr was never
//! merged), so kernel activation is refused.

use std::collections::HashSet;
use std::sync::Arc;

use tessera_block::{BlockDevice, BlockError, SharedDevice};
use tessera_formats::bbr::{BbrStore, Geometry, TAG_PREFIX};
use tessera_formats::lvm2::config::{Node, Value};
use tessera_formats::lvm2::vg::{LogicalVolume, VolumeGroup};
use tessera_mapper::{MappedDevice, Table, TargetRegistry};

use super::scan::{Scan, VgState};
use super::snapshot::{layer_uuid, StackDevice};
use super::table::{dm_name, load_plain, plain_table};
use crate::error::{EngineError, Result};

/// lvm2's flag that keeps `vgchange -ay` from activating an LV unless named with `-K`.
const ACTIVATION_SKIP: &str = "ACTIVATION_SKIP";

/// The suffix of the device holding a BBR LV's raw extents.
pub const RAW_SUFFIX: &str = "-bbr";

fn tags(lv: &LogicalVolume) -> Vec<&str> {
    lv.extra
        .iter()
        .filter(|(k, _)| k == "tags")
        .flat_map(|(_, node)| match node {
            Node::Value(Value::Array(items)) => items
                .iter()
                .filter_map(|v| match v {
                    Value::Str(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        })
        .collect()
}

/// True if the LV carries a BBR tag (well formed or not).
pub fn is_bbr(lv: &LogicalVolume) -> bool {
    tags(lv).iter().any(|t| t.starts_with(TAG_PREFIX))
}

/// The LV's BBR layout, relative to its start: None for an LV without the tag; an error if
/// the tag is damaged or the layout no longer fits the LV.
pub fn geometry(vg: &VolumeGroup, lv: &LogicalVolume) -> Result<Option<Geometry>> {
    let refused = |why: String| EngineError::Refused {
        vg: vg.name.clone(),
        why,
    };
    let mut found = None;
    for tag in tags(lv) {
        if let Some(g) =
            Geometry::from_tag(tag).map_err(|e| refused(format!("LV '{}': BBR {e}", lv.name)))?
        {
            if found.is_some() {
                return Err(refused(format!("LV '{}' has two BBR tags", lv.name)));
            }
            found = Some(g);
        }
    }
    let Some(g) = found else {
        return Ok(None);
    };
    let lv_sectors = lv.extent_count() * vg.extent_size_sectors;
    g.check(&format!("{}/{}", vg.name, lv.name), lv_sectors)
        .map_err(|e| {
            refused(format!(
                "{e} (the LV has {lv_sectors} sectors; was it reduced outside tessera?)"
            ))
        })?;
    Ok(Some(g))
}

/// Makes a new LV a BBR LV: the tag with its layout and lvm2's activation-skip flag.
/// `pool_sectors` None takes [`Geometry::default_pool_sectors`].
pub fn mark(
    vg: &VolumeGroup,
    lv: &mut LogicalVolume,
    pool_sectors: Option<u64>,
) -> Result<Geometry> {
    let total = lv.extent_count() * vg.extent_size_sectors;
    let pool = pool_sectors.unwrap_or_else(|| Geometry::default_pool_sectors(total));
    let g = Geometry::inside(0, total, pool).ok_or_else(|| {
        EngineError::BadArgument(format!(
            "a BBR pool of {pool} sectors with its two tables does not fit an LV of {total} sectors with room for data"
        ))
    })?;
    lv.extra.retain(|(k, _)| k != "tags");
    lv.extra.insert(
        0,
        (
            "tags".into(),
            Node::Value(Value::Array(vec![Value::Str(g.to_tag())])),
        ),
    );
    if !lv.flags.iter().any(|f| f == ACTIVATION_SKIP) {
        lv.flags.push(ACTIVATION_SKIP.into());
    }
    Ok(g)
}

/// The LV's extents as one mapped device, named `VG-LV-bbr`.
fn raw_device(scan: &Scan, state: &VgState, lv_name: &str) -> Result<Arc<MappedDevice>> {
    let device = MappedDevice::new(
        format!("{}{RAW_SUFFIX}", dm_name(&state.vg.name, lv_name)),
        Arc::new(TargetRegistry::new()),
    );
    load_plain(scan, state, lv_name, &device)?;
    device.resume()?;
    Ok(Arc::new(device))
}

/// Writes empty relocation tables (both copies) on LV `lv_name` of `state`, which may be a
/// VG not yet committed: its extents are still free on disk, so nothing is lost if the
/// commit never happens.
pub fn format_tables(scan: &Scan, state: &VgState, lv_name: &str, g: &Geometry) -> Result<()> {
    let raw = raw_device(scan, state, lv_name)?;
    BbrStore::format(raw.clone() as SharedDevice, *g).map_err(|e| EngineError::Refused {
        vg: state.vg.name.clone(),
        why: format!("cannot write the BBR tables of LV '{lv_name}': {e}"),
    })?;
    raw.flush()?;
    Ok(())
}

/// The `bbr` row over the raw device `raw`.
pub fn bbr_row(raw: &str, g: &Geometry) -> String {
    format!(
        "0 {} bbr {} {} {} {} {} {} {} 512\n",
        g.data_sectors,
        tessera_mapper::escape_arg(raw),
        g.data_start,
        g.table1,
        g.table2,
        g.table_sectors,
        g.pool_start,
        g.pool_sectors
    )
}

/// The two devices of a BBR LV, raw extents first (for `lv table`).
pub fn stack(
    scan: &Scan,
    state: &VgState,
    lv_name: &str,
    g: &Geometry,
) -> Result<Vec<StackDevice>> {
    let lv = state
        .vg
        .lv(lv_name)
        .ok_or_else(|| EngineError::LvNotFound {
            vg: state.vg.name.clone(),
            lv: lv_name.into(),
        })?;
    let top = dm_name(&state.vg.name, lv_name);
    let raw = format!("{top}{RAW_SUFFIX}");
    Ok(vec![
        StackDevice {
            name: raw.clone(),
            uuid: layer_uuid(&state.vg, lv, "bbr"),
            table: plain_table(scan, state, lv_name)?,
            lv: None,
        },
        StackDevice {
            name: top,
            uuid: layer_uuid(&state.vg, lv, ""),
            table: bbr_row(&raw, g),
            lv: Some(lv_name.to_string()),
        },
    ])
}

/// Activates a BBR LV in user space: the `bbr` device over its raw extents. None if the LV
/// is not a BBR LV.
pub fn activate(
    scan: &Scan,
    state: &VgState,
    lv_name: &str,
    registry: Arc<TargetRegistry>,
) -> Result<Option<MappedDevice>> {
    let Some(lv) = state.vg.lv(lv_name) else {
        return Ok(None);
    };
    let Some(g) = geometry(&state.vg, lv)? else {
        return Ok(None);
    };
    let raw = raw_device(scan, state, lv_name)?;
    let device = MappedDevice::new(dm_name(&state.vg.name, lv_name), registry);
    let text = bbr_row(raw.name(), &g);
    let table = Table::parse(&text).map_err(|source| EngineError::Table {
        device: device.name().to_string(),
        cause: source,
    })?;
    let raw_name = raw.name().to_string();
    let resolve = |name: &str| -> tessera_block::Result<SharedDevice> {
        if name == raw_name {
            Ok(raw.clone())
        } else {
            Err(BlockError::Open {
                device: name.to_string(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not the LV's extents"),
            })
        }
    };
    device.load(&table, &resolve)?;
    device.resume()?;
    Ok(Some(device))
}

/// What a BBR LV's table holds, read from the LV (committed tables are what a served LV
/// has acknowledged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BbrUsage {
    pub relocated: u64,
    pub used: u64,
    pub pool: u64,
    /// Table sectors whose copies disagreed or were damaged (rewritten at the next
    /// activation).
    pub damaged: u64,
}

/// Reads a BBR LV's table without changing anything; None for an LV without BBR.
pub fn usage(scan: &Scan, state: &VgState, lv_name: &str) -> Result<Option<BbrUsage>> {
    let Some(lv) = state.vg.lv(lv_name) else {
        return Ok(None);
    };
    let Some(g) = geometry(&state.vg, lv)? else {
        return Ok(None);
    };
    let raw = raw_device(scan, state, lv_name)?;
    let (store, report) =
        BbrStore::open(raw as SharedDevice, g, false).map_err(|e| EngineError::Refused {
            vg: state.vg.name.clone(),
            why: format!("LV '{lv_name}': {e}"),
        })?;
    let damaged: HashSet<u64> = report
        .copy1_rewritten
        .iter()
        .chain(&report.copy2_rewritten)
        .copied()
        .collect();
    Ok(Some(BbrUsage {
        relocated: store.relocations().len() as u64,
        used: store.used(),
        pool: g.pool_sectors,
        damaged: damaged.len() as u64,
    }))
}

/// Why the kernel cannot activate LV `lv_name`, if it is a BBR LV.
pub fn kernel_refusal(state: &VgState, lv_name: &str) -> Option<String> {
    let lv = state.vg.lv(lv_name)?;
    is_bbr(lv).then(|| {
        format!(
            "LV '{lv_name}' relocates bad blocks through tessera's bbr target, which the kernel \
             does not have (dm-bbr was never merged); serve it with tessera serve {}/{lv_name}",
            state.vg.name
        )
    })
}
