//! dm-thin's pool metadata, as the kernel's persistent-data library (`drivers/md/persistent-data`,
//! `drivers/md/dm-thin-metadata.c`) keeps it on a thin pool's metadata device, so a pool moves
//! between tessera, the kernel and lvm2 either way and `thin_check` passes on what tessera writes.
//!
//! Blocks are 4096 bytes, little endian, each starting with its checksum
//! (`crc32c(block[4..]) ^ 0xffffffff ^ salt`, the salt per block type). Block 0 is the superblock;
//! it holds the roots of the two-level mapping tree (device id -> virtual block -> data block and
//! time), the device-details tree, and the data and metadata space maps (reference counts in
//! 2-bit bitmaps, overflow counts in a btree).
//!
//! Writing is transactional as in the kernel: every block the last committed superblock
//! reaches is shadowed (copied to a newly allocated block) before it changes, blocks freed in a
//! transaction are not reused before it commits, and a commit flushes every new block, then
//! writes the superblock and flushes again. A power cut leaves the old or the new transaction.
//!
//! [`PoolMetadata`] is one pool's metadata, open for reading and changing. Lookups take
//! `&self` and may run on many threads at once; changes take `&mut self`.

use thiserror::Error;

use tessera_block::{BlockError, SharedDevice};

/// Bytes in a metadata block.
pub const METADATA_BLOCK_BYTES: usize = 4096;
/// The superblock's magic number.
pub const SUPERBLOCK_MAGIC: u64 = 27_022_010;
/// The metadata format version the kernel writes today.
pub const METADATA_VERSION: u32 = 2;
/// The most metadata blocks a pool can use: one index block of 255 bitmaps of 16320 blocks.
pub const MAX_METADATA_BLOCKS: u64 = 255 * 16_320;
/// The data block sizes the kernel takes, in sectors: 64 KiB to 1 GiB, multiples of 64 KiB.
pub const MIN_DATA_BLOCK_SECTORS: u32 = 128;
pub const MAX_DATA_BLOCK_SECTORS: u32 = 2_097_152;
/// The largest thin device id (24 bits).
pub const MAX_DEV_ID: u32 = (1 << 24) - 1;

#[derive(Debug, Error)]
pub enum ThinMetadataError {
    #[error(transparent)]
    Block(#[from] BlockError),
    /// A block whose checksum does not match: names the device, the block and what it was
    /// read as (superblock, btree node, bitmap, index).
    #[error("{device}: metadata block {block} ({kind}) has a bad checksum (found {found:#010x}, expected {expected:#010x})")]
    BadChecksum {
        device: String,
        block: u64,
        kind: &'static str,
        found: u32,
        expected: u32,
    },
    /// Anything else wrong with what was read: names the device, the block and the fault.
    #[error("{device}: metadata block {block}: {why}")]
    Corrupt {
        device: String,
        block: u64,
        why: String,
    },
    #[error("{device}: not thin pool metadata (superblock magic {found}, expected {SUPERBLOCK_MAGIC})")]
    BadMagic { device: String, found: u64 },
    #[error("{device}: {why}")]
    Invalid { device: String, why: String },
    #[error("{device}: thin device {dev_id} does not exist")]
    NoSuchDevice { device: String, dev_id: u32 },
    #[error("{device}: thin device {dev_id} exists already")]
    DeviceExists { device: String, dev_id: u32 },
    #[error("{device}: the pool's transaction id is {found}, not {expected}")]
    TransactionMismatch {
        device: String,
        expected: u64,
        found: u64,
    },
    #[error("{device}: the pool is out of data space ({blocks} data blocks, all in use)")]
    NoDataSpace { device: String, blocks: u64 },
    #[error("{device}: the pool is out of metadata space ({blocks} metadata blocks, all in use)")]
    NoMetadataSpace { device: String, blocks: u64 },
    #[error("{device}: {why}")]
    Refused { device: String, why: String },
}

pub type Result<T> = std::result::Result<T, ThinMetadataError>;

/// A thin device's entry in the device-details tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceDetails {
    pub mapped_blocks: u64,
    pub transaction_id: u64,
    pub creation_time: u32,
    pub snapshotted_time: u32,
}

/// Where a virtual block of a thin device lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub data_block: u64,
    /// The pool's time when the block was mapped.
    pub time: u32,
}

/// A lookup's answer: the mapping and whether the block may be shared with a snapshot
/// (mapped before the device was last snapshotted), so a write must break the sharing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lookup {
    pub mapping: Mapping,
    pub shared: bool,
}

/// What a pool's status line and `lv list` report, as of the last change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolInfo {
    pub transaction_id: u64,
    pub time: u32,
    pub data_block_sectors: u32,
    pub nr_data_blocks: u64,
    pub free_data_blocks: u64,
    pub nr_metadata_blocks: u64,
    pub free_metadata_blocks: u64,
    /// The held root (`reserve_metadata_snap`), if there is one.
    pub metadata_snap: Option<u64>,
    /// The superblock's NEEDS_CHECK flag.
    pub needs_check: bool,
}

/// One pool's metadata, open on its metadata device.
pub struct PoolMetadata {
    _device: SharedDevice,
}

impl PoolMetadata {
    /// Writes new, empty metadata (no thin devices, transaction 0) for a pool of
    /// `nr_data_blocks` blocks of `data_block_sectors`, using the whole device, and commits it.
    pub fn format(device: SharedDevice, data_block_sectors: u32, nr_data_blocks: u64) -> Result<Self> {
        let _ = (device, data_block_sectors, nr_data_blocks);
        todo!("thin metadata: format")
    }

    /// Opens the metadata on `device`: the superblock checked (checksum, magic, version,
    /// block number); blocks are read and checked as they are used.
    pub fn open(device: SharedDevice) -> Result<Self> {
        let _ = device;
        todo!("thin metadata: open")
    }

    /// The metadata device.
    pub fn device(&self) -> &SharedDevice {
        &self._device
    }

    pub fn info(&self) -> PoolInfo {
        todo!("thin metadata: info")
    }

    /// The thin devices, by id, with their details.
    pub fn devices(&self) -> Result<Vec<(u32, DeviceDetails)>> {
        todo!("thin metadata: devices")
    }

    /// Where `vblock` of thin device `dev_id` lives, if it is mapped.
    pub fn lookup(&self, dev_id: u32, vblock: u64) -> Result<Option<Lookup>> {
        let _ = (dev_id, vblock);
        todo!("thin metadata: lookup")
    }

    /// Every mapping of `dev_id` with `begin <= vblock < end`, in order.
    pub fn mappings(&self, dev_id: u32, begin: u64, end: u64) -> Result<Vec<(u64, Mapping)>> {
        let _ = (dev_id, begin, end);
        todo!("thin metadata: mappings")
    }

    /// The kernel's `create_thin`: a new, empty thin device.
    pub fn create_thin(&mut self, dev_id: u32) -> Result<()> {
        let _ = dev_id;
        todo!("thin metadata: create_thin")
    }

    /// The kernel's `create_snap`: a new thin device sharing every block of `origin` (the
    /// origin's mapping subtree referenced once more, the pool's time advanced).
    pub fn create_snap(&mut self, dev_id: u32, origin: u32) -> Result<()> {
        let _ = (dev_id, origin);
        todo!("thin metadata: create_snap")
    }

    /// The kernel's `delete`: the device, its mappings and its references to data blocks.
    pub fn delete(&mut self, dev_id: u32) -> Result<()> {
        let _ = dev_id;
        todo!("thin metadata: delete")
    }

    /// The kernel's `set_transaction_id <current> <new>`.
    pub fn set_transaction_id(&mut self, current: u64, new: u64) -> Result<()> {
        let _ = (current, new);
        todo!("thin metadata: set_transaction_id")
    }

    /// The kernel's `reserve_metadata_snap`: a copy of the superblock held for readers
    /// (`thin_dump -m`).
    pub fn reserve_metadata_snap(&mut self) -> Result<()> {
        todo!("thin metadata: reserve_metadata_snap")
    }

    /// The kernel's `release_metadata_snap`.
    pub fn release_metadata_snap(&mut self) -> Result<()> {
        todo!("thin metadata: release_metadata_snap")
    }

    /// Allocates a free data block (reference count 1), not one freed since the last commit.
    /// [`ThinMetadataError::NoDataSpace`] when there is none.
    pub fn alloc_data_block(&mut self) -> Result<u64> {
        todo!("thin metadata: alloc_data_block")
    }

    /// Maps `vblock` of `dev_id` to `data_block`, whose reference (from
    /// [`Self::alloc_data_block`]) the mapping takes over; a block mapped there before loses
    /// that reference.
    pub fn insert(&mut self, dev_id: u32, vblock: u64, data_block: u64) -> Result<()> {
        let _ = (dev_id, vblock, data_block);
        todo!("thin metadata: insert")
    }

    /// Unmaps `begin <= vblock < end` of `dev_id`, dropping the data blocks' references.
    /// Returns the data blocks whose count fell to zero (for discard passdown).
    pub fn remove_range(&mut self, dev_id: u32, begin: u64, end: u64) -> Result<Vec<u64>> {
        let _ = (dev_id, begin, end);
        todo!("thin metadata: remove_range")
    }

    /// A data block's reference count.
    pub fn data_ref_count(&self, data_block: u64) -> Result<u32> {
        let _ = data_block;
        todo!("thin metadata: data_ref_count")
    }

    /// Grows the data space map to `nr_data_blocks` (the pool's data device grew).
    pub fn resize_data(&mut self, nr_data_blocks: u64) -> Result<()> {
        let _ = nr_data_blocks;
        todo!("thin metadata: resize_data")
    }

    /// Grows the metadata space map to the metadata device's size (it grew).
    pub fn resize_metadata(&mut self) -> Result<()> {
        todo!("thin metadata: resize_metadata")
    }

    /// Sets the superblock's NEEDS_CHECK flag, committed at once.
    pub fn set_needs_check(&mut self) -> Result<()> {
        todo!("thin metadata: set_needs_check")
    }

    /// Makes every change since the last commit durable: new blocks written and flushed,
    /// then the superblock written and flushed.
    pub fn commit(&mut self) -> Result<()> {
        todo!("thin metadata: commit")
    }

    /// Drops every change since the last commit.
    pub fn abort(&mut self) -> Result<()> {
        todo!("thin metadata: abort")
    }
}
