//! Metadata block I/O: blocks read from the device are checked (checksum, type, location,
//! node structure) once and kept in a bounded cache that many readers share; blocks changed
//! in the open transaction live in `dirty` until the commit writes them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use tessera_block::SharedDevice;

use super::btree;
use super::checksum::{self, BlockKind};
use super::{Result, ThinMetadataError, METADATA_BLOCK_BYTES};

/// A block's bytes, shared between the cache and its readers.
pub type Buf = Arc<[u8]>;

const SHARDS: usize = 16;
/// Blocks the cache holds by default (32 MiB).
pub const DEFAULT_CACHE_BLOCKS: usize = 8192;

struct Shard {
    blocks: HashMap<u64, (BlockKind, Buf)>,
    order: VecDeque<u64>,
}

/// Validated committed blocks, sharded so concurrent lookups rarely wait on each other.
pub struct Cache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
}

impl Cache {
    pub fn new(capacity: usize) -> Self {
        Cache {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        blocks: HashMap::new(),
                        order: VecDeque::new(),
                    })
                })
                .collect(),
            per_shard: (capacity / SHARDS).max(4),
        }
    }

    fn shard(&self, block: u64) -> std::sync::MutexGuard<'_, Shard> {
        // Neighbouring blocks land in different shards.
        let i = (block.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS;
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, block: u64, kind: BlockKind) -> Option<Buf> {
        let shard = self.shard(block);
        match shard.blocks.get(&block) {
            Some((k, buf)) if *k == kind => Some(buf.clone()),
            _ => None,
        }
    }

    pub fn insert(&self, block: u64, kind: BlockKind, buf: Buf) {
        let mut shard = self.shard(block);
        if shard.blocks.insert(block, (kind, buf)).is_none() {
            shard.order.push_back(block);
        }
        while shard.blocks.len() > self.per_shard {
            let Some(old) = shard.order.pop_front() else {
                break;
            };
            shard.blocks.remove(&old);
        }
    }
}

/// A block written in the open transaction. Its checksum and location are filled in at
/// commit.
pub struct DirtyBlock {
    pub kind: BlockKind,
    pub buf: Buf,
}

pub struct Store {
    pub device: SharedDevice,
    pub name: String,
    /// Metadata blocks the superblock says the device has (and the device really holds).
    pub nr_blocks: u64,
    pub cache: Cache,
    /// The cache's capacity in blocks.
    pub cache_blocks: usize,
    pub dirty: HashMap<u64, DirtyBlock>,
}

impl Store {
    pub fn new(device: SharedDevice, nr_blocks: u64, cache_blocks: usize) -> Self {
        Store {
            name: device.name().to_string(),
            device,
            nr_blocks,
            cache: Cache::new(cache_blocks),
            cache_blocks,
            dirty: HashMap::new(),
        }
    }

    pub fn corrupt(&self, block: u64, why: impl Into<String>) -> ThinMetadataError {
        ThinMetadataError::Corrupt {
            device: self.name.clone(),
            block,
            why: why.into(),
        }
    }

    /// Block `block` as `kind`: from the open transaction, the cache, or the device (checked).
    pub fn read(&self, block: u64, kind: BlockKind) -> Result<Buf> {
        if let Some(d) = self.dirty.get(&block) {
            if d.kind != kind {
                return Err(self.corrupt(
                    block,
                    format!("read as a {} but it is a {}", kind.name(), d.kind.name()),
                ));
            }
            return Ok(d.buf.clone());
        }
        if let Some(buf) = self.cache.get(block, kind) {
            return Ok(buf);
        }
        let buf = self.read_uncached(block, kind)?;
        self.cache.insert(block, kind, buf.clone());
        Ok(buf)
    }

    /// Reads and checks a block from the device without touching the cache.
    pub fn read_uncached(&self, block: u64, kind: BlockKind) -> Result<Buf> {
        if block >= self.nr_blocks {
            return Err(self.corrupt(
                block,
                format!(
                    "{} is past the end of the metadata ({} blocks)",
                    kind.name(),
                    self.nr_blocks
                ),
            ));
        }
        let mut buf = vec![0u8; METADATA_BLOCK_BYTES];
        self.device
            .read_at(&mut buf, block * METADATA_BLOCK_BYTES as u64)?;
        validate(&self.name, block, kind, &buf)?;
        Ok(Arc::from(buf))
    }

    pub fn write(&mut self, block: u64, kind: BlockKind, buf: Vec<u8>) {
        debug_assert_eq!(buf.len(), METADATA_BLOCK_BYTES);
        self.dirty.insert(
            block,
            DirtyBlock {
                kind,
                buf: Arc::from(buf),
            },
        );
    }
}

/// Checks a block read from disk: checksum for its kind, its own location, and for btree
/// nodes the header and key order.
pub fn validate(device: &str, block: u64, kind: BlockKind, buf: &[u8]) -> Result<()> {
    let found = checksum::stored(buf);
    let expected = checksum::expected(buf, kind);
    if found != expected {
        return Err(ThinMetadataError::BadChecksum {
            device: device.to_string(),
            block,
            kind: kind.name(),
            found,
            expected,
        });
    }
    let location = u64::from_le_bytes(buf[8..16].try_into().unwrap_or_default());
    if location != block {
        return Err(ThinMetadataError::Corrupt {
            device: device.to_string(),
            block,
            why: format!("{} says it is block {location}", kind.name()),
        });
    }
    if kind == BlockKind::Node {
        btree::check_node_structure(buf).map_err(|why| ThinMetadataError::Corrupt {
            device: device.to_string(),
            block,
            why,
        })?;
    }
    Ok(())
}
