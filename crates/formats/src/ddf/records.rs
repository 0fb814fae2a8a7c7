//! The DDF records one by one, as the SNIA Common RAID Disk Data Format lays them out
//! (revisions 01.00.00 and 01.02.00, as mdadm writes them): all numbers big-endian,
//! strings space-padded, each record led by its magic and a CRC.
//!
//! Each record keeps the bytes it was read from: fields tessera does not interpret (pads,
//! vendor data, reserved bytes) survive [`encode`](Header::encode), so a record can be
//! written back as it was found, with only the fields changed and the CRC recomputed.

use std::fmt;

pub const HEADER_MAGIC: u32 = 0xDE11_DE11;
pub const CONTROLLER_MAGIC: u32 = 0xAD11_1111;
pub const PHYS_RECORDS_MAGIC: u32 = 0x2222_2222;
pub const DISK_DATA_MAGIC: u32 = 0x3333_3333;
pub const VIRT_RECORDS_MAGIC: u32 = 0xDDDD_DDDD;
pub const VD_CONFIG_MAGIC: u32 = 0xEEEE_EEEE;
pub const SPARE_ASSIGN_MAGIC: u32 = 0x5555_5555;
pub const VENDOR_CONFIG_MAGIC: u32 = 0x8888_8888;

pub const GUID_LEN: usize = 24;
pub const SECTOR: usize = 512;
/// A refnum or an LBA of all ones: no value.
pub const UNSET32: u32 = u32::MAX;
pub const UNSET64: u64 = u64::MAX;

pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
pub(crate) fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// The DDF CRC of a record: over the whole record with its CRC field (bytes 4..8, in
/// every record) set to all ones, the reflected CRC-32 polynomial started from 0 and not
/// inverted at the end (mdadm's `crc32(0, ...)`, whose copy of zlib's routine leaves out
/// zlib's two inversions), that is the inverse of a standard CRC-32 started from all ones.
pub fn crc(record: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(u32::MAX);
    h.update(&record[..4]);
    h.update(&[0xff; 4]);
    h.update(&record[8..]);
    !h.finalize()
}

/// Sets a record's CRC field from its contents.
pub fn seal(record: &mut [u8]) {
    let c = crc(record);
    put32(record, 4, c);
}

/// The stored CRC and the computed one, when they differ.
pub fn crc_mismatch(record: &[u8]) -> Option<(u32, u32)> {
    let stored = be32(record, 4);
    let computed = crc(record);
    (stored != computed).then_some((stored, computed))
}

/// A DDF GUID: 24 bytes, part ASCII (a vendor id), part binary.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid(pub [u8; GUID_LEN]);

impl Guid {
    fn read(b: &[u8], at: usize) -> Guid {
        Guid(b[at..at + GUID_LEN].try_into().expect("24 bytes"))
    }
    /// All ones: an unused entry.
    pub fn is_unused(&self) -> bool {
        self.0.iter().all(|&b| b == 0xff)
    }
    /// The leading printable ASCII, spaces trimmed ("Linux-MD").
    pub fn vendor(&self) -> String {
        let n = self
            .0
            .iter()
            .position(|&c| !(0x20..0x7f).contains(&c))
            .unwrap_or(GUID_LEN);
        String::from_utf8_lossy(&self.0[..n]).trim_end().to_string()
    }
}

impl fmt::Display for Guid {
    /// As mdadm prints it: six groups of four bytes in hex, colon-separated.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, chunk) in self.0.chunks(4).enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            for b in chunk {
                write!(f, "{b:02X}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

/// A space-padded string field, trimmed.
pub fn text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end])
        .trim_end()
        .to_string()
}

/// What a header is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderType {
    Anchor,
    Primary,
    Secondary,
    Other(u8),
}

impl HeaderType {
    pub fn from_byte(b: u8) -> HeaderType {
        match b {
            0 => HeaderType::Anchor,
            1 => HeaderType::Primary,
            2 => HeaderType::Secondary,
            o => HeaderType::Other(o),
        }
    }
    pub fn byte(self) -> u8 {
        match self {
            HeaderType::Anchor => 0,
            HeaderType::Primary => 1,
            HeaderType::Secondary => 2,
            HeaderType::Other(o) => o,
        }
    }
}

impl fmt::Display for HeaderType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderType::Anchor => f.write_str("anchor"),
            HeaderType::Primary => f.write_str("primary"),
            HeaderType::Secondary => f.write_str("secondary"),
            HeaderType::Other(o) => write!(f, "type-{o}"),
        }
    }
}

/// Where a section lies, in sectors from its header's LBA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Section {
    pub offset: u32,
    pub len: u32,
}

/// The sections a header points at, in the order the header lists them.
pub const SECTION_NAMES: [&str; 8] = [
    "controller data",
    "physical disk records",
    "virtual disk records",
    "configuration records",
    "disk data",
    "bad block log",
    "diagnostic space",
    "vendor log",
];

/// A DDF header (512 bytes): the anchor in the last sector, and the primary and secondary
/// copies it points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    raw: Vec<u8>,
    pub guid: Guid,
    pub revision: String,
    pub seq: u32,
    pub timestamp: u32,
    pub open_flag: u8,
    pub foreign_flag: u8,
    pub enforce_groups: u8,
    pub primary_lba: u64,
    pub secondary_lba: u64,
    pub header_type: HeaderType,
    pub workspace_len: u32,
    pub workspace_lba: u64,
    pub max_pd_entries: u16,
    pub max_vd_entries: u16,
    pub max_partitions: u16,
    pub config_record_len: u16,
    pub max_primary_element_entries: u16,
    /// controller, phys, virt, config, data, bbm, diag, vendor.
    pub sections: [Section; 8],
}

impl Header {
    /// Reads the fields of a 512-byte header; the magic and CRC are the caller's to check.
    pub fn decode(b: &[u8]) -> Header {
        let b = &b[..SECTOR];
        let mut sections = [Section::default(); 8];
        for (i, s) in sections.iter_mut().enumerate() {
            s.offset = be32(b, 192 + 8 * i);
            s.len = be32(b, 196 + 8 * i);
        }
        Header {
            raw: b.to_vec(),
            guid: Guid::read(b, 8),
            revision: text(&b[32..40]),
            seq: be32(b, 40),
            timestamp: be32(b, 44),
            open_flag: b[48],
            foreign_flag: b[49],
            enforce_groups: b[50],
            primary_lba: be64(b, 96),
            secondary_lba: be64(b, 104),
            header_type: HeaderType::from_byte(b[112]),
            workspace_len: be32(b, 116),
            workspace_lba: be64(b, 120),
            max_pd_entries: be16(b, 128),
            max_vd_entries: be16(b, 130),
            max_partitions: be16(b, 132),
            config_record_len: be16(b, 134),
            max_primary_element_entries: be16(b, 136),
            sections,
        }
    }

    pub fn magic(&self) -> u32 {
        be32(&self.raw, 0)
    }
    pub fn stored_crc(&self) -> u32 {
        be32(&self.raw, 4)
    }
    /// The bytes as read.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The header's 512 bytes with its fields and a fresh CRC.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = self.raw.clone();
        put32(&mut b, 0, HEADER_MAGIC);
        b[8..32].copy_from_slice(&self.guid.0);
        let mut rev = [b' '; 8];
        let r = self.revision.as_bytes();
        rev[..r.len().min(8)].copy_from_slice(&r[..r.len().min(8)]);
        b[32..40].copy_from_slice(&rev);
        put32(&mut b, 40, self.seq);
        put32(&mut b, 44, self.timestamp);
        b[48] = self.open_flag;
        b[49] = self.foreign_flag;
        b[50] = self.enforce_groups;
        put64(&mut b, 96, self.primary_lba);
        put64(&mut b, 104, self.secondary_lba);
        b[112] = self.header_type.byte();
        put32(&mut b, 116, self.workspace_len);
        put64(&mut b, 120, self.workspace_lba);
        put16(&mut b, 128, self.max_pd_entries);
        put16(&mut b, 130, self.max_vd_entries);
        put16(&mut b, 132, self.max_partitions);
        put16(&mut b, 134, self.config_record_len);
        put16(&mut b, 136, self.max_primary_element_entries);
        for (i, s) in self.sections.iter().enumerate() {
            put32(&mut b, 192 + 8 * i, s.offset);
            put32(&mut b, 196 + 8 * i, s.len);
        }
        seal(&mut b);
        b
    }

    /// Whether `other` describes the same metadata layout (what mdadm compares between
    /// the anchor and the copies it points at: GUID, revision, where the copies lie, and
    /// everything from byte 113 on, the sections included).
    pub fn same_layout(&self, other: &Header) -> Option<&'static str> {
        if self.guid != other.guid {
            return Some("GUID");
        }
        if self.revision != other.revision {
            return Some("revision");
        }
        if self.primary_lba != other.primary_lba || self.secondary_lba != other.secondary_lba {
            return Some("primary and secondary LBAs");
        }
        if self.raw[113..] != other.raw[113..] {
            return Some("section layout");
        }
        None
    }
}

/// The controller data section: which controller (or tool) made the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controller {
    raw: Vec<u8>,
    pub guid: Guid,
    pub vendor_id: u16,
    pub device_id: u16,
    pub sub_vendor_id: u16,
    pub sub_device_id: u16,
    pub product_id: String,
}

impl Controller {
    pub fn decode(b: &[u8]) -> Controller {
        let b = &b[..SECTOR];
        Controller {
            raw: b.to_vec(),
            guid: Guid::read(b, 8),
            vendor_id: be16(b, 32),
            device_id: be16(b, 34),
            sub_vendor_id: be16(b, 36),
            sub_device_id: be16(b, 38),
            product_id: text(&b[40..56]),
        }
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut b = self.raw.clone();
        put32(&mut b, 0, CONTROLLER_MAGIC);
        b[8..32].copy_from_slice(&self.guid.0);
        put16(&mut b, 32, self.vendor_id);
        put16(&mut b, 34, self.device_id);
        put16(&mut b, 36, self.sub_vendor_id);
        put16(&mut b, 38, self.sub_device_id);
        seal(&mut b);
        b
    }
}

/// Physical disk entry `type` bits.
pub mod pd_type {
    pub const FORCED_GUID: u16 = 1;
    pub const ACTIVE_IN_VD: u16 = 2;
    pub const GLOBAL_SPARE: u16 = 4;
    pub const SPARE: u16 = 8;
    pub const FOREIGN: u16 = 16;
    pub const LEGACY: u16 = 32;
}

/// Physical disk entry `state` bits.
pub mod pd_state {
    pub const ONLINE: u16 = 1;
    pub const FAILED: u16 = 2;
    pub const REBUILDING: u16 = 4;
    pub const TRANSITION: u16 = 8;
    pub const SMART: u16 = 16;
    pub const READ_ERRORS: u16 = 32;
    pub const MISSING: u16 = 64;
}

/// One disk of the container, as the physical disk records list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysEntry {
    /// Its place in the records.
    pub index: usize,
    pub guid: Guid,
    pub refnum: u32,
    pub kind: u16,
    pub state: u16,
    /// Sectors usable for data: DDF structures lie after it.
    pub config_size: u64,
    pub path: [u8; 18],
}

impl PhysEntry {
    /// Online and not failed: what md takes as an in-sync member.
    pub fn is_working(&self) -> bool {
        self.state & pd_state::ONLINE != 0 && self.state & pd_state::FAILED == 0
    }
    /// The state in words, as mdadm --examine prints it.
    pub fn state_words(&self) -> String {
        let s = self.state;
        let mut w = vec![if s & pd_state::FAILED != 0 {
            "Failed"
        } else if s & pd_state::ONLINE != 0 {
            "Online"
        } else {
            "Offline"
        }];
        for (bit, word) in [
            (pd_state::REBUILDING, "Rebuilding"),
            (pd_state::TRANSITION, "in-transition"),
            (pd_state::SMART, "SMART-errors"),
            (pd_state::READ_ERRORS, "Unrecovered-Read-Errors"),
            (pd_state::MISSING, "Missing"),
        ] {
            if s & bit != 0 && s & pd_state::FAILED == 0 {
                w.push(word);
            }
        }
        w.join(", ")
    }
}

/// The physical disk records section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysRecords {
    raw: Vec<u8>,
    pub used: u16,
    pub max: u16,
    /// The entries in use (refnum not all ones), in record order.
    pub entries: Vec<PhysEntry>,
}

impl PhysRecords {
    /// Reads the section's `b` (its whole length); None if `max` entries do not fit.
    pub fn decode(b: &[u8]) -> Option<PhysRecords> {
        let max = be16(b, 10);
        if 64 + 64 * max as usize > b.len() {
            return None;
        }
        let entries = (0..max as usize)
            .map(|i| {
                let at = 64 + 64 * i;
                PhysEntry {
                    index: i,
                    guid: Guid::read(b, at),
                    refnum: be32(b, at + 24),
                    kind: be16(b, at + 28),
                    state: be16(b, at + 30),
                    config_size: be64(b, at + 32),
                    path: b[at + 40..at + 58].try_into().expect("18 bytes"),
                }
            })
            .filter(|e| e.refnum != UNSET32)
            .collect();
        Some(PhysRecords {
            raw: b.to_vec(),
            used: be16(b, 8),
            max,
            entries,
        })
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut b = self.raw.clone();
        put32(&mut b, 0, PHYS_RECORDS_MAGIC);
        put16(&mut b, 8, self.used);
        put16(&mut b, 10, self.max);
        for e in &self.entries {
            let at = 64 + 64 * e.index;
            if at + 64 > b.len() {
                continue;
            }
            b[at..at + 24].copy_from_slice(&e.guid.0);
            put32(&mut b, at + 24, e.refnum);
            put16(&mut b, at + 28, e.kind);
            put16(&mut b, at + 30, e.state);
            put64(&mut b, at + 32, e.config_size);
            b[at + 40..at + 58].copy_from_slice(&e.path);
        }
        seal(&mut b);
        b
    }
    pub fn by_refnum(&self, refnum: u32) -> Option<&PhysEntry> {
        self.entries.iter().find(|e| e.refnum == refnum)
    }
}

/// Virtual disk entry `state` values (low 3 bits) and flags.
pub mod vd_state {
    pub const MASK: u8 = 0x7;
    pub const OPTIMAL: u8 = 0;
    pub const DEGRADED: u8 = 1;
    pub const DELETED: u8 = 2;
    pub const MISSING: u8 = 3;
    pub const FAILED: u8 = 4;
    pub const PARTIALLY_OPTIMAL: u8 = 5;
    pub const MORPHING: u8 = 0x8;
    pub const INCONSISTENT: u8 = 0x10;
}

/// One virtual disk (a subarray), as the virtual disk records list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtEntry {
    pub index: usize,
    pub guid: Guid,
    pub unit: u16,
    pub guid_crc: u16,
    pub kind: u16,
    pub state: u8,
    pub init_state: u8,
    pub name_bytes: [u8; 16],
}

impl VirtEntry {
    /// The name as mdadm takes it for /dev/md/NAME: up to 16 bytes, cut at the first space.
    pub fn name(&self) -> String {
        let end = self
            .name_bytes
            .iter()
            .position(|&b| b == b' ' || b == 0)
            .unwrap_or(16);
        String::from_utf8_lossy(&self.name_bytes[..end]).into_owned()
    }
    pub fn state_words(&self) -> String {
        let base = match self.state & vd_state::MASK {
            vd_state::OPTIMAL => "optimal",
            vd_state::DEGRADED => "degraded",
            vd_state::DELETED => "deleted",
            vd_state::MISSING => "missing",
            vd_state::FAILED => "failed",
            vd_state::PARTIALLY_OPTIMAL => "partially optimal",
            _ => "reserved",
        };
        let mut w = base.to_string();
        if self.state & vd_state::MORPHING != 0 {
            w.push_str(", morphing");
        }
        w.push_str(if self.state & vd_state::INCONSISTENT != 0 {
            ", not consistent"
        } else {
            ", consistent"
        });
        w
    }
    /// Whether the virtual disk's redundancy is known good (consistent and fully
    /// initialised), as mdadm decides whether it needs a resync.
    pub fn is_consistent(&self) -> bool {
        self.state & vd_state::INCONSISTENT == 0 && self.init_state & 0x3 == 2
    }
}

/// The virtual disk records section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtRecords {
    raw: Vec<u8>,
    pub populated: u16,
    pub max: u16,
    /// The entries in use (GUID not all ones), in record order.
    pub entries: Vec<VirtEntry>,
}

impl VirtRecords {
    pub fn decode(b: &[u8]) -> Option<VirtRecords> {
        let max = be16(b, 10);
        if 64 + 64 * max as usize > b.len() {
            return None;
        }
        let entries = (0..max as usize)
            .map(|i| {
                let at = 64 + 64 * i;
                VirtEntry {
                    index: i,
                    guid: Guid::read(b, at),
                    unit: be16(b, at + 24),
                    guid_crc: be16(b, at + 28),
                    kind: be16(b, at + 30),
                    state: b[at + 32],
                    init_state: b[at + 33],
                    name_bytes: b[at + 48..at + 64].try_into().expect("16 bytes"),
                }
            })
            .filter(|e| !e.guid.is_unused())
            .collect();
        Some(VirtRecords {
            raw: b.to_vec(),
            populated: be16(b, 8),
            max,
            entries,
        })
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut b = self.raw.clone();
        put32(&mut b, 0, VIRT_RECORDS_MAGIC);
        put16(&mut b, 8, self.populated);
        put16(&mut b, 10, self.max);
        for e in &self.entries {
            let at = 64 + 64 * e.index;
            if at + 64 > b.len() {
                continue;
            }
            b[at..at + 24].copy_from_slice(&e.guid.0);
            put16(&mut b, at + 24, e.unit);
            put16(&mut b, at + 28, e.guid_crc);
            put16(&mut b, at + 30, e.kind);
            b[at + 32] = e.state;
            b[at + 33] = e.init_state;
            b[at + 48..at + 64].copy_from_slice(&e.name_bytes);
        }
        seal(&mut b);
        b
    }
}

/// Primary RAID levels.
pub mod prl {
    pub const RAID0: u8 = 0x00;
    pub const RAID1: u8 = 0x01;
    pub const RAID3: u8 = 0x03;
    pub const RAID4: u8 = 0x04;
    pub const RAID5: u8 = 0x05;
    pub const RAID6: u8 = 0x06;
    pub const JBOD: u8 = 0x0f;
    pub const RAID1E: u8 = 0x11;
    pub const RAID5E: u8 = 0x15;
    pub const CONCAT: u8 = 0x1f;
    pub const RAID5EE: u8 = 0x25;
}

/// RAID level qualifiers that tessera maps to md layouts.
pub mod rlq {
    pub const RAID1_SIMPLE: u8 = 0;
    pub const RAID1_MULTI: u8 = 1;
    pub const RAID4_N: u8 = 1;
    /// Parity on the first member, restarting: md's right-asymmetric.
    pub const RAID5_0_RESTART: u8 = 0;
    pub const RAID6_0_RESTART: u8 = 1;
    /// Parity on the last member, restarting: md's left-asymmetric.
    pub const RAID5_N_RESTART: u8 = 2;
    /// Parity on the last member, continuing: md's left-symmetric.
    pub const RAID5_N_CONTINUE: u8 = 3;
    pub const RAID1E_ADJACENT: u8 = 0;
    pub const RAID1E_OFFSET: u8 = 1;
}

/// Secondary RAID levels.
pub mod srl {
    pub const STRIPED: u8 = 0;
    pub const MIRRORED: u8 = 1;
    pub const CONCAT: u8 = 2;
    pub const SPANNED: u8 = 3;
}

/// The name of a primary RAID level, as mdadm prints it.
pub fn prl_name(p: u8) -> String {
    match p {
        prl::RAID0 => "RAID0".into(),
        prl::RAID1 => "RAID1".into(),
        prl::RAID3 => "RAID3".into(),
        prl::RAID4 => "RAID4".into(),
        prl::RAID5 => "RAID5".into(),
        prl::RAID6 => "RAID6".into(),
        prl::JBOD => "JBOD".into(),
        prl::RAID1E => "RAID1E".into(),
        prl::RAID5E => "RAID5E".into(),
        prl::CONCAT => "CONCAT".into(),
        prl::RAID5EE => "RAID5EE".into(),
        o => format!("level {o:#04x}"),
    }
}

/// A virtual disk configuration record: how one basic virtual disk (the whole subarray, or
/// one leg of a two-level one) lies on its disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VdConfig {
    raw: Vec<u8>,
    /// Its place among the configuration records of the disk it was read from.
    pub record: usize,
    /// Entries per member table (the header's max_primary_element_entries).
    mppe: usize,
    pub guid: Guid,
    pub timestamp: u32,
    pub seqnum: u32,
    pub prim_elmnt_count: u16,
    /// Chunk of 512 << chunk_shift bytes.
    pub chunk_shift: u8,
    pub prl: u8,
    pub rlq: u8,
    pub sec_elmnt_count: u8,
    pub sec_elmnt_seq: u8,
    pub srl: u8,
    /// Sectors of each member's extent.
    pub blocks: u64,
    /// Sectors of the whole virtual disk.
    pub array_blocks: u64,
    /// The members in order, by refnum (prim_elmnt_count of them).
    pub phys_refnum: Vec<u32>,
    /// Where each member's extent starts on its disk, in sectors.
    pub lba_offset: Vec<u64>,
}

impl VdConfig {
    /// The bytes a record of `mppe` entries needs.
    pub fn bytes_needed(mppe: usize) -> usize {
        512 + 12 * mppe
    }

    /// Reads one record (config_record_len sectors) with `mppe` entries per table; the
    /// reason when the counts do not fit.
    pub fn decode(b: &[u8], mppe: usize) -> Result<VdConfig, String> {
        if Self::bytes_needed(mppe) > b.len() {
            return Err(format!(
                "{mppe} member entries do not fit a record of {} bytes",
                b.len()
            ));
        }
        let count = be16(b, 64);
        if count as usize > mppe {
            return Err(format!(
                "{count} primary elements, more than the {mppe} a record holds"
            ));
        }
        let n = count as usize;
        Ok(VdConfig {
            raw: b.to_vec(),
            record: 0,
            mppe,
            guid: Guid::read(b, 8),
            timestamp: be32(b, 32),
            seqnum: be32(b, 36),
            prim_elmnt_count: count,
            chunk_shift: b[66],
            prl: b[67],
            rlq: b[68],
            sec_elmnt_count: b[69],
            sec_elmnt_seq: b[70],
            srl: b[71],
            blocks: be64(b, 72),
            array_blocks: be64(b, 80),
            phys_refnum: (0..n).map(|i| be32(b, 512 + 4 * i)).collect(),
            lba_offset: (0..n).map(|i| be64(b, 512 + 4 * mppe + 8 * i)).collect(),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = self.raw.clone();
        put32(&mut b, 0, VD_CONFIG_MAGIC);
        b[8..32].copy_from_slice(&self.guid.0);
        put32(&mut b, 32, self.timestamp);
        put32(&mut b, 36, self.seqnum);
        put16(&mut b, 64, self.prim_elmnt_count);
        b[66] = self.chunk_shift;
        b[67] = self.prl;
        b[68] = self.rlq;
        b[69] = self.sec_elmnt_count;
        b[70] = self.sec_elmnt_seq;
        b[71] = self.srl;
        put64(&mut b, 72, self.blocks);
        put64(&mut b, 80, self.array_blocks);
        for (i, r) in self.phys_refnum.iter().enumerate().take(self.mppe) {
            put32(&mut b, 512 + 4 * i, *r);
        }
        for (i, o) in self.lba_offset.iter().enumerate().take(self.mppe) {
            put64(&mut b, 512 + 4 * self.mppe + 8 * i, *o);
        }
        seal(&mut b);
        b
    }

    /// The bytes as read.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Chunk size in sectors (None for the "no chunks" value 255).
    pub fn chunk_sectors(&self) -> Option<u64> {
        (self.chunk_shift < 32).then(|| 1u64 << self.chunk_shift)
    }
}

/// The disk data section: which disk of the container this one is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskData {
    raw: Vec<u8>,
    pub guid: Guid,
    pub refnum: u32,
    pub forced_ref: u8,
    pub forced_guid: u8,
}

impl DiskData {
    pub fn decode(b: &[u8]) -> DiskData {
        let b = &b[..SECTOR];
        DiskData {
            raw: b.to_vec(),
            guid: Guid::read(b, 8),
            refnum: be32(b, 32),
            forced_ref: b[36],
            forced_guid: b[37],
        }
    }
    pub fn encode(&self) -> Vec<u8> {
        let mut b = self.raw.clone();
        put32(&mut b, 0, DISK_DATA_MAGIC);
        b[8..32].copy_from_slice(&self.guid.0);
        put32(&mut b, 32, self.refnum);
        b[36] = self.forced_ref;
        b[37] = self.forced_guid;
        seal(&mut b);
        b
    }
}
