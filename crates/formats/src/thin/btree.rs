//! The persistent-data btree node format and read-only walks.
//!
//! A node is one block: a 32-byte header (checksum, flags, location, entry count, capacity,
//! value size), then `max_entries` u64 keys, then `max_entries` values. Internal nodes hold
//! child block numbers (u64) as values; key `i` of an internal node is at most the lowest key
//! under child `i`. Capacity is a multiple of three so that a node split in two, or two
//! merged, stays at least a third full.

use super::checksum::BlockKind;
use super::store::Store;
use super::{Result, METADATA_BLOCK_BYTES};

pub const NODE_HEADER_BYTES: usize = 32;
pub const INTERNAL_NODE: u32 = 1;
pub const LEAF_NODE: u32 = 2;
/// Deeper than any real tree (a tree of 4 billion entries is 5 levels deep): a walk this deep
/// is going round a loop.
pub const MAX_DEPTH: usize = 32;

/// What a tree's leaf values are and what they hold references to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refs {
    /// Plain values.
    None,
    /// Roots of per-device mapping subtrees (the top level of the mapping tree).
    Subtree,
    /// `(data_block << 24) | time` (the mapping subtrees).
    Data,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeSpec {
    pub value_size: usize,
    pub refs: Refs,
    pub name: &'static str,
}

pub const TOP_LEVEL: TreeSpec = TreeSpec {
    value_size: 8,
    refs: Refs::Subtree,
    name: "mapping tree",
};
pub const SUBTREE: TreeSpec = TreeSpec {
    value_size: 8,
    refs: Refs::Data,
    name: "device mapping tree",
};
pub const DETAILS: TreeSpec = TreeSpec {
    value_size: 24,
    refs: Refs::None,
    name: "device details tree",
};
pub const SM_INDEX: TreeSpec = TreeSpec {
    value_size: 16,
    refs: Refs::None,
    name: "data space map index",
};
pub const REF_COUNTS: TreeSpec = TreeSpec {
    value_size: 4,
    refs: Refs::None,
    name: "reference count tree",
};

/// The capacity the kernel gives a node with values of `value_size` bytes.
pub fn max_entries(value_size: usize) -> u32 {
    let per_entry = 8 + value_size;
    let total = (METADATA_BLOCK_BYTES - NODE_HEADER_BYTES) / per_entry;
    (total / 3 * 3) as u32
}

pub fn le32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

pub fn le64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Checks a node's header and key order; the block's checksum and location are checked by
/// the caller.
pub fn check_node_structure(buf: &[u8]) -> std::result::Result<(), String> {
    let flags = le32(buf, 4);
    let nr = le32(buf, 16) as usize;
    let max = le32(buf, 20) as usize;
    let value_size = le32(buf, 24) as usize;
    if flags != INTERNAL_NODE && flags != LEAF_NODE {
        return Err(format!(
            "btree node has flags {flags:#x}, neither internal nor leaf"
        ));
    }
    if value_size == 0 || value_size > METADATA_BLOCK_BYTES {
        return Err(format!("btree node has value size {value_size}"));
    }
    if flags == INTERNAL_NODE && value_size != 8 {
        return Err(format!(
            "internal btree node has value size {value_size}, not 8"
        ));
    }
    let fits = max
        .checked_mul(8 + value_size)
        .and_then(|n| n.checked_add(NODE_HEADER_BYTES))
        .is_some_and(|n| n <= METADATA_BLOCK_BYTES);
    if max == 0 || !fits {
        return Err(format!(
            "btree node capacity {max} with {value_size}-byte values does not fit a block"
        ));
    }
    if nr > max {
        return Err(format!(
            "btree node has {nr} entries, more than its capacity {max}"
        ));
    }
    if flags == INTERNAL_NODE && nr == 0 {
        return Err("internal btree node has no entries".into());
    }
    let mut prev = None;
    for i in 0..nr {
        let key = le64(buf, NODE_HEADER_BYTES + 8 * i);
        if prev.is_some_and(|p| p >= key) {
            return Err(format!(
                "btree node keys out of order at entry {i} (key {key})"
            ));
        }
        prev = Some(key);
    }
    Ok(())
}

/// A checked node's bytes, read in place.
pub struct NodeView<'a> {
    pub buf: &'a [u8],
}

impl<'a> NodeView<'a> {
    pub fn is_leaf(&self) -> bool {
        le32(self.buf, 4) == LEAF_NODE
    }
    pub fn len(&self) -> usize {
        le32(self.buf, 16) as usize
    }
    pub fn max(&self) -> usize {
        le32(self.buf, 20) as usize
    }
    pub fn value_size(&self) -> usize {
        le32(self.buf, 24) as usize
    }
    pub fn key(&self, i: usize) -> u64 {
        le64(self.buf, NODE_HEADER_BYTES + 8 * i)
    }
    pub fn value(&self, i: usize) -> &'a [u8] {
        let vs = self.value_size();
        let at = NODE_HEADER_BYTES + 8 * self.max() + vs * i;
        &self.buf[at..at + vs]
    }
    pub fn value_u64(&self, i: usize) -> u64 {
        le64(self.value(i), 0)
    }
    /// Index of the last key `<= key`, if any.
    pub fn lower_bound(&self, key: u64) -> Option<usize> {
        let (mut lo, mut hi) = (0usize, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.key(mid) <= key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.checked_sub(1)
    }
    pub fn find_exact(&self, key: u64) -> Option<usize> {
        self.lower_bound(key).filter(|&i| self.key(i) == key)
    }
}

/// A node taken apart for changing.
#[derive(Debug, Clone)]
pub struct Node {
    pub leaf: bool,
    pub max: usize,
    pub value_size: usize,
    pub keys: Vec<u64>,
    /// `value_size` bytes per entry.
    pub values: Vec<u8>,
}

impl Node {
    pub fn empty_leaf(spec: &TreeSpec) -> Node {
        Node {
            leaf: true,
            max: max_entries(spec.value_size) as usize,
            value_size: spec.value_size,
            keys: Vec::new(),
            values: Vec::new(),
        }
    }

    pub fn from_view(view: &NodeView<'_>) -> Node {
        let n = view.len();
        let vs = view.value_size();
        let start = NODE_HEADER_BYTES + 8 * view.max();
        Node {
            leaf: view.is_leaf(),
            max: view.max(),
            value_size: vs,
            keys: (0..n).map(|i| view.key(i)).collect(),
            values: view.buf[start..start + vs * n].to_vec(),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }
    pub fn value(&self, i: usize) -> &[u8] {
        &self.values[i * self.value_size..(i + 1) * self.value_size]
    }
    pub fn value_u64(&self, i: usize) -> u64 {
        le64(self.value(i), 0)
    }
    pub fn set_value(&mut self, i: usize, v: &[u8]) {
        let vs = self.value_size;
        self.values[i * vs..(i + 1) * vs].copy_from_slice(v);
    }
    pub fn insert_at(&mut self, i: usize, key: u64, v: &[u8]) {
        let vs = self.value_size;
        self.keys.insert(i, key);
        self.values.splice(i * vs..i * vs, v.iter().copied());
    }
    pub fn remove_at(&mut self, i: usize) -> Vec<u8> {
        let vs = self.value_size;
        self.keys.remove(i);
        self.values.drain(i * vs..(i + 1) * vs).collect()
    }
    /// Index of the last key `<= key`, if any.
    pub fn lower_bound(&self, key: u64) -> Option<usize> {
        self.keys.partition_point(|&k| k <= key).checked_sub(1)
    }
    /// Moves entries `at..` into a new node.
    pub fn split_off(&mut self, at: usize) -> Node {
        Node {
            leaf: self.leaf,
            max: self.max,
            value_size: self.value_size,
            keys: self.keys.split_off(at),
            values: self.values.split_off(at * self.value_size),
        }
    }
    pub fn append(&mut self, other: &mut Node) {
        self.keys.append(&mut other.keys);
        self.values.append(&mut other.values);
    }

    /// The node as a block at `location` (checksum left for the commit to fill in).
    pub fn to_block(&self, location: u64) -> Vec<u8> {
        let mut buf = vec![0u8; METADATA_BLOCK_BYTES];
        let flags = if self.leaf { LEAF_NODE } else { INTERNAL_NODE };
        buf[4..8].copy_from_slice(&flags.to_le_bytes());
        buf[8..16].copy_from_slice(&location.to_le_bytes());
        buf[16..20].copy_from_slice(&(self.keys.len() as u32).to_le_bytes());
        buf[20..24].copy_from_slice(&(self.max as u32).to_le_bytes());
        buf[24..28].copy_from_slice(&(self.value_size as u32).to_le_bytes());
        for (i, k) in self.keys.iter().enumerate() {
            let at = NODE_HEADER_BYTES + 8 * i;
            buf[at..at + 8].copy_from_slice(&k.to_le_bytes());
        }
        let start = NODE_HEADER_BYTES + 8 * self.max;
        buf[start..start + self.values.len()].copy_from_slice(&self.values);
        buf
    }
}

impl Store {
    /// Node `block` of a tree of `spec`, checked to have that tree's value size.
    pub fn read_node(&self, block: u64, spec: &TreeSpec) -> Result<super::store::Buf> {
        let buf = self.read(block, BlockKind::Node)?;
        let view = NodeView { buf: &buf };
        let expected = if view.is_leaf() { spec.value_size } else { 8 };
        if view.value_size() != expected {
            return Err(self.corrupt(
                block,
                format!(
                    "{} node has {}-byte values, expected {expected}",
                    spec.name,
                    view.value_size()
                ),
            ));
        }
        Ok(buf)
    }

    /// The value stored under `key` in the tree at `root`.
    pub fn find(&self, root: u64, spec: &TreeSpec, key: u64) -> Result<Option<Vec<u8>>> {
        let mut block = root;
        for _ in 0..MAX_DEPTH {
            let buf = self.read_node(block, spec)?;
            let node = NodeView { buf: &buf };
            if node.is_leaf() {
                return Ok(node.find_exact(key).map(|i| node.value(i).to_vec()));
            }
            match node.lower_bound(key) {
                Some(i) => block = node.value_u64(i),
                None => return Ok(None),
            }
        }
        Err(self.corrupt(
            block,
            format!("{} is deeper than {MAX_DEPTH} levels (a loop?)", spec.name),
        ))
    }

    /// `find` for 8-byte values, without allocating.
    pub fn find_u64(&self, root: u64, spec: &TreeSpec, key: u64) -> Result<Option<u64>> {
        let mut block = root;
        for _ in 0..MAX_DEPTH {
            let buf = self.read_node(block, spec)?;
            let node = NodeView { buf: &buf };
            if node.is_leaf() {
                return Ok(node.find_exact(key).map(|i| node.value_u64(i)));
            }
            match node.lower_bound(key) {
                Some(i) => block = node.value_u64(i),
                None => return Ok(None),
            }
        }
        Err(self.corrupt(
            block,
            format!("{} is deeper than {MAX_DEPTH} levels (a loop?)", spec.name),
        ))
    }

    /// The highest key in the tree at `block`, if it has any.
    pub fn highest_key(&self, block: u64, spec: &TreeSpec, depth: usize) -> Result<Option<u64>> {
        if depth >= MAX_DEPTH {
            return Err(self.corrupt(
                block,
                format!("{} is deeper than {MAX_DEPTH} levels (a loop?)", spec.name),
            ));
        }
        let buf = self.read_node(block, spec)?;
        let node = NodeView { buf: &buf };
        if node.is_leaf() {
            return Ok(node.len().checked_sub(1).map(|i| node.key(i)));
        }
        // Children are never empty in trees tessera or the kernel write; walk left past any.
        for i in (0..node.len()).rev() {
            if let Some(key) = self.highest_key(node.value_u64(i), spec, depth + 1)? {
                return Ok(Some(key));
            }
        }
        Ok(None)
    }

    /// Calls `f` on every entry with `begin <= key < end`, in key order. Fails on keys out of
    /// order across nodes (so a loop cannot repeat entries) and on trees deeper than
    /// [`MAX_DEPTH`].
    pub fn walk(
        &self,
        root: u64,
        spec: &TreeSpec,
        begin: u64,
        end: u64,
        f: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut last = None;
        self.walk_node(root, spec, (begin, end), (0, None), 0, &mut last, f)
    }

    #[allow(clippy::too_many_arguments)]
    /// `wanted` is the range of keys asked for; keys in the node must lie in `bounds`, the
    /// range its parent gives it, or a lookup would not find them.
    fn walk_node(
        &self,
        block: u64,
        spec: &TreeSpec,
        wanted: (u64, u64),
        bounds: (u64, Option<u64>),
        depth: usize,
        last: &mut Option<u64>,
        f: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let (begin, end) = wanted;
        if depth >= MAX_DEPTH {
            return Err(self.corrupt(
                block,
                format!("{} is deeper than {MAX_DEPTH} levels (a loop?)", spec.name),
            ));
        }
        let buf = self.read_node(block, spec)?;
        let node = NodeView { buf: &buf };
        if let Some(n) = node.len().checked_sub(1) {
            let (first, last_key) = (node.key(0), node.key(n));
            if first < bounds.0 || bounds.1.is_some_and(|hi| last_key >= hi) {
                return Err(self.corrupt(
                    block,
                    format!("{} node keys {first}..={last_key} lie outside the range its parent gives it", spec.name),
                ));
            }
        }
        let first = node.lower_bound(begin).unwrap_or(0);
        for i in first..node.len() {
            let key = node.key(i);
            if key >= end {
                break;
            }
            if node.is_leaf() {
                if key < begin {
                    continue;
                }
                if last.is_some_and(|l| l >= key) {
                    return Err(
                        self.corrupt(block, format!("{} key {key} is out of order", spec.name))
                    );
                }
                *last = Some(key);
                f(key, node.value(i))?;
            } else {
                let hi = if i + 1 < node.len() {
                    Some(node.key(i + 1))
                } else {
                    bounds.1
                };
                self.walk_node(
                    node.value_u64(i),
                    spec,
                    wanted,
                    (key, hi),
                    depth + 1,
                    last,
                    f,
                )?;
            }
        }
        Ok(())
    }
}
