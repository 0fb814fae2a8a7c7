//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use tessera_block::{BlockDevice, BlockError, MemoryDevice, SharedDevice};
use tessera_mapper::{MappedDevice, Table, TargetRegistry};

/// Named memory devices that a table can refer to.
#[derive(Default)]
pub struct Devices(pub HashMap<String, Arc<MemoryDevice>>);

impl Devices {
    pub fn with(names: &[(&str, u64)]) -> Self {
        let mut d = Devices::default();
        for &(name, sectors) in names {
            d.add(name, sectors);
        }
        d
    }

    pub fn add(&mut self, name: &str, sectors: u64) -> Arc<MemoryDevice> {
        let dev = Arc::new(MemoryDevice::new(name, sectors * 512));
        self.0.insert(name.to_string(), dev.clone());
        dev
    }

    pub fn get(&self, name: &str) -> &Arc<MemoryDevice> {
        &self.0[name]
    }

    pub fn resolve(&self, name: &str) -> tessera_block::Result<SharedDevice> {
        match self.0.get(name) {
            Some(d) => Ok(d.clone() as SharedDevice),
            None => Err(BlockError::Open {
                device: name.to_string(),
                source: io::Error::from(io::ErrorKind::NotFound),
            }),
        }
    }

    /// A live device named `name` with `table` loaded and resumed.
    pub fn activate(&self, name: &str, table: &str) -> MappedDevice {
        let dev = MappedDevice::new(name, Arc::new(TargetRegistry::new()));
        dev.load(&Table::parse(table).unwrap(), &|n| self.resolve(n))
            .unwrap();
        dev.resume().unwrap();
        dev
    }
}

pub fn read(dev: &dyn BlockDevice, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    dev.read_at(&mut buf, offset).unwrap();
    buf
}

/// `len` bytes of a pattern that differs per `seed` and per position.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed.wrapping_mul(131)) % 251) as u8 + 1)
        .collect()
}
