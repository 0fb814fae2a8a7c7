//! The process's key store, as the kernel's keyring is the system's: a volume key is
//! added under a description once a LUKS device is unlocked, and a crypt table names it
//! (`:64:logon:tessera:UUID`) instead of spelling the key out, so the key never sits in a
//! table's text; removing it zeroes it.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use crate::SecretBytes;

static KEYS: Mutex<BTreeMap<String, SecretBytes>> = Mutex::new(BTreeMap::new());

/// Adds (or replaces) the key under `description`.
pub fn add(description: &str, key: SecretBytes) {
    let mut keys = KEYS.lock().unwrap_or_else(PoisonError::into_inner);
    keys.insert(description.to_string(), key);
}

/// A copy of the key under `description`, if there is one.
pub fn get(description: &str) -> Option<SecretBytes> {
    let keys = KEYS.lock().unwrap_or_else(PoisonError::into_inner);
    keys.get(description).cloned()
}

/// Removes the key under `description` (zeroed as it drops); whether there was one.
pub fn remove(description: &str) -> bool {
    let mut keys = KEYS.lock().unwrap_or_else(PoisonError::into_inner);
    keys.remove(description).is_some()
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_added_found_and_removed() {
        super::add("test:a", crate::SecretBytes::from_slice(&[7; 32]));
        assert_eq!(&*super::get("test:a").unwrap(), &[7; 32]);
        assert!(super::get("test:b").is_none());
        assert!(super::remove("test:a"));
        assert!(!super::remove("test:a"));
        assert!(super::get("test:a").is_none());
    }
}
