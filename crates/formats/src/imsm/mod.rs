//! Intel Matrix Storage Manager metadata (IMSM: Matrix RAID, RST, VROC), as mdadm writes
//! it for "external metadata" containers: one MPB (metadata parameter block, `imsm_super`)
//! per member disk, the same on every member, describing the container's disks (by serial
//! number) and the volumes (RAID 0, 1, 5, 10) laid out over them. Little-endian.
//!
//! Where it lives: the MPB's first sector (the anchor) is the second-to-last sector of the
//! disk; an MPB longer than one sector continues *before* the anchor: its remaining bytes
//! are the `n` sectors ending at the anchor, in order. The last sector holds the migration
//! record ([`MigrRecord`]), meaningful while a volume migrates.
//!
//! | byte | `imsm_super` |
//! |---|---|
//! | 0x00 | signature "Intel Raid ISM Cfg Sig. " and the version ("1.3.00") |
//! | 0x20 | check_sum: the sum of the MPB's le32 words (mpb_size bytes), check_sum left out |
//! | 0x24 | mpb_size, 0x28 family_num, 0x2C generation_num |
//! | 0x30 | error_log_size, 0x34 attributes, 0x38 num_disks (u8), 0x39 num_raid_devs (u8) |
//! | 0x40 | orig_family_num, 0x48 bbm_log_size, 0x50 creation_time (u64) |
//! | 0xD8 | `imsm_disk[num_disks]` (48 bytes each), then `imsm_dev[num_raid_devs]`, then the BBM log |
//!
//! `imsm_disk`: serial[16], total_blocks_lo, scsi_id, status (1 spare, 2 configured,
//! 4 failed, 0x2000000 journal), owner_cfg_num, total_blocks_hi.
//!
//! `imsm_dev` (164 bytes with one map of one member): volume name[16], size lo/hi
//! (sectors), status, reserved_blocks, ..., rwh_policy at 50; `imsm_vol` at 80:
//! curr_migr_unit_lo, checkpoint_id, migr_state, migr_type, dirty, fs_state,
//! verify_errors, bad_blocks, curr_migr_unit_hi; its maps at 112: map 0, and while
//! migrating (migr_state 1) map 1, the layout being migrated from.
//!
//! `imsm_map` (48 bytes + 4 per member): pba_of_lba0_lo, blocks_per_member_lo,
//! num_data_stripes_lo, blocks_per_strip (u16), map_state, raid_level, num_members,
//! num_domains, failed_disk_num, ddf, the three _hi words, a filler, then
//! `disk_ord_tbl[num_members]`: each the index of a disk in the disk table, its top byte
//! flags (bit 24: the member is being rebuilt).

mod rebuild;
#[cfg(test)]
mod tests;

pub use rebuild::SpareDisk;

use thiserror::Error;

use tessera_block::{BlockDevice, BlockError};

/// The MPB's signature, before its version.
pub const SIGNATURE: &[u8; 24] = b"Intel Raid ISM Cfg Sig. ";
/// The version mdadm writes for MPBs without a journal drive.
pub const VERSION_ATTRIBS: &str = "1.3.00";
/// Bytes of `imsm_super` before the disk table.
pub const HEADER_BYTES: usize = 0xD8;
/// Bytes of one `imsm_disk`.
pub const DISK_BYTES: usize = 48;
/// Bytes of an `imsm_dev` before its first map.
pub const DEV_HEADER_BYTES: usize = 112;
/// Bytes of an `imsm_map` before its disk_ord_tbl.
pub const MAP_HEADER_BYTES: usize = 48;
/// Sectors mdadm keeps at the end of each disk for the MPB (the most it may take).
pub const MPB_SECTOR_CNT: u64 = 2210;
/// Sectors reserved at the end of each disk beyond the MPB's (migration copy area...).
pub const IMSM_RESERVED_SECTORS: u64 = 8192;
/// Bytes of the migration record, in the disk's last sector.
pub const MIGR_RECORD_BYTES: usize = 128;

/// disk status bits.
pub const SPARE_DISK: u32 = 0x01;
pub const CONFIGURED_DISK: u32 = 0x02;
pub const FAILED_DISK: u32 = 0x04;
pub const JOURNAL_DISK: u32 = 0x0200_0000;

/// disk_ord_tbl flag: the member in this slot is being rebuilt (out of sync).
pub const ORD_REBUILD: u32 = 1 << 24;

/// map_state values.
pub const MAP_NORMAL: u8 = 0;
pub const MAP_UNINITIALIZED: u8 = 1;
pub const MAP_DEGRADED: u8 = 2;
pub const MAP_FAILED: u8 = 3;

/// migr_type values.
pub const MIGR_INIT: u8 = 0;
pub const MIGR_REBUILD: u8 = 1;
pub const MIGR_VERIFY: u8 = 2;
pub const MIGR_GEN_MIGR: u8 = 3;
pub const MIGR_STATE_CHANGE: u8 = 4;
pub const MIGR_REPAIR: u8 = 5;

/// `dirty` bit: the volume was not shut down cleanly.
pub const RAIDVOL_DIRTY: u8 = 1;

#[derive(Debug, Error)]
pub enum ImsmError {
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error("{device}: IMSM metadata checksum {stored:#010x} does not match its contents ({computed:#010x})")]
    Checksum {
        device: String,
        stored: u32,
        computed: u32,
    },
    #[error("{device}: IMSM metadata: {field}: {problem}")]
    Damaged {
        device: String,
        field: String,
        problem: String,
    },
}

fn damaged(device: &str, field: impl Into<String>, problem: impl Into<String>) -> ImsmError {
    ImsmError::Damaged {
        device: device.to_string(),
        field: field.into(),
        problem: problem.into(),
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | u64::from(le32(b, at + 4)) << 32
}
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
/// A 64-bit value kept as lo and hi words at two places.
fn put_split(b: &mut [u8], lo: usize, hi: usize, v: u64) {
    put32(b, lo, v as u32);
    put32(b, hi, (v >> 32) as u32);
}
fn split(b: &[u8], lo: usize, hi: usize) -> u64 {
    u64::from(le32(b, lo)) | u64::from(le32(b, hi)) << 32
}

/// A NUL-padded name or serial of 16 bytes, as text (bytes past the first NUL ignored).
fn text16(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// mdadm's checksum: the sum of the le32 words of the first `mpb_size` bytes, less the
/// check_sum word itself.
pub fn checksum(mpb: &[u8]) -> u32 {
    let words = mpb.len() / 4;
    let sum = (0..words).fold(0u32, |s, i| s.wrapping_add(le32(mpb, i * 4)));
    // (Bytes too few to hold check_sum have none to leave out.)
    if mpb.len() >= 0x24 {
        sum.wrapping_sub(le32(mpb, 0x20))
    } else {
        sum
    }
}

/// One disk of the container, as the disk table records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// The disk's serial number as mdadm read it (at most 16 bytes, NUL-padded).
    pub serial: [u8; 16],
    pub total_blocks: u64,
    pub scsi_id: u32,
    pub status: u32,
    pub owner_cfg_num: u32,
    /// The fillers, kept as read.
    pub filler: [u8; 12],
}

impl Disk {
    /// A disk of the table: `serial` (its last 16 bytes kept, as mdadm keeps them).
    pub fn new(serial: &str, total_blocks: u64, status: u32) -> Disk {
        let b = serial.as_bytes();
        let b = &b[b.len().saturating_sub(16)..];
        let mut s = [0u8; 16];
        s[..b.len()].copy_from_slice(b);
        Disk {
            serial: s,
            total_blocks,
            scsi_id: 0,
            status,
            owner_cfg_num: 0,
            filler: [0; 12],
        }
    }

    pub fn serial_string(&self) -> String {
        text16(&self.serial)
    }
    pub fn is_failed(&self) -> bool {
        self.status & FAILED_DISK != 0
    }
    pub fn is_spare(&self) -> bool {
        self.status & SPARE_DISK != 0
    }
    pub fn is_configured(&self) -> bool {
        self.status & CONFIGURED_DISK != 0
    }
    pub fn is_journal(&self) -> bool {
        self.status & JOURNAL_DISK != 0
    }
    /// The status in words: failed, spare, journal, configured.
    pub fn status_name(&self) -> &'static str {
        if self.is_failed() {
            "failed"
        } else if self.is_journal() {
            "journal"
        } else if self.is_configured() {
            "configured"
        } else if self.is_spare() {
            "spare"
        } else {
            "unused"
        }
    }

    fn decode(b: &[u8]) -> Disk {
        let mut serial = [0u8; 16];
        serial.copy_from_slice(&b[..16]);
        let mut filler = [0u8; 12];
        filler.copy_from_slice(&b[36..48]);
        Disk {
            serial,
            total_blocks: split(b, 16, 32),
            scsi_id: le32(b, 20),
            status: le32(b, 24),
            owner_cfg_num: le32(b, 28),
            filler,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; DISK_BYTES];
        b[..16].copy_from_slice(&self.serial);
        put_split(&mut b, 16, 32, self.total_blocks);
        put32(&mut b, 20, self.scsi_id);
        put32(&mut b, 24, self.status);
        put32(&mut b, 28, self.owner_cfg_num);
        b[36..48].copy_from_slice(&self.filler);
        out.extend_from_slice(&b);
    }
}

/// One layout of a volume over the container's disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Map {
    /// Where the volume's data starts on every member, in sectors.
    pub pba_of_lba0: u64,
    /// Sectors of each member the volume takes.
    pub blocks_per_member: u64,
    pub num_data_stripes: u64,
    /// The chunk (strip), in sectors.
    pub blocks_per_strip: u16,
    pub map_state: u8,
    /// As stored: 0, 1 (raid1, or raid10 over more than two members), 5, 10.
    pub raid_level: u8,
    pub num_members: u8,
    pub num_domains: u8,
    pub failed_disk_num: u8,
    pub ddf: u8,
    /// The bytes between the _hi words and the table, kept as read.
    pub filler: [u8; 16],
    /// Per slot: the disk's index in the disk table, flags in the top byte.
    pub disk_ord_tbl: Vec<u32>,
}

impl Map {
    /// A map of `level` (0, 1, 5, 10: stored as IMSM stores it) over the disks `ords` (disk
    /// table indexes, with flags), each member giving `blocks_per_member` sectors from
    /// `pba_of_lba0`, chunks of `strip` sectors.
    pub fn new(
        level: u32,
        ords: Vec<u32>,
        pba_of_lba0: u64,
        blocks_per_member: u64,
        strip: u16,
    ) -> Map {
        let n = ords.len() as u64;
        let data = match level {
            0 => n,
            5 => n.saturating_sub(1),
            10 => n / 2,
            _ => 1,
        };
        let raid_level = match level {
            10 if n == 4 => 1,
            l => l as u8,
        };
        Map {
            pba_of_lba0,
            blocks_per_member,
            num_data_stripes: blocks_per_member / u64::from(strip.max(1)) * data / n.max(1),
            blocks_per_strip: strip,
            map_state: MAP_NORMAL,
            raid_level,
            num_members: ords.len() as u8,
            num_domains: if level == 1 || level == 10 { 2 } else { 1 },
            failed_disk_num: 0xff,
            ddf: 1,
            filler: [0; 16],
            disk_ord_tbl: ords,
        }
    }

    /// The level as md runs it: 0, 1, 5 or 10 (IMSM stores raid10 as raid1 over four).
    pub fn level(&self) -> u32 {
        match self.raid_level {
            1 if self.num_members > 2 => 10,
            l => u32::from(l),
        }
    }

    /// The disk table index of the member in `slot`, without flags.
    pub fn disk_index(&self, slot: usize) -> Option<u32> {
        self.disk_ord_tbl.get(slot).map(|o| o & 0x00ff_ffff)
    }

    /// Whether the member in `slot` is being rebuilt (its data not yet in sync).
    pub fn rebuilding(&self, slot: usize) -> bool {
        self.disk_ord_tbl
            .get(slot)
            .is_some_and(|o| o & ORD_REBUILD != 0)
    }

    pub fn state_name(&self) -> &'static str {
        match self.map_state {
            MAP_NORMAL => "normal",
            MAP_UNINITIALIZED => "uninitialized",
            MAP_DEGRADED => "degraded",
            MAP_FAILED => "failed",
            _ => "unknown",
        }
    }

    pub fn bytes(&self) -> usize {
        MAP_HEADER_BYTES + 4 * self.disk_ord_tbl.len()
    }

    /// The map at the start of `b`; `what` names it in errors.
    fn decode(b: &[u8], device: &str, what: &str) -> Result<Map, ImsmError> {
        if b.len() < MAP_HEADER_BYTES {
            return Err(damaged(device, what, "runs past the end of the MPB"));
        }
        let num_members = b[16];
        if num_members == 0 {
            return Err(damaged(
                device,
                format!("{what} num_members"),
                "0: a map has at least one member",
            ));
        }
        let end = MAP_HEADER_BYTES + 4 * usize::from(num_members);
        if b.len() < end {
            return Err(damaged(
                device,
                format!("{what} disk_ord_tbl"),
                format!("{num_members} members run past the end of the MPB"),
            ));
        }
        let mut filler = [0u8; 16];
        filler.copy_from_slice(&b[32..48]);
        Ok(Map {
            pba_of_lba0: split(b, 0, 20),
            blocks_per_member: split(b, 4, 24),
            num_data_stripes: split(b, 8, 28),
            blocks_per_strip: le16(b, 12),
            map_state: b[14],
            raid_level: b[15],
            num_members,
            num_domains: b[17],
            failed_disk_num: b[18],
            ddf: b[19],
            filler,
            disk_ord_tbl: (0..usize::from(num_members))
                .map(|i| le32(b, MAP_HEADER_BYTES + 4 * i))
                .collect(),
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let mut b = vec![0u8; self.bytes()];
        put_split(&mut b, 0, 20, self.pba_of_lba0);
        put_split(&mut b, 4, 24, self.blocks_per_member);
        put_split(&mut b, 8, 28, self.num_data_stripes);
        put16(&mut b, 12, self.blocks_per_strip);
        b[14] = self.map_state;
        b[15] = self.raid_level;
        // The table's length is the member count.
        b[16] = self.disk_ord_tbl.len() as u8;
        b[17] = self.num_domains;
        b[18] = self.failed_disk_num;
        b[19] = self.ddf;
        b[32..48].copy_from_slice(&self.filler);
        for (i, o) in self.disk_ord_tbl.iter().enumerate() {
            put32(&mut b, MAP_HEADER_BYTES + 4 * i, *o);
        }
        out.extend_from_slice(&b);
    }
}

/// One volume (`imsm_dev` with its `imsm_vol`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dev {
    /// The name as stored (at most 16 bytes, NUL-padded).
    pub volume: [u8; 16],
    /// The volume's size in sectors.
    pub size: u64,
    pub status: u32,
    pub reserved_blocks: u32,
    /// Bytes 32..80 of `imsm_dev` (priorities, cache policy, rwh_policy, journal serial...),
    /// kept as read.
    pub rest: [u8; 48],
    pub curr_migr_unit: u64,
    pub checkpoint_id: u32,
    /// 0 normal, 1 migrating (a second map follows the first).
    pub migr_state: u8,
    pub migr_type: u8,
    pub dirty: u8,
    pub fs_state: u8,
    pub verify_errors: u16,
    pub bad_blocks: u16,
    /// The vol's fillers, kept as read.
    pub vol_filler: [u8; 12],
    /// Map 0, and while migrating map 1 (the layout migrated from).
    pub maps: Vec<Map>,
}

impl Dev {
    /// A volume named `name` (its first 16 bytes) of `size` sectors, laid out by `map`.
    pub fn new(name: &str, size: u64, map: Map) -> Dev {
        let mut volume = [0u8; 16];
        let b = &name.as_bytes()[..name.len().min(16)];
        volume[..b.len()].copy_from_slice(b);
        Dev {
            volume,
            size,
            status: 0,
            reserved_blocks: 0,
            rest: [0; 48],
            curr_migr_unit: 0,
            checkpoint_id: 0,
            migr_state: 0,
            migr_type: 0,
            dirty: 0,
            fs_state: 0xff,
            verify_errors: 0,
            bad_blocks: 0,
            vol_filler: [0; 12],
            maps: vec![map],
        }
    }

    pub fn name(&self) -> String {
        text16(&self.volume)
    }
    /// The raid write-hole policy (0 off, 1/3 PPL, 2/4 journal, 6 bitmap).
    pub fn rwh_policy(&self) -> u8 {
        self.rest[50 - 32]
    }
    pub fn is_migrating(&self) -> bool {
        self.migr_state != 0
    }
    pub fn is_dirty(&self) -> bool {
        self.dirty & RAIDVOL_DIRTY != 0
    }
    /// The migration in words.
    pub fn migration_name(&self) -> &'static str {
        match self.migr_type {
            MIGR_INIT => "initialization",
            MIGR_REBUILD => "rebuild",
            MIGR_VERIFY => "verify",
            MIGR_GEN_MIGR => "general migration (reshape)",
            MIGR_STATE_CHANGE => "state change",
            MIGR_REPAIR => "repair",
            _ => "unknown migration",
        }
    }
    pub fn bytes(&self) -> usize {
        DEV_HEADER_BYTES + self.maps.iter().map(Map::bytes).sum::<usize>()
    }

    /// Volume `index` at the start of `b`.
    fn decode(b: &[u8], device: &str, index: usize) -> Result<Dev, ImsmError> {
        let what = format!("volume {index}");
        if b.len() < DEV_HEADER_BYTES {
            return Err(damaged(device, what, "runs past the end of the MPB"));
        }
        let mut volume = [0u8; 16];
        volume.copy_from_slice(&b[..16]);
        let mut rest = [0u8; 48];
        rest.copy_from_slice(&b[32..80]);
        let mut vol_filler = [0u8; 12];
        vol_filler.copy_from_slice(&b[100..112]);
        let migr_state = b[88];
        let name = text16(&volume);
        let map0 = Map::decode(
            &b[DEV_HEADER_BYTES..],
            device,
            &format!("{what} ({name}) map 0"),
        )?;
        let mut maps = vec![map0];
        if migr_state != 0 {
            let at = DEV_HEADER_BYTES + maps[0].bytes();
            maps.push(Map::decode(
                &b[at..],
                device,
                &format!("{what} ({name}) map 1"),
            )?);
        }
        Ok(Dev {
            volume,
            size: split(b, 16, 20),
            status: le32(b, 24),
            reserved_blocks: le32(b, 28),
            rest,
            curr_migr_unit: split(b, 80, 96),
            checkpoint_id: le32(b, 84),
            migr_state,
            migr_type: b[89],
            dirty: b[90],
            fs_state: b[91],
            verify_errors: le16(b, 92),
            bad_blocks: le16(b, 94),
            vol_filler,
            maps,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; DEV_HEADER_BYTES];
        b[..16].copy_from_slice(&self.volume);
        put_split(&mut b, 16, 20, self.size);
        put32(&mut b, 24, self.status);
        put32(&mut b, 28, self.reserved_blocks);
        b[32..80].copy_from_slice(&self.rest);
        put_split(&mut b, 80, 96, self.curr_migr_unit);
        put32(&mut b, 84, self.checkpoint_id);
        b[88] = self.migr_state;
        b[89] = self.migr_type;
        b[90] = self.dirty;
        b[91] = self.fs_state;
        put16(&mut b, 92, self.verify_errors);
        put16(&mut b, 94, self.bad_blocks);
        b[100..112].copy_from_slice(&self.vol_filler);
        out.extend_from_slice(&b);
        for m in &self.maps {
            m.encode(out);
        }
    }
}

/// The MPB of one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mpb {
    /// The version after the signature ("1.3.00").
    pub version: [u8; 8],
    pub check_sum: u32,
    pub mpb_size: u32,
    /// The container's identity, the same on every member.
    pub family_num: u32,
    /// One up at each write: the highest among a family's members is the newest.
    pub generation_num: u32,
    pub error_log_size: u32,
    pub attributes: u32,
    pub error_log_pos: u8,
    pub orig_family_num: u32,
    pub pwr_cycle_count: u32,
    pub bbm_log_size: u32,
    pub num_raid_devs_created: u16,
    pub creation_time: u64,
    /// Header bytes not named above (0x3B, 0x3C..0x40, 0x4E..0x50, 0x58..0xD8), as read.
    pub header_rest: Vec<u8>,
    pub disks: Vec<Disk>,
    pub devs: Vec<Dev>,
    /// What follows the volumes up to mpb_size (the bad block log), as read.
    pub tail: Vec<u8>,
    /// The sector size the MPB was found with (512 or 4096).
    pub sector_size: u32,
}

/// Header byte ranges [`Mpb::header_rest`] keeps.
const HEADER_REST: [(usize, usize); 3] = [(0x3B, 0x40), (0x4E, 0x50), (0x58, 0xD8)];

/// A 16-byte UUID as mdadm prints those of IMSM and DDF arrays: four groups of four
/// bytes, each group's bytes last to first (mdadm prints the words of its hash as
/// little-endian integers).
pub fn mdadm_uuid_text(bytes: &[u8]) -> String {
    bytes
        .chunks(4)
        .take(4)
        .map(|g| {
            g.iter()
                .rev()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join(":")
}

impl Mpb {
    /// The UUID mdadm gives volume `index` (IMSM records none; mdadm's is the start of a
    /// SHA-1 over the signature, the original family number, the volume's index and its
    /// name), as mdadm prints it.
    pub fn volume_uuid(&self, index: usize) -> Option<String> {
        let dev = self.devs.get(index)?;
        let family = if self.orig_family_num == 0 {
            self.family_num
        } else {
            self.orig_family_num
        };
        let digest = tessera_cipher::Hash::Sha1.digest_parts(&[
            SIGNATURE,
            &family.to_le_bytes(),
            &(index as u32).to_le_bytes(),
            &dev.volume,
        ]);
        Some(mdadm_uuid_text(&digest[..16]))
    }

    /// A new MPB of container `family_num` (version 1.3.00, sector size 512).
    pub fn new(family_num: u32, generation_num: u32, disks: Vec<Disk>, devs: Vec<Dev>) -> Mpb {
        let mut version = [0u8; 8];
        version[..6].copy_from_slice(VERSION_ATTRIBS.as_bytes());
        Mpb {
            version,
            check_sum: 0,
            mpb_size: 0,
            family_num,
            generation_num,
            error_log_size: 0,
            attributes: 0,
            error_log_pos: 0,
            orig_family_num: family_num,
            pwr_cycle_count: 0,
            bbm_log_size: 0,
            num_raid_devs_created: devs.len() as u16,
            creation_time: 0,
            header_rest: Vec::new(),
            disks,
            devs,
            tail: Vec::new(),
            sector_size: 512,
        }
    }

    pub fn version_string(&self) -> String {
        text16(&self.version)
    }

    /// Decodes an MPB from its bytes (exactly `mpb_size` of them or more), checking its
    /// checksum and that every table fits; `device` names it in errors.
    pub fn decode(b: &[u8], device: &str, sector_size: u32) -> Result<Mpb, ImsmError> {
        if b.len() < HEADER_BYTES || &b[..24] != SIGNATURE {
            return Err(damaged(device, "signature", "not an IMSM MPB"));
        }
        let mpb_size = le32(b, 0x24) as usize;
        if mpb_size < HEADER_BYTES || mpb_size > b.len() {
            return Err(damaged(
                device,
                "mpb_size",
                format!(
                    "{mpb_size} bytes, outside {HEADER_BYTES}..={} bytes",
                    b.len()
                ),
            ));
        }
        let b = &b[..mpb_size];
        let stored = le32(b, 0x20);
        let computed = checksum(b);
        if stored != computed {
            return Err(ImsmError::Checksum {
                device: device.to_string(),
                stored,
                computed,
            });
        }
        let num_disks = usize::from(b[0x38]);
        let num_devs = usize::from(b[0x39]);
        let mut at = HEADER_BYTES;
        if at + num_disks * DISK_BYTES > mpb_size {
            return Err(damaged(
                device,
                "num_disks",
                format!("{num_disks} disks run past mpb_size {mpb_size}"),
            ));
        }
        let disks: Vec<Disk> = (0..num_disks)
            .map(|i| Disk::decode(&b[at + i * DISK_BYTES..]))
            .collect();
        at += num_disks * DISK_BYTES;
        let mut devs = Vec::with_capacity(num_devs);
        for i in 0..num_devs {
            let d = Dev::decode(&b[at..], device, i)?;
            // Every slot of every map names a disk of the table.
            for (m, map) in d.maps.iter().enumerate() {
                for slot in 0..map.disk_ord_tbl.len() {
                    let idx = map.disk_index(slot).unwrap_or(0) as usize;
                    if idx >= num_disks {
                        return Err(damaged(
                            device,
                            format!("volume {i} ({}) map {m} slot {slot}", d.name()),
                            format!("names disk {idx}, but the disk table has {num_disks} disks"),
                        ));
                    }
                }
            }
            at += d.bytes();
            devs.push(d);
        }
        let mut version = [0u8; 8];
        version.copy_from_slice(&b[24..32]);
        let mut header_rest = Vec::new();
        for (s, e) in HEADER_REST {
            header_rest.extend_from_slice(&b[s..e]);
        }
        Ok(Mpb {
            version,
            check_sum: stored,
            mpb_size: mpb_size as u32,
            family_num: le32(b, 0x28),
            generation_num: le32(b, 0x2C),
            error_log_size: le32(b, 0x30),
            attributes: le32(b, 0x34),
            error_log_pos: b[0x3A],
            orig_family_num: le32(b, 0x40),
            pwr_cycle_count: le32(b, 0x44),
            bbm_log_size: le32(b, 0x48),
            num_raid_devs_created: le16(b, 0x4C),
            creation_time: le64(b, 0x50),
            header_rest,
            disks,
            devs,
            tail: b[at..].to_vec(),
            sector_size,
        })
    }

    /// The MPB's bytes, mpb_size and the checksum computed anew (the stored fields for
    /// them are ignored).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; HEADER_BYTES];
        out[..24].copy_from_slice(SIGNATURE);
        out[24..32].copy_from_slice(&self.version);
        let mut rest = self.header_rest.iter().copied();
        for (s, e) in HEADER_REST {
            for byte in &mut out[s..e] {
                *byte = rest.next().unwrap_or(0);
            }
        }
        put32(&mut out, 0x28, self.family_num);
        put32(&mut out, 0x2C, self.generation_num);
        put32(&mut out, 0x30, self.error_log_size);
        put32(&mut out, 0x34, self.attributes);
        out[0x38] = self.disks.len() as u8;
        out[0x39] = self.devs.len() as u8;
        out[0x3A] = self.error_log_pos;
        put32(&mut out, 0x40, self.orig_family_num);
        put32(&mut out, 0x44, self.pwr_cycle_count);
        put32(&mut out, 0x48, self.bbm_log_size);
        put16(&mut out, 0x4C, self.num_raid_devs_created);
        out[0x50..0x58].copy_from_slice(&self.creation_time.to_le_bytes());
        for d in &self.disks {
            d.encode(&mut out);
        }
        for d in &self.devs {
            d.encode(&mut out);
        }
        out.extend_from_slice(&self.tail);
        let size = out.len() as u32;
        put32(&mut out, 0x24, size);
        let sum = checksum(&out);
        put32(&mut out, 0x20, sum);
        out
    }

    /// The index of the disk with `serial` in the disk table.
    pub fn disk_by_serial(&self, serial: &str) -> Option<usize> {
        self.disks.iter().position(|d| d.serial_string() == serial)
    }
}

/// Where the anchor sector lies on a device of `size` bytes with `sector` byte sectors.
fn anchor_offset(size: u64, sector: u64) -> Option<u64> {
    size.checked_sub(2 * sector)
}

/// Whether the device holds an IMSM anchor (its signature), and with which sector size.
fn find_anchor(dev: &dyn BlockDevice) -> Result<Option<(u32, Vec<u8>)>, ImsmError> {
    let size = dev.size_bytes();
    let mut sizes = vec![dev.logical_block_size().max(512)];
    for s in [512u32, 4096] {
        if !sizes.contains(&s) {
            sizes.push(s);
        }
    }
    for ss in sizes {
        let Some(at) = anchor_offset(size, u64::from(ss)) else {
            continue;
        };
        let mut anchor = vec![0u8; ss as usize];
        dev.read_at(&mut anchor, at)?;
        if &anchor[..24] == SIGNATURE {
            return Ok(Some((ss, anchor)));
        }
    }
    Ok(None)
}

/// Reads the MPB of `dev`: `None` when there is no IMSM anchor; an error naming the device
/// and field when there is one that cannot be read.
pub fn read(dev: &dyn BlockDevice) -> Result<Option<Mpb>, ImsmError> {
    let Some((ss, anchor)) = find_anchor(dev)? else {
        return Ok(None);
    };
    let name = dev.name();
    let sector = u64::from(ss);
    let mpb_size = u64::from(le32(&anchor, 0x24));
    if mpb_size < HEADER_BYTES as u64 {
        return Err(damaged(
            name,
            "mpb_size",
            format!("{mpb_size} bytes, less than the {HEADER_BYTES}-byte header"),
        ));
    }
    let sectors = mpb_size.div_ceil(sector);
    // The MPB's area at the end of the disk is MPB_SECTOR_CNT sectors of 512 bytes.
    let limit = MPB_SECTOR_CNT * 512;
    if sectors * sector > limit.max(sector) {
        return Err(damaged(
            name,
            "mpb_size",
            format!("{mpb_size} bytes, more than the {limit}-byte metadata area"),
        ));
    }
    let anchor_at = anchor_offset(dev.size_bytes(), sector).unwrap_or(0);
    let mut buf = anchor;
    if sectors > 1 {
        let ext = (sectors - 1) * sector;
        let Some(start) = anchor_at.checked_sub(ext) else {
            return Err(damaged(
                name,
                "mpb_size",
                format!(
                    "{mpb_size} bytes reach {ext} bytes before the anchor at byte {anchor_at}, \
                     past the start of the device"
                ),
            ));
        };
        let mut more = vec![0u8; ext as usize];
        dev.read_at(&mut more, start)?;
        buf.extend_from_slice(&more);
    }
    Mpb::decode(&buf, name, ss).map(Some)
}

/// Writes `mpb` to `dev` as mdadm stores it (the sectors before the anchor first, then the
/// anchor), and flushes. The MPB is encoded anew: mpb_size and the checksum follow its
/// contents.
pub fn write(dev: &dyn BlockDevice, mpb: &Mpb) -> Result<(), ImsmError> {
    let name = dev.name();
    let sector = u64::from(mpb.sector_size.max(512));
    let mut bytes = mpb.encode();
    let sectors = (bytes.len() as u64).div_ceil(sector);
    if sectors > (MPB_SECTOR_CNT * 512 / sector).max(1) {
        return Err(damaged(
            name,
            "mpb_size",
            format!("{} bytes do not fit the metadata area", bytes.len()),
        ));
    }
    bytes.resize((sectors * sector) as usize, 0);
    let anchor_at = anchor_offset(dev.size_bytes(), sector)
        .filter(|&a| a >= (sectors - 1) * sector)
        .ok_or_else(|| damaged(name, "device size", "too small for the MPB"))?;
    if sectors > 1 {
        dev.write_at(
            &bytes[sector as usize..],
            anchor_at - (sectors - 1) * sector,
        )?;
        dev.flush()?;
    }
    dev.write_at(&bytes[..sector as usize], anchor_at)?;
    dev.flush()?;
    Ok(())
}

/// The migration record (`migr_record`), in the disk's last sector: how far a migration
/// got, for resuming it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrRecord {
    pub rec_status: u32,
    pub curr_migr_unit: u64,
    pub family_num: u32,
    pub ascending_migr: u32,
    pub blocks_per_unit: u32,
    pub dest_depth_per_unit: u32,
    pub ckpt_area_pba: u64,
    pub dest_1st_member_lba: u64,
    pub num_migr_units: u64,
    pub post_migr_vol_cap: u64,
    pub ckpt_read_disk_num: u32,
}

impl MigrRecord {
    pub fn decode(b: &[u8]) -> Option<MigrRecord> {
        if b.len() < MIGR_RECORD_BYTES {
            return None;
        }
        Some(MigrRecord {
            rec_status: le32(b, 0),
            curr_migr_unit: split(b, 4, 48),
            family_num: le32(b, 8),
            ascending_migr: le32(b, 12),
            blocks_per_unit: le32(b, 16),
            dest_depth_per_unit: le32(b, 20),
            ckpt_area_pba: split(b, 24, 52),
            dest_1st_member_lba: split(b, 28, 56),
            num_migr_units: split(b, 32, 60),
            post_migr_vol_cap: split(b, 36, 40),
            ckpt_read_disk_num: le32(b, 44),
        })
    }
}

/// The migration record of `dev` (found with `mpb`'s sector size).
pub fn read_migr_record(dev: &dyn BlockDevice, mpb: &Mpb) -> Result<MigrRecord, ImsmError> {
    let sector = u64::from(mpb.sector_size.max(512));
    let at = dev
        .size_bytes()
        .checked_sub(sector)
        .ok_or_else(|| damaged(dev.name(), "migration record", "the device is too small"))?;
    let mut b = vec![0u8; sector as usize];
    dev.read_at(&mut b, at)?;
    MigrRecord::decode(&b)
        .ok_or_else(|| damaged(dev.name(), "migration record", "shorter than 128 bytes"))
}
