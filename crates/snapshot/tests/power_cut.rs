//! Crash safety of copy-out and merge, tested by cutting the power at every write.
//!
//! The origin and the COW device sit behind fault-injecting devices in one power domain. A
//! sequence of writes (or a whole merge) is replayed with a cut after 0, 1, 2, ... writes,
//! with clean cuts (unflushed writes lost) and torn ones (each sector of an unflushed write
//! lands or not). After every cut the store must open, and through freshly loaded targets
//! over what survived, every sector of the origin and of the snapshot holds its data from
//! before the sequence or from after it; sectors the snapshot itself never wrote hold
//! exactly the origin's data from when the snapshot was taken.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tessera_block::{
    BlockDevice, BlockError, FaultDevice, MemoryDevice, PowerDomain, SharedDevice,
};
use tessera_formats::snapshot::Store;
use tessera_mapper::MappedDevice;

const ORIGIN_BYTES: u64 = 256 << 10;
const COW_BYTES: u64 = 384 << 10;
/// Where the sequence's writes go: apart enough that no two of them overlap.
const U: u64 = 8192;

fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// Devices by name for a resolver.
struct Devs(HashMap<String, SharedDevice>);

impl Devs {
    fn resolve(&self, name: &str) -> tessera_block::Result<SharedDevice> {
        self.0.get(name).cloned().ok_or_else(|| BlockError::Open {
            device: name.to_string(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
    }
}

fn mem_with(name: &str, data: &[u8]) -> Arc<MemoryDevice> {
    Arc::new(MemoryDevice::with_contents(name, data))
}

fn try_activate(name: &str, table: &str, devs: &Devs) -> MappedDevice {
    activate(name, table, &|n| devs.resolve(n))
}

/// Every sector of `got` is that of `old` or of `new`; where `old == new` it must be that.
fn old_or_new(what: &str, got: &[u8], old: &[u8], new: &[u8], cut: &str) {
    for (i, ((g, o), n)) in got
        .chunks(512)
        .zip(old.chunks(512))
        .zip(new.chunks(512))
        .enumerate()
    {
        assert!(
            g == o || g == n,
            "{cut}: {what} sector {i} is neither old nor new"
        );
    }
}

struct Base {
    origin: Vec<u8>,
    cow: Vec<u8>,
}

/// An origin with data and a snapshot of `chunk` sectors holding `pre` exceptions.
fn base(chunk: u32, pre: u64) -> Base {
    let (on, cn) = (unique("pc-orig"), unique("pc-cow"));
    let origin = mem_with(&on, &Rng(5).bytes(ORIGIN_BYTES as usize));
    let cow = Arc::new(MemoryDevice::new(&cn, COW_BYTES));
    let devs = Devs(HashMap::from([
        (on.clone(), origin.clone() as SharedDevice),
        (cn.clone(), cow.clone() as SharedDevice),
    ]));
    let sectors = ORIGIN_BYTES / SECTOR;
    let o = try_activate("o", &origin_table(&on, sectors), &devs);
    let s = try_activate("s", &snapshot_table(&on, &cn, sectors, chunk), &devs);
    let cb = u64::from(chunk) * SECTOR;
    for i in 0..pre {
        // Chunks from the top of the origin down, alternating origin and snapshot writes.
        let at = ORIGIN_BYTES - (i + 1) * cb;
        let d = vec![i as u8 ^ 0x5A; 512];
        if i % 2 == 0 {
            o.write_at(&d, at).unwrap();
        } else {
            s.write_at(&d, at).unwrap();
        }
    }
    o.flush().unwrap();
    s.flush().unwrap();
    drop((o, s));
    Base {
        origin: origin.contents(),
        cow: cow.contents(),
    }
}

/// The writes of the copy-out sequence, for chunks of `cb` bytes.
fn copy_out_sequence(
    o: &dyn BlockDevice,
    s: &dyn BlockDevice,
    cb: u64,
) -> tessera_block::Result<()> {
    o.write_at(&[0xA1; 4096], 5 * U)?; // copy-out on an origin write
    s.write_at(&[0xB2; 1024], 7 * U + 512)?; // a partial snapshot write
    o.write_at(&[0xC3; 6144], 8 * U + 1024)?; // an origin write over two or more chunks
    s.write_at(&vec![0xD4; cb as usize], 12 * U)?; // a whole-chunk snapshot write
    o.write_at(&[0xE5; 512], 7 * U)?; // a chunk the snapshot already holds
    s.write_at(&[0xF6; 512], 20 * U)?;
    o.flush()?;
    s.flush()
}

fn images(
    on: &str,
    cn: &str,
    origin: &SharedDevice,
    cow: &SharedDevice,
    chunk: u32,
) -> (Vec<u8>, Vec<u8>) {
    let devs = Devs(HashMap::from([
        (on.to_string(), origin.clone()),
        (cn.to_string(), cow.clone()),
    ]));
    let sectors = ORIGIN_BYTES / SECTOR;
    let o = try_activate("o", &origin_table(on, sectors), &devs);
    let s = try_activate("s", &snapshot_table(on, cn, sectors, chunk), &devs);
    assert!(!s.status().contains("Invalid"), "{}", s.status());
    (read_all(&o), read_all(&s))
}

fn copy_out_cuts(chunk: u32, pre: u64) -> Vec<u64> {
    let b = base(chunk, pre);
    let cb = u64::from(chunk) * SECTOR;
    let (on, cn) = (unique("pc-orig"), unique("pc-cow"));
    let sectors = ORIGIN_BYTES / SECTOR;
    let run = |domain: &Arc<PowerDomain>| {
        let origin = mem_with(&on, &b.origin);
        let cow = mem_with(&cn, &b.cow);
        let devs = Devs(HashMap::from([
            (
                on.clone(),
                Arc::new(FaultDevice::new(origin.clone(), domain.clone())) as SharedDevice,
            ),
            (
                cn.clone(),
                Arc::new(FaultDevice::new(cow.clone(), domain.clone())) as SharedDevice,
            ),
        ]));
        let o = try_activate("o", &origin_table(&on, sectors), &devs);
        let s = try_activate("s", &snapshot_table(&on, &cn, sectors, chunk), &devs);
        let r = copy_out_sequence(&o, &s, cb);
        drop((o, s));
        (r, origin as SharedDevice, cow as SharedDevice)
    };
    let (old_o, old_s) = images(
        &on,
        &cn,
        &(mem_with(&on, &b.origin) as SharedDevice),
        &(mem_with(&cn, &b.cow) as SharedDevice),
        chunk,
    );
    let domain = PowerDomain::new();
    let (r, origin, cow) = run(&domain);
    r.unwrap();
    let total = domain.writes_seen();
    let (new_o, new_s) = images(&on, &cn, &origin, &cow, chunk);
    // Origin writes never change the snapshot: it is its old bytes plus its own writes.
    let mut model = old_s.clone();
    for (at, len, byte) in [
        (7 * U + 512, 1024, 0xB2),
        (12 * U, cb, 0xD4),
        (20 * U, 512, 0xF6),
    ] {
        model[at as usize..(at + len) as usize].fill(byte);
    }
    assert!(new_s == model, "the snapshot after the sequence");
    let mut tried = Vec::new();
    for n in 0..=total {
        for torn in [None, Some(n * 7 + 1)] {
            let domain = PowerDomain::new();
            domain.cut_after(n);
            if let Some(seed) = torn {
                domain.set_torn(seed);
            }
            let (r, origin, cow) = run(&domain);
            let cut = format!("chunk {chunk}, cut after {n} of {total} writes, torn {torn:?}");
            assert!(
                n == total || r.is_err(),
                "{cut}: the sequence did not notice"
            );
            Store::open(cow.clone())
                .unwrap_or_else(|e| panic!("{cut}: {e}"))
                .unwrap_or_else(|| panic!("{cut}: no store"));
            let (got_o, got_s) = images(&on, &cn, &origin, &cow, chunk);
            old_or_new("origin", &got_o, &old_o, &new_o, &cut);
            old_or_new("snapshot", &got_s, &old_s, &new_s, &cut);
        }
        tried.push(n);
    }
    tried
}

#[test]
fn copy_out_survives_a_power_cut_at_every_write() {
    let tried = copy_out_cuts(8, 6);
    eprintln!(
        "4 KiB chunks: cut after each of {:?} writes, clean and torn",
        tried
    );
    // 512-byte chunks with 30 of an area's 32 entries used: the sequence fills the area
    // (the next one is zeroed first) and goes on in the next.
    let tried = copy_out_cuts(1, 30);
    eprintln!(
        "512 B chunks: cut after each of {:?} writes, clean and torn",
        tried
    );
}

fn wait_stopped(dev: &MappedDevice) -> String {
    let t = Instant::now();
    loop {
        let p = dev.message(0, &["progress"]).unwrap();
        if p.ends_with("done") || p.contains("failed") {
            return p;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "{p}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn merge_survives_a_power_cut_at_every_write() {
    let chunk = 8;
    let b = base(chunk, 0);
    let cb = u64::from(chunk) * SECTOR;
    let sectors = ORIGIN_BYTES / SECTOR;
    // A snapshot with runs and single chunks, and origin writes after it.
    let (on, cn) = (unique("pm-orig"), unique("pm-cow"));
    let origin0 = mem_with(&on, &b.origin);
    let cow0 = mem_with(&cn, &b.cow);
    {
        let devs = Devs(HashMap::from([
            (on.clone(), origin0.clone() as SharedDevice),
            (cn.clone(), cow0.clone() as SharedDevice),
        ]));
        let o = try_activate("o", &origin_table(&on, sectors), &devs);
        let s = try_activate("s", &snapshot_table(&on, &cn, sectors, chunk), &devs);
        s.write_at(&[0x11; 4 * 4096], 2 * cb).unwrap();
        o.write_at(&[0x22; 4096], 9 * cb).unwrap();
        s.write_at(&[0x33; 512], 20 * cb).unwrap();
        s.write_at(&[0x44; 3 * 4096], 25 * cb).unwrap();
        o.write_at(&[0x55; 4096], 0).unwrap();
        o.flush().unwrap();
        s.flush().unwrap();
    }
    let (_, want) = images(
        &on,
        &cn,
        &(origin0.clone() as SharedDevice),
        &(cow0.clone() as SharedDevice),
        chunk,
    );
    let merge_table = format!("0 {sectors} snapshot-merge {on} {cn} P {chunk}\n");
    let run = |domain: &Arc<PowerDomain>| {
        let origin = mem_with(&on, &origin0.contents());
        let cow = mem_with(&cn, &cow0.contents());
        let devs = Devs(HashMap::from([
            (
                on.clone(),
                Arc::new(FaultDevice::new(origin.clone(), domain.clone())) as SharedDevice,
            ),
            (
                cn.clone(),
                Arc::new(FaultDevice::new(cow.clone(), domain.clone())) as SharedDevice,
            ),
        ]));
        let m = try_activate("m", &merge_table, &devs);
        let p = wait_stopped(&m);
        drop(m);
        (p, origin as SharedDevice, cow as SharedDevice)
    };
    let domain = PowerDomain::new();
    let (p, _, _) = run(&domain);
    assert!(p.ends_with("0 done"), "{p}");
    let total = domain.writes_seen();
    let mut tried = Vec::new();
    for n in 0..=total {
        for torn in [None, Some(n * 13 + 3)] {
            let domain = PowerDomain::new();
            domain.cut_after(n);
            if let Some(seed) = torn {
                domain.set_torn(seed);
            }
            let (p, origin, cow) = run(&domain);
            let cut = format!("merge, cut after {n} of {total} writes, torn {torn:?} ({p})");
            let store = Store::open(cow.clone())
                .unwrap_or_else(|e| panic!("{cut}: {e}"))
                .unwrap_or_else(|| panic!("{cut}: no store"));
            drop(store);
            // The snapshot as it survived reads the snapshot's bytes, and so does the origin
            // through the merge, which then finishes.
            let (_, snap) = images(&on, &cn, &origin, &cow, chunk);
            assert!(snap == want, "{cut}: the snapshot");
            let devs = Devs(HashMap::from([
                (on.clone(), origin.clone()),
                (cn.clone(), cow.clone()),
            ]));
            let m = try_activate("m", &merge_table, &devs);
            assert!(read_all(&m) == want, "{cut}: the merging origin");
            let p = wait_stopped(&m);
            assert!(p.ends_with("0 done"), "{cut}: resumed merge: {p}");
            drop(m);
            assert!(read_all(&*origin) == want, "{cut}: the merged origin");
        }
        tried.push(n);
    }
    eprintln!("merge: cut after each of {tried:?} writes, clean and torn");
}
