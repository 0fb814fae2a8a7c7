//! IMSM containers run by the kernel's md through its external-metadata interface, as
//! mdadm assembles them: what each volume is for md (mdadm's `container_content`: level,
//! layout, chunk, component size, each member's slot, offset and size, where resync
//! starts), and the records a monitor keeps while md runs them writable (mdmon's part):
//! dirty and clean, failed members, a spare taking a lost member's slot and the rebuild's
//! checkpoints, through the same record writers the user-space path uses.

use std::sync::Arc;

use tessera_block::SharedDevice;
use tessera_formats::imsm::{self, Dev, Map, Mpb};
use tessera_kernel::md::{Member, Subarray, SubarrayMember};
/// A member's role as a monitor records it.
pub use tessera_raid::metadata::{MemberRecord, MemberRole};
use tessera_raid::metadata::{SetMetadata, SetRecord};

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
    /// Spares with their own spare records (in no volume yet): path, and where their
    /// metadata lies (sectors: offset, length). md's container holds them with the members.
    pub spares: Vec<(String, u64, u64)>,
    pub volumes: Vec<KernelVolume>,
    /// Every device of the container (members and spares): path, size in bytes.
    sizes: Vec<(String, u64)>,
    records: Arc<ContainerRecords>,
}

/// A device that takes a lost member's slot: where the volume's data goes on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpareTaking {
    pub path: String,
    pub offset_sectors: u64,
    pub size_sectors: u64,
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
    /// A rebuild under way: slot, the device rebuilt onto (not in `members`), where the
    /// array's data starts on it, and the sectors of it already in sync (the records'
    /// checkpoint), from which md resumes.
    pub recovering: Option<(u32, String, u64, u64)>,
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
        if let Some((slot, path, offset, done)) = &self.recovering {
            let (major, minor) = devno(path)?;
            members.push(SubarrayMember {
                disk: Member { major, minor },
                slot: *slot,
                offset_sectors: *offset,
                size_sectors: self.component_sectors,
                recovery_start: Some(*done),
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

/// The records a monitor keeps for the volumes of one container md runs (IMSM's MPB or
/// DDF's records), whatever the format.
pub trait KernelRecords {
    /// The container as tessera shows it (`imsm-FAMILY`, `ddf-GUIDTAIL`).
    fn label(&self) -> String;
    /// Records volume `index` as md runs it: clean or dirty, and each member's role.
    fn record(&self, index: usize, clean: bool, members: Vec<MemberRecord>) -> Result<(), String>;
    /// The device that would take a lost slot of volume `index` now, not one of `taken`.
    fn spare_for(&self, index: usize, taken: &[String]) -> Option<SpareTaking>;
    /// Sectors of each member the records have rebuilt, while a rebuild is under way and
    /// the format keeps its progress.
    fn rebuild_checkpoint(&self, index: usize) -> Option<u64>;
    /// The least progress worth a new checkpoint, in sectors.
    fn checkpoint_unit_sectors(&self, index: usize) -> u64;
}

impl KernelRecords for KernelContainer {
    fn label(&self) -> String {
        self.label.clone()
    }
    fn record(&self, index: usize, clean: bool, members: Vec<MemberRecord>) -> Result<(), String> {
        KernelContainer::record(self, index, clean, members)
    }
    fn spare_for(&self, index: usize, taken: &[String]) -> Option<SpareTaking> {
        KernelContainer::spare_for(self, index, taken)
    }
    fn rebuild_checkpoint(&self, index: usize) -> Option<u64> {
        KernelContainer::rebuild_checkpoint(self, index)
    }
    fn checkpoint_unit_sectors(&self, index: usize) -> u64 {
        KernelContainer::checkpoint_unit_sectors(self, index)
    }
}

impl KernelContainer {
    /// Records volume `index` as md runs it, as mdmon does: dirty or clean, and each member
    /// as md holds it now (`members`: in sync in its slot, failed, or rebuilding a slot with
    /// the sectors done so far). A member in no role is left as the records have it; a
    /// failure is kept (it never comes back on its own); a rebuilding member not yet in
    /// the records takes its slot (the rebuild starts), and one in sync again ends it.
    pub fn record(
        &self,
        index: usize,
        clean: bool,
        members: Vec<MemberRecord>,
    ) -> Result<(), String> {
        let Some(volume) = self.volumes.iter().find(|v| v.index == index) else {
            return Err(format!("{}: no volume {index}", self.label));
        };
        let slots = volume
            .array
            .as_ref()
            .map(|a| a.slots.clone())
            .unwrap_or_default();
        VolumeRecords::new(self.records.clone(), index, slots)
            .record(&SetRecord { clean, members })
            .map_err(|e| format!("{}: {e}", volume.name))
    }

    /// The device that would take a lost slot of volume `index` now, as mdmon picks one
    /// (imsm_activate_spare): a disk of the table in no slot of the volume and not failed,
    /// then a spare with its own record; large enough for the volume's area, and not one
    /// of `taken`. None while the volume migrates (a rebuild under way included).
    pub fn spare_for(&self, index: usize, taken: &[String]) -> Option<SpareTaking> {
        let mpb = self.records.mpb();
        let dev = mpb.devs.get(index)?;
        if dev.is_migrating() {
            return None;
        }
        let map = &dev.maps[0];
        let end_bytes = (map.pba_of_lba0 + map.blocks_per_member).saturating_mul(512);
        let loose = self.records.loose_spares();
        let fits = |path: &str| {
            self.sizes
                .iter()
                .any(|(p, size)| p == path && *size >= end_bytes)
        };
        let in_table = self
            .members
            .iter()
            .map(|(_, p, _, _)| p.clone())
            .filter(|p| {
                self.records.index_of(p).is_some_and(|d| {
                    mpb.disks.get(d).is_some_and(|disk| {
                        !disk.is_failed() && !disk.is_journal() && map.slot_of(d as u32).is_none()
                    })
                })
            });
        in_table
            .chain(
                loose
                    .into_iter()
                    .filter(|p| self.records.index_of(p).is_none()),
            )
            .find(|p| fits(p) && !taken.contains(p))
            .map(|path| SpareTaking {
                path,
                offset_sectors: map.pba_of_lba0,
                size_sectors: component_sectors(dev),
            })
    }

    /// Sectors of each member of volume `index` its records have rebuilt (the checkpoint),
    /// while a rebuild is under way.
    pub fn rebuild_checkpoint(&self, index: usize) -> Option<u64> {
        let mpb = self.records.mpb();
        let dev = mpb.devs.get(index)?;
        dev.is_rebuilding().then(|| dev.rebuild_done_sectors())
    }

    /// Sectors a checkpoint of volume `index` stands for: md's progress is recorded in
    /// whole units of this.
    pub fn checkpoint_unit_sectors(&self, index: usize) -> u64 {
        let mpb = self.records.mpb();
        mpb.devs
            .get(index)
            .map_or(1, |dev| dev.rebuild_unit_sectors())
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
        for s in &self.spares {
            records.add_spare(s.path.clone(), s.device.clone(), s.disk.clone());
        }
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
                        let why = if plan.migrating && !plan.rebuilding {
                            Some(format!(
                                "its {} is unfinished and tessera does not record migrations",
                                dev.migration_name()
                            ))
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
                            // The rebuild under way resumes from its checkpoint.
                            recovering: plan.rebuild.as_ref().filter(|_| plan.rebuilding).map(
                                |(slot, path)| {
                                    let done = dev.rebuild_done_sectors();
                                    (*slot as u32, path.clone(), map.pba_of_lba0, done)
                                },
                            ),
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
            spares: self
                .spares
                .iter()
                .map(|s| {
                    let total = s.disk.total_blocks;
                    let reserved = imsm::MPB_SECTOR_CNT.min(total);
                    (s.path.clone(), total - reserved, reserved)
                })
                .collect(),
            volumes,
            sizes: self
                .members
                .iter()
                .map(|f| (f.path.clone(), f.device.size_bytes()))
                .chain(
                    self.spares
                        .iter()
                        .map(|s| (s.path.clone(), s.device.size_bytes())),
                )
                .collect(),
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
