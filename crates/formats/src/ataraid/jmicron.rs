//! JMicron JMB36x metadata, as dmraid's `jmicron` format reads it. Little endian, 128 bytes
//! at the start of the last sector.
//!
//! | byte | field |
//! |---|---|
//! | 0x00 | signature "JM", 0x02 version (u16), 0x04 checksum (u16) |
//! | 0x10 | identity: this disk's id (the low 4 bits a segment number) |
//! | 0x14 | segment: base (u32, data start in sectors), 0x18 range (u32, 32 MiB units), 0x1C range2 (u16, sectors) |
//! | 0x20 | name (16 bytes, NUL padded): names the set |
//! | 0x30 | mode: 0 raid0, 1 raid1, 2 raid0+1 (a stripe over mirror pairs), 3 JBOD, 5 raid5 |
//! | 0x31 | block: stripe shift (a unit is 2 << block sectors) |
//! | 0x32 | attribute (u16): bits above 2 mean the member is broken |
//! | 0x38 | spare[2] (u32 disk ids), 0x40 member[8] (u32 disk ids, in set order) |
//!
//! The 64 u16 words of the record sum to 0 (or 1, which dmraid accepts too).

use tessera_block::BlockDevice;

use super::{
    le16, le32, put_le16, put_le32, read_bytes, sector_from_end, write_bytes, AtaraidError, Level,
    Member, MemberState, SetSpec, Vendor, SECTOR_BYTES,
};

pub const SIGNATURE: &[u8; 2] = b"JM";
pub const RECORD_BYTES: usize = 128;
pub const NAME_BYTES: usize = 16;
pub const MEMBERS: usize = 8;

pub const MODE_RAID0: u8 = 0;
pub const MODE_RAID1: u8 = 1;
pub const MODE_RAID01: u8 = 2;
pub const MODE_JBOD: u8 = 3;
pub const MODE_RAID5: u8 = 5;

const VERSION: usize = 0x02;
const CHECKSUM: usize = 0x04;
const IDENTITY: usize = 0x10;
const BASE: usize = 0x14;
const RANGE: usize = 0x18;
const RANGE2: usize = 0x1C;
const NAME: usize = 0x20;
const MODE: usize = 0x30;
const BLOCK: usize = 0x31;
const ATTRIBUTE: usize = 0x32;
const MEMBER: usize = 0x40;

/// The attribute bits a healthy member may carry (mounted, bootable, and the like).
const ATTRIBUTE_OK_MASK: u16 = 0x07;
/// The low bits of a disk id number its segments.
const DISK_MASK: u32 = 0xFFFF_FFF0;
/// Sectors in one unit of `range`.
const RANGE_UNIT_SECTORS: u64 = 32 * 2048;

fn word_sum(b: &[u8]) -> u16 {
    b.chunks_exact(2).fold(0u16, |s, w| {
        s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
    })
}

/// The set name dmraid makes up: the stored name as it is, up to its first NUL.
pub fn set_name(raw_name: &[u8]) -> String {
    let end = raw_name
        .iter()
        .position(|&c| c == 0)
        .unwrap_or(raw_name.len());
    format!("jmicron_{}", String::from_utf8_lossy(&raw_name[..end]))
}

/// FNV-1a of the name: members of one set share only their name.
fn name_id(raw_name: &[u8]) -> u64 {
    let end = raw_name
        .iter()
        .position(|&c| c == 0)
        .unwrap_or(raw_name.len());
    raw_name[..end]
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &c| {
            (h ^ u64::from(c)).wrapping_mul(0x0100_0000_01b3)
        })
}

pub fn probe(device: &dyn BlockDevice) -> Result<Option<Member>, AtaraidError> {
    let Some(sector) = sector_from_end(device, 1) else {
        return Ok(None);
    };
    let b = read_bytes(device, Vendor::Jmicron, sector * SECTOR_BYTES, RECORD_BYTES)?;
    if &b[..2] != SIGNATURE {
        return Ok(None);
    }
    let sum = word_sum(&b);
    if sum > 1 {
        return Err(AtaraidError::checksum(
            device,
            Vendor::Jmicron,
            le16(&b, CHECKSUM).into(),
            u64::from(le16(&b, CHECKSUM).wrapping_sub(sum)),
        ));
    }
    let identity = le32(&b, IDENTITY) & DISK_MASK;
    let members: Vec<u32> = (0..MEMBERS).map(|i| le32(&b, MEMBER + 4 * i)).collect();
    // dmraid counts up to the last slot in use.
    let member_count = members.iter().rposition(|&m| m != 0).map_or(0, |i| i + 1) as u32;
    // An empty slot never names this disk, even where the disk's id is all segment bits.
    let Some(index) = members
        .iter()
        .rposition(|&m| m != 0 && m & DISK_MASK == identity)
    else {
        return Err(AtaraidError::malformed(
            device,
            Vendor::Jmicron,
            format!("the disk id {identity:#x} is not among the set's members"),
        ));
    };
    let level = match b[MODE] {
        MODE_RAID0 => Level::Raid0,
        MODE_RAID1 => Level::Raid1,
        MODE_RAID01 => Level::Raid10,
        MODE_JBOD => Level::Jbod,
        other => {
            return Err(AtaraidError::unsupported(
                device,
                Vendor::Jmicron,
                format!("mode {other}"),
            ))
        }
    };
    if level == Level::Raid10 && member_count % 2 != 0 {
        return Err(AtaraidError::malformed(
            device,
            Vendor::Jmicron,
            format!("raid0+1 of {member_count} members"),
        ));
    }
    if b[BLOCK] > 20 {
        return Err(AtaraidError::malformed(
            device,
            Vendor::Jmicron,
            format!("stripe shift {}", b[BLOCK]),
        ));
    }
    let data_sectors =
        u64::from(le32(&b, RANGE)) * RANGE_UNIT_SECTORS + u64::from(le16(&b, RANGE2));
    if data_sectors == 0 {
        return Err(AtaraidError::malformed(
            device,
            Vendor::Jmicron,
            "a data area of 0 sectors",
        ));
    }
    let name = &b[NAME..NAME + NAME_BYTES];
    Ok(Some(Member {
        vendor: Vendor::Jmicron,
        set_name: set_name(name),
        set_id: name_id(name),
        level,
        stripe_sectors: match level {
            Level::Raid0 | Level::Raid10 => 2u32 << b[BLOCK],
            _ => 0,
        },
        index: index as u32,
        member_count,
        data_offset: le32(&b, BASE).into(),
        data_sectors,
        metadata_offset: sector,
        state: if le16(&b, ATTRIBUTE) & !ATTRIBUTE_OK_MASK != 0 {
            MemberState::Failed
        } else {
            MemberState::Ok
        },
    }))
}

/// The disk id of member `index` of a set with id `id` (low 4 bits clear: segment 0).
fn disk_id(id: u32, index: u32) -> u32 {
    (id.wrapping_mul(0x01000193) ^ (index + 1).wrapping_mul(0x5bd1_e995)) & DISK_MASK | 0x10
}

/// Writes member `index` of `spec` (raid0, raid1, JBOD, or raid10 as JMicron's raid0+1)
/// into `device`'s last sector. `spec.name` is the set's name (at most 16 bytes).
pub fn write_member(
    device: &dyn BlockDevice,
    spec: &SetSpec,
    index: u32,
) -> Result<(), AtaraidError> {
    let unsupported = |what: String| Err(AtaraidError::unsupported(device, Vendor::Jmicron, what));
    let mode = match spec.level {
        Level::Raid0 => MODE_RAID0,
        Level::Raid1 => MODE_RAID1,
        Level::Raid10 if spec.member_count % 2 == 0 => MODE_RAID01,
        Level::Jbod => MODE_JBOD,
        other => {
            return unsupported(format!(
                "{} of {} members",
                other.dmraid_type(),
                spec.member_count
            ))
        }
    };
    if spec.member_count == 0 || spec.member_count as usize > MEMBERS || index >= spec.member_count
    {
        return unsupported(format!("member {index} of {}", spec.member_count));
    }
    if spec.name.len() > NAME_BYTES || spec.name.is_empty() {
        return unsupported(format!("the name {:?} (1 to 16 bytes)", spec.name));
    }
    let block = match spec.level {
        Level::Raid0 | Level::Raid10 => {
            if spec.stripe_sectors < 2 || !spec.stripe_sectors.is_power_of_two() {
                return unsupported(format!("stripe of {} sectors", spec.stripe_sectors));
            }
            (spec.stripe_sectors.trailing_zeros() - 1) as u8
        }
        _ => 2,
    };
    let Some(sector) = sector_from_end(device, 1) else {
        return Err(AtaraidError::malformed(
            device,
            Vendor::Jmicron,
            "the device is empty",
        ));
    };
    if spec.member_data_sectors > sector {
        return unsupported(format!(
            "{} data sectors on a member of {sector}",
            spec.member_data_sectors
        ));
    }
    let mut b = vec![0u8; RECORD_BYTES];
    b[..2].copy_from_slice(SIGNATURE);
    put_le16(&mut b, VERSION, 0x0001);
    put_le32(&mut b, IDENTITY, disk_id(spec.id, index));
    put_le32(&mut b, BASE, 0);
    put_le32(
        &mut b,
        RANGE,
        (spec.member_data_sectors / RANGE_UNIT_SECTORS) as u32,
    );
    put_le16(
        &mut b,
        RANGE2,
        (spec.member_data_sectors % RANGE_UNIT_SECTORS) as u16,
    );
    b[NAME..NAME + spec.name.len()].copy_from_slice(spec.name.as_bytes());
    b[MODE] = mode;
    b[BLOCK] = block;
    put_le16(&mut b, ATTRIBUTE, 0x0001);
    for i in 0..spec.member_count {
        put_le32(&mut b, MEMBER + 4 * i as usize, disk_id(spec.id, i));
    }
    let sum = word_sum(&b);
    put_le16(&mut b, CHECKSUM, 0u16.wrapping_sub(sum));
    write_bytes(device, Vendor::Jmicron, sector * SECTOR_BYTES, &b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_block::MemoryDevice;

    fn spec(level: Level, members: u32) -> SetSpec {
        SetSpec {
            level,
            member_count: members,
            stripe_sectors: 128,
            member_data_sectors: 3000,
            id: 99,
            name: "Vol0".into(),
        }
    }

    #[test]
    fn round_trip_every_level() {
        for (level, members) in [
            (Level::Raid0, 3),
            (Level::Raid1, 2),
            (Level::Jbod, 2),
            (Level::Raid10, 4),
        ] {
            for index in 0..members {
                let dev = MemoryDevice::new("d", 4096 * 512);
                write_member(&dev, &spec(level, members), index).unwrap();
                let m = probe(&dev).unwrap().expect("a JMicron member");
                assert_eq!(m.set_name, "jmicron_Vol0");
                assert_eq!((m.level, m.index, m.member_count), (level, index, members));
                assert_eq!((m.data_offset, m.data_sectors), (0, 3000));
                let unit = if matches!(level, Level::Raid0 | Level::Raid10) {
                    128
                } else {
                    0
                };
                assert_eq!(m.stripe_sectors, unit);
            }
        }
    }

    #[test]
    fn damaged_record_is_named() {
        let dev = MemoryDevice::new("sdj", 4096 * 512);
        write_member(&dev, &spec(Level::Raid1, 2), 0).unwrap();
        dev.write_at(&[0x55], 4095 * 512 + 0x21).unwrap();
        let err = probe(&dev).unwrap_err().to_string();
        assert!(err.contains("sdj") && err.contains("checksum"), "{err}");
    }
}
