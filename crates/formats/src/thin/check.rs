//! Checking pool metadata as `thin_check` does, fast: every tree is walked level by level, the
//! blocks of a level read in block order in large runs, and references are counted in flat
//! arrays, then compared with both space maps.
//!
//! Every problem found is reported with its block, not just the first; a node whose checksum
//! or structure is bad is reported and not descended into.

use std::collections::{BTreeMap, HashMap};

use tessera_block::SharedDevice;

use super::btree::{
    check_node_structure, le32, le64, NodeView, TreeSpec, DETAILS, REF_COUNTS, SM_INDEX, SUBTREE,
    TOP_LEVEL,
};
use super::checksum::{self, BlockKind};
use super::space_map::{
    self, decode, IndexEntry, SmRoot, BITMAP_HEADER_BYTES, INDEX_ENTRY_BYTES, MAX_METADATA_BITMAPS,
    WORDS_PER_BITMAP,
};
use super::superblock::{Superblock, SUPERBLOCK_LOCATION};
use super::tm::MAX_DATA_BLOCKS;
use super::{DeviceDetails, Result, MAX_TIME, METADATA_BLOCK_BYTES, SUPERBLOCK_MAGIC};

/// Problems kept in the report; the rest are only counted.
const MAX_REPORTED: usize = 10_000;
/// Blocks read at once at most (1 MiB).
const RUN_BLOCKS: u64 = 256;
/// Unwanted blocks read through to keep a run going, rather than issue another read.
const MAX_GAP: u64 = 8;
/// Blocks a level is read in at a time, so memory stays bounded.
const CHUNK_BLOCKS: usize = 16_384;

/// One problem found, with the metadata block it is in when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub block: Option<u64>,
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.block {
            Some(b) => write!(f, "metadata block {b}: {}", self.what),
            None => f.write_str(&self.what),
        }
    }
}

/// What [`check`] found.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// The device checked.
    pub device: String,
    /// The first problems found (at most 10000).
    pub problems: Vec<Problem>,
    /// Every problem found, including those not kept.
    pub nr_problems: u64,
    pub nr_devices: u64,
    /// Mappings seen (a leaf shared by snapshots counted once).
    pub nr_mappings: u64,
    pub metadata_blocks_read: u64,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.nr_problems == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tree {
    Top,
    Sub,
    Details,
    DataIndex,
    DataRefCounts,
    MetaRefCounts,
}

impl Tree {
    fn spec(self) -> &'static TreeSpec {
        match self {
            Tree::Top => &TOP_LEVEL,
            Tree::Sub => &SUBTREE,
            Tree::Details => &DETAILS,
            Tree::DataIndex => &SM_INDEX,
            Tree::DataRefCounts | Tree::MetaRefCounts => &REF_COUNTS,
        }
    }
}

/// A node to visit: keys must lie in `lo..hi`.
#[derive(Debug, Clone, Copy)]
struct Visit {
    block: u64,
    tree: Tree,
    lo: u64,
    hi: Option<u64>,
    parent: Option<u64>,
}

struct Checker<'a> {
    device: &'a SharedDevice,
    report: CheckReport,
    nr_meta: u64,
    nr_data: u64,
    /// References found to each metadata block.
    meta_refs: Vec<u32>,
    /// References found to each data block; 255 means "see data_refs_big".
    data_refs: Vec<u8>,
    data_refs_big: HashMap<u64, u32>,
    /// Entries under each leaf of a mapping subtree, and the children of its internal nodes,
    /// to total each device's mappings however subtrees are shared.
    leaf_entries: HashMap<u64, u64>,
    children: HashMap<u64, Vec<u64>>,
    subtree_roots: BTreeMap<u32, u64>,
    details: BTreeMap<u32, DeviceDetails>,
    live_top_root: u64,
    live_details_root: u64,
    data_index: Vec<(u64, IndexEntry)>,
    data_overflow: BTreeMap<u64, u32>,
    meta_overflow: BTreeMap<u64, u32>,
    progress_total: u64,
    progress: &'a mut dyn FnMut(u64, u64),
    /// Walking the held root's trees: their devices are not the live ones.
    in_held: bool,
    /// Subtree roots seen in the top level, walked after it.
    pending_subtrees: Vec<u64>,
}

/// Checks the pool metadata on `device` as `thin_check` does: every block's checksum, type and
/// location; btree structure and key order; every mapping's data block inside the pool; both
/// space maps' counts against the references found; each device's details against its
/// mappings. `progress` is called with (blocks read, blocks in use) as the check goes.
///
/// Problems in the metadata are in the report; `Err` only when the device cannot be read.
pub fn check(device: &SharedDevice, progress: &mut dyn FnMut(u64, u64)) -> Result<CheckReport> {
    let mut c = Checker {
        device,
        report: CheckReport {
            device: device.name().to_string(),
            ..Default::default()
        },
        nr_meta: 0,
        nr_data: 0,
        meta_refs: Vec::new(),
        data_refs: Vec::new(),
        data_refs_big: HashMap::new(),
        leaf_entries: HashMap::new(),
        children: HashMap::new(),
        subtree_roots: BTreeMap::new(),
        details: BTreeMap::new(),
        live_top_root: 0,
        live_details_root: 0,
        data_index: Vec::new(),
        data_overflow: BTreeMap::new(),
        meta_overflow: BTreeMap::new(),
        progress_total: 0,
        progress,
        in_held: false,
        pending_subtrees: Vec::new(),
    };
    c.run()?;
    Ok(c.report)
}

impl Checker<'_> {
    fn problem(&mut self, block: Option<u64>, what: String) {
        self.report.nr_problems += 1;
        if self.report.problems.len() < MAX_REPORTED {
            self.report.problems.push(Problem { block, what });
        }
    }

    /// Counts a reference to metadata block `b`; true if it is the first (visit it).
    fn meta_ref(&mut self, b: u64, from: Option<u64>, what: &str) -> bool {
        match self.meta_refs.get_mut(b as usize) {
            Some(count) if b < self.nr_meta => {
                *count = count.saturating_add(1);
                *count == 1
            }
            _ => {
                let nr_meta = self.nr_meta;
                self.problem(from, format!("{what} points to block {b}, past the end of the metadata ({nr_meta} blocks)"));
                false
            }
        }
    }

    fn data_ref(&mut self, b: u64) {
        let Some(slot) = self.data_refs.get_mut(b as usize) else {
            return;
        };
        if *slot < u8::MAX {
            *slot += 1;
        } else {
            let big = self.data_refs_big.entry(b).or_insert(u32::from(u8::MAX));
            *big = big.saturating_add(1);
        }
    }

    fn data_refs_of(&self, b: u64) -> u32 {
        match self.data_refs.get(b as usize) {
            Some(&u8::MAX) => self
                .data_refs_big
                .get(&b)
                .copied()
                .unwrap_or(u32::from(u8::MAX)),
            Some(&n) => u32::from(n),
            None => 0,
        }
    }

    /// Reads `blocks` (sorted, unique) in runs and calls `f` on each with its bytes.
    fn read_sorted(
        &mut self,
        blocks: &[u64],
        f: &mut dyn FnMut(&mut Self, u64, &[u8]),
    ) -> Result<()> {
        let mut i = 0;
        let mut buf = Vec::new();
        while i < blocks.len() {
            let start = blocks[i];
            let mut j = i + 1;
            while j < blocks.len()
                && blocks[j] - blocks[j - 1] <= MAX_GAP
                && blocks[j] - start < RUN_BLOCKS
            {
                j += 1;
            }
            let len = blocks[j - 1] - start + 1;
            buf.resize(len as usize * METADATA_BLOCK_BYTES, 0);
            self.device
                .read_at(&mut buf, start * METADATA_BLOCK_BYTES as u64)?;
            for &b in &blocks[i..j] {
                let at = (b - start) as usize * METADATA_BLOCK_BYTES;
                f(self, b, &buf[at..at + METADATA_BLOCK_BYTES]);
            }
            self.report.metadata_blocks_read += (j - i) as u64;
            i = j;
        }
        (self.progress)(self.report.metadata_blocks_read, self.progress_total);
        Ok(())
    }

    /// Checks a block's checksum and location; reports and returns false if either is bad.
    fn block_ok(&mut self, b: u64, kind: BlockKind, buf: &[u8]) -> bool {
        let found = checksum::stored(buf);
        let expected = checksum::expected(buf, kind);
        if found != expected {
            self.problem(
                Some(b),
                format!(
                    "{} has a bad checksum (found {found:#010x}, expected {expected:#010x})",
                    kind.name()
                ),
            );
            return false;
        }
        let location = le64(buf, 8);
        if location != b {
            self.problem(
                Some(b),
                format!("{} says it is block {location}", kind.name()),
            );
            return false;
        }
        true
    }

    fn read_one(&mut self, b: u64) -> Result<Option<Vec<u8>>> {
        if b >= self.device.size_bytes() / METADATA_BLOCK_BYTES as u64 {
            self.problem(Some(b), "is past the end of the device".into());
            return Ok(None);
        }
        let mut buf = vec![0u8; METADATA_BLOCK_BYTES];
        self.device
            .read_at(&mut buf, b * METADATA_BLOCK_BYTES as u64)?;
        self.report.metadata_blocks_read += 1;
        Ok(Some(buf))
    }

    fn run(&mut self) -> Result<()> {
        let Some(buf) = self.read_one(SUPERBLOCK_LOCATION)? else {
            return Ok(());
        };
        let sb = Superblock::parse(&buf);
        if sb.magic != SUPERBLOCK_MAGIC {
            self.problem(
                Some(0),
                format!(
                    "superblock magic is {}, not {SUPERBLOCK_MAGIC}: not thin pool metadata",
                    sb.magic
                ),
            );
            return Ok(());
        }
        if !self.block_ok(SUPERBLOCK_LOCATION, BlockKind::Superblock, &buf) {
            return Ok(());
        }
        if let Some(why) = sb.field_problem() {
            self.problem(Some(0), why);
        }
        if sb.time > MAX_TIME {
            self.problem(
                Some(0),
                format!(
                    "superblock's time {} is past the 24 bits a mapping records (new mappings would corrupt their block numbers)",
                    sb.time
                ),
            );
        }
        let device_blocks = self.device.size_bytes() / METADATA_BLOCK_BYTES as u64;
        self.nr_meta = sb.metadata_sm.nr_blocks;
        if self.nr_meta > device_blocks
            || space_map::nr_bitmaps(self.nr_meta) > MAX_METADATA_BITMAPS as u64
        {
            self.problem(
                Some(0),
                format!("the metadata space map covers {} blocks; the device holds {device_blocks} (truncated?)", self.nr_meta),
            );
            self.nr_meta = self
                .nr_meta
                .min(device_blocks)
                .min(MAX_METADATA_BITMAPS as u64 * space_map::ENTRIES_PER_BITMAP);
        }
        if sb.metadata_nr_blocks != sb.metadata_sm.nr_blocks {
            self.problem(
                Some(0),
                format!(
                    "superblock says {} metadata blocks, its space map {}",
                    sb.metadata_nr_blocks, sb.metadata_sm.nr_blocks
                ),
            );
        }
        self.progress_total = sb.metadata_sm.nr_allocated;
        self.meta_refs = vec![0; self.nr_meta as usize];
        self.meta_ref(SUPERBLOCK_LOCATION, None, "the superblock");

        // Metadata space map: the index block and its bitmaps, then its overflow counts.
        let meta_words = self.read_metadata_space_map(&sb.metadata_sm)?;
        let roots = self
            .root(sb.metadata_sm.ref_count_root, Tree::MetaRefCounts)
            .into_iter()
            .collect();
        self.walk(roots)?;

        // Data space map: the index tree first, so its size is known before counting.
        self.nr_data = sb.data_sm.nr_blocks;
        if self.nr_data > MAX_DATA_BLOCKS {
            self.problem(
                Some(0),
                format!(
                    "data space map has {} blocks, past the 40-bit limit",
                    self.nr_data
                ),
            );
            self.nr_data = 0;
        }
        let mut roots = Vec::new();
        roots.extend(self.root(sb.data_sm.bitmap_root, Tree::DataIndex));
        roots.extend(self.root(sb.data_sm.ref_count_root, Tree::DataRefCounts));
        self.walk(roots)?;
        let data_words = self.read_data_bitmaps(&sb.data_sm)?;

        // Details and mappings, the live ones and a held snapshot's.
        self.live_top_root = sb.data_mapping_root;
        self.live_details_root = sb.device_details_root;
        let mut roots = Vec::new();
        roots.extend(self.root(sb.device_details_root, Tree::Details));
        roots.extend(self.root(sb.data_mapping_root, Tree::Top));
        self.walk(roots)?;
        if sb.metadata_snap != 0
            && self.meta_ref(sb.metadata_snap, Some(0), "the metadata snapshot")
        {
            if let Some(held) = self.read_one(sb.metadata_snap)? {
                let held_sb = Superblock::parse(&held);
                if self.block_ok(sb.metadata_snap, BlockKind::Superblock, &held)
                    && held_sb.magic == SUPERBLOCK_MAGIC
                {
                    self.in_held = true;
                    let mut roots = Vec::new();
                    roots.extend(self.root(held_sb.device_details_root, Tree::Details));
                    roots.extend(self.root(held_sb.data_mapping_root, Tree::Top));
                    self.walk(roots)?;
                    self.in_held = false;
                } else if held_sb.magic != SUPERBLOCK_MAGIC {
                    self.problem(
                        Some(sb.metadata_snap),
                        "metadata snapshot is not a superblock".into(),
                    );
                }
            }
        }
        let subtrees: Vec<Visit> = {
            let mut roots: Vec<u64> = self.pending_subtrees.drain(..).collect();
            roots.sort_unstable();
            roots.dedup();
            roots
                .into_iter()
                .map(|b| Visit {
                    block: b,
                    tree: Tree::Sub,
                    lo: 0,
                    hi: None,
                    parent: None,
                })
                .collect()
        };
        self.walk(subtrees)?;

        self.compare_devices();
        self.compare_counts("metadata", &meta_words, &sb.metadata_sm, true);
        self.compare_counts("data", &data_words, &sb.data_sm, false);
        Ok(())
    }

    fn root(&mut self, block: u64, tree: Tree) -> Option<Visit> {
        self.meta_ref(block, Some(0), tree.spec().name)
            .then_some(Visit {
                block,
                tree,
                lo: 0,
                hi: None,
                parent: None,
            })
    }

    fn read_metadata_space_map(&mut self, root: &SmRoot) -> Result<Vec<u64>> {
        let nr_bitmaps = space_map::nr_bitmaps(self.nr_meta) as usize;
        let mut words = vec![0u64; nr_bitmaps * WORDS_PER_BITMAP];
        let index_block = root.bitmap_root;
        if !self.meta_ref(index_block, Some(0), "the metadata space map index") {
            return Ok(words);
        }
        let Some(index) = self.read_one(index_block)? else {
            return Ok(words);
        };
        if !self.block_ok(index_block, BlockKind::Index, &index) {
            return Ok(words);
        }
        let mut bitmaps = Vec::new();
        for i in 0..nr_bitmaps {
            let at = BITMAP_HEADER_BYTES + INDEX_ENTRY_BYTES * i;
            let entry = IndexEntry::parse(&index[at..at + INDEX_ENTRY_BYTES]);
            if self.meta_ref(
                entry.blocknr,
                Some(index_block),
                "metadata space map index entry",
            ) {
                bitmaps.push((entry.blocknr, i));
            }
        }
        self.read_bitmaps(bitmaps, &mut words)?;
        Ok(words)
    }

    fn read_data_bitmaps(&mut self, root: &SmRoot) -> Result<Vec<u64>> {
        // Leaves are visited in block order, not key order.
        self.data_index.sort_unstable_by_key(|e| e.0);
        let expected = space_map::nr_bitmaps(self.nr_data);
        let found = self.data_index.len() as u64;
        if found != expected
            || self
                .data_index
                .iter()
                .enumerate()
                .any(|(i, e)| e.0 != i as u64)
        {
            self.problem(
                Some(root.bitmap_root),
                format!("data space map index has {found} entries, expected bitmaps 0..{expected}"),
            );
            // Count only the blocks the index covers.
            self.nr_data = self.nr_data.min(found * space_map::ENTRIES_PER_BITMAP);
        }
        self.data_refs = vec![0; self.nr_data as usize];
        let nr_bitmaps = space_map::nr_bitmaps(self.nr_data) as usize;
        let mut words = vec![0u64; nr_bitmaps * WORDS_PER_BITMAP];
        let entries = std::mem::take(&mut self.data_index);
        let mut bitmaps = Vec::new();
        for &(i, entry) in &entries {
            if (i as usize) < nr_bitmaps
                && self.meta_ref(
                    entry.blocknr,
                    Some(root.bitmap_root),
                    "data space map index entry",
                )
            {
                bitmaps.push((entry.blocknr, i as usize));
            }
        }
        self.read_bitmaps(bitmaps, &mut words)?;
        Ok(words)
    }

    fn read_bitmaps(&mut self, mut bitmaps: Vec<(u64, usize)>, words: &mut [u64]) -> Result<()> {
        bitmaps.sort_unstable();
        let which: HashMap<u64, usize> = bitmaps.iter().copied().collect();
        let blocks: Vec<u64> = bitmaps.iter().map(|e| e.0).collect();
        self.read_sorted(&blocks, &mut |c, b, buf| {
            if !c.block_ok(b, BlockKind::Bitmap, buf) {
                return;
            }
            let Some(&i) = which.get(&b) else { return };
            for w in 0..WORDS_PER_BITMAP {
                words[i * WORDS_PER_BITMAP + w] = le64(buf, BITMAP_HEADER_BYTES + 8 * w);
            }
        })
    }
}

// Tree walking.
impl Checker<'_> {
    fn walk(&mut self, mut level: Vec<Visit>) -> Result<()> {
        while !level.is_empty() {
            level.sort_unstable_by_key(|v| v.block);
            let mut next = Vec::new();
            for chunk in level.chunks(CHUNK_BLOCKS) {
                let blocks: Vec<u64> = chunk.iter().map(|v| v.block).collect();
                let mut k = 0;
                self.read_sorted(&blocks, &mut |c, b, buf| {
                    // `blocks` is `chunk` in order; visits of one block are unique (counted once).
                    let visit = chunk[k];
                    k += 1;
                    debug_assert_eq!(visit.block, b);
                    c.visit(visit, buf, &mut next);
                })?;
            }
            level = next;
        }
        Ok(())
    }

    fn visit(&mut self, v: Visit, buf: &[u8], next: &mut Vec<Visit>) {
        let b = v.block;
        let spec = v.tree.spec();
        if !self.block_ok(b, BlockKind::Node, buf) {
            return;
        }
        if let Err(why) = check_node_structure(buf) {
            self.problem(Some(b), format!("{}: {why}", spec.name));
            return;
        }
        let node = NodeView { buf };
        let expected_vs = if node.is_leaf() { spec.value_size } else { 8 };
        if node.value_size() != expected_vs {
            self.problem(
                Some(b),
                format!(
                    "{} node has {}-byte values, expected {expected_vs}",
                    spec.name,
                    node.value_size()
                ),
            );
            return;
        }
        let n = node.len();
        if n > 0 {
            let (first, last) = (node.key(0), node.key(n - 1));
            if first < v.lo || v.hi.is_some_and(|hi| last >= hi) {
                self.problem(Some(b), format!(
                    "{} node keys {first}..={last} are outside the range {}..{} its parent {} gives it",
                    spec.name, v.lo, v.hi.map_or("".into(), |h| h.to_string()), v.parent.map_or("".into(), |p| p.to_string())
                ));
            }
        }
        if !node.is_leaf() {
            let mut kids = Vec::with_capacity(n);
            for i in 0..n {
                let child = node.value_u64(i);
                if self.meta_ref(child, Some(b), &format!("{} node entry {i}", spec.name)) {
                    let hi = if i + 1 < n {
                        Some(node.key(i + 1))
                    } else {
                        v.hi
                    };
                    next.push(Visit {
                        block: child,
                        tree: v.tree,
                        lo: node.key(i),
                        hi,
                        parent: Some(b),
                    });
                }
                kids.push(child);
            }
            if v.tree == Tree::Sub {
                self.children.insert(b, kids);
            }
            return;
        }
        match v.tree {
            Tree::Sub => {
                self.leaf_entries.insert(b, n as u64);
                self.report.nr_mappings += n as u64;
                for i in 0..n {
                    let data_block = node.value_u64(i) >> 24;
                    if data_block >= self.nr_data {
                        let nr_data = self.nr_data;
                        self.problem(Some(b), format!(
                            "mapping of virtual block {} points to data block {data_block}, past the end of the pool ({nr_data} blocks)",
                            node.key(i)
                        ));
                    } else {
                        self.data_ref(data_block);
                    }
                }
            }
            Tree::Top => {
                for i in 0..n {
                    let root = node.value_u64(i);
                    let key = node.key(i);
                    if !self.in_held {
                        match u32::try_from(key) {
                            Ok(dev) if dev <= super::MAX_DEV_ID => {
                                self.subtree_roots.insert(dev, root);
                            }
                            _ => self.problem(
                                Some(b),
                                format!("mapping tree has device id {key}, past 24 bits"),
                            ),
                        }
                    }
                    if self.meta_ref(root, Some(b), "mapping tree entry") {
                        self.pending_subtrees.push(root);
                    }
                }
            }
            Tree::Details => {
                if !self.in_held {
                    for i in 0..n {
                        let value = node.value(i);
                        let d = DeviceDetails {
                            mapped_blocks: le64(value, 0),
                            transaction_id: le64(value, 8),
                            creation_time: le32(value, 16),
                            snapshotted_time: le32(value, 20),
                        };
                        match u32::try_from(node.key(i)) {
                            Ok(dev) if dev <= super::MAX_DEV_ID => {
                                self.details.insert(dev, d);
                            }
                            _ => self.problem(
                                Some(b),
                                format!(
                                    "device details tree has device id {}, past 24 bits",
                                    node.key(i)
                                ),
                            ),
                        }
                    }
                }
            }
            Tree::DataIndex => {
                for i in 0..n {
                    self.data_index
                        .push((node.key(i), IndexEntry::parse(node.value(i))));
                }
            }
            Tree::DataRefCounts | Tree::MetaRefCounts => {
                let map = if v.tree == Tree::DataRefCounts {
                    &mut self.data_overflow
                } else {
                    &mut self.meta_overflow
                };
                for i in 0..n {
                    map.insert(node.key(i), le32(node.value(i), 0));
                }
            }
        }
    }
}

// Comparing what was found with what the metadata says.
impl Checker<'_> {
    /// Mappings under `block` of a subtree, each shared node counted each time it is reached.
    fn subtree_entries(&self, block: u64, memo: &mut HashMap<u64, u64>, depth: usize) -> u64 {
        if let Some(&n) = self.leaf_entries.get(&block) {
            return n;
        }
        if let Some(&n) = memo.get(&block) {
            return n;
        }
        let Some(kids) = self.children.get(&block) else {
            return 0;
        };
        if depth > super::btree::MAX_DEPTH {
            return 0;
        }
        let n = kids
            .iter()
            .map(|&k| self.subtree_entries(k, memo, depth + 1))
            .sum();
        memo.insert(block, n);
        n
    }

    fn compare_devices(&mut self) {
        let mut memo = HashMap::new();
        let live_top = self.live_top_root;
        let live_details = self.live_details_root;
        let roots = std::mem::take(&mut self.subtree_roots);
        let details = std::mem::take(&mut self.details);
        self.report.nr_devices = roots.len() as u64;
        for (&dev, &root) in &roots {
            match details.get(&dev) {
                None => self.problem(
                    Some(live_top),
                    format!("thin device {dev} has mappings but no details"),
                ),
                Some(d) => {
                    let found = self.subtree_entries(root, &mut memo, 0);
                    if found != d.mapped_blocks {
                        self.problem(
                            Some(root),
                            format!(
                                "thin device {dev} has {found} mappings but its details say {}",
                                d.mapped_blocks
                            ),
                        );
                    }
                }
            }
        }
        for &dev in details.keys() {
            if !roots.contains_key(&dev) {
                self.problem(
                    Some(live_details),
                    format!("thin device {dev} has details but no mapping tree"),
                );
            }
        }
    }

    fn compare_counts(&mut self, what: &str, words: &[u64], root: &SmRoot, metadata: bool) {
        let nr_blocks = if metadata { self.nr_meta } else { self.nr_data };
        let overflow = std::mem::take(if metadata {
            &mut self.meta_overflow
        } else {
            &mut self.data_overflow
        });
        let mut allocated = 0u64;
        for b in 0..nr_blocks {
            let Some(&word) = words.get((b / 32) as usize) else {
                break;
            };
            let raw = (word >> ((b % 32) * 2)) & 3;
            let mut count = decode(raw);
            if count == 3 {
                match overflow.get(&b) {
                    Some(&c) => count = c,
                    None => {
                        self.problem(None, format!("{what} block {b} is marked as overflowing but has no count in the reference count tree"));
                    }
                }
            }
            if count != 0 {
                allocated += 1;
            }
            let found = if metadata {
                self.meta_refs.get(b as usize).copied().unwrap_or(0)
            } else {
                self.data_refs_of(b)
            };
            if found != count {
                let block = metadata.then_some(b);
                self.problem(
                    block,
                    format!(
                    "{what} block {b}: the space map counts {count} references, {found} were found"
                ),
                );
            }
        }
        for (&b, &c) in &overflow {
            let raw_is_overflow = words
                .get((b / 32) as usize)
                .is_some_and(|w| (w >> ((b % 32) * 2)) & 3 == 3);
            if b >= nr_blocks || !raw_is_overflow || c < 3 {
                self.problem(
                    None,
                    format!("{what} reference count tree has a stray count {c} for block {b}"),
                );
            }
        }
        // Only the data space map's total is exact: tools that build metadata offline leave
        // the metadata one off by a block or so, and the kernel takes it as it is.
        if !metadata && allocated != root.nr_allocated {
            self.problem(
                Some(0),
                format!(
                    "{what} space map says {} blocks are allocated, its bitmaps {allocated}",
                    root.nr_allocated
                ),
            );
        }
    }
}
