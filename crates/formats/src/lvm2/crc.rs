//! lvm2's checksum: the reflected CRC-32 polynomial (as zlib's) but started from
//! 0xf597a6cf and without the final inversion. crc32fast computes zlib's CRC, which inverts
//! the state on the way in and out, so inverting around it gives lvm2's.

/// lvm2's initial CRC value.
pub const INITIAL_CRC: u32 = 0xf597_a6cf;

/// Continues an lvm2 CRC from `crc` over `data`.
pub fn update(crc: u32, data: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new_with_initial(!crc);
    hasher.update(data);
    !hasher.finalize()
}

/// lvm2's CRC of `data`.
pub fn checksum(data: &[u8]) -> u32 {
    update(INITIAL_CRC, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bitwise reference from the definition, to check the crc32fast trick.
    fn reference(mut crc: u32, data: &[u8]) -> u32 {
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        crc
    }

    #[test]
    fn matches_bitwise_reference() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [0, 1, 5, 64, 492, 1000] {
            assert_eq!(checksum(&data[..len]), reference(INITIAL_CRC, &data[..len]));
        }
    }

    #[test]
    fn chains_over_pieces() {
        let data = b"a text that wraps around the end of the circular buffer";
        let (a, b) = data.split_at(17);
        assert_eq!(update(update(INITIAL_CRC, a), b), checksum(data));
    }
}
