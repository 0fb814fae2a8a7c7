//! The metadata operations the targets use, as a trait over [`PoolMetadata`], so the
//! targets' own logic (locking, out-of-space handling, commits) can also be exercised on an
//! in-memory stand-in in unit tests.

use tessera_formats::thin::{DeviceDetails, Lookup, PoolInfo, PoolMetadata, Result};

pub(crate) trait Metadata: Send + Sync {
    fn info(&self) -> PoolInfo;
    fn devices(&self) -> Result<Vec<(u32, DeviceDetails)>>;
    fn device_details(&self, dev_id: u32) -> Result<Option<DeviceDetails>>;
    fn highest_mapped_block(&self, dev_id: u32) -> Result<Option<u64>>;
    fn lookup(&self, dev_id: u32, vblock: u64) -> Result<Option<Lookup>>;
    fn create_thin(&mut self, dev_id: u32) -> Result<()>;
    fn create_snap(&mut self, dev_id: u32, origin: u32) -> Result<()>;
    fn delete(&mut self, dev_id: u32) -> Result<()>;
    fn set_transaction_id(&mut self, current: u64, new: u64) -> Result<()>;
    fn reserve_metadata_snap(&mut self) -> Result<()>;
    fn release_metadata_snap(&mut self) -> Result<()>;
    fn alloc_data_block(&mut self) -> Result<u64>;
    fn free_data_block(&mut self, data_block: u64) -> Result<()>;
    fn insert(&mut self, dev_id: u32, vblock: u64, data_block: u64) -> Result<()>;
    fn remove_range(&mut self, dev_id: u32, begin: u64, end: u64) -> Result<Vec<u64>>;
    fn resize_data(&mut self, nr_data_blocks: u64) -> Result<()>;
    fn resize_metadata(&mut self) -> Result<()>;
    fn set_needs_check(&mut self) -> Result<()>;
    fn commit(&mut self) -> Result<()>;
    fn abort(&mut self) -> Result<()>;
    /// At most how many metadata blocks the next commit allocates (0 where a commit
    /// allocates none).
    fn metadata_blocks_to_commit(&self) -> u64 {
        0
    }
}

impl Metadata for PoolMetadata {
    fn info(&self) -> PoolInfo {
        PoolMetadata::info(self)
    }
    fn devices(&self) -> Result<Vec<(u32, DeviceDetails)>> {
        PoolMetadata::devices(self)
    }
    fn device_details(&self, dev_id: u32) -> Result<Option<DeviceDetails>> {
        PoolMetadata::device_details(self, dev_id)
    }
    fn highest_mapped_block(&self, dev_id: u32) -> Result<Option<u64>> {
        PoolMetadata::highest_mapped_block(self, dev_id)
    }
    fn lookup(&self, dev_id: u32, vblock: u64) -> Result<Option<Lookup>> {
        PoolMetadata::lookup(self, dev_id, vblock)
    }
    fn create_thin(&mut self, dev_id: u32) -> Result<()> {
        PoolMetadata::create_thin(self, dev_id)
    }
    fn create_snap(&mut self, dev_id: u32, origin: u32) -> Result<()> {
        PoolMetadata::create_snap(self, dev_id, origin)
    }
    fn delete(&mut self, dev_id: u32) -> Result<()> {
        PoolMetadata::delete(self, dev_id)
    }
    fn set_transaction_id(&mut self, current: u64, new: u64) -> Result<()> {
        PoolMetadata::set_transaction_id(self, current, new)
    }
    fn reserve_metadata_snap(&mut self) -> Result<()> {
        PoolMetadata::reserve_metadata_snap(self)
    }
    fn release_metadata_snap(&mut self) -> Result<()> {
        PoolMetadata::release_metadata_snap(self)
    }
    fn alloc_data_block(&mut self) -> Result<u64> {
        PoolMetadata::alloc_data_block(self)
    }
    fn free_data_block(&mut self, data_block: u64) -> Result<()> {
        PoolMetadata::free_data_block(self, data_block)
    }
    fn insert(&mut self, dev_id: u32, vblock: u64, data_block: u64) -> Result<()> {
        PoolMetadata::insert(self, dev_id, vblock, data_block)
    }
    fn remove_range(&mut self, dev_id: u32, begin: u64, end: u64) -> Result<Vec<u64>> {
        PoolMetadata::remove_range(self, dev_id, begin, end)
    }
    fn resize_data(&mut self, nr_data_blocks: u64) -> Result<()> {
        PoolMetadata::resize_data(self, nr_data_blocks)
    }
    fn resize_metadata(&mut self) -> Result<()> {
        PoolMetadata::resize_metadata(self)
    }
    fn set_needs_check(&mut self) -> Result<()> {
        PoolMetadata::set_needs_check(self)
    }
    fn commit(&mut self) -> Result<()> {
        PoolMetadata::commit(self)
    }
    fn abort(&mut self) -> Result<()> {
        PoolMetadata::abort(self)
    }
    fn metadata_blocks_to_commit(&self) -> u64 {
        PoolMetadata::metadata_blocks_to_commit(self)
    }
}

/// An in-memory stand-in with the same rules as the real metadata where the targets depend
/// on them: freed blocks come back only after a commit, abort returns to the last commit,
/// a block is shared if mapped before its device was last snapshotted, and metadata space
/// runs out after `metadata_blocks` (one block per `MAPPINGS_PER_BLOCK` mappings).
#[cfg(test)]
pub(crate) mod memory {
    use std::collections::{BTreeMap, HashSet};

    use super::*;
    use tessera_formats::thin::Mapping;
    use tessera_formats::thin::ThinMetadataError;

    pub const MAPPINGS_PER_BLOCK: u64 = 16;

    #[derive(Clone)]
    struct State {
        transaction_id: u64,
        time: u32,
        refs: Vec<u32>,
        devices: BTreeMap<u32, DeviceDetails>,
        maps: BTreeMap<u32, BTreeMap<u64, Mapping>>,
        metadata_snap: Option<u64>,
        needs_check: bool,
        metadata_blocks: u64,
    }

    pub struct MemoryMetadata {
        name: String,
        block_sectors: u32,
        current: State,
        committed: State,
        freed: HashSet<u64>,
        pub commits: u64,
    }

    impl MemoryMetadata {
        pub fn new(
            name: &str,
            block_sectors: u32,
            nr_data_blocks: u64,
            metadata_blocks: u64,
        ) -> Self {
            let s = State {
                transaction_id: 0,
                time: 0,
                refs: vec![0; nr_data_blocks as usize],
                devices: BTreeMap::new(),
                maps: BTreeMap::new(),
                metadata_snap: None,
                needs_check: false,
                metadata_blocks,
            };
            MemoryMetadata {
                name: name.into(),
                block_sectors,
                current: s.clone(),
                committed: s,
                freed: HashSet::new(),
                commits: 0,
            }
        }

        fn used_metadata(&self) -> u64 {
            let maps: u64 = self.current.maps.values().map(|m| m.len() as u64).sum();
            8 + maps / MAPPINGS_PER_BLOCK
        }

        fn no_dev(&self, dev_id: u32) -> ThinMetadataError {
            ThinMetadataError::NoSuchDevice {
                device: self.name.clone(),
                dev_id,
            }
        }

        fn dec(&mut self, block: u64, freed: &mut Vec<u64>) {
            let r = &mut self.current.refs[block as usize];
            *r -= 1;
            if *r == 0 {
                self.freed.insert(block);
                freed.push(block);
            }
        }
    }

    impl Metadata for MemoryMetadata {
        fn info(&self) -> PoolInfo {
            let s = &self.current;
            PoolInfo {
                transaction_id: s.transaction_id,
                time: s.time,
                data_block_sectors: self.block_sectors,
                nr_data_blocks: s.refs.len() as u64,
                free_data_blocks: s.refs.iter().filter(|&&r| r == 0).count() as u64,
                nr_metadata_blocks: s.metadata_blocks,
                free_metadata_blocks: s.metadata_blocks.saturating_sub(self.used_metadata()),
                metadata_snap: s.metadata_snap,
                needs_check: s.needs_check,
            }
        }
        fn devices(&self) -> Result<Vec<(u32, DeviceDetails)>> {
            Ok(self.current.devices.iter().map(|(k, v)| (*k, *v)).collect())
        }
        fn device_details(&self, dev_id: u32) -> Result<Option<DeviceDetails>> {
            Ok(self.current.devices.get(&dev_id).copied())
        }
        fn highest_mapped_block(&self, dev_id: u32) -> Result<Option<u64>> {
            let m = self
                .current
                .maps
                .get(&dev_id)
                .ok_or_else(|| self.no_dev(dev_id))?;
            Ok(m.keys().next_back().copied())
        }
        fn lookup(&self, dev_id: u32, vblock: u64) -> Result<Option<Lookup>> {
            let d = self
                .current
                .devices
                .get(&dev_id)
                .ok_or_else(|| self.no_dev(dev_id))?;
            Ok(self.current.maps[&dev_id].get(&vblock).map(|m| Lookup {
                mapping: *m,
                shared: m.time < d.snapshotted_time,
            }))
        }
        fn create_thin(&mut self, dev_id: u32) -> Result<()> {
            if self.current.devices.contains_key(&dev_id) {
                return Err(ThinMetadataError::DeviceExists {
                    device: self.name.clone(),
                    dev_id,
                });
            }
            let time = self.current.time;
            self.current.devices.insert(
                dev_id,
                DeviceDetails {
                    creation_time: time,
                    snapshotted_time: time,
                    ..Default::default()
                },
            );
            self.current.maps.insert(dev_id, BTreeMap::new());
            Ok(())
        }
        fn create_snap(&mut self, dev_id: u32, origin: u32) -> Result<()> {
            if self.current.devices.contains_key(&dev_id) {
                return Err(ThinMetadataError::DeviceExists {
                    device: self.name.clone(),
                    dev_id,
                });
            }
            let o = *self
                .current
                .devices
                .get(&origin)
                .ok_or_else(|| self.no_dev(origin))?;
            self.current.time += 1;
            let time = self.current.time;
            let map = self.current.maps[&origin].clone();
            for m in map.values() {
                self.current.refs[m.data_block as usize] += 1;
            }
            self.current.maps.insert(dev_id, map);
            self.current
                .devices
                .get_mut(&origin)
                .unwrap()
                .snapshotted_time = time;
            self.current.devices.insert(
                dev_id,
                DeviceDetails {
                    mapped_blocks: o.mapped_blocks,
                    transaction_id: 0,
                    creation_time: time,
                    snapshotted_time: time,
                },
            );
            Ok(())
        }
        fn delete(&mut self, dev_id: u32) -> Result<()> {
            self.current
                .devices
                .remove(&dev_id)
                .ok_or_else(|| self.no_dev(dev_id))?;
            let map = self.current.maps.remove(&dev_id).unwrap();
            let mut freed = Vec::new();
            for m in map.values() {
                self.dec(m.data_block, &mut freed);
            }
            Ok(())
        }
        fn set_transaction_id(&mut self, current: u64, new: u64) -> Result<()> {
            if self.current.transaction_id != current {
                return Err(ThinMetadataError::TransactionMismatch {
                    device: self.name.clone(),
                    expected: current,
                    found: self.current.transaction_id,
                });
            }
            self.current.transaction_id = new;
            Ok(())
        }
        fn reserve_metadata_snap(&mut self) -> Result<()> {
            if self.current.metadata_snap.is_some() {
                return Err(ThinMetadataError::Refused {
                    device: self.name.clone(),
                    why: "a metadata snapshot is held already".into(),
                });
            }
            self.current.metadata_snap = Some(1);
            Ok(())
        }
        fn release_metadata_snap(&mut self) -> Result<()> {
            self.current
                .metadata_snap
                .take()
                .map(|_| ())
                .ok_or_else(|| ThinMetadataError::Refused {
                    device: self.name.clone(),
                    why: "no metadata snapshot is held".into(),
                })
        }
        fn alloc_data_block(&mut self) -> Result<u64> {
            let free = (0..self.current.refs.len())
                .find(|&b| self.current.refs[b] == 0 && !self.freed.contains(&(b as u64)));
            match free {
                Some(b) => {
                    self.current.refs[b] = 1;
                    Ok(b as u64)
                }
                None => Err(ThinMetadataError::NoDataSpace {
                    device: self.name.clone(),
                    blocks: self.current.refs.len() as u64,
                }),
            }
        }
        fn free_data_block(&mut self, data_block: u64) -> Result<()> {
            let mut freed = Vec::new();
            self.dec(data_block, &mut freed);
            Ok(())
        }
        fn insert(&mut self, dev_id: u32, vblock: u64, data_block: u64) -> Result<()> {
            if self.used_metadata() + 1 > self.current.metadata_blocks {
                return Err(ThinMetadataError::NoMetadataSpace {
                    device: self.name.clone(),
                    blocks: self.current.metadata_blocks,
                });
            }
            let time = self.current.time;
            let no_dev = self.no_dev(dev_id);
            let old = self
                .current
                .maps
                .get_mut(&dev_id)
                .ok_or(no_dev)?
                .insert(vblock, Mapping { data_block, time });
            let d = self.current.devices.get_mut(&dev_id).unwrap();
            match old {
                Some(o) => {
                    let mut freed = Vec::new();
                    self.dec(o.data_block, &mut freed);
                }
                None => d.mapped_blocks += 1,
            }
            Ok(())
        }
        fn remove_range(&mut self, dev_id: u32, begin: u64, end: u64) -> Result<Vec<u64>> {
            let no_dev = self.no_dev(dev_id);
            let map = self.current.maps.get_mut(&dev_id).ok_or(no_dev)?;
            let gone: Vec<u64> = map.range(begin..end).map(|(k, _)| *k).collect();
            let mut blocks = Vec::new();
            for v in &gone {
                blocks.push(map.remove(v).unwrap().data_block);
            }
            self.current.devices.get_mut(&dev_id).unwrap().mapped_blocks -= gone.len() as u64;
            let mut freed = Vec::new();
            for b in blocks {
                self.dec(b, &mut freed);
            }
            Ok(freed)
        }
        fn resize_data(&mut self, nr_data_blocks: u64) -> Result<()> {
            self.current.refs.resize(nr_data_blocks as usize, 0);
            Ok(())
        }
        fn resize_metadata(&mut self) -> Result<()> {
            Ok(())
        }
        fn set_needs_check(&mut self) -> Result<()> {
            self.current.needs_check = true;
            self.committed.needs_check = true;
            Ok(())
        }
        fn commit(&mut self) -> Result<()> {
            self.committed = self.current.clone();
            self.freed.clear();
            self.commits += 1;
            Ok(())
        }
        fn abort(&mut self) -> Result<()> {
            self.current = self.committed.clone();
            self.freed.clear();
            Ok(())
        }
    }
}
