//! Parity generation speed beside memcpy of the same bytes, in one run: XOR (raid5's P) and
//! P+Q (raid6), for 4 and 8 data blocks of 64 KiB and 512 KiB. Run with
//! `cargo bench -p tessera-raid --bench parity`. Figures are GB/s of data blocks processed.

use std::hint::black_box;
use std::time::{Duration, Instant};

use tessera_raid::parity;

/// Runs `f` repeatedly for about `budget` and returns the best rate in GB/s over `bytes`.
fn rate(bytes: usize, budget: Duration, mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    let end = Instant::now() + budget;
    while Instant::now() < end {
        let t = Instant::now();
        for _ in 0..8 {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64() / 8.0);
    }
    bytes as f64 / best / 1e9
}

fn main() {
    let budget = Duration::from_millis(
        std::env::var("BENCH_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(700),
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "data blocks x size", "memcpy", "xor (P)", "P+Q", "P/memcpy", "PQ/memcpy"
    );
    for (blocks, size) in [(4, 64 << 10), (8, 64 << 10), (4, 512 << 10), (8, 512 << 10)] {
        let data: Vec<Vec<u8>> = (0..blocks)
            .map(|b| (0..size).map(|i| (i * 31 + b * 7) as u8).collect())
            .collect();
        let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let total = blocks * size;
        let mut copy = vec![0u8; total];
        let memcpy = rate(total, budget, || {
            for (i, d) in refs.iter().enumerate() {
                copy[i * size..(i + 1) * size].copy_from_slice(d);
            }
            black_box(&copy);
        });
        let mut p = vec![0u8; size];
        let xor = rate(total, budget, || {
            parity::xor_blocks(&mut p, &refs);
            black_box(&p);
        });
        let mut q = vec![0u8; size];
        let pq = rate(total, budget, || {
            parity::gen_pq(&refs, &mut p, &mut q);
            black_box((&p, &q));
        });
        println!(
            "{:<22} {:>8.2} GB/s {:>5.2} GB/s {:>5.2} GB/s {:>8.2}x {:>8.2}x",
            format!("{blocks} x {} KiB", size >> 10),
            memcpy,
            xor,
            pq,
            xor / memcpy,
            pq / memcpy
        );
    }
}
