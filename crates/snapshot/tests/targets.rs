//! The snapshot targets against a reference model: each snapshot is the origin's bytes
//! frozen when it was taken, plus its own writes; the origin is its writes.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use tessera_block::BlockDevice;
use tessera_formats::snapshot::Store;
use tessera_mapper::MappedDevice;

const ORIGIN_BYTES: u64 = 4 << 20;
const THREADS: u64 = 4;

struct Models {
    origin: Vec<u8>,
    snaps: Vec<Vec<u8>>,
}

/// `rounds` random writes from each of THREADS threads, each thread in its own byte range
/// (not chunk aligned, so threads share chunks), to the origin and to `snaps`.
fn random_writes(
    origin: &MappedDevice,
    snaps: &[&MappedDevice],
    models: &Mutex<Models>,
    seed: u64,
    rounds: usize,
) {
    let region = ORIGIN_BYTES / THREADS;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            s.spawn(move || {
                let mut rng = Rng(seed * 100 + t);
                let base = t * region;
                for _ in 0..rounds {
                    let len = (1 + rng.below(24)) * SECTOR;
                    let at = base + rng.below((region - len) / SECTOR) * SECTOR;
                    let data = rng.bytes(len as usize);
                    let target = rng.below(snaps.len() as u64 + 2);
                    let (s0, s1) = (at as usize, (at + len) as usize);
                    if (target as usize) < snaps.len() {
                        snaps[target as usize].write_at(&data, at).unwrap();
                        models.lock().unwrap().snaps[target as usize][s0..s1]
                            .copy_from_slice(&data);
                    } else {
                        origin.write_at(&data, at).unwrap();
                        models.lock().unwrap().origin[s0..s1].copy_from_slice(&data);
                    }
                    if rng.below(8) == 0 {
                        // Reads race the writes of other threads: only check our own bytes.
                        let i = rng.below(snaps.len() as u64) as usize;
                        let got = read(snaps[i], at, len as usize);
                        assert_eq!(got, models.lock().unwrap().snaps[i][s0..s1], "snapshot {i}");
                    }
                }
            });
        }
    });
}

fn check(origin: &dyn BlockDevice, snaps: &[&dyn BlockDevice], models: &Models) {
    assert!(
        read_all(origin) == models.origin,
        "origin differs from the model"
    );
    for (i, s) in snaps.iter().enumerate() {
        assert!(
            read_all(*s) == models.snaps[i],
            "snapshot {i} differs from the model"
        );
    }
}

#[test]
fn two_snapshots_of_different_chunk_sizes_match_the_model_under_threads() {
    let img = Images::new();
    let orig = img.file("orig.img", ORIGIN_BYTES);
    let cow_a = img.file("cow-a.img", 5 << 20);
    let cow_b = img.file("cow-b.img", 5 << 20);
    let sectors = ORIGIN_BYTES / SECTOR;
    let resolve = |n: &str| open_file(n);

    let base = activate("base", &origin_table(&orig, sectors), &resolve);
    let initial = fill(&base, 1);
    let snap_a = activate(
        "snap-a",
        &snapshot_table(&orig, &cow_a, sectors, 8),
        &resolve,
    );
    let models = Mutex::new(Models {
        origin: initial.clone(),
        snaps: vec![initial],
    });
    random_writes(&base, &[&snap_a], &models, 1, 150);
    check(&base, &[&snap_a], &models.lock().unwrap());

    // The second snapshot, of 16 KiB chunks, freezes the origin as it is now.
    let snap_b = activate(
        "snap-b",
        &snapshot_table(&orig, &cow_b, sectors, 32),
        &resolve,
    );
    {
        let mut m = models.lock().unwrap();
        let now = m.origin.clone();
        m.snaps.push(now);
    }
    random_writes(&base, &[&snap_a, &snap_b], &models, 2, 150);
    let m = models.into_inner().unwrap();
    check(&base, &[&snap_a, &snap_b], &m);
    let status_a = snap_a.status();
    assert!(
        status_a.starts_with(&format!("0 {sectors} snapshot ")),
        "{status_a}"
    );
    assert_eq!(
        snap_b.table().unwrap().to_string(),
        format!("0 {sectors} snapshot {orig} {cow_b} P 32\n")
    );
    for d in [&base, &snap_a, &snap_b] {
        d.flush().unwrap();
    }
    drop((base, snap_a, snap_b));

    // Everything is on the images: load again (table chunk sizes wrong on purpose: the
    // ones on disk win).
    let base = activate("base", &origin_table(&orig, sectors), &resolve);
    let snap_a = activate(
        "snap-a",
        &snapshot_table(&orig, &cow_a, sectors, 64),
        &resolve,
    );
    let snap_b = activate(
        "snap-b",
        &snapshot_table(&orig, &cow_b, sectors, 8),
        &resolve,
    );
    assert!(snap_a.table().unwrap().to_string().ends_with(" P 8\n"));
    assert_eq!(snap_a.status(), status_a);
    check(&base, &[&snap_a, &snap_b], &m);
}

#[test]
fn status_counts_sectors_as_dmsetup_prints_them() {
    let img = Images::new();
    let orig = img.file("orig.img", 1 << 20);
    let cow = img.file("cow.img", 1 << 20);
    let resolve = |n: &str| open_file(n);
    let base = activate("base", &origin_table(&orig, 2048), &resolve);
    let snap = activate("snap", &snapshot_table(&orig, &cow, 2048, 8), &resolve);
    assert_eq!(snap.status(), "0 2048 snapshot 16/2048 16\n");
    assert_eq!(base.status(), "0 2048 snapshot-origin\n");
    base.write_at(&[1; 4096], 0).unwrap();
    base.write_at(&[1; 4096], 8192).unwrap();
    base.write_at(&[2; 512], 0).unwrap(); // already copied
    snap.write_at(&[3; 512], 4096).unwrap();
    assert_eq!(snap.status(), "0 2048 snapshot 40/2048 16\n");
}

#[test]
fn transient_snapshot_keeps_exceptions_in_memory() {
    let img = Images::new();
    let orig = img.file("orig.img", 1 << 20);
    let cow = img.file("cow.img", 64 << 10);
    let resolve = |n: &str| open_file(n);
    let base = activate("base", &origin_table(&orig, 2048), &resolve);
    let before = fill(&base, 7);
    let snap = activate(
        "snap",
        &format!("0 2048 snapshot {orig} {cow} N 8\n"),
        &resolve,
    );
    base.write_at(&[9; 8192], 4096).unwrap();
    assert_eq!(read_all(&snap), before);
    assert_eq!(snap.status(), "0 2048 snapshot 16/128 0\n");
    // The data went to COW chunks 0 and 1: no store header was written.
    assert!(!matches!(
        Store::open(open_file(&cow).unwrap()),
        Ok(Some(_))
    ));
}

#[test]
fn full_snapshot_is_invalidated_and_the_origin_keeps_working() {
    let img = Images::new();
    let orig = img.file("orig.img", 1 << 20);
    // Header, one area and 6 data chunks of 4 KiB.
    let cow = img.file("cow.img", 8 * 4096);
    let resolve = |n: &str| open_file(n);
    let base = activate("base", &origin_table(&orig, 2048), &resolve);
    let mut data = fill(&base, 3);
    let snap = activate("snap", &snapshot_table(&orig, &cow, 2048, 8), &resolve);
    for i in 0..10u64 {
        let chunk = vec![i as u8 + 100; 4096];
        base.write_at(&chunk, i * 4096).unwrap();
        data[(i * 4096) as usize..][..4096].copy_from_slice(&chunk);
    }
    assert_eq!(snap.status(), "0 2048 snapshot Invalid\n");
    let mut buf = [0u8; 512];
    assert!(
        snap.read_at(&mut buf, 0).is_err(),
        "I/O to an invalid snapshot fails"
    );
    assert!(snap.write_at(&buf, 0).is_err());
    assert_eq!(read_all(&base), data, "the origin has every write");
    base.write_at(&[1; 512], 0).unwrap();
    let store = Store::open(open_file(&cow).unwrap()).unwrap().unwrap();
    assert!(!store.is_valid(), "valid = 0 on disk");
    drop((snap, base));
    let snap = activate("snap", &snapshot_table(&orig, &cow, 2048, 8), &resolve);
    assert_eq!(snap.status(), "0 2048 snapshot Invalid\n");
}

fn progress(dev: &MappedDevice) -> String {
    dev.message(0, &["progress"]).unwrap()
}

fn wait_merged(dev: &MappedDevice) {
    let t = Instant::now();
    while !progress(dev).ends_with("done") {
        assert!(!progress(dev).contains("failed"), "{}", progress(dev));
        assert!(t.elapsed() < Duration::from_secs(120), "{}", progress(dev));
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// An origin with random data, a snapshot with scattered writes (and origin writes after
/// it): the origin and snapshot images and the snapshot's bytes.
fn snapshot_with_changes(img: &Images, seed: u64) -> (String, String, Vec<u8>) {
    let orig = img.file("orig.img", 2 << 20);
    let cow = img.file("cow.img", 3 << 20);
    let resolve = |n: &str| open_file(n);
    let base = activate("base", &origin_table(&orig, 4096), &resolve);
    fill(&base, seed);
    let snap = activate("snap", &snapshot_table(&orig, &cow, 4096, 8), &resolve);
    let mut rng = Rng(seed);
    for i in 0..300 {
        let len = (1 + rng.below(16)) * SECTOR;
        let at = rng.below((2 << 20) / SECTOR - 16) * SECTOR;
        let d = rng.bytes(len as usize);
        if i % 3 == 0 {
            base.write_at(&d, at).unwrap();
        } else {
            snap.write_at(&d, at).unwrap();
        }
    }
    // A long run of consecutive chunks too.
    snap.write_at(&rng.bytes(256 << 10), 1 << 20).unwrap();
    let want = read_all(&snap);
    snap.flush().unwrap();
    base.flush().unwrap();
    (orig, cow, want)
}

#[test]
fn merge_puts_the_snapshot_back_into_the_origin() {
    let img = Images::new();
    let (orig, cow, want) = snapshot_with_changes(&img, 11);
    let resolve = |n: &str| open_file(n);
    let base = activate(
        "base",
        &format!("0 4096 snapshot-merge {orig} {cow} P 8\n"),
        &resolve,
    );
    // Reads during the merge see the snapshot's bytes already; a write lands either way.
    assert!(read_all(&base) == want);
    let mut want = want;
    base.write_at(&[0xAB; 1024], 1 << 20).unwrap();
    want[1 << 20..(1 << 20) + 1024].fill(0xAB);
    wait_merged(&base);
    assert!(read_all(&base) == want);
    let origin_file = open_file(&orig).unwrap();
    assert!(
        read_all(&*origin_file) == want,
        "the origin image holds the snapshot's bytes"
    );
    assert_eq!(base.status(), "0 4096 snapshot-merge 16/6144 16\n");
    assert!(Store::open(open_file(&cow).unwrap())
        .unwrap()
        .unwrap()
        .is_empty());
}

#[test]
fn merge_stopped_half_way_resumes_from_the_store() {
    let img = Images::new();
    let (orig, cow, want) = snapshot_with_changes(&img, 12);
    let resolve = |n: &str| open_file(n);
    let table = format!("0 4096 snapshot-merge {orig} {cow} P 8\n");
    let mut lefts = Vec::new();
    for round in 0..400 {
        let base = activate("base", &table, &resolve);
        // Whatever is merged, the origin reads the snapshot's bytes: a few chunks each
        // round (a whole read would give the merge time to finish on a busy machine).
        for i in 0..8usize {
            let at = ((round * 7 + i * 37) % (want.len() / 4096)) * 4096;
            let mut chunk = vec![0u8; 4096];
            base.read_at(&mut chunk, at as u64).unwrap();
            assert!(chunk[..] == want[at..at + 4096], "chunk at {at}, round {round}");
        }
        std::thread::sleep(Duration::from_millis(1 + (round % 3) as u64));
        base.suspend();
        let left = progress_left(&base);
        drop(base); // as a kill: the worker stops between steps
        lefts.push(left);
        if left == 0 {
            break;
        }
    }
    let again = activate("base", &table, &resolve);
    assert!(read_all(&again) == want, "after the merge ended");
    drop(again);
    eprintln!("exceptions left after each stop: {lefts:?}");
    assert!(
        lefts.len() > 4,
        "the merge was stopped several times: {lefts:?}"
    );
    assert!(lefts.windows(2).all(|w| w[0] >= w[1]), "{lefts:?}");
    let base = activate("base", &table, &resolve);
    wait_merged(&base);
    assert!(read_all(&*open_file(&orig).unwrap()) == want);
}

fn progress_left(dev: &MappedDevice) -> usize {
    let text = dev.message(0, &["progress"]).unwrap();
    text.split_whitespace().next().unwrap().parse().unwrap()
}
