use std::fmt;
use std::ops::{Deref, DerefMut};

use zeroize::Zeroize;

use crate::CipherError;

/// Key material: kept out of swap with mlock where the system allows it (an unprivileged
/// process may have no locked-memory allowance; the bytes are then only zeroed), and
/// zeroed when dropped. Debug output never shows the bytes.
pub struct SecretBytes {
    bytes: Box<[u8]>,
    locked: bool,
}

impl SecretBytes {
    pub fn zeroed(len: usize) -> SecretBytes {
        let bytes = vec![0u8; len].into_boxed_slice();
        // SAFETY: the range is the boxed slice's own allocation, alive as long as self.
        let locked =
            !bytes.is_empty() && unsafe { libc::mlock(bytes.as_ptr().cast(), bytes.len()) } == 0;
        SecretBytes { bytes, locked }
    }

    pub fn from_slice(b: &[u8]) -> SecretBytes {
        let mut s = SecretBytes::zeroed(b.len());
        s.bytes.copy_from_slice(b);
        s
    }

    /// `len` bytes from the system's random number generator.
    pub fn random(len: usize) -> Result<SecretBytes, CipherError> {
        let mut s = SecretBytes::zeroed(len);
        random_bytes(&mut s)?;
        Ok(s)
    }

    /// Whether the bytes are locked in memory (kept out of swap).
    pub fn is_locked(&self) -> bool {
        self.locked
    }
}

/// Fills `buf` from the system's random number generator (getrandom(2)).
pub fn random_bytes(buf: &mut [u8]) -> Result<(), CipherError> {
    getrandom::getrandom(buf).map_err(|e| CipherError::Random(e.to_string()))
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.bytes.zeroize();
        if self.locked {
            // SAFETY: the same range that was locked in `zeroed`.
            unsafe { libc::munlock(self.bytes.as_ptr().cast(), self.bytes.len()) };
        }
    }
}

impl Clone for SecretBytes {
    fn clone(&self) -> SecretBytes {
        SecretBytes::from_slice(&self.bytes)
    }
}

impl Deref for SecretBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl DerefMut for SecretBytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

impl PartialEq for SecretBytes {
    fn eq(&self, other: &SecretBytes) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for SecretBytes {}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes({} bytes, redacted)", self.bytes.len())
    }
}
