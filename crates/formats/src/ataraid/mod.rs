//! Firmware ("fake") RAID metadata of the ATA RAID controllers the field still meets: Adaptec
//! HostRAID (ASR), LSI MegaRAID (software), NVIDIA MediaShield, Promise FastTrak, Silicon
//! Image Medley, VIA, JMicron JMB, HighPoint 37x and 45x. The BIOS writes a small record on
//! each member (mostly near the end of the disk); the operating system assembles the set.
//!
//! Each format module reads one device's record into a [`Member`]: the one model every format
//! maps to, so discovery, `show` and assembly are written once. dmraid is the reference
//! reader: set names are built as dmraid builds them and levels carry dmraid's type names.
//!
//! Member order within a set ([`Member::index`]), normalised by each reader:
//! - raid0, raid5, jbod: the position of the member in the stripe (or concatenation).
//! - raid1: the copy number.
//! - raid10 (a stripe over mirrors): mirror pair `index / 2`, copy `index % 2`.
//! - raid01 (a mirror of stripes): stripe `index / (member_count / 2)`, position
//!   `index % (member_count / 2)` in it.

pub mod asr;
pub mod hpt37x;
pub mod hpt45x;
pub mod jmicron;
pub mod lsi;
pub mod nvidia;
pub mod promise;
pub mod sil;
#[cfg(test)]
mod tests;
pub mod via;

use thiserror::Error;

use tessera_block::{BlockDevice, BlockError};

/// The vendors whose metadata tessera reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Vendor {
    Asr,
    Lsi,
    Nvidia,
    Promise,
    Sil,
    Via,
    Jmicron,
    Hpt37x,
    Hpt45x,
}

impl Vendor {
    pub const ALL: [Vendor; 9] = [
        Vendor::Asr,
        Vendor::Lsi,
        Vendor::Nvidia,
        Vendor::Promise,
        Vendor::Sil,
        Vendor::Via,
        Vendor::Jmicron,
        Vendor::Hpt37x,
        Vendor::Hpt45x,
    ];

    /// The TYPE blkid (util-linux) reports for a member.
    pub fn blkid_type(self) -> &'static str {
        match self {
            Vendor::Asr => "adaptec_raid_member",
            Vendor::Lsi => "lsi_mega_raid_member",
            Vendor::Nvidia => "nvidia_raid_member",
            Vendor::Promise => "promise_fasttrack_raid_member",
            Vendor::Sil => "silicon_medley_raid_member",
            Vendor::Via => "via_raid_member",
            Vendor::Jmicron => "jmicron_raid_member",
            Vendor::Hpt37x => "hpt37x_raid_member",
            Vendor::Hpt45x => "hpt45x_raid_member",
        }
    }

    /// The format name dmraid uses (`dmraid -l`, `-f NAME`, the first column of `-r`).
    pub fn dmraid_name(self) -> &'static str {
        match self {
            Vendor::Asr => "asr",
            Vendor::Lsi => "lsi",
            Vendor::Nvidia => "nvidia",
            Vendor::Promise => "pdc",
            Vendor::Sil => "sil",
            Vendor::Via => "via",
            Vendor::Jmicron => "jmicron",
            Vendor::Hpt37x => "hpt37x",
            Vendor::Hpt45x => "hpt45x",
        }
    }

    /// What to call the format in messages.
    pub fn description(self) -> &'static str {
        match self {
            Vendor::Asr => "Adaptec HostRAID ASR",
            Vendor::Lsi => "LSI MegaRAID",
            Vendor::Nvidia => "NVIDIA MediaShield",
            Vendor::Promise => "Promise FastTrak",
            Vendor::Sil => "Silicon Image Medley",
            Vendor::Via => "VIA Software RAID",
            Vendor::Jmicron => "JMicron JMB",
            Vendor::Hpt37x => "HighPoint HPT37x",
            Vendor::Hpt45x => "HighPoint HPT45x",
        }
    }

    pub fn from_dmraid_name(name: &str) -> Option<Vendor> {
        Vendor::ALL.into_iter().find(|v| v.dmraid_name() == name)
    }

    pub fn from_blkid_type(name: &str) -> Option<Vendor> {
        Vendor::ALL.into_iter().find(|v| v.blkid_type() == name)
    }
}

impl std::fmt::Display for Vendor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.dmraid_name())
    }
}

/// Where parity sits and in which order data follows it, in dmraid's (and MD's) terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Raid5Layout {
    LeftAsymmetric,
    LeftSymmetric,
    RightAsymmetric,
    RightSymmetric,
}

impl Raid5Layout {
    /// MD's layout number (ALGORITHM_*), which tessera's raid layer takes.
    pub fn md_layout(self) -> u32 {
        match self {
            Raid5Layout::LeftAsymmetric => 0,
            Raid5Layout::RightAsymmetric => 1,
            Raid5Layout::LeftSymmetric => 2,
            Raid5Layout::RightSymmetric => 3,
        }
    }
}

/// The set's RAID level, as the metadata states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    Raid0,
    Raid1,
    /// A stripe over mirror pairs.
    Raid10,
    /// A mirror of two stripes.
    Raid01,
    Raid5 {
        layout: Raid5Layout,
    },
    /// Concatenation ("JBOD", "span"), dmraid's `linear`.
    Jbod,
    /// A hot spare not (yet) part of a set.
    Spare,
}

impl Level {
    /// The type `dmraid -s` prints for a set of this level.
    pub fn dmraid_type(self) -> &'static str {
        match self {
            Level::Raid0 => "stripe",
            Level::Raid1 => "mirror",
            // dmraid names a stacked set by its top then its subsets the other way round
            // from the usual words: a stripe over mirror pairs is its "raid01", a mirror of
            // two stripes its "raid10".
            Level::Raid10 => "raid01",
            Level::Raid01 => "raid10",
            Level::Raid5 { layout } => match layout {
                Raid5Layout::LeftAsymmetric => "raid5_la",
                Raid5Layout::LeftSymmetric => "raid5_ls",
                Raid5Layout::RightAsymmetric => "raid5_ra",
                Raid5Layout::RightSymmetric => "raid5_rs",
            },
            Level::Jbod => "linear",
            Level::Spare => "spare",
        }
    }

    /// Members the set can lose and still be read, for a set of `members`.
    pub fn redundancy(self, members: u32) -> u32 {
        match self {
            Level::Raid1 => members.saturating_sub(1),
            Level::Raid10 | Level::Raid01 | Level::Raid5 { .. } => 1,
            Level::Raid0 | Level::Jbod | Level::Spare => 0,
        }
    }
}

/// What the metadata says about one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberState {
    Ok,
    Failed,
    Rebuilding,
    Spare,
    Unknown,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Ok => "ok",
            MemberState::Failed => "failed",
            MemberState::Rebuilding => "rebuilding",
            MemberState::Spare => "spare",
            MemberState::Unknown => "unknown",
        }
    }
}

/// What one device's metadata says about the device and its set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub vendor: Vendor,
    /// The name `dmraid -s` prints for the set, built as dmraid builds it.
    pub set_name: String,
    /// What groups the members of one set (the vendor's array id or magic).
    pub set_id: u64,
    pub level: Level,
    /// Sectors per stripe unit (chunk); 0 where the level has no stripe.
    pub stripe_sectors: u32,
    /// This member's place in the set (see the module documentation for raid10/raid01).
    pub index: u32,
    pub member_count: u32,
    /// Sectors: where this member's data starts.
    pub data_offset: u64,
    /// Sectors of this member used for the set.
    pub data_sectors: u64,
    /// Sectors: where the metadata sits (for show).
    pub metadata_offset: u64,
    pub state: MemberState,
}

#[derive(Debug, Error)]
pub enum AtaraidError {
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error("{device}: too small for {vendor} metadata: {size_bytes} bytes, the metadata needs {needed_bytes}", vendor = .vendor.description())]
    Truncated {
        device: String,
        vendor: Vendor,
        size_bytes: u64,
        needed_bytes: u64,
    },
    #[error("{device}: {vendor} metadata checksum {stored:#x} does not match its contents ({computed:#x})", vendor = .vendor.description())]
    Checksum {
        device: String,
        vendor: Vendor,
        stored: u64,
        computed: u64,
    },
    #[error("{device}: {vendor} metadata: {why}", vendor = .vendor.description())]
    Malformed {
        device: String,
        vendor: Vendor,
        why: String,
    },
    #[error("{device}: {vendor} metadata: {what} is not supported by tessera", vendor = .vendor.description())]
    Unsupported {
        device: String,
        vendor: Vendor,
        what: String,
    },
}

impl AtaraidError {
    pub fn malformed(device: &dyn BlockDevice, vendor: Vendor, why: impl Into<String>) -> Self {
        AtaraidError::Malformed {
            device: device.name().to_string(),
            vendor,
            why: why.into(),
        }
    }

    pub fn unsupported(device: &dyn BlockDevice, vendor: Vendor, what: impl Into<String>) -> Self {
        AtaraidError::Unsupported {
            device: device.name().to_string(),
            vendor,
            what: what.into(),
        }
    }

    pub fn checksum(device: &dyn BlockDevice, vendor: Vendor, stored: u64, computed: u64) -> Self {
        AtaraidError::Checksum {
            device: device.name().to_string(),
            vendor,
            stored,
            computed,
        }
    }
}

/// Reads one device's metadata of one format: `Ok(None)` when the device holds none (no
/// magic), an error when it holds damaged metadata.
pub type ProbeFn = fn(&dyn BlockDevice) -> Result<Option<Member>, AtaraidError>;

/// Every format's reader, in the order dmraid tries them.
pub fn probers() -> &'static [(Vendor, ProbeFn)] {
    &[
        (Vendor::Asr, asr::probe),
        (Vendor::Lsi, lsi::probe),
        (Vendor::Nvidia, nvidia::probe),
        (Vendor::Promise, promise::probe),
        (Vendor::Sil, sil::probe),
        (Vendor::Via, via::probe),
        (Vendor::Jmicron, jmicron::probe),
        (Vendor::Hpt37x, hpt37x::probe),
        (Vendor::Hpt45x, hpt45x::probe),
    ]
}

/// Bytes in a sector: every offset in these formats counts 512-byte sectors.
pub const SECTOR_BYTES: u64 = 512;

/// Reads `len` bytes at `offset`, or names the device too small for `vendor`'s metadata.
pub fn read_bytes(
    device: &dyn BlockDevice,
    vendor: Vendor,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, AtaraidError> {
    let end = offset.checked_add(len as u64);
    if end.is_none_or(|end| end > device.size_bytes()) {
        return Err(AtaraidError::Truncated {
            device: device.name().to_string(),
            vendor,
            size_bytes: device.size_bytes(),
            needed_bytes: end.unwrap_or(u64::MAX),
        });
    }
    let mut buf = vec![0u8; len];
    device.read_at(&mut buf, offset)?;
    Ok(buf)
}

/// The whole sectors of `device`.
pub fn device_sectors(device: &dyn BlockDevice) -> u64 {
    device.size_bytes() / SECTOR_BYTES
}

/// The sector `back` sectors before the end of the device (1: the last sector), or `None`
/// if the device has fewer sectors.
pub fn sector_from_end(device: &dyn BlockDevice, back: u64) -> Option<u64> {
    device_sectors(device).checked_sub(back)
}

pub fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

pub fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub fn put_le16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

pub fn put_le32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub fn put_le64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

pub fn put_be16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

pub fn put_be32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// A fixed-size, NUL-padded text field as a string (stops at the first NUL, drops
/// trailing blanks; bytes that are not UTF-8 become U+FFFD).
pub fn text_field(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).trim_end().to_string()
}

/// A set to write test images of: each format's `write_member` lays its metadata for member
/// `index` of this set onto a device, where the firmware would have put it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    pub level: Level,
    pub member_count: u32,
    /// Sectors per stripe unit; 0 where the level has none.
    pub stripe_sectors: u32,
    /// Sectors of each member's data area the set uses.
    pub member_data_sectors: u64,
    /// The vendor's array id or magic (a format keeps as many bits as it holds).
    pub id: u32,
    /// The array's name, where the format stores one.
    pub name: String,
}

/// Replaces each decimal digit by a letter ('0' -> 'a' ... '9' -> 'j'), as dmraid does
/// to the numbers in the set names it makes up.
pub fn digits_to_letters(s: &str) -> String {
    s.chars()
        .map(|c| match c.to_digit(10) {
            Some(d) => (b'a' + d as u8) as char,
            None => c,
        })
        .collect()
}

/// Writes `bytes` at `offset`, naming the device if it is too small.
pub fn write_bytes(
    device: &dyn BlockDevice,
    vendor: Vendor,
    offset: u64,
    bytes: &[u8],
) -> Result<(), AtaraidError> {
    let end = offset.checked_add(bytes.len() as u64);
    if end.is_none_or(|end| end > device.size_bytes()) {
        return Err(AtaraidError::Truncated {
            device: device.name().to_string(),
            vendor,
            size_bytes: device.size_bytes(),
            needed_bytes: end.unwrap_or(u64::MAX),
        });
    }
    device.write_at(bytes, offset)?;
    Ok(())
}

/// Every copy of a sector as (member index, sector in its data area), and raid5's parity.
pub type Placement = (Vec<(u32, u64)>, Option<(u32, u64)>);

/// Where sector `set_sector` of a set's data lies: every copy as (member index, sector in
/// the member's data area), and for raid5 the parity of its stripe row as (member index,
/// sector). A plain reference model of the layouts, written for tests to place data as
/// the firmware would; tessera's own reads go through the mapper's targets instead.
///
/// `member_sectors` is each member's data size (a concatenation's members in order).
pub fn locate(
    level: Level,
    stripe_sectors: u32,
    member_sectors: &[u64],
    set_sector: u64,
) -> Placement {
    let n = member_sectors.len() as u64;
    let chunk = u64::from(stripe_sectors.max(1));
    let stripe = |width: u64, s: u64| -> (u64, u64) {
        let (c, within) = (s / chunk, s % chunk);
        (c % width, (c / width) * chunk + within)
    };
    match level {
        Level::Raid0 => {
            let (m, at) = stripe(n, set_sector);
            (vec![(m as u32, at)], None)
        }
        Level::Raid1 => ((0..n as u32).map(|m| (m, set_sector)).collect(), None),
        Level::Raid01 => {
            let h = n / 2;
            let (m, at) = stripe(h, set_sector);
            (vec![(m as u32, at), ((m + h) as u32, at)], None)
        }
        Level::Raid10 => {
            let (pair, at) = stripe(n / 2, set_sector);
            (
                vec![((pair * 2) as u32, at), ((pair * 2 + 1) as u32, at)],
                None,
            )
        }
        Level::Raid5 { layout } => {
            let data = n - 1;
            let (c, within) = (set_sector / chunk, set_sector % chunk);
            let (row, k) = (c / data, c % data);
            let at = row * chunk + within;
            let parity = match layout {
                Raid5Layout::LeftAsymmetric | Raid5Layout::LeftSymmetric => (n - 1) - row % n,
                Raid5Layout::RightAsymmetric | Raid5Layout::RightSymmetric => row % n,
            };
            let disk = match layout {
                Raid5Layout::LeftSymmetric | Raid5Layout::RightSymmetric => (parity + 1 + k) % n,
                _ if k < parity => k,
                _ => k + 1,
            };
            (vec![(disk as u32, at)], Some((parity as u32, at)))
        }
        Level::Jbod => {
            let mut s = set_sector;
            for (m, &len) in member_sectors.iter().enumerate() {
                if s < len {
                    return (vec![(m as u32, s)], None);
                }
                s -= len;
            }
            (Vec::new(), None)
        }
        Level::Spare => (Vec::new(), None),
    }
}

/// The test pattern of a set's sector: its number, repeated, with `tag` mixed in so two
/// sets' data differ.
pub fn pattern_sector(tag: u64, set_sector: u64) -> [u8; 512] {
    let mut b = [0u8; 512];
    let word = set_sector ^ tag.rotate_left(32);
    for (i, chunk) in b.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&(word.wrapping_add(i as u64)).to_le_bytes());
    }
    b
}

/// Writes [`pattern_sector`] for the set's sectors `0..set_sectors` onto its members where
/// [`locate`] puts them (and raid5's parity), each member's data area starting at its
/// `data_offset` sector. For building test images.
pub fn write_pattern(
    level: Level,
    stripe_sectors: u32,
    members: &[(&dyn BlockDevice, u64)],
    member_sectors: &[u64],
    set_sectors: u64,
    tag: u64,
) -> Result<(), BlockError> {
    for s in 0..set_sectors {
        let data = pattern_sector(tag, s);
        for (m, at) in locate(level, stripe_sectors, member_sectors, s).0 {
            let (dev, offset) = members[m as usize];
            dev.write_at(&data, (offset + at) * SECTOR_BYTES)?;
        }
    }
    if let Level::Raid5 { .. } = level {
        let n = members.len() as u64;
        let chunk = u64::from(stripe_sectors.max(1));
        let rows = set_sectors.div_ceil(chunk * (n - 1));
        for row in 0..rows {
            for w in 0..chunk {
                let first = (row * (n - 1)) * chunk + w;
                let Some((p, at)) = locate(level, stripe_sectors, member_sectors, first).1 else {
                    continue;
                };
                let mut parity = [0u8; 512];
                let mut buf = [0u8; 512];
                for (m, (dev, offset)) in members.iter().enumerate() {
                    if m as u32 != p {
                        dev.read_at(&mut buf, (offset + at) * SECTOR_BYTES)?;
                        parity.iter_mut().zip(buf).for_each(|(x, y)| *x ^= y);
                    }
                }
                let (dev, offset) = members[p as usize];
                dev.write_at(&parity, (offset + at) * SECTOR_BYTES)?;
            }
        }
    }
    Ok(())
}
