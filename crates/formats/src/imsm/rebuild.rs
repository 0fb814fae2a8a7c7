//! The MPB's records of failures, spares and rebuilds, changed as mdmon changes them
//! (mdadm's super-intel.c: mark_failure, apply_update_activate_spare, migrate,
//! end_migration, imsm_delete, write_super_imsm_spare), so that mdadm reads what tessera
//! leaves and the reverse:
//!
//! - a member fails: its disk gets FAILED_DISK and ":0" after its serial; its slot in
//!   map 0 gets ORD_REBUILD, failed_disk_num the lowest such slot, the map degraded (or
//!   failed where the level cannot lose it);
//! - a spare takes the slot: it joins the disk table configured (no longer spare); the
//!   volume migrates (migr_state 1, MIGR_REBUILD, curr_migr_unit 0): map 1 is map 0 as it
//!   was (degraded) with the spare in the slot flagged ORD_REBUILD, map 0 the end state
//!   (the spare in the slot unflagged, normal when nothing else is lost); the family number
//!   moves on (the old one kept in orig_family_num), and the failed disk leaves the table
//!   when no volume uses it any more;
//! - recovery advances: curr_migr_unit counts whole migration units done;
//! - recovery ends: one map, migr_state 0, map state normal, failed_disk_num 0xff.

use super::{
    damaged, Disk, ImsmError, Map, Mpb, CONFIGURED_DISK, FAILED_DISK, MAP_DEGRADED, MAP_FAILED,
    MAP_NORMAL, MAP_UNINITIALIZED, MIGR_INIT, MIGR_REBUILD, ORD_REBUILD, SPARE_DISK,
};

/// Whether `map` still serves every chunk with the slots `lost` out.
fn survives(map: &Map, lost: &[usize]) -> bool {
    let n = map.disk_ord_tbl.len();
    match map.level() {
        1 => lost.len() < n,
        5 => lost.len() <= 1,
        10 => (0..n / 2).all(|k| !(lost.contains(&(2 * k)) && lost.contains(&(2 * k + 1)))),
        _ => lost.is_empty(),
    }
}

impl Map {
    /// The map state with the slots `lost` out (mdadm's imsm_check_degraded).
    fn state_without(&self, lost: &[usize]) -> u8 {
        if lost.is_empty() {
            if self.map_state == MAP_UNINITIALIZED {
                MAP_UNINITIALIZED
            } else {
                MAP_NORMAL
            }
        } else if survives(self, lost) {
            MAP_DEGRADED
        } else {
            MAP_FAILED
        }
    }

    /// The slot holding disk `idx`.
    pub fn slot_of(&self, idx: u32) -> Option<usize> {
        (0..self.disk_ord_tbl.len()).find(|&s| self.disk_index(s) == Some(idx))
    }
}

impl super::Dev {
    /// Whether the volume is being rebuilt (migrating, MIGR_REBUILD).
    pub fn is_rebuilding(&self) -> bool {
        self.is_migrating() && self.migr_type == MIGR_REBUILD && self.maps.len() > 1
    }

    /// While rebuilding, the slot being rebuilt (flagged in map 1) and its disk.
    pub fn rebuild_slot(&self) -> Option<(usize, u32)> {
        if !self.is_rebuilding() {
            return None;
        }
        let from = &self.maps[1];
        (0..from.disk_ord_tbl.len())
            .find(|&s| from.rebuilding(s))
            .and_then(|s| Some((s, from.disk_index(s)?)))
    }

    /// Sectors of each member one unit of curr_migr_unit stands for while rebuilding, as
    /// mdadm counts them (blocks_per_migr_unit for MIGR_REBUILD).
    pub fn rebuild_unit_sectors(&self) -> u64 {
        let map0 = &self.maps[0];
        let from = self.maps.get(1).unwrap_or(map0);
        let chunk = u64::from(from.blocks_per_strip);
        let (strip, stripes) = match map0.level() {
            1 | 10 => {
                let strip = if from.num_domains != 0 && from.num_members % from.num_domains == 0 {
                    256
                } else {
                    chunk
                };
                (strip, u64::from(from.num_domains))
            }
            5 => {
                let lo = u64::from(map0.blocks_per_strip).max(1);
                (chunk.max(128), (chunk / lo).max(1))
            }
            _ => (256, 1),
        };
        (strip * stripes).max(1)
    }

    /// Sectors of each member rebuilt, as the checkpoint records them.
    pub fn rebuild_done_sectors(&self) -> u64 {
        self.curr_migr_unit
            .saturating_mul(self.rebuild_unit_sectors())
    }
}

impl Mpb {
    /// The MPB mdadm writes on a spare disk that is in no volume yet: its own family
    /// number (the checksum of the record with none), generation 1, one disk (itself,
    /// status spare), no volumes.
    pub fn spare_record(serial: &str, total_blocks: u64) -> Mpb {
        let disk = Disk::new(serial, total_blocks, SPARE_DISK);
        let mut mpb = Mpb::new(0, 1, vec![disk], Vec::new());
        mpb.orig_family_num = 0;
        mpb.pwr_cycle_count = 1;
        if total_blocks >> 32 != 0 {
            // MPB_ATTRIB_2TB_DISK
            mpb.attributes |= 0x0400_0000;
        }
        let bytes = mpb.encode();
        // The checksum of the record with family 0, as mdadm sums it.
        mpb.family_num = super::checksum(&bytes);
        mpb
    }

    /// Whether this is a spare's own record: no volumes, one disk, a spare.
    pub fn is_spare_record(&self) -> bool {
        self.devs.is_empty()
            && self.disks.len() == 1
            && self.disks[0].is_spare()
            && !self.disks[0].is_configured()
    }

    /// Marks disk `idx` failed, as mdmon does: its serial gets ":0", and in every volume
    /// using it its slot is flagged for rebuild and the map degraded (failed where the
    /// level cannot lose it). Returns whether anything changed.
    pub fn mark_failed(&mut self, idx: usize) -> bool {
        let Some(disk) = self.disks.get_mut(idx) else {
            return false;
        };
        if disk.is_failed() {
            return false;
        }
        disk.status |= FAILED_DISK;
        // The serial gets ":0", so the disk is not taken back as it was.
        let mut serial = disk.serial_string().into_bytes();
        serial.extend_from_slice(b":0");
        let tail = &serial[serial.len().saturating_sub(15)..];
        disk.serial = [0; 16];
        disk.serial[..tail.len()].copy_from_slice(tail);
        for dev in &mut self.devs {
            let rebuilding = dev.is_rebuilding();
            // New failures go to map 0; a migration's map 1 gets the flag too.
            if let Some(from) = dev.maps.get_mut(1) {
                if let Some(slot) = from.slot_of(idx as u32) {
                    from.disk_ord_tbl[slot] = idx as u32 | ORD_REBUILD;
                }
            }
            let map = &mut dev.maps[0];
            let Some(slot) = map.slot_of(idx as u32) else {
                continue;
            };
            map.disk_ord_tbl[slot] = idx as u32 | ORD_REBUILD;
            if map.failed_disk_num == 0xff
                || (!rebuilding && usize::from(map.failed_disk_num) > slot)
            {
                map.failed_disk_num = slot as u8;
            }
            let lost: Vec<usize> = (0..map.disk_ord_tbl.len())
                .filter(|&s| map.rebuilding(s))
                .collect();
            map.map_state = map.state_without(&lost);
        }
        true
    }

    /// Marks disk `idx` failed because it is missing, as mdmon does for a disk that did not
    /// come with the container: failed as [`Mpb::mark_failed`], its scsi_id all ones and its
    /// serial shifted left one byte.
    pub fn mark_missing(&mut self, idx: usize) -> bool {
        if !self.mark_failed(idx) {
            return false;
        }
        let disk = &mut self.disks[idx];
        if disk.scsi_id != u32::MAX {
            disk.scsi_id = u32::MAX;
            disk.serial.copy_within(1..16, 0);
        }
        true
    }

    /// Whether any volume's maps name disk `idx`.
    fn disk_in_use(&self, idx: u32) -> bool {
        self.devs
            .iter()
            .any(|d| d.maps.iter().any(|m| m.slot_of(idx).is_some()))
    }

    /// Takes disk `idx` out of the table (mdadm's imsm_delete): the indexes above it move
    /// down one in every map. The caller has made sure no map names it.
    fn delete_disk(&mut self, idx: usize) {
        if idx >= self.disks.len() {
            return;
        }
        self.disks.remove(idx);
        for dev in &mut self.devs {
            for map in &mut dev.maps {
                for ord in &mut map.disk_ord_tbl {
                    if (*ord & 0x00ff_ffff) as usize > idx {
                        *ord -= 1;
                    }
                }
            }
        }
    }

    /// Puts a spare in slot `slot` of volume `dev_index` and starts its rebuild, as mdmon's
    /// activate-spare update does. `spare` is the disk: an index in the table (a disk
    /// already configured in another volume), or a new disk that joins the table. The
    /// member in the slot is marked failed first if it is not. `family_step` is added to
    /// the family number (mdmon adds a random number: a new container generation).
    ///
    /// Returns the spare's index in the table, and the index a deleted failed disk had
    /// (indexes above it have moved down one).
    pub fn activate_spare(
        &mut self,
        dev_index: usize,
        slot: usize,
        spare: SpareDisk,
        family_step: u32,
    ) -> Result<(u32, Option<usize>), ImsmError> {
        let dev = self
            .devs
            .get(dev_index)
            .ok_or_else(|| damaged("container", format!("volume {dev_index}"), "no such volume"))?;
        let name = dev.name();
        if dev.is_migrating() {
            return Err(damaged(
                "container",
                format!("volume {dev_index} ({name})"),
                format!(
                    "a {} is in progress: a spare can take a slot only of a volume that is not migrating",
                    dev.migration_name()
                ),
            ));
        }
        let victim = dev.maps[0].disk_index(slot).ok_or_else(|| {
            damaged(
                "container",
                format!("volume {dev_index} ({name}) slot {slot}"),
                "no such slot",
            )
        })?;
        self.mark_failed(victim as usize);
        let idx = match spare {
            SpareDisk::InTable(i) => {
                if i as usize >= self.disks.len() || i == victim {
                    return Err(damaged(
                        "container",
                        "spare",
                        format!("disk {i} cannot take slot {slot} of {name}"),
                    ));
                }
                i
            }
            SpareDisk::New(disk) => {
                // num_disks is a byte.
                if self.disks.len() >= usize::from(u8::MAX) {
                    return Err(damaged(
                        "container",
                        "num_disks",
                        format!(
                            "{} disks: the table has no room for a spare",
                            self.disks.len()
                        ),
                    ));
                }
                self.disks.push(disk);
                (self.disks.len() - 1) as u32
            }
        };
        let disk = &mut self.disks[idx as usize];
        disk.status |= CONFIGURED_DISK;
        disk.status &= !SPARE_DISK;

        let dev = &mut self.devs[dev_index];
        let map = &dev.maps[0];
        // The end state: what is lost besides the slot being rebuilt.
        let others: Vec<usize> = (0..map.disk_ord_tbl.len())
            .filter(|&s| s != slot && map.rebuilding(s))
            .collect();
        let to_state = map.state_without(&others);
        let mut from = dev.maps[0].clone();
        from.map_state = MAP_DEGRADED;
        from.disk_ord_tbl[slot] = idx | ORD_REBUILD;
        let map0 = &mut dev.maps[0];
        map0.disk_ord_tbl[slot] = idx;
        map0.map_state = to_state;
        dev.maps.truncate(1);
        dev.maps.push(from);
        dev.migr_state = 1;
        dev.migr_type = MIGR_REBUILD;
        dev.curr_migr_unit = 0;

        if self.orig_family_num == 0 {
            self.orig_family_num = self.family_num;
        }
        self.family_num = self.family_num.wrapping_add(family_step);

        let mut spare_idx = idx;
        let mut deleted = None;
        if !self.disk_in_use(victim) {
            self.delete_disk(victim as usize);
            if spare_idx > victim {
                spare_idx -= 1;
            }
            deleted = Some(victim as usize);
        }
        Ok((spare_idx, deleted))
    }

    /// Records that the rebuild of volume `dev_index` got `done` sectors of each member
    /// far (whole migration units only). Returns whether the record changed.
    pub fn rebuild_checkpoint(&mut self, dev_index: usize, done: u64) -> bool {
        let Some(dev) = self.devs.get_mut(dev_index) else {
            return false;
        };
        if !dev.is_rebuilding() {
            return false;
        }
        let units = done / dev.rebuild_unit_sectors();
        if units == dev.curr_migr_unit {
            return false;
        }
        dev.curr_migr_unit = units;
        true
    }

    /// Ends the rebuild of volume `dev_index` (mdadm's end_migration after a rebuild): one
    /// map, normal unless another member is lost, failed_disk_num 0xff then.
    pub fn end_rebuild(&mut self, dev_index: usize) -> bool {
        let Some(dev) = self.devs.get_mut(dev_index) else {
            return false;
        };
        if !dev.is_rebuilding() {
            return false;
        }
        let map = &dev.maps[0];
        let lost: Vec<usize> = (0..map.disk_ord_tbl.len())
            .filter(|&s| map.rebuilding(s))
            .collect();
        let state = map.state_without(&lost);
        dev.maps.truncate(1);
        dev.migr_state = 0;
        dev.migr_type = MIGR_INIT;
        dev.curr_migr_unit = 0;
        let map = &mut dev.maps[0];
        map.map_state = state;
        if lost.is_empty() {
            map.failed_disk_num = 0xff;
        }
        true
    }
}

/// The disk a spare is, for [`Mpb::activate_spare`].
#[derive(Debug, Clone)]
pub enum SpareDisk {
    /// A disk of the table (one the container's other volumes already use).
    InTable(u32),
    /// A disk from its own spare record, joining the table.
    New(Disk),
}
