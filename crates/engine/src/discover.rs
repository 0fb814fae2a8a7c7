//! Discovery: what every device holds, layer by layer. Each on-disk format is a
//! [`FormatModule`] that looks at one device and says what it found there, and which devices
//! lie inside it (a partition table's partitions); the modules are registered in one place,
//! [`modules`], so a new format is added there and nowhere else. Formats that join several
//! devices into one (MD arrays, LVM2 volume groups) are assembled afterwards from what the
//! modules found, and what they make is probed in turn: disk > partition > array > PV > VG >
//! LV > LUKS or filesystem.

use std::sync::Arc;

use serde::Serialize;
use tessera_block::{BlockDevice, SharedDevice, SliceDevice};
use tessera_formats::lvm2::label::read_label;
use tessera_formats::md as md_format;
use tessera_formats::partition::{self, PartitionTable, Scheme};
use tessera_formats::{luks, signature};
use tessera_mapper::TargetRegistry;

use crate::md::{self as md_model, Health};
use crate::ops::NamedDevices;
use crate::scan;

/// What one format module found on a device.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// blkid's name for the format: gpt, dos, linux_raid_member, LVM2_member, crypto_LUKS,
    /// ext4, xfs, btrfs, swap, vfat; `unknown` for data no module recognises.
    pub format: String,
    /// One line saying what it is.
    pub summary: String,
    /// The format's own facts (uuid, label, version...), for `--json`.
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
    /// What is wrong with it, one sentence each naming the device.
    pub problems: Vec<String>,
}

impl Finding {
    /// A format that is there but cannot be read: what it is, and the problem.
    fn damaged(format: &str, what: &str, problem: String) -> Option<(Finding, Vec<Inner>)> {
        let mut f = Finding::new(format, what);
        f.problems.push(problem);
        Some((f, Vec::new()))
    }

    fn new(format: impl Into<String>, summary: impl Into<String>) -> Finding {
        Finding {
            format: format.into(),
            summary: summary.into(),
            detail: serde_json::Value::Null,
            problems: Vec::new(),
        }
    }
}

/// A device inside another: a partition.
pub struct Inner {
    pub name: String,
    pub device: SharedDevice,
    /// What the holder calls it ("partition 1, Linux RAID").
    pub what: String,
}

/// One on-disk format: recognises itself on a device.
pub trait FormatModule: Send + Sync {
    /// The module's name, for logs.
    fn name(&self) -> &'static str;
    /// Looks at `device`: None when the format is not there; else what was found and the
    /// devices inside it. A damaged format is a finding with problems, never a panic.
    fn probe(&self, name: &str, device: &SharedDevice) -> Option<(Finding, Vec<Inner>)>;
}

/// Every format tessera knows, in the order they are tried: the first that recognises a
/// device claims it. Partition tables come first (a partitioned disk is not itself a
/// member), MD before LVM2 (an MD 1.0 member shows the PV inside at its start), and the
/// filesystem signatures last.
pub fn modules() -> Vec<Box<dyn FormatModule>> {
    vec![
        Box::new(PartitionTables),
        Box::new(MdMembers),
        Box::new(LvmLabels),
        Box::new(LuksHeaders),
        Box::new(Signatures),
    ]
}

/// Partition tables (MBR, GPT): the partitions become devices of their own.
pub struct PartitionTables;

/// A partition's name as the kernel would give it: `sda1`, `loop0p1`, `disk.img1`.
pub fn partition_name(disk: &str, number: u32) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{number}")
    } else {
        format!("{disk}{number}")
    }
}

/// The partition table on `device`, if any.
pub fn read_partition_table(
    name: &str,
    device: &dyn BlockDevice,
) -> Result<Option<PartitionTable>, String> {
    let sectors = device.size_bytes() / 512;
    let reader = |lba: u64, count: u64| -> Option<Vec<u8>> {
        let len = count.checked_mul(512)?;
        let offset = lba.checked_mul(512)?;
        if offset.checked_add(len)? > device.size_bytes() || len > (64 << 20) {
            return None;
        }
        let mut buf = vec![0u8; len as usize];
        device.read_at(&mut buf, offset).ok()?;
        Some(buf)
    };
    partition::read_table(name, sectors, &reader).map_err(|e| e.to_string())
}

impl FormatModule for PartitionTables {
    fn name(&self) -> &'static str {
        "partition-tables"
    }
    fn probe(&self, name: &str, device: &SharedDevice) -> Option<(Finding, Vec<Inner>)> {
        let table = match read_partition_table(name, device.as_ref()) {
            Ok(Some(t)) => t,
            Ok(None) => return None,
            Err(e) => return Finding::damaged("partition table", "a damaged partition table", e),
        };
        let scheme = match table.scheme {
            Scheme::Mbr => "dos",
            Scheme::Gpt => "gpt",
        };
        let mut finding = Finding::new(
            scheme,
            format!("{} partition(s) ({scheme})", table.partitions.len()),
        );
        finding.problems.extend(table.warning.clone());
        let mut inner = Vec::new();
        let mut parts = Vec::new();
        for p in &table.partitions {
            let part_name = partition_name(name, p.number);
            // An extended partition is a container of logical ones, nothing in itself.
            if p.kind == "0x05" || p.kind == "0x0f" || p.kind == "0x85" {
                continue;
            }
            let slice = SliceDevice::new(
                part_name.clone(),
                device.clone(),
                p.start_sector * 512,
                p.sectors * 512,
            );
            parts.push(serde_json::json!({
                "number": p.number, "start_sector": p.start_sector, "sectors": p.sectors,
                "type": p.kind, "name": p.name, "uuid": p.uuid,
            }));
            match slice {
                Some(slice) => inner.push(Inner {
                    name: part_name,
                    device: Arc::new(slice),
                    what: format!("partition {} ({})", p.number, partition_kind(&p.kind)),
                }),
                None => finding.problems.push(format!(
                    "{name}: partition {} lies past the end of the device",
                    p.number
                )),
            }
        }
        finding.detail = serde_json::json!({ "scheme": scheme, "partitions": parts });
        Some((finding, inner))
    }
}

/// A partition type in words, where it is a common one.
fn partition_kind(kind: &str) -> &str {
    match kind.to_ascii_lowercase().as_str() {
        "0x83" | "0fc63daf-8483-4772-8e79-3d69d8477de4" => "Linux filesystem",
        "0xfd" | "a19d880f-05fc-4d3b-a006-743f0f84911e" => "Linux RAID",
        "0x8e" | "e6d6d379-f507-44c2-a23c-238f2a3df928" => "Linux LVM",
        "0x82" | "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f" => "Linux swap",
        "0xef" | "c12a7328-f81f-11d2-ba4b-00a0c93ec93b" => "EFI system",
        "0x07" | "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7" => "basic data",
        _ => kind,
    }
}

/// MD RAID members (superblocks 0.90, 1.0, 1.1, 1.2).
pub struct MdMembers;

impl FormatModule for MdMembers {
    fn name(&self) -> &'static str {
        "md"
    }
    fn probe(&self, _name: &str, device: &SharedDevice) -> Option<(Finding, Vec<Inner>)> {
        match md_format::probe(device.as_ref()) {
            Ok(None) => None,
            Ok(Some((version, sb))) => {
                let array = md_format::name_without_homehost(&sb.name()).to_string();
                let array = if array.is_empty() {
                    sb.uuid_string()
                } else {
                    array
                };
                let role = match sb.role() {
                    md_format::Role::Active(n) => format!("slot {n}"),
                    md_format::Role::Spare => "spare".into(),
                    md_format::Role::Faulty => "faulty".into(),
                    md_format::Role::Journal => "journal".into(),
                };
                let mut f = Finding::new(
                    "linux_raid_member",
                    format!(
                        "MD {version} member of md/{array}, {role}, events {}",
                        sb.events()
                    ),
                );
                f.detail = serde_json::json!({
                    "metadata": version.to_string(), "array": array, "uuid": sb.uuid_string(),
                    "role": role, "events": sb.events(),
                });
                Some((f, Vec::new()))
            }
            Err(e) => Finding::damaged(
                "linux_raid_member",
                "an MD superblock that cannot be read",
                e.to_string(),
            ),
        }
    }
}

/// LVM2 physical volume labels.
pub struct LvmLabels;

impl FormatModule for LvmLabels {
    fn name(&self) -> &'static str {
        "lvm2"
    }
    fn probe(&self, _name: &str, device: &SharedDevice) -> Option<(Finding, Vec<Inner>)> {
        match read_label(device.as_ref()) {
            Ok(None) => None,
            Ok(Some(label)) => {
                let mut f = Finding::new("LVM2_member", format!("LVM2 PV {}", label.pv_id));
                f.detail = serde_json::json!({
                    "pv_uuid": label.pv_id.to_string(),
                    "metadata_areas": label.metadata_areas.len(),
                });
                Some((f, Vec::new()))
            }
            Err(e) => Finding::damaged(
                "LVM2_member",
                "an LVM2 label that cannot be read",
                e.to_string(),
            ),
        }
    }
}

/// LUKS1 and LUKS2 headers: recognised and described; opening them comes later.
pub struct LuksHeaders;

impl FormatModule for LuksHeaders {
    fn name(&self) -> &'static str {
        "luks"
    }
    fn probe(&self, _name: &str, device: &SharedDevice) -> Option<(Finding, Vec<Inner>)> {
        match luks::read_header(device.as_ref()) {
            Ok(None) => None,
            Ok(Some(h)) => {
                let mut summary = format!(
                    "LUKS{}, {} {}-bit, {} key slot(s)",
                    h.version,
                    h.cipher,
                    h.key_bytes * 8,
                    h.active_keyslots.len()
                );
                if !h.label.is_empty() {
                    summary.push_str(&format!(", label '{}'", h.label));
                }
                summary.push_str(", locked");
                let mut f = Finding::new("crypto_LUKS", summary);
                f.detail = serde_json::json!({
                    "version": h.version, "uuid": h.uuid, "label": h.label,
                    "cipher": h.cipher, "key_bits": h.key_bytes * 8,
                    "data_offset_bytes": h.data_offset_bytes,
                    "active_keyslots": h.active_keyslots,
                });
                f.problems.extend(h.warning.clone());
                Some((f, Vec::new()))
            }
            Err(e) => Finding::damaged(
                "crypto_LUKS",
                "a LUKS header that cannot be read",
                e.to_string(),
            ),
        }
    }
}

/// Filesystems and swap, found by their signatures as blkid finds them; and data that no
/// module recognises.
pub struct Signatures;

/// Signatures that stand for a whole format on the device (the others are claimed by the
/// modules before this one).
const CONTENT: [&str; 9] = [
    "ext2",
    "ext3",
    "ext4",
    "jbd",
    "xfs",
    "btrfs",
    "swap",
    "vfat",
    "crypto_LUKS",
];

impl FormatModule for Signatures {
    fn name(&self) -> &'static str {
        "signatures"
    }
    fn probe(&self, name: &str, device: &SharedDevice) -> Option<(Finding, Vec<Inner>)> {
        let found = match signature::probe(device.as_ref()) {
            Ok(found) => found,
            Err(e) => return Finding::damaged("unreadable", "cannot be read", e.to_string()),
        };
        let content: Vec<_> = found.iter().filter(|s| CONTENT.contains(&s.kind)).collect();
        if let Some(first) = content.first() {
            let mut f = Finding::new(first.kind, first.to_string());
            if !first.detail.is_empty() {
                f.summary = format!("{} ({})", first.kind, first.detail);
            }
            f.detail = serde_json::json!({ "offset": first.offset, "detail": first.detail });
            for other in &content[1..] {
                if other.kind != first.kind {
                    f.problems.push(format!(
                        "{name}: also holds {other}: two formats claim this device"
                    ));
                }
            }
            return Some((f, Vec::new()));
        }
        // Anything but zeroes in the first 64 KiB is data nobody claims.
        let len = device.size_bytes().min(64 << 10) as usize;
        let mut head = vec![0u8; len];
        if let Err(e) = device.read_at(&mut head, 0) {
            return Finding::damaged("unreadable", "cannot be read", e.to_string());
        }
        let first = head.iter().position(|&b| b != 0)?;
        let mut f = Finding::new("unknown", "data in no format tessera knows");
        f.problems.push(format!(
            "{name}: unknown signature: data from byte {first} that no format tessera knows claims"
        ));
        Some((f, Vec::new()))
    }
}

/// A device with what the modules found on it, and the devices inside it.
pub struct Probed {
    pub name: String,
    pub device: SharedDevice,
    /// What its holder calls it (for partitions).
    pub what: Option<String>,
    pub finding: Option<Finding>,
    pub inner: Vec<Probed>,
}

/// Probes each device with `modules`, and the devices inside them in turn. A device that
/// is also listed on its own (the kernel's partition of a listed disk) is probed once, as
/// the inner device, and opened as listed.
pub fn probe_tree(devices: &NamedDevices, modules: &[Box<dyn FormatModule>]) -> Vec<Probed> {
    let mut nested = std::collections::HashSet::new();
    let mut roots: Vec<Probed> = devices
        .iter()
        .map(|(name, device)| {
            probe_one(name, device.clone(), None, devices, modules, &mut nested, 0)
        })
        .collect();
    roots.retain(|p| !nested.contains(&p.name));
    roots
}

fn probe_one(
    name: &str,
    device: SharedDevice,
    what: Option<String>,
    listed: &NamedDevices,
    modules: &[Box<dyn FormatModule>],
    nested: &mut std::collections::HashSet<String>,
    depth: usize,
) -> Probed {
    let mut found = None;
    let mut inner = Vec::new();
    for module in modules {
        if let Some((finding, devices)) = module.probe(name, &device) {
            tracing::debug!(device = name, module = module.name(), "{}", finding.summary);
            found = Some(finding);
            // Partitions inside partitions go no deeper than the kernel's own limit of one
            // nesting (an extended partition's logical ones are not read yet).
            if depth < 4 {
                for d in devices {
                    let dev = match listed.iter().find(|(n, _)| *n == d.name) {
                        Some((_, listed_dev)) => {
                            nested.insert(d.name.clone());
                            listed_dev.clone()
                        }
                        None => d.device,
                    };
                    inner.push(probe_one(
                        &d.name,
                        dev,
                        Some(d.what),
                        listed,
                        modules,
                        nested,
                        depth + 1,
                    ));
                }
            }
            break;
        }
    }
    Probed {
        name: name.to_string(),
        device,
        what,
        finding: found,
        inner,
    }
}

impl Probed {
    /// The devices that hold no devices of their own: where arrays and PVs live.
    pub fn leaves<'a>(&'a self, out: &mut Vec<&'a Probed>) {
        if self.inner.is_empty() {
            out.push(self);
        } else {
            for p in &self.inner {
                p.leaves(out);
            }
        }
    }
    fn format(&self) -> Option<&str> {
        self.finding.as_ref().map(|f| f.format.as_str())
    }
}

/// One node of the stack as `tessera show` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// disk, partition, md, vg or lv.
    pub kind: &'static str,
    pub name: String,
    pub size_bytes: u64,
    /// What lies on it (a Finding's format), if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// What it is, in words.
    pub summary: String,
    /// clean, degraded, failed (arrays); complete, partial (VGs); active, spare, stale
    /// (members); empty (a device with nothing on it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
    pub problems: Vec<String>,
    pub children: Vec<Node>,
}

/// Everything discovery found: the stack as trees from each disk, and every problem.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub devices: Vec<Node>,
    pub problems: Vec<String>,
}

impl Report {
    /// Every node, depth first, with its depth.
    pub fn walk(&self) -> Vec<(usize, &Node)> {
        fn go<'a>(n: &'a Node, depth: usize, out: &mut Vec<(usize, &'a Node)>) {
            out.push((depth, n));
            for c in &n.children {
                go(c, depth + 1, out);
            }
        }
        let mut out = Vec::new();
        for n in &self.devices {
            go(n, 0, &mut out);
        }
        out
    }
}

/// Discovers the whole stack on `devices`: probes them, assembles the MD arrays their
/// members make (read-only, in user space, degraded where the level allows) and probes
/// those, reads the VGs on every PV found (on disks, partitions or arrays), and probes each
/// LV's contents. Writes nothing.
pub fn discover(devices: &NamedDevices, mut problems: Vec<String>) -> Report {
    let modules = modules();
    let registry = {
        let mut r = TargetRegistry::new();
        tessera_raid::register(&mut r);
        Arc::new(r)
    };
    let mut trees = probe_tree(devices, &modules);

    // Arrays from the MD members among the leaves.
    let mut leaves = Vec::new();
    for t in &trees {
        t.leaves(&mut leaves);
    }
    // (An unreadable superblock is already a problem on its device's finding.)
    let (members, _) = md_model::probe_members(
        leaves
            .iter()
            .filter(|leaf| leaf.format() == Some("linux_raid_member"))
            .map(|leaf| (&leaf.name, &leaf.device)),
    );
    drop(leaves);
    let arrays = md_model::assemble(members);
    let mut member_state: std::collections::HashMap<String, (String, String, Option<String>)> =
        Default::default();
    let mut array_nodes: Vec<Node> = Vec::new();
    let mut array_trees: Vec<(String, Probed)> = Vec::new();
    for array in &arrays {
        let name = format!("md/{}", array.name);
        let mut node_problems = Vec::new();
        let (state, startable) = match array.health() {
            Health::Complete => ("clean".to_string(), true),
            Health::Degraded { missing } => {
                node_problems.push(format!(
                    "{name}: degraded: slot(s) {missing:?} of {} missing; it starts only when asked (--degraded)",
                    array.raid_disks
                ));
                ("degraded".to_string(), true)
            }
            Health::Failed { missing, tolerated } => {
                node_problems.push(format!(
                    "{name}: cannot start: slot(s) {missing:?} missing and {} survives {tolerated}",
                    array.level_name()
                ));
                ("failed".to_string(), false)
            }
        };
        for (slot, m) in array.slots.iter().enumerate() {
            if let Some(m) = m {
                member_state.insert(
                    m.path.clone(),
                    (name.clone(), "active".into(), Some(format!("slot {slot}"))),
                );
            }
        }
        for m in &array.spares {
            member_state.insert(m.path.clone(), (name.clone(), "spare".into(), None));
        }
        for (m, why) in &array.left_out {
            let st = match why {
                md_model::LeftOut::Stale { .. } => "stale",
                md_model::LeftOut::Faulty => "faulty",
                _ => "left out",
            };
            member_state.insert(
                m.path.clone(),
                (name.clone(), st.into(), Some(why.to_string())),
            );
            node_problems.push(left_out_problem(&m.path, &name, why));
        }
        let size = array.size_sectors().unwrap_or(0) * 512;
        let summary = format!(
            "MD {} {}, {} of {} members{}, metadata {}",
            array.level_name(),
            state,
            array.slots.iter().flatten().count(),
            array.raid_disks,
            if array.spares.is_empty() {
                String::new()
            } else {
                format!(", {} spare(s)", array.spares.len())
            },
            array.version
        );
        problems.extend(node_problems.iter().cloned());
        let mut node = Node {
            kind: "md",
            name: name.clone(),
            size_bytes: size,
            format: None,
            summary,
            state: Some(state),
            detail: serde_json::json!({
                "uuid": array.uuid, "level": array.level_name(), "raid_disks": array.raid_disks,
                "events": array.events, "metadata": array.version.to_string(),
            }),
            problems: node_problems,
            children: Vec::new(),
        };
        // An array the kernel runs is read there, not put together a second time.
        let kernel = array
            .slots
            .iter()
            .flatten()
            .find_map(|m| kernel_holder(&m.path))
            .and_then(|dev| trees.iter().position(|t| t.name == dev));
        if let Some(index) = kernel {
            let tree = trees.remove(index);
            node.summary
                .push_str(&format!(", running in the kernel as {}", tree.name));
            node.detail["kernel_device"] = serde_json::Value::String(tree.name.clone());
            node.size_bytes = tree.device.size_bytes();
            array_trees.push((name.clone(), tree));
            array_nodes.push(node);
            continue;
        }
        if startable {
            match array.activate(&name, registry.clone(), None) {
                Ok(device) => {
                    let device: SharedDevice = Arc::new(device);
                    // The probed tree keeps the array running while what is on it is read.
                    let probed = probe_tree(&vec![(name.clone(), device)], &modules);
                    if let Some(p) = probed.into_iter().next() {
                        array_trees.push((name.clone(), p));
                    }
                }
                Err(e) => problems.push(format!("{name}: cannot be read: {e}")),
            }
        }
        array_nodes.push(node);
    }

    // The VGs on every PV: leaves of the disks and of the arrays.
    let mut leaves = Vec::new();
    for t in &trees {
        t.leaves(&mut leaves);
    }
    let mut pv_devices: NamedDevices = Vec::new();
    for leaf in &leaves {
        if leaf.format() == Some("LVM2_member") {
            pv_devices.push((leaf.name.clone(), leaf.device.clone()));
        }
    }
    for (_, tree) in &array_trees {
        let mut l = Vec::new();
        tree.leaves(&mut l);
        for leaf in l {
            if leaf.format() == Some("LVM2_member") {
                pv_devices.push((leaf.name.clone(), leaf.device.clone()));
            }
        }
    }
    let lvm = scan::scan(&pv_devices);
    problems.extend(lvm.problems.iter().cloned());
    let mut vg_nodes: Vec<(Vec<String>, Node)> = Vec::new();
    for state in lvm.vgs.values() {
        let vg = &state.vg;
        let name = vg.name.clone();
        let mut node_problems = Vec::new();
        // The scan names each missing PV; those sentences belong to this VG's node.
        let prefix = format!("VG '{name}': PV ");
        node_problems.extend(
            lvm.problems
                .iter()
                .filter(|p| p.starts_with(&prefix) && p.ends_with("is missing"))
                .cloned(),
        );
        for stale in &state.stale {
            node_problems.push(format!(
                "VG {name}: {stale} holds an older copy of the metadata; the next change rewrites it"
            ));
        }
        let size = vg.pe_total() * vg.extent_size_bytes();
        let visible: Vec<_> = vg.lvs.iter().filter(|lv| lv.is_visible()).collect();
        let mut children = Vec::new();
        for lv in &visible {
            let lv_name = format!("{}/{}", vg.name, lv.name);
            let kind = lv
                .segments
                .first()
                .map(|s| s.type_name().to_string())
                .unwrap_or_default();
            let size = lv.extent_count() * vg.extent_size_bytes();
            let mut node = Node {
                kind: "lv",
                name: lv_name.clone(),
                size_bytes: size,
                format: None,
                summary: format!("LV, {kind}, {} segment(s)", lv.segments.len()),
                state: None,
                detail: serde_json::json!({ "uuid": lv.id.to_string(), "segtype": kind }),
                problems: Vec::new(),
                children: Vec::new(),
            };
            match crate::activate::activate_lv_with(&lvm, state, &lv.name, registry.clone(), true) {
                Ok((device, notes)) => {
                    node.problems
                        .extend(notes.into_iter().map(|n| format!("{lv_name}: {n}")));
                    let device: SharedDevice = Arc::new(device);
                    let probed = probe_tree(&vec![(lv_name.clone(), device.clone())], &modules);
                    if let Some(p) = probed.into_iter().next() {
                        fill(&mut node, &p);
                    }
                    // Readable, with nothing on it or something; in a partial VG, say so.
                    let what = if node.format.is_some() {
                        "readable"
                    } else {
                        "empty"
                    };
                    node.state = Some(if state.missing.is_empty() {
                        what.to_string()
                    } else {
                        format!("{what}, partial VG")
                    });
                }
                Err(crate::EngineError::VgPartial { list, .. }) => {
                    node.state = Some("unreadable".into());
                    node.problems.push(format!(
                        "{lv_name}: cannot be read: it lies on a missing PV: {list}"
                    ));
                }
                Err(e) => {
                    node.state = Some("unreadable".into());
                    node.problems
                        .push(format!("{lv_name}: cannot be read: {e}"));
                }
            }
            problems.extend(node.problems.iter().cloned());
            children.push(node);
        }
        problems.extend(node_problems.iter().cloned());
        let pvs: Vec<String> = state
            .present
            .values()
            .map(|&i| lvm.pvs[i].path.clone())
            .collect();
        vg_nodes.push((
            pvs,
            Node {
                kind: "vg",
                name: name.clone(),
                size_bytes: size,
                format: None,
                summary: format!(
                    "VG, {} PV(s){}, {} LV(s), {} of {} extents free, seqno {}",
                    vg.pvs.len(),
                    if state.missing.is_empty() {
                        String::new()
                    } else {
                        format!(" ({} missing)", state.missing.len())
                    },
                    visible.len(),
                    vg.pe_free_total(),
                    vg.pe_total(),
                    vg.seqno
                ),
                state: Some(
                    if state.missing.is_empty() {
                        "complete"
                    } else {
                        "partial"
                    }
                    .into(),
                ),
                detail: serde_json::json!({
                    "uuid": vg.id.to_string(), "extent_bytes": vg.extent_size_bytes(),
                    "pv_count": vg.pvs.len(), "missing_pvs": state.missing,
                }),
                problems: node_problems,
                children,
            },
        ));
    }

    // Put the layers together: each device's node gets the arrays its members make, each
    // PV the VG it belongs to.
    let attach =
        |node: &mut Node| attach_layers(node, &member_state, &array_nodes, &array_trees, &vg_nodes);
    let mut roots: Vec<Node> = trees
        .iter()
        .map(|t| {
            let mut n = to_node(t, "disk");
            attach(&mut n);
            n
        })
        .collect();
    roots.sort_by(|a, b| a.name.cmp(&b.name));
    for n in &roots {
        collect_problems(n, &mut problems);
    }
    problems.sort();
    problems.dedup();
    Report {
        devices: roots,
        problems,
    }
}

/// One sentence for a member its array leaves out, the same on the member and the array.
fn left_out_problem(member: &str, array: &str, why: &impl std::fmt::Display) -> String {
    format!("{member}: left out of {array}: {why}")
}

/// The kernel's md device (`/dev/md127`) holding block device `member`, if one does.
pub fn kernel_holder(member: &str) -> Option<String> {
    let real = std::fs::canonicalize(member).ok()?;
    let base = real.file_name()?.to_string_lossy().into_owned();
    std::fs::read_dir(format!("/sys/class/block/{base}/holders"))
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|h| h.starts_with("md"))
        .map(|h| format!("/dev/{h}"))
}

fn collect_problems(n: &Node, out: &mut Vec<String>) {
    out.extend(n.problems.iter().cloned());
    for c in &n.children {
        collect_problems(c, out);
    }
}

/// A probed device as a node (without the layers assembled from several devices).
fn to_node(p: &Probed, kind: &'static str) -> Node {
    let mut node = Node {
        kind,
        name: p.name.clone(),
        size_bytes: p.device.size_bytes(),
        format: None,
        summary: String::new(),
        state: None,
        detail: serde_json::Value::Null,
        problems: Vec::new(),
        children: Vec::new(),
    };
    fill(&mut node, p);
    node
}

/// Puts what the modules found on `p` into `node`, with its inner devices as children.
fn fill(node: &mut Node, p: &Probed) {
    match &p.finding {
        Some(f) => {
            node.format = Some(f.format.clone());
            node.summary = match &p.what {
                Some(what) => format!("{what}: {}", f.summary),
                None => f.summary.clone(),
            };
            node.detail = f.detail.clone();
            node.problems.extend(f.problems.iter().cloned());
        }
        None => {
            if let Some(what) = &p.what {
                node.summary = what.clone();
            }
            node.state = Some("empty".into());
        }
    }
    for inner in &p.inner {
        node.children.push(to_node(inner, "partition"));
    }
}

fn attach_layers(
    node: &mut Node,
    members: &std::collections::HashMap<String, (String, String, Option<String>)>,
    arrays: &[Node],
    array_trees: &[(String, Probed)],
    vgs: &[(Vec<String>, Node)],
) {
    for c in &mut node.children {
        attach_layers(c, members, arrays, array_trees, vgs);
    }
    if let Some((array, state, why)) = members.get(&node.name) {
        node.state = Some(state.clone());
        if state != "active" && state != "spare" {
            if let Some(why) = why {
                node.problems.push(left_out_problem(&node.name, array, why));
            }
        }
        if let Some(made) = arrays.iter().find(|n| n.name == *array) {
            let mut child = made.clone();
            if let Some((_, tree)) = array_trees.iter().find(|(n, _)| n == array) {
                let inner = to_node(tree, "md");
                child.format = inner.format;
                if !inner.summary.is_empty() && inner.summary != child.summary {
                    child.summary = format!("{}; holds {}", child.summary, inner.summary);
                }
                child.problems.extend(inner.problems);
                child.children = inner.children;
                if child.detail.is_object() && !inner.detail.is_null() {
                    child.detail["content"] = inner.detail;
                }
            }
            attach_layers(&mut child, members, arrays, array_trees, vgs);
            node.children.push(child);
        }
    }
    if node.format.as_deref() == Some("LVM2_member") {
        if let Some((_, vg)) = vgs.iter().find(|(pvs, _)| pvs.contains(&node.name)) {
            node.summary = format!("{}, in VG {}", node.summary, vg.name);
            node.children.push(vg.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_block::MemoryDevice;

    fn mbr_disk(parts: &[(u8, u32, u32)]) -> MemoryDevice {
        let dev = MemoryDevice::new("disk", 64 << 20);
        let mut mbr = [0u8; 512];
        for (i, (kind, start, sectors)) in parts.iter().enumerate() {
            let e = 446 + 16 * i;
            mbr[e + 4] = *kind;
            mbr[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
            mbr[e + 12..e + 16].copy_from_slice(&sectors.to_le_bytes());
        }
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        dev.write_at(&mbr, 0).unwrap();
        dev
    }

    #[test]
    fn partitions_are_probed_as_devices() {
        let dev = mbr_disk(&[(0x82, 2048, 20480), (0x83, 22528, 20480)]);
        // Swap in partition 1, zeroes in partition 2.
        dev.write_at(b"SWAPSPACE2", 2048 * 512 + 4086).unwrap();
        let devices: NamedDevices = vec![("disk".into(), Arc::new(dev))];
        let report = discover(&devices, Vec::new());
        let disk = &report.devices[0];
        assert_eq!(disk.format.as_deref(), Some("dos"));
        assert_eq!(disk.children.len(), 2);
        assert_eq!(disk.children[0].name, "disk1");
        assert_eq!(disk.children[0].kind, "partition");
        assert_eq!(disk.children[0].format.as_deref(), Some("swap"));
        assert_eq!(disk.children[0].size_bytes, 20480 * 512);
        assert_eq!(disk.children[1].state.as_deref(), Some("empty"));
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }

    #[test]
    fn a_damaged_table_and_unknown_data_are_named() {
        let dev = mbr_disk(&[(0x83, 2048, 1 << 30)]);
        let junk = MemoryDevice::new("junk", 1 << 20);
        junk.write_at(&[0x5a; 16], 8192).unwrap();
        let devices: NamedDevices = vec![
            ("disk".into(), Arc::new(dev)),
            ("junk".into(), Arc::new(junk)),
        ];
        let report = discover(&devices, Vec::new());
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.contains("disk") && p.contains("past the disk")),
            "{:?}",
            report.problems
        );
        assert!(
            report.problems.iter().any(|p| p.contains("junk")
                && p.contains("unknown signature")
                && p.contains("8192")),
            "{:?}",
            report.problems
        );
    }

    #[test]
    fn a_partition_listed_on_its_own_is_probed_once_under_its_disk() {
        let disk = mbr_disk(&[(0x82, 2048, 20480)]);
        // The kernel's partition device: its own node, the same bytes.
        let part = MemoryDevice::new("disk1", 20480 * 512);
        part.write_at(b"SWAPSPACE2", 4086).unwrap();
        let devices: NamedDevices = vec![
            ("disk".into(), Arc::new(disk)),
            ("disk1".into(), Arc::new(part)),
        ];
        let report = discover(&devices, Vec::new());
        assert_eq!(report.devices.len(), 1, "{:#?}", report.devices);
        let p = &report.devices[0].children[0];
        assert_eq!(p.name, "disk1");
        // Read through the listed device (the slice of the disk holds no swap).
        assert_eq!(p.format.as_deref(), Some("swap"));
    }

    #[test]
    fn partition_names_follow_the_kernel() {
        assert_eq!(partition_name("/dev/sda", 1), "/dev/sda1");
        assert_eq!(partition_name("/dev/loop0", 2), "/dev/loop0p2");
        assert_eq!(partition_name("/dev/nvme0n1", 3), "/dev/nvme0n1p3");
        assert_eq!(partition_name("d/disk.img", 1), "d/disk.img1");
    }
}
