//! The version-0.90 superblock (`mdp_super_t`, linux include/uapi/linux/raid/md_p.h): 4096
//! bytes of u32 words in the byte order of the host that wrote it, in the last 64 KiB-aligned
//! 64 KiB of the device. Word groups: generic constant (0..32), generic state (32..64),
//! personality (64..128), 27 disk descriptors of 32 words (128..992), this disk (992..1024).
//! Reserved words are not kept: they are written as zero, as mdadm and the kernel do.

use super::{MdError, MdVersion, Role, MAGIC};

pub const BYTES: usize = 4096;
/// Descriptor slots (MD_SB_DISKS).
pub const DISKS: usize = 27;
/// `state` bits of the superblock.
pub const STATE_CLEAN: u32 = 1 << 0;
pub const STATE_ERRORS: u32 = 1 << 1;
pub const STATE_BITMAP_PRESENT: u32 = 1 << 8;
/// `state` bits of a disk descriptor.
pub const DISK_FAULTY: u32 = 1 << 0;
pub const DISK_ACTIVE: u32 = 1 << 1;
pub const DISK_SYNC: u32 = 1 << 2;
pub const DISK_REMOVED: u32 = 1 << 3;

const DISKS_AT: usize = 128 * 4;
const THIS_DISK_AT: usize = 992 * 4;
const SB_CSUM_AT: usize = 38 * 4;

/// A disk descriptor (`mdp_disk_t`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Disk0 {
    pub number: u32,
    pub major: u32,
    pub minor: u32,
    pub raid_disk: u32,
    pub state: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock0 {
    pub minor_version: u32,
    pub patch_version: u32,
    pub gvalid_words: u32,
    /// set_uuid0..3; mdadm prints them as four %08x words.
    pub set_uuid: [u32; 4],
    pub ctime: u32,
    pub level: i32,
    /// KiB of each member the array uses.
    pub size: u32,
    pub nr_disks: u32,
    pub raid_disks: u32,
    pub md_minor: u32,
    pub not_persistent: u32,
    pub utime: u32,
    pub state: u32,
    pub active_disks: u32,
    pub working_disks: u32,
    pub failed_disks: u32,
    pub spare_disks: u32,
    pub events: u64,
    pub cp_events: u64,
    pub recovery_cp: u32,
    /// Reshape fields, meaningful with minor version 91.
    pub reshape_position: u64,
    pub new_level: i32,
    pub delta_disks: i32,
    pub new_layout: u32,
    pub new_chunk: u32,
    pub layout: u32,
    /// Bytes.
    pub chunk_size: u32,
    pub root_pv: u32,
    pub root_block: u32,
    pub disks: [Disk0; DISKS],
    pub this_disk: Disk0,
}

fn word(b: &[u8], i: usize) -> u32 {
    let at = 4 * i;
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// (hi, lo) word indices of the 64-bit counters: the struct orders them by host endianness.
const fn hi_lo(lo_first: usize) -> (usize, usize) {
    if cfg!(target_endian = "big") {
        (lo_first, lo_first + 1)
    } else {
        (lo_first + 1, lo_first)
    }
}
const EVENTS: (usize, usize) = hi_lo(32 + 7);
const CP_EVENTS: (usize, usize) = hi_lo(32 + 9);

/// The kernel's calc_sb_csum: u32 words summed into 64 bits with the checksum counted as
/// zero, then `(sum & 0xffffffff) + (sum >> 32)` kept to 32 bits.
pub fn checksum(b: &[u8]) -> u32 {
    let sum: u64 = (0..BYTES / 4)
        .filter(|&i| i != SB_CSUM_AT / 4)
        .map(|i| u64::from(word(b, i)))
        .sum();
    ((sum & 0xffff_ffff) + (sum >> 32)) as u32
}

/// md_csum_fold: the kernel compares checksums folded to 16 bits (old Alpha kernels wrote
/// them folded).
fn fold(c: u32) -> u32 {
    let c = (c & 0xffff) + (c >> 16);
    (c & 0xffff) + (c >> 16)
}

fn decode_disk(b: &[u8], at: usize) -> Disk0 {
    let w = |i| word(b, at / 4 + i);
    Disk0 {
        number: w(0),
        major: w(1),
        minor: w(2),
        raid_disk: w(3),
        state: w(4),
    }
}

impl Superblock0 {
    /// The array UUID as bytes, so that their hex is what mdadm prints.
    pub fn uuid_bytes(&self) -> [u8; 16] {
        let mut u = [0u8; 16];
        for (i, w) in self.set_uuid.iter().enumerate() {
            u[4 * i..4 * i + 4].copy_from_slice(&w.to_be_bytes());
        }
        u
    }

    /// This device's role, from its own descriptor as the kernel reads it.
    pub fn role(&self) -> Role {
        self.role_of_disk(&self.this_disk)
    }

    /// The role a disk entry (this one's or one of the table's) describes.
    pub fn role_of_disk(&self, d: &Disk0) -> Role {
        if d.state & DISK_FAULTY != 0 {
            Role::Faulty
        } else if d.state & DISK_SYNC != 0 && d.raid_disk < self.raid_disks {
            Role::Active(d.raid_disk)
        } else {
            Role::Spare
        }
    }

    /// The sector resync must start from, or None when the array is clean (as the
    /// kernel's super_90_validate decides).
    pub fn resync_from(&self) -> Option<u64> {
        if self.state & STATE_CLEAN != 0 {
            None
        } else if self.events == self.cp_events {
            Some(u64::from(self.recovery_cp))
        } else {
            Some(0)
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; BYTES];
        let mut put = |i: usize, v: u32| b[4 * i..4 * i + 4].copy_from_slice(&v.to_ne_bytes());
        let generic = [
            MAGIC,
            0,
            self.minor_version,
            self.patch_version,
            self.gvalid_words,
            self.set_uuid[0],
            self.ctime,
            self.level as u32,
            self.size,
            self.nr_disks,
            self.raid_disks,
            self.md_minor,
            self.not_persistent,
            self.set_uuid[1],
            self.set_uuid[2],
            self.set_uuid[3],
        ];
        for (i, &v) in generic.iter().enumerate() {
            put(i, v);
        }
        let state = [
            self.utime,
            self.state,
            self.active_disks,
            self.working_disks,
            self.failed_disks,
            self.spare_disks,
        ];
        for (i, &v) in state.iter().enumerate() {
            put(32 + i, v);
        }
        put(EVENTS.0, (self.events >> 32) as u32);
        put(EVENTS.1, self.events as u32);
        put(CP_EVENTS.0, (self.cp_events >> 32) as u32);
        put(CP_EVENTS.1, self.cp_events as u32);
        put(32 + 11, self.recovery_cp);
        let mut put64 = |i: usize, v: u64| b[4 * i..4 * i + 8].copy_from_slice(&v.to_ne_bytes());
        put64(32 + 12, self.reshape_position);
        let mut put = |i: usize, v: u32| b[4 * i..4 * i + 4].copy_from_slice(&v.to_ne_bytes());
        put(32 + 14, self.new_level as u32);
        put(32 + 15, self.delta_disks as u32);
        put(32 + 16, self.new_layout);
        put(32 + 17, self.new_chunk);
        put(64, self.layout);
        put(65, self.chunk_size);
        put(66, self.root_pv);
        put(67, self.root_block);
        let disks = self
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| (DISKS_AT / 4 + 32 * i, d));
        for (w, d) in disks.chain(std::iter::once((THIS_DISK_AT / 4, &self.this_disk))) {
            for (j, v) in [d.number, d.major, d.minor, d.raid_disk, d.state]
                .into_iter()
                .enumerate()
            {
                put(w + j, v);
            }
        }
        let sum = checksum(&b);
        b[SB_CSUM_AT..SB_CSUM_AT + 4].copy_from_slice(&sum.to_ne_bytes());
        b
    }

    /// Reads the 4096 bytes found at byte `at` of `device` (`device_bytes` long).
    pub fn decode(
        b: &[u8],
        device: &str,
        at: u64,
        device_bytes: u64,
    ) -> Result<Superblock0, MdError> {
        let version = MdVersion::V0_90;
        let dev = || device.to_string();
        if b.len() < BYTES {
            return Err(MdError::Truncated {
                device: dev(),
                version,
                offset: at,
                needed: BYTES as u64,
                available: b.len() as u64,
            });
        }
        let magic = word(b, 0);
        if magic != MAGIC {
            if magic.swap_bytes() == MAGIC {
                return Err(MdError::Malformed {
                    device: dev(),
                    version,
                    why: "it was written by a host of the other byte order".into(),
                });
            }
            return Err(MdError::NoMagic {
                device: dev(),
                version,
                offset: at,
                found: magic,
            });
        }
        let (major, minor) = (word(b, 1), word(b, 2));
        if major != 0 || !(90..=91).contains(&minor) {
            return Err(MdError::UnknownVersion {
                device: dev(),
                offset: at,
                major,
                minor,
            });
        }
        let found = word(b, SB_CSUM_AT / 4);
        let expected = checksum(b);
        if fold(found) != fold(expected) {
            return Err(MdError::Checksum {
                device: dev(),
                version,
                found,
                expected,
            });
        }
        let w = |i| word(b, i);
        let w64 = |(hi, lo): (usize, usize)| u64::from(w(hi)) << 32 | u64::from(w(lo));
        let mut disks = [Disk0::default(); DISKS];
        for (i, d) in disks.iter_mut().enumerate() {
            *d = decode_disk(b, DISKS_AT + 128 * i);
        }
        let reshape = if cfg!(target_endian = "big") {
            w64((44, 45))
        } else {
            w64((45, 44))
        };
        let sb = Superblock0 {
            minor_version: minor,
            patch_version: w(3),
            gvalid_words: w(4),
            set_uuid: [w(5), w(13), w(14), w(15)],
            ctime: w(6),
            level: w(7) as i32,
            size: w(8),
            nr_disks: w(9),
            raid_disks: w(10),
            md_minor: w(11),
            not_persistent: w(12),
            utime: w(32),
            state: w(33),
            active_disks: w(34),
            working_disks: w(35),
            failed_disks: w(36),
            spare_disks: w(37),
            events: w64(EVENTS),
            cp_events: w64(CP_EVENTS),
            recovery_cp: w(43),
            reshape_position: reshape,
            new_level: w(46) as i32,
            delta_disks: w(47) as i32,
            new_layout: w(48),
            new_chunk: w(49),
            layout: w(64),
            chunk_size: w(65),
            root_pv: w(66),
            root_block: w(67),
            disks,
            this_disk: decode_disk(b, THIS_DISK_AT),
        };
        sb.check(device, at, device_bytes)?;
        Ok(sb)
    }

    /// What the kernel's super_90_load and validate refuse, and areas past the superblock.
    pub fn check(&self, device: &str, at: u64, _device_bytes: u64) -> Result<(), MdError> {
        let version = MdVersion::V0_90;
        let malformed = |why: String| MdError::Malformed {
            device: device.to_string(),
            version,
            why,
        };
        if self.raid_disks == 0 || self.raid_disks as usize > DISKS {
            return Err(malformed(format!(
                "{} raid disks: a 0.90 array has 1 to {DISKS}",
                self.raid_disks
            )));
        }
        if self.nr_disks as usize > DISKS {
            return Err(malformed(format!(
                "{} disks: a 0.90 array has at most {DISKS}",
                self.nr_disks
            )));
        }
        let this = &self.this_disk;
        let bad_slot = |d: &Disk0| {
            d.state & (DISK_SYNC | DISK_FAULTY) == DISK_SYNC && d.raid_disk >= self.raid_disks
        };
        if this.number as usize >= DISKS || bad_slot(this) {
            return Err(MdError::BadRole {
                device: device.to_string(),
                version,
                why: format!(
                    "this device is number {} in slot {}, but the array has {} raid disks",
                    this.number, this.raid_disk, self.raid_disks
                ),
            });
        }
        if let Some((i, d)) = self.disks.iter().enumerate().find(|(_, d)| bad_slot(d)) {
            return Err(MdError::BadRole {
                device: device.to_string(),
                version,
                why: format!(
                    "descriptor {i} is in sync in slot {}, but the array has {} raid disks",
                    d.raid_disk, self.raid_disks
                ),
            });
        }
        // The data runs from sector 0 up to the superblock.
        let used = u64::from(self.size) * 2;
        if used > at / 512 {
            return Err(MdError::OutsideDevice {
                device: device.to_string(),
                version,
                what: "array's part of the member",
                start: 0,
                sectors: used,
                limit: at / 512,
                limit_name: "the superblock",
            });
        }
        Ok(())
    }
}
