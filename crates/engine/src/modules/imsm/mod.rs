//! Intel IMSM (Matrix RAID, RST, VROC) containers: the format module for the MPB mdadm
//! keeps at the end of each member disk. It claims the members, groups them into
//! containers by family number (the newest generation speaking for the container), tells
//! the disks apart by serial number, and makes each volume of a container that can run a
//! volume `md/NAME` (NAME as the metadata records it, as mdadm names it under /dev/md/),
//! run by the `raid` target over the members' areas. Shown as container > volumes > what
//! lies inside.
//!
//! Run writable, a volume keeps its records in the MPB as mdmon does ([`records`]): the
//! dirty flag, failed and missing members, and rebuilds. The container's spares (disks with
//! their own spare records, or spare disks of the table) wait in each volume's `raid` row
//! to take the place of a member that fails; a volume that starts with a member lost takes
//! a spare at once and rebuilds onto it, and one whose rebuild was under way (by tessera or
//! mdmon) resumes it from the checkpoint. Without a spare, a degraded volume runs degraded.
//! Volumes in the middle of another migration (initialization, reshape) run read-only only.

pub mod external;
pub mod ops;
pub mod records;

use std::collections::BTreeMap;
use std::sync::Arc;

use tessera_block::SharedDevice;
use tessera_formats::imsm::{self, Dev, Mpb};
use tessera_mapper::{MappedDevice, TargetRegistry};

use crate::subarrays::{kernel_subarray, SubarraySets};
use crate::raid_row::{mdadm_member_state, not_a_member, run_raid_table, RaidRow};
use crate::devices::NamedDevices;
use crate::format::{
    Activated, Assembly, Finding, FormatModule, Inner, Member, Node, Place, Shown, Volume,
};

/// blkid's name for an IMSM member.
const FORMAT: &str = "isw_raid_member";

/// IMSM member disks.
pub struct ImsmMembers;

impl FormatModule for ImsmMembers {
    fn name(&self) -> &'static str {
        "imsm"
    }

    fn probe(&self, name: &str, device: &SharedDevice) -> Option<(Finding, Vec<Inner>)> {
        match imsm::read(device.as_ref()) {
            Ok(None) => None,
            Ok(Some(mpb)) => {
                let serial = device_serial(name);
                let disk = serial
                    .as_deref()
                    .and_then(|s| mpb.disk_by_serial(s))
                    .or_else(|| disk_by_name(&mpb, name));
                let volumes: Vec<String> = mpb.devs.iter().map(|d| d.name()).collect();
                let which = match disk {
                    Some(i) => format!("disk {i} ({})", mpb.disks[i].serial_string()),
                    None => "disk not identified".into(),
                };
                let mut f = Finding::new(
                    FORMAT,
                    format!(
                        "IMSM member of container {:08x}, {which}, generation {}, volumes: {}",
                        mpb.family_num,
                        mpb.generation_num,
                        if volumes.is_empty() {
                            "none".to_string()
                        } else {
                            volumes.join(", ")
                        }
                    ),
                );
                f.detail = serde_json::json!({
                    "family": format!("{:08x}", mpb.family_num),
                    "generation": mpb.generation_num,
                    "metadata": mpb.version_string(),
                    "serial": serial,
                    "disk": disk,
                    "volumes": volumes,
                });
                Some((f, Vec::new()))
            }
            Err(e) => Finding::damaged(FORMAT, "IMSM metadata that cannot be read", e.to_string()),
        }
    }

    fn assemble(&self, members: Vec<Member>) -> Vec<Assembly> {
        let read: Vec<(String, SharedDevice, Mpb)> = members
            .into_iter()
            .filter_map(|m| {
                // An unreadable MPB is already a problem on its device's finding.
                let mpb = imsm::read(m.device.as_ref()).ok()??;
                Some((m.name, m.device, mpb))
            })
            .collect();
        let mut used_names = Vec::new();
        containers(read)
            .into_iter()
            .map(|c| c.assembly(&mut used_names))
            .collect()
    }

    fn stacked_devices(
        &self,
        devs: &NamedDevices,
        write: bool,
        problems: &mut Vec<String>,
    ) -> NamedDevices {
        let read: Vec<(String, SharedDevice, Mpb)> = devs
            .iter()
            .filter_map(|(n, d)| Some((n.clone(), d.clone(), imsm::read(d.as_ref()).ok()??)))
            .collect();
        if read.is_empty() {
            return Vec::new();
        }
        let registry = crate::format::target_registry();
        let mut used = Vec::new();
        let mut out: NamedDevices = Vec::new();
        for c in containers(read) {
            for v in c.volumes(&mut used) {
                let Ok(run) = v.plan else { continue };
                // Stacked for writing, a volume runs without records: only a whole one.
                if devs.iter().any(|(n, _)| *n == v.name)
                    || (write && (run.degraded || run.migrating))
                {
                    continue;
                }
                match run.activate(&v.name, registry.clone(), false) {
                    Ok(device) => out.push((v.name.clone(), Arc::new(device))),
                    Err(e) => problems.push(format!("{}: cannot be put together: {e}", v.name)),
                }
            }
        }
        out
    }
}

/// The serial number of block device `path` as mdadm reads it (NVMe's and SCSI's, from
/// sysfs), trimmed as mdadm trims it: no blanks or control characters, ':' as ';', the
/// last 16 bytes.
fn device_serial(path: &str) -> Option<String> {
    let real = std::fs::canonicalize(path).ok()?;
    let base = real.file_name()?.to_string_lossy().into_owned();
    let dev = format!("/sys/class/block/{base}/device");
    let raw: Vec<u8> = if let Ok(s) = std::fs::read(format!("{dev}/serial")) {
        s
    } else {
        // SCSI's unit serial number page: a 4-byte header, then the serial.
        let page = std::fs::read(format!("{dev}/vpd_pg80")).ok()?;
        let len = usize::from(*page.get(3)?);
        page.get(4..4 + len)?.to_vec()
    };
    let clean: Vec<u8> = raw
        .iter()
        .take_while(|&&c| c != 0)
        .filter(|&&c| c > 0x20)
        .map(|&c| if c == b':' { b';' } else { c })
        .collect();
    let tail = &clean[clean.len().saturating_sub(16)..];
    (!tail.is_empty()).then(|| String::from_utf8_lossy(tail).into_owned())
}

/// The disk whose serial names the device: mdadm records `/dev/NAME` as the serial of a
/// disk without one (IMSM_DEVNAME_AS_SERIAL, loop devices); an image file named after it
/// (`loop0` or `loop0.img`) is taken for that disk too.
fn disk_by_name(mpb: &Mpb, path: &str) -> Option<usize> {
    let file = std::path::Path::new(path);
    let base = file.file_name()?.to_string_lossy().into_owned();
    let stem = file.file_stem()?.to_string_lossy().into_owned();
    let mut found = mpb.disks.iter().enumerate().filter(|(_, d)| {
        let serial = d.serial_string();
        let tail = serial.rsplit('/').next().unwrap_or("").to_string();
        serial.starts_with("/dev/") && !tail.is_empty() && (tail == base || tail == stem)
    });
    let first = found.next().map(|(i, _)| i);
    // Two disks named alike tell nothing.
    if found.next().is_some() {
        return None;
    }
    first
}

/// One member disk found on a device.
struct Found {
    path: String,
    device: SharedDevice,
    generation: u32,
    /// Its index in the container's disk table, once known.
    disk: Option<usize>,
}

/// A disk with its own spare record, in no volume yet.
struct LooseSpare {
    path: String,
    device: SharedDevice,
    /// Its entry, as its spare record holds it.
    disk: imsm::Disk,
}

/// The members of one family, and the newest MPB among them.
struct Container {
    mpb: Mpb,
    members: Vec<Found>,
    /// Members left out, and why.
    left_out: Vec<(String, String)>,
    /// Spares that joined the container with their own spare records.
    spares: Vec<LooseSpare>,
}

/// Groups the members by family number, in the order families are first seen. Disks with
/// spare records of their own (mdadm writes those for a spare added to a container) join
/// the container when there is one container among the devices; with several, which one a
/// spare belongs to is not recorded anywhere, and each stays a container of its own.
fn containers(read: Vec<(String, SharedDevice, Mpb)>) -> Vec<Container> {
    let (spares, read): (Vec<_>, Vec<_>) = read
        .into_iter()
        .partition(|(_, _, mpb)| mpb.is_spare_record());
    let mut out = group_families(read);
    if out.len() == 1 {
        out[0].spares = spares
            .into_iter()
            .map(|(path, device, mpb)| LooseSpare {
                path,
                device,
                disk: mpb.disks[0].clone(),
            })
            .collect();
    } else {
        out.extend(group_families(spares));
    }
    out
}

fn group_families(read: Vec<(String, SharedDevice, Mpb)>) -> Vec<Container> {
    let mut order: Vec<u32> = Vec::new();
    let mut groups: BTreeMap<usize, Vec<(String, SharedDevice, Mpb)>> = BTreeMap::new();
    for (name, dev, mpb) in read {
        let i = order
            .iter()
            .position(|f| *f == mpb.family_num)
            .unwrap_or_else(|| {
                order.push(mpb.family_num);
                order.len() - 1
            });
        groups.entry(i).or_default().push((name, dev, mpb));
    }
    groups.into_values().map(container).collect()
}

fn container(group: Vec<(String, SharedDevice, Mpb)>) -> Container {
    // The newest generation speaks for the container; the first seen wins a tie.
    let newest = group
        .iter()
        .enumerate()
        .max_by_key(|(i, (_, _, m))| (m.generation_num, std::cmp::Reverse(*i)))
        .map(|(i, _)| i)
        .unwrap_or(0);
    let mpb = group[newest].2.clone();
    let mut members: Vec<Found> = Vec::new();
    let mut left_out = Vec::new();
    for (path, device, m) in group {
        let serial = device_serial(&path);
        // mdadm may have recorded the device's name instead of its serial.
        let disk = serial
            .as_deref()
            .and_then(|s| mpb.disk_by_serial(s))
            .or_else(|| disk_by_name(&mpb, &path));
        if let Some(d) = disk {
            if let Some(other) = members.iter().find(|f| f.disk == Some(d)) {
                left_out.push((
                    path,
                    format!(
                        "it is disk {d} ({}), which {} is already",
                        mpb.disks[d].serial_string(),
                        other.path
                    ),
                ));
                continue;
            }
        } else if let Some(s) = &serial {
            left_out.push((
                path,
                format!("its serial {s:?} is not in the container's disk table"),
            ));
            continue;
        }
        members.push(Found {
            path,
            device,
            generation: m.generation_num,
            disk,
        });
    }
    // One member not identified and one disk not found: it is that disk.
    let unknown: Vec<usize> = (0..members.len())
        .filter(|&i| members[i].disk.is_none())
        .collect();
    let free: Vec<usize> = (0..mpb.disks.len())
        .filter(|d| members.iter().all(|f| f.disk != Some(*d)))
        .collect();
    if unknown.len() == 1 && free.len() == 1 {
        members[unknown[0]].disk = Some(free[0]);
    }
    let (known, unknown): (Vec<Found>, Vec<Found>) =
        members.into_iter().partition(|f| f.disk.is_some());
    for f in unknown {
        left_out.push((
            f.path,
            "tessera cannot tell which of the container's disks it is: the device has no \
             serial number it can read, and no disk of the table is named after it"
                .to_string(),
        ));
    }
    Container {
        mpb,
        members: known,
        left_out,
        spares: Vec::new(),
    }
}

/// What a volume runs on, when it can run.
#[derive(Clone)]
struct Plan {
    /// The `raid` table row.
    table: String,
    /// The present members' paths and devices.
    devices: Vec<(String, SharedDevice)>,
    /// The member path in each slot of map 0, `None` where it is missing (or being
    /// rebuilt: its data not yet in sync).
    slots: Vec<Option<String>>,
    degraded: bool,
    migrating: bool,
    /// Run writable: the `raid` row with the container's spares, and a spare (or the disk
    /// a rebuild under way is writing to) in the slot being rebuilt.
    write_table: String,
    /// The slot being rebuilt and the device rebuilt onto, when run writable.
    rebuild: Option<(usize, String)>,
    /// Whether the records have a rebuild under way (the one migration tessera continues).
    rebuilding: bool,
}

impl Plan {
    /// Whether tessera may write to it: not in the middle of a migration other than a
    /// rebuild (the records it keeps are the dirty flag, failures and rebuilds).
    fn writable(&self) -> bool {
        !self.migrating || self.rebuilding
    }

    /// The member path in each slot of the writable row (the rebuild's device in its slot).
    fn write_slots(&self) -> Vec<Option<String>> {
        let mut slots = self.slots.clone();
        if let Some((slot, path)) = &self.rebuild {
            slots[*slot] = Some(path.clone());
        }
        slots
    }

    /// Runs the volume: `writable`, the writable row (spares and rebuild included), built
    /// with a registry whose sets keep the records.
    fn activate(
        &self,
        name: &str,
        registry: Arc<TargetRegistry>,
        writable: bool,
    ) -> Result<MappedDevice, String> {
        let text = if writable {
            &self.write_table
        } else {
            &self.table
        };
        let resolve = |path: &str| {
            self.devices
                .iter()
                .find(|(p, _)| p == path)
                .map(|(_, d)| d.clone())
                .ok_or_else(|| not_a_member(path, "the volume"))
        };
        run_raid_table(&name.replace('/', "-"), text, registry, &resolve)
    }
}

/// A volume as read: its node, and how it runs (or why it cannot).
struct VolumeInfo {
    name: String,
    /// Its index among the MPB's volumes.
    index: usize,
    node: Node,
    plan: Result<Plan, String>,
}

impl Container {
    fn label(&self) -> String {
        format!("imsm-{:08x}", self.mpb.family_num)
    }

    /// The member holding disk `index`.
    fn member(&self, index: usize) -> Option<&Found> {
        self.members.iter().find(|f| f.disk == Some(index))
    }

    fn volumes(&self, used: &mut Vec<String>) -> Vec<VolumeInfo> {
        self.mpb
            .devs
            .iter()
            .enumerate()
            .map(|(i, dev)| {
                let mut base = dev.name();
                if base.is_empty() || base.contains('/') {
                    base = format!("{}-{i}", self.label());
                }
                let mut name = format!("md/{base}");
                if used.contains(&name) {
                    name = format!("md/{base}_{:08x}", self.mpb.family_num);
                }
                used.push(name.clone());
                self.volume(name, i, dev)
            })
            .collect()
    }

    fn volume(&self, name: String, index: usize, dev: &Dev) -> VolumeInfo {
        let mut problems = Vec::new();
        let map = &dev.maps[0];
        let level = map.level();
        let n = map.disk_ord_tbl.len();
        let mut missing = Vec::new();
        let mut slots: Vec<Option<&Found>> = Vec::new();
        // A rebuild under way: the slot flagged in map 1, and the disk it writes to.
        let resume = dev.rebuild_slot();
        let mut rebuilding: Option<(usize, &Found)> = None;
        for slot in 0..n {
            let idx = map.disk_index(slot).unwrap_or(u32::MAX) as usize;
            let resumed = resume
                .filter(|&(s, i)| s == slot && i as usize == idx)
                .and_then(|_| self.member(idx));
            let found = if let Some(f) = resumed {
                problems.push(format!(
                    "{name}: slot {slot}: disk {idx} ({}) is being rebuilt, {} of {} sectors done",
                    self.mpb.disks[idx].serial_string(),
                    dev.rebuild_done_sectors().min(member_data_sectors(dev)),
                    member_data_sectors(dev)
                ));
                rebuilding = Some((slot, f));
                slots.push(None);
                continue;
            } else if idx >= self.mpb.disks.len() {
                problems.push(format!(
                    "{name}: map 0 slot {slot} names disk {idx}, but the container's disk table has {} disks",
                    self.mpb.disks.len()
                ));
                None
            } else if self.mpb.disks[idx].is_failed() {
                problems.push(format!(
                    "{name}: slot {slot}: disk {idx} ({}) is marked failed",
                    self.mpb.disks[idx].serial_string()
                ));
                None
            } else if map.rebuilding(slot) {
                problems.push(format!(
                    "{name}: slot {slot}: disk {idx} ({}) is being rebuilt, its data not yet in sync",
                    self.mpb.disks[idx].serial_string()
                ));
                None
            } else {
                let m = self.member(idx);
                if m.is_none() {
                    problems.push(format!(
                        "{name}: slot {slot}: disk {idx} ({}) is missing",
                        self.mpb.disks[idx].serial_string()
                    ));
                }
                m
            };
            if found.is_none() {
                missing.push(slot);
            }
            slots.push(found);
        }
        let mut lost = missing.clone();
        lost.extend(rebuilding.map(|(s, _)| s));
        let survives = match level {
            0 => lost.is_empty(),
            1 => lost.len() < n,
            5 => lost.len() <= 1,
            // Near copies: slots 2k and 2k+1 hold the same chunks.
            10 => (0..n / 2).all(|k| !(lost.contains(&(2 * k)) && lost.contains(&(2 * k + 1)))),
            _ => false,
        };
        let mut state = if rebuilding.is_some() && survives {
            "recovering"
        } else if lost.is_empty() {
            "clean"
        } else if survives {
            "degraded"
        } else {
            "failed"
        };
        // Run writable, a spare takes the first lost slot (when nothing else migrates);
        // the others wait in the row for a member that fails.
        let mut spares = self.spare_candidates(map);
        let rebuild: Option<(usize, String, SharedDevice)> = match rebuilding {
            Some((slot, f)) => Some((slot, f.path.clone(), f.device.clone())),
            None if survives && !dev.is_migrating() && level != 0 && !missing.is_empty() => {
                (!spares.is_empty()).then(|| {
                    let (path, device) = spares.remove(0);
                    (missing[0], path, device)
                })
            }
            None => None,
        };
        let plan = if !matches!(level, 0 | 1 | 5 | 10) {
            Err(format!(
                "raid level {} is not one tessera runs",
                map.raid_level
            ))
        } else if !survives {
            Err(format!(
                "slot(s) {missing:?} of {n} missing, more than raid{level} survives"
            ))
        } else if dev.is_migrating() && dev.migr_type == imsm::MIGR_GEN_MIGR {
            state = "migrating";
            let from = dev.maps.get(1);
            Err(format!(
                "in the middle of a reshape (raid{} over {} to raid{level} over {n}, unit {} done): \
                 tessera cannot run it until mdadm finishes it",
                from.map(|m| m.level()).unwrap_or(0),
                from.map(|m| m.disk_ord_tbl.len()).unwrap_or(0),
                dev.curr_migr_unit
            ))
        } else if dev.is_migrating() && dev.migr_type == imsm::MIGR_INIT && !missing.is_empty() {
            Err(format!(
                "degraded while its {} is unfinished: its parity cannot be trusted",
                dev.migration_name()
            ))
        } else {
            self.table(dev, &slots, rebuild.as_ref(), &spares)
        };
        if dev.is_migrating() && state != "migrating" {
            problems.push(format!(
                "{name}: {} in progress (unit {}); read as it stands",
                dev.migration_name(),
                dev.curr_migr_unit
            ));
        }
        if dev.is_dirty() {
            problems.push(format!("{name}: not shut down cleanly (dirty)"));
        }
        if let Err(e) = &plan {
            problems.push(format!("{name}: cannot start: {e}"));
            if state != "migrating" {
                state = "failed";
            }
        }
        let chunk = u64::from(map.blocks_per_strip) * 512;
        let rebuild_shown = rebuilding.map(|(slot, f)| {
            let total = member_data_sectors(dev);
            let done = dev.rebuild_done_sectors().min(total);
            serde_json::json!({
                "slot": slot,
                "device": f.path,
                "done_sectors": done,
                "total_sectors": total,
                "percent": (done * 1000 / total.max(1)) as f64 / 10.0,
            })
        });
        // Run in the kernel (by mdadm, or by tessera as mdmon): md's own progress.
        let paths: Vec<String> = self.members.iter().map(|f| f.path.clone()).collect();
        let kernel = kernel_subarray(&paths, index);
        let kernel_rebuild = kernel.as_ref().and_then(|k| {
            let (done, total) = k.sync_completed?;
            (k.sync_action == "recover").then(
                || serde_json::json!({ "percent": (done * 1000 / total.max(1)) as f64 / 10.0 }),
            )
        });
        let state_shown = if kernel_rebuild.is_some() {
            "recovering"
        } else {
            state
        };
        // What `md detail` shows, as mdadm --detail shows a subarray.
        let md_detail = {
            let members: Vec<serde_json::Value> = (0..n)
                .map(|slot| {
                    let (device, role) = match (slots.get(slot).copied().flatten(), rebuilding) {
                        (Some(f), _) => (Some(f.path.clone()), "active sync"),
                        (None, Some((s, f))) if s == slot => {
                            (Some(f.path.clone()), "spare rebuilding")
                        }
                        _ => (None, "removed"),
                    };
                    let layout = if level == 10 { 0x102 } else { 0 };
                    let role = match device {
                        Some(_) => mdadm_member_state(level as i32, layout, n, slot, role),
                        None => role.to_string(),
                    };
                    serde_json::json!({ "slot": slot, "device": device, "state": role })
                })
                .collect();
            serde_json::json!({
                "name": dev.name(),
                "metadata": "imsm",
                "container": self.label(),
                "member": index,
                "uuid": self.mpb.volume_uuid(index),
                "level": format!("raid{level}"),
                "layout": match level {
                    5 => Some("left-asymmetric"),
                    10 => Some("near=2"),
                    _ => None,
                },
                "chunk_bytes": if level == 1 { 0 } else { chunk },
                "raid_disks": n,
                "size_bytes": dev.size.saturating_mul(512),
                "state": state_shown,
                "dirty": dev.is_dirty(),
                "rebuild": kernel_rebuild.clone().or_else(|| rebuild_shown.clone()),
                "kernel": kernel.as_ref().map(|k| k.json()),
                "members": members,
                "spares": spares.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(),
            })
        };
        let mut summary = format!(
            "IMSM raid{level} volume {state}, {} of {n} members{}{}",
            n - lost.len(),
            if level == 1 {
                String::new()
            } else {
                format!(", chunk {} KiB", chunk / 1024)
            },
            match &rebuild_shown {
                Some(r) => format!(
                    ", rebuilding slot {} onto {}: {}% done",
                    r["slot"],
                    rebuilding.map(|(_, f)| f.path.as_str()).unwrap_or(""),
                    r["percent"]
                ),
                None => String::new(),
            }
        );
        if let Some(k) = &kernel {
            summary.push_str(&format!(", run by the kernel as {}", k.device));
            if let Some(r) = &kernel_rebuild {
                summary.push_str(&format!(" (recovering, {}% done)", r["percent"]));
            }
        }
        let node = Node {
            kind: "md",
            name: name.clone(),
            size_bytes: dev.size.saturating_mul(512),
            format: None,
            summary,
            state: Some(state.to_string()),
            detail: serde_json::json!({
                "volume": dev.name(),
                "index": index,
                "level": format!("raid{level}"),
                "members": n,
                "missing_slots": missing,
                "rebuild": rebuild_shown,
                "spares": spares.iter().map(|(p, _)| p.clone()).chain(
                    rebuild.as_ref().filter(|_| rebuilding.is_none()).map(|(_, p, _)| p.clone())
                ).collect::<Vec<_>>(),
                "chunk_bytes": chunk,
                "data_offset_sectors": map.pba_of_lba0,
                "blocks_per_member": map.blocks_per_member,
                "map_state": map.state_name(),
                "dirty": dev.is_dirty(),
                "migrating": dev.is_migrating().then(|| dev.migration_name()),
                "container": self.label(),
                "kernel": kernel.as_ref().map(|k| k.json()),
                "md": md_detail,
            }),
            problems,
            children: Vec::new(),
        };
        VolumeInfo {
            name,
            index,
            node,
            plan: plan.map(|mut p| {
                p.degraded = !lost.is_empty();
                p.migrating = dev.is_migrating();
                p.rebuilding = dev.is_rebuilding();
                p
            }),
        }
    }

    /// The devices that can take a lost slot of a volume laid out by `map`: disks of the
    /// table in no slot of it and not failed (a disk that took a lost member's place in
    /// another volume, or a spare of the table), then the spares with records of their own;
    /// each large enough to hold the volume's area.
    fn spare_candidates(&self, map: &imsm::Map) -> Vec<(String, SharedDevice)> {
        let end_bytes = (map.pba_of_lba0 + map.blocks_per_member).saturating_mul(512);
        let in_table = self.members.iter().filter(|f| {
            f.disk.is_some_and(|d| {
                !self.mpb.disks[d].is_failed()
                    && !self.mpb.disks[d].is_journal()
                    && map.slot_of(d as u32).is_none()
            })
        });
        in_table
            .map(|f| (f.path.clone(), f.device.clone()))
            .chain(
                self.spares
                    .iter()
                    .map(|s| (s.path.clone(), s.device.clone())),
            )
            .filter(|(_, d)| d.size_bytes() >= end_bytes)
            .collect()
    }

    /// The `raid` rows running `dev` over the members in `slots`: read-only as they are;
    /// writable with `rebuild` (slot, path, device) in its slot to be rebuilt and `spares`
    /// waiting.
    fn table(
        &self,
        dev: &Dev,
        slots: &[Option<&Found>],
        rebuild: Option<&(usize, String, SharedDevice)>,
        spares: &[(String, SharedDevice)],
    ) -> Result<Plan, String> {
        let map = &dev.maps[0];
        let level = map.level();
        let strip = u64::from(map.blocks_per_strip);
        let chunk = if level == 1 { 0 } else { strip };
        if level != 1 && (strip < 8 || !strip.is_power_of_two()) {
            return Err(format!(
                "blocks_per_strip {strip}: not a chunk size md runs (a power of two of 8 sectors or more)"
            ));
        }
        if dev.size == 0 {
            return Err("its size is 0".into());
        }
        let data = match level {
            0 => n_u64(slots),
            5 => n_u64(slots) - 1,
            10 => n_u64(slots) / 2,
            _ => 1,
        };
        let per_member = dev.size.div_ceil(data.max(1));
        if per_member > map.blocks_per_member {
            return Err(format!(
                "its size {} sectors needs {per_member} sectors of each member, more than \
                 blocks_per_member {}",
                dev.size, map.blocks_per_member
            ));
        }
        for f in slots.iter().flatten() {
            let end = map.pba_of_lba0 + map.blocks_per_member;
            if end * 512 > f.device.size_bytes() {
                return Err(format!(
                    "its area on {} (sectors {} to {end}) runs past the device's end",
                    f.path, map.pba_of_lba0
                ));
            }
        }
        let read_slots: Vec<Option<String>> =
            slots.iter().map(|s| s.map(|f| f.path.clone())).collect();
        let mut write_slots = read_slots.clone();
        let row = |slots: &[Option<String>], rebuild: &[usize], spares: &[String]| {
            RaidRow {
                level: level as i32,
                // IMSM's raid5 is md's left-asymmetric layout, its raid10 two near copies.
                layout: if level == 10 { 0x102 } else { 0 },
                sectors: dev.size,
                chunk_sectors: chunk,
                data_offset_sectors: map.pba_of_lba0,
                slots,
                rebuild,
                spares,
            }
            .text()
        };
        let mut devices: Vec<(String, SharedDevice)> = slots
            .iter()
            .flatten()
            .map(|f| (f.path.clone(), f.device.clone()))
            .collect();
        let mut rebuilt = Vec::new();
        if let Some((slot, path, device)) = rebuild {
            rebuilt.push(*slot);
            write_slots[*slot] = Some(path.clone());
            devices.push((path.clone(), device.clone()));
        }
        let mut waiting = Vec::new();
        for (path, device) in spares {
            waiting.push(path.clone());
            devices.push((path.clone(), device.clone()));
        }
        Ok(Plan {
            table: row(&read_slots, &[], &[])?,
            write_table: row(&write_slots, &rebuilt, &waiting)?,
            devices,
            slots: read_slots,
            degraded: false,
            migrating: false,
            rebuild: rebuild.map(|(s, p, _)| (*s, p.clone())),
            rebuilding: false,
        })
    }

    fn assembly(self, used: &mut Vec<String>) -> Assembly {
        let label = self.label();
        let volumes = self.volumes(used);
        let mut problems = Vec::new();
        let mut places = Vec::new();
        for f in &self.members {
            let d = f.disk.unwrap_or(0);
            let disk = &self.mpb.disks[d];
            let state = if disk.is_failed() {
                "faulty"
            } else if disk.is_spare() && !disk.is_configured() {
                "spare"
            } else {
                "active"
            };
            // (Which disk it is, its probe says already.)
            let note = (f.generation < self.mpb.generation_num).then(|| {
                format!(
                    "generation {}, the container is at {}",
                    f.generation, self.mpb.generation_num
                )
            });
            places.push(Place {
                name: f.path.clone(),
                state: Some(state.into()),
                note,
                problem: None,
            });
        }
        for s in &self.spares {
            places.push(Place {
                name: s.path.clone(),
                state: Some("spare".into()),
                note: Some(format!(
                    "spare {} (its own spare record), in no volume yet",
                    s.disk.serial_string()
                )),
                problem: None,
            });
        }
        for (path, why) in &self.left_out {
            let p = format!("{path}: left out of IMSM container {label}: {why}");
            problems.push(p.clone());
            places.push(Place {
                name: path.clone(),
                state: Some("left out".into()),
                note: None,
                problem: Some(p),
            });
        }
        if let Some(home) = places.first().map(|p| p.name.clone()) {
            for p in places.iter_mut().skip(1) {
                let shown = format!("{label} shown under {home}");
                p.note = Some(match &p.note {
                    Some(n) => format!("{n}; {shown}"),
                    None => shown,
                });
            }
        }
        let missing_disks = (0..self.mpb.disks.len())
            .filter(|&d| self.member(d).is_none() && !self.mpb.disks[d].is_failed())
            .count();
        let state = if missing_disks > 0 || self.mpb.disks.iter().any(|d| d.is_failed()) {
            "degraded"
        } else {
            "complete"
        };
        let summary = format!(
            "IMSM container, family {:08x}, generation {}, {} of {} disks, {} volume(s){}, metadata {}",
            self.mpb.family_num,
            self.mpb.generation_num,
            self.members.len(),
            self.mpb.disks.len(),
            self.mpb.devs.len(),
            match self.spares.len() {
                0 => String::new(),
                k => format!(", {k} spare(s)"),
            },
            self.mpb.version_string()
        );
        let disks: Vec<serde_json::Value> = self
            .mpb
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| {
                serde_json::json!({
                    "serial": d.serial_string(),
                    "status": d.status_name(),
                    "size_bytes": d.total_blocks.saturating_mul(512),
                    "device": self.member(i).map(|f| f.path.clone()),
                })
            })
            .chain(self.spares.iter().map(|s| {
                serde_json::json!({
                    "serial": s.disk.serial_string(),
                    "status": "spare",
                    "size_bytes": s.disk.total_blocks.saturating_mul(512),
                    "device": s.path,
                })
            }))
            .collect();
        let mut node = Node {
            kind: "md",
            name: label.clone(),
            size_bytes: self.members.iter().map(|f| f.device.size_bytes()).sum(),
            format: None,
            summary,
            state: Some(state.into()),
            detail: serde_json::json!({
                "container": "imsm",
                "family": format!("{:08x}", self.mpb.family_num),
                "generation": self.mpb.generation_num,
                "metadata": self.mpb.version_string(),
                "disks": disks,
                // What each volume is, here too: a volume's own node shows what lies on it.
                "volumes": volumes.iter().map(|v| {
                    let mut d = v.node.detail.clone();
                    d["name"] = serde_json::Value::String(v.name.clone());
                    d["size_bytes"] = serde_json::json!(v.node.size_bytes);
                    d["state"] = serde_json::json!(v.node.state);
                    d
                }).collect::<Vec<_>>(),
            }),
            problems,
            children: Vec::new(),
        };
        let shared = records::ContainerRecords::new(
            self.mpb.clone(),
            self.members
                .iter()
                .filter_map(|f| Some((f.disk?, f.path.clone(), f.device.clone())))
                .collect(),
        );
        for s in &self.spares {
            shared.add_spare(s.path.clone(), s.device.clone(), s.disk.clone());
        }
        let sets = SubarraySets::new();
        let mut out: Vec<Box<dyn Volume>> = Vec::new();
        for v in volumes {
            match v.plan {
                Ok(plan) => out.push(Box::new(ImsmVolume {
                    name: v.name,
                    index: v.index,
                    node: v.node,
                    plan,
                    records: shared.clone(),
                    sets: sets.clone(),
                })),
                // A volume that cannot run is shown all the same.
                Err(_) => node.children.push(v.node),
            }
        }
        Assembly {
            node,
            places,
            volumes: out,
        }
    }
}

/// Sectors of each member holding the volume's data (whole chunks), as the raid set
/// rebuilds them.
fn member_data_sectors(dev: &Dev) -> u64 {
    let map = &dev.maps[0];
    let n = map.disk_ord_tbl.len() as u64;
    let data = match map.level() {
        0 => n,
        5 => n.saturating_sub(1),
        10 => n / 2,
        _ => 1,
    };
    let chunk = match map.level() {
        1 => 128,
        _ => u64::from(map.blocks_per_strip).max(1),
    };
    dev.size
        .div_ceil(data.max(1))
        .next_multiple_of(chunk)
        .min(map.blocks_per_member)
}

fn n_u64(slots: &[Option<&Found>]) -> u64 {
    slots.len() as u64
}

/// A volume of a container.
pub struct ImsmVolume {
    name: String,
    index: usize,
    node: Node,
    plan: Plan,
    /// The container's MPB, shared with its other volumes, for running writable.
    records: Arc<records::ContainerRecords>,
    /// The container's volumes running writable: a disk failing in one fails in all.
    sets: Arc<SubarraySets>,
}

impl Volume for ImsmVolume {
    fn module(&self) -> &'static str {
        "imsm"
    }
    fn name(&self) -> String {
        self.name.clone()
    }
    fn dm_name(&self) -> String {
        self.name.replace('/', "-")
    }
    fn shown(&self) -> Shown {
        Shown::Own(self.node.clone())
    }
    fn devices(&self) -> Vec<String> {
        self.plan.devices.iter().map(|(p, _)| p.clone()).collect()
    }
    /// Writable, the volume keeps its dirty flag, failures and rebuild in the container's
    /// MPB: a lost member is recorded failed, and a spare taking its slot recorded before
    /// the volume runs.
    fn activate(&self, registry: Arc<TargetRegistry>, writable: bool) -> Result<Activated, String> {
        if writable && !self.plan.writable() {
            return Err(
                "an IMSM volume in the middle of a migration other than a rebuild runs \
                 read-only only: tessera does not record those as mdmon does (serve --read-only)"
                    .to_string(),
            );
        }
        let mut notes = Vec::new();
        let registry = if writable {
            let records = records::VolumeRecords::new(
                self.records.clone(),
                self.index,
                self.plan.write_slots(),
            );
            let rebuild = self.plan.rebuild.as_ref().map(|(s, p)| (*s, p.as_str()));
            records
                .prepare(rebuild)
                .map_err(|e| format!("recording its members: {e}"))?;
            if let Some((slot, path)) = rebuild {
                notes.push(format!("rebuilding slot {slot} onto {path}"));
            } else if self.plan.degraded {
                notes.push("running degraded: no spare to rebuild onto".to_string());
            }
            self.sets
                .registry(&registry, self.index, Arc::new(records))?
        } else {
            if self.plan.degraded {
                notes.push("running degraded".to_string());
            }
            registry
        };
        let device = self.plan.activate(&self.name, registry, writable)?;
        Ok(Activated { device, notes })
    }
}

#[cfg(test)]
mod tests;
