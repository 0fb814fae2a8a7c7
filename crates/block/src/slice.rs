//! A range of another device as a device of its own: a partition of an image file or of a
//! disk the kernel did not split. I/O is checked against the slice and shifted onto the
//! parent, so nothing outside the range can be reached through it.

use crate::{check_range, BlockDevice, Result, SharedDevice};

pub struct SliceDevice {
    name: String,
    parent: SharedDevice,
    start: u64,
    len: u64,
}

impl SliceDevice {
    /// `len` bytes of `parent` from byte `start`; None when the range does not lie inside
    /// the parent.
    pub fn new(
        name: impl Into<String>,
        parent: SharedDevice,
        start: u64,
        len: u64,
    ) -> Option<Self> {
        let end = start.checked_add(len)?;
        (end <= parent.size_bytes()).then(|| SliceDevice {
            name: name.into(),
            parent,
            start,
            len,
        })
    }

    pub fn parent(&self) -> &SharedDevice {
        &self.parent
    }

    pub fn start(&self) -> u64 {
        self.start
    }
}

impl BlockDevice for SliceDevice {
    fn name(&self) -> &str {
        &self.name
    }
    fn size_bytes(&self) -> u64 {
        self.len
    }
    fn logical_block_size(&self) -> u32 {
        self.parent.logical_block_size()
    }
    fn physical_block_size(&self) -> u32 {
        self.parent.physical_block_size()
    }
    fn is_read_only(&self) -> bool {
        self.parent.is_read_only()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(&self.name, offset, buf.len() as u64, self.len)?;
        self.parent.read_at(buf, self.start + offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        check_range(&self.name, offset, buf.len() as u64, self.len)?;
        self.parent.write_at(buf, self.start + offset)
    }
    fn flush(&self) -> Result<()> {
        self.parent.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        check_range(&self.name, offset, len, self.len)?;
        self.parent.discard(self.start + offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        check_range(&self.name, offset, len, self.len)?;
        self.parent.write_zeroes(self.start + offset, len)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::MemoryDevice;

    #[test]
    fn a_slice_reaches_only_its_range() {
        let parent = Arc::new(MemoryDevice::new("disk", 8192));
        let slice = SliceDevice::new("disk1", parent.clone(), 1024, 2048).unwrap();
        slice.write_at(&[7u8; 512], 1536).unwrap();
        let mut b = [0u8; 512];
        parent.read_at(&mut b, 2560).unwrap();
        assert_eq!(b, [7u8; 512]);
        let err = slice.write_at(&[1u8; 512], 1800).unwrap_err();
        assert!(err.to_string().contains("disk1"), "{err}");
        slice.write_zeroes(1536, 512).unwrap();
        parent.read_at(&mut b, 2560).unwrap();
        assert_eq!(b, [0u8; 512]);
        assert!(SliceDevice::new("x", parent.clone(), 8000, 512).is_none());
        assert!(SliceDevice::new("x", parent, u64::MAX, 2).is_none());
    }
}
