//! DDF containers run by the kernel's md through its external-metadata interface, as
//! mdadm assembles them (mdadm's `container_content_ddf`): each virtual disk's level and
//! layout, chunk, member extents and where resync starts (a disk being rebuilt into its
//! place goes in out of sync, rebuilt from its start: DDF keeps no rebuild progress), and
//! the records a monitor keeps while md runs them writable, through the writers the
//! user-space path uses: the virtual disk consistent or not, failed members' physical
//! disks Failed, a global spare taking a lost member's place (Rebuilding, then Online).

use std::sync::Arc;

use tessera_block::SharedDevice;
use tessera_formats::ddf::{self, Health};
use tessera_raid::metadata::{SetMetadata, SetRecord};

use crate::modules::ddf::records::{ContainerRecords, SpareExtent, VolumeRecords};
use crate::modules::ddf::spare_extents;
use crate::modules::imsm::external::{
    KernelArray, KernelRecords, KernelVolume, MemberRecord, SpareTaking,
};

/// How long md waits after the last write before it reports a virtual disk idle: 4 s,
/// as mdadm's DDF_SAFE_MODE_DELAY.
pub const SAFE_MODE_DELAY_MS: u64 = 4000;

/// A DDF container as md runs it.
pub struct DdfKernelContainer {
    /// `ddf-GUIDTAIL`, as tessera shows it.
    pub label: String,
    /// Each member: path, and where its DDF structures lie (sectors: offset, length), as
    /// mdadm shows a container's members.
    pub members: Vec<(String, u64, u64)>,
    pub left_out: Vec<(String, String)>,
    pub volumes: Vec<KernelVolume>,
    /// Each virtual disk (by index): the extents global spares offer it, and its extent
    /// size (sectors).
    spares: Vec<(usize, Vec<SpareExtent>, u64)>,
    records: Option<Arc<ContainerRecords>>,
}

impl KernelRecords for DdfKernelContainer {
    fn label(&self) -> String {
        self.label.clone()
    }

    fn record(&self, index: usize, clean: bool, members: Vec<MemberRecord>) -> Result<(), String> {
        let records = self
            .records
            .as_ref()
            .ok_or_else(|| format!("{}: its disks are not open for writing", self.label))?;
        let spares = self
            .spares
            .iter()
            .find(|(i, _, _)| *i == index)
            .map(|(_, s, _)| s.clone())
            .unwrap_or_default();
        VolumeRecords::new(records.clone(), index, spares)
            .record(&SetRecord { clean, members })
            .map_err(|e| format!("{} virtual disk {index}: {e}", self.label))
    }

    fn spare_for(&self, index: usize, taken: &[String]) -> Option<SpareTaking> {
        let (_, spares, blocks) = self.spares.iter().find(|(i, _, _)| *i == index)?;
        spares
            .iter()
            .find(|s| !taken.contains(&s.path))
            .map(|s| SpareTaking {
                path: s.path.clone(),
                offset_sectors: s.lba_offset,
                size_sectors: *blocks,
            })
    }

    fn rebuild_checkpoint(&self, _index: usize) -> Option<u64> {
        None
    }

    fn checkpoint_unit_sectors(&self, _index: usize) -> u64 {
        // No progress is kept: nothing is worth a record before the end.
        u64::MAX
    }
}

fn label(guid: &ddf::Guid) -> String {
    let tail: String = guid.0[16..].iter().map(|b| format!("{b:02x}")).collect();
    format!("ddf-{tail}")
}

/// The DDF containers on `devs`, as md runs them; with `writable`, their records kept on
/// `devs` (opened for writing) by a monitor.
pub fn kernel_containers(
    devs: &[(String, SharedDevice)],
    writable: bool,
) -> Vec<DdfKernelContainer> {
    let read: Vec<(String, ddf::DdfMetadata)> = devs
        .iter()
        .filter_map(|(n, d)| Some((n.clone(), ddf::probe(d.as_ref()).ok()??)))
        .collect();
    let sizes: Vec<(String, u64)> = devs
        .iter()
        .map(|(n, d)| (n.clone(), d.size_bytes() / 512))
        .collect();
    ddf::assemble(read)
        .into_iter()
        .map(|c| {
            let mut k = kernel_container(&c, &sizes);
            let devices: Option<Vec<SharedDevice>> = c
                .disks
                .iter()
                .map(|(p, _)| devs.iter().find(|(n, _)| n == p).map(|(_, d)| d.clone()))
                .collect();
            if let (true, Some(devices)) = (writable, devices) {
                k.records = Some(ContainerRecords::new(&c, &devices));
            }
            k
        })
        .collect()
}

fn kernel_container(c: &ddf::Container, sizes: &[(String, u64)]) -> DdfKernelContainer {
    let left: Vec<usize> = c.left_out.iter().map(|(i, _)| *i).collect();
    let members = c
        .disks
        .iter()
        .enumerate()
        .filter(|(i, _)| !left.contains(i))
        .filter_map(|(_, (path, m))| {
            let config = m.own_entry()?.config_size;
            let total = sizes.iter().find(|(n, _)| n == path)?.1;
            Some((path.clone(), config, total.saturating_sub(config)))
        })
        .collect();
    let volumes = c
        .subarrays
        .iter()
        .map(|s| {
            let name = format!("md/{}", s.name());
            let array = kernel_array(c, s);
            let read_only_because = None;
            KernelVolume {
                name,
                index: s.index,
                array,
                read_only_because,
            }
        })
        .collect();
    DdfKernelContainer {
        label: label(&c.guid),
        members,
        left_out: c
            .left_out
            .iter()
            .map(|(i, why)| (c.disks[*i].0.clone(), why.clone()))
            .collect(),
        volumes,
        spares: c
            .subarrays
            .iter()
            .zip(spare_extents(c))
            .map(|(s, e)| (s.index, e, s.blocks))
            .collect(),
        records: None,
    }
}

fn kernel_array(c: &ddf::Container, s: &ddf::Subarray) -> Result<KernelArray, String> {
    let (level, layout) = s.md.clone()?;
    if level < 0 {
        return Err(
            "a concatenation (md's linear) has no external-metadata form tessera starts".into(),
        );
    }
    if let Health::Failed { missing } = s.health() {
        return Err(format!(
            "slots {missing:?} are missing, more than {} survives",
            s.level_name()
        ));
    }
    let slots: Vec<Option<String>> = s
        .slots
        .iter()
        .map(|sl| match sl.disk {
            Some(d) if !sl.rebuilding => c.disks.get(d).map(|(p, _)| p.clone()),
            _ => None,
        })
        .collect();
    // A disk being rebuilt into its place goes in out of sync, from its start.
    let recovering = s.slots.iter().enumerate().find_map(|(slot, sl)| {
        let d = sl.disk.filter(|_| sl.rebuilding)?;
        Some((slot as u32, c.disks.get(d)?.0.clone(), sl.lba_offset, 0))
    });
    let members = s
        .slots
        .iter()
        .zip(&slots)
        .enumerate()
        .filter_map(|(slot, (sl, path))| {
            Some((path.clone()?, slot as u32, sl.lba_offset, s.blocks))
        })
        .collect();
    Ok(KernelArray {
        level: level as u32,
        raid_disks: s.slots.len() as u32,
        chunk_bytes: s.chunk_sectors * 512,
        layout,
        component_sectors: s.blocks,
        // mdadm leaves md to work the size out from the members.
        array_sectors: None,
        resync_start: (!s.entry.is_consistent()).then_some(0),
        members,
        slots,
        recovering,
    })
}

impl crate::Engine {
    /// The DDF containers on the engine's devices, as md would run them.
    pub fn ddf_kernel_containers(&self) -> crate::Result<Vec<DdfKernelContainer>> {
        let (devs, _) = self.devices(false)?;
        Ok(kernel_containers(&devs, false))
    }
}
