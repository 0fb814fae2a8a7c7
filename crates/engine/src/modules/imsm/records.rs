//! The records of IMSM volumes while tessera runs them writable, kept in the container's
//! MPB as mdmon keeps them: the volume's dirty flag (set before the first write, cleared
//! once writes stop and reached every member), members that fail or are missing (the disk
//! marked failed, its slot flagged for rebuild, the map degraded), a spare taking a lost
//! member's slot (the rebuild: map 1 the degraded layout, map 0 the whole one), the
//! rebuild's checkpoint in migration units, and its end (one normal map). Each change is a
//! new generation written to every member still in the container.
//!
//! The volumes of one container share one MPB: [`ContainerRecords`] holds it for all of
//! them, so two volumes running at once never write over each other's changes.

use std::sync::{Arc, Mutex, PoisonError};

use tessera_block::SharedDevice;
use tessera_formats::imsm::{self, Disk, Mpb, SpareDisk};
use tessera_raid::metadata::{MemberRole, MetadataError, SetMetadata, SetRecord, SetStart};

/// A container's MPB and the members it is written to.
pub struct ContainerRecords {
    mpb: Mutex<Mpb>,
    /// Each member: its disk index in the table, path and device.
    members: Mutex<Vec<(usize, String, SharedDevice)>>,
    /// Spares in no volume yet (their own spare records): path, device, and the disk they
    /// become in the table when a volume takes them.
    spares: Mutex<Vec<(String, SharedDevice, Disk)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// mdmon moves the family number on by a random step when a spare joins (a new container
/// generation); any step will do, as long as it is not zero.
fn family_step() -> u32 {
    let mut b = [0u8; 4];
    if getrandom::getrandom(&mut b).is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        b = now.subsec_nanos().to_le_bytes();
    }
    u32::from_le_bytes(b).max(1)
}

impl ContainerRecords {
    pub fn new(mpb: Mpb, members: Vec<(usize, String, SharedDevice)>) -> Arc<ContainerRecords> {
        Arc::new(ContainerRecords {
            mpb: Mutex::new(mpb),
            members: Mutex::new(members),
            spares: Mutex::new(Vec::new()),
        })
    }

    /// A spare of the container that is in no volume yet (a disk with its own spare
    /// record): `disk` is its entry as the spare record holds it.
    pub fn add_spare(&self, path: String, device: SharedDevice, disk: Disk) {
        let mut spares = lock(&self.spares);
        if !spares.iter().any(|(p, _, _)| *p == path) {
            spares.push((path, device, disk));
        }
    }

    /// The container's MPB as it stands.
    pub fn mpb(&self) -> Mpb {
        lock(&self.mpb).clone()
    }

    /// Writes `mpb` one generation up to every member whose disk has not failed.
    fn commit(&self, mpb: &mut Mpb) -> Result<(), MetadataError> {
        mpb.generation_num = mpb.generation_num.wrapping_add(1);
        for (disk, path, device) in lock(&self.members).iter() {
            if mpb.disks.get(*disk).is_none_or(|d| d.is_failed()) {
                continue;
            }
            imsm::write(device.as_ref(), mpb)
                .map_err(|e| MetadataError(format!("{path}: writing the IMSM metadata: {e}")))?;
        }
        Ok(())
    }

    /// The paths of the spares in no volume yet (their own spare records).
    pub fn loose_spares(&self) -> Vec<String> {
        lock(&self.spares)
            .iter()
            .map(|(p, _, _)| p.clone())
            .collect()
    }

    /// The disk index of member `path` (`usize::MAX` once its disk left the table).
    pub fn index_of(&self, path: &str) -> Option<usize> {
        lock(&self.members)
            .iter()
            .find(|(_, p, _)| p == path)
            .map(|(i, _, _)| *i)
    }

    /// Puts `path` in slot `slot` of volume `index` and starts its rebuild. A spare in no
    /// volume joins the table and the members; one already in the table is taken as it is.
    fn activate(
        &self,
        mpb: &mut Mpb,
        index: usize,
        slot: usize,
        path: &str,
    ) -> Result<(), MetadataError> {
        let spare = match self.index_of(path) {
            Some(i) => SpareDisk::InTable(i as u32),
            None => {
                let spares = lock(&self.spares);
                let Some((_, _, disk)) = spares.iter().find(|(p, _, _)| p == path) else {
                    return Err(MetadataError(format!(
                        "{path} is neither a member nor a spare of IMSM container {:08x}",
                        mpb.family_num
                    )));
                };
                SpareDisk::New(disk.clone())
            }
        };
        let (idx, deleted) = mpb
            .activate_spare(index, slot, spare, family_step())
            .map_err(|e| MetadataError(format!("{path}: taking slot {slot}: {e}")))?;
        let mut members = lock(&self.members);
        if let Some(gone) = deleted {
            // The failed disk left the table: its device stays known (the set still names
            // it faulty) under no index, so nothing is written to it or marked through it.
            for (i, _, _) in members.iter_mut() {
                if *i == gone {
                    *i = usize::MAX;
                } else if *i > gone && *i != usize::MAX {
                    *i -= 1;
                }
            }
        }
        if !members.iter().any(|(_, p, _)| p == path) {
            let mut spares = lock(&self.spares);
            if let Some(at) = spares.iter().position(|(p, _, _)| p == path) {
                let (p, device, _) = spares.remove(at);
                members.push((idx as usize, p, device));
            }
        }
        tracing::info!(
            "IMSM volume {index}: {path} (disk {idx}) takes slot {slot}; rebuild recorded"
        );
        Ok(())
    }
}

/// One volume's records in its container's MPB.
pub struct VolumeRecords {
    shared: Arc<ContainerRecords>,
    /// The volume's index among the MPB's volumes.
    index: usize,
    /// The device path in each slot of map 0, as the `raid` table names it (`None` for a
    /// slot with no device).
    slots: Vec<Option<String>>,
}

impl VolumeRecords {
    pub fn new(shared: Arc<ContainerRecords>, index: usize, slots: Vec<Option<String>>) -> Self {
        VolumeRecords {
            shared,
            index,
            slots,
        }
    }

    /// Records what the volume starts with before it runs: members missing from their
    /// slots failed, and a device put in a lost member's slot (`rebuild`: slot and path)
    /// taking it, its rebuild started (unless the records have it rebuilding there
    /// already).
    pub fn prepare(&self, rebuild: Option<(usize, &str)>) -> Result<(), MetadataError> {
        let mut mpb = lock(&self.shared.mpb);
        let before = mpb.clone();
        let Some(dev) = mpb.devs.get(self.index) else {
            return Ok(());
        };
        let map = dev.maps[0].clone();
        for (slot, path) in self.slots.iter().enumerate() {
            if path.is_some() || rebuild.is_some_and(|(s, _)| s == slot) {
                continue;
            }
            if let Some(idx) = map.disk_index(slot) {
                mpb.mark_missing(idx as usize);
            }
        }
        if let Some((slot, path)) = rebuild {
            self.take_slot(&mut mpb, slot, path)?;
        }
        self.write_if_changed(&mut mpb, before)
    }

    /// Starts the rebuild of `slot` onto `path`, unless the records have it so already.
    fn take_slot(&self, mpb: &mut Mpb, slot: usize, path: &str) -> Result<(), MetadataError> {
        let dev = &mpb.devs[self.index];
        let idx = self.shared.index_of(path);
        let already = dev
            .rebuild_slot()
            .is_some_and(|(s, i)| s == slot && idx == Some(i as usize));
        if already {
            return Ok(());
        }
        // A member missing from the slot is marked failed first.
        if let Some(victim) = dev.maps[0].disk_index(slot) {
            if Some(victim as usize) != idx {
                mpb.mark_missing_if_absent(victim as usize, &self.shared);
            }
        }
        self.shared.activate(mpb, self.index, slot, path)
    }

    fn write_if_changed(&self, mpb: &mut Mpb, before: Mpb) -> Result<(), MetadataError> {
        if *mpb == before {
            return Ok(());
        }
        let result = self.shared.commit(mpb);
        if result.is_err() {
            // What did not reach the members is not the container's state.
            *mpb = before;
        }
        result
    }
}

/// Marking a disk lost: missing if it is not among the members, failed if it is.
trait MarkLost {
    fn mark_missing_if_absent(&mut self, idx: usize, shared: &ContainerRecords);
}

impl MarkLost for Mpb {
    fn mark_missing_if_absent(&mut self, idx: usize, shared: &ContainerRecords) {
        let present = lock(&shared.members).iter().any(|(i, _, _)| *i == idx);
        if present {
            self.mark_failed(idx);
        } else {
            self.mark_missing(idx);
        }
    }
}

impl SetMetadata for VolumeRecords {
    fn start(&self) -> SetStart {
        let mpb = lock(&self.shared.mpb);
        let dev = mpb.devs.get(self.index);
        SetStart {
            dirty: dev.is_some_and(|d| d.is_dirty()),
            recovering: dev
                .and_then(|d| Some((d.rebuild_slot()?.0, d.rebuild_done_sectors())))
                .into_iter()
                .collect(),
            dirty_regions: None,
        }
    }

    fn record(&self, record: &SetRecord) -> Result<(), MetadataError> {
        let mut mpb = lock(&self.shared.mpb);
        let before = mpb.clone();
        for m in &record.members {
            if m.role != MemberRole::Faulty {
                continue;
            }
            if let Some(idx) = self.shared.index_of(&m.device) {
                mpb.mark_failed(idx);
            }
        }
        for m in &record.members {
            match m.role {
                MemberRole::Recovering { slot, done } => {
                    self.take_slot(&mut mpb, slot, &m.device)?;
                    mpb.rebuild_checkpoint(self.index, done);
                }
                MemberRole::InSync(slot) => {
                    let idx = self.shared.index_of(&m.device);
                    let rebuilt = mpb.devs[self.index]
                        .rebuild_slot()
                        .is_some_and(|(s, i)| s == slot && idx == Some(i as usize));
                    if rebuilt {
                        mpb.end_rebuild(self.index);
                    }
                }
                _ => {}
            }
        }
        if let Some(dev) = mpb.devs.get_mut(self.index) {
            if record.clean {
                dev.dirty &= !imsm::RAIDVOL_DIRTY;
            } else {
                dev.dirty |= imsm::RAIDVOL_DIRTY;
            }
        }
        self.write_if_changed(&mut mpb, before)
    }
}
