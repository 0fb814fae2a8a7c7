//! The records of IMSM volumes while tessera runs them writable, kept in the container's
//! MPB as mdmon keeps them: the volume's dirty flag (set before the first write, cleared
//! once writes stop and reached every member) and members that fail (the disk marked
//! failed, its serial suffixed ":0", its slot flagged for rebuild, the map degraded). Each
//! change is a new generation written to every member still in the container.
//!
//! The volumes of one container share one MPB: [`ContainerRecords`] holds it for all of
//! them, so two volumes running at once never write over each other's changes.

use std::sync::{Arc, Mutex, PoisonError};

use tessera_block::SharedDevice;
use tessera_formats::imsm::{self, Mpb};
use tessera_raid::metadata::{MemberRole, MetadataError, SetMetadata, SetRecord, SetStart};

/// A container's MPB and the members it is written to.
pub struct ContainerRecords {
    mpb: Mutex<Mpb>,
    /// Each member: its disk index in the table, path and device.
    members: Vec<(usize, String, SharedDevice)>,
}

impl ContainerRecords {
    pub fn new(mpb: Mpb, members: Vec<(usize, String, SharedDevice)>) -> Arc<ContainerRecords> {
        Arc::new(ContainerRecords {
            mpb: Mutex::new(mpb),
            members,
        })
    }

    /// Writes `mpb` one generation up to every member whose disk has not failed.
    fn commit(&self, mpb: &mut Mpb) -> Result<(), MetadataError> {
        mpb.generation_num = mpb.generation_num.wrapping_add(1);
        for (disk, path, device) in &self.members {
            if mpb.disks.get(*disk).is_none_or(|d| d.is_failed()) {
                continue;
            }
            imsm::write(device.as_ref(), mpb)
                .map_err(|e| MetadataError(format!("{path}: writing the IMSM metadata: {e}")))?;
        }
        Ok(())
    }
}

/// One volume's records in its container's MPB.
pub struct VolumeRecords {
    shared: Arc<ContainerRecords>,
    /// The volume's index among the MPB's volumes.
    index: usize,
    /// The device path in each slot of map 0, as the `raid` table names it.
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
}

/// Marks disk `idx` failed in `mpb`, as mdadm does: in every volume using it, its slot of
/// map 0 flagged for rebuild and the map degraded (failed where the level cannot lose it).
fn mark_failed(mpb: &mut Mpb, idx: usize) {
    let Some(disk) = mpb.disks.get_mut(idx) else {
        return;
    };
    if disk.is_failed() {
        return;
    }
    disk.status |= imsm::FAILED_DISK;
    // The serial gets ":0", so the disk is not taken back as it was.
    let mut serial = disk.serial_string().into_bytes();
    serial.extend_from_slice(b":0");
    let tail = &serial[serial.len().saturating_sub(15)..];
    disk.serial = [0; 16];
    disk.serial[..tail.len()].copy_from_slice(tail);
    for dev in &mut mpb.devs {
        let map = &mut dev.maps[0];
        let Some(slot) =
            (0..map.disk_ord_tbl.len()).find(|&s| map.disk_index(s) == Some(idx as u32))
        else {
            continue;
        };
        map.disk_ord_tbl[slot] = idx as u32 | imsm::ORD_REBUILD;
        if map.failed_disk_num == 0xff || map.failed_disk_num as usize > slot {
            map.failed_disk_num = slot as u8;
        }
        let lost = (0..map.disk_ord_tbl.len())
            .filter(|&s| map.rebuilding(s))
            .collect::<Vec<_>>();
        let n = map.disk_ord_tbl.len();
        let survives = match map.level() {
            1 => lost.len() < n,
            5 => lost.len() <= 1,
            10 => (0..n / 2).all(|k| !(lost.contains(&(2 * k)) && lost.contains(&(2 * k + 1)))),
            _ => false,
        };
        map.map_state = if survives {
            imsm::MAP_DEGRADED
        } else {
            imsm::MAP_FAILED
        };
    }
}

impl SetMetadata for VolumeRecords {
    fn start(&self) -> SetStart {
        let mpb = self
            .shared
            .mpb
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        SetStart {
            dirty: mpb.devs.get(self.index).is_some_and(|d| d.is_dirty()),
            recovering: Vec::new(),
            dirty_regions: None,
        }
    }

    fn record(&self, record: &SetRecord) -> Result<(), MetadataError> {
        let mut mpb = self
            .shared
            .mpb
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let before = mpb.clone();
        for m in &record.members {
            if m.role != MemberRole::Faulty {
                continue;
            }
            let slot = self
                .slots
                .iter()
                .position(|p| p.as_deref() == Some(&m.device));
            let idx = slot.and_then(|s| mpb.devs[self.index].maps[0].disk_index(s));
            if let Some(idx) = idx {
                mark_failed(&mut mpb, idx as usize);
            }
        }
        if let Some(dev) = mpb.devs.get_mut(self.index) {
            if record.clean {
                dev.dirty &= !imsm::RAIDVOL_DIRTY;
            } else {
                dev.dirty |= imsm::RAIDVOL_DIRTY;
            }
        }
        if *mpb == before {
            return Ok(());
        }
        let result = self.shared.commit(&mut mpb);
        if result.is_err() {
            // What did not reach the members is not the container's state.
            *mpb = before;
        }
        result
    }
}
