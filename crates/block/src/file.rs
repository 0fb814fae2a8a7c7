//! Regular files and block devices: positional I/O, optional O_DIRECT.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use crate::{check_range, BlockDevice, BlockError, Result};

/// Upper bound on one bounce buffer or zero buffer, so large requests need bounded memory.
const CHUNK: usize = 1 << 20;
/// Smallest O_DIRECT alignment we use: safe for every filesystem and for page-size DMA.
const MIN_DIRECT_ALIGN: u64 = 4096;

// ioctl numbers from <linux/fs.h>, which libc does not all define. These architectures encode
// the _IO/_IOR direction bits differently.
#[cfg(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "mips32r6",
    target_arch = "mips64r6",
    target_arch = "sparc",
    target_arch = "sparc64"
))]
mod ioc {
    pub const NONE: u64 = 1 << 29;
    pub const READ: u64 = 2 << 29;
}
#[cfg(not(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "mips32r6",
    target_arch = "mips64r6",
    target_arch = "sparc",
    target_arch = "sparc64"
)))]
mod ioc {
    pub const NONE: u64 = 0;
    pub const READ: u64 = 2 << 30;
}
const BLKGETSIZE64: u64 = ioc::READ | ((std::mem::size_of::<usize>() as u64) << 16) | 0x1200 | 114;
const BLKDISCARD: u64 = ioc::NONE | 0x1200 | 119;
const BLKZEROOUT: u64 = ioc::NONE | 0x1200 | 127;

/// How [`FileDevice::open`] opens its path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// Open without write access; writes, discards and write-zeroes fail with
    /// [`BlockError::ReadOnly`].
    pub read_only: bool,
    /// Bypass the page cache with O_DIRECT. Falls back to buffered I/O where the filesystem
    /// refuses O_DIRECT; [`FileDevice::is_direct`] tells which one is in effect.
    pub direct: bool,
}

/// A regular file (an image) or a block device.
#[derive(Debug)]
pub struct FileDevice {
    name: String,
    /// Opened with O_DIRECT when `direct` is set, buffered otherwise.
    file: File,
    is_block: bool,
    size: u64,
    logical: u32,
    physical: u32,
    read_only: bool,
    direct: Option<Direct>,
}

/// State for O_DIRECT I/O.
#[derive(Debug)]
struct Direct {
    /// A buffered handle for the bytes past `limit`: O_DIRECT moves whole aligned blocks and
    /// would otherwise read short or extend the file there.
    buffered: File,
    align: u64,
    /// End of the last whole aligned block inside the device.
    limit: u64,
    /// Serializes read-modify-write of edge blocks, so two unaligned writes that share a
    /// block cannot undo each other.
    rmw: Mutex<()>,
}

impl FileDevice {
    /// Opens a regular file or a block device. Its name is `path` as given.
    pub fn open(path: impl AsRef<Path>, options: OpenOptions) -> Result<Self> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let open_err = |source| BlockError::Open {
            device: name.clone(),
            source,
        };
        let mut opts = fs::OpenOptions::new();
        opts.read(true).write(!options.read_only);

        let mut direct_file = None;
        if options.direct {
            match opts.clone().custom_flags(libc::O_DIRECT).open(path) {
                Ok(f) => direct_file = Some(f),
                // Filesystems without O_DIRECT support (tmpfs before 6.6) say EINVAL.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(open_err(e)),
            }
        }
        let buffered = opts.open(path).map_err(open_err)?;

        let meta = buffered.metadata().map_err(open_err)?;
        let file_type = meta.file_type();
        let is_block = file_type.is_block_device();
        let (size, logical, physical) = if is_block {
            block_geometry(&buffered).map_err(open_err)?
        } else if file_type.is_file() {
            (meta.len(), 512, 4096)
        } else {
            return Err(open_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file or a block device",
            )));
        };

        let (file, direct) = match direct_file {
            Some(file) => {
                let align = MIN_DIRECT_ALIGN.max(u64::from(logical));
                let direct = Direct {
                    buffered,
                    align,
                    limit: size / align * align,
                    rmw: Mutex::new(()),
                };
                (file, Some(direct))
            }
            None => (buffered, None),
        };
        Ok(FileDevice {
            name,
            file,
            is_block,
            size,
            logical,
            physical,
            read_only: options.read_only,
            direct,
        })
    }

    /// True for a block device, false for a regular file.
    pub fn is_block_device(&self) -> bool {
        self.is_block
    }

    /// True if I/O bypasses the page cache (O_DIRECT was asked for and the filesystem took it).
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    fn io_err(&self, offset: u64, len: usize, source: io::Error) -> BlockError {
        BlockError::Io {
            device: self.name.clone(),
            offset,
            len: len as u64,
            source,
        }
    }

    fn check_write(&self, offset: u64, len: u64) -> Result<()> {
        check_range(&self.name, offset, len, self.size)?;
        if self.read_only {
            return Err(BlockError::ReadOnly {
                device: self.name.clone(),
            });
        }
        Ok(())
    }

    fn read_unchecked(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let Some(d) = &self.direct else {
            return self
                .file
                .read_exact_at(buf, offset)
                .map_err(|e| self.io_err(offset, buf.len(), e));
        };
        let split = direct_len(d.limit, offset, buf.len());
        let (head, tail) = buf.split_at_mut(split);
        let tail_off = offset + split as u64;
        d.buffered
            .read_exact_at(tail, tail_off)
            .map_err(|e| self.io_err(tail_off, tail.len(), e))?;
        if head.is_empty() {
            return Ok(());
        }

        let mut bounce = AlignedBuf::new(bounce_len(d.align, offset, head.len()), d.align);
        let mut done = 0;
        while done < head.len() {
            let pos = offset + done as u64;
            let (start, skip, want, span) = window(d.align, pos, head.len() - done, bounce.len());
            let block = bounce.slice(span);
            self.file
                .read_exact_at(block, start)
                .map_err(|e| self.io_err(start, span, e))?;
            head[done..done + want].copy_from_slice(&block[skip..skip + want]);
            done += want;
        }
        Ok(())
    }

    fn write_unchecked(&self, buf: &[u8], offset: u64) -> Result<()> {
        let Some(d) = &self.direct else {
            return self
                .file
                .write_all_at(buf, offset)
                .map_err(|e| self.io_err(offset, buf.len(), e));
        };
        let split = direct_len(d.limit, offset, buf.len());
        let (head, tail) = buf.split_at(split);
        let tail_off = offset + split as u64;
        d.buffered
            .write_all_at(tail, tail_off)
            .map_err(|e| self.io_err(tail_off, tail.len(), e))?;
        if head.is_empty() {
            return Ok(());
        }

        let end = offset + head.len() as u64;
        let _guard = (offset % d.align != 0 || end % d.align != 0)
            .then(|| d.rmw.lock().unwrap_or_else(PoisonError::into_inner));
        let align = d.align as usize;
        let mut bounce = AlignedBuf::new(bounce_len(d.align, offset, head.len()), d.align);
        let mut done = 0;
        while done < head.len() {
            let pos = offset + done as u64;
            let (start, skip, want, span) = window(d.align, pos, head.len() - done, bounce.len());
            let block = bounce.slice(span);
            // Edge blocks only partly covered by the caller keep their other bytes.
            if skip != 0 {
                self.file
                    .read_exact_at(&mut block[..align], start)
                    .map_err(|e| self.io_err(start, align, e))?;
            }
            if (skip + want) % align != 0 && (skip == 0 || span > align) {
                let last = start + (span - align) as u64;
                self.file
                    .read_exact_at(&mut block[span - align..], last)
                    .map_err(|e| self.io_err(last, align, e))?;
            }
            block[skip..skip + want].copy_from_slice(&head[done..done + want]);
            self.file
                .write_all_at(block, start)
                .map_err(|e| self.io_err(start, span, e))?;
            done += want;
        }
        Ok(())
    }

    /// Writes zero buffers over the range: the fallback when the kernel cannot zero or discard.
    fn write_zero_buffers(&self, offset: u64, len: u64) -> Result<()> {
        let zeroes = vec![0u8; len.min(CHUNK as u64) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeroes.len() as u64) as usize;
            self.write_unchecked(&zeroes[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let (off, len) = to_off_t(offset, len)?;
        // SAFETY: fallocate only reads its integer arguments; the fd is open for the call.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, len) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn ioctl_range(&self, request: u64, offset: u64, len: u64) -> io::Result<()> {
        let range: [u64; 2] = [offset, len];
        // SAFETY: BLKDISCARD and BLKZEROOUT read a `u64[2]` {start, len} that lives across the call.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), request as _, range.as_ptr()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Runs `fast` on the logical-block-aligned middle of a block-device range and writes
    /// zero buffers over the edges, or over everything if the kernel cannot do it.
    fn block_range_op(&self, request: u64, offset: u64, len: u64, zero_edges: bool) -> Result<()> {
        let lbs = u64::from(self.logical);
        let end = offset + len;
        let (start, stop) = (offset.div_ceil(lbs) * lbs, end / lbs * lbs);
        if start >= stop {
            return if zero_edges {
                self.write_zero_buffers(offset, len)
            } else {
                Ok(())
            };
        }
        match self.ioctl_range(request, start, stop - start) {
            Ok(()) => {}
            Err(e) if unsupported(&e) => return self.write_zero_buffers(offset, len),
            Err(e) => return Err(self.io_err(start, (stop - start) as usize, e)),
        }
        if zero_edges {
            self.write_zero_buffers(offset, start - offset)?;
            self.write_zero_buffers(stop, end - stop)?;
        }
        Ok(())
    }
}

impl BlockDevice for FileDevice {
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
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(&self.name, offset, buf.len() as u64, self.size)?;
        self.read_unchecked(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_write(offset, buf.len() as u64)?;
        self.write_unchecked(buf, offset)
    }

    fn flush(&self) -> Result<()> {
        // One fdatasync covers the O_DIRECT and the buffered handle: both name the same inode.
        self.file.sync_data().map_err(|source| BlockError::Flush {
            device: self.name.clone(),
            source,
        })
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        // Unaligned edges of a block device keep their data, which discard's contract allows.
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        self.range_op(offset, len, punch, BLKDISCARD, false)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        let zero = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        self.range_op(offset, len, zero, BLKZEROOUT, true)
    }
}

impl FileDevice {
    /// Discard and write-zeroes: an ioctl on block devices, fallocate on files, and zero
    /// buffers where the file system does not support the fallocate mode.
    fn range_op(
        &self,
        offset: u64,
        len: u64,
        mode: libc::c_int,
        ioctl: libc::c_ulong,
        zero_edges: bool,
    ) -> Result<()> {
        self.check_write(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        if self.is_block {
            return self.block_range_op(ioctl, offset, len, zero_edges);
        }
        match self.fallocate(mode, offset, len) {
            Ok(()) => Ok(()),
            Err(e) if unsupported(&e) => self.write_zero_buffers(offset, len),
            Err(e) => Err(self.io_err(offset, len as usize, e)),
        }
    }
}

/// Size, logical and physical block size of a block device.
fn block_geometry(file: &File) -> io::Result<(u64, u32, u32)> {
    let fd = file.as_raw_fd();
    let mut size: u64 = 0;
    let mut logical: libc::c_int = 0;
    let mut physical: libc::c_uint = 0;
    // SAFETY: each ioctl writes one value of the type pointed to, which outlives the call.
    unsafe {
        if libc::ioctl(fd, BLKGETSIZE64 as _, &mut size as *mut u64) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::ioctl(fd, libc::BLKSSZGET as _, &mut logical as *mut libc::c_int) != 0 {
            logical = 512;
        }
        if libc::ioctl(
            fd,
            libc::BLKPBSZGET as _,
            &mut physical as *mut libc::c_uint,
        ) != 0
        {
            physical = 0;
        }
    }
    let logical = u32::try_from(logical)
        .ok()
        .filter(|l| *l >= 512 && l.is_power_of_two())
        .unwrap_or(512);
    let physical = if physical.is_power_of_two() {
        physical.max(logical)
    } else {
        logical
    };
    Ok((size, logical, physical))
}

/// True if the error says the kernel or filesystem lacks the operation, not that it failed.
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::ENOSYS | libc::EINVAL)
    )
}

fn to_off_t(offset: u64, len: u64) -> io::Result<(libc::off_t, libc::off_t)> {
    let conv =
        |v: u64| libc::off_t::try_from(v).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG));
    Ok((conv(offset)?, conv(len)?))
}

/// How many bytes of a request at `offset` lie before `limit` and so go through O_DIRECT.
fn direct_len(limit: u64, offset: u64, len: usize) -> usize {
    limit.saturating_sub(offset).min(len as u64) as usize
}

/// Bounce buffer size for a request: the aligned span it covers, at most `CHUNK`.
fn bounce_len(align: u64, offset: u64, len: usize) -> usize {
    let start = offset / align * align;
    let end = (offset + len as u64).div_ceil(align) * align;
    (end - start).min(CHUNK as u64).max(align) as usize
}

/// One step of a bounced request at `pos` with `remaining` bytes left: the aligned start,
/// the caller's bytes' offset inside the block span, how many of them fit, and the span length.
fn window(align: u64, pos: u64, remaining: usize, capacity: usize) -> (u64, usize, usize, usize) {
    let start = pos / align * align;
    let skip = (pos - start) as usize;
    let want = remaining.min(capacity - skip);
    let span = ((skip + want) as u64).div_ceil(align) * align;
    (start, skip, want, span as usize)
}

/// A heap buffer whose start is aligned as O_DIRECT requires.
struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize, align: u64) -> Self {
        let align = align as usize;
        let raw = vec![0u8; len + align];
        let start = (align - raw.as_ptr() as usize % align) % align;
        AlignedBuf { raw, start, len }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn slice(&mut self, len: usize) -> &mut [u8] {
        &mut self.raw[self.start..self.start + len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_libc_encoding() {
        // Our hand-encoded numbers use the same scheme as libc's BLKSSZGET (_IO(0x12, 104)).
        assert_eq!(libc::BLKSSZGET, (ioc::NONE | 0x1200 | 104) as _);
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(BLKGETSIZE64, 0x8008_1272);
            assert_eq!(BLKDISCARD, 0x1277);
            assert_eq!(BLKZEROOUT, 0x127f);
        }
    }

    #[test]
    fn windows_cover_requests_exactly() {
        let align = 4096u64;
        for &(offset, len, cap) in &[
            (0u64, 1usize, 4096usize),
            (100, 9000, 8192),
            (4095, 2, 8192),
            (8192, 4096, 4096),
        ] {
            let mut pos = offset;
            let mut left = len;
            while left > 0 {
                let (start, skip, want, span) = window(align, pos, left, cap);
                assert_eq!(start % align, 0);
                assert_eq!(span as u64 % align, 0);
                assert!(span <= cap && skip + want <= span && want > 0);
                assert_eq!(start + skip as u64, pos);
                pos += want as u64;
                left -= want;
            }
        }
    }

    #[test]
    fn aligned_buf_is_aligned() {
        for align in [4096u64, 8192, 65536] {
            let mut b = AlignedBuf::new(3 * align as usize, align);
            assert_eq!(
                b.slice(align as usize).as_ptr() as usize % align as usize,
                0
            );
        }
    }
}
