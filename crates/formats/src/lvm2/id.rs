//! lvm2 identifiers: 32 characters from a 64-letter alphabet, printed in groups
//! 6-4-4-4-4-4-6 separated by dashes.

use std::fmt;
use std::str::FromStr;
use thiserror::Error;

const ALPHABET: &[u8; 64] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!#";
const GROUPS: [usize; 7] = [6, 4, 4, 4, 4, 4, 6];

/// A PV, VG or LV identifier.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id([u8; 32]);

#[derive(Debug, Error, PartialEq)]
pub enum IdError {
    #[error("identifier '{0}' does not have 32 characters")]
    Length(String),
    #[error("identifier '{0}' holds a character outside 0-9, a-z, A-Z, '!' and '#'")]
    Character(String),
}

impl Id {
    /// A new random identifier.
    pub fn random() -> Id {
        let mut raw = [0u8; 32];
        // The kernel's random source cannot fail once the system has booted; fall back to
        // time-seeded bytes rather than abort if it ever does.
        if getrandom::getrandom(&mut raw).is_err() {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            for (i, b) in raw.iter_mut().enumerate() {
                *b = (t >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(151);
            }
        }
        // lvm2 reads '!' and '#' but never makes them, and its reports print an id starting
        // with '#' without dashes; new ids use the 62 letters and digits only. Taking the
        // byte modulo 62 biases the first 8 letters slightly, which does not matter for ids.
        Id(raw.map(|b| ALPHABET[(b % 62) as usize]))
    }

    /// From the 32 raw characters, as stored in the PV header.
    pub fn from_raw(raw: &[u8]) -> Result<Id, IdError> {
        let shown = String::from_utf8_lossy(raw).into_owned();
        let raw: [u8; 32] = raw.try_into().map_err(|_| IdError::Length(shown.clone()))?;
        if !raw.iter().all(|c| ALPHABET.contains(c)) {
            return Err(IdError::Character(shown));
        }
        Ok(Id(raw))
    }

    /// The 32 raw characters.
    pub fn raw(&self) -> &[u8; 32] {
        &self.0
    }
}

impl FromStr for Id {
    type Err = IdError;
    /// Accepts the dashed form or the 32 characters without dashes.
    fn from_str(s: &str) -> Result<Id, IdError> {
        let raw: Vec<u8> = s.bytes().filter(|&c| c != b'-').collect();
        if raw.len() != 32 {
            return Err(IdError::Length(s.to_string()));
        }
        Id::from_raw(&raw).map_err(|_| IdError::Character(s.to_string()))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut at = 0;
        for (i, len) in GROUPS.iter().enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            // The alphabet is ASCII, so every slice is valid UTF-8.
            f.write_str(std::str::from_utf8(&self.0[at..at + len]).unwrap_or("?"))?;
            at += len;
        }
        Ok(())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_dashed_form() {
        let id = Id::random();
        let text = id.to_string();
        assert_eq!(text.len(), 38);
        assert_eq!(text.parse::<Id>().unwrap(), id);
    }

    #[test]
    fn new_ids_use_letters_and_digits_only() {
        for _ in 0..200 {
            assert!(Id::random().raw().iter().all(u8::is_ascii_alphanumeric));
        }
    }

    #[test]
    fn rejects_bad_ids() {
        assert!(matches!("abc".parse::<Id>(), Err(IdError::Length(_))));
        let bad = "a".repeat(31) + "$";
        assert!(matches!(bad.parse::<Id>(), Err(IdError::Character(_))));
    }
}
