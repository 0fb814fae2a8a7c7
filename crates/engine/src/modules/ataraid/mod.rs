//! Firmware ("fake") RAID sets of ATA RAID controllers (Adaptec HostRAID, LSI MegaRAID,
//! NVIDIA MediaShield, Promise FastTrak, Silicon Image, VIA, JMicron, HighPoint), as dmraid
//! finds them: the module claims each disk whose metadata one of the formats in
//! `tessera_formats::ataraid` reads, joins the members of one set (by the set name dmraid
//! gives it), and serves the set read-only as `md/NAME`, laid out as the metadata says:
//! striped, mirrored, raid5 or concatenated, and the two-level mirror of stripes and stripe
//! of mirrors. A raid1 or raid5 set missing a member is read from its redundancy.
//!
//! tessera does not write these formats: a set is only ever served read-only, and the
//! member metadata is left as the BIOS wrote it.

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use tessera_block::{BlockDevice, BlockError, SharedDevice, SliceDevice};
use tessera_formats::ataraid::{self, AtaraidError, Level, MemberState, Vendor};
use tessera_mapper::{MappedDevice, Table, TargetRegistry};

use crate::format::{
    Activated, Assembly, Finding, FormatModule, Inner, Member, Node, Place, Shown, Volume,
};

/// Disks holding firmware RAID metadata of one of the formats tessera reads.
pub struct AtaraidMembers;

/// Reads `device` with every format: the first that finds its metadata answers; damaged
/// metadata is the answer when no format reads the device cleanly.
pub fn read(device: &dyn BlockDevice) -> Result<Option<ataraid::Member>, AtaraidError> {
    let mut damaged = None;
    for (_, probe) in ataraid::probers() {
        match probe(device) {
            Ok(Some(m)) => return Ok(Some(m)),
            Ok(None) => {}
            Err(e) => {
                damaged.get_or_insert(e);
            }
        }
    }
    match damaged {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

/// The vendor whose metadata `e` is about, for the finding's format name.
fn error_vendor(e: &AtaraidError) -> Option<Vendor> {
    match e {
        AtaraidError::Truncated { vendor, .. }
        | AtaraidError::Checksum { vendor, .. }
        | AtaraidError::Malformed { vendor, .. }
        | AtaraidError::Unsupported { vendor, .. } => Some(*vendor),
        AtaraidError::Block(_) => None,
    }
}

fn state_word(s: MemberState) -> &'static str {
    match s {
        MemberState::Ok => "active",
        other => other.as_str(),
    }
}

fn member_detail(m: &ataraid::Member) -> serde_json::Value {
    serde_json::json!({
        "format": m.vendor.dmraid_name(),
        "set": m.set_name,
        "set_id": format!("{:x}", m.set_id),
        "type": m.level.dmraid_type(),
        "index": m.index,
        "member_count": m.member_count,
        "stripe_sectors": m.stripe_sectors,
        "data_offset_sectors": m.data_offset,
        "data_sectors": m.data_sectors,
        "metadata_offset_sectors": m.metadata_offset,
        "state": m.state.as_str(),
    })
}

impl FormatModule for AtaraidMembers {
    fn name(&self) -> &'static str {
        "ataraid"
    }

    fn probe(&self, name: &str, device: &SharedDevice) -> Option<(Finding, Vec<Inner>)> {
        match read(device.as_ref()) {
            Ok(None) => None,
            // A set whose first member's data starts at sector 0 (HighPoint 37x) holds that
            // member's record inside itself: the assembled set is not a member of itself.
            Ok(Some(m)) if name.strip_prefix("md/") == Some(m.set_name.as_str()) => None,
            Ok(Some(m)) => {
                let role = if m.level == Level::Spare {
                    "spare".to_string()
                } else {
                    format!("member {} of {}", m.index, m.member_count)
                };
                let mut f = Finding::new(
                    m.vendor.blkid_type(),
                    format!(
                        "{} {} {role} of set {}, {}",
                        m.vendor.description(),
                        m.level.dmraid_type(),
                        m.set_name,
                        m.state.as_str()
                    ),
                );
                f.detail = member_detail(&m);
                Some((f, Vec::new()))
            }
            Err(e) => {
                let format = error_vendor(&e)
                    .map(|v| v.blkid_type())
                    .unwrap_or("ataraid_member");
                Finding::damaged(
                    format,
                    "firmware RAID metadata that cannot be read",
                    e.to_string(),
                )
            }
        }
    }

    fn assemble(&self, members: Vec<Member>) -> Vec<Assembly> {
        let mut read_ok = Vec::new();
        for m in &members {
            // Unreadable metadata is already a problem on the device's finding.
            if let Ok(Some(meta)) = read(m.device.as_ref()) {
                read_ok.push((m.name.clone(), m.device.clone(), meta));
            }
        }
        group(read_ok).into_iter().map(assembly).collect()
    }
}

/// A present member of a set.
#[derive(Clone)]
struct Present {
    name: String,
    device: SharedDevice,
    meta: ataraid::Member,
}

/// The members of one set, as their metadata describes it.
#[derive(Clone)]
pub struct Set {
    vendor: Vendor,
    name: String,
    level: Level,
    stripe_sectors: u32,
    member_count: u32,
    /// Each slot's member, by index; `None` for a member that is missing.
    slots: Vec<Option<Present>>,
    spares: Vec<Present>,
    /// Members left out, and why.
    left_out: Vec<(Present, String)>,
}

/// Groups members by vendor and set name, in the order the members came.
fn group(members: Vec<(String, SharedDevice, ataraid::Member)>) -> Vec<Set> {
    let mut by_set: BTreeMap<(Vendor, String), Vec<Present>> = BTreeMap::new();
    for (name, device, meta) in members {
        by_set
            .entry((meta.vendor, meta.set_name.clone()))
            .or_default()
            .push(Present { name, device, meta });
    }
    by_set
        .into_iter()
        .map(|((vendor, name), present)| {
            // The set's shape from its first member that is not a spare.
            let shape = present
                .iter()
                .find(|p| p.meta.level != Level::Spare)
                .map(|p| p.meta.clone());
            let (level, stripe_sectors, member_count) = match &shape {
                Some(m) => (m.level, m.stripe_sectors, m.member_count),
                None => (Level::Spare, 0, 0),
            };
            let mut set = Set {
                vendor,
                name,
                level,
                stripe_sectors,
                member_count,
                slots: vec![None; member_count as usize],
                spares: Vec::new(),
                left_out: Vec::new(),
            };
            for p in present {
                if p.meta.level == Level::Spare || p.meta.state == MemberState::Spare {
                    set.spares.push(p);
                    continue;
                }
                let why = if p.meta.level != level
                    || p.meta.member_count != member_count
                    || p.meta.stripe_sectors != stripe_sectors
                {
                    Some(format!(
                        "its metadata describes a {} set of {} members with a {}-sector stripe, the set's first member a {} set of {} with {}",
                        p.meta.level.dmraid_type(),
                        p.meta.member_count,
                        p.meta.stripe_sectors,
                        level.dmraid_type(),
                        member_count,
                        stripe_sectors
                    ))
                } else if p.meta.state == MemberState::Failed {
                    Some("its metadata marks it failed".to_string())
                } else {
                    match set.slots.get(p.meta.index as usize) {
                        Some(Some(other)) => Some(format!(
                            "{} already holds place {}",
                            other.name, p.meta.index
                        )),
                        Some(None) => None,
                        None => Some(format!(
                            "place {} is outside a set of {member_count}",
                            p.meta.index
                        )),
                    }
                };
                match why {
                    Some(why) => set.left_out.push((p, why)),
                    None => {
                        let i = p.meta.index as usize;
                        set.slots[i] = Some(p);
                    }
                }
            }
            set
        })
        .collect()
}

/// Whether a set can be read and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Complete,
    /// Readable from redundancy without these places.
    Degraded(Vec<u32>),
    /// Not readable: these places are missing.
    Failed(Vec<u32>),
}

fn round_down(x: u64, unit: u64) -> u64 {
    x.checked_div(unit).map_or(x, |q| q * unit)
}

impl Set {
    fn missing(&self) -> Vec<u32> {
        (0..self.member_count)
            .filter(|&i| self.slots[i as usize].is_none())
            .collect()
    }

    /// Halves of a two-level set: members per stripe (raid01) or mirror pairs (raid10).
    fn half(&self) -> u32 {
        self.member_count / 2
    }

    pub fn health(&self) -> Health {
        let missing = self.missing();
        if missing.is_empty() {
            return Health::Complete;
        }
        let readable = match self.level {
            Level::Raid1 => (missing.len() as u32) < self.member_count,
            Level::Raid5 { .. } => missing.len() == 1,
            // One whole stripe must be there.
            Level::Raid01 => {
                let h = self.half();
                h > 0 && (0..2).any(|s| missing.iter().all(|&i| i / h != s))
            }
            // Each mirror pair must keep a copy.
            Level::Raid10 => (0..self.half())
                .all(|pair| !(missing.contains(&(pair * 2)) && missing.contains(&(pair * 2 + 1)))),
            Level::Raid0 | Level::Jbod | Level::Spare => false,
        };
        if readable {
            Health::Degraded(missing)
        } else {
            Health::Failed(missing)
        }
    }

    /// The smallest data area of the present members, whole stripes of it.
    fn member_sectors(&self) -> u64 {
        let min = self
            .slots
            .iter()
            .flatten()
            .map(|p| p.meta.data_sectors)
            .min()
            .unwrap_or(0);
        round_down(min, self.stripe_sectors.into())
    }

    /// The set's size in sectors, as dmraid reckons it: every member counted at the
    /// smallest member's size in whole stripes (a concatenation at each member's own).
    pub fn size_sectors(&self) -> u64 {
        let n = u64::from(self.member_count);
        let per = self.member_sectors();
        match self.level {
            Level::Raid0 => per * n,
            Level::Raid1 => per,
            Level::Raid5 { .. } => per * n - per * n / n.max(1),
            Level::Raid01 | Level::Raid10 => per * (n / 2),
            Level::Jbod => self
                .slots
                .iter()
                .flatten()
                .map(|p| p.meta.data_sectors)
                .sum(),
            Level::Spare => 0,
        }
    }

    fn chunk(&self) -> u64 {
        // dm's raid1 wants a chunk, though it stripes nothing.
        match self.stripe_sectors {
            0 => 8,
            c => c.into(),
        }
    }

    /// The place tokens a row names: `m<i>` for member i ("-" when missing).
    fn token(&self, i: u32) -> Option<String> {
        self.slots
            .get(i as usize)
            .and_then(|s| s.as_ref())
            .map(|_| format!("m{i}"))
    }

    fn raid_row(&self, len: u64, kind: &str, slots: &[Option<String>]) -> String {
        let devs: Vec<String> = slots
            .iter()
            .map(|s| match s {
                Some(t) => format!("- {t}"),
                None => "- -".to_string(),
            })
            .collect();
        format!(
            "0 {len} raid {kind} 1 {} {} {}\n",
            self.chunk(),
            slots.len(),
            devs.join(" ")
        )
    }

    fn striped_row(&self, len: u64, tokens: &[String]) -> String {
        if tokens.len() == 1 {
            return format!("0 {len} linear {} 0\n", tokens[0]);
        }
        let devs: Vec<String> = tokens.iter().map(|t| format!("{t} 0")).collect();
        format!(
            "0 {len} striped {} {} {}\n",
            tokens.len(),
            self.stripe_sectors,
            devs.join(" ")
        )
    }

    /// A present copy of place `i` or of its mirror `j`, the one in sync first.
    fn copy_of(&self, places: &[u32]) -> Option<String> {
        let present = |i: &&u32| self.slots.get(**i as usize).is_some_and(|s| s.is_some());
        let in_sync = places.iter().filter(present).find(|&&i| {
            self.slots[i as usize]
                .as_ref()
                .is_some_and(|p| p.meta.state == MemberState::Ok)
        });
        in_sync
            .or_else(|| places.iter().find(present))
            .and_then(|&i| self.token(i))
    }

    /// The table that runs the set, its devices named `m<place>`. Read-only, a mirror is
    /// read from one copy in sync (any copy holds all of it), so a mirror missing members
    /// maps onto those it keeps; raid5 goes through the `raid` target, which reads a missing
    /// member's chunks from the others and the parity.
    pub fn table(&self) -> Result<String, String> {
        if let Health::Failed(missing) = self.health() {
            return Err(format!(
                "{}: cannot be read without member(s) {}",
                self.name,
                list(&missing)
            ));
        }
        let size = self.size_sectors();
        if size == 0 {
            return Err(format!("{}: its members hold no data sectors", self.name));
        }
        let n = self.member_count;
        let unreadable = || format!("{}: no copy of its data is complete", self.name);
        Ok(match self.level {
            Level::Raid0 => {
                let tokens: Option<Vec<String>> = (0..n).map(|i| self.token(i)).collect();
                self.striped_row(size, &tokens.ok_or_else(unreadable)?)
            }
            Level::Raid1 => {
                let places: Vec<u32> = (0..n).collect();
                let token = self.copy_of(&places).ok_or_else(unreadable)?;
                format!("0 {size} linear {token} 0\n")
            }
            Level::Raid5 { layout } => {
                let kind = Level::Raid5 { layout }.dmraid_type();
                let slots: Vec<Option<String>> = (0..n).map(|i| self.token(i)).collect();
                self.raid_row(size, kind, &slots)
            }
            Level::Jbod => {
                let mut text = String::new();
                let mut at = 0;
                for p in self.slots.iter().flatten() {
                    let len = p.meta.data_sectors;
                    text.push_str(&format!("{at} {len} linear m{} 0\n", p.meta.index));
                    at += len;
                }
                text
            }
            Level::Raid01 => {
                // The first stripe whose members are all there.
                let h = self.half();
                let half = (0..2)
                    .map(|s| {
                        (s * h..(s + 1) * h)
                            .map(|i| self.token(i))
                            .collect::<Option<Vec<_>>>()
                    })
                    .find_map(|t| t)
                    .ok_or_else(unreadable)?;
                self.striped_row(size, &half)
            }
            Level::Raid10 => {
                let copies: Option<Vec<String>> = (0..self.half())
                    .map(|pair| self.copy_of(&[pair * 2, pair * 2 + 1]))
                    .collect();
                self.striped_row(size, &copies.ok_or_else(unreadable)?)
            }
            Level::Spare => return Err(format!("{}: a set of spares holds no data", self.name)),
        })
    }

    /// Each present member's data area, as a device of its own.
    fn member_devices(&self) -> Result<BTreeMap<String, SharedDevice>, String> {
        let mut out = BTreeMap::new();
        for p in self.slots.iter().flatten() {
            let start = p.meta.data_offset * ataraid::SECTOR_BYTES;
            let len = p.meta.data_sectors * ataraid::SECTOR_BYTES;
            let slice = SliceDevice::new(p.name.clone(), p.device.clone(), start, len).ok_or_else(
                || {
                    format!(
                        "{}: its data area ({} sectors from sector {}) runs past its end",
                        p.name, p.meta.data_sectors, p.meta.data_offset
                    )
                },
            )?;
            out.insert(
                format!("m{}", p.meta.index),
                Arc::new(slice) as SharedDevice,
            );
        }
        Ok(out)
    }

    /// Runs the set as a mapped device `name`.
    pub fn run(&self, name: &str, registry: Arc<TargetRegistry>) -> Result<MappedDevice, String> {
        let text = self.table()?;
        let devices = self.member_devices()?;
        load(name, &text, registry, &devices)
    }
}

fn load(
    name: &str,
    text: &str,
    registry: Arc<TargetRegistry>,
    devices: &BTreeMap<String, SharedDevice>,
) -> Result<MappedDevice, String> {
    let table = Table::parse(text).map_err(|e| format!("{name}: {e}"))?;
    let device = MappedDevice::new(name, registry);
    let resolve = |token: &str| -> Result<SharedDevice, BlockError> {
        devices.get(token).cloned().ok_or_else(|| BlockError::Open {
            device: token.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a member of the set"),
        })
    };
    device
        .load(&table, &resolve)
        .map_err(|e| format!("{name}: {e}"))?;
    device.resume().map_err(|e| format!("{name}: {e}"))?;
    Ok(device)
}

fn list(places: &[u32]) -> String {
    places
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn assembly(set: Set) -> Assembly {
    let mut problems = Vec::new();
    let mut places = Vec::new();
    for p in set.slots.iter().flatten() {
        places.push(Place {
            name: p.name.clone(),
            state: Some(state_word(p.meta.state).to_string()),
            ..Place::default()
        });
    }
    for p in &set.spares {
        places.push(Place {
            name: p.name.clone(),
            state: Some("spare".into()),
            ..Place::default()
        });
    }
    for (p, why) in &set.left_out {
        let problem = format!("{}: left out of {}: {why}", p.name, set.name);
        problems.push(problem.clone());
        places.push(Place {
            name: p.name.clone(),
            state: Some("left out".into()),
            problem: Some(problem),
            ..Place::default()
        });
    }
    if let Some(home) = places.first().map(|p| p.name.clone()) {
        for p in places.iter_mut().skip(1) {
            p.note = Some(format!("{} shown under {home}", set.name));
        }
    }
    let health = set.health();
    let state = match (&health, set.level) {
        (_, Level::Spare) => "spare",
        (Health::Complete, _) => "clean",
        (Health::Degraded(_), _) => "degraded",
        (Health::Failed(_), _) => "failed",
    };
    match &health {
        Health::Degraded(m) => problems.push(format!(
            "{}: member(s) {} missing; read from the set's redundancy",
            set.name,
            list(m)
        )),
        Health::Failed(m) if set.level != Level::Spare => problems.push(format!(
            "{}: member(s) {} missing; the set cannot be read",
            set.name,
            list(m)
        )),
        _ => {}
    }
    let present = set.slots.iter().flatten().count();
    let summary = format!(
        "{} {} set, {present} of {} member(s){}",
        set.vendor.description(),
        set.level.dmraid_type(),
        set.member_count,
        if set.spares.is_empty() {
            String::new()
        } else {
            format!(", {} spare(s)", set.spares.len())
        }
    );
    let detail = serde_json::json!({
        "metadata": set.vendor.dmraid_name(),
        "set": set.name,
        "type": set.level.dmraid_type(),
        "stripe_sectors": set.stripe_sectors,
        "member_count": set.member_count,
        "size_sectors": set.size_sectors(),
        "members": set.slots.iter().enumerate().map(|(i, s)| match s {
            Some(p) => serde_json::json!({
                "index": i, "device": p.name, "state": p.meta.state.as_str(),
                "data_offset_sectors": p.meta.data_offset, "data_sectors": p.meta.data_sectors,
            }),
            None => serde_json::json!({ "index": i, "device": null, "state": "missing" }),
        }).collect::<Vec<_>>(),
        "spares": set.spares.iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
    });
    let size_bytes = set.size_sectors() * ataraid::SECTOR_BYTES;
    let mut volumes: Vec<Box<dyn Volume>> = Vec::new();
    if set.level != Level::Spare && !matches!(health, Health::Failed(_)) {
        volumes.push(Box::new(AtaraidVolume { set: set.clone() }));
    }
    Assembly {
        node: Node {
            kind: "md",
            name: set.name.clone(),
            size_bytes,
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

/// A set as a volume `md/NAME`, served read-only.
pub struct AtaraidVolume {
    set: Set,
}

impl Volume for AtaraidVolume {
    fn module(&self) -> &'static str {
        "ataraid"
    }

    fn name(&self) -> String {
        format!("md/{}", self.set.name)
    }

    fn dm_name(&self) -> String {
        format!("md-{}", self.set.name)
    }

    fn shown(&self) -> Shown {
        Shown::AsSet
    }

    fn devices(&self) -> Vec<String> {
        self.set
            .slots
            .iter()
            .flatten()
            .map(|p| p.name.clone())
            .collect()
    }

    fn activate(&self, registry: Arc<TargetRegistry>, writable: bool) -> Result<Activated, String> {
        if writable {
            return Err(format!(
                "{}: tessera serves {} sets read-only only: it does not keep their metadata \
                 as the controller's BIOS does (serve --read-only)",
                self.name(),
                self.set.vendor.description()
            ));
        }
        let mut notes = Vec::new();
        if let Health::Degraded(missing) = self.set.health() {
            notes.push(format!(
                "running degraded without member(s) {}",
                list(&missing)
            ));
        }
        let device = self.set.run(&self.dm_name(), registry)?;
        Ok(Activated { device, notes })
    }
}
