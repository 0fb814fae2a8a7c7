//! VIA V-RAID (VT6420, VT8237 south bridges) metadata, as dmraid's `via` format reads it.
//! Little endian, 51 bytes at the start of the last sector; data from sector 0 up to it.
//!
//! | byte | field |
//! |---|---|
//! | 0 | signature 0xAA55 (u16) |
//! | 2 | version_number (0 or 1) |
//! | 3 | disk (u16 bit field): bit 0 bootable, 1 enhanced, 2 in_disk_array, 3-6 raid_type (0 raid0, 1 raid1, 8 span, 9 raid0+1), 7-9 array_index, 10-14 raid_type_info, 15 tolerance (the member failed) |
//! | 5 | disk_array_ex: bits 0-2 the stripe's members, bits 4-7 stripe shift (8 << shift sectors) |
//! | 6 | capacity (two u32: low, high), 14 this disk's serial checksum |
//! | 18 | serial_checksum[8]: every member's; with disk_array_ex their sum names the set |
//! | 50 | checksum: the byte sum of bytes 0-49 |
//!
//! raid_type_info: span, raid0 and raid0+1: bits 0-2 the member's place in its stripe; raid0+1
//! bit 3 which of the two mirrored stripes; raid1: bits 0-1 0 source, 1 spare, 2 mirror.

use tessera_block::BlockDevice;

use super::{
    digits_to_letters, le16, le32, put_le16, put_le32, read_bytes, sector_from_end, write_bytes,
    AtaraidError, Level, Member, MemberState, SetSpec, Vendor, SECTOR_BYTES,
};

pub const SIGNATURE: u16 = 0xAA55;
pub const RECORD_BYTES: usize = 51;
/// The most members whose serial checksums a record lists.
pub const MAX_DISKS: usize = 8;

pub const TYPE_RAID0: u16 = 0;
pub const TYPE_RAID1: u16 = 1;
pub const TYPE_SPAN: u16 = 8;
pub const TYPE_RAID01: u16 = 9;

const VERSION: usize = 2;
const DISK: usize = 3;
const DISK_ARRAY_EX: usize = 5;
const CAPACITY_LOW: usize = 6;
const CAPACITY_HIGH: usize = 10;
const OWN_SERIAL: usize = 14;
const SERIALS: usize = 18;
const CHECKSUM: usize = 50;

const DISK_IN_ARRAY: u16 = 1 << 2;
const DISK_TOLERANCE: u16 = 1 << 15;

fn raid_type(disk: u16) -> u16 {
    (disk >> 3) & 0xF
}

fn raid_type_info(disk: u16) -> u16 {
    (disk >> 10) & 0x1F
}

/// Sectors per stripe unit the byte `disk_array_ex` gives.
pub fn stripe_sectors(disk_array_ex: u8) -> u32 {
    8u32 << (disk_array_ex >> 4)
}

fn byte_sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |s, &c| s.wrapping_add(c))
}

/// The set name dmraid makes up: the decimal sum of disk_array_ex and the serial checksums,
/// digits turned into letters.
pub fn set_name(sum: u32) -> String {
    format!("via_{}", digits_to_letters(&sum.to_string()))
}

/// Reads the record in the last sector: `None` without the signature.
pub fn probe(device: &dyn BlockDevice) -> Result<Option<Member>, AtaraidError> {
    let Some(sector) = sector_from_end(device, 1) else {
        return Ok(None);
    };
    let b = read_bytes(device, Vendor::Via, sector * SECTOR_BYTES, RECORD_BYTES)?;
    if le16(&b, 0) != SIGNATURE {
        return Ok(None);
    }
    let computed = byte_sum(&b[..CHECKSUM]);
    if computed != b[CHECKSUM] {
        return Err(AtaraidError::checksum(
            device,
            Vendor::Via,
            b[CHECKSUM].into(),
            computed.into(),
        ));
    }
    let disk = le16(&b, DISK);
    let ex = b[DISK_ARRAY_EX];
    let info = raid_type_info(disk);
    let width = u32::from(ex & 7);
    let position = u32::from(info & 7);
    let mut state = if disk & DISK_TOLERANCE != 0 {
        MemberState::Failed
    } else if disk & DISK_IN_ARRAY == 0 {
        MemberState::Unknown
    } else {
        MemberState::Ok
    };
    let (level, index, member_count) = match raid_type(disk) {
        TYPE_RAID0 => (Level::Raid0, position, width),
        TYPE_SPAN => (Level::Jbod, position, width),
        TYPE_RAID1 => match info & 3 {
            0 => (Level::Raid1, 0, 2),
            2 => (Level::Raid1, 1, 2),
            // A mirror's hot spare: no copy of the set yet.
            _ => {
                state = MemberState::Spare;
                (Level::Spare, 0, 1)
            }
        },
        TYPE_RAID01 => {
            let mirror = u32::from((info >> 3) & 1);
            (Level::Raid01, mirror * width + position, 2 * width)
        }
        other => {
            return Err(AtaraidError::unsupported(
                device,
                Vendor::Via,
                format!("raid type {other}"),
            ))
        }
    };
    if matches!(level, Level::Raid0 | Level::Jbod | Level::Raid01) && position >= width {
        return Err(AtaraidError::malformed(
            device,
            Vendor::Via,
            format!("member {position} of a stripe of {width}"),
        ));
    }
    let sum = (0..MAX_DISKS).fold(u32::from(ex), |s, i| {
        s.wrapping_add(le32(&b, SERIALS + 4 * i))
    });
    Ok(Some(Member {
        vendor: Vendor::Via,
        set_name: set_name(sum),
        set_id: sum.into(),
        level,
        stripe_sectors: match level {
            Level::Raid0 | Level::Raid01 => stripe_sectors(ex),
            _ => 0,
        },
        index,
        member_count,
        data_offset: 0,
        // dmraid takes the whole disk up to the record.
        data_sectors: sector,
        metadata_offset: sector,
        state,
    }))
}

/// The serial checksum member `index` of a set with id `id` carries.
fn serial_checksum(id: u32, index: u32) -> u32 {
    id.wrapping_mul(2_654_435_761)
        .wrapping_add(index.wrapping_mul(0x9E37))
}

/// Writes member `index` of `spec` (span, raid0, raid1 of two, or raid0+1) into `device`'s
/// last sector. `spec.stripe_sectors` must be 8 << n.
pub fn write_member(
    device: &dyn BlockDevice,
    spec: &SetSpec,
    index: u32,
) -> Result<(), AtaraidError> {
    let unsupported = |what: String| Err(AtaraidError::unsupported(device, Vendor::Via, what));
    let (raw_type, width, info) = match spec.level {
        Level::Raid0 => (TYPE_RAID0, spec.member_count, index),
        Level::Jbod => (TYPE_SPAN, spec.member_count, index),
        Level::Raid1 if spec.member_count == 2 => (TYPE_RAID1, 2, if index == 0 { 0 } else { 2 }),
        Level::Raid01 if spec.member_count % 2 == 0 => {
            let width = spec.member_count / 2;
            (TYPE_RAID01, width, (index % width) | ((index / width) << 3))
        }
        other => {
            return unsupported(format!(
                "{} of {} members",
                other.dmraid_type(),
                spec.member_count
            ))
        }
    };
    if width == 0 || width > 7 || index >= spec.member_count {
        return unsupported(format!(
            "member {index} of {} ({width} per stripe)",
            spec.member_count
        ));
    }
    let shift = match spec.level {
        Level::Raid0 | Level::Raid01 => {
            let unit = spec.stripe_sectors.max(8);
            if !unit.is_power_of_two() || unit.trailing_zeros() - 3 > 15 {
                return unsupported(format!("stripe of {} sectors", spec.stripe_sectors));
            }
            unit.trailing_zeros() - 3
        }
        _ => 0,
    };
    let Some(sector) = sector_from_end(device, 1) else {
        return Err(AtaraidError::malformed(
            device,
            Vendor::Via,
            "the device is empty",
        ));
    };
    let mut b = vec![0u8; RECORD_BYTES];
    put_le16(&mut b, 0, SIGNATURE);
    b[VERSION] = 1;
    let disk = DISK_IN_ARRAY | (raw_type << 3) | (((info as u16) & 0x1F) << 10);
    put_le16(&mut b, DISK, disk);
    b[DISK_ARRAY_EX] = (width as u8) | ((shift as u8) << 4);
    let capacity = spec.member_data_sectors * u64::from(width);
    put_le32(&mut b, CAPACITY_LOW, capacity as u32);
    put_le32(&mut b, CAPACITY_HIGH, (capacity >> 32) as u32);
    put_le32(&mut b, OWN_SERIAL, serial_checksum(spec.id, index));
    for i in 0..spec.member_count.min(MAX_DISKS as u32) {
        put_le32(
            &mut b,
            SERIALS + 4 * i as usize,
            serial_checksum(spec.id, i),
        );
    }
    b[CHECKSUM] = byte_sum(&b[..CHECKSUM]);
    write_bytes(device, Vendor::Via, sector * SECTOR_BYTES, &b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_block::MemoryDevice;

    fn spec(level: Level, members: u32) -> SetSpec {
        SetSpec {
            level,
            member_count: members,
            stripe_sectors: 64,
            member_data_sectors: 2000,
            id: 7,
            name: String::new(),
        }
    }

    #[test]
    fn round_trip_every_level() {
        for (level, members) in [
            (Level::Raid0, 3),
            (Level::Raid1, 2),
            (Level::Jbod, 2),
            (Level::Raid01, 4),
        ] {
            let s = spec(level, members);
            let mut names = Vec::new();
            for index in 0..members {
                let dev = MemoryDevice::new(format!("d{index}"), 4096 * 512);
                write_member(&dev, &s, index).unwrap();
                let m = probe(&dev).unwrap().expect("a VIA member");
                assert_eq!(m.level, level);
                assert_eq!(m.index, index);
                assert_eq!(m.member_count, members);
                assert_eq!(m.data_sectors, 4095);
                assert_eq!(m.state, MemberState::Ok);
                assert!(m.set_name.starts_with("via_"));
                assert!(!m.set_name[4..].chars().any(|c| c.is_ascii_digit()));
                names.push(m.set_name);
            }
            assert!(names.windows(2).all(|w| w[0] == w[1]), "{names:?}");
        }
    }

    #[test]
    fn damaged_record_is_named() {
        let dev = MemoryDevice::new("sdq", 4096 * 512);
        write_member(&dev, &spec(Level::Raid0, 2), 1).unwrap();
        let mut byte = [0u8];
        dev.read_at(&mut byte, 4095 * 512 + 20).unwrap();
        dev.write_at(&[byte[0] ^ 0x40], 4095 * 512 + 20).unwrap();
        let err = probe(&dev).unwrap_err().to_string();
        assert!(err.contains("sdq") && err.contains("checksum"), "{err}");
        let blank = MemoryDevice::new("blank", 4096 * 512);
        assert!(probe(&blank).unwrap().is_none());
    }
}
