//! MD RAID: the format module for md's superblocks (0.90, 1.0, 1.1, 1.2). It claims the
//! members, groups them into arrays (the freshest superblock deciding, see [`array`]), and
//! makes each array that can start a volume, `md/NAME`. The array's records while it runs
//! writable are in [`records`]; the verbs that write arrays in [`ops`].

pub mod array;
pub mod force;
pub mod ops;
pub mod records;

use std::sync::Arc;

use tessera_block::SharedDevice;
use tessera_formats::md as md_format;
use tessera_mapper::TargetRegistry;
use tessera_raid::metadata::SetMetadata;

use crate::devices::NamedDevices;
use crate::format::{
    Activated, Assembly, Finding, FormatModule, Inner, Member, Node, Place, Shown, Volume,
};
use array::{Health, LeftOut, MdArray};

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

    /// The arrays on `devs` as devices `md/NAME`: complete ones, and degraded ones when
    /// only reading; not those the kernel runs or a daemon runs already.
    fn stacked_devices(
        &self,
        devs: &NamedDevices,
        write: bool,
        problems: &mut Vec<String>,
    ) -> NamedDevices {
        // Unreadable superblocks are md_scan's to report; here they only leave an array out.
        let (members, _) = array::probe_members(devs.iter().map(|(p, d)| (p, d)));
        if members.is_empty() {
            return Vec::new();
        }
        let registry = crate::format::target_registry();
        let mut out: NamedDevices = Vec::new();
        for array in array::assemble(members) {
            let name = format!("md/{}", array.name);
            let in_kernel = array
                .slots
                .iter()
                .flatten()
                .any(|m| array::kernel_holder(&m.path).is_some());
            if in_kernel || devs.iter().any(|(n, _)| *n == name) {
                continue;
            }
            match array.health() {
                Health::Complete => {}
                Health::Degraded { .. } if !write => {}
                _ => continue,
            }
            match array.activate(&name, registry.clone(), None) {
                Ok(device) => out.push((name, std::sync::Arc::new(device))),
                Err(e) => problems.push(format!("{name}: cannot be put together: {e}")),
            }
        }
        out
    }

    fn assemble(&self, members: Vec<Member>) -> Vec<Assembly> {
        // (An unreadable superblock is already a problem on its device's finding.)
        let (members, _) = array::probe_members(members.iter().map(|m| (&m.name, &m.device)));
        array::assemble(members).into_iter().map(assembly).collect()
    }
}

/// One sentence for a member its array leaves out, the same on the member and the array.
fn left_out_problem(member: &str, array: &str, why: &impl std::fmt::Display) -> String {
    format!("{member}: left out of {array}: {why}")
}

/// An array as a set of the stack: its node, its members' places, and itself as a volume
/// when it can start.
fn assembly(array: MdArray) -> Assembly {
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
    let mut places = Vec::new();
    for m in array.slots.iter().flatten() {
        places.push(Place {
            name: m.path.clone(),
            state: Some("active".into()),
            ..Place::default()
        });
    }
    for m in &array.spares {
        places.push(Place {
            name: m.path.clone(),
            state: Some("spare".into()),
            ..Place::default()
        });
    }
    for (m, why) in &array.left_out {
        let st = match why {
            LeftOut::Stale { .. } => "stale",
            LeftOut::Faulty => "faulty",
            _ => "left out",
        };
        let problem = left_out_problem(&m.path, &name, why);
        node_problems.push(problem.clone());
        places.push(Place {
            name: m.path.clone(),
            state: Some(st.into()),
            problem: Some(problem),
            ..Place::default()
        });
    }
    if let Some(home) = places.first().map(|p| p.name.clone()) {
        for p in places.iter_mut().skip(1) {
            p.note = Some(format!("{name} shown under {home}"));
        }
    }
    let size = array.size_sectors().unwrap_or(0) * 512;
    let mut summary = format!(
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
    let mut detail = serde_json::json!({
        "uuid": array.uuid, "level": array.level_name(), "raid_disks": array.raid_disks,
        "events": array.events, "metadata": array.version.to_string(),
    });
    // An array the kernel runs is read there, not put together a second time.
    let kernel = array
        .slots
        .iter()
        .flatten()
        .find_map(|m| array::kernel_holder(&m.path));
    if let Some(dev) = &kernel {
        summary.push_str(&format!(", running in the kernel as {dev}"));
        detail["kernel_device"] = serde_json::Value::String(dev.clone());
    }
    let node = Node {
        kind: "md",
        name: name.clone(),
        size_bytes: size,
        format: None,
        summary,
        state: Some(state),
        detail,
        problems: node_problems,
        children: Vec::new(),
    };
    let volumes: Vec<Box<dyn Volume>> = if startable {
        vec![Box::new(MdVolume { array, kernel })]
    } else {
        Vec::new()
    };
    Assembly {
        node,
        places,
        volumes,
    }
}

/// An array as a volume.
pub struct MdVolume {
    pub array: MdArray,
    /// The kernel's device for it, when the kernel runs it.
    pub kernel: Option<String>,
}

impl Volume for MdVolume {
    fn module(&self) -> &'static str {
        "md"
    }
    fn name(&self) -> String {
        format!("md/{}", self.array.name)
    }
    fn dm_name(&self) -> String {
        format!("md-{}", self.array.name)
    }
    fn shown(&self) -> Shown {
        Shown::AsSet
    }
    fn listed_as(&self) -> Option<String> {
        self.kernel.clone()
    }
    fn devices(&self) -> Vec<String> {
        self.array
            .slots
            .iter()
            .flatten()
            .chain(&self.array.spares)
            .map(|m| m.path.clone())
            .collect()
    }
    /// Writable, the running set keeps the superblocks and bitmap (see [`records`]); a
    /// degraded array records its missing slots before any write.
    fn activate(&self, registry: Arc<TargetRegistry>, writable: bool) -> Result<Activated, String> {
        let mut array = self.array.clone();
        let records: Option<Arc<dyn SetMetadata>> = if writable {
            if !matches!(array.health(), Health::Complete) {
                array.mark_missing().map_err(|e| e.to_string())?;
            }
            Some(Arc::new(
                records::MdRecords::new(&array).map_err(|e| e.to_string())?,
            ))
        } else {
            // Read-only, the set still reads around the ranges the members' logs record.
            Some(Arc::new(
                records::BadBlockLogs::new(&array).map_err(|e| e.to_string())?,
            ))
        };
        let device = array.activate(&self.dm_name(), registry, records)?;
        // Members left out are problems of the set's node already.
        Ok(Activated {
            device,
            notes: Vec::new(),
        })
    }
}
