//! Concurrent writers to one stripe of a raid5 and a raid6 set: each thread owns a few
//! sectors of the same stripes and rewrites them many times; afterwards every thread's last
//! data is there and the parity agrees with the data (each member in turn taken away, the
//! rest rebuild the same bytes).

use std::sync::Arc;

use tessera_block::{BlockDevice, FileDevice, OpenOptions, SharedDevice};
use tessera_mapper::{MappedDevice, Table, TargetRegistry};

const MEMBER_BYTES: u64 = 4 << 20;

fn members(dir: &std::path::Path, n: usize) -> Vec<(String, SharedDevice)> {
    (0..n)
        .map(|i| {
            let path = dir.join(format!("m{i}.img"));
            std::fs::File::create(&path)
                .unwrap()
                .set_len(MEMBER_BYTES)
                .unwrap();
            let dev = FileDevice::open(&path, OpenOptions::default()).unwrap();
            (
                path.to_string_lossy().into_owned(),
                Arc::new(dev) as SharedDevice,
            )
        })
        .collect()
}

fn activate(
    raid_type: &str,
    devs: &[(String, SharedDevice)],
    missing: Option<usize>,
) -> MappedDevice {
    let mut registry = TargetRegistry::new();
    tessera_raid::register(&mut registry);
    let n = devs.len();
    let data = n - if raid_type.starts_with("raid6") { 2 } else { 1 };
    let len = (MEMBER_BYTES / 512) * data as u64;
    let names: Vec<String> = devs
        .iter()
        .enumerate()
        .map(|(i, (p, _))| {
            if Some(i) == missing {
                "- -".into()
            } else {
                format!("- {p}")
            }
        })
        .collect();
    let table = Table::parse(&format!(
        "0 {len} raid {raid_type} 1 16 {n} {}",
        names.join(" ")
    ))
    .unwrap();
    let dev = MappedDevice::new("r", Arc::new(registry));
    let resolve = |p: &str| {
        devs.iter()
            .find(|(q, _)| q == p)
            .map(|(_, d)| d.clone())
            .ok_or_else(|| tessera_block::BlockError::Open {
                device: p.into(),
                source: std::io::Error::other("unknown"),
            })
    };
    dev.load(&table, &resolve).unwrap();
    dev.resume().unwrap();
    dev
}

fn hammer(raid_type: &str, n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let devs = members(dir.path(), n);
    let array = Arc::new(activate(raid_type, &devs, None));
    // 8 KiB chunks (16 sectors). Thread t owns 4 sectors in data chunk t % data of stripe 0,
    // at rows 4 * (t / data): threads in other chunks share its rows, and so its parity.
    // Each write stays inside one chunk, so no write rewrites a whole row of parity that
    // would hide an earlier lost update.
    let data = n - if raid_type.starts_with("raid6") { 2 } else { 1 };
    let threads = (data * 4).min(12);
    let slice = 4 * 512;
    let at = move |t: usize| (t % data) * 8192 + (t / data) * slice;
    let start = Arc::new(std::sync::Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let array = array.clone();
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let mut last = vec![0u8; slice];
                for round in 0..3000u32 {
                    let fill = (t as u8).wrapping_mul(31) ^ round as u8;
                    if round % 2 == 0 {
                        last.fill(fill);
                        array.write_at(&last, at(t) as u64).unwrap();
                    } else {
                        let s = (round as usize % 4) * 512;
                        last[s..s + 512].fill(fill);
                        array
                            .write_at(&last[s..s + 512], (at(t) + s) as u64)
                            .unwrap();
                    }
                }
                last
            })
        })
        .collect();
    let expected: Vec<Vec<u8>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let stripe_bytes = data * 8192;
    let mut whole = vec![0u8; stripe_bytes];
    for (t, e) in expected.iter().enumerate() {
        whole[at(t)..at(t) + slice].copy_from_slice(e);
    }
    let mut back = vec![0u8; stripe_bytes];
    array.read_at(&mut back, 0).unwrap();
    assert!(back == whole, "{raid_type}: a thread's last write is lost");
    drop(array);
    // Parity agrees with the data: without any one member the same bytes come back.
    for m in 0..n {
        let degraded = activate(raid_type, &devs, Some(m));
        let mut got = vec![0u8; stripe_bytes];
        degraded.read_at(&mut got, 0).unwrap();
        assert!(
            got == whole,
            "{raid_type}: parity disagrees (member {m} rebuilt wrong)"
        );
    }
}

#[test]
fn concurrent_writers_to_one_raid5_stripe_keep_data_and_parity_consistent() {
    hammer("raid5_ls", 4);
    hammer("raid4", 3);
}

#[test]
fn concurrent_writers_to_one_raid6_stripe_keep_data_and_parity_consistent() {
    hammer("raid6_zr", 5);
    hammer("raid6_ls", 6);
}
