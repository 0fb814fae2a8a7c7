//! The snapshot exception store reader over arbitrary COW devices: never panics; a store it
//! accepts has exceptions only in data chunks inside the device, takes a new exception and
//! reads it back after reopening, and merges down to nothing.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tessera_block::MemoryDevice;
use tessera_formats::snapshot::Store;

fuzz_target!(|data: &[u8]| {
    let dev = Arc::new(MemoryDevice::with_contents("fuzz", data));
    let Ok(Some(mut store)) = Store::open(dev.clone()) else {
        return;
    };
    for (old, new) in store.exceptions().collect::<Vec<_>>() {
        assert!(new < store.total_chunks() && !store.is_metadata_chunk(new));
        assert_eq!(store.lookup(old), Some(new));
    }
    if !store.is_valid() {
        return;
    }
    let before = store.len();
    let old = u64::MAX - 1;
    if store.lookup(old).is_none() {
        if let Ok(new) = store.allocate() {
            if store.commit_exception(old, new).is_ok() {
                let again = Store::open(dev.clone()).unwrap().unwrap();
                assert_eq!(again.lookup(old), Some(new));
                assert_eq!(again.len(), before + 1);
                store = again;
            }
        }
    }
    let mut rounds = 0;
    while let Ok(Some(run)) = store.prepare_merge() {
        assert!(run.count >= 1);
        if store.commit_merge(run.count).is_err() {
            return;
        }
        rounds += 1;
        assert!(rounds <= 1 << 20);
    }
});
