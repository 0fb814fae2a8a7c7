//! Reference counts, as the on-disk space maps keep them: two bits per block in bitmap
//! blocks of 16320 entries (0, 1, 2, or 3 meaning "look in the overflow tree"), the bitmaps
//! found through an index (a btree for data, one index block for metadata), overflow counts
//! in a btree of u64 -> u32.
//!
//! tessera holds each space map's bitmaps in memory in their on-disk encoding, plus a copy as
//! of the last commit so that blocks freed in a transaction are not handed out again before
//! it commits.

use std::collections::{BTreeMap, BTreeSet};

use super::btree::le64;

pub const ENTRIES_PER_BITMAP: u64 = 16_320;
pub const WORDS_PER_BITMAP: usize = 510;
pub const BITMAP_HEADER_BYTES: usize = 16;
/// Space map root as stored in the superblock's 128-byte fields.
pub const SM_ROOT_BYTES: usize = 32;
/// Bitmaps one metadata index block can point to.
pub const MAX_METADATA_BITMAPS: usize = 255;
pub const INDEX_ENTRY_BYTES: usize = 16;

const LOW_BITS: u64 = 0x5555_5555_5555_5555;

/// `{nr_blocks, nr_allocated, bitmap_root, ref_count_root}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SmRoot {
    pub nr_blocks: u64,
    pub nr_allocated: u64,
    pub bitmap_root: u64,
    pub ref_count_root: u64,
}

impl SmRoot {
    pub fn parse(b: &[u8]) -> SmRoot {
        SmRoot {
            nr_blocks: le64(b, 0),
            nr_allocated: le64(b, 8),
            bitmap_root: le64(b, 16),
            ref_count_root: le64(b, 24),
        }
    }
    pub fn write(&self, b: &mut [u8]) {
        b[0..8].copy_from_slice(&self.nr_blocks.to_le_bytes());
        b[8..16].copy_from_slice(&self.nr_allocated.to_le_bytes());
        b[16..24].copy_from_slice(&self.bitmap_root.to_le_bytes());
        b[24..32].copy_from_slice(&self.ref_count_root.to_le_bytes());
    }
}

/// An index entry: where a bitmap is and how full it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexEntry {
    pub blocknr: u64,
    pub nr_free: u32,
    pub none_free_before: u32,
}

impl IndexEntry {
    pub fn parse(b: &[u8]) -> IndexEntry {
        IndexEntry {
            blocknr: le64(b, 0),
            nr_free: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            none_free_before: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        }
    }
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.blocknr.to_le_bytes());
        b[8..12].copy_from_slice(&self.nr_free.to_le_bytes());
        b[12..16].copy_from_slice(&self.none_free_before.to_le_bytes());
        b
    }
}

/// The count a 2-bit field stores: the disk keeps the two bits swapped.
#[inline]
pub fn decode(raw: u64) -> u32 {
    (((raw & 1) << 1) | (raw >> 1)) as u32
}

#[inline]
fn encode(count: u32) -> u64 {
    let c = u64::from(count.min(3));
    ((c & 1) << 1) | (c >> 1)
}

pub fn nr_bitmaps(nr_blocks: u64) -> u64 {
    nr_blocks.div_ceil(ENTRIES_PER_BITMAP)
}

/// One space map's counts.
#[derive(Debug, Clone, Default)]
pub struct RefCounts {
    pub nr_blocks: u64,
    words: Vec<u64>,
    committed: Vec<u64>,
    /// Counts of 3 and more.
    overflow: BTreeMap<u64, u32>,
    /// Bitmaps changed since the last commit.
    pub dirty_bitmaps: BTreeSet<u64>,
    /// Blocks whose overflow entry must be written or removed at the commit.
    pub dirty_overflow: BTreeSet<u64>,
    /// Where each bitmap is on the metadata device (0: not written yet).
    pub bitmap_blocks: Vec<u64>,
    pub nr_allocated: u64,
    /// Blocks free at the last commit that are in use now.
    allocated_this_transaction: u64,
    /// `nr_allocated` at the last commit.
    committed_allocated: u64,
    /// Where the next search for a free block starts.
    hint: u64,
}

impl RefCounts {
    pub fn new(nr_blocks: u64) -> RefCounts {
        let nb = nr_bitmaps(nr_blocks);
        RefCounts {
            nr_blocks,
            words: vec![0; nb as usize * WORDS_PER_BITMAP],
            committed: vec![0; nb as usize * WORDS_PER_BITMAP],
            bitmap_blocks: vec![0; nb as usize],
            dirty_bitmaps: (0..nb).collect(),
            ..Default::default()
        }
    }

    /// Takes bitmap `i` as read from its block.
    pub fn load_bitmap(&mut self, i: u64, location: u64, block: &[u8]) {
        let base = i as usize * WORDS_PER_BITMAP;
        for w in 0..WORDS_PER_BITMAP {
            let word = le64(block, BITMAP_HEADER_BYTES + 8 * w);
            self.words[base + w] = word;
            self.committed[base + w] = word;
        }
        self.bitmap_blocks[i as usize] = location;
        self.dirty_bitmaps.remove(&i);
    }

    /// Takes an overflow count as read from the ref-count tree.
    pub fn load_overflow(&mut self, block: u64, count: u32) {
        self.overflow.insert(block, count);
    }

    /// Counts allocated blocks, once everything is loaded.
    pub fn finish_load(&mut self) {
        self.nr_allocated = (0..self.nr_bitmaps()).map(|i| self.used_in_bitmap(i)).sum();
        self.committed_allocated = self.nr_allocated;
        self.allocated_this_transaction = 0;
        self.dirty_overflow.clear();
    }

    pub fn nr_bitmaps(&self) -> u64 {
        self.bitmap_blocks.len() as u64
    }

    #[inline]
    fn raw(&self, b: u64) -> u64 {
        (self.words[(b / 32) as usize] >> ((b % 32) * 2)) & 3
    }

    /// `b`'s count; 0 past the end.
    pub fn get(&self, b: u64) -> u32 {
        if b >= self.nr_blocks {
            return 0;
        }
        match decode(self.raw(b)) {
            3 => self.overflow.get(&b).copied().unwrap_or(3),
            c => c,
        }
    }

    pub fn set(&mut self, b: u64, count: u32) {
        if b >= self.nr_blocks {
            return;
        }
        let old = self.get(b);
        if old == count {
            return;
        }
        let w = (b / 32) as usize;
        let shift = (b % 32) * 2;
        self.words[w] = (self.words[w] & !(3 << shift)) | (encode(count) << shift);
        if old >= 3 || count >= 3 {
            self.dirty_overflow.insert(b);
            if count >= 3 {
                self.overflow.insert(b, count);
            } else {
                self.overflow.remove(&b);
            }
        }
        let committed_free = (self.committed[w] >> shift) & 3 == 0;
        match (old, count) {
            (0, _) => {
                self.nr_allocated += 1;
                if committed_free {
                    self.allocated_this_transaction += 1;
                }
            }
            (_, 0) => {
                self.nr_allocated = self.nr_allocated.saturating_sub(1);
                if committed_free {
                    self.allocated_this_transaction =
                        self.allocated_this_transaction.saturating_sub(1);
                }
                self.hint = self.hint.min(b);
            }
            _ => {}
        }
        self.dirty_bitmaps.insert(b / ENTRIES_PER_BITMAP);
    }

    /// Blocks that can be allocated before the next commit: free now and at the last commit
    /// (blocks freed in the open transaction are not, until it commits).
    pub fn allocatable(&self) -> u64 {
        self.nr_blocks
            .saturating_sub(self.committed_allocated)
            .saturating_sub(self.allocated_this_transaction)
    }

    /// A block free now and at the last commit, searching from the hint.
    pub fn find_free(&mut self) -> Option<u64> {
        let nr_words = self.nr_blocks.div_ceil(32) as usize;
        let start = (self.hint / 32) as usize;
        for w in (start..nr_words).chain(0..start.min(nr_words)) {
            let both = self.words[w] | self.committed[w];
            let used = (both | (both >> 1)) & LOW_BITS;
            let free = !used & LOW_BITS;
            if free != 0 {
                let b = w as u64 * 32 + u64::from(free.trailing_zeros() / 2);
                if b < self.nr_blocks {
                    self.hint = b;
                    return Some(b);
                }
            }
        }
        None
    }

    /// Blocks in bitmap `i` with a non-zero count.
    pub fn used_in_bitmap(&self, i: u64) -> u64 {
        let base = i as usize * WORDS_PER_BITMAP;
        self.words[base..base + WORDS_PER_BITMAP]
            .iter()
            .map(|&w| u64::from(((w | (w >> 1)) & LOW_BITS).count_ones()))
            .sum()
    }

    /// Bitmap `i`'s index entry as the kernel keeps it: free entries counted over the whole
    /// bitmap, the first free one.
    pub fn index_entry(&self, i: u64) -> IndexEntry {
        let base = i as usize * WORDS_PER_BITMAP;
        let used = self.used_in_bitmap(i);
        let mut first_free = ENTRIES_PER_BITMAP;
        for (wi, &w) in self.words[base..base + WORDS_PER_BITMAP].iter().enumerate() {
            let free = !((w | (w >> 1)) & LOW_BITS) & LOW_BITS;
            if free != 0 {
                first_free = wi as u64 * 32 + u64::from(free.trailing_zeros() / 2);
                break;
            }
        }
        IndexEntry {
            blocknr: self.bitmap_blocks[i as usize],
            nr_free: (ENTRIES_PER_BITMAP - used) as u32,
            none_free_before: first_free as u32,
        }
    }

    /// Bitmap `i` as a block at `location` (checksum left for the commit).
    pub fn bitmap_block(&self, i: u64, location: u64) -> Vec<u8> {
        let mut buf = vec![0u8; super::METADATA_BLOCK_BYTES];
        buf[8..16].copy_from_slice(&location.to_le_bytes());
        let base = i as usize * WORDS_PER_BITMAP;
        for (w, word) in self.words[base..base + WORDS_PER_BITMAP].iter().enumerate() {
            let at = BITMAP_HEADER_BYTES + 8 * w;
            buf[at..at + 8].copy_from_slice(&word.to_le_bytes());
        }
        buf
    }

    /// Grows to `nr_blocks`; new bitmaps are dirty and have no block yet.
    pub fn grow(&mut self, nr_blocks: u64) {
        if nr_blocks <= self.nr_blocks {
            return;
        }
        let old_bitmaps = self.nr_bitmaps();
        let nb = nr_bitmaps(nr_blocks);
        self.words.resize(nb as usize * WORDS_PER_BITMAP, 0);
        self.committed.resize(nb as usize * WORDS_PER_BITMAP, 0);
        self.bitmap_blocks.resize(nb as usize, 0);
        self.dirty_bitmaps.extend(old_bitmaps..nb);
        // The last old bitmap's index entry does not change: entries past the end were
        // counted free already.
        self.nr_blocks = nr_blocks;
    }

    /// The commit happened: the current counts are the committed ones.
    pub fn committed_now(&mut self) {
        for &i in &self.dirty_bitmaps {
            let base = i as usize * WORDS_PER_BITMAP;
            self.committed[base..base + WORDS_PER_BITMAP]
                .copy_from_slice(&self.words[base..base + WORDS_PER_BITMAP]);
        }
        self.dirty_bitmaps.clear();
        self.dirty_overflow.clear();
        self.committed_allocated = self.nr_allocated;
        self.allocated_this_transaction = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_round_trip_through_the_swapped_encoding() {
        for c in 0..3 {
            assert_eq!(decode(encode(c)), c);
        }
        assert_eq!(encode(1), 2, "the disk keeps count 1 as raw 2");
        let mut rc = RefCounts::new(40_000);
        rc.set(5, 1);
        rc.set(6, 2);
        rc.set(7, 9);
        assert_eq!((rc.get(5), rc.get(6), rc.get(7), rc.get(8)), (1, 2, 9, 0));
        assert_eq!(rc.nr_allocated, 3);
        assert_eq!(rc.find_free(), Some(0));
        rc.set(7, 0);
        assert!(rc.dirty_overflow.contains(&7));
        assert_eq!(rc.index_entry(0).nr_free as u64, ENTRIES_PER_BITMAP - 2);
    }

    #[test]
    fn blocks_freed_before_a_commit_are_not_reused() {
        let mut rc = RefCounts::new(100);
        rc.set(0, 1);
        rc.committed_now();
        assert_eq!(rc.allocatable(), 99);
        rc.set(0, 0);
        assert_eq!(
            rc.allocatable(),
            99,
            "freed in the transaction: not allocatable yet"
        );
        assert_eq!(rc.find_free(), Some(1));
        rc.set(1, 1);
        rc.set(2, 1);
        assert_eq!(rc.allocatable(), 97);
        rc.set(2, 0);
        assert_eq!(
            rc.allocatable(),
            98,
            "allocated and freed in the transaction: allocatable"
        );
        rc.set(1, 0);
        rc.committed_now();
        rc.set(1, 1);
        assert_eq!(rc.find_free(), Some(0));
    }
}
