//! An MD array's records while tessera runs it: the superblocks on its members and its
//! write-intent bitmap, kept as md keeps them so that mdadm and the kernel read the same
//! story afterwards. Every change the running set reports (dirty or clean, a member failed,
//! a spare took a slot, recovery got further) is one superblock update: events + 1, the role
//! table and the clean flag anew, written to every member that is not faulty, then flushed.

use std::sync::Mutex;

use tessera_block::badblocks::BadBlocks;
use tessera_block::BlockDevice;
use tessera_formats::md::{self, bitmap, BitmapSuper, MdSuperblock, MdVersion};
use tessera_raid::metadata::{MemberRole, MetadataError, SetMetadata, SetRecord, SetStart};

use crate::md::{MdArray, MdMember};

/// The most bitmap bits tessera reads (4 MiB of them).
const MAX_REGIONS: u64 = 32 << 20;

/// Bits start this far into the bitmap area, right after its superblock.
const BITS_AT: u64 = bitmap::BYTES as u64;

struct Bitmap {
    header: BitmapSuper,
    /// One bit per region, as md lays them out (bit `k % 8` of byte `k / 8`).
    bits: Vec<u8>,
    /// Regions found dirty when the array was assembled.
    dirty_at_start: Vec<u64>,
}

struct Records {
    version: MdVersion,
    events: u64,
    /// Every device the array knows and tessera has open: members, spares, and members
    /// that were present but failed.
    members: Vec<MdMember>,
    bitmap: Option<Bitmap>,
    start: SetStart,
    /// Members the set has failed: nothing more is written to them.
    failed: std::collections::HashSet<String>,
    /// The bad-block logs of the members that keep one, by path (device sectors).
    bad: std::collections::HashMap<String, BadBlocks>,
}

/// The records of one MD array; give it to the raid target as its [`SetMetadata`].
pub struct MdRecords {
    records: Mutex<Records>,
}

fn err(e: impl std::fmt::Display) -> MetadataError {
    MetadataError(e.to_string())
}

impl MdRecords {
    /// The records of `array` as assembled: its members in their slots and its spares.
    pub fn new(array: &MdArray) -> Result<MdRecords, md::MdError> {
        let mut members: Vec<MdMember> = array.slots.iter().flatten().cloned().collect();
        members.extend(array.spares.iter().cloned());
        let mut recovering = Vec::new();
        for (slot, m) in array.slots.iter().enumerate() {
            if let Some(MdMember {
                sb: MdSuperblock::V1(s),
                ..
            }) = m
            {
                if s.feature_map & md::super1::FEATURE_RECOVERY_OFFSET != 0 {
                    recovering.push((slot, s.recovery_offset));
                }
            }
        }
        let dirty = !matches!(array.state, md::ArrayState::Clean);
        let bitmap = match members.first() {
            Some(m) => read_bitmap(m, array.events)?,
            None => None,
        };
        let start = SetStart {
            dirty: dirty
                || bitmap
                    .as_ref()
                    .is_some_and(|b| !b.dirty_at_start.is_empty()),
            recovering,
            dirty_regions: bitmap.as_ref().map(|b| b.dirty_at_start.clone()),
        };
        let mut bad = std::collections::HashMap::new();
        for m in &members {
            if let Some(t) = read_log(m)? {
                bad.insert(m.path.clone(), t);
            }
        }
        Ok(MdRecords {
            records: Mutex::new(Records {
                bad,
                version: array.version,
                events: array.events,
                members,
                bitmap,
                start,
                failed: Default::default(),
            }),
        })
    }

    /// Adds a device that carries a spare superblock of this array (`md add`).
    pub fn add_member(&self, member: MdMember) {
        let mut r = self.records.lock().unwrap_or_else(|e| e.into_inner());
        match read_log(&member) {
            Ok(Some(t)) => {
                r.bad.insert(member.path.clone(), t);
            }
            Ok(None) => {}
            // Without a readable log the member fails on a write error, as without one.
            Err(e) => tracing::warn!("{}: {e}", member.path),
        }
        r.members.retain(|m| m.path != member.path);
        r.members.push(member);
    }

    /// The events count last written.
    pub fn events(&self) -> u64 {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .events
    }
}

/// What a read-only array's raid set is given: its members' bad-block logs, so that reads
/// of a recorded range come from the other members, as md reads a read-only array. Nothing
/// is ever written: state changes live in memory only, as md keeps a read-only array's,
/// and a write error fails the member (the logs are not written either).
pub struct BadBlockLogs {
    bad: std::collections::HashMap<String, BadBlocks>,
}

impl BadBlockLogs {
    /// The logs of `array`'s members and spares that keep one; an error names a member
    /// whose log cannot be read, which md would not load either.
    pub fn new(array: &MdArray) -> Result<BadBlockLogs, md::MdError> {
        let mut bad = std::collections::HashMap::new();
        for m in array.slots.iter().flatten().chain(&array.spares) {
            if let Some(t) = read_log(m)? {
                bad.insert(m.path.clone(), t);
            }
        }
        Ok(BadBlockLogs { bad })
    }
}

impl SetMetadata for BadBlockLogs {
    fn start(&self) -> SetStart {
        SetStart::default()
    }
    fn record(&self, _record: &SetRecord) -> Result<(), MetadataError> {
        Ok(())
    }
    fn bad_blocks(&self, device: &str) -> Option<BadBlocks> {
        self.bad.get(device).cloned()
    }
}

/// The bad-block log of member `m`, if it keeps one.
fn read_log(m: &MdMember) -> Result<Option<BadBlocks>, md::MdError> {
    match &m.sb {
        MdSuperblock::V1(s) => md::badblocks::read(m.device.as_ref(), s),
        MdSuperblock::V0(_) => Ok(None),
    }
}

/// Reads the bitmap of the array `m` belongs to: its header and its bits. A bitmap whose
/// events are behind the array's is out of date, as md judges: every region is dirty.
fn read_bitmap(m: &MdMember, events: u64) -> Result<Option<Bitmap>, md::MdError> {
    let dev = m.device.as_ref();
    let Some(header) = md::read_bitmap(dev, m.version, &m.sb)? else {
        return Ok(None);
    };
    let region_sectors = u64::from(header.chunksize) / 512;
    let regions = header.sync_size.div_ceil(region_sectors.max(1));
    // md keeps the bits in at most a few MiB; a header saying more is damaged.
    if regions > MAX_REGIONS {
        return Err(md::MdError::Bitmap {
            device: dev.name().into(),
            offset: header.offset,
            why: format!(
                "{} sectors in regions of {} bytes is {regions} bits, more than md keeps",
                header.sync_size, header.chunksize
            ),
        });
    }
    let mut bits = vec![0u8; regions.div_ceil(8) as usize];
    dev.read_at(&mut bits, header.offset + BITS_AT)?;
    let stale = header.events < events || header.state & bitmap::STATE_STALE != 0;
    let dirty_at_start = (0..regions)
        .filter(|k| stale || bits[(k / 8) as usize] & (1 << (k % 8)) != 0)
        .collect();
    Ok(Some(Bitmap {
        header,
        bits,
        dirty_at_start,
    }))
}

impl Records {
    /// The superblocks after `record`: roles, clean flag and events for every member.
    fn apply(&mut self, record: &SetRecord) -> Result<Vec<(usize, MdSuperblock)>, MetadataError> {
        let events = self.events + 1;
        let role_of = |path: &str| {
            record
                .members
                .iter()
                .find(|r| r.device == path)
                .map(|r| r.role.clone())
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut out = Vec::new();
        match self.version {
            MdVersion::V0_90 => {
                let MdSuperblock::V0(base) = &self.members[0].sb else {
                    return Err(err("members mix superblock formats"));
                };
                let mut base = base.clone();
                let (mut active, mut working, mut failed, mut spare) = (0, 0, 0, 0);
                for m in &self.members {
                    let MdSuperblock::V0(s) = &m.sb else { continue };
                    let number = s.this_disk.number as usize;
                    let Some(d) = base.disks.get_mut(number) else {
                        continue;
                    };
                    match role_of(&m.path) {
                        Some(MemberRole::InSync(slot)) => {
                            d.raid_disk = slot as u32;
                            d.state = md::super0::DISK_ACTIVE | md::super0::DISK_SYNC;
                            active += 1;
                            working += 1;
                        }
                        Some(MemberRole::Recovering { .. } | MemberRole::Spare) => {
                            // 0.90 has no recovery offset: a member being rebuilt is
                            // recorded as a spare until it is whole.
                            d.raid_disk = number as u32;
                            d.state = 0;
                            working += 1;
                            spare += 1;
                        }
                        Some(MemberRole::Faulty) => {
                            d.state = md::super0::DISK_FAULTY;
                            failed += 1;
                        }
                        None => {}
                    }
                }
                base.active_disks = active;
                base.working_disks = working;
                base.failed_disks = failed;
                base.spare_disks = spare;
                base.events = events;
                base.utime = now as u32;
                if record.clean {
                    base.state |= md::super0::STATE_CLEAN;
                    base.recovery_cp = u32::MAX;
                } else {
                    base.state &= !md::super0::STATE_CLEAN;
                    base.recovery_cp = 0;
                }
                for (i, m) in self.members.iter().enumerate() {
                    let MdSuperblock::V0(s) = &m.sb else { continue };
                    if matches!(role_of(&m.path), None | Some(MemberRole::Faulty)) {
                        continue;
                    }
                    let mut sb = base.clone();
                    sb.this_disk = sb.disks[s.this_disk.number as usize % sb.disks.len()];
                    out.push((i, MdSuperblock::V0(sb)));
                }
            }
            _ => {
                let mut roles = match &self.members[0].sb {
                    MdSuperblock::V1(s) => s.dev_roles.clone(),
                    MdSuperblock::V0(_) => return Err(err("members mix superblock formats")),
                };
                for m in &self.members {
                    let MdSuperblock::V1(s) = &m.sb else { continue };
                    let n = s.dev_number as usize;
                    if roles.len() <= n {
                        roles.resize(n + 1, md::super1::ROLE_SPARE);
                    }
                    match role_of(&m.path) {
                        Some(MemberRole::InSync(slot) | MemberRole::Recovering { slot, .. }) => {
                            roles[n] = slot as u16
                        }
                        Some(MemberRole::Spare) => roles[n] = md::super1::ROLE_SPARE,
                        Some(MemberRole::Faulty) => roles[n] = md::super1::ROLE_FAULTY,
                        None => {}
                    }
                }
                for (i, m) in self.members.iter().enumerate() {
                    let MdSuperblock::V1(s) = &m.sb else { continue };
                    let role = role_of(&m.path);
                    if matches!(role, None | Some(MemberRole::Faulty)) {
                        continue;
                    }
                    let mut sb = s.clone();
                    sb.dev_roles = roles.clone();
                    sb.events = events;
                    sb.utime = now | (sb.utime & !0xff_ffff_ffff);
                    sb.resync_offset = if record.clean {
                        md::super1::RESYNC_DONE
                    } else {
                        0
                    };
                    if let Some(MemberRole::Recovering { done, .. }) = role {
                        sb.feature_map |= md::super1::FEATURE_RECOVERY_OFFSET;
                        sb.recovery_offset = done;
                    } else {
                        sb.feature_map &= !md::super1::FEATURE_RECOVERY_OFFSET;
                        sb.recovery_offset = 0;
                    }
                    out.push((i, MdSuperblock::V1(sb)));
                }
            }
        }
        Ok(out)
    }

    /// Writes the bitmap's header (events follow the superblocks') and bits to `dev`.
    fn write_bitmap(&self, dev: &dyn BlockDevice) -> Result<(), MetadataError> {
        let Some(bm) = &self.bitmap else {
            return Ok(());
        };
        let mut area = bm.header.encode().to_vec();
        area.extend_from_slice(&bm.bits);
        area.resize(area.len().next_multiple_of(512), 0);
        dev.write_at(&area, bm.header.offset).map_err(err)
    }
}

impl SetMetadata for MdRecords {
    fn start(&self) -> SetStart {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .start
            .clone()
    }

    fn record(&self, record: &SetRecord) -> Result<(), MetadataError> {
        let mut r = self.records.lock().unwrap_or_else(|e| e.into_inner());
        for m in &record.members {
            if m.role == MemberRole::Faulty {
                r.failed.insert(m.device.clone());
            }
        }
        let updates = r.apply(record)?;
        let events = r.events + 1;
        if let Some(bm) = &mut r.bitmap {
            bm.header.events = events;
            if record.clean {
                bm.bits.fill(0);
                bm.header.events_cleared = events;
            }
        }
        // A set started from these records later (a reload) starts where this one is.
        r.start = SetStart {
            dirty: !record.clean,
            recovering: record
                .members
                .iter()
                .filter_map(|m| match m.role {
                    MemberRole::Recovering { slot, done } => Some((slot, done)),
                    _ => None,
                })
                .collect(),
            dirty_regions: r.bitmap.as_ref().map(|b| {
                (0..b.bits.len() as u64 * 8)
                    .filter(|k| b.bits[(k / 8) as usize] & (1 << (k % 8)) != 0)
                    .collect()
            }),
        };
        let mut first_error = None;
        for (i, sb) in &updates {
            let m = &r.members[*i];
            let wrote = md::write(m.device.as_ref(), r.version, sb)
                .map_err(err)
                .and_then(|()| r.write_bitmap(m.device.as_ref()))
                .and_then(|()| m.device.flush().map_err(err));
            if let Err(e) = wrote {
                first_error.get_or_insert(MetadataError(format!("{}: {e}", m.path)));
            }
        }
        for (i, sb) in updates {
            r.members[i].sb = sb;
        }
        r.events = events;
        first_error.map_or(Ok(()), Err)
    }

    fn bitmap_region_sectors(&self) -> Option<u64> {
        let r = self.records.lock().unwrap_or_else(|e| e.into_inner());
        r.bitmap
            .as_ref()
            .map(|b| u64::from(b.header.chunksize) / 512)
    }

    fn bad_blocks(&self, device: &str) -> Option<BadBlocks> {
        let r = self.records.lock().unwrap_or_else(|e| e.into_inner());
        r.bad.get(device).cloned()
    }

    /// Writes the member's log, then its superblock with the feature bit to match (events
    /// unchanged: the log is the member's own, not the array's state), as md writes the
    /// log page before the superblock that points at it.
    fn record_bad_blocks(&self, device: &str, table: &BadBlocks) -> Result<(), MetadataError> {
        let mut r = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let version = r.version;
        let Some(i) = r.members.iter().position(|m| m.path == device) else {
            return Err(MetadataError(format!("{device} is not a member of the array")));
        };
        if r.failed.contains(device) {
            return Err(MetadataError(format!("{device} has failed")));
        }
        let m = &r.members[i];
        let MdSuperblock::V1(s) = &m.sb else {
            return Err(MetadataError(format!(
                "{device}: a 0.90 member keeps no bad-block log"
            )));
        };
        let mut sb = s.clone();
        let dev = m.device.as_ref();
        md::badblocks::write(dev, &mut sb, table)
            .map_err(err)
            .and_then(|()| dev.flush().map_err(err))?;
        let sb = MdSuperblock::V1(sb);
        md::write(dev, version, &sb)
            .map_err(err)
            .and_then(|()| dev.flush().map_err(err))?;
        r.members[i].sb = sb;
        r.bad.insert(device.to_string(), table.clone());
        Ok(())
    }

    fn mark_regions(&self, regions: &[u64]) -> Result<(), MetadataError> {
        let mut r = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let Some(bm) = &mut r.bitmap else {
            return Ok(());
        };
        for &k in regions {
            if let Some(byte) = bm.bits.get_mut((k / 8) as usize) {
                *byte |= 1 << (k % 8);
            }
        }
        // A member that cannot take the bitmap will fail on the write that follows; the
        // bits must reach the others.
        let mut written = 0;
        let mut last_error = None;
        for m in r.members.iter().filter(|m| !r.failed.contains(&m.path)) {
            match r
                .write_bitmap(m.device.as_ref())
                .and_then(|()| m.device.flush().map_err(err))
            {
                Ok(()) => written += 1,
                Err(e) => last_error = Some(e),
            }
        }
        match (written, last_error) {
            (0, Some(e)) => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tessera_block::{BlockDevice, MemoryDevice};
    use tessera_formats::md::create::{add_bitmap, member_superblock, NewArray};
    use tessera_formats::md::{self, MdVersion};

    use super::*;
    use crate::md::{assemble, MdMember};

    /// Members of a new raid1 with a bitmap whose header claims `sync_size` sectors.
    fn members(sync_size: u64) -> Vec<MdMember> {
        let array = NewArray {
            version: MdVersion::V1_2,
            name: "h:b".into(),
            uuid: [7; 16],
            level: 1,
            layout: 0,
            chunk_bytes: 0,
            raid_disks: 2,
            now: 1,
        };
        (0..2)
            .map(|slot| {
                let dev = Arc::new(MemoryDevice::new(format!("m{slot}"), 8 << 20));
                let mut sb =
                    member_superblock(&array, slot, [slot as u8; 16], 8 << 20, 8192).unwrap();
                let mut header = add_bitmap(&mut sb, 8192, 65536).unwrap();
                header.sync_size = sync_size;
                dev.write_at(&header.encode(), header.offset).unwrap();
                md::write(dev.as_ref(), MdVersion::V1_2, &sb).unwrap();
                MdMember {
                    path: format!("m{slot}"),
                    device: dev,
                    version: MdVersion::V1_2,
                    sb,
                }
            })
            .collect()
    }

    #[test]
    fn a_bitmap_claiming_more_bits_than_md_keeps_is_refused_by_name() {
        let arrays = assemble(members(u64::MAX / 2));
        let e = MdRecords::new(&arrays[0])
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("m0") && e.contains("more than md keeps"), "{e}");
    }

    #[test]
    fn marked_regions_reach_every_member_and_a_clean_record_clears_them() {
        let arrays = assemble(members(8192));
        let records = MdRecords::new(&arrays[0]).unwrap();
        assert_eq!(records.bitmap_region_sectors(), Some(128));
        records.mark_regions(&[3, 17]).unwrap();
        for m in arrays[0].slots.iter().flatten() {
            let bits = read_bitmap(m, 1).unwrap().unwrap().dirty_at_start;
            assert_eq!(bits, vec![3, 17], "{}", m.path);
        }
        let clean = SetRecord {
            clean: true,
            members: vec![
                tessera_raid::metadata::MemberRecord {
                    device: "m0".into(),
                    role: MemberRole::InSync(0),
                },
                tessera_raid::metadata::MemberRecord {
                    device: "m1".into(),
                    role: MemberRole::InSync(1),
                },
            ],
        };
        records.record(&clean).unwrap();
        for m in arrays[0].slots.iter().flatten() {
            let sb = md::read(m.device.as_ref(), MdVersion::V1_2).unwrap();
            assert_eq!(sb.events(), 2);
            let bm = read_bitmap(&MdMember { sb, ..m.clone() }, 2)
                .unwrap()
                .unwrap();
            assert!(bm.dirty_at_start.is_empty(), "{}", m.path);
            assert_eq!(bm.header.events, 2);
        }
    }
}
