//! The VG verbs: create, extend, reduce (also of missing PVs), remove, rename, backup and
//! restore. Each locks the VG (and the orphans when PVs change hands), scans afresh under
//! the lock and commits through [`Engine::commit`].

use std::path::{Path, PathBuf};

use tessera_formats::lvm2::id::Id;
use tessera_formats::lvm2::vg::{check_name, PhysicalVolume, TextInfo, VolumeGroup};

use super::archive::{self, Archive};
use super::commit;
use super::scan::{PvInfo, Scan, VgState};
use super::{PvCreateOptions, DEFAULT_EXTENT_BYTES, DEFAULT_PE_START_BYTES};
use crate::engine::{now, Engine};
use crate::error::{EngineError, Result};

impl Engine {
    pub fn archive(&self) -> Archive {
        Archive::new(&self.state_dir)
    }

    // ---- VGs ----

    pub(crate) fn text_info(&self) -> TextInfo {
        TextInfo {
            description: self.description.clone(),
            creation_host: self.hostname.clone(),
            creation_time: now(),
        }
    }

    /// Writes `vg` (seqno one past `old`'s) to all its PVs, marks new PVs used, releases
    /// `released`, and archives the old and new texts.
    pub(crate) fn commit(
        &self,
        scan: &Scan,
        old: Option<&VgState>,
        mut vg: VolumeGroup,
        released: &[&PvInfo],
    ) -> Result<VolumeGroup> {
        // One past the current copy; a restore may ask for more so its text is the newest.
        vg.seqno = old.map_or(1, |o| o.vg.seqno + 1).max(vg.seqno);
        vg.validate()?;
        // A shared VG: its VG lock is held until the commit landed.
        let shared = self.shared_commit_guard(scan, old, &mut vg)?;
        let mut pvs = Vec::new();
        for pv in &vg.pvs {
            let found = scan
                .pvs
                .iter()
                .find(|p| p.label.pv_id == pv.id)
                .ok_or_else(|| EngineError::VgPartial {
                    vg: vg.name.clone(),
                    count: 1,
                    list: format!("{} ({})", pv.key, pv.device),
                })?;
            pvs.push(found);
        }
        let archive = self.archive();
        if let Some(old) = old {
            if let Err(e) = archive.store(&old.vg, &old.info) {
                tracing::warn!(
                    "could not archive the previous metadata of VG '{}': {e}",
                    old.vg.name
                );
            }
        }
        let info = self.text_info();
        commit::write_vg(&pvs, &vg, &info)?;
        commit::mark_used(&pvs)?;
        commit::release_pvs(released)?;
        if let Some(shared) = &shared {
            shared.committed();
        }
        if let Err(e) = archive.store(&vg, &info) {
            tracing::warn!(
                "could not archive the new metadata of VG '{}': {e}",
                vg.name
            );
        }
        Ok(vg)
    }

    /// The VG `name`, complete (no PV missing), for a change.
    pub(crate) fn vg_for_change<'a>(scan: &'a Scan, name: &str) -> Result<&'a VgState> {
        let state = scan
            .vg(name)
            .ok_or_else(|| EngineError::VgNotFound(name.to_string()))?;
        if state.is_partial() {
            let list = state
                .missing
                .iter()
                .map(|k| {
                    format!(
                        "{k} ({})",
                        state.vg.pv(k).map(|p| p.device.as_str()).unwrap_or("?")
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            return Err(EngineError::VgPartial {
                vg: name.to_string(),
                count: state.missing.len(),
                list,
            });
        }
        Ok(state)
    }

    /// Orphan PVs for `paths`, making PVs of devices that are not PVs yet (as vgcreate
    /// does). Returns the scan in which they are all orphans.
    pub(crate) fn orphans_for(
        &self,
        scan: Scan,
        paths: &[String],
        force: bool,
    ) -> Result<(Scan, Vec<usize>)> {
        let mut scan = scan;
        let missing: Vec<String> = paths
            .iter()
            .filter(|p| Self::pv_index(&scan, p).is_none())
            .cloned()
            .collect();
        if !missing.is_empty() {
            let opts = PvCreateOptions {
                force,
                pe_start_bytes: None,
            };
            for path in &missing {
                self.create_one_pv(&scan, path, &opts)?;
            }
            scan = self.scan_with(true)?;
        }
        let mut out = Vec::new();
        for path in paths {
            let i = Self::pv_index(&scan, path).ok_or_else(|| EngineError::NotPv {
                device: path.clone(),
            })?;
            if let Some(vg) = &scan.pvs[i].vg_name {
                return Err(EngineError::PvInUse {
                    device: scan.pvs[i].path.clone(),
                    vg: vg.clone(),
                });
            }
            if out.contains(&i) {
                return Err(EngineError::BadArgument(format!("{path} is given twice")));
            }
            out.push(i);
        }
        Ok((scan, out))
    }

    pub(crate) fn new_pv_entry(
        vg: &VolumeGroup,
        pv: &PvInfo,
        key: String,
    ) -> Result<PhysicalVolume> {
        let extent = vg.extent_size_sectors;
        let dev_size = pv.device.size_bytes() / 512;
        let pe_start = pv
            .label
            .data_areas
            .first()
            .map(|a| a.offset / 512)
            .unwrap_or(DEFAULT_PE_START_BYTES / 512);
        // Extents end where the device or a metadata area at its end begins.
        let end = pv
            .label
            .metadata_areas
            .iter()
            .map(|a| a.offset / 512)
            .filter(|&o| o > pe_start)
            .min()
            .unwrap_or(dev_size)
            .min(dev_size);
        let pe_count = end.saturating_sub(pe_start) / extent;
        if pe_count == 0 {
            return Err(EngineError::DeviceUnusable {
                device: pv.path.clone(),
                why: format!("has no room for one extent of {} bytes", extent * 512),
            });
        }
        Ok(PhysicalVolume {
            key,
            id: pv.label.pv_id,
            device: pv.path.clone(),
            status: vec!["ALLOCATABLE".into()],
            flags: Vec::new(),
            dev_size_sectors: dev_size,
            pe_start_sectors: pe_start,
            pe_count,
            extra: Vec::new(),
        })
    }

    /// Creates a VG over `paths` (devices that are not PVs yet become PVs).
    pub fn vg_create(
        &self,
        name: &str,
        paths: &[String],
        extent_bytes: Option<u64>,
        force: bool,
    ) -> Result<VolumeGroup> {
        check_name("new VG", name)?;
        if paths.is_empty() {
            return Err(EngineError::BadArgument(
                "a VG needs at least one PV".into(),
            ));
        }
        let extent = extent_bytes.unwrap_or(DEFAULT_EXTENT_BYTES);
        if extent < 4096 || extent % 4096 != 0 || !(extent / 512).is_power_of_two() {
            return Err(EngineError::BadArgument(format!(
                "extent size {extent} bytes: must be a power of two of at least 4 KiB"
            )));
        }
        let _orphans = self.lock_orphans()?;
        let _lock = self.lock_vg(name)?;
        let scan = self.scan_with(true)?;
        if scan.vg(name).is_some() {
            return Err(EngineError::VgExists(name.to_string()));
        }
        let (scan, indexes) = self.orphans_for(scan, paths, force)?;
        let mut vg = VolumeGroup {
            name: name.to_string(),
            id: Id::random(),
            seqno: 0,
            format: "lvm2".into(),
            status: vec!["RESIZEABLE".into(), "READ".into(), "WRITE".into()],
            flags: Vec::new(),
            extent_size_sectors: extent / 512,
            max_lv: 0,
            max_pv: 0,
            metadata_copies: 0,
            extra: Vec::new(),
            pvs: Vec::new(),
            lvs: Vec::new(),
            tail: Vec::new(),
        };
        for i in indexes {
            let key = vg.next_pv_key();
            let entry = Self::new_pv_entry(&vg, &scan.pvs[i], key)?;
            vg.pvs.push(entry);
        }
        self.commit(&scan, None, vg, &[])
    }

    /// Adds PVs to a VG.
    pub fn vg_extend(&self, name: &str, paths: &[String], force: bool) -> Result<VolumeGroup> {
        let _orphans = self.lock_orphans()?;
        let _lock = self.lock_vg(name)?;
        let scan = self.scan_with(true)?;
        Self::vg_for_change(&scan, name)?;
        let (scan, indexes) = self.orphans_for(scan, paths, force)?;
        let state = Self::vg_for_change(&scan, name)?;
        let mut vg = state.vg.clone();
        for i in indexes {
            let key = vg.next_pv_key();
            let entry = Self::new_pv_entry(&vg, &scan.pvs[i], key)?;
            vg.pvs.push(entry);
        }
        self.commit(&scan, Some(state), vg, &[])
    }

    /// Takes unused PVs out of a VG; they become orphans.
    pub fn vg_reduce(&self, name: &str, paths: &[String]) -> Result<VolumeGroup> {
        let _orphans = self.lock_orphans()?;
        let _lock = self.lock_vg(name)?;
        let scan = self.scan_with(true)?;
        let state = Self::vg_for_change(&scan, name)?;
        let mut vg = state.vg.clone();
        let mut released = Vec::new();
        for path in paths {
            let i = Self::pv_index(&scan, path).ok_or_else(|| EngineError::NotPv {
                device: path.clone(),
            })?;
            let pv = &scan.pvs[i];
            let Some(pos) = vg.pvs.iter().position(|p| p.id == pv.label.pv_id) else {
                return Err(EngineError::Refused {
                    vg: name.into(),
                    why: format!("{} is not one of its PVs", pv.path),
                });
            };
            let used = vg.pe_used(&vg.pvs[pos].key);
            if used > 0 {
                return Err(EngineError::Refused {
                    vg: name.into(),
                    why: format!("{} still holds {used} allocated extents; move or remove the LVs on it first", pv.path),
                });
            }
            vg.pvs.remove(pos);
            released.push(pv);
        }
        if vg.pvs.is_empty() {
            return Err(EngineError::Refused {
                vg: name.into(),
                why: "cannot remove its last PV; use vg remove".into(),
            });
        }
        self.commit(&scan, Some(state), vg, &released)
    }

    /// Drops the PVs of a VG that are missing, making it whole again. PVs that hold extents
    /// are dropped only with `force`, which also removes the LVs that used them.
    pub fn vg_reduce_missing(&self, name: &str, force: bool) -> Result<VolumeGroup> {
        let _lock = self.lock_vg(name)?;
        let scan = self.scan_with(true)?;
        let state = scan
            .vg(name)
            .ok_or_else(|| EngineError::VgNotFound(name.to_string()))?;
        if !state.is_partial() {
            return Err(EngineError::Refused {
                vg: name.into(),
                why: "no PV is missing".into(),
            });
        }
        let mut vg = state.vg.clone();
        let keys = vg
            .pv_keys()
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>();
        let key_set = keys.iter().map(String::as_str).collect();
        let lost: Vec<String> = vg
            .lvs
            .iter()
            .filter(|lv| {
                lv.segments.iter().any(|seg| {
                    seg.pv_areas(&key_set)
                        .iter()
                        .any(|a| state.missing.contains(&a.pv))
                })
            })
            .map(|lv| lv.name.clone())
            .collect();
        if !lost.is_empty() && !force {
            return Err(EngineError::Refused {
                vg: name.into(),
                why: format!(
                    "the missing PVs hold extents of LV(s) {}; use --force to remove those LVs with them",
                    lost.join(", ")
                ),
            });
        }
        vg.lvs.retain(|lv| !lost.contains(&lv.name));
        vg.pvs.retain(|pv| !state.missing.contains(&pv.key));
        let mut complete = state.clone();
        complete.missing.clear();
        self.commit(&scan, Some(&complete), vg, &[])
    }

    /// Removes a VG: its PVs become orphans. LVs are removed with it only with `force`.
    pub fn vg_remove(&self, name: &str, force: bool) -> Result<()> {
        let _orphans = self.lock_orphans()?;
        let _lock = self.lock_vg(name)?;
        let scan = self.scan_with(true)?;
        let state = scan
            .vg(name)
            .ok_or_else(|| EngineError::VgNotFound(name.to_string()))?;
        if state.is_partial() && !force {
            Self::vg_for_change(&scan, name)?;
        }
        // A shared VG's lock LV goes with it, as with lvm2.
        let shared = super::shared::VgLocking::of(&state.vg)?;
        let lock_lv = match &shared {
            super::shared::VgLocking::Sanlock { lock_lv, .. } => Some(lock_lv.as_str()),
            _ => None,
        };
        let user_lvs = state
            .vg
            .lvs
            .iter()
            .filter(|l| Some(l.name.as_str()) != lock_lv)
            .count();
        if user_lvs > 0 && !force {
            return Err(EngineError::Refused {
                vg: name.into(),
                why: format!(
                    "it holds {} logical volume(s) ({}); use --force to remove them with it",
                    state.vg.lvs.len(),
                    state
                        .vg
                        .lvs
                        .iter()
                        .map(|l| l.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        if let Err(e) = self.archive().store(&state.vg, &state.info) {
            tracing::warn!("could not archive the metadata of VG '{name}': {e}");
        }
        // No host may hold its VG lock or an LV lease while it goes.
        let mut emptied = state.vg.clone();
        emptied.lvs.retain(|l| Some(l.name.as_str()) == lock_lv);
        let guard = self.shared_commit_guard(&scan, Some(state), &mut emptied)?;
        let pvs: Vec<&PvInfo> = state.present.values().map(|&i| &scan.pvs[i]).collect();
        commit::release_pvs(&pvs)?;
        if let Some(guard) = guard {
            guard.leave_lockspace();
        }
        Ok(())
    }

    pub fn vg_rename(&self, old: &str, new: &str) -> Result<VolumeGroup> {
        check_name("new VG name", new)?;
        let (first, second) = if old < new { (old, new) } else { (new, old) };
        let _a = self.lock_vg(first)?;
        let _b = self.lock_vg(second)?;
        let scan = self.scan_with(true)?;
        if scan.vg(new).is_some() {
            return Err(EngineError::VgExists(new.to_string()));
        }
        let state = Self::vg_for_change(&scan, old)?;
        let mut vg = state.vg.clone();
        vg.name = new.to_string();
        self.commit(&scan, Some(state), vg, &[])
    }

    /// Writes the VG's metadata as a backup file (lvm2's vgcfgbackup format).
    pub fn vg_backup(&self, name: &str, file: Option<&Path>) -> Result<PathBuf> {
        let _lock = self.lock_vg(name)?;
        let scan = self.scan()?;
        let state = scan
            .vg(name)
            .ok_or_else(|| EngineError::VgNotFound(name.to_string()))?;
        let path = match file {
            Some(f) => f.to_path_buf(),
            None => {
                let dir = self.state_dir.join("backup");
                std::fs::create_dir_all(&dir).map_err(|source| EngineError::Io {
                    path: dir.display().to_string(),
                    cause: source,
                })?;
                dir.join(name)
            }
        };
        archive::write_file_durably(&path, &archive::backup_text(&state.vg, &state.info))?;
        Ok(path)
    }

    /// Writes the VG from a backup file (ours or lvm2's) back to its PVs, found by id.
    /// Without a file, the newest archived text of the VG is used.
    pub fn vg_restore(&self, name: &str, file: Option<&Path>) -> Result<VolumeGroup> {
        let path = match file {
            Some(f) => f.to_path_buf(),
            None => {
                let entries = self.archive().list(name)?;
                entries.last().map(|e| e.path.clone()).ok_or_else(|| {
                    EngineError::BadArgument(format!(
                        "no archived metadata for VG '{name}' in {}",
                        self.state_dir.display()
                    ))
                })?
            }
        };
        let (mut vg, _) = archive::read_backup(&path)?;
        if vg.name != name {
            return Err(EngineError::BadFile {
                path: path.display().to_string(),
                why: format!("holds VG '{}', not '{name}'", vg.name),
            });
        }
        let _orphans = self.lock_orphans()?;
        let _lock = self.lock_vg(name)?;
        let scan = self.scan_with(true)?;
        let current = scan.vg(name);
        for pv in &vg.pvs {
            let Some(found) = scan.pvs.iter().find(|p| p.label.pv_id == pv.id) else {
                return Err(EngineError::VgPartial {
                    vg: name.into(),
                    count: 1,
                    list: format!("{} (id {}, {})", pv.key, pv.id, pv.device),
                });
            };
            if let Some(other) = &found.vg_name {
                if other != name {
                    return Err(EngineError::PvInUse {
                        device: found.path.clone(),
                        vg: other.clone(),
                    });
                }
            }
        }
        for pv in &mut vg.pvs {
            if let Some(found) = scan.pvs.iter().find(|p| p.label.pv_id == pv.id) {
                pv.device = found.path.clone();
            }
        }
        let released: Vec<&PvInfo> = current
            .map(|c| {
                c.present
                    .values()
                    .map(|&i| &scan.pvs[i])
                    .filter(|p| vg.pv_by_id(&p.label.pv_id).is_none())
                    .collect()
            })
            .unwrap_or_default();
        // Past the current seqno, so that every copy of the restored text is the newest.
        vg.seqno = current.map_or(vg.seqno, |c| c.vg.seqno.max(vg.seqno)) + 1;
        self.commit(&scan, current, vg, &released)
    }
}
