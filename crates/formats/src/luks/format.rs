//! Formatting a device as LUKS1 or LUKS2 with the layout cryptsetup 2.6 writes.
//!
//! LUKS2: two 16 KiB header copies (4 KiB binary header, 12 KiB JSON), then the key slots
//! area up to the data offset (16 MiB by default), each key slot's area `key_bytes × 4000`
//! rounded up to 4 KiB, allocated from the start of the key slots area.
//! LUKS1: the header at byte 0, key slot i's material at sector 8 + i × (its sectors rounded
//! up to 4 KiB), the data at the end of the key material rounded up to 1 MiB.

use serde_json::{json, Map, Value};
use tessera_block::BlockDevice;
use tessera_cipher::{
    af, random_bytes, Argon2Variant, CipherSpec, Hash, Kdf, KdfLimits, SecretBytes, SectorCipher,
};

use super::metadata::{Luks1Keyslot, Luks1Metadata};
use super::unlock::{material_bytes, refused, MATERIAL_SECTOR, STRIPES};
use super::write::{commit_luks2, write_luks1, Luks2Binary};
use super::{base64, read_header, read_metadata, LuksError, LuksMetadata};
use super::{LUKS1_SLOT_DISABLED, LUKS1_SLOT_ENABLED};

/// Size of one LUKS2 header copy as cryptsetup writes it.
pub(crate) const LUKS2_HDR_SIZE: u64 = 16384;
/// Iterations of the volume key digest. The digest guards a random key that no one can
/// guess, so its cost only slows every unlock down; 1000 is the least cryptsetup writes.
pub(crate) const DIGEST_ITERATIONS: u32 = 1000;
/// PBKDF2 iterations when none are given (cryptsetup calibrates to 2 s; tessera does not
/// benchmark, and this is about a second of SHA-256 work on a current CPU).
pub const DEFAULT_PBKDF2_ITERATIONS: u32 = 1_000_000;
const SALT_BYTES: usize = 32;
const LUKS1_ALIGN_KEYSLOTS: u64 = 4096;
const LUKS1_ALIGN_PAYLOAD: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct FormatOptions {
    /// 1 or 2.
    pub version: u16,
    /// dm-crypt's name, e.g. "aes-xts-plain64".
    pub cipher: String,
    pub key_bytes: u32,
    /// The anti-forensic splitter's and the digest's hash (LUKS1: also PBKDF2's).
    pub hash: Hash,
    /// None: [`FormatOptions::default_kdf`].
    pub pbkdf: Option<Kdf>,
    /// LUKS2 only: 512, 1024, 2048 or 4096.
    pub sector_bytes: u32,
    /// LUKS2 only; "" for none.
    pub label: String,
    /// LUKS2 only; "" for none.
    pub subsystem: String,
    /// None: a random (version 4) UUID.
    pub uuid: Option<String>,
    /// None: cryptsetup's (LUKS2 16 MiB; LUKS1 the key material's end rounded up to 1 MiB,
    /// 2 MiB for 512-bit keys).
    pub data_offset_bytes: Option<u64>,
    pub key_slot: u32,
    /// None: a random key.
    pub volume_key: Option<SecretBytes>,
    /// Format over an existing LUKS header.
    pub force: bool,
}

impl Default for FormatOptions {
    fn default() -> Self {
        FormatOptions {
            version: 2,
            cipher: "aes-xts-plain64".into(),
            key_bytes: 64,
            hash: Hash::Sha256,
            pbkdf: None,
            sector_bytes: 512,
            label: String::new(),
            subsystem: String::new(),
            uuid: None,
            data_offset_bytes: None,
            key_slot: 0,
            volume_key: None,
            force: false,
        }
    }
}

impl FormatOptions {
    /// cryptsetup's defaults without its benchmark: LUKS2 argon2id with 4 passes over
    /// 1 GiB (at most half the memory of this machine) in up to 4 lanes; LUKS1 PBKDF2 with
    /// the header's hash.
    pub fn default_kdf(version: u16, hash: Hash) -> Kdf {
        if version == 1 {
            return Kdf::Pbkdf2 {
                hash,
                iterations: DEFAULT_PBKDF2_ITERATIONS,
            };
        }
        let half_memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(1 << 20, |kib| kib / 2);
        let lanes = std::thread::available_parallelism().map_or(1, |n| n.get().min(4)) as u32;
        Kdf::Argon2 {
            variant: Argon2Variant::Id,
            time: 4,
            memory_kib: half_memory.clamp(32 * 1024, 1 << 20) as u32,
            lanes,
        }
    }
}

/// A version 4 UUID from the system's random number generator.
pub(crate) fn random_uuid() -> Result<String, tessera_cipher::CipherError> {
    let mut b = [0u8; 16];
    random_bytes(&mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ))
}

pub(crate) fn cipher_err(
    dev: &dyn BlockDevice,
    what: &str,
) -> impl Fn(tessera_cipher::CipherError) -> LuksError {
    let device = dev.name().to_string();
    let what = what.to_string();
    move |source| LuksError::Cipher {
        device: device.clone(),
        what: what.clone(),
        source,
    }
}

/// Key material for `volume_key` under `passphrase`: split, encrypted with the slot's
/// derived key, padded to whole sectors.
pub(crate) struct Material {
    pub bytes: SecretBytes,
    pub salt: [u8; SALT_BYTES],
}

pub(crate) fn make_material(
    dev: &dyn BlockDevice,
    volume_key: &[u8],
    passphrase: &[u8],
    kdf: &Kdf,
    spec: &CipherSpec,
    area_key_bytes: usize,
    af_hash: Hash,
) -> Result<Material, LuksError> {
    let mut salt = [0u8; SALT_BYTES];
    random_bytes(&mut salt).map_err(cipher_err(dev, "salt"))?;
    let mut derived = SecretBytes::zeroed(area_key_bytes);
    kdf.derive(passphrase, &salt, &mut derived)
        .map_err(cipher_err(dev, "key derivation"))?;
    let split = af::split(volume_key, STRIPES, af_hash).map_err(cipher_err(dev, "key split"))?;
    let mut bytes = SecretBytes::zeroed(material_bytes(volume_key.len()));
    let n = split.len().min(bytes.len());
    bytes[..n].copy_from_slice(&split[..n]);
    SectorCipher::new(spec, &derived)
        .and_then(|c| c.encrypt(&mut bytes, MATERIAL_SECTOR, 0, 1))
        .map_err(cipher_err(dev, "key material encryption"))?;
    Ok(Material { bytes, salt })
}

/// The JSON of a LUKS2 key slot.
#[allow(clippy::too_many_arguments)]
pub(crate) fn keyslot_json(
    key_bytes: usize,
    af_hash: Hash,
    area_offset: u64,
    area_size: u64,
    area_cipher: &str,
    area_key_bytes: usize,
    kdf: &Kdf,
    salt: &[u8],
) -> Value {
    let kdf = match *kdf {
        Kdf::Pbkdf2 { hash, iterations } => json!({
            "type": "pbkdf2",
            "hash": hash.name(),
            "iterations": iterations,
            "salt": base64::encode(salt),
        }),
        Kdf::Argon2 {
            variant,
            time,
            memory_kib,
            lanes,
        } => json!({
            "type": variant.name(),
            "time": time,
            "memory": memory_kib,
            "cpus": lanes,
            "salt": base64::encode(salt),
        }),
    };
    json!({
        "type": "luks2",
        "key_size": key_bytes,
        "af": {"type": "luks1", "stripes": STRIPES, "hash": af_hash.name()},
        "area": {
            "type": "raw",
            "offset": area_offset.to_string(),
            "size": area_size.to_string(),
            "encryption": area_cipher,
            "key_size": area_key_bytes,
        },
        "kdf": kdf,
    })
}

/// A LUKS2 key slot area's size: the key material rounded up to 4 KiB.
pub(crate) fn luks2_area_bytes(key_bytes: usize) -> u64 {
    (key_bytes as u64 * u64::from(STRIPES)).div_ceil(4096) * 4096
}

/// The PBKDF2 digest of a volume key: (salt, digest).
pub(crate) fn volume_key_digest(
    dev: &dyn BlockDevice,
    key: &[u8],
    hash: Hash,
    len: usize,
) -> Result<([u8; SALT_BYTES], Vec<u8>), LuksError> {
    let mut salt = [0u8; SALT_BYTES];
    random_bytes(&mut salt).map_err(cipher_err(dev, "salt"))?;
    let mut digest = vec![0u8; len];
    Kdf::Pbkdf2 {
        hash,
        iterations: DIGEST_ITERATIONS,
    }
    .derive(key, &salt, &mut digest)
    .map_err(cipher_err(dev, "volume key digest"))?;
    Ok((salt, digest))
}

/// Checks a KDF chosen for a new key slot (the same checks as one read from a disk, with
/// cryptsetup's maxima).
pub(crate) fn check_new_kdf(dev: &dyn BlockDevice, kdf: &Kdf) -> Result<(), LuksError> {
    kdf.check(&KdfLimits::default())
        .map_err(cipher_err(dev, "the key derivation asked for"))
}

/// Formats `dev` as LUKS with one key slot opened by `passphrase`; returns the metadata as
/// read back.
pub fn format(
    dev: &dyn BlockDevice,
    passphrase: &[u8],
    opts: &FormatOptions,
) -> Result<LuksMetadata, LuksError> {
    if opts.version != 1 && opts.version != 2 {
        return Err(refused(
            dev,
            format!("LUKS version {} does not exist (1 or 2)", opts.version),
        ));
    }
    let spec = CipherSpec::parse(&opts.cipher).map_err(cipher_err(dev, "cannot format"))?;
    let key_bytes = opts.key_bytes as usize;
    spec.check_key_bytes(key_bytes)
        .map_err(cipher_err(dev, "cannot format"))?;
    let kdf = opts
        .pbkdf
        .unwrap_or_else(|| FormatOptions::default_kdf(opts.version, opts.hash));
    check_new_kdf(dev, &kdf)?;
    if !opts.force {
        let existing = match read_header(dev) {
            Ok(Some(h)) => Some(format!("a LUKS{} header (UUID {})", h.version, h.uuid)),
            Ok(None) => None,
            Err(LuksError::Block(e)) => return Err(LuksError::Block(e)),
            Err(e) => Some(format!("a damaged LUKS header ({e})")),
        };
        if let Some(what) = existing {
            return Err(refused(
                dev,
                format!("it already holds {what}; use --force to overwrite it"),
            ));
        }
    }
    let volume_key = match &opts.volume_key {
        Some(k) if k.len() != key_bytes => {
            return Err(refused(
                dev,
                format!(
                    "the volume key given has {} bytes, the key size is {key_bytes}",
                    k.len()
                ),
            ))
        }
        Some(k) => k.clone(),
        None => SecretBytes::random(key_bytes).map_err(cipher_err(dev, "volume key"))?,
    };
    let uuid = match &opts.uuid {
        Some(u) => u.clone(),
        None => random_uuid().map_err(cipher_err(dev, "UUID"))?,
    };
    if opts.version == 1 {
        format_luks1(dev, passphrase, opts, &spec, kdf, &volume_key, uuid)
    } else {
        format_luks2(dev, passphrase, opts, kdf, &volume_key, uuid)
    }
}

fn too_small(dev: &dyn BlockDevice, version: u16, needed: u64) -> LuksError {
    refused(
        dev,
        format!(
            "the device ({} bytes) is too small for LUKS{version}: its header area alone takes {needed} bytes",
            dev.size_bytes()
        ),
    )
}

fn format_luks1(
    dev: &dyn BlockDevice,
    passphrase: &[u8],
    opts: &FormatOptions,
    spec: &CipherSpec,
    kdf: Kdf,
    volume_key: &[u8],
    uuid: String,
) -> Result<LuksMetadata, LuksError> {
    let iterations = match kdf {
        Kdf::Pbkdf2 { hash, iterations } if hash == opts.hash => iterations,
        Kdf::Pbkdf2 { hash, .. } => {
            return Err(refused(
                dev,
                format!(
                "LUKS1 uses one hash for everything: PBKDF2 with {hash} does not go with --hash {}",
                opts.hash
            ),
            ))
        }
        Kdf::Argon2 { .. } => {
            return Err(refused(
                dev,
                "LUKS1 knows only PBKDF2, not argon2; use LUKS2 for argon2",
            ))
        }
    };
    if opts.sector_bytes != 512 {
        return Err(refused(dev, "LUKS1 encrypts 512-byte sectors only"));
    }
    if !opts.label.is_empty() || !opts.subsystem.is_empty() {
        return Err(refused(dev, "LUKS1 has no label or subsystem; use LUKS2"));
    }
    if opts.key_slot >= 8 {
        return Err(refused(
            dev,
            format!("LUKS1 has key slots 0 to 7, not {}", opts.key_slot),
        ));
    }
    let key_bytes = volume_key.len();
    let stride_sectors = (material_bytes(key_bytes) as u64).div_ceil(LUKS1_ALIGN_KEYSLOTS)
        * (LUKS1_ALIGN_KEYSLOTS / 512);
    let first_sector = LUKS1_ALIGN_KEYSLOTS / 512;
    let material_end = (first_sector + 8 * stride_sectors) * 512;
    let data_offset = opts
        .data_offset_bytes
        .unwrap_or(material_end.div_ceil(LUKS1_ALIGN_PAYLOAD) * LUKS1_ALIGN_PAYLOAD);
    if data_offset < material_end || data_offset % 512 != 0 || data_offset / 512 > u32::MAX.into() {
        return Err(refused(
            dev,
            format!(
                "data offset {data_offset} is not a whole number of 512-byte sectors at or after the key material's end (byte {material_end})"
            ),
        ));
    }
    if dev.size_bytes() <= data_offset {
        return Err(too_small(dev, 1, data_offset));
    }
    let (mk_digest_salt, digest) = volume_key_digest(dev, volume_key, opts.hash, 20)?;
    let mut mk_digest = [0u8; 20];
    mk_digest.copy_from_slice(&digest);
    let slot_offset = |i: u64| (first_sector + i * stride_sectors) as u32;
    let material = make_material(
        dev, volume_key, passphrase, &kdf, spec, key_bytes, opts.hash,
    )?;
    let keyslots = std::array::from_fn(|i| {
        let active = i as u32 == opts.key_slot;
        Luks1Keyslot {
            state: if active {
                LUKS1_SLOT_ENABLED
            } else {
                LUKS1_SLOT_DISABLED
            },
            iterations: if active { iterations } else { 0 },
            salt: if active { material.salt } else { [0; 32] },
            key_material_offset_sectors: slot_offset(i as u64),
            stripes: STRIPES,
        }
    });
    let meta = Luks1Metadata {
        cipher_name: spec.cipher().to_string(),
        cipher_mode: spec.chain_and_iv(),
        hash_spec: opts.hash.name().to_string(),
        payload_offset_sectors: (data_offset / 512) as u32,
        key_bytes: key_bytes as u32,
        mk_digest,
        mk_digest_salt,
        mk_digest_iterations: DIGEST_ITERATIONS,
        uuid,
        keyslots,
    };
    // Checked before anything is written: the texts fit their fields.
    super::write::luks1_header_bytes(&meta, &mut [0u8; super::write::LUKS1_HEADER_REGION])
        .map_err(|e| refused(dev, e))?;
    dev.write_zeroes(0, data_offset)?;
    let at = u64::from(slot_offset(u64::from(opts.key_slot))) * 512;
    dev.write_at(&material.bytes, at)?;
    dev.flush()?;
    write_luks1(dev, &meta)?;
    read_metadata(dev)
}

fn format_luks2(
    dev: &dyn BlockDevice,
    passphrase: &[u8],
    opts: &FormatOptions,
    kdf: Kdf,
    volume_key: &[u8],
    uuid: String,
) -> Result<LuksMetadata, LuksError> {
    let sector = opts.sector_bytes;
    if !matches!(sector, 512 | 1024 | 2048 | 4096) {
        return Err(refused(
            dev,
            format!("sector size {sector} is not 512, 1024, 2048 or 4096"),
        ));
    }
    if opts.key_slot >= 32 {
        return Err(refused(
            dev,
            format!("LUKS2 has key slots 0 to 31, not {}", opts.key_slot),
        ));
    }
    let key_bytes = volume_key.len();
    let area_offset = 2 * LUKS2_HDR_SIZE;
    let area_size = luks2_area_bytes(key_bytes);
    let data_offset = opts.data_offset_bytes.unwrap_or(16 << 20);
    if data_offset < area_offset + area_size || data_offset % 4096 != 0 {
        return Err(refused(
            dev,
            format!(
                "data offset {data_offset} is not a multiple of 4096 at or after the first key slot's area (byte {})",
                area_offset + area_size
            ),
        ));
    }
    if dev.size_bytes() <= data_offset {
        return Err(too_small(dev, 2, data_offset));
    }
    let spec = CipherSpec::parse(&opts.cipher).map_err(cipher_err(dev, "cannot format"))?;
    let material = make_material(
        dev, volume_key, passphrase, &kdf, &spec, key_bytes, opts.hash,
    )?;
    let (digest_salt, digest) =
        volume_key_digest(dev, volume_key, opts.hash, opts.hash.output_bytes())?;
    let slot = opts.key_slot.to_string();
    let mut keyslots = Map::new();
    keyslots.insert(
        slot.clone(),
        keyslot_json(
            key_bytes,
            opts.hash,
            area_offset,
            area_size,
            &opts.cipher,
            key_bytes,
            &kdf,
            &material.salt,
        ),
    );
    let root = json!({
        "keyslots": keyslots,
        "tokens": {},
        "segments": {"0": {
            "type": "crypt",
            "offset": data_offset.to_string(),
            "size": "dynamic",
            "iv_tweak": "0",
            "encryption": opts.cipher,
            "sector_size": sector,
        }},
        "digests": {"0": {
            "type": "pbkdf2",
            "keyslots": [slot],
            "segments": ["0"],
            "hash": opts.hash.name(),
            "iterations": DIGEST_ITERATIONS,
            "salt": base64::encode(&digest_salt),
            "digest": base64::encode(&digest),
        }},
        "config": {
            "json_size": (LUKS2_HDR_SIZE - 4096).to_string(),
            "keyslots_size": (data_offset - area_offset).to_string(),
        },
    });
    let root = root.as_object().cloned().unwrap_or_default();
    let binary = Luks2Binary {
        hdr_size: LUKS2_HDR_SIZE,
        seqid: 1,
        label: &opts.label,
        subsystem: &opts.subsystem,
        uuid: &uuid,
    };
    // Checked before anything is written: the texts fit their fields.
    super::write::luks2_copy_bytes(&binary, "{}", 0).map_err(|e| refused(dev, e))?;
    dev.write_zeroes(0, data_offset)?;
    dev.write_at(&material.bytes, area_offset)?;
    dev.flush()?;
    commit_luks2(dev, &binary, &root)?;
    read_metadata(dev)
}
