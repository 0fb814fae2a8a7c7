//! Image files, a registry with the thin targets, and mapped devices resolvable by name as
//! lvm2 stacks them (thin tables name their pool's mapped device).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tessera_block::{BlockDevice, FileDevice, OpenOptions, Result as BlockResult, SharedDevice};
use tessera_mapper::{MappedDevice, Table, TargetRegistry};

pub const SECTOR: u64 = 512;
/// 64 KiB data blocks, the smallest the kernel takes.
pub const BLOCK_SECTORS: u64 = 128;
pub const BLOCK: u64 = BLOCK_SECTORS * SECTOR;

pub fn registry() -> Arc<TargetRegistry> {
    let mut r = TargetRegistry::new();
    tessera_thin::register(&mut r).unwrap();
    Arc::new(r)
}

/// A directory of image files and the mapped devices built on them.
pub struct Stack {
    pub dir: tempfile::TempDir,
    mapped: Mutex<HashMap<String, Arc<MappedDevice>>>,
    registry: Arc<TargetRegistry>,
}

impl Stack {
    pub fn new() -> Stack {
        Stack {
            dir: tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap(),
            mapped: Mutex::new(HashMap::new()),
            registry: registry(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A file of `bytes` (zeroes where new); its path.
    pub fn file(&self, name: &str, bytes: u64) -> String {
        let p = self.path(name);
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(bytes)
            .unwrap();
        p.to_string_lossy().into_owned()
    }

    /// Mapped devices by name, anything else as a file (a new handle each time, as a
    /// resolver may).
    pub fn resolve(&self, name: &str) -> BlockResult<SharedDevice> {
        if let Some(d) = self.mapped.lock().unwrap().get(name) {
            return Ok(d.clone() as SharedDevice);
        }
        Ok(Arc::new(FileDevice::open(name, OpenOptions::default())?))
    }

    /// Creates (or reuses) mapped device `name`, loads `table` and resumes it.
    pub fn activate(&self, name: &str, table: &str) -> Arc<MappedDevice> {
        self.try_activate(name, table)
            .unwrap_or_else(|e| panic!("{name}: {table}: {e}"))
    }

    pub fn try_activate(&self, name: &str, table: &str) -> Result<Arc<MappedDevice>, String> {
        let dev = self
            .mapped
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(MappedDevice::new(name, self.registry.clone())))
            .clone();
        let resolve = |n: &str| self.resolve(n);
        let loaded = Table::parse(table)
            .map_err(|e| e.to_string())
            .and_then(|t| dev.load(&t, &resolve).map_err(|e| e.to_string()))
            .and_then(|_| dev.resume().map_err(|e| e.to_string()));
        if let Err(e) = loaded {
            if dev.table().is_none() {
                self.mapped.lock().unwrap().remove(name);
            }
            return Err(e);
        }
        Ok(dev)
    }

    /// Drops mapped device `name` (its targets go when the last handle does).
    pub fn remove(&self, name: &str) {
        self.mapped.lock().unwrap().remove(name);
    }

    pub fn remove_all(&self) {
        self.mapped.lock().unwrap().clear();
    }

    pub fn message(&self, name: &str, msg: &str) -> Result<String, String> {
        let dev = self.mapped.lock().unwrap().get(name).cloned().unwrap();
        let words: Vec<&str> = msg.split_whitespace().collect();
        dev.message(0, &words).map_err(|e| e.to_string())
    }
}

pub fn pool_table(meta: &str, data: &str, data_blocks: u64, features: &[&str]) -> String {
    let mut line = format!(
        "0 {} thin-pool {meta} {data} {BLOCK_SECTORS} 0",
        data_blocks * BLOCK_SECTORS
    );
    if !features.is_empty() {
        line += &format!(" {} {}", features.len(), features.join(" "));
    }
    line + "\n"
}

pub fn thin_table(pool: &str, id: u32, sectors: u64) -> String {
    format!("0 {sectors} thin {pool} {id}\n")
}

/// The status words after the target type of a one-row device.
pub fn status_words(dev: &MappedDevice) -> Vec<String> {
    dev.status()
        .split_whitespace()
        .skip(3)
        .map(str::to_string)
        .collect()
}

/// (used, total) data blocks from a pool's status.
pub fn data_usage(pool: &MappedDevice) -> (u64, u64) {
    let w = status_words(pool);
    let (used, total) = w[2].split_once('/').unwrap();
    (used.parse().unwrap(), total.parse().unwrap())
}

pub fn read(dev: &dyn BlockDevice, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    dev.read_at(&mut buf, offset).unwrap();
    buf
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

/// Runs the real `thin_check` on a metadata image; panics with its output if it fails.
pub fn thin_check(meta: &str) {
    let out = std::process::Command::new("/usr/sbin/thin_check")
        .arg(meta)
        .output()
        .expect("run thin_check");
    assert!(
        out.status.success(),
        "thin_check {meta} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The real `thin_dump`'s XML for a metadata image.
pub fn thin_dump(meta: &str) -> String {
    let out = std::process::Command::new("/usr/sbin/thin_dump")
        .arg(meta)
        .output()
        .expect("run thin_dump");
    assert!(
        out.status.success(),
        "thin_dump {meta} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Data blocks mapped per device in a thin_dump, counting range mappings' lengths.
pub fn dumped_mapped_blocks(xml: &str, dev_id: u32) -> u64 {
    let mut in_dev = false;
    let mut n = 0;
    for line in xml.lines() {
        let l = line.trim();
        if l.starts_with("<device ") {
            in_dev = l.contains(&format!("dev_id=\"{dev_id}\""));
        } else if in_dev && l.starts_with("<single_mapping") {
            n += 1;
        } else if in_dev && l.starts_with("<range_mapping") {
            let len = l
                .split("length=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            n += len.parse::<u64>().unwrap();
        }
    }
    n
}

/// The distinct data blocks mapped by any device in a thin_dump.
pub fn dumped_data_blocks(xml: &str) -> std::collections::HashSet<u64> {
    let attr = |l: &str, name: &str| -> u64 {
        l.split(&format!(" {name}=\""))
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let mut blocks = std::collections::HashSet::new();
    for line in xml.lines() {
        let l = line.trim();
        if l.starts_with("<single_mapping") {
            blocks.insert(attr(l, "data_block"));
        } else if l.starts_with("<range_mapping") {
            let begin = attr(l, "data_begin");
            blocks.extend(begin..begin + attr(l, "length"));
        }
    }
    blocks
}
