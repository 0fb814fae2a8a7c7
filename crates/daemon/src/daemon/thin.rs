//! Thin pools served: a pool's stack as lvm2 loads it (`_tmeta` and `_tdata`, the
//! `thin-pool` device over them) held under no export of its own, and every thin LV of the
//! pool exported as `VG/LV` (a `thin` device over the pool), activation-skip snapshots
//! included. Changes to a served pool's thin devices go to its live `thin-pool` target as
//! the kernel's messages, never to its metadata behind the target's back.

use super::lv::scanned_pv;
use super::*;

use tessera_engine::thin::{self, LivePools, PoolChanger};
use tessera_formats::thin::PoolInfo;

/// A served pool's devices that carry no export: its metadata and data layers and the
/// `thin-pool` device, in the order they were made, and the thin LVs it serves by key.
#[derive(Default)]
pub(super) struct PoolStack {
    layers: Vec<Arc<MappedDevice>>,
    thins: Vec<String>,
}

impl PoolStack {
    /// The stack's devices that carry no export.
    pub(super) fn layers(&self) -> &[Arc<MappedDevice>] {
        &self.layers
    }

    /// The stack's `thin-pool` device, for its messages.
    fn thin_pool(&self) -> Option<Arc<MappedDevice>> {
        self.layers
            .iter()
            .find(|l| {
                l.table()
                    .is_some_and(|t| t.rows().iter().any(|r| r.target_type == "thin-pool"))
            })
            .cloned()
    }

    /// Flushes and retires the layers, top first (the pool's commit runs on its flush).
    pub(super) fn retire(self) {
        for layer in self.layers.iter().rev() {
            let _ = tessera_block::BlockDevice::flush(&**layer);
            retire(layer);
        }
    }
}

/// The key of pool `pool` of VG `vg` among the daemon's pools.
fn pool_key(vg: &str, pool: &str) -> String {
    format!("{vg}/{pool}")
}

/// The thin LVs of `pool`, in metadata order.
fn thins_of<'a>(state: &'a VgState, pool: &str) -> Vec<&'a str> {
    state
        .vg
        .lvs
        .iter()
        .filter(|l| l.thin().is_some_and(|t| t.pool == pool))
        .map(|l| l.name.as_str())
        .collect()
}

impl Daemon {
    /// Serves LV `lv` of pool `pool` (or the pool itself) with the pool's stack, built or
    /// rebuilt unless it serves the LV already.
    pub(super) fn add_pool(
        &self,
        scan: &Scan,
        state: &VgState,
        pool: &str,
        lv: &str,
        volumes: &mut BTreeMap<String, Volume>,
    ) -> Result<()> {
        let vg = &state.vg.name;
        let serves_lv = lv == pool || volumes.contains_key(&activate::dm_name(vg, lv));
        if serves_lv && self.pools().contains_key(&pool_key(vg, pool)) {
            return Ok(());
        }
        self.repool(scan, state, pool, volumes)?;
        if lv != pool && !volumes.contains_key(&activate::dm_name(vg, lv)) {
            refuse!("thin LV {vg}/{lv} is not in its pool's stack");
        }
        Ok(())
    }

    /// Builds pool `pool`'s stack, the first time or anew after the metadata changed (a
    /// thin LV made or removed, the pool grown), online: layers and served thin devices
    /// are reused by name and reloaded only where their tables changed, new thin LVs are
    /// served, thin LVs gone are retired, and layers no longer used go last. Returns a line
    /// per change and the ids of the LVs it serves.
    pub(super) fn repool(
        &self,
        scan: &Scan,
        state: &VgState,
        pool: &str,
        volumes: &mut BTreeMap<String, Volume>,
    ) -> Result<(Vec<String>, Vec<String>)> {
        let vg = &state.vg.name;
        let key = pool_key(vg, pool);
        let old = self.pools().remove(&key).unwrap_or_default();
        let thins = thins_of(state, pool);
        let devices = thin::pool_stack_devices(scan, state, pool, &thins, false)?;
        let mut lines = Vec::new();
        // Old layers the new stack has no place for go first: a pool that got its first
        // thin device runs as `VG-POOL-tpool` instead of `VG-POOL`, and its new thin-pool
        // target opens the metadata only once the old one has committed and let go.
        let (old_layers, unused): (Vec<_>, Vec<_>) = old
            .layers
            .into_iter()
            .partition(|l| devices.iter().any(|d| d.name == l.name()));
        for layer in unused.iter().rev() {
            let _ = tessera_block::BlockDevice::flush(&**layer);
            retire(layer);
        }
        let old = PoolStack {
            layers: old_layers,
            thins: old.thins,
        };
        let mut exported = Vec::new();
        let mut stack = PoolStack::default();
        let mut made: Vec<(String, Arc<MappedDevice>)> = Vec::new();
        let result = (|| -> Result<()> {
            for d in &devices {
                let table = Table::parse(&d.table)?;
                let resolve = |name: &str| -> tessera_block::Result<SharedDevice> {
                    if let Some((_, below)) = made.iter().find(|(n, _)| n == name) {
                        return Ok(below.clone());
                    }
                    scanned_pv(scan, name, "the pool's stack")
                };
                let thin_lv = d.lv.as_deref().filter(|lv| *lv != pool);
                let existing = match thin_lv {
                    Some(_) => volumes.get(&d.name).map(|v| v.device.clone()),
                    None => old.layers.iter().find(|l| l.name() == d.name).cloned(),
                };
                let device = match existing {
                    Some(device) if device.table().as_ref() == Some(&table) => device,
                    Some(device) => {
                        device.suspend();
                        let loaded = device.load(&table, &resolve);
                        device.resume()?;
                        loaded?;
                        lines.push(format!("  {}: reloaded online", d.name));
                        device
                    }
                    None => {
                        let device =
                            Arc::new(MappedDevice::new(d.name.clone(), self.registry.clone()));
                        device.load(&table, &resolve)?;
                        device.resume()?;
                        device
                    }
                };
                made.push((d.name.clone(), device.clone()));
                let Some(lv_name) = thin_lv else {
                    stack.layers.push(device);
                    continue;
                };
                let lv = state.vg.lv(lv_name).expect("the stack's LVs are the VG's");
                exported.push(lv.id.to_string());
                stack.thins.push(d.name.clone());
                if volumes.contains_key(&d.name) {
                    continue;
                }
                let export = format!("{vg}/{lv_name}");
                self.serve(
                    volumes,
                    d.name.clone(),
                    format!("LV {export} (thin, pool {pool})"),
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
                        layers: Vec::new(),
                    },
                )?;
                lines.push(format!("  {export}: now served"));
            }
            Ok(())
        })();
        // Thin LVs the pool no longer has.
        for gone in old.thins.iter().filter(|k| !stack.thins.contains(k)) {
            if let Some(v) = volumes.remove(gone) {
                self.exports.remove(&v.export);
                retire(&v.device);
                lines.push(format!("  {}: removed from service", v.export));
            }
        }
        // Layers the new stack does not run on (the pool's first table, named as the pool
        // LV, once the pool holds thin devices and runs as `-tpool`).
        for layer in old.layers.iter().rev() {
            if !stack.layers.iter().any(|l| Arc::ptr_eq(l, layer)) {
                let _ = tessera_block::BlockDevice::flush(&**layer);
                retire(layer);
            }
        }
        if let Err(e) = result {
            // What was built stays held, so nothing runs unowned; the caller reports it.
            self.pools().insert(key, stack);
            return Err(e);
        }
        self.pools().insert(key, stack);
        Ok((lines, exported))
    }

    /// Retires the stacks of VG `vg`'s pools that its metadata no longer has.
    pub(super) fn drop_gone_pools(&self, state: Option<&VgState>, vg: &str) -> Vec<String> {
        let mut pools = self.pools();
        let gone: Vec<String> = pools
            .keys()
            .filter(|k| {
                k.split_once('/').is_some_and(|(v, p)| {
                    v == vg
                        && !state
                            .is_some_and(|s| s.vg.lv(p).is_some_and(|l| l.thin_pool().is_some()))
                })
            })
            .cloned()
            .collect();
        gone.into_iter()
            .filter_map(|k| pools.remove(&k).map(|s| (k, s)))
            .map(|(k, s)| {
                s.retire();
                format!("  pool {k}: stopped")
            })
            .collect()
    }

    /// Stops serving thin LV `lv` of VG `vg` if it is served, before its pool deletes it
    /// (a pool refuses to delete a thin device in use, as the kernel's does).
    pub(super) fn retire_thin(&self, vg: &str, lv: &str, volumes: &mut BTreeMap<String, Volume>) {
        if let Some(v) = volumes.remove(&activate::dm_name(vg, lv)) {
            self.exports.remove(&v.export);
            let _ = tessera_block::BlockDevice::flush(&*v.device);
            retire(&v.device);
        }
    }
}

/// The daemon's served pools as the engine's verbs see them: a change to one goes to its
/// live `thin-pool` target. Shares the daemon's map of pool stacks.
pub(super) struct ServedPools(pub(super) Arc<Mutex<BTreeMap<String, PoolStack>>>);

impl LivePools for ServedPools {
    fn open(&self, vg: &str, pool: &str) -> Option<Box<dyn PoolChanger>> {
        let pools = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let device = pools.get(&pool_key(vg, pool))?.thin_pool()?;
        Some(Box::new(LivePool {
            name: pool_key(vg, pool),
            device,
        }))
    }
}

/// A served pool changed through its `thin-pool` target's messages, as lvm2 changes a
/// pool the kernel runs.
struct LivePool {
    name: String,
    device: Arc<MappedDevice>,
}

impl LivePool {
    fn error(&self, why: String) -> EngineError {
        EngineError::DeviceUnusable {
            device: format!("thin pool {}", self.name),
            why,
        }
    }
}

impl PoolChanger for LivePool {
    fn info(&mut self) -> tessera_engine::Result<PoolInfo> {
        let status = self.device.status();
        parse_pool_status(&status)
            .ok_or_else(|| self.error(format!("its thin-pool status {status:?} cannot be read")))
    }

    fn send(&mut self, messages: &[String]) -> tessera_engine::Result<()> {
        for m in messages {
            let args: Vec<&str> = m.split_whitespace().collect();
            self.device
                .message(0, &args)
                .map_err(|e| self.error(format!("message {m:?}: {e}")))?;
        }
        Ok(())
    }

    // A served pool sees its grown LVs when the daemon reloads its tables after the commit.
    fn grow_data(&mut self, _nr_data_blocks: u64) -> tessera_engine::Result<()> {
        Ok(())
    }

    fn grow_metadata(&mut self) -> tessera_engine::Result<()> {
        Ok(())
    }
}

/// Reads a `thin-pool` status line (`dmsetup status` after the row's start, length and
/// type, or the whole line): `<transaction id> <used>/<total metadata blocks>
/// <used>/<total data blocks> <held root|-> <mode> ...`.
fn parse_pool_status(status: &str) -> Option<PoolInfo> {
    let words: Vec<&str> = status.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == "thin-pool")
        .map_or(0, |i| i + 1);
    let words = words.get(at..)?;
    let pair = |w: &str| -> Option<(u64, u64)> {
        let (a, b) = w.split_once('/')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    };
    let (meta_used, meta_total) = pair(words.get(1)?)?;
    let (data_used, data_total) = pair(words.get(2)?)?;
    let held = words.get(3)?;
    Some(PoolInfo {
        transaction_id: words.first()?.parse().ok()?,
        time: 0,
        data_block_sectors: 0,
        nr_data_blocks: data_total,
        free_data_blocks: data_total.saturating_sub(data_used),
        nr_metadata_blocks: meta_total,
        free_metadata_blocks: meta_total.saturating_sub(meta_used),
        metadata_snap: if *held == "-" {
            None
        } else {
            Some(held.parse().ok()?)
        },
        needs_check: words.iter().any(|w| *w == "needs_check"),
    })
}

#[cfg(test)]
mod tests {
    use super::parse_pool_status;

    #[test]
    fn pool_status_lines_are_read_as_the_kernel_writes_them() {
        let info = parse_pool_status(
            "0 131072 thin-pool 3 68/512 515/1024 - rw no_discard_passdown queue_if_no_space - 128",
        )
        .unwrap();
        assert_eq!(info.transaction_id, 3);
        assert_eq!(
            (info.nr_metadata_blocks, info.free_metadata_blocks),
            (512, 444)
        );
        assert_eq!((info.nr_data_blocks, info.free_data_blocks), (1024, 509));
        assert_eq!(info.metadata_snap, None);
        assert!(!info.needs_check);
        let info = parse_pool_status(
            "7 10/512 0/256 99 ro discard_passdown error_if_no_space needs_check 128",
        )
        .unwrap();
        assert_eq!(info.transaction_id, 7);
        assert_eq!(info.metadata_snap, Some(99));
        assert!(info.needs_check);
        assert!(parse_pool_status("Fail").is_none());
    }
}
