//! Builds dm-thin pool metadata with tessera's writer, for benchmarks: DEVICES thin devices
//! of MAPPINGS mappings each (data blocks scattered as in a pool written out of order),
//! then a snapshot of device 0 with 1% of its blocks rewritten, committed every 100000
//! changes as a pool would.
//!
//! Usage: thin_build METADATA_IMAGE DEVICES MAPPINGS

use std::sync::Arc;
use std::time::Instant;

use tessera_block::{FileDevice, OpenOptions};
use tessera_formats::thin::PoolMetadata;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: thin_build METADATA_IMAGE DEVICES MAPPINGS");
        std::process::exit(2);
    }
    let (path, devices, mappings): (&str, u32, u64) =
        (&args[1], args[2].parse()?, args[3].parse()?);
    let start = Instant::now();
    let nr_data = u64::from(devices + 1) * mappings + 1000;
    let device = Arc::new(FileDevice::open(path, OpenOptions::default())?);
    let mut pool = PoolMetadata::format(device, 128, nr_data)?;
    let mut changes = 0u64;
    let mut commit_now = |pool: &mut PoolMetadata| -> Result<(), Box<dyn std::error::Error>> {
        changes += 1;
        if changes % 100_000 == 0 {
            pool.commit()?;
        }
        Ok(())
    };
    for dev in 0..devices {
        pool.create_thin(dev)?;
        // A stride coprime to the count visits every virtual block once, out of order.
        let stride = 7919;
        for i in 0..mappings {
            let vblock = (i * stride) % mappings;
            let b = pool.alloc_data_block()?;
            pool.insert(dev, vblock, b)?;
            commit_now(&mut pool)?;
        }
    }
    pool.create_snap(devices, 0)?;
    for i in 0..mappings / 100 {
        let b = pool.alloc_data_block()?;
        pool.insert(devices, i * 100, b)?;
        commit_now(&mut pool)?;
    }
    pool.commit()?;
    let info = pool.info();
    eprintln!(
        "{path}: {} devices + 1 snapshot, {} mappings each, {} data blocks used, {} metadata blocks used, built in {:.2} s",
        devices,
        mappings,
        info.nr_data_blocks - info.free_data_blocks,
        info.nr_metadata_blocks - info.free_metadata_blocks,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
