//! tessera's multi-block XTS against the `xts-mode` crate, which encrypts one block at a
//! time: any key, IV start and length give the same bytes.

use aes::cipher::{Array, KeyInit};
use aes::{Aes128, Aes256};
use proptest::prelude::*;
use tessera_cipher::{CipherSpec, SectorCipher, XtsBackend};
use xts_mode::{get_tweak_default, Xts128};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn xts_plain64_equals_the_reference(
        key in prop::collection::vec(any::<u8>(), 64),
        first in any::<u32>(),
        sectors in 1usize..40,
        big in any::<bool>(),
        seed in any::<u8>(),
    ) {
        let sector_bytes = if big { 4096 } else { 512 };
        let plain: Vec<u8> = (0..sectors * sector_bytes).map(|i| (i as u8) ^ seed).collect();
        let ours = SectorCipher::new(&CipherSpec::parse("aes-xts-plain64").unwrap(), &key).unwrap();
        let mut a = plain.clone();
        // dm-crypt's default: the IV counts 512-byte sectors even in 4096-byte sectors.
        let step = (sector_bytes / 512) as u64;
        ours.encrypt(&mut a, sector_bytes, u64::from(first), step).unwrap();

        let reference = Xts128::new(
            Aes256::new(&Array::try_from(&key[..32]).unwrap()),
            Aes256::new(&Array::try_from(&key[32..]).unwrap()),
        );
        let mut b = plain.clone();
        for (i, sector) in b.chunks_mut(sector_bytes).enumerate() {
            let n = u128::from(first) + (i as u128) * u128::from(step);
            reference.encrypt_sector(sector, get_tweak_default(n));
        }
        prop_assert_eq!(&a, &b);
        ours.decrypt(&mut a, sector_bytes, u64::from(first), step).unwrap();
        prop_assert_eq!(a, plain);
    }
}

/// The IV of sector `n` as tessera's IV generators make it.
fn iv_bytes(mode: &str, n: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    match mode {
        "plain" => iv[..4].copy_from_slice(&(n as u32).to_le_bytes()),
        "plain64" => iv[..8].copy_from_slice(&n.to_le_bytes()),
        "plain64be" => iv[8..].copy_from_slice(&n.to_be_bytes()),
        _ => unreachable!("{mode}"),
    }
    iv
}

/// `xts-mode` over AES-128 or AES-256, by the key's length.
fn reference_crypt(key: &[u8], data: &mut [u8], sector_bytes: usize, ivs: &[[u8; 16]], enc: bool) {
    fn run<C>(x: &Xts128<C>, data: &mut [u8], sector_bytes: usize, ivs: &[[u8; 16]], enc: bool)
    where
        C: aes::cipher::BlockCipherEncrypt
            + aes::cipher::BlockCipherDecrypt
            + aes::cipher::BlockSizeUser<BlockSize = aes::cipher::consts::U16>,
    {
        for (sector, iv) in data.chunks_mut(sector_bytes).zip(ivs) {
            if enc {
                x.encrypt_sector(sector, Array::from(*iv));
            } else {
                x.decrypt_sector(sector, Array::from(*iv));
            }
        }
    }
    let (k1, k2) = key.split_at(key.len() / 2);
    if key.len() == 32 {
        let x = Xts128::new(
            Aes128::new(&Array::try_from(k1).unwrap()),
            Aes128::new(&Array::try_from(k2).unwrap()),
        );
        run(&x, data, sector_bytes, ivs, enc);
    } else {
        let x = Xts128::new(
            Aes256::new(&Array::try_from(k1).unwrap()),
            Aes256::new(&Array::try_from(k2).unwrap()),
        );
        run(&x, data, sector_bytes, ivs, enc);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    /// Every XTS backend this CPU runs (the fused AES-NI and VAES kernels beside the
    /// portable one, each forced) gives `xts-mode`'s bytes both ways, for AES-128 and
    /// AES-256 keys, any IV start, 512- to 4096-byte sectors and 1 to 39 of them.
    #[test]
    fn every_backend_equals_the_reference(
        key in prop::sample::select(vec![32usize, 64])
            .prop_flat_map(|n| prop::collection::vec(any::<u8>(), n)),
        iv_mode in prop::sample::select(vec!["plain", "plain64", "plain64be"]),
        first in any::<u64>(),
        sector_bytes in prop::sample::select(vec![512usize, 1024, 4096]),
        sectors in 1usize..40,
        step in prop::sample::select(vec![1u64, 8]),
        seed in any::<u64>(),
    ) {
        let mut x = seed | 1;
        let input: Vec<u8> = (0..sectors * sector_bytes)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let ivs: Vec<[u8; 16]> = (0..sectors as u64)
            .map(|i| iv_bytes(iv_mode, first.wrapping_add(i.wrapping_mul(step))))
            .collect();
        let spec = CipherSpec::parse(&format!("aes-xts-{iv_mode}")).unwrap();
        for enc in [true, false] {
            let mut expected = input.clone();
            reference_crypt(&key, &mut expected, sector_bytes, &ivs, enc);
            for backend in XtsBackend::available() {
                let ours = SectorCipher::with_xts_backend(&spec, &key, backend).unwrap();
                prop_assert_eq!(ours.xts_backend(), backend);
                let mut got = input.clone();
                if enc {
                    ours.encrypt(&mut got, sector_bytes, first, step).unwrap();
                } else {
                    ours.decrypt(&mut got, sector_bytes, first, step).unwrap();
                }
                prop_assert!(got == expected, "{:?} {} differs", backend, if enc { "encrypt" } else { "decrypt" });
            }
        }
    }
}

/// The fast path is what `new` picks on a CPU with AES-NI, for 32- and 64-byte xts keys
/// only: 48-byte keys (AES-192) and cbc stay portable.
#[test]
fn new_picks_the_fastest_backend_for_aes_128_and_256() {
    let best = *XtsBackend::available().last().unwrap();
    let xts = CipherSpec::parse("aes-xts-plain64").unwrap();
    for (spec, key_bytes, expected) in [
        (&xts, 32, best),
        (&xts, 64, best),
        (&xts, 48, XtsBackend::Portable),
        (
            &CipherSpec::parse("aes-cbc-essiv:sha256").unwrap(),
            32,
            XtsBackend::Portable,
        ),
    ] {
        let c = SectorCipher::new(spec, &vec![7; key_bytes]).unwrap();
        assert_eq!(c.xts_backend(), expected, "{spec} {key_bytes}");
    }
    eprintln!("backends on this CPU: {:?}", XtsBackend::available());
}
