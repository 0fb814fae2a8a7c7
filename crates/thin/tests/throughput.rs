//! Rough throughput of the thin data path on image files (run with `--ignored
//! --nocapture`, in release): first writes that provision, overwrites and reads of mapped
//! blocks, 4 KiB at random from 4 threads, beside the same I/O on the data file directly.

mod common;

use std::time::Instant;

use common::*;
use tessera_block::{BlockDevice, FileDevice, OpenOptions};

const BLOCKS: u64 = 2048; // 128 MiB
const THREADS: u64 = 4;
const IOS: u64 = 20_000;

fn run(what: &str, dev: &dyn BlockDevice, write: bool) {
    let buf = vec![0x5au8; 4096];
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let buf = &buf;
            s.spawn(move || {
                let mut rng = Rng(t + 1);
                let mut page = vec![0u8; 4096];
                for _ in 0..IOS {
                    let at = rng.below(BLOCKS * BLOCK / 4096) * 4096;
                    if write {
                        dev.write_at(buf, at).unwrap();
                    } else {
                        dev.read_at(&mut page, at).unwrap();
                    }
                }
            });
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let n = (THREADS * IOS) as f64;
    println!(
        "{what:<32} {:>9.0} IOPS {:>7.1} MiB/s",
        n / secs,
        n * 4096.0 / secs / 1048576.0
    );
}

#[test]
#[ignore]
fn throughput() {
    let s = Stack::new();
    let meta = s.file("meta.img", 16 << 20);
    let data = s.file("data.img", BLOCKS * BLOCK);
    let _pool = s.activate("perf-pool", &pool_table(&meta, &data, BLOCKS, &[]));
    s.message("perf-pool", "create_thin 0").unwrap();
    let thin = s.activate(
        "perf-thin",
        &thin_table("perf-pool", 0, BLOCKS * BLOCK_SECTORS),
    );
    run("thin: first writes (provision)", &*thin, true);
    run("thin: overwrites", &*thin, true);
    run("thin: reads", &*thin, false);
    let raw = FileDevice::open(&data, OpenOptions::default()).unwrap();
    run("data file: writes", &raw, true);
    run("data file: reads", &raw, false);
}
