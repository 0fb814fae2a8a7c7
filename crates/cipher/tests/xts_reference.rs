//! tessera's multi-block XTS against the `xts-mode` crate, which encrypts one block at a
//! time: any key, IV start and length give the same bytes.

use aes::cipher::{Array, KeyInit};
use aes::Aes256;
use proptest::prelude::*;
use tessera_cipher::{CipherSpec, SectorCipher};
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
