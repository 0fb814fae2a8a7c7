//! Passphrases: adding one (a new key slot holding the volume key), removing the one a
//! passphrase opens, and killing a slot by number.
//!
//! The key material is written (into an area no key slot uses) or wiped and flushed before
//! the header changes; the header is then committed as described in the `write` module, so a
//! power cut at any write leaves either the old set of passphrases or the new one working.

use serde_json::{Map, Value};
use tessera_block::BlockDevice;
use tessera_cipher::{random_bytes, CipherSpec, Hash, Kdf, KdfLimits};

use super::format::{check_new_kdf, cipher_err, keyslot_json, luks2_area_bytes, make_material};
use super::metadata::{luks1_cipher, Luks1Metadata, Luks2Metadata, LuksMetadata};
use super::unlock::{luks2_kdf, material_bytes, open_volume_key, refused, UnlockOptions, STRIPES};
use super::write::{commit_luks2, write_luks1, Luks2Binary, LUKS1_HEADER_REGION};
use super::{decimal, read_metadata, LuksError, LUKS1_SLOT_DISABLED, LUKS1_SLOT_ENABLED};

#[derive(Debug, Clone, Copy, Default)]
pub struct AddKeyOptions {
    /// The slot for the new passphrase; None: the lowest free one.
    pub key_slot: Option<u32>,
    /// The new slot's KDF; None: the same as the slot the existing passphrase opened.
    pub pbkdf: Option<Kdf>,
    /// Limits for opening with the existing passphrase.
    pub limits: KdfLimits,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RemoveKeyOptions {
    pub limits: KdfLimits,
    /// Remove the last key slot too (the device can then never be opened again).
    pub force: bool,
}

/// Adds `new` as a passphrase of `dev`, opened with `existing`; returns the new key slot.
pub fn add_key(
    dev: &dyn BlockDevice,
    existing: &[u8],
    new: &[u8],
    opts: &AddKeyOptions,
) -> Result<u32, LuksError> {
    let meta = read_metadata(dev)?;
    let unlock = UnlockOptions {
        key_slot: None,
        limits: opts.limits,
    };
    let (opened, volume_key) = open_volume_key(dev, &meta, existing, &unlock)?;
    match meta {
        LuksMetadata::Luks1(m) => add_luks1(dev, m, opened, &volume_key, new, opts),
        LuksMetadata::Luks2(m) => add_luks2(dev, m, opened, &volume_key, new, opts),
    }
}

fn add_luks1(
    dev: &dyn BlockDevice,
    mut m: Luks1Metadata,
    opened: u32,
    volume_key: &[u8],
    new: &[u8],
    opts: &AddKeyOptions,
) -> Result<u32, LuksError> {
    let free = |i: usize| {
        m.keyslots
            .get(i)
            .is_some_and(|k| k.state == LUKS1_SLOT_DISABLED)
    };
    let slot = match opts.key_slot {
        Some(s) if s >= 8 => {
            return Err(refused(dev, format!("LUKS1 has key slots 0 to 7, not {s}")))
        }
        Some(s) if !free(s as usize) => {
            return Err(refused(dev, format!("key slot {s} is already in use")))
        }
        Some(s) => s,
        None => (0..8u32)
            .find(|&i| free(i as usize))
            .ok_or_else(|| refused(dev, "all 8 key slots are in use"))?,
    };
    let hash = Hash::parse(&m.hash_spec).map_err(cipher_err(dev, "LUKS1 header"))?;
    let spec = CipherSpec::parse(&luks1_cipher(&m)).map_err(cipher_err(dev, "LUKS1 header"))?;
    let opened_iterations = m.keyslots.get(opened as usize).map_or(0, |k| k.iterations);
    let kdf = opts.pbkdf.unwrap_or(Kdf::Pbkdf2 {
        hash,
        iterations: opened_iterations,
    });
    let iterations = match kdf {
        Kdf::Pbkdf2 {
            hash: h,
            iterations,
        } if h == hash => iterations,
        _ => {
            return Err(refused(
                dev,
                format!("LUKS1 key slots use PBKDF2 with the header's hash ({hash}) only"),
            ))
        }
    };
    check_new_kdf(dev, &kdf)?;
    let Some(k) = m.keyslots.get_mut(slot as usize) else {
        return Err(refused(dev, format!("no key slot {slot}")));
    };
    let key_bytes = volume_key.len();
    let at = u64::from(k.key_material_offset_sectors) * 512;
    let end = at + material_bytes(key_bytes) as u64;
    let payload = u64::from(m.payload_offset_sectors) * 512;
    if at < LUKS1_HEADER_REGION as u64 || end > dev.size_bytes() || (payload != 0 && end > payload)
    {
        return Err(LuksError::Slot {
            device: dev.name().to_string(),
            slot,
            what: format!(
                "its key material place (bytes {at}..{end}) overlaps the header or data, or lies past the end"
            ),
        });
    }
    let material = make_material(dev, volume_key, new, &kdf, &spec, key_bytes, hash)?;
    dev.write_at(&material.bytes, at)?;
    dev.flush()?;
    k.state = LUKS1_SLOT_ENABLED;
    k.iterations = iterations;
    k.salt = material.salt;
    k.stripes = STRIPES;
    write_luks1(dev, &m)?;
    Ok(slot)
}

/// Where a LUKS2 key slot's area lies, from the raw JSON (so damaged slots count too).
fn raw_area(json: &Map<String, Value>, slot: &str) -> Option<(u64, u64)> {
    let area = json.get("keyslots")?.get(slot)?.get("area")?;
    let offset = decimal(area.get("offset"), "offset").ok()?;
    let size = decimal(area.get("size"), "size").ok()?;
    Some((offset, offset.checked_add(size)?))
}

fn requirements_ok(dev: &dyn BlockDevice, m: &Luks2Metadata) -> Result<(), LuksError> {
    if m.config.requirements.is_empty() {
        return Ok(());
    }
    Err(refused(
        dev,
        format!(
            "the LUKS2 header has requirements tessera does not know ({}); leave it to cryptsetup",
            m.config.requirements.join(", ")
        ),
    ))
}

fn add_luks2(
    dev: &dyn BlockDevice,
    m: Luks2Metadata,
    opened: u32,
    volume_key: &[u8],
    new: &[u8],
    opts: &AddKeyOptions,
) -> Result<u32, LuksError> {
    requirements_ok(dev, &m)?;
    let slot = match opts.key_slot {
        Some(s) if s >= 32 => {
            return Err(refused(
                dev,
                format!("LUKS2 has key slots 0 to 31, not {s}"),
            ))
        }
        Some(s) if m.keyslots.contains_key(&s) => {
            return Err(refused(dev, format!("key slot {s} is already in use")))
        }
        Some(s) => s,
        None => (0..32u32)
            .find(|i| !m.keyslots.contains_key(i))
            .ok_or_else(|| refused(dev, "all 32 key slots are in use"))?,
    };
    let Some(Ok(template)) = m.keyslots.get(&opened) else {
        return Err(refused(dev, format!("key slot {opened} vanished")));
    };
    let (opened_kdf, _) = luks2_kdf(&template.kdf).map_err(|e| refused(dev, e))?;
    let kdf = opts.pbkdf.unwrap_or(opened_kdf);
    check_new_kdf(dev, &kdf)?;
    let af_hash = Hash::parse(&template.af.hash).map_err(cipher_err(dev, "key slot"))?;
    let spec = CipherSpec::parse(&template.area.encryption).map_err(cipher_err(dev, "key slot"))?;
    let area_key_bytes = template.area.key_size as usize;
    let key_bytes = volume_key.len();

    // The first free place for the new area in the key slots area.
    let size = luks2_area_bytes(key_bytes);
    let (start, limit) = m.keyslots_area();
    let limit = limit.min(dev.size_bytes());
    let mut used = Vec::new();
    for id in m.keyslots.keys() {
        match raw_area(&m.json, &id.to_string()) {
            Some(range) => used.push(range),
            None => {
                return Err(refused(
                    dev,
                    format!("cannot tell where key slot {id}'s area lies, so no new area can be placed safely"),
                ))
            }
        }
    }
    used.sort_unstable();
    let mut at = start;
    for (a, b) in &used {
        if at + size <= *a {
            break;
        }
        at = at.max(b.div_ceil(4096) * 4096);
    }
    if at + size > limit {
        return Err(refused(
            dev,
            format!("the key slots area (bytes {start}..{limit}) has no room for another {size}-byte key slot area"),
        ));
    }

    let material = make_material(dev, volume_key, new, &kdf, &spec, area_key_bytes, af_hash)?;
    let mut json = m.json.clone();
    let entry = keyslot_json(
        key_bytes,
        af_hash,
        at,
        size,
        &template.area.encryption,
        area_key_bytes,
        &kdf,
        &material.salt,
    );
    let opened_id = Value::String(opened.to_string());
    if let Some(Value::Object(keyslots)) = json.get_mut("keyslots") {
        keyslots.insert(slot.to_string(), entry);
    }
    if let Some(Value::Object(digests)) = json.get_mut("digests") {
        for digest in digests.values_mut() {
            if let Some(Value::Array(slots)) = digest.get_mut("keyslots") {
                if slots.contains(&opened_id) {
                    slots.push(Value::String(slot.to_string()));
                }
            }
        }
    }
    dev.write_at(&material.bytes, at)?;
    dev.flush()?;
    let mut binary = Luks2Binary::of(&m);
    binary.seqid = m.seqid.saturating_add(1);
    commit_luks2(dev, &binary, &json)?;
    Ok(slot)
}

/// Removes the passphrase `passphrase`: the key slot it opens is wiped, then dropped from
/// the header. Returns that slot.
pub fn remove_key(
    dev: &dyn BlockDevice,
    passphrase: &[u8],
    opts: &RemoveKeyOptions,
) -> Result<u32, LuksError> {
    let meta = read_metadata(dev)?;
    let unlock = UnlockOptions {
        key_slot: None,
        limits: opts.limits,
    };
    let (slot, _) = open_volume_key(dev, &meta, passphrase, &unlock)?;
    drop_slot(dev, meta, slot, opts.force)?;
    Ok(slot)
}

/// Wipes key slot `slot` and drops it from the header, whatever its passphrase.
pub fn kill_slot(dev: &dyn BlockDevice, slot: u32, force: bool) -> Result<(), LuksError> {
    let meta = read_metadata(dev)?;
    if !meta.active_keyslots().contains(&slot) {
        return Err(LuksError::Slot {
            device: dev.name().to_string(),
            slot,
            what: "the key slot is not in use".into(),
        });
    }
    drop_slot(dev, meta, slot, force)
}

fn drop_slot(
    dev: &dyn BlockDevice,
    meta: LuksMetadata,
    slot: u32,
    force: bool,
) -> Result<(), LuksError> {
    if meta.active_keyslots() == [slot] && !force {
        return Err(refused(
            dev,
            format!(
                "key slot {slot} is the last one: without it nothing opens the device again; use --force to remove it anyway"
            ),
        ));
    }
    match meta {
        LuksMetadata::Luks1(mut m) => {
            let payload = u64::from(m.payload_offset_sectors) * 512;
            let key_bytes = m.key_bytes as usize;
            let Some(k) = m.keyslots.get_mut(slot as usize) else {
                return Err(refused(dev, format!("no key slot {slot}")));
            };
            let at = u64::from(k.key_material_offset_sectors) * 512;
            let end = at + material_bytes(key_bytes) as u64;
            if at >= LUKS1_HEADER_REGION as u64
                && end <= dev.size_bytes()
                && (payload == 0 || end <= payload)
            {
                wipe(dev, at, end)?;
            }
            k.state = LUKS1_SLOT_DISABLED;
            k.iterations = 0;
            k.salt = [0; 32];
            write_luks1(dev, &m)
        }
        LuksMetadata::Luks2(m) => {
            requirements_ok(dev, &m)?;
            let id = slot.to_string();
            let (start, limit) = m.keyslots_area();
            if let Some((a, b)) = raw_area(&m.json, &id) {
                if a >= start && b <= limit.min(dev.size_bytes()) {
                    wipe(dev, a, b)?;
                }
            }
            let mut json = m.json.clone();
            if let Some(Value::Object(keyslots)) = json.get_mut("keyslots") {
                keyslots.remove(&id);
            }
            let id = Value::String(id);
            if let Some(Value::Object(digests)) = json.get_mut("digests") {
                for digest in digests.values_mut() {
                    if let Some(Value::Array(slots)) = digest.get_mut("keyslots") {
                        slots.retain(|s| *s != id);
                    }
                }
            }
            let mut binary = Luks2Binary::of(&m);
            binary.seqid = m.seqid.saturating_add(1);
            commit_luks2(dev, &binary, &json)
        }
    }
}

/// Overwrites bytes `start..end` with random data, then flushes.
fn wipe(dev: &dyn BlockDevice, start: u64, end: u64) -> Result<(), LuksError> {
    const CHUNK: u64 = 1 << 20;
    let mut at = start;
    while at < end {
        let len = (end - at).min(CHUNK) as usize;
        let mut buf = vec![0u8; len];
        random_bytes(&mut buf).map_err(cipher_err(dev, "wipe"))?;
        dev.write_at(&buf, at)?;
        at += len as u64;
    }
    dev.flush()?;
    Ok(())
}
