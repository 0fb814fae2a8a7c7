//! Promise FastTrak metadata, as the FastTrak BIOS writes it and dmraid's `pdc` format
//! reads it. Little endian, 2048 bytes (4 sectors), found at one of a list of distances from
//! the end of the disk (63 sectors first, the place tessera writes it).
//!
//! | byte | field |
//! |---|---|
//! | 0x000 | "Promise Technology, Inc." |
//! | 0x205 | raid.disk_number: this member's place |
//! | 0x210 | raid.start, 0x214 raid.disk_secs |
//! | 0x21E | raid.status, 0x21F raid.type (0 raid0, 1 raid1, 2 raid10, 8 span) |
//! | 0x220 | raid.total_disks, 0x221 raid0_shift (stripe = 1 << shift sectors), 0x222 raid0_disks |
//! | 0x224 | raid.total_secs: the array's size |
//! | 0x22C | raid.magic_1: the array's id, which names the set |
//! | 0x234 | raid.disk[8]: channel, device, magic_0, disk_number of each member (12 bytes each) |
//! | 0x7FC | checksum: the sum of the 511 le32 words before it |
//!
//! A raid1 of more than three disks is a raid10, as dmraid takes it: a mirror of two stripes,
//! members `0..n/2` the first stripe.

use tessera_block::BlockDevice;

use super::{
    le32, put_le16, put_le32, read_bytes, write_bytes, AtaraidError, Level, Member, MemberState,
    SetSpec, Vendor, SECTOR_BYTES,
};

pub const SIGNATURE: &[u8; 24] = b"Promise Technology, Inc.";
/// Bytes of the metadata record.
pub const RECORD_BYTES: usize = 2048;
/// Distances from the end of the disk, in sectors, where the BIOS may put the record, in the
/// order dmraid looks.
pub const END_OFFSETS: [u64; 12] = [63, 255, 256, 16, 399, 591, 675, 735, 911, 974, 991, 3087];
/// The distance tessera writes test images at.
pub const WRITE_END_OFFSET: u64 = 63;
/// The most members a set has.
pub const MAX_DISKS: u8 = 8;

pub const TYPE_RAID0: u8 = 0;
pub const TYPE_RAID1: u8 = 1;
pub const TYPE_RAID10: u8 = 2;
pub const TYPE_SPAN: u8 = 8;

const DISK_NUMBER: usize = 0x205;
const START: usize = 0x210;
const DISK_SECS: usize = 0x214;
const TYPE: usize = 0x21F;
const TOTAL_DISKS: usize = 0x220;
const RAID0_SHIFT: usize = 0x221;
const RAID0_DISKS: usize = 0x222;
const TOTAL_SECS: usize = 0x224;
const MAGIC_1: usize = 0x22C;
const DISKS: usize = 0x234;
const DISK_ENTRY_BYTES: usize = 12;
const CHECKSUM: usize = 0x7FC;

fn checksum_of(record: &[u8]) -> u32 {
    (0..CHECKSUM / 4).fold(0u32, |sum, i| sum.wrapping_add(le32(record, i * 4)))
}

/// Finds the record: the distance from the end it sits at, and its bytes.
fn find(device: &dyn BlockDevice) -> Result<Option<(u64, Vec<u8>)>, AtaraidError> {
    let sectors = device.size_bytes() / SECTOR_BYTES;
    for back in END_OFFSETS {
        // A record must fit whole before the end of the disk.
        let Some(sector) = sectors.checked_sub(back) else {
            continue;
        };
        if (sector * SECTOR_BYTES) + RECORD_BYTES as u64 > device.size_bytes() {
            continue;
        }
        let record = read_bytes(device, Vendor::Promise, sector * SECTOR_BYTES, RECORD_BYTES)?;
        if record.starts_with(SIGNATURE) {
            return Ok(Some((back, record)));
        }
    }
    Ok(None)
}

/// The name dmraid gives the set: "pdc_" and the array id in decimal, its digits as letters.
pub fn set_name(magic_1: u32) -> String {
    format!("pdc_{}", super::digits_to_letters(&magic_1.to_string()))
}

pub fn probe(device: &dyn BlockDevice) -> Result<Option<Member>, AtaraidError> {
    let Some((back, record)) = find(device)? else {
        return Ok(None);
    };
    let stored = le32(&record, CHECKSUM);
    let computed = checksum_of(&record);
    if stored != computed {
        return Err(AtaraidError::checksum(
            device,
            Vendor::Promise,
            stored.into(),
            computed.into(),
        ));
    }
    let total_disks = record[TOTAL_DISKS];
    if total_disks == 0 || total_disks >= MAX_DISKS {
        return Err(AtaraidError::malformed(
            device,
            Vendor::Promise,
            format!(
                "total_disks is {total_disks}, expected 1 to {}",
                MAX_DISKS - 1
            ),
        ));
    }
    let disk_number = record[DISK_NUMBER];
    if disk_number >= total_disks {
        return Err(AtaraidError::malformed(
            device,
            Vendor::Promise,
            format!("disk_number {disk_number} is not below total_disks {total_disks}"),
        ));
    }
    let shift = record[RAID0_SHIFT];
    if shift > 16 {
        return Err(AtaraidError::malformed(
            device,
            Vendor::Promise,
            format!("raid0_shift {shift} gives a stripe above 32 MiB"),
        ));
    }
    let stripe_sectors = if shift == 0 { 0 } else { 1u32 << shift };
    let total_secs = u64::from(le32(&record, TOTAL_SECS));
    let raw_type = record[TYPE];
    let raid10 = raw_type == TYPE_RAID10 || (raw_type == TYPE_RAID1 && total_disks > 3);
    let dev_sectors = device.size_bytes() / SECTOR_BYTES;
    let (level, data_sectors) = if raid10 {
        if total_disks % 2 != 0 {
            return Err(AtaraidError::malformed(
                device,
                Vendor::Promise,
                format!("a raid10 of an odd number of disks ({total_disks})"),
            ));
        }
        (Level::Raid01, total_secs / u64::from(total_disks / 2))
    } else {
        match raw_type {
            TYPE_RAID0 => (Level::Raid0, total_secs / u64::from(total_disks)),
            TYPE_RAID1 => (Level::Raid1, total_secs),
            TYPE_SPAN => (Level::Jbod, dev_sectors - back),
            other => {
                return Err(AtaraidError::unsupported(
                    device,
                    Vendor::Promise,
                    format!("RAID type {other}"),
                ))
            }
        }
    };
    if matches!(level, Level::Raid0 | Level::Raid01) && stripe_sectors == 0 {
        return Err(AtaraidError::malformed(
            device,
            Vendor::Promise,
            "a striped set with raid0_shift 0",
        ));
    }
    let data_offset = u64::from(le32(&record, START));
    if data_sectors == 0 || data_offset + data_sectors > dev_sectors - back {
        return Err(AtaraidError::malformed(
            device,
            Vendor::Promise,
            format!(
                "the member's data ({data_sectors} sectors from sector {data_offset}) does not fit before the metadata at sector {}",
                dev_sectors - back
            ),
        ));
    }
    let magic_1 = le32(&record, MAGIC_1);
    Ok(Some(Member {
        vendor: Vendor::Promise,
        set_name: set_name(magic_1),
        set_id: magic_1.into(),
        level,
        stripe_sectors: if matches!(level, Level::Raid0 | Level::Raid01) {
            stripe_sectors
        } else {
            0
        },
        index: disk_number.into(),
        member_count: total_disks.into(),
        data_offset,
        data_sectors,
        metadata_offset: dev_sectors - back,
        // dmraid found no bit of raid.status that means a failed member.
        state: MemberState::Ok,
    }))
}

/// Writes member `index` of `spec` onto `device`, 63 sectors before its end.
pub fn write_member(
    device: &dyn BlockDevice,
    spec: &SetSpec,
    index: u32,
) -> Result<(), AtaraidError> {
    let unsupported = |what: String| AtaraidError::unsupported(device, Vendor::Promise, what);
    let (raw_type, total_secs) = match spec.level {
        Level::Raid0 => (
            TYPE_RAID0,
            spec.member_data_sectors * u64::from(spec.member_count),
        ),
        Level::Raid1 => (TYPE_RAID1, spec.member_data_sectors),
        Level::Raid01 => (
            TYPE_RAID10,
            spec.member_data_sectors * u64::from(spec.member_count / 2),
        ),
        Level::Jbod => (
            TYPE_SPAN,
            spec.member_data_sectors * u64::from(spec.member_count),
        ),
        other => return Err(unsupported(format!("level {}", other.dmraid_type()))),
    };
    if spec.member_count == 0 || spec.member_count >= u32::from(MAX_DISKS) {
        return Err(unsupported(format!("{} members", spec.member_count)));
    }
    let shift = if spec.stripe_sectors == 0 {
        0
    } else if spec.stripe_sectors.is_power_of_two() {
        spec.stripe_sectors.trailing_zeros() as u8
    } else {
        return Err(unsupported(format!(
            "a stripe of {} sectors (not a power of two)",
            spec.stripe_sectors
        )));
    };
    let mut record = vec![0u8; RECORD_BYTES];
    record[..SIGNATURE.len()].copy_from_slice(SIGNATURE);
    record[DISK_NUMBER] = index as u8;
    put_le32(&mut record, START, 0);
    put_le32(&mut record, DISK_SECS, spec.member_data_sectors as u32);
    record[TYPE] = raw_type;
    record[TOTAL_DISKS] = spec.member_count as u8;
    record[RAID0_SHIFT] = shift;
    record[RAID0_DISKS] = match spec.level {
        Level::Raid01 => (spec.member_count / 2) as u8,
        _ => spec.member_count as u8,
    };
    put_le32(&mut record, TOTAL_SECS, total_secs as u32);
    put_le32(&mut record, MAGIC_1, spec.id);
    for disk in 0..spec.member_count as usize {
        let at = DISKS + disk * DISK_ENTRY_BYTES;
        put_le16(&mut record, at, 0);
        record[at + 2] = disk as u8; // channel
        put_le32(&mut record, at + 4, spec.id);
        put_le32(&mut record, at + 8, disk as u32);
    }
    let sum = checksum_of(&record);
    put_le32(&mut record, CHECKSUM, sum);
    let dev_sectors = device.size_bytes() / SECTOR_BYTES;
    let Some(sector) = dev_sectors.checked_sub(WRITE_END_OFFSET) else {
        return Err(AtaraidError::Truncated {
            device: device.name().to_string(),
            vendor: Vendor::Promise,
            size_bytes: device.size_bytes(),
            needed_bytes: WRITE_END_OFFSET * SECTOR_BYTES,
        });
    };
    write_bytes(device, Vendor::Promise, sector * SECTOR_BYTES, &record)
}
