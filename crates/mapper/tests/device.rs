//! The mapped device: loading, table states, messages, external targets, and byte-level I/O
//! against a reference model.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::{pattern, read, Devices};
use proptest::prelude::*;
use tessera_block::{BlockDevice, BlockError, MemoryDevice, Result as BlockResult};
use tessera_mapper::{
    MappedDevice, MapperError, RegistryError, StatusType, Table, Target, TargetArgs, TargetError,
    TargetRegistry,
};

fn device(name: &str) -> MappedDevice {
    MappedDevice::new(name, Arc::new(TargetRegistry::new()))
}

#[test]
fn a_new_device_has_no_table() {
    let dev = device("empty");
    assert_eq!(dev.size_bytes(), 0);
    assert!(dev.table().is_none());
    assert!(dev.inactive_table().is_none());
    assert_eq!(dev.status(), "");
    let mut buf = [0u8; 512];
    assert!(matches!(
        dev.read_at(&mut buf, 0),
        Err(BlockError::OutOfRange { size: 0, .. })
    ));
    dev.read_at(&mut [], 0).unwrap();
    dev.flush().unwrap();
    assert!(matches!(
        dev.message(0, &["hello"]),
        Err(MapperError::NoTable { .. })
    ));
    // Resuming with nothing loaded is harmless.
    dev.resume().unwrap();
    dev.suspend();
    assert!(dev.is_suspended());
    dev.resume().unwrap();
    assert!(!dev.is_suspended());
}

#[test]
fn load_errors_name_the_device_and_row() {
    let devs = Devices::with(&[("a", 100)]);
    let dev = device("vg-lv");
    let load = |t: &str| dev.load(&Table::parse(t).unwrap(), &|n| devs.resolve(n));
    let err = load("0 10 linear a 0\n10 10 mirror a 0").unwrap_err();
    assert!(matches!(err, MapperError::UnknownTarget { row: 2, .. }));
    let msg = err.to_string();
    assert!(
        msg.starts_with("vg-lv: table row 2: unknown target type \"mirror\""),
        "{msg}"
    );
    assert!(
        msg.contains("delay, error, flakey, linear, striped, zero"),
        "{msg}"
    );
    assert!(matches!(
        load(""),
        Err(MapperError::EmptyTable { ref device }) if device == "vg-lv"
    ));
    assert!(matches!(
        load("0 10 zero\n10 5 linear b 0"),
        Err(MapperError::Target {
            row: 2,
            start: 10,
            ..
        })
    ));
    assert!(
        dev.inactive_table().is_none(),
        "a failed load loads nothing"
    );
}

#[test]
fn load_resume_clear_and_swap() {
    let devs = Devices::with(&[("a", 100), ("b", 100)]);
    let dev = device("vg-lv");
    let resolve = |n: &str| devs.resolve(n);
    dev.load(&"0 100 linear a 0".parse().unwrap(), &resolve)
        .unwrap();
    assert_eq!(
        dev.size_sectors(),
        0,
        "loading does not change the live table"
    );
    assert_eq!(
        dev.inactive_table().unwrap().to_string(),
        "0 100 linear a 0\n"
    );
    dev.clear();
    assert!(dev.inactive_table().is_none());
    dev.resume().unwrap();
    assert_eq!(dev.size_sectors(), 0);

    dev.load(&"0 100 linear a 0".parse().unwrap(), &resolve)
        .unwrap();
    dev.resume().unwrap(); // implicit suspend, swap, resume
    assert_eq!(dev.table().unwrap().to_string(), "0 100 linear a 0\n");
    dev.write_at(&[1; 512], 0).unwrap();

    dev.load(&"0 50 linear b 50".parse().unwrap(), &resolve)
        .unwrap();
    dev.write_at(&[2; 512], 512).unwrap(); // still on a
    dev.suspend();
    dev.resume().unwrap();
    assert_eq!(dev.size_sectors(), 50);
    dev.write_at(&[3; 512], 0).unwrap();
    assert_eq!(
        &devs.get("a").contents()[..1024],
        &[[1; 512], [2; 512]].concat()[..]
    );
    assert_eq!(&devs.get("b").contents()[50 * 512..51 * 512], &[3; 512]);
    assert!(dev.inactive_table().is_none());
}

#[test]
fn out_of_range_requests_fail() {
    let devs = Devices::default();
    let dev = devs.activate("z", "0 8 zero");
    let mut buf = [0u8; 16];
    assert!(matches!(
        dev.read_at(&mut buf, 4090),
        Err(BlockError::OutOfRange {
            offset: 4090,
            len: 16,
            size: 4096,
            ..
        })
    ));
    assert!(dev.write_at(&buf, u64::MAX).is_err());
    assert!(dev.discard(4096, 1).is_err());
    assert!(dev.write_zeroes(u64::MAX - 1, 5).is_err());
    dev.read_at(&mut buf, 4080).unwrap();
    dev.write_at(&[], 4096).unwrap();
}

#[test]
fn block_sizes_follow_the_devices_under_the_table() {
    let mut devs = Devices::with(&[("a", 64)]);
    devs.0.insert(
        "big".into(),
        Arc::new(MemoryDevice::new("big", 64 * 512).with_block_sizes(4096, 8192)),
    );
    let dev = devs.activate("m", "0 8 linear a 0\n8 8 linear big 0");
    assert_eq!(dev.logical_block_size(), 4096);
    assert_eq!(dev.physical_block_size(), 8192);
    let plain = devs.activate("p", "0 8 linear a 0");
    assert_eq!(plain.logical_block_size(), 512);
}

/// A target from outside the mapper: counts writes, takes messages, and can refuse resume.
struct Counter {
    writes: AtomicU64,
    refuse_resume: Arc<AtomicBool>,
}

impl Target for Counter {
    fn read(&self, _sector: u64, buf: &mut [u8]) -> BlockResult<()> {
        buf.fill(0xC0);
        Ok(())
    }
    fn write(&self, _sector: u64, _buf: &[u8]) -> BlockResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn flush(&self) -> BlockResult<()> {
        Ok(())
    }
    fn discard(&self, _sector: u64, _len_sectors: u64) -> BlockResult<()> {
        Ok(())
    }
    fn write_zeroes(&self, _sector: u64, _len_sectors: u64) -> BlockResult<()> {
        Ok(())
    }
    fn status(&self, kind: StatusType) -> String {
        match kind {
            StatusType::Info => format!("{}", self.writes.load(Ordering::Relaxed)),
            StatusType::Table => String::new(),
        }
    }
    fn message(&self, args: &[&str]) -> Result<String, TargetError> {
        match args {
            ["reset"] => Ok(self.writes.swap(0, Ordering::Relaxed).to_string()),
            _ => Err(TargetError::Message(format!("unknown message {args:?}"))),
        }
    }
    fn preresume(&self) -> Result<(), TargetError> {
        match self.refuse_resume.load(Ordering::Relaxed) {
            true => Err(TargetError::Invalid("not ready".into())),
            false => Ok(()),
        }
    }
}

fn registry_with_counter(refuse: Arc<AtomicBool>) -> TargetRegistry {
    let mut reg = TargetRegistry::new();
    reg.register("counter", move |args: &TargetArgs<'_>| {
        args.reader().finish()?;
        Ok(Box::new(Counter {
            writes: AtomicU64::new(0),
            refuse_resume: refuse.clone(),
        }) as Box<dyn Target>)
    })
    .unwrap();
    reg
}

#[test]
fn other_crates_register_targets_and_take_messages() {
    let refuse = Arc::new(AtomicBool::new(false));
    let mut reg = registry_with_counter(refuse.clone());
    assert_eq!(
        reg.register("linear", |_: &TargetArgs<'_>| Err(TargetError::NoMessages)),
        Err(RegistryError::Duplicate("linear".into()))
    );
    assert!(matches!(
        reg.register("two words", |_: &TargetArgs<'_>| Err(
            TargetError::NoMessages
        )),
        Err(RegistryError::BadName(_))
    ));
    assert!(reg.names().any(|n| n == "counter"));

    let devs = Devices::default();
    let dev = MappedDevice::new("c", Arc::new(reg));
    dev.load(&"0 8 zero\n8 8 counter".parse().unwrap(), &|n| {
        devs.resolve(n)
    })
    .unwrap();
    dev.resume().unwrap();
    dev.write_at(&[1; 3072], 3 * 512).unwrap(); // 5 sectors on zero, 1 on counter
    assert_eq!(read(&dev, 8 * 512, 4), vec![0xC0; 4]);
    assert_eq!(dev.status(), "0 8 zero\n8 8 counter 1\n");
    assert_eq!(dev.table().unwrap().to_string(), "0 8 zero\n8 8 counter\n");

    assert_eq!(dev.message(12, &["reset"]).unwrap(), "1");
    let err = dev.message(12, &["bogus"]).unwrap_err();
    assert!(matches!(err, MapperError::Target { row: 2, .. }));
    assert!(err
        .to_string()
        .starts_with("c: table row 2 (counter at sector 8): message refused"));
    assert!(matches!(
        dev.message(0, &["reset"]),
        Err(MapperError::Target { row: 1, ref source, .. }) if matches!(**source, TargetError::NoMessages)
    ));
    assert!(matches!(
        dev.message(16, &["reset"]),
        Err(MapperError::SectorOutside {
            sector: 16,
            size_sectors: 16,
            ..
        })
    ));

    // A refused resume leaves the device suspended with both tables in place.
    refuse.store(true, Ordering::Relaxed);
    dev.load(&"0 4 counter".parse().unwrap(), &|n| devs.resolve(n))
        .unwrap();
    assert!(matches!(
        dev.resume(),
        Err(MapperError::Target { row: 1, .. })
    ));
    assert!(dev.is_suspended());
    assert_eq!(dev.size_sectors(), 16);
    assert!(dev.inactive_table().is_some());
    refuse.store(false, Ordering::Relaxed);
    dev.resume().unwrap();
    assert_eq!(dev.size_sectors(), 4);
    assert!(!dev.is_suspended());
}

/// A few linear rows over one device, scrambled: row i of `ROW` sectors sits at `PLACES[i]`.
const ROW: u64 = 5;
const PLACES: [u64; 4] = [12, 0, 25, 6];

fn scrambled() -> (Devices, MappedDevice) {
    let devs = Devices::with(&[("a", 32)]);
    let table: String = PLACES
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{} {ROW} linear a {p}\n", i as u64 * ROW))
        .collect();
    let dev = devs.activate("m", &table);
    (devs, dev)
}

/// Where byte `b` of the mapped device lives on `a`.
fn place(b: u64) -> usize {
    let (row, within) = ((b / 512) / ROW, b % (ROW * 512));
    (PLACES[row as usize] * 512 + within) as usize
}

#[derive(Debug, Clone)]
enum Op {
    Write(u64, usize, u64),
    Zeroes(u64, u64),
    Discard(u64, u64),
    Read(u64, usize),
}

fn op() -> impl Strategy<Value = Op> {
    let size = PLACES.len() as u64 * ROW * 512;
    (0..size, 0..size, any::<u64>(), 0..4).prop_map(move |(a, b, seed, kind)| {
        let (lo, hi) = (a.min(b), a.max(b));
        match kind {
            0 => Op::Write(lo, (hi - lo) as usize, seed),
            1 => Op::Zeroes(lo, hi - lo),
            2 => Op::Discard(lo, hi - lo),
            _ => Op::Read(lo, (hi - lo) as usize),
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Unaligned requests across rows behave as on a plain byte array.
    #[test]
    fn byte_requests_match_a_model(ops in prop::collection::vec(op(), 1..20)) {
        let (devs, dev) = scrambled();
        let mut model = vec![0u8; dev.size_bytes() as usize];
        for op in ops {
            match op {
                Op::Write(at, len, seed) => {
                    let data = pattern(seed, len);
                    dev.write_at(&data, at).unwrap();
                    model[at as usize..at as usize + len].copy_from_slice(&data);
                }
                Op::Zeroes(at, len) => {
                    dev.write_zeroes(at, len).unwrap();
                    model[at as usize..(at + len) as usize].fill(0);
                }
                Op::Discard(at, len) => {
                    dev.discard(at, len).unwrap();
                    // Only whole sectors are discarded; memory devices read them as zeroes.
                    let lo = at.div_ceil(512) * 512;
                    let hi = (at + len) / 512 * 512;
                    if lo < hi {
                        model[lo as usize..hi as usize].fill(0);
                    }
                }
                Op::Read(at, len) => {
                    prop_assert_eq!(read(&dev, at, len), &model[at as usize..at as usize + len]);
                }
            }
        }
        let disk = devs.get("a").contents();
        for (b, &want) in model.iter().enumerate() {
            prop_assert_eq!(disk[place(b as u64)], want, "byte {}", b);
        }
    }
}

#[test]
fn partial_sector_writes_from_many_threads_keep_each_others_bytes() {
    let devs = Devices::with(&[("a", 8)]);
    let dev = Arc::new(devs.activate("m", "0 8 linear a 0"));
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let dev = dev.clone();
            std::thread::spawn(move || {
                for round in 0..200u64 {
                    // Thread t owns bytes t*64..t*64+64 of sector (round % 8).
                    let at = (round % 8) * 512 + u64::from(t) * 64;
                    dev.write_at(&[t + 1; 64], at).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let disk = devs.get("a").contents();
    for (i, &b) in disk.iter().enumerate() {
        assert_eq!(b, ((i % 512) / 64) as u8 + 1, "byte {i}");
    }
}
