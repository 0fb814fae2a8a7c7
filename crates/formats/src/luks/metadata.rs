//! The full LUKS metadata: every header field of LUKS1, and LUKS2's binary header with its
//! JSON (key slots, digests, segments, config; tokens kept verbatim).
//!
//! What makes a whole header unusable (bad magic, checksum, JSON structure, segments,
//! config) is an error. What only spoils one key slot or digest (an unknown KDF, a missing
//! field) is kept as that entry's damage, so that the other key slots stay usable; unlocking
//! names it when it matters.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use tessera_block::BlockDevice;

use super::{
    base64, be16, be32, be64, decimal, malformed, object_id, text_field, verify_checksum,
    DeviceSource, LuksError, Source, LUKS1_HEADER_BYTES, LUKS1_KEYSLOT_BYTES, LUKS1_SLOT_ENABLED,
    LUKS2_BINARY_BYTES, LUKS2_HEADER_SIZES, LUKS2_MAX_KEYSLOTS, MAGIC, MAX_KEY_BYTES,
    SECONDARY_MAGIC,
};

/// A LUKS header in full, either version.
/// (LUKS1's fixed arrays make it the larger variant; it is not worth a box.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum LuksMetadata {
    Luks1(Luks1Metadata),
    Luks2(Luks2Metadata),
}

/// LUKS1's one binary header (big-endian, at byte 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Luks1Metadata {
    /// e.g. "aes".
    pub cipher_name: String,
    /// e.g. "xts-plain64".
    pub cipher_mode: String,
    /// The hash of PBKDF2, the AF splitter and the volume key digest, e.g. "sha256".
    pub hash_spec: String,
    /// Where the data starts, in 512-byte sectors (0 for a detached header).
    pub payload_offset_sectors: u32,
    pub key_bytes: u32,
    pub mk_digest: [u8; 20],
    pub mk_digest_salt: [u8; 32],
    pub mk_digest_iterations: u32,
    pub uuid: String,
    pub keyslots: [Luks1Keyslot; 8],
}

/// One LUKS1 key slot as stored (also when disabled: its offset and stripes stay set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Luks1Keyslot {
    /// 0x00AC71F3 enabled, 0x0000DEAD disabled; anything else is damage.
    pub state: u32,
    pub iterations: u32,
    pub salt: [u8; 32],
    /// In 512-byte sectors from the start of the device.
    pub key_material_offset_sectors: u32,
    pub stripes: u32,
}

impl Luks1Keyslot {
    pub fn is_active(&self) -> bool {
        self.state == LUKS1_SLOT_ENABLED
    }
}

/// LUKS2: the binary header of the copy used and its JSON metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Luks2Metadata {
    /// Binary header and JSON area of one copy, in bytes.
    pub hdr_size: u64,
    /// Grows by one at every metadata change (luksDump's "Epoch").
    pub seqid: u64,
    pub label: String,
    pub subsystem: String,
    pub uuid: String,
    pub checksum_algorithm: String,
    /// Where the copy that was used sits (0: primary).
    pub copy_offset: u64,
    /// Key slots by number; an entry that cannot be used holds the reason.
    pub keyslots: BTreeMap<u32, Result<Luks2Keyslot, String>>,
    /// Digests by number; an entry that cannot be used holds the reason.
    pub digests: BTreeMap<u32, Result<Luks2Digest, String>>,
    pub segments: BTreeMap<u32, Luks2Segment>,
    pub config: Luks2Config,
    /// The tokens object, verbatim.
    pub tokens: Map<String, Value>,
    /// The whole JSON object as read, from which changes are written (so fields tessera
    /// does not know survive).
    pub json: Map<String, Value>,
    /// Something to hear about although the header was usable (a damaged or older copy).
    pub warning: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Luks2Keyslot {
    /// "luks2" (the only type that holds a passphrase-protected key).
    pub kind: String,
    /// Bytes of the volume key this slot holds.
    pub key_size: u32,
    /// 0 ignore, 1 normal, 2 prefer; None when absent (normal).
    pub priority: Option<u32>,
    pub af: Luks2Af,
    pub area: Luks2Area,
    pub kdf: Luks2Kdf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Luks2Af {
    /// "luks1".
    pub kind: String,
    pub stripes: u32,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Luks2Area {
    /// "raw".
    pub kind: String,
    pub offset: u64,
    pub size: u64,
    /// The cipher of the key material, e.g. "aes-xts-plain64".
    pub encryption: String,
    /// Bytes of the key the KDF derives for `encryption`.
    pub key_size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Luks2Kdf {
    Pbkdf2 {
        hash: String,
        iterations: u32,
        salt: Vec<u8>,
    },
    /// `kind` is "argon2i" or "argon2id".
    Argon2 {
        kind: String,
        time: u32,
        memory_kib: u32,
        cpus: u32,
        salt: Vec<u8>,
    },
}

/// A volume key digest ("pbkdf2": PBKDF2 of the volume key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Luks2Digest {
    pub kind: String,
    pub keyslots: Vec<u32>,
    pub segments: Vec<u32>,
    pub hash: String,
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub digest: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Luks2Segment {
    /// "crypt" for encrypted data ("linear" exists mid-reencryption).
    pub kind: String,
    pub offset: u64,
    /// None: "dynamic", to the end of the device.
    pub size: Option<u64>,
    pub iv_tweak: u64,
    pub encryption: String,
    pub sector_size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Luks2Config {
    pub json_size: u64,
    pub keyslots_size: u64,
    pub flags: Vec<String>,
    /// Mandatory requirements (e.g. "online-reencrypt"): tessera refuses to use or change
    /// a device that has any, as it knows none of them.
    pub requirements: Vec<String>,
}

impl LuksMetadata {
    pub fn version(&self) -> u16 {
        match self {
            LuksMetadata::Luks1(_) => 1,
            LuksMetadata::Luks2(_) => 2,
        }
    }

    pub fn uuid(&self) -> &str {
        match self {
            LuksMetadata::Luks1(m) => &m.uuid,
            LuksMetadata::Luks2(m) => &m.uuid,
        }
    }

    /// Numbers of the key slots in use (damaged LUKS2 entries included), ascending.
    pub fn active_keyslots(&self) -> Vec<u32> {
        match self {
            LuksMetadata::Luks1(m) => (0..8u32)
                .zip(&m.keyslots)
                .filter(|(_, k)| k.is_active())
                .map(|(i, _)| i)
                .collect(),
            LuksMetadata::Luks2(m) => m.keyslots.keys().copied().collect(),
        }
    }

    /// The data cipher as dm-crypt names it.
    pub fn cipher(&self) -> String {
        match self {
            LuksMetadata::Luks1(m) => luks1_cipher(m),
            LuksMetadata::Luks2(m) => m
                .data_segment()
                .map(|(_, s)| s.encryption.clone())
                .unwrap_or_default(),
        }
    }

    pub fn data_offset_bytes(&self) -> u64 {
        match self {
            LuksMetadata::Luks1(m) => u64::from(m.payload_offset_sectors) * 512,
            LuksMetadata::Luks2(m) => m.data_segment().map_or(0, |(_, s)| s.offset),
        }
    }
}

pub(crate) fn luks1_cipher(m: &Luks1Metadata) -> String {
    if m.cipher_mode.is_empty() {
        m.cipher_name.clone()
    } else {
        format!("{}-{}", m.cipher_name, m.cipher_mode)
    }
}

impl Luks2Metadata {
    /// The data segment: the lowest-numbered one.
    pub fn data_segment(&self) -> Option<(u32, &Luks2Segment)> {
        self.segments.iter().next().map(|(id, s)| (*id, s))
    }

    /// Where the key slot areas may lie: after both header copies, `keyslots_size` bytes.
    pub fn keyslots_area(&self) -> (u64, u64) {
        let start = self.hdr_size.saturating_mul(2);
        (start, start.saturating_add(self.config.keyslots_size))
    }
}

/// Reads the full LUKS metadata of `dev`. For LUKS2 the sound copy with the higher seqid is
/// used (a warning says when a copy was damaged or older).
pub fn read_metadata(dev: &dyn BlockDevice) -> Result<LuksMetadata, LuksError> {
    let src = DeviceSource(dev);
    let start = src.bytes(0, 8)?;
    match start.as_deref() {
        Some(b) if b.get(..6) == Some(&MAGIC[..]) && be16(b, 6) == 1 => {
            luks1(&src).map(LuksMetadata::Luks1)
        }
        Some(b) if b.get(..6) == Some(&MAGIC[..]) => luks2(&src, true),
        _ => luks2(&src, false),
    }
}

fn luks1(src: &dyn Source) -> Result<Luks1Metadata, LuksError> {
    let Some(b) = src.bytes(0, LUKS1_HEADER_BYTES as u64)? else {
        return Err(malformed(
            src,
            format!("LUKS1 header truncated: it needs {LUKS1_HEADER_BYTES} bytes"),
        ));
    };
    let key_bytes = be32(&b, 108);
    if key_bytes == 0 || u64::from(key_bytes) > MAX_KEY_BYTES {
        return Err(malformed(
            src,
            format!("LUKS1 header has an impossible key size of {key_bytes} bytes"),
        ));
    }
    let array = |at: usize, out: &mut [u8]| out.copy_from_slice(&b[at..at + out.len()]);
    let mut mk_digest = [0u8; 20];
    array(112, &mut mk_digest);
    let mut mk_digest_salt = [0u8; 32];
    array(132, &mut mk_digest_salt);
    let keyslots = std::array::from_fn(|slot| {
        let at = 208 + slot * LUKS1_KEYSLOT_BYTES;
        let mut salt = [0u8; 32];
        array(at + 8, &mut salt);
        Luks1Keyslot {
            state: be32(&b, at),
            iterations: be32(&b, at + 4),
            salt,
            key_material_offset_sectors: be32(&b, at + 40),
            stripes: be32(&b, at + 44),
        }
    });
    Ok(Luks1Metadata {
        cipher_name: text_field(&b[8..40]),
        cipher_mode: text_field(&b[40..72]),
        hash_spec: text_field(&b[72..104]),
        payload_offset_sectors: be32(&b, 104),
        key_bytes,
        mk_digest,
        mk_digest_salt,
        mk_digest_iterations: be32(&b, 164),
        uuid: text_field(&b[168..208]),
        keyslots,
    })
}

fn luks2(src: &dyn Source, primary_magic: bool) -> Result<LuksMetadata, LuksError> {
    let mut failures = Vec::new();
    let mut sound: Vec<Luks2Metadata> = Vec::new();
    let mut places: Vec<u64> = Vec::new();
    if primary_magic {
        match copy(src, 0)? {
            Ok(m) => {
                places.push(m.hdr_size);
                sound.push(m);
            }
            Err((reason, size)) => {
                failures.push(format!("primary header: {reason}"));
                places.extend(size);
            }
        }
    }
    // The secondary follows the primary; if the primary is unusable, it is also looked for
    // at every size a primary may have.
    let primary_sound = !sound.is_empty();
    if !primary_sound {
        for size in LUKS2_HEADER_SIZES {
            if !places.contains(&size) {
                places.push(size);
            }
        }
    }
    for at in places {
        let Some(start) = src.bytes(at, 8)? else {
            continue;
        };
        if start.get(..6) != Some(&SECONDARY_MAGIC[..]) || be16(&start, 6) != 2 {
            if primary_sound {
                failures.push(format!("no secondary header at byte {at}"));
            }
            continue;
        }
        match copy(src, at)? {
            Ok(m) => {
                sound.push(m);
                break;
            }
            Err((reason, _)) => failures.push(format!("secondary header at byte {at}: {reason}")),
        }
    }
    let newest = sound.iter().map(|m| m.seqid).max();
    let Some(mut chosen) = sound
        .iter()
        .position(|m| Some(m.seqid) == newest)
        .map(|i| sound.swap_remove(i))
    else {
        return Err(if failures.is_empty() {
            LuksError::NotLuks {
                device: src.name().to_string(),
            }
        } else {
            malformed(
                src,
                format!("no usable LUKS2 header: {}", failures.join("; ")),
            )
        });
    };
    if let Some(other) = sound.first() {
        if other.seqid != chosen.seqid {
            failures.push(format!(
                "the copy at byte {} is older (seqid {} against {})",
                other.copy_offset, other.seqid, chosen.seqid
            ));
        }
    }
    if !failures.is_empty() {
        chosen.warning = Some(format!(
            "LUKS2 header copy at byte {} used; {}",
            chosen.copy_offset,
            failures.join("; ")
        ));
    }
    Ok(LuksMetadata::Luks2(chosen))
}

/// One LUKS2 copy at `at`: the reason it is unusable and, if known, its header size.
type CopyResult = Result<Luks2Metadata, (String, Option<u64>)>;

fn copy(src: &dyn Source, at: u64) -> Result<CopyResult, LuksError> {
    let Some(binary) = src.bytes(at, LUKS2_BINARY_BYTES as u64)? else {
        return Ok(Err((
            "truncated: the 4096-byte binary header runs past the end".into(),
            None,
        )));
    };
    let version = be16(&binary, 6);
    if version != 2 {
        return Ok(Err((
            format!("LUKS version {version} is not supported (only 1 and 2 are)"),
            None,
        )));
    }
    let hdr_size = be64(&binary, 8);
    if !LUKS2_HEADER_SIZES.contains(&hdr_size) {
        return Ok(Err((
            format!("header size {hdr_size} is not a power of two from 16 KiB to 4 MiB"),
            None,
        )));
    }
    let hdr_offset = be64(&binary, 256);
    if hdr_offset != at {
        return Ok(Err((
            format!("it records its own offset as byte {hdr_offset}"),
            Some(hdr_size),
        )));
    }
    let Some(whole) = src.bytes(at, hdr_size)? else {
        return Ok(Err((
            format!("truncated: its {hdr_size} bytes run past the end"),
            Some(hdr_size),
        )));
    };
    if let Err(reason) = verify_checksum(&whole) {
        return Ok(Err((reason, Some(hdr_size))));
    }
    let parsed = whole
        .get(LUKS2_BINARY_BYTES..)
        .ok_or_else(|| "no JSON area".to_string())
        .and_then(|area| json(area, hdr_size));
    let (json, keyslots, digests, segments, config, tokens) = match parsed {
        Ok(p) => p,
        Err(reason) => return Ok(Err((format!("JSON metadata: {reason}"), Some(hdr_size)))),
    };
    Ok(Ok(Luks2Metadata {
        hdr_size,
        seqid: be64(&whole, 16),
        label: text_field(&whole[24..72]),
        subsystem: text_field(&whole[208..256]),
        uuid: text_field(&whole[168..208]),
        checksum_algorithm: text_field(&whole[72..104]),
        copy_offset: at,
        keyslots,
        digests,
        segments,
        config,
        tokens,
        json,
        warning: None,
    }))
}

type Parsed = (
    Map<String, Value>,
    BTreeMap<u32, Result<Luks2Keyslot, String>>,
    BTreeMap<u32, Result<Luks2Digest, String>>,
    BTreeMap<u32, Luks2Segment>,
    Luks2Config,
    Map<String, Value>,
);

fn json(area: &[u8], hdr_size: u64) -> Result<Parsed, String> {
    let end = area
        .iter()
        .position(|&c| c == 0)
        .ok_or("the JSON text is not NUL-terminated inside its area")?;
    let root: Value = serde_json::from_slice(&area[..end]).map_err(|e| e.to_string())?;
    let Value::Object(root) = root else {
        return Err("the top level is not an object".into());
    };
    let object = |key: &str| -> Result<&Map<String, Value>, String> {
        root.get(key)
            .and_then(Value::as_object)
            .ok_or(format!("no \"{key}\" object"))
    };

    let config = object("config")?;
    let json_size = decimal(config.get("json_size"), "config.json_size")?;
    let area_size = hdr_size.saturating_sub(LUKS2_BINARY_BYTES as u64);
    if json_size != area_size {
        return Err(format!(
            "config.json_size {json_size} disagrees with the header size (JSON area {area_size})"
        ));
    }
    let keyslots_size = decimal(config.get("keyslots_size"), "config.keyslots_size")?;
    if keyslots_size % 4096 != 0 {
        return Err(format!(
            "config.keyslots_size {keyslots_size} is not a multiple of 4096"
        ));
    }
    let strings = |v: Option<&Value>, what: &str| -> Result<Vec<String>, String> {
        match v {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|s| s.as_str().map(str::to_string))
                .collect::<Option<Vec<String>>>()
                .ok_or(format!("{what} holds something other than strings")),
            Some(_) => Err(format!("{what} is not an array")),
        }
    };
    let flags = strings(config.get("flags"), "config.flags")?;
    let requirements = match config.get("requirements") {
        None => Vec::new(),
        Some(Value::Object(r)) => strings(r.get("mandatory"), "config.requirements.mandatory")?,
        Some(_) => return Err("config.requirements is not an object".into()),
    };
    let config = Luks2Config {
        json_size,
        keyslots_size,
        flags,
        requirements,
    };

    let mut keyslots = BTreeMap::new();
    for (key, value) in object("keyslots")? {
        let id = object_id(key, "keyslot", Some(LUKS2_MAX_KEYSLOTS))?;
        keyslots.insert(id, keyslot(value));
    }
    let mut digests = BTreeMap::new();
    for (key, value) in object("digests")? {
        let id = object_id(key, "digest", None)?;
        digests.insert(id, digest(value));
    }
    let mut segments = BTreeMap::new();
    for (key, value) in object("segments")? {
        let id = object_id(key, "segment", None)?;
        segments.insert(
            id,
            segment(value).map_err(|e| format!("segment {id}: {e}"))?,
        );
    }
    if segments.is_empty() {
        return Err("no data segment".into());
    }
    let tokens = object("tokens")?.clone();
    Ok((root, keyslots, digests, segments, config, tokens))
}

/// A JSON object's fields, each fetched with the name of what is missing or wrong.
struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    fn of(value: &'a Value, what: &str) -> Result<Self, String> {
        value
            .as_object()
            .map(Fields)
            .ok_or(format!("{what} is not an object"))
    }

    fn object(&self, key: &str) -> Result<Fields<'a>, String> {
        self.0
            .get(key)
            .ok_or(format!("no \"{key}\""))
            .and_then(|v| Fields::of(v, key))
    }

    fn str(&self, key: &str) -> Result<&'a str, String> {
        self.0
            .get(key)
            .and_then(Value::as_str)
            .ok_or(format!("no \"{key}\" string"))
    }

    fn u32(&self, key: &str) -> Result<u32, String> {
        let v = self.0.get(key).ok_or(format!("no \"{key}\""))?;
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(format!("\"{key}\" is {v}, not a number from 0 to 2^32-1"))
    }

    fn decimal(&self, key: &str) -> Result<u64, String> {
        decimal(self.0.get(key), &format!("\"{key}\""))
    }

    fn base64(&self, key: &str) -> Result<Vec<u8>, String> {
        base64::decode(self.str(key)?).ok_or(format!("\"{key}\" is not base64"))
    }

    fn ids(&self, key: &str) -> Result<Vec<u32>, String> {
        self.0
            .get(key)
            .and_then(Value::as_array)
            .ok_or(format!("no \"{key}\" array"))?
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or(format!("\"{key}\" holds a non-string"))
                    .and_then(|s| object_id(s, key, None))
            })
            .collect()
    }
}

fn keyslot(value: &Value) -> Result<Luks2Keyslot, String> {
    let f = Fields::of(value, "the keyslot")?;
    let kind = f.str("type")?.to_string();
    if kind != "luks2" {
        return Err(format!("keyslot type '{kind}' is not supported"));
    }
    let key_size = f.u32("key_size")?;
    let priority = match f.0.get("priority") {
        None => None,
        Some(_) => Some(f.u32("priority")?),
    };
    let af = f.object("af")?;
    let area = f.object("area")?;
    let kdf = f.object("kdf")?;
    let kdf_kind = kdf.str("type")?;
    let kdf = match kdf_kind {
        "pbkdf2" => Luks2Kdf::Pbkdf2 {
            hash: kdf.str("hash")?.to_string(),
            iterations: kdf.u32("iterations")?,
            salt: kdf.base64("salt")?,
        },
        "argon2i" | "argon2id" => Luks2Kdf::Argon2 {
            kind: kdf_kind.to_string(),
            time: kdf.u32("time")?,
            memory_kib: kdf.u32("memory")?,
            cpus: kdf.u32("cpus")?,
            salt: kdf.base64("salt")?,
        },
        other => return Err(format!("key derivation '{other}' is not supported")),
    };
    Ok(Luks2Keyslot {
        kind,
        key_size,
        priority,
        af: Luks2Af {
            kind: af.str("type")?.to_string(),
            stripes: af.u32("stripes")?,
            hash: af.str("hash")?.to_string(),
        },
        area: Luks2Area {
            kind: area.str("type")?.to_string(),
            offset: area.decimal("offset")?,
            size: area.decimal("size")?,
            encryption: area.str("encryption")?.to_string(),
            key_size: area.u32("key_size")?,
        },
        kdf,
    })
}

fn digest(value: &Value) -> Result<Luks2Digest, String> {
    let f = Fields::of(value, "the digest")?;
    let kind = f.str("type")?.to_string();
    if kind != "pbkdf2" {
        return Err(format!("digest type '{kind}' is not supported"));
    }
    Ok(Luks2Digest {
        kind,
        keyslots: f.ids("keyslots")?,
        segments: f.ids("segments")?,
        hash: f.str("hash")?.to_string(),
        iterations: f.u32("iterations")?,
        salt: f.base64("salt")?,
        digest: f.base64("digest")?,
    })
}

fn segment(value: &Value) -> Result<Luks2Segment, String> {
    let f = Fields::of(value, "the segment")?;
    let kind = f.str("type")?.to_string();
    let offset = f.decimal("offset")?;
    let size = match f.0.get("size") {
        Some(Value::String(s)) if s == "dynamic" => None,
        _ => Some(f.decimal("size")?),
    };
    let (iv_tweak, encryption, sector_size) = if kind == "crypt" {
        let iv_tweak = match f.0.get("iv_tweak") {
            None => 0,
            Some(_) => f.decimal("iv_tweak")?,
        };
        let sector_size = match f.0.get("sector_size") {
            None => 512,
            Some(_) => f.u32("sector_size")?,
        };
        if !matches!(sector_size, 512 | 1024 | 2048 | 4096) {
            return Err(format!(
                "sector size {sector_size} is not 512, 1024, 2048 or 4096"
            ));
        }
        (iv_tweak, f.str("encryption")?.to_string(), sector_size)
    } else {
        (0, String::new(), 512)
    };
    Ok(Luks2Segment {
        kind,
        offset,
        size,
        iv_tweak,
        encryption,
        sector_size,
    })
}
