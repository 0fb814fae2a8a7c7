//! Sector encryption throughput for the crypt target: aes-xts-plain64 with a 512-bit key,
//! 4 KiB and 64 KiB requests of 512- and 4096-byte crypt sectors, one thread, encrypt and
//! decrypt, printed in MiB/s. `bench/crypt.sh` runs it beside the kernel's figure.
//!
//!     cargo bench -p tessera-crypt --bench xts [-- SECONDS_PER_CASE]

use std::hint::black_box;
use std::time::{Duration, Instant};

use tessera_cipher::{CipherSpec, SectorCipher};

fn main() {
    // `cargo bench` passes `--bench`; the first number, if any, is the time per case.
    let seconds: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1.0);
    let per_case = Duration::from_secs_f64(seconds);
    let spec = CipherSpec::parse("aes-xts-plain64").expect("a known cipher");
    let key: Vec<u8> = (0..64u8)
        .map(|b| b.wrapping_mul(37).wrapping_add(11))
        .collect();
    let cipher = SectorCipher::new(&spec, &key).expect("a 64-byte key fits aes-xts");
    println!("# aes-xts-plain64, 512-bit key, one thread, {seconds} s per case");
    println!("{:<28} {:>12}", "case", "MiB/s");
    for request in [4096usize, 65536] {
        for sector in [512usize, 4096] {
            for encrypt in [true, false] {
                let mib_s = measure(&cipher, request, sector, encrypt, per_case);
                let what = if encrypt { "encrypt" } else { "decrypt" };
                let name = format!("{what} {}K sector {sector}", request / 1024);
                println!("{name:<28} {mib_s:>12.1}");
            }
        }
    }
}

/// MiB/s of one thread en- or decrypting `request`-byte buffers over and over.
fn measure(
    cipher: &SectorCipher,
    request: usize,
    sector: usize,
    encrypt: bool,
    per_case: Duration,
) -> f64 {
    let mut buf: Vec<u8> = (0..request).map(|i| i as u8).collect();
    let step = (sector / 512) as u64;
    let run = |buf: &mut [u8], iv: u64| {
        let r = if encrypt {
            cipher.encrypt(buf, sector, iv, step)
        } else {
            cipher.decrypt(buf, sector, iv, step)
        };
        r.expect("whole sectors");
    };
    // Warm up (caches, the cipher's scratch buffer), then time whole batches.
    for i in 0..64 {
        run(&mut buf, i * 8);
    }
    let start = Instant::now();
    let mut bytes = 0u64;
    let mut iv = 0u64;
    while start.elapsed() < per_case {
        for _ in 0..64 {
            run(black_box(&mut buf), iv);
            iv += (request / 512) as u64;
            bytes += request as u64;
        }
    }
    black_box(&buf);
    bytes as f64 / (1024.0 * 1024.0) / start.elapsed().as_secs_f64()
}
