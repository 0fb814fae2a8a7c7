//! A device in memory, for unit tests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::{check_range, BlockDevice, BlockError, Result};

/// Storage is allocated in chunks of this many bytes, on first write.
const CHUNK: u64 = 64 * 1024;

/// A block device held in memory. **For unit tests only**: real work goes through
/// [`FileDevice`](crate::FileDevice) on files or block devices, as the design asks.
///
/// Storage is sparse: a chunk is allocated on its first write and unwritten bytes read as
/// zeroes, so a test may create a multi-terabyte device cheaply. Discard zeroes the range.
#[derive(Debug)]
pub struct MemoryDevice {
    name: String,
    size: u64,
    logical: u32,
    physical: u32,
    read_only: AtomicBool,
    chunks: RwLock<BTreeMap<u64, Box<[u8]>>>,
}

impl MemoryDevice {
    /// A zero-filled device of `size_bytes` bytes with 512-byte logical and 4096-byte
    /// physical blocks.
    pub fn new(name: impl Into<String>, size_bytes: u64) -> Self {
        MemoryDevice {
            name: name.into(),
            size: size_bytes,
            logical: 512,
            physical: 4096,
            read_only: AtomicBool::new(false),
            chunks: RwLock::new(BTreeMap::new()),
        }
    }

    /// A device whose size and contents are `data`.
    pub fn with_contents(name: impl Into<String>, data: &[u8]) -> Self {
        let dev = Self::new(name, data.len() as u64);
        dev.store(data, 0);
        dev
    }

    /// Sets the block sizes reported to callers (e.g. 4096/4096 for a 4Kn disk).
    pub fn with_block_sizes(mut self, logical: u32, physical: u32) -> Self {
        self.logical = logical;
        self.physical = physical;
        self
    }

    /// Makes later writes, discards and write-zeroes fail (or succeed again).
    pub fn set_read_only(&self, read_only: bool) {
        self.read_only.store(read_only, Ordering::Relaxed);
    }

    /// A copy of the whole device (allocates its full size).
    pub fn contents(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.size as usize];
        self.load(&mut out, 0);
        out
    }

    fn chunks(&self) -> RwLockReadGuard<'_, BTreeMap<u64, Box<[u8]>>> {
        self.chunks.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn chunks_mut(&self) -> RwLockWriteGuard<'_, BTreeMap<u64, Box<[u8]>>> {
        self.chunks.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn load(&self, buf: &mut [u8], offset: u64) {
        let chunks = self.chunks();
        for (index, within, range) in pieces(offset, buf.len()) {
            let dst = &mut buf[range];
            match chunks.get(&index) {
                Some(chunk) => dst.copy_from_slice(&chunk[within..within + dst.len()]),
                None => dst.fill(0),
            }
        }
    }

    fn store(&self, buf: &[u8], offset: u64) {
        let mut chunks = self.chunks_mut();
        for (index, within, range) in pieces(offset, buf.len()) {
            let chunk = chunks
                .entry(index)
                .or_insert_with(|| vec![0u8; CHUNK as usize].into_boxed_slice());
            chunk[within..within + range.len()].copy_from_slice(&buf[range]);
        }
    }

    fn zero(&self, offset: u64, len: u64) {
        let mut chunks = self.chunks_mut();
        let first = offset / CHUNK;
        let last = (offset + len).div_ceil(CHUNK);
        for index in first..last {
            let start = (index * CHUNK).max(offset);
            let end = (index * CHUNK).saturating_add(CHUNK).min(offset + len);
            if end - start == CHUNK {
                chunks.remove(&index);
            } else if let Some(chunk) = chunks.get_mut(&index) {
                let base = index * CHUNK;
                chunk[(start - base) as usize..(end - base) as usize].fill(0);
            }
        }
    }

    fn check_write(&self, offset: u64, len: u64) -> Result<()> {
        check_range(&self.name, offset, len, self.size)?;
        if self.read_only.load(Ordering::Relaxed) {
            return Err(BlockError::ReadOnly {
                device: self.name.clone(),
            });
        }
        Ok(())
    }
}

/// Splits a request into (chunk index, offset inside the chunk, range of the caller's buffer).
fn pieces(offset: u64, len: usize) -> impl Iterator<Item = (u64, usize, std::ops::Range<usize>)> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let pos = offset + done as u64;
        let within = (pos % CHUNK) as usize;
        let n = (len - done).min(CHUNK as usize - within);
        let item = (pos / CHUNK, within, done..done + n);
        done += n;
        Some(item)
    })
}

impl BlockDevice for MemoryDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn size_bytes(&self) -> u64 {
        self.size
    }

    fn logical_block_size(&self) -> u32 {
        self.logical
    }

    fn physical_block_size(&self) -> u32 {
        self.physical
    }

    fn is_read_only(&self) -> bool {
        self.read_only.load(Ordering::Relaxed)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(&self.name, offset, buf.len() as u64, self.size)?;
        self.load(buf, offset);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_write(offset, buf.len() as u64)?;
        self.store(buf, offset);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.check_write(offset, len)?;
        self.zero(offset, len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_across_chunks() {
        let dev = MemoryDevice::new("mem0", 4 * CHUNK);
        let data: Vec<u8> = (0..CHUNK as usize + 1000)
            .map(|i| (i % 251) as u8)
            .collect();
        dev.write_at(&data, CHUNK - 500).unwrap();
        let mut back = vec![0u8; data.len()];
        dev.read_at(&mut back, CHUNK - 500).unwrap();
        assert_eq!(back, data);
        let all = dev.contents();
        assert_eq!(all.len() as u64, 4 * CHUNK);
        assert!(all[..(CHUNK - 500) as usize].iter().all(|&b| b == 0));
        assert_eq!(&all[(CHUNK - 500) as usize..][..data.len()], &data[..]);
    }

    #[test]
    fn range_checks_name_the_device() {
        let dev = MemoryDevice::new("mem1", 4096);
        let mut buf = [0u8; 16];
        let err = dev.read_at(&mut buf, 4090).unwrap_err();
        assert!(matches!(
            err,
            BlockError::OutOfRange {
                offset: 4090,
                len: 16,
                size: 4096,
                ..
            }
        ));
        assert!(err.to_string().starts_with("mem1:"));
        assert!(dev.write_at(&buf, u64::MAX).is_err());
        assert!(dev.write_zeroes(4000, 97).is_err());
        assert!(dev.discard(u64::MAX, 2).is_err());
        // The last bytes and empty requests at the end are fine.
        dev.read_at(&mut buf, 4080).unwrap();
        dev.write_at(&[], 4096).unwrap();
    }

    #[test]
    fn zeroes_and_discard_read_back_zero() {
        let dev = MemoryDevice::with_contents("mem2", &vec![0xAA; 3 * CHUNK as usize]);
        dev.write_zeroes(100, CHUNK + 200).unwrap();
        dev.discard(2 * CHUNK + 10, 20).unwrap();
        let all = dev.contents();
        for (i, &b) in all.iter().enumerate() {
            let i = i as u64;
            let zero =
                (100..CHUNK + 300).contains(&i) || (2 * CHUNK + 10..2 * CHUNK + 30).contains(&i);
            assert_eq!(b, if zero { 0 } else { 0xAA }, "byte {i}");
        }
    }

    #[test]
    fn read_only_refuses_writes() {
        let dev = MemoryDevice::new("mem3", 4096).with_block_sizes(4096, 4096);
        assert_eq!(dev.logical_block_size(), 4096);
        dev.set_read_only(true);
        assert!(dev.is_read_only());
        assert!(matches!(
            dev.write_at(&[1], 0),
            Err(BlockError::ReadOnly { .. })
        ));
        assert!(matches!(
            dev.write_zeroes(0, 1),
            Err(BlockError::ReadOnly { .. })
        ));
        assert!(matches!(
            dev.discard(0, 1),
            Err(BlockError::ReadOnly { .. })
        ));
        dev.set_read_only(false);
        dev.write_at(&[1], 0).unwrap();
    }

    #[test]
    fn huge_sparse_device_is_cheap() {
        let dev = MemoryDevice::new("big", 1 << 40);
        dev.write_at(b"end", (1 << 40) - 3).unwrap();
        let mut buf = [0u8; 3];
        dev.read_at(&mut buf, (1 << 40) - 3).unwrap();
        assert_eq!(&buf, b"end");
    }
}
