//! Bad block relocation tables, laid out as EVMS's dm-bbr keeps them: a device (or an LV)
//! without redundancy sets aside a pool of replacement sectors and records, in a table kept
//! twice, which failed sector each replacement now stands for.
//!
//! A table is `table_sectors` sectors; each 512-byte table sector is, little endian:
//!
//! | offset | field |
//! |---|---|
//! | 0 | signature `0x42627254` ("TrbB" in memory, 'BbrT' as the u32) |
//! | 4 | crc: CRC-32 (poly 0xEDB88320, initial 0xFFFFFFFF, no final inversion, as dm-bbr's) of the 512 bytes with this field 0; never 0 |
//! | 8 | sequence number, raised by every write of this table sector |
//! | 12 | in_use_cnt: entries used in this sector (0 to 31) |
//! | 16 | 31 entries `{u64 bad_sect, u64 replacement_sect}` |
//!
//! Entry `j` of table sector `i` describes replacement `i * 31 + j`, which is sector
//! `start_replacement + i * 31 + j` of the device: the pool is used in order, so the used
//! entries are a prefix of the table. Sector numbers are the device's (the data area's offset
//! included), as dm-bbr's. A `bad_sect` of `u64::MAX` marks a replacement that itself failed
//! and is never used (dm-bbr skipped such a replacement without recording it, which left a
//! gap its reader could not see; tessera records the skip). When a bad sector is relocated
//! again (its replacement failed later), the entry with the higher index wins.
//!
//! # Commits and crashes
//!
//! A relocation is committed one table sector at a time: the new sector (sequence number
//! raised) goes to copy 1 and is flushed, then to copy 2 and is flushed, and only then is the
//! relocated write acknowledged. A reader takes, for each table sector, the valid copy with the
//! higher sequence number (compared with wrap-around), so a power cut while copy 1 is written
//! leaves copy 2's old sector (copy 1's is torn or old), and one after copy 1 but during copy 2
//! leaves copy 1's new sector. [`BbrStore::open`] rewrites any copy that was damaged or behind.

use std::fmt;

use thiserror::Error;

use tessera_block::{BlockError, SharedDevice};

/// 'BbrT' as a little-endian u32 (dm-bbr's `BBR_TABLE_SIGNATURE`).
pub const SIGNATURE: u32 = 0x4262_7254;
/// Entries in one table sector.
pub const ENTRIES_PER_SECTOR: usize = 31;
/// Bytes of a table sector.
pub const TABLE_SECTOR_BYTES: usize = 512;
/// The `bad_sect` of a replacement that failed itself and is never used.
pub const SKIPPED: u64 = u64::MAX;
/// The LV tag prefix that marks a BBR LV in LVM2 metadata.
pub const TAG_PREFIX: &str = "tessera_bbr:v1";

const SECTOR: u64 = 512;

#[derive(Debug, Error)]
pub enum BbrError {
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error("{device}: BBR table sector {index} is damaged in both copies (sector {copy1}: {why1}; sector {copy2}: {why2})")]
    BothCopiesBad {
        device: String,
        index: u64,
        copy1: u64,
        why1: String,
        copy2: u64,
        why2: String,
    },
    #[error("{device}: BBR table sector {index} (copy at sector {at}) {why}")]
    BadEntry {
        device: String,
        index: u64,
        at: u64,
        why: String,
    },
    #[error("{device}: BBR layout: {why}")]
    Layout { device: String, why: String },
    #[error("{device}: the BBR replacement pool is used up: all {total} replacement sectors are taken, so sector {sector} cannot be relocated")]
    PoolExhausted {
        device: String,
        sector: u64,
        total: u64,
    },
}

/// Why one copy of a table sector is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SectorProblem {
    Signature(u32),
    NoCrc,
    Crc { found: u32, computed: u32 },
    InUse(u32),
    Unreadable(String),
}

impl fmt::Display for SectorProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SectorProblem::Signature(s) => {
                write!(
                    f,
                    "signature {s:#010x}, expected {SIGNATURE:#010x} ('BbrT')"
                )
            }
            SectorProblem::NoCrc => write!(f, "no CRC (the field is 0)"),
            SectorProblem::Crc { found, computed } => {
                write!(
                    f,
                    "CRC {found:#010x} does not match the contents ({computed:#010x})"
                )
            }
            SectorProblem::InUse(n) => {
                write!(f, "in_use_cnt {n} is more than {ENTRIES_PER_SECTOR}")
            }
            SectorProblem::Unreadable(e) => write!(f, "unreadable: {e}"),
        }
    }
}

/// One relocation: `bad` (a device sector) is served from `replacement`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub bad: u64,
    pub replacement: u64,
}

/// One table sector, decoded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableSector {
    pub sequence: u32,
    pub entries: Vec<Entry>,
}

/// dm-bbr's CRC: the reflected CRC-32 without the final inversion.
pub fn crc(bytes: &[u8]) -> u32 {
    !crc32fast::hash(bytes)
}

impl TableSector {
    /// Decodes and checks one table sector: signature, CRC, entry count.
    pub fn decode(buf: &[u8; TABLE_SECTOR_BYTES]) -> Result<TableSector, SectorProblem> {
        let u32_at = |o: usize| u32::from_le_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let signature = u32_at(0);
        if signature != SIGNATURE {
            return Err(SectorProblem::Signature(signature));
        }
        let found = u32_at(4);
        if found == 0 {
            return Err(SectorProblem::NoCrc);
        }
        let mut copy = *buf;
        copy[4..8].fill(0);
        let computed = crc(&copy);
        if computed != found {
            return Err(SectorProblem::Crc { found, computed });
        }
        let in_use = u32_at(12);
        if in_use as usize > ENTRIES_PER_SECTOR {
            return Err(SectorProblem::InUse(in_use));
        }
        let entries = (0..in_use as usize)
            .map(|j| Entry {
                bad: u64_at(16 + 16 * j),
                replacement: u64_at(24 + 16 * j),
            })
            .collect();
        Ok(TableSector {
            sequence: u32_at(8),
            entries,
        })
    }

    /// Encodes the sector with its CRC. At most [`ENTRIES_PER_SECTOR`] entries are written.
    pub fn encode(&self) -> [u8; TABLE_SECTOR_BYTES] {
        let mut buf = [0u8; TABLE_SECTOR_BYTES];
        let used = self.entries.len().min(ENTRIES_PER_SECTOR);
        buf[0..4].copy_from_slice(&SIGNATURE.to_le_bytes());
        buf[8..12].copy_from_slice(&self.sequence.to_le_bytes());
        buf[12..16].copy_from_slice(&(used as u32).to_le_bytes());
        for (j, e) in self.entries.iter().take(used).enumerate() {
            buf[16 + 16 * j..24 + 16 * j].copy_from_slice(&e.bad.to_le_bytes());
            buf[24 + 16 * j..32 + 16 * j].copy_from_slice(&e.replacement.to_le_bytes());
        }
        let mut c = crc(&buf);
        if c == 0 {
            // 0 means "no CRC" to readers; a different sequence number gives another CRC.
            buf[8..12].copy_from_slice(&self.sequence.wrapping_add(1).to_le_bytes());
            c = crc(&buf);
        }
        buf[4..8].copy_from_slice(&c.to_le_bytes());
        buf
    }
}

/// True if sequence number `a` is newer than `b`, wrapping around as counters do.
pub fn newer(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// Where the tables and the pool lie on the device, in device sectors (dm-bbr's table
/// line: `table1_lsn`, `table2_lsn`, `table_size`, `start_replacement`,
/// `nr_replacement_blks`), and the data area it protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub data_start: u64,
    pub data_sectors: u64,
    pub table1: u64,
    pub table2: u64,
    pub table_sectors: u64,
    pub pool_start: u64,
    pub pool_sectors: u64,
}

impl Geometry {
    /// Table sectors needed for a pool of `pool_sectors`.
    pub fn table_sectors_for(pool_sectors: u64) -> u64 {
        pool_sectors.div_ceil(ENTRIES_PER_SECTOR as u64)
    }

    /// Checks that the areas fit the device (`device_sectors`), do not overlap, and that the
    /// tables can describe the whole pool.
    pub fn check(&self, device: &str, device_sectors: u64) -> Result<(), BbrError> {
        let bad = |why: String| BbrError::Layout {
            device: device.to_string(),
            why,
        };
        if self.table_sectors == 0 || self.pool_sectors == 0 {
            return Err(bad(
                "the table and the replacement pool must not be empty".into()
            ));
        }
        if self.table_sectors > (u64::MAX / ENTRIES_PER_SECTOR as u64)
            || self.table_sectors * (ENTRIES_PER_SECTOR as u64) < self.pool_sectors
        {
            return Err(bad(format!(
                "{} table sectors describe at most {} replacements, fewer than the pool's {} sectors",
                self.table_sectors,
                self.table_sectors.saturating_mul(ENTRIES_PER_SECTOR as u64),
                self.pool_sectors
            )));
        }
        let areas = [
            ("data", self.data_start, self.data_sectors),
            ("table copy 1", self.table1, self.table_sectors),
            ("table copy 2", self.table2, self.table_sectors),
            ("replacement pool", self.pool_start, self.pool_sectors),
        ];
        for (name, start, len) in areas {
            match start.checked_add(len) {
                Some(end) if end <= device_sectors => {}
                _ => {
                    return Err(bad(format!(
                        "the {name} ({len} sectors at sector {start}) ends past the device's {device_sectors} sectors"
                    )))
                }
            }
        }
        for (i, a) in areas.iter().enumerate() {
            for b in &areas[i + 1..] {
                if a.2 > 0 && b.2 > 0 && a.1 < b.1 + b.2 && b.1 < a.1 + a.2 {
                    return Err(bad(format!(
                        "the {} (sectors {}..{}) overlaps the {} (sectors {}..{})",
                        a.0,
                        a.1,
                        a.1 + a.2,
                        b.0,
                        b.1,
                        b.1 + b.2
                    )));
                }
            }
        }
        Ok(())
    }

    /// A layout inside an area of `total_sectors` from `start` (an LV): data first, at the
    /// area's start (so a plain linear mapping of the area sees the data at its own
    /// sectors), then table copy 1, the pool and table copy 2 at the end, so one damaged
    /// stretch of the disk rarely takes both copies.
    pub fn inside(start: u64, total_sectors: u64, pool_sectors: u64) -> Option<Geometry> {
        let table_sectors = Self::table_sectors_for(pool_sectors);
        let reserved = table_sectors.checked_mul(2)?.checked_add(pool_sectors)?;
        // Data ends on a 4 KiB boundary, so its sectors keep a 4 KiB device's alignment.
        let data_sectors = total_sectors.checked_sub(reserved)? / 8 * 8;
        if data_sectors == 0 || pool_sectors == 0 {
            return None;
        }
        let table1 = start + data_sectors;
        let pool_start = table1 + table_sectors;
        Some(Geometry {
            data_start: start,
            data_sectors,
            table1,
            table2: pool_start + pool_sectors,
            table_sectors,
            pool_start,
            pool_sectors,
        })
    }

    /// The default pool for an area: a 1/1024 share (about 0.1%), at least 248 sectors (8
    /// table sectors' worth) and at most 64 MiB.
    pub fn default_pool_sectors(total_sectors: u64) -> u64 {
        (total_sectors / 1024).clamp(248, 131_072)
    }

    /// The LV tag that records this layout relative to the LV's start (`start` 0):
    /// `tessera_bbr:v1:data=D:table=T:pool=P`, tables and pool after the data in that order.
    pub fn to_tag(&self) -> String {
        format!(
            "{TAG_PREFIX}:data={}:table={}:pool={}",
            self.data_sectors, self.table_sectors, self.pool_sectors
        )
    }

    /// Reads a tag written by [`Geometry::to_tag`]: Ok(None) if `tag` is not a BBR tag.
    pub fn from_tag(tag: &str) -> Result<Option<Geometry>, String> {
        let Some(rest) = tag.strip_prefix(TAG_PREFIX) else {
            return Ok(None);
        };
        let Some(rest) = rest.strip_prefix(':') else {
            return Err(format!(
                "tag {tag:?}: expected {TAG_PREFIX}:data=D:table=T:pool=P"
            ));
        };
        let (mut data, mut table, mut pool) = (None, None, None);
        for part in rest.split(':') {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("tag {tag:?}: {part:?} is not key=value"))?;
            let n: u64 = value
                .parse()
                .map_err(|_| format!("tag {tag:?}: {key}={value:?} is not a number"))?;
            match key {
                "data" => data = Some(n),
                "table" => table = Some(n),
                "pool" => pool = Some(n),
                _ => return Err(format!("tag {tag:?}: unknown key {key:?}")),
            }
        }
        let (Some(data_sectors), Some(table_sectors), Some(pool_sectors)) = (data, table, pool)
        else {
            return Err(format!("tag {tag:?}: data, table and pool are all needed"));
        };
        let table1 = data_sectors;
        let pool_start = table1
            .checked_add(table_sectors)
            .ok_or_else(|| format!("tag {tag:?}: sizes overflow"))?;
        let table2 = pool_start
            .checked_add(pool_sectors)
            .ok_or_else(|| format!("tag {tag:?}: sizes overflow"))?;
        table2
            .checked_add(table_sectors)
            .ok_or_else(|| format!("tag {tag:?}: sizes overflow"))?;
        Ok(Some(Geometry {
            data_start: 0,
            data_sectors,
            table1,
            table2,
            table_sectors,
            pool_start,
            pool_sectors,
        }))
    }

    /// Sectors from the area's start to the end of its last part.
    pub fn end(&self) -> u64 {
        [
            self.data_start + self.data_sectors,
            self.table1 + self.table_sectors,
            self.table2 + self.table_sectors,
            self.pool_start + self.pool_sectors,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
    }

    /// This layout moved `by` sectors further into a device.
    pub fn shifted(&self, by: u64) -> Geometry {
        Geometry {
            data_start: self.data_start + by,
            table1: self.table1 + by,
            table2: self.table2 + by,
            pool_start: self.pool_start + by,
            ..*self
        }
    }
}

/// What opening a store found, for status and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Table sectors (by index) whose copy 1 was damaged or behind, and was rewritten.
    pub copy1_rewritten: Vec<u64>,
    /// The same for copy 2.
    pub copy2_rewritten: Vec<u64>,
}

/// The relocation table of one device: both copies read, checked and kept in step.
pub struct BbrStore {
    dev: SharedDevice,
    geometry: Geometry,
    sectors: Vec<TableSector>,
    /// Replacement slots used so far (the table's prefix).
    used: u64,
}

impl fmt::Debug for BbrStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BbrStore")
            .field("device", &self.dev.name())
            .field("geometry", &self.geometry)
            .field("used", &self.used)
            .finish()
    }
}

impl BbrStore {
    /// Writes empty tables (both copies) for `geometry` on `dev`, flushed. Any relocations
    /// recorded there before are forgotten.
    pub fn format(dev: SharedDevice, geometry: Geometry) -> Result<BbrStore, BbrError> {
        geometry.check(dev.name(), dev.size_bytes() / SECTOR)?;
        let empty = TableSector {
            sequence: 1,
            entries: Vec::new(),
        }
        .encode();
        let mut buf = Vec::with_capacity(geometry.table_sectors as usize * TABLE_SECTOR_BYTES);
        for _ in 0..geometry.table_sectors {
            buf.extend_from_slice(&empty);
        }
        dev.write_at(&buf, geometry.table1 * SECTOR)?;
        dev.flush()?;
        dev.write_at(&buf, geometry.table2 * SECTOR)?;
        dev.flush()?;
        Ok(BbrStore {
            dev,
            sectors: vec![
                TableSector {
                    sequence: 1,
                    entries: Vec::new()
                };
                geometry.table_sectors as usize
            ],
            geometry,
            used: 0,
        })
    }

    /// Reads both copies of the table, takes the valid newer copy of each sector, checks
    /// every entry against the geometry, and rewrites copies that were damaged or behind
    /// (only when `repair`; a read-only open leaves them and still reports them).
    pub fn open(
        dev: SharedDevice,
        geometry: Geometry,
        repair: bool,
    ) -> Result<(BbrStore, OpenReport), BbrError> {
        let name = dev.name().to_string();
        geometry.check(&name, dev.size_bytes() / SECTOR)?;
        let n = geometry.table_sectors;
        let read_copy = |at: u64| -> Vec<Result<TableSector, SectorProblem>> {
            // One read per copy; if it fails, sector by sector so one bad sector does not
            // take the others with it.
            let mut all = vec![0u8; n as usize * TABLE_SECTOR_BYTES];
            let whole = dev.read_at(&mut all, at * SECTOR);
            (0..n)
                .map(|i| {
                    let mut one = [0u8; TABLE_SECTOR_BYTES];
                    if whole.is_ok() {
                        let o = i as usize * TABLE_SECTOR_BYTES;
                        one.copy_from_slice(&all[o..o + TABLE_SECTOR_BYTES]);
                    } else if let Err(e) = dev.read_at(&mut one, (at + i) * SECTOR) {
                        return Err(SectorProblem::Unreadable(e.to_string()));
                    }
                    TableSector::decode(&one)
                })
                .collect()
        };
        let copy1 = read_copy(geometry.table1);
        let copy2 = read_copy(geometry.table2);
        let mut report = OpenReport::default();
        let mut sectors = Vec::with_capacity(n as usize);
        for (i, (a, b)) in copy1.into_iter().zip(copy2).enumerate() {
            let i = i as u64;
            let chosen = match (a, b) {
                (Ok(a), Ok(b)) => {
                    if a == b {
                        a
                    } else if newer(b.sequence, a.sequence) {
                        report.copy1_rewritten.push(i);
                        b
                    } else {
                        report.copy2_rewritten.push(i);
                        a
                    }
                }
                (Ok(a), Err(_)) => {
                    report.copy2_rewritten.push(i);
                    a
                }
                (Err(_), Ok(b)) => {
                    report.copy1_rewritten.push(i);
                    b
                }
                (Err(why1), Err(why2)) => {
                    return Err(BbrError::BothCopiesBad {
                        device: name,
                        index: i,
                        copy1: geometry.table1 + i,
                        why1: why1.to_string(),
                        copy2: geometry.table2 + i,
                        why2: why2.to_string(),
                    })
                }
            };
            sectors.push(chosen);
        }
        let used = check_entries(&name, &geometry, &sectors)?;
        let store = BbrStore {
            dev,
            geometry,
            sectors,
            used,
        };
        if repair {
            for &i in &report.copy1_rewritten {
                store.write_copy(geometry.table1, i)?;
            }
            for &i in &report.copy2_rewritten {
                store.write_copy(geometry.table2, i)?;
            }
            if !(report.copy1_rewritten.is_empty() && report.copy2_rewritten.is_empty()) {
                store.dev.flush()?;
            }
        }
        Ok((store, report))
    }

    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// Replacement sectors used (relocations plus skipped replacements).
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Replacement sectors left.
    pub fn free(&self) -> u64 {
        self.geometry.pool_sectors - self.used
    }

    /// The relocations in force: for each bad sector its latest replacement, sorted.
    pub fn relocations(&self) -> Vec<Entry> {
        let mut map = std::collections::BTreeMap::new();
        for e in self.sectors.iter().flat_map(|s| &s.entries) {
            if e.bad != SKIPPED {
                map.insert(e.bad, e.replacement);
            }
        }
        map.into_iter()
            .map(|(bad, replacement)| Entry { bad, replacement })
            .collect()
    }

    /// The next free replacement sector, or the pool-exhausted error for `sector`.
    pub fn next_replacement(&self, sector: u64) -> Result<u64, BbrError> {
        if self.used >= self.geometry.pool_sectors {
            return Err(BbrError::PoolExhausted {
                device: self.dev.name().to_string(),
                sector,
                total: self.geometry.pool_sectors,
            });
        }
        Ok(self.geometry.pool_start + self.used)
    }

    /// Records that the next replacement (from [`Self::next_replacement`]) now holds `bad`'s
    /// data (or, with `bad` = [`SKIPPED`], that it failed), committing the table sector to
    /// copy 1, then copy 2, each flushed. The replacement's data must already be durable.
    /// On failure the in-memory table is left as it was.
    pub fn commit(&mut self, bad: u64) -> Result<Entry, BbrError> {
        let replacement = self.next_replacement(bad)?;
        let index = self.used / ENTRIES_PER_SECTOR as u64;
        let entry = Entry { bad, replacement };
        let old = self.sectors[index as usize].clone();
        {
            let s = &mut self.sectors[index as usize];
            s.entries.push(entry);
            s.sequence = s.sequence.wrapping_add(1);
        }
        let written = self
            .write_copy(self.geometry.table1, index)
            .and_then(|_| self.dev.flush())
            .and_then(|_| self.write_copy(self.geometry.table2, index))
            .and_then(|_| self.dev.flush());
        if let Err(e) = written {
            self.sectors[index as usize] = old;
            return Err(e.into());
        }
        // encode() may have raised the sequence once more to avoid a zero CRC.
        let on_disk = TableSector::decode(&self.sectors[index as usize].encode())
            .map(|s| s.sequence)
            .unwrap_or(self.sectors[index as usize].sequence);
        self.sectors[index as usize].sequence = on_disk;
        self.used += 1;
        Ok(entry)
    }

    fn write_copy(&self, table: u64, index: u64) -> Result<(), BlockError> {
        let buf = self.sectors[index as usize].encode();
        self.dev.write_at(&buf, (table + index) * SECTOR)
    }
}

/// Checks entries against the geometry; returns how many replacements are used.
fn check_entries(name: &str, g: &Geometry, sectors: &[TableSector]) -> Result<u64, BbrError> {
    let mut used = 0u64;
    let mut ended = false;
    for (i, s) in sectors.iter().enumerate() {
        let i = i as u64;
        let bad = |why: String| BbrError::BadEntry {
            device: name.to_string(),
            index: i,
            at: g.table1 + i,
            why,
        };
        if ended && !s.entries.is_empty() {
            return Err(bad(format!(
                "holds {} entries after a table sector that is not full: the pool is used in order",
                s.entries.len()
            )));
        }
        for (j, e) in s.entries.iter().enumerate() {
            let slot = i * ENTRIES_PER_SECTOR as u64 + j as u64;
            if slot >= g.pool_sectors {
                return Err(bad(format!(
                    "entry {j} is replacement {slot}, past the pool's {} sectors",
                    g.pool_sectors
                )));
            }
            if e.replacement != g.pool_start + slot {
                return Err(bad(format!(
                    "entry {j} names replacement sector {}, but its slot is sector {}",
                    e.replacement,
                    g.pool_start + slot
                )));
            }
            if e.bad != SKIPPED && !(g.data_start..g.data_start + g.data_sectors).contains(&e.bad) {
                return Err(bad(format!(
                    "entry {j} relocates sector {}, outside the data area (sectors {}..{})",
                    e.bad,
                    g.data_start,
                    g.data_start + g.data_sectors
                )));
            }
        }
        used += s.entries.len() as u64;
        if s.entries.len() < ENTRIES_PER_SECTOR {
            ended = true;
        }
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tessera_block::MemoryDevice;

    fn geometry() -> Geometry {
        Geometry::inside(0, 4096, 40).unwrap()
    }

    #[test]
    fn sector_round_trips_and_crc_matches_dm_bbr() {
        let s = TableSector {
            sequence: 7,
            entries: vec![Entry {
                bad: 12,
                replacement: 4000,
            }],
        };
        let buf = s.encode();
        assert_eq!(&buf[0..4], b"TrbB");
        assert_eq!(TableSector::decode(&buf).unwrap(), s);
        // The CRC as dm-bbr computes it: table-driven, init !0, no final inversion.
        let mut zeroed = buf;
        zeroed[4..8].fill(0);
        let mut c = 0xFFFF_FFFFu32;
        for &b in zeroed.iter() {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0xEDB8_8320
                } else {
                    c >> 1
                };
            }
        }
        assert_eq!(u32::from_le_bytes(buf[4..8].try_into().unwrap()), c);
        let mut bent = buf;
        bent[100] ^= 1;
        assert!(matches!(
            TableSector::decode(&bent),
            Err(SectorProblem::Crc { .. })
        ));
    }

    #[test]
    fn geometry_inside_and_tag_round_trip() {
        let g = geometry();
        assert_eq!(g.table_sectors, 2);
        assert_eq!(g.data_sectors, (4096 - 44) / 8 * 8);
        g.check("t", 4096).unwrap();
        assert_eq!(Geometry::from_tag(&g.to_tag()).unwrap(), Some(g));
        assert_eq!(Geometry::from_tag("other").unwrap(), None);
        assert!(Geometry::from_tag("tessera_bbr:v1:data=x").is_err());
        let mut overlap = g;
        overlap.table2 = g.table1;
        assert!(overlap.check("t", 4096).is_err());
    }

    #[test]
    fn commit_then_open_sees_entries_and_repairs_a_damaged_copy() {
        let dev: SharedDevice = Arc::new(MemoryDevice::new("m", 4096 * 512));
        let g = geometry();
        let mut store = BbrStore::format(dev.clone(), g).unwrap();
        for bad in 0..33 {
            store.commit(bad).unwrap();
        }
        assert_eq!(store.used(), 33);
        // Damage copy 1's second sector.
        dev.write_at(&[0xAB; 512], (g.table1 + 1) * 512).unwrap();
        let (again, report) = BbrStore::open(dev.clone(), g, true).unwrap();
        assert_eq!(report.copy1_rewritten, vec![1]);
        assert_eq!(again.relocations().len(), 33);
        let (_, clean) = BbrStore::open(dev.clone(), g, true).unwrap();
        assert_eq!(clean, OpenReport::default());
        // Both copies damaged: an error naming both sectors.
        dev.write_at(&[0; 512], g.table1 * 512).unwrap();
        dev.write_at(&[0; 512], g.table2 * 512).unwrap();
        let err = BbrStore::open(dev, g, true).unwrap_err().to_string();
        assert!(err.contains("both copies"), "{err}");
    }

    #[test]
    fn pool_runs_out() {
        let dev: SharedDevice = Arc::new(MemoryDevice::new("m", 4096 * 512));
        let g = geometry();
        let mut store = BbrStore::format(dev, g).unwrap();
        for bad in 0..40 {
            store.commit(bad).unwrap();
        }
        let err = store.commit(41).unwrap_err().to_string();
        assert!(err.contains("used up"), "{err}");
    }
}
