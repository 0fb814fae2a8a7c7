//! dm-snapshot's persistent exception store: the record of which chunks of an origin have
//! been copied to a snapshot's COW device, laid out as the kernel's `snapshot` target (store
//! type `P`) keeps it, so a COW device moves between tessera and the kernel either way.
//!
//! Everything is little endian and counted in chunks of `chunk_sectors` 512-byte sectors.
//!
//! | chunk | contents |
//! |---|---|
//! | 0 | the header: magic `0x70416e53` ("SnAp"), valid, version 1, chunk_size (sectors); the rest zero |
//! | `1 + (epa + 1) * a` | metadata area `a`: `epa = chunk_bytes / 16` exceptions `{le64 old_chunk, le64 new_chunk}` |
//! | the others | data chunks: copies of origin chunks, `epa` of them after each area |
//!
//! An area's list ends at the first entry whose `new_chunk` is 0 (chunk 0 is the header, never
//! data); an area with no such entry is full and the list goes on in the next area. A header
//! whose magic is 0 means a new store (the creator zeroes chunk 0; lvm2 does).
//!
//! Commits follow the kernel's order: the entries are added to the current area in memory;
//! when they fill the area, the next area is zeroed on disk first; then the device is flushed
//! (so the chunks' copied data is durable), the area written and flushed again. Only then may
//! the exceptions be used, so after a power cut an exception on disk always points at a
//! complete copy. Like the kernel's, one commit may carry every exception pending in the
//! current area ([`Store::stage_exceptions`]: group commit), so concurrent copy-outs share one
//! area write. Merging walks back from the last committed entry in runs of consecutive old and new
//! chunks, and clears merged entries the same way (area written and flushed), so a merge that
//! stops anywhere resumes from what is on disk.
//!
//! Differences from the kernel, both for damaged input only: an exception that points past the
//! COW device, into a metadata chunk or at an old chunk already listed is refused with an error
//! naming it (the kernel takes it as it is), and so is a chunk size that is not a power of two
//! or above the kernel's limit.

use std::collections::HashMap;

use thiserror::Error;

use tessera_block::{BlockError, SharedDevice};

/// "SnAp" as a little-endian u32.
pub const MAGIC: u32 = 0x7041_6e53;
/// The only on-disk version there is.
pub const DISK_VERSION: u32 = 1;
/// Bytes of the header at the start of chunk 0.
pub const HEADER_BYTES: usize = 16;
/// Bytes of one exception in a metadata area.
pub const EXCEPTION_BYTES: usize = 16;
/// The kernel's chunk size when a table gives none: 16 KiB.
pub const DEFAULT_CHUNK_SECTORS: u32 = 32;
/// The largest chunk size the kernel takes (its chunk size in bytes must fit an `int`).
pub const MAX_CHUNK_SECTORS: u32 = 1 << 21;

const SECTOR_BYTES: u64 = 512;

#[derive(Debug, Error)]
pub enum SnapshotStoreError {
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error("{device}: not a snapshot exception store (magic {found:#010x}, expected {MAGIC:#010x} \"SnAp\")")]
    BadMagic { device: String, found: u32 },
    #[error("{device}: snapshot exception store version {found}; tessera knows version {DISK_VERSION} only")]
    BadVersion { device: String, found: u32 },
    #[error("{device}: snapshot chunk size of {chunk_sectors} sectors is {why}")]
    BadChunkSize {
        device: String,
        chunk_sectors: u32,
        why: &'static str,
    },
    #[error("{device}: too small for a snapshot exception store of {chunk_sectors}-sector chunks: {size_bytes} bytes, a header and a metadata area need {needed_bytes}")]
    TooSmall {
        device: String,
        chunk_sectors: u32,
        size_bytes: u64,
        needed_bytes: u64,
    },
    #[error("{device}: snapshot metadata area {area}, entry {index}: exception for origin chunk {old_chunk} points at chunk {new_chunk}, past the end of the COW device ({chunks} chunks)")]
    ExceptionOutside {
        device: String,
        area: u64,
        index: u64,
        old_chunk: u64,
        new_chunk: u64,
        chunks: u64,
    },
    #[error("{device}: snapshot metadata area {area}, entry {index}: exception for origin chunk {old_chunk} points at chunk {new_chunk}, which holds metadata")]
    ExceptionInMetadata {
        device: String,
        area: u64,
        index: u64,
        old_chunk: u64,
        new_chunk: u64,
    },
    #[error("{device}: snapshot metadata area {area}, entry {index}: origin chunk {old_chunk} is listed twice (at COW chunks {first} and {second})")]
    DuplicateOld {
        device: String,
        area: u64,
        index: u64,
        old_chunk: u64,
        first: u64,
        second: u64,
    },
    #[error("{device}: snapshot metadata area {area}, entry {index}: COW chunk {new_chunk} holds two origin chunks ({first} and {second})")]
    DuplicateNew {
        device: String,
        area: u64,
        index: u64,
        new_chunk: u64,
        first: u64,
        second: u64,
    },
    #[error("{device}: snapshot metadata area {area} is full and the next one would start past the end of the COW device ({chunks} chunks)")]
    AreaOutside {
        device: String,
        area: u64,
        chunks: u64,
    },
    #[error(
        "{device}: the snapshot's COW device is full ({chunks} chunks of {chunk_sectors} sectors)"
    )]
    NoSpace {
        device: String,
        chunks: u64,
        chunk_sectors: u32,
    },
    #[error("{device}: the snapshot is invalid (its COW device overflowed or failed); it cannot be used")]
    Invalid { device: String },
    #[error("{device}: {what}")]
    Refused { device: String, what: String },
}

pub type Result<T, E = SnapshotStoreError> = std::result::Result<T, E>;

/// The 16 bytes at the start of chunk 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskHeader {
    pub magic: u32,
    /// 0: the snapshot was invalidated and cannot be used again.
    pub valid: u32,
    pub version: u32,
    pub chunk_sectors: u32,
}

impl DiskHeader {
    pub fn decode(bytes: &[u8; HEADER_BYTES]) -> DiskHeader {
        let word =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        DiskHeader {
            magic: word(0),
            valid: word(4),
            version: word(8),
            chunk_sectors: word(12),
        }
    }

    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[0..4].copy_from_slice(&self.magic.to_le_bytes());
        out[4..8].copy_from_slice(&self.valid.to_le_bytes());
        out[8..12].copy_from_slice(&self.version.to_le_bytes());
        out[12..16].copy_from_slice(&self.chunk_sectors.to_le_bytes());
        out
    }
}

/// Checks a chunk size as the kernel's `dm_exception_store_set_chunk_size` does.
pub fn check_chunk_sectors(device: &str, chunk_sectors: u32) -> Result<()> {
    let why = if chunk_sectors == 0 {
        "zero"
    } else if !chunk_sectors.is_power_of_two() {
        "not a power of two"
    } else if chunk_sectors > MAX_CHUNK_SECTORS {
        "larger than the kernel's limit of 2097152 sectors (1 GiB)"
    } else {
        return Ok(());
    };
    Err(SnapshotStoreError::BadChunkSize {
        device: device.to_string(),
        chunk_sectors,
        why,
    })
}

/// What `dmsetup status` prints for a snapshot: `<sectors_allocated>/<total_sectors>
/// <metadata_sectors>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Chunks handed out so far (header and metadata included), in sectors.
    pub sectors_allocated: u64,
    /// The COW device's size in sectors.
    pub total_sectors: u64,
    /// The header and the metadata areas up to the current one, in sectors.
    pub metadata_sectors: u64,
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} {}",
            self.sectors_allocated, self.total_sectors, self.metadata_sectors
        )
    }
}

/// A run of exceptions to merge: `count` chunks from `old_chunk` on the origin, held at
/// `new_chunk` on, on the COW device; the last `count` committed entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeRun {
    pub old_chunk: u64,
    pub new_chunk: u64,
    pub count: u64,
}

/// Opening and creating persistent exception stores.
pub struct ExceptionStore;

impl ExceptionStore {
    /// Reads the store on `dev`: `None` when its header is zero (a new store, to be made with
    /// [`Store::create`]). An invalidated store opens, with no exceptions and
    /// [`Store::is_valid`] false, as the kernel loads it.
    pub fn open(dev: SharedDevice) -> Result<Option<Store>> {
        Store::open(dev)
    }
}

/// An open persistent exception store: the exceptions, the area being filled and the
/// allocator of COW chunks.
pub struct Store {
    dev: SharedDevice,
    chunk_sectors: u32,
    /// Exceptions per metadata area.
    epa: u64,
    /// Whole chunks on the COW device.
    chunks: u64,
    valid: bool,
    map: HashMap<u64, u64>,
    /// The area being filled (or, while merging, emptied) and its bytes.
    current_area: u64,
    area: Vec<u8>,
    /// Entries in use in the current area.
    committed: u64,
    next_free: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("device", &self.dev.name())
            .field("chunk_sectors", &self.chunk_sectors)
            .field("valid", &self.valid)
            .field("exceptions", &self.map.len())
            .field("current_area", &self.current_area)
            .field("committed", &self.committed)
            .field("next_free", &self.next_free)
            .finish()
    }
}

impl Store {
    /// See [`ExceptionStore::open`].
    pub fn open(dev: SharedDevice) -> Result<Option<Store>> {
        let name = dev.name().to_string();
        let size = dev.size_bytes();
        if size < HEADER_BYTES as u64 {
            return Err(SnapshotStoreError::TooSmall {
                device: name,
                chunk_sectors: 0,
                size_bytes: size,
                needed_bytes: HEADER_BYTES as u64,
            });
        }
        let mut raw = [0u8; HEADER_BYTES];
        dev.read_at(&mut raw, 0)?;
        let header = DiskHeader::decode(&raw);
        if header.magic == 0 {
            return Ok(None);
        }
        if header.magic != MAGIC {
            return Err(SnapshotStoreError::BadMagic {
                device: name,
                found: header.magic,
            });
        }
        if header.version != DISK_VERSION {
            return Err(SnapshotStoreError::BadVersion {
                device: name,
                found: header.version,
            });
        }
        let mut store = Store::blank(dev, header.chunk_sectors)?;
        if header.valid == 0 {
            store.valid = false;
            return Ok(Some(store));
        }
        store.read_exceptions()?;
        Ok(Some(store))
    }

    /// Makes a new, empty store on `dev` as the kernel does for a zeroed header: writes the
    /// header, zeroes the first metadata area and flushes.
    pub fn create(dev: SharedDevice, chunk_sectors: u32) -> Result<Store> {
        let store = Store::blank(dev, chunk_sectors)?;
        store.write_header()?;
        store
            .dev
            .write_zeroes(store.chunk_offset(1), store.chunk_bytes())?;
        store.dev.flush()?;
        Ok(store)
    }

    /// The store on `dev` if there is one, else a new one with `chunk_sectors`: what the
    /// kernel's `snapshot` target does with its COW device. The chunk size on disk wins over
    /// `chunk_sectors`.
    pub fn open_or_create(dev: SharedDevice, chunk_sectors: u32) -> Result<Store> {
        match Store::open(dev.clone())? {
            Some(store) => Ok(store),
            None => Store::create(dev, chunk_sectors),
        }
    }

    fn blank(dev: SharedDevice, chunk_sectors: u32) -> Result<Store> {
        let name = dev.name().to_string();
        check_chunk_sectors(&name, chunk_sectors)?;
        let chunk_bytes = u64::from(chunk_sectors) * SECTOR_BYTES;
        let size = dev.size_bytes();
        let chunks = size / chunk_bytes;
        if chunks < 2 {
            return Err(SnapshotStoreError::TooSmall {
                device: name,
                chunk_sectors,
                size_bytes: size,
                needed_bytes: 2 * chunk_bytes,
            });
        }
        Ok(Store {
            dev,
            chunk_sectors,
            epa: chunk_bytes / EXCEPTION_BYTES as u64,
            chunks,
            valid: true,
            map: HashMap::new(),
            current_area: 0,
            area: vec![0u8; chunk_bytes as usize],
            committed: 0,
            next_free: 2,
        })
    }

    fn read_exceptions(&mut self) -> Result<()> {
        let name = self.dev.name().to_string();
        let mut news: HashMap<u64, u64> = HashMap::new();
        let mut area = 0u64;
        loop {
            let loc = self.area_location(area).filter(|&c| c < self.chunks);
            let Some(loc) = loc else {
                return Err(SnapshotStoreError::AreaOutside {
                    device: name,
                    area: area.saturating_sub(1),
                    chunks: self.chunks,
                });
            };
            let mut buf = vec![0u8; self.area.len()];
            self.dev.read_at(&mut buf, self.chunk_offset(loc))?;
            let mut full = true;
            for index in 0..self.epa {
                let (old, new) = entry(&buf, index);
                if new == 0 {
                    self.committed = index;
                    full = false;
                    break;
                }
                self.check_new(&name, area, index, old, new)?;
                if let Some(&first) = self.map.get(&old) {
                    return Err(SnapshotStoreError::DuplicateOld {
                        device: name,
                        area,
                        index,
                        old_chunk: old,
                        first,
                        second: new,
                    });
                }
                if let Some(&first) = news.get(&new) {
                    return Err(SnapshotStoreError::DuplicateNew {
                        device: name,
                        area,
                        index,
                        new_chunk: new,
                        first,
                        second: old,
                    });
                }
                self.map.insert(old, new);
                news.insert(new, old);
                self.next_free = self.next_free.max(new + 1);
            }
            if !full {
                // Whatever follows the end of the list is not ours: the next commit must
                // not bring it to life by overwriting the terminator.
                buf[self.committed as usize * EXCEPTION_BYTES..].fill(0);
                self.current_area = area;
                self.area = buf;
                break;
            }
            area += 1;
        }
        self.skip_metadata();
        Ok(())
    }

    fn check_new(&self, name: &str, area: u64, index: u64, old: u64, new: u64) -> Result<()> {
        if new >= self.chunks {
            return Err(SnapshotStoreError::ExceptionOutside {
                device: name.to_string(),
                area,
                index,
                old_chunk: old,
                new_chunk: new,
                chunks: self.chunks,
            });
        }
        if self.is_metadata_chunk(new) {
            return Err(SnapshotStoreError::ExceptionInMetadata {
                device: name.to_string(),
                area,
                index,
                old_chunk: old,
                new_chunk: new,
            });
        }
        Ok(())
    }

    /// The chunk of metadata area `area`, `None` if that overflows.
    pub fn area_location(&self, area: u64) -> Option<u64> {
        (self.epa + 1).checked_mul(area)?.checked_add(1)
    }

    /// True for the header chunk and every metadata area's chunk.
    pub fn is_metadata_chunk(&self, chunk: u64) -> bool {
        chunk == 0 || chunk % (self.epa + 1) == 1
    }

    fn skip_metadata(&mut self) {
        if self.next_free % (self.epa + 1) == 1 {
            self.next_free += 1;
        }
    }

    fn chunk_offset(&self, chunk: u64) -> u64 {
        chunk * self.chunk_bytes()
    }

    fn write_header(&self) -> Result<()> {
        let mut chunk = vec![0u8; self.area.len()];
        let header = DiskHeader {
            magic: MAGIC,
            valid: u32::from(self.valid),
            version: DISK_VERSION,
            chunk_sectors: self.chunk_sectors,
        };
        chunk[..HEADER_BYTES].copy_from_slice(&header.encode());
        self.dev.write_at(&chunk, 0)?;
        Ok(())
    }

    /// The COW device.
    pub fn device(&self) -> &SharedDevice {
        &self.dev
    }

    pub fn chunk_sectors(&self) -> u32 {
        self.chunk_sectors
    }

    pub fn chunk_bytes(&self) -> u64 {
        u64::from(self.chunk_sectors) * SECTOR_BYTES
    }

    pub fn exceptions_per_area(&self) -> u64 {
        self.epa
    }

    /// Whole chunks on the COW device.
    pub fn total_chunks(&self) -> u64 {
        self.chunks
    }

    /// False once invalidated (here or on disk before it was opened).
    pub fn is_valid(&self) -> bool {
        self.valid
    }

    /// The COW chunk holding origin chunk `old`, if it has been copied.
    pub fn lookup(&self, old: u64) -> Option<u64> {
        self.map.get(&old).copied()
    }

    /// Exceptions held, `(old_chunk, new_chunk)`, in no particular order.
    pub fn exceptions(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.map.iter().map(|(&o, &n)| (o, n))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The chunk the next exception will use (never a metadata chunk).
    pub fn next_free(&self) -> u64 {
        self.next_free
    }

    fn refuse_invalid(&self) -> Result<()> {
        if self.valid {
            Ok(())
        } else {
            Err(SnapshotStoreError::Invalid {
                device: self.dev.name().to_string(),
            })
        }
    }

    /// Hands out the next free COW chunk for a new exception, skipping metadata chunks, as the
    /// kernel's `prepare_exception`. [`SnapshotStoreError::NoSpace`] when the device is full.
    pub fn allocate(&mut self) -> Result<u64> {
        self.refuse_invalid()?;
        if self.next_free >= self.chunks {
            return Err(SnapshotStoreError::NoSpace {
                device: self.dev.name().to_string(),
                chunks: self.chunks,
                chunk_sectors: self.chunk_sectors,
            });
        }
        let chunk = self.next_free;
        self.next_free += 1;
        self.skip_metadata();
        Ok(chunk)
    }

    /// Records that origin chunk `old` is copied at COW chunk `new`, durably: when this
    /// fills the current area the next one is zeroed first; then the device is flushed (the
    /// copy is on disk), the area written and flushed. The exception is usable once this
    /// returns. On an I/O error the store is no longer trustworthy: invalidate it.
    pub fn commit_exception(&mut self, old: u64, new: u64) -> Result<()> {
        let (staged, refused) = self.stage_exceptions(&[(old, new)]);
        if let Some(e) = refused {
            return Err(e);
        }
        match staged.write() {
            Ok(()) => {
                self.finish_commit(staged);
                Ok(())
            }
            Err(e) => {
                self.abandon_commit(staged);
                Err(e)
            }
        }
    }

    /// Group commit, first step: adds `exceptions` in order to the current area in memory,
    /// as many as fit it, and returns them as one commit to write with
    /// [`StagedCommit::write`] (no lock on the store needed) and then hand back to
    /// [`Store::finish_commit`] (or [`Store::abandon_commit`] if the write failed). Staging
    /// stops after the exception that fills the area (the rest go in the next commit, in the
    /// next area) or before the first exception refused, whose error comes back with what
    /// was staged. Until the commit is finished or abandoned nothing else may change the
    /// store's areas (no other commit, no merge step), and the staged exceptions are not
    /// looked up: they become usable when the commit is finished, as dm-snapshot's
    /// `persistent_commit_exception` completes every pending exception with one area write.
    pub fn stage_exceptions(
        &mut self,
        exceptions: &[(u64, u64)],
    ) -> (StagedCommit, Option<SnapshotStoreError>) {
        let mut staged = StagedCommit {
            dev: self.dev.clone(),
            area: self.current_area,
            area_offset: self.chunk_offset(self.area_location(self.current_area).unwrap_or(0)),
            bytes: Vec::new(),
            zero_next: None,
            chunk_bytes: self.chunk_bytes(),
            first_index: self.committed,
            entries: Vec::new(),
        };
        let refused = self.stage_into(&mut staged, exceptions).err();
        if !staged.entries.is_empty() {
            staged.bytes = self.area.clone();
        }
        (staged, refused)
    }

    fn stage_into(&mut self, staged: &mut StagedCommit, exceptions: &[(u64, u64)]) -> Result<()> {
        self.refuse_invalid()?;
        let name = self.dev.name().to_string();
        let area = self.current_area;
        for &(old, new) in exceptions {
            let index = self.committed + staged.entries.len() as u64;
            if new == 0 {
                return Err(SnapshotStoreError::ExceptionInMetadata {
                    device: name,
                    area,
                    index,
                    old_chunk: old,
                    new_chunk: new,
                });
            }
            self.check_new(&name, area, index, old, new)?;
            let staged_first = staged
                .entries
                .iter()
                .find(|&&(o, _)| o == old)
                .map(|&(_, n)| n);
            if let Some(first) = self.map.get(&old).copied().or(staged_first) {
                return Err(SnapshotStoreError::DuplicateOld {
                    device: name,
                    area,
                    index,
                    old_chunk: old,
                    first,
                    second: new,
                });
            }
            let fills = index + 1 == self.epa;
            let next_loc = self.area_location(area + 1).filter(|&c| c < self.chunks);
            if fills && next_loc.is_none() {
                return Err(SnapshotStoreError::AreaOutside {
                    device: name,
                    area,
                    chunks: self.chunks,
                });
            }
            set_entry(&mut self.area, index, old, new);
            staged.entries.push((old, new));
            if let (true, Some(next)) = (fills, next_loc) {
                staged.zero_next = Some(self.chunk_offset(next));
                break;
            }
        }
        Ok(())
    }

    /// Group commit, last step: the staged exceptions, now durable, become usable; when they
    /// filled the area, the next one becomes current.
    pub fn finish_commit(&mut self, staged: StagedCommit) {
        debug_assert_eq!(
            (staged.area, staged.first_index),
            (self.current_area, self.committed)
        );
        for &(old, new) in &staged.entries {
            self.map.insert(old, new);
            self.next_free = self.next_free.max(new + 1);
            self.skip_metadata();
        }
        self.committed += staged.entries.len() as u64;
        if self.committed == self.epa {
            self.current_area += 1;
            self.committed = 0;
            self.area.fill(0);
        }
    }

    /// Takes staged exceptions whose write failed back out of the area in memory, so that a
    /// later commit does not write them with its own.
    pub fn abandon_commit(&mut self, staged: StagedCommit) {
        for i in 0..staged.entries.len() as u64 {
            set_entry(&mut self.area, staged.first_index + i, 0, 0);
        }
    }

    /// Flush (what came before is durable), write the current area, flush (it is durable):
    /// the kernel's PREFLUSH|FUA write.
    fn write_area_durably(&self) -> Result<()> {
        let loc = self.area_location(self.current_area).unwrap_or(0);
        self.dev.flush()?;
        self.dev.write_at(&self.area, self.chunk_offset(loc))?;
        self.dev.flush()?;
        Ok(())
    }

    /// Marks the snapshot invalid on disk (valid = 0) and flushes; every later use is
    /// refused. Also marks it in memory when the write fails.
    pub fn invalidate(&mut self) -> Result<()> {
        self.valid = false;
        self.write_header()?;
        self.dev.flush()?;
        Ok(())
    }

    /// `dmsetup status` figures.
    pub fn usage(&self) -> Usage {
        let cs = u64::from(self.chunk_sectors);
        Usage {
            sectors_allocated: self.next_free * cs,
            total_sectors: self.dev.size_bytes() / SECTOR_BYTES,
            metadata_sectors: (self.current_area + 2) * cs,
        }
    }

    /// The last committed exceptions that form a run of consecutive old and new chunks
    /// (within one area), as the kernel's `prepare_merge`; `None` when nothing is left.
    /// Moves back to the previous area (reading it) when the current one is empty.
    pub fn prepare_merge(&mut self) -> Result<Option<MergeRun>> {
        self.refuse_invalid()?;
        if self.committed == 0 {
            if self.current_area == 0 {
                return Ok(None);
            }
            let prev = self.current_area - 1;
            let loc = self.area_location(prev).unwrap_or(0);
            let mut buf = vec![0u8; self.area.len()];
            self.dev.read_at(&mut buf, self.chunk_offset(loc))?;
            self.current_area = prev;
            self.area = buf;
            self.committed = self.epa;
        }
        let (last_old, last_new) = entry(&self.area, self.committed - 1);
        let mut count = 1;
        while count < self.committed {
            let (old, new) = entry(&self.area, self.committed - 1 - count);
            if Some(old) != last_old.checked_sub(count) || Some(new) != last_new.checked_sub(count)
            {
                break;
            }
            count += 1;
        }
        Ok(Some(MergeRun {
            old_chunk: last_old - (count - 1),
            new_chunk: last_new - (count - 1),
            count,
        }))
    }

    /// Drops the last `count` committed exceptions once their chunks are back on the origin
    /// (and the origin flushed): clears their entries, writes the area and flushes, as the
    /// kernel's `commit_merge`.
    pub fn commit_merge(&mut self, count: u64) -> Result<()> {
        self.refuse_invalid()?;
        if count > self.committed {
            return Err(SnapshotStoreError::Refused {
                device: self.dev.name().to_string(),
                what: format!(
                    "cannot merge {count} exceptions: the current metadata area holds {}",
                    self.committed
                ),
            });
        }
        let mut gone = Vec::with_capacity(count as usize);
        for i in 0..count {
            let index = self.committed - 1 - i;
            gone.push(entry(&self.area, index).0);
            set_entry(&mut self.area, index, 0, 0);
        }
        self.write_area_durably()?;
        self.committed -= count;
        for old in gone {
            self.map.remove(&old);
        }
        self.next_free = self
            .area_location(self.current_area)
            .unwrap_or(1)
            .saturating_add(self.committed + 1);
        Ok(())
    }
}

/// Exceptions staged in a store's current metadata area, to be made durable by one area
/// write: see [`Store::stage_exceptions`].
pub struct StagedCommit {
    dev: SharedDevice,
    area: u64,
    area_offset: u64,
    /// The area with the staged entries (empty when nothing was staged).
    bytes: Vec<u8>,
    /// Where the next area is, when the staged entries fill this one: it is zeroed first.
    zero_next: Option<u64>,
    chunk_bytes: u64,
    /// The area index of the first staged entry.
    first_index: u64,
    entries: Vec<(u64, u64)>,
}

impl std::fmt::Debug for StagedCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedCommit")
            .field("device", &self.dev.name())
            .field("area", &self.area)
            .field("first_index", &self.first_index)
            .field("entries", &self.entries)
            .field("fills", &self.zero_next.is_some())
            .finish()
    }
}

impl StagedCommit {
    /// The staged exceptions, `(old_chunk, new_chunk)`, in area order.
    pub fn entries(&self) -> &[(u64, u64)] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the commit in the kernel's order: when it fills the area, the next area is
    /// zeroed; the device is flushed (every copy written before is durable, so no exception
    /// points at data not on disk), the area written and flushed. Nothing to do when empty.
    pub fn write(&self) -> Result<()> {
        if self.entries.is_empty() {
            return Ok(());
        }
        if let Some(next) = self.zero_next {
            self.dev.write_zeroes(next, self.chunk_bytes)?;
        }
        self.dev.flush()?;
        self.dev.write_at(&self.bytes, self.area_offset)?;
        self.dev.flush()?;
        Ok(())
    }
}

fn entry(area: &[u8], index: u64) -> (u64, u64) {
    let at = index as usize * EXCEPTION_BYTES;
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&area[i..i + 8]);
        u64::from_le_bytes(b)
    };
    (word(at), word(at + 8))
}

fn set_entry(area: &mut [u8], index: u64, old: u64, new: u64) {
    let at = index as usize * EXCEPTION_BYTES;
    area[at..at + 8].copy_from_slice(&old.to_le_bytes());
    area[at + 8..at + 16].copy_from_slice(&new.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tessera_block::{BlockDevice, MemoryDevice};

    fn mem(size: u64) -> Arc<MemoryDevice> {
        Arc::new(MemoryDevice::new("cow", size))
    }

    fn reopen(dev: &Arc<MemoryDevice>) -> Store {
        Store::open(dev.clone()).unwrap().expect("a store")
    }

    #[test]
    fn new_store_round_trip() {
        let dev = mem(1 << 20);
        assert!(Store::open(dev.clone()).unwrap().is_none(), "zeroed = new");
        let mut s = Store::create(dev.clone(), 8).unwrap();
        assert_eq!(s.exceptions_per_area(), 256);
        assert_eq!(s.next_free(), 2);
        assert_eq!(s.usage().to_string(), "16/2048 16");
        let c = dev.contents();
        assert_eq!(&c[0..4], b"SnAp");
        assert_eq!(
            DiskHeader::decode(c[..16].try_into().unwrap()).chunk_sectors,
            8
        );
        for old in [5u64, 9, 1000] {
            let new = s.allocate().unwrap();
            s.commit_exception(old, new).unwrap();
        }
        let r = reopen(&dev);
        assert_eq!(r.lookup(5), Some(2));
        assert_eq!(r.lookup(9), Some(3));
        assert_eq!(r.lookup(1000), Some(4));
        assert_eq!(r.lookup(6), None);
        assert_eq!(r.next_free(), 5);
        assert_eq!(r.usage().to_string(), "40/2048 16");
        // The table's chunk size loses to the one on disk.
        let o = Store::open_or_create(dev.clone(), 32).unwrap();
        assert_eq!(o.chunk_sectors(), 8);
    }

    #[test]
    fn areas_fill_and_continue_skipping_metadata() {
        // 1-sector chunks: 32 exceptions an area; areas at 1, 34, 67...
        let dev = mem(200 * 512);
        let mut s = Store::create(dev.clone(), 1).unwrap();
        assert_eq!(s.exceptions_per_area(), 32);
        let mut got = Vec::new();
        for old in 0..70u64 {
            let new = s.allocate().unwrap();
            assert!(!s.is_metadata_chunk(new));
            s.commit_exception(old * 3, new).unwrap();
            got.push(new);
        }
        assert_eq!(got[31], 33);
        assert_eq!(got[32], 35, "chunk 34 is area 1");
        assert_eq!(got[64], 68, "chunk 67 is area 2");
        let r = reopen(&dev);
        assert_eq!(r.len(), 70);
        for (i, new) in got.iter().enumerate() {
            assert_eq!(r.lookup(i as u64 * 3), Some(*new));
        }
        assert_eq!(r.next_free(), s.next_free());
        assert_eq!(r.usage(), s.usage());
        assert_eq!(r.usage().metadata_sectors, 4);
    }

    #[test]
    fn full_cow_reports_no_space_and_invalidates() {
        let dev = mem(6 * 4096);
        let mut s = Store::create(dev.clone(), 8).unwrap();
        for old in 0..4 {
            let n = s.allocate().unwrap();
            s.commit_exception(old, n).unwrap();
        }
        assert!(matches!(
            s.allocate(),
            Err(SnapshotStoreError::NoSpace { .. })
        ));
        s.invalidate().unwrap();
        assert!(matches!(
            s.allocate(),
            Err(SnapshotStoreError::Invalid { .. })
        ));
        let r = reopen(&dev);
        assert!(!r.is_valid());
        assert!(r.is_empty());
    }

    #[test]
    fn merge_walks_back_in_runs_and_resumes_from_disk() {
        let dev = mem(200 * 512);
        let mut s = Store::create(dev.clone(), 1).unwrap();
        // Area 0: olds 10..40 at 2..32 (a run of 31 minus the break), then more in area 1.
        let olds: Vec<u64> = (10..40).chain([100, 101, 7, 8, 9]).collect();
        for &o in &olds {
            let n = s.allocate().unwrap();
            s.commit_exception(o, n).unwrap();
        }
        // Last committed: 7,8,9 at consecutive chunks.
        let run = s.prepare_merge().unwrap().unwrap();
        assert_eq!((run.old_chunk, run.count), (7, 3));
        s.commit_merge(3).unwrap();
        let mut r = reopen(&dev);
        assert_eq!(r.len(), olds.len() - 3);
        assert_eq!(r.lookup(8), None);
        let run = r.prepare_merge().unwrap().unwrap();
        assert_eq!((run.old_chunk, run.count), (100, 2));
        r.commit_merge(2).unwrap();
        // Area 1 is now empty; the walk goes back to area 0, which is full.
        let mut left = 0;
        while let Some(run) = r.prepare_merge().unwrap() {
            r.commit_merge(run.count).unwrap();
            left += run.count;
        }
        assert_eq!(left, 30);
        assert!(r.is_empty());
        assert_eq!(r.usage().sectors_allocated, r.usage().metadata_sectors);
        assert!(reopen(&dev).is_empty());
    }

    fn store_with(entries: &[(u64, u64)], chunks: u64) -> Arc<MemoryDevice> {
        let dev = mem(chunks * 512);
        Store::create(dev.clone(), 1).unwrap();
        let mut area = vec![0u8; 512];
        for (i, &(o, n)) in entries.iter().enumerate() {
            set_entry(&mut area, i as u64, o, n);
        }
        dev.write_at(&area, 512).unwrap();
        dev
    }

    #[test]
    fn damaged_stores_are_named() {
        let err = |dev: Arc<MemoryDevice>| Store::open(dev).unwrap_err();
        let dev = mem(8192);
        dev.write_at(b"XnAp", 0).unwrap();
        assert!(matches!(err(dev), SnapshotStoreError::BadMagic { .. }));

        let bad_header = |chunk: u32, version: u32| {
            let dev = mem(8192);
            let h = DiskHeader {
                magic: MAGIC,
                valid: 1,
                version,
                chunk_sectors: chunk,
            };
            dev.write_at(&h.encode(), 0).unwrap();
            err(dev)
        };
        assert!(matches!(
            bad_header(8, 2),
            SnapshotStoreError::BadVersion { found: 2, .. }
        ));
        for c in [0, 3, 12, 1 << 22] {
            let e = bad_header(c, 1);
            assert!(
                matches!(e, SnapshotStoreError::BadChunkSize { .. }),
                "{c}: {e}"
            );
        }
        assert!(matches!(
            bad_header(16, 1),
            SnapshotStoreError::TooSmall { .. }
        ));

        let e = err(store_with(&[(1, 2), (5, 99)], 40));
        assert!(
            matches!(
                e,
                SnapshotStoreError::ExceptionOutside {
                    new_chunk: 99,
                    index: 1,
                    ..
                }
            ),
            "{e}"
        );
        let e = err(store_with(&[(1, 2), (5, 34)], 40));
        assert!(
            matches!(
                e,
                SnapshotStoreError::ExceptionInMetadata { new_chunk: 34, .. }
            ),
            "{e}"
        );
        let e = err(store_with(&[(1, 2), (1, 3)], 40));
        assert!(
            matches!(e, SnapshotStoreError::DuplicateOld { old_chunk: 1, .. }),
            "{e}"
        );
        let e = err(store_with(&[(1, 2), (4, 2)], 40));
        assert!(
            matches!(e, SnapshotStoreError::DuplicateNew { new_chunk: 2, .. }),
            "{e}"
        );
        // A full area whose successor is past the end.
        let full: Vec<(u64, u64)> = (0..32).map(|i| (i, i + 2)).collect();
        let e = err(store_with(&full, 34));
        assert!(matches!(e, SnapshotStoreError::AreaOutside { .. }), "{e}");
        assert!(e.to_string().starts_with("cow: "), "{e}");
    }

    #[test]
    fn commit_refuses_bad_exceptions() {
        let dev = mem(40 * 512);
        let mut s = Store::create(dev, 1).unwrap();
        assert!(s.commit_exception(1, 0).is_err());
        assert!(s.commit_exception(1, 34).is_err());
        assert!(s.commit_exception(1, 40).is_err());
        s.commit_exception(1, 2).unwrap();
        assert!(matches!(
            s.commit_exception(1, 3),
            Err(SnapshotStoreError::DuplicateOld { .. })
        ));
    }
}
