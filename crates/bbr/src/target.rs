//! The bbr target: a map of relocated sectors over one device, and the table store that
//! keeps it on the device.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

use tessera_block::{BlockError, Result, SharedDevice};
use tessera_formats::bbr::{BbrError, BbrStore, Geometry, SKIPPED};
use tessera_mapper::{escape_arg, StatusType, Target, TargetArgs, TargetError, SECTOR_BYTES};

pub(crate) fn construct(
    args: &TargetArgs<'_>,
) -> std::result::Result<Box<dyn Target>, TargetError> {
    let mut r = args.reader();
    let name = r.next("dev")?;
    let offset: u64 = r.number("offset")?;
    let table1: u64 = r.number("table1_lsn")?;
    let table2: u64 = r.number("table2_lsn")?;
    let table_sectors: u64 = r.number("table_size")?;
    let pool_start: u64 = r.number("start_replacement")?;
    let pool_sectors: u64 = r.number("nr_replacement_blks")?;
    let block_size: u64 = r.number("block_size")?;
    r.finish()?;
    if block_size != SECTOR_BYTES {
        return Err(TargetError::Invalid(format!(
            "<block_size> {block_size}: tessera relocates single 512-byte sectors; give 512"
        )));
    }
    let dev = args.open(name, offset, args.length_sectors)?;
    let geometry = Geometry {
        data_start: offset,
        data_sectors: args.length_sectors,
        table1,
        table2,
        table_sectors,
        pool_start,
        pool_sectors,
    };
    let repair = !dev.is_read_only();
    let (store, report) = BbrStore::open(dev.clone(), geometry, repair)
        .map_err(|e| TargetError::Invalid(e.to_string()))?;
    if !(report.copy1_rewritten.is_empty() && report.copy2_rewritten.is_empty()) {
        tracing::warn!(
            device = args.device,
            dev = name,
            copy1 = ?report.copy1_rewritten,
            copy2 = ?report.copy2_rewritten,
            repaired = repair,
            "bbr: table sectors were damaged or behind in one copy; the other copy was used"
        );
    }
    let map = store
        .relocations()
        .into_iter()
        .map(|e| (e.bad, e.replacement))
        .collect();
    Ok(Box::new(Bbr {
        mapped: args.device.to_string(),
        row_start: args.start_sectors,
        name: name.to_string(),
        dev,
        geometry,
        map: RwLock::new(map),
        store: Mutex::new(store),
        exhausted: AtomicBool::new(false),
        writing: Mutex::new(()),
    }))
}

struct Bbr {
    /// The mapped device's name and the row's start on it, for errors.
    mapped: String,
    row_start: u64,
    /// The device's name as the table gave it.
    name: String,
    dev: SharedDevice,
    geometry: Geometry,
    /// Relocated device sector to its replacement, as committed.
    map: RwLock<BTreeMap<u64, u64>>,
    /// The on-disk tables; held while a sector is relocated, so relocations commit one at
    /// a time and in pool order.
    store: Mutex<BbrStore>,
    /// A write failed because the pool was used up.
    exhausted: AtomicBool,
    /// Held by a write from its first byte to its flush.
    writing: Mutex<()>,
}

/// A piece of a request: `count` sectors from request sector `first`, at device sector
/// `at`; `relocated` if `at` is a replacement.
struct Piece {
    first: u64,
    count: u64,
    at: u64,
    relocated: bool,
}

/// Errors that a bad sector gives, which relocation can cure; others (power cut, read-only,
/// out of range) are returned as they are.
fn is_media_error(e: &BlockError) -> bool {
    matches!(
        e,
        BlockError::Io { .. } | BlockError::Injected { .. } | BlockError::Flush { .. }
    )
}

impl Bbr {
    fn map(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, u64>> {
        self.map.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Splits `count` row sectors from `sector` into runs on the data area and single
    /// relocated sectors.
    fn pieces(&self, sector: u64, count: u64) -> Vec<Piece> {
        let first_dev = self.geometry.data_start + sector;
        let map = self.map();
        let mut out = Vec::new();
        let mut next = 0u64;
        for (&bad, &rep) in map.range(first_dev..first_dev + count) {
            let i = bad - first_dev;
            if i > next {
                out.push(Piece {
                    first: next,
                    count: i - next,
                    at: first_dev + next,
                    relocated: false,
                });
            }
            out.push(Piece {
                first: i,
                count: 1,
                at: rep,
                relocated: true,
            });
            next = i + 1;
        }
        if next < count {
            out.push(Piece {
                first: next,
                count: count - next,
                at: first_dev + next,
                relocated: false,
            });
        }
        out
    }

    fn bbr_failed(&self, sector: u64, e: BbrError) -> BlockError {
        match e {
            BbrError::Block(b) => b,
            e => BlockError::Io {
                device: self.mapped.clone(),
                offset: (self.row_start + sector) * SECTOR_BYTES,
                len: SECTOR_BYTES,
                source: io::Error::other(e.to_string()),
            },
        }
    }

    /// Writes `data` (one sector) for device sector `bad` to a replacement and commits the
    /// table; also for a sector already relocated whose replacement failed.
    fn relocate(&self, row_sector: u64, data: &[u8]) -> Result<()> {
        let bad = self.geometry.data_start + row_sector;
        let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        // Another write may have relocated this sector while this one waited for the lock.
        let known = self.map().get(&bad).copied();
        if let Some(rep) = known {
            match self.dev.write_at(data, rep * SECTOR_BYTES) {
                Ok(()) => return Ok(()),
                Err(e) if is_media_error(&e) => {}
                Err(e) => return Err(e),
            }
        }
        loop {
            let rep = match store.next_replacement(bad) {
                Ok(rep) => rep,
                Err(e) => {
                    self.exhausted.store(true, Ordering::Relaxed);
                    tracing::error!(device = %self.mapped, sector = bad, "bbr: {e}");
                    return Err(self.bbr_failed(row_sector, e));
                }
            };
            // The data is durable before the table points at it.
            let written = self
                .dev
                .write_at(data, rep * SECTOR_BYTES)
                .and_then(|_| self.dev.flush());
            match written {
                Ok(()) => {}
                Err(e) if is_media_error(&e) => {
                    tracing::warn!(device = %self.mapped, replacement = rep, "bbr: replacement sector failed too; skipping it");
                    store
                        .commit(SKIPPED)
                        .map_err(|e| self.bbr_failed(row_sector, e))?;
                    continue;
                }
                Err(e) => return Err(e),
            }
            let entry = store
                .commit(bad)
                .map_err(|e| self.bbr_failed(row_sector, e))?;
            tracing::warn!(device = %self.mapped, bad, replacement = entry.replacement, "bbr: relocated a sector whose write failed");
            self.map
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(bad, entry.replacement);
            return Ok(());
        }
    }

    /// Writes one piece; a media error sends each failing sector to [`Self::relocate`].
    fn write_piece(&self, sector: u64, p: &Piece, buf: &[u8]) -> Result<()> {
        let lo = (p.first * SECTOR_BYTES) as usize;
        let hi = ((p.first + p.count) * SECTOR_BYTES) as usize;
        match self.dev.write_at(&buf[lo..hi], p.at * SECTOR_BYTES) {
            Ok(()) => return Ok(()),
            Err(e) if is_media_error(&e) => {}
            Err(e) => return Err(e),
        }
        for i in 0..p.count {
            let s = (lo as u64 / SECTOR_BYTES + i) as usize;
            let data = &buf[s * SECTOR_BYTES as usize..(s + 1) * SECTOR_BYTES as usize];
            let at = if p.relocated { p.at } else { p.at + i };
            match self.dev.write_at(data, at * SECTOR_BYTES) {
                Ok(()) => {}
                Err(e) if is_media_error(&e) => self.relocate(sector + p.first + i, data)?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn status_fields(&self) -> (usize, u64, &'static str) {
        let relocated = self.map().len();
        let store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        let state = if self.exhausted.load(Ordering::Relaxed) {
            "exhausted"
        } else if store.free() == 0 {
            "full"
        } else {
            "ok"
        };
        (relocated, store.used(), state)
    }
}

impl Target for Bbr {
    fn read(&self, sector: u64, buf: &mut [u8]) -> Result<()> {
        let count = buf.len() as u64 / SECTOR_BYTES;
        for p in self.pieces(sector, count) {
            let lo = (p.first * SECTOR_BYTES) as usize;
            let hi = ((p.first + p.count) * SECTOR_BYTES) as usize;
            self.dev.read_at(&mut buf[lo..hi], p.at * SECTOR_BYTES)?;
        }
        Ok(())
    }

    /// Writes, then flushes before answering: a file or block device opened without
    /// O_DIRECT takes a write into the page cache and reports a bad sector only when the
    /// page is written back, which the flush waits for. Writes are serialized, so a flush
    /// error belongs to the write that waits for it; on one, each sector is written and
    /// flushed again on its own, and those that fail are relocated.
    fn write(&self, sector: u64, buf: &[u8]) -> Result<()> {
        let _one_at_a_time = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let count = buf.len() as u64 / SECTOR_BYTES;
        for p in self.pieces(sector, count) {
            self.write_piece(sector, &p, buf)?;
        }
        match self.dev.flush() {
            Ok(()) => return Ok(()),
            Err(e) if is_media_error(&e) => {
                tracing::warn!(device = %self.mapped, sector, "bbr: a write failed when flushed; finding the bad sectors");
            }
            Err(e) => return Err(e),
        }
        for i in 0..count {
            let data = &buf[(i * SECTOR_BYTES) as usize..((i + 1) * SECTOR_BYTES) as usize];
            let s = sector + i;
            let at = match self.pieces(s, 1).first() {
                Some(p) => p.at,
                None => continue,
            };
            let written = self
                .dev
                .write_at(data, at * SECTOR_BYTES)
                .and_then(|_| self.dev.flush());
            match written {
                Ok(()) => {}
                Err(e) if is_media_error(&e) => self.relocate(s, data)?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.dev.flush()
    }

    /// Discards the data area's runs; a relocated sector's replacement is left as it is
    /// (a discard is only a hint).
    fn discard(&self, sector: u64, len_sectors: u64) -> Result<()> {
        for p in self.pieces(sector, len_sectors) {
            if !p.relocated {
                self.dev
                    .discard(p.at * SECTOR_BYTES, p.count * SECTOR_BYTES)?;
            }
        }
        Ok(())
    }

    /// Writes zero sectors through the relocating write, a piece at a time: a
    /// write-zeroes passed down would report a bad sector only at writeback, too late to
    /// relocate it.
    fn write_zeroes(&self, sector: u64, len_sectors: u64) -> Result<()> {
        const PIECE_SECTORS: u64 = 2048;
        let zero = vec![0u8; (PIECE_SECTORS.min(len_sectors) * SECTOR_BYTES) as usize];
        let mut done = 0;
        while done < len_sectors {
            let n = PIECE_SECTORS.min(len_sectors - done);
            self.write(sector + done, &zero[..(n * SECTOR_BYTES) as usize])?;
            done += n;
        }
        Ok(())
    }

    fn status(&self, kind: StatusType) -> String {
        let g = &self.geometry;
        match kind {
            StatusType::Info => {
                let (relocated, used, state) = self.status_fields();
                format!("{relocated} {used}/{} {state}", g.pool_sectors)
            }
            StatusType::Table => format!(
                "{} {} {} {} {} {} {} {}",
                escape_arg(&self.name),
                g.data_start,
                g.table1,
                g.table2,
                g.table_sectors,
                g.pool_start,
                g.pool_sectors,
                SECTOR_BYTES
            ),
        }
    }

    fn message(&self, args: &[&str]) -> std::result::Result<String, TargetError> {
        match args {
            ["list"] => Ok(self
                .map()
                .iter()
                .map(|(bad, rep)| format!("{} {rep}\n", bad - self.geometry.data_start))
                .collect()),
            ["relocate", sector] => {
                let s: u64 = sector.parse().map_err(|_| TargetError::BadNumber {
                    what: "sector",
                    value: sector.to_string(),
                })?;
                if s >= self.geometry.data_sectors {
                    return Err(TargetError::Message(format!(
                        "sector {s} is past the row's {} sectors",
                        self.geometry.data_sectors
                    )));
                }
                let mut data = vec![0u8; SECTOR_BYTES as usize];
                self.read(s, &mut data)
                    .map_err(|e| TargetError::Message(format!("cannot read sector {s}: {e}")))?;
                self.relocate(s, &data)
                    .map_err(|e| TargetError::Message(e.to_string()))?;
                Ok(String::new())
            }
            _ => Err(TargetError::Message(format!(
                "unknown message {:?}: bbr takes 'list' and 'relocate <sector>'",
                args.join(" ")
            ))),
        }
    }

    fn devices(&self) -> Vec<SharedDevice> {
        vec![self.dev.clone()]
    }
}

/// A bbr target's `dmsetup status` fields, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BbrStatus {
    /// Sectors relocated now.
    pub relocated: u64,
    /// Replacement sectors used.
    pub used: u64,
    /// Replacement sectors in the pool.
    pub pool: u64,
    /// `ok`, `full` or `exhausted`.
    pub state: String,
}

/// Reads the target's part of a status line (`<relocated> <used>/<pool> <state>`).
pub fn parse_status(fields: &str) -> Option<BbrStatus> {
    let mut it = fields.split_whitespace();
    let relocated = it.next()?.parse().ok()?;
    let (used, pool) = it.next()?.split_once('/')?;
    let state = it.next()?.to_string();
    Some(BbrStatus {
        relocated,
        used: used.parse().ok()?,
        pool: pool.parse().ok()?,
        state,
    })
}
