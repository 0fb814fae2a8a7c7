//! MD software RAID superblocks, as mdadm and the kernel write them: version 0.90
//! ([`super0`]), versions 1.0/1.1/1.2 ([`super1`]) and the write-intent bitmap's header
//! ([`bitmap`]). [`probe`] finds whichever a member holds; [`MdSuperblock`] gives one view
//! of both kinds.

pub mod badblocks;
pub mod bitmap;
pub mod create;
pub mod super0;
pub mod super1;

use std::fmt;

use thiserror::Error;

use tessera_block::{BlockDevice, BlockError};

pub use bitmap::BitmapSuper;
pub use super0::Superblock0;
pub use super1::Superblock1;

/// MD_SB_MAGIC, in both formats.
pub const MAGIC: u32 = 0xa92b_4efc;

/// Where a superblock lives and how it is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MdVersion {
    V0_90,
    V1_0,
    V1_1,
    V1_2,
}

impl MdVersion {
    /// The order [`probe`] tries them in.
    pub const PROBE_ORDER: [MdVersion; 4] = [Self::V1_2, Self::V1_1, Self::V1_0, Self::V0_90];

    /// Byte offset of the superblock on a device of `device_bytes`, or None if the device
    /// is too small to hold one there.
    pub fn offset_bytes(self, device_bytes: u64) -> Option<u64> {
        let sectors = device_bytes / 512;
        let (at, len) = match self {
            // The last 64 KiB-aligned 64 KiB.
            Self::V0_90 => ((sectors & !127).checked_sub(128)?, super0::BYTES as u64),
            // 8 KiB from the end, 4 KiB-aligned.
            Self::V1_0 => (sectors.checked_sub(16)? & !7, 4096),
            Self::V1_1 => (0, super1::HEADER_BYTES as u64),
            Self::V1_2 => (8, super1::HEADER_BYTES as u64),
        };
        (at * 512 + len <= device_bytes).then_some(at * 512)
    }
}

impl fmt::Display for MdVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V0_90 => "0.90",
            Self::V1_0 => "1.0",
            Self::V1_1 => "1.1",
            Self::V1_2 => "1.2",
        })
    }
}

#[derive(Debug, Error)]
pub enum MdError {
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error("{device}: too small for an MD {version} superblock at byte {offset}: {available} of {needed} bytes")]
    Truncated {
        device: String,
        version: MdVersion,
        offset: u64,
        needed: u64,
        available: u64,
    },
    #[error("{device}: no MD {version} superblock at byte {offset} (magic {found:#010x})")]
    NoMagic {
        device: String,
        version: MdVersion,
        offset: u64,
        found: u32,
    },
    #[error("{device}: MD superblock at byte {offset} has version {major}.{minor}, which tessera does not know")]
    UnknownVersion {
        device: String,
        offset: u64,
        major: u32,
        minor: u32,
    },
    #[error(
        "{device}: MD {version} superblock has checksum {found:#010x}, expected {expected:#010x}"
    )]
    Checksum {
        device: String,
        version: MdVersion,
        found: u32,
        expected: u32,
    },
    #[error("{device}: MD {version} superblock claims {max_dev} devices (max_dev), more than the {limit} that fit")]
    MaxDev {
        device: String,
        version: MdVersion,
        max_dev: u32,
        limit: u32,
    },
    #[error("{device}: MD {version} superblock: {why}")]
    BadRole {
        device: String,
        version: MdVersion,
        why: String,
    },
    #[error("{device}: MD {version} superblock: the {what} (sector {start}, {sectors} sectors) runs past {limit_name} at sector {limit}")]
    OutsideDevice {
        device: String,
        version: MdVersion,
        what: &'static str,
        start: u64,
        sectors: u64,
        limit: u64,
        limit_name: &'static str,
    },
    #[error("{device}: MD {version} superblock: {why}")]
    Malformed {
        device: String,
        version: MdVersion,
        why: String,
    },
    #[error("{device}: MD bad-block log at byte {offset}: {why}")]
    BadBlocks {
        device: String,
        offset: u64,
        why: String,
    },
    #[error("{device}: MD bitmap at byte {offset}: {why}")]
    Bitmap {
        device: String,
        offset: u64,
        why: String,
    },
}

/// What a member does in its array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Holds slot n of the array's raid disks.
    Active(u32),
    Spare,
    Faulty,
    Journal,
}

/// Whether the array was shut down cleanly, from this member's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArrayState {
    Clean,
    /// Parity or mirrors may differ from this sector (of the member's data) on.
    Dirty {
        resync_from_sector: u64,
    },
}

/// Either kind of superblock, with the view common to both.
// Held one per member, briefly: the 0.90 variant's size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MdSuperblock {
    V0(Superblock0),
    V1(Superblock1),
}

impl MdSuperblock {
    /// The array's UUID; its hex in four groups of eight is mdadm's MD_UUID.
    pub fn array_uuid(&self) -> [u8; 16] {
        match self {
            Self::V0(s) => s.uuid_bytes(),
            Self::V1(s) => s.set_uuid,
        }
    }

    /// mdadm's spelling of the UUID: `xxxxxxxx:xxxxxxxx:xxxxxxxx:xxxxxxxx`.
    pub fn uuid_string(&self) -> String {
        format_uuid(&self.array_uuid())
    }

    /// The stored name ("homehost:name" as mdadm writes it); empty for 0.90.
    pub fn name(&self) -> String {
        match self {
            Self::V0(_) => String::new(),
            Self::V1(s) => {
                // mdadm stops at NUL or newline.
                let end = s.set_name.iter().position(|&c| c == 0 || c == b'\n');
                String::from_utf8_lossy(&s.set_name[..end.unwrap_or(32)]).into_owned()
            }
        }
    }

    pub fn level(&self) -> i32 {
        match self {
            Self::V0(s) => s.level,
            Self::V1(s) => s.level,
        }
    }

    pub fn layout(&self) -> u32 {
        match self {
            Self::V0(s) => s.layout,
            Self::V1(s) => s.layout,
        }
    }

    pub fn chunk_bytes(&self) -> u64 {
        match self {
            Self::V0(s) => u64::from(s.chunk_size),
            Self::V1(s) => u64::from(s.chunksize) * 512,
        }
    }

    pub fn raid_disks(&self) -> u32 {
        match self {
            Self::V0(s) => s.raid_disks,
            Self::V1(s) => s.raid_disks,
        }
    }

    pub fn role(&self) -> Role {
        match self {
            Self::V0(s) => s.role(),
            Self::V1(s) => s.role(),
        }
    }

    /// The role that this superblock's table gives `member` (another member's superblock
    /// of the same array): how the freshest member sees the others at assembly.
    pub fn role_of(&self, member: &MdSuperblock) -> Role {
        match (self, member) {
            (Self::V1(me), Self::V1(m)) => me.role_of_dev(m.dev_number),
            (Self::V0(me), Self::V0(m)) => me
                .disks
                .get(m.this_disk.number as usize)
                .map_or(Role::Spare, |d| me.role_of_disk(d)),
            _ => member.role(),
        }
    }

    pub fn events(&self) -> u64 {
        match self {
            Self::V0(s) => s.events,
            Self::V1(s) => s.events,
        }
    }

    pub fn state(&self) -> ArrayState {
        let from = match self {
            Self::V0(s) => s.resync_from(),
            Self::V1(s) => (s.resync_offset != super1::RESYNC_DONE).then_some(s.resync_offset),
        };
        from.map_or(ArrayState::Clean, |resync_from_sector| ArrayState::Dirty {
            resync_from_sector,
        })
    }

    /// How far a member being rebuilt got (sectors from its data offset), if it is one:
    /// 1.x records it; 0.90 has no place for it.
    pub fn recovery_offset(&self) -> Option<u64> {
        match self {
            Self::V1(s) if s.feature_map & super1::FEATURE_RECOVERY_OFFSET != 0 => {
                Some(s.recovery_offset)
            }
            _ => None,
        }
    }

    /// Where the array's data starts on the member.
    pub fn data_offset_sectors(&self) -> u64 {
        match self {
            Self::V0(_) => 0,
            Self::V1(s) => s.data_offset,
        }
    }

    /// Sectors of the member the array uses, from the data offset.
    /// The sectors each member gives the array: the used size, or for levels that record
    /// none (raid0), all the member's data area (`device_bytes` is the member's size).
    pub fn member_data_sectors(&self, device_bytes: u64) -> u64 {
        match self {
            Self::V1(s) if s.size > 0 => s.size,
            Self::V1(s) => s.data_size,
            Self::V0(s) if s.size > 0 => u64::from(s.size) * 2,
            // 0.90 keeps the last 64 KiB-aligned 64 KiB for itself.
            Self::V0(_) => ((device_bytes / 512) & !127).saturating_sub(128),
        }
    }

    pub fn used_size_sectors(&self) -> u64 {
        match self {
            Self::V0(s) => u64::from(s.size) * 2,
            Self::V1(s) => s.size,
        }
    }

    /// Byte offset of the bitmap superblock, if the array has an internal bitmap.
    /// `super_at` is the byte offset the superblock was read from.
    pub fn bitmap_offset_bytes(&self, super_at: u64) -> Option<u64> {
        match self {
            // mdadm puts a 0.90 bitmap right after the superblock.
            Self::V0(s) => (s.state & super0::STATE_BITMAP_PRESENT != 0)
                .then(|| super_at + super0::BYTES as u64),
            Self::V1(s) => {
                let has = s.feature_map & super1::FEATURE_BITMAP != 0
                    && s.feature_map & super1::FEATURE_PPL == 0;
                let at = s.super_offset as i64 + i64::from(s.bitmap_offset);
                (has && at >= 0).then(|| at as u64 * 512)
            }
        }
    }

    /// The UUID the bitmap must carry: mdadm copies its int[4] form, which for 0.90 is
    /// the set_uuid words in host order.
    fn bitmap_uuid(&self) -> [u8; 16] {
        match self {
            Self::V0(s) => {
                let mut u = [0u8; 16];
                for (i, w) in s.set_uuid.iter().enumerate() {
                    u[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
                }
                u
            }
            Self::V1(s) => s.set_uuid,
        }
    }
}

/// `xxxxxxxx:xxxxxxxx:xxxxxxxx:xxxxxxxx`, as mdadm prints UUIDs.
pub fn format_uuid(u: &[u8; 16]) -> String {
    let hex: Vec<String> = u
        .chunks(4)
        .map(|c| c.iter().map(|b| format!("{b:02x}")).collect())
        .collect();
    hex.join(":")
}

/// The name without mdadm's "homehost:" prefix.
pub fn name_without_homehost(name: &str) -> &str {
    name.split_once(':').map_or(name, |(_, n)| n)
}

/// The homehost part of a name, if it has one.
pub fn homehost(name: &str) -> Option<&str> {
    name.split_once(':').map(|(h, _)| h)
}

pub(crate) fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(raw)
}

/// Reads the `version` superblock of `dev`; [`MdError::NoMagic`] if there is none.
pub fn read(dev: &dyn BlockDevice, version: MdVersion) -> Result<MdSuperblock, MdError> {
    let size = dev.size_bytes();
    let Some(at) = version.offset_bytes(size) else {
        return Err(MdError::Truncated {
            device: dev.name().into(),
            version,
            offset: 0,
            needed: match version {
                MdVersion::V0_90 => 128 * 1024,
                MdVersion::V1_0 => 8192,
                MdVersion::V1_1 => 256,
                MdVersion::V1_2 => 4096 + 256,
            },
            available: size,
        });
    };
    // 4 KiB holds any valid superblock; the device may end sooner.
    let mut buf = vec![0u8; (size - at).min(4096) as usize];
    dev.read_at(&mut buf, at)?;
    Ok(match version {
        MdVersion::V0_90 => MdSuperblock::V0(Superblock0::decode(&buf, dev.name(), at, size)?),
        _ => MdSuperblock::V1(Superblock1::decode(&buf, version, dev.name(), at, size)?),
    })
}

/// Finds the superblock of `dev`, trying 1.2, 1.1, 1.0 and 0.90 in turn: the first valid
/// one wins. `Ok(None)` if no version's magic is there; if every superblock found is
/// damaged, the first one's error.
pub fn probe(dev: &dyn BlockDevice) -> Result<Option<(MdVersion, MdSuperblock)>, MdError> {
    let mut first_error = None;
    for version in MdVersion::PROBE_ORDER {
        if version.offset_bytes(dev.size_bytes()).is_none() {
            continue;
        }
        match read(dev, version) {
            Ok(sb) => return Ok(Some((version, sb))),
            Err(MdError::NoMagic { .. }) => {}
            Err(e @ MdError::Block(_)) => return Err(e),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(None), Err)
}

/// Writes `sb` as a `version` superblock (checksum recomputed), after the checks reading
/// would make, so that what is written reads back. Version 1 superblocks are padded with
/// zeroes to a whole sector, as mdadm writes them.
pub fn write(dev: &dyn BlockDevice, version: MdVersion, sb: &MdSuperblock) -> Result<(), MdError> {
    let size = dev.size_bytes();
    let mismatch = |why: &str| MdError::Malformed {
        device: dev.name().into(),
        version,
        why: why.into(),
    };
    let at = version
        .offset_bytes(size)
        .ok_or_else(|| mismatch("the device is too small to hold it"))?;
    let bytes = match (version, sb) {
        (MdVersion::V0_90, MdSuperblock::V0(s)) => {
            s.check(dev.name(), at, size)?;
            s.encode()
        }
        (MdVersion::V0_90, _) | (_, MdSuperblock::V0(_)) => {
            return Err(mismatch("the superblock given is of the other format"))
        }
        (_, MdSuperblock::V1(s)) => {
            if s.dev_roles.len() > super1::MAX_DEV as usize {
                return Err(MdError::MaxDev {
                    device: dev.name().into(),
                    version,
                    max_dev: s.dev_roles.len() as u32,
                    limit: super1::MAX_DEV,
                });
            }
            s.check(version, dev.name(), at, size)?;
            let mut b = s.encode();
            b.resize(b.len().next_multiple_of(512), 0);
            b
        }
    };
    dev.write_at(&bytes, at)?;
    Ok(())
}

/// Reads the bitmap superblock of an array whose member `dev` holds `sb` (read as
/// `version`), if the superblock says there is an internal bitmap. The bitmap must belong
/// to the same array.
pub fn read_bitmap(
    dev: &dyn BlockDevice,
    version: MdVersion,
    sb: &MdSuperblock,
) -> Result<Option<BitmapSuper>, MdError> {
    let size = dev.size_bytes();
    let Some(super_at) = version.offset_bytes(size) else {
        return Ok(None);
    };
    let Some(at) = sb.bitmap_offset_bytes(super_at) else {
        return Ok(None);
    };
    let mut buf = vec![0u8; size.saturating_sub(at).min(bitmap::BYTES as u64) as usize];
    dev.read_at(&mut buf, at)?;
    let bm = BitmapSuper::decode(&buf, dev.name(), at)?;
    if bm.uuid != sb.bitmap_uuid() {
        return Err(MdError::Bitmap {
            device: dev.name().into(),
            offset: at,
            why: format!(
                "it belongs to array {}, not {}",
                format_uuid(&bm.uuid),
                sb.uuid_string()
            ),
        });
    }
    Ok(Some(bm))
}

#[cfg(test)]
mod tests;
