//! LV changes through the daemon: committed, then the served devices follow them online.

use super::*;

use tessera_engine::thin::{PoolCreateOptions, ThinOutcome};
use tessera_formats::lvm2::vg::ThinDiscards;

impl Daemon {
    /// Commits an LV change and brings the VG's mapped devices in line with it. A device
    /// whose size changes is suspended around the commit, so no I/O runs while its extents
    /// move; clients then see the new size on their next connection.
    pub(super) fn lv_change(&self, change: &LvChange) -> Result<Reply> {
        let vg = change.vg();
        let mut volumes = self.lock();
        let served = volumes
            .values()
            .any(|v| v.lv.as_ref().is_some_and(|l| l.vg == vg))
            || self.engine.scan()?.vg(vg).is_some();
        if !served {
            return Ok(Reply {
                code: Some(NOT_SERVED.into()),
                ..Reply::error(format!("this daemon does not serve VG '{vg}'"))
            });
        }
        if self.read_only {
            refuse!("the daemon serves VG '{vg}' read-only; it makes no changes");
        }
        if self.move_running(vg) {
            refuse!("a pv move runs in VG '{vg}'; change its LVs once it has finished");
        }
        let resized = match change {
            LvChange::Extend { lv, .. } | LvChange::Reduce { lv, .. } => volumes
                .get(&activate::dm_name(vg, lv))
                .map(|v| v.device.clone()),
            _ => None,
        };
        if let Some(device) = &resized {
            device.suspend();
        }
        // A thin LV leaves service before its pool deletes it; a failed removal serves it
        // again below.
        if let LvChange::Remove { vg, lv } = change {
            let scan = self.engine.scan()?;
            if scan
                .vg(vg)
                .and_then(|s| s.vg.lv(lv))
                .is_some_and(|l| l.thin().is_some())
            {
                self.retire_thin(vg, lv, &mut volumes);
            }
        }
        let result = apply_lv_change(&self.engine, change);
        let synced = self.sync_vg(vg, &mut volumes);
        // Whatever happened, the device does not stay suspended.
        if let Some(device) = &resized {
            if device.is_suspended() {
                device.resume()?;
            }
        }
        let mut output = result?;
        for line in synced? {
            output.push_str(&line);
            output.push('\n');
        }
        Ok(Reply::ok(output, json!(null)))
    }

    /// Makes the mapped devices of VG `vg` match its committed metadata: tables reloaded
    /// where they changed, new LVs activated, renamed ones re-exported, removed ones
    /// retired. Returns a line for each device it changed.
    pub(super) fn sync_vg(
        &self,
        vg: &str,
        volumes: &mut BTreeMap<String, Volume>,
    ) -> Result<Vec<String>> {
        let scan = self.engine.scan_with(!self.read_only)?;
        let state = scan.vg(vg);
        let mut notes = Vec::new();
        let held: Vec<String> = volumes
            .iter()
            .filter(|(_, v)| v.lv.as_ref().is_some_and(|l| l.vg == vg))
            .map(|(k, _)| k.clone())
            .collect();
        let mut seen = Vec::new();
        let mut restack: Vec<String> = Vec::new();
        for key in held {
            let mut volume = volumes.remove(&key).expect("listed");
            let lv_id = volume.lv.as_ref().expect("an LV's").lv_id.clone();
            // Thin LVs follow their pool's stack, rebuilt below.
            let thin_lv = state.and_then(|s| {
                s.vg.lvs
                    .iter()
                    .find(|lv| lv.id.to_string() == lv_id && lv.thin().is_some())
            });
            if thin_lv.is_some() {
                volumes.insert(key, volume);
                continue;
            }
            let lv = state.and_then(|s| {
                s.vg.lvs.iter().find(|lv| {
                    lv.id.to_string() == lv_id
                        && s.vg.lv_is_visible(lv)
                        && (lv.is_plain() || lv.raid().is_some())
                })
            });
            let (Some(state), Some(lv)) = (state, lv) else {
                self.exports.remove(&volume.export);
                retire(&volume.device);
                notes.push(format!("  {}: removed from service", volume.export));
                continue;
            };
            seen.push(lv_id);
            let device = &volume.device;
            let table = Table::parse(&activate::lv_table(&scan, state, &lv.name)?)?;
            let stack = activate::stack_origin(&state.vg, &lv.name);
            if let Some(origin) = stack.filter(|_| device.table().as_ref() != Some(&table)) {
                // A stack changed (a snapshot made, a merge started): built anew below.
                if !restack.iter().any(|o| o == origin) {
                    restack.push(origin.to_string());
                }
            } else if device.table().as_ref() != Some(&table) {
                device.suspend();
                let loaded = activate::load_lv(&scan, state, &lv.name, device);
                device.resume()?;
                loaded?;
                // An origin whose last snapshot went: its stack's layers are done with.
                for layer in std::mem::take(&mut volume.layers) {
                    retire(&layer);
                }
                notes.push(format!(
                    "  {vg}/{}: served device reloaded online, now {} sectors",
                    lv.name,
                    device.size_sectors()
                ));
            } else if device.is_suspended() {
                device.resume()?;
            }
            let export = format!("{vg}/{}", lv.name);
            if export != volume.export {
                if let Some(old) = self.exports.remove(&volume.export) {
                    self.exports.insert(export.clone(), old)?;
                }
                notes.push(format!("  {}: now served as {export}", volume.export));
                volume.export = export;
            }
            volumes.insert(activate::dm_name(vg, &lv.name), volume);
        }
        notes.extend(self.drop_gone_pools(state, vg));
        if let Some(state) = state {
            let served_pools: Vec<String> = self
                .pools()
                .keys()
                .filter_map(|k| k.strip_prefix(&format!("{vg}/")).map(str::to_string))
                .collect();
            for pool in &served_pools {
                match self.repool(&scan, state, pool, volumes) {
                    Ok((lines, exported)) => {
                        notes.extend(lines);
                        seen.extend(exported);
                    }
                    Err(e) => notes.push(format!(
                        "  {vg}/{pool}: its thin pool stack could not be rebuilt: {}",
                        chain(&e)
                    )),
                }
            }
            for origin in &restack {
                match self.restack(&scan, state, origin, volumes) {
                    Ok((lines, exported)) => {
                        notes.extend(lines);
                        seen.extend(exported);
                    }
                    Err(e) => notes.push(format!(
                        "  {vg}/{origin}: its snapshot stack could not be rebuilt: {}",
                        chain(&e)
                    )),
                }
            }
            for lv in state.vg.lvs.iter().filter(|lv| state.vg.lv_is_visible(lv)) {
                if seen.contains(&lv.id.to_string()) {
                    continue;
                }
                // A new snapshot of an origin served already comes with its stack above.
                if activate::stack_origin(&state.vg, &lv.name)
                    .is_some_and(|o| volumes.contains_key(&activate::dm_name(vg, o)))
                {
                    continue;
                }
                match self.add_lv(&scan, state, &lv.name, volumes) {
                    Ok(()) => notes.push(format!("  {vg}/{}: now served", lv.name)),
                    Err(e) => notes.push(format!("  {vg}/{}: not served: {}", lv.name, chain(&e))),
                }
            }
        }
        Ok(notes)
    }
}

/// Performs an LV change with `engine` and says what was done, as lvm2's tools do. The
/// daemon and a command run without a daemon both come here.
pub fn apply_lv_change(engine: &Engine, change: &LvChange) -> Result<String> {
    Ok(match change {
        LvChange::Create { vg, lv, options } => {
            engine.lv_create(vg, lv, options)?;
            format!("Logical volume \"{lv}\" created.\n")
        }
        LvChange::Extend { vg, lv, options } => {
            let result = engine.lv_extend(vg, lv, options)?;
            format!(
                "Logical volume {vg}/{lv} successfully resized to {} extents.\n",
                result.extent_count()
            )
        }
        LvChange::Reduce { vg, lv, size } => {
            let result = engine.lv_reduce(vg, lv, *size)?;
            format!(
                "Logical volume {vg}/{lv} successfully resized to {} extents.\n",
                result.extent_count()
            )
        }
        LvChange::ThinPool {
            vg,
            lv,
            size,
            chunk_bytes,
            metadata_bytes,
            zero,
            discards,
            pvs,
        } => {
            let discards = ThinDiscards::parse(discards).ok_or_else(|| {
                DaemonError::Refused(format!(
                    "discards '{discards}': expected ignore, nopassdown or passdown"
                ))
            })?;
            let options = PoolCreateOptions {
                size: *size,
                chunk_bytes: *chunk_bytes,
                metadata_bytes: *metadata_bytes,
                zero: *zero,
                discards,
                pvs: pvs.clone(),
            };
            let out = engine.lv_thin_pool_create(vg, lv, &options)?;
            thin_outcome(&out, lv)
        }
        LvChange::Thin { vg, pool, lv, size } => {
            thin_outcome(&engine.lv_thin_create(vg, lv, pool, *size)?, lv)
        }
        LvChange::ThinSnapshot { vg, origin, lv } => {
            thin_outcome(&engine.lv_thin_snapshot(vg, lv, origin)?, lv)
        }
        LvChange::PoolMetadataExtend { vg, lv, size, pvs } => {
            let meta = engine.lv_thin_pool_extend_metadata(vg, lv, *size, pvs)?;
            format!(
                "  Size of logical volume {vg}/{} changed to {} extents.\n",
                meta.name,
                meta.extent_count()
            )
        }
        LvChange::WhenFull { vg, lv, error } => {
            engine.lv_thin_pool_when_full(vg, lv, *error)?;
            format!("  Logical volume {vg}/{lv} changed.\n")
        }
        LvChange::Remove { vg, lv } => {
            engine.lv_remove(vg, lv)?;
            format!("Logical volume \"{lv}\" successfully removed.\n")
        }
        LvChange::Rename { vg, lv, new } => {
            engine.lv_rename(vg, lv, new)?;
            format!("Renamed \"{lv}\" to \"{new}\" in volume group \"{vg}\"\n")
        }
        LvChange::Snapshot {
            vg,
            origin,
            lv,
            size,
            chunk_bytes,
        } => {
            engine.lv_snapshot_create(vg, lv, origin, *size, *chunk_bytes)?;
            format!("Logical volume \"{lv}\" created.\n")
        }
        LvChange::Merge { vg, lv } => {
            let origin = engine.lv_merge(vg, lv)?;
            format!(
                "Merging of snapshot {vg}/{lv} will occur on next activation of {vg}/{origin}.\n"
            )
        }
        LvChange::FinishMerges { vg } => engine
            .finish_merges()?
            .into_iter()
            .filter(|s| s.starts_with(&format!("{vg}/")))
            .map(|s| format!("Merge of snapshot {s} finished; it is removed.\n"))
            .collect(),
    })
}

impl Daemon {
    /// Builds origin `origin`'s stack, the first time or anew after its snapshots changed
    /// (one made, a merge started), online: the served origin and snapshot devices and the
    /// `-real` and `-cow` layers are reused by name (clients stay connected; the snapshot
    /// targets keep their origin and take over their stores' exceptions), suspended, loaded
    /// with their new tables and resumed; new devices are made, new snapshots exported, ones
    /// no longer served (merging) retired, and unused layers last. Returns a line per change
    /// and the ids of the LVs it exported.
    pub(super) fn restack(
        &self,
        scan: &Scan,
        state: &VgState,
        origin: &str,
        volumes: &mut BTreeMap<String, Volume>,
    ) -> Result<(Vec<String>, Vec<String>)> {
        let vg = &state.vg.name;
        let top = activate::dm_name(vg, origin);
        let real = format!("{top}-real");
        // The served devices of this stack: the origin, and every snapshot over its layer.
        let members: Vec<String> = volumes
            .iter()
            .filter(|(k, v)| {
                **k == top
                    || v.device.table().is_some_and(|t| {
                        t.rows()
                            .iter()
                            .any(|r| r.target_type == "snapshot" && r.args().contains(&real))
                    })
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut old: BTreeMap<String, Volume> = members
            .iter()
            .filter_map(|k| volumes.remove(k).map(|v| (k.clone(), v)))
            .collect();
        for v in old.values() {
            v.device.suspend();
        }
        // The layers the old stack ran on, by name: reused, since the snapshot targets
        // know their origin by its device (as the kernel's by its block device).
        let old_layers: Vec<Arc<MappedDevice>> = old
            .values_mut()
            .flat_map(|v| std::mem::take(&mut v.layers))
            .collect();
        let mut lines = Vec::new();
        let mut exported = Vec::new();
        let built = (|| -> Result<Vec<(activate::StackDevice, Arc<MappedDevice>, bool)>> {
            let mut made: Vec<(activate::StackDevice, Arc<MappedDevice>, bool)> = Vec::new();
            for d in activate::stack_devices(scan, state, origin)? {
                let table = Table::parse(&d.table)?;
                let reused = d.lv.is_some() && old.contains_key(&d.name);
                let layer = old_layers
                    .iter()
                    .find(|l| d.lv.is_none() && l.name() == d.name);
                let device = match (old.get(&d.name).filter(|_| d.lv.is_some()), layer) {
                    (Some(v), _) => v.device.clone(),
                    (None, Some(l)) => {
                        l.suspend();
                        l.clone()
                    }
                    (None, None) => {
                        Arc::new(MappedDevice::new(d.name.clone(), self.registry.clone()))
                    }
                };
                let resolve = |name: &str| -> tessera_block::Result<SharedDevice> {
                    if let Some((_, below, _)) = made.iter().find(|(m, _, _)| m.name == name) {
                        return Ok(below.clone());
                    }
                    scanned_pv(scan, name, "the origin's stack")
                };
                device.load(&table, &resolve)?;
                device.resume()?;
                made.push((d, device, reused));
            }
            Ok(made)
        })();
        let made = match built {
            Ok(made) => made,
            Err(e) => {
                // Put the old stack back as it ran (its layers under the origin again; a
                // layer suspended for reuse runs its old table on).
                for l in &old_layers {
                    if l.is_suspended() {
                        let _ = l.resume();
                    }
                }
                for (k, mut v) in old {
                    if v.device.is_suspended() {
                        let _ = v.device.resume();
                    }
                    if k == top {
                        v.layers = old_layers.clone();
                    }
                    volumes.insert(k, v);
                }
                return Err(e);
            }
        };
        let layers: Vec<Arc<MappedDevice>> = made
            .iter()
            .filter(|(d, _, _)| d.lv.is_none())
            .map(|(_, m, _)| m.clone())
            .collect();
        for (d, device, reused) in made {
            let Some(lv_name) = d.lv else { continue };
            let Some(lv) = state.vg.lv(&lv_name) else {
                continue;
            };
            let export = format!("{vg}/{lv_name}");
            let own_layers = if lv_name == origin {
                layers.clone()
            } else {
                Vec::new()
            };
            exported.push(lv.id.to_string());
            if reused {
                let mut v = old.remove(&d.name).expect("reused from the old stack");
                v.layers = own_layers;
                lines.push(format!("  {export}: reloaded in its snapshot stack online"));
                volumes.insert(d.name, v);
                continue;
            }
            self.serve(
                volumes,
                d.name.clone(),
                format!(
                    "LV {export} ({})",
                    if lv_name == origin {
                        "origin"
                    } else {
                        "snapshot"
                    }
                ),
                Volume {
                    device,
                    export: export.clone(),
                    lv: Some(LvRef {
                        vg: vg.clone(),
                        lv_id: lv.id.to_string(),
                    }),
                    records: None,
                    read_only: self.read_only,
                    claim: None,
                    layers: own_layers,
                },
            )?;
            lines.push(format!("  {export}: now served"));
        }
        // Served devices the new stack has no place for (a snapshot now merging).
        for (_, v) in old {
            self.exports.remove(&v.export);
            retire(&v.device);
            lines.push(format!("  {}: removed from service", v.export));
        }
        // Layers the new stack does not run on (a snapshot's COW after its merge began).
        for layer in old_layers
            .iter()
            .filter(|l| !layers.iter().any(|n| Arc::ptr_eq(n, l)))
        {
            retire(layer);
        }
        Ok((lines, exported))
    }
}

/// What a thin verb says, as lvm2 prints it: its notes and warnings, then the LV made.
fn thin_outcome(out: &ThinOutcome, lv: &str) -> String {
    let mut text = String::new();
    for n in &out.notes {
        text.push_str(&format!("  {n}\n"));
    }
    for w in &out.warnings {
        text.push_str(&format!("  WARNING: {w}\n"));
    }
    text.push_str(&format!("  Logical volume \"{lv}\" created.\n"));
    text
}

/// The scanned PV at `path`, for a stack's table that names it; `stack` says whose layers
/// were looked at first, for the error.
pub(super) fn scanned_pv(
    scan: &Scan,
    path: &str,
    stack: &str,
) -> tessera_block::Result<SharedDevice> {
    scan.pvs
        .iter()
        .find(|p| p.path == path)
        .map(|p| p.device.clone())
        .ok_or_else(|| BlockError::Open {
            device: path.to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("neither a scanned PV nor a layer of {stack}"),
            ),
        })
}
