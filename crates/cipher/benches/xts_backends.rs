//! XTS throughput of each backend this CPU runs (portable, AES-NI, VAES-512), forced, for
//! AES-128 and AES-256 keys and 512- and 4096-byte sectors in 64 KiB requests, one thread,
//! printed in MiB/s. `tessera-crypt`'s `xts` bench measures what `SectorCipher::new` picks.
//!
//!     cargo bench -p tessera-cipher --bench xts_backends [-- SECONDS_PER_CASE]

use std::hint::black_box;
use std::time::{Duration, Instant};

use tessera_cipher::{CipherSpec, SectorCipher, XtsBackend};

fn main() {
    let seconds: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(0.5);
    let per_case = Duration::from_secs_f64(seconds);
    let spec = CipherSpec::parse("aes-xts-plain64").expect("a known cipher");
    println!("# aes-xts-plain64, 64 KiB requests, one thread, {seconds} s per case");
    println!("{:<36} {:>10}", "case", "MiB/s");
    for backend in XtsBackend::available() {
        for key_bytes in [32usize, 64] {
            let key: Vec<u8> = (0..key_bytes as u8).map(|b| b.wrapping_mul(37)).collect();
            let cipher = SectorCipher::with_xts_backend(&spec, &key, backend).expect("a key");
            for sector in [512usize, 4096] {
                for encrypt in [true, false] {
                    let mib_s = measure(&cipher, sector, encrypt, per_case);
                    let what = if encrypt { "encrypt" } else { "decrypt" };
                    let name = format!("{backend:?} aes-{} {what} {sector}", key_bytes * 4);
                    println!("{name:<36} {mib_s:>10.1}");
                }
            }
        }
    }
}

fn measure(cipher: &SectorCipher, sector: usize, encrypt: bool, per_case: Duration) -> f64 {
    let mut buf: Vec<u8> = (0..65536).map(|i| i as u8).collect();
    let step = (sector / 512) as u64;
    let start = Instant::now();
    let mut bytes = 0u64;
    let mut iv = 0u64;
    while start.elapsed() < per_case {
        for _ in 0..16 {
            let buf = black_box(&mut buf[..]);
            if encrypt {
                cipher.encrypt(buf, sector, iv, step)
            } else {
                cipher.decrypt(buf, sector, iv, step)
            }
            .expect("whole sectors");
            iv += 128;
            bytes += 65536;
        }
    }
    bytes as f64 / (1024.0 * 1024.0) / start.elapsed().as_secs_f64()
}
