//! tessera's cryptography for encrypted volumes, with no I/O of its own: the sector ciphers
//! dm-crypt names (`aes-xts-plain64`, `aes-cbc-essiv:sha256`, ...), the key derivation
//! functions LUKS uses (PBKDF2 over SHA-1/256/512, Argon2i and Argon2id) with limits that
//! refuse absurd costs before any work, LUKS's anti-forensic splitter, and key memory that
//! is locked where the system allows and zeroed when dropped.
//!
//! The primitives (AES, SHA, HMAC, PBKDF2, Argon2) are RustCrypto's crates. XTS and CBC
//! are written here over `aes` because a volume encrypts whole sectors: the tweaks of a
//! whole request are computed first and the data goes through AES in one multi-block call,
//! which lets the AES-NI backend pipeline eight blocks at a time (a mode crate that walks
//! one block at a time runs at a fraction of that). On x86_64, XTS with AES-128 or AES-256
//! goes further: fused kernels (VAES on 512-bit registers, or AES-NI) take tweak, AES and
//! tweak in one pass over the data, at several times the speed (`xts_x86`).

mod af_split;
mod error;
mod hash;
mod kdf;
pub mod keyring;
mod secret;
mod sector;
#[cfg(target_arch = "x86_64")]
mod xts_x86;

pub mod af {
    //! LUKS's anti-forensic information splitter: a key spread over `stripes` copies'
    //! worth of material, all of which are needed to get it back.
    pub use crate::af_split::{merge, split};
}

pub use error::CipherError;
pub use hash::Hash;
pub use kdf::{Argon2Variant, Kdf, KdfLimits};
pub use secret::{random_bytes, SecretBytes};
#[doc(hidden)]
pub use sector::XtsBackend;
pub use sector::{CipherSpec, IvMode, Mode, SectorCipher};
