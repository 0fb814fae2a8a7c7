//! The MD verbs of a running daemon: start an array found on its devices (and the LVs on
//! it), load a running one anew from its superblocks, stop one.

use super::*;

impl Daemon {
    pub(super) fn md_assemble(&self, name: &str, degraded: bool, force: bool) -> Result<Reply> {
        let mut volumes = self.lock();
        let scan = self.engine.md_scan(!self.read_only)?;
        let Some(array) = scan.array(name) else {
            refuse!("no MD array '{name}' on the daemon's devices");
        };
        let array = self.add_array(array, degraded || self.read_only, force, &mut volumes)?;
        let size = volumes
            .get(&format!("md-{}", array.name))
            .map_or(0, |v| v.device.size_sectors());
        let mut text = format!(
            "md/{} started: {} over {} of {} members, {size} sectors\n",
            array.name,
            array.level_name(),
            array.slots.iter().flatten().count(),
            array.raid_disks
        );
        // The LVs on PVs the array holds come up with it.
        let served = self.serve_new_lvs(&mut volumes, &mut text)?;
        Ok(Reply::ok(
            text,
            json!({ "name": array.name, "size_sectors": size, "lvs": served }),
        ))
    }

    /// Loads array `name` anew from its members' superblocks, so that it takes spares
    /// added since it started and lets go of removed ones; the set keeps its records.
    pub(super) fn md_reload(&self, name: &str) -> Result<Reply> {
        let volumes = self.lock();
        let key = format!("md-{name}");
        let Some(volume) = volumes.get(&key) else {
            refuse!("md/{name} is not running in this daemon");
        };
        let Some(records) = &volume.records else {
            refuse!("md/{name} runs read-only: it takes no new members");
        };
        let scan = self.engine.md_scan(false)?;
        let Some(array) = scan.array(name) else {
            refuse!("no MD array '{name}' on the daemon's devices");
        };
        for spare in &array.spares {
            records.add_member(spare.clone());
        }
        let table = Table::parse(&array.table().map_err(DaemonError::Refused)?)?;
        let resolve = |path: &str| {
            array
                .slots
                .iter()
                .flatten()
                .chain(&array.spares)
                .find(|m| m.path == path)
                .map(|m| m.device.clone())
                .ok_or_else(|| tessera_block::BlockError::Open {
                    device: path.to_string(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "not a member of the array",
                    ),
                })
        };
        volume.device.load(&table, &resolve)?;
        volume.device.resume()?;
        Ok(Reply::ok(
            format!(
                "md/{name} reloaded: {} members, {} spares\n",
                array.slots.iter().flatten().count(),
                array.spares.len()
            ),
            json!(null),
        ))
    }

    pub(super) fn md_stop(&self, name: &str) -> Result<Reply> {
        let mut volumes = self.lock();
        let key = format!("md-{name}");
        let Some(volume) = volumes.remove(&key) else {
            refuse!("md/{name} is not running in this daemon");
        };
        self.exports.remove(&volume.export);
        self.engine.remove_stacked(&volume.export);
        let flushed = tessera_block::BlockDevice::flush(&*volume.device);
        retire(&volume.device);
        flushed?;
        Ok(Reply::ok(format!("md/{name} stopped\n"), json!(null)))
    }
}
