//! Discovery: what every device holds, layer by layer, through the format modules alone
//! (see [`crate::format`]). Each device is probed by every module until one claims it;
//! the devices inside it (partitions) are probed in turn. Then each module assembles the
//! devices it claimed into sets (an array, a VG), each set's volumes are activated
//! read-only and probed, and what they hold joins the next modules' members: disk >
//! partition > array > PV > VG > LV > LUKS or filesystem. Nothing here names a format.

use std::sync::Arc;

use serde::Serialize;
use tessera_block::SharedDevice;

use crate::devices::NamedDevices;
pub use crate::format::Node;
use crate::format::{self, Finding, FormatModule, Member, Place, Shown, Volume};

/// How many layers of sets discovery follows (an array holding a PV whose VG holds an LV
/// that is another array's member is three).
const MAX_LAYERS: usize = 4;

/// A device with what the modules found on it, and the devices inside it.
pub struct Probed {
    pub name: String,
    pub device: SharedDevice,
    /// What its holder calls it (for partitions).
    pub what: Option<String>,
    pub finding: Option<Finding>,
    /// The index of the module that claimed it, in the list it was probed with.
    pub module: Option<usize>,
    pub inner: Vec<Probed>,
}

/// Probes each device with `modules`, and the devices inside them in turn. A device that
/// is also listed on its own (the kernel's partition of a listed disk) is probed once, as
/// the inner device, and opened as listed.
pub fn probe_tree(devices: &NamedDevices, modules: &[Arc<dyn FormatModule>]) -> Vec<Probed> {
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
    modules: &[Arc<dyn FormatModule>],
    nested: &mut std::collections::HashSet<String>,
    depth: usize,
) -> Probed {
    let mut found = None;
    let mut claimed = None;
    let mut inner = Vec::new();
    // Leftover metadata: two formats on one device. The one blkid and mdadm take is the
    // one claimed, though a module tried earlier also answers; the others are named.
    let conflict = crate::conflict::conflict_on(name, &device);
    for (index, module) in modules.iter().enumerate() {
        if let Some((mut finding, mut devices)) = module.probe(name, &device) {
            let mut index = index;
            if let Some(c) = &conflict {
                let Some(taken) = c.taken_kind() else {
                    found = Some(crate::conflict::ambivalent(name, c));
                    break;
                };
                if finding.format != taken {
                    let later = modules.iter().enumerate().skip(index + 1);
                    for (other, module) in later {
                        if let Some((f, d)) = module.probe(name, &device) {
                            if f.format == taken {
                                (index, finding, devices) = (other, f, d);
                                break;
                            }
                        }
                    }
                }
                crate::conflict::note_conflict(name, c, &mut finding);
            }
            let module = &modules[index];
            tracing::debug!(device = name, module = module.name(), "{}", finding.summary);
            found = Some(finding);
            claimed = Some(index);
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
        module: claimed,
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
    /// The leaves a module claimed, as members for it to assemble.
    fn claimed_leaves(&self, out: &mut Vec<(usize, Member)>) {
        let mut leaves = Vec::new();
        self.leaves(&mut leaves);
        for leaf in leaves {
            if let (Some(module), Some(finding)) = (leaf.module, &leaf.finding) {
                out.push((
                    module,
                    Member {
                        name: leaf.name.clone(),
                        device: leaf.device.clone(),
                        finding: finding.clone(),
                    },
                ));
            }
        }
    }
}

/// Everything discovery found: the stack as trees from each disk, and every problem.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
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

/// A volume of a set, and what was found on it.
struct VolumeRead {
    volume: Box<dyn Volume>,
    /// What lies on it, when it could be read.
    tree: Option<Probed>,
    /// What it runs without (an image left out).
    notes: Vec<String>,
    /// Why it could not be read.
    error: Option<String>,
}

/// A set a module assembled, with its volumes read.
struct Set {
    node: Node,
    places: Vec<Place>,
    volumes: Vec<VolumeRead>,
}

/// The whole stack: the probed devices and the sets assembled from them, layer by layer.
pub struct Stack {
    trees: Vec<Probed>,
    sets: Vec<Set>,
    /// (listed device, set): a set read through a device the kernel runs it as
    /// (`/dev/md127` for `md/NAME`); members of the next layer (the PV on it) are named by
    /// the device.
    aliases: Vec<(String, String)>,
}

impl Stack {
    /// Probes `devices` with `modules`, and assembles and reads the sets they make. Every
    /// volume is activated read-only; nothing is written.
    pub fn build(devices: &NamedDevices, modules: &[Arc<dyn FormatModule>]) -> Stack {
        let registry = format::target_registry();
        let mut trees = probe_tree(devices, modules);
        let mut pending = Vec::new();
        for t in &trees {
            t.claimed_leaves(&mut pending);
        }
        let mut sets = Vec::new();
        let mut aliases = Vec::new();
        for _ in 0..MAX_LAYERS {
            if pending.is_empty() {
                break;
            }
            for (index, module) in modules.iter().enumerate() {
                let (mine, rest): (Vec<_>, Vec<_>) =
                    pending.into_iter().partition(|(m, _)| *m == index);
                pending = rest;
                if mine.is_empty() {
                    continue;
                }
                let members = mine.into_iter().map(|(_, m)| m).collect();
                for assembly in module.assemble(members) {
                    let mut volumes = Vec::new();
                    for volume in assembly.volumes {
                        // A volume the kernel runs already is listed: read it there. Its
                        // leaves were members from the start.
                        let listed = volume
                            .listed_as()
                            .and_then(|dev| trees.iter().position(|t| t.name == dev));
                        let read = match listed {
                            Some(i) => {
                                aliases.push((trees[i].name.clone(), assembly.node.name.clone()));
                                VolumeRead {
                                    volume,
                                    tree: Some(trees.remove(i)),
                                    notes: Vec::new(),
                                    error: None,
                                }
                            }
                            None => read_volume(volume, registry.clone(), modules, &mut pending),
                        };
                        volumes.push(read);
                    }
                    sets.push(Set {
                        node: assembly.node,
                        places: assembly.places,
                        volumes,
                    });
                }
            }
        }
        Stack {
            trees,
            sets,
            aliases,
        }
    }

    /// Every volume of every set, in the order they were assembled.
    pub fn into_volumes(self) -> Vec<Box<dyn Volume>> {
        self.sets
            .into_iter()
            .flat_map(|s| s.volumes.into_iter().map(|v| v.volume))
            .collect()
    }

    /// The stack as trees from each device, with every problem.
    pub fn report(&self, mut problems: Vec<String>) -> Report {
        let mut shown = vec![false; self.sets.len()];
        let mut roots: Vec<Node> = self
            .trees
            .iter()
            .map(|t| {
                let mut n = to_node(t, "disk");
                self.attach(&mut n, &mut shown);
                n
            })
            .collect();
        roots.sort_by(|a, b| a.name.cmp(&b.name));
        for n in &roots {
            collect_problems(n, &mut problems);
        }
        // Sets shown nowhere (problems that belong to no device) are listed all the same.
        for (set, shown) in self.sets.iter().zip(&shown) {
            if !shown {
                problems.extend(set.node.problems.iter().cloned());
            }
        }
        problems.sort();
        problems.dedup();
        Report {
            devices: roots,
            problems,
        }
    }

    /// Gives `node` (and its children) their places in the sets they are members of, and
    /// puts each set under the member it is shown under.
    fn attach(&self, node: &mut Node, shown: &mut [bool]) {
        for c in &mut node.children {
            self.attach(c, shown);
        }
        for (index, set) in self.sets.iter().enumerate() {
            for (i, place) in set.places.iter().enumerate() {
                if place.name != node.name && !self.is_alias(&place.name, &node.name) {
                    continue;
                }
                if let Some(state) = &place.state {
                    node.state = Some(state.clone());
                }
                if let Some(note) = &place.note {
                    node.summary = format!("{}, {note}", node.summary);
                }
                node.problems.extend(place.problem.clone());
                if i == 0 && !shown[index] {
                    shown[index] = true;
                    let mut child = self.set_node(set, shown);
                    self.attach(&mut child, shown);
                    node.children.push(child);
                }
            }
        }
    }

    fn is_alias(&self, name: &str, set_name: &str) -> bool {
        self.aliases.iter().any(|(n, s)| n == name && s == set_name)
    }

    /// A set's node with its volumes: what is on a volume that is the set itself goes on
    /// the set's node; other volumes are its children.
    fn set_node(&self, set: &Set, shown: &mut [bool]) -> Node {
        let mut node = set.node.clone();
        for v in &set.volumes {
            let name = v.volume.name();
            let mut problems: Vec<String> =
                v.notes.iter().map(|n| format!("{name}: {n}")).collect();
            problems.extend(
                v.error
                    .iter()
                    .map(|e| format!("{name}: cannot be read: {e}")),
            );
            match v.volume.shown() {
                Shown::AsSet => {
                    if let Some(tree) = &v.tree {
                        let inner = to_node(tree, node.kind);
                        node.size_bytes = tree.device.size_bytes();
                        node.format = inner.format;
                        if !inner.summary.is_empty() && inner.summary != node.summary {
                            node.summary = format!("{}; holds {}", node.summary, inner.summary);
                        }
                        node.problems.extend(inner.problems);
                        node.children.extend(inner.children);
                        if node.detail.is_object() && !inner.detail.is_null() {
                            node.detail["content"] = inner.detail;
                        }
                    }
                    node.problems.extend(problems);
                }
                Shown::Own(mut own) => {
                    match &v.tree {
                        Some(tree) => {
                            fill(&mut own, tree);
                            // Readable, with nothing on it or something; and what else the
                            // volume says of itself (a partial VG).
                            let what = if own.format.is_some() {
                                "readable"
                            } else {
                                "empty"
                            };
                            own.state = Some(match v.volume.state_note() {
                                Some(note) => format!("{what}, {note}"),
                                None => what.to_string(),
                            });
                        }
                        None => own.state = Some("unreadable".into()),
                    }
                    own.problems.extend(problems);
                    self.attach(&mut own, shown);
                    node.children.push(own);
                }
            }
        }
        node
    }
}

/// Activates `volume` read-only and probes what is on it; the members found there join
/// `pending`.
fn read_volume(
    volume: Box<dyn Volume>,
    registry: Arc<tessera_mapper::TargetRegistry>,
    modules: &[Arc<dyn FormatModule>],
    pending: &mut Vec<(usize, Member)>,
) -> VolumeRead {
    match volume.activate(registry, false) {
        Ok(activated) => {
            let device: SharedDevice = Arc::new(activated.device);
            // The probed tree keeps the volume running while what is on it is read.
            let tree = probe_tree(&vec![(volume.name(), device)], modules)
                .into_iter()
                .next();
            if let Some(t) = &tree {
                t.claimed_leaves(pending);
            }
            VolumeRead {
                volume,
                tree,
                notes: activated.notes,
                error: None,
            }
        }
        Err(e) => VolumeRead {
            volume,
            tree: None,
            notes: Vec::new(),
            error: Some(e),
        },
    }
}

/// Discovers the whole stack on `devices` with `modules` (see [`Stack::build`]). Writes
/// nothing.
pub fn discover(
    devices: &NamedDevices,
    problems: Vec<String>,
    modules: &[Arc<dyn FormatModule>],
) -> Report {
    Stack::build(devices, modules).report(problems)
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
            if f.state.is_some() {
                node.state = f.state.clone();
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::partition::partition_name;
    use tessera_block::{BlockDevice, MemoryDevice};

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
        let report = discover(&devices, Vec::new(), &crate::modules::registry());
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
        let report = discover(&devices, Vec::new(), &crate::modules::registry());
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.contains("disk") && p.contains("past the disk")),
            "{:?}",
            report.problems
        );
        // Data no format claims is a state, as blkid sees it, not a problem.
        let junk = report.devices.iter().find(|n| n.name == "junk").unwrap();
        assert_eq!(junk.state.as_deref(), Some("data"), "{junk:?}");
        assert!(junk.summary.contains("8192"), "{junk:?}");
        assert!(
            !report.problems.iter().any(|p| p.contains("junk")),
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
        let report = discover(&devices, Vec::new(), &crate::modules::registry());
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
