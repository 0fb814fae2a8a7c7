//! DDF containers run by the kernel's md through its external-metadata interface, as
//! mdadm assembles them (mdadm's `container_content_ddf`): each virtual disk's level and
//! layout, chunk, member extents and where resync starts. Read from the DDF records
//! without changing them; they run read-only until tessera keeps DDF's records while md
//! writes.

use tessera_block::SharedDevice;
use tessera_formats::ddf::{self, Health};

use crate::modules::imsm::external::{KernelArray, KernelVolume};

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
}

fn label(guid: &ddf::Guid) -> String {
    let tail: String = guid.0[16..].iter().map(|b| format!("{b:02x}")).collect();
    format!("ddf-{tail}")
}

/// The DDF containers on `devs`, as md runs them.
pub fn kernel_containers(devs: &[(String, SharedDevice)]) -> Vec<DdfKernelContainer> {
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
        .map(|c| kernel_container(&c, &sizes))
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
            let read_only_because = Some(
                "tessera does not yet keep DDF's records while md writes (it runs read-only)"
                    .to_string(),
            );
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
    })
}

impl crate::Engine {
    /// The DDF containers on the engine's devices, as md would run them.
    pub fn ddf_kernel_containers(&self) -> crate::Result<Vec<DdfKernelContainer>> {
        let (devs, _) = self.devices(false)?;
        Ok(kernel_containers(&devs))
    }
}
