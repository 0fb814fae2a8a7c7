//! A move while the LVs are served: the source PV as the served LVs see it during the copy.
//! [`MovingPv`] stands in for the source device under every table that names it (see
//! [`crate::Engine::overlay_device`]): reads come from the source, where the data is until
//! the move finishes; a write to an area being moved goes to the source and to the area's
//! destination, under the shared lock of each region it touches; the copy takes a region's
//! lock exclusively while it reads the source and writes the destination, as the raid
//! recovery takes its row locks. A write is therefore either copied along with the region
//! or lands on both sides after it: never lost. The copy paces itself with md's speed
//! limits, giving way to client I/O down to the minimum rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

use tessera_block::{BlockDevice, BlockError, Result as BlockResult, SharedDevice};

use super::MoveLimits;

/// lvm2's pvmove region (2 MiB), in bytes: the unit of the copy's locks.
pub const REGION_BYTES: u64 = super::DEFAULT_REGION_SECTORS * 512;

/// One area of the source being moved: `len` bytes at `from` on the source, going to `to`
/// on `dest`.
#[derive(Clone)]
pub struct MovingArea {
    pub from: u64,
    pub len: u64,
    pub dest: SharedDevice,
    pub to: u64,
}

/// One write-like operation on a device: at a byte offset, for a range of the caller's
/// buffer.
type MirroredOp<'a> = dyn Fn(&dyn BlockDevice, u64, std::ops::Range<usize>) -> BlockResult<()> + 'a;

/// The source PV of a move in progress, mirrored onto the destinations where it is moved.
pub struct MovingPv {
    source: SharedDevice,
    areas: Vec<MovingArea>,
    /// The first lock of each area; an area has one lock per region.
    first_lock: Vec<usize>,
    locks: Vec<RwLock<()>>,
    started: Instant,
    /// When a client last wrote or read, in ms since `started` (0: never).
    last_io_ms: AtomicU64,
}

impl MovingPv {
    /// The source `source` with `areas` being moved (they must not overlap).
    pub fn new(source: SharedDevice, areas: Vec<MovingArea>) -> MovingPv {
        let mut first_lock = Vec::new();
        let mut count = 0usize;
        for a in &areas {
            first_lock.push(count);
            count += a.len.div_ceil(REGION_BYTES) as usize;
        }
        MovingPv {
            source,
            areas,
            first_lock,
            locks: (0..count).map(|_| RwLock::new(())).collect(),
            started: Instant::now(),
            last_io_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_io_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// Whether clients did I/O in the last half second (the raid recovery's test).
    pub fn busy(&self) -> bool {
        let last = self.last_io_ms.load(Ordering::Relaxed);
        last != 0 && (self.started.elapsed().as_millis() as u64).saturating_sub(last) < 500
    }

    /// The pieces of `[offset, offset + len)` inside moving areas: (area, offset into the
    /// area, length), in order.
    fn pieces(&self, offset: u64, len: u64) -> Vec<(usize, u64, u64)> {
        let end = offset + len;
        let mut out = Vec::new();
        for (i, a) in self.areas.iter().enumerate() {
            let lo = offset.max(a.from);
            let hi = end.min(a.from + a.len);
            if lo < hi {
                out.push((i, lo - a.from, hi - lo));
            }
        }
        out
    }

    /// The lock indexes of the regions `[at, at + len)` of area `area` covers.
    fn region_locks(&self, area: usize, at: u64, len: u64) -> std::ops::Range<usize> {
        let first = self.first_lock[area];
        first + (at / REGION_BYTES) as usize..first + (at + len).div_ceil(REGION_BYTES) as usize
    }

    /// Writes to the source and, for what lies in moving areas, to the destinations too,
    /// each region's lock held shared across both writes.
    fn mirrored(&self, offset: u64, len: u64, op: &MirroredOp<'_>) -> BlockResult<()> {
        self.touch();
        let pieces = self.pieces(offset, len);
        let mut indexes: Vec<usize> = pieces
            .iter()
            .flat_map(|&(a, at, n)| self.region_locks(a, at, n))
            .collect();
        // Taken in one order, so two writes never wait on each other in a circle.
        indexes.sort_unstable();
        indexes.dedup();
        let _held: Vec<_> = indexes
            .iter()
            .map(|&i| self.locks[i].read().unwrap_or_else(PoisonError::into_inner))
            .collect();
        op(self.source.as_ref(), offset, 0..len as usize)?;
        for (a, at, n) in pieces {
            let area = &self.areas[a];
            let within = (area.from + at - offset) as usize;
            op(
                area.dest.as_ref(),
                area.to + at,
                within..within + n as usize,
            )?;
        }
        Ok(())
    }

    /// Copies `len` bytes of the source from `offset` (inside one moving area) to the
    /// destination, a region at a time, each region's lock held exclusively; then paces
    /// the copy to `limits`.
    pub fn copy(&self, offset: u64, len: u64, pace: &mut Pace) -> BlockResult<()> {
        let pieces = self.pieces(offset, len);
        let covered: u64 = pieces.iter().map(|p| p.2).sum();
        if covered != len {
            return Err(BlockError::OutOfRange {
                device: self.source.name().to_string(),
                offset,
                len,
                size: self.source.size_bytes(),
            });
        }
        let mut buf = Vec::new();
        for (a, at, n) in pieces {
            let area = &self.areas[a];
            let mut done = 0;
            while done < n {
                let pos = at + done;
                let step = (REGION_BYTES - pos % REGION_BYTES).min(n - done);
                buf.resize(step as usize, 0);
                {
                    let index = self.region_locks(a, pos, 1).start;
                    let _held = self.locks[index]
                        .write()
                        .unwrap_or_else(PoisonError::into_inner);
                    self.source.read_at(&mut buf, area.from + pos)?;
                    area.dest.write_at(&buf, area.to + pos)?;
                }
                done += step;
                pace.step(self, step);
            }
        }
        Ok(())
    }
}

impl BlockDevice for MovingPv {
    fn name(&self) -> &str {
        self.source.name()
    }
    fn size_bytes(&self) -> u64 {
        self.source.size_bytes()
    }
    fn logical_block_size(&self) -> u32 {
        self.source.logical_block_size()
    }
    fn physical_block_size(&self) -> u32 {
        self.source.physical_block_size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> BlockResult<()> {
        self.touch();
        self.source.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> BlockResult<()> {
        self.mirrored(offset, buf.len() as u64, &|dev, at, range| {
            dev.write_at(&buf[range], at)
        })
    }
    fn flush(&self) -> BlockResult<()> {
        self.source.flush()?;
        for a in &self.areas {
            a.dest.flush()?;
        }
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> BlockResult<()> {
        self.mirrored(offset, len, &|dev, at, range| {
            dev.discard(at, range.len() as u64)
        })
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> BlockResult<()> {
        self.mirrored(offset, len, &|dev, at, range| {
            dev.write_zeroes(at, range.len() as u64)
        })
    }
}

/// md's pacing of background work: at most the maximum rate, and while clients do I/O at
/// most the minimum (KiB/s).
pub struct Pace {
    limits: MoveLimits,
    mark: Instant,
    bytes: u64,
}

impl Pace {
    pub fn new(limits: MoveLimits) -> Pace {
        Pace {
            limits,
            mark: Instant::now(),
            bytes: 0,
        }
    }

    fn step(&mut self, pv: &MovingPv, bytes: u64) {
        self.bytes += bytes;
        loop {
            let secs = self.mark.elapsed().as_secs_f64().max(1e-3);
            let rate = self.bytes as f64 / 1024.0 / secs;
            let (min, max) = (self.limits.min_rate_kib, self.limits.max_rate_kib);
            if rate <= min as f64 || ((max == 0 || rate <= max as f64) && !pv.busy()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.mark.elapsed() > Duration::from_secs(3) {
            self.mark = Instant::now();
            self.bytes = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tessera_block::MemoryDevice;

    fn mem(bytes: u64) -> SharedDevice {
        Arc::new(MemoryDevice::new("mem", bytes))
    }

    const UNPACED: MoveLimits = MoveLimits {
        min_rate_kib: u64::MAX / 4096,
        max_rate_kib: 0,
    };

    #[test]
    fn writes_reach_both_sides_and_the_copy_brings_the_rest() {
        let src = mem(16 << 20);
        let dst = mem(16 << 20);
        let fill: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
        src.write_at(&fill, 0).unwrap();
        // 6 MiB at 4 MiB of the source go to 1 MiB of the destination.
        let pv = MovingPv::new(
            src.clone(),
            vec![MovingArea {
                from: 4 << 20,
                len: 6 << 20,
                dest: dst.clone(),
                to: 1 << 20,
            }],
        );
        // A write across the area's start lands on the source, and its part inside the
        // area on the destination.
        let w = vec![0xabu8; 1 << 20];
        pv.write_at(&w, (4 << 20) - 4096).unwrap();
        let mut back = vec![0u8; 1 << 20];
        src.read_at(&mut back, (4 << 20) - 4096).unwrap();
        assert_eq!(back, w);
        let mut part = vec![0u8; (1 << 20) - 4096];
        dst.read_at(&mut part, 1 << 20).unwrap();
        assert!(part.iter().all(|&b| b == 0xab));
        let mut pace = Pace::new(UNPACED);
        pv.copy(4 << 20, 6 << 20, &mut pace).unwrap();
        let mut want = vec![0u8; 6 << 20];
        src.read_at(&mut want, 4 << 20).unwrap();
        let mut got = vec![0u8; 6 << 20];
        dst.read_at(&mut got, 1 << 20).unwrap();
        assert_eq!(got, want);
        // Outside the area nothing reaches the destination.
        let mut head = vec![1u8; 1 << 20];
        dst.read_at(&mut head, 0).unwrap();
        assert!(head.iter().all(|&b| b == 0));
        assert!(pv.copy(3 << 20, 2 << 20, &mut pace).is_err());
    }

    #[test]
    fn writes_racing_the_copy_are_never_lost() {
        let src = mem(8 << 20);
        let dst = mem(8 << 20);
        let pv = Arc::new(MovingPv::new(
            src.clone(),
            vec![MovingArea {
                from: 0,
                len: 8 << 20,
                dest: dst.clone(),
                to: 0,
            }],
        ));
        // One copy pass while a writer keeps writing: a write between the copy's read
        // of a region and its write of it would be undone on the destination.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let writer = {
            let (pv, stop, rounds) = (pv.clone(), stop.clone(), rounds.clone());
            std::thread::spawn(move || {
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let at = (round * 40_961 * 512) % ((8 << 20) - 65536) / 512 * 512;
                    pv.write_at(&vec![(round % 250 + 1) as u8; 65536], at)
                        .unwrap();
                    round += 1;
                    rounds.store(round, Ordering::Relaxed);
                }
            })
        };
        while rounds.load(Ordering::Relaxed) == 0 {
            std::thread::yield_now();
        }
        let mut pace = Pace::new(UNPACED);
        pv.copy(0, 8 << 20, &mut pace).unwrap();
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        assert!(rounds.load(Ordering::Relaxed) > 1);
        let mut a = vec![0u8; 8 << 20];
        let mut b = vec![0u8; 8 << 20];
        src.read_at(&mut a, 0).unwrap();
        dst.read_at(&mut b, 0).unwrap();
        assert!(a == b, "the destination differs from the source");
    }
}
