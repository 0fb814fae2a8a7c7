//! MD arrays found on the scanned devices: members grouped by array UUID, the freshest
//! superblock (highest events count) deciding each member's role, stale members left out
//! and reported, and whether what is left can start.

use std::collections::BTreeMap;
use std::fmt;

use std::sync::Arc;

use tessera_block::SharedDevice;
use tessera_formats::md::{self, ArrayState, MdSuperblock, MdVersion, Role};
use tessera_mapper::{MappedDevice, TargetRegistry};
use tessera_raid::layout::{Geometry, Level};
use tessera_raid::metadata::SetMetadata;

pub use super::force::{ForcePlan, ForceRefused, Forced};

/// One device holding an MD superblock.
#[derive(Clone)]
pub struct MdMember {
    pub path: String,
    pub device: SharedDevice,
    pub version: MdVersion,
    pub sb: MdSuperblock,
}

impl fmt::Debug for MdMember {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MdMember")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("events", &self.sb.events())
            .field("role", &self.sb.role())
            .finish()
    }
}

/// Why a member is not part of the running array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeftOut {
    /// Its events count is behind the array's: it missed writes. `recorded_faulty`: the
    /// freshest superblock also marks it faulty (it dropped out while the array ran).
    Stale {
        events: u64,
        array_events: u64,
        recorded_faulty: bool,
        /// The freshest superblock lists it as a spare while its own claims a slot: it was
        /// removed after failing.
        recorded_removed: bool,
    },
    /// The array's superblocks mark it faulty.
    Faulty,
    /// Another fresh member claims the same slot.
    DuplicateSlot { slot: u32 },
    /// Its geometry differs from the freshest superblock's.
    Mismatch { what: String },
    /// A role tessera does not handle (a write journal).
    Unsupported { what: String },
}

impl fmt::Display for LeftOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeftOut::Stale {
                events,
                array_events,
                recorded_faulty,
                recorded_removed,
            } => {
                write!(
                    f,
                    "stale: events {events}, the array is at {array_events}; it missed writes"
                )?;
                if *recorded_faulty {
                    write!(f, "; recorded faulty by the others")?;
                }
                if *recorded_removed {
                    write!(f, "; the others record it removed")?;
                }
                Ok(())
            }
            LeftOut::Faulty => write!(f, "marked faulty by the array"),
            LeftOut::DuplicateSlot { slot } => {
                write!(f, "claims slot {slot}, which a fresher member holds")
            }
            LeftOut::Mismatch { what } => write!(f, "differs from the array: {what}"),
            LeftOut::Unsupported { what } => write!(f, "{what}"),
        }
    }
}

/// An array as its members describe it.
#[derive(Debug, Clone)]
pub struct MdArray {
    /// `a1b2c3d4:...`, as mdadm prints it.
    pub uuid: String,
    /// The name without the homehost prefix; the UUID when the array has no name (0.90).
    pub name: String,
    pub homehost: Option<String>,
    pub version: MdVersion,
    pub level: i32,
    pub layout: u32,
    pub chunk_bytes: u64,
    pub raid_disks: u32,
    /// The highest events count among the members.
    pub events: u64,
    pub state: ArrayState,
    /// The fresh member in each slot, `None` where it is missing.
    pub slots: Vec<Option<MdMember>>,
    pub spares: Vec<MdMember>,
    pub left_out: Vec<(MdMember, LeftOut)>,
}

/// Whether the members present can run the array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Every slot has a fresh member.
    Complete,
    /// Slots missing that redundancy covers: it starts when asked to run degraded.
    Degraded { missing: Vec<u32> },
    /// More missing than the level survives.
    Failed { missing: Vec<u32>, tolerated: u32 },
}

impl MdArray {
    pub fn missing(&self) -> Vec<u32> {
        (0..self.raid_disks)
            .filter(|&s| self.slots.get(s as usize).is_none_or(|m| m.is_none()))
            .collect()
    }

    /// How many missing members the level survives in the worst case (raid10 may survive
    /// more, depending on which are missing: see [`MdArray::health`]).
    pub fn tolerated(&self) -> u32 {
        match self.level {
            1 => self.raid_disks.saturating_sub(1),
            4 | 5 => 1,
            6 => 2,
            10 => raid10_copies(self.layout).saturating_sub(1),
            _ => 0,
        }
    }

    pub fn health(&self) -> Health {
        let missing = self.missing();
        if missing.is_empty() {
            return Health::Complete;
        }
        let survives = if self.level == 10 {
            raid10_survives(self.layout, self.raid_disks, &missing)
        } else {
            missing.len() as u32 <= self.tolerated()
        };
        if survives {
            Health::Degraded { missing }
        } else {
            Health::Failed {
                missing,
                tolerated: self.tolerated(),
            }
        }
    }

    /// The level as mdadm names it.
    pub fn level_name(&self) -> String {
        match self.level {
            -1 => "linear".into(),
            -4 => "multipath".into(),
            -5 => "faulty".into(),
            l => format!("raid{l}"),
        }
    }
}

/// Copies per chunk in an md raid10 layout: near copies times far copies.
fn raid10_copies(layout: u32) -> u32 {
    let near = layout & 0xff;
    let far = (layout >> 8) & 0xff;
    near.max(1) * far.max(1)
}

/// Whether a raid10 with the slots `missing` still has a copy of every chunk. md puts a
/// chunk's near copies on consecutive slots starting at a multiple of `near` (mod the
/// member count), and each far (or offset) copy `near` slots further on.
fn raid10_survives(layout: u32, raid_disks: u32, missing: &[u32]) -> bool {
    let near = (layout & 0xff).max(1);
    let far = ((layout >> 8) & 0xff).max(1);
    if raid_disks == 0 {
        return false;
    }
    let lost = |slot: u32| missing.contains(&(slot % raid_disks));
    let step = gcd(near, raid_disks);
    (0..raid_disks)
        .step_by(step as usize)
        .all(|start| (0..far).any(|f| (0..near).any(|n| !lost(start + n + f * near))))
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The devices among `devices` that hold an MD superblock, as members; a superblock that
/// cannot be read is a problem naming the device.
pub fn probe_members<'a>(
    devices: impl IntoIterator<Item = (&'a String, &'a SharedDevice)>,
) -> (Vec<MdMember>, Vec<String>) {
    let mut members = Vec::new();
    let mut problems = Vec::new();
    for (path, device) in devices {
        match md::probe(device.as_ref()) {
            Ok(Some((version, sb))) => members.push(MdMember {
                path: path.clone(),
                device: device.clone(),
                version,
                sb,
            }),
            Ok(None) => {}
            Err(e) => problems.push(e.to_string()),
        }
    }
    (members, problems)
}

/// Groups MD members into arrays by UUID, in the order their UUIDs were first seen.
pub fn assemble(members: Vec<MdMember>) -> Vec<MdArray> {
    let mut groups: BTreeMap<(usize, [u8; 16]), Vec<MdMember>> = BTreeMap::new();
    let mut order: Vec<[u8; 16]> = Vec::new();
    for m in members {
        let uuid = m.sb.array_uuid();
        let index = order.iter().position(|u| *u == uuid).unwrap_or_else(|| {
            order.push(uuid);
            order.len() - 1
        });
        groups.entry((index, uuid)).or_default().push(m);
    }
    groups.into_values().map(assemble_one).collect()
}

fn assemble_one(members: Vec<MdMember>) -> MdArray {
    // The freshest superblock speaks for the array; the first one wins a tie.
    let fresh = members
        .iter()
        .enumerate()
        .max_by_key(|(i, m)| (m.sb.events(), std::cmp::Reverse(*i)))
        .map(|(_, m)| m.clone())
        .expect("a group has members");
    let sb = &fresh.sb;
    let full_name = sb.name();
    let name = md::name_without_homehost(&full_name);
    let raid_disks = sb.raid_disks();
    let mut array = MdArray {
        uuid: sb.uuid_string(),
        name: if name.is_empty() {
            sb.uuid_string()
        } else {
            name.to_string()
        },
        homehost: md::homehost(&full_name).map(str::to_string),
        version: fresh.version,
        level: sb.level(),
        layout: sb.layout(),
        chunk_bytes: sb.chunk_bytes(),
        raid_disks,
        events: sb.events(),
        state: sb.state(),
        // Superblock checks bound raid_disks; cap anyway, as it sizes an allocation.
        slots: vec![None; raid_disks.min(4096) as usize],
        spares: Vec::new(),
        left_out: Vec::new(),
    };
    for m in members {
        let s = &m.sb;
        let mismatch = [
            ("level", s.level() as i64, array.level as i64),
            (
                "raid disks",
                i64::from(s.raid_disks()),
                i64::from(raid_disks),
            ),
            (
                "chunk bytes",
                s.chunk_bytes() as i64,
                array.chunk_bytes as i64,
            ),
            ("layout", i64::from(s.layout()), i64::from(array.layout)),
        ]
        .into_iter()
        .find(|(_, mine, theirs)| mine != theirs);
        if let Some((what, mine, theirs)) = mismatch {
            let what = format!("{what} {mine}, the array's is {theirs}");
            array.left_out.push((m, LeftOut::Mismatch { what }));
            continue;
        }
        // md takes a member one event behind as fresh (the array's last clean/dirty
        // transition may not have reached it); further behind, it missed writes.
        if s.events().saturating_add(1) < array.events {
            let why = LeftOut::Stale {
                events: s.events(),
                array_events: array.events,
                recorded_faulty: sb.role_of(s) == Role::Faulty,
                recorded_removed: sb.role_of(s) == Role::Spare
                    && matches!(s.role(), Role::Active(_)),
            };
            array.left_out.push((m, why));
            continue;
        }
        match sb.role_of(s) {
            Role::Active(slot) if (slot as usize) < array.slots.len() => {
                match &array.slots[slot as usize] {
                    None => array.slots[slot as usize] = Some(m),
                    Some(_) => array.left_out.push((m, LeftOut::DuplicateSlot { slot })),
                }
            }
            Role::Active(slot) => {
                let what = format!("slot {slot} is past the array's {raid_disks} members");
                array.left_out.push((m, LeftOut::Mismatch { what }));
            }
            Role::Spare => array.spares.push(m),
            Role::Faulty => array.left_out.push((m, LeftOut::Faulty)),
            Role::Journal => {
                let what = "a write journal, which tessera does not handle".to_string();
                array.left_out.push((m, LeftOut::Unsupported { what }));
            }
        }
    }
    array
}

impl MdArray {
    /// Records in the present members' superblocks that the missing slots are gone, with
    /// the events count one up, as md does when it runs an array degraded: a member that
    /// comes back later is then seen as stale (it missed the writes) instead of being
    /// trusted. Does nothing to a complete array.
    pub fn mark_missing(&mut self) -> Result<(), md::MdError> {
        let missing = self.missing();
        if missing.is_empty() {
            return Ok(());
        }
        let events = self.events + 1;
        let mut updated = Vec::new();
        for m in self.slots.iter().flatten() {
            let mut sb = m.sb.clone();
            match &mut sb {
                MdSuperblock::V1(s) => {
                    for r in s.dev_roles.iter_mut() {
                        if missing.contains(&u32::from(*r)) && *r < md::super1::ROLE_MAX {
                            *r = md::super1::ROLE_FAULTY;
                        }
                    }
                    s.events = events;
                }
                MdSuperblock::V0(s) => {
                    for d in s.disks.iter_mut() {
                        if d.state & md::super0::DISK_SYNC != 0 && missing.contains(&d.raid_disk) {
                            d.state = md::super0::DISK_FAULTY;
                        }
                    }
                    s.active_disks = s.active_disks.saturating_sub(missing.len() as u32);
                    s.working_disks = s.working_disks.saturating_sub(missing.len() as u32);
                    s.failed_disks += missing.len() as u32;
                    s.events = events;
                    s.this_disk = s.disks[s.this_disk.number as usize % s.disks.len()];
                }
            }
            md::write(m.device.as_ref(), m.version, &sb)?;
            updated.push(sb);
        }
        for m in self.slots.iter().flatten() {
            m.device.flush()?;
        }
        for (m, sb) in self.slots.iter_mut().flatten().zip(updated) {
            m.sb = sb;
        }
        self.events = events;
        Ok(())
    }
}

/// The raid level tessera's layouts know an md level by.
fn raid_level(level: i32) -> Option<Level> {
    Some(match level {
        0 => Level::Raid0,
        1 => Level::Raid1,
        4 => Level::Raid4,
        5 => Level::Raid5,
        6 => Level::Raid6,
        10 => Level::Raid10,
        _ => return None,
    })
}

impl MdArray {
    /// The members present, with their slots.
    fn present(&self) -> impl Iterator<Item = (usize, &MdMember)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.as_ref().map(|m| (i, m)))
    }

    /// Why tessera cannot run this array, if it cannot.
    fn geometry(&self) -> std::result::Result<(Geometry, u64), String> {
        let level = raid_level(self.level)
            .ok_or_else(|| format!("level {} is not one tessera runs", self.level_name()))?;
        let mut offsets = self.present().map(|(_, m)| m.sb.data_offset_sectors());
        let offset = offsets.next().ok_or("no member is present")?;
        if let Some(other) = offsets.find(|o| *o != offset) {
            return Err(format!(
                "its members' data start at different offsets ({offset} and {other} sectors), \
                 which tessera cannot run yet"
            ));
        }
        let member_sectors = self
            .present()
            .map(|(_, m)| m.sb.member_data_sectors(m.device.size_bytes()))
            .min()
            .unwrap_or(0);
        let chunk_sectors = self.chunk_bytes / 512;
        let geo = Geometry::new(
            level,
            self.layout,
            chunk_sectors,
            self.raid_disks as usize,
            &vec![member_sectors; self.raid_disks as usize],
        )
        .map_err(|e| e.to_string())?;
        Ok((geo, offset))
    }

    /// The array's size in sectors, as md computes it; `None` for arrays tessera cannot run.
    pub fn size_sectors(&self) -> Option<u64> {
        self.geometry().ok().map(|(g, _)| g.array_sectors())
    }

    /// The `raid` table row that runs this array in user space over its members' paths
    /// (`-` for the missing ones).
    pub fn table(&self) -> std::result::Result<String, String> {
        let (geo, offset) = self.geometry()?;
        let slots: Vec<Option<String>> = self
            .slots
            .iter()
            .map(|m| m.as_ref().map(|m| m.path.clone()))
            .collect();
        let spares: Vec<String> = self.spares.iter().map(|m| m.path.clone()).collect();
        crate::raid_row::RaidRow {
            level: self.level,
            layout: self.layout,
            sectors: geo.array_sectors(),
            chunk_sectors: self.chunk_bytes / 512,
            data_offset_sectors: offset,
            slots: &slots,
            rebuild: &[],
            spares: &spares,
        }
        .text()
    }

    /// Runs the array in user space: a live mapped device named `name` over its members.
    /// With `records`, the running set keeps the superblocks (and bitmap) up to date: dirty
    /// and clean, failures, spares taking over, recovery; without, it writes nothing but
    /// data (read-only serving).
    pub fn activate(
        &self,
        name: &str,
        registry: Arc<TargetRegistry>,
        records: Option<Arc<dyn SetMetadata>>,
    ) -> std::result::Result<MappedDevice, String> {
        let resolve = |path: &str| {
            self.present()
                .map(|(_, m)| m)
                .chain(&self.spares)
                .find(|m| m.path == path)
                .map(|m| m.device.clone())
                .ok_or_else(|| crate::raid_row::not_a_member(path, "the array"))
        };
        let registry = crate::raid_row::with_records(registry, records)?;
        crate::raid_row::run_raid_table(name, &self.table()?, registry, &resolve)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raid10_survival_follows_where_the_copies_are() {
        // near=2 over 4: slots (0,1) and (2,3) mirror each other.
        let n2 = 0x102;
        assert!(raid10_survives(n2, 4, &[0, 2]));
        assert!(raid10_survives(n2, 4, &[1, 2]));
        assert!(raid10_survives(n2, 4, &[1, 3]));
        assert!(!raid10_survives(n2, 4, &[0, 1]));
        assert!(!raid10_survives(n2, 4, &[2, 3]));
        // near=2 over 3: every pair of neighbours holds some chunk's two copies.
        assert!(raid10_survives(n2, 3, &[1]));
        assert!(!raid10_survives(n2, 3, &[0, 2]));
        // near=3 over 5 survives any two.
        assert!(raid10_survives(0x103, 5, &[0, 1]));
        assert!(!raid10_survives(0x103, 5, &[0, 1, 2]));
        // far=2 over 4: copies of slot s's chunks are on s+1.
        let f2 = 0x201;
        assert!(raid10_survives(f2, 4, &[0, 2]));
        assert!(!raid10_survives(f2, 4, &[0, 1]));
    }
}
