//! LUKS1 and LUKS2: headers decoded to recognise and describe an encrypted device (its
//! UUID, label, cipher, key size, where the data lies and which key slots are in use:
//! [`read_header`], [`parse`]), and the full metadata ([`read_metadata`]) with what is done
//! with it: unlocking ([`unlock`]), formatting ([`format()`]), adding and removing
//! passphrases ([`add_key`], [`remove_key`], [`kill_slot`]) and a `luksDump`-like listing
//! ([`dump`]). The on-disk formats are the ones cryptsetup reads and writes.
//!
//! LUKS1 is one binary header at byte 0 (big-endian fields, 8 key slots). LUKS2 is a 4 KiB
//! binary header followed by a JSON area, kept twice: the primary copy at byte 0 and the
//! secondary right after it (at the primary's `hdr_size`), each checksummed over its whole
//! `hdr_size`. A damaged primary is survived by reading the secondary, as cryptsetup does.
//! Every field comes from the disk, so every one is bounds-checked and nothing panics.

use std::borrow::Cow;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256, Sha512};
use tessera_block::{BlockDevice, BlockError};
use tessera_cipher::CipherError;

mod base64;
mod dump;
mod format;
mod keys;
mod metadata;
mod unlock;
mod write;

pub use dump::dump;
pub use format::{format, FormatOptions};
pub use keys::{add_key, kill_slot, remove_key, AddKeyOptions, RemoveKeyOptions};
pub use metadata::{
    read_metadata, Luks1Keyslot, Luks1Metadata, Luks2Af, Luks2Area, Luks2Config, Luks2Digest,
    Luks2Kdf, Luks2Keyslot, Luks2Metadata, Luks2Segment, LuksMetadata,
};
pub use unlock::{unlock, UnlockOptions, Unlocked};

/// What a LUKS header says about the device it sits on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuksHeader {
    /// 1 or 2.
    pub version: u16,
    pub uuid: String,
    /// LUKS2 only; "" for LUKS1 and for an unlabelled LUKS2 device.
    pub label: String,
    /// LUKS2 only; "" for LUKS1.
    pub subsystem: String,
    /// Cipher and mode as dm-crypt names them, e.g. "aes-xts-plain64".
    pub cipher: String,
    /// Size of the volume key in bytes (64 for aes-xts with 512-bit keys).
    pub key_bytes: u32,
    /// Where the encrypted data starts.
    pub data_offset_bytes: u64,
    /// How much data there is; None when it runs to the end of the device ("dynamic").
    pub data_size_bytes: Option<u64>,
    /// Numbers of the key slots in use, ascending.
    pub active_keyslots: Vec<u32>,
    /// LUKS2: `hdr_size` (binary header and JSON area, one copy). LUKS1: the region before
    /// the payload (header and key material).
    pub header_bytes: u64,
    /// Something the caller should hear about although the header was usable, e.g. that the
    /// primary LUKS2 header is damaged and the secondary was used.
    pub warning: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LuksError {
    /// The header (or both LUKS2 copies) cannot be used.
    #[error("{device}: {what}")]
    Malformed { device: String, what: String },
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error("{device} holds no LUKS header")]
    NotLuks { device: String },
    /// No key slot tried opens with the passphrase. `slot` is the one asked for, if any;
    /// `skipped` says which slots could not be tried and why.
    #[error("{}", wrong_passphrase(device, *slot, skipped))]
    WrongPassphrase {
        device: String,
        slot: Option<u32>,
        skipped: Vec<String>,
    },
    /// One key slot cannot be used: damaged, unsupported, too costly or not in use.
    #[error("{device}: key slot {slot}: {what}")]
    Slot {
        device: String,
        slot: u32,
        what: String,
    },
    /// Every key slot that could open the device is unusable, for the reasons given.
    #[error("{device}: no key slot can be tried: {}", reasons.join("; "))]
    NoUsableSlot {
        device: String,
        reasons: Vec<String>,
    },
    /// The operation is refused as asked (existing LUKS header, last key slot, too small a
    /// device, an unsupported option); the text says what would make it go through.
    #[error("{device}: {what}")]
    Refused { device: String, what: String },
    #[error("{device}: {what}: {source}")]
    Cipher {
        device: String,
        what: String,
        source: CipherError,
    },
}

fn wrong_passphrase(device: &str, slot: Option<u32>, skipped: &[String]) -> String {
    let mut text = match slot {
        Some(slot) => format!("key slot {slot} of {device} does not open with this passphrase"),
        None => format!("no key slot of {device} opens with this passphrase"),
    };
    if !skipped.is_empty() {
        text.push_str(&format!(" (not tried: {})", skipped.join("; ")));
    }
    text
}

const MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
const SECONDARY_MAGIC: &[u8; 6] = b"SKUL\xba\xbe";

const LUKS1_HEADER_BYTES: usize = 208 + LUKS1_KEYSLOTS * LUKS1_KEYSLOT_BYTES;
const LUKS1_KEYSLOTS: usize = 8;
const LUKS1_KEYSLOT_BYTES: usize = 48;
const LUKS1_SLOT_ENABLED: u32 = 0x00ac_71f3;
const LUKS1_SLOT_DISABLED: u32 = 0x0000_dead;
/// No cipher takes a longer key; a larger value is damage, not a key size.
const MAX_KEY_BYTES: u64 = 1024;

const LUKS2_BINARY_BYTES: usize = 4096;
/// The `hdr_size` values cryptsetup accepts (16 KiB to 4 MiB, powers of two). The same
/// list gives the places where a secondary header may sit, since it follows a primary of
/// one of these sizes.
const LUKS2_HEADER_SIZES: [u64; 9] = [
    0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000,
];
const LUKS2_MAX_KEYSLOTS: u32 = 32;
const CSUM_AT: usize = 448;
const CSUM_BYTES: usize = 64;

/// Reads the LUKS header of `dev`: Ok(None) when there is no LUKS magic at byte 0 and no
/// LUKS2 secondary header at any of its standard places.
pub fn read_header(dev: &dyn BlockDevice) -> Result<Option<LuksHeader>, LuksError> {
    decode(&DeviceSource(dev))
}

/// The same decoding over the first bytes of a device held in memory. Bytes past the end
/// of `bytes` count as absent, so a LUKS2 secondary header is only found if it is inside.
pub fn parse(device_name: &str, bytes: &[u8]) -> Result<Option<LuksHeader>, LuksError> {
    decode(&SliceSource {
        name: device_name,
        bytes,
    })
}

/// Where header bytes come from, so that `read_header` reads only what it needs and
/// `parse` borrows from its slice, both through one decoder.
trait Source {
    fn name(&self) -> &str;
    /// `len` bytes at `offset`, or None when they do not all lie inside.
    fn bytes(&self, offset: u64, len: u64) -> Result<Option<Cow<'_, [u8]>>, LuksError>;
}

struct DeviceSource<'a>(&'a dyn BlockDevice);

impl Source for DeviceSource<'_> {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn bytes(&self, offset: u64, len: u64) -> Result<Option<Cow<'_, [u8]>>, LuksError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.0.size_bytes() => {
                let mut buf = vec![0u8; len as usize];
                self.0.read_at(&mut buf, offset)?;
                Ok(Some(Cow::Owned(buf)))
            }
            _ => Ok(None),
        }
    }
}

struct SliceSource<'a> {
    name: &'a str,
    bytes: &'a [u8],
}

impl Source for SliceSource<'_> {
    fn name(&self) -> &str {
        self.name
    }

    fn bytes(&self, offset: u64, len: u64) -> Result<Option<Cow<'_, [u8]>>, LuksError> {
        let range = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(len).ok())
            .and_then(|(start, len)| Some(start..start.checked_add(len)?));
        Ok(range.and_then(|r| self.bytes.get(r)).map(Cow::Borrowed))
    }
}

fn malformed(src: &dyn Source, what: impl Into<String>) -> LuksError {
    LuksError::Malformed {
        device: src.name().to_string(),
        what: what.into(),
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// A NUL-padded text field, lossily decoded.
fn text_field(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn decode(src: &dyn Source) -> Result<Option<LuksHeader>, LuksError> {
    let start = src.bytes(0, 8)?;
    match start.as_deref() {
        Some(b) if &b[..6] == MAGIC => match be16(b, 6) {
            1 => luks1(src).map(Some),
            2 => luks2(src, Primary::Present),
            // Maybe a damaged LUKS2 version field: a sound secondary still wins.
            v => luks2(src, Primary::UnknownVersion(v)),
        },
        // A wiped or overwritten primary: LUKS2 may still live on in its secondary.
        _ => luks2(src, Primary::Absent),
    }
}

fn luks1(src: &dyn Source) -> Result<LuksHeader, LuksError> {
    let Some(b) = src.bytes(0, LUKS1_HEADER_BYTES as u64)? else {
        return Err(malformed(
            src,
            format!("LUKS1 header truncated: it needs {LUKS1_HEADER_BYTES} bytes"),
        ));
    };
    let name = text_field(&b[8..40]);
    let mode = text_field(&b[40..72]);
    let payload_sectors = be32(&b, 104);
    let key_bytes = be32(&b, 108);
    if key_bytes == 0 || u64::from(key_bytes) > MAX_KEY_BYTES {
        return Err(malformed(
            src,
            format!("LUKS1 header has an impossible key size of {key_bytes} bytes"),
        ));
    }
    let mut active = Vec::new();
    let mut odd_slots = Vec::new();
    let mut key_material_end = 0u64;
    for slot in 0..LUKS1_KEYSLOTS {
        let at = 208 + slot * LUKS1_KEYSLOT_BYTES;
        match be32(&b, at) {
            LUKS1_SLOT_ENABLED => active.push(slot as u32),
            LUKS1_SLOT_DISABLED => {}
            state => odd_slots.push(format!("{slot} (state {state:#x})")),
        }
        // Each slot's anti-forensic material: key bytes × stripes from its sector offset.
        let material_sector = u64::from(be32(&b, at + 40));
        let stripes = u64::from(be32(&b, at + 44));
        let end = material_sector * 512 + (u64::from(key_bytes) * stripes).div_ceil(512) * 512;
        key_material_end = key_material_end.max(end);
    }
    let data_offset_bytes = u64::from(payload_sectors) * 512;
    // A detached header has payload offset 0; its region then ends with the key material.
    let header_bytes = if data_offset_bytes > 0 {
        data_offset_bytes
    } else {
        key_material_end
    };
    let cipher = if mode.is_empty() {
        name
    } else {
        format!("{name}-{mode}")
    };
    Ok(LuksHeader {
        version: 1,
        uuid: text_field(&b[168..208]),
        label: String::new(),
        subsystem: String::new(),
        cipher,
        key_bytes,
        data_offset_bytes,
        data_size_bytes: None,
        active_keyslots: active,
        header_bytes,
        warning: (!odd_slots.is_empty()).then(|| {
            format!(
                "LUKS1 key slot(s) in an unknown state: {}",
                odd_slots.join(", ")
            )
        }),
    })
}

/// Why one copy of a LUKS2 header cannot be used, and its size when that much was sound
/// (which places the secondary).
struct Damage {
    reason: String,
    hdr_size: Option<u64>,
}

impl Damage {
    fn new(reason: impl Into<String>, hdr_size: Option<u64>) -> Damage {
        Damage {
            reason: reason.into(),
            hdr_size,
        }
    }
}

/// What byte 0 holds when LUKS2 is decoded.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Primary {
    Absent,
    Present,
    UnknownVersion(u16),
}

fn luks2(src: &dyn Source, primary: Primary) -> Result<Option<LuksHeader>, LuksError> {
    let mut failures = Vec::new();
    let mut secondary_places = Vec::new();
    let mut primary_damage = None;
    match primary {
        Primary::Absent => {}
        Primary::Present => match luks2_copy(src, 0)? {
            Ok(header) => return Ok(Some(newer_secondary(src, header)?)),
            Err(damage) => {
                failures.push(format!("primary header: {}", damage.reason));
                secondary_places.extend(damage.hdr_size);
                primary_damage = Some(damage.reason);
            }
        },
        Primary::UnknownVersion(v) => {
            let reason = format!("LUKS version {v} is not supported (only 1 and 2 are)");
            failures.push(format!("primary header: {reason}"));
            primary_damage = Some(reason);
        }
    }
    for at in LUKS2_HEADER_SIZES {
        if !secondary_places.contains(&at) {
            secondary_places.push(at);
        }
    }
    for at in secondary_places {
        let Some(start) = src.bytes(at, 8)? else {
            continue;
        };
        if &start[..6] != SECONDARY_MAGIC || be16(&start, 6) != 2 {
            continue;
        }
        match luks2_copy(src, at)? {
            Ok(mut header) => {
                header.warning = Some(match &primary_damage {
                    Some(reason) => format!(
                        "primary LUKS2 header damaged ({reason}); the secondary header at byte {at} was used"
                    ),
                    None => format!(
                        "no primary LUKS2 header at byte 0; the secondary header at byte {at} was used"
                    ),
                });
                return Ok(Some(header));
            }
            Err(damage) => {
                failures.push(format!("secondary header at byte {at}: {}", damage.reason))
            }
        }
    }
    match primary {
        _ if failures.is_empty() => return Ok(None),
        Primary::UnknownVersion(_) if failures.len() == 1 => {
            return Err(malformed(src, primary_damage.unwrap_or_default()))
        }
        _ => {}
    }
    Err(malformed(
        src,
        format!("no usable LUKS2 header: {}", failures.join("; ")),
    ))
}

/// The primary copy, or the secondary if it is sound and newer: a change interrupted
/// between writing the secondary and the primary leaves the newer state there, and
/// unlocking uses it too.
fn newer_secondary(src: &dyn Source, primary: LuksHeader) -> Result<LuksHeader, LuksError> {
    let at = primary.header_bytes;
    let seqid = |at: u64| -> Result<Option<u64>, LuksError> {
        Ok(src.bytes(at, 24)?.map(|b| be64(&b, 16)))
    };
    let Some(start) = src.bytes(at, 8)? else {
        return Ok(primary);
    };
    if &start[..6] != SECONDARY_MAGIC || be16(&start, 6) != 2 {
        return Ok(primary);
    }
    let (Some(old), Some(new)) = (seqid(0)?, seqid(at)?) else {
        return Ok(primary);
    };
    if new <= old {
        return Ok(primary);
    }
    Ok(match luks2_copy(src, at)? {
        Ok(mut secondary) => {
            secondary.warning = Some(format!(
                "the secondary LUKS2 header at byte {at} is newer than the primary (seqid {new} against {old}) and was used"
            ));
            secondary
        }
        Err(_) => primary,
    })
}

/// One copy of a LUKS2 header at `at`: the outer Result carries I/O errors, the inner one
/// the reason this copy is unusable.
fn luks2_copy(src: &dyn Source, at: u64) -> Result<Result<LuksHeader, Damage>, LuksError> {
    let Some(binary) = src.bytes(at, LUKS2_BINARY_BYTES as u64)? else {
        return Ok(Err(Damage::new(
            "truncated: the 4096-byte binary header runs past the end",
            None,
        )));
    };
    let hdr_size = be64(&binary, 8);
    if !LUKS2_HEADER_SIZES.contains(&hdr_size) {
        return Ok(Err(Damage::new(
            format!("header size {hdr_size} is not a power of two from 16 KiB to 4 MiB"),
            None,
        )));
    }
    let hdr_offset = be64(&binary, 256);
    if hdr_offset != at {
        return Ok(Err(Damage::new(
            format!("it records its own offset as byte {hdr_offset}"),
            Some(hdr_size),
        )));
    }
    let Some(whole) = src.bytes(at, hdr_size)? else {
        return Ok(Err(Damage::new(
            format!("truncated: its {hdr_size} bytes run past the end"),
            Some(hdr_size),
        )));
    };
    if let Err(reason) = verify_checksum(&whole) {
        return Ok(Err(Damage::new(reason, Some(hdr_size))));
    }
    let metadata = match json_metadata(&whole[LUKS2_BINARY_BYTES..], hdr_size) {
        Ok(m) => m,
        Err(reason) => {
            return Ok(Err(Damage::new(
                format!("JSON metadata: {reason}"),
                Some(hdr_size),
            )))
        }
    };
    Ok(Ok(LuksHeader {
        version: 2,
        uuid: text_field(&whole[168..208]),
        label: text_field(&whole[24..72]),
        subsystem: text_field(&whole[208..256]),
        cipher: metadata.cipher,
        key_bytes: metadata.key_bytes,
        data_offset_bytes: metadata.data_offset,
        data_size_bytes: metadata.data_size,
        active_keyslots: metadata.keyslots,
        header_bytes: hdr_size,
        warning: None,
    }))
}

/// The stored checksum is the hash of the whole copy (binary header and JSON area) with
/// the checksum field itself read as zeroes.
fn verify_checksum(whole: &[u8]) -> Result<(), String> {
    let algorithm = text_field(&whole[72..104]);
    let computed: Vec<u8> = match algorithm.as_str() {
        "sha256" => hash_without_csum::<Sha256>(whole),
        "sha512" => hash_without_csum::<Sha512>(whole),
        other => return Err(format!("checksum algorithm '{other}' is not supported")),
    };
    let stored = &whole[CSUM_AT..CSUM_AT + CSUM_BYTES];
    if stored[..computed.len()] == computed[..] {
        Ok(())
    } else {
        Err(format!("{algorithm} checksum mismatch"))
    }
}

fn hash_without_csum<D: Digest>(whole: &[u8]) -> Vec<u8> {
    let mut hasher = D::new();
    hasher.update(&whole[..CSUM_AT]);
    hasher.update([0u8; CSUM_BYTES]);
    hasher.update(&whole[CSUM_AT + CSUM_BYTES..]);
    hasher.finalize().to_vec()
}

/// What the JSON area says that the description needs.
struct Metadata {
    cipher: String,
    key_bytes: u32,
    data_offset: u64,
    data_size: Option<u64>,
    keyslots: Vec<u32>,
}

fn json_metadata(area: &[u8], hdr_size: u64) -> Result<Metadata, String> {
    let end = area
        .iter()
        .position(|&c| c == 0)
        .ok_or("the JSON text is not NUL-terminated inside its area")?;
    let root: Value = serde_json::from_slice(&area[..end]).map_err(|e| e.to_string())?;
    let root = root.as_object().ok_or("the top level is not an object")?;
    let object = |key: &str| -> Result<&Map<String, Value>, String> {
        root.get(key)
            .and_then(Value::as_object)
            .ok_or(format!("no \"{key}\" object"))
    };
    let keyslots = object("keyslots")?;
    let segments = object("segments")?;
    let digests = object("digests")?;
    let config = object("config")?;

    let json_size = decimal(config.get("json_size"), "config.json_size")?;
    let area_size = hdr_size - LUKS2_BINARY_BYTES as u64;
    if json_size != area_size {
        return Err(format!(
            "config.json_size {json_size} disagrees with the header size (JSON area {area_size})"
        ));
    }

    let mut slot_ids = keyslots
        .keys()
        .map(|k| object_id(k, "keyslot", Some(LUKS2_MAX_KEYSLOTS)))
        .collect::<Result<Vec<u32>, String>>()?;
    slot_ids.sort_unstable();

    // The data segment is the lowest-numbered one (others exist only mid-reencryption).
    let (segment_id, segment) = segments
        .iter()
        .map(|(k, v)| Ok((object_id(k, "segment", None)?, (k, v))))
        .collect::<Result<Vec<(u32, (&String, &Value))>, String>>()?
        .into_iter()
        .min_by_key(|(id, _)| *id)
        .map(|(_, kv)| kv)
        .ok_or("no data segment")?;
    let segment = segment
        .as_object()
        .ok_or(format!("segment {segment_id} is not an object"))?;
    let field = |key: &str| segment.get(key);
    let kind = field("type")
        .and_then(Value::as_str)
        .ok_or(format!("segment {segment_id} has no type"))?;
    let data_offset = decimal(field("offset"), &format!("segment {segment_id} offset"))?;
    let data_size = match field("size") {
        Some(Value::String(s)) if s == "dynamic" => None,
        size => Some(decimal(size, &format!("segment {segment_id} size"))?),
    };
    let cipher = match field("encryption") {
        Some(Value::String(c)) => c.clone(),
        None if kind != "crypt" => String::new(),
        _ => return Err(format!("segment {segment_id} has no encryption")),
    };

    // The volume key's size, from a key slot bound to the data segment through a digest.
    let bound_slots: Vec<&str> = digests
        .values()
        .filter(|d| string_list(d.get("segments")).contains(&segment_id.as_str()))
        .flat_map(|d| string_list(d.get("keyslots")))
        .collect();
    let key_slot = bound_slots
        .iter()
        .find_map(|id| keyslots.get(*id))
        .or_else(|| keyslots.values().next());
    let key_bytes = match key_slot {
        Some(slot) => {
            let size = slot
                .get("key_size")
                .and_then(Value::as_u64)
                .ok_or("a keyslot has no numeric key_size")?;
            if size == 0 || size > MAX_KEY_BYTES {
                return Err(format!("impossible key_size {size}"));
            }
            size as u32
        }
        None => 0,
    };
    Ok(Metadata {
        cipher,
        key_bytes,
        data_offset,
        data_size,
        keyslots: slot_ids,
    })
}

/// A keyslot or segment number: the decimal key of its JSON object.
fn object_id(key: &str, what: &str, limit: Option<u32>) -> Result<u32, String> {
    key.bytes()
        .all(|c| c.is_ascii_digit())
        .then(|| key.parse::<u32>().ok())
        .flatten()
        .filter(|&id| limit.is_none_or(|l| id < l))
        .ok_or(format!("bad {what} number '{key}'"))
}

/// LUKS2 writes 64-bit numbers as decimal strings (JSON numbers lose precision past 2^53).
fn decimal(value: Option<&Value>, what: &str) -> Result<u64, String> {
    match value {
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) => s
            .parse()
            .map_err(|_| format!("{what} '{s}' does not fit in 64 bits")),
        Some(other) => Err(format!("{what} is {other}, not a decimal string")),
        None => Err(format!("no {what}")),
    }
}

fn string_list(value: Option<&Value>) -> Vec<&str> {
    value
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_block::MemoryDevice;

    const HDR: u64 = 0x4000;

    fn json(keyslots: &[u32], segment: &str) -> String {
        let slots: Vec<String> = keyslots
            .iter()
            .map(|s| format!(r#""{s}":{{"type":"luks2","key_size":64}}"#))
            .collect();
        let slot_refs: Vec<String> = keyslots.iter().map(|s| format!(r#""{s}""#)).collect();
        format!(
            r#"{{"keyslots":{{{}}},"tokens":{{}},"segments":{{"0":{segment}}},"digests":{{"0":{{"type":"pbkdf2","keyslots":[{}],"segments":["0"]}}}},"config":{{"json_size":"{}","keyslots_size":"16744448"}}}}"#,
            slots.join(","),
            slot_refs.join(","),
            HDR - 4096
        )
    }

    const DYNAMIC: &str = r#"{"type":"crypt","offset":"16777216","size":"dynamic","encryption":"aes-xts-plain64","sector_size":4096}"#;

    /// One copy of a LUKS2 header of `hdr_size` bytes at `at`, with a correct checksum.
    fn luks2_copy_bytes(at: u64, hdr_size: u64, label: &[u8], json: &str) -> Vec<u8> {
        let mut h = vec![0u8; hdr_size as usize];
        h[..6].copy_from_slice(if at == 0 { MAGIC } else { SECONDARY_MAGIC });
        h[6..8].copy_from_slice(&2u16.to_be_bytes());
        h[8..16].copy_from_slice(&hdr_size.to_be_bytes());
        h[16..24].copy_from_slice(&3u64.to_be_bytes());
        h[24..24 + label.len()].copy_from_slice(label);
        h[72..78].copy_from_slice(b"sha256");
        h[168..204].copy_from_slice(b"68d218ce-6030-4ff2-874d-2023f458592d");
        h[256..264].copy_from_slice(&at.to_be_bytes());
        h[4096..4096 + json.len()].copy_from_slice(json.as_bytes());
        let sum = hash_without_csum::<Sha256>(&h);
        h[CSUM_AT..CSUM_AT + 32].copy_from_slice(&sum);
        h
    }

    /// Primary and secondary, as luksFormat leaves them.
    fn luks2_image(json: &str) -> Vec<u8> {
        let mut image = luks2_copy_bytes(0, HDR, b"vault", json);
        image.extend(luks2_copy_bytes(HDR, HDR, b"vault", json));
        image
    }

    fn luks1_image(active: &[usize], payload_sectors: u32) -> Vec<u8> {
        let mut h = vec![0u8; 4096];
        h[..6].copy_from_slice(MAGIC);
        h[6..8].copy_from_slice(&1u16.to_be_bytes());
        h[8..11].copy_from_slice(b"aes");
        h[40..51].copy_from_slice(b"xts-plain64");
        h[72..78].copy_from_slice(b"sha256");
        h[104..108].copy_from_slice(&payload_sectors.to_be_bytes());
        h[108..112].copy_from_slice(&64u32.to_be_bytes());
        h[168..204].copy_from_slice(b"de9954bd-e6ab-4748-b1e9-86eeb2104df2");
        for slot in 0..8 {
            let at = 208 + slot * 48;
            let state = if active.contains(&slot) {
                LUKS1_SLOT_ENABLED
            } else {
                LUKS1_SLOT_DISABLED
            };
            h[at..at + 4].copy_from_slice(&state.to_be_bytes());
            let material = 8 + slot as u32 * 504;
            h[at + 40..at + 44].copy_from_slice(&material.to_be_bytes());
            h[at + 44..at + 48].copy_from_slice(&4000u32.to_be_bytes());
        }
        h
    }

    fn err_text(r: Result<Option<LuksHeader>, LuksError>) -> String {
        match r {
            Err(e) => e.to_string(),
            Ok(h) => panic!("expected an error, got {h:?}"),
        }
    }

    #[test]
    fn luks1_described() {
        let h = parse("d", &luks1_image(&[0, 3], 4096)).unwrap().unwrap();
        assert_eq!(
            h,
            LuksHeader {
                version: 1,
                uuid: "de9954bd-e6ab-4748-b1e9-86eeb2104df2".into(),
                label: String::new(),
                subsystem: String::new(),
                cipher: "aes-xts-plain64".into(),
                key_bytes: 64,
                data_offset_bytes: 2 << 20,
                data_size_bytes: None,
                active_keyslots: vec![0, 3],
                header_bytes: 2 << 20,
                warning: None,
            }
        );
        // Detached header: the region is the key material's (slot 7: sector 3536 + 500).
        let h = parse("d", &luks1_image(&[0], 0)).unwrap().unwrap();
        assert_eq!(h.header_bytes, (8 + 7 * 504 + 500) * 512);
    }

    #[test]
    fn luks1_damage() {
        let mut b = luks1_image(&[0], 4096);
        b[208 + 48..208 + 52].copy_from_slice(&7u32.to_be_bytes());
        let h = parse("d", &b).unwrap().unwrap();
        assert_eq!(h.active_keyslots, vec![0]);
        assert!(h.warning.unwrap().contains("1 (state 0x7)"));
        let mut b = luks1_image(&[0], 4096);
        b[108..112].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(err_text(parse("dev9", &b))
            .starts_with("dev9: LUKS1 header has an impossible key size"));
        let b = luks1_image(&[0], 4096);
        assert!(err_text(parse("d", &b[..500])).contains("truncated"));
        let mut b = luks1_image(&[0], 4096);
        b[7] = 3;
        assert!(err_text(parse("d", &b)).contains("LUKS version 3"));
    }

    #[test]
    fn luks2_described() {
        let image = luks2_image(&json(&[0, 1], DYNAMIC));
        let h = parse("d", &image).unwrap().unwrap();
        assert_eq!(
            h,
            LuksHeader {
                version: 2,
                uuid: "68d218ce-6030-4ff2-874d-2023f458592d".into(),
                label: "vault".into(),
                subsystem: String::new(),
                cipher: "aes-xts-plain64".into(),
                key_bytes: 64,
                data_offset_bytes: 16 << 20,
                data_size_bytes: None,
                active_keyslots: vec![0, 1],
                header_bytes: HDR,
                warning: None,
            }
        );
        // The device reader reads the same.
        let dev = MemoryDevice::new("mem", 32 << 20);
        dev.write_at(&image, 0).unwrap();
        assert_eq!(read_header(&dev).unwrap().unwrap(), h);
        // A fixed-size segment; key slots sorted numerically.
        let fixed = r#"{"type":"crypt","offset":"32768","size":"1048576","encryption":"serpent-cbc-essiv:sha256"}"#;
        let h = parse("d", &luks2_image(&json(&[10, 2], fixed)))
            .unwrap()
            .unwrap();
        assert_eq!(h.data_size_bytes, Some(1 << 20));
        assert_eq!(h.data_offset_bytes, 32768);
        assert_eq!(h.cipher, "serpent-cbc-essiv:sha256");
        assert_eq!(h.active_keyslots, vec![2, 10]);
    }

    #[test]
    fn damaged_primary_uses_the_secondary() {
        let mut image = luks2_image(&json(&[0], DYNAMIC));
        image[4200] ^= 0x20;
        let h = parse("disk.img", &image).unwrap().unwrap();
        assert_eq!(h.label, "vault");
        let warning = h.warning.unwrap();
        assert!(warning.contains("checksum mismatch"), "{warning}");
        assert!(
            warning.contains("secondary header at byte 16384"),
            "{warning}"
        );

        // A primary whose hdr_size is garbage: the secondary is found at its standard place.
        let mut image = luks2_image(&json(&[0], DYNAMIC));
        image[8..16].copy_from_slice(&12345u64.to_be_bytes());
        let h = parse("d", &image).unwrap().unwrap();
        assert!(h.warning.unwrap().contains("header size 12345"));

        // No primary magic at all (first sectors overwritten).
        let mut image = luks2_image(&json(&[0], DYNAMIC));
        image[..4096].fill(0);
        let h = parse("d", &image).unwrap().unwrap();
        assert!(h.warning.unwrap().starts_with("no primary LUKS2 header"));
    }

    #[test]
    fn a_newer_secondary_is_used() {
        // A change cut off after the secondary copy was written.
        let mut image = luks2_copy_bytes(0, HDR, b"old", &json(&[0], DYNAMIC));
        let mut secondary = luks2_copy_bytes(HDR, HDR, b"new", &json(&[0, 1], DYNAMIC));
        secondary[16..24].copy_from_slice(&4u64.to_be_bytes());
        secondary[CSUM_AT..CSUM_AT + CSUM_BYTES].fill(0);
        let sum = hash_without_csum::<Sha256>(&secondary);
        secondary[CSUM_AT..CSUM_AT + 32].copy_from_slice(&sum);
        image.extend(&secondary);
        let h = parse("d", &image).unwrap().unwrap();
        assert_eq!((h.label.as_str(), h.active_keyslots), ("new", vec![0, 1]));
        assert!(h.warning.unwrap().contains("seqid 4 against 3"));
        // An older secondary is ignored.
        image[HDR as usize + 16..HDR as usize + 24].copy_from_slice(&2u64.to_be_bytes());
        let h = parse("d", &image).unwrap().unwrap();
        assert_eq!(h.label, "old");
    }

    #[test]
    fn both_copies_damaged_is_an_error_naming_the_device() {
        let mut image = luks2_image(&json(&[0], DYNAMIC));
        image[4200] ^= 0x20;
        image[HDR as usize + 4200] ^= 0x20;
        let text = err_text(parse("disk.img", &image));
        assert!(
            text.starts_with("disk.img: no usable LUKS2 header"),
            "{text}"
        );
        assert!(
            text.contains("primary header: sha256 checksum mismatch"),
            "{text}"
        );
        assert!(
            text.contains("secondary header at byte 16384: sha256 checksum mismatch"),
            "{text}"
        );
        // Only the primary, damaged, and no secondary at all.
        let text = err_text(parse("d", &image[..HDR as usize]));
        assert_eq!(
            text,
            "d: no usable LUKS2 header: primary header: sha256 checksum mismatch"
        );
    }

    #[test]
    fn bad_json_is_damage() {
        let cases = [
            json(
                &[0],
                r#"{"type":"crypt","offset":16777216,"size":"dynamic","encryption":"aes"}"#,
            ),
            json(
                &[0],
                r#"{"type":"crypt","offset":"16777216","size":"-1","encryption":"aes"}"#,
            ),
            json(
                &[0],
                r#"{"type":"crypt","offset":"99999999999999999999","size":"dynamic","encryption":"aes"}"#,
            ),
            json(&[0], r#"{"type":"crypt","offset":"0","size":"dynamic"}"#),
            json(&[40], DYNAMIC),
            json(&[0], DYNAMIC).replace("12288", "4096"),
            json(&[0], DYNAMIC).replace(r#""key_size":64"#, r#""key_size":100000"#),
            json(&[0], DYNAMIC).replace(r#""segments":{"0""#, r#""segments":{"x""#),
            r#"{"keyslots":{}}"#.to_string(),
            "[1,2]".to_string(),
            "{".to_string(),
        ];
        for json in cases {
            let image = luks2_copy_bytes(0, HDR, b"", &json);
            let text = err_text(parse("d", &image));
            assert!(text.contains("JSON metadata"), "{json}: {text}");
        }
        // Not NUL-terminated.
        let mut image = luks2_copy_bytes(0, HDR, b"", "{}");
        image[4096..].fill(b' ');
        let sum = hash_without_csum::<Sha256>(&image);
        image[CSUM_AT..CSUM_AT + 32].copy_from_slice(&sum);
        assert!(err_text(parse("d", &image)).contains("NUL-terminated"));
    }

    #[test]
    fn odd_but_valid_fields() {
        // A non-UTF-8 label is read lossily; no key slots at all means key size 0.
        let image = luks2_copy_bytes(0, HDR, b"v\xffx", &json(&[], DYNAMIC));
        let h = parse("d", &image).unwrap().unwrap();
        assert_eq!(h.label, "v\u{fffd}x");
        assert_eq!(h.key_bytes, 0);
        assert!(h.active_keyslots.is_empty());
        // sha512 checksums are accepted; an unknown algorithm is reported by name.
        let mut image = luks2_copy_bytes(0, HDR, b"", &json(&[0], DYNAMIC));
        image[72..104].fill(0);
        image[72..78].copy_from_slice(b"sha512");
        let sum = hash_without_csum::<Sha512>(&image);
        image[CSUM_AT..CSUM_AT + 64].copy_from_slice(&sum);
        assert!(parse("d", &image).unwrap().unwrap().warning.is_none());
        image[72..78].copy_from_slice(b"whirlp");
        assert!(err_text(parse("d", &image)).contains("'whirlp' is not supported"));
    }

    #[test]
    fn no_luks_is_none() {
        for bytes in [
            vec![],
            vec![0u8; 7],
            vec![0u8; 8 << 20],
            vec![0xffu8; 1 << 20],
        ] {
            assert!(parse("d", &bytes).unwrap().is_none());
        }
        let dev = MemoryDevice::new("tiny", 3);
        assert!(read_header(&dev).unwrap().is_none());
    }

    #[test]
    fn every_truncation_and_bit_flip_is_handled() {
        let image = luks2_image(&json(&[0, 1], DYNAMIC));
        for len in (0..image.len())
            .step_by(97)
            .chain([4095, 4096, 16383, 16384, 20480])
        {
            let _ = parse("d", &image[..len]);
        }
        let luks1 = luks1_image(&[0], 4096);
        for len in 0..luks1.len() {
            let _ = parse("d", &luks1[..len]);
        }
        for at in (0..520).chain([4096, 4100, 16384 + 8, 16384 + 256]) {
            for bit in [0, 5, 7] {
                let mut m = image.clone();
                m[at] ^= 1 << bit;
                // A flip in the primary is always survived through the secondary.
                assert!(parse("d", &m).unwrap().is_some(), "{at}/{bit}");
                let mut m = luks1.clone();
                if at < m.len() {
                    m[at] ^= 1 << bit;
                    let _ = parse("d", &m);
                }
            }
        }
    }
}
