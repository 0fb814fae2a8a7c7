//! The bbr target over a disk behind the fault-injecting device: writes that fail on a
//! range land in the replacement pool and read back whole, across restarts; the table
//! survives one damaged copy and is rewritten; the pool running out says so; and a power cut
//! at every write of a relocation leaves the old or the new table, never one that points at
//! a replacement without its data.

use std::sync::Arc;

use tessera_bbr::parse_status;
use tessera_block::{BlockDevice, ErrorOn, FaultDevice, MemoryDevice, PowerDomain, SharedDevice};
use tessera_formats::bbr::{BbrStore, Geometry, TableSector};
use tessera_mapper::{MappedDevice, Table, TargetRegistry};

const DISK_SECTORS: u64 = 4096;
const POOL: u64 = 40;
const S: u64 = 512;

fn geometry() -> Geometry {
    Geometry::inside(0, DISK_SECTORS, POOL).unwrap()
}

/// A disk with empty BBR tables and every data sector filled with `fill`.
fn formatted_disk(fill: u8) -> Arc<MemoryDevice> {
    let g = geometry();
    let disk = Arc::new(MemoryDevice::new("disk", DISK_SECTORS * S));
    disk.write_at(&vec![fill; (g.data_sectors * S) as usize], 0)
        .unwrap();
    BbrStore::format(disk.clone() as SharedDevice, g).unwrap();
    disk
}

fn table_line() -> String {
    let g = geometry();
    format!(
        "0 {} bbr disk 0 {} {} {} {} {} 512\n",
        g.data_sectors, g.table1, g.table2, g.table_sectors, g.pool_start, g.pool_sectors
    )
}

fn registry() -> Arc<TargetRegistry> {
    let mut r = TargetRegistry::new();
    tessera_bbr::register(&mut r).unwrap();
    Arc::new(r)
}

fn try_open(dev: SharedDevice) -> Result<MappedDevice, String> {
    let mapped = MappedDevice::new("vg-bbr", registry());
    let table = Table::parse(&table_line()).map_err(|e| e.to_string())?;
    let resolve = |name: &str| -> tessera_block::Result<SharedDevice> {
        assert_eq!(name, "disk");
        Ok(dev.clone())
    };
    mapped.load(&table, &resolve).map_err(|e| e.to_string())?;
    mapped.resume().map_err(|e| e.to_string())?;
    Ok(mapped)
}

fn open(dev: SharedDevice) -> MappedDevice {
    try_open(dev).unwrap_or_else(|e| panic!("bbr did not open: {e}"))
}

/// The disk behind a fault device whose writes fail on sectors `[first, first + count)`.
fn failing(disk: &Arc<MemoryDevice>, first: u64, count: u64) -> Arc<FaultDevice> {
    let fault = Arc::new(FaultDevice::new(
        disk.clone() as SharedDevice,
        PowerDomain::new(),
    ));
    fault.add_error_range(first * S, count * S, ErrorOn::Write);
    fault
}

fn status(dev: &MappedDevice) -> tessera_bbr::BbrStatus {
    let line = dev.status();
    let fields = line
        .split_once(" bbr ")
        .unwrap_or_else(|| panic!("status {line:?}"))
        .1;
    parse_status(fields).unwrap_or_else(|| panic!("status {line:?}"))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

fn read(dev: &dyn BlockDevice, sector: u64, sectors: u64) -> Vec<u8> {
    let mut buf = vec![0u8; (sectors * S) as usize];
    dev.read_at(&mut buf, sector * S).unwrap();
    buf
}

#[test]
fn failed_writes_land_in_the_pool_and_read_back_whole_after_a_restart() {
    let g = geometry();
    let disk = formatted_disk(0x11);
    let fault = failing(&disk, 100, 8);
    let dev = open(fault.clone());
    assert_eq!(status(&dev).relocated, 0);
    let data = pattern(64 << 10, 3);
    dev.write_at(&data, 96 * S).unwrap();
    dev.flush().unwrap();
    let st = status(&dev);
    assert_eq!(
        (st.relocated, st.used, st.pool, st.state.as_str()),
        (8, 8, POOL, "ok")
    );
    assert!(read(&dev, 96, 128) == data, "the data read back");
    // On the disk: the bad sectors kept their old bytes; the pool holds the new ones, in
    // order.
    assert_eq!(read(disk.as_ref(), 100, 8), vec![0x11; 8 * 512]);
    assert_eq!(
        read(disk.as_ref(), g.pool_start, 8),
        data[4 * 512..12 * 512]
    );
    let list = dev.message(0, &["list"]).unwrap();
    assert_eq!(list.lines().count(), 8);
    assert!(
        list.starts_with(&format!("100 {}\n", g.pool_start)),
        "{list}"
    );
    // A second write to relocated sectors goes to their replacements, not the pool's end.
    let again = pattern(4 << 10, 77);
    dev.write_at(&again, 100 * S).unwrap();
    assert_eq!(status(&dev).used, 8);
    dev.flush().unwrap();
    drop(dev);

    // A restart reads the table and serves the same bytes; the bad range still fails.
    let dev = open(failing(&disk, 100, 8));
    assert_eq!(status(&dev).relocated, 8);
    let mut want = data.clone();
    want[4 * 512..12 * 512].copy_from_slice(&again);
    assert!(read(&dev, 96, 128) == want, "the data after a restart");
    // `relocate` moves a sector that is not failing yet, keeping its data.
    dev.message(0, &["relocate", "500"]).unwrap();
    assert_eq!(status(&dev).relocated, 9);
    assert_eq!(read(&dev, 500, 1), vec![0x11; 512]);
    assert!(dev.message(0, &["relocate", "999999"]).is_err());
    assert!(dev.message(0, &["bogus"]).is_err());
}

#[test]
fn a_damaged_copy_is_survived_and_rewritten() {
    let g = geometry();
    for damaged in [g.table1, g.table2] {
        let disk = formatted_disk(0);
        let data = pattern(8 << 10, 9);
        {
            let dev = open(failing(&disk, 10, 4));
            dev.write_at(&data, 8 * S).unwrap();
            dev.flush().unwrap();
        }
        // Torn garbage over the damaged copy's first sector.
        disk.write_at(&[0x5A; 300], damaged * S).unwrap();
        let other = if damaged == g.table1 {
            g.table2
        } else {
            g.table1
        };
        let dev = open(failing(&disk, 10, 4));
        assert_eq!(status(&dev).relocated, 4, "copy at {damaged} damaged");
        assert_eq!(read(&dev, 8, 16), data);
        // Both copies agree again, byte for byte.
        assert_eq!(
            read(disk.as_ref(), damaged, g.table_sectors),
            read(disk.as_ref(), other, g.table_sectors)
        );
        let mut first = [0u8; 512];
        first.copy_from_slice(&read(disk.as_ref(), damaged, 1));
        assert_eq!(TableSector::decode(&first).unwrap().entries.len(), 4);
    }
    // Both copies damaged: activation refuses, naming the sectors.
    let disk = formatted_disk(0);
    disk.write_at(&[0; 512], g.table1 * S).unwrap();
    disk.write_at(&[1; 512], g.table2 * S).unwrap();
    let err = try_open(disk as SharedDevice).err().unwrap();
    assert!(
        err.contains("both copies")
            && err.contains(&format!("sector {}", g.table1))
            && err.contains(&format!("sector {}", g.table2)),
        "{err}"
    );
}

#[test]
fn the_pool_running_out_says_so() {
    let disk = formatted_disk(0);
    let dev = open(failing(&disk, 1000, 64));
    let first = pattern(16 << 10, 1);
    dev.write_at(&first, 1000 * S).unwrap();
    let err = dev
        .write_at(&pattern(32 << 10, 2), 1032 * S)
        .unwrap_err()
        .to_string();
    assert!(err.contains("replacement pool is used up"), "{err}");
    assert!(
        err.contains(&format!("all {POOL} replacement sectors")),
        "{err}"
    );
    let st = status(&dev);
    assert_eq!(
        (st.relocated, st.used, st.state.as_str()),
        (POOL, POOL, "exhausted")
    );
    assert_eq!(read(&dev, 1000, 32), first);
    // Writes outside the failing range still work.
    dev.write_at(&[7; 512], 0).unwrap();
    assert_eq!(read(&dev, 0, 1), vec![7; 512]);
}

#[test]
fn a_failing_replacement_is_skipped() {
    let g = geometry();
    let disk = formatted_disk(0);
    let fault = failing(&disk, 300, 2);
    fault.add_error_range(g.pool_start * S, S, ErrorOn::Write);
    let dev = open(fault);
    let data = pattern(1024, 5);
    dev.write_at(&data, 300 * S).unwrap();
    let st = status(&dev);
    assert_eq!((st.relocated, st.used), (2, 3));
    assert_eq!(read(&dev, 300, 2), data);
    drop(dev);
    let dev = open(failing(&disk, 300, 2));
    assert_eq!(read(&dev, 300, 2), data);
    let list = dev.message(0, &["list"]).unwrap();
    assert!(
        list.contains(&format!("300 {}", g.pool_start + 1)),
        "{list}"
    );
}

#[test]
fn a_bad_table_line_is_refused_clearly() {
    let disk = formatted_disk(0) as SharedDevice;
    let g = geometry();
    let cases = [
        (
            format!(
                "0 {} bbr disk 0 {} {} {} {} {} 4096\n",
                g.data_sectors, g.table1, g.table2, g.table_sectors, g.pool_start, g.pool_sectors
            ),
            "block_size",
        ),
        (
            format!(
                "0 {} bbr disk 0 {} {} {} {} {} 512\n",
                g.data_sectors, g.table1, g.table1, g.table_sectors, g.pool_start, g.pool_sectors
            ),
            "overlaps",
        ),
        (
            format!(
                "0 {} bbr disk 0 {} {} 1 {} {} 512\n",
                g.data_sectors, g.table1, g.table2, g.pool_start, g.pool_sectors
            ),
            "describe at most 31",
        ),
        (format!("0 {} bbr disk 0\n", g.data_sectors), "table1_lsn"),
    ];
    for (line, want) in cases {
        let mapped = MappedDevice::new("vg-bbr", registry());
        let table = Table::parse(&line).unwrap();
        let d = disk.clone();
        let resolve = move |_: &str| -> tessera_block::Result<SharedDevice> { Ok(d.clone()) };
        let err = mapped.load(&table, &resolve).unwrap_err().to_string();
        assert!(err.contains(want), "{line}: {err}");
    }
}

/// Relocating writes (one of them to an already relocated sector) with the power cut after
/// every number of writes, clean and torn: the target always opens, and every sector reads
/// as before the sequence, after its first write or after it (a sector never reads as a
/// replacement that its data did not reach); all after it when the sequence finished.
#[test]
fn a_power_cut_at_every_write_of_a_relocation_leaves_the_old_or_new_table() {
    let old_disk = formatted_disk(0xA5);
    let old = read(old_disk.as_ref(), 200, 40);
    let a = pattern(8 * 512, 21);
    let b = pattern(4 * 512, 99);
    let mut mid = old.clone();
    mid[..a.len()].copy_from_slice(&a);
    let mut new = mid.clone();
    new[2 * 512..6 * 512].copy_from_slice(&b);
    new[32 * 512..33 * 512].fill(0x3C);
    let run = |domain: &Arc<PowerDomain>| {
        let disk = Arc::new(MemoryDevice::with_contents(
            "disk",
            &read(old_disk.as_ref(), 0, DISK_SECTORS),
        ));
        let fault = Arc::new(FaultDevice::new(
            disk.clone() as SharedDevice,
            domain.clone(),
        ));
        // Sectors 202..205 and 232 fail their writes.
        fault.add_error_range(202 * S, 3 * S, ErrorOn::Write);
        fault.add_error_range(232 * S, S, ErrorOn::Write);
        let result = (|| -> Result<(), String> {
            let dev = try_open(fault.clone())?;
            dev.write_at(&a, 200 * S).map_err(|e| e.to_string())?;
            dev.write_at(&b, 202 * S).map_err(|e| e.to_string())?;
            dev.write_at(&[0x3C; 512], 232 * S)
                .map_err(|e| e.to_string())?;
            dev.flush().map_err(|e| e.to_string())?;
            Ok(())
        })();
        (result, disk)
    };
    let domain = PowerDomain::new();
    let (r, disk) = run(&domain);
    r.unwrap();
    let total = domain.writes_seen();
    assert!(
        total >= 12,
        "only {total} writes: the sequence did not relocate"
    );
    let after = open(disk as SharedDevice);
    assert_eq!(read(&after, 200, 40), new);
    assert_eq!(status(&after).relocated, 4);
    for n in 0..=total {
        for torn in [None, Some(n * 13 + 5)] {
            let domain = PowerDomain::new();
            domain.cut_after(n);
            if let Some(seed) = torn {
                domain.set_torn(seed);
            }
            let (r, disk) = run(&domain);
            let cut = format!("cut after {n} of {total} writes, torn {torn:?}");
            assert!(
                n == total || r.is_err(),
                "{cut}: the sequence did not notice"
            );
            if let Err(e) = &r {
                assert!(e.contains("power was cut"), "{cut}: failed otherwise: {e}");
            }
            // What survived, read through a fresh target with the bad sectors still bad.
            let fault = failing(&disk, 202, 3);
            let dev = try_open(fault).unwrap_or_else(|e| panic!("{cut}: {e}"));
            let got = read(&dev, 200, 40);
            for (i, (((g, o), m), w)) in got
                .chunks(512)
                .zip(old.chunks(512))
                .zip(mid.chunks(512))
                .zip(new.chunks(512))
                .enumerate()
            {
                assert!(
                    g == o || g == m || g == w,
                    "{cut}: sector {} is none of what the writes left there",
                    200 + i
                );
            }
            if n == total {
                assert!(got == new, "{cut}: the finished sequence's data");
            }
            let st = status(&dev);
            assert!(st.relocated <= 4 && st.used <= 4, "{cut}: {st:?}");
        }
    }
}

/// A disk with a page cache, as a block device opened without O_DIRECT: writes succeed at
/// once, and a write to a bad sector fails only when flushed (written back); the sector
/// then keeps its old bytes.
struct WritebackDisk {
    inner: Arc<MemoryDevice>,
    bad: std::ops::Range<u64>,
    pending: std::sync::Mutex<Vec<(u64, Vec<u8>)>>,
}

impl BlockDevice for WritebackDisk {
    fn name(&self) -> &str {
        "disk"
    }
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> tessera_block::Result<()> {
        self.inner.read_at(buf, offset)?;
        for (at, data) in self.pending.lock().unwrap().iter() {
            let (lo, hi) = (
                offset.max(*at),
                (offset + buf.len() as u64).min(at + data.len() as u64),
            );
            if lo < hi {
                buf[(lo - offset) as usize..(hi - offset) as usize]
                    .copy_from_slice(&data[(lo - at) as usize..(hi - at) as usize]);
            }
        }
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> tessera_block::Result<()> {
        self.pending.lock().unwrap().push((offset, buf.to_vec()));
        Ok(())
    }
    fn flush(&self) -> tessera_block::Result<()> {
        let mut failed = false;
        for (at, data) in self.pending.lock().unwrap().drain(..) {
            for (i, sector) in data.chunks(512).enumerate() {
                let s = at / S + i as u64;
                if self.bad.contains(&s) {
                    failed = true;
                } else {
                    self.inner.write_at(sector, s * S)?;
                }
            }
        }
        if failed {
            return Err(tessera_block::BlockError::Flush {
                device: "disk".into(),
                source: std::io::Error::other("writeback failed"),
            });
        }
        Ok(())
    }
    fn discard(&self, _: u64, _: u64) -> tessera_block::Result<()> {
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> tessera_block::Result<()> {
        self.write_at(&vec![0; len as usize], offset)
    }
}

#[test]
fn a_write_that_fails_only_at_writeback_is_relocated_before_it_is_acknowledged() {
    let disk = formatted_disk(0x22);
    let wb = Arc::new(WritebackDisk {
        inner: disk.clone(),
        bad: 700..705,
        pending: std::sync::Mutex::new(Vec::new()),
    });
    let dev = open(wb.clone());
    let data = pattern(16 << 10, 42);
    dev.write_at(&data, 696 * S).unwrap();
    assert_eq!(status(&dev).relocated, 5);
    // Nothing left in the cache: what was acknowledged is on the disk or in the pool.
    assert!(wb.pending.lock().unwrap().is_empty());
    assert_eq!(read(disk.as_ref(), 700, 5), vec![0x22; 5 * 512]);
    drop(dev);
    let dev = open(disk as SharedDevice);
    assert!(read(&dev, 696, 32) == data, "the data after a restart");
    // Zeroes over the bad range go through the relocating write too.
    let dev = open(wb);
    dev.write_zeroes(690 * S, 20 * S).unwrap();
    assert_eq!(read(&dev, 690, 20), vec![0; 20 * 512]);
    assert_eq!(status(&dev).relocated, 5);
}
