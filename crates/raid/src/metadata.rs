//! What a running raid set records about itself, and the interface to whoever keeps the
//! records: md superblocks and write-intent bitmaps for MD arrays (the engine), or nothing
//! for a bare `raid` row. The set calls it when something changes that must survive a crash:
//! a member failed, a spare took over, recovery got further, writes began or stopped.

use std::fmt;

use tessera_block::badblocks::BadBlocks;

/// A member's part in the set, as the records keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberRole {
    /// Holds `slot`, every sector in sync.
    InSync(usize),
    /// Takes over `slot`; sectors below `done` (per member, from the data offset) are in
    /// sync, the rest are being rebuilt.
    Recovering { slot: usize, done: u64 },
    /// Waits to replace a member that fails.
    Spare,
    /// Failed: no I/O goes to it, and it must not come back without a rebuild.
    Faulty,
}

/// One device of the set, named as the table names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    pub device: String,
    pub role: MemberRole,
}

/// The whole set's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetRecord {
    /// No write is in flight and every completed write reached every member: the
    /// redundancy is consistent. A set that stops while not clean must be resynced.
    pub clean: bool,
    pub members: Vec<MemberRecord>,
}

/// What the records say about the last run, read when the set starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetStart {
    /// The set did not stop clean: its redundancy needs a resync.
    pub dirty: bool,
    /// Members recovering and how far they got, by slot.
    pub recovering: Vec<(usize, u64)>,
    /// With a write-intent bitmap, the regions (of [`SetMetadata::bitmap_region_sectors`]
    /// sync sectors) that may be out of sync; `None` without one (all are, if dirty).
    pub dirty_regions: Option<Vec<u64>>,
}

/// Why the records could not be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataError(pub String);

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MetadataError {}

/// Keeps a set's records. Every method returns only once what it wrote is durable.
pub trait SetMetadata: Send + Sync {
    /// The state the last run left.
    fn start(&self) -> SetStart;
    /// Records the set's state.
    fn record(&self, record: &SetRecord) -> Result<(), MetadataError>;
    /// Sync sectors per write-intent bitmap region, if the set has a bitmap. Sync sectors
    /// are member sectors for raid1/4/5/6 and array sectors for raid10, as md counts them.
    fn bitmap_region_sectors(&self) -> Option<u64> {
        None
    }
    /// Marks bitmap regions dirty before writes to them go ahead. A clean record clears
    /// them all.
    fn mark_regions(&self, regions: &[u64]) -> Result<(), MetadataError> {
        let _ = regions;
        Ok(())
    }
    /// The bad-block table of `device` (sectors of the whole device), if it keeps a
    /// bad-block log; `None` if it keeps none, and then a write error fails it.
    fn bad_blocks(&self, device: &str) -> Option<BadBlocks> {
        let _ = device;
        None
    }
    /// Makes `table` the durable bad-block log of `device`. An error fails the device.
    fn record_bad_blocks(&self, device: &str, table: &BadBlocks) -> Result<(), MetadataError> {
        let _ = table;
        Err(MetadataError(format!("{device} keeps no bad-block log")))
    }
}
