//! Helpers shared by the thin metadata tests: thin_dump-style XML written and parsed, and the
//! thin-provisioning-tools run on image files. The tools must be installed: a test that cannot
//! find them fails.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use tessera_block::{FileDevice, OpenOptions, SharedDevice};
use tessera_formats::thin::{DeviceDetails, PoolMetadata};

/// A pool's state as thin_dump shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pool {
    pub time: u32,
    pub transaction: u64,
    pub data_block_size: u32,
    pub nr_data_blocks: u64,
    pub devices: BTreeMap<u32, Device>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Device {
    pub details: DeviceDetails,
    /// vblock -> (data block, time)
    pub mappings: BTreeMap<u64, (u64, u32)>,
}

impl Pool {
    /// The XML thin_restore reads, with runs as range mappings.
    pub fn to_xml(&self) -> String {
        let mut s = format!(
            "<superblock uuid=\"\" time=\"{}\" transaction=\"{}\" data_block_size=\"{}\" nr_data_blocks=\"{}\">\n",
            self.time, self.transaction, self.data_block_size, self.nr_data_blocks
        );
        for (id, dev) in &self.devices {
            let d = dev.details;
            s += &format!(
                "  <device dev_id=\"{id}\" mapped_blocks=\"{}\" transaction=\"{}\" creation_time=\"{}\" snap_time=\"{}\">\n",
                d.mapped_blocks, d.transaction_id, d.creation_time, d.snapshotted_time
            );
            let entries: Vec<_> = dev.mappings.iter().map(|(&v, &(b, t))| (v, b, t)).collect();
            let mut i = 0;
            while i < entries.len() {
                let (v, b, t) = entries[i];
                let mut n = 1;
                while i + n < entries.len() {
                    let (v2, b2, t2) = entries[i + n];
                    if v2 == v + n as u64 && b2 == b + n as u64 && t2 == t {
                        n += 1;
                    } else {
                        break;
                    }
                }
                if n == 1 {
                    s += &format!("    <single_mapping origin_block=\"{v}\" data_block=\"{b}\" time=\"{t}\"/>\n");
                } else {
                    s += &format!(
                        "    <range_mapping origin_begin=\"{v}\" data_begin=\"{b}\" length=\"{n}\" time=\"{t}\"/>\n"
                    );
                }
                i += n;
            }
            s += "  </device>\n";
        }
        s += "</superblock>\n";
        s
    }

    /// Parses thin_dump's XML.
    pub fn from_xml(xml: &str) -> Pool {
        let mut pool = Pool::default();
        let mut current: Option<u32> = None;
        for line in xml.lines() {
            let line = line.trim();
            let attrs = attributes(line);
            let get = |k: &str| -> u64 {
                attrs
                    .get(k)
                    .unwrap_or_else(|| panic!("no {k} in {line}"))
                    .parse()
                    .unwrap()
            };
            if line.starts_with("<superblock") {
                pool.time = get("time") as u32;
                pool.transaction = get("transaction");
                pool.data_block_size = get("data_block_size") as u32;
                pool.nr_data_blocks = get("nr_data_blocks");
            } else if line.starts_with("<device") {
                let id = get("dev_id") as u32;
                let details = DeviceDetails {
                    mapped_blocks: get("mapped_blocks"),
                    transaction_id: get("transaction"),
                    creation_time: get("creation_time") as u32,
                    snapshotted_time: get("snap_time") as u32,
                };
                pool.devices.insert(
                    id,
                    Device {
                        details,
                        mappings: BTreeMap::new(),
                    },
                );
                current = Some(id);
            } else if line.starts_with("<single_mapping") {
                let dev = pool.devices.get_mut(&current.unwrap()).unwrap();
                dev.mappings
                    .insert(get("origin_block"), (get("data_block"), get("time") as u32));
            } else if line.starts_with("<range_mapping") {
                let dev = pool.devices.get_mut(&current.unwrap()).unwrap();
                let (v, b, n, t) = (
                    get("origin_begin"),
                    get("data_begin"),
                    get("length"),
                    get("time") as u32,
                );
                for i in 0..n {
                    dev.mappings.insert(v + i, (b + i, t));
                }
            }
        }
        pool
    }

    /// Everything tessera reads from `pool`.
    pub fn read(pool: &PoolMetadata) -> Pool {
        let info = pool.info();
        let mut out = Pool {
            time: info.time,
            transaction: info.transaction_id,
            data_block_size: info.data_block_sectors,
            nr_data_blocks: info.nr_data_blocks,
            devices: BTreeMap::new(),
        };
        for (id, details) in pool.devices().unwrap() {
            let mappings = pool
                .mappings(id, 0, u64::MAX)
                .unwrap()
                .into_iter()
                .map(|(v, m)| (v, (m.data_block, m.time)))
                .collect();
            out.devices.insert(id, Device { details, mappings });
        }
        out
    }
}

fn attributes(line: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = line;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].rsplit(' ').next().unwrap().to_string();
        let after = &rest[eq + 2..];
        let end = after.find('"').unwrap();
        out.insert(key, after[..end].to_string());
        rest = &after[end + 1..];
    }
    out
}

pub fn tool(name: &str) -> Command {
    let path = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("{name} is not installed (apt-get install thin-provisioning-tools)")
        });
    Command::new(path)
}

/// Writes `xml` into a new metadata image of `bytes` with thin_restore.
pub fn restore(dir: &Path, name: &str, xml: &str, bytes: u64) -> std::path::PathBuf {
    let xml_path = dir.join(format!("{name}.xml"));
    std::fs::write(&xml_path, xml).unwrap();
    let img = dir.join(format!("{name}.img"));
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(bytes).unwrap();
    let out = tool("thin_restore")
        .arg("-i")
        .arg(&xml_path)
        .arg("-o")
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "thin_restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    img
}

/// Runs thin_check; panics with its output unless it passes cleanly.
pub fn thin_check_passes(img: &Path) {
    let out = tool("thin_check").arg(img).output().unwrap();
    assert!(
        out.status.success(),
        "thin_check failed on {}:\n{}{}",
        img.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn thin_dump(img: &Path, args: &[&str]) -> Pool {
    let out = tool("thin_dump").args(args).arg(img).output().unwrap();
    assert!(
        out.status.success(),
        "thin_dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Pool::from_xml(&String::from_utf8(out.stdout).unwrap())
}

pub fn open_file(img: &Path) -> SharedDevice {
    Arc::new(FileDevice::open(img, OpenOptions::default()).unwrap())
}

/// A small deterministic generator.
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
}
