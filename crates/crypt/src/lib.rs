//! tessera's `crypt` target: dm-crypt's table line and sector encryption over any device,
//! registered into the mapper as dm-crypt registers with dm.
//!
//! ```text
//! crypt <cipher> <key> <iv_offset> <device> <offset> [<#opt_params> <opt_params>...]
//! ```
//!
//! - `cipher`: `aes-xts-plain64`, `aes-cbc-essiv:sha256`, `aes-xts-plain`, `aes-cbc-plain64`
//!   and the other names [`tessera_cipher::CipherSpec`] knows, or the crypto-API form
//!   `capi:xts(aes)-plain64`.
//! - `key`: the key in hex, two digits a byte; `-` is an empty key (for a cipher without
//!   one); or `:<key_bytes>:<logon|user>:<description>`, a key in tessera's own key store
//!   ([`tessera_cipher::keyring`], where the engine keeps an open LUKS volume's key), as
//!   cryptsetup's tables name keys in the kernel's keyring. Keys that are only in the
//!   kernel's keyring are refused: a user-space process cannot read them.
//! - `iv_offset`: added to the sector number that each IV is made from.
//! - `device`, `offset`: the ciphertext lives on `device` from sector `offset`.
//! - options: `sector_size:<bytes>` (512 to 4096, a power of two), `iv_large_sectors`,
//!   and `allow_discards`, `same_cpu_crypt`, `submit_from_crypt_cpus`, `no_read_workqueue`,
//!   `no_write_workqueue`, which are kept and printed back (only `allow_discards` changes
//!   what tessera does).
//!
//! Data written through a crypt row lands on the device exactly as the kernel's dm-crypt
//! would write it, so a volume can move between tessera and the kernel (and cryptsetup)
//! either way. In particular the IV number of a crypt sector is its first 512-byte sector's
//! number counted from the row's start (not the device's), plus `iv_offset`; with
//! `iv_large_sectors` that number is divided by `sector_size / 512`. Requests must cover
//! whole crypt sectors; others are refused with [`tessera_block::BlockError::Misaligned`].

mod params;
mod target;

pub use params::{CryptOptions, CryptParams, CryptTableError};

use tessera_mapper::{RegistryError, TargetRegistry};

/// Adds the `crypt` target type to `registry`. It fails only if a `crypt` type is already
/// registered there.
pub fn register(registry: &mut TargetRegistry) -> Result<(), RegistryError> {
    registry.register("crypt", target::construct)
}

/// A crypt row's parameters (what follows `crypt` in a table line, or the target's
/// `dmsetup table` status) with the key replaced by zeros of the same length, as `dmsetup
/// table` prints it without `--showkeys`. A key given as `-` or as a keyring reference
/// (`:<len>:<type>:<desc>`, a name rather than key material) is left as it is, as are any
/// text without a key argument and all whitespace.
pub fn mask_key(table_params: &str) -> String {
    let mut out = String::with_capacity(table_params.len());
    let mut rest = table_params;
    // Leading whitespace, the cipher word and the whitespace after it stay as they are.
    let lead = rest.len() - rest.trim_start().len();
    out.push_str(&rest[..lead]);
    rest = &rest[lead..];
    let cipher_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    out.push_str(&rest[..cipher_end]);
    rest = &rest[cipher_end..];
    let gap = rest.len() - rest.trim_start().len();
    out.push_str(&rest[..gap]);
    rest = &rest[gap..];
    let key_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    let key = &rest[..key_end];
    if key == "-" || key.starts_with(':') {
        out.push_str(key);
    } else {
        out.extend(std::iter::repeat_n('0', key.chars().count()));
    }
    out.push_str(&rest[key_end..]);
    out
}

#[cfg(test)]
mod tests {
    use super::mask_key;

    #[test]
    fn mask_key_zeroes_only_the_key() {
        assert_eq!(
            mask_key("aes-xts-plain64 00112233aabbccdd 0 /dev/sdb 4096 1 sector_size:4096"),
            "aes-xts-plain64 0000000000000000 0 /dev/sdb 4096 1 sector_size:4096"
        );
        assert_eq!(
            mask_key("  aes-cbc-essiv:sha256\tffee  8 img 0"),
            "  aes-cbc-essiv:sha256\t0000  8 img 0"
        );
        assert_eq!(
            mask_key("cipher_null-ecb - 0 img 0"),
            "cipher_null-ecb - 0 img 0"
        );
        assert_eq!(
            mask_key("aes-xts-plain64 :64:logon:cryptsetup:abc 0 img 0"),
            "aes-xts-plain64 :64:logon:cryptsetup:abc 0 img 0"
        );
        assert_eq!(mask_key("aes-xts-plain64"), "aes-xts-plain64");
        assert_eq!(mask_key(""), "");
    }
}
