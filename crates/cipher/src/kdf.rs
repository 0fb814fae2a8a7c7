use argon2::{Algorithm, Argon2, Params, Version};

use crate::{CipherError, Hash};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Argon2Variant {
    I,
    Id,
}

impl Argon2Variant {
    /// The name LUKS2 writes in a keyslot's kdf.type.
    pub fn name(self) -> &'static str {
        match self {
            Argon2Variant::I => "argon2i",
            Argon2Variant::Id => "argon2id",
        }
    }
}

/// A key derivation function with its costs, as a LUKS key slot records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kdf {
    Pbkdf2 {
        hash: Hash,
        iterations: u32,
    },
    Argon2 {
        variant: Argon2Variant,
        time: u32,
        memory_kib: u32,
        lanes: u32,
    },
}

/// The costs a KDF may ask for before it is refused as damage rather than run: a header
/// read from a disk decides them, and a flipped bit must not cost hours or all memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfLimits {
    pub max_memory_kib: u32,
    pub max_time: u32,
    pub max_lanes: u32,
    pub max_pbkdf2_iterations: u32,
}

impl Default for KdfLimits {
    /// cryptsetup's own maxima for memory (4 GiB) and threads, and costs far above what
    /// its calibration ever picks (which aims at 2 seconds on the machine that formats).
    fn default() -> KdfLimits {
        KdfLimits {
            max_memory_kib: 4 * 1024 * 1024,
            max_time: 1000,
            max_lanes: 16,
            max_pbkdf2_iterations: 200_000_000,
        }
    }
}

impl KdfLimits {
    /// Tiny costs, for fuzzing the unlock path.
    pub fn fuzzing() -> KdfLimits {
        KdfLimits {
            max_memory_kib: 64,
            max_time: 2,
            max_lanes: 1,
            max_pbkdf2_iterations: 16,
        }
    }
}

impl Kdf {
    /// The name LUKS2 writes in kdf.type.
    pub fn name(&self) -> &'static str {
        match self {
            Kdf::Pbkdf2 { .. } => "pbkdf2",
            Kdf::Argon2 { variant, .. } => variant.name(),
        }
    }

    /// Refuses costs outside `limits` (and values no KDF accepts), before any work.
    pub fn check(&self, limits: &KdfLimits) -> Result<(), CipherError> {
        let over = |what: &str, value: u32, max: u32| {
            Err(CipherError::Cost(format!(
                "{} {what} {value} is above the limit of {max}",
                self.name()
            )))
        };
        match *self {
            Kdf::Pbkdf2 { iterations, .. } => {
                if iterations == 0 {
                    return Err(CipherError::Cost("pbkdf2 with 0 iterations".into()));
                }
                if iterations > limits.max_pbkdf2_iterations {
                    return over("iterations", iterations, limits.max_pbkdf2_iterations);
                }
            }
            Kdf::Argon2 {
                time,
                memory_kib,
                lanes,
                ..
            } => {
                if time == 0 || lanes == 0 {
                    return Err(CipherError::Cost(format!(
                        "{} with time {time} and {lanes} lanes (both must be at least 1)",
                        self.name()
                    )));
                }
                if memory_kib > limits.max_memory_kib {
                    return over("memory (KiB)", memory_kib, limits.max_memory_kib);
                }
                if time > limits.max_time {
                    return over("time cost", time, limits.max_time);
                }
                if lanes > limits.max_lanes {
                    return over("lanes", lanes, limits.max_lanes);
                }
                if u64::from(memory_kib) < 8 * u64::from(lanes) {
                    return Err(CipherError::Cost(format!(
                        "{} memory of {memory_kib} KiB is below 8 KiB per lane ({lanes} lanes)",
                        self.name()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Derives `out.len()` bytes from `pass` and `salt`. Call `check` first for costs read
    /// from a disk.
    pub fn derive(&self, pass: &[u8], salt: &[u8], out: &mut [u8]) -> Result<(), CipherError> {
        match *self {
            Kdf::Pbkdf2 { hash, iterations } => {
                if iterations == 0 {
                    return Err(CipherError::Cost("pbkdf2 with 0 iterations".into()));
                }
                hash.pbkdf2(pass, salt, iterations, out);
                Ok(())
            }
            Kdf::Argon2 {
                variant,
                time,
                memory_kib,
                lanes,
            } => {
                let algorithm = match variant {
                    Argon2Variant::I => Algorithm::Argon2i,
                    Argon2Variant::Id => Algorithm::Argon2id,
                };
                let params = Params::new(memory_kib, time, lanes, Some(out.len()))
                    .map_err(|e| CipherError::Kdf(format!("{}: {e}", variant.name())))?;
                Argon2::new(algorithm, Version::V0x13, params)
                    .hash_password_into(pass, salt, out)
                    .map_err(|e| CipherError::Kdf(format!("{}: {e}", variant.name())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn pbkdf2_matches_rfc_6070_and_7914() {
        let mut out = [0u8; 20];
        Kdf::Pbkdf2 {
            hash: Hash::Sha1,
            iterations: 4096,
        }
        .derive(b"password", b"salt", &mut out)
        .unwrap();
        assert_eq!(hex(&out), "4b007901b765489abead49d926f721d065a429c1");
        let mut out = [0u8; 64];
        Kdf::Pbkdf2 {
            hash: Hash::Sha256,
            iterations: 1,
        }
        .derive(b"passwd", b"salt", &mut out)
        .unwrap();
        assert_eq!(hex(&out[..16]), "55ac046e56e3089fec1691c22544b605");
    }

    #[test]
    fn argon2id_matches_rfc_9106_shape() {
        // Determinism and sensitivity: the same inputs give the same bytes, another salt not.
        let kdf = Kdf::Argon2 {
            variant: Argon2Variant::Id,
            time: 1,
            memory_kib: 64,
            lanes: 1,
        };
        let (mut a, mut b, mut c) = ([0u8; 32], [0u8; 32], [0u8; 32]);
        kdf.derive(b"pw", b"saltsaltsaltsalt", &mut a).unwrap();
        kdf.derive(b"pw", b"saltsaltsaltsalt", &mut b).unwrap();
        kdf.derive(b"pw", b"saltsaltsaltsalX", &mut c).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn absurd_costs_are_refused_before_work() {
        let l = KdfLimits::default();
        let big = Kdf::Argon2 {
            variant: Argon2Variant::Id,
            time: 4,
            memory_kib: u32::MAX,
            lanes: 4,
        };
        let e = big.check(&l).unwrap_err().to_string();
        assert!(e.contains("memory") && e.contains("above the limit"), "{e}");
        let slow = Kdf::Pbkdf2 {
            hash: Hash::Sha256,
            iterations: u32::MAX,
        };
        assert!(slow
            .check(&l)
            .unwrap_err()
            .to_string()
            .contains("iterations"));
        let zero = Kdf::Argon2 {
            variant: Argon2Variant::I,
            time: 0,
            memory_kib: 1024,
            lanes: 1,
        };
        assert!(zero.check(&l).is_err());
    }
}
