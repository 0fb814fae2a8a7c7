//! A snapshot's exceptions: the persistent store on the COW device (`P`, `PO`) or a map in
//! memory (`N`, the kernel's transient store, which hands out COW chunks from chunk 0).

use std::collections::HashMap;

use tessera_formats::snapshot::{MergeRun, SnapshotStoreError, Store, Usage};

pub(crate) enum Exceptions {
    Persistent(Store),
    Transient(Transient),
}

pub(crate) struct Transient {
    pub device: String,
    pub map: HashMap<u64, u64>,
    pub chunk_sectors: u64,
    pub next_free_sectors: u64,
    pub total_sectors: u64,
    pub valid: bool,
}

impl Exceptions {
    pub fn lookup(&self, old: u64) -> Option<u64> {
        match self {
            Exceptions::Persistent(s) => s.lookup(old),
            Exceptions::Transient(t) => t.map.get(&old).copied(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Exceptions::Persistent(s) => s.len(),
            Exceptions::Transient(t) => t.map.len(),
        }
    }

    pub fn is_valid(&self) -> bool {
        match self {
            Exceptions::Persistent(s) => s.is_valid(),
            Exceptions::Transient(t) => t.valid,
        }
    }

    pub fn allocate(&mut self) -> Result<u64, SnapshotStoreError> {
        match self {
            Exceptions::Persistent(s) => s.allocate(),
            Exceptions::Transient(t) => {
                if !t.valid {
                    return Err(SnapshotStoreError::Invalid {
                        device: t.device.clone(),
                    });
                }
                if t.total_sectors < t.next_free_sectors + t.chunk_sectors {
                    return Err(SnapshotStoreError::NoSpace {
                        device: t.device.clone(),
                        chunks: t.total_sectors / t.chunk_sectors,
                        chunk_sectors: t.chunk_sectors as u32,
                    });
                }
                let chunk = t.next_free_sectors / t.chunk_sectors;
                t.next_free_sectors += t.chunk_sectors;
                Ok(chunk)
            }
        }
    }

    pub fn commit(&mut self, old: u64, new: u64) -> Result<(), SnapshotStoreError> {
        match self {
            Exceptions::Persistent(s) => s.commit_exception(old, new),
            Exceptions::Transient(t) => {
                t.map.insert(old, new);
                Ok(())
            }
        }
    }

    /// Marks the snapshot invalid, on disk too for a persistent store (best effort: the
    /// device may be what failed).
    pub fn invalidate(&mut self) {
        match self {
            Exceptions::Persistent(s) => {
                let _ = s.invalidate();
            }
            Exceptions::Transient(t) => t.valid = false,
        }
    }

    pub fn usage(&self) -> Usage {
        match self {
            Exceptions::Persistent(s) => s.usage(),
            Exceptions::Transient(t) => Usage {
                sectors_allocated: t.next_free_sectors,
                total_sectors: t.total_sectors,
                metadata_sectors: 0,
            },
        }
    }

    pub fn prepare_merge(&mut self) -> Result<Option<MergeRun>, SnapshotStoreError> {
        match self {
            Exceptions::Persistent(s) => s.prepare_merge(),
            Exceptions::Transient(_) => Ok(None),
        }
    }

    pub fn commit_merge(&mut self, count: u64) -> Result<(), SnapshotStoreError> {
        match self {
            Exceptions::Persistent(s) => s.commit_merge(count),
            Exceptions::Transient(_) => Ok(()),
        }
    }
}
