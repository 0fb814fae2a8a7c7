//! NVIDIA MediaShield (nForce) metadata, as dmraid's `nvidia` format reads it. Little
//! endian, 120 bytes in the second-to-last sector of the disk; data from sector 0 up to the
//! metadata.
//!
//! | byte | field |
//! |---|---|
//! | 0x00 | "NVIDIA" (8 bytes, NUL padded) |
//! | 0x08 | size: the record's length in le32 words (30) |
//! | 0x0C | chksum: makes the sum of the record's words zero |
//! | 0x10 | version (u16), 0x12 unitNumber: this member's place, 0x14 capacity (sectors) |
//! | 0x34 | array: version, 0x38 signature[4] (the array's id; their sum names the set) |
//! | 0x48 | raidJobCode (0 idle, 2 init, 3 rebuild, 4 upgrade, 5 sync), 0x49 stripeWidth, 0x4A totalVolumes, 0x4B originalWidth |
//! | 0x4C | raidLevel: 0x80 raid0, 0x81 raid1, 0x8180 raid1+0, 0x95 raid5 (left symmetric), 0xFF JBOD |
//! | 0x50 | stripeBlockSize (sectors), 0x54 ...ByteSize, 0x58 ...Power, 0x5C stripeMask, 0x60 stripeSize, 0x64 stripeByteSize |
//! | 0x74 | flags (2: the array is degraded or offline) |
//!
//! stripeWidth counts the data members: half the members of raid1 and raid1+0, all but one
//! of raid5. Members from stripeWidth on (times two, plus one) are spares. Raid1+0 is a
//! mirror of two stripes: members `0..stripeWidth` the first.

use tessera_block::BlockDevice;

use super::{
    le32, put_le16, put_le32, read_bytes, write_bytes, AtaraidError, Level, Member, MemberState,
    Raid5Layout, SetSpec, Vendor, SECTOR_BYTES,
};

pub const SIGNATURE: &[u8; 6] = b"NVIDIA";
/// Bytes of the record.
pub const RECORD_BYTES: usize = 120;
/// Sectors from the end of the disk to the record's sector.
pub const END_OFFSET: u64 = 2;

pub const LEVEL_JBOD: u32 = 0xFF;
pub const LEVEL_0: u32 = 0x80;
pub const LEVEL_1: u32 = 0x81;
pub const LEVEL_1_0: u32 = 0x8180;
pub const LEVEL_5_SYM: u32 = 0x95;

pub const JOB_IDLE: u8 = 0;
pub const JOB_INIT: u8 = 2;
pub const JOB_REBUILD: u8 = 3;
pub const JOB_UPGRADE: u8 = 4;
pub const JOB_SYNC: u8 = 5;

const SIZE: usize = 0x08;
const CHKSUM: usize = 0x0C;
const VERSION: usize = 0x10;
const UNIT_NUMBER: usize = 0x12;
const CAPACITY: usize = 0x14;
const SECTOR_SIZE: usize = 0x18;
const ARRAY_VERSION: usize = 0x34;
const SIGNATURES: usize = 0x38;
const JOB_CODE: usize = 0x48;
const STRIPE_WIDTH: usize = 0x49;
const TOTAL_VOLUMES: usize = 0x4A;
const ORIGINAL_WIDTH: usize = 0x4B;
const RAID_LEVEL: usize = 0x4C;
const STRIPE_BLOCK_SIZE: usize = 0x50;
const STRIPE_BLOCK_BYTES: usize = 0x54;
const STRIPE_BLOCK_POWER: usize = 0x58;
const STRIPE_MASK: usize = 0x5C;
const STRIPE_SIZE: usize = 0x60;
const STRIPE_BYTES: usize = 0x64;

fn word_sum(record: &[u8]) -> u32 {
    (0..RECORD_BYTES / 4).fold(0u32, |sum, i| sum.wrapping_add(le32(record, i * 4)))
}

/// The name dmraid gives the set: "nvidia_" and the sum of the four signature words in
/// eight hex digits, decimal digits as letters.
pub fn set_name(signature_sum: u32) -> String {
    format!(
        "nvidia_{}",
        super::digits_to_letters(&format!("{signature_sum:08x}"))
    )
}

pub fn probe(device: &dyn BlockDevice) -> Result<Option<Member>, AtaraidError> {
    let dev_sectors = device.size_bytes() / SECTOR_BYTES;
    let Some(meta_sector) = dev_sectors.checked_sub(END_OFFSET) else {
        return Ok(None);
    };
    let record = read_bytes(
        device,
        Vendor::Nvidia,
        meta_sector * SECTOR_BYTES,
        RECORD_BYTES,
    )?;
    if !record.starts_with(SIGNATURE) {
        return Ok(None);
    }
    let malformed = |why: String| AtaraidError::malformed(device, Vendor::Nvidia, why);
    if meta_sector == 0 {
        return Err(malformed(
            "the metadata is in the disk's first sector: no room for data".into(),
        ));
    }
    let words = le32(&record, SIZE);
    if words as usize != RECORD_BYTES / 4 {
        return Err(malformed(format!(
            "size is {words} words, expected {}",
            RECORD_BYTES / 4
        )));
    }
    let sum = word_sum(&record);
    if sum != 0 {
        let stored = le32(&record, CHKSUM);
        return Err(AtaraidError::checksum(
            device,
            Vendor::Nvidia,
            stored.into(),
            stored.wrapping_sub(sum).into(),
        ));
    }
    let unit = u32::from(record[UNIT_NUMBER]);
    let width = u32::from(record[STRIPE_WIDTH]);
    let total = u32::from(record[TOTAL_VOLUMES]);
    let raw_level = le32(&record, RAID_LEVEL);
    let stripe = le32(&record, STRIPE_BLOCK_SIZE);
    if width == 0 {
        return Err(malformed("stripeWidth is 0".into()));
    }
    let (level, members) = match raw_level {
        LEVEL_JBOD => (Level::Jbod, width),
        LEVEL_0 => (Level::Raid0, width),
        LEVEL_1 => (Level::Raid1, width * 2),
        LEVEL_1_0 => (Level::Raid01, width * 2),
        LEVEL_5_SYM => (
            Level::Raid5 {
                layout: Raid5Layout::LeftSymmetric,
            },
            width + 1,
        ),
        other => {
            return Err(AtaraidError::unsupported(
                device,
                Vendor::Nvidia,
                format!("raidLevel {other:#x}"),
            ))
        }
    };
    if total < members {
        return Err(malformed(format!(
            "totalVolumes {total} is fewer than the {members} members of the array"
        )));
    }
    if unit >= total {
        return Err(malformed(format!(
            "unitNumber {unit} is not below totalVolumes {total}"
        )));
    }
    let striped = matches!(level, Level::Raid0 | Level::Raid01 | Level::Raid5 { .. });
    if striped && (stripe == 0 || stripe > 65536) {
        return Err(malformed(format!("stripeBlockSize is {stripe} sectors")));
    }
    let job = record[JOB_CODE];
    let spare = unit >= members;
    let state = if spare {
        MemberState::Spare
    } else if job == JOB_REBUILD || job == JOB_UPGRADE {
        MemberState::Rebuilding
    } else {
        // FLAG_ERROR says the array is degraded, not which member is gone: the members
        // that still carry its metadata are the ones it runs on.
        MemberState::Ok
    };
    let signature_sum = (0..4).fold(0u32, |sum, i| {
        sum.wrapping_add(le32(&record, SIGNATURES + i * 4))
    });
    Ok(Some(Member {
        vendor: Vendor::Nvidia,
        set_name: set_name(signature_sum),
        set_id: signature_sum.into(),
        level: if spare { Level::Spare } else { level },
        stripe_sectors: if striped { stripe } else { 0 },
        index: unit,
        member_count: members,
        data_offset: 0,
        data_sectors: meta_sector,
        metadata_offset: meta_sector,
        state,
    }))
}

/// Writes member `index` of `spec` onto `device`, in its second-to-last sector. The set's
/// id becomes the first signature word (the others zero), so `spec.id` is the sum.
pub fn write_member(
    device: &dyn BlockDevice,
    spec: &SetSpec,
    index: u32,
) -> Result<(), AtaraidError> {
    let (raw_level, width) = match spec.level {
        Level::Jbod => (LEVEL_JBOD, spec.member_count),
        Level::Raid0 => (LEVEL_0, spec.member_count),
        Level::Raid1 => (LEVEL_1, spec.member_count / 2),
        Level::Raid01 => (LEVEL_1_0, spec.member_count / 2),
        Level::Raid5 {
            layout: Raid5Layout::LeftSymmetric,
        } => (LEVEL_5_SYM, spec.member_count.saturating_sub(1)),
        other => {
            return Err(AtaraidError::unsupported(
                device,
                Vendor::Nvidia,
                format!("level {}", other.dmraid_type()),
            ))
        }
    };
    let dev_sectors = device.size_bytes() / SECTOR_BYTES;
    let Some(meta_sector) = dev_sectors.checked_sub(END_OFFSET) else {
        return Err(AtaraidError::Truncated {
            device: device.name().to_string(),
            vendor: Vendor::Nvidia,
            size_bytes: device.size_bytes(),
            needed_bytes: END_OFFSET * SECTOR_BYTES,
        });
    };
    let data_members = match spec.level {
        Level::Raid1 => 1,
        _ => u64::from(width),
    };
    let capacity = meta_sector * data_members;
    let mut record = vec![0u8; RECORD_BYTES];
    record[..SIGNATURE.len()].copy_from_slice(SIGNATURE);
    put_le32(&mut record, SIZE, (RECORD_BYTES / 4) as u32);
    put_le16(&mut record, VERSION, 100);
    record[UNIT_NUMBER] = index as u8;
    put_le32(&mut record, CAPACITY, capacity as u32);
    put_le32(&mut record, SECTOR_SIZE, 512);
    put_le32(&mut record, ARRAY_VERSION, 0x0064_0000 + 68);
    put_le32(&mut record, SIGNATURES, spec.id);
    record[JOB_CODE] = JOB_IDLE;
    record[STRIPE_WIDTH] = width as u8;
    record[TOTAL_VOLUMES] = spec.member_count as u8;
    record[ORIGINAL_WIDTH] = width as u8;
    put_le32(&mut record, RAID_LEVEL, raw_level);
    let stripe = spec.stripe_sectors;
    put_le32(&mut record, STRIPE_BLOCK_SIZE, stripe);
    put_le32(&mut record, STRIPE_BLOCK_BYTES, stripe * 512);
    put_le32(
        &mut record,
        STRIPE_BLOCK_POWER,
        if stripe.is_power_of_two() {
            stripe.trailing_zeros()
        } else {
            0
        },
    );
    put_le32(&mut record, STRIPE_MASK, stripe.saturating_sub(1));
    put_le32(&mut record, STRIPE_SIZE, stripe * width);
    put_le32(&mut record, STRIPE_BYTES, stripe * width * 512);
    let sum = word_sum(&record);
    put_le32(&mut record, CHKSUM, 0u32.wrapping_sub(sum));
    write_bytes(device, Vendor::Nvidia, meta_sector * SECTOR_BYTES, &record)
}
