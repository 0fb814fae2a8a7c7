//! Suspend drains in-flight I/O and holds new I/O; tables swap under concurrent load.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{pattern, read, Devices};
use tessera_block::{BlockDevice, Result as BlockResult};
use tessera_mapper::{MappedDevice, StatusType, Table, Target, TargetArgs, TargetRegistry};

/// Polls `cond` for up to 10 seconds.
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn suspend_waits_for_a_delayed_write_and_holds_io_until_resume() {
    let devs = Devices::with(&[("a", 64)]);
    // Reads pass at once; writes are held for 5 s unless a suspend releases them.
    let dev = Arc::new(devs.activate("d", "0 64 delay a 0 0 a 0 5000"));
    let writer = {
        let dev = dev.clone();
        thread::spawn(move || dev.write_at(&[7; 512], 0))
    };
    wait_for("the write to be held", || {
        dev.status() == "0 64 delay 0 1 0\n"
    });
    assert_eq!(devs.get("a").contents()[0], 0);

    let start = Instant::now();
    dev.suspend();
    // The write that was in flight finished before suspend returned...
    assert_eq!(&devs.get("a").contents()[..512], &[7; 512]);
    // ...early, because suspending releases held requests as dm-delay does.
    assert!(start.elapsed() < Duration::from_secs(4));
    writer.join().unwrap().unwrap();
    assert_eq!(dev.status(), "0 64 delay 0 0 0\n");

    // Requests issued while suspended wait for resume.
    let held_write = {
        let dev = dev.clone();
        thread::spawn(move || dev.write_at(&[8; 512], 512))
    };
    let held_read = {
        let dev = dev.clone();
        thread::spawn(move || read(&*dev, 0, 512))
    };
    thread::sleep(Duration::from_millis(200));
    assert!(!held_write.is_finished() && !held_read.is_finished());
    assert_eq!(devs.get("a").contents()[512], 0);

    // Swap in a table without the delay and resume: the held requests run on it.
    dev.load(&Table::parse("0 64 linear a 0").unwrap(), &|n| {
        devs.resolve(n)
    })
    .unwrap();
    dev.resume().unwrap();
    held_write.join().unwrap().unwrap();
    assert_eq!(held_read.join().unwrap(), vec![7; 512]);
    assert_eq!(&devs.get("a").contents()[512..1024], &[8; 512]);
}

/// A target whose writes block until the test opens its latch.
struct Latch {
    open: Arc<(Mutex<bool>, Condvar)>,
    entered: Arc<AtomicBool>,
}

impl Target for Latch {
    fn read(&self, _: u64, buf: &mut [u8]) -> BlockResult<()> {
        buf.fill(0);
        Ok(())
    }
    fn write(&self, _: u64, _: &[u8]) -> BlockResult<()> {
        self.entered.store(true, Ordering::SeqCst);
        let (lock, cv) = &*self.open;
        let mut open = lock.lock().unwrap();
        while !*open {
            open = cv.wait(open).unwrap();
        }
        Ok(())
    }
    fn flush(&self) -> BlockResult<()> {
        Ok(())
    }
    fn discard(&self, _: u64, _: u64) -> BlockResult<()> {
        Ok(())
    }
    fn write_zeroes(&self, _: u64, _: u64) -> BlockResult<()> {
        Ok(())
    }
    fn status(&self, _: StatusType) -> String {
        String::new()
    }
}

#[test]
fn suspend_does_not_return_while_a_request_is_in_flight() {
    let open = Arc::new((Mutex::new(false), Condvar::new()));
    let entered = Arc::new(AtomicBool::new(false));
    let mut reg = TargetRegistry::new();
    let (o, e) = (open.clone(), entered.clone());
    reg.register("latch", move |_: &TargetArgs<'_>| {
        Ok(Box::new(Latch {
            open: o.clone(),
            entered: e.clone(),
        }) as Box<dyn Target>)
    })
    .unwrap();
    let dev = Arc::new(MappedDevice::new("l", Arc::new(reg)));
    let devs = Devices::default();
    dev.load(&"0 8 latch".parse().unwrap(), &|n| devs.resolve(n))
        .unwrap();
    dev.resume().unwrap();

    let writer = {
        let dev = dev.clone();
        thread::spawn(move || dev.write_at(&[1; 512], 0))
    };
    wait_for("the write to enter the target", || {
        entered.load(Ordering::SeqCst)
    });
    let suspender = {
        let dev = dev.clone();
        thread::spawn(move || dev.suspend())
    };
    thread::sleep(Duration::from_millis(200));
    assert!(
        !suspender.is_finished(),
        "suspend returned with a write in flight"
    );
    assert!(dev.is_suspended(), "new I/O is already held");
    *open.0.lock().unwrap() = true;
    open.1.notify_all();
    suspender.join().unwrap();
    writer.join().unwrap().unwrap();
    dev.resume().unwrap();
}

const THREADS: u64 = 4;
const BLOCKS: u64 = 32; // per thread
const BLOCK: u64 = 4096;

/// Where block `b` lives under table `epoch % 2`: (device, byte offset).
fn location(epoch: u64, b: u64) -> (&'static str, u64) {
    if epoch % 2 == 0 {
        ("a", 8 * 512 + b * BLOCK) // linear a 8
    } else {
        // striped 2 8 b 0 c 0: one block per chunk, dealt to b and c in turn
        (["b", "c"][(b % 2) as usize], (b / 2) * BLOCK)
    }
}

#[test]
fn io_from_many_threads_follows_the_table_in_effect_across_swaps() {
    let sectors = THREADS * BLOCKS * BLOCK / 512;
    let devs = Devices::with(&[("a", sectors + 8), ("b", sectors / 2), ("c", sectors / 2)]);
    let tables = [
        Table::parse(&format!("0 {sectors} linear a 8")).unwrap(),
        Table::parse(&format!("0 {sectors} striped 2 8 b 0 c 0")).unwrap(),
    ];
    let dev = Arc::new(devs.activate("swap", &tables[0].to_string()));
    // Bumped only while suspended, so a request that sees the same value before and after
    // ran entirely on table `epoch % 2`.
    let epoch = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    // Writes completed so far, so that every table sees some I/O.
    let progress = Arc::new(AtomicU64::new(0));

    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (dev, epoch, done) = (dev.clone(), epoch.clone(), done.clone());
            let progress = progress.clone();
            thread::spawn(move || {
                // Per block: (pass, epoch before, epoch after) of its last write.
                let mut last = vec![None; BLOCKS as usize];
                let mut epochs_seen = std::collections::BTreeSet::new();
                let mut pass = 0u64;
                while !done.load(Ordering::SeqCst) || pass < 2 {
                    for k in 0..BLOCKS {
                        let b = t * BLOCKS + k;
                        let data = pattern(pass * 1000 + b, BLOCK as usize);
                        let e1 = epoch.load(Ordering::SeqCst);
                        dev.write_at(&data, b * BLOCK).unwrap();
                        // Counted before reading the epoch: a write the control thread
                        // counts after a swap records an epoch after it.
                        progress.fetch_add(1, Ordering::SeqCst);
                        let e2 = epoch.load(Ordering::SeqCst);
                        let back = read(&*dev, b * BLOCK, BLOCK as usize);
                        let e3 = epoch.load(Ordering::SeqCst);
                        if e1 == e3 {
                            assert_eq!(back, data, "block {b} read back in epoch {e1}");
                        }
                        if k % 8 == 0 {
                            dev.flush().unwrap();
                        }
                        last[k as usize] = Some((pass, e1, e2));
                        epochs_seen.insert(e2);
                    }
                    pass += 1;
                }
                (last, epochs_seen)
            })
        })
        .collect();

    for i in 1..=12u64 {
        // Wait for writes on the table of each epoch before swapping it out.
        let wanted = if i == 1 { THREADS } else { 1 };
        let seen = progress.load(Ordering::SeqCst);
        wait_for("writes", || {
            progress.load(Ordering::SeqCst) >= seen + wanted
        });
        dev.load(&tables[(i % 2) as usize], &|n| devs.resolve(n))
            .unwrap();
        dev.suspend();
        epoch.fetch_add(1, Ordering::SeqCst);
        dev.resume().unwrap();
    }
    done.store(true, Ordering::SeqCst);

    let mut checked = 0;
    let mut spread = 0;
    for (t, w) in workers.into_iter().enumerate() {
        let (last, epochs_seen) = w.join().unwrap();
        spread += usize::from(epochs_seen.len() > 1);
        for (k, entry) in last.into_iter().enumerate() {
            let (pass, e1, e2) = entry.unwrap();
            if e1 != e2 {
                continue; // a swap came between issue and completion: either table is right
            }
            let b = t as u64 * BLOCKS + k as u64;
            let (name, at) = location(e1, b);
            let disk = devs.get(name).contents();
            assert_eq!(
                &disk[at as usize..(at + BLOCK) as usize],
                &pattern(pass * 1000 + b, BLOCK as usize)[..],
                "block {b}, last written in epoch {e1}, is not on {name} at {at}"
            );
            checked += 1;
        }
    }
    assert!(checked > 0);
    assert!(spread > 0, "no worker saw a table swap");
    assert_eq!(epoch.load(Ordering::SeqCst), 12);
}
