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
//! `&self` and may run on many threads at once; changes take `&mut self`. A change or commit
//! that fails (damaged metadata, no metadata space, an I/O error) may leave the open
//! transaction half done: call [`PoolMetadata::abort`] before anything else, as the kernel
//! does. `NoDataSpace` from `alloc_data_block` and the "refused" errors change nothing.
//!
//! [`check`] checks the metadata on a device as `thin_check` does.

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use tessera_block::{BlockError, SharedDevice};

mod btree;
mod check;
mod checksum;
mod space_map;
mod store;
mod superblock;
mod tm;

pub use check::{check, CheckReport, Problem};

use btree::{DETAILS, SUBTREE, TOP_LEVEL};
use checksum::BlockKind;
use superblock::{Superblock, METADATA_BLOCK_SECTORS, NEEDS_CHECK, SUPERBLOCK_LOCATION};
use tm::{Core, MAX_DATA_BLOCKS};

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
/// A mapping keeps the pool's time in its low 24 bits, below the data block number.
pub const MAX_TIME: u32 = (1 << 24) - 1;

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
    #[error(
        "{device}: not thin pool metadata (superblock magic {found}, expected {SUPERBLOCK_MAGIC})"
    )]
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
    /// Data blocks that can be allocated before the next commit (free now and at the last
    /// commit), as the kernel counts them.
    pub free_data_blocks: u64,
    pub nr_metadata_blocks: u64,
    /// Metadata blocks that can be allocated before the next commit; see
    /// [`PoolMetadata::metadata_blocks_to_commit`] for what the commit itself needs.
    pub free_metadata_blocks: u64,
    /// The held root (`reserve_metadata_snap`), if there is one.
    pub metadata_snap: Option<u64>,
    /// The superblock's NEEDS_CHECK flag.
    pub needs_check: bool,
}

/// One pool's metadata, open on its metadata device.
pub struct PoolMetadata {
    core: Core,
    /// The superblock as the next commit writes it.
    sb: Superblock,
    details: BTreeMap<u32, DeviceDetails>,
    /// Devices whose details the next commit writes.
    changed_details: BTreeSet<u32>,
}

/// Bytes of a device-details value.
const DETAILS_BYTES: usize = 24;

impl DeviceDetails {
    fn parse(b: &[u8]) -> DeviceDetails {
        DeviceDetails {
            mapped_blocks: btree::le64(b, 0),
            transaction_id: btree::le64(b, 8),
            creation_time: btree::le32(b, 16),
            snapshotted_time: btree::le32(b, 20),
        }
    }

    fn to_bytes(self) -> [u8; DETAILS_BYTES] {
        let mut b = [0u8; DETAILS_BYTES];
        b[0..8].copy_from_slice(&self.mapped_blocks.to_le_bytes());
        b[8..16].copy_from_slice(&self.transaction_id.to_le_bytes());
        b[16..20].copy_from_slice(&self.creation_time.to_le_bytes());
        b[20..24].copy_from_slice(&self.snapshotted_time.to_le_bytes());
        b
    }
}

/// Reads and checks the superblock at `location` (block 0, or a held copy).
fn read_superblock(device: &SharedDevice, location: u64) -> Result<Superblock> {
    let name = device.name().to_string();
    let size = device.size_bytes();
    let end = location
        .checked_add(1)
        .and_then(|n| n.checked_mul(METADATA_BLOCK_BYTES as u64));
    if end.is_none_or(|end| end > size) {
        return Err(ThinMetadataError::Invalid {
            device: name,
            why: format!(
                "superblock at block {location} is past the end of the device ({size} bytes)"
            ),
        });
    }
    let mut buf = vec![0u8; METADATA_BLOCK_BYTES];
    device.read_at(&mut buf, location * METADATA_BLOCK_BYTES as u64)?;
    let sb = Superblock::parse(&buf);
    if sb.magic != SUPERBLOCK_MAGIC {
        return Err(ThinMetadataError::BadMagic {
            device: name,
            found: sb.magic,
        });
    }
    store::validate(&name, location, BlockKind::Superblock, &buf)?;
    if let Some(why) = sb.field_problem() {
        return Err(ThinMetadataError::Corrupt {
            device: name,
            block: location,
            why,
        });
    }
    Ok(sb)
}

impl PoolMetadata {
    /// Writes new, empty metadata (no thin devices, transaction 0) for a pool of
    /// `nr_data_blocks` blocks of `data_block_sectors`, using the whole device, and commits it.
    pub fn format(
        device: SharedDevice,
        data_block_sectors: u32,
        nr_data_blocks: u64,
    ) -> Result<Self> {
        let name = device.name().to_string();
        let invalid = |why: String| ThinMetadataError::Invalid {
            device: name.clone(),
            why,
        };
        if !(MIN_DATA_BLOCK_SECTORS..=MAX_DATA_BLOCK_SECTORS).contains(&data_block_sectors)
            || data_block_sectors % MIN_DATA_BLOCK_SECTORS != 0
        {
            return Err(invalid(format!(
                "data block size {data_block_sectors} sectors is not a multiple of {MIN_DATA_BLOCK_SECTORS} between {MIN_DATA_BLOCK_SECTORS} and {MAX_DATA_BLOCK_SECTORS}"
            )));
        }
        if nr_data_blocks == 0 || nr_data_blocks > MAX_DATA_BLOCKS {
            return Err(invalid(format!("a pool of {nr_data_blocks} data blocks")));
        }
        let nr_meta_blocks =
            (device.size_bytes() / METADATA_BLOCK_BYTES as u64).min(MAX_METADATA_BLOCKS);
        if nr_meta_blocks < 16 {
            return Err(invalid(format!(
                "the metadata device holds {nr_meta_blocks} blocks of {METADATA_BLOCK_BYTES} bytes; at least 16 are needed"
            )));
        }
        let (core, [mapping_root, details_root]) =
            Core::new_empty(device, nr_meta_blocks, nr_data_blocks)?;
        let sb = Superblock {
            version: METADATA_VERSION,
            magic: SUPERBLOCK_MAGIC,
            data_mapping_root: mapping_root,
            device_details_root: details_root,
            data_block_size: data_block_sectors,
            metadata_block_size: METADATA_BLOCK_SECTORS,
            metadata_nr_blocks: nr_meta_blocks,
            ..Default::default()
        };
        let mut pool = PoolMetadata {
            core,
            sb,
            details: BTreeMap::new(),
            changed_details: BTreeSet::new(),
        };
        pool.commit()?;
        Ok(pool)
    }

    /// Opens the metadata on `device`: the superblock checked (checksum, magic, version,
    /// block number); blocks are read and checked as they are used.
    pub fn open(device: SharedDevice) -> Result<Self> {
        Self::open_with_cache(device, store::DEFAULT_CACHE_BLOCKS)
    }

    /// [`Self::open`] with a cache of at most `cache_blocks` metadata blocks.
    pub fn open_with_cache(device: SharedDevice, cache_blocks: usize) -> Result<Self> {
        let sb = read_superblock(&device, SUPERBLOCK_LOCATION)?;
        let core = Core::open(device, &sb, cache_blocks)?;
        let mut details = BTreeMap::new();
        let mut bad_key = None;
        core.store.walk(
            sb.device_details_root,
            &DETAILS,
            0,
            u64::MAX,
            &mut |key, value| {
                match u32::try_from(key) {
                    Ok(dev) if dev <= MAX_DEV_ID => {
                        details.insert(dev, DeviceDetails::parse(value));
                    }
                    _ => bad_key = Some(key),
                }
                Ok(())
            },
        )?;
        if let Some(key) = bad_key {
            return Err(core.store.corrupt(
                sb.device_details_root,
                format!("device details tree has device id {key}, past {MAX_DEV_ID}"),
            ));
        }
        Ok(PoolMetadata {
            core,
            sb,
            details,
            changed_details: BTreeSet::new(),
        })
    }

    /// The metadata device.
    pub fn device(&self) -> &SharedDevice {
        &self.core.store.device
    }

    fn name(&self) -> String {
        self.core.store.name.clone()
    }

    pub fn info(&self) -> PoolInfo {
        PoolInfo {
            transaction_id: self.sb.transaction_id,
            time: self.sb.time,
            data_block_sectors: self.sb.data_block_size,
            nr_data_blocks: self.core.data.nr_blocks,
            free_data_blocks: self.core.data.allocatable(),
            nr_metadata_blocks: self.core.meta.nr_blocks,
            free_metadata_blocks: self.core.meta.allocatable(),
            metadata_snap: (self.sb.metadata_snap != 0).then_some(self.sb.metadata_snap),
            needs_check: self.sb.flags & NEEDS_CHECK != 0,
        }
    }

    /// At most how many metadata blocks the next commit allocates (to shadow space map
    /// bitmaps, index and overflow entries, device details), so a pool can commit while it
    /// still can: compare with `info().free_metadata_blocks`.
    pub fn metadata_blocks_to_commit(&self) -> u64 {
        let depth = |root: u64| -> u64 {
            let mut d = 1;
            let mut block = root;
            while d < btree::MAX_DEPTH as u64 {
                let Ok(buf) = self.core.store.read(block, BlockKind::Node) else {
                    break;
                };
                let node = btree::NodeView { buf: &buf };
                if node.is_leaf() || node.len() == 0 {
                    break;
                }
                block = node.value_u64(0);
                d += 1;
            }
            d
        };
        // A path of changed nodes per change, plus a split per level and a new root.
        let tree = |changes: u64, root: u64| {
            if changes == 0 {
                0
            } else {
                changes.saturating_mul(depth(root) * 2 + 1)
            }
        };
        let data_bitmaps = self.core.data.dirty_bitmaps.len() as u64;
        let details = tree(
            self.changed_details.len() as u64,
            self.sb.device_details_root,
        );
        let data_index = tree(data_bitmaps, self.core.data_index_root);
        let data_overflow = tree(
            self.core.data.dirty_overflow.len() as u64,
            self.core.data_rc_root,
        );
        let before_metadata = data_bitmaps + details + data_index + data_overflow;
        // Every metadata bitmap may change, and the index block moves.
        let meta_bitmaps = self.core.meta.nr_bitmaps();
        let meta_overflow = tree(
            self.core.meta.dirty_overflow.len() as u64,
            self.core.meta_rc_root,
        );
        before_metadata + meta_bitmaps + 1 + meta_overflow
    }

    /// The thin devices, by id, with their details.
    pub fn devices(&self) -> Result<Vec<(u32, DeviceDetails)>> {
        Ok(self.details.iter().map(|(&id, &d)| (id, d)).collect())
    }

    /// One thin device's details, including changes not yet committed.
    pub fn device_details(&self, dev_id: u32) -> Result<Option<DeviceDetails>> {
        Ok(self.details.get(&dev_id).copied())
    }

    /// The highest mapped virtual block of `dev_id` (the kernel's
    /// `dm_thin_get_highest_mapped_block`), found down the right edge of its tree.
    pub fn highest_mapped_block(&self, dev_id: u32) -> Result<Option<u64>> {
        let root = self.subtree_root(dev_id)?;
        self.core.store.highest_key(root, &SUBTREE, 0)
    }

    /// The root of `dev_id`'s mapping subtree.
    fn subtree_root(&self, dev_id: u32) -> Result<u64> {
        if !self.details.contains_key(&dev_id) {
            return Err(ThinMetadataError::NoSuchDevice {
                device: self.name(),
                dev_id,
            });
        }
        self.core
            .store
            .find_u64(self.sb.data_mapping_root, &TOP_LEVEL, u64::from(dev_id))?
            .ok_or_else(|| {
                self.core.store.corrupt(
                    self.sb.data_mapping_root,
                    format!("thin device {dev_id} has details but no mapping tree"),
                )
            })
    }

    /// Where `vblock` of thin device `dev_id` lives, if it is mapped.
    pub fn lookup(&self, dev_id: u32, vblock: u64) -> Result<Option<Lookup>> {
        let root = self.subtree_root(dev_id)?;
        let Some(value) = self.core.store.find_u64(root, &SUBTREE, vblock)? else {
            return Ok(None);
        };
        let mapping = unpack_mapping(value);
        let snapshotted = self.details.get(&dev_id).map_or(0, |d| d.snapshotted_time);
        Ok(Some(Lookup {
            mapping,
            shared: snapshotted > mapping.time,
        }))
    }

    /// Every mapping of `dev_id` with `begin <= vblock < end`, in order.
    pub fn mappings(&self, dev_id: u32, begin: u64, end: u64) -> Result<Vec<(u64, Mapping)>> {
        let root = self.subtree_root(dev_id)?;
        let mut out = Vec::new();
        self.core
            .store
            .walk(root, &SUBTREE, begin, end, &mut |key, value| {
                out.push((key, unpack_mapping(btree::le64(value, 0))));
                Ok(())
            })?;
        Ok(out)
    }

    /// Inserts or replaces `dev_id`'s subtree root in the top level of the mapping tree.
    fn set_subtree_root(&mut self, dev_id: u32, root: u64) -> Result<()> {
        let (new_root, _) = self.core.insert(
            self.sb.data_mapping_root,
            &TOP_LEVEL,
            u64::from(dev_id),
            &root.to_le_bytes(),
        )?;
        self.sb.data_mapping_root = new_root;
        Ok(())
    }

    fn check_new_device(&self, dev_id: u32) -> Result<()> {
        if dev_id > MAX_DEV_ID {
            return Err(ThinMetadataError::Refused {
                device: self.name(),
                why: format!("thin device id {dev_id} is past {MAX_DEV_ID}"),
            });
        }
        let in_tree = self
            .core
            .store
            .find_u64(self.sb.data_mapping_root, &TOP_LEVEL, u64::from(dev_id))?
            .is_some();
        if self.details.contains_key(&dev_id) || in_tree {
            return Err(ThinMetadataError::DeviceExists {
                device: self.name(),
                dev_id,
            });
        }
        Ok(())
    }

    /// The kernel's `create_thin`: a new, empty thin device.
    pub fn create_thin(&mut self, dev_id: u32) -> Result<()> {
        self.check_new_device(dev_id)?;
        let root = self.core.new_empty_tree(&SUBTREE)?;
        self.set_subtree_root(dev_id, root)?;
        self.details.insert(
            dev_id,
            DeviceDetails {
                mapped_blocks: 0,
                transaction_id: self.sb.transaction_id,
                creation_time: self.sb.time,
                snapshotted_time: self.sb.time,
            },
        );
        self.changed_details.insert(dev_id);
        Ok(())
    }

    /// The kernel's `create_snap`: a new thin device sharing every block of `origin` (the
    /// origin's mapping subtree referenced once more, the pool's time advanced).
    pub fn create_snap(&mut self, dev_id: u32, origin: u32) -> Result<()> {
        self.check_new_device(dev_id)?;
        let origin_root = self.subtree_root(origin)?;
        let time = self
            .sb
            .time
            .checked_add(1)
            .filter(|&t| t <= MAX_TIME)
            .ok_or_else(|| ThinMetadataError::Refused {
                device: self.name(),
                why: "the pool's time has run out (24 bits)".into(),
            })?;
        self.core.meta_inc(origin_root)?;
        self.set_subtree_root(dev_id, origin_root)?;
        self.sb.time = time;
        let origin_details = self.details.entry(origin).or_default();
        origin_details.snapshotted_time = time;
        let mapped_blocks = origin_details.mapped_blocks;
        self.details.insert(
            dev_id,
            DeviceDetails {
                mapped_blocks,
                transaction_id: self.sb.transaction_id,
                creation_time: time,
                snapshotted_time: time,
            },
        );
        self.changed_details.insert(origin);
        self.changed_details.insert(dev_id);
        Ok(())
    }

    /// The kernel's `delete`: the device, its mappings and its references to data blocks.
    pub fn delete(&mut self, dev_id: u32) -> Result<()> {
        if !self.details.contains_key(&dev_id) {
            return Err(ThinMetadataError::NoSuchDevice {
                device: self.name(),
                dev_id,
            });
        }
        if let Some((root, _)) =
            self.core
                .remove(self.sb.device_details_root, &DETAILS, u64::from(dev_id))?
        {
            self.sb.device_details_root = root;
        }
        if let Some((root, old)) =
            self.core
                .remove(self.sb.data_mapping_root, &TOP_LEVEL, u64::from(dev_id))?
        {
            self.sb.data_mapping_root = root;
            self.core.dec_tree(btree::le64(&old, 0), &SUBTREE, 0)?;
        }
        self.details.remove(&dev_id);
        self.changed_details.remove(&dev_id);
        Ok(())
    }

    /// The kernel's `set_transaction_id <current> <new>`.
    pub fn set_transaction_id(&mut self, current: u64, new: u64) -> Result<()> {
        if self.sb.transaction_id != current {
            return Err(ThinMetadataError::TransactionMismatch {
                device: self.name(),
                expected: current,
                found: self.sb.transaction_id,
            });
        }
        self.sb.transaction_id = new;
        Ok(())
    }

    /// The kernel's `reserve_metadata_snap`: a copy of the superblock held for readers
    /// (`thin_dump -m`).
    pub fn reserve_metadata_snap(&mut self) -> Result<()> {
        if self.sb.metadata_snap != 0 {
            return Err(ThinMetadataError::Refused {
                device: self.name(),
                why: format!(
                    "a metadata snapshot is held already (block {})",
                    self.sb.metadata_snap
                ),
            });
        }
        // The copy must name roots that are on disk.
        self.commit()?;
        let held = self.core.alloc_meta()?;
        let copy = Superblock {
            data_sm: Default::default(),
            metadata_sm: Default::default(),
            metadata_snap: 0,
            ..self.sb
        };
        self.core.meta_inc(self.sb.data_mapping_root)?;
        self.core.meta_inc(self.sb.device_details_root)?;
        self.core
            .store
            .write(held, BlockKind::Superblock, copy.to_block(held));
        self.sb.metadata_snap = held;
        Ok(())
    }

    /// The kernel's `release_metadata_snap`.
    pub fn release_metadata_snap(&mut self) -> Result<()> {
        let held = self.sb.metadata_snap;
        if held == 0 {
            return Err(ThinMetadataError::Refused {
                device: self.name(),
                why: "no metadata snapshot is held".into(),
            });
        }
        let copy = match self.core.store.dirty.get(&held) {
            Some(d) => Superblock::parse(&d.buf),
            None => read_superblock(&self.core.store.device, held)?,
        };
        self.sb.metadata_snap = 0;
        self.core.dec_tree(copy.data_mapping_root, &TOP_LEVEL, 0)?;
        self.core.dec_tree(copy.device_details_root, &DETAILS, 0)?;
        self.core.meta_dec(held)
    }

    /// Allocates a free data block (reference count 1), not one freed since the last commit.
    /// [`ThinMetadataError::NoDataSpace`] when there is none.
    pub fn alloc_data_block(&mut self) -> Result<u64> {
        let b = self
            .core
            .data
            .find_free()
            .ok_or_else(|| ThinMetadataError::NoDataSpace {
                device: self.name(),
                blocks: self.core.data.nr_blocks,
            })?;
        self.core.data.set(b, 1);
        Ok(b)
    }

    /// Drops the reference [`Self::alloc_data_block`] gave, when the block will not be
    /// mapped after all (the data write failed).
    pub fn free_data_block(&mut self, data_block: u64) -> Result<()> {
        if data_block >= self.core.data.nr_blocks || self.core.data.get(data_block) == 0 {
            return Err(ThinMetadataError::Refused {
                device: self.name(),
                why: format!("data block {data_block} is not allocated"),
            });
        }
        self.core.data_dec(data_block)?;
        Ok(())
    }

    /// Maps `vblock` of `dev_id` to `data_block`, whose reference (from
    /// [`Self::alloc_data_block`]) the mapping takes over; a block mapped there before loses
    /// that reference.
    pub fn insert(&mut self, dev_id: u32, vblock: u64, data_block: u64) -> Result<()> {
        let root = self.subtree_root(dev_id)?;
        if data_block >= self.core.data.nr_blocks {
            return Err(ThinMetadataError::Refused {
                device: self.name(),
                why: format!(
                    "data block {data_block} is past the end of the pool ({} blocks)",
                    self.core.data.nr_blocks
                ),
            });
        }
        if self.core.data.get(data_block) == 0 {
            return Err(ThinMetadataError::Refused {
                device: self.name(),
                why: format!("data block {data_block} is not allocated"),
            });
        }
        if self.sb.time > MAX_TIME {
            // Or-ed into the mapping, a wider time would change the block number it records.
            return Err(ThinMetadataError::Invalid {
                device: self.name(),
                why: format!(
                    "the superblock's time {} is past the 24 bits a mapping records",
                    self.sb.time
                ),
            });
        }
        let value = (data_block << 24) | u64::from(self.sb.time);
        let (new_root, old) = self
            .core
            .insert(root, &SUBTREE, vblock, &value.to_le_bytes())?;
        match old {
            Some(old) => {
                let old_block = btree::le64(&old, 0) >> 24;
                if old_block != data_block {
                    self.core.data_dec(old_block)?;
                }
            }
            None => {
                if let Some(d) = self.details.get_mut(&dev_id) {
                    d.mapped_blocks = d.mapped_blocks.saturating_add(1);
                }
            }
        }
        self.changed_details.insert(dev_id);
        if new_root != root {
            self.set_subtree_root(dev_id, new_root)?;
        }
        Ok(())
    }

    /// Unmaps `begin <= vblock < end` of `dev_id`, dropping the data blocks' references.
    /// Returns the data blocks whose count fell to zero (for discard passdown).
    pub fn remove_range(&mut self, dev_id: u32, begin: u64, end: u64) -> Result<Vec<u64>> {
        let mut root = self.subtree_root(dev_id)?;
        let start_root = root;
        let mapped = self.mappings(dev_id, begin, end)?;
        let mut freed = Vec::new();
        for (vblock, _) in &mapped {
            let Some((new_root, old)) = self.core.remove(root, &SUBTREE, *vblock)? else {
                continue;
            };
            root = new_root;
            let data_block = btree::le64(&old, 0) >> 24;
            if self.core.data_dec(data_block)? {
                freed.push(data_block);
            }
            if let Some(d) = self.details.get_mut(&dev_id) {
                d.mapped_blocks = d.mapped_blocks.saturating_sub(1);
            }
        }
        if !mapped.is_empty() {
            self.changed_details.insert(dev_id);
        }
        if root != start_root {
            self.set_subtree_root(dev_id, root)?;
        }
        Ok(freed)
    }

    /// A data block's reference count.
    pub fn data_ref_count(&self, data_block: u64) -> Result<u32> {
        if data_block >= self.core.data.nr_blocks {
            return Err(ThinMetadataError::Invalid {
                device: self.name(),
                why: format!(
                    "data block {data_block} is past the end of the pool ({} blocks)",
                    self.core.data.nr_blocks
                ),
            });
        }
        Ok(self.core.data.get(data_block))
    }

    /// Grows the data space map to `nr_data_blocks` (the pool's data device grew).
    pub fn resize_data(&mut self, nr_data_blocks: u64) -> Result<()> {
        let current = self.core.data.nr_blocks;
        if nr_data_blocks < current {
            return Err(ThinMetadataError::Refused {
                device: self.name(),
                why: format!(
                    "the pool's data cannot shrink from {current} to {nr_data_blocks} blocks"
                ),
            });
        }
        if nr_data_blocks > MAX_DATA_BLOCKS {
            return Err(ThinMetadataError::Refused {
                device: self.name(),
                why: format!("a pool of {nr_data_blocks} data blocks is past the {MAX_DATA_BLOCKS} a mapping can address"),
            });
        }
        self.core.data.grow(nr_data_blocks);
        Ok(())
    }

    /// Grows the metadata space map to the metadata device's size (it grew).
    pub fn resize_metadata(&mut self) -> Result<()> {
        let blocks = (self.core.store.device.size_bytes() / METADATA_BLOCK_BYTES as u64)
            .min(MAX_METADATA_BLOCKS);
        if blocks < self.core.meta.nr_blocks {
            return Err(ThinMetadataError::Refused {
                device: self.name(),
                why: format!(
                    "the metadata device shrank below the {} blocks in use",
                    self.core.meta.nr_blocks
                ),
            });
        }
        self.core.meta.grow(blocks);
        self.core.store.nr_blocks = blocks;
        Ok(())
    }

    /// Sets the superblock's NEEDS_CHECK flag, committed at once: the last committed
    /// superblock is rewritten with the flag, so changes not yet committed (perhaps half done
    /// after an error) are not.
    pub fn set_needs_check(&mut self) -> Result<()> {
        let device = self.core.store.device.clone();
        let mut committed = read_superblock(&device, SUPERBLOCK_LOCATION)?;
        committed.flags |= NEEDS_CHECK;
        let mut block = committed.to_block(SUPERBLOCK_LOCATION);
        checksum::seal(&mut block, BlockKind::Superblock);
        device.write_at(&block, 0)?;
        device.flush()?;
        self.sb.flags |= NEEDS_CHECK;
        Ok(())
    }

    /// Makes every change since the last commit durable: new blocks written and flushed,
    /// then the superblock written and flushed.
    pub fn commit(&mut self) -> Result<()> {
        for dev_id in std::mem::take(&mut self.changed_details) {
            let Some(details) = self.details.get(&dev_id).copied() else {
                continue;
            };
            let (root, _) = self.core.insert(
                self.sb.device_details_root,
                &DETAILS,
                u64::from(dev_id),
                &details.to_bytes(),
            )?;
            self.sb.device_details_root = root;
        }
        self.core.commit(&mut self.sb)
    }

    /// Drops every change since the last commit.
    pub fn abort(&mut self) -> Result<()> {
        let device = self.core.store.device.clone();
        *self = Self::open_with_cache(device, self.core.store.cache_blocks)?;
        Ok(())
    }
}

fn unpack_mapping(value: u64) -> Mapping {
    Mapping {
        data_block: value >> 24,
        time: (value & 0xff_ffff) as u32,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tessera_block::MemoryDevice;

    use super::*;

    #[test]
    fn pool_metadata_is_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<PoolMetadata>();
    }

    /// Random transactions: the commit never allocates more metadata blocks than
    /// `metadata_blocks_to_commit` said, and `free_metadata_blocks` never counts a block the
    /// transaction cannot have.
    #[test]
    fn commit_needs_no_more_than_estimated() {
        let dev = Arc::new(MemoryDevice::new("meta", 32 << 20));
        let mut pool = PoolMetadata::format(dev, 128, 200_000).unwrap();
        let mut seed = 1u64;
        let mut rand = move |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let mut next_id = 0u32;
        let mut ids: Vec<u32> = Vec::new();
        for round in 0..60 {
            for _ in 0..rand(400) {
                match rand(20) {
                    0 => {
                        pool.create_thin(next_id).unwrap();
                        ids.push(next_id);
                        next_id += 1;
                    }
                    1 if !ids.is_empty() => {
                        let origin = ids[rand(ids.len() as u64) as usize];
                        pool.create_snap(next_id, origin).unwrap();
                        ids.push(next_id);
                        next_id += 1;
                    }
                    2 if ids.len() > 2 => {
                        let id = ids.swap_remove(rand(ids.len() as u64) as usize);
                        pool.delete(id).unwrap();
                    }
                    3 if !ids.is_empty() => {
                        let id = ids[rand(ids.len() as u64) as usize];
                        let begin = rand(5000);
                        pool.remove_range(id, begin, begin + rand(300)).unwrap();
                    }
                    _ if !ids.is_empty() => {
                        let id = ids[rand(ids.len() as u64) as usize];
                        let b = pool.alloc_data_block().unwrap();
                        pool.insert(id, rand(5000), b).unwrap();
                    }
                    _ => {}
                }
            }
            let free = pool.info().free_metadata_blocks;
            let estimate = pool.metadata_blocks_to_commit();
            let before = pool.core.allocations;
            pool.commit().unwrap();
            let used = pool.core.allocations - before;
            assert!(
                used <= estimate,
                "round {round}: the commit allocated {used}, estimated {estimate}"
            );
            assert!(used <= free);
        }
    }
}
