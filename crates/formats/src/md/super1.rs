//! The version-1 superblock (`struct mdp_superblock_1`, linux include/uapi/linux/raid/md_p.h):
//! 256 little-endian bytes, then one le16 role per device number. Versions 1.0, 1.1 and 1.2
//! share it and differ only in where it lives (see [`MdVersion::offset_bytes`]).

use super::{le_u16, le_u32, le_u64, MdError, MdVersion, Role};

pub const HEADER_BYTES: usize = 256;
/// The largest role table the kernel accepts: header and table fit in 4 KiB.
pub const MAX_DEV: u32 = (4096 - HEADER_BYTES as u32) / 2;
pub const ROLE_SPARE: u16 = 0xffff;
pub const ROLE_FAULTY: u16 = 0xfffe;
pub const ROLE_JOURNAL: u16 = 0xfffd;
/// Roles from here up are special values, never slots.
pub const ROLE_MAX: u16 = 0xff00;
/// resync_offset of an array known to be in sync ("MaxSector").
pub const RESYNC_DONE: u64 = u64::MAX;

pub const FEATURE_BITMAP: u32 = 1;
pub const FEATURE_RECOVERY_OFFSET: u32 = 2;
pub const FEATURE_RESHAPE_ACTIVE: u32 = 4;
pub const FEATURE_BAD_BLOCKS: u32 = 8;
pub const FEATURE_REPLACEMENT: u32 = 16;
pub const FEATURE_RESHAPE_BACKWARDS: u32 = 32;
pub const FEATURE_NEW_OFFSET: u32 = 64;
pub const FEATURE_JOURNAL: u32 = 512;
pub const FEATURE_PPL: u32 = 1024;
/// Every feature bit the kernel (6.x) knows; it refuses superblocks with others.
pub const FEATURE_ALL: u32 = 0x1fff;

/// Every field of the on-disk superblock except the checksum, which [`Superblock1::encode`]
/// computes. Sizes and offsets are in 512-byte sectors, as on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock1 {
    pub feature_map: u32,
    pub set_uuid: [u8; 16],
    /// NUL-padded; mdadm stores "homehost:name".
    pub set_name: [u8; 32],
    /// Low 40 bits seconds, high 24 microseconds.
    pub ctime: u64,
    pub level: i32,
    pub layout: u32,
    /// Sectors of each member the array uses.
    pub size: u64,
    pub chunksize: u32,
    pub raid_disks: u32,
    /// Signed, from the superblock; meaningful with [`FEATURE_BITMAP`] (or, for PPL, two le16).
    pub bitmap_offset: i32,
    pub new_level: i32,
    pub reshape_position: u64,
    pub delta_disks: i32,
    pub new_layout: u32,
    pub new_chunk: u32,
    pub new_offset: i32,
    pub data_offset: u64,
    pub data_size: u64,
    pub super_offset: u64,
    /// Or the journal tail on a journal device.
    pub recovery_offset: u64,
    pub dev_number: u32,
    pub cnt_corrected_read: u32,
    pub device_uuid: [u8; 16],
    pub devflags: u8,
    pub bblog_shift: u8,
    pub bblog_size: u16,
    pub bblog_offset: i32,
    pub utime: u64,
    pub events: u64,
    pub resync_offset: u64,
    /// Indexed by device number; its length is max_dev.
    pub dev_roles: Vec<u16>,
}

/// The kernel's calc_sb_1_csum: le32 words summed into 64 bits (a trailing le16 too), with
/// the checksum field counted as zero, folded once to 32 bits.
pub fn checksum(b: &[u8]) -> u32 {
    let mut sum: u64 = 0;
    let mut words = b.chunks_exact(4);
    for (i, w) in words.by_ref().enumerate() {
        if i != 216 / 4 {
            sum += u64::from(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
        }
    }
    if let [a, b, ..] = *words.remainder() {
        sum += u64::from(u16::from_le_bytes([a, b]));
    }
    ((sum & 0xffff_ffff) + (sum >> 32)) as u32
}

impl Superblock1 {
    /// Bytes the superblock occupies: the header and max_dev roles.
    pub fn encoded_len(&self) -> usize {
        HEADER_BYTES + 2 * self.dev_roles.len()
    }

    /// This device's entry in the role table.
    pub fn role(&self) -> Role {
        self.role_of_dev(self.dev_number)
    }

    /// The role table's entry for device number `dev_number`.
    pub fn role_of_dev(&self, dev_number: u32) -> Role {
        match self.dev_roles.get(dev_number as usize) {
            None | Some(&ROLE_SPARE) => Role::Spare,
            Some(&ROLE_FAULTY) => Role::Faulty,
            Some(&ROLE_JOURNAL) => Role::Journal,
            Some(&slot) => Role::Active(u32::from(slot)),
        }
    }

    /// The superblock's bytes (header and role table), checksum included.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.encoded_len()];
        let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
        put(0, &super::MAGIC.to_le_bytes());
        put(4, &1u32.to_le_bytes());
        put(8, &self.feature_map.to_le_bytes());
        put(16, &self.set_uuid);
        put(32, &self.set_name);
        put(64, &self.ctime.to_le_bytes());
        put(72, &self.level.to_le_bytes());
        put(76, &self.layout.to_le_bytes());
        put(80, &self.size.to_le_bytes());
        put(88, &self.chunksize.to_le_bytes());
        put(92, &self.raid_disks.to_le_bytes());
        put(96, &self.bitmap_offset.to_le_bytes());
        put(100, &self.new_level.to_le_bytes());
        put(104, &self.reshape_position.to_le_bytes());
        put(112, &self.delta_disks.to_le_bytes());
        put(116, &self.new_layout.to_le_bytes());
        put(120, &self.new_chunk.to_le_bytes());
        put(124, &self.new_offset.to_le_bytes());
        put(128, &self.data_offset.to_le_bytes());
        put(136, &self.data_size.to_le_bytes());
        put(144, &self.super_offset.to_le_bytes());
        put(152, &self.recovery_offset.to_le_bytes());
        put(160, &self.dev_number.to_le_bytes());
        put(164, &self.cnt_corrected_read.to_le_bytes());
        put(168, &self.device_uuid);
        put(184, &[self.devflags, self.bblog_shift]);
        put(186, &self.bblog_size.to_le_bytes());
        put(188, &self.bblog_offset.to_le_bytes());
        put(192, &self.utime.to_le_bytes());
        put(200, &self.events.to_le_bytes());
        put(208, &self.resync_offset.to_le_bytes());
        put(220, &(self.dev_roles.len() as u32).to_le_bytes());
        for (i, r) in self.dev_roles.iter().enumerate() {
            put(HEADER_BYTES + 2 * i, &r.to_le_bytes());
        }
        let sum = checksum(&b);
        b[216..220].copy_from_slice(&sum.to_le_bytes());
        b
    }

    /// Reads a superblock from `b` (at least its header; the bytes found at its place, up
    /// to 4 KiB), found at byte `at` of `device` of `device_bytes` bytes as `version`.
    /// Checks what the kernel's super_1_load checks, and that the areas fit the device.
    pub fn decode(
        b: &[u8],
        version: MdVersion,
        device: &str,
        at: u64,
        device_bytes: u64,
    ) -> Result<Superblock1, MdError> {
        let dev = || device.to_string();
        if b.len() < HEADER_BYTES {
            return Err(MdError::Truncated {
                device: dev(),
                version,
                offset: at,
                needed: HEADER_BYTES as u64,
                available: b.len() as u64,
            });
        }
        let magic = le_u32(b, 0);
        if magic != super::MAGIC {
            return Err(MdError::NoMagic {
                device: dev(),
                version,
                offset: at,
                found: magic,
            });
        }
        let major = le_u32(b, 4);
        if major != 1 {
            return Err(MdError::UnknownVersion {
                device: dev(),
                offset: at,
                major,
                minor: 0,
            });
        }
        // Bounded before the role table is allocated.
        let max_dev = le_u32(b, 220);
        if max_dev > MAX_DEV {
            return Err(MdError::MaxDev {
                device: dev(),
                version,
                max_dev,
                limit: MAX_DEV,
            });
        }
        let len = HEADER_BYTES + 2 * max_dev as usize;
        if b.len() < len {
            return Err(MdError::Truncated {
                device: dev(),
                version,
                offset: at,
                needed: len as u64,
                available: b.len() as u64,
            });
        }
        let b = &b[..len];
        let found = le_u32(b, 216);
        let expected = checksum(b);
        if found != expected {
            return Err(MdError::Checksum {
                device: dev(),
                version,
                found,
                expected,
            });
        }
        let malformed = |why: String| MdError::Malformed {
            device: dev(),
            version,
            why,
        };
        // Non-zero padding may be a feature this code does not know: the kernel refuses it too.
        if le_u32(b, 12) != 0 || b[224..256].iter().any(|&x| x != 0) {
            return Err(malformed("reserved bytes are not zero".into()));
        }
        let arr16 = |at: usize| -> [u8; 16] {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[at..at + 16]);
            a
        };
        let mut set_name = [0u8; 32];
        set_name.copy_from_slice(&b[32..64]);
        let i32_at = |at: usize| le_u32(b, at) as i32;
        let sb = Superblock1 {
            feature_map: le_u32(b, 8),
            set_uuid: arr16(16),
            set_name,
            ctime: le_u64(b, 64),
            level: i32_at(72),
            layout: le_u32(b, 76),
            size: le_u64(b, 80),
            chunksize: le_u32(b, 88),
            raid_disks: le_u32(b, 92),
            bitmap_offset: i32_at(96),
            new_level: i32_at(100),
            reshape_position: le_u64(b, 104),
            delta_disks: i32_at(112),
            new_layout: le_u32(b, 116),
            new_chunk: le_u32(b, 120),
            new_offset: i32_at(124),
            data_offset: le_u64(b, 128),
            data_size: le_u64(b, 136),
            super_offset: le_u64(b, 144),
            recovery_offset: le_u64(b, 152),
            dev_number: le_u32(b, 160),
            cnt_corrected_read: le_u32(b, 164),
            device_uuid: arr16(168),
            devflags: b[184],
            bblog_shift: b[185],
            bblog_size: le_u16(b, 186),
            bblog_offset: i32_at(188),
            utime: le_u64(b, 192),
            events: le_u64(b, 200),
            resync_offset: le_u64(b, 208),
            dev_roles: (0..max_dev as usize)
                .map(|i| le_u16(b, HEADER_BYTES + 2 * i))
                .collect(),
        };
        sb.check(version, device, at, device_bytes)?;
        Ok(sb)
    }

    /// The checks of [`Superblock1::decode`] past checksum and padding, on the fields.
    pub fn check(
        &self,
        version: MdVersion,
        device: &str,
        at: u64,
        device_bytes: u64,
    ) -> Result<(), MdError> {
        let malformed = |why: String| MdError::Malformed {
            device: device.to_string(),
            version,
            why,
        };
        let unknown = self.feature_map & !FEATURE_ALL;
        if unknown != 0 {
            return Err(malformed(format!(
                "unknown feature bits {unknown:#x} in feature map {:#x}",
                self.feature_map
            )));
        }
        if self.super_offset.checked_mul(512) != Some(at) {
            return Err(malformed(format!(
                "says it is at sector {}, but was found at sector {}",
                self.super_offset,
                at / 512
            )));
        }
        if self.raid_disks > MAX_DEV {
            return Err(malformed(format!(
                "{} raid disks is more than MD allows ({MAX_DEV})",
                self.raid_disks
            )));
        }
        if self.dev_number as usize >= self.dev_roles.len() {
            return Err(MdError::BadRole {
                device: device.to_string(),
                version,
                why: format!(
                    "device number {} has no entry in a role table of {}",
                    self.dev_number,
                    self.dev_roles.len()
                ),
            });
        }
        // During a reshape that adds disks, roles up to the new count are in use.
        let slots = i64::from(self.raid_disks) + i64::from(self.delta_disks.max(0));
        let bad = |r: u16| {
            if r < ROLE_MAX {
                i64::from(r) >= slots
            } else {
                r < ROLE_JOURNAL
            }
        };
        if let Some((i, r)) = self.dev_roles.iter().enumerate().find(|&(_, &r)| bad(r)) {
            return Err(MdError::BadRole {
                device: device.to_string(),
                version,
                why: format!(
                    "device {i} has role {r:#06x}, but the array has {} raid disks",
                    self.raid_disks
                ),
            });
        }
        let device_sectors = device_bytes / 512;
        let sb_sectors = (self.encoded_len() as u64).div_ceil(512);
        let data_end = self.data_offset.checked_add(self.data_size);
        let (limit, what) = if version == MdVersion::V1_0 {
            (self.super_offset, "the superblock")
        } else {
            (device_sectors, "the end of the device")
        };
        match data_end {
            Some(end) if end <= limit => {}
            _ => {
                return Err(MdError::OutsideDevice {
                    device: device.to_string(),
                    version,
                    what: "data area",
                    start: self.data_offset,
                    sectors: self.data_size,
                    limit,
                    limit_name: what,
                })
            }
        }
        if version != MdVersion::V1_0 && self.data_offset < self.super_offset + sb_sectors {
            return Err(malformed(format!(
                "data at sector {} overlaps the superblock at sector {}",
                self.data_offset, self.super_offset
            )));
        }
        if self.size > self.data_size {
            return Err(MdError::OutsideDevice {
                device: device.to_string(),
                version,
                what: "array's part of the member",
                start: self.data_offset,
                sectors: self.size,
                limit: self.data_offset + self.data_size,
                limit_name: "the data area",
            });
        }
        // md refuses a bad-block log it cannot load: no place, or more than a page.
        if self.feature_map & FEATURE_BAD_BLOCKS != 0 {
            let start = self.super_offset as i64 + i64::from(self.bblog_offset);
            let end = start + i64::from(self.bblog_size);
            if self.bblog_offset == 0
                || self.bblog_size > super::badblocks::LOG_SECTORS
                || start < 0
                || end as u64 > device_sectors
            {
                return Err(malformed(format!(
                    "the bad-block log ({} sectors at {} sectors from the superblock) is not \
                     one md can load",
                    self.bblog_size, self.bblog_offset
                )));
            }
        }
        if self.feature_map & FEATURE_BITMAP != 0 && self.feature_map & FEATURE_PPL == 0 {
            let start = self.super_offset as i64 + i64::from(self.bitmap_offset);
            if start < 0 || start as u64 + 1 > device_sectors {
                return Err(malformed(format!(
                    "the bitmap at {} sectors from the superblock is outside the device",
                    self.bitmap_offset
                )));
            }
        }
        Ok(())
    }
}
