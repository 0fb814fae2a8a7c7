//! One pass over the devices: every LVM2 label, every metadata area, every VG text, joined
//! into VGs by id. The newest copy (highest seqno) of each VG wins; older copies are noted
//! so the next commit rewrites them.

use std::collections::{BTreeMap, HashMap};

use tessera_block::SharedDevice;
use tessera_formats::lvm2::id::Id;
use tessera_formats::lvm2::label::{read_label, PvLabel};
use tessera_formats::lvm2::mda::{read_mda_header, read_text, MdaHeader, RawLocn};
use tessera_formats::lvm2::vg::{TextInfo, VolumeGroup};

/// Where a metadata area's current text is, as read from its header.
#[derive(Debug, Clone)]
pub struct MdaState {
    /// Byte offset of the area's header on the device.
    pub start: u64,
    /// Size of the whole area in bytes, from the PV header.
    pub size: u64,
    /// The header as read, or None if it could not be read (it is rewritten on commit).
    pub header: Option<MdaHeader>,
}

impl MdaState {
    pub fn is_ignored(&self) -> bool {
        self.header
            .as_ref()
            .and_then(|h| h.raw_locns.first())
            .is_some_and(|l| l.flags & tessera_formats::lvm2::mda::RAW_LOCN_IGNORED != 0)
    }
    fn current(&self) -> Option<&RawLocn> {
        self.header
            .as_ref()?
            .raw_locns
            .first()
            .filter(|l| l.offset != 0 && l.size != 0)
    }
}

/// A device holding an LVM2 label.
#[derive(Clone)]
pub struct PvInfo {
    pub path: String,
    pub device: SharedDevice,
    pub label: PvLabel,
    pub mdas: Vec<MdaState>,
    /// The VG whose newest metadata lists this PV.
    pub vg_name: Option<String>,
}

impl std::fmt::Debug for PvInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PvInfo")
            .field("path", &self.path)
            .field("vg", &self.vg_name)
            .finish()
    }
}

/// A VG as its newest metadata describes it, with where its PVs are now.
#[derive(Debug, Clone)]
pub struct VgState {
    pub vg: VolumeGroup,
    pub info: TextInfo,
    /// PV key (`pvN`) to index in `Scan::pvs`.
    pub present: BTreeMap<String, usize>,
    /// PV keys whose device was not found.
    pub missing: Vec<String>,
    /// Devices whose metadata areas hold an older or different copy.
    pub stale: Vec<String>,
}

impl VgState {
    pub fn is_partial(&self) -> bool {
        !self.missing.is_empty()
    }
}

/// Everything one scan found.
#[derive(Debug, Default, Clone)]
pub struct Scan {
    pub pvs: Vec<PvInfo>,
    pub vgs: BTreeMap<String, VgState>,
    /// What could not be read, one sentence each naming the device.
    pub problems: Vec<String>,
}

impl Scan {
    pub fn pv_by_path(&self, path: &str) -> Option<usize> {
        self.pvs.iter().position(|p| p.path == path)
    }
    pub fn vg(&self, name: &str) -> Option<&VgState> {
        self.vgs.get(name)
    }
}

struct Candidate {
    pv: usize,
    locn: RawLocn,
}

/// Reads the given devices. Never fails as a whole: a device that cannot be read becomes a
/// problem in the result, and the rest is still found.
pub fn scan(devices: &[(String, SharedDevice)]) -> Scan {
    let mut result = Scan::default();
    let mut by_id: HashMap<Id, usize> = HashMap::new();
    let mut candidates = Vec::new();
    for (path, device) in devices {
        let label = match read_label(device.as_ref()) {
            Ok(Some(label)) => label,
            Ok(None) => continue,
            Err(e) => {
                result.problems.push(e.to_string());
                continue;
            }
        };
        if let Some(&first) = by_id.get(&label.pv_id) {
            result.problems.push(format!(
                "{path}: holds the same PV (id {}) as {}; using {}",
                label.pv_id, result.pvs[first].path, result.pvs[first].path
            ));
            continue;
        }
        let index = result.pvs.len();
        by_id.insert(label.pv_id, index);
        let mut mdas = Vec::new();
        for area in &label.metadata_areas {
            let header = match read_mda_header(device.as_ref(), area.offset) {
                Ok(h) => Some(h),
                Err(e) => {
                    result.problems.push(e.to_string());
                    None
                }
            };
            let mda = MdaState {
                start: area.offset,
                size: area.size,
                header,
            };
            if let (Some(locn), false) = (mda.current(), mda.is_ignored()) {
                candidates.push(Candidate {
                    pv: index,
                    locn: *locn,
                });
            }
            mdas.push(mda);
        }
        result.pvs.push(PvInfo {
            path: path.clone(),
            device: device.clone(),
            label,
            mdas,
            vg_name: None,
        });
    }

    // Parse each distinct text once: copies of one commit share size and checksum.
    let mut parsed: HashMap<(u64, u32), Option<(VolumeGroup, TextInfo)>> = HashMap::new();
    let mut holders: HashMap<(u64, u32), Vec<usize>> = HashMap::new();
    for c in &candidates {
        let key = (c.locn.size, c.locn.checksum);
        holders.entry(key).or_default().push(c.pv);
        if parsed.contains_key(&key) {
            continue;
        }
        let pv = &result.pvs[c.pv];
        let Some(mda) = pv.mdas.iter().find_map(|m| {
            m.header
                .as_ref()
                .filter(|h| h.raw_locns.first() == Some(&c.locn))
        }) else {
            continue;
        };
        let value = match read_text(pv.device.as_ref(), mda, &c.locn) {
            Ok(text) => match VolumeGroup::from_text(&text) {
                Ok(vg) => Some(vg),
                Err(e) => {
                    result.problems.push(format!(
                        "{}: metadata area at byte {}: {e}",
                        pv.path, mda.start
                    ));
                    None
                }
            },
            Err(e) => {
                result.problems.push(e.to_string());
                None
            }
        };
        parsed.insert(key, value);
    }

    // Newest copy per VG id.
    let mut newest: HashMap<Id, (u64, u32)> = HashMap::new();
    // In key order, so that of two texts with one seqno the same one wins on every run and
    // the clash is always reported.
    let mut keys: Vec<&(u64, u32)> = parsed.keys().collect();
    keys.sort();
    for key in keys {
        let value = &parsed[key];
        let Some((vg, _)) = value else { continue };
        match newest.get(&vg.id) {
            Some(best)
                if parsed[best]
                    .as_ref()
                    .is_some_and(|(b, _)| b.seqno > vg.seqno) => {}
            Some(best)
                if parsed[best]
                    .as_ref()
                    .is_some_and(|(b, _)| b.seqno == vg.seqno)
                    && best <= key =>
            {
                let on = |k: &(u64, u32)| {
                    holders[k]
                        .iter()
                        .map(|&i| result.pvs[i].path.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                result.problems.push(format!(
                    "VG '{}': two different metadata texts carry seqno {}, one on {} and one on {}; using the first",
                    vg.name,
                    vg.seqno,
                    on(best),
                    on(key)
                ));
            }
            _ => {
                newest.insert(vg.id, *key);
            }
        }
    }

    let mut chosen: Vec<((u64, u32), VolumeGroup, TextInfo)> = newest
        .values()
        .filter_map(|key| {
            parsed
                .get(key)
                .cloned()
                .flatten()
                .map(|(vg, info)| (*key, vg, info))
        })
        .collect();
    chosen.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    for (key, vg, info) in chosen {
        if result.vgs.contains_key(&vg.name) {
            result.problems.push(format!(
                "VG '{}': two different VGs (ids {} and {}) have this name; only the first is used",
                vg.name, result.vgs[&vg.name].vg.id, vg.id
            ));
            continue;
        }
        let mut present = BTreeMap::new();
        let mut missing = Vec::new();
        for pv in &vg.pvs {
            match by_id.get(&pv.id) {
                Some(&i) => {
                    present.insert(pv.key.clone(), i);
                }
                None => missing.push(pv.key.clone()),
            }
        }
        for &i in present.values() {
            result.pvs[i].vg_name = Some(vg.name.clone());
        }
        let mut stale = Vec::new();
        for (other, pvs) in &holders {
            if *other != key {
                for &i in pvs {
                    if present.values().any(|&p| p == i) && !stale.contains(&result.pvs[i].path) {
                        stale.push(result.pvs[i].path.clone());
                    }
                }
            }
        }
        for key in &missing {
            let pv = vg
                .pv(key)
                .map(|p| (p.id.to_string(), p.device.clone()))
                .unwrap_or_default();
            result.problems.push(format!(
                "VG '{}': PV {key} (id {}, last seen at {}) is missing",
                vg.name, pv.0, pv.1
            ));
        }
        result.vgs.insert(
            vg.name.clone(),
            VgState {
                vg,
                info,
                present,
                missing,
                stale,
            },
        );
    }
    result
}
