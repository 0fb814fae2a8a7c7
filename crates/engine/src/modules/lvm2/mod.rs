//! LVM2: the format module for lvm2's labels, metadata areas and text format. It claims
//! the PVs, reads every VG on them into the model ([`scan`]), and makes each visible LV a
//! volume, `VG/LV`, with lvm2's tables ([`activate`], [`raid_lv`] for raid LVs, [`kernel`]
//! for the kernel's device-mapper). The verbs that write VGs are in [`pv`], [`vg`] and
//! [`lv`] (raid LVs: [`raid_create`]); every one commits through lvm2's crash-safe commit
//! ([`commit`]) and keeps the archive ([`archive`]).

pub mod activate;
pub mod alloc;
pub mod archive;
pub mod bbr;
pub mod commit;
pub mod kernel;
pub mod lv;
pub mod options;
pub mod pvmove;
pub mod pv;
pub mod raid_create;
pub mod raid_lv;
pub mod scan;
pub mod shared;
pub mod snapshot;
pub mod table;
pub mod thin;
pub mod vg;

use std::sync::Arc;

use tessera_block::SharedDevice;
use tessera_formats::lvm2::label::read_label;
use tessera_formats::md as md_format;
use tessera_mapper::TargetRegistry;

use crate::devices::NamedDevices;
use crate::engine::Engine;
use crate::error::{EngineError, Result};
use crate::format::{
    Activated, Assembly, Finding, FormatModule, Inner, Member, Node, Place, Shown, Volume,
};
use scan::Scan;

pub use options::{LvCreateOptions, PvCreateOptions};

/// lvm2's defaults: 4 MiB extents, data from 1 MiB, 64 KiB stripes.
pub const DEFAULT_EXTENT_BYTES: u64 = 4 << 20;
pub const DEFAULT_PE_START_BYTES: u64 = 1 << 20;
pub const DEFAULT_STRIPE_BYTES: u64 = 64 << 10;

impl Engine {
    /// Reads every PV and VG on the devices.
    pub fn scan(&self) -> Result<Scan> {
        self.scan_with(false)
    }

    /// Reads every PV and VG, opening the devices for writing when `write` is set (to serve
    /// LVs read-write); a device that cannot be opened for writing is opened read-only.
    pub fn scan_with(&self, write: bool) -> Result<Scan> {
        let (devs, problems) = self.devices(write)?;
        // An MD member is not a PV even where it shows one (a 1.0 member's data starts with
        // the array's): the PV is the array, found as a stacked device.
        let devs: NamedDevices = devs
            .into_iter()
            .filter(|(_, d)| !matches!(md_format::probe(d.as_ref()), Ok(Some(_))))
            .collect();
        let mut result = scan::scan(&devs);
        result.problems.splice(0..0, problems);
        Ok(result)
    }
}

/// LVM2 physical volume labels.
pub struct LvmLabels;

impl FormatModule for LvmLabels {
    fn name(&self) -> &'static str {
        "lvm2"
    }
    fn probe(&self, _name: &str, device: &SharedDevice) -> Option<(Finding, Vec<Inner>)> {
        match read_label(device.as_ref()) {
            Ok(None) => None,
            Ok(Some(label)) => {
                let mut f = Finding::new("LVM2_member", format!("LVM2 PV {}", label.pv_id));
                f.detail = serde_json::json!({
                    "pv_uuid": label.pv_id.to_string(),
                    "metadata_areas": label.metadata_areas.len(),
                });
                Some((f, Vec::new()))
            }
            Err(e) => Finding::damaged(
                "LVM2_member",
                "an LVM2 label that cannot be read",
                e.to_string(),
            ),
        }
    }

    fn assemble(&self, members: Vec<Member>) -> Vec<Assembly> {
        let devices: NamedDevices = members.into_iter().map(|m| (m.name, m.device)).collect();
        let scan = Arc::new(scan::scan(&devices));
        let mut sets: Vec<Assembly> = scan
            .vgs
            .keys()
            .map(|name| vg_assembly(&scan, name))
            .collect();
        // What the scan could not read belongs to no VG: it goes on the first set, or on
        // a set of its own when there is none.
        let unplaced: Vec<String> = scan
            .problems
            .iter()
            .filter(|p| !sets.iter().any(|s| s.node.problems.contains(p)))
            .cloned()
            .collect();
        if !unplaced.is_empty() {
            match sets.first_mut() {
                Some(first) => first.node.problems.extend(unplaced),
                None => sets.push(Assembly {
                    node: Node::problems_only("lvm2", unplaced),
                    places: Vec::new(),
                    volumes: Vec::new(),
                }),
            }
        }
        sets
    }
}

/// A VG as a set of the stack: shown once, under its first PV present, naming the others.
fn vg_assembly(scan: &Arc<Scan>, name: &str) -> Assembly {
    let state = &scan.vgs[name];
    let vg = &state.vg;
    let mut problems = Vec::new();
    // The scan names each missing PV; those sentences belong to this VG's node.
    let prefix = format!("VG '{name}': PV ");
    problems.extend(
        scan.problems
            .iter()
            .filter(|p| p.starts_with(&prefix) && p.ends_with("is missing"))
            .cloned(),
    );
    for stale in &state.stale {
        problems.push(format!(
            "VG {name}: {stale} holds an older copy of the metadata; the next change rewrites it"
        ));
    }
    let pvs: Vec<String> = vg
        .pvs
        .iter()
        .filter_map(|pv| state.present.get(&pv.key))
        .map(|&i| scan.pvs[i].path.clone())
        .collect();
    let places: Vec<Place> = pvs
        .iter()
        .enumerate()
        .map(|(i, pv)| Place {
            name: pv.clone(),
            note: Some(if i == 0 {
                format!("in VG {name}")
            } else {
                format!("in VG {name} (shown under {})", pvs[0])
            }),
            ..Place::default()
        })
        .collect();
    // As lvs shows them: a snapshot under its COW LV's name, never lvm2's snapshotN.
    let visible: Vec<_> = vg.lvs.iter().filter(|lv| vg.lv_is_visible(lv)).collect();
    let also = if pvs.len() > 1 {
        format!("; also on {}", pvs[1..].join(", "))
    } else {
        String::new()
    };
    let node = Node {
        kind: "vg",
        name: name.to_string(),
        size_bytes: vg.pe_total() * vg.extent_size_bytes(),
        format: None,
        summary: format!(
            "VG, {} PV(s){}, {} LV(s), {} of {} extents free, seqno {}{also}",
            vg.pvs.len(),
            if state.missing.is_empty() {
                String::new()
            } else {
                format!(" ({} missing)", state.missing.len())
            },
            visible.len(),
            vg.pe_free_total(),
            vg.pe_total(),
            vg.seqno
        ),
        state: Some(
            if state.is_partial() {
                "partial"
            } else {
                "complete"
            }
            .into(),
        ),
        detail: serde_json::json!({
            "uuid": vg.id.to_string(), "extent_bytes": vg.extent_size_bytes(),
            "pv_count": vg.pvs.len(), "missing_pvs": state.missing, "pvs": pvs,
        }),
        problems,
        children: Vec::new(),
    };
    let volumes = visible
        .iter()
        .map(|lv| {
            Box::new(LvVolume {
                scan: scan.clone(),
                vg: name.to_string(),
                lv: lv.name.clone(),
            }) as Box<dyn Volume>
        })
        .collect();
    Assembly {
        node,
        places,
        volumes,
    }
}

/// An LV as a volume: lvm2's table over the PVs the scan found.
pub struct LvVolume {
    pub scan: Arc<Scan>,
    pub vg: String,
    pub lv: String,
}

impl LvVolume {
    fn state(&self) -> &scan::VgState {
        &self.scan.vgs[&self.vg]
    }
}

impl Volume for LvVolume {
    fn module(&self) -> &'static str {
        "lvm2"
    }
    fn name(&self) -> String {
        format!("{}/{}", self.vg, self.lv)
    }
    fn dm_name(&self) -> String {
        table::dm_name(&self.vg, &self.lv)
    }
    fn shown(&self) -> Shown {
        let state = self.state();
        let vg = &state.vg;
        let lv = vg.lv(&self.lv);
        let kind = lv
            .and_then(|lv| lv.segments.first())
            .map(|s| s.type_name().to_string())
            .unwrap_or_default();
        let segments = lv.map_or(0, |lv| lv.segments.len());
        Shown::Own(Node {
            kind: "lv",
            name: self.name(),
            size_bytes: lv.map_or(0, |lv| lv.extent_count()) * vg.extent_size_bytes(),
            format: None,
            summary: format!("LV, {kind}, {segments} segment(s)"),
            state: None,
            detail: serde_json::json!({
                "uuid": lv.map(|lv| lv.id.to_string()), "segtype": kind,
            }),
            problems: Vec::new(),
            children: Vec::new(),
        })
    }
    fn devices(&self) -> Vec<String> {
        let state = self.state();
        state
            .present
            .values()
            .map(|&i| self.scan.pvs[i].path.clone())
            .collect()
    }
    fn state_note(&self) -> Option<String> {
        self.state().is_partial().then(|| "partial VG".to_string())
    }
    /// Read-only, a raid LV may run degraded (its level surviving what is missing).
    fn activate(
        &self,
        registry: Arc<TargetRegistry>,
        writable: bool,
    ) -> std::result::Result<Activated, String> {
        // In the middle of a move the data lies where the settled VG says.
        let settled;
        let mut state = self.state();
        if !state.vg.pvmove_lvs().is_empty() {
            if writable && pvmove::on_partly_moved(&state.vg, &self.lv) {
                return Err(moving_refusal());
            }
            settled = pvmove::settled_state(state).map_err(|e| e.to_string())?;
            state = &settled;
        }
        match activate::activate_lv_with(&self.scan, state, &self.lv, registry, !writable) {
            Ok((device, notes)) => Ok(Activated { device, notes }),
            Err(EngineError::VgPartial { list, .. }) => {
                Err(format!("it lies on a missing PV: {list}"))
            }
            Err(e) => Err(e.to_string()),
        }
    }
    fn kernel_rows(&self) -> std::result::Result<Vec<tessera_kernel::dm::Row>, String> {
        if !self.state().vg.pvmove_lvs().is_empty() {
            return Err("its VG is in the middle of a move (pvmove0), whose mirror tables tessera \
                 does not load into the kernel; finish the move with `tessera pv move` (or lvm2's \
                 `pvmove`) or undo it with `tessera pv move --abort` first"
                .to_string());
        }
        kernel::kernel_rows(&self.scan, self.state(), &self.lv).map_err(|e| e.to_string())
    }
}

/// Why an LV of a VG in the middle of a move is not activated for writing.
fn moving_refusal() -> String {
    "its VG is in the middle of a move (pvmove0) with extents copied in part; finish the \
     move with `tessera pv move` or undo it with `tessera pv move --abort` first"
        .to_string()
}
