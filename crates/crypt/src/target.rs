//! The crypt target: reads decrypt in place after reading the ciphertext, writes encrypt
//! into a private buffer (the caller's data is never touched) and write that.
//!
//! # IV numbers, as dm-crypt makes them
//!
//! Each crypt sector (`sector_size` bytes, 512 by default) is encrypted on its own with an
//! IV made from a 64-bit number. For a request at sector `s` of the row (512-byte sectors,
//! counted from the row's start, not the device's), dm-crypt starts a counter at
//! `s + iv_offset` and adds `sector_size / 512` after each crypt sector; so the number is
//! always the 512-byte sector number of the crypt sector's first byte, plus `iv_offset`.
//! With `iv_large_sectors` the counter is shifted right by log2(sector_size / 512) before
//! it becomes the IV, so IV numbers count crypt sectors instead. Because requests,
//! the row's length and `iv_offset` are all whole crypt sectors (the constructor and
//! every request check it), the shift never drops bits and the counter stays in step:
//!
//! | option             | IV of the first crypt sector  | step per crypt sector |
//! |--------------------|-------------------------------|-----------------------|
//! | (none)             | `s + iv_offset`               | `sector_size / 512`   |
//! | `iv_large_sectors` | `(s + iv_offset) / (sector_size / 512)` | 1           |
//!
//! The sum wraps at 2^64, as the kernel's does. The device offset (`<offset>`) is not part
//! of the IV: moving the ciphertext and changing `<offset>` keeps it readable.
//!
//! A whole request goes through the cipher in one call (its IVs are `first + i * step`),
//! which lets the AES backend work on many blocks at once.

use std::io;
use std::sync::{Mutex, PoisonError};

use tessera_block::{BlockError, Result, SharedDevice};
use tessera_cipher::SectorCipher;
use tessera_mapper::{StatusType, Target, TargetArgs, TargetError, SECTOR_BYTES};

use crate::params::CryptParams;

/// Largest piece encrypted into one buffer: requests above it are written a piece at a
/// time. A multiple of every crypt sector size.
const CHUNK_BYTES: usize = 1 << 20;

/// Buffers kept for reuse; more concurrent writers than this allocate their own.
const POOLED_BUFFERS: usize = 8;

pub(crate) fn construct(
    args: &TargetArgs<'_>,
) -> std::result::Result<Box<dyn Target>, TargetError> {
    let params = CryptParams::parse(args.args, args.start_sectors, args.length_sectors)?;
    let cipher = SectorCipher::new(&params.spec, &params.key)
        .map_err(|e| TargetError::Invalid(format!("key: {e}")))?;
    let dev = args.open(&params.device, params.offset_sectors, args.length_sectors)?;
    Ok(Box::new(Crypt {
        mapped: args.device.to_string(),
        row_start: args.start_sectors,
        cipher,
        dev,
        pool: Pool::default(),
        params,
    }))
}

struct Crypt {
    /// The mapped device's name, for errors about requests it received.
    mapped: String,
    /// The row's start on the mapped device, for errors.
    row_start: u64,
    params: CryptParams,
    cipher: SectorCipher,
    dev: SharedDevice,
    pool: Pool,
}

impl Crypt {
    fn sector_bytes(&self) -> usize {
        self.params.options.sector_size as usize
    }

    /// The IV number of the crypt sector at row sector `sector`, and the step from one
    /// crypt sector's IV to the next (see the module's comment).
    fn ivs(&self, sector: u64) -> (u64, u64) {
        let counter = sector.wrapping_add(self.params.iv_offset);
        let per = self.params.options.sector_sectors();
        if self.params.options.iv_large_sectors {
            (counter / per, 1)
        } else {
            (counter, per)
        }
    }

    /// Byte offset on the device of row sector `sector`; the constructor checked the area
    /// against the device's size, so this cannot overflow.
    fn dev_offset(&self, sector: u64) -> u64 {
        (self.params.offset_sectors + sector) * SECTOR_BYTES
    }

    /// Refuses a request that does not cover whole crypt sectors, as dm-crypt does: a
    /// crypt sector can only be encrypted or decrypted whole.
    fn check_aligned(&self, sector: u64, len_bytes: u64) -> Result<()> {
        let per = self.params.options.sector_sectors();
        if sector % per == 0 && len_bytes % u64::from(self.params.options.sector_size) == 0 {
            return Ok(());
        }
        Err(BlockError::Misaligned {
            device: self.mapped.clone(),
            offset: (self.row_start + sector) * SECTOR_BYTES,
            len: len_bytes,
            block: self.params.options.sector_size,
        })
    }

    fn cipher_failed(&self, sector: u64, len: usize, e: impl std::fmt::Display) -> BlockError {
        BlockError::Io {
            device: self.mapped.clone(),
            offset: (self.row_start + sector) * SECTOR_BYTES,
            len: len as u64,
            source: io::Error::other(format!("encryption failed: {e}")),
        }
    }

    /// Encrypts what `fill` puts in each piece of up to [`CHUNK_BYTES`] and writes it,
    /// piece by piece, from row sector `sector` for `len` bytes.
    fn write_encrypted(
        &self,
        sector: u64,
        len: usize,
        mut fill: impl FnMut(&mut [u8], usize),
    ) -> Result<()> {
        let mut buf = self.pool.take();
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(CHUNK_BYTES);
            let at = sector + (done as u64) / SECTOR_BYTES;
            let piece = &mut buf[..n];
            fill(piece, done);
            let (first, step) = self.ivs(at);
            if let Err(e) = self.cipher.encrypt(piece, self.sector_bytes(), first, step) {
                // Leave no plaintext behind in a pooled buffer.
                piece.fill(0);
                return Err(self.cipher_failed(at, n, e));
            }
            self.dev.write_at(piece, self.dev_offset(at))?;
            done += n;
        }
        self.pool.give(buf);
        Ok(())
    }
}

impl Target for Crypt {
    /// Whole crypt sectors only: the mapped device reads, patches and writes whole
    /// sectors for smaller requests, as the kernel raises the queue's logical block size.
    fn block_bytes(&self) -> u32 {
        self.params.options.sector_size
    }

    fn read(&self, sector: u64, buf: &mut [u8]) -> Result<()> {
        self.check_aligned(sector, buf.len() as u64)?;
        self.dev.read_at(buf, self.dev_offset(sector))?;
        let (first, step) = self.ivs(sector);
        self.cipher
            .decrypt(buf, self.sector_bytes(), first, step)
            .map_err(|e| self.cipher_failed(sector, buf.len(), e))
    }

    fn write(&self, sector: u64, buf: &[u8]) -> Result<()> {
        self.check_aligned(sector, buf.len() as u64)?;
        self.write_encrypted(sector, buf.len(), |piece, done| {
            piece.copy_from_slice(&buf[done..done + piece.len()])
        })
    }

    fn flush(&self) -> Result<()> {
        self.dev.flush()
    }

    /// With `allow_discards`, passes the whole crypt sectors inside the range down (a
    /// partial one would turn the rest of that crypt sector into garbage). Without it,
    /// does nothing and succeeds. The kernel's dm-crypt then does not advertise discard at
    /// all, so nothing is ever asked to discard; tessera's devices cannot say that, and a
    /// discard is only a hint that the range's contents are no longer needed, which doing
    /// nothing honours. Failing it instead would turn every `fstrim` or NBD TRIM from a
    /// client into an error over a volume whose owner chose, for privacy, not to reveal
    /// its free space to the device below.
    fn discard(&self, sector: u64, len_sectors: u64) -> Result<()> {
        if !self.params.options.allow_discards {
            return Ok(());
        }
        let per = self.params.options.sector_sectors();
        let begin = sector.div_ceil(per) * per;
        let end = (sector + len_sectors) / per * per;
        if begin < end {
            let len = (end - begin) * SECTOR_BYTES;
            self.dev.discard(self.dev_offset(begin), len)?;
        }
        Ok(())
    }

    /// Zeroes of the plaintext are not zeroes on the device: the range is written with
    /// encrypted zeroes, as the kernel does (dm-crypt does not pass write-zeroes down).
    fn write_zeroes(&self, sector: u64, len_sectors: u64) -> Result<()> {
        let len_bytes = len_sectors * SECTOR_BYTES;
        self.check_aligned(sector, len_bytes)?;
        let mut done = 0u64;
        while done < len_bytes {
            // One call per chunk keeps `len` a usize on every platform.
            let n = (len_bytes - done).min(CHUNK_BYTES as u64) as usize;
            let at = sector + done / SECTOR_BYTES;
            self.write_encrypted(at, n, |piece, _| piece.fill(0))?;
            done += n as u64;
        }
        Ok(())
    }

    fn status(&self, kind: StatusType) -> String {
        match kind {
            StatusType::Info => String::new(),
            StatusType::Table => self.params.to_table_params(),
        }
    }

    fn devices(&self) -> Vec<SharedDevice> {
        vec![self.dev.clone()]
    }
}

/// A few [`CHUNK_BYTES`] buffers for writes, so that a write does not map and fault in a
/// fresh megabyte each time.
#[derive(Default)]
struct Pool {
    free: Mutex<Vec<Vec<u8>>>,
}

impl Pool {
    fn take(&self) -> Vec<u8> {
        let pooled = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        pooled.unwrap_or_else(|| vec![0u8; CHUNK_BYTES])
    }

    fn give(&self, buf: Vec<u8>) {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        if free.len() < POOLED_BUFFERS {
            free.push(buf);
        }
    }
}
