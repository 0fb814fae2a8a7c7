//! Image files, a registry with the snapshot targets, and activation of tables as lvm2
//! loads them.
#![allow(dead_code)]

use std::sync::Arc;

use tessera_block::{BlockDevice, FileDevice, OpenOptions, Result as BlockResult, SharedDevice};
use tessera_mapper::{MappedDevice, Table, TargetRegistry};

pub const SECTOR: u64 = 512;

pub struct Images {
    pub dir: tempfile::TempDir,
}

impl Images {
    pub fn new() -> Images {
        Images {
            dir: tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap(),
        }
    }

    /// A file of `bytes` zero bytes; its path.
    pub fn file(&self, name: &str, bytes: u64) -> String {
        let p = self.dir.path().join(name);
        std::fs::File::create(&p).unwrap().set_len(bytes).unwrap();
        p.to_string_lossy().into_owned()
    }
}

pub fn registry() -> Arc<TargetRegistry> {
    let mut r = TargetRegistry::new();
    tessera_snapshot::register(&mut r).unwrap();
    Arc::new(r)
}

/// Opens every name as a file, a new handle each time (as a resolver may).
pub fn open_file(name: &str) -> BlockResult<SharedDevice> {
    Ok(Arc::new(FileDevice::open(name, OpenOptions::default())?))
}

pub fn activate(
    name: &str,
    table: &str,
    resolve: &dyn Fn(&str) -> BlockResult<SharedDevice>,
) -> MappedDevice {
    let dev = MappedDevice::new(name, registry());
    dev.load(&Table::parse(table).unwrap(), resolve)
        .unwrap_or_else(|e| panic!("{table}: {e}"));
    dev.resume().unwrap();
    dev
}

pub fn origin_table(origin: &str, sectors: u64) -> String {
    format!("0 {sectors} snapshot-origin {origin}\n")
}

pub fn snapshot_table(origin: &str, cow: &str, sectors: u64, chunk: u32) -> String {
    format!("0 {sectors} snapshot {origin} {cow} P {chunk}\n")
}

pub fn read(dev: &dyn BlockDevice, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    dev.read_at(&mut buf, offset).unwrap();
    buf
}

pub fn read_all(dev: &dyn BlockDevice) -> Vec<u8> {
    read(dev, 0, dev.size_bytes() as usize)
}

/// A seeded generator for test data and positions.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(len);
        v
    }
}

/// Fills a file through a device with seeded bytes.
pub fn fill(dev: &dyn BlockDevice, seed: u64) -> Vec<u8> {
    let data = Rng(seed).bytes(dev.size_bytes() as usize);
    dev.write_at(&data, 0).unwrap();
    dev.flush().unwrap();
    data
}
