//! Silicon Image Medley (SiI 3112/3114/680) metadata, as dmraid's `sil` format reads it.
//! Little endian, one sector kept in four copies: the last sector and 512, 1024 and 1536
//! sectors before it. Data from sector 0.
//!
//! | byte | field |
//! |---|---|
//! | 0x060 | magic: the low 26 bits 0x3000000 |
//! | 0x06C | array_sectors (two u32: low, high), 0x078 thisdisk_sectors |
//! | 0x108 | minor_ver, 0x10A major_ver (2) |
//! | 0x10C | creation time: seconds, minutes, hour, day, month, year (one byte each): names the set |
//! | 0x112 | raid0_stride (sectors, u16) |
//! | 0x116 | disk_number (below 8), 0x117 type: 0 raid0, 1 raid1, 2 raid10, 3 spare, 16 raid5, 255 JBOD |
//! | 0x118 | drives_per_striped_set, 0x119 striped_set_number, 0x11A drives_per_mirrored_set, 0x11B mirrored_set_number |
//! | 0x129 | mirrored_set_state: 0 ok, 1 not in sync, 2 in sync |
//! | 0x13E | checksum1: makes the u16 words before it sum to 0 |
//!
//! dmraid assembles a raid10 as a mirror of stripes: the members of one
//! striped_set_number make a stripe, ordered by disk_number, and the stripes mirror each
//! other.

use tessera_block::BlockDevice;

use super::{
    digits_to_letters, le16, le32, put_le16, put_le32, read_bytes, write_bytes, AtaraidError,
    Level, Member, MemberState, Raid5Layout, SetSpec, Vendor, SECTOR_BYTES,
};

pub const MAGIC: u32 = 0x0300_0000;
const MAGIC_MASK: u32 = 0x03FF_FFFF;
pub const RECORD_BYTES: usize = 512;
/// Copies of the record, 512 sectors apart, counting back from the last sector.
pub const AREAS: u64 = 4;
pub const AREA_SPACING_SECTORS: u64 = 512;

pub const TYPE_RAID0: u8 = 0;
pub const TYPE_RAID1: u8 = 1;
pub const TYPE_RAID10: u8 = 2;
pub const TYPE_SPARE: u8 = 3;
pub const TYPE_RAID5: u8 = 16;
pub const TYPE_JBOD: u8 = 255;

const MAGIC_AT: usize = 0x60;
const ARRAY_SECTORS_LOW: usize = 0x6C;
const ARRAY_SECTORS_HIGH: usize = 0x70;
const THISDISK_SECTORS: usize = 0x78;
const MINOR_VER: usize = 0x108;
const MAJOR_VER: usize = 0x10A;
const SECONDS: usize = 0x10C;
const RAID0_STRIDE: usize = 0x112;
const DISK_NUMBER: usize = 0x116;
const TYPE: usize = 0x117;
const DRIVES_PER_STRIPED_SET: usize = 0x118;
const STRIPED_SET_NUMBER: usize = 0x119;
const DRIVES_PER_MIRRORED_SET: usize = 0x11A;
const MIRRORED_SET_NUMBER: usize = 0x11B;
const MIRRORED_SET_STATE: usize = 0x129;
const CHECKSUM1: usize = 0x13E;

const STATE_OK: u8 = 0;
const STATE_NOSYNC: u8 = 1;
const STATE_SYNC: u8 = 2;

fn checksum(b: &[u8]) -> u16 {
    let sum = b[..CHECKSUM1].chunks_exact(2).fold(0u16, |s, w| {
        s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
    });
    0u16.wrapping_sub(sum)
}

/// The set name dmraid makes up from the creation time (year, month, day, hour, minutes,
/// seconds, two digits each), digits turned into letters.
pub fn set_name(time: [u8; 6]) -> String {
    let [seconds, minutes, hour, day, month, year] = time;
    let digits = format!(
        "{:02}{:02}{:02}{:02}{:02}{:02}",
        year,
        month,
        day,
        hour,
        minutes % 60,
        seconds % 60
    );
    format!("sil_{}", digits_to_letters(&digits))
}

/// The sector of copy `area` (0: the last sector), if the device has it.
fn area_sector(device_sectors: u64, area: u64) -> Option<u64> {
    device_sectors.checked_sub(1 + area * AREA_SPACING_SECTORS)
}

/// What one copy of the record holds, or why it is not usable.
enum Area {
    Absent,
    Valid(Vec<u8>),
    Damaged(AtaraidError),
}

fn read_area(
    device: &dyn BlockDevice,
    sector: u64,
    device_sectors: u64,
) -> Result<Area, AtaraidError> {
    let b = read_bytes(device, Vendor::Sil, sector * SECTOR_BYTES, RECORD_BYTES)?;
    if le32(&b, MAGIC_AT) & MAGIC_MASK != MAGIC || b[DISK_NUMBER] >= 8 {
        return Ok(Area::Absent);
    }
    let computed = checksum(&b);
    let stored = le16(&b, CHECKSUM1);
    if computed != stored {
        return Ok(Area::Damaged(AtaraidError::checksum(
            device,
            Vendor::Sil,
            stored.into(),
            computed.into(),
        )));
    }
    let own = u64::from(le32(&b, THISDISK_SECTORS));
    if own > device_sectors {
        return Ok(Area::Damaged(AtaraidError::malformed(
            device,
            Vendor::Sil,
            format!("the record at sector {sector} gives the disk {own} sectors; it has {device_sectors}"),
        )));
    }
    Ok(Area::Valid(b))
}

pub fn probe(device: &dyn BlockDevice) -> Result<Option<Member>, AtaraidError> {
    let device_sectors = device.size_bytes() / SECTOR_BYTES;
    // dmraid reads all four copies and passes over a device too small to hold them.
    let Some(_) = area_sector(device_sectors, AREAS - 1) else {
        return Ok(None);
    };
    let mut first_damage = None;
    let mut record = None;
    for area in 0..AREAS {
        let sector = area_sector(device_sectors, area).expect("checked above");
        match read_area(device, sector, device_sectors)? {
            Area::Absent => {}
            Area::Damaged(e) => {
                first_damage.get_or_insert(e);
            }
            Area::Valid(b) => {
                record = Some((sector, b));
                break;
            }
        }
    }
    let Some((sector, b)) = record else {
        return match first_damage {
            Some(e) => Err(e),
            None => Ok(None),
        };
    };
    member_from(device, &b, sector, device_sectors).map(Some)
}

fn member_from(
    device: &dyn BlockDevice,
    b: &[u8],
    sector: u64,
    device_sectors: u64,
) -> Result<Member, AtaraidError> {
    let malformed = |why: String| Err(AtaraidError::malformed(device, Vendor::Sil, why));
    let array_sectors =
        u64::from(le32(b, ARRAY_SECTORS_LOW)) | (u64::from(le32(b, ARRAY_SECTORS_HIGH)) << 32);
    let disk_number = u32::from(b[DISK_NUMBER]);
    let striped = b[DRIVES_PER_STRIPED_SET] as i8;
    let mirrored = b[DRIVES_PER_MIRRORED_SET] as i8;
    let stride = u32::from(le16(b, RAID0_STRIDE));
    // What dmraid gives a member whose size the record does not state: the disk up to the
    // last copies of the record.
    let cooked = device_sectors
        - (AREAS - 1) * AREA_SPACING_SECTORS
        - if device_sectors & 1 == 1 { 1 } else { 2 };
    let width = |count: i8, what: &str| -> Result<u32, AtaraidError> {
        if count <= 0 || count > 8 || disk_number >= count as u32 {
            Err(AtaraidError::malformed(
                device,
                Vendor::Sil,
                format!("disk {disk_number} of {count} {what}"),
            ))
        } else {
            Ok(count as u32)
        }
    };
    let mut state = match b[MIRRORED_SET_STATE] {
        STATE_OK | STATE_SYNC => MemberState::Ok,
        STATE_NOSYNC => MemberState::Rebuilding,
        _ => MemberState::Failed,
    };
    let (level, index, member_count, data_sectors, stripe) = match b[TYPE] {
        TYPE_RAID0 => {
            let n = width(striped, "striped members")?;
            (
                Level::Raid0,
                disk_number,
                n,
                array_sectors / u64::from(n),
                stride,
            )
        }
        TYPE_RAID1 => {
            let n = width(mirrored, "mirrored members")?;
            (Level::Raid1, disk_number, n, array_sectors, 0)
        }
        TYPE_RAID10 => {
            let n = width(striped, "striped members")?;
            let half = u32::from(b[STRIPED_SET_NUMBER]);
            if half >= 2 {
                return malformed(format!("striped set {half} of a raid10"));
            }
            // dmraid gives each member the whole array_sectors; a member of a stripe of n
            // holds 1/n of it.
            (
                Level::Raid01,
                half * n + disk_number,
                2 * n,
                array_sectors / u64::from(n),
                stride,
            )
        }
        TYPE_RAID5 => {
            let n = width(striped, "striped members")?;
            let layout = Raid5Layout::LeftSymmetric;
            (Level::Raid5 { layout }, disk_number, n, cooked, stride)
        }
        TYPE_JBOD => {
            let n = if array_sectors < cooked {
                1
            } else {
                width(striped, "concatenated members")?
            };
            (Level::Jbod, disk_number.min(n - 1), n, cooked, 0)
        }
        TYPE_SPARE => {
            state = MemberState::Spare;
            (Level::Spare, 0, 1, cooked, 0)
        }
        other => {
            return Err(AtaraidError::unsupported(
                device,
                Vendor::Sil,
                format!("type {other}"),
            ))
        }
    };
    if data_sectors == 0 || data_sectors > device_sectors {
        return malformed(format!(
            "{data_sectors} data sectors on a disk of {device_sectors}"
        ));
    }
    let time: [u8; 6] = b[SECONDS..SECONDS + 6].try_into().expect("6 bytes");
    Ok(Member {
        vendor: Vendor::Sil,
        set_name: set_name(time),
        set_id: time.iter().fold(0u64, |id, &t| (id << 8) | u64::from(t)),
        level,
        stripe_sectors: stripe,
        index,
        member_count,
        data_offset: 0,
        data_sectors,
        metadata_offset: sector,
        state,
    })
}

/// The creation time a set id stands for: seconds, minutes, hour, day, month, year.
fn time_from_id(id: u32) -> [u8; 6] {
    [
        (id % 60) as u8,
        (id / 60 % 60) as u8,
        (id / 3600 % 24) as u8,
        (1 + id / 86_400 % 28) as u8,
        (1 + id / 2_419_200 % 12) as u8,
        (id / 29_030_400 % 100) as u8,
    ]
}

/// Writes member `index` of `spec` (raid0, raid1, or raid01 as SiI's raid10) into all four
/// copies on `device`. `spec.id` stands for the creation time that names the set.
pub fn write_member(
    device: &dyn BlockDevice,
    spec: &SetSpec,
    index: u32,
) -> Result<(), AtaraidError> {
    let unsupported = |what: String| Err(AtaraidError::unsupported(device, Vendor::Sil, what));
    let n = spec.member_count;
    let (raw_type, disk_number, striped, striped_set, mirrored, array_sectors) = match spec.level {
        Level::Raid0 => (
            TYPE_RAID0,
            index,
            n,
            0,
            0,
            spec.member_data_sectors * u64::from(n),
        ),
        Level::Raid1 => (TYPE_RAID1, index, 0, 0, n, spec.member_data_sectors),
        Level::Raid01 if n % 2 == 0 => {
            let width = n / 2;
            (
                TYPE_RAID10,
                index % width,
                width,
                index / width,
                2,
                spec.member_data_sectors * u64::from(width),
            )
        }
        other => return unsupported(format!("{} of {n} members", other.dmraid_type())),
    };
    if n == 0 || n > 8 || index >= n {
        return unsupported(format!("member {index} of {n}"));
    }
    let Ok(stride) = u16::try_from(spec.stripe_sectors) else {
        return unsupported(format!("stripe of {} sectors", spec.stripe_sectors));
    };
    let device_sectors = device.size_bytes() / SECTOR_BYTES;
    if area_sector(device_sectors, AREAS - 1).is_none() {
        return Err(AtaraidError::malformed(
            device,
            Vendor::Sil,
            "the device is too small for four copies",
        ));
    }
    let mut b = vec![0u8; RECORD_BYTES];
    put_le32(&mut b, MAGIC_AT, MAGIC);
    put_le32(&mut b, ARRAY_SECTORS_LOW, array_sectors as u32);
    put_le32(&mut b, ARRAY_SECTORS_HIGH, (array_sectors >> 32) as u32);
    put_le32(
        &mut b,
        THISDISK_SECTORS,
        device_sectors.min(u32::MAX.into()) as u32,
    );
    put_le16(&mut b, MINOR_VER, 0);
    put_le16(&mut b, MAJOR_VER, 2);
    b[SECONDS..SECONDS + 6].copy_from_slice(&time_from_id(spec.id));
    put_le16(
        &mut b,
        RAID0_STRIDE,
        if raw_type == TYPE_RAID1 { 0 } else { stride },
    );
    b[DISK_NUMBER] = disk_number as u8;
    b[TYPE] = raw_type;
    b[DRIVES_PER_STRIPED_SET] = striped as u8;
    b[STRIPED_SET_NUMBER] = striped_set as u8;
    b[DRIVES_PER_MIRRORED_SET] = mirrored as u8;
    b[MIRRORED_SET_NUMBER] = 0;
    b[MIRRORED_SET_STATE] = STATE_OK;
    let sum = checksum(&b);
    put_le16(&mut b, CHECKSUM1, sum);
    for area in 0..AREAS {
        let sector = area_sector(device_sectors, area).expect("checked above");
        write_bytes(device, Vendor::Sil, sector * SECTOR_BYTES, &b)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_block::MemoryDevice;

    fn spec(level: Level, members: u32) -> SetSpec {
        SetSpec {
            level,
            member_count: members,
            stripe_sectors: 32,
            member_data_sectors: 1000,
            id: 987_654_321,
            name: String::new(),
        }
    }

    #[test]
    fn round_trip_every_level() {
        for (level, members) in [(Level::Raid0, 3), (Level::Raid1, 2), (Level::Raid01, 4)] {
            for index in 0..members {
                let dev = MemoryDevice::new("d", 4096 * 512);
                write_member(&dev, &spec(level, members), index).unwrap();
                let m = probe(&dev).unwrap().expect("a SiI member");
                assert_eq!((m.level, m.index, m.member_count), (level, index, members));
                assert_eq!(m.data_sectors, 1000);
                assert_eq!(m.metadata_offset, 4095);
                assert!(
                    m.set_name.starts_with("sil_") && m.set_name.len() == 16,
                    "{}",
                    m.set_name
                );
                assert!(!m.set_name[4..].chars().any(|c| c.is_ascii_digit()));
            }
        }
    }

    #[test]
    fn a_damaged_copy_falls_back_and_all_damaged_is_named() {
        let dev = MemoryDevice::new("sds", 4096 * 512);
        write_member(&dev, &spec(Level::Raid1, 2), 1).unwrap();
        dev.write_at(&[0xEE], 4095 * 512 + 0x10).unwrap();
        let m = probe(&dev).unwrap().expect("the second copy");
        assert_eq!(m.metadata_offset, 4095 - 512);
        for area in 1..AREAS {
            dev.write_at(&[0xEE], (4095 - area * 512) * 512 + 0x10)
                .unwrap();
        }
        let err = probe(&dev).unwrap_err().to_string();
        assert!(err.contains("sds") && err.contains("checksum"), "{err}");
        assert!(probe(&MemoryDevice::new("small", 1000 * 512))
            .unwrap()
            .is_none());
    }
}
