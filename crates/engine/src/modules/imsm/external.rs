//! IMSM containers run by the kernel's md through its external-metadata interface, as
//! mdadm assembles them: what each volume is for md (mdadm's `container_content`: level,
//! layout, chunk, component size, each member's slot, offset and size, where resync
//! starts), and the records a monitor keeps while md runs them writable (mdmon's part).

use std::sync::Arc;

use tessera_block::SharedDevice;
use tessera_formats::imsm::{self, Dev, Map, Mpb};
use tessera_kernel::md::{Member, Subarray, SubarrayMember};
use tessera_raid::metadata::{MemberRecord, MemberRole, SetMetadata, SetRecord};

use super::records::{ContainerRecords, VolumeRecords};
use super::{containers, Container};

/// A container as md runs it.
pub struct KernelContainer {
    /// `imsm-FAMILY`, as tessera shows it.
    pub label: String,
    pub family: u32,
    /// Each member: its disk index in the table, its path, and where its metadata lies
    /// (sectors: offset, length), as mdadm shows a container's members.
    pub members: Vec<(usize, String, u64, u64)>,
    /// Devices left out, and why.
    pub left_out: Vec<(String, String)>,
    pub volumes: Vec<KernelVolume>,
    records: Arc<ContainerRecords>,
}

/// A volume of a container as md runs it.
pub struct KernelVolume {
    /// `md/NAME`, as tessera shows it (and mdadm names it under /dev/md/).
    pub name: String,
    /// Its index among the container's volumes: md's subarray number.
    pub index: usize,
    /// What md is told, members by path in `member_paths` (same order as the members).
    pub array: Result<KernelArray, String>,
    /// Why it may not be written in the kernel, if it may not.
    pub read_only_because: Option<String>,
}

/// A volume's geometry for md, its members named by path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelArray {
    pub level: u32,
    pub raid_disks: u32,
    pub chunk_bytes: u64,
    pub layout: u32,
    pub component_sectors: u64,
    /// The array's size when the metadata gives it apart from the members' (IMSM).
    pub array_sectors: Option<u64>,
    pub resync_start: Option<u64>,
    /// Each member present: path, slot, offset, size (sectors).
    pub members: Vec<(String, u32, u64, u64)>,
    /// The member path in each slot, `None` where it is missing.
    pub slots: Vec<Option<String>>,
}

impl KernelArray {
    /// The same for md, each member by device number (`devno` gives `major:minor`).
    pub fn subarray(
        &self,
        devno: impl Fn(&str) -> Result<(u32, u32), String>,
    ) -> Result<Subarray, String> {
        let mut members = Vec::new();
        for (path, slot, offset, size) in &self.members {
            let (major, minor) = devno(path)?;
            members.push(SubarrayMember {
                disk: Member { major, minor },
                slot: *slot,
                offset_sectors: *offset,
                size_sectors: *size,
                recovery_start: None,
            });
        }
        Ok(Subarray {
            level: format!("raid{}", self.level),
            raid_disks: self.raid_disks,
            chunk_bytes: self.chunk_bytes,
            layout: self.layout,
            component_sectors: self.component_sectors,
            array_sectors: self.array_sectors,
            resync_start: self.resync_start,
            safe_mode_delay_ms: Some(SAFE_MODE_DELAY_MS),
            members,
        })
    }
}

impl KernelContainer {
    /// The records of volume `index` while md runs it, for its monitor.
    pub fn volume_records(&self, index: usize) -> Option<Arc<dyn SetMetadata>> {
        let volume = self.volumes.iter().find(|v| v.index == index)?;
        let slots = volume.array.as_ref().ok()?.slots.clone();
        Some(Arc::new(VolumeRecords::new(
            self.records.clone(),
            index,
            slots,
        )))
    }
}

impl KernelContainer {
    /// Records volume `index` as md runs it, as mdmon does: dirty or clean, and the members
    /// in `faulty_slots` failed (each failure is kept: it never comes back on its own).
    pub fn record(&self, index: usize, clean: bool, faulty_slots: &[u32]) -> Result<(), String> {
        let Some(volume) = self.volumes.iter().find(|v| v.index == index) else {
            return Err(format!("{}: no volume {index}", self.label));
        };
        let array = volume
            .array
            .as_ref()
            .map_err(|e| format!("{}: {e}", volume.name))?;
        let records = VolumeRecords::new(self.records.clone(), index, array.slots.clone());
        let members = array
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, path)| {
                let role = if faulty_slots.contains(&(slot as u32)) {
                    MemberRole::Faulty
                } else {
                    MemberRole::InSync(slot)
                };
                Some(MemberRecord {
                    device: path.clone()?,
                    role,
                })
            })
            .collect();
        records
            .record(&SetRecord { clean, members })
            .map_err(|e| format!("{}: {e}", volume.name))
    }
}

impl crate::Engine {
    /// The IMSM containers on the engine's devices, as md would run them.
    pub fn imsm_kernel_containers(&self) -> crate::Result<Vec<KernelContainer>> {
        let (devs, _) = self.devices(false)?;
        Ok(kernel_containers(&devs))
    }
}

/// mdadm's write-hole policies that keep nothing beyond the dirty flag (resync).
const RWH_OFF: u8 = 0;
const RWH_MULTIPLE_OFF: u8 = 5;

/// How long md waits after the last write before it reports a volume idle: 4 s, as the
/// Matrix driver and mdadm.
const SAFE_MODE_DELAY_MS: u64 = 4000;

/// md's layout number for an IMSM level: raid5 is left-asymmetric, raid10 near 2 copies.
fn layout(level: u32) -> u32 {
    match level {
        5 => 0,
        10 => 0x102,
        _ => 0,
    }
}

/// Members holding data (mdadm's `imsm_num_data_members`).
fn data_members(map: &Map) -> u64 {
    let n = u64::from(map.num_members);
    match map.level() {
        0 => n,
        1 | 10 => n / 2,
        5 => n.saturating_sub(1),
        _ => 0,
    }
}

/// The sectors md uses of each member, as mdadm computes it: from the map's data stripes,
/// unless they disagree with the volume's size by more than 1 MiB a member (an expanded
/// volume), then from the size; cut to whole chunks but for raid1.
pub fn component_sectors(dev: &Dev) -> u64 {
    let map = &dev.maps[0];
    let data = data_members(map);
    if data == 0 {
        return 0;
    }
    let strip = u64::from(map.blocks_per_strip);
    let mut per_member = map.num_data_stripes.saturating_mul(strip);
    if matches!(map.level(), 1 | 10) {
        per_member = per_member.saturating_mul(2);
    }
    if per_member.saturating_mul(data).abs_diff(dev.size) > 2048 * data {
        per_member = dev.size / data;
    }
    if map.level() != 1 && strip > 0 {
        per_member -= per_member % strip;
    }
    per_member
}

/// Where md starts resyncing a volume: at 0 if it was not shut down cleanly or never
/// initialized, nowhere if it is in sync.
fn resync_start(dev: &Dev) -> Option<u64> {
    let map = &dev.maps[0];
    let uninitialized = map.map_state == imsm::MAP_UNINITIALIZED
        || (dev.is_migrating() && matches!(dev.migr_type, imsm::MIGR_INIT | imsm::MIGR_REPAIR));
    (uninitialized || dev.is_dirty()).then_some(0)
}

impl Container {
    fn kernel(&self, used: &mut Vec<String>) -> KernelContainer {
        let records = ContainerRecords::new(
            self.mpb.clone(),
            self.members
                .iter()
                .filter_map(|f| Some((f.disk?, f.path.clone(), f.device.clone())))
                .collect(),
        );
        let volumes = self
            .volumes(used)
            .into_iter()
            .map(|v| {
                let dev = &self.mpb.devs[v.index];
                let map = &dev.maps[0];
                let (array, read_only_because) = match &v.plan {
                    Err(e) => (Err(e.clone()), None),
                    Ok(plan) => {
                        let component = component_sectors(dev);
                        let members = plan
                            .slots
                            .iter()
                            .enumerate()
                            .filter_map(|(slot, p)| {
                                Some((p.clone()?, slot as u32, map.pba_of_lba0, component))
                            })
                            .collect();
                        let why = if plan.migrating {
                            Some(format!(
                                "its {} is unfinished and tessera does not record migrations",
                                dev.migration_name()
                            ))
                        } else if plan.degraded {
                            Some(
                                "it is degraded and tessera does not record rebuilds yet"
                                    .to_string(),
                            )
                        } else if !matches!(dev.rwh_policy(), RWH_OFF | RWH_MULTIPLE_OFF) {
                            Some(format!(
                                "its write-hole policy {} (PPL, journal or bitmap) is not one \
                                 tessera keeps",
                                dev.rwh_policy()
                            ))
                        } else {
                            None
                        };
                        let array = KernelArray {
                            level: map.level(),
                            raid_disks: u32::from(map.num_members),
                            chunk_bytes: u64::from(map.blocks_per_strip) * 512,
                            layout: layout(map.level()),
                            component_sectors: component,
                            array_sectors: Some(dev.size),
                            resync_start: resync_start(dev),
                            members,
                            slots: plan.slots.clone(),
                        };
                        (Ok(array), why)
                    }
                };
                KernelVolume {
                    name: v.name,
                    index: v.index,
                    array,
                    read_only_because,
                }
            })
            .collect();
        KernelContainer {
            label: self.label(),
            family: self.mpb.family_num,
            members: self
                .members
                .iter()
                .filter_map(|f| {
                    let disk = f.disk?;
                    let total = self.mpb.disks.get(disk)?.total_blocks;
                    let reserved = imsm::MPB_SECTOR_CNT.min(total);
                    Some((disk, f.path.clone(), total - reserved, reserved))
                })
                .collect(),
            left_out: self.left_out.clone(),
            volumes,
            records,
        }
    }
}

/// The IMSM containers on `devs` (members opened for writing if the records are to be
/// kept), as md runs them.
pub fn kernel_containers(devs: &[(String, SharedDevice)]) -> Vec<KernelContainer> {
    let read: Vec<(String, SharedDevice, Mpb)> = devs
        .iter()
        .filter_map(|(n, d)| Some((n.clone(), d.clone(), imsm::read(d.as_ref()).ok()??)))
        .collect();
    let mut used = Vec::new();
    containers(read)
        .into_iter()
        .map(|c| c.kernel(&mut used))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_formats::imsm::{Dev, Map};

    fn dev(level: u32, members: u32, strip: u16, stripes: u64, size: u64) -> Dev {
        let bpm = stripes * u64::from(strip) * 2;
        let mut map = Map::new(level, (0..members).collect(), 0, bpm, strip);
        map.num_data_stripes = stripes;
        Dev::new("v", size, map)
    }

    #[test]
    fn component_size_follows_the_data_stripes() {
        // raid5 over 4, 64 KiB chunks, 128 stripes: 8 MiB a member, 24 MiB in all.
        let d = dev(5, 4, 128, 128, 3 * 128 * 128);
        assert_eq!(component_sectors(&d), 128 * 128);
        // raid1 over 2 counts each stripe twice.
        let d = dev(1, 2, 128, 96, 2 * 96 * 128);
        assert_eq!(component_sectors(&d), 2 * 96 * 128);
    }

    #[test]
    fn component_size_of_an_expanded_volume_follows_its_size() {
        // The stripes say 8 MiB a member, the size says 4 times that: the size wins,
        // cut to whole chunks.
        let d = dev(0, 2, 64, 256, 2 * 4 * 256 * 64 + 100);
        assert_eq!(component_sectors(&d), 4 * 256 * 64);
    }

    #[test]
    fn layouts_are_mds() {
        assert_eq!(layout(5), 0);
        assert_eq!(layout(10), 0x102);
        assert_eq!(layout(0), 0);
    }
}
