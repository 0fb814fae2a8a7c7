//! LV changes through the daemon: committed, then the served devices follow them online.

use super::*;

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
        let resized = match change {
            LvChange::Extend { lv, .. } | LvChange::Reduce { lv, .. } => volumes
                .get(&activate::dm_name(vg, lv))
                .map(|v| v.device.clone()),
            _ => None,
        };
        if let Some(device) = &resized {
            device.suspend();
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
        for key in held {
            let mut volume = volumes.remove(&key).expect("listed");
            let lv_id = volume.lv.as_ref().expect("an LV's").lv_id.clone();
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
            let in_stack = activate::stack_origin(&state.vg, &lv.name).is_some();
            if in_stack && device.table().as_ref() != Some(&table) {
                // An origin's or snapshot's stack is not reloaded online yet.
                notes.push(format!(
                    "  {vg}/{}: changed; restart serve to serve the change (snapshot stacks are not reloaded online)",
                    lv.name
                ));
            } else if device.table().as_ref() != Some(&table) {
                device.suspend();
                let loaded = activate::load_lv(&scan, state, &lv.name, device);
                device.resume()?;
                loaded?;
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
        if let Some(state) = state {
            for lv in state.vg.lvs.iter().filter(|lv| lv.is_visible()) {
                if seen.contains(&lv.id.to_string()) {
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
        LvChange::Remove { vg, lv } => {
            engine.lv_remove(vg, lv)?;
            format!("Logical volume \"{lv}\" successfully removed.\n")
        }
        LvChange::Rename { vg, lv, new } => {
            engine.lv_rename(vg, lv, new)?;
            format!("Renamed \"{lv}\" to \"{new}\" in volume group \"{vg}\"\n")
        }
    })
}
