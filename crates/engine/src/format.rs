//! The plug-in boundary: one on-disk format is one [`FormatModule`].
//!
//! A module owns everything about its format:
//! - **probe**: whether the format lies on one device, what it says there (a [`Finding`]),
//!   and which devices lie inside it (a partition table's partitions, as [`Inner`]s);
//! - **assemble**: joining the devices it claimed into what they make together (an MD
//!   array from its members, a VG from its PVs), read into the engine's model, as
//!   [`Assembly`]s: the set as a node of the stack, each member's place in it, and the
//!   [`Volume`]s the set makes;
//! - **activation**: each volume's table, run in user space as a mapped device
//!   ([`Volume::activate`]) and, where the format allows, the rows the kernel's
//!   device-mapper loads ([`Volume::kernel_rows`]);
//! - **checks**: the problems of its format, named on the node they belong to (a stale
//!   member, a missing PV, a checksum that does not match);
//! - **writes**, where tessera writes the format: the verbs that do live in the module's
//!   own directory (`modules/lvm2/{pv,vg,lv}.rs`, `modules/md/ops.rs`) as methods of
//!   [`Engine`](crate::Engine), and use only what the engine core guarantees (below).
//!
//! Adding a format is one module and one line in [`crate::modules::registry`] (or, from another crate,
//! [`Engine::register_format`](crate::Engine::register_format)); discovery, `show`, `scan`
//! and serving find it through this trait alone.
//!
//! # The contract
//! What a module may touch:
//! - `probe` and `assemble` **only read**, and only the devices they are given; they never
//!   write, lock, claim or open other devices, and never panic on what they read: a
//!   damaged format is a finding with problems ([`Finding::damaged`]).
//! - A [`Volume`] maps I/O only onto the devices of its set; `activate` with `writable`
//!   false writes nothing at all (discovery activates every volume that way to look inside).
//! - Sentences are for users: each problem names its device and says what is wrong.
//!
//! What the engine guarantees to a module:
//! - **Order**: modules are tried in registry order; the first whose `probe` answers
//!   claims the device. `assemble` is called with every device the module claimed, those on
//!   disks and those inside other modules' volumes (a PV on an MD array reaches the LVM2
//!   module together with the PVs on disks, because MD comes first).
//! - **Locks**: a write verb runs under the engine's lock for its object
//!   (`Engine::lock`: `V_<vg>`, `M_<array>`, `P_orphans`), taken before the scan it decides
//!   on, held to its last write, so two tessera processes never interleave changes.
//! - **Claims**: a daemon claims every member it runs (O_EXCL on block devices, flock on
//!   image files, see [`crate::claim`]) before it activates any volume writable.
//! - **The crash-safe commit**: metadata reaches the devices as the format's own tools
//!   write it, new copy first, flush, then the pointer to it, flush (lvm2's commit in
//!   `modules/lvm2/commit.rs`; md's superblock and bitmap updates in
//!   `modules/md/records.rs`), so a power cut at any write leaves the old or the new state.

use std::sync::Arc;

use serde::Serialize;
use tessera_block::SharedDevice;
use tessera_mapper::{MappedDevice, TargetRegistry};

use crate::devices::NamedDevices;

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
    /// The state the device is in when that is all there is to say ("data": bytes no
    /// format claims); shown like a member's state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// What is wrong with it, one sentence each naming the device.
    pub problems: Vec<String>,
}

impl Finding {
    /// A format that is there but cannot be read: what it is, and the problem.
    pub fn damaged(format: &str, what: &str, problem: String) -> Option<(Finding, Vec<Inner>)> {
        let mut f = Finding::new(format, what);
        f.problems.push(problem);
        Some((f, Vec::new()))
    }

    pub fn new(format: impl Into<String>, summary: impl Into<String>) -> Finding {
        Finding {
            format: format.into(),
            summary: summary.into(),
            detail: serde_json::Value::Null,
            state: None,
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

/// A device a module claimed in `probe`, handed back to it to assemble.
#[derive(Clone)]
pub struct Member {
    pub name: String,
    pub device: SharedDevice,
    pub finding: Finding,
}

/// What a member is to the set it belongs to.
#[derive(Debug, Clone, Default)]
pub struct Place {
    /// The member's name, as probed.
    pub name: String,
    /// Its state in the set: active, spare, stale, faulty.
    pub state: Option<String>,
    /// Words added to the member's summary ("in VG vg0").
    pub note: Option<String>,
    /// What is wrong with its place (left out, and why).
    pub problem: Option<String>,
}

/// One set a module put together from its members.
pub struct Assembly {
    /// The set as a node of the stack (an array, a VG), without children; it is shown
    /// once, under the member in `places[0]`.
    pub node: Node,
    /// Each member's place in the set, the one the set is shown under first.
    pub places: Vec<Place>,
    /// What the set makes, each activated read-only and probed in turn.
    pub volumes: Vec<Box<dyn Volume>>,
}

/// How a volume is shown.
#[derive(Debug, Clone)]
pub enum Shown {
    /// The volume is the set itself (an array): what lies on it is shown on the set's node.
    AsSet,
    /// The volume is a node of its own under the set (an LV).
    Own(Node),
}

/// One node of the stack as `tessera show` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// disk, partition, md, vg, lv or crypt.
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

/// A node as it is read back (from a daemon's report).
#[derive(serde::Deserialize)]
struct NodeWire {
    kind: String,
    name: String,
    size_bytes: u64,
    #[serde(default)]
    format: Option<String>,
    summary: String,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    detail: serde_json::Value,
    #[serde(default)]
    problems: Vec<String>,
    #[serde(default)]
    children: Vec<NodeWire>,
}

impl From<NodeWire> for Node {
    fn from(w: NodeWire) -> Node {
        // The kinds modules use; another is kept as "other".
        const KINDS: [&str; 6] = ["disk", "partition", "md", "vg", "lv", "crypt"];
        Node {
            kind: KINDS.into_iter().find(|k| *k == w.kind).unwrap_or("other"),
            name: w.name,
            size_bytes: w.size_bytes,
            format: w.format,
            summary: w.summary,
            state: w.state,
            detail: w.detail,
            problems: w.problems,
            children: w.children.into_iter().map(Node::from).collect(),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Node {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        NodeWire::deserialize(d).map(Node::from)
    }
}

impl Node {
    /// A node that only carries problems no device or set owns (metadata that cannot be
    /// read at all); such a node is never shown, its problems are listed.
    pub fn problems_only(kind: &'static str, problems: Vec<String>) -> Node {
        Node {
            kind,
            name: String::new(),
            size_bytes: 0,
            format: None,
            summary: String::new(),
            state: None,
            detail: serde_json::Value::Null,
            problems,
            children: Vec::new(),
        }
    }
}

/// A volume a set makes, activated as a mapped device.
pub trait Volume: Send + Sync {
    /// The module that made it (its [`FormatModule::name`]).
    fn module(&self) -> &'static str;
    /// The name it is shown and served under: `md/NAME`, `VG/LV`.
    fn name(&self) -> String;
    /// Its device-mapper name: `md-NAME`, `VG-LV`.
    fn dm_name(&self) -> String;
    /// How discovery shows it.
    fn shown(&self) -> Shown;
    /// A listed device that already is this volume (the kernel's `/dev/md127` for an array
    /// it runs): discovery reads that device instead of activating the volume again.
    fn listed_as(&self) -> Option<String> {
        None
    }
    /// Words added to the volume's state once it is read ("partial VG").
    fn state_note(&self) -> Option<String> {
        None
    }
    /// Runs the volume in user space: a live mapped device over the set's devices, and a
    /// note for each thing it runs without (an image left out). With `writable` false it
    /// writes nothing, metadata included.
    fn activate(&self, registry: Arc<TargetRegistry>, writable: bool) -> Result<Activated, String>;
    /// The devices it maps onto, by the names they were probed under: what a daemon
    /// claims before it runs the volume writable.
    fn devices(&self) -> Vec<String>;
    /// The rows the kernel's device-mapper loads for it, as the format's own tools load them.
    fn kernel_rows(&self) -> Result<Vec<tessera_kernel::dm::Row>, String> {
        Err(format!(
            "{}: the {} format has no device-mapper table for the kernel",
            self.name(),
            self.module()
        ))
    }
}

/// Volumes, as sets make them.
pub type Volumes = Vec<Box<dyn Volume>>;

/// A volume running in user space.
pub struct Activated {
    pub device: MappedDevice,
    /// What it runs without, one line each.
    pub notes: Vec<String>,
}

/// One on-disk format: see the module documentation for the contract.
pub trait FormatModule: Send + Sync {
    /// The module's name, for logs and volumes (`md`, `lvm2`).
    fn name(&self) -> &'static str;
    /// Looks at `device`: None when the format is not there; else what was found and the
    /// devices inside it. A damaged format is a finding with problems, never a panic.
    fn probe(&self, name: &str, device: &SharedDevice) -> Option<(Finding, Vec<Inner>)>;
    /// Joins the devices this module claimed into sets. Formats that join nothing
    /// (partition tables, filesystems) keep the default: no sets.
    fn assemble(&self, members: Vec<Member>) -> Vec<Assembly> {
        let _ = members;
        Vec::new()
    }
    /// Whether the devices `probe` finds inside a device (a partition table's partitions)
    /// stand in for it in every command: the engine lists them in its place.
    fn contains_devices(&self) -> bool {
        false
    }
    /// The devices the sets on `devices` make that every command should see as devices
    /// of their own (the MD arrays, for the PVs on them), each activated in user space
    /// without records (see [`crate::Engine::set_assemble_arrays`]); `write` when the
    /// command writes. Problems putting one together go to `problems`.
    fn stacked_devices(
        &self,
        devices: &NamedDevices,
        write: bool,
        problems: &mut Vec<String>,
    ) -> NamedDevices {
        let _ = (devices, write, problems);
        Vec::new()
    }
}

/// The target types every volume may use: the mapper's own, the raid personalities,
/// crypt and the snapshot targets.
pub fn target_registry() -> Arc<TargetRegistry> {
    Arc::new(new_target_registry())
}

/// The same registry, to extend before it is shared.
pub fn new_target_registry() -> TargetRegistry {
    let mut r = TargetRegistry::new();
    tessera_raid::register(&mut r);
    // Names fixed in these crates, distinct from the mapper's and raid's.
    let _ = tessera_crypt::register(&mut r);
    let _ = tessera_snapshot::register(&mut r);
    let _ = tessera_thin::register(&mut r);
    let _ = tessera_bbr::register(&mut r);
    r
}
