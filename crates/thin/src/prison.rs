//! Per-block locks, as dm-bio-prison's cells: whoever changes where a thin block lives
//! (provisioning it, breaking its sharing, unmapping it) holds the block's cell, so two
//! writers to one unprovisioned block never both allocate.

use std::collections::HashSet;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

const SHARDS: usize = 64;

#[derive(Default)]
struct Shard {
    held: Mutex<HashSet<(u32, u64)>>,
    released: Condvar,
}

pub(crate) struct Prison {
    shards: Vec<Shard>,
}

/// A held cell; dropping it lets the next waiter in.
pub(crate) struct Cell<'a> {
    shard: &'a Shard,
    key: (u32, u64),
}

fn lock(m: &Mutex<HashSet<(u32, u64)>>) -> MutexGuard<'_, HashSet<(u32, u64)>> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Prison {
    pub fn new() -> Prison {
        Prison {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }

    /// Waits for and takes the cell of block `vblock` of thin device `dev_id`. A thread
    /// holds one cell at a time, or several taken in ascending block order.
    pub fn lock(&self, dev_id: u32, vblock: u64) -> Cell<'_> {
        let key = (dev_id, vblock);
        let mix = vblock ^ (u64::from(dev_id)).rotate_left(29);
        let shard = &self.shards[(mix.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % SHARDS];
        let mut held = lock(&shard.held);
        while held.contains(&key) {
            held = shard
                .released
                .wait(held)
                .unwrap_or_else(PoisonError::into_inner);
        }
        held.insert(key);
        Cell { shard, key }
    }
}

impl Drop for Cell<'_> {
    fn drop(&mut self) {
        lock(&self.shard.held).remove(&self.key);
        self.shard.released.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn one_holder_per_block() {
        let prison = Prison::new();
        let inside = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..200 {
                        let _c = prison.lock(3, 7);
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
        });
        // Different blocks do not wait for each other.
        let _a = prison.lock(1, 1);
        let _b = prison.lock(1, 2);
        let _c = prison.lock(2, 1);
    }
}
