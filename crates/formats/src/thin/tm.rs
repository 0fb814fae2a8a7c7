//! The transaction manager: metadata and data reference counts, shadowing, btree changes and
//! the commit.
//!
//! Every block the last commit reaches is copied to a new block ("shadowed") before it
//! changes; a block allocated in the open transaction is changed in place, unless a snapshot
//! made since then shares it. Shadowing a shared block copies it and gives its children one
//! more reference each (the copy refers to them too), and takes one from the original.
//!
//! The metadata space map's own blocks are metadata blocks it counts, so the commit writes
//! the data space map first, then shadows the metadata space map's changed bitmaps, overflow
//! tree and index block until a round changes nothing more (each block is shadowed at most
//! once a transaction, so this ends after a few rounds), and only then fills in the bitmaps.

use std::collections::HashSet;
use std::sync::Arc;

use tessera_block::SharedDevice;

use super::btree::{
    self, max_entries, Node, NodeView, Refs, TreeSpec, MAX_DEPTH, REF_COUNTS, SM_INDEX, SUBTREE,
};
use super::checksum::{self, BlockKind};
use super::space_map::{
    self, IndexEntry, RefCounts, SmRoot, BITMAP_HEADER_BYTES, INDEX_ENTRY_BYTES,
    MAX_METADATA_BITMAPS,
};
use super::store::{Buf, Store, DEFAULT_CACHE_BLOCKS};
use super::superblock::{Superblock, SUPERBLOCK_LOCATION};
use super::{Result, ThinMetadataError, METADATA_BLOCK_BYTES, SUPERBLOCK_MAGIC};

/// The largest data block number a mapping can hold (40 bits).
pub const MAX_DATA_BLOCKS: u64 = 1 << 40;

/// Which space map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Data,
    Metadata,
}

pub struct Core {
    pub store: Store,
    pub meta: RefCounts,
    pub data: RefCounts,
    /// Metadata blocks allocated in the open transaction: changed in place.
    pub fresh: HashSet<u64>,
    pub data_index_root: u64,
    pub data_rc_root: u64,
    pub meta_index_block: u64,
    pub meta_rc_root: u64,
    /// Metadata blocks allocated since opening (for tests of the commit's needs).
    pub allocations: u64,
}

struct Inserted {
    block: u64,
    first_key: u64,
    old: Option<Vec<u8>>,
    split: Option<(u64, u64)>,
}

impl Core {
    /// Empty space maps and trees for `format`; nothing is written until the commit.
    pub fn new_empty(
        device: SharedDevice,
        nr_meta_blocks: u64,
        nr_data_blocks: u64,
    ) -> Result<(Core, [u64; 2])> {
        let mut core = Core {
            store: Store::new(device, nr_meta_blocks, DEFAULT_CACHE_BLOCKS),
            meta: RefCounts::new(nr_meta_blocks),
            data: RefCounts::new(nr_data_blocks),
            fresh: HashSet::new(),
            data_index_root: 0,
            data_rc_root: 0,
            meta_index_block: 0,
            meta_rc_root: 0,
            allocations: 0,
        };
        core.meta.set(SUPERBLOCK_LOCATION, 1);
        let mapping_root = core.new_empty_tree(&btree::TOP_LEVEL)?;
        let details_root = core.new_empty_tree(&btree::DETAILS)?;
        core.data_index_root = core.new_empty_tree(&SM_INDEX)?;
        core.data_rc_root = core.new_empty_tree(&REF_COUNTS)?;
        core.meta_rc_root = core.new_empty_tree(&REF_COUNTS)?;
        Ok((core, [mapping_root, details_root]))
    }

    /// Reads the space maps the superblock names.
    pub fn open(device: SharedDevice, sb: &Superblock, cache_blocks: usize) -> Result<Core> {
        let name = device.name().to_string();
        let invalid = |why: String| ThinMetadataError::Invalid {
            device: name.clone(),
            why,
        };
        let device_blocks = device.size_bytes() / METADATA_BLOCK_BYTES as u64;
        let nr_meta = sb.metadata_sm.nr_blocks;
        if nr_meta > device_blocks {
            return Err(invalid(format!(
                "the metadata space map covers {nr_meta} blocks but the device holds only {device_blocks} (truncated?)"
            )));
        }
        if space_map::nr_bitmaps(nr_meta) > MAX_METADATA_BITMAPS as u64 || nr_meta == 0 {
            return Err(invalid(format!(
                "the metadata space map has {nr_meta} blocks"
            )));
        }
        if sb.data_sm.nr_blocks > MAX_DATA_BLOCKS {
            return Err(invalid(format!(
                "the data space map has {} blocks",
                sb.data_sm.nr_blocks
            )));
        }
        let store = Store::new(device, nr_meta, cache_blocks);

        // Metadata space map: one index block.
        let mut meta = RefCounts::new(nr_meta);
        let index_block = sb.metadata_sm.bitmap_root;
        let index = store.read_uncached(index_block, BlockKind::Index)?;
        for i in 0..meta.nr_bitmaps() {
            let at = BITMAP_HEADER_BYTES + INDEX_ENTRY_BYTES * i as usize;
            let entry = IndexEntry::parse(&index[at..at + INDEX_ENTRY_BYTES]);
            let bitmap = store.read_uncached(entry.blocknr, BlockKind::Bitmap)?;
            meta.load_bitmap(i, entry.blocknr, &bitmap);
        }
        load_overflow(&store, sb.metadata_sm.ref_count_root, &mut meta)?;
        meta.finish_load();

        // Data space map: a btree of index entries. Counted before allocating, so a wild
        // block count cannot make us allocate a wild amount of memory.
        let mut entries = Vec::new();
        store.walk(
            sb.data_sm.bitmap_root,
            &SM_INDEX,
            0,
            u64::MAX,
            &mut |key, value| {
                entries.push((key, IndexEntry::parse(value)));
                Ok(())
            },
        )?;
        let nr_data_bitmaps = space_map::nr_bitmaps(sb.data_sm.nr_blocks);
        if entries.len() as u64 != nr_data_bitmaps
            || entries.iter().enumerate().any(|(i, e)| e.0 != i as u64)
        {
            return Err(store.corrupt(
                sb.data_sm.bitmap_root,
                format!(
                    "the data space map index has {} entries, expected bitmaps 0..{nr_data_bitmaps}",
                    entries.len()
                ),
            ));
        }
        let mut data = RefCounts::new(sb.data_sm.nr_blocks);
        for (i, entry) in entries {
            let bitmap = store.read_uncached(entry.blocknr, BlockKind::Bitmap)?;
            data.load_bitmap(i, entry.blocknr, &bitmap);
        }
        load_overflow(&store, sb.data_sm.ref_count_root, &mut data)?;
        data.finish_load();

        Ok(Core {
            store,
            meta,
            data,
            fresh: HashSet::new(),
            data_index_root: sb.data_sm.bitmap_root,
            data_rc_root: sb.data_sm.ref_count_root,
            meta_index_block: index_block,
            meta_rc_root: sb.metadata_sm.ref_count_root,
            allocations: 0,
        })
    }

    fn corrupt(&self, block: u64, why: impl Into<String>) -> ThinMetadataError {
        self.store.corrupt(block, why)
    }

    pub fn new_empty_tree(&mut self, spec: &TreeSpec) -> Result<u64> {
        let b = self.alloc_meta()?;
        self.write_node(b, &Node::empty_leaf(spec));
        Ok(b)
    }

    pub fn write_node(&mut self, block: u64, node: &Node) {
        self.store
            .write(block, BlockKind::Node, node.to_block(block));
    }

    pub fn alloc_meta(&mut self) -> Result<u64> {
        let mut b = self.meta.find_free();
        if b == Some(SUPERBLOCK_LOCATION) {
            // Only damaged metadata calls the superblock free; never hand it out.
            self.meta.set(SUPERBLOCK_LOCATION, 1);
            b = self.meta.find_free();
        }
        let b = b.ok_or_else(|| ThinMetadataError::NoMetadataSpace {
            device: self.store.name.clone(),
            blocks: self.meta.nr_blocks,
        })?;
        self.meta.set(b, 1);
        self.fresh.insert(b);
        self.allocations += 1;
        Ok(b)
    }

    pub fn meta_inc(&mut self, b: u64) -> Result<()> {
        if b >= self.meta.nr_blocks {
            return Err(self.corrupt(
                b,
                "a reference to a metadata block past the end of the metadata",
            ));
        }
        let c = self.meta.get(b);
        self.meta.set(b, c.saturating_add(1));
        Ok(())
    }

    pub fn meta_dec(&mut self, b: u64) -> Result<()> {
        let c = self.meta.get(b);
        if c == 0 {
            return Err(self.corrupt(b, "metadata block is in use but its reference count is 0"));
        }
        self.meta.set(b, c - 1);
        if c == 1 && self.fresh.remove(&b) {
            self.store.dirty.remove(&b);
        }
        Ok(())
    }

    pub fn data_inc(&mut self, b: u64) -> Result<()> {
        if b >= self.data.nr_blocks {
            return Err(self.data_out_of_range(b));
        }
        let c = self.data.get(b);
        self.data.set(b, c.saturating_add(1));
        Ok(())
    }

    /// Drops one reference; true if the block became free.
    pub fn data_dec(&mut self, b: u64) -> Result<bool> {
        if b >= self.data.nr_blocks {
            return Err(self.data_out_of_range(b));
        }
        let c = self.data.get(b);
        if c == 0 {
            return Err(ThinMetadataError::Invalid {
                device: self.store.name.clone(),
                why: format!("data block {b} is mapped but its reference count is 0"),
            });
        }
        self.data.set(b, c - 1);
        Ok(c == 1)
    }

    fn data_out_of_range(&self, b: u64) -> ThinMetadataError {
        ThinMetadataError::Invalid {
            device: self.store.name.clone(),
            why: format!(
                "data block {b} is past the end of the pool ({} blocks)",
                self.data.nr_blocks
            ),
        }
    }

    fn inc_children(&mut self, node: &Node, spec: &TreeSpec) -> Result<()> {
        for i in 0..node.len() {
            let v = node.value_u64(i);
            match (node.leaf, spec.refs) {
                (false, _) | (true, Refs::Subtree) => self.meta_inc(v)?,
                (true, Refs::Data) => self.data_inc(v >> 24)?,
                (true, Refs::None) => {}
            }
        }
        Ok(())
    }

    /// The node at `block`, made writable: `block` itself if this transaction allocated it
    /// and nothing shares it, else a copy in a new block.
    fn shadow(&mut self, block: u64, spec: &TreeSpec) -> Result<(u64, Node)> {
        let buf = self.store.read_node(block, spec)?;
        let node = Node::from_view(&NodeView { buf: &buf });
        let count = self.meta.get(block);
        if count == 0 {
            return Err(self.corrupt(
                block,
                format!("{} node is in use but its reference count is 0", spec.name),
            ));
        }
        if count == 1 && self.fresh.contains(&block) {
            return Ok((block, node));
        }
        let copy = self.alloc_meta()?;
        if count > 1 {
            self.inc_children(&node, spec)?;
        }
        self.meta_dec(block)?;
        Ok((copy, node))
    }

    /// Inserts or replaces `key`; returns the new root and the value replaced.
    pub fn insert(
        &mut self,
        root: u64,
        spec: &TreeSpec,
        key: u64,
        value: &[u8],
    ) -> Result<(u64, Option<Vec<u8>>)> {
        let r = self.insert_rec(root, spec, key, value, 0)?;
        let Some((right_key, right)) = r.split else {
            return Ok((r.block, r.old));
        };
        // The root split: a new root above the two halves.
        let mut top = Node {
            leaf: false,
            max: max_entries(8) as usize,
            value_size: 8,
            keys: Vec::new(),
            values: Vec::new(),
        };
        top.insert_at(0, r.first_key, &r.block.to_le_bytes());
        top.insert_at(1, right_key, &right.to_le_bytes());
        let new_root = self.alloc_meta()?;
        self.write_node(new_root, &top);
        Ok((new_root, r.old))
    }

    fn insert_rec(
        &mut self,
        block: u64,
        spec: &TreeSpec,
        key: u64,
        value: &[u8],
        depth: usize,
    ) -> Result<Inserted> {
        if depth >= MAX_DEPTH {
            return Err(self.corrupt(
                block,
                format!("{} is deeper than {MAX_DEPTH} levels (a loop?)", spec.name),
            ));
        }
        let (new_block, mut node) = self.shadow(block, spec)?;
        let old;
        if node.leaf {
            match node.keys.binary_search(&key) {
                Ok(i) => {
                    old = Some(node.value(i).to_vec());
                    node.set_value(i, value);
                }
                Err(i) => {
                    old = None;
                    node.insert_at(i, key, value);
                }
            }
        } else {
            let i = match node.lower_bound(key) {
                Some(i) => i,
                None => {
                    // Below every key: the first child takes it and its key drops to it.
                    node.keys[0] = key;
                    0
                }
            };
            let child = self.insert_rec(node.value_u64(i), spec, key, value, depth + 1)?;
            node.set_value(i, &child.block.to_le_bytes());
            old = child.old;
            if let Some((k, right)) = child.split {
                node.insert_at(i + 1, k, &right.to_le_bytes());
            }
        }
        let mut split = None;
        if node.len() > node.max {
            let right = node.split_off(node.len() / 2);
            let right_block = self.alloc_meta()?;
            split = Some((right.keys[0], right_block));
            self.write_node(right_block, &right);
        }
        let first_key = node.keys.first().copied().unwrap_or(key);
        self.write_node(new_block, &node);
        Ok(Inserted {
            block: new_block,
            first_key,
            old,
            split,
        })
    }

    /// Removes `key` if present; returns the new root and the value removed.
    pub fn remove(
        &mut self,
        root: u64,
        spec: &TreeSpec,
        key: u64,
    ) -> Result<Option<(u64, Vec<u8>)>> {
        if self.store.find(root, spec, key)?.is_none() {
            return Ok(None);
        }
        let (mut root, old) = self.remove_rec(root, spec, key, 0)?;
        // A root with one child gives way to the child, which keeps its one reference.
        loop {
            let buf = self.store.read_node(root, spec)?;
            let view = NodeView { buf: &buf };
            if view.is_leaf() || view.len() != 1 {
                break;
            }
            let child = view.value_u64(0);
            self.meta_dec(root)?;
            root = child;
        }
        Ok(Some((root, old)))
    }

    fn remove_rec(
        &mut self,
        block: u64,
        spec: &TreeSpec,
        key: u64,
        depth: usize,
    ) -> Result<(u64, Vec<u8>)> {
        if depth >= MAX_DEPTH {
            return Err(self.corrupt(
                block,
                format!("{} is deeper than {MAX_DEPTH} levels (a loop?)", spec.name),
            ));
        }
        let (new_block, mut node) = self.shadow(block, spec)?;
        let old;
        if node.leaf {
            let i = node.keys.binary_search(&key).map_err(|_| {
                self.corrupt(
                    block,
                    format!("{} key {key} is not where the lookup found it", spec.name),
                )
            })?;
            old = node.remove_at(i);
        } else {
            let i = node.lower_bound(key).ok_or_else(|| {
                self.corrupt(
                    block,
                    format!("{} key {key} is below the node's keys", spec.name),
                )
            })?;
            let (child, o) = self.remove_rec(node.value_u64(i), spec, key, depth + 1)?;
            old = o;
            node.set_value(i, &child.to_le_bytes());
            self.rebalance(&mut node, i, spec)?;
        }
        self.write_node(new_block, &node);
        Ok((new_block, old))
    }

    /// Keeps child `i` of `parent` at least a third full by merging it with a sibling or
    /// sharing entries with it.
    fn rebalance(&mut self, parent: &mut Node, i: usize, spec: &TreeSpec) -> Result<()> {
        if parent.len() < 2 {
            return Ok(());
        }
        let child = parent.value_u64(i);
        {
            let buf = self.store.read_node(child, spec)?;
            let view = NodeView { buf: &buf };
            if view.len() >= view.max() / 3 && view.len() > 0 {
                return Ok(());
            }
        }
        let j = if i + 1 < parent.len() { i + 1 } else { i - 1 };
        let (l, r) = (i.min(j), i.max(j));
        let (left_block, mut left) = self.shadow(parent.value_u64(l), spec)?;
        let (right_block, mut right) = self.shadow(parent.value_u64(r), spec)?;
        if left.leaf != right.leaf {
            return Err(self.corrupt(
                right_block,
                format!("{} siblings differ in depth", spec.name),
            ));
        }
        if left.len() + right.len() <= left.max {
            left.append(&mut right);
            self.write_node(left_block, &left);
            parent.set_value(l, &left_block.to_le_bytes());
            parent.remove_at(r);
            // The merged node took over the right node's children and their references.
            self.meta_dec(right_block)?;
        } else {
            let half = (left.len() + right.len()) / 2;
            if left.len() > half {
                let mut moved = left.split_off(half);
                moved.append(&mut right);
                right = moved;
            } else {
                let rest = right.split_off(half - left.len());
                left.append(&mut right);
                right = rest;
            }
            self.write_node(left_block, &left);
            self.write_node(right_block, &right);
            parent.set_value(l, &left_block.to_le_bytes());
            parent.set_value(r, &right_block.to_le_bytes());
            parent.keys[r] = right.keys[0];
        }
        Ok(())
    }

    /// Drops one reference to the tree at `block`; where a node's count falls to zero, its
    /// children (and the data blocks of mapping leaves) lose one too.
    pub fn dec_tree(&mut self, block: u64, spec: &TreeSpec, depth: usize) -> Result<()> {
        if depth >= MAX_DEPTH {
            return Err(self.corrupt(
                block,
                format!("{} is deeper than {MAX_DEPTH} levels (a loop?)", spec.name),
            ));
        }
        let count = self.meta.get(block);
        if count == 0 {
            return Err(self.corrupt(
                block,
                format!("{} node is in use but its reference count is 0", spec.name),
            ));
        }
        if count > 1 {
            self.meta.set(block, count - 1);
            return Ok(());
        }
        let buf = self.store.read_node(block, spec)?;
        let view = NodeView { buf: &buf };
        for i in 0..view.len() {
            let v = view.value_u64(i);
            match (view.is_leaf(), spec.refs) {
                (false, _) => self.dec_tree(v, spec, depth + 1)?,
                (true, Refs::Subtree) => self.dec_tree(v, &SUBTREE, depth + 1)?,
                (true, Refs::Data) => {
                    self.data_dec(v >> 24)?;
                }
                (true, Refs::None) => {}
            }
        }
        self.meta_dec(block)
    }

    fn sync_overflow(&mut self, which: Which) -> Result<bool> {
        let rc = match which {
            Which::Data => &mut self.data,
            Which::Metadata => &mut self.meta,
        };
        let blocks = std::mem::take(&mut rc.dirty_overflow);
        let changed = !blocks.is_empty();
        for b in blocks {
            let count = match which {
                Which::Data => self.data.get(b),
                Which::Metadata => self.meta.get(b),
            };
            let root = match which {
                Which::Data => self.data_rc_root,
                Which::Metadata => self.meta_rc_root,
            };
            let new_root = if count >= 3 {
                self.insert(root, &REF_COUNTS, b, &count.to_le_bytes())?.0
            } else {
                match self.remove(root, &REF_COUNTS, b)? {
                    Some((r, _)) => r,
                    None => root,
                }
            };
            match which {
                Which::Data => self.data_rc_root = new_root,
                Which::Metadata => self.meta_rc_root = new_root,
            }
        }
        Ok(changed)
    }

    /// Gives bitmap `i` a block of its own in this transaction; true if it needed one.
    fn shadow_bitmap(&mut self, which: Which, i: u64) -> Result<bool> {
        let current = match which {
            Which::Data => self.data.bitmap_blocks[i as usize],
            Which::Metadata => self.meta.bitmap_blocks[i as usize],
        };
        if current != 0 && self.fresh.contains(&current) {
            return Ok(false);
        }
        let new = self.alloc_meta()?;
        if current != 0 {
            self.meta_dec(current)?;
        }
        match which {
            Which::Data => self.data.bitmap_blocks[i as usize] = new,
            Which::Metadata => self.meta.bitmap_blocks[i as usize] = new,
        }
        Ok(true)
    }

    /// Writes the space maps and every changed block, then `sb` as the new superblock.
    pub fn commit(&mut self, sb: &mut Superblock) -> Result<()> {
        // The data space map: its bitmaps, overflow counts and index entries.
        let data_dirty: Vec<u64> = self.data.dirty_bitmaps.iter().copied().collect();
        for &i in &data_dirty {
            self.shadow_bitmap(Which::Data, i)?;
        }
        self.sync_overflow(Which::Data)?;
        for &i in &data_dirty {
            let entry = self.data.index_entry(i);
            self.data_index_root = self
                .insert(self.data_index_root, &SM_INDEX, i, &entry.to_bytes())?
                .0;
        }

        // The metadata space map, until shadowing its parts changes nothing more.
        loop {
            let mut progress = false;
            let dirty: Vec<u64> = self.meta.dirty_bitmaps.iter().copied().collect();
            for i in dirty {
                progress |= self.shadow_bitmap(Which::Metadata, i)?;
            }
            progress |= self.sync_overflow(Which::Metadata)?;
            if self.meta_index_block == 0 || !self.fresh.contains(&self.meta_index_block) {
                let new = self.alloc_meta()?;
                if self.meta_index_block != 0 {
                    self.meta_dec(self.meta_index_block)?;
                }
                self.meta_index_block = new;
                progress = true;
            }
            if !progress {
                break;
            }
        }

        for &i in &data_dirty {
            let at = self.data.bitmap_blocks[i as usize];
            let block = self.data.bitmap_block(i, at);
            self.store.write(at, BlockKind::Bitmap, block);
        }
        let meta_dirty: Vec<u64> = self.meta.dirty_bitmaps.iter().copied().collect();
        for &i in &meta_dirty {
            let at = self.meta.bitmap_blocks[i as usize];
            let block = self.meta.bitmap_block(i, at);
            self.store.write(at, BlockKind::Bitmap, block);
        }
        let mut index = vec![0u8; METADATA_BLOCK_BYTES];
        index[8..16].copy_from_slice(&self.meta_index_block.to_le_bytes());
        for i in 0..self.meta.nr_bitmaps() {
            let at = BITMAP_HEADER_BYTES + INDEX_ENTRY_BYTES * i as usize;
            index[at..at + INDEX_ENTRY_BYTES].copy_from_slice(&self.meta.index_entry(i).to_bytes());
        }
        self.store
            .write(self.meta_index_block, BlockKind::Index, index);

        sb.data_sm = SmRoot {
            nr_blocks: self.data.nr_blocks,
            nr_allocated: self.data.nr_allocated,
            bitmap_root: self.data_index_root,
            ref_count_root: self.data_rc_root,
        };
        sb.metadata_sm = SmRoot {
            nr_blocks: self.meta.nr_blocks,
            nr_allocated: self.meta.nr_allocated,
            bitmap_root: self.meta_index_block,
            ref_count_root: self.meta_rc_root,
        };
        sb.metadata_nr_blocks = self.meta.nr_blocks;
        sb.magic = SUPERBLOCK_MAGIC;

        self.write_dirty()?;
        let mut sb_block = sb.to_block(SUPERBLOCK_LOCATION);
        checksum::seal(&mut sb_block, BlockKind::Superblock);
        self.store.device.write_at(&sb_block, 0)?;
        self.store.device.flush()?;

        let dirty = std::mem::take(&mut self.store.dirty);
        for (b, d) in dirty {
            self.store.cache.insert(b, d.kind, d.buf);
        }
        self.store.cache.insert(
            SUPERBLOCK_LOCATION,
            BlockKind::Superblock,
            Arc::from(sb_block),
        );
        self.fresh.clear();
        self.data.committed_now();
        self.meta.committed_now();
        Ok(())
    }

    /// Writes every dirty block, checksummed, in runs of adjacent blocks, then flushes.
    fn write_dirty(&mut self) -> Result<()> {
        const RUN_BLOCKS: usize = 256;
        let mut blocks: Vec<(u64, BlockKind, Buf)> = self
            .store
            .dirty
            .iter()
            .map(|(&b, d)| (b, d.kind, d.buf.clone()))
            .collect();
        blocks.sort_unstable_by_key(|e| e.0);
        let mut run: Vec<u8> = Vec::with_capacity(RUN_BLOCKS * METADATA_BLOCK_BYTES);
        let mut run_start = 0u64;
        for (b, kind, buf) in blocks {
            let run_len = (run.len() / METADATA_BLOCK_BYTES) as u64;
            if !run.is_empty() && (b != run_start + run_len || run_len as usize >= RUN_BLOCKS) {
                self.store
                    .device
                    .write_at(&run, run_start * METADATA_BLOCK_BYTES as u64)?;
                run.clear();
            }
            if run.is_empty() {
                run_start = b;
            }
            let at = run.len();
            run.extend_from_slice(&buf);
            checksum::seal(&mut run[at..at + METADATA_BLOCK_BYTES], kind);
        }
        if !run.is_empty() {
            self.store
                .device
                .write_at(&run, run_start * METADATA_BLOCK_BYTES as u64)?;
        }
        self.store.device.flush()?;
        Ok(())
    }
}

fn load_overflow(store: &Store, root: u64, rc: &mut RefCounts) -> Result<()> {
    let nr_blocks = rc.nr_blocks;
    let mut bad = None;
    store.walk(root, &REF_COUNTS, 0, u64::MAX, &mut |key, value| {
        if key >= nr_blocks {
            bad = Some(key);
        }
        rc.load_overflow(key, btree::le32(value, 0));
        Ok(())
    })?;
    if let Some(key) = bad {
        return Err(store.corrupt(
            root,
            format!(
                "reference count tree has an entry for block {key}, past the end of its space map"
            ),
        ));
    }
    Ok(())
}
