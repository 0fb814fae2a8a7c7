//! The crypt row's parameters: parsing with the kernel's checks, and printing them back as
//! the kernel's `dmsetup table` line does.

use std::fmt;

use tessera_cipher::{CipherError, CipherSpec, SecretBytes};
use tessera_mapper::{escape_arg, TargetError, SECTOR_BYTES};
use thiserror::Error;

/// Why a crypt row's parameters were refused. No message ever contains key material.
#[derive(Debug, Error)]
pub enum CryptTableError {
    #[error("missing argument <{0}>; a crypt row is `crypt <cipher> <key> <iv_offset> <device_path> <offset> [<#opt_params> <opt_params>...]`")]
    Missing(&'static str),
    #[error("<{what}> {value:?} is not a valid number")]
    BadNumber { what: &'static str, value: String },
    #[error("{0}")]
    Cipher(CipherError),
    #[error("cipher {0:?} is not understood: tessera reads the crypto-API form as capi:<mode>(<cipher>)-<iv>, such as capi:xts(aes)-plain64")]
    Capi(String),
    #[error("cipher {0:?} (no encryption) is not supported by tessera")]
    CipherNull(String),
    #[error("the key is not hexadecimal: give it as two hex digits a byte (or - for no key)")]
    KeyNotHex,
    #[error("the key has {0} hex digits, an odd number: each byte takes two")]
    KeyOddLength(usize),
    #[error("the key is - (no key), but cipher {0:?} needs one; give the key in hex")]
    EmptyKey(String),
    #[error("key: {0}")]
    KeySize(CipherError),
    #[error("no key {0:?} in tessera's key store (kernel keyring keys are not supported in user space; give the key in hex)")]
    Keyring(String),
    #[error(
        "key reference {0:?} is not understood: it is `:<key_bytes>:<logon|user>:<description>`"
    )]
    KeyringSyntax(String),
    #[error(
        "key {description:?} in tessera's key store has {found} bytes, but the table says {said}"
    )]
    KeyringLength {
        description: String,
        said: usize,
        found: usize,
    },
    #[error("option sector_size:{0}: the sector size must be 512 to 4096 bytes, a power of two")]
    SectorSize(String),
    #[error("the row's length ({length} sectors) is not a whole number of {sector_size}-byte crypt sectors")]
    LengthNotMultiple { length: u64, sector_size: u32 },
    #[error("the row starts at sector {start}, not on a {sector_size}-byte boundary of the mapped device; with sector_size:{sector_size} the device's blocks are {sector_size} bytes, so rows must start on one (the kernel refuses such a table too)")]
    StartNotMultiple { start: u64, sector_size: u32 },
    #[error("<iv_offset> {iv_offset} is not a whole number of {sector_size}-byte crypt sectors (a multiple of {} sectors)", sector_size / 512)]
    IvOffsetNotMultiple { iv_offset: u64, sector_size: u32 },
    #[error("<#opt_params> is {count}, but {found} arguments follow it")]
    OptCount { count: u64, found: usize },
    #[error("unknown option {0:?}; crypt takes allow_discards, same_cpu_crypt, submit_from_crypt_cpus, no_read_workqueue, no_write_workqueue, sector_size:<bytes> and iv_large_sectors")]
    UnknownOption(String),
    #[error("option {0:?}: authenticated encryption (integrity) is not supported by tessera")]
    Integrity(String),
}

impl From<CryptTableError> for TargetError {
    fn from(e: CryptTableError) -> TargetError {
        TargetError::Invalid(e.to_string())
    }
}

/// The optional parameters. Only `sector_size`, `iv_large_sectors` and `allow_discards`
/// change what tessera does; the others tune the kernel's work queues and are kept so that
/// the table prints back as it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CryptOptions {
    pub allow_discards: bool,
    pub same_cpu_crypt: bool,
    pub submit_from_crypt_cpus: bool,
    pub no_read_workqueue: bool,
    pub no_write_workqueue: bool,
    /// Bytes per crypt sector (512 to 4096, a power of two): each is encrypted with its
    /// own IV.
    pub sector_size: u32,
    /// IV numbers count crypt sectors instead of 512-byte sectors.
    pub iv_large_sectors: bool,
}

impl Default for CryptOptions {
    fn default() -> Self {
        CryptOptions {
            allow_discards: false,
            same_cpu_crypt: false,
            submit_from_crypt_cpus: false,
            no_read_workqueue: false,
            no_write_workqueue: false,
            sector_size: SECTOR_BYTES as u32,
            iv_large_sectors: false,
        }
    }
}

impl CryptOptions {
    /// 512-byte sectors per crypt sector.
    pub fn sector_sectors(&self) -> u64 {
        u64::from(self.sector_size) / SECTOR_BYTES
    }

    /// Parses `<#opt_params> <opt_params>...`: everything after `<offset>`.
    fn parse(args: &[&str]) -> Result<CryptOptions, CryptTableError> {
        let mut opts = CryptOptions::default();
        let Some((count, rest)) = args.split_first() else {
            return Ok(opts);
        };
        let count: u64 = count.parse().map_err(|_| CryptTableError::BadNumber {
            what: "#opt_params",
            value: count.to_string(),
        })?;
        if count != rest.len() as u64 {
            return Err(CryptTableError::OptCount {
                count,
                found: rest.len(),
            });
        }
        for &opt in rest {
            let flag = |name: &str| opt.eq_ignore_ascii_case(name);
            if flag("allow_discards") {
                opts.allow_discards = true;
            } else if flag("same_cpu_crypt") {
                opts.same_cpu_crypt = true;
            } else if flag("submit_from_crypt_cpus") {
                opts.submit_from_crypt_cpus = true;
            } else if flag("no_read_workqueue") {
                opts.no_read_workqueue = true;
            } else if flag("no_write_workqueue") {
                opts.no_write_workqueue = true;
            } else if flag("iv_large_sectors") {
                opts.iv_large_sectors = true;
            } else if let Some(value) = opt.strip_prefix("sector_size:") {
                opts.sector_size = match value.parse::<u32>() {
                    Ok(n) if (512..=4096).contains(&n) && n.is_power_of_two() => n,
                    _ => return Err(CryptTableError::SectorSize(value.to_string())),
                };
            } else if opt
                .get(..10)
                .is_some_and(|p| p.eq_ignore_ascii_case("integrity:"))
            {
                return Err(CryptTableError::Integrity(opt.to_string()));
            } else {
                return Err(CryptTableError::UnknownOption(opt.to_string()));
            }
        }
        Ok(opts)
    }

    /// ` <n> <opt>...` in the kernel's order, or nothing without options.
    fn print(&self, out: &mut String) {
        let mut words: Vec<String> = Vec::new();
        let flags = [
            (self.allow_discards, "allow_discards"),
            (self.same_cpu_crypt, "same_cpu_crypt"),
            (self.submit_from_crypt_cpus, "submit_from_crypt_cpus"),
            (self.no_read_workqueue, "no_read_workqueue"),
            (self.no_write_workqueue, "no_write_workqueue"),
        ];
        words.extend(flags.iter().filter(|f| f.0).map(|f| f.1.to_string()));
        if u64::from(self.sector_size) != SECTOR_BYTES {
            words.push(format!("sector_size:{}", self.sector_size));
        }
        if self.iv_large_sectors {
            words.push("iv_large_sectors".to_string());
        }
        if !words.is_empty() {
            out.push_str(&format!(" {} {}", words.len(), words.join(" ")));
        }
    }
}

/// A crypt row's parameters, checked.
pub struct CryptParams {
    /// The cipher as the table gave it (the kernel prints it back unchanged).
    pub cipher: String,
    pub spec: CipherSpec,
    /// Empty for a cipher that takes no key (`-` in the table).
    pub key: SecretBytes,
    /// The key reference (`:<key_bytes>:<type>:<description>`) when the table named a key in
    /// tessera's key store instead of giving it in hex; printed back instead of the key.
    pub key_ref: Option<String>,
    /// Added to the row's sector numbers to make IV numbers (512-byte sectors).
    pub iv_offset: u64,
    pub device: String,
    pub offset_sectors: u64,
    pub options: CryptOptions,
}

impl fmt::Debug for CryptParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CryptParams")
            .field("cipher", &self.cipher)
            .field("key", &self.key)
            .field("iv_offset", &self.iv_offset)
            .field("device", &self.device)
            .field("offset_sectors", &self.offset_sectors)
            .field("options", &self.options)
            .finish()
    }
}

impl CryptParams {
    /// Parses a crypt row's arguments (split as the mapper splits them) for a row of
    /// `length_sectors` at `start_sectors`, with the kernel's checks: the options first (a
    /// sector size must divide the row), then cipher and key, then the numbers.
    pub fn parse(
        args: &[&str],
        start_sectors: u64,
        length_sectors: u64,
    ) -> Result<CryptParams, CryptTableError> {
        const NAMES: [&str; 5] = ["cipher", "key", "iv_offset", "device_path", "offset"];
        if let Some(&missing) = NAMES.get(args.len()) {
            return Err(CryptTableError::Missing(missing));
        }
        let options = CryptOptions::parse(&args[5..])?;
        let per = options.sector_sectors();
        if length_sectors % per != 0 {
            return Err(CryptTableError::LengthNotMultiple {
                length: length_sectors,
                sector_size: options.sector_size,
            });
        }
        if start_sectors % per != 0 {
            return Err(CryptTableError::StartNotMultiple {
                start: start_sectors,
                sector_size: options.sector_size,
            });
        }
        let cipher = args[0];
        let spec = parse_cipher(cipher)?;
        let key = parse_key(args[1])?;
        let key_ref = args[1].starts_with(':').then(|| args[1].to_string());
        if key.is_empty() {
            spec.check_key_bytes(0)
                .map_err(|_| CryptTableError::EmptyKey(cipher.to_string()))?;
        } else {
            spec.check_key_bytes(key.len())
                .map_err(CryptTableError::KeySize)?;
        }
        let number = |what: &'static str, value: &str| {
            value
                .parse::<u64>()
                .map_err(|_| CryptTableError::BadNumber {
                    what,
                    value: value.to_string(),
                })
        };
        let iv_offset = number("iv_offset", args[2])?;
        if iv_offset % per != 0 {
            return Err(CryptTableError::IvOffsetNotMultiple {
                iv_offset,
                sector_size: options.sector_size,
            });
        }
        let offset_sectors = number("offset", args[4])?;
        Ok(CryptParams {
            cipher: cipher.to_string(),
            spec,
            key,
            key_ref,
            iv_offset,
            device: args[3].to_string(),
            offset_sectors,
            options,
        })
    }

    /// The parameters as the kernel prints them for `dmsetup table`:
    /// `<cipher> <key hex> <iv_offset> <device> <offset> [<n> <opts>...]`. The key is
    /// printed in lowercase hex (`-` if empty); see [`crate::mask_key`] to hide it.
    pub fn to_table_params(&self) -> String {
        let mut out = String::with_capacity(self.cipher.len() + 2 * self.key.len() + 64);
        out.push_str(&self.cipher);
        out.push(' ');
        if let Some(key_ref) = &self.key_ref {
            out.push_str(key_ref);
        } else if self.key.is_empty() {
            out.push('-');
        } else {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            for &b in self.key.iter() {
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 15)] as char);
            }
        }
        out.push_str(&format!(
            " {} {} {}",
            self.iv_offset,
            escape_arg(&self.device),
            self.offset_sectors
        ));
        self.options.print(&mut out);
        out
    }
}

/// The cipher spec for `cipher`: dm-crypt's `<cipher>-<chainmode>-<ivmode>[:<ivopts>]`, or
/// the crypto-API form `capi:<chainmode>(<cipher>)-<ivmode>[:<ivopts>]`, which names the
/// same thing.
fn parse_cipher(cipher: &str) -> Result<CipherSpec, CryptTableError> {
    let plain_form;
    let name = match cipher.strip_prefix("capi:") {
        Some(capi) => {
            plain_form = capi_to_plain(capi).ok_or_else(|| CryptTableError::Capi(cipher.into()))?;
            plain_form.as_str()
        }
        None => cipher,
    };
    CipherSpec::parse(name).map_err(|e| {
        if name.starts_with("cipher_null") {
            CryptTableError::CipherNull(cipher.to_string())
        } else {
            CryptTableError::Cipher(e)
        }
    })
}

/// `xts(aes)-plain64` as `aes-xts-plain64`; `None` for anything not of that shape.
fn capi_to_plain(capi: &str) -> Option<String> {
    // The IV mode follows the last '-' (an IV option such as essiv's hash has none).
    let (api, iv) = capi.rsplit_once('-')?;
    let (mode, inner) = api.strip_suffix(')')?.split_once('(')?;
    let word = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
    (word(mode) && word(inner) && !iv.is_empty()).then(|| format!("{inner}-{mode}-{iv}"))
}

/// Decodes the key argument straight into locked memory: hex, `-` for no key, or a
/// reference to a key in tessera's key store.
fn parse_key(text: &str) -> Result<SecretBytes, CryptTableError> {
    if text == "-" {
        return Ok(SecretBytes::zeroed(0));
    }
    if let Some(reference) = text.strip_prefix(':') {
        return stored_key(reference);
    }
    let digits = text.as_bytes();
    if digits.len() % 2 != 0 {
        return Err(CryptTableError::KeyOddLength(digits.len()));
    }
    let mut key = SecretBytes::zeroed(digits.len() / 2);
    for (byte, pair) in key.iter_mut().zip(digits.chunks_exact(2)) {
        let (Some(hi), Some(lo)) = (hex_value(pair[0]), hex_value(pair[1])) else {
            return Err(CryptTableError::KeyNotHex);
        };
        *byte = hi << 4 | lo;
    }
    Ok(key)
}

/// The key that `<key_bytes>:<type>:<description>` names in tessera's key store
/// ([`tessera_cipher::keyring`]), where the engine puts a LUKS volume's key when it opens
/// it: the process's counterpart of the kernel keyring that cryptsetup's tables name. As
/// in the kernel, the stated length must be the key's. A key that is not in the store
/// (one in the kernel's keyring, which a user-space process cannot read) is refused.
fn stored_key(reference: &str) -> Result<SecretBytes, CryptTableError> {
    let syntax = || CryptTableError::KeyringSyntax(format!(":{reference}"));
    let mut parts = reference.splitn(3, ':');
    let (Some(len), Some(kind), Some(description)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(syntax());
    };
    let said: usize = len.parse().map_err(|_| syntax())?;
    if !matches!(kind, "logon" | "user") || description.is_empty() {
        return Err(syntax());
    }
    let key = tessera_cipher::keyring::get(description)
        .ok_or_else(|| CryptTableError::Keyring(description.to_string()))?;
    if key.len() != said {
        return Err(CryptTableError::KeyringLength {
            description: description.to_string(),
            said,
            found: key.len(),
        });
    }
    Ok(key)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY64: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\
                         202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f";

    fn parse(line: &str, start: u64, len: u64) -> Result<CryptParams, CryptTableError> {
        let args: Vec<&str> = line.split_whitespace().collect();
        CryptParams::parse(&args, start, len)
    }

    fn err(line: &str) -> String {
        parse(line, 0, 64).unwrap_err().to_string()
    }

    #[test]
    fn parses_and_prints_back() {
        let line = format!("aes-xts-plain64 {KEY64} 16 img 2048 3 allow_discards sector_size:4096 iv_large_sectors");
        let p = parse(&line, 8, 64).unwrap();
        assert_eq!(p.key.len(), 64);
        assert_eq!(p.key[1], 1);
        assert_eq!(p.iv_offset, 16);
        assert_eq!(p.offset_sectors, 2048);
        assert_eq!(p.options.sector_size, 4096);
        assert!(p.options.iv_large_sectors && p.options.allow_discards);
        assert_eq!(p.to_table_params(), line);
        assert!(
            !format!("{p:?}").contains("0001020304"),
            "Debug shows no key"
        );
    }

    #[test]
    fn prints_in_the_kernels_order_and_lowercase() {
        let key = KEY64.to_uppercase();
        let line = format!("aes-xts-plain64 {key} 0 img 0 5 iv_large_sectors NO_WRITE_WORKQUEUE sector_size:512 same_cpu_crypt allow_discards");
        let p = parse(&line, 0, 64).unwrap();
        assert_eq!(
            p.to_table_params(),
            format!("aes-xts-plain64 {KEY64} 0 img 0 4 allow_discards same_cpu_crypt no_write_workqueue iv_large_sectors")
        );
    }

    #[test]
    fn capi_form() {
        assert_eq!(
            capi_to_plain("xts(aes)-plain64").as_deref(),
            Some("aes-xts-plain64")
        );
        assert_eq!(
            capi_to_plain("cbc(aes)-essiv:sha256").as_deref(),
            Some("aes-cbc-essiv:sha256")
        );
        assert_eq!(capi_to_plain("xts(aes)"), None);
        assert_eq!(capi_to_plain("essiv(cbc(aes),sha256)-essiv:sha256"), None);
        let p = parse(&format!("capi:xts(aes)-plain64 {KEY64} 0 img 0"), 0, 64).unwrap();
        assert_eq!(p.spec.to_string(), "aes-xts-plain64");
        assert!(p.to_table_params().starts_with("capi:xts(aes)-plain64 "));
        let e = err(&format!("capi:xts[aes]-plain64 {KEY64} 0 img 0"));
        assert!(e.contains("capi:xts(aes)-plain64"), "{e}");
    }

    #[test]
    fn refusals_are_clear_and_never_show_the_key() {
        let secretish = "deadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeefdeadbeeg";
        let cases: Vec<(String, &str)> = vec![
            ("aes-xts-plain64".into(), "missing argument <key>"),
            (
                format!("aes-xts-plain64 {KEY64} 0 img"),
                "missing argument <offset>",
            ),
            (
                format!("aes-xts-plain64 {secretish} 0 img 0"),
                "not hexadecimal",
            ),
            ("aes-xts-plain64 abc 0 img 0".into(), "odd number"),
            ("aes-xts-plain64 00112233 0 img 0".into(), "does not fit"),
            (
                format!("serpent-xts-plain64 {KEY64} 0 img 0"),
                "not supported",
            ),
            ("aes-xts-plain64 - 0 img 0".into(), "needs one"),
            ("cipher_null-ecb - 0 img 0".into(), ""),
            (":64:logon:cryptsetup:x".into(), "missing argument"),
            (
                "aes-xts-plain64 :64:logon:cryptsetup:x 0 img 0".into(),
                "kernel keyring keys are not supported in user space; give the key in hex",
            ),
            (
                format!("aes-xts-plain64 {KEY64} x img 0"),
                "<iv_offset> \"x\"",
            ),
            (
                format!("aes-xts-plain64 {KEY64} 0 img -1"),
                "<offset> \"-1\"",
            ),
            (
                format!("aes-xts-plain64 {KEY64} 0 img 0 1 sector_size:1024x"),
                "sector_size:1024x",
            ),
            (
                format!("aes-xts-plain64 {KEY64} 0 img 0 1 sector_size:8192"),
                "512 to 4096",
            ),
            (
                format!("aes-xts-plain64 {KEY64} 0 img 0 1 sector_size:1000"),
                "power of two",
            ),
            (
                format!("aes-xts-plain64 {KEY64} 0 img 0 1 sector_size:256"),
                "512 to 4096",
            ),
            (
                format!("aes-xts-plain64 {KEY64} 0 img 0 1 fast_please"),
                "unknown option \"fast_please\"",
            ),
            (
                format!("aes-xts-plain64 {KEY64} 0 img 0 1 integrity:28:aead"),
                "integrity",
            ),
            (
                format!("aes-xts-plain64 {KEY64} 0 img 0 2 allow_discards"),
                "<#opt_params> is 2, but 1",
            ),
            (
                format!("aes-xts-plain64 {KEY64} 0 img 0 1 allow_discards extra"),
                "<#opt_params> is 1, but 2",
            ),
            (
                format!("aes-xts-plain64 {KEY64} 0 img 0 x"),
                "<#opt_params> \"x\"",
            ),
            (
                format!("aes-xts-plain64 {KEY64} 4 img 0 1 sector_size:4096"),
                "<iv_offset> 4 is not a whole number of 4096-byte",
            ),
        ];
        for (line, want) in cases {
            let got = match parse(&line, 0, 64) {
                Ok(_) if want.is_empty() => continue,
                Ok(_) => panic!("{line:?} was accepted"),
                Err(e) => e.to_string(),
            };
            if want.is_empty() {
                assert!(got.contains("cipher_null"), "{line:?}: {got}");
                continue;
            }
            assert!(got.contains(want), "{line:?}: {got}");
            assert!(
                !got.contains("deadbeef") && !got.contains("0a0b0c"),
                "{got}"
            );
        }
    }

    #[test]
    fn keys_named_in_tesseras_key_store() {
        let key: Vec<u8> = (0..64).collect();
        tessera_cipher::keyring::add("tessera:crypt-test", SecretBytes::from_slice(&key));
        let line = "aes-xts-plain64 :64:logon:tessera:crypt-test 0 img 0";
        let p = parse(line, 0, 64).unwrap();
        assert_eq!(&*p.key, &key[..]);
        assert_eq!(
            p.to_table_params(),
            line,
            "the reference, not the key, is printed"
        );
        let e = err("aes-xts-plain64 :32:logon:tessera:crypt-test 0 img 0");
        assert!(e.contains("has 64 bytes, but the table says 32"), "{e}");
        tessera_cipher::keyring::remove("tessera:crypt-test");
        let e = err(line);
        assert!(
            e.contains("no key \"tessera:crypt-test\" in tessera's key store"),
            "{e}"
        );
    }

    #[test]
    fn sector_size_must_divide_the_row() {
        let line = format!("aes-xts-plain64 {KEY64} 0 img 0 1 sector_size:4096");
        let e = parse(&line, 0, 60).unwrap_err().to_string();
        assert!(e.contains("length (60 sectors)"), "{e}");
        let e = parse(&line, 4, 64).unwrap_err().to_string();
        assert!(e.contains("starts at sector 4"), "{e}");
        // The device offset needs no alignment, as in the kernel.
        let line = format!("aes-xts-plain64 {KEY64} 8 img 3 1 sector_size:4096");
        assert!(parse(&line, 8, 64).is_ok());
    }
}
