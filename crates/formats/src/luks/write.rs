//! Writing headers back: the LUKS1 header sectors, and LUKS2's two copies in the order that
//! keeps a power cut harmless.
//!
//! LUKS2 changes are committed as: (key material already written and flushed by the caller,
//! into an area no key slot uses), the secondary copy with seqid+1, flush, the primary copy,
//! flush. A cut before the secondary lands leaves the old state; between the two, the
//! secondary is sound and newer, and readers take the newer sound copy; a torn primary fails
//! its checksum and the secondary is used. Afterwards both copies are identical.
//!
//! LUKS1 has one header. Its first two sectors are rewritten in one write after the key
//! material was flushed; the key slot entry a change touches lies in one 512-byte sector
//! except slot 6 (bytes 496..544), which straddles two. A write that lands half (one sector
//! new, the other old) leaves that slot half changed: unusable, but every other slot intact
//! (adding: the old passphrases open; removing: the slot was already wiped). The window that
//! remains is a device that tears writes inside one 512-byte sector, which LUKS1 cannot
//! survive whatever the order.

use serde_json::{Map, Value};
use sha2::Sha256;
use tessera_block::BlockDevice;
use tessera_cipher::random_bytes;

use super::metadata::{Luks1Metadata, Luks2Metadata};
use super::unlock::refused;
use super::{
    hash_without_csum, LuksError, CSUM_AT, LUKS1_KEYSLOTS, LUKS1_KEYSLOT_BYTES, LUKS2_BINARY_BYTES,
    MAGIC, SECONDARY_MAGIC,
};

/// The LUKS1 header region tessera rewrites: two sectors (the header is 592 bytes).
pub(crate) const LUKS1_HEADER_REGION: usize = 1024;

fn put_text(buf: &mut [u8], at: usize, len: usize, text: &str, what: &str) -> Result<(), String> {
    let bytes = text.as_bytes();
    if bytes.len() >= len || bytes.contains(&0) {
        return Err(format!(
            "{what} '{text}' does not fit its {len}-byte field (at most {} bytes, no NUL)",
            len - 1
        ));
    }
    let field = &mut buf[at..at + len];
    field.fill(0);
    field[..bytes.len()].copy_from_slice(bytes);
    Ok(())
}

/// `m` laid over `region` (the first two sectors as they are on disk).
pub(crate) fn luks1_header_bytes(m: &Luks1Metadata, region: &mut [u8]) -> Result<(), String> {
    if region.len() < LUKS1_HEADER_REGION {
        return Err("short LUKS1 header buffer".into());
    }
    let b = region;
    b[..6].copy_from_slice(MAGIC);
    b[6..8].copy_from_slice(&1u16.to_be_bytes());
    put_text(b, 8, 32, &m.cipher_name, "cipher name")?;
    put_text(b, 40, 32, &m.cipher_mode, "cipher mode")?;
    put_text(b, 72, 32, &m.hash_spec, "hash")?;
    b[104..108].copy_from_slice(&m.payload_offset_sectors.to_be_bytes());
    b[108..112].copy_from_slice(&m.key_bytes.to_be_bytes());
    b[112..132].copy_from_slice(&m.mk_digest);
    b[132..164].copy_from_slice(&m.mk_digest_salt);
    b[164..168].copy_from_slice(&m.mk_digest_iterations.to_be_bytes());
    put_text(b, 168, 40, &m.uuid, "UUID")?;
    for (i, k) in m.keyslots.iter().enumerate().take(LUKS1_KEYSLOTS) {
        let at = 208 + i * LUKS1_KEYSLOT_BYTES;
        b[at..at + 4].copy_from_slice(&k.state.to_be_bytes());
        b[at + 4..at + 8].copy_from_slice(&k.iterations.to_be_bytes());
        b[at + 8..at + 40].copy_from_slice(&k.salt);
        b[at + 40..at + 44].copy_from_slice(&k.key_material_offset_sectors.to_be_bytes());
        b[at + 44..at + 48].copy_from_slice(&k.stripes.to_be_bytes());
    }
    Ok(())
}

/// Rewrites the LUKS1 header (keeping whatever else its two sectors hold), then flushes.
pub(crate) fn write_luks1(dev: &dyn BlockDevice, m: &Luks1Metadata) -> Result<(), LuksError> {
    let mut region = vec![0u8; LUKS1_HEADER_REGION];
    dev.read_at(&mut region, 0)?;
    luks1_header_bytes(m, &mut region).map_err(|e| refused(dev, e))?;
    dev.write_at(&region, 0)?;
    dev.flush()?;
    Ok(())
}

/// The binary fields of a LUKS2 header copy, apart from its place and checksum.
pub(crate) struct Luks2Binary<'a> {
    pub hdr_size: u64,
    pub seqid: u64,
    pub label: &'a str,
    pub subsystem: &'a str,
    pub uuid: &'a str,
}

impl<'a> Luks2Binary<'a> {
    pub fn of(m: &'a Luks2Metadata) -> Self {
        Luks2Binary {
            hdr_size: m.hdr_size,
            seqid: m.seqid,
            label: &m.label,
            subsystem: &m.subsystem,
            uuid: &m.uuid,
        }
    }
}

/// One whole copy (binary header and JSON area) for byte `at`, checksummed.
pub(crate) fn luks2_copy_bytes(b: &Luks2Binary, json: &str, at: u64) -> Result<Vec<u8>, String> {
    let size = usize::try_from(b.hdr_size).map_err(|_| "header size too large".to_string())?;
    let area = size.saturating_sub(LUKS2_BINARY_BYTES);
    if json.len() >= area {
        return Err(format!(
            "the LUKS2 metadata ({} bytes of JSON) does not fit its {area}-byte area",
            json.len()
        ));
    }
    let mut h = vec![0u8; size];
    h[..6].copy_from_slice(if at == 0 { MAGIC } else { SECONDARY_MAGIC });
    h[6..8].copy_from_slice(&2u16.to_be_bytes());
    h[8..16].copy_from_slice(&b.hdr_size.to_be_bytes());
    h[16..24].copy_from_slice(&b.seqid.to_be_bytes());
    put_text(&mut h, 24, 48, b.label, "label")?;
    put_text(&mut h, 72, 32, "sha256", "checksum algorithm")?;
    random_bytes(&mut h[104..168]).map_err(|e| e.to_string())?;
    put_text(&mut h, 168, 40, b.uuid, "UUID")?;
    put_text(&mut h, 208, 48, b.subsystem, "subsystem")?;
    h[256..264].copy_from_slice(&at.to_be_bytes());
    h[LUKS2_BINARY_BYTES..LUKS2_BINARY_BYTES + json.len()].copy_from_slice(json.as_bytes());
    let sum = hash_without_csum::<Sha256>(&h);
    h[CSUM_AT..CSUM_AT + sum.len()].copy_from_slice(&sum);
    Ok(h)
}

/// Writes both copies of a LUKS2 header holding `json`, secondary first, each flushed.
pub(crate) fn commit_luks2(
    dev: &dyn BlockDevice,
    binary: &Luks2Binary,
    json: &Map<String, Value>,
) -> Result<(), LuksError> {
    let text = serde_json::to_string(json).map_err(|e| refused(dev, e.to_string()))?;
    let secondary =
        luks2_copy_bytes(binary, &text, binary.hdr_size).map_err(|e| refused(dev, e))?;
    let primary = luks2_copy_bytes(binary, &text, 0).map_err(|e| refused(dev, e))?;
    dev.write_at(&secondary, binary.hdr_size)?;
    dev.flush()?;
    dev.write_at(&primary, 0)?;
    dev.flush()?;
    Ok(())
}
