//! LSI Logic MegaRAID (software RAID on the motherboard, "$XIDE$") metadata, as dmraid's
//! `lsi` format reads it. Little endian, one sector: the last of the disk; data from sector 0
//! up to it. The record has no checksum.
//!
//! | byte | field |
//! |---|---|
//! | 0x00 | "$XIDE$", 0x07 seqno |
//! | 0x10 | type (1 raid0, 2 raid1, 3 raid10), 0x12 stride (sectors, u16) |
//! | 0x20 | disks[4], 16 bytes each: raid10 stripe/mirror nibbles, magic_0, magic_1 (u16), disk_number, set_number, offline |
//! | 0x1F0 | disk_number, 0x1F1 set_number (this member's slot is `set_number * 2 + disk_number`) |
//! | 0x1F2 | set_id (u32) |
//!
//! Sets have two members (raid0, raid1). dmraid's grouping of raid10 members gives each
//! half its own name, so tessera refuses raid10 rather than guess.

use tessera_block::BlockDevice;

use super::{
    le32, put_le16, put_le32, read_bytes, write_bytes, AtaraidError, Level, Member, MemberState,
    SetSpec, Vendor, SECTOR_BYTES,
};

pub const SIGNATURE: &[u8; 6] = b"$XIDE$";
pub const RECORD_BYTES: usize = 512;
pub const TYPE_RAID0: u8 = 1;
pub const TYPE_RAID1: u8 = 2;
pub const TYPE_RAID10: u8 = 3;
/// The members of a raid0 or raid1 set.
pub const MEMBERS: u32 = 2;

const SEQNO: usize = 0x07;
const TYPE: usize = 0x10;
const STRIDE: usize = 0x12;
const DISKS: usize = 0x20;
const DISK_ENTRY_BYTES: usize = 16;
const DISK_NUMBER: usize = 0x1F0;
const SET_NUMBER: usize = 0x1F1;
const SET_ID: usize = 0x1F2;

/// The name dmraid gives the set: "lsi_", the set id and the set number in decimal, digits
/// as letters.
pub fn set_name(set_id: u32, set_number: u8) -> String {
    format!(
        "lsi_{}",
        super::digits_to_letters(&format!("{set_id}{set_number}"))
    )
}

pub fn probe(device: &dyn BlockDevice) -> Result<Option<Member>, AtaraidError> {
    let dev_sectors = device.size_bytes() / SECTOR_BYTES;
    let Some(meta_sector) = dev_sectors.checked_sub(1) else {
        return Ok(None);
    };
    let record = read_bytes(
        device,
        Vendor::Lsi,
        meta_sector * SECTOR_BYTES,
        RECORD_BYTES,
    )?;
    if !record.starts_with(SIGNATURE) {
        return Ok(None);
    }
    let malformed = |why: String| AtaraidError::malformed(device, Vendor::Lsi, why);
    if meta_sector == 0 {
        return Err(malformed(
            "the metadata is in the disk's first sector: no room for data".into(),
        ));
    }
    let disk_number = record[DISK_NUMBER];
    let set_number = record[SET_NUMBER];
    let slot = usize::from(set_number) * 2 + usize::from(disk_number);
    if slot >= 4 {
        return Err(malformed(format!(
            "set_number {set_number} and disk_number {disk_number} name slot {slot} of 4"
        )));
    }
    let level = match record[TYPE] {
        TYPE_RAID0 => Level::Raid0,
        TYPE_RAID1 => Level::Raid1,
        TYPE_RAID10 => {
            return Err(AtaraidError::unsupported(
                device,
                Vendor::Lsi,
                "a raid10 set",
            ))
        }
        other => {
            return Err(AtaraidError::unsupported(
                device,
                Vendor::Lsi,
                format!("type {other}"),
            ))
        }
    };
    if slot >= MEMBERS as usize {
        return Err(malformed(format!(
            "slot {slot} in a {}-member set",
            MEMBERS
        )));
    }
    let stride = u32::from(super::le16(&record, STRIDE));
    if level == Level::Raid0 && stride == 0 {
        return Err(malformed("a raid0 set with stride 0".into()));
    }
    let entry = DISKS + slot * DISK_ENTRY_BYTES;
    let offline = record[entry + 8] != 0;
    let set_id = le32(&record, SET_ID);
    Ok(Some(Member {
        vendor: Vendor::Lsi,
        set_name: set_name(set_id, set_number),
        set_id: (u64::from(set_id) << 8) | u64::from(set_number),
        level,
        stripe_sectors: if level == Level::Raid0 { stride } else { 0 },
        index: slot as u32,
        member_count: MEMBERS,
        data_offset: 0,
        data_sectors: meta_sector,
        metadata_offset: meta_sector,
        state: if offline {
            MemberState::Failed
        } else {
            MemberState::Ok
        },
    }))
}

/// Writes member `index` of `spec` (two members, raid0 or raid1) into `device`'s last sector.
pub fn write_member(
    device: &dyn BlockDevice,
    spec: &SetSpec,
    index: u32,
) -> Result<(), AtaraidError> {
    let raw_type = match spec.level {
        Level::Raid0 => TYPE_RAID0,
        Level::Raid1 => TYPE_RAID1,
        other => {
            return Err(AtaraidError::unsupported(
                device,
                Vendor::Lsi,
                format!("level {}", other.dmraid_type()),
            ))
        }
    };
    if spec.member_count != MEMBERS || index >= MEMBERS {
        return Err(AtaraidError::unsupported(
            device,
            Vendor::Lsi,
            format!("member {index} of {}", spec.member_count),
        ));
    }
    let dev_sectors = device.size_bytes() / SECTOR_BYTES;
    let Some(meta_sector) = dev_sectors.checked_sub(1) else {
        return Err(AtaraidError::Truncated {
            device: device.name().to_string(),
            vendor: Vendor::Lsi,
            size_bytes: device.size_bytes(),
            needed_bytes: SECTOR_BYTES,
        });
    };
    let mut record = vec![0u8; RECORD_BYTES];
    record[..SIGNATURE.len()].copy_from_slice(SIGNATURE);
    record[SEQNO] = 1;
    record[TYPE] = raw_type;
    put_le16(&mut record, STRIDE, spec.stripe_sectors as u16);
    for disk in 0..MEMBERS as usize {
        let at = DISKS + disk * DISK_ENTRY_BYTES;
        put_le16(&mut record, at + 2, (spec.id & 0xFFFF) as u16);
        put_le16(&mut record, at + 4, (spec.id >> 16) as u16);
        record[at + 6] = disk as u8;
        record[at + 7] = 0;
    }
    record[DISK_NUMBER] = index as u8;
    record[SET_NUMBER] = 0;
    put_le32(&mut record, SET_ID, spec.id);
    write_bytes(device, Vendor::Lsi, meta_sector * SECTOR_BYTES, &record)
}
