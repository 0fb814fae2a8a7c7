//! SNIA DDF containers (mdadm's `-e ddf` external metadata, and hardware RAID controllers'
//! own): the module claims each disk with a DDF anchor, joins the disks of one container
//! (by the header GUID), and makes each virtual disk a volume `md/NAME`, run through the
//! `raid` target over the members' extents (offset and size from the configuration
//! record), as md runs a subarray of an external-metadata container.
//!
//! Served writable, a subarray keeps its records as mdmon does (see [`records`]): its
//! state and consistency, its members' states, and a global spare of the container taking
//! the place of a member that fails (or is missing), rebuilt onto.

pub mod records;

use std::sync::Arc;

use tessera_block::{BlockError, SharedDevice, SliceDevice};
use tessera_formats::ddf::{self as ddf_format, Container, DdfMetadata, Health, Subarray};
use tessera_mapper::{MappedDevice, TargetRegistry};
use tessera_raid::layout::{Geometry, Level};

use crate::subarrays::{kernel_subarray, SubarraySets};
use crate::raid_row::{mdadm_member_state, not_a_member, run_raid_table, RaidRow};

use crate::devices::NamedDevices;
use crate::format::{
    Activated, Assembly, Finding, FormatModule, Inner, Member, Node, Place, Shown, Volume,
};

/// Disks holding DDF metadata.
pub struct DdfMembers;

/// The metadata of `device`, read as the module reads it everywhere.
fn read(device: &SharedDevice) -> Result<Option<DdfMetadata>, ddf_format::DdfError> {
    ddf_format::probe(device.as_ref())
}

/// A container's short name: "ddf-" and the last eight bytes of its GUID (the creation
/// time and a random number for the containers mdadm makes).
fn container_name(guid: &ddf_format::Guid) -> String {
    let tail: String = guid.0[16..].iter().map(|b| format!("{b:02x}")).collect();
    format!("ddf-{tail}")
}

impl FormatModule for DdfMembers {
    fn name(&self) -> &'static str {
        "ddf"
    }

    fn probe(&self, _name: &str, device: &SharedDevice) -> Option<(Finding, Vec<Inner>)> {
        match read(device) {
            Ok(None) => None,
            Ok(Some(m)) => {
                let refnum = m.disk.refnum;
                let role = match m.own_entry() {
                    Some(e) => e.state_words(),
                    None => "not in its own records".into(),
                };
                let vds: Vec<String> = m.virt.entries.iter().map(|v| v.name()).collect();
                let mut f = Finding::new(
                    ddf_format::BLKID_TYPE,
                    format!(
                        "DDF {} member of {}, refnum {refnum:08x}, {role}, sequence {}",
                        m.anchor.revision,
                        container_name(&m.container_guid()),
                        m.seq()
                    ),
                );
                f.detail = serde_json::json!({
                    "container_guid": m.container_guid().to_string(),
                    "revision": m.anchor.revision,
                    "refnum": format!("{refnum:08x}"),
                    "sequence": m.seq(),
                    "header": m.active.to_string(),
                    "virtual_disks": vds,
                    "controller": m.controller.as_ref().map(|c| c.guid.vendor()),
                });
                f.problems = m.warnings.clone();
                Some((f, Vec::new()))
            }
            Err(e) => Finding::damaged(
                ddf_format::BLKID_TYPE,
                "DDF metadata that cannot be read",
                e.to_string(),
            ),
        }
    }

    fn assemble(&self, members: Vec<Member>) -> Vec<Assembly> {
        let devices: Vec<(String, SharedDevice)> = members
            .iter()
            .map(|m| (m.name.clone(), m.device.clone()))
            .collect();
        containers(&devices)
            .into_iter()
            .map(|(c, devs)| assembly(c, devs))
            .collect()
    }

    /// The subarrays on `devs` as devices `md/NAME` (complete ones; degraded ones too when
    /// only reading), so what lies on them (a PV) is seen by every command.
    fn stacked_devices(
        &self,
        devs: &NamedDevices,
        write: bool,
        problems: &mut Vec<String>,
    ) -> NamedDevices {
        let devices: Vec<(String, SharedDevice)> =
            devs.iter().map(|(n, d)| (n.clone(), d.clone())).collect();
        let registry = crate::format::target_registry();
        let mut out: NamedDevices = Vec::new();
        for (c, disks) in containers(&devices) {
            for s in &c.subarrays {
                let v = DdfVolume::new(&c, s, &disks, None, Vec::new());
                let name = v.name();
                if devs.iter().any(|(n, _)| *n == name) || v.kernel_holder().is_some() {
                    continue;
                }
                match s.health() {
                    Health::Complete => {}
                    Health::Degraded { .. } if !write => {}
                    _ => continue,
                }
                match v.run(registry.clone(), false) {
                    Ok(device) => out.push((name, Arc::new(device))),
                    Err(e) => problems.push(format!("{name}: cannot be put together: {e}")),
                }
            }
        }
        out
    }
}

/// The containers on `devices`, each with the devices of its disks (same order).
fn containers(devices: &[(String, SharedDevice)]) -> Vec<(Container, Vec<SharedDevice>)> {
    let mut read_ok = Vec::new();
    for (name, dev) in devices {
        // Unreadable metadata is already a problem on the device's finding.
        if let Ok(Some(m)) = read(dev) {
            read_ok.push((name.clone(), m));
        }
    }
    ddf_format::assemble(read_ok)
        .into_iter()
        .map(|c| {
            let devs = c
                .disks
                .iter()
                .map(|(n, _)| {
                    devices
                        .iter()
                        .find(|(dn, _)| dn == n)
                        .map(|(_, d)| d.clone())
                        .expect("a disk read from the devices given")
                })
                .collect();
            (c, devs)
        })
        .collect()
}

/// mdadm's words for md layout `code` of `level`, where it prints one.
fn layout_words(level: i32, code: u32) -> Option<String> {
    match (level, code) {
        (5 | 6, 0) => Some("left-asymmetric".into()),
        (5 | 6, 1) => Some("right-asymmetric".into()),
        (5 | 6, 2) => Some("left-symmetric".into()),
        (5 | 6, 3) => Some("right-symmetric".into()),
        (5 | 6, 4) => Some("parity-first".into()),
        (5 | 6, 5) => Some("parity-last".into()),
        (10, c) => Some(match (c & 0xff, (c >> 8) & 0xff) {
            (n, 1) => format!("near={n}"),
            (_, f) => format!("far={f}"),
        }),
        _ => None,
    }
}

/// A disk's entry in the container's newest physical disk records.
fn newest_entry(c: &Container, refnum: u32) -> Option<&ddf_format::PhysEntry> {
    c.disks.get(c.newest)?.1.phys.by_refnum(refnum)
}

/// What a disk is to the container, from its newest records: failed, rebuilding, a
/// spare, or active.
fn disk_role(c: &Container, m: &DdfMetadata) -> String {
    use ddf_format::records::{pd_state, pd_type};
    let Some(e) = newest_entry(c, m.disk.refnum) else {
        return "not in the records".into();
    };
    if e.state & pd_state::FAILED != 0 {
        "failed".into()
    } else if e.state & pd_state::REBUILDING != 0 {
        "rebuilding".into()
    } else if m.spare_assignment || e.kind & (pd_type::SPARE | pd_type::GLOBAL_SPARE) != 0 {
        "spare".into()
    } else {
        "active".into()
    }
}

/// For each subarray with redundancy, the extent each global spare of the container
/// offers it: on each spare disk, the subarrays' extents laid one after another from the
/// first sector free of other extents, as far as the disk's usable size reaches (mdmon
/// takes the first free space of the size the subarray needs).
/// Indexed like `c.subarrays`; what [`records::VolumeRecords::new`] takes as `spares`.
pub fn spare_extents(c: &Container) -> Vec<Vec<records::SpareExtent>> {
    let mut plan: Vec<Vec<records::SpareExtent>> = vec![Vec::new(); c.subarrays.len()];
    for &d in &c.spares {
        let (path, m) = &c.disks[d];
        let Some(usable) = newest_entry(c, m.disk.refnum).map(|e| e.config_size) else {
            continue;
        };
        // What other configuration records already place on the disk.
        let mut taken: Vec<(u64, u64)> = c
            .subarrays
            .iter()
            .flat_map(|s| {
                s.slots
                    .iter()
                    .filter(|sl| sl.refnum == m.disk.refnum)
                    .map(|sl| (sl.lba_offset, s.blocks))
            })
            .collect();
        for (k, s) in c.subarrays.iter().enumerate() {
            if !matches!(s.md, Ok((1 | 4 | 5 | 6 | 10, _))) || s.blocks == 0 {
                continue;
            }
            taken.sort_unstable();
            let mut at = 0u64;
            for &(start, len) in &taken {
                if start >= at.saturating_add(s.blocks) {
                    break;
                }
                at = at.max(start.saturating_add(len));
            }
            if at.saturating_add(s.blocks) > usable {
                continue;
            }
            taken.push((at, s.blocks));
            plan[k].push(records::SpareExtent {
                path: path.clone(),
                lba_offset: at,
            });
        }
    }
    plan
}

fn assembly(c: Container, devices: Vec<SharedDevice>) -> Assembly {
    let cname = container_name(&c.guid);
    let mut problems = c.problems.clone();
    let mut places: Vec<Place> = Vec::new();
    for (i, (name, m)) in c.disks.iter().enumerate() {
        let left = c.left_out.iter().find(|(d, _)| *d == i);
        let problem = left.map(|(_, why)| format!("{name}: left out of {cname}: {why}"));
        problems.extend(problem.clone());
        let state = if left.is_some() {
            "left out".to_string()
        } else {
            disk_role(&c, m)
        };
        places.push(Place {
            name: name.clone(),
            state: Some(state),
            problem,
            ..Place::default()
        });
    }
    if let Some(home) = places.first().map(|p| p.name.clone()) {
        for p in places.iter_mut().skip(1) {
            p.note = Some(format!("{cname} shown under {home}"));
        }
    }
    let mut volumes: Vec<Box<dyn Volume>> = Vec::new();
    let mut subarrays: Vec<serde_json::Value> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let shared = records::ContainerRecords::new(&c, &devices);
    let sets = SubarraySets::new();
    let spare_plan = spare_extents(&c);
    for (k, s) in c.subarrays.iter().enumerate() {
        let v = DdfVolume::new(
            &c,
            s,
            &devices,
            Some((shared.clone(), sets.clone())),
            spare_plan[k].clone(),
        );
        // Two virtual disks of one name: the second is shown by its GUID.
        let v = if names.contains(&v.name) {
            DdfVolume {
                name: s.entry.guid.to_string().replace(':', ""),
                ..v
            }
        } else {
            v
        };
        names.push(v.name.clone());
        // What the subarray is, kept here: its own node shows what lies on it.
        subarrays.push(v.node().detail);
        volumes.push(Box::new(v));
    }
    let summary = format!(
        "DDF container, {} disk(s), {} virtual disk(s), sequence {}",
        c.disks.len() - c.left_out.len(),
        c.subarrays.len(),
        c.seq
    );
    let detail = serde_json::json!({
        "metadata": "ddf",
        "container_guid": c.guid.to_string(),
        "sequence": c.seq,
        "disks": c.disks.iter().enumerate().map(|(i, (n, m))| serde_json::json!({
            "device": n, "refnum": format!("{:08x}", m.disk.refnum), "sequence": m.seq(),
            "role": if c.left_out.iter().any(|(d, _)| *d == i) { "left out".to_string() } else { disk_role(&c, m) },
            "state": newest_entry(&c, m.disk.refnum).map(|e| e.state_words()),
        })).collect::<Vec<_>>(),
        "subarrays": subarrays,
    });
    let state = if c.subarrays.iter().all(|s| s.health() == Health::Complete) {
        "clean"
    } else if c
        .subarrays
        .iter()
        .any(|s| matches!(s.health(), Health::Failed { .. }))
    {
        "failed"
    } else {
        "degraded"
    };
    Assembly {
        node: Node {
            kind: "md",
            name: cname,
            size_bytes: c
                .disks
                .iter()
                .zip(&devices)
                .map(|(_, d)| d.size_bytes())
                .sum(),
            format: None,
            summary,
            state: Some(state.into()),
            detail,
            problems,
            children: Vec::new(),
        },
        places,
        volumes,
    }
}

/// One extent of a subarray's member or of a spare disk offered to it, present.
#[derive(Clone)]
struct Extent {
    /// Its slot; `None` for a spare's.
    slot: Option<usize>,
    path: String,
    device: SharedDevice,
    offset_sectors: u64,
}

/// A virtual disk as a volume.
pub struct DdfVolume {
    name: String,
    container: String,
    sub: Subarray,
    extents: Vec<Extent>,
    /// The extents the container's global spares offer it, in the order they are taken.
    spares: Vec<Extent>,
    /// Each slot's physical disk state in the newest records, in words.
    member_states: Vec<Option<String>>,
    /// The UUID mdadm gives it.
    uuid: String,
    /// The container's records, kept while the subarray runs writable, and its
    /// subarrays running writable (a disk failing in one fails in all).
    records: Option<(Arc<records::ContainerRecords>, Arc<SubarraySets>)>,
}

impl DdfVolume {
    fn new(
        c: &Container,
        s: &Subarray,
        devices: &[SharedDevice],
        records: Option<(Arc<records::ContainerRecords>, Arc<SubarraySets>)>,
        spares: Vec<records::SpareExtent>,
    ) -> DdfVolume {
        let extents = s
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, slot)| {
                let d = slot.disk?;
                Some(Extent {
                    slot: Some(i),
                    path: c.disks[d].0.clone(),
                    device: devices[d].clone(),
                    offset_sectors: slot.lba_offset,
                })
            })
            .collect();
        let spares = spares
            .into_iter()
            .filter_map(|sp| {
                let d = c.disks.iter().position(|(p, _)| *p == sp.path)?;
                Some(Extent {
                    slot: None,
                    path: sp.path,
                    device: devices[d].clone(),
                    offset_sectors: sp.lba_offset,
                })
            })
            .collect();
        let member_states = s
            .slots
            .iter()
            .map(|sl| newest_entry(c, sl.refnum).map(|e| e.state_words()))
            .collect();
        DdfVolume {
            name: s.name(),
            container: container_name(&c.guid),
            sub: s.clone(),
            extents,
            spares,
            member_states,
            uuid: c.subarray_uuid(s),
            records,
        }
    }

    /// The subarray's level in tessera's layouts, its geometry and its size in sectors.
    fn geometry(&self) -> Result<(Geometry, u64), String> {
        let (level, layout) = self.sub.md.clone()?;
        let lv = match level {
            0 => Level::Raid0,
            1 => Level::Raid1,
            4 => Level::Raid4,
            5 => Level::Raid5,
            6 => Level::Raid6,
            10 => Level::Raid10,
            _ => {
                return Err(format!(
                    "{} is not a level tessera runs",
                    self.sub.level_name()
                ))
            }
        };
        let n = self.sub.slots.len();
        let chunk = if lv == Level::Raid1 {
            self.sub.chunk_sectors.max(8)
        } else {
            self.sub.chunk_sectors
        };
        // md uses whole chunks of each extent.
        let per = if lv == Level::Raid1 {
            self.sub.blocks
        } else {
            self.sub.blocks / chunk.max(1) * chunk
        };
        let geo = Geometry::new(lv, layout, chunk, n, &vec![per; n]).map_err(|e| e.to_string())?;
        let mut sectors = geo.array_sectors();
        // The record's own size, when smaller, is what md exposes (its array_size).
        if self.sub.array_blocks > 0 && self.sub.array_blocks < sectors {
            sectors = self.sub.array_blocks;
        }
        Ok((geo, sectors))
    }

    /// The `raid` row over the member extents (each device named by its path). Reading
    /// only, a slot being rebuilt is left out (it is not in sync); writable, it is rebuilt,
    /// a missing slot is rebuilt onto a spare when there is one, and the other spares wait
    /// for a member to fail.
    fn table(&self, writable: bool) -> Result<String, String> {
        let (level, layout) = self.sub.md.clone()?;
        let (_, sectors) = self.geometry()?;
        let chunk = if level == 1 {
            self.sub.chunk_sectors.max(8)
        } else {
            self.sub.chunk_sectors
        };
        let mut spares = self.spares.iter().filter(|_| writable);
        let mut rebuild = Vec::new();
        let slots: Vec<Option<String>> = (0..self.sub.slots.len())
            .map(|i| match self.extents.iter().find(|e| e.slot == Some(i)) {
                Some(e) if !self.sub.slots[i].rebuilding => Some(e.path.clone()),
                Some(e) if writable => {
                    rebuild.push(i);
                    Some(e.path.clone())
                }
                Some(_) => None,
                None => spares.next().map(|sp| {
                    rebuild.push(i);
                    sp.path.clone()
                }),
            })
            .collect();
        let waiting: Vec<String> = spares.map(|sp| sp.path.clone()).collect();
        RaidRow {
            level,
            layout,
            sectors,
            chunk_sectors: chunk,
            // Each member is a slice of its disk starting at its extent.
            data_offset_sectors: 0,
            slots: &slots,
            rebuild: &rebuild,
            spares: &waiting,
        }
        .text()
    }

    /// Runs the subarray in user space; `writable`, with a registry whose sets keep the
    /// records.
    fn run(&self, registry: Arc<TargetRegistry>, writable: bool) -> Result<MappedDevice, String> {
        let text = self.table(writable)?;
        let blocks = self.sub.blocks;
        let resolve = |path: &str| -> Result<SharedDevice, BlockError> {
            let e = self
                .extents
                .iter()
                .chain(&self.spares)
                .find(|e| e.path == path)
                .ok_or_else(|| not_a_member(path, "the subarray"))?;
            // The member's extent as a device of its own: I/O cannot leave it.
            let start = e.offset_sectors.saturating_mul(512);
            let len = blocks.saturating_mul(512);
            SliceDevice::new(
                format!("{path}@{}", e.offset_sectors),
                e.device.clone(),
                start,
                len,
            )
            .map(|s| Arc::new(s) as SharedDevice)
            .ok_or_else(|| BlockError::Open {
                device: path.to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "its extent (sector {} + {blocks}) lies past the device's end",
                        e.offset_sectors
                    ),
                ),
            })
        };
        run_raid_table(&self.dm_name(), &text, registry, &resolve)
    }

    /// The kernel's md device running this subarray's members, when it runs them.
    fn kernel_holder(&self) -> Option<String> {
        self.extents.iter().find_map(|e| {
            let real = std::fs::canonicalize(&e.path).ok()?;
            let base = real.file_name()?.to_string_lossy().into_owned();
            std::fs::read_dir(format!("/sys/class/block/{base}/holders"))
                .ok()?
                .flatten()
                .map(|h| h.file_name().to_string_lossy().into_owned())
                .find(|h| h.starts_with("md"))
                .map(|h| format!("/dev/{h}"))
        })
    }

    fn node(&self) -> Node {
        let s = &self.sub;
        let mut problems: Vec<String> = s
            .problems
            .iter()
            .map(|p| format!("{}: {p}", self.name()))
            .collect();
        let n = s.slots.len();
        let why = |i: &usize| {
            let sl = &s.slots[*i];
            match &sl.missing {
                Some(w) => Some(w.clone()),
                None if sl.rebuilding => Some(format!("refnum {:08x} is being rebuilt", sl.refnum)),
                None => None,
            }
        };
        let state = match s.health() {
            Health::Complete => "clean".to_string(),
            Health::Degraded { missing } if missing.iter().all(|&i| s.slots[i].rebuilding) => {
                problems.push(format!(
                    "{}: recovering: slot(s) {missing:?} of {n} being rebuilt ({})",
                    self.name(),
                    missing
                        .iter()
                        .filter_map(why)
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
                "recovering".to_string()
            }
            Health::Degraded { missing } => {
                problems.push(format!(
                    "{}: degraded: slot(s) {missing:?} of {n} missing ({})",
                    self.name(),
                    missing
                        .iter()
                        .filter_map(why)
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
                "degraded".to_string()
            }
            Health::Failed { missing } => {
                problems.push(format!(
                    "{}: cannot start: slot(s) {missing:?} of {n} missing and {} does not survive it ({})",
                    self.name(),
                    s.level_name(),
                    missing.iter().filter_map(why).collect::<Vec<_>>().join("; ")
                ));
                "failed".to_string()
            }
        };
        if let Err(e) = &s.md {
            problems.push(format!("{}: cannot run: {e}", self.name()));
        }
        if !s.entry.is_consistent() && s.md.as_ref().is_ok_and(|(l, _)| *l > 0) {
            problems.push(format!(
                "{}: the DDF records say it is not consistent ({}): its redundancy may not match its data",
                self.name(),
                s.entry.state_words()
            ));
        }
        let size = self.geometry().map(|(_, s)| s * 512).unwrap_or(0);
        // Run in the kernel (by mdadm, or by tessera as mdmon): md's own progress.
        let paths: Vec<String> = self.extents.iter().map(|e| e.path.clone()).collect();
        let kernel = kernel_subarray(&paths, s.index);
        let kernel_rebuild = kernel.as_ref().and_then(|k| {
            let (done, total) = k.sync_completed?;
            (k.sync_action == "recover").then(
                || serde_json::json!({ "percent": (done * 1000 / total.max(1)) as f64 / 10.0 }),
            )
        });
        // What `md detail` shows, as mdadm --detail shows a subarray.
        let md_detail = serde_json::json!({
            "name": self.name.clone(),
            "metadata": "ddf",
            "container": self.container,
            "member": s.index,
            "uuid": self.uuid,
            "level": s.level_name(),
            "layout": s.md.as_ref().ok().and_then(|(l, code)| layout_words(*l, *code)),
            "chunk_bytes": s.chunk_sectors * 512,
            "raid_disks": n,
            "size_bytes": size,
            "member_size_bytes": s.blocks * 512,
            "state": if kernel_rebuild.is_some() { "recovering".to_string() } else { state.clone() },
            "dirty": !s.entry.is_consistent(),
            "rebuild": kernel_rebuild.clone(),
            "kernel": kernel.as_ref().map(|k| k.json()),
            "members": s.slots.iter().enumerate().map(|(i, sl)| {
                let device = self.extents.iter().find(|e| e.slot == Some(i)).map(|e| e.path.clone());
                let role = match (&device, sl.rebuilding) {
                    (Some(_), false) => "active sync",
                    (Some(_), true) => "spare rebuilding",
                    (None, _) => "removed",
                };
                let role = match (&device, &s.md) {
                    (Some(_), Ok((level, layout))) => mdadm_member_state(*level, *layout, n, i, role),
                    _ => role.to_string(),
                };
                serde_json::json!({ "slot": i, "device": device, "state": role })
            }).collect::<Vec<_>>(),
            "spares": self.spares.iter().map(|e| e.path.clone()).collect::<Vec<_>>(),
        });
        Node {
            kind: "md",
            name: self.name(),
            size_bytes: size,
            format: None,
            summary: format!(
                "DDF virtual disk {} of {}, {} ({}) over {} of {n} members, chunk {} KiB, {state}{}",
                s.index,
                self.container,
                s.level_name(),
                s.ddf_level,
                self.extents.len(),
                s.chunk_sectors / 2,
                match (&kernel, &kernel_rebuild) {
                    (Some(k), Some(r)) => format!(
                        ", run by the kernel as {} (recovering, {}% done)",
                        k.device, r["percent"]
                    ),
                    (Some(k), None) => format!(", run by the kernel as {}", k.device),
                    _ => String::new(),
                }
            ),
            state: Some(state.clone()),
            detail: serde_json::json!({
                "metadata": "ddf",
                "name": self.name.clone(),
                "container": self.container,
                "member": s.index,
                "guid": s.entry.guid.to_string(),
                "level": s.level_name(),
                "ddf_level": s.ddf_level,
                "layout": s.md.as_ref().map(|(_, l)| *l).unwrap_or(0),
                "chunk_bytes": s.chunk_sectors * 512,
                "raid_disks": n,
                "member_sectors": s.blocks,
                "array_sectors": s.array_blocks,
                "size_bytes": size,
                "state": state.clone(),
                "ddf_state": s.entry.state_words(),
                "members": s.slots.iter().enumerate().map(|(i, sl)| serde_json::json!({
                    "refnum": format!("{:08x}", sl.refnum),
                    "lba_offset": sl.lba_offset,
                    "device": self.extents.iter().find(|e| e.slot == Some(i)).map(|e| e.path.clone()),
                    "state": self.member_states[i],
                    "rebuilding": sl.rebuilding,
                    "missing": sl.missing,
                })).collect::<Vec<_>>(),
                "spares": self.spares.iter().map(|e| serde_json::json!({
                    "device": e.path, "lba_offset": e.offset_sectors,
                })).collect::<Vec<_>>(),
                "kernel": kernel.as_ref().map(|k| k.json()),
                "md": md_detail,
            }),
            problems,
            children: Vec::new(),
        }
    }
}

impl Volume for DdfVolume {
    fn module(&self) -> &'static str {
        "ddf"
    }
    fn name(&self) -> String {
        format!("md/{}", self.name)
    }
    fn dm_name(&self) -> String {
        format!("md-{}", self.name)
    }
    fn shown(&self) -> Shown {
        Shown::Own(self.node())
    }
    fn listed_as(&self) -> Option<String> {
        self.kernel_holder()
    }
    fn state_note(&self) -> Option<String> {
        match self.sub.health() {
            Health::Complete => None,
            Health::Degraded { missing }
                if missing.iter().all(|&i| self.sub.slots[i].rebuilding) =>
            {
                Some("recovering".into())
            }
            Health::Degraded { .. } => Some("degraded".into()),
            Health::Failed { .. } => Some("failed".into()),
        }
    }
    fn devices(&self) -> Vec<String> {
        self.extents
            .iter()
            .chain(&self.spares)
            .map(|e| e.path.clone())
            .collect()
    }
    /// Writable, the subarray keeps the container's records as mdmon does: its state and
    /// consistency, failed members, a spare rebuilt into a missing or failed member's place.
    fn activate(&self, registry: Arc<TargetRegistry>, writable: bool) -> Result<Activated, String> {
        if let Health::Failed { missing } = self.sub.health() {
            return Err(format!(
                "{} misses slot(s) {missing:?}, more than {} survives",
                self.name(),
                self.sub.level_name()
            ));
        }
        let registry = match (&self.records, writable) {
            (Some((shared, sets)), true) => {
                let records = records::VolumeRecords::new(
                    shared.clone(),
                    self.sub.index,
                    self.spares
                        .iter()
                        .map(|e| records::SpareExtent {
                            path: e.path.clone(),
                            lba_offset: e.offset_sectors,
                        })
                        .collect(),
                );
                sets.registry(&registry, self.sub.index, Arc::new(records))?
            }
            (None, true) => {
                return Err(format!(
                    "{}: the container's records are not at hand, so it is served read-only only",
                    self.name()
                ))
            }
            (_, false) => registry,
        };
        let device = self.run(registry, writable)?;
        let mut spares = self.spares.iter().filter(|_| writable);
        let mut notes = Vec::new();
        for (i, s) in self.sub.slots.iter().enumerate() {
            if let Some(w) = &s.missing {
                match spares.next() {
                    Some(sp) => notes.push(format!(
                        "slot {i} ({w}) is rebuilt onto the spare {}",
                        sp.path
                    )),
                    None => notes.push(format!("runs without slot {i}: {w}")),
                }
            } else if s.rebuilding {
                notes.push(if writable {
                    format!("slot {i} (refnum {:08x}) is rebuilt", s.refnum)
                } else {
                    format!(
                        "runs without slot {i}: refnum {:08x} is being rebuilt",
                        s.refnum
                    )
                });
            }
        }
        Ok(Activated { device, notes })
    }
}
