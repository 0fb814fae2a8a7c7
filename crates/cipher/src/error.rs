use thiserror::Error;

/// Why a cipher, key, KDF or buffer was refused. Each message is a sentence a user can act on.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CipherError {
    #[error("cipher '{0}' is not supported (tessera knows aes with xts or cbc, and the IVs plain, plain64, plain64be, essiv:sha256 and null)")]
    UnknownCipher(String),
    #[error("hash '{0}' is not supported (tessera knows sha1, sha256 and sha512)")]
    UnknownHash(String),
    #[error("a {bytes}-byte key does not fit cipher '{cipher}' (it takes {expected})")]
    KeySize {
        cipher: String,
        bytes: usize,
        expected: String,
    },
    #[error("{len} bytes are not a whole number of {sector_bytes}-byte sectors")]
    Unaligned { len: usize, sector_bytes: usize },
    #[error("sector size {0} is not supported (512 to 4096 bytes, a power of two)")]
    SectorSize(usize),
    #[error("KDF cost refused: {0}")]
    Cost(String),
    #[error("KDF failed: {0}")]
    Kdf(String),
    #[error("anti-forensic split refused: {0}")]
    Split(String),
    #[error("the system's random number generator failed: {0}")]
    Random(String),
}
