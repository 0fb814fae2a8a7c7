//! The volume-group model: a typed view of the VG section of lvm2's metadata text.
//!
//! What tessera understands (PVs, LVs, striped segments) is typed; everything else (keys it
//! does not know, segment types it cannot activate yet, such as raid, snapshot or thin) is
//! kept as parsed and written back unchanged, so a change to one LV never damages another.
//! Sizes in the text are 512-byte sectors; extents count in units of `extent_size_sectors`.

use std::collections::{BTreeMap, HashSet};

use thiserror::Error;

use super::config::{self, ConfigError, Node, Section, Style, Value};
use super::id::Id;

mod pvmove;
pub use pvmove::{MirrorSegment, DEFAULT_REGION_SECTORS, LOCKED, PVMOVE, PVMOVE_LV};
mod thin;
pub use thin::{
    ThinDiscards, ThinMessage, ThinPoolSegment, ThinSegment, THIN_MAX_CHUNK_SECTORS,
    THIN_MAX_DEVICE_ID, THIN_MIN_CHUNK_SECTORS,
};

/// Keys of the metadata text that follow the VG section.
pub const CONTENTS: &str = "Text Format Volume Group";

/// Names longer than this are refused, as lvm2 does (NAME_LEN - 1).
pub const MAX_NAME_LEN: usize = 127;

/// Problems in a VG's metadata, each a sentence naming where in the VG it is.
#[derive(Debug, Error, PartialEq)]
pub enum VgError {
    #[error("metadata text does not parse: {0}")]
    Syntax(#[from] ConfigError),
    #[error("metadata text holds no volume group section")]
    NoVgSection,
    #[error("{at}: '{key}' is missing")]
    Missing { at: String, key: String },
    #[error("{at}: '{key}' has the wrong type (expected {expected})")]
    WrongType {
        at: String,
        key: String,
        expected: &'static str,
    },
    #[error("{at}: '{key}' = {value} is out of range ({why})")]
    OutOfRange {
        at: String,
        key: String,
        value: i64,
        why: String,
    },
    #[error("{at}: bad identifier: {why}")]
    BadId { at: String, why: String },
    #[error("{at}: name '{name}' is invalid: {why}")]
    BadName {
        at: String,
        name: String,
        why: String,
    },
    #[error("{at}: {why}")]
    Inconsistent { at: String, why: String },
}

/// A segment's share of a PV: `count` extents from `start_pe` on PV `pv` (its key, `pvN`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvArea {
    pub pv: String,
    pub start_pe: u64,
    pub count: u64,
}

/// One stripe of a striped segment: where on which PV it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stripe {
    pub pv: String,
    pub start_pe: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SegmentKind {
    /// `striped` (linear is one stripe). `stripe_size_sectors` is 0 for one stripe.
    Striped {
        stripe_size_sectors: u64,
        stripes: Vec<Stripe>,
    },
    /// A raid type (raid0, raid1, raid4, raid5_*, raid6_*, raid10): data and metadata
    /// sub-LVs. `body` holds every key but start_extent, extent_count and type, as written,
    /// and is what is written back; `raid` is tessera's reading of it.
    Raid { raid: RaidSegment, body: Section },
    /// `snapshot`: the segment of lvm2's hidden `snapshotN` LV, tying an origin LV to the
    /// LV that holds its copy-on-write store.
    Snapshot(SnapshotSegment),
    /// `thin-pool`: the segment of a thin pool LV, naming its `_tmeta` and `_tdata` LVs.
    ThinPool(ThinPoolSegment),
    /// `thin`: a thin LV (or thin snapshot) in a pool.
    Thin(ThinSegment),
    /// Any other type, kept as written: every key but start_extent, extent_count and type.
    Other { segtype: String, body: Section },
}

/// The smallest copy-on-write store lvm2 accepts, in chunks (header, metadata, data).
pub const SNAPSHOT_MIN_CHUNKS: u64 = 3;

/// A `snapshot` segment as lvm2 writes it: `chunk_size` (sectors), `origin`, then
/// `cow_store`, or `merging_store` while the snapshot merges back into its origin.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotSegment {
    pub origin: String,
    /// The LV holding the exception store (lvm2 shows it under the snapshot's name).
    pub cow: String,
    pub chunk_size_sectors: u64,
    /// `merging_store` instead of `cow_store`: lvm2's MERGING state.
    pub merging: bool,
    /// Keys lvm2 does not write today, kept in order after the known ones.
    pub extra: Vec<(String, Node)>,
}

impl SnapshotSegment {
    fn from_body(s: &Section, at: &str) -> Result<Self, VgError> {
        let chunk_size_sectors = get_u64(s, at, "chunk_size")?;
        if !chunk_size_sectors.is_power_of_two() || chunk_size_sectors < 8 {
            return Err(out_of_range(
                at,
                "chunk_size",
                chunk_size_sectors,
                "a power of two of at least 8 sectors",
            ));
        }
        let name = |key: &str| -> Result<Option<String>, VgError> {
            match s.get(key) {
                None => Ok(None),
                Some(_) => s
                    .get_str(key)
                    .map(|v| Some(v.to_string()))
                    .ok_or_else(|| missing_or_wrong(s, at, key, "an LV name")),
            }
        };
        let origin = name("origin")?.ok_or_else(|| VgError::Missing {
            at: at.to_string(),
            key: "origin".into(),
        })?;
        let (cow, merging) = match (name("cow_store")?, name("merging_store")?) {
            (Some(c), None) => (c, false),
            (None, Some(c)) => (c, true),
            (Some(_), Some(_)) => {
                return Err(VgError::Inconsistent {
                    at: at.to_string(),
                    why: "names both 'cow_store' and 'merging_store'".into(),
                })
            }
            (None, None) => {
                return Err(VgError::Missing {
                    at: at.to_string(),
                    key: "cow_store".into(),
                })
            }
        };
        let extra = s
            .entries
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "chunk_size" | "origin" | "cow_store" | "merging_store"
                )
            })
            .cloned()
            .collect();
        Ok(SnapshotSegment {
            origin,
            cow,
            chunk_size_sectors,
            merging,
            extra,
        })
    }

    fn write(&self, s: &mut Section) {
        s.set_value("chunk_size", int(self.chunk_size_sectors));
        s.set_value("origin", Value::Str(self.origin.clone()));
        let key = if self.merging {
            "merging_store"
        } else {
            "cow_store"
        };
        s.set_value(key, Value::Str(self.cow.clone()));
        s.entries.extend(self.extra.iter().cloned());
    }
}

/// The raid levels lvm2 has, as its segment types name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaidLevel {
    Raid0,
    Raid1,
    Raid4,
    Raid5,
    Raid6,
    Raid10,
}

impl RaidLevel {
    /// The level of an lvm2 raid segment type (`raid5_ls`, `raid0_meta`, ...), if it is one.
    pub fn of_segtype(segtype: &str) -> Option<RaidLevel> {
        Some(match segtype {
            "raid0" | "raid0_meta" => RaidLevel::Raid0,
            "raid1" => RaidLevel::Raid1,
            "raid4" => RaidLevel::Raid4,
            "raid10" | "raid10_near" => RaidLevel::Raid10,
            "raid5" | "raid5_la" | "raid5_ra" | "raid5_ls" | "raid5_rs" | "raid5_n" => {
                RaidLevel::Raid5
            }
            "raid6" | "raid6_zr" | "raid6_nr" | "raid6_nc" | "raid6_n_6" | "raid6_la_6"
            | "raid6_ra_6" | "raid6_ls_6" | "raid6_rs_6" => RaidLevel::Raid6,
            _ => return None,
        })
    }

    /// How many images may be missing with the data still whole (`images` in the set,
    /// `copies` of each block for raid1/raid10).
    pub fn tolerated(self, images: usize, copies: usize) -> usize {
        match self {
            RaidLevel::Raid0 => 0,
            RaidLevel::Raid1 => images.saturating_sub(1),
            RaidLevel::Raid4 | RaidLevel::Raid5 => 1,
            RaidLevel::Raid6 => 2,
            RaidLevel::Raid10 => copies.saturating_sub(1),
        }
    }
}

/// One slot of a raid segment: its data sub-LV and, except for raid0, its metadata sub-LV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaidImage {
    pub meta: Option<String>,
    pub data: String,
}

/// A raid segment as lvm2 writes it: `device_count` (`stripe_count` for raid0), optional
/// `data_copies`, `region_size` and `stripe_size` in sectors, and `raids`, the sub-LVs in
/// slot order (metadata then data for each slot; data only for raid0).
#[derive(Debug, Clone, PartialEq)]
pub struct RaidSegment {
    pub segtype: String,
    pub level: RaidLevel,
    pub stripe_size_sectors: u64,
    pub region_size_sectors: u64,
    /// Copies of each block (raid10; raid1 keeps one per image).
    pub data_copies: Option<u64>,
    /// `data_offset` as lvm2 stores it (where data starts in each data sub-LV), if present.
    pub data_offset_sectors: Option<u64>,
    pub images: Vec<RaidImage>,
}

impl RaidSegment {
    /// The dm-raid table type of this segment type (lvm2's short names `raid5`, `raid6`
    /// and `raid10_near` are left-symmetric, zero-restart and near).
    pub fn dm_type(&self) -> &str {
        match self.segtype.as_str() {
            "raid5" => "raid5_ls",
            "raid6" => "raid6_zr",
            "raid10_near" => "raid10",
            "raid0_meta" => "raid0",
            other => other,
        }
    }

    /// Copies of each block: every image for raid1, `data_copies` (2 if absent) for raid10.
    pub fn copies(&self) -> usize {
        match self.level {
            RaidLevel::Raid1 => self.images.len(),
            RaidLevel::Raid10 => self.data_copies.unwrap_or(2).max(1) as usize,
            _ => 1,
        }
    }

    /// How many images may be missing with the data still whole.
    pub fn tolerated(&self) -> usize {
        self.level.tolerated(self.images.len(), self.copies())
    }

    fn from_body(segtype: &str, level: RaidLevel, s: &Section, at: &str) -> Result<Self, VgError> {
        let count_key = if level == RaidLevel::Raid0 && s.get("device_count").is_none() {
            "stripe_count"
        } else {
            "device_count"
        };
        let count = get_u64(s, at, count_key)?;
        if count == 0 || count > 256 {
            return Err(out_of_range(
                at,
                count_key,
                count,
                "a raid set has 1 to 256 images",
            ));
        }
        let items = s
            .get_array("raids")
            .ok_or_else(|| missing_or_wrong(s, at, "raids", "an array"))?;
        let with_meta = segtype != "raid0";
        let per = if with_meta { 2 } else { 1 };
        if items.len() as u64 != count * per {
            return Err(VgError::Inconsistent {
                at: at.to_string(),
                why: format!(
                    "{count_key} is {count} but 'raids' has {} entries ({per} per image)",
                    items.len()
                ),
            });
        }
        let mut names = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Value::Str(name) => names.push(name.clone()),
                _ => {
                    return Err(VgError::WrongType {
                        at: at.to_string(),
                        key: "raids".into(),
                        expected: "an array of LV names",
                    })
                }
            }
        }
        let images = names
            .chunks(per as usize)
            .map(|c| match c {
                [meta, data] => RaidImage {
                    meta: Some(meta.clone()),
                    data: data.clone(),
                },
                [data] => RaidImage {
                    meta: None,
                    data: data.clone(),
                },
                _ => unreachable!("chunks of 1 or 2"),
            })
            .collect();
        let stripe_size_sectors = get_u64_or(s, at, "stripe_size", 0)?;
        if stripe_size_sectors != 0 && !stripe_size_sectors.is_power_of_two() {
            return Err(out_of_range(
                at,
                "stripe_size",
                stripe_size_sectors,
                "a power of two",
            ));
        }
        if level != RaidLevel::Raid1 && stripe_size_sectors == 0 && count > 1 {
            return Err(VgError::Missing {
                at: at.to_string(),
                key: "stripe_size".into(),
            });
        }
        let data_copies = get_u64_opt(s, at, "data_copies")?;
        if let Some(copies) = data_copies {
            if copies == 0 || copies > count {
                return Err(out_of_range(
                    at,
                    "data_copies",
                    copies,
                    "1 to the number of images",
                ));
            }
        }
        let data_offset_sectors = get_u64_opt(s, at, "data_offset")?;
        Ok(RaidSegment {
            segtype: segtype.to_string(),
            level,
            stripe_size_sectors,
            region_size_sectors: get_u64_or(s, at, "region_size", 0)?,
            data_copies,
            data_offset_sectors,
            images,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub start_extent: u64,
    pub extent_count: u64,
    pub kind: SegmentKind,
}

impl Segment {
    /// "linear", "striped" or the stored type, as lvm2 reports it.
    pub fn type_name(&self) -> &str {
        match &self.kind {
            SegmentKind::Striped { stripes, .. } if stripes.len() == 1 => "linear",
            SegmentKind::Striped { .. } => "striped",
            SegmentKind::Raid { raid, .. } => &raid.segtype,
            SegmentKind::Snapshot(_) => "snapshot",
            SegmentKind::ThinPool(_) => "thin-pool",
            SegmentKind::Thin(_) => "thin",
            SegmentKind::Other { segtype, .. } => segtype,
        }
    }

    pub fn stripe_count(&self) -> u64 {
        match &self.kind {
            SegmentKind::Striped { stripes, .. } => stripes.len() as u64,
            SegmentKind::Raid { raid, .. } => raid.images.len() as u64,
            SegmentKind::Snapshot(_) | SegmentKind::ThinPool(_) | SegmentKind::Thin(_) => 1,
            SegmentKind::Other { body, .. } => body
                .get_int("stripe_count")
                .or_else(|| body.get_int("device_count"))
                .unwrap_or(1)
                .max(1) as u64,
        }
    }

    /// The PV extents this segment occupies. Segment types tessera does not model may still
    /// name PVs directly (`"pvN", start` pairs in an array); those count as used for their
    /// whole extent count, so allocation never hands them out.
    pub fn pv_areas(&self, pv_keys: &HashSet<&str>) -> Vec<PvArea> {
        match &self.kind {
            // A stripe may name an LV instead (lvm2's pvmove0 while a PV is moved).
            SegmentKind::Striped { stripes, .. } => {
                let per = self.extent_count / (stripes.len().max(1) as u64);
                stripes
                    .iter()
                    .filter(|s| pv_keys.contains(s.pv.as_str()))
                    .map(|s| PvArea {
                        pv: s.pv.clone(),
                        start_pe: s.start_pe,
                        count: per,
                    })
                    .collect()
            }
            // Its sub-LVs hold the extents; a snapshot's are its origin's and COW LV's.
            // A pool's extents are its sub-LVs'; a thin LV's are in its pool.
            SegmentKind::Raid { .. }
            | SegmentKind::Snapshot(_)
            | SegmentKind::ThinPool(_)
            | SegmentKind::Thin(_) => Vec::new(),
            SegmentKind::Other { body, .. } => {
                let mut areas = Vec::new();
                for (_, node) in &body.entries {
                    if let Node::Value(Value::Array(items)) = node {
                        for pair in items.windows(2) {
                            if let [Value::Str(name), Value::Int(pe)] = pair {
                                if pv_keys.contains(name.as_str()) && *pe >= 0 {
                                    areas.push(PvArea {
                                        pv: name.clone(),
                                        start_pe: *pe as u64,
                                        count: self.extent_count,
                                    });
                                }
                            }
                        }
                    }
                }
                areas
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogicalVolume {
    pub name: String,
    pub id: Id,
    pub status: Vec<String>,
    pub flags: Vec<String>,
    pub creation_time: Option<i64>,
    pub creation_host: Option<String>,
    /// Keys tessera does not model (tags, allocation_policy, read_ahead, ...), in order.
    pub extra: Vec<(String, Node)>,
    pub segments: Vec<Segment>,
}

impl LogicalVolume {
    pub fn extent_count(&self) -> u64 {
        self.segments.iter().map(|s| s.extent_count).sum()
    }
    pub fn is_visible(&self) -> bool {
        self.status.iter().any(|s| s == "VISIBLE")
    }
    /// True if every segment is striped or linear, the types tessera can change.
    pub fn is_plain(&self) -> bool {
        self.segments
            .iter()
            .all(|s| matches!(s.kind, SegmentKind::Striped { .. }))
    }
    /// The raid segment, if this is a raid LV (lvm2 gives raid LVs one segment).
    pub fn raid(&self) -> Option<&RaidSegment> {
        match &self.segments.first()?.kind {
            SegmentKind::Raid { raid, .. } => Some(raid),
            _ => None,
        }
    }
    /// The snapshot segment, if this is one of lvm2's hidden `snapshotN` LVs.
    pub fn snapshot(&self) -> Option<&SnapshotSegment> {
        match &self.segments.first()?.kind {
            SegmentKind::Snapshot(snap) => Some(snap),
            _ => None,
        }
    }
    pub fn snapshot_mut(&mut self) -> Option<&mut SnapshotSegment> {
        match &mut self.segments.first_mut()?.kind {
            SegmentKind::Snapshot(snap) => Some(snap),
            _ => None,
        }
    }
    /// The thin-pool segment, if this is a thin pool (lvm2 gives pools one segment).
    pub fn thin_pool(&self) -> Option<&ThinPoolSegment> {
        match &self.segments.first()?.kind {
            SegmentKind::ThinPool(p) => Some(p),
            _ => None,
        }
    }
    pub fn thin_pool_mut(&mut self) -> Option<&mut ThinPoolSegment> {
        match &mut self.segments.first_mut()?.kind {
            SegmentKind::ThinPool(p) => Some(p),
            _ => None,
        }
    }
    /// The thin segment, if this is a thin LV.
    pub fn thin(&self) -> Option<&ThinSegment> {
        match &self.segments.first()?.kind {
            SegmentKind::Thin(t) => Some(t),
            _ => None,
        }
    }
    pub fn thin_mut(&mut self) -> Option<&mut ThinSegment> {
        match &mut self.segments.first_mut()?.kind {
            SegmentKind::Thin(t) => Some(t),
            _ => None,
        }
    }
    /// lvm2's ACTIVATION_SKIP flag (set on thin snapshots): activated only when asked for
    /// by name with the skip ignored.
    pub fn activation_skip(&self) -> bool {
        self.flags.iter().any(|f| f == "ACTIVATION_SKIP")
    }
    /// The other LVs this one's segments name (sub-LVs of raid, snapshot origins, pools).
    pub fn referenced_names<'a>(&'a self, names: &HashSet<&'a str>) -> Vec<&'a str> {
        let mut out = Vec::new();
        for seg in &self.segments {
            match &seg.kind {
                SegmentKind::Other { body, .. } | SegmentKind::Raid { body, .. } => {
                    collect_strings(body, &mut |s| {
                        if names.contains(s) && s != self.name {
                            out.push(s);
                        }
                    })
                }
                SegmentKind::Snapshot(snap) => {
                    for s in [snap.origin.as_str(), snap.cow.as_str()] {
                        if let Some(s) = names.get(s) {
                            out.push(s);
                        }
                    }
                }
                SegmentKind::ThinPool(p) => {
                    let created = p.messages.iter().filter_map(|m| match m {
                        ThinMessage::Create(lv) => Some(lv.as_str()),
                        ThinMessage::Delete(_) => None,
                    });
                    for s in [p.metadata.as_str(), p.data.as_str()]
                        .into_iter()
                        .chain(created)
                    {
                        if let Some(s) = names.get(s) {
                            out.push(s);
                        }
                    }
                }
                SegmentKind::Thin(t) => {
                    let named = [
                        Some(&t.pool),
                        t.origin.as_ref(),
                        t.merge.as_ref(),
                        t.external_origin.as_ref(),
                    ];
                    for s in named.into_iter().flatten() {
                        if let Some(s) = names.get(s.as_str()) {
                            out.push(s);
                        }
                    }
                }
                SegmentKind::Striped { .. } => {}
            }
        }
        out
    }
}

fn collect_strings<'a>(section: &'a Section, f: &mut dyn FnMut(&'a str)) {
    for (_, node) in &section.entries {
        match node {
            Node::Value(Value::Str(s)) => f(s),
            Node::Value(Value::Array(items)) => items.iter().for_each(|v| {
                if let Value::Str(s) = v {
                    f(s)
                }
            }),
            Node::Section(sub) => collect_strings(sub, f),
            _ => {}
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PhysicalVolume {
    /// The key of its section, `pvN`, by which segments refer to it.
    pub key: String,
    pub id: Id,
    /// The path it was last seen at: a hint only, PVs are found by id.
    pub device: String,
    pub status: Vec<String>,
    pub flags: Vec<String>,
    pub dev_size_sectors: u64,
    pub pe_start_sectors: u64,
    pub pe_count: u64,
    pub extra: Vec<(String, Node)>,
}

impl PhysicalVolume {
    pub fn is_allocatable(&self) -> bool {
        self.status.iter().any(|s| s == "ALLOCATABLE")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct VolumeGroup {
    pub name: String,
    pub id: Id,
    pub seqno: u64,
    pub format: String,
    pub status: Vec<String>,
    pub flags: Vec<String>,
    pub extent_size_sectors: u64,
    pub max_lv: u64,
    pub max_pv: u64,
    pub metadata_copies: u64,
    /// Keys of the VG section tessera does not model (tags, system_id, lock_type, ...).
    pub extra: Vec<(String, Node)>,
    pub pvs: Vec<PhysicalVolume>,
    pub lvs: Vec<LogicalVolume>,
    /// Sections after `logical_volumes` (e.g. historical_logical_volumes), kept as written.
    pub tail: Vec<(String, Node)>,
}

/// The text around the VG section: who wrote it, when, and why.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TextInfo {
    pub description: String,
    pub creation_host: String,
    pub creation_time: i64,
}

impl VolumeGroup {
    pub fn pv(&self, key: &str) -> Option<&PhysicalVolume> {
        self.pvs.iter().find(|p| p.key == key)
    }
    pub fn pv_by_id(&self, id: &Id) -> Option<&PhysicalVolume> {
        self.pvs.iter().find(|p| p.id == *id)
    }
    pub fn lv(&self, name: &str) -> Option<&LogicalVolume> {
        self.lvs.iter().find(|l| l.name == name)
    }
    pub fn lv_mut(&mut self, name: &str) -> Option<&mut LogicalVolume> {
        self.lvs.iter_mut().find(|l| l.name == name)
    }
    pub fn extent_size_bytes(&self) -> u64 {
        self.extent_size_sectors * 512
    }

    // ---- snapshots, as lvm2 ties them: a hidden `snapshotN` LV whose one `snapshot`
    // segment names the origin and the COW LV (the one users know by the snapshot's name).

    /// True if LV `name` is the origin of at least one snapshot.
    pub fn is_origin(&self, name: &str) -> bool {
        !self.snapshots_of(name).is_empty()
    }
    /// The `snapshotN` LVs of origin `origin`, in the VG's order.
    pub fn snapshots_of(&self, origin: &str) -> Vec<&LogicalVolume> {
        self.lvs
            .iter()
            .filter(|l| l.snapshot().is_some_and(|s| s.origin == origin))
            .collect()
    }
    /// The LVs that are origins of snapshots, in the VG's order.
    pub fn origins(&self) -> Vec<&LogicalVolume> {
        self.lvs
            .iter()
            .filter(|l| self.is_origin(&l.name))
            .collect()
    }
    /// The `snapshotN` LV whose COW store is LV `cow`.
    pub fn snapshot_of_cow(&self, cow: &str) -> Option<&LogicalVolume> {
        self.lvs
            .iter()
            .find(|l| l.snapshot().is_some_and(|s| s.cow == cow))
    }
    /// The COW LV of `snapshotN` LV `snapshot`.
    pub fn cow_of(&self, snapshot: &str) -> Option<&LogicalVolume> {
        self.lv(&self.lv(snapshot)?.snapshot()?.cow)
    }
    /// True if LV `name` holds a snapshot's COW store.
    pub fn is_cow(&self, name: &str) -> bool {
        self.snapshot_of_cow(name).is_some()
    }
    /// True if LV `name` takes part in a merge: the COW LV of a merging snapshot, its
    /// `snapshotN` LV, or the origin it merges into.
    pub fn is_merging(&self, name: &str) -> bool {
        self.lvs.iter().any(|l| {
            l.snapshot()
                .is_some_and(|s| s.merging && (l.name == name || s.cow == name || s.origin == name))
        })
    }
    /// The merging snapshot of origin `origin`, if one merges into it.
    pub fn merging_snapshot_of(&self, origin: &str) -> Option<&LogicalVolume> {
        self.snapshots_of(origin)
            .into_iter()
            .find(|l| l.snapshot().is_some_and(|s| s.merging))
    }
    /// The name lvm2 gives a new snapshot LV: `snapshotN`, N one past the highest in use.
    pub fn next_snapshot_name(&self) -> String {
        let next = self
            .lvs
            .iter()
            .filter_map(|l| l.name.strip_prefix("snapshot")?.parse::<u64>().ok())
            .max()
            .map_or(0, |n| n + 1);
        format!("snapshot{next}")
    }
    /// Whether lvm2 shows LV `lv` (`lv_is_visible`): never a `snapshotN` LV; a COW LV as
    /// its origin is shown, unless it merges; any other LV by its VISIBLE flag.
    pub fn lv_is_visible(&self, lv: &LogicalVolume) -> bool {
        if lv.snapshot().is_some() {
            return false;
        }
        if let Some(snap) = self.snapshot_of_cow(&lv.name).and_then(|s| s.snapshot()) {
            if snap.merging {
                return false;
            }
            return self.lv(&snap.origin).is_some_and(|o| o.is_visible());
        }
        lv.is_visible()
    }
    // ---- thin provisioning, as lvm2 ties it: a pool LV whose `thin-pool` segment names
    // its hidden `_tmeta` and `_tdata` LVs; thin LVs whose `thin` segment names the pool.

    /// The thin pools, in the VG's order.
    pub fn thin_pools(&self) -> Vec<&LogicalVolume> {
        self.lvs
            .iter()
            .filter(|l| l.thin_pool().is_some())
            .collect()
    }
    /// The thin LVs of pool `pool`, in the VG's order.
    pub fn thin_lvs_of(&self, pool: &str) -> Vec<&LogicalVolume> {
        self.lvs
            .iter()
            .filter(|l| l.thin().is_some_and(|t| t.pool == pool))
            .collect()
    }
    /// The pool whose metadata LV is `lv`.
    pub fn pool_of_metadata(&self, lv: &str) -> Option<&LogicalVolume> {
        self.lvs
            .iter()
            .find(|l| l.thin_pool().is_some_and(|p| p.metadata == lv))
    }
    /// The pool whose data LV is `lv`.
    pub fn pool_of_data(&self, lv: &str) -> Option<&LogicalVolume> {
        self.lvs
            .iter()
            .find(|l| l.thin_pool().is_some_and(|p| p.data == lv))
    }
    /// The pool LV `lv` belongs to: itself if a pool, its pool if a thin LV, the pool whose
    /// `_tmeta` or `_tdata` it is.
    pub fn pool_of(&self, lv: &str) -> Option<&LogicalVolume> {
        let l = self.lv(lv)?;
        if l.thin_pool().is_some() {
            return Some(l);
        }
        if let Some(t) = l.thin() {
            return self.lv(&t.pool).filter(|p| p.thin_pool().is_some());
        }
        self.pool_of_metadata(lv).or_else(|| self.pool_of_data(lv))
    }
    /// lvm2's pool metadata spare: a hidden LV with `_pmspare` in its name.
    pub fn is_pmspare(&self, lv: &LogicalVolume) -> bool {
        !lv.is_visible() && lv.name.contains("_pmspare")
    }
    pub fn pmspare(&self) -> Option<&LogicalVolume> {
        self.lvs.iter().find(|l| self.is_pmspare(l))
    }
    /// The thin snapshots of thin LV `origin`, in the VG's order.
    pub fn thin_snapshots_of(&self, origin: &str) -> Vec<&LogicalVolume> {
        self.lvs
            .iter()
            .filter(|l| {
                l.thin()
                    .is_some_and(|t| t.origin.as_deref() == Some(origin))
            })
            .collect()
    }
    /// The device id lvm2 gives a new thin LV in `pool`: one past the highest in use
    /// (None past the 24-bit limit).
    pub fn next_thin_device_id(&self, pool: &str) -> Option<u32> {
        let max = self
            .thin_lvs_of(pool)
            .iter()
            .filter_map(|l| l.thin().map(|t| t.device_id))
            .max()
            .unwrap_or(0);
        let next = u64::from(max) + 1;
        (next <= THIN_MAX_DEVICE_ID).then_some(next as u32)
    }
    /// The name lvm2 gives an unnamed LV: `lvolN`, N one past the highest `lvolN...` name.
    pub fn next_lvol_name(&self) -> String {
        let next = self
            .lvs
            .iter()
            .filter_map(|l| {
                let digits: String = l
                    .name
                    .strip_prefix("lvol")?
                    .chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect();
                digits.parse::<u64>().ok()
            })
            .max()
            .map_or(0, |n| n + 1);
        format!("lvol{next}")
    }
    /// Where lvm2 puts a new LV in the VG's list: visible LVs before every hidden one (it
    /// writes visible LVs first), hidden ones at the end.
    pub fn insert_lv(&mut self, lv: LogicalVolume) {
        if !lv.is_visible() {
            self.lvs.push(lv);
            return;
        }
        let at = self
            .lvs
            .iter()
            .position(|l| !self.lv_is_visible(l))
            .unwrap_or(self.lvs.len());
        self.lvs.insert(at, lv);
    }

    pub fn pe_total(&self) -> u64 {
        self.pvs.iter().map(|p| p.pe_count).sum()
    }
    pub fn pv_keys(&self) -> HashSet<&str> {
        self.pvs.iter().map(|p| p.key.as_str()).collect()
    }
    /// Every PV area in use, by PV key, with the LV that holds it.
    pub fn used_areas(&self) -> BTreeMap<String, Vec<(PvArea, String)>> {
        let keys = self.pv_keys();
        let mut map: BTreeMap<String, Vec<(PvArea, String)>> = BTreeMap::new();
        for lv in &self.lvs {
            for seg in &lv.segments {
                for area in seg.pv_areas(&keys) {
                    map.entry(area.pv.clone())
                        .or_default()
                        .push((area, lv.name.clone()));
                }
            }
        }
        for areas in map.values_mut() {
            areas.sort_by_key(|(a, _)| a.start_pe);
        }
        map
    }
    pub fn pe_used(&self, pv_key: &str) -> u64 {
        self.used_areas()
            .get(pv_key)
            .map_or(0, |a| a.iter().map(|(a, _)| a.count).sum())
    }
    pub fn pe_free_total(&self) -> u64 {
        let used: u64 = self
            .used_areas()
            .values()
            .flat_map(|a| a.iter().map(|(a, _)| a.count))
            .sum();
        self.pe_total().saturating_sub(used)
    }
    /// A key `pvN` not used yet.
    pub fn next_pv_key(&self) -> String {
        (0..)
            .map(|n| format!("pv{n}"))
            .find(|k| self.pv(k).is_none())
            .unwrap_or_default()
    }

    /// Reads a VG from a whole metadata text (VG section first, then the info keys).
    pub fn from_text(text: &[u8]) -> Result<(VolumeGroup, TextInfo), VgError> {
        let root = config::parse(text)?;
        let (name, section) = root.sections().next().ok_or(VgError::NoVgSection)?;
        let vg = VolumeGroup::from_section(name, section)?;
        let info = TextInfo {
            description: root.get_str("description").unwrap_or_default().to_string(),
            creation_host: root
                .get_str("creation_host")
                .unwrap_or_default()
                .to_string(),
            creation_time: root.get_int("creation_time").unwrap_or(0),
        };
        Ok((vg, info))
    }

    /// The whole metadata text: the VG section, then `contents`, `version` and `info`.
    pub fn to_text(&self, info: &TextInfo, style: Style) -> String {
        let mut root = Section::new();
        root.entries
            .push((self.name.clone(), Node::Section(self.to_section())));
        root.set_value("contents", Value::Str(CONTENTS.into()));
        root.set_value("version", Value::Int(1));
        root.set_value("description", Value::Str(info.description.clone()));
        root.set_value("creation_host", Value::Str(info.creation_host.clone()));
        root.set_value("creation_time", Value::Int(info.creation_time));
        config::print(&root, style)
    }

    pub fn from_section(name: &str, s: &Section) -> Result<VolumeGroup, VgError> {
        let at = format!("VG '{name}'");
        check_name(&at, name)?;
        let mut vg = VolumeGroup {
            name: name.to_string(),
            id: get_id(s, &at)?,
            seqno: get_u64(s, &at, "seqno")?,
            format: s.get_str("format").unwrap_or("lvm2").to_string(),
            status: get_strings(s, &at, "status")?,
            flags: get_strings_or_empty(s, &at, "flags")?,
            extent_size_sectors: get_u64(s, &at, "extent_size")?,
            max_lv: get_u64_or(s, &at, "max_lv", 0)?,
            max_pv: get_u64_or(s, &at, "max_pv", 0)?,
            metadata_copies: get_u64_or(s, &at, "metadata_copies", 0)?,
            extra: Vec::new(),
            pvs: Vec::new(),
            lvs: Vec::new(),
            tail: Vec::new(),
        };
        if vg.format != "lvm2" {
            return Err(VgError::Inconsistent {
                at,
                why: format!("format '{}' is not lvm2", vg.format),
            });
        }
        // lvm2 accepts extents of at least one sector-aligned KiB multiple; anything absurd
        // here would make every size computed below overflow.
        if vg.extent_size_sectors < 8 || vg.extent_size_sectors > (1 << 32) {
            return Err(out_of_range(
                &at,
                "extent_size",
                vg.extent_size_sectors,
                "8 sectors to 2 TiB",
            ));
        }
        let mut seen_lvs = false;
        for (key, node) in &s.entries {
            match (key.as_str(), node) {
                (
                    "id" | "seqno" | "format" | "status" | "flags" | "extent_size" | "max_lv"
                    | "max_pv" | "metadata_copies",
                    _,
                ) => {}
                ("physical_volumes", Node::Section(pvs)) => {
                    for (key, pv) in pvs.sections() {
                        vg.pvs.push(PhysicalVolume::from_section(key, pv, &at)?);
                    }
                }
                ("logical_volumes", Node::Section(lvs)) => {
                    seen_lvs = true;
                    for (key, lv) in lvs.sections() {
                        vg.lvs.push(LogicalVolume::from_section(key, lv, &at)?);
                    }
                }
                ("physical_volumes" | "logical_volumes", Node::Value(_)) => {
                    return Err(VgError::WrongType {
                        at,
                        key: key.clone(),
                        expected: "a section",
                    })
                }
                _ if seen_lvs => vg.tail.push((key.clone(), node.clone())),
                _ => vg.extra.push((key.clone(), node.clone())),
            }
        }
        vg.validate()?;
        Ok(vg)
    }

    pub fn to_section(&self) -> Section {
        let mut s = Section::new();
        s.set_value("id", Value::Str(self.id.to_string()));
        s.set_value("seqno", int(self.seqno));
        s.set_value("format", Value::Str(self.format.clone()));
        s.set_value("status", strings(&self.status));
        s.set_value("flags", strings(&self.flags));
        s.entries.extend(self.extra.iter().cloned());
        s.set_value("extent_size", int(self.extent_size_sectors));
        s.set_value("max_lv", int(self.max_lv));
        s.set_value("max_pv", int(self.max_pv));
        s.set_value("metadata_copies", int(self.metadata_copies));
        let mut pvs = Section::new();
        for pv in &self.pvs {
            pvs.entries
                .push((pv.key.clone(), Node::Section(pv.to_section())));
        }
        s.set("physical_volumes", Node::Section(pvs));
        if !self.lvs.is_empty() {
            let mut lvs = Section::new();
            for lv in &self.lvs {
                lvs.entries
                    .push((lv.name.clone(), Node::Section(lv.to_section())));
            }
            s.set("logical_volumes", Node::Section(lvs));
        }
        s.entries.extend(self.tail.iter().cloned());
        s
    }

    /// Checks what lvm2 would refuse or what would corrupt data: names, references,
    /// segment ranges, and no two segments on the same extents.
    pub fn validate(&self) -> Result<(), VgError> {
        let at = format!("VG '{}'", self.name);
        let mut keys = HashSet::new();
        let mut ids = HashSet::new();
        for pv in &self.pvs {
            let pat = format!("{at}, PV {}", pv.key);
            if !keys.insert(pv.key.as_str()) || !ids.insert(pv.id) {
                return Err(VgError::Inconsistent {
                    at: pat,
                    why: "listed twice".into(),
                });
            }
            let end = pv
                .pe_count
                .checked_mul(self.extent_size_sectors)
                .and_then(|x| x.checked_add(pv.pe_start_sectors));
            match end {
                Some(end) if end <= pv.dev_size_sectors || pv.pe_count == 0 => {}
                _ => {
                    return Err(VgError::Inconsistent {
                        at: pat,
                        why: format!(
                            "{} extents of {} sectors from sector {} do not fit in its {} sectors",
                            pv.pe_count,
                            self.extent_size_sectors,
                            pv.pe_start_sectors,
                            pv.dev_size_sectors
                        ),
                    })
                }
            }
        }
        let mut names = HashSet::new();
        for lv in &self.lvs {
            let lat = format!("{at}, LV '{}'", lv.name);
            if !names.insert(lv.name.as_str()) {
                return Err(VgError::Inconsistent {
                    at: lat,
                    why: "listed twice".into(),
                });
            }
            let mut next = 0u64;
            for (i, seg) in lv.segments.iter().enumerate() {
                let sat = format!("{lat}, segment {}", i + 1);
                if seg.start_extent != next {
                    return Err(VgError::Inconsistent {
                        at: sat,
                        why: format!(
                            "starts at extent {} but the previous one ends at {}",
                            seg.start_extent, next
                        ),
                    });
                }
                next = seg
                    .start_extent
                    .checked_add(seg.extent_count)
                    .ok_or_else(|| {
                        out_of_range(&sat, "extent_count", seg.extent_count, "overflows")
                    })?;
                if let SegmentKind::Striped { stripes, .. } = &seg.kind {
                    if seg.extent_count % stripes.len() as u64 != 0 {
                        return Err(VgError::Inconsistent {
                            at: sat,
                            why: format!(
                                "{} extents do not divide among {} stripes",
                                seg.extent_count,
                                stripes.len()
                            ),
                        });
                    }
                }
                if let SegmentKind::Snapshot(snap) = &seg.kind {
                    for (what, name) in [("origin", &snap.origin), ("COW store", &snap.cow)] {
                        let Some(other) = self.lv(name).filter(|_| *name != lv.name) else {
                            return Err(VgError::Inconsistent {
                                at: sat,
                                why: format!("names {what} '{name}', which the VG does not have"),
                            });
                        };
                        if other.snapshot().is_some() {
                            return Err(VgError::Inconsistent {
                                at: sat,
                                why: format!("names {what} '{name}', which is a snapshot itself"),
                            });
                        }
                    }
                    if snap.origin == snap.cow {
                        return Err(VgError::Inconsistent {
                            at: sat,
                            why: format!("'{}' is both its origin and its COW store", snap.cow),
                        });
                    }
                    if let Some(first) = self.lvs.iter().find(|l| {
                        l.name != lv.name && l.snapshot().is_some_and(|o| o.cow == snap.cow)
                    }) {
                        return Err(VgError::Inconsistent {
                            at: sat,
                            why: format!(
                                "COW store '{}' is already the store of '{}'",
                                snap.cow, first.name
                            ),
                        });
                    }
                }
                if let SegmentKind::ThinPool(pool) = &seg.kind {
                    self.validate_pool(lv, pool, &sat)?;
                }
                if let SegmentKind::Thin(thin) = &seg.kind {
                    self.validate_thin(lv, thin, &sat)?;
                }
                if let SegmentKind::Raid { raid, .. } = &seg.kind {
                    let sub_lvs = raid
                        .images
                        .iter()
                        .flat_map(|i| i.meta.iter().chain(std::iter::once(&i.data)));
                    for sub in sub_lvs {
                        if *sub == lv.name || self.lv(sub).is_none() {
                            return Err(VgError::Inconsistent {
                                at: sat,
                                why: format!("names sub-LV '{sub}', which the VG does not have"),
                            });
                        }
                    }
                }
                self.validate_lv_areas(lv, seg, &keys, &sat)?;
                for area in seg.pv_areas(&keys) {
                    let Some(pv) = self.pv(&area.pv) else {
                        return Err(VgError::Inconsistent {
                            at: sat,
                            why: format!("names PV '{}', which the VG does not have", area.pv),
                        });
                    };
                    if area
                        .start_pe
                        .checked_add(area.count)
                        .is_none_or(|e| e > pv.pe_count)
                    {
                        return Err(VgError::Inconsistent {
                            at: sat,
                            why: format!(
                                "uses extents {}..{} of {}, which has {} extents",
                                area.start_pe,
                                area.start_pe.saturating_add(area.count),
                                pv.key,
                                pv.pe_count
                            ),
                        });
                    }
                }
            }
        }
        for (pv, areas) in self.used_areas() {
            for pair in areas.windows(2) {
                let (a, lva) = &pair[0];
                let (b, lvb) = &pair[1];
                if a.start_pe + a.count > b.start_pe {
                    return Err(VgError::Inconsistent {
                        at: format!("{at}, PV {pv}"),
                        why: format!(
                            "extents {}..{} of LV '{lva}' overlap extents {}..{} of LV '{lvb}'",
                            a.start_pe,
                            a.start_pe + a.count,
                            b.start_pe,
                            b.start_pe + b.count
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

impl VolumeGroup {
    fn validate_pool(
        &self,
        lv: &LogicalVolume,
        pool: &ThinPoolSegment,
        at: &str,
    ) -> Result<(), VgError> {
        let bad = |why: String| VgError::Inconsistent {
            at: at.to_string(),
            why,
        };
        if lv.segments.len() != 1 {
            return Err(bad(format!(
                "a thin pool has one segment, LV '{}' has {}",
                lv.name,
                lv.segments.len()
            )));
        }
        for (what, name) in [("metadata LV", &pool.metadata), ("data LV", &pool.data)] {
            let Some(sub) = self.lv(name).filter(|_| *name != lv.name) else {
                return Err(bad(format!(
                    "names {what} '{name}', which the VG does not have"
                )));
            };
            if sub.thin_pool().is_some() || sub.thin().is_some() || sub.snapshot().is_some() {
                return Err(bad(format!(
                    "names {what} '{name}', which is a {} itself",
                    sub.segments[0].type_name()
                )));
            }
            if let Some(other) = self.lvs.iter().find(|o| {
                o.name != lv.name
                    && o.thin_pool()
                        .is_some_and(|p| p.metadata == *name || p.data == *name)
            }) {
                return Err(bad(format!(
                    "{what} '{name}' belongs to pool '{}' already",
                    other.name
                )));
            }
        }
        if pool.metadata == pool.data {
            return Err(bad(format!(
                "'{}' is both its metadata and its data LV",
                pool.data
            )));
        }
        let data_extents = self.lv(&pool.data).map_or(0, |d| d.extent_count());
        if data_extents != lv.extent_count() {
            return Err(bad(format!(
                "the pool has {} extents but its data LV '{}' has {data_extents}",
                lv.extent_count(),
                pool.data
            )));
        }
        if !pool.messages.is_empty() && pool.transaction_id == 0 {
            return Err(bad(
                "has queued messages with transaction_id 0; messages always raise it".into(),
            ));
        }
        for m in &pool.messages {
            if let ThinMessage::Create(name) = m {
                if self
                    .lv(name)
                    .and_then(|l| l.thin())
                    .is_none_or(|t| t.pool != lv.name)
                {
                    return Err(bad(format!(
                        "queues the creation of '{name}', which is not a thin LV of this pool"
                    )));
                }
            }
        }
        Ok(())
    }

    fn validate_thin(
        &self,
        lv: &LogicalVolume,
        thin: &ThinSegment,
        at: &str,
    ) -> Result<(), VgError> {
        let bad = |why: String| VgError::Inconsistent {
            at: at.to_string(),
            why,
        };
        if lv.segments.len() != 1 {
            return Err(bad(format!(
                "a thin LV has one segment, LV '{}' has {}",
                lv.name,
                lv.segments.len()
            )));
        }
        if self.lv(&thin.pool).is_none_or(|p| p.thin_pool().is_none()) {
            return Err(bad(format!(
                "names thin pool '{}', which the VG does not have as a pool",
                thin.pool
            )));
        }
        if let Some(origin) = &thin.origin {
            match self.lv(origin).and_then(|o| o.thin()) {
                Some(o) if origin != &lv.name && o.pool == thin.pool => {}
                _ => {
                    return Err(bad(format!(
                        "names origin '{origin}', which is not another thin LV of pool '{}'",
                        thin.pool
                    )))
                }
            }
        }
        for (what, name) in [
            ("merge", &thin.merge),
            ("external origin", &thin.external_origin),
        ] {
            if let Some(name) = name {
                if self.lv(name).is_none() || name == &lv.name {
                    return Err(bad(format!(
                        "names {what} LV '{name}', which the VG does not have"
                    )));
                }
            }
        }
        if let Some(other) = self.lvs.iter().find(|o| {
            o.name != lv.name
                && o.thin()
                    .is_some_and(|t| t.pool == thin.pool && t.device_id == thin.device_id)
        }) {
            return Err(bad(format!(
                "device_id {} is also that of LV '{}' in pool '{}'",
                thin.device_id, other.name, thin.pool
            )));
        }
        Ok(())
    }
}

impl PhysicalVolume {
    fn from_section(key: &str, s: &Section, vg_at: &str) -> Result<PhysicalVolume, VgError> {
        let at = format!("{vg_at}, PV {key}");
        let mut extra = Vec::new();
        for (k, node) in &s.entries {
            if !matches!(
                k.as_str(),
                "id" | "device" | "status" | "flags" | "dev_size" | "pe_start" | "pe_count"
            ) {
                extra.push((k.clone(), node.clone()));
            }
        }
        Ok(PhysicalVolume {
            key: key.to_string(),
            id: get_id(s, &at)?,
            device: s.get_str("device").unwrap_or_default().to_string(),
            status: get_strings(s, &at, "status")?,
            flags: get_strings_or_empty(s, &at, "flags")?,
            dev_size_sectors: get_u64_or(s, &at, "dev_size", 0)?,
            pe_start_sectors: get_u64(s, &at, "pe_start")?,
            pe_count: get_u64(s, &at, "pe_count")?,
            extra,
        })
    }

    fn to_section(&self) -> Section {
        let mut s = Section::new();
        s.set_value("id", Value::Str(self.id.to_string()));
        s.set_value("device", Value::Str(self.device.clone()));
        s.set_value("status", strings(&self.status));
        s.set_value("flags", strings(&self.flags));
        s.set_value("dev_size", int(self.dev_size_sectors));
        s.set_value("pe_start", int(self.pe_start_sectors));
        s.set_value("pe_count", int(self.pe_count));
        s.entries.extend(self.extra.iter().cloned());
        s
    }
}

impl LogicalVolume {
    fn from_section(name: &str, s: &Section, vg_at: &str) -> Result<LogicalVolume, VgError> {
        let at = format!("{vg_at}, LV '{name}'");
        check_name(&at, name)?;
        let count = get_u64(s, &at, "segment_count")?;
        let mut extra = Vec::new();
        let mut segments = Vec::new();
        for (k, node) in &s.entries {
            match (k.as_str(), node) {
                (
                    "id" | "status" | "flags" | "creation_time" | "creation_host" | "segment_count",
                    _,
                ) => {}
                (seg, Node::Section(body)) if is_segment_key(seg) => {
                    segments.push(Segment::from_section(body, &format!("{at}, {seg}"))?)
                }
                _ => extra.push((k.clone(), node.clone())),
            }
        }
        if count != segments.len() as u64 {
            return Err(VgError::Inconsistent {
                at,
                why: format!(
                    "segment_count is {count} but {} segments are listed",
                    segments.len()
                ),
            });
        }
        segments.sort_by_key(|s| s.start_extent);
        Ok(LogicalVolume {
            name: name.to_string(),
            id: get_id(s, &at)?,
            status: get_strings(s, &at, "status")?,
            flags: get_strings_or_empty(s, &at, "flags")?,
            creation_time: s.get_int("creation_time"),
            creation_host: s.get_str("creation_host").map(str::to_string),
            extra,
            segments,
        })
    }

    fn to_section(&self) -> Section {
        let mut s = Section::new();
        s.set_value("id", Value::Str(self.id.to_string()));
        s.set_value("status", strings(&self.status));
        s.set_value("flags", strings(&self.flags));
        if let Some(t) = self.creation_time {
            s.set_value("creation_time", Value::Int(t));
        }
        if let Some(h) = &self.creation_host {
            s.set_value("creation_host", Value::Str(h.clone()));
        }
        s.entries.extend(self.extra.iter().cloned());
        s.set_value("segment_count", int(self.segments.len() as u64));
        for (i, seg) in self.segments.iter().enumerate() {
            s.entries
                .push((format!("segment{}", i + 1), Node::Section(seg.to_section())));
        }
        s
    }
}

fn is_segment_key(key: &str) -> bool {
    key.strip_prefix("segment")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

impl Segment {
    /// A new raid segment over `images` (metadata and data sub-LV names per slot), laid out
    /// as lvm2 writes one: `device_count`, `data_copies` (raid10), `region_size`,
    /// `stripe_size` (not for raid1), `raids`.
    #[allow(clippy::too_many_arguments)]
    pub fn new_raid(
        start_extent: u64,
        extent_count: u64,
        segtype: &str,
        data_copies: Option<u64>,
        region_size_sectors: u64,
        stripe_size_sectors: u64,
        images: &[RaidImage],
    ) -> Result<Segment, VgError> {
        let at = format!("new {segtype} segment");
        let level = RaidLevel::of_segtype(segtype).ok_or_else(|| VgError::Inconsistent {
            at: at.clone(),
            why: format!("{segtype:?} is not a raid segment type"),
        })?;
        let mut body = Section::new();
        body.set_value("device_count", Value::Int(images.len() as i64));
        if let Some(c) = data_copies {
            body.set_value("data_copies", Value::Int(c as i64));
        }
        body.set_value("region_size", Value::Int(region_size_sectors as i64));
        if level != RaidLevel::Raid1 {
            body.set_value("stripe_size", Value::Int(stripe_size_sectors as i64));
        }
        let names = images
            .iter()
            .flat_map(|i| i.meta.iter().chain(std::iter::once(&i.data)))
            .map(|n| Value::Str(n.clone()))
            .collect();
        body.set_value("raids", Value::Array(names));
        Ok(Segment {
            start_extent,
            extent_count,
            kind: SegmentKind::Raid {
                raid: RaidSegment::from_body(segtype, level, &body, &at)?,
                body,
            },
        })
    }

    fn from_section(s: &Section, at: &str) -> Result<Segment, VgError> {
        let start_extent = get_u64(s, at, "start_extent")?;
        let extent_count = get_u64(s, at, "extent_count")?;
        if extent_count == 0 {
            return Err(out_of_range(
                at,
                "extent_count",
                0,
                "a segment holds at least one extent",
            ));
        }
        let segtype = s
            .get_str("type")
            .ok_or_else(|| missing_or_wrong(s, at, "type", "a string"))?;
        let kind = if segtype == "striped" {
            let stripes = get_areas(s, at, "stripe_count", "stripes", 128)?;
            let count = stripes.len();
            let stripe_size_sectors = if count > 1 {
                get_u64(s, at, "stripe_size")?
            } else {
                0
            };
            if count > 1 && (stripe_size_sectors < 8 || !stripe_size_sectors.is_power_of_two()) {
                return Err(out_of_range(
                    at,
                    "stripe_size",
                    stripe_size_sectors,
                    "a power of two of at least 8 sectors",
                ));
            }
            SegmentKind::Striped {
                stripe_size_sectors,
                stripes,
            }
        } else {
            let mut body = s.clone();
            for k in ["start_extent", "extent_count", "type"] {
                body.remove(k);
            }
            match RaidLevel::of_segtype(segtype) {
                None if segtype == "snapshot" => {
                    SegmentKind::Snapshot(SnapshotSegment::from_body(&body, at)?)
                }
                None if segtype == "thin-pool" => {
                    SegmentKind::ThinPool(ThinPoolSegment::from_body(&body, at)?)
                }
                None if segtype == "thin" => SegmentKind::Thin(ThinSegment::from_body(&body, at)?),
                Some(level) => SegmentKind::Raid {
                    raid: RaidSegment::from_body(segtype, level, &body, at)?,
                    body,
                },
                None => SegmentKind::Other {
                    segtype: segtype.to_string(),
                    body,
                },
            }
        };
        Ok(Segment {
            start_extent,
            extent_count,
            kind,
        })
    }

    fn to_section(&self) -> Section {
        let mut s = Section::new();
        s.set_value("start_extent", int(self.start_extent));
        s.set_value("extent_count", int(self.extent_count));
        match &self.kind {
            SegmentKind::Striped {
                stripe_size_sectors,
                stripes,
            } => {
                s.set_value("type", Value::Str("striped".into()));
                s.set_value("stripe_count", int(stripes.len() as u64));
                if stripes.len() > 1 {
                    s.set_value("stripe_size", int(*stripe_size_sectors));
                }
                s.set_value("stripes", areas_value(stripes));
            }
            SegmentKind::Raid { raid, body } => {
                s.set_value("type", Value::Str(raid.segtype.clone()));
                s.entries.extend(body.entries.iter().cloned());
            }
            SegmentKind::Snapshot(snap) => {
                s.set_value("type", Value::Str("snapshot".into()));
                snap.write(&mut s);
            }
            SegmentKind::ThinPool(p) => {
                s.set_value("type", Value::Str("thin-pool".into()));
                p.write(&mut s);
            }
            SegmentKind::Thin(t) => {
                s.set_value("type", Value::Str("thin".into()));
                t.write(&mut s);
            }
            SegmentKind::Other { segtype, body } => {
                s.set_value("type", Value::Str(segtype.clone()));
                s.entries.extend(body.entries.iter().cloned());
            }
        }
        s
    }
}

/// lvm2's rules for VG and LV names.
pub fn check_name(at: &str, name: &str) -> Result<(), VgError> {
    let bad = |why: &str| {
        Err(VgError::BadName {
            at: at.to_string(),
            name: name.to_string(),
            why: why.to_string(),
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("it is longer than 127 characters");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are reserved");
    }
    if name.starts_with('-') {
        return bad("it starts with '-'");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "+_.-".contains(*c)))
    {
        return Err(VgError::BadName {
            at: at.to_string(),
            name: name.to_string(),
            why: format!("'{c}' is not allowed (only a-z, A-Z, 0-9, '+', '_', '.' and '-')"),
        });
    }
    Ok(())
}

/// lvm2's extra rules for names of new LVs: reserved prefixes and the suffixes of its sub-LVs.
pub fn check_new_lv_name(at: &str, name: &str) -> Result<(), VgError> {
    check_name(at, name)?;
    let bad = |why: String| {
        Err(VgError::BadName {
            at: at.to_string(),
            name: name.to_string(),
            why,
        })
    };
    for prefix in ["snapshot", "pvmove"] {
        if name.starts_with(prefix) {
            return bad(format!("names starting with '{prefix}' are reserved"));
        }
    }
    for part in [
        "_cdata", "_cmeta", "_corig", "_iorig", "_imeta", "_mimage", "_mlog", "_pmspare",
        "_rimage", "_rmeta", "_tdata", "_tmeta", "_vdata", "_vorigin", "_wcorig",
    ] {
        if name.contains(part) {
            return bad(format!("'{part}' is reserved for lvm2's internal volumes"));
        }
    }
    Ok(())
}

fn int(v: u64) -> Value {
    // Every value stored comes from validated u64s far below i64::MAX.
    Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

fn strings(items: &[String]) -> Value {
    Value::Array(items.iter().map(|s| Value::Str(s.clone())).collect())
}

fn out_of_range(at: &str, key: &str, value: u64, why: &str) -> VgError {
    VgError::OutOfRange {
        at: at.to_string(),
        key: key.to_string(),
        value: i64::try_from(value).unwrap_or(i64::MAX),
        why: why.to_string(),
    }
}

fn missing_or_wrong(s: &Section, at: &str, key: &str, expected: &'static str) -> VgError {
    if s.get(key).is_some() {
        VgError::WrongType {
            at: at.to_string(),
            key: key.to_string(),
            expected,
        }
    } else {
        VgError::Missing {
            at: at.to_string(),
            key: key.to_string(),
        }
    }
}

fn get_u64(s: &Section, at: &str, key: &str) -> Result<u64, VgError> {
    match s.get_int(key) {
        Some(v) if v >= 0 => Ok(v as u64),
        Some(v) => Err(VgError::OutOfRange {
            at: at.to_string(),
            key: key.to_string(),
            value: v,
            why: "must not be negative".into(),
        }),
        None => Err(missing_or_wrong(s, at, key, "an integer")),
    }
}

fn get_u64_or(s: &Section, at: &str, key: &str, default: u64) -> Result<u64, VgError> {
    if s.get(key).is_none() {
        Ok(default)
    } else {
        get_u64(s, at, key)
    }
}

/// An integer that may be left out.
fn get_u64_opt(s: &Section, at: &str, key: &str) -> Result<Option<u64>, VgError> {
    match s.get(key) {
        None => Ok(None),
        Some(_) => get_u64(s, at, key).map(Some),
    }
}

/// The areas of a segment as lvm2 writes them for `striped` and `mirror` segments: a count
/// (`count_key`, 1 to `max`) and an array (`array_key`) of that many pairs of a PV or LV
/// name and its first extent.
fn get_areas(
    s: &Section,
    at: &str,
    count_key: &str,
    array_key: &str,
    max: u64,
) -> Result<Vec<Stripe>, VgError> {
    let count = get_u64(s, at, count_key)?;
    let items = s
        .get_array(array_key)
        .ok_or_else(|| missing_or_wrong(s, at, array_key, "an array"))?;
    if count == 0 || count > max || items.len() as u64 != count * 2 {
        return Err(VgError::Inconsistent {
            at: at.to_string(),
            why: format!(
                "{count_key} is {count} but '{array_key}' has {} entries",
                items.len()
            ),
        });
    }
    items
        .chunks(2)
        .map(|pair| match pair {
            [Value::Str(name), Value::Int(pe)] if *pe >= 0 => Ok(Stripe {
                pv: name.clone(),
                start_pe: *pe as u64,
            }),
            _ => Err(VgError::WrongType {
                at: at.to_string(),
                key: array_key.into(),
                expected: "pairs of PV or LV name and start extent",
            }),
        })
        .collect()
}

/// `areas` as the array [`get_areas`] reads.
fn areas_value(areas: &[Stripe]) -> Value {
    Value::Array(
        areas
            .iter()
            .flat_map(|a| [Value::Str(a.pv.clone()), int(a.start_pe)])
            .collect(),
    )
}

fn get_strings(s: &Section, at: &str, key: &str) -> Result<Vec<String>, VgError> {
    let items = s
        .get_array(key)
        .ok_or_else(|| missing_or_wrong(s, at, key, "an array of strings"))?;
    items
        .iter()
        .map(|v| match v {
            Value::Str(s) => Ok(s.clone()),
            _ => Err(VgError::WrongType {
                at: at.to_string(),
                key: key.to_string(),
                expected: "an array of strings",
            }),
        })
        .collect()
}

fn get_strings_or_empty(s: &Section, at: &str, key: &str) -> Result<Vec<String>, VgError> {
    if s.get(key).is_none() {
        Ok(Vec::new())
    } else {
        get_strings(s, at, key)
    }
}

fn get_id(s: &Section, at: &str) -> Result<Id, VgError> {
    let text = s
        .get_str("id")
        .ok_or_else(|| missing_or_wrong(s, at, "id", "a string"))?;
    text.parse()
        .map_err(|e: super::id::IdError| VgError::BadId {
            at: at.to_string(),
            why: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VG as lvm2 2.03 writes it: a linear LV spanning two PVs, a striped LV, and a raid1
    /// LV with its sub-LVs, which tessera must carry unchanged.
    pub(crate) const SAMPLE: &str = r#"vg0 {
id = "GxcpjS-hnrn-M2oA-1cVn-t1hJ-6Dzt-xawGVU"
seqno = 7
format = "lvm2"
status = ["RESIZEABLE", "READ", "WRITE"]
flags = []
tags = ["web"]
extent_size = 8192
max_lv = 0
max_pv = 0
metadata_copies = 0
physical_volumes {
pv0 {
id = "thNLKr-4SoW-oV7w-lDbg-vblG-He0v-cmMPk8"
device = "/dev/loop0"
status = ["ALLOCATABLE"]
flags = []
dev_size = 131072
pe_start = 2048
pe_count = 15
}
pv1 {
id = "aaNLKr-4SoW-oV7w-lDbg-vblG-He0v-cmMPk8"
device = "/dev/loop1"
status = ["ALLOCATABLE"]
flags = []
dev_size = 131072
pe_start = 2048
pe_count = 15
}
}
logical_volumes {
lin {
id = "bbNLKr-4SoW-oV7w-lDbg-vblG-He0v-cmMPk8"
status = ["READ", "WRITE", "VISIBLE"]
flags = []
creation_time = 1795387712
creation_host = "vm"
segment_count = 2
segment1 {
start_extent = 0
extent_count = 10
type = "striped"
stripe_count = 1
stripes = ["pv0", 0]
}
segment2 {
start_extent = 10
extent_count = 2
type = "striped"
stripe_count = 1
stripes = ["pv1", 0]
}
}
str {
id = "ccNLKr-4SoW-oV7w-lDbg-vblG-He0v-cmMPk8"
status = ["READ", "WRITE", "VISIBLE"]
flags = []
segment_count = 1
segment1 {
start_extent = 0
extent_count = 4
type = "striped"
stripe_count = 2
stripe_size = 128
stripes = ["pv0", 10, "pv1", 2]
}
}
r1 {
id = "ddNLKr-4SoW-oV7w-lDbg-vblG-He0v-cmMPk8"
status = ["READ", "WRITE", "VISIBLE"]
flags = []
segment_count = 1
segment1 {
start_extent = 0
extent_count = 1
type = "raid1"
device_count = 2
region_size = 4096
raids = ["r1_rmeta_0", "r1_rimage_0", "r1_rmeta_1", "r1_rimage_1"]
}
}
r1_rimage_0 {
id = "eeNLKr-4SoW-oV7w-lDbg-vblG-He0v-cmMPk8"
status = ["READ", "WRITE"]
flags = []
segment_count = 1
segment1 {
start_extent = 0
extent_count = 1
type = "striped"
stripe_count = 1
stripes = ["pv0", 12]
}
}
r1_rmeta_0 {
id = "ffNLKr-4SoW-oV7w-lDbg-vblG-He0v-cmMPk8"
status = ["READ", "WRITE"]
flags = []
segment_count = 1
segment1 {
start_extent = 0
extent_count = 1
type = "striped"
stripe_count = 1
stripes = ["pv0", 13]
}
}
r1_rimage_1 {
id = "ggNLKr-4SoW-oV7w-lDbg-vblG-He0v-cmMPk8"
status = ["READ", "WRITE"]
flags = []
segment_count = 1
segment1 {
start_extent = 0
extent_count = 1
type = "striped"
stripe_count = 1
stripes = ["pv1", 5]
}
}
r1_rmeta_1 {
id = "hhNLKr-4SoW-oV7w-lDbg-vblG-He0v-cmMPk8"
status = ["READ", "WRITE"]
flags = []
segment_count = 1
segment1 {
start_extent = 0
extent_count = 1
type = "striped"
stripe_count = 1
stripes = ["pv1", 4]
}
}
}
}
# Generated by LVM2 version 2.03.16(2) (2022-05-18): Sun Nov 22 22:48:32 2026
contents = "Text Format Volume Group"
version = 1
description = "Write from lvcreate."
creation_host = "vm"	# Linux vm
creation_time = 1795387712	# Sun Nov 22 22:48:32 2026
"#;

    #[test]
    fn reads_lvm2_text() {
        let (vg, info) = VolumeGroup::from_text(SAMPLE.as_bytes()).unwrap();
        assert_eq!(vg.name, "vg0");
        assert_eq!(vg.seqno, 7);
        assert_eq!(vg.extent_size_bytes(), 4 << 20);
        assert_eq!(vg.pvs.len(), 2);
        assert_eq!(info.description, "Write from lvcreate.");
        let lin = vg.lv("lin").unwrap();
        assert_eq!(lin.extent_count(), 12);
        assert_eq!(lin.segments[1].type_name(), "linear");
        let st = vg.lv("str").unwrap();
        assert_eq!(st.segments[0].type_name(), "striped");
        assert_eq!(st.segments[0].stripe_count(), 2);
        assert_eq!(vg.lv("r1").unwrap().segments[0].type_name(), "raid1");
        assert!(!vg.lv("r1").unwrap().is_plain());
        // lin 10 + str 2 + r1's image and metadata 2 on pv0; lin 2 + str 2 + r1's 2 on pv1.
        assert_eq!(vg.pe_used("pv0"), 14);
        assert_eq!(vg.pe_used("pv1"), 6);
        assert_eq!(vg.pe_free_total(), 30 - 20);
        let raid = vg.lv("r1").unwrap().raid().unwrap();
        assert_eq!(raid.level, RaidLevel::Raid1);
        assert_eq!(raid.region_size_sectors, 4096);
        assert_eq!(raid.stripe_size_sectors, 0);
        assert_eq!(raid.tolerated(), 1);
        assert_eq!(
            raid.images,
            vec![
                RaidImage {
                    meta: Some("r1_rmeta_0".into()),
                    data: "r1_rimage_0".into()
                },
                RaidImage {
                    meta: Some("r1_rmeta_1".into()),
                    data: "r1_rimage_1".into()
                },
            ]
        );
        assert!(!vg.lv("r1_rimage_0").unwrap().is_visible());
        assert_eq!(
            vg.extra,
            vec![(
                "tags".to_string(),
                Node::Value(Value::Array(vec![Value::Str("web".into())]))
            )]
        );
    }

    #[test]
    fn round_trips_in_both_styles_keeping_unknown_parts() {
        let (vg, info) = VolumeGroup::from_text(SAMPLE.as_bytes()).unwrap();
        for style in [Style::Disk, Style::File] {
            let text = vg.to_text(&info, style);
            let (again, info2) = VolumeGroup::from_text(text.as_bytes()).unwrap();
            assert_eq!(again, vg);
            assert_eq!(info2, info);
        }
        // A change to one LV leaves the raid LV's section as it was.
        let mut changed = vg.clone();
        changed.lvs.retain(|l| l.name != "lin");
        let text = changed.to_text(&info, Style::Disk);
        let (again, _) = VolumeGroup::from_text(text.as_bytes()).unwrap();
        assert_eq!(again.lv("r1"), vg.lv("r1"));
        assert!(text.contains(
            "raids = [\"r1_rmeta_0\", \"r1_rimage_0\", \"r1_rmeta_1\", \"r1_rimage_1\"]"
        ));
    }

    fn broken(from: &str, to: &str) -> VgError {
        assert!(SAMPLE.contains(from), "sample lacks {from}");
        VolumeGroup::from_text(SAMPLE.replacen(from, to, 1).as_bytes())
            .expect_err("must be refused")
    }

    #[test]
    fn refuses_inconsistent_metadata_with_a_precise_message() {
        let cases: Vec<(&str, &str, &str)> = vec![
            (
                "stripes = [\"pv0\", 10, \"pv1\", 2]",
                "stripes = [\"pv0\", 9, \"pv1\", 2]",
                "overlap",
            ),
            (
                "stripes = [\"pv1\", 0]",
                "stripes = [\"pv1\", 14]",
                "has 15 extents",
            ),
            (
                "stripes = [\"pv1\", 0]",
                "stripes = [\"pv7\", 0]",
                "which the VG does not have",
            ),
            (
                "segment_count = 2",
                "segment_count = 3",
                "segment_count is 3",
            ),
            ("extent_size = 8192", "extent_size = 0", "extent_size"),
            (
                "pe_count = 15\n}\npv1",
                "pe_count = 99999999999\n}\npv1",
                "do not fit",
            ),
            (
                "start_extent = 10",
                "start_extent = 11",
                "starts at extent 11",
            ),
            ("stripe_count = 2", "stripe_count = 3", "stripe_count is 3"),
            ("stripe_size = 128", "stripe_size = 100", "stripe_size"),
            ("seqno = 7", "seqno = -7", "negative"),
            ("seqno = 7", "seqno = \"7\"", "wrong type"),
            (
                "id = \"GxcpjS-hnrn-M2oA-1cVn-t1hJ-6Dzt-xawGVU\"",
                "id = \"short\"",
                "identifier",
            ),
            ("vg0 {", "vg$0 {", "not allowed"),
            ("extent_count = 4", "extent_count = 5", "do not divide"),
            (
                "pv1 {\nid = \"aaNLKr",
                "pv1 {\nid = \"thNLKr",
                "listed twice",
            ),
            ("format = \"lvm2\"", "format = \"lvm1\"", "not lvm2"),
            // Found by fuzzing: a value where a section belongs used to vanish on rewrite.
            (
                "metadata_copies = 0",
                "metadata_copies = 0\nlogical_volumes = 0",
                "wrong type",
            ),
        ];
        for (from, to, expected) in cases {
            let err = broken(from, to).to_string();
            assert!(
                err.contains(expected),
                "{from} -> {to}: got '{err}', expected '{expected}'"
            );
            assert!(
                err.contains("VG '") || err.contains("vg$0"),
                "{err} does not say where"
            );
        }
    }

    #[test]
    fn counts_pv_areas_named_by_unknown_segment_types() {
        let text = SAMPLE
            .replacen(
                "raids = [\"r1_rmeta_0\", \"r1_rimage_0\", \"r1_rmeta_1\", \"r1_rimage_1\"]",
                "mirrors = [\"pv1\", 6]",
                1,
            )
            .replacen("type = \"raid1\"", "type = \"mirror\"", 1);
        let vg = VolumeGroup::from_text(text.as_bytes()).unwrap().0;
        assert_eq!(vg.pe_used("pv1"), 7);
    }

    /// SAMPLE's raid1 LV turned into a raid5 of 3 with keys lvm2 may write and one it
    /// does not know yet.
    fn raid5_text(extra: &str) -> String {
        SAMPLE.replacen(
            "type = \"raid1\"\ndevice_count = 2\nregion_size = 4096\nraids = [\"r1_rmeta_0\", \"r1_rimage_0\", \"r1_rmeta_1\", \"r1_rimage_1\"]",
            &format!(
                "type = \"raid5_rs\"\ndevice_count = 2\nregion_size = 1024\nstripe_size = 128\n\
                 min_recovery_rate = 100\ndata_offset = 2048\n{extra}\
                 raids = [\"r1_rmeta_0\", \"r1_rimage_0\", \"r1_rmeta_1\", \"r1_rimage_1\"]"
            ),
            1,
        )
    }

    #[test]
    fn raid_segments_are_typed_and_written_back_key_for_key() {
        let text = raid5_text("future_key = [\"x\", 1]\n");
        let (vg, info) = VolumeGroup::from_text(text.as_bytes()).unwrap();
        let lv = vg.lv("r1").unwrap();
        let raid = lv.raid().unwrap();
        assert_eq!(raid.level, RaidLevel::Raid5);
        assert_eq!(raid.dm_type(), "raid5_rs");
        assert_eq!(raid.stripe_size_sectors, 128);
        assert_eq!(raid.region_size_sectors, 1024);
        assert_eq!(raid.data_offset_sectors, Some(2048));
        assert_eq!(raid.images.len(), 2);
        assert_eq!(raid.tolerated(), 1);
        assert_eq!(lv.segments[0].stripe_count(), 2);
        assert!(!lv.is_plain());
        let names: HashSet<&str> = vg.lvs.iter().map(|l| l.name.as_str()).collect();
        let mut refs = lv.referenced_names(&names);
        refs.sort();
        assert_eq!(
            refs,
            ["r1_rimage_0", "r1_rimage_1", "r1_rmeta_0", "r1_rmeta_1"]
        );
        // Every key of the segment, known or not, comes back in its place.
        for style in [Style::Disk, Style::File] {
            let written = vg.to_text(&info, style);
            let seg = |t: &str| {
                let root = config::parse(t.as_bytes()).unwrap();
                let vg = root.sections().next().unwrap().1.clone();
                let Some(Node::Section(lvs)) = vg.get("logical_volumes").cloned() else {
                    panic!("no LVs")
                };
                let r1 = lvs
                    .sections()
                    .find(|(k, _)| *k == "r1")
                    .map(|(_, s)| s.clone())
                    .unwrap();
                r1
            };
            assert_eq!(seg(&written), seg(&text), "{style:?}");
            let keys: Vec<String> = match seg(&written).get("segment1") {
                Some(Node::Section(s)) => s.entries.iter().map(|(k, _)| k.clone()).collect(),
                _ => panic!("no segment1"),
            };
            assert_eq!(
                keys,
                [
                    "start_extent",
                    "extent_count",
                    "type",
                    "device_count",
                    "region_size",
                    "stripe_size",
                    "min_recovery_rate",
                    "data_offset",
                    "future_key",
                    "raids"
                ]
            );
        }
        // raid10 keeps data_copies; lvm2's short names map to dm-raid's.
        let r10 = SAMPLE.replacen(
            "type = \"raid1\"\ndevice_count = 2",
            "type = \"raid10\"\ndevice_count = 2\ndata_copies = 2\nstripe_size = 128",
            1,
        );
        let vg = VolumeGroup::from_text(r10.as_bytes()).unwrap().0;
        let raid = vg.lv("r1").unwrap().raid().unwrap();
        assert_eq!((raid.level, raid.copies()), (RaidLevel::Raid10, 2));
        let r6 = raid5_text("").replacen("raid5_rs", "raid6", 1);
        let vg = VolumeGroup::from_text(r6.as_bytes()).unwrap().0;
        assert_eq!(vg.lv("r1").unwrap().raid().unwrap().dm_type(), "raid6_zr");
    }

    #[test]
    fn broken_raid_segments_are_refused_naming_the_segment() {
        let raids = "raids = [\"r1_rmeta_0\", \"r1_rimage_0\", \"r1_rmeta_1\", \"r1_rimage_1\"]";
        let cases = [
            (
                "device_count = 2",
                "device_count = 3",
                "'raids' has 4 entries",
            ),
            (
                raids,
                "raids = [\"r1_rmeta_0\", \"r1_rimage_0\", \"r1_rmeta_1\"]",
                "'raids' has 3",
            ),
            (
                raids,
                "raids = [\"r1_rmeta_0\", \"r1_rimage_0\", \"r1_rmeta_1\", 7]",
                "LV names",
            ),
            (
                raids,
                "raids = [\"r1_rmeta_0\", \"r1_rimage_0\", \"r1_rmeta_1\", \"nope\"]",
                "sub-LV 'nope'",
            ),
            (
                raids,
                "raids = [\"r1_rmeta_0\", \"r1_rimage_0\", \"r1_rmeta_1\", \"r1\"]",
                "sub-LV 'r1'",
            ),
            (raids, "mirrors = 1", "'raids' is missing"),
            ("device_count = 2", "device_count = 0", "1 to 256"),
            ("device_count = 2", "device_count = -2", "negative"),
            ("region_size = 4096", "region_size = \"big\"", "wrong type"),
            (
                "type = \"raid1\"",
                "type = \"raid5_ls\"",
                "'stripe_size' is missing",
            ),
            (
                "region_size = 4096",
                "region_size = 4096\nstripe_size = 100",
                "power of two",
            ),
            (
                "region_size = 4096",
                "region_size = 4096\ndata_copies = 3",
                "data_copies",
            ),
        ];
        for (from, to, expected) in cases {
            let err = broken(from, to).to_string();
            assert!(
                err.contains(expected) && err.contains("LV 'r1'"),
                "{from} -> {to}: got '{err}', expected '{expected}'"
            );
        }
    }

    /// `vgcfgbackup` of a VG where lvm2 2.03 made an origin and two snapshots of it
    /// (`lvcreate -s -L 8M` and `-L 6M -c 16k`).
    const SNAPSHOT_VG: &str = include_str!("testdata/snapshot_vg.txt");

    /// The section of LV `name` in VG text `text`.
    pub(super) fn lv_section(text: &str, name: &str) -> Section {
        let root = config::parse(text.as_bytes()).unwrap();
        let vg = root.sections().next().unwrap().1.clone();
        let Some(Node::Section(lvs)) = vg.get("logical_volumes").cloned() else {
            panic!("no LVs")
        };
        let found = lvs
            .sections()
            .find(|(k, _)| *k == name)
            .map(|(_, s)| s.clone());
        found.unwrap_or_else(|| panic!("no LV {name}"))
    }

    #[test]
    fn snapshot_segments_are_typed_and_written_back_as_lvm2_writes_them() {
        let (vg, info) = VolumeGroup::from_text(SNAPSHOT_VG.as_bytes()).unwrap();
        let s0 = vg.lv("snapshot0").unwrap();
        assert_eq!(
            s0.snapshot(),
            Some(&SnapshotSegment {
                origin: "origin".into(),
                cow: "snap".into(),
                chunk_size_sectors: 8,
                merging: false,
                extra: Vec::new(),
            })
        );
        // lvm2 gives snapshotN the origin's extent count.
        assert_eq!(s0.extent_count(), vg.lv("origin").unwrap().extent_count());
        assert_eq!(s0.segments[0].type_name(), "snapshot");
        assert_eq!(
            vg.lv("snapshot1")
                .unwrap()
                .snapshot()
                .unwrap()
                .chunk_size_sectors,
            32
        );
        assert!(vg.is_origin("origin") && !vg.is_origin("snap"));
        assert_eq!(
            vg.origins().iter().map(|l| &l.name).collect::<Vec<_>>(),
            ["origin"]
        );
        let snaps: Vec<&str> = vg
            .snapshots_of("origin")
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(snaps, ["snapshot0", "snapshot1"]);
        assert_eq!(vg.cow_of("snapshot1").unwrap().name, "snap2");
        assert_eq!(vg.snapshot_of_cow("snap2").unwrap().name, "snapshot1");
        assert!(vg.is_cow("snap") && vg.is_cow("snap2") && !vg.is_cow("origin"));
        assert!(!vg.is_merging("snap") && !vg.is_merging("origin"));
        assert_eq!(vg.next_snapshot_name(), "snapshot2");
        // As lvs shows them: the COW LVs (no VISIBLE flag) yes, snapshotN no.
        let shown: Vec<&str> = vg
            .lvs
            .iter()
            .filter(|l| vg.lv_is_visible(l))
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(shown, ["origin", "snap", "snap2"]);
        // Extents: origin 16, snap 8, snap2 6 on pv0; snapshotN hold none.
        assert_eq!(vg.pe_used("pv0"), 30);
        for style in [Style::Disk, Style::File] {
            let text = vg.to_text(&info, style);
            let (again, _) = VolumeGroup::from_text(text.as_bytes()).unwrap();
            assert_eq!(again, vg, "{style:?}");
            for lv in ["origin", "snap", "snap2", "snapshot0", "snapshot1"] {
                assert_eq!(
                    lv_section(&text, lv),
                    lv_section(SNAPSHOT_VG, lv),
                    "{lv} {style:?}"
                );
            }
        }
        // Merging: merging_store in cow_store's place, and back.
        let merging = SNAPSHOT_VG.replacen("cow_store = \"snap2\"", "merging_store = \"snap2\"", 1);
        let (mvg, minfo) = VolumeGroup::from_text(merging.as_bytes()).unwrap();
        assert!(mvg.lv("snapshot1").unwrap().snapshot().unwrap().merging);
        assert!(mvg.is_merging("snap2") && mvg.is_merging("origin"));
        assert!(!mvg.is_merging("snap"));
        assert_eq!(mvg.merging_snapshot_of("origin").unwrap().name, "snapshot1");
        assert!(!mvg.lv_is_visible(mvg.lv("snap2").unwrap()));
        let text = mvg.to_text(&minfo, Style::File);
        assert_eq!(
            lv_section(&text, "snapshot1"),
            lv_section(&merging, "snapshot1")
        );
    }

    #[test]
    fn broken_snapshot_segments_are_refused_naming_the_segment() {
        let cases = [
            (
                "cow_store = \"snap\"",
                "cow_store = \"nope\"",
                "COW store 'nope'",
            ),
            (
                "origin = \"origin\"\n\t\t\t\tcow_store = \"snap\"",
                "origin = \"gone\"\n\t\t\t\tcow_store = \"snap\"",
                "origin 'gone'",
            ),
            (
                "cow_store = \"snap\"",
                "cow_store = \"snap2\"",
                "already the store",
            ),
            (
                "cow_store = \"snap\"",
                "cow_store = \"origin\"",
                "both its origin",
            ),
            (
                "cow_store = \"snap\"",
                "cow_store = \"snapshot1\"",
                "a snapshot itself",
            ),
            (
                "cow_store = \"snap\"",
                "cow_store = \"snap\"\n\t\t\t\tmerging_store = \"snap\"",
                "both",
            ),
            ("cow_store = \"snap\"", "", "'cow_store' is missing"),
            ("cow_store = \"snap\"", "cow_store = 7", "wrong type"),
            ("chunk_size = 8", "chunk_size = 12", "power of two"),
            ("chunk_size = 8", "chunk_size = 4", "power of two"),
            ("chunk_size = 8\n", "", "'chunk_size' is missing"),
        ];
        for (from, to, expected) in cases {
            assert!(SNAPSHOT_VG.contains(from), "sample lacks {from}");
            let err = VolumeGroup::from_text(SNAPSHOT_VG.replacen(from, to, 1).as_bytes())
                .expect_err("must be refused")
                .to_string();
            assert!(
                err.contains(expected) && err.contains("LV 'snapshot0'"),
                "{from} -> {to}: got '{err}', expected '{expected}'"
            );
        }
    }

    /// `vgcfgbackup` of a VG where lvm2 2.03 made two thin pools (64 KiB chunks with
    /// zeroing and passdown; 256 KiB without zeroing, nopassdown), a thin LV in each, a
    /// thin snapshot and a snapshot of that snapshot.
    const THIN_VG: &str = include_str!("testdata/thin_vg.txt");
    /// The same VG with only its first pool, as lvcreate left it (transaction 0).
    const THIN_POOL_NEW_VG: &str = include_str!("testdata/thin_pool_new_vg.txt");

    #[test]
    fn thin_segments_are_typed_and_written_back_as_lvm2_writes_them() {
        let (vg, info) = VolumeGroup::from_text(THIN_VG.as_bytes()).unwrap();
        let pool = vg.lv("pool").unwrap().thin_pool().unwrap();
        assert_eq!(
            pool,
            &ThinPoolSegment {
                metadata: "pool_tmeta".into(),
                data: "pool_tdata".into(),
                transaction_id: 3,
                chunk_size_sectors: 128,
                discards: Some(ThinDiscards::Passdown),
                zero_new_blocks: Some(1),
                crop_metadata: None,
                messages: Vec::new(),
                extra: Vec::new(),
            }
        );
        assert!(pool.zeroes());
        let pool2 = vg.lv("pool2").unwrap().thin_pool().unwrap();
        assert_eq!(pool2.chunk_size_sectors, 512);
        assert_eq!(pool2.discards(), ThinDiscards::NoPassdown);
        assert!(!pool2.zeroes());
        let snap2 = vg.lv("snap2").unwrap();
        assert_eq!(
            snap2.thin(),
            Some(&ThinSegment {
                pool: "pool".into(),
                transaction_id: 2,
                device_id: 3,
                origin: Some("snap1".into()),
                merge: None,
                external_origin: None,
                extra: Vec::new(),
            })
        );
        assert!(snap2.activation_skip() && !vg.lv("thin1").unwrap().activation_skip());
        assert_eq!(vg.lv("pool").unwrap().segments[0].type_name(), "thin-pool");
        assert_eq!(snap2.segments[0].type_name(), "thin");
        let names = |lvs: Vec<&LogicalVolume>| -> Vec<String> {
            lvs.iter().map(|l| l.name.clone()).collect()
        };
        assert_eq!(names(vg.thin_pools()), ["pool", "pool2"]);
        assert_eq!(names(vg.thin_lvs_of("pool")), ["thin1", "snap1", "snap2"]);
        assert_eq!(names(vg.thin_snapshots_of("snap1")), ["snap2"]);
        assert_eq!(vg.pool_of_metadata("pool2_tmeta").unwrap().name, "pool2");
        assert_eq!(vg.pool_of_data("pool_tdata").unwrap().name, "pool");
        for (lv, pool) in [
            ("pool", "pool"),
            ("snap2", "pool"),
            ("thin2", "pool2"),
            ("pool2_tdata", "pool2"),
        ] {
            assert_eq!(vg.pool_of(lv).unwrap().name, pool, "{lv}");
        }
        assert!(vg.pool_of("lvol0_pmspare").is_none());
        assert_eq!(vg.pmspare().unwrap().name, "lvol0_pmspare");
        assert_eq!(vg.next_thin_device_id("pool"), Some(4));
        assert_eq!(vg.next_thin_device_id("pool2"), Some(2));
        assert_eq!(vg.next_lvol_name(), "lvol1");
        // As lvs shows them: pools and thin LVs; _tmeta, _tdata and the spare hidden.
        let shown: Vec<&str> = vg
            .lvs
            .iter()
            .filter(|l| vg.lv_is_visible(l))
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(shown, ["pool", "pool2", "thin1", "snap1", "snap2", "thin2"]);
        // Extents: only the hidden LVs hold any (2 + 2 + 16 + 2 + 12).
        assert_eq!(vg.pe_used("pv0") + vg.pe_used("pv1"), 34);
        let refs = {
            let all: HashSet<&str> = vg.lvs.iter().map(|l| l.name.as_str()).collect();
            let mut r = vg.lv("snap2").unwrap().referenced_names(&all);
            r.sort();
            r.into_iter().map(str::to_string).collect::<Vec<_>>()
        };
        assert_eq!(refs, ["pool", "snap1"]);
        for text in [THIN_VG, THIN_POOL_NEW_VG] {
            let (vg, info) = VolumeGroup::from_text(text.as_bytes()).unwrap();
            for style in [Style::Disk, Style::File] {
                let written = vg.to_text(&info, style);
                let (again, _) = VolumeGroup::from_text(written.as_bytes()).unwrap();
                assert_eq!(again, vg, "{style:?}");
                for lv in &vg.lvs {
                    assert_eq!(
                        lv_section(&written, &lv.name),
                        lv_section(text, &lv.name),
                        "{} {style:?}",
                        lv.name
                    );
                }
            }
        }
        let _ = info;
    }

    #[test]
    fn pending_pool_messages_and_unknown_keys_are_kept_in_order() {
        let text = THIN_VG.replacen(
            "\t\t\t\tzero_new_blocks = 1\n",
            "\t\t\t\tzero_new_blocks = 1\n\t\t\t\tcrop_metadata = 0\n\t\t\t\tlow_water_mark = 7\n\n\t\t\t\tmessage1 {\n\t\t\t\t\tcreate = \"snap2\"\n\t\t\t\t}\n\t\t\t\tmessage2 {\n\t\t\t\t\tdelete = 9\n\t\t\t\t}\n",
            1,
        );
        assert_ne!(text, THIN_VG);
        let (vg, info) = VolumeGroup::from_text(text.as_bytes()).unwrap();
        let pool = vg.lv("pool").unwrap().thin_pool().unwrap();
        assert_eq!(
            pool.messages,
            [ThinMessage::Create("snap2".into()), ThinMessage::Delete(9)]
        );
        assert_eq!(pool.crop_metadata, Some(0));
        assert_eq!(pool.extra.len(), 1);
        let written = vg.to_text(&info, Style::File);
        let seg = match lv_section(&written, "pool").get("segment1") {
            Some(Node::Section(s)) => s.clone(),
            _ => panic!("no segment1"),
        };
        let keys: Vec<&str> = seg.entries.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "start_extent",
                "extent_count",
                "type",
                "metadata",
                "pool",
                "transaction_id",
                "chunk_size",
                "discards",
                "zero_new_blocks",
                "crop_metadata",
                "low_water_mark",
                "message1",
                "message2"
            ]
        );
        assert_eq!(lv_section(&written, "pool"), lv_section(&text, "pool"));
        // A thin LV's keys lvm2 does not write today come back after the known ones.
        let text = THIN_VG.replacen(
            "origin = \"snap1\"\n",
            "origin = \"snap1\"\n\t\t\t\tfuture = \"x\"\n",
            1,
        );
        let (vg, info) = VolumeGroup::from_text(text.as_bytes()).unwrap();
        assert_eq!(vg.lv("snap2").unwrap().thin().unwrap().extra.len(), 1);
        let written = vg.to_text(&info, Style::Disk);
        assert_eq!(lv_section(&written, "snap2"), lv_section(&text, "snap2"));
    }

    #[test]
    fn broken_thin_segments_are_refused_naming_the_segment() {
        let cases = [
            ("metadata = \"pool_tmeta\"", "metadata = \"nope\"", "LV 'pool'", "metadata LV 'nope'"),
            ("pool = \"pool_tdata\"", "pool = \"pool_tmeta\"", "LV 'pool'", "both its metadata and its data"),
            ("pool = \"pool_tdata\"", "pool = \"pool2_tdata\"", "LV 'pool", "belongs to pool"),
            ("pool = \"pool_tdata\"", "pool = \"thin1\"", "LV 'pool'", "is a thin itself"),
            ("chunk_size = 128", "chunk_size = 100", "LV 'pool'", "multiple of 128"),
            ("chunk_size = 128", "chunk_size = 64", "LV 'pool'", "multiple of 128"),
            ("chunk_size = 128", "chunk_size = \"x\"", "LV 'pool'", "wrong type"),
            ("discards = \"passdown\"", "discards = \"sometimes\"", "LV 'pool'", "not one of"),
            ("transaction_id = 3\n", "", "LV 'pool'", "'transaction_id' is missing"),
            ("extent_count = 16\t# 16 Megabytes\n\n\t\t\t\ttype = \"thin-pool\"", "extent_count = 15\n\t\t\t\ttype = \"thin-pool\"", "LV 'pool'", "data LV 'pool_tdata' has 16"),
            ("thin_pool = \"pool\"", "thin_pool = \"thin2\"", "LV 'thin1'", "as a pool"),
            ("origin = \"thin1\"", "origin = \"thin2\"", "LV 'snap1'", "not another thin LV of pool 'pool'"),
            ("origin = \"thin1\"", "origin = \"snap1\"", "LV 'snap1'", "not another thin LV"),
            ("device_id = 2", "device_id = 1", "LV 'thin1'", "device_id 1 is also that of LV 'snap1'"),
            ("device_id = 2", "device_id = 16777216", "LV 'snap1'", "at most 16777215"),
            ("device_id = 2", "device_id = -2", "LV 'snap1'", "negative"),
            ("zero_new_blocks = 1", "zero_new_blocks = 1\n\t\t\t\tmessage1 {\n\t\t\t\t\tcreate = \"thin2\"\n\t\t\t\t}", "LV 'pool'", "not a thin LV of this pool"),
            ("zero_new_blocks = 1", "zero_new_blocks = 1\n\t\t\t\tmessage1 {\n\t\t\t\t\ttrim = \"thin1\"\n\t\t\t\t}", "LV 'pool'", "neither 'create' nor 'delete'"),
            ("zero_new_blocks = 1", "zero_new_blocks = 1\n\t\t\t\tmessage1 {\n\t\t\t\t\tdelete = 1\n\t\t\t\t\tcreate = \"thin1\"\n\t\t\t\t}", "LV 'pool'", "both 'create' and 'delete'"),
        ];
        for (from, to, at, expected) in cases {
            assert!(THIN_VG.contains(from), "sample lacks {from:?}");
            let err = VolumeGroup::from_text(THIN_VG.replacen(from, to, 1).as_bytes())
                .expect_err("must be refused")
                .to_string();
            assert!(
                err.contains(expected) && err.contains(at),
                "{from} -> {to}: got '{err}', expected '{expected}' at {at}"
            );
        }
    }

    #[test]
    fn names_follow_lvm2_rules() {
        assert!(check_name("x", "vg_data-1.+").is_ok());
        for bad in ["", "-vg", ".", "..", "a b", "a/b", "é", &"x".repeat(128)] {
            assert!(check_name("x", bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_new_lv_name("x", "data_rimage_0").is_err());
        assert!(check_new_lv_name("x", "snapshot1").is_err());
        assert!(check_new_lv_name("x", "data").is_ok());
    }
}
