//! Unlocking: a passphrase tried against the key slots gives the volume key.
//!
//! Every key slot to be tried is checked first (its area inside the device and clear of
//! the headers, a cipher, hash, KDF and anti-forensic layout tessera knows, KDF costs within
//! the caller's limits); only then does any KDF run. A slot that fails the checks is skipped
//! and named; if no slot can be tried at all, that is the error.

use std::fmt;

use tessera_block::BlockDevice;
use tessera_cipher::{
    af, Argon2Variant, CipherSpec, Hash, Kdf, KdfLimits, SecretBytes, SectorCipher,
};

use super::metadata::{luks1_cipher, Luks1Metadata, Luks2Kdf, Luks2Metadata, LuksMetadata};
use super::{read_metadata, LuksError, LUKS1_HEADER_BYTES, MAX_KEY_BYTES};

/// LUKS's only anti-forensic stripe count.
pub(crate) const STRIPES: u32 = 4000;
/// Key material is encrypted in 512-byte sectors, IVs counted from 0 at its start.
pub(crate) const MATERIAL_SECTOR: usize = 512;
/// The longest salt or digest tessera accepts from a header.
const MAX_SALT_BYTES: usize = 1024;

#[derive(Debug, Clone, Copy, Default)]
pub struct UnlockOptions {
    /// Try only this key slot.
    pub key_slot: Option<u32>,
    /// KDF costs above these are refused as damage before any work.
    pub limits: KdfLimits,
}

/// An opened LUKS device: the volume key and how the data is encrypted.
pub struct Unlocked {
    pub volume_key: SecretBytes,
    /// The key slot that opened.
    pub key_slot: u32,
    /// dm-crypt's name of the data cipher, e.g. "aes-xts-plain64".
    pub cipher: String,
    /// The encryption sector size (IVs still count 512-byte sectors).
    pub sector_bytes: u32,
    pub data_offset_bytes: u64,
    /// None: the data runs to the end of the device.
    pub data_size_bytes: Option<u64>,
    /// Added to the IV sector number (LUKS2 segment `iv_tweak`).
    pub iv_tweak: u64,
}

impl fmt::Debug for Unlocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unlocked")
            .field("volume_key", &"(redacted)")
            .field("key_slot", &self.key_slot)
            .field("cipher", &self.cipher)
            .field("sector_bytes", &self.sector_bytes)
            .field("data_offset_bytes", &self.data_offset_bytes)
            .field("data_size_bytes", &self.data_size_bytes)
            .field("iv_tweak", &self.iv_tweak)
            .finish()
    }
}

/// Opens `dev` with `passphrase`: the volume key of the first key slot that it opens.
pub fn unlock(
    dev: &dyn BlockDevice,
    passphrase: &[u8],
    opts: &UnlockOptions,
) -> Result<Unlocked, LuksError> {
    let meta = read_metadata(dev)?;
    let (key_slot, volume_key) = open_volume_key(dev, &meta, passphrase, opts)?;
    Ok(match &meta {
        LuksMetadata::Luks1(m) => Unlocked {
            volume_key,
            key_slot,
            cipher: luks1_cipher(m),
            sector_bytes: 512,
            data_offset_bytes: u64::from(m.payload_offset_sectors) * 512,
            data_size_bytes: None,
            iv_tweak: 0,
        },
        LuksMetadata::Luks2(m) => {
            let (_, segment) = m
                .data_segment()
                .ok_or_else(|| refused(dev, "the LUKS2 header has no data segment"))?;
            Unlocked {
                volume_key,
                key_slot,
                cipher: segment.encryption.clone(),
                sector_bytes: segment.sector_size,
                data_offset_bytes: segment.offset,
                data_size_bytes: segment.size,
                iv_tweak: segment.iv_tweak,
            }
        }
    })
}

pub(crate) fn refused(dev: &dyn BlockDevice, what: impl Into<String>) -> LuksError {
    LuksError::Refused {
        device: dev.name().to_string(),
        what: what.into(),
    }
}

/// How one key slot is opened, every value checked.
pub(crate) struct SlotPlan {
    pub slot: u32,
    pub kdf: Kdf,
    pub salt: Vec<u8>,
    pub area_spec: CipherSpec,
    pub area_key_bytes: usize,
    pub area_offset: u64,
    /// The key material rounded up to whole 512-byte sectors.
    pub material_bytes: usize,
    pub key_bytes: usize,
    pub af_hash: Hash,
    pub digest: DigestCheck,
}

pub(crate) struct DigestCheck {
    pub hash: Hash,
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub expected: Vec<u8>,
}

/// Bytes of anti-forensic material for a key, rounded up to whole sectors.
pub(crate) fn material_bytes(key_bytes: usize) -> usize {
    (key_bytes * STRIPES as usize).div_ceil(MATERIAL_SECTOR) * MATERIAL_SECTOR
}

/// The volume key and the slot that opened it.
pub(crate) fn open_volume_key(
    dev: &dyn BlockDevice,
    meta: &LuksMetadata,
    passphrase: &[u8],
    opts: &UnlockOptions,
) -> Result<(u32, SecretBytes), LuksError> {
    let (plans, skipped) = plans(dev, meta, opts)?;
    for plan in &plans {
        if let Some(key) = try_plan(dev, plan, passphrase)? {
            return Ok((plan.slot, key));
        }
    }
    Err(LuksError::WrongPassphrase {
        device: dev.name().to_string(),
        slot: opts.key_slot,
        skipped,
    })
}

/// The slots to try, in order, and the reasons others were skipped.
fn plans(
    dev: &dyn BlockDevice,
    meta: &LuksMetadata,
    opts: &UnlockOptions,
) -> Result<(Vec<SlotPlan>, Vec<String>), LuksError> {
    let device = dev.name().to_string();
    let active = meta.active_keyslots();
    let candidates: Vec<u32> = match opts.key_slot {
        Some(slot) if active.contains(&slot) => vec![slot],
        Some(slot) => {
            let max = if meta.version() == 1 { 8 } else { 32 };
            let what = if slot >= max {
                format!(
                    "there is no such key slot (LUKS{} has {max})",
                    meta.version()
                )
            } else {
                "the key slot is not in use".to_string()
            };
            return Err(LuksError::Slot { device, slot, what });
        }
        None if active.is_empty() => {
            return Err(refused(dev, "no key slot is in use: nothing can open it"))
        }
        None => active,
    };
    let mut results: Vec<(u32, u32, Result<SlotPlan, String>)> = match meta {
        LuksMetadata::Luks1(m) => {
            let common = luks1_common(m, &opts.limits).map_err(|what| LuksError::Malformed {
                device: device.clone(),
                what,
            })?;
            candidates
                .iter()
                .map(|&slot| (slot, 1, luks1_plan(dev, m, &common, slot, &opts.limits)))
                .collect()
        }
        LuksMetadata::Luks2(m) => {
            if !m.config.requirements.is_empty() {
                return Err(refused(
                    dev,
                    format!(
                        "the LUKS2 header has requirements tessera does not know ({}); \
                         finish the operation with cryptsetup first",
                        m.config.requirements.join(", ")
                    ),
                ));
            }
            candidates
                .iter()
                .map(|&slot| {
                    let priority = match m.keyslots.get(&slot) {
                        Some(Ok(k)) => k.priority.unwrap_or(1),
                        _ => 1,
                    };
                    (slot, priority, luks2_plan(dev, m, slot, &opts.limits))
                })
                .collect()
        }
    };
    // "prefer" first; "ignore" only when asked for by number.
    results.sort_by_key(|(slot, priority, _)| (std::cmp::Reverse(*priority), *slot));
    let mut plans = Vec::new();
    let mut skipped = Vec::new();
    for (slot, priority, result) in results {
        match result {
            Ok(_) if priority == 0 && opts.key_slot.is_none() => {}
            Ok(plan) => plans.push(plan),
            Err(what) if opts.key_slot.is_some() => {
                return Err(LuksError::Slot { device, slot, what })
            }
            Err(what) => skipped.push(format!("key slot {slot}: {what}")),
        }
    }
    if plans.is_empty() && !skipped.is_empty() {
        return Err(LuksError::NoUsableSlot {
            device,
            reasons: skipped,
        });
    }
    Ok((plans, skipped))
}

/// What every LUKS1 slot shares: the cipher, the hash and the digest.
struct Luks1Common {
    spec: CipherSpec,
    hash: Hash,
}

fn luks1_common(m: &Luks1Metadata, limits: &KdfLimits) -> Result<Luks1Common, String> {
    let cipher = luks1_cipher(m);
    let spec = CipherSpec::parse(&cipher).map_err(|e| format!("LUKS1 header: {e}"))?;
    spec.check_key_bytes(m.key_bytes as usize)
        .map_err(|e| format!("LUKS1 header: {e}"))?;
    let hash = Hash::parse(&m.hash_spec).map_err(|e| format!("LUKS1 header: {e}"))?;
    Kdf::Pbkdf2 {
        hash,
        iterations: m.mk_digest_iterations,
    }
    .check(limits)
    .map_err(|e| format!("LUKS1 header: the volume key digest: {e}"))?;
    Ok(Luks1Common { spec, hash })
}

fn luks1_plan(
    dev: &dyn BlockDevice,
    m: &Luks1Metadata,
    common: &Luks1Common,
    slot: u32,
    limits: &KdfLimits,
) -> Result<SlotPlan, String> {
    let k = m
        .keyslots
        .get(slot as usize)
        .ok_or("there is no such key slot")?;
    if k.stripes != STRIPES {
        return Err(format!(
            "{} anti-forensic stripes (LUKS uses {STRIPES})",
            k.stripes
        ));
    }
    let kdf = Kdf::Pbkdf2 {
        hash: common.hash,
        iterations: k.iterations,
    };
    kdf.check(limits).map_err(|e| e.to_string())?;
    let key_bytes = m.key_bytes as usize;
    let material = material_bytes(key_bytes);
    let offset = u64::from(k.key_material_offset_sectors) * 512;
    let end = offset + material as u64;
    if offset < LUKS1_HEADER_BYTES.div_ceil(512) as u64 * 512 {
        return Err(format!(
            "its key material at byte {offset} overlaps the LUKS1 header"
        ));
    }
    if end > dev.size_bytes() {
        return Err(format!(
            "its key material (bytes {offset}..{end}) runs past the end of the device ({} bytes)",
            dev.size_bytes()
        ));
    }
    let payload = u64::from(m.payload_offset_sectors) * 512;
    if payload != 0 && end > payload {
        return Err(format!(
            "its key material (bytes {offset}..{end}) overlaps the data, which starts at byte {payload}"
        ));
    }
    Ok(SlotPlan {
        slot,
        kdf,
        salt: k.salt.to_vec(),
        area_spec: common.spec.clone(),
        area_key_bytes: key_bytes,
        area_offset: offset,
        material_bytes: material,
        key_bytes,
        af_hash: common.hash,
        digest: DigestCheck {
            hash: common.hash,
            iterations: m.mk_digest_iterations,
            salt: m.mk_digest_salt.to_vec(),
            expected: m.mk_digest.to_vec(),
        },
    })
}

fn salt_ok(salt: &[u8], what: &str) -> Result<(), String> {
    if salt.is_empty() || salt.len() > MAX_SALT_BYTES {
        return Err(format!("{what} of {} bytes", salt.len()));
    }
    Ok(())
}

pub(crate) fn luks2_kdf(kdf: &Luks2Kdf) -> Result<(Kdf, &[u8]), String> {
    Ok(match kdf {
        Luks2Kdf::Pbkdf2 {
            hash,
            iterations,
            salt,
        } => (
            Kdf::Pbkdf2 {
                hash: Hash::parse(hash).map_err(|e| format!("pbkdf2: {e}"))?,
                iterations: *iterations,
            },
            salt,
        ),
        Luks2Kdf::Argon2 {
            kind,
            time,
            memory_kib,
            cpus,
            salt,
        } => (
            Kdf::Argon2 {
                variant: if kind == "argon2i" {
                    Argon2Variant::I
                } else {
                    Argon2Variant::Id
                },
                time: *time,
                memory_kib: *memory_kib,
                lanes: *cpus,
            },
            salt,
        ),
    })
}

fn luks2_plan(
    dev: &dyn BlockDevice,
    m: &Luks2Metadata,
    slot: u32,
    limits: &KdfLimits,
) -> Result<SlotPlan, String> {
    let k = match m.keyslots.get(&slot) {
        Some(Ok(k)) => k,
        Some(Err(reason)) => return Err(reason.clone()),
        None => return Err("the key slot is not in use".into()),
    };
    let (segment_id, segment) = m.data_segment().ok_or("there is no data segment")?;
    // The digest that binds this slot to the data segment.
    let mut digest_damage = None;
    let digest = m.digests.iter().find_map(|(id, d)| match d {
        Ok(d) if d.keyslots.contains(&slot) && d.segments.contains(&segment_id) => Some(d),
        Ok(_) => None,
        Err(reason) => {
            digest_damage = Some(format!("digest {id}: {reason}"));
            None
        }
    });
    let digest = digest.ok_or_else(|| {
        digest_damage.unwrap_or(format!(
            "no digest binds it to the data segment {segment_id}"
        ))
    })?;

    let key_bytes = k.key_size as usize;
    if key_bytes == 0 || key_bytes as u64 > MAX_KEY_BYTES {
        return Err(format!("impossible key_size {key_bytes}"));
    }
    if segment.kind == "crypt" {
        if let Ok(spec) = CipherSpec::parse(&segment.encryption) {
            spec.check_key_bytes(key_bytes).map_err(|e| {
                format!("key_size {key_bytes} does not fit the data segment's cipher: {e}")
            })?;
        }
    }
    if k.af.kind != "luks1" {
        return Err(format!(
            "anti-forensic splitter '{}' is not supported",
            k.af.kind
        ));
    }
    if k.af.stripes != STRIPES {
        return Err(format!(
            "{} anti-forensic stripes (LUKS uses {STRIPES})",
            k.af.stripes
        ));
    }
    let af_hash = Hash::parse(&k.af.hash).map_err(|e| format!("anti-forensic splitter: {e}"))?;
    if k.area.kind != "raw" {
        return Err(format!("area type '{}' is not supported", k.area.kind));
    }
    let area_spec = CipherSpec::parse(&k.area.encryption).map_err(|e| format!("area: {e}"))?;
    let area_key_bytes = k.area.key_size as usize;
    area_spec
        .check_key_bytes(area_key_bytes)
        .map_err(|e| format!("area key_size mismatch: {e}"))?;
    let material = material_bytes(key_bytes);
    let (area_start, area_end) = m.keyslots_area();
    let (offset, size) = (k.area.offset, k.area.size);
    let end = offset
        .checked_add(size)
        .ok_or(format!("area offset {offset} + size {size} overflows"))?;
    if size < material as u64 {
        return Err(format!(
            "area of {size} bytes is smaller than its {material} bytes of key material"
        ));
    }
    if offset < area_start || end > area_end {
        return Err(format!(
            "area (bytes {offset}..{end}) lies outside the key slots area (bytes {area_start}..{area_end})"
        ));
    }
    if end > dev.size_bytes() {
        return Err(format!(
            "area (bytes {offset}..{end}) runs past the end of the device ({} bytes)",
            dev.size_bytes()
        ));
    }
    let (kdf, salt) = luks2_kdf(&k.kdf)?;
    salt_ok(salt, "a KDF salt")?;
    kdf.check(limits).map_err(|e| e.to_string())?;

    let digest_hash = Hash::parse(&digest.hash).map_err(|e| format!("digest: {e}"))?;
    Kdf::Pbkdf2 {
        hash: digest_hash,
        iterations: digest.iterations,
    }
    .check(limits)
    .map_err(|e| format!("digest: {e}"))?;
    salt_ok(&digest.salt, "a digest salt")?;
    salt_ok(&digest.digest, "a digest")?;
    Ok(SlotPlan {
        slot,
        kdf,
        salt: salt.to_vec(),
        area_spec,
        area_key_bytes,
        area_offset: offset,
        material_bytes: material,
        key_bytes,
        af_hash,
        digest: DigestCheck {
            hash: digest_hash,
            iterations: digest.iterations,
            salt: digest.salt.clone(),
            expected: digest.digest.clone(),
        },
    })
}

/// The volume key if `passphrase` opens the slot, None if it does not.
fn try_plan(
    dev: &dyn BlockDevice,
    plan: &SlotPlan,
    passphrase: &[u8],
) -> Result<Option<SecretBytes>, LuksError> {
    let slot_err = |what: String| LuksError::Slot {
        device: dev.name().to_string(),
        slot: plan.slot,
        what,
    };
    let mut derived = SecretBytes::zeroed(plan.area_key_bytes);
    plan.kdf
        .derive(passphrase, &plan.salt, &mut derived)
        .map_err(|e| slot_err(e.to_string()))?;
    let mut material = SecretBytes::zeroed(plan.material_bytes);
    dev.read_at(&mut material, plan.area_offset)?;
    SectorCipher::new(&plan.area_spec, &derived)
        .and_then(|c| c.decrypt(&mut material, MATERIAL_SECTOR, 0, 1))
        .map_err(|e| slot_err(format!("key material: {e}")))?;
    let key = af::merge(&material, plan.key_bytes, STRIPES, plan.af_hash)
        .map_err(|e| slot_err(e.to_string()))?;
    let matches = digest_matches(&key, &plan.digest).map_err(slot_err)?;
    Ok(matches.then_some(key))
}

pub(crate) fn digest_matches(key: &[u8], check: &DigestCheck) -> Result<bool, String> {
    let mut computed = vec![0u8; check.expected.len()];
    Kdf::Pbkdf2 {
        hash: check.hash,
        iterations: check.iterations,
    }
    .derive(key, &check.salt, &mut computed)
    .map_err(|e| format!("volume key digest: {e}"))?;
    // Every byte compared, whatever the first difference.
    let diff = computed
        .iter()
        .zip(&check.expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    Ok(diff == 0)
}
