//! HighPoint HPT370/372/374 metadata, as dmraid's `hpt37x` format reads it. Little endian,
//! one sector at sector 9 of every member. The first member's data starts at sector 0 (its
//! first sectors are the set's own), the others' at sector 10.
//!
//! | byte | field |
//! |---|---|
//! | 0x20 | magic 0x5a7816f0 (0x5a7816fd: the member is broken) |
//! | 0x24 | magic_0: the set's id (0: a spare), 0x28 magic_1: the array's id (0+1 sets) |
//! | 0x2C | order: bits 1 mirror, 2 stripe, 4 ok; orders the two halves of a 0+1 set |
//! | 0x30 | raid_disks, 0x31 raid0_shift (a stripe unit is 1 << shift sectors), 0x32 type, 0x33 disk_number |
//! | 0x34 | total_secs: the array's size in sectors |
//! | 0x44 | error log (32 entries of 12 bytes) |
//!
//! type: 0 raid0, 1 raid1, 2 a stripe of a raid0+1 set (the first), 3 span, 4 raid3, 5 raid5,
//! 6 single disk, 7 a stripe of a raid0+1 set (the second, the mirror).

use tessera_block::BlockDevice;

use super::{
    digits_to_letters, le32, put_le32, read_bytes, write_bytes, AtaraidError, Level, Member,
    MemberState, SetSpec, Vendor, SECTOR_BYTES,
};

pub const MAGIC_OK: u32 = 0x5a78_16f0;
pub const MAGIC_BAD: u32 = 0x5a78_16fd;
pub const RECORD_SECTOR: u64 = 9;
pub const RECORD_BYTES: usize = 512;
/// Where the data of every member but the first starts, in sectors.
pub const DATA_OFFSET: u64 = 10;

pub const TYPE_RAID0: u8 = 0;
pub const TYPE_RAID1: u8 = 1;
pub const TYPE_RAID01_RAID0: u8 = 2;
pub const TYPE_SPAN: u8 = 3;
pub const TYPE_SINGLE: u8 = 6;
pub const TYPE_RAID01_RAID1: u8 = 7;

pub const ORDER_MIRROR: u32 = 0x01;
pub const ORDER_STRIPE: u32 = 0x02;
pub const ORDER_OK: u32 = 0x04;

const MAGIC: usize = 0x20;
const MAGIC_0: usize = 0x24;
const MAGIC_1: usize = 0x28;
const ORDER: usize = 0x2C;
const RAID_DISKS: usize = 0x30;
const RAID0_SHIFT: usize = 0x31;
const TYPE: usize = 0x32;
const DISK_NUMBER: usize = 0x33;
const TOTAL_SECS: usize = 0x34;

/// The set name dmraid makes up: magic_1 (magic_0 where it is 0), digits turned into
/// letters.
pub fn set_name(magic_0: u32, magic_1: u32) -> String {
    if magic_0 == 0 {
        return "hpt37x_SPARE".to_string();
    }
    let id = if magic_1 != 0 { magic_1 } else { magic_0 };
    format!("hpt37x_{}", digits_to_letters(&id.to_string()))
}

pub fn probe(device: &dyn BlockDevice) -> Result<Option<Member>, AtaraidError> {
    let offset = RECORD_SECTOR * SECTOR_BYTES;
    if device.size_bytes() < offset + RECORD_BYTES as u64 {
        return Ok(None);
    }
    let b = read_bytes(device, Vendor::Hpt37x, offset, RECORD_BYTES)?;
    let magic = le32(&b, MAGIC);
    // dmraid takes a record as HighPoint's only with a disk number below 8.
    if (magic != MAGIC_OK && magic != MAGIC_BAD) || b[DISK_NUMBER] >= 8 {
        return Ok(None);
    }
    let magic_0 = le32(&b, MAGIC_0);
    let magic_1 = le32(&b, MAGIC_1);
    let total = u64::from(le32(&b, TOTAL_SECS));
    let disks = u32::from(b[RAID_DISKS]);
    let disk_number = u32::from(b[DISK_NUMBER]);
    let data_offset = if disk_number == 0 { 0 } else { DATA_OFFSET };
    let device_sectors = device.size_bytes() / SECTOR_BYTES;
    let malformed = |why: String| Err(AtaraidError::malformed(device, Vendor::Hpt37x, why));
    let mut state = if magic == MAGIC_BAD {
        MemberState::Failed
    } else {
        MemberState::Ok
    };
    let stripe = match b[RAID0_SHIFT] {
        0 => 0,
        s if s <= 24 => 1u32 << s,
        s => return malformed(format!("stripe shift {s}")),
    };
    let per_stripe_member = |disks: u32| total / u64::from(disks.max(1));
    let (level, index, member_count, sectors, stripe) = if magic_0 == 0 {
        state = MemberState::Spare;
        (Level::Spare, 0, 1, device_sectors, 0)
    } else {
        if disks == 0 || disk_number >= disks {
            return malformed(format!("member {disk_number} of {disks}"));
        }
        match b[TYPE] {
            TYPE_RAID0 => (
                Level::Raid0,
                disk_number,
                disks,
                per_stripe_member(disks),
                stripe,
            ),
            TYPE_RAID1 => (Level::Raid1, disk_number, disks, total, 0),
            TYPE_SPAN | TYPE_SINGLE => (Level::Jbod, disk_number, disks, device_sectors, 0),
            // The halves of a mirror of two stripes, raid_disks members each.
            TYPE_RAID01_RAID0 => (
                Level::Raid01,
                disk_number,
                2 * disks,
                per_stripe_member(disks),
                stripe,
            ),
            TYPE_RAID01_RAID1 => (
                Level::Raid01,
                disks + disk_number,
                2 * disks,
                per_stripe_member(disks),
                stripe,
            ),
            other => {
                return Err(AtaraidError::unsupported(
                    device,
                    Vendor::Hpt37x,
                    format!("type {other}"),
                ))
            }
        }
    };
    // dmraid counts every member's sectors from its data offset.
    let Some(data_sectors) = sectors.checked_sub(data_offset).filter(|&s| s > 0) else {
        return malformed(format!(
            "{sectors} sectors of data before the data offset {data_offset}"
        ));
    };
    Ok(Some(Member {
        vendor: Vendor::Hpt37x,
        set_name: set_name(magic_0, magic_1),
        set_id: (if magic_1 != 0 { magic_1 } else { magic_0 }).into(),
        level,
        stripe_sectors: stripe,
        index,
        member_count,
        data_offset,
        data_sectors,
        metadata_offset: RECORD_SECTOR,
        state,
    }))
}

/// Writes member `index` of `spec` (raid0, raid1, span, or raid0+1) into `device`'s sector 9.
/// `spec.id` is magic_0 (and magic_1 of a raid0+1 set); `spec.member_data_sectors` the
/// sectors each member gives the set.
pub fn write_member(
    device: &dyn BlockDevice,
    spec: &SetSpec,
    index: u32,
) -> Result<(), AtaraidError> {
    let unsupported = |what: String| Err(AtaraidError::unsupported(device, Vendor::Hpt37x, what));
    let (raw_type, disks, disk_number) = match spec.level {
        Level::Raid0 => (TYPE_RAID0, spec.member_count, index),
        Level::Raid1 => (TYPE_RAID1, spec.member_count, index),
        Level::Jbod => (TYPE_SPAN, spec.member_count, index),
        Level::Raid01 if spec.member_count % 2 == 0 => {
            let width = spec.member_count / 2;
            let half = if index < width {
                TYPE_RAID01_RAID0
            } else {
                TYPE_RAID01_RAID1
            };
            (half, width, index % width)
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
    let (magic_1, order) = match raw_type {
        TYPE_RAID01_RAID0 => (spec.id, ORDER_OK | ORDER_STRIPE),
        TYPE_RAID01_RAID1 => (spec.id, ORDER_OK | ORDER_MIRROR),
        _ => (0, ORDER_OK),
    };
    let mut b = vec![0u8; RECORD_BYTES];
    put_le32(&mut b, MAGIC, MAGIC_OK);
    put_le32(&mut b, MAGIC_0, spec.id);
    put_le32(&mut b, MAGIC_1, magic_1);
    put_le32(&mut b, ORDER, order);
    b[RAID_DISKS] = disks as u8;
    b[RAID0_SHIFT] = raid0_shift;
    b[TYPE] = raw_type;
    b[DISK_NUMBER] = disk_number as u8;
    put_le32(&mut b, TOTAL_SECS, total);
    write_bytes(device, Vendor::Hpt37x, RECORD_SECTOR * SECTOR_BYTES, &b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_block::MemoryDevice;

    #[test]
    fn round_trip_every_level() {
        for (level, members, per_member) in [
            (Level::Raid0, 3, 1000u64),
            (Level::Raid1, 2, 2000),
            (Level::Raid01, 4, 1000),
        ] {
            let spec = SetSpec {
                level,
                member_count: members,
                stripe_sectors: 64,
                member_data_sectors: per_member,
                id: 4242,
                name: String::new(),
            };
            for index in 0..members {
                let dev = MemoryDevice::new("d", 4096 * 512);
                write_member(&dev, &spec, index).unwrap();
                let m = probe(&dev).unwrap().expect("a HighPoint 37x member");
                assert_eq!(m.set_name, "hpt37x_ecec");
                assert_eq!((m.level, m.index, m.member_count), (level, index, members));
                let first = index
                    % if level == Level::Raid01 {
                        members / 2
                    } else {
                        members
                    }
                    == 0;
                let offset = if first { 0 } else { DATA_OFFSET };
                assert_eq!(
                    (m.data_offset, m.data_sectors),
                    (offset, per_member - offset)
                );
            }
        }
    }

    #[test]
    fn too_small_or_blank() {
        assert!(probe(&MemoryDevice::new("tiny", 9 * 512))
            .unwrap()
            .is_none());
        assert!(probe(&MemoryDevice::new("blank", 4096 * 512))
            .unwrap()
            .is_none());
    }
}
