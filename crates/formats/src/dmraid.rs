//! dm-raid's superblock: the record the kernel's `raid` target keeps at sector 0 of each
//! metadata device (lvm2's `LV_rmeta_N` sub-LVs). Little endian, at most one logical block;
//! the write-intent bitmap follows at byte 4096 of the same device.
//!
//! | byte | field |
//! |---|---|
//! | 0 | magic `0x64526D44` ("DmRd") |
//! | 4 | compat_features (bit 0: the 1.9.0 extension below is present) |
//! | 8 | num_devices, 12 array_position (this device's slot) |
//! | 16 | events, 24 failed_devices (bits 0-63 of the failed-device bitmap) |
//! | 32 | disk_recovery_offset, 40 array_resync_offset (sectors) |
//! | 48 | level, 52 layout, 56 stripe_sectors (md's numbers) |
//! | 60 | 1.9.0: flags (1 reshape active, 2 reshape backwards), 64 reshape_position |
//! | 72 | new_level, 76 new_layout, 80 new_stripe_sectors, 84 delta_disks (signed) |
//! | 88 | array_sectors, 96 data_offset, 104 new_data_offset, 112 sectors (per device) |
//! | 120 | bits 64-255 of the failed-device bitmap (3 x u64), 144 incompat_features |
//!
//! Everything after byte 148 up to the end of the block is zero when the kernel writes it.

use thiserror::Error;

use tessera_block::{BlockDevice, BlockError};

/// "DmRd" as a little-endian u32.
pub const MAGIC: u32 = 0x6452_6D44;
/// compat_features bit: the fields from `flags` on are present.
pub const FEATURE_V190: u32 = 1;
/// flags bits of the 1.9.0 extension.
pub const FLAG_RESHAPE_ACTIVE: u32 = 1;
pub const FLAG_RESHAPE_BACKWARDS: u32 = 2;
/// Bytes of the superblock before the 1.9.0 extension.
pub const BASE_BYTES: usize = 60;
/// Bytes of the whole superblock with the extension.
pub const BYTES: usize = 148;
/// The most devices a raid set of dm-raid has (and bits of its failed-device bitmap in use).
pub const MAX_DEVICES: u32 = 253;
/// Where the write-intent bitmap starts on the metadata device.
pub const BITMAP_OFFSET_BYTES: u64 = 4096;

#[derive(Debug, Error)]
pub enum DmRaidError {
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error("{device}: too small for a dm-raid superblock: {available} of {BYTES} bytes")]
    Truncated { device: String, available: u64 },
    #[error("{device}: no dm-raid superblock (magic {found:#010x}, expected {MAGIC:#010x})")]
    NoMagic { device: String, found: u32 },
    #[error("{device}: dm-raid superblock: {why}; tessera does not know this version")]
    Unsupported { device: String, why: String },
    #[error("{device}: dm-raid superblock: {why}")]
    Malformed { device: String, why: String },
}

impl DmRaidError {
    /// True for a device that holds no superblock at all (a metadata device never written,
    /// as the kernel finds one before a raid set's first activation).
    pub fn is_blank(&self) -> bool {
        matches!(self, DmRaidError::NoMagic { found: 0, .. })
    }
}

/// One device's dm-raid superblock.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DmRaidSuperblock {
    pub compat_features: u32,
    pub num_devices: u32,
    /// The slot of the device this superblock is on.
    pub array_position: u32,
    /// Counts the superblock's updates; the highest among a set's devices is the newest.
    pub events: u64,
    /// Bit i set: device i failed. Words 1-3 only exist with [`FEATURE_V190`].
    pub failed_devices: [u64; 4],
    pub disk_recovery_offset: u64,
    pub array_resync_offset: u64,
    pub level: u32,
    pub layout: u32,
    pub stripe_sectors: u32,
    /// The 1.9.0 extension, all zero without [`FEATURE_V190`].
    pub flags: u32,
    pub reshape_position: u64,
    pub new_level: u32,
    pub new_layout: u32,
    pub new_stripe_sectors: u32,
    pub delta_disks: i32,
    pub array_sectors: u64,
    /// Where data starts on each data device, in sectors.
    pub data_offset: u64,
    pub new_data_offset: u64,
    /// Sectors of each data device the set uses.
    pub sectors: u64,
    pub incompat_features: u32,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl DmRaidSuperblock {
    pub fn has_v190(&self) -> bool {
        self.compat_features & FEATURE_V190 != 0
    }

    pub fn is_failed(&self, slot: usize) -> bool {
        slot < 256 && self.failed_devices[slot / 64] & (1 << (slot % 64)) != 0
    }

    pub fn set_failed(&mut self, slot: usize, failed: bool) {
        if slot < 256 {
            let bit = 1u64 << (slot % 64);
            if failed {
                self.failed_devices[slot / 64] |= bit;
            } else {
                self.failed_devices[slot / 64] &= !bit;
            }
        }
    }

    /// The slots the bitmap marks failed, among the set's devices.
    pub fn failed_slots(&self) -> Vec<usize> {
        (0..self.num_devices as usize)
            .filter(|&s| self.is_failed(s))
            .collect()
    }

    pub fn is_reshaping(&self) -> bool {
        self.flags & FLAG_RESHAPE_ACTIVE != 0
    }

    /// Decodes a superblock from the start of a metadata device's first block; `device`
    /// names it in errors.
    pub fn decode(b: &[u8], device: &str) -> Result<DmRaidSuperblock, DmRaidError> {
        if b.len() < BYTES {
            return Err(DmRaidError::Truncated {
                device: device.to_string(),
                available: b.len() as u64,
            });
        }
        let magic = u32_at(b, 0);
        if magic != MAGIC {
            return Err(DmRaidError::NoMagic {
                device: device.to_string(),
                found: magic,
            });
        }
        let malformed = |why: String| DmRaidError::Malformed {
            device: device.to_string(),
            why,
        };
        let compat_features = u32_at(b, 4);
        if compat_features & !FEATURE_V190 != 0 {
            return Err(DmRaidError::Unsupported {
                device: device.to_string(),
                why: format!("compatible feature flags {compat_features:#x}"),
            });
        }
        let mut sb = DmRaidSuperblock {
            compat_features,
            num_devices: u32_at(b, 8),
            array_position: u32_at(b, 12),
            events: u64_at(b, 16),
            failed_devices: [u64_at(b, 24), 0, 0, 0],
            disk_recovery_offset: u64_at(b, 32),
            array_resync_offset: u64_at(b, 40),
            level: u32_at(b, 48),
            layout: u32_at(b, 52),
            stripe_sectors: u32_at(b, 56),
            ..Default::default()
        };
        if sb.has_v190() {
            sb.flags = u32_at(b, 60);
            sb.reshape_position = u64_at(b, 64);
            sb.new_level = u32_at(b, 72);
            sb.new_layout = u32_at(b, 76);
            sb.new_stripe_sectors = u32_at(b, 80);
            sb.delta_disks = u32_at(b, 84) as i32;
            sb.array_sectors = u64_at(b, 88);
            sb.data_offset = u64_at(b, 96);
            sb.new_data_offset = u64_at(b, 104);
            sb.sectors = u64_at(b, 112);
            for i in 0..3 {
                sb.failed_devices[i + 1] = u64_at(b, 120 + 8 * i);
            }
            sb.incompat_features = u32_at(b, 144);
            if sb.incompat_features != 0 {
                return Err(DmRaidError::Unsupported {
                    device: device.to_string(),
                    why: format!("incompatible feature flags {:#x}", sb.incompat_features),
                });
            }
        }
        if sb.num_devices == 0 || sb.num_devices > MAX_DEVICES {
            return Err(malformed(format!(
                "{} devices (a raid set has 1 to {MAX_DEVICES})",
                sb.num_devices
            )));
        }
        // A reshape that adds devices puts new ones past the old count.
        let slots = i64::from(sb.num_devices) + i64::from(sb.delta_disks.max(0));
        if i64::from(sb.array_position) >= slots {
            return Err(malformed(format!(
                "array position {} in a set of {} devices",
                sb.array_position, sb.num_devices
            )));
        }
        if !matches!(sb.level, 0 | 1 | 4 | 5 | 6 | 10) {
            return Err(malformed(format!("raid level {}", sb.level)));
        }
        Ok(sb)
    }

    /// The superblock's bytes ([`BYTES`] long), as the kernel writes them: the extension
    /// only with [`FEATURE_V190`].
    pub fn encode(&self) -> [u8; BYTES] {
        let mut b = [0u8; BYTES];
        let put32 = |b: &mut [u8; BYTES], at: usize, v: u32| {
            b[at..at + 4].copy_from_slice(&v.to_le_bytes())
        };
        put32(&mut b, 0, MAGIC);
        put32(&mut b, 4, self.compat_features);
        put32(&mut b, 8, self.num_devices);
        put32(&mut b, 12, self.array_position);
        put32(&mut b, 48, self.level);
        put32(&mut b, 52, self.layout);
        put32(&mut b, 56, self.stripe_sectors);
        let put64 = |b: &mut [u8; BYTES], at: usize, v: u64| {
            b[at..at + 8].copy_from_slice(&v.to_le_bytes())
        };
        put64(&mut b, 16, self.events);
        put64(&mut b, 24, self.failed_devices[0]);
        put64(&mut b, 32, self.disk_recovery_offset);
        put64(&mut b, 40, self.array_resync_offset);
        if self.has_v190() {
            put32(&mut b, 60, self.flags);
            put64(&mut b, 64, self.reshape_position);
            put32(&mut b, 72, self.new_level);
            put32(&mut b, 76, self.new_layout);
            put32(&mut b, 80, self.new_stripe_sectors);
            put32(&mut b, 84, self.delta_disks as u32);
            put64(&mut b, 88, self.array_sectors);
            put64(&mut b, 96, self.data_offset);
            put64(&mut b, 104, self.new_data_offset);
            put64(&mut b, 112, self.sectors);
            for i in 0..3 {
                put64(&mut b, 120 + 8 * i, self.failed_devices[i + 1]);
            }
            put32(&mut b, 144, self.incompat_features);
        }
        b
    }
}

/// Reads the superblock at the start of metadata device `dev`.
pub fn read(dev: &dyn BlockDevice) -> Result<DmRaidSuperblock, DmRaidError> {
    let len = dev.size_bytes().min(512) as usize;
    let mut block = vec![0u8; len];
    dev.read_at(&mut block, 0)?;
    DmRaidSuperblock::decode(&block, dev.name())
}

/// Writes `sb` to the start of metadata device `dev`, the rest of its first 512 bytes zero.
pub fn write(dev: &dyn BlockDevice, sb: &DmRaidSuperblock) -> Result<(), DmRaidError> {
    let mut block = [0u8; 512];
    block[..BYTES].copy_from_slice(&sb.encode());
    dev.write_at(&block, 0)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_block::MemoryDevice;

    /// A raid5_ls set of 3 as the kernel (dm-raid 1.9+) records it: device 1's superblock.
    fn sample() -> DmRaidSuperblock {
        DmRaidSuperblock {
            compat_features: FEATURE_V190,
            num_devices: 3,
            array_position: 1,
            events: 23,
            failed_devices: [0; 4],
            disk_recovery_offset: u64::MAX,
            array_resync_offset: u64::MAX,
            level: 5,
            layout: 2,
            stripe_sectors: 128,
            flags: 0,
            reshape_position: u64::MAX,
            new_level: 5,
            new_layout: 2,
            new_stripe_sectors: 128,
            delta_disks: 0,
            array_sectors: 12288,
            data_offset: 0,
            new_data_offset: 0,
            sectors: 6144,
            incompat_features: 0,
        }
    }

    #[test]
    fn round_trips_through_bytes_and_a_device() {
        let mut sb = sample();
        sb.set_failed(2, true);
        sb.set_failed(130, true);
        sb.delta_disks = -1;
        sb.data_offset = 2048;
        let bytes = sb.encode();
        assert_eq!(&bytes[..4], b"DmRd");
        assert_eq!(u64_at(&bytes, 24), 1 << 2);
        assert_eq!(
            u64_at(&bytes, 128),
            1 << 2,
            "bit 130 in the second extension word"
        );
        assert_eq!(DmRaidSuperblock::decode(&bytes, "m").unwrap(), sb);
        assert_eq!(sb.failed_slots(), vec![2]);
        assert!(sb.is_failed(130) && !sb.is_failed(1) && !sb.is_failed(300));

        let dev = MemoryDevice::new("lv_rmeta_1", 1 << 20);
        write(&dev, &sb).unwrap();
        assert_eq!(read(&dev).unwrap(), sb);
        // And the bytes on the device re-encode to themselves.
        let mut block = [0u8; BYTES];
        dev.read_at(&mut block, 0).unwrap();
        assert_eq!(
            DmRaidSuperblock::decode(&block, "m").unwrap().encode(),
            block
        );
    }

    #[test]
    fn a_superblock_before_1_9_has_no_extension() {
        let mut sb = sample();
        sb.compat_features = 0;
        let mut bytes = sb.encode().to_vec();
        assert!(bytes[BASE_BYTES..].iter().all(|&b| b == 0));
        // What follows the pristine fields is ignored without the feature flag.
        bytes[96] = 9;
        let back = DmRaidSuperblock::decode(&bytes, "m").unwrap();
        assert_eq!(back.data_offset, 0);
        assert_eq!(back.sectors, 0);
        assert_eq!(back.events, 23);
    }

    #[test]
    fn corrupted_superblocks_are_refused_naming_the_device() {
        let good = sample().encode();
        type Damage = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(Damage, &str)> = vec![
            (Box::new(|b| b.truncate(100)), "too small"),
            (Box::new(|b| b[0] ^= 1), "no dm-raid superblock"),
            (Box::new(|b| b[4] = 2), "compatible feature flags 0x2"),
            (Box::new(|b| b[144] = 1), "incompatible feature flags"),
            (Box::new(|b| b[8..12].fill(0)), "0 devices"),
            (
                Box::new(|b| b[8..12].copy_from_slice(&300u32.to_le_bytes())),
                "300 devices",
            ),
            (Box::new(|b| b[12] = 3), "array position 3"),
            (Box::new(|b| b[48] = 7), "raid level 7"),
        ];
        for (damage, expected) in cases {
            let mut bytes = good.to_vec();
            damage(&mut bytes);
            let err = DmRaidSuperblock::decode(&bytes, "/dev/vg/lv_rmeta_1").unwrap_err();
            let text = err.to_string();
            assert!(text.contains(expected), "{text}: expected {expected}");
            assert!(text.starts_with("/dev/vg/lv_rmeta_1: "), "{text}");
        }
        let zero = DmRaidSuperblock::decode(&[0u8; 512], "m").unwrap_err();
        assert!(zero.is_blank());
        let mut junk = good;
        junk[0] = 0x55;
        assert!(!DmRaidSuperblock::decode(&junk, "m").unwrap_err().is_blank());
        // A device too small for the block at all.
        let tiny = MemoryDevice::new("tiny", 0);
        assert!(matches!(read(&tiny), Err(DmRaidError::Truncated { .. })));
    }
}
