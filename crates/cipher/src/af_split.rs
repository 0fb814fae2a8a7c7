use crate::{CipherError, Hash, SecretBytes};

/// The most stripes accepted: LUKS always writes 4000; a larger count is damage, and would
/// make the material to read and hash grow without bound.
const MAX_STRIPES: u32 = 65536;

fn check(key_bytes: usize, stripes: u32) -> Result<usize, CipherError> {
    if stripes == 0 || stripes > MAX_STRIPES {
        return Err(CipherError::Split(format!(
            "{stripes} stripes (1 to {MAX_STRIPES} are accepted; LUKS writes 4000)"
        )));
    }
    if key_bytes == 0 || key_bytes > 1024 {
        return Err(CipherError::Split(format!(
            "a key of {key_bytes} bytes (1 to 1024 are accepted)"
        )));
    }
    Ok(key_bytes * stripes as usize)
}

/// LUKS's diffusion: the buffer, cut into hash-sized pieces, each replaced by the hash of
/// its index (32-bit big-endian) and itself, cut to the piece's length.
fn diffuse(buf: &mut [u8], hash: Hash) {
    for (i, piece) in buf.chunks_mut(hash.output_bytes()).enumerate() {
        let d = hash.digest_parts(&[&(i as u32).to_be_bytes(), piece]);
        let n = piece.len();
        piece.copy_from_slice(&d[..n]);
    }
}

/// Spreads `key` over `stripes` stripes: all but the last random, the last the key XOR
/// the diffused XOR-chain of the others.
pub fn split(key: &[u8], stripes: u32, hash: Hash) -> Result<SecretBytes, CipherError> {
    let total = check(key.len(), stripes)?;
    let n = key.len();
    let mut material = SecretBytes::zeroed(total);
    crate::random_bytes(&mut material[..total - n])?;
    let mut chain = SecretBytes::zeroed(n);
    for stripe in material[..total - n].chunks(n) {
        chain.iter_mut().zip(stripe).for_each(|(c, s)| *c ^= s);
        diffuse(&mut chain, hash);
    }
    for ((out, c), k) in material[total - n..].iter_mut().zip(chain.iter()).zip(key) {
        *out = c ^ k;
    }
    Ok(material)
}

/// Recovers a `key_bytes`-byte key from `material` (at least `key_bytes * stripes` bytes).
pub fn merge(
    material: &[u8],
    key_bytes: usize,
    stripes: u32,
    hash: Hash,
) -> Result<SecretBytes, CipherError> {
    let total = check(key_bytes, stripes)?;
    let material = material.get(..total).ok_or_else(|| {
        CipherError::Split(format!(
            "{} bytes of key material, {total} needed",
            material.len()
        ))
    })?;
    let mut chain = SecretBytes::zeroed(key_bytes);
    let (head, last) = material.split_at(total - key_bytes);
    for stripe in head.chunks(key_bytes) {
        chain.iter_mut().zip(stripe).for_each(|(c, s)| *c ^= s);
        diffuse(&mut chain, hash);
    }
    chain.iter_mut().zip(last).for_each(|(c, s)| *c ^= s);
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_then_merge_gives_the_key_back() {
        for hash in [Hash::Sha1, Hash::Sha256, Hash::Sha512] {
            for len in [16, 32, 64, 65] {
                let key: Vec<u8> = (0..len as u8).collect();
                let m = split(&key, 4000, hash).unwrap();
                assert_eq!(m.len(), len * 4000);
                assert_eq!(&*merge(&m, len, 4000, hash).unwrap(), &key[..]);
                // Every stripe matters: one flipped bit anywhere changes the key.
                let mut bad = m.clone();
                bad[len * 17] ^= 1;
                assert_ne!(&*merge(&bad, len, 4000, hash).unwrap(), &key[..]);
            }
        }
    }

    #[test]
    fn absurd_stripes_and_short_material_are_refused() {
        assert!(merge(&[0; 64], 32, 0, Hash::Sha256).is_err());
        assert!(merge(&[0; 64], 32, u32::MAX, Hash::Sha256).is_err());
        let e = merge(&[0; 64], 32, 4000, Hash::Sha256).unwrap_err();
        assert!(e.to_string().contains("128000 needed"), "{e}");
    }
}
