//! tessera's block layer: one trait for everything that stores bytes, and its backends.
//!
//! Offsets and lengths are `u64` bytes throughout this crate. Every backend checks ranges
//! before touching data, so a request past the end is an error that names the device, never
//! a short read or a panic.

use std::sync::Arc;

pub mod badblocks;
mod error;
mod fault;
mod file;
mod memory;
pub mod nbd;
mod slice;

pub use error::{BlockError, Result};
pub use fault::{ErrorOn, FaultDevice, PowerDomain};
pub use file::{FileDevice, OpenOptions};
pub use memory::MemoryDevice;
pub use nbd::{NbdDevice, NbdOptions};
pub use slice::SliceDevice;

/// A device that stores bytes at offsets: an image file, a block device, memory, or a
/// wrapper around another device. Usable from many threads at once.
pub trait BlockDevice: Send + Sync {
    /// The name used in messages: the path for files and block devices.
    fn name(&self) -> &str;
    /// Size in bytes.
    fn size_bytes(&self) -> u64;
    /// Smallest unit the device can address (512 or 4096).
    fn logical_block_size(&self) -> u32 {
        512
    }
    /// Unit the device writes atomically and efficiently.
    fn physical_block_size(&self) -> u32 {
        4096
    }
    /// True if writes are refused.
    fn is_read_only(&self) -> bool {
        false
    }
    /// Fills `buf` from `offset`. The whole range must lie inside the device.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Writes `buf` at `offset`. The whole range must lie inside the device.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> Result<()>;
    /// Tells the device the range is unused; reads of it may return anything afterwards.
    fn discard(&self, offset: u64, len: u64) -> Result<()>;
    /// Makes the range read back as zeroes.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()>;
}

/// A shared handle to any block device.
pub type SharedDevice = Arc<dyn BlockDevice>;

/// Checks that `[offset, offset + len)` lies inside a device of `size` bytes.
pub fn check_range(device: &str, offset: u64, len: u64, size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(BlockError::OutOfRange {
            device: device.to_string(),
            offset,
            len,
            size,
        }),
    }
}
