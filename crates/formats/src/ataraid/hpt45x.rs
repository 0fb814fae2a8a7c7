//! HighPoint RocketRAID 45x metadata, as dmraid's `hpt45x` format reads it. Little endian,
//! 48 bytes at the start of the 11th sector from the end; data from sector 0.
//!
//! | byte | field |
//! |---|---|
//! | 0x00 | magic 0x5a7816f3 (0x5a7816fd: the member is broken) |
//! | 0x04 | magic_0: the set's id (0: a spare), 0x08 magic_1: the sub-array's id |
//! | 0x0C | total_secs: the array's size in sectors |
//! | 0x10 | type: 4 span, 5 raid0, 6 raid1; 0x11 raid_disks, 0x12 disk_number, 0x13 raid0_shift |
//! | 0x20 | raid1_type (6: the stripe is one copy of a mirror), 0x21 raid1_raid_disks, 0x22 raid1_disk_number (which copy), 0x23 raid1_shift |
//!
//! A raid0 member whose raid1_type is raid1 belongs to a mirror of two stripes ("raid10" in
//! HighPoint's BIOS, raid0+1 by structure).

use tessera_block::BlockDevice;

use super::{
    digits_to_letters, le32, put_le32, read_bytes, sector_from_end, write_bytes, AtaraidError,
    Level, Member, MemberState, SetSpec, Vendor, SECTOR_BYTES,
};

pub const MAGIC_OK: u32 = 0x5a78_16f3;
pub const MAGIC_BAD: u32 = 0x5a78_16fd;
pub const RECORD_BYTES: usize = 48;
/// Sectors from the end of the disk to the record's sector.
pub const END_OFFSET: u64 = 11;

pub const TYPE_SPAN: u8 = 4;
pub const TYPE_RAID0: u8 = 5;
pub const TYPE_RAID1: u8 = 6;

const MAGIC_0: usize = 0x04;
const MAGIC_1: usize = 0x08;
const TOTAL_SECS: usize = 0x0C;
const TYPE: usize = 0x10;
const RAID_DISKS: usize = 0x11;
const DISK_NUMBER: usize = 0x12;
const RAID0_SHIFT: usize = 0x13;
const RAID1_TYPE: usize = 0x20;
const RAID1_RAID_DISKS: usize = 0x21;
const RAID1_DISK_NUMBER: usize = 0x22;
const RAID1_SHIFT: usize = 0x23;

/// The set name dmraid makes up from magic_0, digits turned into letters.
pub fn set_name(magic_0: u32) -> String {
    if magic_0 == 0 {
        "hpt45x_SPARE".to_string()
    } else {
        format!("hpt45x_{}", digits_to_letters(&magic_0.to_string()))
    }
}

pub fn probe(device: &dyn BlockDevice) -> Result<Option<Member>, AtaraidError> {
    let Some(sector) = sector_from_end(device, END_OFFSET) else {
        return Ok(None);
    };
    let b = read_bytes(device, Vendor::Hpt45x, sector * SECTOR_BYTES, RECORD_BYTES)?;
    let magic = le32(&b, 0);
    // dmraid takes a record as HighPoint's only with a disk number below 8.
    if (magic != MAGIC_OK && magic != MAGIC_BAD) || b[DISK_NUMBER] >= 8 {
        return Ok(None);
    }
    let magic_0 = le32(&b, MAGIC_0);
    let total = u64::from(le32(&b, TOTAL_SECS));
    let disks = u32::from(b[RAID_DISKS]);
    let disk_number = u32::from(b[DISK_NUMBER]);
    let malformed = |why: String| Err(AtaraidError::malformed(device, Vendor::Hpt45x, why));
    let mut state = if magic == MAGIC_BAD {
        MemberState::Failed
    } else {
        MemberState::Ok
    };
    let shift = |s: u8| if s == 0 || s > 24 { 0 } else { 1u32 << s };
    let (level, index, member_count, data_sectors, stripe) = if magic_0 == 0 {
        state = MemberState::Spare;
        (Level::Spare, 0, 1, sector, 0)
    } else {
        if disks == 0 || disk_number >= disks {
            return malformed(format!("member {disk_number} of {disks}"));
        }
        match b[TYPE] {
            TYPE_SPAN => (Level::Jbod, disk_number, disks, sector, 0),
            TYPE_RAID1 => (Level::Raid1, disk_number, disks, total, 0),
            TYPE_RAID0 if b[RAID1_TYPE] == TYPE_RAID1 => {
                let copy = u32::from(b[RAID1_DISK_NUMBER]);
                if copy >= 2 {
                    return malformed(format!("mirror copy {copy} of a raid0+1"));
                }
                let stripe = shift(b[RAID0_SHIFT]);
                (
                    Level::Raid01,
                    copy * disks + disk_number,
                    2 * disks,
                    total / u64::from(disks),
                    stripe,
                )
            }
            TYPE_RAID0 => {
                let stripe = shift(b[RAID0_SHIFT]);
                (
                    Level::Raid0,
                    disk_number,
                    disks,
                    total / u64::from(disks),
                    stripe,
                )
            }
            other => {
                return Err(AtaraidError::unsupported(
                    device,
                    Vendor::Hpt45x,
                    format!("type {other}"),
                ))
            }
        }
    };
    if data_sectors == 0 {
        return malformed("a data area of 0 sectors".into());
    }
    Ok(Some(Member {
        vendor: Vendor::Hpt45x,
        set_name: set_name(magic_0),
        set_id: magic_0.into(),
        level,
        stripe_sectors: stripe,
        index,
        member_count,
        data_offset: 0,
        data_sectors,
        metadata_offset: sector,
        state,
    }))
}

/// Writes member `index` of `spec` (span, raid0, raid1, or raid0+1) into `device`.
/// `spec.id` is magic_0.
pub fn write_member(
    device: &dyn BlockDevice,
    spec: &SetSpec,
    index: u32,
) -> Result<(), AtaraidError> {
    let unsupported = |what: String| Err(AtaraidError::unsupported(device, Vendor::Hpt45x, what));
    let (raw_type, disks, disk_number, copy) = match spec.level {
        Level::Jbod => (TYPE_SPAN, spec.member_count, index, None),
        Level::Raid0 => (TYPE_RAID0, spec.member_count, index, None),
        Level::Raid1 => (TYPE_RAID1, spec.member_count, index, None),
        Level::Raid01 if spec.member_count % 2 == 0 => {
            let width = spec.member_count / 2;
            (TYPE_RAID0, width, index % width, Some(index / width))
        }
        other => {
            return unsupported(format!(
                "{} of {} members",
                other.dmraid_type(),
                spec.member_count
            ))
        }
    };
    if disks == 0 || disks > 8 || index >= spec.member_count || spec.id == 0 {
        return unsupported(format!(
            "member {index} of {} (set id {})",
            spec.member_count, spec.id
        ));
    }
    let raid0_shift = match spec.level {
        Level::Raid0 | Level::Raid01 => {
            if !spec.stripe_sectors.is_power_of_two() {
                return unsupported(format!("stripe of {} sectors", spec.stripe_sectors));
            }
            spec.stripe_sectors.trailing_zeros() as u8
        }
        _ => 0,
    };
    let total = match spec.level {
        Level::Raid1 => spec.member_data_sectors,
        _ => spec.member_data_sectors * u64::from(disks),
    };
    let Ok(total) = u32::try_from(total) else {
        return unsupported(format!("an array of {total} sectors"));
    };
    let Some(sector) = sector_from_end(device, END_OFFSET) else {
        return Err(AtaraidError::malformed(
            device,
            Vendor::Hpt45x,
            "the device is too small",
        ));
    };
    let mut b = vec![0u8; RECORD_BYTES];
    put_le32(&mut b, 0, MAGIC_OK);
    put_le32(&mut b, MAGIC_0, spec.id);
    put_le32(&mut b, MAGIC_1, spec.id.wrapping_add(copy.unwrap_or(0) + 1));
    put_le32(&mut b, TOTAL_SECS, total);
    b[TYPE] = raw_type;
    b[RAID_DISKS] = disks as u8;
    b[DISK_NUMBER] = disk_number as u8;
    b[RAID0_SHIFT] = raid0_shift;
    if let Some(copy) = copy {
        b[RAID1_TYPE] = TYPE_RAID1;
        b[RAID1_RAID_DISKS] = 2;
        b[RAID1_DISK_NUMBER] = copy as u8;
        b[RAID1_SHIFT] = raid0_shift;
    }
    write_bytes(device, Vendor::Hpt45x, sector * SECTOR_BYTES, &b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_block::MemoryDevice;

    #[test]
    fn round_trip_every_level() {
        for (level, members, per_member) in [
            (Level::Raid0, 3, 1000),
            (Level::Raid1, 2, 2000),
            (Level::Raid01, 4, 1000),
        ] {
            let spec = SetSpec {
                level,
                member_count: members,
                stripe_sectors: 32,
                member_data_sectors: per_member,
                id: 123456,
                name: String::new(),
            };
            for index in 0..members {
                let dev = MemoryDevice::new("d", 4096 * 512);
                write_member(&dev, &spec, index).unwrap();
                let m = probe(&dev).unwrap().expect("a HighPoint 45x member");
                assert_eq!(m.set_name, "hpt45x_bcdefg");
                assert_eq!((m.level, m.index, m.member_count), (level, index, members));
                assert_eq!(m.data_sectors, per_member);
                assert_eq!(m.metadata_offset, 4096 - 11);
            }
        }
    }

    #[test]
    fn broken_member_and_truncated_device() {
        let dev = MemoryDevice::new("sdh", 4096 * 512);
        let spec = SetSpec {
            level: Level::Raid1,
            member_count: 2,
            stripe_sectors: 0,
            member_data_sectors: 2000,
            id: 5,
            name: String::new(),
        };
        write_member(&dev, &spec, 1).unwrap();
        dev.write_at(&MAGIC_BAD.to_le_bytes(), (4096 - 11) * 512)
            .unwrap();
        assert_eq!(probe(&dev).unwrap().unwrap().state, MemberState::Failed);
        let tiny = MemoryDevice::new("tiny", 5 * 512);
        assert!(probe(&tiny).unwrap().is_none());
    }
}
